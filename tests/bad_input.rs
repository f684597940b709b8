//! Bad input never panics and never hangs.
//!
//! A table of damaged models, lying headers, broken archives and pickles, wrong shapes, missing
//! tensors, bad state files and bad flags, each run through the real binary with a deadline:
//! every case must exit 1 with exactly one line on stderr naming the problem (usage errors:
//! exit 2, clap's message first), and never print "panicked". Then the inputs that must be
//! *accepted*: prompts that are not UTF-8 and `--max-tokens` at its maximum. Finally the
//! fuzzing seeds (`fuzz/corpus/`) are replayed through the fuzz harness, so CI runs the
//! fuzz targets' code on stable without cargo-fuzz.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rwkv_cli::checkpoint::StoredDType;

#[path = "../fuzz/harness.rs"]
#[allow(dead_code)]
mod harness;

/// Longer than any case needs (they take milliseconds); a run past it is a hang.
const DEADLINE: Duration = Duration::from_secs(20);

struct Run {
    code: Option<i32>,
    stdout: Vec<u8>,
    stderr: String,
}

/// Runs the CLI with `stdin`; kills it and fails the test if it runs past the deadline.
fn run(args: &[String], stdin: &[u8]) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rwkv-cli"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start rwkv-cli");
    let mut input = child.stdin.take().expect("stdin");
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("rwkv-cli {args:?} hung: killed after {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let _ = writer.join();
    Run {
        code: status.code(),
        stdout: out.join().expect("stdout reader"),
        stderr: String::from_utf8_lossy(&err.join().expect("stderr reader")).into_owned(),
    }
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn read_fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).expect("fixture")
}

/// A scratch folder for one test (removed by the test when it passes).
fn tmp_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rwkv-bad-input-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

// ---------------------------------------------------------------------------------------------
// safetensors surgery

/// A safetensors file's header (JSON object) and data area.
fn st_split(bytes: &[u8]) -> (serde_json::Map<String, serde_json::Value>, Vec<u8>) {
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header = serde_json::from_slice(&bytes[8..8 + n]).expect("fixture header");
    (header, bytes[8 + n..].to_vec())
}

/// Writes a header (any JSON value, or raw bytes) and a data area as a safetensors file.
fn st_raw(header: &[u8], data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header);
    out.extend_from_slice(data);
    out
}

fn st_join(header: &serde_json::Map<String, serde_json::Value>, data: &[u8]) -> Vec<u8> {
    st_raw(
        serde_json::Value::Object(header.clone())
            .to_string()
            .as_bytes(),
        data,
    )
}

/// One tensor of a safetensors file.
#[derive(Clone)]
struct Tensor {
    name: String,
    dtype: String,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

/// The tensors of a safetensors file, in file order.
fn st_tensors(bytes: &[u8]) -> Vec<Tensor> {
    let (header, data) = st_split(bytes);
    let mut v: Vec<(u64, Tensor)> = header
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(k, t)| {
            let s = t["data_offsets"][0].as_u64().expect("offset");
            let e = t["data_offsets"][1].as_u64().expect("offset");
            let shape = t["shape"]
                .as_array()
                .expect("shape")
                .iter()
                .map(|d| d.as_u64().expect("dim") as usize)
                .collect();
            let tensor = Tensor {
                name: k.clone(),
                dtype: t["dtype"].as_str().expect("dtype").to_owned(),
                shape,
                bytes: data[s as usize..e as usize].to_vec(),
            };
            (s, tensor)
        })
        .collect();
    v.sort_by_key(|(s, _)| *s);
    v.into_iter().map(|(_, t)| t).collect()
}

/// A well-formed safetensors file (offsets computed) from tensors.
fn st_write(tensors: &[Tensor]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for t in tensors {
        let start = data.len();
        data.extend_from_slice(&t.bytes);
        header.insert(
            t.name.clone(),
            serde_json::json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [start, data.len()]}),
        );
    }
    st_join(&header, &data)
}

/// A fixture with one tensor changed by `f` (or removed, when `f` returns false).
fn st_edit(fixture_name: &str, name: &str, f: impl Fn(&mut Tensor) -> bool) -> Vec<u8> {
    let mut tensors = st_tensors(&read_fixture(fixture_name));
    let i = tensors
        .iter()
        .position(|t| t.name == name)
        .unwrap_or_else(|| panic!("{fixture_name} has no {name}"));
    if !f(&mut tensors[i]) {
        tensors.remove(i);
    }
    st_write(&tensors)
}

/// A fixture's header with one tensor's entry edited by `f`, data unchanged.
fn st_lie(
    fixture_name: &str,
    f: impl Fn(&mut serde_json::Map<String, serde_json::Value>),
) -> Vec<u8> {
    let (mut header, data) = st_split(&read_fixture(fixture_name));
    f(&mut header);
    st_join(&header, &data)
}

// ---------------------------------------------------------------------------------------------
// .pth surgery: byte edits of the fixture archives

fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len())
        .position(|w| w == needle)
        .unwrap_or_else(|| panic!("{:?} not found", String::from_utf8_lossy(needle)))
}

fn rfind(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len())
        .rposition(|w| w == needle)
        .unwrap_or_else(|| panic!("{:?} not found", String::from_utf8_lossy(needle)))
}

