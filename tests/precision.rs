//! Quality at every precision, measured against f32 on the fixture models.
//!
//! 16-bit weights round each weight to 8 (bf16) or 11 (f16) significant bits; Q8_0 stores 8-bit
//! integers with a scale per block of 32 weights and also rounds the activations entering each
//! product to 8 bits per block. None of this may change what the model predicts beyond the
//! tolerances stated here, on both execution paths:
//!
//! - logits at every position of a fixed prompt (both paths) within stated absolute bounds of
//!   the f32 logits — the median over positions and the maximum;
//! - the same most likely next token after the prompt, and at all but a stated fraction of the
//!   positions inside it; where it changes, the two tokens were a near tie in f32 (closer than
//!   twice the largest logit difference allowed);
//! - bits per byte over a text within a stated margin of f32's.
//!
//! The measured maxima are printed (`cargo test --release --test precision -- --nocapture`).

use rwkv_cli::eval::score_tokens;
use rwkv_cli::format::Format;
use rwkv_cli::models::{self, LoadOptions, Model};
use rwkv_cli::tokenizer::{self, TokenizerKind};

mod common;
use common::{fixture_path, max_abs_diff, repo_path, MODELS};

/// Allowed differences from f32, per format (the fixtures' logits have a standard deviation of
/// about 2.5 across the vocabulary; the measured values are about half of what is allowed).
struct Tolerance {
    dtype: Format,
    /// Median over positions of the largest absolute logit difference.
    median_abs: f32,
    /// Largest absolute logit difference at any position.
    max_abs: f32,
    /// Fraction of positions where the most likely token may differ.
    top1_changes: f64,
    /// Largest difference in bits per byte.
    bpb_margin: f64,
    /// Whether the next token after the prompt must be the same.
    same_next_token: bool,
}

const TOLERANCES: [Tolerance; 4] = [
    Tolerance {
        dtype: Format::F16,
        median_abs: 1e-2,
        max_abs: 0.15,
        top1_changes: 0.0,
        bpb_margin: 1e-3,
        same_next_token: true,
    },
    Tolerance {
        dtype: Format::BF16,
        median_abs: 0.1,
        max_abs: 0.6,
        top1_changes: 0.03,
        bpb_margin: 5e-3,
        same_next_token: true,
    },
    Tolerance {
        dtype: Format::Q8_0,
        median_abs: 0.3,
        max_abs: 2.5,
        top1_changes: 0.08,
        bpb_margin: 2.5e-2,
        same_next_token: true,
    },
    // 4-bit steps are 17 times the 8-bit ones: on these narrow random models (width 32, where
    // every output sums only 32 products) the logits move by a large fraction of their spread.
    // The trained model below shows what it costs on a real text.
    Tolerance {
        dtype: Format::Q4_0,
        median_abs: 2.5,
        max_abs: 8.0,
        top1_changes: 0.45,
        bpb_margin: 0.15,
        same_next_token: false,
    },
];

fn load(name: &str, dtype: Format) -> Box<dyn Model> {
    models::load(
        &fixture_path(&format!("{name}.safetensors")),
        LoadOptions { dtype },
    )
    .unwrap()
}

/// A fixed English prompt, as bytes (the fixtures use the byte vocabulary).
fn prompt() -> Vec<u32> {
    b"The quick brown fox jumps over the lazy dog, and the river runs to the sea."
        .iter()
        .map(|&b| b as u32)
        .collect()
}

/// A longer text to score.
fn text() -> Vec<u8> {
    std::fs::read(fixture_path("README.md")).unwrap()[..3000].to_vec()
}

fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

/// Logits after the prompt through the sequence path, and after each of its tokens through
/// the recurrent path.
fn logits(m: &dyn Model, tokens: &[u32]) -> (Vec<f32>, Vec<Vec<f32>>) {
    let mut s = m.new_state();
    let seq = m.forward_seq(tokens, &mut s, false).unwrap();
    let mut s = m.new_state();
    let steps = tokens.iter().map(|&t| m.step(t, &mut s).unwrap()).collect();
    (seq, steps)
}

fn bits_per_byte(m: &dyn Model) -> f64 {
    let tok = tokenizer::load(TokenizerKind::Bytes).unwrap();
    let tokens = tok.encode(&text()).unwrap();
    score_tokens(m, tok.as_ref(), &tokens, 64, |_| {})
        .unwrap()
        .bits_per_byte()
}

