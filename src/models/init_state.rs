//! State-tuned initial states: start a model from a trained state instead of zeros.
//!
//! *State tuning* (RWKV-PEFT's `--peft state`) trains only the initial WKV state of a frozen
//! base model, to give it a role, a style or a skill without changing a weight. The result is
//! a small file holding one tensor per layer, `blocks.{i}.att.time_state`, of shape
//! `[heads, head size, head size]`, in any float dtype (`.pth` as RWKV-PEFT saves it; ai00 and
//! web-rwkv read the same tensors from safetensors). A state only fits the base model it was
//! trained with. ChatRWKV's `rwkv_state_merger.py` and RWKV-PEFT's `merge/merge_state.py` copy
//! the tensors into the model checkpoint instead: such a full checkpoint is accepted as a state
//! file too.
//!
//! The state replaces the WKV part of the state before the first token; the token-shift parts
//! stay zero. Every trainer and loader keeps `time_state` per head as (value channel, key
//! channel); each version's [`TimeStateLayout`] (its registry row) says how it enters that
//! version's WKV state:
//!
//! - **v5, v6: transposed** (the WKV state is key × value). The official `rwkv` package
//!   (0.8.32, `rwkv/model.py`, class `RWKV`) starts a model whose checkpoint has `time_state`
//!   tensors from `w[f'blocks.{i}.att.time_state'].transpose(1,2)` (versions 5.x and 6); so do
//!   RWKV-Runner (`backend-python/utils/rwkv.py`, `load_rwkv_state`: `.transpose(1, 2)` unless
//!   `model.version >= 7`) and RWKV-PEFT's training (`rwkvt/operator/rwkvop.py`,
//!   `RUN_CUDA_RWKV6_STATE`: `s.transpose(1, 2)` becomes the initial state of FLA's
//!   `chunk_rwkv6`, whose state is key × value).
//! - **v7: as stored** (the WKV state is value × key, as `RWKV_x070` keeps it). RWKV-Runner
//!   uses the tensor as it is for `model.version >= 7`; RWKV-PEFT's `RUN_RWKV7_STATE` transposes
//!   it into FLA's key × value `chunk_rwkv7` state, i.e. the stored tensor is value × key. The
//!   official package's `RWKV_x070` itself never reads `time_state` (it starts from zeros even
//!   when a merged checkpoint has one), so for v7 the reference is these loaders and trainers.
//! - **v4**: no matrix state; state-tuned files do not exist for it.
//!
//! web-rwkv (`src/runtime/v5.rs`, `v6.rs`, `v7.rs`: `read_state`) reads the same tensor name
//! and shape for each version into its own internal layout.
//!
//! What is checked, each failure one line naming the file: it is not a state rwkv-cli saved
//! itself (`--state-out`, [`crate::state_file`]); the tensors are the file's only ones
//! (unless it is a full model checkpoint), one per layer for layers 0, 1, … with none missing,
//! all of shape `[heads, head size, head size]` and a float type; then, against the model:
//! the version takes a state, the layer count and the shape match, a full checkpoint is of the
//! same version, and every value is finite. A bare state file does not say which version it
//! was trained for (v5, v6 and v7 states of one width have the same shape): only its shape can
//! be checked.

use super::{detect_version, Config, State, TimeStateLayout};
use crate::checkpoint::{Checkpoint, StoredDType};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::Path;

/// What a file holds in the way of a state-tuned initial state (for `rwkv-cli info`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateInfo {
    pub n_layer: usize,
    pub n_head: usize,
    pub head_size: usize,
    /// The element type the state is stored in (layer 0's).
    pub dtype: StoredDType,
    /// The file is a whole model checkpoint (it has `emb.weight`) that also carries a state.
    pub in_model: bool,
}

impl StateInfo {
    /// The width (`n_embd`) of the models this state fits: heads × head size.
    pub fn width(&self) -> usize {
        self.n_head * self.head_size
    }
}

