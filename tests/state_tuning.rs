//! State-tuned initial states against the official implementation.
//!
//! `scripts/make_state_fixtures.py` writes a random state-tuning file (`blocks.{i}.att.time_state`
//! per layer) for the v5.2, v6 and v7 fixture models and records the official `rwkv` package's
//! logits started from it, the start state built as the official loaders build it (the package
//! itself for v5/v6, transposing; RWKV-Runner's loader for v7, as stored). Each model, loaded
//! from safetensors and `.pth`, started from each state file (`.pth` and safetensors), must
//! reproduce them through both paths. Bad state files give one clear line.

use rwkv_cli::checkpoint::{Checkpoint, StoredDType};
use rwkv_cli::models::{self, init_state, LoadOptions, Model, State};
use std::path::{Path, PathBuf};

mod common;
use common::safetensors::{st_edit, st_tensors, st_write, Tensor};
use common::{fixture_path, max_abs_diff, read_fixture, reference, scratch_file};

const TOLERANCE: f32 = 1e-4;
const STATES: [&str; 3] = ["v5_2", "v6", "v7"];

fn load(file: &str) -> Box<dyn Model> {
    models::load(&fixture_path(file), LoadOptions::default())
        .unwrap_or_else(|e| panic!("loading {file}: {e:#}"))
}

fn start(model: &dyn Model, state_file: &Path) -> State {
    init_state::load(state_file, model.config())
        .unwrap_or_else(|e| panic!("{}: {e:#}", state_file.display()))
}

/// The largest difference from the reference `{name}.ref.safetensors` over every output, each
/// run starting from `initial`; panics past the tolerance.
fn check(what: &str, model: &dyn Model, initial: &State, name: &str) -> f32 {
    let r = reference(name);
    let vocab = model.config().vocab_size;
    let mut worst = 0.0f32;
    let mut record = |part: &str, d: f32| {
        assert!(d < TOLERANCE, "{what}: {part} differs by {d}");
        worst = worst.max(d);
    };
    let mut state = initial.clone();
    let last = model.forward_seq(&r.tokens, &mut state, false).unwrap();
    record(
        "sequence path, last logits",
        max_abs_diff(&last, &r.logits_last),
    );
    let cont = model.forward_seq(&r.tokens2, &mut state, false).unwrap();
    record("continuation", max_abs_diff(&cont, &r.logits2_last));
    let all = model
        .forward_seq(&r.tokens, &mut initial.clone(), true)
        .unwrap();
    record(
        "sequence path, all positions",
        max_abs_diff(&all, &r.logits_seq_all),
    );
    let mut state = initial.clone();
    for (t, &tok) in r.tokens.iter().enumerate() {
        let logits = model.step(tok, &mut state).unwrap();
        let d = max_abs_diff(&logits, &r.logits_steps[t * vocab..(t + 1) * vocab]);
        record(&format!("recurrent path at token {t}"), d);
    }
    worst
}

#[test]
fn every_version_matches_the_official_logits_started_from_a_state() {
    for name in STATES {
        let mut worst = 0.0f32;
        for model_ext in ["safetensors", "pth"] {
            let model = load(&format!("{name}.{model_ext}"));
            for state_ext in ["pth", "safetensors"] {
                let file = fixture_path(&format!("{name}.state.{state_ext}"));
                let what = format!("{name}.{model_ext} from {name}.state.{state_ext}");
                let d = check(
                    &what,
                    model.as_ref(),
                    &start(model.as_ref(), &file),
                    &format!("{name}.state"),
                );
                worst = worst.max(d);
            }
        }
        println!(
            "{name}: started from its state, max |Δlogit| vs the official package {worst:.1e}"
        );
    }
}

