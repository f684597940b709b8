//! What the CLI's integration tests share: the binary, the fixtures and a scratch folder.
//! Each test file uses the part it needs.
#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

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

/// Runs `cmd` with `stdin` piped in (then closed), stdout and stderr captured. The input is
/// written from a thread, so a command that stops reading early cannot block the test.
pub fn run_with_stdin(cmd: &mut Command, stdin: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let o = child.wait_with_output().unwrap();
    writer.join().unwrap();
    o
}
