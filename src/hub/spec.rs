//! The shapes of a Hub reference `--model` accepts, besides `owner/repo:file[@revision]`:
//! what people copy from the Hub's web page.
//!
//! - `https://huggingface.co/OWNER/REPO/resolve/REV/FILE` and `.../blob/REV/FILE` (also on
//!   `hf.co`, or on the host of `HF_ENDPOINT`); any other host is refused: we never download
//!   from an arbitrary URL;
//! - `hf://OWNER/REPO/FILE` and `hf://OWNER/REPO@REV/FILE` (as huggingface_hub's file system);
//! - `OWNER/REPO/FILE` (revision `main`).

use super::HubFile;
use anyhow::{anyhow, bail, Result};

/// Hosts whose URLs name Hub files.
const HUB_HOSTS: [&str; 3] = ["huggingface.co", "www.huggingface.co", "hf.co"];

pub(super) fn valid_repo_part(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// A path inside a repo: relative, `/`-separated, no empty, `.` or `..` component, no `\` or
/// control character.
pub(super) fn valid_file(file: &str) -> bool {
    !file.is_empty()
        && !file.contains('\\')
        && !file.chars().any(char::is_control)
        && file
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

/// A branch, tag or commit: may hold `/` (`refs/pr/1`) but no empty, `.` or `..` component,
/// no whitespace, `\` or control character.
pub(super) fn valid_revision(rev: &str) -> bool {
    !rev.is_empty()
        && !rev
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '\\')
        && rev
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn checked(spec: &str, repo: String, file: String, revision: String) -> Result<HubFile> {
    let (owner, name) = repo.split_once('/').unwrap_or((&repo, ""));
    if !valid_repo_part(owner) || !valid_repo_part(name) {
        bail!("invalid Hub reference {spec}: the repo must be owner/name");
    }
    if !valid_file(&file) {
        bail!("invalid Hub reference {spec}: no valid file path in the repo");
    }
    if !valid_revision(&revision) {
        bail!("invalid Hub reference {spec}: invalid revision");
    }
    Ok(HubFile {
        repo,
        file,
        revision,
    })
}

/// A URL: a Hub file's page or download link, or `hf://`. Anything else is refused.
pub(super) fn parse_url(spec: &str) -> Result<HubFile> {
    let (scheme, rest) = spec.split_once("://").unwrap_or(("", spec));
    let scheme = scheme.to_ascii_lowercase();
    if scheme == "hf" {
        return parse_hf(spec, rest);
    }
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host_l = host.to_ascii_lowercase();
    let mirror = super::download::host_of_endpoint();
    let known = HUB_HOSTS.contains(&host_l.as_str()) || host_l == mirror.to_ascii_lowercase();
    if !matches!(scheme.as_str(), "http" | "https") || !known || host.contains('@') {
        bail!(
            "{spec}: rwkv-cli downloads models only from the Hugging Face Hub (huggingface.co, or the mirror in HF_ENDPOINT), never from another address; download the file yourself and pass its path"
        );
    }
    let segs: Vec<&str> = path.split('/').collect();
    if matches!(segs.first(), Some(&"datasets") | Some(&"spaces")) {
        bail!("{spec}: only model repositories hold checkpoints (not datasets or spaces)");
    }
    let shape = || {
        anyhow!(
            "{spec}: not a link to a file (expected https://huggingface.co/OWNER/REPO/resolve/REVISION/FILE or .../blob/REVISION/FILE)"
        )
    };
    if segs.len() < 5 || !matches!(segs[2], "resolve" | "blob") {
        return Err(shape());
    }
    let dec = |s: &str| percent_decode(s).ok_or_else(shape);
    let repo = format!("{}/{}", dec(segs[0])?, dec(segs[1])?);
    let revision = dec(segs[3])?;
    let file = segs[4..]
        .iter()
        .map(|s| dec(s))
        .collect::<Result<Vec<_>>>()?
        .join("/");
    checked(spec, repo, file, revision)
}

/// `hf://OWNER/REPO[@REV]/FILE`.
fn parse_hf(spec: &str, rest: &str) -> Result<HubFile> {
    let segs: Vec<&str> = rest.split('/').collect();
    if matches!(segs.first(), Some(&"datasets") | Some(&"spaces")) {
        bail!("{spec}: only model repositories hold checkpoints (not datasets or spaces)");
    }
    if segs.len() < 3 {
        bail!("invalid Hub reference {spec}: expected hf://OWNER/REPO/FILE or hf://OWNER/REPO@REVISION/FILE");
    }
    let (name, revision) = segs[1].split_once('@').unwrap_or((segs[1], "main"));
    // A revision with slashes is written encoded (`@refs%2Fpr%2F1`), as in a link; a pull
    // request's or conversion's ref may also be written as it is (`@refs/pr/1`,
    // `@refs/convert/…`), as huggingface_hub's file system reads it.
    let (revision, file) = match (revision, segs.get(2..)) {
        ("refs", Some([kind @ ("pr" | "convert"), id, file @ ..])) if !file.is_empty() => {
            (format!("refs/{kind}/{id}"), file.join("/"))
        }
        _ => (
            percent_decode(revision).ok_or_else(|| {
                anyhow!("invalid Hub reference {spec}: the revision's % escapes are not valid")
            })?,
            segs[2..].join("/"),
        ),
    };
    checked(spec, format!("{}/{name}", segs[0]), file, revision)
}

/// `OWNER/REPO/FILE`: `None` unless `spec` has that shape (and its first part is not a local
/// folder, which makes it a mistyped local path rather than a Hub name).
pub(super) fn parse_path_form(spec: &str) -> Option<HubFile> {
    let mut it = spec.splitn(3, '/');
    let (owner, name, file) = (it.next()?, it.next()?, it.next()?);
    if !valid_repo_part(owner)
        || !valid_repo_part(name)
        || !valid_file(file)
        || std::path::Path::new(owner).is_dir()
    {
        return None;
    }
    Some(HubFile {
        repo: format!("{owner}/{name}"),
        file: file.to_string(),
        revision: "main".to_string(),
    })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A reference to `file` in `repo` at `rev` (also for `hub`'s tests).
    pub(in crate::hub) fn hub(repo: &str, file: &str, rev: &str) -> HubFile {
        HubFile {
            repo: repo.into(),
            file: file.into(),
            revision: rev.into(),
        }
    }

    #[test]
    fn pasted_urls_name_the_same_file() {
        let want = hub("BlinkDL/rwkv7-g1", "rwkv7-g1d-0.1b.pth", "main");
        for url in [
            "https://huggingface.co/BlinkDL/rwkv7-g1/resolve/main/rwkv7-g1d-0.1b.pth",
            "https://huggingface.co/BlinkDL/rwkv7-g1/blob/main/rwkv7-g1d-0.1b.pth",
            "https://huggingface.co/BlinkDL/rwkv7-g1/resolve/main/rwkv7-g1d-0.1b.pth?download=true",
            "https://hf.co/BlinkDL/rwkv7-g1/blob/main/rwkv7-g1d-0.1b.pth",
            "hf://BlinkDL/rwkv7-g1/rwkv7-g1d-0.1b.pth",
        ] {
            assert_eq!(parse_url(url).unwrap(), want, "{url}");
        }
        assert_eq!(
            parse_url("https://huggingface.co/o/r/resolve/refs%2Fpr%2F1/dir/a%20b.pth").unwrap(),
            hub("o/r", "dir/a b.pth", "refs/pr/1")
        );
        assert_eq!(
            parse_url("hf://o/r@dev/x.pth").unwrap(),
            hub("o/r", "x.pth", "dev")
        );
        // A revision with slashes: encoded, or a pull request's / conversion's ref as it is.
        for spec in [
            "hf://o/r@refs%2Fpr%2F1/sub/x.pth",
            "hf://o/r@refs/pr/1/sub/x.pth",
        ] {
            assert_eq!(
                parse_url(spec).unwrap(),
                hub("o/r", "sub/x.pth", "refs/pr/1"),
                "{spec}"
            );
        }
        assert_eq!(
            parse_url("hf://o/r@refs/convert/parquet/x.pth").unwrap(),
            hub("o/r", "x.pth", "refs/convert/parquet")
        );
        assert!(parse_url("hf://o/r@refs%2/x.pth").is_err());
        assert_eq!(
            parse_path_form("o/r/sub/x.pth").unwrap(),
            hub("o/r", "sub/x.pth", "main")
        );
        assert_eq!(parse_path_form("o/r"), None);
        assert_eq!(parse_path_form("src/x/y.pth"), None, "a local folder");
    }

    #[test]
    fn other_hosts_and_odd_urls_are_refused() {
        for bad in [
            "https://evil.example/BlinkDL/rwkv7-g1/resolve/main/x.pth",
            "https://huggingface.co@evil.example/o/r/resolve/main/x.pth",
            "ftp://huggingface.co/o/r/resolve/main/x.pth",
            "file:///etc/passwd",
        ] {
            let e = parse_url(bad).unwrap_err().to_string();
            assert!(e.contains("only from the Hugging Face Hub"), "{bad}: {e}");
        }
        for bad in [
            "https://huggingface.co/o/r",
            "https://huggingface.co/o/r/tree/main/x.pth",
            "https://huggingface.co/o/r/resolve/main/../x.pth",
            "https://huggingface.co/o/r/resolve/main/%2E%2E/x.pth",
            "https://huggingface.co/datasets/o/r/resolve/main/x.pth",
            "hf://o/r",
            "hf://o/r/../x",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }
}
