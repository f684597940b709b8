//! Records the git commit the binary is built from (`rwkv-cli --version`), as
//! `RWKV_CLI_GIT_COMMIT`: `$RWKV_CLI_GIT_COMMIT` when set (for packagers building from a
//! tarball), else `git rev-parse` when this is a git checkout and git is installed, else
//! "unknown". Only the checkout of this crate itself counts: a tarball unpacked inside some
//! other repository is "unknown" too.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8(out.stdout).ok()?.trim().to_string())
}

/// The commit of HEAD when the crate's directory is the top of a git work tree.
fn own_commit() -> Option<String> {
    let top = git(&["rev-parse", "--show-toplevel"])?;
    let here = std::env::var("CARGO_MANIFEST_DIR").ok()?;
    let same = std::fs::canonicalize(&top).ok()? == std::fs::canonicalize(&here).ok()?;
    let c = git(&["rev-parse", "--short=12", "HEAD"])?;
    (same && !c.is_empty()).then_some(c)
}

fn main() {
    println!("cargo:rerun-if-env-changed=RWKV_CLI_GIT_COMMIT");
    println!("cargo:rerun-if-changed=build.rs");
    let commit = match std::env::var("RWKV_CLI_GIT_COMMIT") {
        Ok(c) if !c.trim().is_empty() => c.trim().to_string(),
        _ => match own_commit() {
            Some(c) => {
                // Rebuild when HEAD moves (a commit, a checkout) or the index changes.
                let head = git(&["symbolic-ref", "-q", "HEAD"]);
                for p in ["HEAD", "packed-refs"]
                    .into_iter()
                    .map(String::from)
                    .chain(head)
                {
                    // Only files that exist: a missing one would rerun this on every build.
                    if let Some(path) = git(&["rev-parse", "--git-path", &p])
                        .filter(|path| std::path::Path::new(path).exists())
                    {
                        println!("cargo:rerun-if-changed={path}");
                    }
                }
                c
            }
            _ => "unknown".to_string(),
        },
    };
    println!("cargo:rustc-env=RWKV_CLI_GIT_COMMIT={commit}");
}
