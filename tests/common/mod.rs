//! What the CLI's integration tests share: the binary, the fixtures and a scratch folder.
//! Each test file uses the part it needs.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

/// The `rwkv-cli` binary, with the embedded model's cache copy in this test process's scratch
/// folder (never the user's cache).
pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rwkv-cli"));
    c.env("RWKV_CLI_CACHE", scratch("cache"));
    c
}

/// The path of a file in `tests/fixtures`.
pub fn fixture(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
        .display()
        .to_string()
}

/// A folder of this test process's own (created if needed), for the files a test writes.
pub fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir()
        .join(format!("rwkv-cli-tests-{}", std::process::id()))
        .join(name);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A run's stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
