//! `rwkv-cli tokenize` and `rwkv-cli detokenize`: text to token ids and back, with a model's
//! tokenizer (`--model`, read from the checkpoint's vocabulary size without loading weights)
//! or a named one (`--tokenizer`, no model at all).
//!
//! Also [`escape_bytes`], the escaped form of a token's bytes used here (`--verbose`) and by
//! `generate --logprobs`.

use anyhow::{bail, Context, Result};
use clap::Args;
use rwkv_cli::tokenizer::{self, Tokenizer, TokenizerKind};
use std::io::{IsTerminal, Read};

const TOKENIZE_HELP: &str = "\
Examples:
  rwkv-cli tokenize 'Hello, world'                  ids of the embedded model's tokenizer
  rwkv-cli tokenize --tokenizer 20b --verbose - < prompt.txt
  rwkv-cli tokenize --json 'Hi' | rwkv-cli detokenize

Output: one id per line; --verbose adds a tab and the token's bytes, escaped (\\n \\t \\\\ and
\\xNN for bytes that are not printable UTF-8); --json prints one array (of objects {\"id\",
\"bytes\"} with --verbose).

Environment: RWKV_CLI_CACHE or XDG_CACHE_HOME (the embedded model's tokenizer); HF_HOME,
HF_HUB_CACHE, HF_TOKEN, HF_ENDPOINT, HF_HUB_OFFLINE (when --model names a Hub model).
Exit status: 0 success, 1 failure (one line on stderr), 2 usage error.";

const DETOKENIZE_HELP: &str = "\
Examples:
  rwkv-cli detokenize 72 105 33                     the embedded model's tokenizer (bytes)
  rwkv-cli tokenize --tokenizer world 'Hi there' | rwkv-cli detokenize --tokenizer world
  echo '[3, 4, 5]' | rwkv-cli detokenize --tokenizer bytes | xxd

Ids are read from the arguments, or from stdin when there are none (or for `-`): numbers
separated by spaces, newlines or commas; the brackets of a JSON array are accepted. The bytes
go to stdout as they are (no newline is added). An id outside the vocabulary is an error.

Environment: RWKV_CLI_CACHE or XDG_CACHE_HOME (the embedded model's tokenizer); HF_HOME,
HF_HUB_CACHE, HF_TOKEN, HF_ENDPOINT, HF_HUB_OFFLINE (when --model names a Hub model).
Exit status: 0 success, 1 failure (one line on stderr), 2 usage error.";

/// Which tokenizer: a model's, or a named one.
#[derive(Args, Debug, Clone)]
pub struct TokenizerArgs {
    /// The tokenizer of this checkpoint (a file, catalogue alias or Hub name, as for generate);
    /// only its header is read. Default: the embedded model's.
    #[arg(long, short, conflicts_with = "tokenizer")]
    pub model: Option<String>,
    /// A tokenizer by name, without any model: world, 20b, bytes.
    #[arg(long, value_parser = super::named::<TokenizerKind>(&super::model_args::TOKENIZERS), hide_possible_values = true)]
    pub tokenizer: Option<TokenizerKind>,
}

impl TokenizerArgs {
    /// The tokenizer: `--tokenizer` as is (no model is looked at), else the one the model's
    /// vocabulary size implies (from the shape of `emb.weight` in the checkpoint's header; no
    /// weight is converted).
    pub fn load(&self) -> Result<Box<dyn Tokenizer>> {
        if let Some(k) = self.tokenizer {
            return tokenizer::load(k);
        }
        use rwkv_cli::checkpoint::Checkpoint;
        use rwkv_cli::default_model;
        // The embedded model is read where it is (no cache file is written for it).
        let (ckpt, name) = match self.model.as_deref() {
            None => (
                Checkpoint::from_bytes(default_model::WEIGHTS.to_vec(), default_model::NAME)?,
                default_model::NAME.to_string(),
            ),
            Some(m) => {
                let path = super::model_args::resolve_model(Some(m))?;
                (Checkpoint::open(&path)?, path.display().to_string())
            }
        };
        let Some(emb) = ckpt.meta("emb.weight") else {
            bail!("{name} is not an RWKV checkpoint: tensor emb.weight is missing");
        };
        let vocab = emb.shape.first().copied().unwrap_or(0);
        tokenizer::for_model(None, vocab)
    }
}

#[derive(Args, Debug, Clone)]
#[command(after_help = TOKENIZE_HELP)]
pub struct TokenizeArgs {
    #[command(flatten)]
    pub tok: TokenizerArgs,
    /// The text; `-` (or no argument with a piped stdin) reads it from stdin.
    pub text: Option<std::ffi::OsString>,
    /// Print a JSON array instead of one id per line.
    #[arg(long)]
    pub json: bool,
    /// Also print each token's bytes, escaped.
    #[arg(long, short)]
    pub verbose: bool,
}

#[derive(Args, Debug, Clone)]
#[command(after_help = DETOKENIZE_HELP)]
pub struct DetokenizeArgs {
    #[command(flatten)]
    pub tok: TokenizerArgs,
    /// Token ids (none, or `-`: read them from stdin).
    pub ids: Vec<String>,
}

/// The bytes of a token (or any text) as printable text: valid UTF-8 is kept except the
/// backslash and control characters, which become `\\`, `\n`, `\r`, `\t` or `\xNN`; bytes that
/// are not valid UTF-8 become `\xNN`.
pub fn escape_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if c.is_control() && (c as u32) < 0x100 => {
                    out.push_str(&format!("\\x{:02x}", c as u32))
                }
                c if c.is_control() => out.push_str(&c.escape_unicode().to_string()),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

fn read_stdin(what: &str) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    std::io::stdin()
        .read_to_end(&mut buf)
        .with_context(|| format!("cannot read {what} from stdin"))?;
    Ok(buf)
}

pub fn run_tokenize(args: TokenizeArgs) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let text = match args.text.as_deref().map(|t| t.as_bytes()) {
        Some(b"-") => read_stdin("the text")?,
        Some(t) => t.to_vec(),
        None if !std::io::stdin().is_terminal() => read_stdin("the text")?,
        None => rwkv_cli::usage_bail!("no text: pass TEXT, or `-` and the text on stdin"),
    };
    let tok = args.tok.load()?;
    let ids = tok.encode(&text)?;
    if args.json {
        let v: Vec<serde_json::Value> = ids
            .iter()
            .map(|&id| {
                if args.verbose {
                    serde_json::json!({"id": id, "bytes": escape_bytes(&tok.token_bytes(id))})
                } else {
                    serde_json::json!(id)
                }
            })
            .collect();
        return crate::outln!("{}", serde_json::Value::Array(v));
    }
    let mut out = String::new();
    for &id in &ids {
        if args.verbose {
            out.push_str(&format!("{id}\t{}\n", escape_bytes(&tok.token_bytes(id))));
        } else {
            out.push_str(&format!("{id}\n"));
        }
    }
    super::print_out(&out)
}

/// Token ids in text: numbers separated by whitespace or commas, inside optional brackets.
fn parse_ids(text: &str) -> Result<Vec<u32>> {
    // Brackets in pairs, not nested (JSON arrays, one per line or one for all), and no two
    // commas without an id between them: a cut or garbled list is refused, not half read.
    let (mut depth, mut last) = (0i32, ' ');
    for c in text.chars().filter(|c| !c.is_whitespace()) {
        match c {
            '[' if depth == 0 => depth = 1,
            ']' if depth == 1 => depth = 0,
            '[' | ']' => anyhow::bail!("unbalanced brackets in the token ids"),
            ',' if matches!(last, ',' | '[') => {
                anyhow::bail!("a comma without a token id before it")
            }
            _ => {}
        }
        last = c;
    }
    if depth != 0 {
        anyhow::bail!("unbalanced brackets in the token ids (a '[' is never closed)");
    }
    text.split(|c: char| c.is_whitespace() || matches!(c, ',' | '[' | ']'))
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<u32>()
                .map_err(|_| anyhow::anyhow!("'{s}' is not a token id"))
        })
        .collect()
}