impl std::fmt::Display for StateInfo {
    /// `state-tuned initial state: 12 layers × 12 heads × 64 × 64, bf16 (fits an RWKV v5, v6
    /// or v7 model of 12 layers and width 768)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "state-tuned initial state: {} layers × {} heads × {} × {}, {} (fits an RWKV v5, v6 or v7 model of {} layers and width {})",
            self.n_layer,
            self.n_head,
            self.head_size,
            self.head_size,
            self.dtype.name(),
            self.n_layer,
            self.width()
        )
    }
}

/// The layer of a tensor named `blocks.{i}.att.time_state`.
fn state_layer(name: &str) -> Option<usize> {
    let i = name
        .strip_prefix("blocks.")?
        .strip_suffix(".att.time_state")?;
    if i.is_empty() || !i.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    i.parse().ok()
}

/// Whether a checkpoint holds `time_state` tensors, and in what layout; `Ok(None)` when it
/// holds none. Checks the file on its own (no model needed): the state tensors are the only
/// ones unless the file is a model checkpoint, there is one per layer from 0 with none
/// missing, and all have one shape `[heads, head size, head size]` and a float type.
pub fn inspect(ckpt: &Checkpoint) -> Result<Option<StateInfo>> {
    let path = ckpt.path.display();
    let mut layers = BTreeMap::new();
    for (name, meta) in ckpt.tensors() {
        if let Some(i) = state_layer(name) {
            layers.insert(i, (name.as_str(), meta));
        }
    }
    let Some((&last, _)) = layers.last_key_value() else {
        return Ok(None);
    };
    let in_model = ckpt.contains("emb.weight");
    if !in_model {
        if let Some(other) = ckpt.tensors().keys().find(|n| state_layer(n).is_none()) {
            bail!(
                "{path}: tensor {other} does not belong in a state file, which holds only blocks.N.att.time_state tensors"
            );
        }
    }
    if last > 4096 {
        bail!(
            "{path} claims a state for {} layers; refusing an implausible layout",
            last + 1
        );
    }
    if let Some(missing) = (0..=last).find(|i| !layers.contains_key(i)) {
        bail!(
            "{path} has no blocks.{missing}.att.time_state (a state holds one for every layer, here 0 to {last})"
        );
    }
    let (first, first_meta) = layers[&0];
    for (name, meta) in layers.values() {
        if meta.dtype == StoredDType::Other {
            bail!(
                "{path}: tensor {name} is stored as {}; a state holds floats (f32, f16, bf16 or f64)",
                ckpt.stored_type_name(name).unwrap_or("a non-float type")
            );
        }
        let s = &meta.shape;
        if s.len() != 3 || s[1] != s[2] || s.contains(&0) {
            bail!(
                "{path}: tensor {name} has shape {s:?}; a state tensor is [heads, head size, head size]"
            );
        }
        if *s != first_meta.shape {
            bail!(
                "{path}: tensor {name} has shape {s:?}, but {first} has {:?}",
                first_meta.shape
            );
        }
    }
    Ok(Some(StateInfo {
        n_layer: last + 1,
        n_head: first_meta.shape[0],
        head_size: first_meta.shape[1],
        dtype: first_meta.dtype,
        in_model,
    }))
}

/// Reads the initial state in the file `path` (a state-tuning file, `.pth` or safetensors, or
/// a model checkpoint carrying `time_state` tensors) for a model of configuration `cfg`.
pub fn load(path: &Path, cfg: &Config) -> Result<State> {
    let mut file = std::fs::File::open(path)
        .with_context(|| format!("cannot open state file {}", path.display()))?;
    // The states rwkv-cli saves itself (`crate::state_file`, magic "RWKVSTATE\0") are another
    // thing: a whole recurrent state after some text, for the same model only. (The literal is
    // repeated rather than imported: state_file imports models, and models must not import it.)
    let mut magic = [0u8; 10];
    if std::io::Read::read_exact(&mut file, &mut magic).is_ok() && &magic == b"RWKVSTATE\0" {
        bail!(
            "{} is a state saved by rwkv-cli (--state-out), not a state-tuning file: resume it with --state-in",
            path.display()
        );
    }
    drop(file);
    from_checkpoint(&Checkpoint::open(path)?, cfg)
}

