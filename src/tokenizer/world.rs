//! The RWKV World tokenizer.
//!
//! The vocabulary (`rwkv_vocab_v20230424.txt`, from the Apache-2.0 `rwkv` Python package) is
//! embedded. Each line is `id repr len`: `repr` is a Python `str` literal (encoded as UTF-8) or
//! `bytes` literal, and `len` is the token's length in bytes. Ids run 1..=65529; id 0 is
//! end-of-text and decodes to nothing.
//!
//! Encoding is a greedy longest match over bytes, the same as the reference `TRIE_TOKENIZER`:
//! from the current position take the longest vocabulary entry that is a prefix of the rest of
//! the input, emit its id and continue after it. Every single byte is a token, so any byte
//! string (invalid UTF-8 included) can be encoded.
//!
//! The trie is stored flat: the children of a node are contiguous in the node array and sorted
//! by their edge byte. A step is a short linear scan over a node's edge bytes, or, for the ~760
//! nodes with more than 12 children (the root and common prefixes), a lookup in a 256-entry
//! table. Building takes about 20 ms; encoding runs at over 100 MB/s on one core.

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};

use anyhow::{bail, Context};

use super::Tokenizer;

/// The embedded vocabulary file.
const VOCAB_TEXT: &str = include_str!("rwkv_vocab_v20230424.txt");

/// Nodes with more children than this get a dense 256-entry child table.
const DENSE_MIN: usize = 12;

/// Marks a trie node that ends no token.
const NO_TOKEN: u32 = u32::MAX;

/// The embedded vocabulary, parsed and indexed on first use.
static EMBEDDED: OnceLock<Result<Arc<WorldVocab>, String>> = OnceLock::new();

/// The RWKV World tokenizer. Cloning is cheap (the tables are shared).
#[derive(Clone)]
pub struct WorldTokenizer {
    vocab: Arc<WorldVocab>,
}

impl std::fmt::Debug for WorldTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorldTokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("trie_nodes", &self.vocab.nodes.len())
            .field("dense_tables", &(self.vocab.dense.len() / 256))
            .finish()
    }
}

impl WorldTokenizer {
    /// The tokenizer for the embedded `rwkv_vocab_v20230424` vocabulary. The tables are built
    /// on the first call and shared by every later one.
    pub fn new() -> anyhow::Result<Self> {
        let vocab = EMBEDDED
            .get_or_init(|| {
                WorldVocab::parse(VOCAB_TEXT)
                    .map(Arc::new)
                    .map_err(|e| format!("{e:#}"))
            })
            .clone()
            .map_err(|e| anyhow::anyhow!("embedded World vocabulary: {e}"))?;
        Ok(WorldTokenizer { vocab })
    }

    /// A tokenizer for a vocabulary in the same `id repr len` line format.
    pub fn from_vocab_text(text: &str) -> anyhow::Result<Self> {
        Ok(WorldTokenizer {
            vocab: Arc::new(WorldVocab::parse(text)?),
        })
    }

    /// The bytes of one token without copying; empty for id 0 and unknown ids.
    pub fn token_slice(&self, id: u32) -> &[u8] {
        self.vocab.token(id)
    }
}

impl Tokenizer for WorldTokenizer {
    fn encode(&self, text: &[u8]) -> anyhow::Result<Vec<u32>> {
        self.vocab.encode(text)
    }

    /// Concatenates the tokens' bytes. Id 0 (end-of-text) and ids outside the vocabulary
    /// produce no bytes.
    fn decode(&self, ids: &[u32]) -> Vec<u8> {
        let len = ids.iter().map(|&id| self.vocab.token(id).len()).sum();
        let mut out = Vec::with_capacity(len);
        for &id in ids {
            out.extend_from_slice(self.vocab.token(id));
        }
        out
    }

    fn token_bytes(&self, id: u32) -> Vec<u8> {
        self.vocab.token(id).to_vec()
    }

    /// Largest id + 1 (65530 for the embedded vocabulary; models pad to 65536).
    fn vocab_size(&self) -> usize {
        self.vocab.offsets.len() - 1
    }

    fn name(&self) -> &'static str {
        "world"
    }

    fn eot_token(&self) -> Option<u32> {
        Some(0)
    }
}

/// One trie node. Its children are `nodes[start..start + len]`, sorted by `edges[child]`.
#[derive(Clone, Copy)]
struct Node {
    start: u32,
    len: u32,
    token: u32,
}