/// The state matters, and in the right orientation: from zeros, or with each head's matrix
/// transposed, the first token's logits are far from the official ones.
#[test]
fn the_state_changes_the_logits_and_its_orientation_matters() {
    for name in STATES {
        let model = load(&format!("{name}.safetensors"));
        let r = reference(&format!("{name}.state"));
        let vocab = model.config().vocab_size;
        let expected = &r.logits_steps[..vocab];
        let good = start(model.as_ref(), &fixture_path(&format!("{name}.state.pth")));
        let mut transposed = good.clone();
        let n = model.config().head_size;
        for l in &mut transposed.layers {
            for m in l.wkv.chunks_exact_mut(n * n) {
                let copy = m.to_vec();
                for i in 0..n {
                    for j in 0..n {
                        m[j * n + i] = copy[i * n + j];
                    }
                }
            }
        }
        for (how, s, far) in [
            ("loaded", good, false),
            ("from zeros", model.new_state(), true),
            ("transposed", transposed, true),
        ] {
            let d = max_abs_diff(&model.step(r.tokens[0], &mut s.clone()).unwrap(), expected);
            assert_eq!(d > 0.5, far, "{name} {how}: {d}");
        }
    }
}

/// A model checkpoint with the state merged in (ChatRWKV's `rwkv_state_merger.py`) is a state
/// file too, and still a model; a merged file of another version is refused.
#[test]
fn a_model_checkpoint_carrying_a_state_serves_as_both() {
    let mut tensors = st_tensors(&read_fixture("v6.safetensors"));
    tensors.extend(st_tensors(&read_fixture("v6.state.safetensors")));
    let merged = scratch_file("v6_with_state.safetensors");
    std::fs::write(&merged, st_write(&tensors)).unwrap();

    let model = models::load(&merged, LoadOptions::default()).unwrap();
    let mut plain = load("v6.safetensors").config().clone();
    plain.n_params += 2 * 2 * 16 * 16; // the state's values count as the checkpoint's
    assert_eq!(model.config(), &plain);
    check(
        "v6 + merged state",
        model.as_ref(),
        &start(model.as_ref(), &merged),
        "v6.state",
    );
    let info = init_state::inspect(&Checkpoint::open(&merged).unwrap())
        .unwrap()
        .unwrap();
    assert!(info.in_model);

    // v5.2 has the same shapes, but it is another model.
    let v5 = load("v5_2.safetensors");
    let e = init_state::load(&merged, v5.config()).unwrap_err();
    assert_eq!(
        format!("{e:#}"),
        format!(
            "{} carries the state of an RWKV v6 model; this model is RWKV v5.2",
            merged.display()
        )
    );
}

#[test]
fn info_tells_a_state_file_from_a_model() {
    for (file, dtype) in [
        ("v5_2.state.pth", StoredDType::F32),
        ("v6.state.safetensors", StoredDType::BF16),
        ("v7.state.pth", StoredDType::F16),
    ] {
        let ckpt = Checkpoint::open(&fixture_path(file)).unwrap();
        let info = init_state::inspect(&ckpt).unwrap().expect(file);
        assert_eq!(
            (
                info.n_layer,
                info.n_head,
                info.head_size,
                info.dtype,
                info.in_model
            ),
            (2, 2, 16, dtype, false),
            "{file}"
        );
        assert_eq!(info.width(), 32);
        // Not a model: `info` shows the state instead.
        assert!(models::inspect(&ckpt).is_err(), "{file}");
    }
    for file in ["v7.pth", "v6.safetensors", "v7_de.safetensors"] {
        let ckpt = Checkpoint::open(&fixture_path(file)).unwrap();
        assert_eq!(init_state::inspect(&ckpt).unwrap(), None, "{file}");
    }
}

/// Writes `tensors` as a safetensors file in the scratch folder.
fn scratch_state(name: &str, tensors: &[Tensor]) -> PathBuf {
    let p = scratch_file(name);
    std::fs::write(&p, st_write(tensors)).unwrap();
    p
}

/// An f32 `blocks.{layer}.att.time_state` of `shape`, all `value`.
fn f32_state(layer: usize, shape: &[usize], value: f32) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor {
        name: format!("blocks.{layer}.att.time_state"),
        dtype: "F32".into(),
        shape: shape.to_vec(),
        bytes: value.to_le_bytes().repeat(n),
    }
}

/// The one-line error of starting the fixture `model` from `file`.
fn refusal(model: &str, file: &Path) -> String {
    let m = load(model);
    let e = init_state::load(file, m.config()).expect_err(&file.display().to_string());
    let line = format!("{e:#}");
    assert!(!line.contains('\n'), "{line}");
    line.replace(&file.display().to_string(), "FILE")
}

