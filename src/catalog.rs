//! The built-in model catalogue: short aliases for official checkpoints on the Hugging Face Hub.
//!
//! The data lives in `models/catalog.toml` (embedded at build time) so that updating a file
//! name is a data change, not a code change. The file uses a small subset of TOML that
//! [`parse`] reads: `[[model]]` headers, `key = "string"` and `key = 123_456` lines, comments.

use anyhow::{bail, Context, Result};
use std::sync::OnceLock;

/// The catalogue's source text, embedded in the binary.
pub const CATALOG_TOML: &str = include_str!("../models/catalog.toml");

/// One catalogue entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub alias: String,
    /// `owner/name` on the Hub.
    pub repo: String,
    /// Path of the checkpoint inside the repo.
    pub file: String,
    /// Branch, tag or commit ("main" unless the entry says otherwise).
    pub revision: String,
    /// RWKV version, e.g. "v7" or "v5.2".
    pub version: String,
    /// Tokenizer the model was trained with: "world" or "20b".
    pub tokenizer: String,
    /// Parameter count (approximate: the exact one comes from the checkpoint).
    pub params: u64,
    /// Download size in bytes.
    pub size: u64,
    pub description: String,
}

/// The embedded catalogue, parsed once. The data file is checked by the unit tests, so a
/// parse failure here is a build defect.
pub fn entries() -> &'static [Entry] {
    static ENTRIES: OnceLock<Vec<Entry>> = OnceLock::new();
    ENTRIES.get_or_init(|| parse(CATALOG_TOML).expect("models/catalog.toml is malformed"))
}

/// The entry for an alias (case-insensitive), or for an exact file name in the catalogue.
pub fn find(name: &str) -> Option<&'static Entry> {
    let all = entries();
    all.iter()
        .find(|e| e.alias.eq_ignore_ascii_case(name))
        .or_else(|| all.iter().find(|e| e.file == name))
}

/// Up to `max` aliases closest to `name`: those containing it (or contained in it) first,
/// then by edit distance, keeping only plausible typos.
pub fn suggest(name: &str, max: usize) -> Vec<&'static str> {
    suggest_from(entries().iter().map(|e| e.alias.as_str()), name, max)
}

fn suggest_from<'a>(
    aliases: impl Iterator<Item = &'a str>,
    name: &str,
    max: usize,
) -> Vec<&'a str> {
    let needle = name.to_ascii_lowercase();
    // A file path or repo spec was probably meant to be a name: compare its last component.
    let needle = needle
        .rsplit(['/', '\\', ':'])
        .next()
        .unwrap_or(&needle)
        .to_string();
    if needle.is_empty() {
        return Vec::new();
    }
    let limit = (needle.chars().count() / 3).max(2);
    let mut scored: Vec<(usize, usize, &str)> = aliases
        .filter_map(|alias| {
            let a = alias.to_ascii_lowercase();
            let d = edit_distance(&needle, &a);
            let contains = needle.len() >= 3 && (a.contains(&needle) || needle.contains(&a));
            if contains {
                Some((0, d, alias))
            } else if d <= limit {
                Some((1, d, alias))
            } else {
                None
            }
        })
        .collect();
    scored.sort();
    scored.into_iter().take(max).map(|(_, _, a)| a).collect()
}

/// Levenshtein distance (insertions, deletions, substitutions), over characters.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != cb);
            cur[j + 1] = substitute.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// A value on the right of `=`.
#[derive(Debug)]
enum Value {
    Str(String),
    Int(u64),
}

/// Parses the catalogue's TOML subset. Errors name the line.
pub fn parse(text: &str) -> Result<Vec<Entry>> {
    let mut entries = Vec::new();
    let mut current: Option<(usize, Vec<(String, Value)>)> = None;
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = strip_comment(raw).trim();
        if line.is_empty() {
            continue;
        }
        if line.starts_with('[') {
            if line != "[[model]]" {
                bail!("catalogue line {n}: expected [[model]], found {line}");
            }
            if let Some((start, fields)) = current.take() {
                entries.push(build_entry(start, fields)?);
            }
            current = Some((n, Vec::new()));
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            bail!("catalogue line {n}: expected key = value, found {line}");
        };
        let key = key.trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            bail!("catalogue line {n}: invalid key {key:?}");
        }
        let value = parse_value(value.trim()).with_context(|| format!("catalogue line {n}"))?;
        let Some((_, fields)) = current.as_mut() else {
            bail!("catalogue line {n}: {key} outside a [[model]] entry");
        };
        if fields.iter().any(|(k, _)| k == key) {
            bail!("catalogue line {n}: {key} given twice");
        }
        fields.push((key.to_string(), value));
    }
    if let Some((start, fields)) = current.take() {
        entries.push(build_entry(start, fields)?);
    }
    for (i, e) in entries.iter().enumerate() {
        if entries[..i]
            .iter()
            .any(|o| o.alias.eq_ignore_ascii_case(&e.alias))
        {
            bail!("catalogue: alias {} appears twice", e.alias);
        }
    }
    Ok(entries)
}

