//! The weight cache: a second run maps the packed weights written by the first and computes
//! exactly what an uncached run computes; damaged and stale files are found and rebuilt; the
//! size limit evicts; `--no-weight-cache` and an unwritable cache leave nothing behind.

mod common;

use common::{bin_with_cache, fixture_path, run_with_stdin, scratch, stderr};
use std::path::{Path, PathBuf};
use std::process::Output;

/// One greedy run of `model` with the weight cache in `cache`: (stdout, logits after the
/// prompt, the stats JSON's `model.weight_cache`, stderr).
struct Run {
    text: Vec<u8>,
    logits: Vec<u8>,
    cache: String,
    stderr: String,
}

fn generate(cache: &Path, model: &Path, extra: &[&str]) -> Run {
    generate_by(bin_with_cache(cache), model, extra)
}

/// As [`generate`], run by `cmd` (another build of the binary).
fn generate_by(mut cmd: std::process::Command, model: &Path, extra: &[&str]) -> Run {
    let logits = scratch("logits").join(rand_suffix());
    cmd.env_remove("RWKV_CLI_WEIGHT_CACHE_MAX");
    cmd.args(["generate", "-m"])
        .arg(model)
        .args(["-p", "The quick", "-n", "12", "--temperature", "0"])
        .args(["--stats-json", "--logits-out"])
        .arg(&logits)
        .args(extra);
    let o = run_with_stdin(&mut cmd, b"");
    finish(o, &logits)
}

fn finish(o: Output, logits: &Path) -> Run {
    let err = stderr(&o);
    assert!(o.status.success(), "exit {:?}: {err}", o.status);
    let stats: serde_json::Value =
        serde_json::from_str(err.lines().last().expect("stats line")).expect("stats JSON");
    let bytes = std::fs::read(logits).expect("logits file");
    let _ = std::fs::remove_file(logits);
    Run {
        text: o.stdout,
        logits: bytes,
        cache: stats["model"]["weight_cache"]
            .as_str()
            .expect("weight_cache in the stats")
            .to_string(),
        stderr: err,
    }
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("{}", N.fetch_add(1, Ordering::Relaxed))
}

/// The cache files (`*.rwkvw`) and leftover temporary files in `cache`.
fn cache_files(cache: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let mut files = Vec::new();
    let mut temps = Vec::new();
    if let Ok(list) = std::fs::read_dir(cache.join("weights")) {
        for e in list.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".rwkvw") {
                files.push(e.path());
            } else {
                temps.push(e.path());
            }
        }
    }
    (files, temps)
}

fn only_file(cache: &Path) -> PathBuf {
    let (files, temps) = cache_files(cache);
    assert!(temps.is_empty(), "temporary files left: {temps:?}");
    assert_eq!(files.len(), 1, "{files:?}");
    files[0].clone()
}

/// The warning lines of a run's stderr.
fn warnings(r: &Run) -> Vec<&str> {
    r.stderr
        .lines()
        .filter(|l| l.starts_with("warning:"))
        .collect()
}

/// A copy of a fixture in a scratch folder of its own (so that tests may touch or replace it).
fn own_copy(dir: &str, fixture: &str) -> PathBuf {
    let d = scratch(dir);
    let p = d.join(fixture);
    std::fs::copy(fixture_path(fixture), &p).unwrap();
    p
}

#[test]
fn a_second_run_hits_and_computes_exactly_what_an_uncached_run_does() {
    for format in ["f32", "f16", "bf16", "q8_0", "q4_0"] {
        let cache = scratch(&format!("hit-{format}"));
        let model = fixture_path("v7.safetensors");
        let flag = if format.starts_with('q') {
            "--quant"
        } else {
            "--dtype"
        };
        let args = [flag, format];
        let first = generate(&cache, &model, &args);
        assert_eq!(first.cache, "written", "{format}: {}", first.stderr);
        assert!(warnings(&first).is_empty(), "{}", first.stderr);
        let file = only_file(&cache);
        let second = generate(&cache, &model, &args);
        assert_eq!(second.cache, "hit", "{format}: {}", second.stderr);
        assert!(warnings(&second).is_empty(), "{}", second.stderr);
        let off_cache = scratch(&format!("hit-{format}-off"));
        let uncached = generate(&off_cache, &model, &[flag, format, "--no-weight-cache"]);
        assert_eq!(uncached.cache, "off");
        for r in [&first, &second] {
            assert_eq!(r.text, uncached.text, "{format}");
            assert_eq!(r.logits, uncached.logits, "{format}");
        }
        assert_eq!(only_file(&cache), file, "a hit writes no new file");
        // --no-weight-cache wrote nothing.
        let (files, temps) = cache_files(&off_cache);
        assert!(files.is_empty() && temps.is_empty(), "{files:?} {temps:?}");
    }
}

