//! llama.cpp's RWKV-7 (and RWKV-6) GGUF layouts, mapped back to BlinkDL's names and shapes, so
//! that a GGUF file loads through the same model code as a `.pth` or safetensors checkpoint.
//!
//! llama.cpp's converter (`convert_hf_to_gguf.py`, class `Rwkv7Model`) renames every tensor
//! (`blocks.N.att.key.weight` → `blk.N.time_mix_key.weight`, …), stacks the six token-shift
//! mixes `x_r x_w x_k x_v x_a x_g` of a layer into one `(6, 1, 1, C)` tensor
//! `time_mix_lerp_fused`, transposes the LoRA matrices (`w1 w2 a1 a2 v1 v2 g1 g2`), flattens
//! `r_k` from `(H, N)` to `(C,)`, squeezes the `(1, 1, C)` vectors to `(C,)`, and writes layer
//! 0's `a0 a1 a2` a second time as dummy `v0 v1 v2` (layer 0 has no value-residual gate). Here
//! each BlinkDL tensor is described by a [`Source`]: which GGUF tensor holds it and how to
//! take it out (whole, transposed, or one row of the fused mixes). `r_k`'s head size comes
//! from `rwkv7.wkv.head_size`; the tokenizer metadata (`tokenizer.ggml.*`, model "rwkv") is
//! checked against the World vocabulary rwkv-cli embeds.

use super::gguf::{Gguf, TensorInfo, Value};
use super::{StoredDType, TensorMeta};
use anyhow::{bail, Context, Result};

/// How a BlinkDL tensor is taken out of a GGUF tensor.
#[derive(Clone, Debug)]
pub enum Pick {
    /// The GGUF tensor's values in row-major order (perhaps reshaped).
    Whole,
    /// The transpose of a 2-D GGUF tensor, or of each 2-D slab of a 3-D one.
    Transpose,
    /// Row `i` (of `C` values) of the fused token-shift mixes.
    Row(usize),
}

/// Where one BlinkDL tensor comes from.
#[derive(Clone, Debug)]
pub struct Source {
    /// Index into [`Gguf::tensors`].
    pub tensor: usize,
    pub pick: Pick,
    /// A factor the values are multiplied by (a power of two: exact), undoing the rwkv6
    /// converter's division of some matrices; 1 elsewhere.
    pub scale: f32,
}

/// The order of the rows of `time_mix_lerp_fused` (the converter's `lerp_list`).
const LERP: [&str; 6] = ["x_r", "x_w", "x_k", "x_v", "x_a", "x_g"];

/// The stored dtype a GGUF tensor type reports as (checkpoint metadata speaks of floats).
fn stored_dtype(t: &TensorInfo) -> StoredDType {
    match t.ty.id {
        0 => StoredDType::F32,
        1 => StoredDType::F16,
        30 => StoredDType::BF16,
        id if t.ty.readable() && id != 0 => StoredDType::Quantized,
        _ => StoredDType::Other,
    }
}

fn meta_u64(g: &Gguf, key: &str) -> Result<usize> {
    let v = g
        .get(key)
        .with_context(|| format!("metadata {key} is missing"))?;
    v.as_u64()
        .and_then(|v| usize::try_from(v).ok())
        .with_context(|| format!("metadata {key} is {}, not a count", v.short()))
}

type Mapped = Vec<(String, TensorMeta, Source)>;

/// Maps a parsed GGUF file of architecture `rwkv7` or `rwkv6` to BlinkDL tensors.
pub fn map(g: &Gguf) -> Result<Mapped> {
    let out = match g.architecture() {
        Some("rwkv7") => map_rwkv7(g)?,
        Some("rwkv6") => map_rwkv6(g)?,
        Some(a) => {
            bail!("GGUF architecture {a} is not one rwkv-cli runs (it reads rwkv7 and rwkv6)")
        }
        None => bail!("metadata general.architecture is missing"),
    };
    check_vocab(g)?;
    Ok(out)
}

/// Checks that the picks of GGUF tensor `i` fit it, and adds them to `out`.
fn finish(
    out: &mut Mapped,
    t: &TensorInfo,
    i: usize,
    row: usize,
    scale: f32,
    picks: Vec<(String, Vec<usize>, Pick)>,
) -> Result<()> {
    for (name, shape, pick) in picks {
        let want: usize = shape.iter().product();
        let have = match pick {
            Pick::Row(_) => row,
            _ => t.numel(),
        };
        let slabs_ok = !matches!(pick, Pick::Transpose) || (2..=3).contains(&t.ne.len());
        if want != have || !slabs_ok {
            bail!(
                "GGUF tensor {} has shape {:?}, which does not fit {name} {shape:?}",
                t.name,
                t.shape()
            );
        }
        let meta = TensorMeta {
            shape,
            dtype: stored_dtype(t),
        };
        out.push((
            name,
            meta,
            Source {
                tensor: i,
                pick,
                scale,
            },
        ));
    }
    Ok(())
}

