//! Embeds the demo data (the official R4 examples and the Synthea bundles under `tests/data/`)
//! into the binary, so that `braid demo` works wherever the binary is copied.

use std::fmt::Write;
use std::path::Path;

fn main() {
    let mut code = String::new();
    for (name, dir) in [("EXAMPLES", "tests/data/examples"), ("SYNTHEA", "tests/data/synthea")] {
        println!("cargo:rerun-if-changed={dir}");
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{dir}: {e}"))
            .map(|entry| entry.expect("readable directory").path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
            .collect();
        files.sort();
        writeln!(code, "pub const {name}: &[(&str, &str)] = &[").unwrap();
        for path in files {
            let absolute = std::fs::canonicalize(&path).expect("file exists");
            let file_name = path.file_name().and_then(|n| n.to_str()).expect("UTF-8 file name");
            writeln!(code, "    ({file_name:?}, include_str!({:?})),", absolute.display().to_string()).unwrap();
        }
        writeln!(code, "];").unwrap();
    }
    let out = Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("demo_data.rs");
    std::fs::write(out, code).expect("OUT_DIR is writable");
}
