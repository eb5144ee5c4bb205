//! Errors of the safe API.

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The engine refused the verb.
    #[error(transparent)]
    Verb(#[from] uroce_proto::Error),
    /// A socket or io_uring call failed.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The device configuration is invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// The device's progress thread stopped (it panicked or the device was closed).
    #[error("device closed")]
    Closed,
}

impl From<nix::Error> for Error {
    fn from(e: nix::Error) -> Self {
        Error::Io(std::io::Error::from(e))
    }
}

/// Result of the safe API.
pub type Result<T> = std::result::Result<T, Error>;