#[test]
fn every_precision_stays_close_to_f32_on_every_fixture() {
    let tokens = prompt();
    for name in MODELS {
        let reference = load(name, Format::F32);
        let (ref_seq, ref_steps) = logits(reference.as_ref(), &tokens);
        let ref_bpb = bits_per_byte(reference.as_ref());
        for tol in &TOLERANCES {
            let m = load(name, tol.dtype);
            let (seq, steps) = logits(m.as_ref(), &tokens);
            // Every position of the recurrent path, then the sequence path's last.
            let pairs: Vec<(&Vec<f32>, &Vec<f32>)> = steps
                .iter()
                .chain([&seq])
                .zip(ref_steps.iter().chain([&ref_seq]))
                .collect();
            let mut diffs: Vec<f32> = pairs.iter().map(|(a, b)| max_abs_diff(a, b)).collect();
            let changed: Vec<f32> = pairs
                .iter()
                .filter(|(a, b)| argmax(a) != argmax(b))
                .map(|(a, b)| b[argmax(b)] - b[argmax(a)])
                .collect();
            diffs.sort_by(f32::total_cmp);
            let (median, worst) = (diffs[diffs.len() / 2], diffs[diffs.len() - 1]);
            let bpb = bits_per_byte(m.as_ref());
            println!(
                "{name:8} {:5}: |Δlogit| median {median:.1e} (allowed {}), max {worst:.1e} (allowed {}); top-1 same at {}/{} positions; bits/byte {bpb:.5} vs {ref_bpb:.5} (Δ {:+.1e}, allowed ±{})",
                tol.dtype.name(),
                tol.median_abs,
                tol.max_abs,
                pairs.len() - changed.len(),
                pairs.len(),
                bpb - ref_bpb,
                tol.bpb_margin
            );
            let what = format!("{name} {}", tol.dtype.name());
            assert!(median <= tol.median_abs, "{what}: median |Δlogit| {median}");
            assert!(worst <= tol.max_abs, "{what}: max |Δlogit| {worst}");
            assert!(
                changed.len() as f64 <= tol.top1_changes * pairs.len() as f64,
                "{what}: top-1 changed at {} of {} positions",
                changed.len(),
                pairs.len()
            );
            // A changed choice is always a near tie in f32.
            for gap in &changed {
                assert!(
                    *gap <= 2.0 * tol.max_abs,
                    "{what}: top-1 changed across a gap of {gap}"
                );
            }
            if tol.same_next_token {
                assert_eq!(
                    argmax(&seq),
                    argmax(&ref_seq),
                    "{what}: the next token after the prompt changed"
                );
            }
            assert!(
                (bpb - ref_bpb).abs() <= tol.bpb_margin,
                "{what}: bits per byte {bpb} vs {ref_bpb}"
            );
        }
    }
}

/// The sequence path and the recurrent path agree at every precision (they use different
/// kernels: matrix–matrix for a chunk, matrix–vector for one token).
#[test]
fn both_paths_agree_at_every_precision() {
    let tokens = prompt();
    for name in ["v5_2", "v6", "v7"] {
        for tol in &TOLERANCES {
            let m = load(name, tol.dtype);
            let (seq, steps) = logits(m.as_ref(), &tokens);
            let d = max_abs_diff(&seq, steps.last().unwrap());
            assert!(
                d <= tol.max_abs,
                "{name} {}: paths differ by {d}",
                tol.dtype.name()
            );
        }
    }
}

/// On a trained model and a real text — the embedded default model (byte-level RWKV-7, 4
/// layers × 192, trained on Jane Austen) over held-out Austen — the bits per byte of every
/// format stay within a stated margin of f32's (measured on this machine: f16 ±0, bf16
/// −0.0001, Q8_0 −0.0002, Q4_0 +0.0065 bits per byte, i.e. +0.35%).
#[test]
fn a_trained_model_loses_little_at_every_precision() {
    let path = repo_path("models/default.safetensors");
    let text = std::fs::read(fixture_path("austen_heldout.txt")).unwrap();
    let tok = tokenizer::load(TokenizerKind::Bytes).unwrap();
    let tokens = tok.encode(&text[..8000]).unwrap();
    let bpb = |dtype| {
        let m = models::load(&path, LoadOptions { dtype }).unwrap();
        score_tokens(m.as_ref(), tok.as_ref(), &tokens, 256, |_| {})
            .unwrap()
            .bits_per_byte()
    };
    let reference = bpb(Format::F32);
    for (dtype, margin) in [
        (Format::F16, 1e-3),
        (Format::BF16, 2e-3),
        (Format::Q8_0, 2e-3),
        (Format::Q4_0, 2e-2),
    ] {
        let b = bpb(dtype);
        println!(
            "default model {:5}: {b:.7} bits/byte vs f32 {reference:.7} (Δ {:+.7}, allowed ±{margin})",
            dtype.name(),
            b - reference
        );
        assert!(
            (b - reference).abs() <= margin,
            "{}: {b} vs {reference}",
            dtype.name()
        );
    }
}

