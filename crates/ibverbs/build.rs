//! Gives the cdylib rdma-core's soname and symbol versions. `symbols.txt` lists each exported
//! symbol with its version; from it this writes a version script that declares the version
//! nodes (in rdma-core's order, each inheriting the one before) and `.symver` directives that
//! bind each symbol to its node. rustc's own anonymous version script decides what is exported;
//! the directives only attach versions, which is why both are needed.

use std::fmt::Write as _;
use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets it"));
    let list = manifest.join("symbols.txt");
    println!("cargo:rerun-if-changed={}", list.display());
    let text = std::fs::read_to_string(&list).expect("symbols.txt is readable");
    let mut versions: Vec<String> = Vec::new();
    let mut asm = String::from("core::arch::global_asm!(\n");
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let mut it = line.split_whitespace();
        let (Some(ver), Some(sym)) = (it.next(), it.next()) else {
            panic!("symbols.txt: bad line {line:?}");
        };
        if !versions.iter().any(|v| v == ver) {
            versions.push(ver.to_string());
        }
        writeln!(asm, "    \".symver {sym}, {sym}@@{ver}\",").expect("write to String");
    }
    asm.push_str(");\n");
    // Node order as rdma-core's libibverbs.map: 1.0, 1.1, 1.5 … 1.14, then the private one.
    versions.sort_by_key(|v| {
        let tail = v.trim_start_matches("IBVERBS_");
        match tail.strip_prefix("1.") {
            Some(minor) => minor.parse::<u32>().unwrap_or(0),
            None => u32::MAX,
        }
    });
    let mut map = String::new();
    let mut prev: Option<&str> = None;
    for v in &versions {
        match prev {
            Some(p) => writeln!(map, "{v} {{ }} {p};"),
            None => writeln!(map, "{v} {{ }};"),
        }
        .expect("write to String");
        prev = Some(v);
    }
    let map_path = out.join("libibverbs.map");
    std::fs::write(&map_path, map).expect("OUT_DIR is writable");
    std::fs::write(out.join("symver.rs"), asm).expect("OUT_DIR is writable");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libibverbs.so.1");
    println!(
        "cargo:rustc-cdylib-link-arg=-Wl,--version-script={}",
        map_path.display()
    );
}