/// Parsed vocabulary: the bytes of every id, and a trie over them.
struct WorldVocab {
    /// Bytes of id `i` are `data[offsets[i]..offsets[i + 1]]`; id 0 is empty.
    offsets: Vec<u32>,
    data: Vec<u8>,
    /// Trie nodes; node 0 is the root.
    nodes: Vec<Node>,
    /// `edges[i]` is the byte on the edge leading into node `i` (unused for the root).
    edges: Vec<u8>,
    /// Nodes with more than [`DENSE_MIN`] children also get a 256-entry table in `dense`
    /// (child index, or 0 for none: the root is never a child), at `dense_at[node]`.
    dense: Vec<u32>,
    dense_at: Vec<u32>,
}

impl WorldVocab {
    fn parse(text: &str) -> anyhow::Result<Self> {
        let mut entries: Vec<(Vec<u8>, u32)> = Vec::with_capacity(65536);
        for (lineno, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let entry = parse_vocab_line(line)
                .with_context(|| format!("vocabulary line {}: {line:?}", lineno + 1))?;
            entries.push(entry);
        }
        if entries.is_empty() {
            bail!("vocabulary is empty");
        }

        // Id table.
        let max_id = entries.iter().map(|e| e.1).max().unwrap_or(0) as usize;
        let mut by_id: Vec<Option<&[u8]>> = vec![None; max_id + 1];
        for (bytes, id) in &entries {
            let slot = &mut by_id[*id as usize];
            if slot.is_some() {
                bail!("vocabulary has id {id} twice");
            }
            *slot = Some(bytes);
        }
        let total: usize = entries.iter().map(|e| e.0.len()).sum();
        let mut data = Vec::with_capacity(total);
        let mut offsets = Vec::with_capacity(max_id + 2);
        offsets.push(0u32);
        for bytes in &by_id {
            data.extend_from_slice(bytes.unwrap_or(&[]));
            offsets.push(u32::try_from(data.len()).context("vocabulary too large")?);
        }

        // Trie, built breadth-first from the sorted tokens so that siblings are contiguous.
        entries.sort_unstable();
        if let Some(w) = entries.windows(2).find(|w| w[0].0 == w[1].0) {
            bail!("ids {} and {} have the same bytes", w[0].1, w[1].1);
        }
        let mut nodes = vec![Node {
            start: 0,
            len: 0,
            token: NO_TOKEN,
        }];
        let mut edges = vec![0u8];
        let mut queue = VecDeque::new();
        queue.push_back((0usize, 0usize, entries.len(), 0usize));
        while let Some((node, mut lo, hi, depth)) = queue.pop_front() {
            // Entries in lo..hi share their first `depth` bytes; one equal to the prefix sorts first.
            if lo < hi && entries[lo].0.len() == depth {
                nodes[node].token = entries[lo].1;
                lo += 1;
            }
            let start = nodes.len();
            let mut i = lo;
            while i < hi {
                let b = entries[i].0[depth];
                let mut j = i + 1;
                while j < hi && entries[j].0[depth] == b {
                    j += 1;
                }
                queue.push_back((nodes.len(), i, j, depth + 1));
                nodes.push(Node {
                    start: 0,
                    len: 0,
                    token: NO_TOKEN,
                });
                edges.push(b);
                i = j;
            }
            nodes[node].start = u32::try_from(start).context("vocabulary too large")?;
            nodes[node].len = (nodes.len() - start) as u32;
        }

        let mut dense = Vec::new();
        let mut dense_at = vec![NO_TOKEN; nodes.len()];
        for (i, node) in nodes.iter().enumerate() {
            if node.len as usize > DENSE_MIN {
                dense_at[i] = u32::try_from(dense.len()).context("vocabulary too large")?;
                let base = dense.len();
                dense.resize(base + 256, 0);
                for c in node.start..node.start + node.len {
                    dense[base + edges[c as usize] as usize] = c;
                }
            }
        }

        Ok(WorldVocab {
            offsets,
            data,
            nodes,
            edges,
            dense,
            dense_at,
        })
    }

    #[inline]
    fn token(&self, id: u32) -> &[u8] {
        let id = id as usize;
        if id + 1 >= self.offsets.len() {
            return &[];
        }
        &self.data[self.offsets[id] as usize..self.offsets[id + 1] as usize]
    }