/// [`load`] from an opened checkpoint: the state before any token, its WKV part from the
/// file's `time_state` tensors in this version's layout, its token-shift parts zero.
pub fn from_checkpoint(ckpt: &Checkpoint, cfg: &Config) -> Result<State> {
    let path = ckpt.path.display();
    let layout = cfg.version.info().time_state;
    if layout == TimeStateLayout::Unsupported {
        bail!(
            "RWKV {} models have no matrix state to start from: state-tuned initial states exist for v5, v6 and v7",
            cfg.version
        );
    }
    let Some(info) = inspect(ckpt)? else {
        if ckpt.contains("emb.weight") {
            bail!(
                "{path} is a model checkpoint without a trained state (it has no blocks.N.att.time_state tensors), not a state file"
            );
        }
        bail!("{path} is not a state file: it has no blocks.N.att.time_state tensors");
    };
    if info.in_model {
        let version = detect_version(ckpt)?;
        if version != cfg.version {
            bail!(
                "{path} carries the state of an RWKV {version} model; this model is RWKV {}",
                cfg.version
            );
        }
    }
    if info.n_layer != cfg.n_layer {
        bail!(
            "{path} holds a state for {} layers; this model has {}",
            info.n_layer,
            cfg.n_layer
        );
    }
    let (h, n) = (cfg.n_head, cfg.head_size);
    if (info.n_head, info.head_size) != (h, n) {
        bail!(
            "{path} holds a state of {} heads × {} × {} per layer; this model's is {h} heads × {n} × {n}",
            info.n_head,
            info.head_size,
            info.head_size
        );
    }
    let mut state = State::new(cfg);
    for (i, layer) in state.layers.iter_mut().enumerate() {
        let name = format!("blocks.{i}.att.time_state");
        let stored = ckpt.read_f32(&name)?;
        if let Some(at) = stored.iter().position(|x| !x.is_finite()) {
            bail!(
                "{path}: tensor {name} holds a non-finite value ({} at head {}, row {}, column {})",
                stored[at],
                at / (n * n),
                at / n % n,
                at % n
            );
        }
        layer.wkv = match layout {
            TimeStateLayout::AsStored => stored,
            TimeStateLayout::Transposed => transposed_per_head(&stored, h, n),
            TimeStateLayout::Unsupported => unreachable!("refused above"),
        };
    }
    Ok(state)
}

