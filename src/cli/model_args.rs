//! The flags that choose and load a model, shared by every command that runs one (`generate`,
//! `eval`, `bench`), and the one sequence that turns them into a running model:
//! resolve `--model` → open the checkpoint → the weights' format (`--dtype`/`--quant`) → load
//! → pick the tokenizer.

use anyhow::Result;
use clap::Args;
use rwkv_cli::checkpoint::Checkpoint;
use rwkv_cli::error::UsageError;
use rwkv_cli::format::Format;
use rwkv_cli::models::{self, Config, LoadOptions, Model, State};
use rwkv_cli::tokenizer::{self, Tokenizer, TokenizerKind};
use std::path::{Path, PathBuf};

/// The tokenizer names completions offer (`20b` also answers to `neox`).
pub const TOKENIZERS: [&str; 3] = ["world", "20b", "bytes"];

/// The model-loading flags (flattened into a command's own).
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Checkpoint: a file (.pth, .safetensors or llama.cpp's .gguf), a catalogue alias (see
    /// `rwkv-cli models`) or owner/repo:file.pth[@revision] on the Hugging Face Hub (also
    /// owner/repo/file.pth, hf://owner/repo/file.pth or a huggingface.co …/resolve/… or …/blob/…
    /// link). Default: the embedded model.
    #[arg(long, short)]
    pub model: Option<String>,
    /// Compute dtype of the weight matrices: f32, f16 or bf16 (default f32, which keeps
    /// matrices a safetensors or .pth file stores in bf16 or f16 in those 16 bits, computing
    /// exactly as from f32; a GGUF file whose matrices are quantized runs in the nearest
    /// quantized format, q8_0 or q4_0, unless --dtype or --quant says otherwise).
    #[arg(long, value_parser = super::named::<Format>(&["f32", "f16", "bf16"]), hide_possible_values = true)]
    pub dtype: Option<Format>,
    /// Quantize the weight matrices at load time: q8_0 or q4_0 (instead of --dtype).
    #[arg(long, conflicts_with = "dtype", value_parser = super::named::<Format>(&["q8_0", "q4_0"]), hide_possible_values = true)]
    pub quant: Option<Format>,
    /// Tokenizer (default: chosen from the vocabulary size): world, 20b, bytes.
    #[arg(long, value_parser = super::named::<TokenizerKind>(&TOKENIZERS), hide_possible_values = true)]
    pub tokenizer: Option<TokenizerKind>,
    #[command(flatten)]
    pub weight_cache: WeightCacheArgs,
}

/// The weight cache's flags (in [`ModelArgs`], and `compare`'s own).
#[derive(Args, Debug, Clone)]
pub struct WeightCacheArgs {
    /// Neither read nor write the weight cache (packed weights kept in the cache directory
    /// and memory-mapped by later runs; see the README).
    #[arg(long)]
    pub no_weight_cache: bool,
    /// Size limit of the weight cache (e.g. 16GiB; 0 turns it off); the least recently used
    /// files are removed beyond it. Default: $RWKV_CLI_WEIGHT_CACHE_MAX, else twice the
    /// machine's memory, at most 64 GiB.
    #[arg(long, value_name = "SIZE", value_parser = super::parse_size)]
    pub weight_cache_max: Option<u64>,
}

impl WeightCacheArgs {
    /// The weight cache's settings: off with `--no-weight-cache`, else bounded by
    /// `--weight-cache-max` or `$RWKV_CLI_WEIGHT_CACHE_MAX`.
    pub fn settings(&self) -> Result<rwkv_cli::weight_cache::Settings> {
        use rwkv_cli::weight_cache::Settings;
        if self.no_weight_cache {
            return Ok(Settings::off());
        }
        let max = match self.weight_cache_max {
            Some(m) => Some(m),
            None => match std::env::var("RWKV_CLI_WEIGHT_CACHE_MAX") {
                Ok(v) if !v.trim().is_empty() => Some(
                    super::parse_size(&v)
                        .map_err(|e| UsageError(format!("RWKV_CLI_WEIGHT_CACHE_MAX: {e:#}")))?,
                ),
                _ => None,
            },
        };
        Ok(Settings::default_with(max))
    }

    /// The same flags, for a child process's command line.
    pub fn to_args(&self) -> Vec<String> {
        let mut a = Vec::new();
        if self.no_weight_cache {
            a.push("--no-weight-cache".into());
        }
        if let Some(m) = self.weight_cache_max {
            a.push(format!("--weight-cache-max={m}"));
        }
        a
    }
}