/// The line without a `#` comment (a `#` inside a string is kept).
fn strip_comment(line: &str) -> &str {
    let mut in_str = false;
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_str => escaped = true,
            '"' => in_str = !in_str,
            '#' if !in_str => return &line[..i],
            _ => {}
        }
    }
    line
}

fn parse_value(v: &str) -> Result<Value> {
    if let Some(rest) = v.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = rest.chars();
        loop {
            match chars.next() {
                None => bail!("unterminated string"),
                Some('"') => break,
                Some('\\') => match chars.next() {
                    Some('"') => out.push('"'),
                    Some('\\') => out.push('\\'),
                    Some('n') => out.push('\n'),
                    Some('t') => out.push('\t'),
                    other => bail!("unsupported escape \\{}", other.unwrap_or(' ')),
                },
                Some(c) => out.push(c),
            }
        }
        let trailing = chars.as_str().trim();
        if !trailing.is_empty() {
            bail!("unexpected {trailing:?} after the string");
        }
        return Ok(Value::Str(out));
    }
    let digits: String = v.chars().filter(|&c| c != '_').collect();
    if digits.is_empty()
        || !digits.chars().all(|c| c.is_ascii_digit())
        || v.starts_with('_')
        || v.ends_with('_')
    {
        bail!("expected a \"string\" or a non-negative integer, found {v}");
    }
    Ok(Value::Int(
        digits
            .parse()
            .with_context(|| format!("integer {v} is too large"))?,
    ))
}