#[test]
fn bad_state_files_give_one_clear_line() {
    let ok = [2, 16, 16];
    let cases: Vec<(&str, PathBuf, &str)> = vec![
        (
            "v7.safetensors",
            scratch_state("one_layer.safetensors", &[f32_state(0, &ok, 0.1)]),
            "FILE holds a state for 1 layers; this model has 2",
        ),
        (
            "v7.safetensors",
            scratch_state(
                "three_layers.safetensors",
                &[0, 1, 2].map(|l| f32_state(l, &ok, 0.1)),
            ),
            "FILE holds a state for 3 layers; this model has 2",
        ),
        (
            "v6.safetensors",
            scratch_state(
                "wide_heads.safetensors",
                &[0, 1].map(|l| f32_state(l, &[1, 32, 32], 0.1)),
            ),
            "FILE holds a state of 1 heads × 32 × 32 per layer; this model's is 2 heads × 16 × 16",
        ),
        (
            "v5_2.safetensors",
            scratch_state(
                "flat.safetensors",
                &[0, 1].map(|l| f32_state(l, &[2, 256], 0.1)),
            ),
            "FILE: tensor blocks.0.att.time_state has shape [2, 256]; a state tensor is [heads, head size, head size]",
        ),
        (
            "v7.safetensors",
            scratch_state("gap.safetensors", &[f32_state(1, &ok, 0.1)]),
            "FILE has no blocks.0.att.time_state (a state holds one for every layer, here 0 to 1)",
        ),
        (
            "v7.safetensors",
            fixture_path("v7.pth"),
            "FILE is a model checkpoint without a trained state (it has no blocks.N.att.time_state tensors), not a state file",
        ),
        (
            "v6.safetensors",
            fixture_path("v6.safetensors"),
            "FILE is a model checkpoint without a trained state (it has no blocks.N.att.time_state tensors), not a state file",
        ),
        (
            "v7.safetensors",
            {
                // An f16 NaN in layer 1, head 0, row 2, column 3.
                let bytes = st_edit("v7.state.safetensors", "blocks.1.att.time_state", |t| {
                    let at = 2 * (2 * 16 + 3);
                    t.bytes[at..at + 2].copy_from_slice(&0x7e00u16.to_le_bytes());
                    true
                });
                let p = scratch_file("nan.safetensors");
                std::fs::write(&p, bytes).unwrap();
                p
            },
            "FILE: tensor blocks.1.att.time_state holds a non-finite value (NaN at head 0, row 2, column 3)",
        ),
        (
            "v7.safetensors",
            scratch_state(
                "infinite.safetensors",
                &[f32_state(0, &ok, 0.1), f32_state(1, &ok, f32::INFINITY)],
            ),
            "FILE: tensor blocks.1.att.time_state holds a non-finite value (inf at head 0, row 0, column 0)",
        ),
        (
            "v4.safetensors",
            fixture_path("v7.state.pth"),
            "RWKV v4 models have no matrix state to start from: state-tuned initial states exist for v5, v6 and v7",
        ),
        (
            "v7.safetensors",
            {
                let mut t = vec![f32_state(0, &ok, 0.1), f32_state(1, &ok, 0.1)];
                t[1].dtype = "I32".into();
                scratch_state("ints.safetensors", &t)
            },
            "FILE: tensor blocks.1.att.time_state is stored as I32; a state holds floats (f32, f16, bf16 or f64)",
        ),
        (
            "v7.safetensors",
            {
                let mut t = vec![f32_state(0, &ok, 0.1), f32_state(1, &ok, 0.1)];
                t.push(Tensor {
                    name: "blocks.0.att.time_decay".into(),
                    ..f32_state(0, &[2], 0.0)
                });
                scratch_state("extra.safetensors", &t)
            },
            "FILE: tensor blocks.0.att.time_decay does not belong in a state file, which holds only blocks.N.att.time_state tensors",
        ),
        (
            "v7.safetensors",
            {
                // What `--state-out` writes (src/state_file.rs) starts with this magic.
                let p = scratch_file("saved.state");
                std::fs::write(&p, b"RWKVSTATE\0\x01\0\0\0{}").unwrap();
                p
            },
            "FILE is a state saved by rwkv-cli (--state-out), not a state-tuning file: resume it with --state-in",
        ),
        (
            "v7.safetensors",
            scratch_file("does_not_exist.pth"),
            "cannot open state file FILE: No such file or directory (os error 2)",
        ),
    ];
    for (model, file, expected) in cases {
        assert_eq!(
            refusal(model, &file),
            expected,
            "{model} + {}",
            file.display()
        );
    }
}