/// `blk.N.rest` → (N, rest), N checked against the block count.
fn block_of(n: &str, n_layer: usize) -> Result<Option<(usize, &str)>> {
    let Some((bid, rest)) = n
        .strip_prefix("blk.")
        .and_then(|r| r.split_once('.'))
        .and_then(|(b, r)| Some((b.parse::<usize>().ok()?, r)))
    else {
        return Ok(None);
    };
    if bid >= n_layer {
        bail!("GGUF tensor {n} is past the block count {n_layer}");
    }
    Ok(Some((bid, rest)))
}

/// The tensors outside the blocks, common to rwkv6 and rwkv7; `None` for a block tensor.
fn outer(n: &str, shape: &[usize], c: usize) -> Option<(String, Vec<usize>, Pick)> {
    Some(match n {
        "token_embd.weight" => ("emb.weight".into(), shape.to_vec(), Pick::Whole),
        "token_embd_norm.weight" | "token_embd_norm.bias" => {
            (format!("blocks.0.ln0.{}", suffix(n)), vec![c], Pick::Whole)
        }
        "output_norm.weight" | "output_norm.bias" => {
            (format!("ln_out.{}", suffix(n)), vec![c], Pick::Whole)
        }
        "output.weight" => ("head.weight".into(), shape.to_vec(), Pick::Whole),
        _ => return None,
    })
}

/// llama.cpp's rwkv6 layout (converter class `Rwkv6Model`): the five mixes `w k v r g`
/// stacked into `time_mix_lerp_fused` (5, 1, 1, C), `time_maa_x` as `time_mix_lerp_x`,
/// `time_maa_w1` and the decay LoRA transposed, `time_maa_w2` (5, D, C) stored as (5, C, D),
/// the vectors squeezed, and each layer's attention output and FFN value matrices divided by
/// 2^(layer / rescale_every) (`rwkv6.rescale_every_n_layers`), which is multiplied back here.
fn map_rwkv6(g: &Gguf) -> Result<Mapped> {
    const LERP6: [&str; 5] = [
        "time_maa_w",
        "time_maa_k",
        "time_maa_v",
        "time_maa_r",
        "time_maa_g",
    ];
    let c = meta_u64(g, "rwkv6.embedding_length")?;
    let n_layer = meta_u64(g, "rwkv6.block_count")?;
    let rescale = match g.get("rwkv6.rescale_every_n_layers") {
        None => 0,
        Some(_) => meta_u64(g, "rwkv6.rescale_every_n_layers")?,
    };
    if c == 0 {
        bail!("rwkv6.embedding_length is 0");
    }
    let mut out = Vec::new();
    for (i, t) in g.tensors.iter().enumerate() {
        let shape = t.shape();
        let n = t.name.as_str();
        let mut scale = 1.0;
        let picks = if let Some(p) = outer(n, &shape, c) {
            vec![p]
        } else {
            let Some((bid, rest)) = block_of(n, n_layer)? else {
                bail!("GGUF tensor {n} is not part of llama.cpp's rwkv6 layout");
            };
            let att = |x: &str| format!("blocks.{bid}.att.{x}");
            let ffn = |x: &str| format!("blocks.{bid}.ffn.{x}");
            let whole = |name: String| (name, shape.clone(), Pick::Whole);
            let vec3 = |name: String| (name, vec![1, 1, c], Pick::Whole);
            let transposed = |name: String| {
                let mut s = shape.clone();
                let k = s.len();
                if k >= 2 {
                    s.swap(k - 1, k - 2);
                }
                (name, s, Pick::Transpose)
            };
            if rescale > 0 && matches!(rest, "time_mix_output.weight" | "channel_mix_value.weight")
            {
                let k = i32::try_from(bid / rescale).unwrap_or(i32::MAX);
                if k > 60 {
                    bail!("GGUF tensor {n}: rescale exponent {k} is too large");
                }
                scale = 2.0f32.powi(k);
            }
            match rest {
                "attn_norm.weight" | "attn_norm.bias" => vec![(
                    format!("blocks.{bid}.ln1.{}", suffix(rest)),
                    vec![c],
                    Pick::Whole,
                )],
                "attn_norm_2.weight" | "attn_norm_2.bias" => vec![(
                    format!("blocks.{bid}.ln2.{}", suffix(rest)),
                    vec![c],
                    Pick::Whole,
                )],
                "time_mix_lerp_fused.weight" => {
                    if t.numel() != LERP6.len() * c || t.ne[0] != c {
                        bail!("GGUF tensor {n} has shape {shape:?}, expected (5, 1, 1, {c})");
                    }
                    LERP6
                        .iter()
                        .enumerate()
                        .map(|(r, x)| (att(x), vec![1, 1, c], Pick::Row(r)))
                        .collect()
                }
                "time_mix_lerp_x.weight" => vec![vec3(att("time_maa_x"))],
                "time_mix_decay.weight" => vec![vec3(att("time_decay"))],
                "time_mix_first.weight" => vec![whole(att("time_faaaa"))],
                "time_mix_w1.weight" => vec![transposed(att("time_maa_w1"))],
                "time_mix_w2.weight" => vec![transposed(att("time_maa_w2"))],
                "time_mix_decay_w1.weight" => vec![transposed(att("time_decay_w1"))],
                "time_mix_decay_w2.weight" => vec![transposed(att("time_decay_w2"))],
                "time_mix_key.weight"
                | "time_mix_value.weight"
                | "time_mix_receptance.weight"
                | "time_mix_gate.weight"
                | "time_mix_output.weight" => {
                    vec![whole(att(&rest["time_mix_".len()..]))]
                }
                "time_mix_ln.weight" | "time_mix_ln.bias" => vec![(
                    att(&format!("ln_x.{}", suffix(rest))),
                    shape.clone(),
                    Pick::Whole,
                )],
                "channel_mix_lerp_k.weight" => vec![vec3(ffn("time_maa_k"))],
                "channel_mix_lerp_r.weight" => vec![vec3(ffn("time_maa_r"))],
                "channel_mix_key.weight"
                | "channel_mix_receptance.weight"
                | "channel_mix_value.weight" => vec![whole(ffn(&rest["channel_mix_".len()..]))],
                _ => bail!("GGUF tensor {n} is not part of llama.cpp's rwkv6 layout"),
            }
        };
        finish(&mut out, t, i, c, scale, picks)?;
    }
    Ok(out)
}

