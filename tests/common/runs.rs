//! A run of the binary, checked: a successful run's stdout, a failure's exit code and one-line
//! message, and the escaping of `--verbose` / `--logprobs` undone. Shared by `cli_habits.rs`
//! and `tokenize.rs`.

use super::{bin_offline, run_with_stdin, stderr};
use std::process::Output;

/// A successful run's stdout as text (lossily: the byte checks use [`okb`]).
pub fn ok(o: &Output) -> String {
    String::from_utf8_lossy(&okb(o)).into_owned()
}

/// A successful run's stdout.
pub fn okb(o: &Output) -> Vec<u8> {
    assert!(o.status.success(), "exit {:?}: {}", o.status, stderr(o));
    o.stdout.clone()
}

/// The inverse of the escaping of `--verbose` and `--logprobs` (`\\`, `\n`, `\r`, `\t`,
/// `\xNN`, anything else as itself).
pub fn unescape(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c != '\\' {
            let mut b = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
            continue;
        }
        match it.next() {
            Some('\\') => out.push(b'\\'),
            Some('n') => out.push(b'\n'),
            Some('r') => out.push(b'\r'),
            Some('t') => out.push(b'\t'),
            Some('x') => {
                let hex: String = it.by_ref().take(2).collect();
                out.push(u8::from_str_radix(&hex, 16).expect("\\xNN"));
            }
            other => panic!("bad escape \\{other:?} in {s:?}"),
        }
    }
    out
}

/// Runs `rwkv-cli args` (Hub offline) with `stdin`.
pub fn run_in(args: &[&str], stdin: &[u8]) -> Output {
    run_with_stdin(bin_offline().args(args), stdin)
}

/// A failed run: its exit code, and stderr is one line naming `needle`.
pub fn fails(o: &Output, code: i32, needle: &str) {
    let e = stderr(o);
    assert_eq!(o.status.code(), Some(code), "{e}");
    assert!(e.contains(needle), "{needle:?} not in {e:?}");
    assert!(!e.contains("panicked"), "{e}");
}