/// bf16 prefill with the bf16 dot-product kernel (AVX-512 BF16, where the CPU has it), which
/// rounds the activations entering each matrix–matrix product to bf16, against the kernel that
/// widens the weights to f32 (`RWKV_NO_BF16`) and against f32: `rwkv-cli eval` of the embedded
/// model on its held-out text, end to end (measured on an AMD Zen 4: f32 1.4894765, bf16
/// widened 1.4895551, bf16 dot products 1.4895588 bits per byte — the rounding costs 4e-6).
/// Where the CPU lacks AVX-512 BF16 both bf16 runs take the widening kernel and a note says so.
#[test]
fn bf16_prefill_with_dot_products_costs_little() {
    let bpb = |dtype: &str, no_bf16: bool| {
        let mut c = common::bin();
        if no_bf16 {
            c.env("RWKV_NO_BF16", "1");
        }
        let model = repo_path("models/default.safetensors");
        let text = fixture_path("austen_heldout.txt");
        let o = c
            .args(["eval", "--model"])
            .arg(&model)
            .args(["--dtype", dtype, "--max-tokens", "8000", "--json", "--text"])
            .arg(&text)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", common::stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["bits_per_byte"].as_f64().unwrap()
    };
    let f32_bpb = bpb("f32", false);
    let (dot, widened) = (bpb("bf16", false), bpb("bf16", true));
    println!(
        "default model bf16 prefill: bf16 dot products {dot:.7} (Δ {:+.7} vs f32 {f32_bpb:.7}), widened to f32 {widened:.7} (Δ {:+.7}); rounding the activations costs {:+.7} bits/byte",
        dot - f32_bpb,
        widened - f32_bpb,
        dot - widened
    );
    assert!(
        (dot - f32_bpb).abs() <= 2e-3,
        "bf16 dot products: {dot} vs f32 {f32_bpb}"
    );
    assert!(
        (dot - widened).abs() <= 1e-4,
        "bf16 dot products {dot} vs widened {widened}"
    );
    if rwkv_cli::kernels::has_bf16_dot() {
        assert_ne!(
            dot, widened,
            "RWKV_NO_BF16 changed nothing: was the dot-product path taken?"
        );
    } else {
        println!("note: no AVX-512 BF16 on this CPU: both bf16 runs widened the weights to f32");
        assert_eq!(dot, widened);
    }
}

/// RWKV-7 DeepEmbed at every precision: its per-token tables and `s_emb_x` take the model's
/// format as the embedding and the matrices do. The fixture's vocabulary has 32 tokens (too
/// few for the byte prompt and bits per byte above), so its own reference tokens are used;
/// the logits stay within the same bounds as every other fixture's, on both paths.
#[test]
fn deep_embed_stays_close_to_f32_at_every_precision() {
    let r = common::reference("v7_de");
    let tokens: Vec<u32> = r.tokens.iter().chain(&r.tokens2).copied().collect();
    let reference = load("v7_de", Format::F32);
    let (ref_seq, ref_steps) = logits(reference.as_ref(), &tokens);
    for tol in &TOLERANCES {
        let m = load("v7_de", tol.dtype);
        let (seq, steps) = logits(m.as_ref(), &tokens);
        let mut diffs: Vec<f32> = steps
            .iter()
            .chain([&seq])
            .zip(ref_steps.iter().chain([&ref_seq]))
            .map(|(a, b)| max_abs_diff(a, b))
            .collect();
        diffs.sort_by(f32::total_cmp);
        let (median, worst) = (diffs[diffs.len() / 2], diffs[diffs.len() - 1]);
        let paths = max_abs_diff(&seq, steps.last().unwrap());
        println!(
            "v7_de    {:5}: |Δlogit| median {median:.1e} (allowed {}), max {worst:.1e} (allowed {}); paths differ by {paths:.1e}",
            tol.dtype.name(),
            tol.median_abs,
            tol.max_abs
        );
        let what = format!("v7_de {}", tol.dtype.name());
        assert!(median <= tol.median_abs, "{what}: median |Δlogit| {median}");
        assert!(worst <= tol.max_abs, "{what}: max |Δlogit| {worst}");
        assert!(paths <= tol.max_abs, "{what}: paths differ by {paths}");
        if tol.same_next_token {
            assert_eq!(argmax(&seq), argmax(&ref_seq), "{what}: next token changed");
        }
    }
}