/// llama.cpp's rwkv7 layout (see the module notes).
fn map_rwkv7(g: &Gguf) -> Result<Mapped> {
    let c = meta_u64(g, "rwkv7.embedding_length")?;
    let head_size = meta_u64(g, "rwkv7.wkv.head_size")?;
    if c == 0 || head_size == 0 || c % head_size != 0 {
        bail!("rwkv7.embedding_length {c} is not a whole number of heads of {head_size}");
    }
    let n_layer = meta_u64(g, "rwkv7.block_count")?;
    let mut out = Vec::new();
    for (i, t) in g.tensors.iter().enumerate() {
        let shape = t.shape();
        let dims = shape.len();
        let whole = |name: String, shape: Vec<usize>| (name, shape, Pick::Whole);
        let vec3 = |name: String| (name, vec![1, 1, c], Pick::Whole);
        let mut picks = Vec::new();
        let n = t.name.as_str();
        match outer(n, &shape, c) {
            Some(p) => picks.push(p),
            None => {
                let Some((bid, rest)) = block_of(n, n_layer)? else {
                    bail!("GGUF tensor {n} is not part of llama.cpp's rwkv7 layout");
                };
                let att = |x: &str| format!("blocks.{bid}.att.{x}");
                match rest {
                    "attn_norm.weight" | "attn_norm.bias" => {
                        picks.push(whole(format!("blocks.{bid}.ln1.{}", suffix(rest)), vec![c]))
                    }
                    "attn_norm_2.weight" | "attn_norm_2.bias" => {
                        picks.push(whole(format!("blocks.{bid}.ln2.{}", suffix(rest)), vec![c]))
                    }
                    "time_mix_lerp_fused.weight" => {
                        if t.numel() != LERP.len() * c || t.ne[0] != c {
                            bail!("GGUF tensor {n} has shape {shape:?}, expected (6, 1, 1, {c})");
                        }
                        for (r, x) in LERP.iter().enumerate() {
                            picks.push((att(x), vec![1, 1, c], Pick::Row(r)));
                        }
                    }
                    "time_mix_w0.weight"
                    | "time_mix_a0.weight"
                    | "time_mix_v0.weight"
                    | "time_mix_k_k.weight"
                    | "time_mix_k_a.weight" => {
                        let x = &rest["time_mix_".len()..rest.len() - ".weight".len()];
                        if bid == 0 && x == "v0" {
                            continue; // layer 0's dummy copy of a0
                        }
                        picks.push(vec3(att(x)));
                    }
                    "time_mix_r_k.weight" => {
                        picks.push((att("r_k"), vec![c / head_size, head_size], Pick::Whole))
                    }
                    "time_mix_w1.weight" | "time_mix_w2.weight" | "time_mix_a1.weight"
                    | "time_mix_a2.weight" | "time_mix_v1.weight" | "time_mix_v2.weight"
                    | "time_mix_g1.weight" | "time_mix_g2.weight" => {
                        let x = &rest["time_mix_".len()..rest.len() - ".weight".len()];
                        if bid == 0 && x.starts_with('v') {
                            continue; // layer 0's dummy copies of a1, a2
                        }
                        if dims != 2 {
                            bail!("GGUF tensor {n} has shape {shape:?}, expected 2 dimensions");
                        }
                        picks.push((att(x), vec![shape[1], shape[0]], Pick::Transpose));
                    }
                    "time_mix_receptance.weight"
                    | "time_mix_key.weight"
                    | "time_mix_value.weight"
                    | "time_mix_output.weight" => {
                        let x = &rest["time_mix_".len()..];
                        picks.push(whole(att(x), shape.clone()));
                    }
                    "time_mix_ln.weight" | "time_mix_ln.bias" => {
                        picks.push(whole(att(&format!("ln_x.{}", suffix(rest))), vec![c]))
                    }
                    "channel_mix_lerp_k.weight" => {
                        picks.push(vec3(format!("blocks.{bid}.ffn.x_k")))
                    }
                    "channel_mix_key.weight" | "channel_mix_value.weight" => {
                        let x = &rest["channel_mix_".len()..];
                        picks.push(whole(format!("blocks.{bid}.ffn.{x}"), shape.clone()));
                    }
                    _ => bail!("GGUF tensor {n} is not part of llama.cpp's rwkv7 layout"),
                }
            }
        }
        finish(&mut out, t, i, c, 1.0, picks)?;
    }
    Ok(out)
}

