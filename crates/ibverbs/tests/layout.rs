//! The generated bindings against the system's verbs.h: the C compiler prints `sizeof` and
//! `offsetof` of every struct and union in `ibverbs::layout::table()`, and each must equal the
//! Rust side. Any difference means programs built against the header would misread our
//! structs, so it fails. Needs `cc` and Debian's libibverbs-dev; skipped (and says so) without
//! the header.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

mod common;

const HEADER: &str = "/usr/include/infiniband/verbs.h";

#[test]
fn rust_layout_matches_verbs_h() {
    if !Path::new(HEADER).exists() {
        eprintln!(
            "SKIPPED: {HEADER} missing (apt-get install libibverbs-dev; scripts/test.sh does)"
        );
        return;
    }
    let table = ibverbs::layout::table();
    assert!(table.len() > 50, "the table lists the verbs structs");
    let mut c = String::from(
        "#include <infiniband/verbs.h>\n#include <stddef.h>\n#include <stdio.h>\nint main(void) {\n",
    );
    let mut want = Vec::new();
    for (kind, name, size, fields) in &table {
        let ty = match *kind {
            "typedef" => name.to_string(),
            k => format!("{k} {name}"),
        };
        writeln!(c, "  printf(\"{name} %zu\\n\", sizeof({ty}));").unwrap();
        want.push(format!("{name} {size}"));
        for (f, off) in fields {
            writeln!(c, "  printf(\"{name}.{f} %zu\\n\", offsetof({ty}, {f}));").unwrap();
            want.push(format!("{name}.{f} {off}"));
        }
    }
    c.push_str("  return 0;\n}\n");
    let dir = std::env::temp_dir().join(format!("uroce-layout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("layout.c");
    let exe = dir.join("layout");
    std::fs::write(&src, &c).unwrap();
    common::compile_c(&src, &exe, &[]);
    let run = Command::new(&exe).output().expect("run the layout program");
    assert!(run.status.success());
    let got: Vec<String> = String::from_utf8_lossy(&run.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    let _ = std::fs::remove_dir_all(&dir);
    let diff: Vec<String> = want
        .iter()
        .zip(&got)
        .filter(|(w, g)| w != g)
        .map(|(w, g)| format!("rust {w} != C {g}"))
        .collect();
    assert_eq!(got.len(), want.len(), "one line per size and offset");
    assert!(
        diff.is_empty(),
        "layout differs from {HEADER}:\n{}",
        diff.join("\n")
    );
    println!("{} sizes and offsets match {HEADER}", want.len());
}
