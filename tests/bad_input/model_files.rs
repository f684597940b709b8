//! The families of damaged model files in the bad-input table: each builds its cases, writing
//! the files into the folder it is given.

use std::path::Path;

use super::common::pth::{
    central_entry, find, fix_crc, le32, local_data, local_entry, pkl_edit, rfind,
};
use super::common::read_fixture;
use super::common::safetensors::{st_edit, st_lie, st_raw, st_split, st_tensors, st_write};
use super::{random_bytes, s, Case};

/// Cases for a model file: written into `dir`, run through `generate` and `info`.
fn model_cases(
    cases: &mut Vec<Case>,
    dir: &Path,
    name: &str,
    ext: &str,
    bytes: &[u8],
    any_of: &[&'static str],
) {
    let path = dir.join(format!("{}.{ext}", name.replace([' ', '/'], "_")));
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

/// Files that are no model at all: missing, a directory, empty, random bytes, a legacy pickle.
pub fn not_a_model(dir: &Path) -> Vec<Case> {
    let mut c = Vec::new();
    let missing = dir.join("does-not-exist.pth").display().to_string();
    c.push(Case {
        name: "missing model file".into(),
        args: s(&["generate", "--model", &missing, "--prompt", "x"]),
        stdin: Vec::new(),
        code: 1,
        any_of: vec!["does not exist"],
    });
    let dir_arg = dir.display().to_string();
    c.push(Case {
        name: "a directory as the model".into(),
        args: s(&["generate", "--model", &dir_arg, "--prompt", "x"]),
        stdin: Vec::new(),
        code: 1,
        any_of: vec!["not a regular file", "directory"],
    });
    model_cases(&mut c, dir, "empty file", "safetensors", b"", &["empty"]);
    model_cases(&mut c, dir, "empty file", "pth", b"", &["empty"]);
    model_cases(&mut c, dir, "3 bytes", "pth", b"PK\x03", &["too short"]);
    for seed in 1..4 {
        model_cases(
            &mut c,
            dir,
            &format!("random bytes {seed}"),
            "safetensors",
            &random_bytes(seed, 4096),
            &["safetensors"],
        );
        model_cases(
            &mut c,
            dir,
            &format!("random bytes named .pth {seed}"),
            "pth",
            &random_bytes(seed, 4096),
            &["is not a zip archive as .pth files are"],
        );
        let mut zipish = b"PK\x03\x04".to_vec();
        zipish.extend(random_bytes(seed, 4096));
        model_cases(
            &mut c,
            dir,
            &format!("random bytes after a zip signature {seed}"),
            "pth",
            &zipish,
            &[".pth archive"],
        );
    }
    let mut legacy = vec![0x80, 0x02, 0x8a, 0x0a];
    legacy.extend(random_bytes(9, 100));
    model_cases(
        &mut c,
        dir,
        "legacy torch pickle",
        "pth",
        &legacy,
        &["legacy"],
    );
    c
}

/// Checkpoints cut short at several points.
pub fn truncated(dir: &Path) -> Vec<Case> {
    let mut c = Vec::new();
    let st = read_fixture("v7.safetensors");
    let pth = read_fixture("v7.pth");
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
            dir,
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
            dir,
            &format!("pth cut at {cut}"),
            "pth",
            &pth[..cut],
            &["truncated", "too short"],
        );
    }
    c
}