/// `weight` or `bias`, the last part of a name.
fn suffix(n: &str) -> &str {
    n.rsplit('.').next().unwrap_or(n)
}

/// Reads one BlinkDL tensor out of the file's bytes `b`.
pub fn read(g: &Gguf, src: &Source, b: &[u8]) -> Result<Vec<f32>> {
    let mut v = read_unscaled(g, src, b)?;
    if src.scale != 1.0 {
        v.iter_mut().for_each(|x| *x *= src.scale);
    }
    Ok(v)
}

/// Reads one BlinkDL tensor in runs of `chunk` values, each handed to `f` with the index of
/// its first value: a whole GGUF tensor is decoded run by run (when runs are whole blocks),
/// never all at once in f32; transposed and row picks are small and read whole.
pub fn read_chunks(
    g: &Gguf,
    src: &Source,
    b: &[u8],
    chunk: usize,
    mut f: impl FnMut(usize, &[f32]) -> Result<()>,
) -> Result<()> {
    let t = g
        .tensors
        .get(src.tensor)
        .context("GGUF tensor index out of range")?;
    let chunk = chunk.max(1);
    if !matches!(src.pick, Pick::Whole) || !chunk.is_multiple_of(t.ty.block) {
        let v = read(g, src, b)?;
        for (i, c) in v.chunks(chunk).enumerate() {
            f(i * chunk, c)?;
        }
        return Ok(());
    }
    let bytes = b
        .get(t.start..t.start + t.len)
        .context("GGUF tensor data lie outside the file")?;
    let chunk_bytes = t.ty.bytes_for(chunk).context("chunk size")?;
    let mut out = vec![0.0; chunk.min(t.numel())];
    for (i, run) in bytes.chunks(chunk_bytes.max(1)).enumerate() {
        let n = run.len() / t.ty.bytes * t.ty.block;
        let o = &mut out[..n];
        t.ty.decode(run, o)
            .with_context(|| format!("tensor {}", t.name))?;
        if src.scale != 1.0 {
            o.iter_mut().for_each(|x| *x *= src.scale);
        }
        f(i * chunk, o)?;
    }
    Ok(())
}

