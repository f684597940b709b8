//! What the integration tests share: the binary, the fixtures, scratch folders, runs with a
//! deadline, the official reference logits and logit comparisons. Each test file uses the part
//! it needs. The byte surgery that damages checkpoint files (for `bad_input.rs`) lives in the
//! submodules [`safetensors`] and [`pth`].
#![allow(dead_code)]

pub mod mock_hub;
pub mod pth;
pub mod runs;
pub mod safetensors;
pub mod server;

/// The fuzz targets' bodies (and the zip CRC-32 that the `.pth` surgery needs).
#[path = "../../fuzz/harness.rs"]
pub mod harness;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// The fixture models (`tests/fixtures/{name}.safetensors`, `.pth` and `.ref.safetensors`):
/// every RWKV version, and v7 stored as bf16.
pub const MODELS: [&str; 7] = ["v4", "v5_0", "v5_1", "v5_2", "v6", "v7", "v7_bf16"];

/// The `rwkv-cli` binary, with the embedded model's cache copy in this test process's scratch
/// folder (never the user's cache).
pub fn bin() -> Command {
    bin_with_cache(&scratch("cache"))
}

/// The `rwkv-cli` binary with the embedded model's cache copy in `cache`.
pub fn bin_with_cache(cache: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rwkv-cli"));
    c.env("RWKV_CLI_CACHE", cache);
    c
}

/// [`bin`] with the Hugging Face Hub switched off (`HF_HUB_OFFLINE=1`).
pub fn bin_offline() -> Command {
    let mut c = bin();
    c.env("HF_HUB_OFFLINE", "1");
    c
}

/// Runs `rwkv-cli args` with an empty stdin, stdout and stderr captured.
pub fn run(args: &[&str]) -> Output {
    run_with_stdin(bin().args(args), b"")
}

/// [`run`] with the Hub offline.
pub fn run_offline(args: &[&str]) -> Output {
    run_with_stdin(bin_offline().args(args), b"")
}

/// A path inside the repository.
pub fn repo_path(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// The path of a file in `tests/fixtures`, as text (for command lines).
pub fn fixture(name: &str) -> String {
    fixture_path(name).display().to_string()
}

/// The path of a file in `tests/fixtures`.
pub fn fixture_path(name: &str) -> PathBuf {
    repo_path("tests/fixtures").join(name)
}

/// The bytes of a file in `tests/fixtures`.
pub fn read_fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixture_path(name)).expect("fixture")
}

/// A folder of this test process's own (created if needed), for the files a test writes.
pub fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir()
        .join(format!("rwkv-cli-tests-{}", std::process::id()))
        .join(name);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A file in the scratch folder `files`.
pub fn scratch_file(name: &str) -> PathBuf {
    scratch("files").join(name)
}

/// A run's stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs `cmd` with `stdin` piped in (then closed), stdout and stderr captured. The input is
/// written from a thread, so a command that stops reading early cannot block the test.
pub fn run_with_stdin(cmd: &mut Command, stdin: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let o = child.wait_with_output().unwrap();
    writer.join().unwrap();
    o
}

/// Waits for `child` at most `limit`; past it, kills it, reaps it and returns `None`.
pub fn wait_or_kill(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return Some(status);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A file of little-endian f32 values (what `--logits-out` writes).
pub fn read_f32(path: &Path) -> Vec<f32> {
    std::fs::read(path)
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// The largest absolute difference between two vectors of the same length.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The outputs of the official implementation for a fixture, recorded by
/// `scripts/make_fixtures.py` in `tests/fixtures/{name}.ref.safetensors`.
pub struct Reference {
    pub tokens: Vec<u32>,
    pub tokens2: Vec<u32>,
    pub logits_last: Vec<f32>,
    pub logits_seq_all: Vec<f32>,
    pub logits_steps: Vec<f32>,
    pub logits2_last: Vec<f32>,
}

/// The reference outputs recorded for the fixture `name` (one of [`MODELS`]).
pub fn reference(name: &str) -> Reference {
    let bytes = read_fixture(&format!("{name}.ref.safetensors"));
    let st = ::safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let f32s = |n: &str| -> Vec<f32> {
        let t = st.tensor(n).unwrap();
        assert_eq!(t.dtype(), ::safetensors::Dtype::F32, "{n}");
        t.data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    let ids = |n: &str| -> Vec<u32> {
        let t = st.tensor(n).unwrap();
        assert_eq!(t.dtype(), ::safetensors::Dtype::I64, "{n}");
        t.data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32)
            .collect()
    };
    Reference {
        tokens: ids("tokens"),
        tokens2: ids("tokens2"),
        logits_last: f32s("logits_last"),
        logits_seq_all: f32s("logits_seq_all"),
        logits_steps: f32s("logits_steps"),
        logits2_last: f32s("logits2_last"),
    }
}

/// The v7 fixture with a World-sized vocabulary (65536): its embedding and head rows beyond the
/// 256 it has are new random rows, so the World tokenizer is chosen and any id can come out.
pub fn world_model() -> PathBuf {
    let path = scratch("world").join("v7_world.safetensors");
    if path.exists() {
        return path;
    }
    let bytes = std::fs::read(fixture("v7.safetensors")).unwrap();
    let st = ::safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut rng = rwkv_cli::sampler::SplitMix64::new(7);
    let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, t) in st.tensors() {
        let (shape, data) = if name == "emb.weight" || name == "head.weight" {
            let c = t.shape()[1];
            let old: Vec<f32> = t
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            let rows = 65536;
            let data: Vec<u8> = (0..rows * c)
                .map(|i| old[i % old.len()] + 0.5 * rng.next_signed())
                .flat_map(|v| v.to_le_bytes())
                .collect();
            (vec![rows, c], data)
        } else {
            (t.shape().to_vec(), t.data().to_vec())
        };
        owned.push((name, shape, data));
    }
    let views: Vec<(String, ::safetensors::tensor::TensorView)> = owned
        .iter()
        .map(|(n, s, d)| {
            (
                n.clone(),
                ::safetensors::tensor::TensorView::new(::safetensors::Dtype::F32, s.clone(), d)
                    .unwrap(),
            )
        })
        .collect();
    let out = ::safetensors::serialize(views, None).unwrap();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, out).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    path
}