pub fn run_detokenize(args: DetokenizeArgs) -> Result<()> {
    let from_stdin = args.ids.is_empty() || args.ids == ["-"];
    let ids = if from_stdin {
        if args.ids.is_empty() && std::io::stdin().is_terminal() {
            rwkv_cli::usage_bail!("no token ids: pass them as arguments, or pipe them on stdin");
        }
        let bytes = read_stdin("the token ids")?;
        let text = String::from_utf8(bytes).context("the token ids on stdin are not text")?;
        parse_ids(&text)?
    } else {
        match parse_ids(&args.ids.join(" ")) {
            Ok(ids) => ids,
            Err(e) => rwkv_cli::usage_bail!("{e}"),
        }
    };
    let tok = args.tok.load()?;
    if let Some(&bad) = ids.iter().find(|&&id| id as usize >= tok.vocab_size()) {
        bail!(
            "token id {bad} is outside the {} tokenizer's vocabulary (ids 0..{})",
            tok.name(),
            tok.vocab_size()
        );
    }
    super::print_bytes(&tok.decode(&ids))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_controls_backslash_and_invalid_utf8() {
        assert_eq!(escape_bytes(b"Hello"), "Hello");
        assert_eq!(escape_bytes(b" a\\b\n\t\r"), " a\\\\b\\n\\t\\r");
        assert_eq!(escape_bytes("é中".as_bytes()), "é中");
        assert_eq!(escape_bytes(b"\x00\x1b\x7f"), "\\x00\\x1b\\x7f");
        // Half of "é" (c3 a9) and a lone continuation byte.
        assert_eq!(escape_bytes(b"\xc3"), "\\xc3");
        assert_eq!(escape_bytes(b"a\xa9b"), "a\\xa9b");
    }

    #[test]
    fn ids_parse_from_lines_commas_and_json() {
        assert_eq!(parse_ids("1 2\n3").unwrap(), vec![1, 2, 3]);
        assert_eq!(parse_ids("[4, 5,6]\n").unwrap(), vec![4, 5, 6]);
        assert_eq!(parse_ids("").unwrap(), Vec::<u32>::new());
        assert!(parse_ids("1 x").is_err());
        assert!(parse_ids("-1").is_err());
        assert_eq!(parse_ids("[1,2]\n[3]").unwrap(), vec![1, 2, 3]);
        for cut in ["[72,105", "72,105]", "[[1]]", "72,,105", "[,1]", "1, ,2"] {
            assert!(parse_ids(cut).is_err(), "{cut}");
        }
    }
}