/// `h` blocks of `n × n`, each transposed.
fn transposed_per_head(m: &[f32], h: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0.0; h * n * n];
    for (src, dst) in m.chunks_exact(n * n).zip(out.chunks_exact_mut(n * n)) {
        for i in 0..n {
            for j in 0..n {
                dst[j * n + i] = src[i * n + j];
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A safetensors file of f32 tensors `(name, shape)`, each filled with `fill(k)`.
    fn file(tensors: &[(&str, &[usize])], fill: impl Fn(usize) -> f32) -> Checkpoint {
        let mut header = Vec::new();
        let mut data = Vec::new();
        for (name, shape) in tensors {
            let n: usize = shape.iter().product();
            let start = data.len();
            for k in 0..n {
                data.extend_from_slice(&fill(k).to_le_bytes());
            }
            header.push(format!(
                r#""{name}":{{"dtype":"F32","shape":{shape:?},"data_offsets":[{start},{}]}}"#,
                data.len()
            ));
        }
        let header = format!("{{{}}}", header.join(","));
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(&data);
        Checkpoint::from_bytes(bytes, "s.safetensors").unwrap()
    }

    fn cfg(version: super::super::Version) -> Config {
        Config {
            version,
            n_layer: 2,
            n_embd: 6,
            n_att: 6,
            n_ffn: 8,
            n_head: 2,
            head_size: 3,
            vocab_size: 4,
            n_params: 0,
        }
    }

    const TWO: [(&str, &[usize]); 2] = [
        ("blocks.0.att.time_state", &[2, 3, 3]),
        ("blocks.1.att.time_state", &[2, 3, 3]),
    ];

    #[test]
    fn v7_takes_the_state_as_stored_and_v5_v6_transposed() {
        use super::super::Version::*;
        let ckpt = file(&TWO, |k| k as f32);
        let v7 = from_checkpoint(&ckpt, &cfg(V7)).unwrap();
        let v6 = from_checkpoint(&ckpt, &cfg(V6)).unwrap();
        for (l, (a, b)) in v7.layers.iter().zip(&v6.layers).enumerate() {
            assert_eq!(a.wkv, (0..18).map(|k| k as f32).collect::<Vec<_>>(), "{l}");
            // Head 1, row 0, column 2 of the transposed matrix is the stored (2, 0).
            assert_eq!(b.wkv[9 + 2], a.wkv[9 + 6]);
            assert_eq!(transposed_per_head(&b.wkv, 2, 3), a.wkv);
            assert!(a.att_shift.iter().chain(&a.ffn_shift).all(|&x| x == 0.0));
        }
        assert_eq!(
            inspect(&ckpt).unwrap().unwrap().to_string(),
            "state-tuned initial state: 2 layers × 2 heads × 3 × 3, f32 (fits an RWKV v5, v6 or v7 model of 2 layers and width 6)"
        );
    }

    #[test]
    fn every_bad_state_gives_one_line_naming_the_problem() {
        use super::super::Version::*;
        let err = |t: &[(&str, &[usize])], fill: fn(usize) -> f32, v| {
            from_checkpoint(&file(t, fill), &cfg(v))
                .unwrap_err()
                .to_string()
        };
        let one = |_| 1.0;
        assert_eq!(
            err(&TWO, one, V4),
            "RWKV v4 models have no matrix state to start from: state-tuned initial states exist for v5, v6 and v7"
        );
        assert_eq!(
            err(&TWO[..1], one, V7),
            "s.safetensors holds a state for 1 layers; this model has 2"
        );
        assert_eq!(
            err(&[TWO[1]], one, V7),
            "s.safetensors has no blocks.0.att.time_state (a state holds one for every layer, here 0 to 1)"
        );
        assert_eq!(
            err(
                &[
                    ("blocks.0.att.time_state", &[3, 2, 2]),
                    ("blocks.1.att.time_state", &[3, 2, 2])
                ],
                one,
                V7
            ),
            "s.safetensors holds a state of 3 heads × 2 × 2 per layer; this model's is 2 heads × 3 × 3"
        );
        assert_eq!(
            err(&[("blocks.0.att.time_state", &[2, 9])], one, V7),
            "s.safetensors: tensor blocks.0.att.time_state has shape [2, 9]; a state tensor is [heads, head size, head size]"
        );
        assert_eq!(
            err(&[TWO[0], ("blocks.1.att.time_state", &[2, 2, 2])], one, V7),
            "s.safetensors: tensor blocks.1.att.time_state has shape [2, 2, 2], but blocks.0.att.time_state has [2, 3, 3]"
        );
        assert_eq!(
            err(&[TWO[0], TWO[1], ("blocks.0.att.lora_A", &[2])], one, V7),
            "s.safetensors: tensor blocks.0.att.lora_A does not belong in a state file, which holds only blocks.N.att.time_state tensors"
        );
        assert_eq!(
            err(&[("head.weight", &[2])], one, V7),
            "s.safetensors is not a state file: it has no blocks.N.att.time_state tensors"
        );
        assert_eq!(
            err(&[("emb.weight", &[4, 6])], one, V7),
            "s.safetensors is a model checkpoint without a trained state (it has no blocks.N.att.time_state tensors), not a state file"
        );
        assert_eq!(
            err(&TWO, |k| if k == 13 { f32::NAN } else { 0.5 }, V6),
            "s.safetensors: tensor blocks.0.att.time_state holds a non-finite value (NaN at head 1, row 1, column 1)"
        );
    }
}
