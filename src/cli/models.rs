//! `rwkv-cli models`: the built-in catalogue, and which entries are already in the cache.
//!
//! A cache lookup only: it never touches the network.

use anyhow::Result;
use clap::Args;
use rwkv_cli::catalog;
use rwkv_cli::hub::{self, HubFile};
use rwkv_cli::stats::{human_bytes, human_count};

#[derive(Args, Debug)]
pub struct ModelsArgs {
    /// Print one JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: ModelsArgs) -> Result<()> {
    let cache = hub::cache_dir();
    let rows: Vec<(&catalog::Entry, Option<std::path::PathBuf>)> = catalog::entries()
        .iter()
        .map(|e| (e, HubFile::from(e).cached(&cache)))
        .collect();
    if args.json {
        let list: Vec<serde_json::Value> = rows
            .iter()
            .map(|(e, cached)| {
                serde_json::json!({
                    "alias": e.alias,
                    "repo": e.repo,
                    "file": e.file,
                    "revision": e.revision,
                    "version": e.version,
                    "tokenizer": e.tokenizer,
                    "params": e.params,
                    "size_bytes": e.size,
                    "description": e.description,
                    "cached": cached.is_some(),
                    "cached_at": cached.as_ref().map(|p| p.display().to_string()),
                })
            })
            .collect();
        crate::outln!("{}", serde_json::Value::Array(list))?;
        return Ok(());
    }
    let width = rows.iter().map(|(e, _)| e.alias.len()).max().unwrap_or(5);
    let vwidth = rows
        .iter()
        .map(|(e, _)| e.version.chars().count())
        .chain([7])
        .max()
        .unwrap_or(7);
    let mut out = format!(
        "{:<width$}  {:<vwidth$}  {:>6}  {:>10}  {:<6}  SOURCE\n",
        "ALIAS", "VERSION", "PARAMS", "DOWNLOAD", "CACHED"
    );
    for (e, cached) in &rows {
        out += &format!(
            "{:<width$}  {:<vwidth$}  {:>6}  {:>10}  {:<6}  {}\n",
            e.alias,
            e.version,
            human_count(e.params),
            human_bytes(e.size),
            if cached.is_some() { "yes" } else { "no" },
            HubFile::from(*e),
        );
    }
    out += &format!(
        "\ncache: {}{}\n",
        cache.display(),
        if hub::offline() { " (offline)" } else { "" }
    );
    out += "run one: rwkv-cli generate --model ALIAS --prompt \"...\"\n";
    crate::cli::print_out(&out)
}