/// Where a run starts: `--init-state`, a state-tuned initial state (flattened into the commands
/// that run text through a model: generate, chat, eval).
#[derive(Args, Debug, Clone)]
pub struct InitStateArgs {
    /// Start from a state-tuned initial state (RWKV-PEFT state tuning): a .pth or .safetensors
    /// file of blocks.N.att.time_state tensors trained for this model, or a model checkpoint
    /// carrying them. It replaces the recurrent state before the prompt (RWKV v5, v6, v7).
    #[arg(long, value_name = "FILE")]
    pub init_state: Option<PathBuf>,
}

impl InitStateArgs {
    /// The `--init-state` file's state, if one was given.
    pub fn load(&self, model: &dyn Model) -> Result<Option<State>> {
        self.init_state
            .as_ref()
            .map(|p| models::init_state::load(p, model.config()))
            .transpose()
    }

    /// The state before the first token: the `--init-state` file's, or a fresh one.
    pub fn start(&self, model: &dyn Model) -> Result<State> {
        Ok(self.load(model)?.unwrap_or_else(|| model.new_state()))
    }
}

/// The quantized format nearest to the quantized ggml type that holds most of a GGUF file's
/// layer matrices: Q8_0 and the 5/6-bit K-quants → q8_0; Q4_0 and Q4_K → q4_0. `None` for a
/// file with no quantized layer matrix (it computes in f32 like any checkpoint). The embedding
/// and head are left out (llama-quantize gives them their own types), and so are the small
/// matrices the converter keeps in float (LoRAs, the fused token-shift mixes).
fn gguf_native_format(g: &rwkv_cli::checkpoint::gguf::Gguf) -> Option<Format> {
    let mut bytes: Vec<(&str, usize)> = Vec::new();
    let layer_quantized = |t: &&rwkv_cli::checkpoint::gguf::TensorInfo| {
        t.name.starts_with("blk.") && t.ne.len() >= 2 && t.ty.block > 1
    };
    for t in g.tensors.iter().filter(layer_quantized) {
        match bytes.iter_mut().find(|(n, _)| *n == t.ty.name) {
            Some((_, b)) => *b += t.len,
            None => bytes.push((t.ty.name, t.len)),
        }
    }
    let (name, _) = bytes.into_iter().max_by_key(|&(_, b)| b)?;
    match name {
        "Q8_0" | "Q6_K" | "Q5_K" => Some(Format::Q8_0),
        "Q4_0" | "Q4_K" => Some(Format::Q4_0),
        _ => None,
    }
}

/// The weight format of a command line's `--dtype` and `--quant`: the quantized format when
/// one is given (it must be one), else the dtype.
pub fn effective_dtype(dtype: Format, quant: Option<Format>) -> Result<Format> {
    match quant {
        None => Ok(dtype),
        Some(q) if q.is_quantized() => Ok(q),
        Some(q) => anyhow::bail!(
            "--quant {} is not a quantized format (expected q8_0 or q4_0; use --dtype for f32, f16, bf16)",
            q.name()
        ),
    }
}

/// Resolves `--model` to a checkpoint file.
pub fn resolve_model(model: Option<&str>) -> Result<PathBuf> {
    match model {
        // A local file, a catalogue alias, or owner/repo:file[@revision] (see rwkv_cli::hub),
        // downloaded with a progress bar when it is not in the cache.
        Some(m) => Ok(rwkv_cli::hub::resolve(m, &super::DownloadBar::default())?.path),
        // No --model: the small RWKV-7 embedded in the binary.
        None => rwkv_cli::default_model::path(),
    }
}

/// A model loaded from the flags, without its tokenizer.
pub struct Loaded {
    /// The checkpoint file `--model` named.
    pub path: PathBuf,
    /// The checkpoint, still open (its fingerprint, its tensors' sizes); drop it to unmap the
    /// file once the model holds its own copy of the weights.
    pub checkpoint: Checkpoint,
    pub model: Box<dyn Model>,
    pub config: Config,
    /// The weights' format the model runs in.
    pub format: Format,
    /// Whether the weights came from the weight cache ("hit"), were converted and cached
    /// ("written", "rebuilt"), or not ("off", "not written").
    pub weight_cache: rwkv_cli::weight_cache::Status,
}

impl Loaded {
    /// The `"model"` object of the command's JSON.
    pub fn json(&self) -> serde_json::Value {
        let mut j = model_json(&self.path, &self.config, self.format);
        j["weight_cache"] = self.weight_cache.name().into();
        j
    }
}

impl ModelArgs {
    /// The weights' format: `--quant` when given (it must be a quantized one), else `--dtype`.
    /// A usage error otherwise.
    pub fn format(&self) -> Result<Format> {
        effective_dtype(self.dtype.unwrap_or(Format::F32), self.quant)
            .map_err(|e| UsageError(format!("{e:#}")).into())
    }