/// Offset of the central-directory entry of `name`.
fn central_entry(zip: &[u8], name: &str) -> usize {
    let mut pat = Vec::new();
    pat.extend_from_slice(name.as_bytes());
    let mut at = 0;
    loop {
        let i = at + find(&zip[at..], b"PK\x01\x02");
        if zip[i + 46..].starts_with(&pat) {
            return i;
        }
        at = i + 4;
    }
}

/// Offset of the local header of `name`.
fn local_entry(zip: &[u8], name: &str) -> usize {
    let mut at = 0;
    loop {
        let i = at + find(&zip[at..], b"PK\x03\x04");
        if zip[i + 30..].starts_with(name.as_bytes()) {
            return i;
        }
        at = i + 4;
    }
}

/// Recomputes the CRC-32 that the central directory records for `name`, so that an edit
/// reaches the code behind the CRC check.
fn fix_crc(zip: &mut [u8], name: &str) {
    let cd = central_entry(zip, name);
    let size = u32::from_le_bytes(zip[cd + 20..cd + 24].try_into().expect("4 bytes")) as usize;
    let local = u32::from_le_bytes(zip[cd + 42..cd + 46].try_into().expect("4 bytes")) as usize;
    let start = local_data(zip, local);
    let crc = harness::crc32(&zip[start..start + size]);
    zip[cd + 16..cd + 20].copy_from_slice(&crc.to_le_bytes());
}

/// Where the data of the entry whose local header is at `local` start.
fn local_data(zip: &[u8], local: usize) -> usize {
    let n = u16::from_le_bytes([zip[local + 26], zip[local + 27]]) as usize;
    let e = u16::from_le_bytes([zip[local + 28], zip[local + 29]]) as usize;
    local + 30 + n + e
}

/// The fixture with `from` replaced by `to` (same length) at its first occurrence inside
/// `data.pkl` (the first entry, so the first occurrence in the file), CRC updated.
fn pkl_edit(fixture_name: &str, from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let mut b = read_fixture(fixture_name);
    let start = find(&b, b"\x80\x02}");
    let i = start + find(&b[start..], from);
    b[i..i + to.len()].copy_from_slice(to);
    let archive = fixture_name.trim_end_matches(".pth");
    fix_crc(&mut b, &format!("{archive}/data.pkl"));
    b
}

fn le32(v: u32) -> [u8; 4] {
    v.to_le_bytes()
}

// ---------------------------------------------------------------------------------------------
// the table

/// What a case expects.
struct Case {
    name: String,
    args: Vec<String>,
    stdin: Vec<u8>,
    /// 1 (failure: exactly one line on stderr) or 2 (usage error: clap's message first).
    code: i32,
    /// stderr must contain at least one of these.
    any_of: Vec<&'static str>,
}