/// `--init-state` end to end from the CLI: `generate` started from each version's state file
/// writes the official package's logits (`--logits-out`, prompt from stdin as bytes: the
/// fixtures' vocabulary is the byte tokenizer's); `eval` and `chat` take the flag too and start
/// elsewhere than without it; it cannot be combined with `--state-in`; a bad state file is one
/// line and exit 1.
#[test]
fn the_cli_starts_generate_eval_and_chat_from_an_init_state() {
    use common::{bin, read_f32, run, run_with_stdin, stderr};
    for name in STATES {
        let r = reference(&format!("{name}.state"));
        let prompt: Vec<u8> = r.tokens.iter().map(|&t| t as u8).collect();
        let out = scratch_file(&format!("{name}-init.f32"));
        let model = fixture_path(&format!("{name}.safetensors"));
        let state = fixture_path(&format!("{name}.state.pth"));
        let o = run_with_stdin(
            bin()
                .args([
                    "generate",
                    "--tokenizer",
                    "bytes",
                    "--prompt",
                    "-",
                    "-n",
                    "0",
                    "-q",
                ])
                .arg("-m")
                .arg(&model)
                .arg("--init-state")
                .arg(&state)
                .arg("--logits-out")
                .arg(&out),
            &prompt,
        );
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        let d = max_abs_diff(&read_f32(&out), &r.logits_last);
        assert!(
            d < TOLERANCE,
            "{name}: generate --init-state differs by {d}"
        );
    }

    let model = fixture_path("v7.safetensors");
    let state = fixture_path("v7.state.safetensors");
    let text = scratch_file("init-state-eval.txt");
    std::fs::write(
        &text,
        b"It is a truth universally acknowledged, that a single man",
    )
    .unwrap();
    let eval = |init: bool| -> String {
        let mut cmd = bin();
        cmd.arg("eval")
            .arg("-m")
            .arg(&model)
            .arg("--text")
            .arg(&text);
        if init {
            cmd.arg("--init-state").arg(&state);
        }
        let o = run_with_stdin(&mut cmd, b"");
        assert!(o.status.success(), "{}", stderr(&o));
        String::from_utf8(o.stdout).unwrap()
    };
    assert_ne!(eval(true), eval(false), "eval ignored --init-state");

    let chat = |init: bool| -> Vec<u8> {
        let mut cmd = bin();
        cmd.args(["chat", "-q", "--temperature", "0", "-n", "40", "-m"])
            .arg(&model);
        if init {
            cmd.arg("--init-state").arg(&state);
        }
        let o = run_with_stdin(&mut cmd, b"Hello\n");
        assert!(o.status.success(), "{}", stderr(&o));
        o.stdout
    };
    assert_ne!(chat(true), chat(false), "chat ignored --init-state");

    let m = model.to_str().unwrap();
    let s = state.to_str().unwrap();
    let o = run(&[
        "generate",
        "-m",
        m,
        "--init-state",
        s,
        "--state-in",
        s,
        "-p",
        "x",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    // A model file without a time_state is not a state: one line, exit 1.
    let o = run(&["generate", "-m", m, "--init-state", m, "-p", "x", "-n", "1"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(stderr(&o).trim_end().lines().count(), 1, "{}", stderr(&o));
}

/// `info` on a state-tuning file says it is a state and for which shape (text and JSON).
#[test]
fn info_describes_a_state_file() {
    use common::{run, stderr};
    let f = fixture_path("v6.state.pth");
    let o = run(&["info", f.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(
        text.contains("kind          state-tuned initial state"),
        "{text}"
    );
    assert!(text.contains("layers        2\n"), "{text}");
    assert!(text.contains("heads         2 × 16\n"), "{text}");
    assert!(text.contains("width 32"), "{text}");
    let o = run(&["info", "--json", f.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["kind"], "state");
    assert_eq!(v["layers"], 2);
    assert_eq!(v["head_size"], 16);
    assert_eq!(v["width"], 32);
}