#[test]
fn every_version_round_trips_through_the_cache() {
    let files = common::MODELS.iter().map(|m| format!("{m}.safetensors"));
    // And the other containers: PyTorch zip, GGUF (f32 and quantized).
    let others = ["v7.pth", "v7_f32.gguf", "v7_q8_0.gguf", "v6_q8_0.gguf"];
    for name in files.chain(others.map(String::from)) {
        let cache = scratch(&format!("versions-{name}"));
        let model = fixture_path(&name);
        let first = generate(&cache, &model, &[]);
        let second = generate(&cache, &model, &[]);
        assert_eq!(
            (first.cache.as_str(), second.cache.as_str()),
            ("written", "hit"),
            "{name}"
        );
        let uncached = generate(&cache, &model, &["--no-weight-cache"]);
        assert_eq!(second.text, uncached.text, "{name}");
        assert_eq!(second.logits, uncached.logits, "{name}");
    }
}

/// Damages the cache file with `damage`, then checks that the next run warns once, rebuilds
/// the file and computes the right thing, and that the run after it hits again.
fn rebuilt_after(test: &str, damage: impl Fn(&Path), expect: &str) {
    let cache = scratch(test);
    let model = fixture_path("v7.safetensors");
    let good = generate(&cache, &model, &["--dtype", "bf16"]);
    let file = only_file(&cache);
    damage(&file);
    let r = generate(&cache, &model, &["--dtype", "bf16"]);
    assert_eq!(r.cache, "rebuilt", "{test}: {}", r.stderr);
    let w = warnings(&r);
    assert_eq!(w.len(), 1, "{test}: {}", r.stderr);
    assert!(
        w[0].contains(&file.display().to_string()) && w[0].contains(expect),
        "{test}: {}",
        w[0]
    );
    assert_eq!((r.text, r.logits), (good.text.clone(), good.logits.clone()));
    assert_eq!(only_file(&cache), file);
    let again = generate(&cache, &model, &["--dtype", "bf16"]);
    assert_eq!(again.cache, "hit", "{test}: {}", again.stderr);
    assert_eq!((again.text, again.logits), (good.text, good.logits));
}

fn edit(path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    let mut b = std::fs::read(path).unwrap();
    f(&mut b);
    std::fs::write(path, b).unwrap();
}

#[test]
fn a_truncated_cache_file_is_rebuilt() {
    rebuilt_after(
        "truncated",
        |p| edit(p, |b| b.truncate(b.len() / 2)),
        "damaged",
    );
    rebuilt_after("emptied", |p| edit(p, |b| b.truncate(10)), "damaged");
}

#[test]
fn a_bit_flip_anywhere_in_the_cache_file_is_caught() {
    // In the data (the packed matrices sit between the header page and the index at the end).
    rebuilt_after(
        "flip-data",
        |p| {
            edit(p, |b| {
                // 128 bytes: more than the padding between two entries, so some are data.
                let at = 4096 + (b.len() - 4096) / 3;
                b[at..at + 128].iter_mut().for_each(|v| *v ^= 0x10);
            })
        },
        "damaged (data checksum)",
    );
    rebuilt_after("flip-header", |p| edit(p, |b| b[20] ^= 1), "damaged");
    rebuilt_after(
        "flip-index",
        |p| edit(p, |b| *b.last_mut().unwrap() ^= 1),
        "damaged (index checksum)",
    );
}