    /// The child of `node` along byte `b`.
    #[inline(always)]
    fn child(&self, node: usize, b: u8) -> Option<usize> {
        let n = self.nodes[node];
        let start = n.start as usize;
        let len = n.len as usize;
        if len > DENSE_MIN {
            let c = self.dense[self.dense_at[node] as usize + b as usize];
            return (c != 0).then_some(c as usize);
        }
        self.edges[start..start + len]
            .iter()
            .position(|&e| e == b)
            .map(|i| start + i)
    }

    fn encode(&self, text: &[u8]) -> anyhow::Result<Vec<u32>> {
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        let mut pos = 0;
        while pos < text.len() {
            let mut node = 0;
            let mut best = NO_TOKEN;
            let mut best_end = pos;
            for (i, &b) in text[pos..].iter().enumerate() {
                match self.child(node, b) {
                    Some(c) => {
                        node = c;
                        let token = self.nodes[c].token;
                        if token != NO_TOKEN {
                            best = token;
                            best_end = pos + i + 1;
                        }
                    }
                    None => break,
                }
            }
            if best == NO_TOKEN {
                bail!(
                    "byte 0x{:02x} at offset {pos} starts no token of the vocabulary",
                    text[pos]
                );
            }
            out.push(best);
            pos = best_end;
        }
        Ok(out)
    }
}

/// Parses one `id repr len` line and checks the length.
fn parse_vocab_line(line: &str) -> anyhow::Result<(Vec<u8>, u32)> {
    let (Some(first), Some(last)) = (line.find(' '), line.rfind(' ')) else {
        bail!("expected `id repr len`");
    };
    if first == last {
        bail!("expected `id repr len`");
    }
    let id: u32 = line[..first]
        .trim()
        .parse()
        .with_context(|| format!("bad id {:?}", &line[..first]))?;
    if id == 0 {
        bail!("id 0 is reserved for end-of-text");
    }
    let len_field = line[last + 1..].trim();
    let len: usize = len_field
        .parse()
        .with_context(|| format!("bad length {len_field:?}"))?;
    let bytes = parse_py_literal(line[first + 1..last].trim_start())?;
    if bytes.len() != len {
        bail!(
            "token {id} decodes to {} bytes but the line says {len}",
            bytes.len()
        );
    }
    if bytes.is_empty() {
        bail!("token {id} is empty");
    }
    Ok((bytes, id))
}

