//! The uroce CLI.
fn main() {}
