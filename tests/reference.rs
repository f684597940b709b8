//! The engine against the official implementation.
//!
//! `scripts/make_fixtures.py` builds small random checkpoints of every RWKV version and records
//! the logits of the official `rwkv` package (torch, CPU, fp32) for a prompt. Here each model is
//! loaded from both its safetensors and its `.pth` file and must reproduce those logits through
//! both of our execution paths: the sequence path (whole prompt at once) and the recurrent path
//! (one token at a time).

use rwkv_cli::models::{self, LoadOptions, Model, State};

mod common;
use common::{fixture_path, max_abs_diff, reference, Reference, MODELS};

const TOLERANCE: f32 = 1e-4;

fn load(file: &str) -> Box<dyn Model> {
    models::load(&fixture_path(file), LoadOptions::default())
        .unwrap_or_else(|e| panic!("loading {file}: {e:#}"))
}

/// Panics past the tolerance; returns the largest difference seen.
fn check_against_reference(name: &str, model: &dyn Model, r: &Reference) -> f32 {
    let vocab = model.config().vocab_size;
    let mut worst = 0.0f32;

    // Sequence path, last position.
    let mut state = model.new_state();
    let last = model.forward_seq(&r.tokens, &mut state, false).unwrap();
    let d = max_abs_diff(&last, &r.logits_last);
    assert!(
        d < TOLERANCE,
        "{name}: sequence path, last logits differ by {d}"
    );
    worst = worst.max(d);

    // Continuing from the state after the prompt.
    let cont = model.forward_seq(&r.tokens2, &mut state, false).unwrap();
    let d = max_abs_diff(&cont, &r.logits2_last);
    assert!(
        d < TOLERANCE,
        "{name}: continuation from a state differs by {d}"
    );
    worst = worst.max(d);

    // Sequence path, every position.
    let all = model
        .forward_seq(&r.tokens, &mut model.new_state(), true)
        .unwrap();
    let d = max_abs_diff(&all, &r.logits_seq_all);
    assert!(
        d < TOLERANCE,
        "{name}: sequence path, all positions differ by {d}"
    );
    worst = worst.max(d);

    // Recurrent path, one token at a time.
    let mut state = model.new_state();
    for (t, &tok) in r.tokens.iter().enumerate() {
        let logits = model.step(tok, &mut state).unwrap();
        let d = max_abs_diff(&logits, &r.logits_steps[t * vocab..(t + 1) * vocab]);
        assert!(
            d < TOLERANCE,
            "{name}: recurrent path at token {t} differs by {d}"
        );
        worst = worst.max(d);
    }
    worst
}

#[test]
fn every_version_matches_the_official_logits_from_safetensors() {
    for name in MODELS {
        let r = reference(name);
        check_against_reference(name, load(&format!("{name}.safetensors")).as_ref(), &r);
    }
}

#[test]
fn every_version_matches_the_official_logits_from_pth() {
    for name in MODELS {
        let r = reference(name);
        check_against_reference(name, load(&format!("{name}.pth")).as_ref(), &r);
    }
}

/// RWKV-7 DeepEmbed (BlinkDL's `rwkv7a` files): a small random model with every DeepEmbed
/// tensor (`scripts/make_state_fixtures.py`), against the official package run with
/// `RWKV_DE_VERSION=1`, from both files, through both paths.
#[test]
fn deep_embed_matches_the_official_logits() {
    let r = reference("v7_de");
    let mut outputs = Vec::new();
    for ext in ["safetensors", "pth"] {
        let file = format!("v7_de.{ext}");
        let m = load(&file);
        let c = m.config();
        assert_eq!(c.version, models::Version::V7DeepEmbed, "{file}");
        assert_eq!(c.version.to_string(), "v7 DeepEmbed");
        assert_eq!(
            (c.n_layer, c.n_embd, c.n_ffn, c.vocab_size),
            (2, 32, 96, 32)
        );
        let ckpt = rwkv_cli::checkpoint::Checkpoint::open(&fixture_path(&file)).unwrap();
        assert_eq!(&models::inspect(&ckpt).unwrap(), c, "{file}");
        let d = check_against_reference(&file, m.as_ref(), &r);
        println!("{file}: max |Δlogit| vs the official package {d:.1e}");
        outputs.push(m.forward_seq(&r.tokens, &mut m.new_state(), true).unwrap());
    }
    assert_eq!(outputs[0], outputs[1]);
}