/// Safetensors headers whose entries lie: data ranges, dtypes and shapes.
pub fn safetensors_entries(dir: &Path) -> Vec<Case> {
    let mut c = Vec::new();
    model_cases(
        &mut c,
        dir,
        "safetensors offsets past the end",
        "safetensors",
        &st_lie("v7.safetensors", |h| {
            h["emb.weight"]["data_offsets"] = serde_json::json!([1 << 20, (1 << 20) + 32768]);
        }),
        &["outside the data area"],
    );
    model_cases(
        &mut c,
        dir,
        "safetensors end before start",
        "safetensors",
        &st_lie("v7.safetensors", |h| {
            h["emb.weight"]["data_offsets"] = serde_json::json!([32768, 0]);
        }),
        &["outside the data area"],
    );
    model_cases(
        &mut c,
        dir,
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
        dir,
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
        dir,
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
        dir,
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
        dir,
        "safetensors I32 norm",
        "safetensors",
        &st_lie("v7.safetensors", |h| {
            h["blocks.1.ln2.bias"]["dtype"] = "I32".into();
        }),
        &["blocks.1.ln2.bias is stored as I32"],
    );
    model_cases(
        &mut c,
        dir,
        "safetensors unknown dtype",
        "safetensors",
        &st_lie("v7.safetensors", |h| {
            h["head.weight"]["dtype"] = "F128".into();
        }),
        &["unknown dtype"],
    );
    model_cases(
        &mut c,
        dir,
        "safetensors shape larger than its bytes",
        "safetensors",
        &st_lie("v7.safetensors", |h| {
            h["emb.weight"]["shape"] = serde_json::json!([256, 33]);
        }),
        &["emb.weight: shape [256, 33] of f32 needs 33792 bytes"],
    );
    model_cases(
        &mut c,
        dir,
        "safetensors shape smaller than its bytes",
        "safetensors",
        &st_lie("v7.safetensors", |h| {
            h["emb.weight"]["shape"] = serde_json::json!([255, 32]);
        }),
        &["needs 32640 bytes"],
    );
    model_cases(
        &mut c,
        dir,
        "safetensors shape overflowing usize",
        "safetensors",
        &st_lie("v7.safetensors", |h| {
            h["emb.weight"]["shape"] = serde_json::json!([1u64 << 32, 1u64 << 32, 1u64 << 32]);
        }),
        &["too large"],
    );
    model_cases(
        &mut c,
        dir,
        "safetensors shape not a list",
        "safetensors",
        &st_lie("v7.safetensors", |h| {
            h["emb.weight"]["shape"] = "big".into();
        }),
        &["shape is not a list"],
    );
    model_cases(
        &mut c,
        dir,
        "safetensors negative offsets",
        "safetensors",
        &st_lie("v7.safetensors", |h| {
            h["emb.weight"]["data_offsets"] = serde_json::json!([-8, 32760]);
        }),
        &["data_offsets is not [start, end]"],
    );
    model_cases(
        &mut c,
        dir,
        "safetensors tensor without dtype",
        "safetensors",
        &st_lie("v7.safetensors", |h| {
            if let Some(t) = h["emb.weight"].as_object_mut() {
                t.remove("dtype");
            }
        }),
        &["no dtype"],
    );
    c
}