fn check(case: &Case) -> Result<(), String> {
    let r = run(&case.args, &case.stdin);
    let e = r.stderr.trim_end();
    let fail = |why: &str| {
        Err(format!(
            "case {:?}: {why}\n  args: {:?}\n  exit: {:?}\n  stderr: {e}",
            case.name, case.args, r.code
        ))
    };
    if e.contains("panicked") || e.contains("RUST_BACKTRACE") {
        return fail("panicked");
    }
    if r.code != Some(case.code) {
        return fail(&format!("expected exit {}", case.code));
    }
    if !r.stdout.is_empty() {
        return fail("printed on stdout");
    }
    let first = e.lines().next().unwrap_or("");
    if !first.starts_with("error: ") {
        return fail("stderr does not start with 'error: '");
    }
    if case.code == 1 && e.lines().count() != 1 {
        return fail("stderr is not exactly one line");
    }
    if !case.any_of.iter().any(|n| first.contains(n)) {
        return fail(&format!("the message names none of {:?}", case.any_of));
    }
    Ok(())
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Cases for a model file: written to a temporary file, run through `generate` and `info`.
fn model_cases(
    cases: &mut Vec<Case>,
    name: &str,
    ext: &str,
    bytes: &[u8],
    any_of: &[&'static str],
) {
    let path = tmp_dir("table").join(format!("{}.{ext}", name.replace([' ', '/'], "_")));
    std::fs::write(&path, bytes).expect("write case file");
    let p = path.display().to_string();
    cases.push(Case {
        name: format!("{name} (generate)"),
        args: s(&["generate", "--model", &p, "--prompt", "hi", "-n", "2"]),
        stdin: Vec::new(),
        code: 1,
        any_of: any_of.to_vec(),
    });
    cases.push(Case {
        name: format!("{name} (info)"),
        args: s(&["info", &p]),
        stdin: Vec::new(),
        code: 1,
        any_of: any_of.to_vec(),
    });
}

/// xorshift64*: deterministic "random" bytes.
fn random_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

fn model_file_cases() -> Vec<Case> {
    let mut c = Vec::new();
    let st = read_fixture("v7.safetensors");
    let pth = read_fixture("v7.pth");
    let pth16 = read_fixture("v7_bf16.pth");

    // Missing, empty, not a file, random bytes.
    let missing = tmp_dir("table")
        .join("does-not-exist.pth")
        .display()
        .to_string();
    c.push(Case {
        name: "missing model file".into(),
        args: s(&["generate", "--model", &missing, "--prompt", "x"]),
        stdin: Vec::new(),
        code: 1,
        any_of: vec!["does not exist"],
    });
    let dir = tmp_dir("table").display().to_string();
    c.push(Case {
        name: "a directory as the model".into(),
        args: s(&["generate", "--model", &dir, "--prompt", "x"]),
        stdin: Vec::new(),
        code: 1,
        any_of: vec!["not a regular file", "directory"],
    });
    model_cases(&mut c, "empty file", "safetensors", b"", &["empty"]);
    model_cases(&mut c, "empty file", "pth", b"", &["empty"]);
    model_cases(&mut c, "3 bytes", "pth", b"PK\x03", &["too short"]);
    for seed in 1..4 {
        model_cases(
            &mut c,
            &format!("random bytes {seed}"),
            "safetensors",
            &random_bytes(seed, 4096),
            &["safetensors"],
        );
        model_cases(
            &mut c,
            &format!("random bytes named .pth {seed}"),
            "pth",
            &random_bytes(seed, 4096),
            &["is not a zip archive as .pth files are"],
        );
        let mut zipish = b"PK\x03\x04".to_vec();
        zipish.extend(random_bytes(seed, 4096));
        model_cases(
            &mut c,
            &format!("random bytes after a zip signature {seed}"),
            "pth",
            &zipish,
            &[".pth archive"],
        );
    }
    let mut legacy = vec![0x80, 0x02, 0x8a, 0x0a];
    legacy.extend(random_bytes(9, 100));
    model_cases(&mut c, "legacy torch pickle", "pth", &legacy, &["legacy"]);

    // Truncated files, cut at several points.
    let (header, _) = st_split(&st);
    let header_end = 8 + serde_json::Value::Object(header).to_string().len();
    let header_end = header_end.min(st.len());
    for cut in [
        1,
        7,
        8,
        9,
        100,
        header_end - 1,
        header_end,
        header_end + 1,
        st.len() / 2,
        st.len() - 1,
    ] {
        model_cases(
            &mut c,
            &format!("safetensors cut at {cut}"),
            "safetensors",
            &st[..cut],
            &["truncated", "too short"],
        );
    }
    for cut in [
        4,
        8,
        31,
        100,
        pth.len() / 3,
        pth.len() / 2,
        pth.len() - 22,
        pth.len() - 1,
    ] {
        model_cases(
            &mut c,
            &format!("pth cut at {cut}"),
            "pth",
            &pth[..cut],
            &["truncated", "too short"],
        );
    }

    // Safetensors headers that lie.
    model_cases(
        &mut c,
        "safetensors offsets past the end",
        "safetensors",
        &st_lie("v7.safetensors", |h| {
            h["emb.weight"]["data_offsets"] = serde_json::json!([1 << 20, (1 << 20) + 32768]);
        }),
        &["outside the data area"],
    );
    model_cases(
        &mut c,
        "safetensors end before start",
        "safetensors",
        &st_lie("v7.safetensors", |h| {
            h["emb.weight"]["data_offsets"] = serde_json::json!([32768, 0]);
        }),
        &["outside the data area"],
    );
    model_cases(
        &mut c,
        "safetensors overlapping ranges",
        "safetensors",
        &st_lie("v7.safetensors", |h| {
            let w = h["blocks.0.ln1.weight"]["data_offsets"].clone();
            h["blocks.0.ln1.bias"]["data_offsets"] = w;
        }),
        &["overlap"],
    );
    model_cases(
        &mut c,
        "safetensors partly overlapping ranges",
        "safetensors",
        &st_lie("v7.safetensors", |h| {
            let w = &h["blocks.0.ln1.weight"]["data_offsets"];
            let s = w[0].as_u64().expect("offset") + 64;
            h["blocks.0.ln1.bias"]["data_offsets"] = serde_json::json!([s, s + 128]);
        }),
        &["overlap"],
    );
    model_cases(
        &mut c,
        "safetensors I64 weights",
        "safetensors",
        &st_lie("v7.safetensors", |h| {
            h["emb.weight"]["dtype"] = "I64".into();
            h["emb.weight"]["shape"] = serde_json::json!([256, 16]);
        }),
        &["emb.weight is stored as I64"],
    );
    model_cases(
        &mut c,
        "safetensors U8 weights",
        "safetensors",
        &st_lie("v7.safetensors", |h| {
            h["blocks.0.att.key.weight"]["dtype"] = "U8".into();
            h["blocks.0.att.key.weight"]["shape"] = serde_json::json!([32, 128]);
        }),
        &["blocks.0.att.key.weight is stored as U8"],
    );
    model_cases(
        &mut c,
        "safetensors I32 norm",
        "safetensors",
        &st_lie("v7.safetensors", |h| {
            h["blocks.1.ln2.bias"]["dtype"] = "I32".into();
        }),
        &["blocks.1.ln2.bias is stored as I32"],
    );
    model_cases(
        &mut c,
        "safetensors unknown dtype",
        "safetensors",
        &st_lie("v7.safetensors", |h| {
            h["head.weight"]["dtype"] = "F128".into();
        }),
        &["unknown dtype"],
    );
    model_cases(
        &mut c,
        "safetensors shape larger than its bytes",
        "safetensors",
        &st_lie("v7.safetensors", |h| {
            h["emb.weight"]["shape"] = serde_json::json!([256, 33]);
        }),
        &["emb.weight: shape [256, 33] of f32 needs 33792 bytes"],
    );
    model_cases(
        &mut c,
        "safetensors shape smaller than its bytes",
        "safetensors",
        &st_lie("v7.safetensors", |h| {
            h["emb.weight"]["shape"] = serde_json::json!([255, 32]);
        }),
        &["needs 32640 bytes"],
    );
    model_cases(
        &mut c,
        "safetensors shape overflowing usize",
        "safetensors",
        &st_lie("v7.safetensors", |h| {
            h["emb.weight"]["shape"] = serde_json::json!([1u64 << 32, 1u64 << 32, 1u64 << 32]);
        }),
        &["too large"],
    );
    model_cases(
        &mut c,
        "safetensors shape not a list",
        "safetensors",
        &st_lie("v7.safetensors", |h| {
            h["emb.weight"]["shape"] = "big".into();
        }),
        &["shape is not a list"],
    );
    model_cases(
        &mut c,
        "safetensors negative offsets",
        "safetensors",
        &st_lie("v7.safetensors", |h| {
            h["emb.weight"]["data_offsets"] = serde_json::json!([-8, 32760]);
        }),
        &["data_offsets is not [start, end]"],
    );
    model_cases(
        &mut c,
        "safetensors tensor without dtype",
        "safetensors",
        &st_lie("v7.safetensors", |h| {
            if let Some(t) = h["emb.weight"].as_object_mut() {
                t.remove("dtype");
            }
        }),
        &["no dtype"],
    );
    let mut huge = st.clone();
    huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    model_cases(
        &mut c,
        "safetensors header length u64::MAX",
        "safetensors",
        &huge,
        &["header length says 18446744073709551615 bytes"],
    );
    huge[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    model_cases(
        &mut c,
        "safetensors header length 1 TiB",
        "safetensors",
        &huge,
        &["header length says"],
    );
    let (_, data) = st_split(&st);
    model_cases(
        &mut c,
        "safetensors header not JSON",
        "safetensors",
        &st_raw(b"{not json at all", &data),
        &["not a JSON object"],
    );
    model_cases(
        &mut c,
        "safetensors header a JSON list",
        "safetensors",
        &st_raw(b"[1, 2, 3]", &data),
        &["not a JSON object"],
    );
    model_cases(
        &mut c,
        "safetensors header not UTF-8",
        "safetensors",
        &st_raw(b"{\"\xff\xfe\": 1}", &data),
        &["not a JSON object"],
    );
    model_cases(
        &mut c,
        "safetensors header nested 100000 deep",
        "safetensors",
        &st_raw(&[b'['; 100_000], &data),
        &["not a JSON object"],
    );
    model_cases(
        &mut c,
        "safetensors without tensors",
        "safetensors",
        &st_raw(b"{\"__metadata__\": {\"format\": \"pt\"}}", b""),
        &["holds no tensors"],
    );

    // .pth with a damaged zip.
    let cd = central_entry(&pth, "v7/data.pkl");
    let mut b = pth.clone();
    b[cd..cd + 4].copy_from_slice(b"XX\x01\x02");
    model_cases(
        &mut c,
        "pth central directory signature",
        "pth",
        &b,
        &["bad signature"],
    );
    let lh = local_entry(&pth, "v7/data/0");
    let mut b = pth.clone();
    b[lh..lh + 4].copy_from_slice(b"PK\x00\x00");
    model_cases(
        &mut c,
        "pth local header signature",
        "pth",
        &b,
        &["bad local header signature"],
    );
    let mut b = pth.clone();
    b[lh + 26..lh + 28].copy_from_slice(&0xfff0u16.to_le_bytes()); // name length
    model_cases(
        &mut c,
        "pth local header name length",
        "pth",
        &b,
        &["local header does not match"],
    );
    let eocd = rfind(&pth, b"PK\x05\x06");
    let mut b = pth.clone();
    b[eocd + 16..eocd + 20].copy_from_slice(&le32(0x7fff_0000));
    model_cases(
        &mut c,
        "pth central directory offset past the end",
        "pth",
        &b,
        &["central directory offset"],
    );
    let mut b = pth.clone();
    b[eocd + 10..eocd + 12].copy_from_slice(&60000u16.to_le_bytes());
    model_cases(
        &mut c,
        "pth central directory entry count",
        "pth",
        &b,
        &["claims 60000 entries"],
    );
    let z64 = rfind(&pth, b"PK\x06\x06");
    let mut b = pth.clone();
    b[eocd + 10..eocd + 12].copy_from_slice(&[0xff, 0xff]);
    b[z64 + 32..z64 + 40].copy_from_slice(&u64::MAX.to_le_bytes());
    model_cases(
        &mut c,
        "pth zip64 entry count",
        "pth",
        &b,
        &["claims 18446744073709551615 entries"],
    );
    let mut b = pth.clone();
    b[cd + 10..cd + 12].copy_from_slice(&8u16.to_le_bytes());
    model_cases(
        &mut c,
        "pth compressed data.pkl",
        "pth",
        &b,
        &["compressed"],
    );
    let cd0 = central_entry(&pth, "v7/data/0");
    let mut b = pth.clone();
    b[cd0 + 20..cd0 + 28].copy_from_slice(&[0xee, 0xee, 0xee, 0x0e, 0xee, 0xee, 0xee, 0x0e]);
    model_cases(
        &mut c,
        "pth storage entry size past the end",
        "pth",
        &b,
        &["past the end"],
    );
    let mut b = pth.clone();
    b[cd0 + 20..cd0 + 28].copy_from_slice(&[16, 0, 0, 0, 16, 0, 0, 0]);
    model_cases(
        &mut c,
        "pth storage entry shorter than its tensor",
        "pth",
        &b,
        &["storage v7/data/0 holds 16 bytes"],
    );
    let mut b = pth.clone();
    b[cd + 8] |= 1;
    model_cases(&mut c, "pth encrypted entry", "pth", &b, &["encrypted"]);

    // .pth with a damaged pickle.
    let mut b = pth.clone();
    let size = u32::from_le_bytes(b[cd + 20..cd + 24].try_into().expect("4 bytes"));
    b[cd + 20..cd + 24].copy_from_slice(&le32(size / 2));
    b[cd + 24..cd + 28].copy_from_slice(&le32(size / 2));
    fix_crc(&mut b, "v7/data.pkl");
    model_cases(
        &mut c,
        "pth data.pkl truncated",
        "pth",
        &b,
        &["data.pkl is truncated"],
    );
    let mut b = pth.clone();
    let pkl_at = find(&b, b"\x80\x02}");
    b[pkl_at + 100] ^= 0x20;
    model_cases(
        &mut c,
        "pth data.pkl with a flipped bit",
        "pth",
        &b,
        &["v7/data.pkl is damaged (its CRC-32 does not match)"],
    );
    let mut b = pth.clone();
    b[local_data(&pth, lh) + 1000] ^= 0x01;
    model_cases(
        &mut c,
        "pth weights with a flipped bit",
        "pth",
        &b,
        &["tensor emb.weight: archive entry v7/data/0 is damaged"],
    );
    model_cases(
        &mut c,
        "pth unknown opcode",
        "pth",
        &pkl_edit("v7.pth", b"\x80\x02}", b"\x80\x02\xff"),
        &["unsupported pickle opcode 0xff"],
    );
    model_cases(
        &mut c,
        "pth pickle protocol 9",
        "pth",
        &pkl_edit("v7.pth", b"\x80\x02}", b"\x80\x09}"),
        &["protocol 9"],
    );
    model_cases(
        &mut c,
        "pth list instead of dict",
        "pth",
        &pkl_edit("v7.pth", b"\x80\x02}", b"\x80\x02]"),
        &["not a dict"],
    );
    model_cases(
        &mut c,
        "pth unknown storage class",
        "pth",
        &pkl_edit("v7.pth", b"FloatStorage", b"FlaotStorage"),
        &["unsupported storage class torch.FlaotStorage"],
    );
    model_cases(
        &mut c,
        "pth bf16 unknown storage class",
        "pth",
        &pkl_edit("v7_bf16.pth", b"BFloat16Storage", b"BFloat17Storage"),
        &["unsupported storage class"],
    );
    model_cases(
        &mut c,
        "pth integer storage",
        "pth",
        &pkl_edit(
            "v7_bf16.pth",
            b"torch\nBFloat16Storage\n",
            b"torch\nCharStorage\n(1(1",
        ),
        &["emb.weight is stored as torch.CharStorage"],
    );
    model_cases(
        &mut c,
        "pth rebuild function renamed",
        "pth",
        &pkl_edit("v7.pth", b"_rebuild_tensor_v2", b"_rebuild_tensor_v9"),
        &["holds no tensors"],
    );
    model_cases(
        &mut c,
        "pth missing storage entry",
        "pth",
        &pkl_edit("v7.pth", b"X\x01\x00\x00\x000", b"X\x01\x00\x00\x00z"),
        &["storage v7/data/z is missing"],
    );
    model_cases(
        &mut c,
        "pth tensor larger than its storage",
        "pth",
        &pkl_edit("v7.pth", b"M\x00\x01K\x20\x86", b"M\x00\x02K\x20\x86"),
        &["reaches past its storage"],
    );
    model_cases(
        &mut c,
        "pth storage offset past its storage",
        "pth",
        &pkl_edit("v7.pth", b"QK\x00M\x00\x01", b"QK\x7fM\x00\x01"),
        &["reaches past its storage", "at offset"],
    );
    model_cases(
        &mut c,
        "pth memo reference never stored",
        "pth",
        &pkl_edit("v7.pth", b"h\x02(", b"h\xc8("),
        &["memo entry 200"],
    );
    model_cases(
        &mut c,
        "pth string length past the end",
        "pth",
        &pkl_edit("v7.pth", b"X\x0a\x00\x00\x00emb", b"X\xff\xff\xff\x7femb"),
        &["data.pkl is truncated"],
    );
    model_cases(
        &mut c,
        "pth stack underflow",
        "pth",
        &pkl_edit("v7.pth", b"\x80\x02}", b"\x80\x02R"),
        &["empty stack", "MARK"],
    );
    model_cases(
        &mut c,
        "pth bf16 STOP first",
        "pth",
        &pkl_edit("v7_bf16.pth", b"\x80\x02}", b"\x80\x02."),
        &["empty stack"],
    );
    let _ = pth16;

    // Tensors with the wrong shape for their version, or missing.
    for v in ["v4", "v5_0", "v5_1", "v5_2", "v6", "v7"] {
        let f = format!("{v}.safetensors");
        model_cases(
            &mut c,
            &format!("{v} receptance of the wrong shape"),
            "safetensors",
            &st_edit(&f, "blocks.1.att.receptance.weight", |t| {
                t.shape = vec![16, 64];
                true
            }),
            &["tensor blocks.1.att.receptance.weight has shape [16, 64], expected [32, 32]"],
        );
        model_cases(
            &mut c,
            &format!("{v} ffn key transposed"),
            "safetensors",
            &st_edit(&f, "blocks.0.ffn.key.weight", |t| {
                t.shape = vec![32, 96];
                true
            }),
            &["blocks.0.ffn.key.weight has shape [32, 96]"],
        );
        model_cases(
            &mut c,
            &format!("{v} without head.weight"),
            "safetensors",
            &st_edit(&f, "head.weight", |_| false),
            &["tensor head.weight is missing"],
        );
        model_cases(
            &mut c,
            &format!("{v} without blocks.1.att.output.weight"),
            "safetensors",
            &st_edit(&f, "blocks.1.att.output.weight", |_| false),
            &["tensor blocks.1.att.output.weight is missing"],
        );
        model_cases(
            &mut c,
            &format!("{v} embedding of rank 3"),
            "safetensors",
            &st_edit(&f, "emb.weight", |t| {
                t.shape = vec![256, 2, 16];
                true
            }),
            &["emb.weight has shape [256, 2, 16], expected 2 dimensions"],
        );
        model_cases(
            &mut c,
            &format!("{v} norm of the wrong size"),
            "safetensors",
            &st_edit(&f, "blocks.1.ln1.weight", |t| {
                t.shape = vec![16];
                t.bytes.truncate(64);
                true
            }),
            &["blocks.1.ln1.weight has shape [16], expected 32 values"],
        );
    }
    model_cases(
        &mut c,
        "without emb.weight",
        "safetensors",
        &st_edit("v7.safetensors", "emb.weight", |_| false),
        &["emb.weight is missing"],
    );
    let mut tensors = st_tensors(&st);
    tensors.retain(|t| !t.name.starts_with("blocks.0.att."));
    model_cases(
        &mut c,
        "v7 without its layer-0 attention",
        "safetensors",
        &st_write(&tensors),
        &["unknown RWKV layout"],
    );
    let mut tensors = st_tensors(&read_fixture("v5_2.safetensors"));
    tensors.retain(|t| t.name != "blocks.0.att.time_decay");
    model_cases(
        &mut c,
        "v5 without time_decay",
        "safetensors",
        &st_write(&tensors),
        &["blocks.0.att.time_decay"],
    );
    let mut tensors = st_tensors(&st);
    for t in &mut tensors {
        if let Some(rest) = t.name.strip_prefix("blocks.1.") {
            t.name = format!("blocks.3.{rest}");
        }
    }
    model_cases(
        &mut c,
        "v7 with a gap in its layers",
        "safetensors",
        &st_write(&tensors),
        &["blocks.1.", "is missing"],
    );
    let mut tensors = st_tensors(&st);
    for t in &mut tensors {
        if let Some(rest) = t.name.strip_prefix("blocks.1.") {
            t.name = format!("blocks.99999999999999999999.{rest}");
        }
    }
    model_cases(
        &mut c,
        "v7 with an unreadable layer number",
        "safetensors",
        &st_write(&tensors),
        &["layer number"],
    );
    let mut tensors = st_tensors(&st);
    for t in &mut tensors {
        if let Some(rest) = t.name.strip_prefix("blocks.1.") {
            t.name = format!("blocks.100000.{rest}");
        }
    }
    model_cases(
        &mut c,
        "v7 claiming 100001 layers",
        "safetensors",
        &st_write(&tensors),
        &["implausible"],
    );
    c
}

fn flag_and_state_cases() -> Vec<Case> {
    let model = fixture("v7.safetensors").display().to_string();
    let dir = tmp_dir("table");
    let empty_state = dir.join("empty.state");
    std::fs::write(&empty_state, b"").expect("write");
    let random_state = dir.join("random.state");
    std::fs::write(&random_state, random_bytes(7, 5000)).expect("write");
    let mut magic_state = b"RWKVSTATE\0".to_vec();
    magic_state.extend(random_bytes(8, 5000));
    let magic_path = dir.join("magic.state");
    std::fs::write(&magic_path, &magic_state).expect("write");
    let missing_state = dir.join("missing.state").display().to_string();
    let gen = |extra: &[&str]| {
        let mut a = s(&["generate", "--model", &model, "--prompt", "x"]);
        a.extend(s(extra));
        a
    };
    let case = |name: &str, args: Vec<String>, code: i32, any_of: Vec<&'static str>| Case {
        name: name.into(),
        args,
        stdin: Vec::new(),
        code,
        any_of,
    };
    vec![
        case(
            "--quiet with --stats-json",
            gen(&["--quiet", "--stats-json"]),
            2,
            vec!["cannot be used with"],
        ),
        case(
            "--max-tokens past u64",
            gen(&["--max-tokens", "18446744073709551616"]),
            2,
            vec!["too large"],
        ),
        case(
            "--max-tokens negative",
            gen(&["--max-tokens", "-1"]),
            2,
            vec!["unexpected argument '-1'"],
        ),
        case(
            "--max-tokens not a number",
            gen(&["--max-tokens", "lots"]),
            2,
            vec!["invalid value 'lots'"],
        ),
        case(
            "--temperature NaN",
            gen(&["--temperature", "nan"]),
            2,
            vec!["--temperature"],
        ),
        case("--top-p 2", gen(&["--top-p", "2"]), 2, vec!["--top-p"]),
        case("--chunk 0", gen(&["--chunk", "0"]), 2, vec!["--chunk"]),
        case(
            "--tokenizer unknown",
            gen(&["--tokenizer", "klingon"]),
            2,
            vec!["unknown tokenizer"],
        ),
        case("--dtype unknown", gen(&["--dtype", "f8"]), 2, vec!["f8"]),
        case(
            "--tokenizer world on a 256-token model",
            gen(&["--tokenizer", "world"]),
            1,
            vec!["world tokenizer has 65530 tokens but the model only 256"],
        ),
        case(
            "--logits-out into a missing directory",
            gen(&["-n", "0", "--logits-out", "/nonexistent-dir/x/logits.f32"]),
            1,
            vec!["cannot write"],
        ),
        case(
            "--state-in missing",
            gen(&["--state-in", &missing_state]),
            1,
            vec!["cannot read state file"],
        ),
        case(
            "--state-in empty",
            gen(&["--state-in", &empty_state.display().to_string()]),
            1,
            vec!["bad magic"],
        ),
        case(
            "--state-in random bytes",
            gen(&["--state-in", &random_state.display().to_string()]),
            1,
            vec!["bad magic"],
        ),
        case(
            "--state-in random bytes after the magic",
            gen(&["--state-in", &magic_path.display().to_string()]),
            1,
            vec!["damaged or truncated"],
        ),
        case(
            "--state-out into a missing directory",
            gen(&["-n", "0", "--state-out", "/nonexistent-dir/x/s.state"]),
            1,
            vec!["cannot write"],
        ),
    ]
}

#[test]
fn every_bad_input_fails_cleanly_with_one_line() {
    let mut cases = model_file_cases();
    cases.extend(flag_and_state_cases());
    let failures: Vec<String> = cases.iter().filter_map(|c| check(c).err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    assert!(cases.len() > 150, "the table shrank: {}", cases.len());
    let _ = std::fs::remove_dir_all(tmp_dir("table"));
}

/// Every damaged file in the table also fails through the library, with no panic (the same
/// code, without the process boundary: a panic here would name its line).
#[test]
fn the_library_refuses_every_damaged_file_without_panicking() {
    let st = read_fixture("v7.safetensors");
    let pth = read_fixture("v7.pth");
    for f in [&st, &pth] {
        for cut in (0..f.len()).step_by(97) {
            let r = rwkv_cli::checkpoint::Checkpoint::from_bytes(f[..cut].to_vec(), "cut");
            assert!(r.is_err(), "cut at {cut} accepted");
        }
    }
    // A header just over the 100 MiB limit, in a file large enough to hold it.
    let mut big = vec![b' '; 8 + (100 << 20) + 1];
    big[..8].copy_from_slice(&((100u64 << 20) + 1).to_le_bytes());
    let e = rwkv_cli::checkpoint::Checkpoint::from_bytes(big, "big")
        .err()
        .expect("refused");
    assert!(format!("{e:#}").contains("implausibly large"), "{e:#}");
}

// ---------------------------------------------------------------------------------------------
// inputs that must be accepted

#[test]
fn a_prompt_that_is_not_utf8_is_tokenized_as_bytes() {
    let model = fixture("v7.safetensors").display().to_string();
    let dir = tmp_dir("utf8");
    let prompts: [&[u8]; 4] = [
        b"\xff\xfe\x80abc\xc3",
        b"\xed\xa0\x80 lone surrogate",
        b"\xc0\xaf overlong",
        b"caf\xe9 latin-1",
    ];
    for (i, prompt) in prompts.iter().enumerate() {
        let logits = dir.join(format!("utf8-{i}.f32"));
        let args = s(&[
            "generate",
            "--model",
            &model,
            "-n",
            "0",
            "--quiet",
            "--logits-out",
            &logits.display().to_string(),
        ]);
        let r = run(&args, prompt);
        assert_eq!(r.code, Some(0), "{prompt:?}: {}", r.stderr);
        assert!(r.stderr.is_empty(), "{}", r.stderr);
        // The byte tokenizer feeds exactly these bytes: the library gives the same logits.
        let m =
            rwkv_cli::models::load(&fixture("v7.safetensors"), Default::default()).expect("load");
        let mut state = m.new_state();
        let tokens: Vec<u32> = prompt.iter().map(|&b| u32::from(b)).collect();
        let want = m.forward_seq(&tokens, &mut state, false).expect("forward");
        let got: Vec<f32> = std::fs::read(&logits)
            .expect("logits")
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let d = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(d < 1e-4, "{prompt:?}: logits differ by {d}");
    }
    // Generation from such a prompt also runs.
    let r = run(
        &s(&["generate", "--model", &model, "-n", "5", "--quiet"]),
        b"\xff\xfe\xfd",
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(r.stdout.len(), 5);
    let _ = std::fs::remove_dir_all(dir);
}

/// `--prompt` given on the command line with bytes that are not UTF-8. clap refuses them
/// before our code runs (`GenerateArgs::prompt` is a `String`); piped prompts are accepted.
#[test]
fn a_non_utf8_prompt_argument_is_accepted() {
    use std::os::unix::ffi::OsStrExt;
    let out = Command::new(env!("CARGO_BIN_EXE_rwkv-cli"))
        .arg("generate")
        .arg("--model")
        .arg(fixture("v7.safetensors"))
        .arg("--prompt")
        .arg(std::ffi::OsStr::from_bytes(b"\xff\xfeabc"))
        .args(["-n", "3", "--quiet"])
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_world_tokenizer_round_trips_bytes_that_are_not_utf8() {
    use rwkv_cli::tokenizer::{self, TokenizerKind};
    let t = tokenizer::load(TokenizerKind::World).expect("world tokenizer");
    let mut inputs: Vec<Vec<u8>> = vec![
        (0..=255u8).collect(),
        b"\xff\xfe\x80abc\xc3".to_vec(),
        b"\xed\xa0\x80\xed\xbf\xbf".to_vec(), // surrogates
        b"\xc0\xaf\xe0\x80\xaf".to_vec(),     // overlong
        b"\xf4\x90\x80\x80".to_vec(),         // past U+10FFFF
        "你好🎉".as_bytes()[..5].to_vec(),    // cut mid-character
        Vec::new(),
    ];
    for seed in 1..50 {
        inputs.push(random_bytes(seed, (seed as usize * 37) % 700));
    }
    for input in &inputs {
        let ids = t.encode(input).expect("encode");
        assert!(ids
            .iter()
            .all(|&id| id != 0 && (id as usize) < t.vocab_size()));
        assert_eq!(&t.decode(&ids), input, "round trip of {input:?}");
    }
    // Decoding ids outside the vocabulary never panics.
    assert!(t.decode(&[u32::MAX, 65530, 70000, 0]).is_empty());
}

#[test]
fn max_tokens_at_its_maximum_runs_and_ends_with_a_closed_pipe() {
    let model = fixture("v7.safetensors").display().to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_rwkv-cli"))
        .args([
            "generate",
            "--model",
            &model,
            "--prompt",
            "x",
            "--max-tokens",
            "18446744073709551615",
            "--temperature",
            "0",
            "--quiet",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start");
    let mut out = child.stdout.take().expect("stdout");
    let mut some = [0u8; 64];
    out.read_exact(&mut some)
        .expect("it generates rather than failing at parse or allocation");
    drop(out);
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("did not end after its reader went away");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut err = String::new();
    let _ = child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err);
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// the fuzz seeds, replayed on stable

#[test]
fn the_fuzz_seed_corpus_replays_cleanly() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut n = 0;
    for (target, f) in harness::TARGETS {
        let dir = root.join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            panic!("no seed corpus at {}", dir.display());
        };
        for e in entries {
            let data = std::fs::read(e.expect("entry").path()).expect("seed");
            f(&data);
            n += 1;
        }
    }
    assert!(n >= harness::TARGETS.len(), "seeds replayed: {n}");
    // The checkpoint seeds are valid (so the fuzzers start from inputs that go deep).
    for target in ["safetensors", "pth", "load_model"] {
        for e in std::fs::read_dir(root.join(target)).expect("corpus") {
            let path = e.expect("entry").path();
            let data = std::fs::read(&path).expect("seed");
            let bytes = match (target, data.split_first()) {
                ("pth", Some((&mode, rest))) if mode & 1 == 1 => harness::wrap_pickle(rest),
                ("pth", Some((_, rest))) => rest.to_vec(),
                _ => data,
            };
            let c = rwkv_cli::checkpoint::Checkpoint::from_bytes(bytes, "seed")
                .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
            for name in c.tensors().keys() {
                let readable = c.read_f32(name).is_ok();
                let int = c.meta(name).map(|m| m.dtype) == Some(StoredDType::Other);
                assert!(readable != int, "{}: {name}", path.display());
            }
            if target == "load_model" {
                rwkv_cli::models::load_checkpoint(&c, Default::default())
                    .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
            }
        }
    }
}

/// `--threads` far beyond the machine: 10 000 threads take over a minute to start and run a
/// three-token generation (it should be refused as a usage error, or capped).
#[test]
fn an_absurd_thread_count_does_not_hang() {
    let model = fixture("v7.safetensors").display().to_string();
    let r = run(
        &s(&[
            "--threads",
            "100000",
            "generate",
            "--model",
            &model,
            "--prompt",
            "x",
            "-n",
            "3",
            "--quiet",
        ]),
        b"",
    );
    assert!(matches!(r.code, Some(0) | Some(2)), "{}", r.stderr);
}