#[test]
fn a_touched_or_replaced_checkpoint_makes_the_file_stale() {
    let cache = scratch("stale");
    let model = own_copy("stale-model", "v7.safetensors");
    let first = generate(&cache, &model, &[]);
    assert_eq!(first.cache, "written");
    // Touched: same bytes, a new modification time.
    let f = std::fs::File::options().write(true).open(&model).unwrap();
    f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5))
        .unwrap();
    drop(f);
    let r = generate(&cache, &model, &[]);
    assert_eq!(r.cache, "rebuilt", "{}", r.stderr);
    assert!(
        warnings(&r)
            .iter()
            .any(|w| w.contains("stale (the checkpoint changed)")),
        "{}",
        r.stderr
    );
    assert_eq!((&r.text, &r.logits), (&first.text, &first.logits));
    // Replaced by another model at the same path: the new model's output, not the cache's.
    std::fs::copy(fixture_path("v7_bf16.safetensors"), &model).unwrap();
    let r = generate(&cache, &model, &[]);
    assert_eq!(r.cache, "rebuilt", "{}", r.stderr);
    let truth = generate(&cache, &model, &["--no-weight-cache"]);
    assert_eq!((&r.text, &r.logits), (&truth.text, &truth.logits));
    assert_eq!(generate(&cache, &model, &[]).cache, "hit");
    only_file(&cache);
}

#[test]
fn another_build_replaces_the_file_instead_of_adding_one() {
    let cache = scratch("other-build");
    let model = fixture_path("v7.safetensors");
    // A copy of the binary: the same code, another executable (size and time in the key).
    let other = scratch("other-build-bin").join("rwkv-cli");
    std::fs::copy(env!("CARGO_BIN_EXE_rwkv-cli"), &other).unwrap();
    let f = std::fs::File::options().write(true).open(&other).unwrap();
    f.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(3600))
        .unwrap();
    drop(f);
    let by_other = || {
        let mut c = std::process::Command::new(&other);
        c.env("RWKV_CLI_CACHE", &cache);
        c
    };
    let first = generate(&cache, &model, &[]);
    assert_eq!(first.cache, "written");
    let file = only_file(&cache);
    let r = generate_by(by_other(), &model, &[]);
    assert_eq!(r.cache, "rebuilt", "{}", r.stderr);
    assert!(
        warnings(&r)
            .iter()
            .any(|w| w.contains("stale (written by another build)")),
        "{}",
        r.stderr
    );
    assert_eq!((&r.text, &r.logits), (&first.text, &first.logits));
    assert_eq!(only_file(&cache), file, "one file, replaced");
    assert_eq!(generate_by(by_other(), &model, &[]).cache, "hit");
}