/// Safetensors headers that are themselves damaged: their length, their JSON, no tensors.
pub fn safetensors_headers(dir: &Path) -> Vec<Case> {
    let mut c = Vec::new();
    let st = read_fixture("v7.safetensors");
    let mut huge = st.clone();
    huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    model_cases(
        &mut c,
        dir,
        "safetensors header length u64::MAX",
        "safetensors",
        &huge,
        &["header length says 18446744073709551615 bytes"],
    );
    huge[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    model_cases(
        &mut c,
        dir,
        "safetensors header length 1 TiB",
        "safetensors",
        &huge,
        &["header length says"],
    );
    let (_, data) = st_split(&st);
    model_cases(
        &mut c,
        dir,
        "safetensors header not JSON",
        "safetensors",
        &st_raw(b"{not json at all", &data),
        &["not a JSON object"],
    );
    model_cases(
        &mut c,
        dir,
        "safetensors header a JSON list",
        "safetensors",
        &st_raw(b"[1, 2, 3]", &data),
        &["not a JSON object"],
    );
    model_cases(
        &mut c,
        dir,
        "safetensors header not UTF-8",
        "safetensors",
        &st_raw(b"{\"\xff\xfe\": 1}", &data),
        &["not a JSON object"],
    );
    model_cases(
        &mut c,
        dir,
        "safetensors header nested 100000 deep",
        "safetensors",
        &st_raw(&[b'['; 100_000], &data),
        &["not a JSON object"],
    );
    model_cases(
        &mut c,
        dir,
        "safetensors without tensors",
        "safetensors",
        &st_raw(b"{\"__metadata__\": {\"format\": \"pt\"}}", b""),
        &["holds no tensors"],
    );
    c
}

/// `.pth` files with a damaged zip container.
pub fn zip_archives(dir: &Path) -> Vec<Case> {
    let mut c = Vec::new();
    let pth = read_fixture("v7.pth");
    let cd = central_entry(&pth, "v7/data.pkl");
    let mut b = pth.clone();
    b[cd..cd + 4].copy_from_slice(b"XX\x01\x02");
    model_cases(
        &mut c,
        dir,
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
        dir,
        "pth local header signature",
        "pth",
        &b,
        &["bad local header signature"],
    );
    let mut b = pth.clone();
    b[lh + 26..lh + 28].copy_from_slice(&0xfff0u16.to_le_bytes()); // name length
    model_cases(
        &mut c,
        dir,
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
        dir,
        "pth central directory offset past the end",
        "pth",
        &b,
        &["central directory offset"],
    );
    let mut b = pth.clone();
    b[eocd + 10..eocd + 12].copy_from_slice(&60000u16.to_le_bytes());
    model_cases(
        &mut c,
        dir,
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
        dir,
        "pth zip64 entry count",
        "pth",
        &b,
        &["claims 18446744073709551615 entries"],
    );
    let mut b = pth.clone();
    b[cd + 10..cd + 12].copy_from_slice(&8u16.to_le_bytes());
    model_cases(
        &mut c,
        dir,
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
        dir,
        "pth storage entry size past the end",
        "pth",
        &b,
        &["past the end"],
    );
    let mut b = pth.clone();
    b[cd0 + 20..cd0 + 28].copy_from_slice(&[16, 0, 0, 0, 16, 0, 0, 0]);
    model_cases(
        &mut c,
        dir,
        "pth storage entry shorter than its tensor",
        "pth",
        &b,
        &["storage v7/data/0 holds 16 bytes"],
    );
    let mut b = pth.clone();
    b[cd + 8] |= 1;
    model_cases(
        &mut c,
        dir,
        "pth encrypted entry",
        "pth",
        &b,
        &["encrypted"],
    );
    c
}

/// `.pth` files with a damaged pickle (`data.pkl`) or a damaged storage entry.
pub fn pickles(dir: &Path) -> Vec<Case> {
    let mut c = Vec::new();
    let pth = read_fixture("v7.pth");
    let cd = central_entry(&pth, "v7/data.pkl");
    let lh = local_entry(&pth, "v7/data/0");
    let mut b = pth.clone();
    let size = u32::from_le_bytes(b[cd + 20..cd + 24].try_into().expect("4 bytes"));
    b[cd + 20..cd + 24].copy_from_slice(&le32(size / 2));
    b[cd + 24..cd + 28].copy_from_slice(&le32(size / 2));
    fix_crc(&mut b, "v7/data.pkl");
    model_cases(
        &mut c,
        dir,
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
        dir,
        "pth data.pkl with a flipped bit",
        "pth",
        &b,
        &["v7/data.pkl is damaged (its CRC-32 does not match)"],
    );
    let mut b = pth.clone();
    b[local_data(&pth, lh) + 1000] ^= 0x01;
    model_cases(
        &mut c,
        dir,
        "pth weights with a flipped bit",
        "pth",
        &b,
        &["tensor emb.weight: archive entry v7/data/0 is damaged"],
    );
    model_cases(
        &mut c,
        dir,
        "pth unknown opcode",
        "pth",
        &pkl_edit("v7.pth", b"\x80\x02}", b"\x80\x02\xff"),
        &["unsupported pickle opcode 0xff"],
    );
    model_cases(
        &mut c,
        dir,
        "pth pickle protocol 9",
        "pth",
        &pkl_edit("v7.pth", b"\x80\x02}", b"\x80\x09}"),
        &["protocol 9"],
    );
    model_cases(
        &mut c,
        dir,
        "pth list instead of dict",
        "pth",
        &pkl_edit("v7.pth", b"\x80\x02}", b"\x80\x02]"),
        &["not a dict"],
    );
    model_cases(
        &mut c,
        dir,
        "pth unknown storage class",
        "pth",
        &pkl_edit("v7.pth", b"FloatStorage", b"FlaotStorage"),
        &["unsupported storage class torch.FlaotStorage"],
    );
    model_cases(
        &mut c,
        dir,
        "pth bf16 unknown storage class",
        "pth",
        &pkl_edit("v7_bf16.pth", b"BFloat16Storage", b"BFloat17Storage"),
        &["unsupported storage class"],
    );
    model_cases(
        &mut c,
        dir,
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
        dir,
        "pth rebuild function renamed",
        "pth",
        &pkl_edit("v7.pth", b"_rebuild_tensor_v2", b"_rebuild_tensor_v9"),
        &["holds no tensors"],
    );
    model_cases(
        &mut c,
        dir,
        "pth missing storage entry",
        "pth",
        &pkl_edit("v7.pth", b"X\x01\x00\x00\x000", b"X\x01\x00\x00\x00z"),
        &["storage v7/data/z is missing"],
    );
    model_cases(
        &mut c,
        dir,
        "pth tensor larger than its storage",
        "pth",
        &pkl_edit("v7.pth", b"M\x00\x01K\x20\x86", b"M\x00\x02K\x20\x86"),
        &["reaches past its storage"],
    );
    model_cases(
        &mut c,
        dir,
        "pth storage offset past its storage",
        "pth",
        &pkl_edit("v7.pth", b"QK\x00M\x00\x01", b"QK\x7fM\x00\x01"),
        &["reaches past its storage", "at offset"],
    );
    model_cases(
        &mut c,
        dir,
        "pth memo reference never stored",
        "pth",
        &pkl_edit("v7.pth", b"h\x02(", b"h\xc8("),
        &["memo entry 200"],
    );
    model_cases(
        &mut c,
        dir,
        "pth string length past the end",
        "pth",
        &pkl_edit("v7.pth", b"X\x0a\x00\x00\x00emb", b"X\xff\xff\xff\x7femb"),
        &["data.pkl is truncated"],
    );
    model_cases(
        &mut c,
        dir,
        "pth stack underflow",
        "pth",
        &pkl_edit("v7.pth", b"\x80\x02}", b"\x80\x02R"),
        &["empty stack", "MARK"],
    );
    model_cases(
        &mut c,
        dir,
        "pth bf16 STOP first",
        "pth",
        &pkl_edit("v7_bf16.pth", b"\x80\x02}", b"\x80\x02."),
        &["empty stack"],
    );
    c
}

/// Tensors of the wrong shape for their version, or missing.
pub fn wrong_or_missing_tensors(dir: &Path) -> Vec<Case> {
    let mut c = Vec::new();
    for v in ["v4", "v5_0", "v5_1", "v5_2", "v6", "v7"] {
        let f = format!("{v}.safetensors");
        model_cases(
            &mut c,
            dir,
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
            dir,
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
            dir,
            &format!("{v} without head.weight"),
            "safetensors",
            &st_edit(&f, "head.weight", |_| false),
            &["tensor head.weight is missing"],
        );
        model_cases(
            &mut c,
            dir,
            &format!("{v} without blocks.1.att.output.weight"),
            "safetensors",
            &st_edit(&f, "blocks.1.att.output.weight", |_| false),
            &["tensor blocks.1.att.output.weight is missing"],
        );
        model_cases(
            &mut c,
            dir,
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
            dir,
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
        dir,
        "without emb.weight",
        "safetensors",
        &st_edit("v7.safetensors", "emb.weight", |_| false),
        &["emb.weight is missing"],
    );
    c
}

/// Layers that do not add up: a missing part, a gap, unreadable or implausible numbers.
pub fn layer_layouts(dir: &Path) -> Vec<Case> {
    let mut c = Vec::new();
    let st = read_fixture("v7.safetensors");
    let mut tensors = st_tensors(&st);
    tensors.retain(|t| !t.name.starts_with("blocks.0.att."));
    model_cases(
        &mut c,
        dir,
        "v7 without its layer-0 attention",
        "safetensors",
        &st_write(&tensors),
        &["unknown RWKV layout"],
    );
    let mut tensors = st_tensors(&read_fixture("v5_2.safetensors"));
    tensors.retain(|t| t.name != "blocks.0.att.time_decay");
    model_cases(
        &mut c,
        dir,
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
        dir,
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
        dir,
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
        dir,
        "v7 claiming 100001 layers",
        "safetensors",
        &st_write(&tensors),
        &["implausible"],
    );
    c
}