/// A DeepEmbed checkpoint missing a tensor, or with a table of the wrong width, is refused
/// with a message naming the tensor.
#[test]
fn deep_embed_tensors_are_checked() {
    use common::safetensors::st_edit;
    let refusal = |bytes: Vec<u8>| {
        let p = common::scratch_file("bad_de.safetensors");
        std::fs::write(&p, bytes).unwrap();
        let e = models::load(&p, LoadOptions::default())
            .err()
            .expect("refused");
        format!("{e:#}")
    };
    assert_eq!(
        refusal(st_edit(
            "v7_de.safetensors",
            "blocks.1.ffn.s_emb_x.weight",
            |_| false
        )),
        "tensor blocks.1.ffn.s_emb_x.weight is missing"
    );
    assert_eq!(
        refusal(st_edit("v7_de.safetensors", "blocks.0.ffn.s_emb.weight", |t| {
            t.shape = vec![64, 512];
            true
        })),
        "tensor blocks.0.ffn.s_emb.weight has shape [64, 512], expected (32, 1024): one 32 × 32 matrix per token, 32 being the width of blocks.0.ffn.s1"
    );
}

#[test]
fn pth_and_safetensors_give_identical_logits() {
    for name in MODELS {
        let r = reference(name);
        let a = load(&format!("{name}.pth"));
        let b = load(&format!("{name}.safetensors"));
        let la = a.forward_seq(&r.tokens, &mut a.new_state(), true).unwrap();
        let lb = b.forward_seq(&r.tokens, &mut b.new_state(), true).unwrap();
        assert_eq!(la, lb, "{name}");
    }
}

#[test]
fn versions_and_shapes_are_detected_from_the_tensors() {
    use rwkv_cli::models::Version::*;
    let expected = [
        ("v4", V4, 1),
        ("v5_0", V5_0, 2),
        ("v5_1", V5_1, 2),
        ("v5_2", V5_2, 2),
        ("v6", V6, 2),
        ("v7", V7, 2),
        ("v7_bf16", V7, 2),
    ];
    for (name, version, heads) in expected {
        let m = load(&format!("{name}.safetensors"));
        let c = m.config();
        assert_eq!(c.version, version, "{name}");
        assert_eq!(
            (c.n_layer, c.n_embd, c.vocab_size, c.n_head),
            (2, 32, 256, heads),
            "{name}"
        );
        assert_eq!(c.n_ffn, 96, "{name}");
        // `info` describes a checkpoint without converting it: the same configuration.
        for ext in ["safetensors", "pth"] {
            let ckpt =
                rwkv_cli::checkpoint::Checkpoint::open(&fixture_path(&format!("{name}.{ext}")))
                    .unwrap();
            assert_eq!(&models::inspect(&ckpt).unwrap(), c, "{name}.{ext}");
        }
    }
}

/// A prompt longer than the sequence path's chunk gives the same logits whether it goes
/// through in one piece, in odd-sized chunks, or one token at a time, and the state stays
/// the same size throughout.
#[test]
fn sequence_and_recurrent_paths_agree_on_a_long_prompt() {
    for name in ["v4", "v5_2", "v6", "v7", "v7_de"] {
        let model = load(&format!("{name}.safetensors"));
        let vocab = model.config().vocab_size as u32;
        let tokens: Vec<u32> = (0..300u32).map(|i| (i * 7919 + 13) % vocab).collect();
        let fresh = model.new_state().size_bytes();

        let mut whole = model.new_state();
        let a = models::prefill(model.as_ref(), &tokens, &mut whole, 1024)
            .unwrap()
            .unwrap();
        let mut chunked = model.new_state();
        let b = models::prefill(model.as_ref(), &tokens, &mut chunked, 37)
            .unwrap()
            .unwrap();
        let mut stepped: State = model.new_state();
        let mut c = Vec::new();
        for &t in &tokens {
            c = model.step(t, &mut stepped).unwrap();
        }
        assert!(
            max_abs_diff(&a, &b) < TOLERANCE,
            "{name}: whole vs chunked {}",
            max_abs_diff(&a, &b)
        );
        assert!(
            max_abs_diff(&a, &c) < TOLERANCE,
            "{name}: whole vs stepped {}",
            max_abs_diff(&a, &c)
        );
        for s in [&whole, &chunked, &stepped] {
            assert_eq!(s.size_bytes(), fresh, "{name}: the state grew");
            assert_eq!(s.size_bytes(), model.config().state_bytes());
        }
    }
}