/// Writes every tensor of `from`, read as f32, into a safetensors file at `to` in `dtype`: "F32"
/// as read, "F16" scaled by 1.001 and rounded to f16.
fn write_as(from: &std::path::Path, to: &std::path::Path, dtype: &str) {
    use common::safetensors::{st_write, Tensor};
    let ckpt = rwkv_cli::checkpoint::Checkpoint::open(from).unwrap();
    let tensors: Vec<Tensor> = ckpt
        .tensors()
        .iter()
        .map(|(name, meta)| {
            let values = ckpt.read_f32(name).unwrap();
            let bytes = match dtype {
                // Scaled off the bf16 grid: values with more than bf16's 8 significant bits.
                "F16" => values
                    .iter()
                    .flat_map(|v| half::f16::from_f32(v * 1.001).to_le_bytes())
                    .collect(),
                _ => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            };
            Tensor {
                name: name.clone(),
                dtype: dtype.to_owned(),
                shape: meta.shape.clone(),
                bytes,
            }
        })
        .collect();
    std::fs::write(to, st_write(&tensors)).unwrap();
}

/// An f32 model from a checkpoint stored in bf16 (or f16) keeps those matrices in 16 bits
/// (half the bytes) yet computes exactly what it computes from the same values stored in f32:
/// the logits of both paths are equal bit for bit — from the bf16 fixture's safetensors and
/// `.pth` files, and from an f16 copy of it against the f32 copy of that.
#[test]
fn f32_from_a_16_bit_checkpoint_is_f32_bit_for_bit_in_half_the_bytes() {
    let dir = common::scratch("f32-from-16-bit");
    let (as_f32, as_f16, f16_as_f32) = (
        dir.join("as_f32.safetensors"),
        dir.join("as_f16.safetensors"),
        dir.join("f16_as_f32.safetensors"),
    );
    write_as(&fixture_path("v7_bf16.safetensors"), &as_f32, "F32");
    write_as(&fixture_path("v7_bf16.safetensors"), &as_f16, "F16");
    write_as(&as_f16, &f16_as_f32, "F32");
    let load = |p: &std::path::Path| models::load(p, LoadOptions { dtype: Format::F32 }).unwrap();
    let tokens = prompt();
    for (file, reference) in [
        (fixture_path("v7_bf16.safetensors"), &as_f32),
        (fixture_path("v7_bf16.pth"), &as_f32),
        (as_f16.clone(), &f16_as_f32),
    ] {
        let (r, m) = (load(reference), load(&file));
        let (ref_seq, ref_steps) = logits(r.as_ref(), &tokens);
        let (seq, steps) = logits(m.as_ref(), &tokens);
        let what = file.display();
        assert!(seq == ref_seq, "{what}: the sequence path's logits differ");
        for (i, (a, b)) in steps.iter().zip(&ref_steps).enumerate() {
            assert!(
                a == b,
                "{what}: the recurrent path's logits differ at token {i}"
            );
        }
        // Products of two rows: a two-token chunk, and one step of two streams at once.
        let two = |m: &dyn Model| {
            let mut s = m.new_state();
            let seq = m.forward_seq(&tokens[..2], &mut s, true).unwrap();
            let (mut a, mut b) = (m.new_state(), m.new_state());
            let batch = m.step_batch(&tokens[2..4], &mut [&mut a, &mut b]).unwrap();
            (seq, batch)
        };
        assert!(
            two(m.as_ref()) == two(r.as_ref()),
            "{what}: the logits of products of two rows differ"
        );
    }
    // The bytes held: a projection and the embedding take half as many from 16 bits.
    use rwkv_cli::checkpoint::Checkpoint;
    use rwkv_cli::models::Weights;
    let bytes = |p: &std::path::Path| {
        let c = Checkpoint::open(p).unwrap();
        let w = Weights::new(&c, Format::F32);
        let [o, i] = c.tensors()["blocks.0.att.key.weight"].shape[..] else {
            panic!()
        };
        let [r, k] = c.tensors()["emb.weight"].shape[..] else {
            panic!()
        };
        let lin = w.linear("blocks.0.att.key.weight", o, i).unwrap();
        (
            lin.weight_bytes(),
            w.table("emb.weight", r, k).unwrap().bytes(),
        )
    };
    let (lf, ef) = bytes(&as_f32);
    for p in [fixture_path("v7_bf16.safetensors"), as_f16] {
        assert_eq!(
            bytes(&p),
            (lf / 2, ef / 2),
            "bytes held from {}",
            p.display()
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