    /// The weights' format for this checkpoint: [`format`](Self::format), except that without
    /// `--dtype` or `--quant` a GGUF file of quantized matrices keeps (nearly) its own format
    /// instead of growing to f32.
    pub fn format_for(&self, ckpt: &Checkpoint) -> Result<Format> {
        let flags = self.format()?;
        if self.dtype.is_some() || self.quant.is_some() {
            return Ok(flags);
        }
        Ok(ckpt.gguf().and_then(gguf_native_format).unwrap_or(flags))
    }

    /// The checkpoint file `--model` names (downloaded into the cache if needed).
    pub fn resolve(&self) -> Result<PathBuf> {
        resolve_model(self.model.as_deref())
    }

    /// Opens the checkpoint at `path` and loads the model in the flags' format.
    pub fn load_from(&self, path: PathBuf) -> Result<Loaded> {
        let checkpoint = Checkpoint::open(&path)?;
        let format = self.format_for(&checkpoint)?;
        let cache = self.weight_cache.settings()?;
        let (model, report) =
            models::load_checkpoint_cached(&checkpoint, LoadOptions { dtype: format }, &cache)
                .map_err(|e| naming_the_file(e, &path))?;
        for w in &report.warnings {
            crate::errln!("warning: {w}");
        }
        let config = model.config().clone();
        Ok(Loaded {
            path,
            checkpoint,
            model,
            config,
            format,
            weight_cache: report.status,
        })
    }

    /// The tokenizer for a model of this configuration: `--tokenizer`, or the one its
    /// vocabulary size implies.
    pub fn tokenizer(&self, config: &Config) -> Result<Box<dyn Tokenizer>> {
        tokenizer::for_model(self.tokenizer, config.vocab_size)
    }

    /// The whole sequence: the format is checked, `--model` resolved, the checkpoint opened
    /// and loaded, the tokenizer chosen.
    pub fn load(&self) -> Result<(Loaded, Box<dyn Tokenizer>)> {
        self.format()?;
        let loaded = self.load_from(self.resolve()?)?;
        let tok = self.tokenizer(&loaded.config)?;
        Ok((loaded, tok))
    }
}

/// A load error as one message that names the file once and says each thing once: a context
/// that the next message repeats (`tensor X` over `tensor X: ...`) is dropped, and the file
/// goes in front when no part names it.
pub fn naming_the_file(e: anyhow::Error, path: &Path) -> anyhow::Error {
    let parts: Vec<String> = e.chain().map(|c| c.to_string()).collect();
    let mut kept: Vec<&str> = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        let repeated = parts
            .get(i + 1)
            .is_some_and(|next| next == p || next.starts_with(&format!("{p}:")));
        if !repeated {
            kept.push(p);
        }
    }
    let msg = kept.join(": ");
    let file = path.display().to_string();
    if msg.contains(&file) {
        anyhow::anyhow!(msg)
    } else {
        anyhow::anyhow!("{file}: {msg}")
    }
}

/// The `"model"` object of every command's JSON (`generate --stats-json`, `eval`, `bench` and
/// `compare --json`): which file ran, what it is, and the precision it ran in.
pub fn model_json(path: &Path, cfg: &Config, dtype: Format) -> serde_json::Value {
    serde_json::json!({
        "path": path.display().to_string(),
        "version": cfg.version.name(),
        "params": cfg.n_params,
        "layers": cfg.n_layer,
        "width": cfg.n_embd,
        "vocab": cfg.vocab_size,
        "dtype": dtype.name(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_errors_name_the_file_once_and_say_each_thing_once() {
        let e = anyhow::anyhow!("tensor x: its data lie outside the file")
            .context("tensor x")
            .context("loading");
        let m = naming_the_file(e, Path::new("/m/a.pth")).to_string();
        assert_eq!(
            m,
            "/m/a.pth: loading: tensor x: its data lie outside the file"
        );
        let e = anyhow::anyhow!("tensor y is missing from /m/a.pth");
        let m = naming_the_file(e, Path::new("/m/a.pth")).to_string();
        assert_eq!(m, "tensor y is missing from /m/a.pth");
    }

    #[test]
    fn quant_must_name_a_quantized_format() {
        use Format::*;
        assert_eq!(effective_dtype(F16, None).unwrap(), F16);
        assert_eq!(effective_dtype(F32, Some(Q8_0)).unwrap(), Q8_0);
        assert_eq!(effective_dtype(F32, Some(Q4_0)).unwrap(), Q4_0);
        let e = effective_dtype(F32, Some(BF16)).unwrap_err().to_string();
        assert!(
            e.starts_with("--quant bf16 is not a quantized format"),
            "{e}"
        );
    }
}