/// Parses a Python string literal as printed by `repr()`: a `str` literal (`'...'` or `"..."`,
/// returned as UTF-8) or a `bytes` literal (`b'...'`, `b"..."`).
///
/// Escapes: `\\ \' \" \a \b \f \n \r \t \v`, octal `\ooo`, `\xhh`, and in `str` literals
/// `\uhhhh` and `\Uhhhhhhhh`. As in Python, an unrecognised escape keeps its backslash.
/// `\N{...}`, raw and triple-quoted literals are not supported.
pub(crate) fn parse_py_literal(lit: &str) -> anyhow::Result<Vec<u8>> {
    let (is_bytes, rest) = match lit.as_bytes().first() {
        Some(b'b' | b'B') => (true, &lit[1..]),
        _ => (false, lit),
    };
    let quote = match rest.chars().next() {
        Some(q @ ('\'' | '"')) => q,
        _ => bail!("not a Python string literal: {lit:?}"),
    };
    if rest.len() < 2 || !rest.ends_with(quote) {
        bail!("unterminated Python string literal: {lit:?}");
    }
    let body = &rest[1..rest.len() - 1];

    let mut out = Vec::with_capacity(body.len());
    let mut chars = body.chars().peekable();
    let push_char = |out: &mut Vec<u8>, c: char| {
        let mut buf = [0u8; 4];
        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
    };
    // A code point from an escape: a byte in `bytes` literals, UTF-8 in `str` literals.
    let push_code = |out: &mut Vec<u8>, v: u32| -> anyhow::Result<()> {
        if is_bytes {
            match u8::try_from(v) {
                Ok(b) => out.push(b),
                Err(_) => bail!("escape value {v:#o} out of range in bytes literal {lit:?}"),
            }
        } else {
            match char::from_u32(v) {
                Some(c) => push_char(out, c),
                None => bail!("escape U+{v:04X} is not a Unicode scalar value in {lit:?}"),
            }
        }
        Ok(())
    };

    while let Some(c) = chars.next() {
        if c == quote {
            bail!("unescaped quote inside Python string literal: {lit:?}");
        }
        if c != '\\' {
            if is_bytes && !c.is_ascii() {
                bail!("non-ASCII character in bytes literal: {lit:?}");
            }
            push_char(&mut out, c);
            continue;
        }
        let Some(e) = chars.next() else {
            bail!("trailing backslash in Python string literal: {lit:?}");
        };
        match e {
            '\\' | '\'' | '"' => out.push(e as u8),
            'a' => out.push(0x07),
            'b' => out.push(0x08),
            'f' => out.push(0x0c),
            'n' => out.push(b'\n'),
            'r' => out.push(b'\r'),
            't' => out.push(b'\t'),
            'v' => out.push(0x0b),
            '\n' => {} // line continuation
            '0'..='7' => {
                let mut v = e as u32 - '0' as u32;
                for _ in 0..2 {
                    match chars.peek() {
                        Some(&d @ '0'..='7') => {
                            v = v * 8 + (d as u32 - '0' as u32);
                            chars.next();
                        }
                        _ => break,
                    }
                }
                push_code(&mut out, v)?;
            }
            'x' => push_code(&mut out, take_hex(&mut chars, 2, lit)?)?,
            'u' if !is_bytes => push_code(&mut out, take_hex(&mut chars, 4, lit)?)?,
            'U' if !is_bytes => push_code(&mut out, take_hex(&mut chars, 8, lit)?)?,
            'N' if !is_bytes => bail!("\\N{{...}} escapes are not supported: {lit:?}"),
            other => {
                if is_bytes && !other.is_ascii() {
                    bail!("non-ASCII character in bytes literal: {lit:?}");
                }
                out.push(b'\\');
                push_char(&mut out, other);
            }
        }
    }
    Ok(out)
}