fn build_entry(line: usize, fields: Vec<(String, Value)>) -> Result<Entry> {
    let mut strings = std::collections::HashMap::new();
    let mut ints = std::collections::HashMap::new();
    for (k, v) in fields {
        match v {
            Value::Str(s) => {
                strings.insert(k, s);
            }
            Value::Int(i) => {
                ints.insert(k, i);
            }
        }
    }
    let ctx = |what: &str| format!("catalogue entry at line {line}: {what}");
    let mut text = |key: &str| -> Result<String> {
        match strings.remove(key) {
            Some(s) if !s.trim().is_empty() => Ok(s),
            Some(_) => bail!(ctx(&format!("{key} is empty"))),
            None if ints.contains_key(key) => bail!(ctx(&format!("{key} must be a string"))),
            None => bail!(ctx(&format!("{key} is missing"))),
        }
    };
    let alias = text("alias")?;
    let repo = text("repo")?;
    let file = text("file")?;
    let version = text("version")?;
    let tokenizer = text("tokenizer")?;
    let description = text("description")?;
    let revision = strings
        .remove("revision")
        .unwrap_or_else(|| "main".to_string());
    let mut number = |key: &str| -> Result<u64> {
        match ints.remove(key) {
            Some(v) => Ok(v),
            None => bail!(ctx(&format!("{key} (an integer) is missing"))),
        }
    };
    let params = number("params")?;
    let size = number("size")?;
    if let Some(k) = strings.keys().chain(ints.keys()).next() {
        bail!(ctx(&format!("unknown key {k}")));
    }
    if repo.split('/').count() != 2 || repo.starts_with('/') || repo.ends_with('/') {
        bail!(ctx(&format!("repo {repo} is not owner/name")));
    }
    if alias.contains(['/', ':', ' ']) {
        bail!(ctx(&format!(
            "alias {alias} may not contain '/', ':' or spaces"
        )));
    }
    Ok(Entry {
        alias,
        repo,
        file,
        revision,
        version,
        tokenizer,
        params,
        size,
        description,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_catalogue_parses_and_covers_the_required_families() {
        let all = parse(CATALOG_TOML).unwrap();
        for alias in [
            "rwkv7-g1-0.1b",
            "rwkv7-g1-0.4b",
            "rwkv7-g1-1.5b",
            "rwkv7-g1-2.9b",
            "rwkv7-world-0.1b",
            "rwkv7-world-0.4b",
            "rwkv7-world-1.5b",
            "rwkv7-world-2.9b",
            "rwkv6-world-1.6b",
            "rwkv6-world-3b",
            "rwkv5-world-1.5b",
            "rwkv4-pile-169m",
            "rwkv4-pile-430m",
        ] {
            let e = all.iter().find(|e| e.alias == alias).expect(alias);
            assert!(e.repo.starts_with("BlinkDL/"), "{alias}");
            assert!(e.file.ends_with(".pth"), "{alias}");
            assert_eq!(e.revision, "main");
            // bf16 checkpoints: about two bytes per parameter.
            let ratio = e.size as f64 / e.params as f64;
            assert!((1.9..2.1).contains(&ratio), "{alias}: {ratio}");
            let tok = if e.version == "v4" { "20b" } else { "world" };
            assert_eq!(e.tokenizer, tok, "{alias}");
        }
        assert_eq!(find("RWKV7-G1-0.1B").unwrap().alias, "rwkv7-g1-0.1b");
        assert_eq!(
            find("RWKV-x070-World-0.1B-v2.8-20241210-ctx4096.pth")
                .unwrap()
                .alias,
            "rwkv7-world-0.1b"
        );
        assert!(find("nonsense").is_none());
    }

    #[test]
    fn parser_reads_strings_integers_comments_and_defaults() {
        let text = r#"
# a comment
[[model]]   # trailing comment
alias = "a-1"
repo = "o/r"
file = "dir/x#1.pth"   # '#' inside a string stays
version = "v7"
tokenizer = "world"
params = 1_000
size = 2000
description = "say \"hi\""
revision = "v1.0"

[[model]]
alias = "b"
repo = "o/r"
file = "y.pth"
version = "v4"
tokenizer = "20b"
params = 1
size = 2
description = "d"
"#;
        let e = parse(text).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].file, "dir/x#1.pth");
        assert_eq!(e[0].params, 1000);
        assert_eq!(e[0].size, 2000);
        assert_eq!(e[0].description, "say \"hi\"");
        assert_eq!(e[0].revision, "v1.0");
        assert_eq!(e[1].revision, "main");
        assert!(parse("").unwrap().is_empty());
    }

    #[test]
    fn parser_errors_name_the_line_and_the_problem() {
        let ok = "alias = \"a\"\nrepo = \"o/r\"\nfile = \"f\"\nversion = \"v7\"\ntokenizer = \"world\"\nparams = 1\nsize = 2\ndescription = \"d\"\n";
        let with = |extra: &str| format!("[[model]]\n{ok}{extra}");
        let err = |t: &str| format!("{:#}", parse(t).unwrap_err());
        assert!(err("alias = \"x\"").contains("outside a [[model]]"));
        assert!(err("[model]\n").contains("line 1"));
        assert!(err(&with("size = 3\n")).contains("given twice"));
        assert!(err(&with("extra = \"x\"\n")).contains("unknown key extra"));
        assert!(err(&with("bad line\n")).contains("line 10"));
        assert!(err(&with("x = \"open\n")).contains("unterminated"));
        assert!(err(&with("y = -3\n")).contains("integer"));
        assert!(err(&with("z = 12ab\n")).contains("integer"));
        assert!(err(&format!("[[model]]\n{}", ok.replace("size = 2\n", ""))).contains("size"));
        assert!(err(&format!("[[model]]\n{}", ok.replace("o/r", "or"))).contains("owner/name"));
        assert!(err(&format!(
            "[[model]]\n{}",
            ok.replace("params = 1", "params = \"1\"")
        ))
        .contains("params"));
        assert!(err(&format!("[[model]]\n{ok}[[model]]\n{ok}")).contains("twice"));
    }

    #[test]
    fn edit_distance_counts_single_character_edits() {
        assert_eq!(edit_distance("", ""), 0);
        assert_eq!(edit_distance("abc", ""), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("rwkv7-g1-0.1b", "rwkv7-g1-0.1b"), 0);
        assert_eq!(edit_distance("rwkv7-g1-01b", "rwkv7-g1-0.1b"), 1);
        assert_eq!(edit_distance("rwkv7-g1-0.4b", "rwkv7-g1-0.1b"), 1);
        assert_eq!(edit_distance("größe", "grösse"), 2);
    }

    #[test]
    fn suggestions_are_the_nearest_aliases() {
        let aliases = [
            "rwkv7-g1-0.1b",
            "rwkv7-g1-0.4b",
            "rwkv6-world-3b",
            "rwkv4-pile-169m",
        ];
        let s = |n: &str| suggest_from(aliases.iter().copied(), n, 3);
        assert_eq!(s("rwkv7-g1-01b")[0], "rwkv7-g1-0.1b");
        assert_eq!(s("rwkv7-g1-0.1")[0], "rwkv7-g1-0.1b");
        assert_eq!(s("RWKV6-World-3B"), vec!["rwkv6-world-3b"]);
        assert_eq!(s("rwkv4-pile-169"), vec!["rwkv4-pile-169m"]);
        // A substring match ranks first.
        assert_eq!(s("g1-0.4b")[0], "rwkv7-g1-0.4b");
        // A path's last component is compared.
        assert_eq!(s("models/rwkv6-world-3")[0], "rwkv6-world-3b");
        // Nothing plausible: no suggestion.
        assert!(s("llama-70b").is_empty());
        assert!(s("").is_empty());
        // The real catalogue.
        assert_eq!(suggest("rwkv7-g1-0.1", 3)[0], "rwkv7-g1-0.1b");
    }
}