#[test]
fn the_size_limit_evicts_the_least_recently_used_file() {
    let cache = scratch("limit");
    let (a, b) = (
        fixture_path("v7.safetensors"),
        fixture_path("v6.safetensors"),
    );
    let size_of = |model: &Path, dir: &str| {
        let c = scratch(dir);
        assert_eq!(generate(&c, model, &[]).cache, "written");
        std::fs::metadata(only_file(&c)).unwrap().len()
    };
    let (size_a, size_b) = (size_of(&a, "limit-a"), size_of(&b, "limit-b"));
    // A hit applies a limit lowered since its file was written: a's file goes, b's stays.
    let hit_cache = scratch("limit-hit");
    assert_eq!(generate(&hit_cache, &a, &[]).cache, "written");
    assert_eq!(generate(&hit_cache, &b, &[]).cache, "written");
    assert_eq!(cache_files(&hit_cache).0.len(), 2);
    let just_b = format!("{}", size_b);
    let hit = generate(&hit_cache, &b, &["--weight-cache-max", &just_b]);
    assert_eq!(hit.cache, "hit");
    let file = only_file(&hit_cache);
    assert_eq!(generate(&hit_cache, &b, &[]).cache, "hit");
    assert_eq!(only_file(&hit_cache), file);
    assert_eq!(generate(&cache, &a, &[]).cache, "written");
    // Room for either model's file, not both: writing b's evicts a's.
    let limit = format!("{}", size_a + size_b - 1);
    let rb = generate(&cache, &b, &["--weight-cache-max", &limit]);
    assert_eq!(rb.cache, "written", "{}", rb.stderr);
    let file_b = only_file(&cache);
    assert_eq!(
        generate(&cache, &b, &["--weight-cache-max", &limit]).cache,
        "hit"
    );
    assert_eq!(only_file(&cache), file_b);
    // A model larger than the limit is not cached, with one warning, and still runs.
    let r = generate(&cache, &a, &["--weight-cache-max", "1KiB"]);
    assert_eq!(r.cache, "not written");
    let w = warnings(&r);
    assert!(w.len() == 1 && w[0].contains("limit"), "{}", r.stderr);
    assert_eq!(only_file(&cache), file_b);
    // A hit on a file larger than a lowered limit reads it once more and removes it.
    let r = generate(&cache, &b, &["--weight-cache-max", "1KiB"]);
    assert_eq!(r.cache, "hit", "{}", r.stderr);
    let w = warnings(&r);
    assert!(
        w.len() == 1 && w[0].contains("larger than the cache's limit"),
        "{}",
        r.stderr
    );
    assert_eq!(
        cache_files(&cache).0.len(),
        0,
        "the directory within its limit"
    );
    assert_eq!(r.text, rb.text);
    assert_eq!(generate(&cache, &b, &[]).cache, "written");
    // The environment variable sets the limit too, and 0 turns the cache off.
    let mut cmd = bin_with_cache(&cache);
    cmd.env("RWKV_CLI_WEIGHT_CACHE_MAX", "0");
    cmd.args(["generate", "-m"])
        .arg(&a)
        .args(["-n", "0", "-p", "x", "--stats-json"]);
    let o = run_with_stdin(&mut cmd, b"");
    assert!(
        stderr(&o).contains(r#""weight_cache":"off""#),
        "{}",
        stderr(&o)
    );
}

#[test]
fn an_unwritable_cache_warns_and_the_run_goes_on() {
    // A cache "directory" below a regular file cannot be created, even by root.
    let blocker = scratch("unwritable").join("a-file");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let cache = blocker.join("cache");
    let model = fixture_path("v7.safetensors");
    let r = generate(&cache, &model, &[]);
    assert_eq!(r.cache, "not written");
    let w = warnings(&r);
    assert_eq!(w.len(), 1, "{}", r.stderr);
    assert!(w[0].contains("cannot write the weight cache"), "{}", w[0]);
    let truth = generate(&scratch("unwritable-off"), &model, &["--no-weight-cache"]);
    assert_eq!((r.text, r.logits), (truth.text, truth.logits));
}

#[test]
fn concurrent_first_runs_all_succeed_and_leave_one_valid_file() {
    let cache = scratch("concurrent");
    let model = fixture_path("v7.safetensors");
    let children: Vec<_> = (0..4)
        .map(|i| {
            let logits = scratch("logits").join(format!("concurrent-{i}"));
            let mut cmd = bin_with_cache(&cache);
            cmd.args(["generate", "-m"])
                .arg(&model)
                .args(["-p", "The quick", "-n", "12", "--temperature", "0"])
                .args(["--stats-json", "--logits-out"])
                .arg(&logits)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            (cmd.spawn().unwrap(), logits)
        })
        .collect();
    let runs: Vec<Run> = children
        .into_iter()
        .map(|(c, logits)| finish(c.wait_with_output().unwrap(), &logits))
        .collect();
    for r in &runs {
        assert!(
            r.cache == "written" || r.cache == "hit",
            "{}: {}",
            r.cache,
            r.stderr
        );
        assert!(warnings(r).is_empty(), "{}", r.stderr);
        assert_eq!((&r.text, &r.logits), (&runs[0].text, &runs[0].logits));
    }
    only_file(&cache);
    let after = generate(&cache, &model, &[]);
    assert_eq!(after.cache, "hit", "{}", after.stderr);
    assert_eq!(
        (after.text, after.logits),
        (runs[0].text.clone(), runs[0].logits.clone())
    );
}

#[test]
fn compare_workers_load_through_the_cache_unless_told_not_to() {
    let model = fixture_path("v7.safetensors");
    let compare = |cache: &Path, extra: &[&str]| {
        let mut cmd = bin_with_cache(cache);
        cmd.env_remove("RWKV_CLI_WEIGHT_CACHE_MAX");
        cmd.args(["compare", "-m"])
            .arg(&model)
            .args(["--baseline", "softmax", "--contexts", "16,32"])
            .args(["--decode-tokens", "2"])
            .args(extra);
        let o = run_with_stdin(&mut cmd, b"");
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(!stderr(&o).contains("warning:"), "{}", stderr(&o));
    };
    let cache = scratch("compare-cached");
    compare(&cache, &[]);
    let file = only_file(&cache);
    let written = std::fs::metadata(&file).unwrap().modified().unwrap();
    // A second run's workers hit the same file (a hit refreshes its time, never rewrites it).
    compare(&cache, &[]);
    assert_eq!(only_file(&cache), file);
    assert!(std::fs::metadata(&file).unwrap().modified().unwrap() >= written);
    let off = scratch("compare-uncached");
    compare(&off, &["--no-weight-cache"]);
    let (files, temps) = cache_files(&off);
    assert!(files.is_empty() && temps.is_empty(), "{files:?} {temps:?}");
}

/// Deterministic small weights for the widened FFN below.
fn wave(i: usize) -> f32 {
    ((i.wrapping_mul(2_654_435_761) % 1000) as f32 / 1000.0 - 0.5) * 0.1
}

#[test]
fn large_matrices_packed_into_the_file_compute_exactly_what_an_uncached_run_does() {
    use common::safetensors::{st_tensors, st_write};
    // The fixtures' matrices are small (staged and written); here the FFN is widened to
    // 32,768 so that its matrices (4 MiB in f32, 2 MiB in bf16) are packed straight into
    // regions of the cache file and the model runs from those pages.
    const H: usize = 32_768;
    let model = scratch("wide-ffn").join("v7_wide.safetensors");
    let mut tensors = st_tensors(&common::read_fixture("v7.safetensors"));
    for t in tensors.iter_mut() {
        let v: Vec<f32> = t
            .bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let wide: Vec<f32> = if t.name.ends_with("ffn.key.weight") {
            // (hidden, C): new rows after the old.
            let c = t.shape[1];
            t.shape = vec![H, c];
            v.iter()
                .copied()
                .chain((v.len()..H * c).map(wave))
                .collect()
        } else if t.name.ends_with("ffn.value.weight") {
            // (C, hidden): new columns after the old ones of each row.
            let (rows, old) = (t.shape[0], t.shape[1]);
            t.shape = vec![rows, H];
            (0..rows)
                .flat_map(|r| {
                    let kept = v[r * old..(r + 1) * old].to_vec();
                    kept.into_iter()
                        .chain((old..H).map(move |j| wave(r * H + j)))
                })
                .collect()
        } else {
            continue;
        };
        assert_eq!(t.dtype, "F32");
        t.bytes = wide.iter().flat_map(|x| x.to_le_bytes()).collect();
    }
    std::fs::write(&model, st_write(&tensors)).unwrap();
    for format in ["f32", "bf16"] {
        let cache = scratch(&format!("wide-ffn-{format}"));
        let args = ["--dtype", format];
        let first = generate(&cache, &model, &args);
        assert_eq!(first.cache, "written", "{}", first.stderr);
        assert!(warnings(&first).is_empty(), "{}", first.stderr);
        let second = generate(&cache, &model, &args);
        assert_eq!(second.cache, "hit", "{}", second.stderr);
        let uncached = generate(&cache, &model, &["--dtype", format, "--no-weight-cache"]);
        for r in [&first, &second] {
            assert_eq!(r.text, uncached.text, "{format}");
            assert_eq!(r.logits, uncached.logits, "{format}");
        }
        // Both layers' two widened matrices are in the file.
        let per = H * 32 * if format == "f32" { 4 } else { 2 };
        let len = std::fs::metadata(only_file(&cache)).unwrap().len() as usize;
        assert!(len >= 4 * per, "{len} bytes");
    }
}