/// Reads exactly `n` hex digits.
fn take_hex(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
    n: usize,
    lit: &str,
) -> anyhow::Result<u32> {
    let mut v: u32 = 0;
    for _ in 0..n {
        match chars.next().and_then(|c| c.to_digit(16)) {
            Some(d) => v = v.wrapping_mul(16).wrapping_add(d),
            None => bail!("truncated \\x/\\u/\\U escape in {lit:?}"),
        }
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lit(s: &str) -> Vec<u8> {
        parse_py_literal(s).unwrap_or_else(|e| panic!("{s}: {e:#}"))
    }

    #[test]
    fn plain_str_literals() {
        assert_eq!(lit("'abc'"), b"abc");
        assert_eq!(lit("\"it's\""), b"it's");
        assert_eq!(lit("' '"), b" ");
        assert_eq!(lit("'\u{4e2d}\u{6587}'"), "中文".as_bytes());
        assert_eq!(lit("'é'"), "é".as_bytes());
    }

    #[test]
    fn simple_escapes() {
        assert_eq!(lit(r"'\n'"), b"\n");
        assert_eq!(lit(r"'\t\r'"), b"\t\r");
        assert_eq!(lit(r"'\\'"), b"\\");
        assert_eq!(lit(r"'\''"), b"'");
        assert_eq!(lit(r#""\"""#), b"\"");
        assert_eq!(lit(r"'\a\b\f\v'"), [7, 8, 12, 11]);
        assert_eq!(lit(r"'\0'"), [0]);
        assert_eq!(lit(r"'\101\1012'"), b"AA2");
    }

    #[test]
    fn unknown_escapes_keep_the_backslash() {
        assert_eq!(lit(r"'\$'"), b"\\$");
        assert_eq!(lit(r"'\\$'"), b"\\$");
        assert_eq!(lit(r"'a\(b'"), b"a\\(b");
        assert_eq!(lit(r"b'\u00e9'"), b"\\u00e9");
    }

    #[test]
    fn hex_and_unicode_escapes_in_str() {
        // In a str literal, \x.. is a code point, encoded as UTF-8.
        assert_eq!(lit(r"'\x00'"), [0]);
        assert_eq!(lit(r"'\x7f'"), [0x7f]);
        assert_eq!(lit(r"'\x80'"), [0xc2, 0x80]);
        assert_eq!(lit(r"'\xe9'"), "é".as_bytes());
        assert_eq!(lit(r"'\u200b'"), "\u{200b}".as_bytes());
        assert_eq!(lit(r"'\u00A0x'"), "\u{a0}x".as_bytes());
        assert_eq!(lit(r"'\U0001f600'"), "😀".as_bytes());
    }

    #[test]
    fn bytes_literals() {
        assert_eq!(lit(r"b'\x80'"), [0x80]);
        assert_eq!(lit(r"b'\xe4\xb8'"), [0xe4, 0xb8]);
        assert_eq!(lit(r"b'a\xffb'"), [b'a', 0xff, b'b']);
        assert_eq!(lit(r#"b"'\x00""#), [b'\'', 0]);
        assert_eq!(lit(r"b'\377'"), [0xff]);
    }

    #[test]
    fn malformed_literals_are_errors() {
        for bad in [
            "abc",
            "'abc",
            "'",
            "b'",
            r"'\'",
            r"'\x4'",
            r"'\xzz'",
            r"'\u12'",
            r"'\ud800'",
            r"'\U00110000'",
            r"'\N{BULLET}'",
            "b'é'",
            r"b'\400'",
            "'a'b'",
            "r'a'",
        ] {
            assert!(parse_py_literal(bad).is_err(), "{bad} should fail");
        }
    }

    #[test]
    fn vocab_lines() {
        assert_eq!(parse_vocab_line("12 '\\x0b' 1").unwrap(), (vec![11], 12));
        assert_eq!(
            parse_vocab_line("129 b'\\x80' 1").unwrap(),
            (vec![0x80], 129)
        );
        assert_eq!(
            parse_vocab_line("65529 '    ' 4").unwrap(),
            (b"    ".to_vec(), 65529)
        );
        assert_eq!(
            parse_vocab_line("40 'a b' 3").unwrap(),
            (b"a b".to_vec(), 40)
        );
        // Length mismatch: '\x80' in a str literal is two UTF-8 bytes.
        let err = parse_vocab_line("129 '\\x80' 1").unwrap_err();
        assert!(format!("{err:#}").contains("2 bytes"), "{err:#}");
        assert!(parse_vocab_line("5 'ab'").is_err());
        assert!(parse_vocab_line("x 'a' 1").is_err());
        assert!(parse_vocab_line("0 'a' 1").is_err());
        assert!(parse_vocab_line("3 'a' one").is_err());
    }

    #[test]
    fn vocab_errors_name_the_line() {
        let err = WorldTokenizer::from_vocab_text("1 'a' 1\n2 'bc' 3\n").unwrap_err();
        assert!(format!("{err:#}").contains("line 2"), "{err:#}");
        assert!(WorldTokenizer::from_vocab_text("1 'a' 1\n2 'a' 1\n").is_err());
        assert!(WorldTokenizer::from_vocab_text("1 'a' 1\n1 'b' 1\n").is_err());
        assert!(WorldTokenizer::from_vocab_text("\n").is_err());
    }

    #[test]
    fn greedy_longest_match_on_small_vocab() {
        let t = WorldTokenizer::from_vocab_text(
            "1 'a' 1\r\n2 'b' 1\r\n3 'ab' 2\r\n4 'abc' 3\r\n5 'abcd' 4\r\n6 'c' 1\r\n",
        )
        .unwrap();
        assert_eq!(t.encode(b"abcab").unwrap(), [4, 3]);
        assert_eq!(t.encode(b"abcd").unwrap(), [5]);
        assert_eq!(t.encode(b"aabcc").unwrap(), [1, 4, 6]);
        assert_eq!(t.encode(b"").unwrap(), Vec::<u32>::new());
        assert!(t.encode(b"abx").is_err());
        assert_eq!(t.decode(&[4, 0, 99, 1]), b"abca");
        assert_eq!(t.vocab_size(), 7);
    }

    #[test]
    fn embedded_vocab_builds() {
        let t = WorldTokenizer::new().unwrap();
        assert_eq!(t.vocab_size(), 65530);
        for b in 0..=255u8 {
            assert_eq!(t.token_slice(u32::from(b) + 1), [b]);
        }
        assert!(t.token_slice(0).is_empty());
        assert!(t.token_slice(65530).is_empty());
        assert!(t.token_slice(u32::MAX).is_empty());
        assert_eq!(t.token_slice(65529), [b' '; 128]);
    }
}