fn read_unscaled(g: &Gguf, src: &Source, b: &[u8]) -> Result<Vec<f32>> {
    let t = g
        .tensors
        .get(src.tensor)
        .context("GGUF tensor index out of range")?;
    let bytes = b
        .get(t.start..t.start + t.len)
        .context("GGUF tensor data lie outside the file")?;
    match src.pick {
        Pick::Whole => {
            let mut out = vec![0.0; t.numel()];
            t.ty.decode(bytes, &mut out)
                .with_context(|| format!("tensor {}", t.name))?;
            Ok(out)
        }
        Pick::Transpose => {
            let mut v = vec![0.0; t.numel()];
            t.ty.decode(bytes, &mut v)
                .with_context(|| format!("tensor {}", t.name))?;
            let (rows, cols) = (t.ne[1], t.ne[0]);
            let mut out = vec![0.0; v.len()];
            if rows * cols > 0 {
                // Each slab (one for a 2-D tensor) transposed on its own.
                for (src, dst) in v
                    .chunks_exact(rows * cols)
                    .zip(out.chunks_exact_mut(rows * cols))
                {
                    for (i, row) in src.chunks_exact(cols).enumerate() {
                        for (j, x) in row.iter().enumerate() {
                            dst[j * rows + i] = *x;
                        }
                    }
                }
            }
            Ok(out)
        }
        Pick::Row(r) => {
            let c = t.ne[0];
            let rb = t.ty.bytes_for(c).context("row size")?;
            let row = bytes
                .get(r * rb..(r + 1) * rb)
                .context("GGUF row out of range")?;
            let mut out = vec![0.0; c];
            t.ty.decode(row, &mut out)
                .with_context(|| format!("tensor {}", t.name))?;
            Ok(out)
        }
    }
}

/// Reverses the converter's token text (`repr(bytes)[2:-1]`: Python's bytes escapes).
pub fn unescape_token(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        let e = *b.get(i + 1)?;
        i += 2;
        out.push(match e {
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'\\' | b'\'' | b'"' => e,
            b'x' => {
                let h = std::str::from_utf8(b.get(i..i + 2)?).ok()?;
                i += 2;
                u8::from_str_radix(h, 16).ok()?
            }
            _ => return None,
        });
    }
    Some(out)
}

/// When the file carries the World vocabulary (tokenizer model "rwkv", 65536 tokens), checks
/// that it is the one rwkv-cli embeds: a model trained on another vocabulary would be fed the
/// wrong token ids.
fn check_vocab(g: &Gguf) -> Result<()> {
    let model = g.get("tokenizer.ggml.model").and_then(Value::as_str);
    let Some(Value::Array(tokens)) = g.get("tokenizer.ggml.tokens") else {
        return Ok(());
    };
    if model != Some("rwkv") {
        bail!(
            "the GGUF's tokenizer is {:?}, not the RWKV World vocabulary (tokenizer.ggml.model \"rwkv\")",
            model.unwrap_or("unnamed")
        );
    }
    let world = crate::tokenizer::world::WorldTokenizer::new()?;
    let mut known = 0;
    for (id, t) in tokens.iter().enumerate().skip(1) {
        let Some(text) = t.as_str() else {
            bail!("tokenizer.ggml.tokens[{id}] is not a string");
        };
        let ours = world.token_slice(id as u32);
        if ours.is_empty() {
            continue; // the converter's [PADn] past the vocabulary
        }
        known += 1;
        if unescape_token(text).as_deref() != Some(ours) {
            bail!(
                "the GGUF's World vocabulary differs from rwkv-cli's at token {id} ({text:?}); rwkv-cli only runs the rwkv_vocab_v20230424 vocabulary"
            );
        }
    }
    if known == 0 {
        bail!("the GGUF's tokenizer.ggml.tokens holds none of the World vocabulary's tokens");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_bytes_escapes_are_undone() {
        assert_eq!(unescape_token("ab").unwrap(), b"ab");
        assert_eq!(unescape_token("\\n\\t\\\\\\'").unwrap(), b"\n\t\\'");
        assert_eq!(unescape_token("\\xff\\x00a").unwrap(), [255, 0, b'a']);
        assert_eq!(unescape_token("é").unwrap(), "é".as_bytes());
        assert!(unescape_token("\\").is_none());
        assert!(unescape_token("\\xZZ").is_none());
    }
}
