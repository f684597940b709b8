//! `rwkv-cli info MODEL`: what a checkpoint holds, without running it: every tensor the
//! model needs is checked (name, shape, type, `.pth` CRC) but none is converted, so a
//! multi-gigabyte checkpoint is described in about the time it takes to read it once.

use anyhow::Result;
use clap::Args;
use rwkv_cli::catalog;
use rwkv_cli::checkpoint::Checkpoint;
use rwkv_cli::hub::{self, HubFile};
use rwkv_cli::models;
use rwkv_cli::stats::{human_bytes, human_count};

#[derive(Args, Debug)]
pub struct InfoArgs {
    /// Checkpoint: a file (.pth, .safetensors or .gguf; or a state-tuning file), a catalogue alias (see `rwkv-cli models`) or
    /// owner/repo:file.pth[@revision] on the Hugging Face Hub (also owner/repo/file.pth, hf://owner/repo/file.pth
    /// or a huggingface.co …/resolve/… or …/blob/… link). Default: the embedded model.
    pub model: Option<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Download a Hub model that is not in the cache yet, to describe the file itself (without
    /// it, an uncached model shows the catalogue's facts and its cache status, offline).
    #[arg(long)]
    pub download: bool,
    /// Also read every weight (or every value of a state-tuning file) and check that none is
    /// NaN or infinite (reads the whole file); exit 1 naming the tensors that hold such values.
    #[arg(long)]
    pub check: bool,
}

/// Tensors holding NaN or infinite values: (name, NaN count, infinity count).
fn non_finite_tensors(ckpt: &Checkpoint) -> Result<Vec<(String, usize, usize)>> {
    let mut bad = Vec::new();
    for (name, meta) in ckpt.tensors() {
        if meta.dtype == rwkv_cli::checkpoint::StoredDType::Other {
            continue;
        }
        let (mut nan, mut inf) = (0usize, 0usize);
        ckpt.read_f32_chunks(name, 1 << 16, |_, c| {
            nan += c.iter().filter(|v| v.is_nan()).count();
            inf += c.iter().filter(|v| v.is_infinite()).count();
            Ok(())
        })?;
        if nan + inf > 0 {
            bad.push((name.clone(), nan, inf));
        }
    }
    Ok(bad)
}

/// An uncached Hub model without `--download`: what the catalogue (or the reference) says.
fn describe_uncached(file: &HubFile, alias: Option<&str>, json: bool) -> Result<()> {
    let entry = alias.and_then(catalog::find);
    let source = match alias {
        Some(a) => format!("{file} (alias {a})"),
        None => file.to_string(),
    };
    if json {
        let mut v = serde_json::json!({
            "source": source,
            "repo": file.repo,
            "file": file.file,
            "revision": file.revision,
            "cached": false,
            "cached_at": null,
        });
        if let Some(e) = entry {
            v["version"] = e.version.clone().into();
            v["tokenizer"] = e.tokenizer.clone().into();
            v["params"] = e.params.into();
            v["download_bytes"] = e.size.into();
            v["description"] = e.description.clone().into();
        }
        return crate::outln!("{v}");
    }
    let mut out = format!(
        "source        {source}
cached        no (in {}): `info --download` or any command that runs it downloads it
",
        hub::cache_dir().display()
    );
    if let Some(e) = entry {
        out += &format!(
            "version       RWKV {} (catalogue)
tokenizer     {}
parameters    about {}
download      {}
description   {}
",
            e.version,
            e.tokenizer,
            human_count(e.params),
            human_bytes(e.size),
            e.description
        );
    }
    crate::cli::print_out(&out)
}

/// `--check`: every value of every tensor (model weights or a state) is finite, or one error
/// naming the tensors that are not.
fn check_finite(path: &std::path::Path, ckpt: &Checkpoint) -> Result<()> {
    let bad = non_finite_tensors(ckpt)?;
    if !bad.is_empty() {
        let list: Vec<String> = bad
            .iter()
            .take(5)
            .map(|(n, nan, inf)| format!("{n} ({nan} NaN, {inf} infinite)"))
            .collect();
        let more = if bad.len() > 5 {
            format!(" and {} more", bad.len() - 5)
        } else {
            String::new()
        };
        anyhow::bail!(
            "{}: {} tensors hold non-finite values: {}{more}",
            path.display(),
            bad.len(),
            list.join(", ")
        );
    }
    Ok(())
}

/// A state-tuning file: its shape, what it fits, how it is stored.
fn describe_state(
    path: &std::path::Path,
    source: &str,
    ckpt: &Checkpoint,
    st: &models::init_state::StateInfo,
    json: bool,
    checked: bool,
) -> Result<()> {
    if json {
        let mut v = serde_json::json!({
            "path": path.display().to_string(),
            "source": source,
            "kind": "state",
            "layers": st.n_layer,
            "heads": st.n_head,
            "head_size": st.head_size,
            "width": st.width(),
            "stored_dtype": st.dtype.name(),
            "file_bytes": ckpt.file_size,
        });
        if checked {
            v["values_finite"] = true.into();
        }
        return crate::outln!("{v}");
    }
    let check = if checked {
        format!(
            "check         every value is finite ({} tensors read)\n",
            ckpt.tensors().len()
        )
    } else {
        String::new()
    };
    crate::cli::print_out(&format!(
        "path          {}\nsource        {source}\n\
         kind          state-tuned initial state (no model weights; use it with --init-state)\n\
         layers        {}\nheads         {} × {}\n\
         fits          RWKV v5, v6 or v7 models of {} layers and width {}\n\
         stored dtype  {}\nfile size     {}\n{check}",
        path.display(),
        st.n_layer,
        st.n_head,
        st.head_size,
        st.n_layer,
        st.width(),
        st.dtype.name(),
        human_bytes(ckpt.file_size),
    ))
}

pub fn run(args: InfoArgs) -> Result<()> {
    let (path, source, cached_at) = match &args.model {
        Some(m) => {
            if let hub::Source::Hub { file, alias } = hub::identify(m)? {
                if !args.download && file.cached(&hub::cache_dir()).is_none() {
                    return describe_uncached(&file, alias.as_deref(), args.json);
                }
            }
            let resolved = rwkv_cli::hub::resolve(m, &super::DownloadBar::default())?;
            let cached_at = resolved.cached_at().map(|p| p.display().to_string());
            (resolved.path.clone(), resolved.describe(), cached_at)
        }
        None => {
            let p = rwkv_cli::default_model::path()?;
            let at = Some(p.display().to_string());
            (
                p,
                format!(
                    "{} (models/default.safetensors)",
                    rwkv_cli::default_model::NAME
                ),
                at,
            )
        }
    };
    let ckpt = Checkpoint::open(&path)?;
    if args.check {
        check_finite(&path, &ckpt)?;
    }
    // A state-tuning file (`--init-state`) holds no model: describe the state.
    let state = models::init_state::inspect(&ckpt)?;
    if let Some(st) = state.as_ref().filter(|s| !s.in_model) {
        return describe_state(&path, &source, &ckpt, st, args.json, args.check);
    }
    let c = &models::inspect(&ckpt)?;
    let stored = ckpt.stored_dtype().name();
    // v4 has no heads: its recurrence runs channel by channel.
    let headed = c.version != models::Version::V4;
    if args.json {
        let v = serde_json::json!({
            "path": path.display().to_string(),
            "source": source,
            "cached_at": cached_at,
            "version": c.version.name(),
            "layers": c.n_layer,
            "width": c.n_embd,
            "heads": headed.then_some(c.n_head),
            "head_size": headed.then_some(c.head_size),
            "ffn": c.n_ffn,
            "vocab": c.vocab_size,
            "params": c.n_params,
            "stored_dtype": stored,
            "file_bytes": ckpt.file_size,
            "state_bytes": c.state_bytes(),
            "gguf": ckpt.gguf().map(|g| g.summary_json()),
            "initial_state": state.as_ref().map(|st| st.to_string()),
        });
        let mut v = v;
        if args.check {
            v["weights_finite"] = true.into();
        }
        return crate::outln!("{v}");
    }
    let mut out = format!("path          {}\nsource        {source}\n", path.display());
    if let Some(at) = &cached_at {
        out += &format!("cached at     {at}\n");
    }
    let heads = if headed {
        format!("{} × {}", c.n_head, c.head_size)
    } else {
        "none (RWKV v4 mixes each channel on its own)".to_string()
    };
    out += &format!(
        "version       RWKV {}\nlayers        {}\nwidth         {}\nheads         {heads}\n\
         ffn width     {}\nvocab         {}\nparameters    {} ({})\nstored dtype  {stored}\n\
         file size     {}\nstate size    {} ({} bytes, constant)\n",
        c.version,
        c.n_layer,
        c.n_embd,
        c.n_ffn,
        c.vocab_size,
        c.n_params,
        human_count(c.n_params),
        human_bytes(ckpt.file_size),
        human_bytes(c.state_bytes() as u64),
        c.state_bytes()
    );
    if args.check {
        out += &format!(
            "check         every weight is finite ({} tensors read)\n",
            ckpt.tensors().len()
        );
    }
    if let Some(st) = &state {
        out += &format!("initial state {st}\n");
    }
    if let Some(g) = ckpt.gguf() {
        out += &g.summary();
    }
    crate::cli::print_out(&out)
}
