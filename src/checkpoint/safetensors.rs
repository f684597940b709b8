//! The safetensors container: an 8-byte little-endian header length, a JSON header naming
//! each tensor's dtype, shape and `data_offsets`, then the data area. Every range is checked
//! against the data area, its shape and dtype, and the other tensors' ranges (no overlaps).

use super::{checked_numel, Entries, Place, StoredDType, TensorMeta};
use anyhow::{bail, Result};

/// Largest safetensors header accepted (the format's own limit).
const MAX_SAFETENSORS_HEADER: usize = 100 << 20;

/// Element type of a safetensors dtype name: ours, the size in bits, and the name.
fn safetensors_dtype(name: &str, s: &str) -> Result<(StoredDType, usize)> {
    Ok(match s {
        "F32" => (StoredDType::F32, 32),
        "F16" => (StoredDType::F16, 16),
        "BF16" => (StoredDType::BF16, 16),
        "F64" => (StoredDType::F64, 64),
        "I64" | "U64" | "C64" => (StoredDType::Other, 64),
        "I32" | "U32" => (StoredDType::Other, 32),
        "I16" | "U16" => (StoredDType::Other, 16),
        "I8" | "U8" | "BOOL" | "F8_E4M3" | "F8_E5M2" | "F8_E8M0" => (StoredDType::Other, 8),
        "F6_E2M3" | "F6_E3M2" => (StoredDType::Other, 6),
        "F4" => (StoredDType::Other, 4),
        _ => bail!("tensor {name}: unknown dtype {s:?}"),
    })
}

pub(super) fn parse(b: &[u8]) -> Result<Entries> {
    let mut len8 = [0u8; 8];
    len8.copy_from_slice(&b[..8]);
    let n = u64::from_le_bytes(len8);
    let rest = (b.len() - 8) as u64;
    if n > rest {
        bail!(
            "not a safetensors file, or truncated: its header length says {n} bytes but only {rest} follow"
        );
    }
    let n = n as usize;
    if n > MAX_SAFETENSORS_HEADER {
        bail!("safetensors header of {n} bytes is implausibly large");
    }
    let header = &b[8..8 + n];
    let data = &b[8 + n..];
    let json: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(header)
        .map_err(|e| anyhow::anyhow!("the safetensors header is not a JSON object ({e})"))?;
    let mut out = Vec::with_capacity(json.len());
    let mut ranges = Vec::with_capacity(json.len());
    for (name, v) in &json {
        if name == "__metadata__" {
            continue;
        }
        let field = |k: &str| {
            v.get(k)
                .ok_or_else(|| anyhow::anyhow!("tensor {name}: the header has no {k}"))
        };
        let dtype = field("dtype")?
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("tensor {name}: dtype is not a string"))?;
        let (dtype, bits) = safetensors_dtype(name, dtype)?;
        let shape = field("shape")?
            .as_array()
            .ok_or_else(|| anyhow::anyhow!("tensor {name}: shape is not a list"))?
            .iter()
            .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
            .collect::<Option<Vec<usize>>>()
            .ok_or_else(|| anyhow::anyhow!("tensor {name}: shape is not a list of sizes"))?;
        let offsets = field("data_offsets")?
            .as_array()
            .filter(|a| a.len() == 2)
            .and_then(|a| Some((a[0].as_u64()?, a[1].as_u64()?)))
            .ok_or_else(|| anyhow::anyhow!("tensor {name}: data_offsets is not [start, end]"))?;
        let (start, end) = offsets;
        if start > end || end > data.len() as u64 {
            bail!(
                "tensor {name}: data_offsets [{start}, {end}] lie outside the data area ({} bytes): the file is truncated or its header is wrong",
                data.len()
            );
        }
        let numel = checked_numel(name, &shape)?;
        let bytes = numel
            .checked_mul(bits)
            .map(|b| b.div_ceil(8))
            .ok_or_else(|| anyhow::anyhow!("tensor {name}: shape {shape:?} is too large"))?;
        let (start, end) = (start as usize, end as usize);
        if end - start != bytes {
            bail!(
                "tensor {name}: shape {shape:?} of {} needs {bytes} bytes but its data_offsets [{start}, {end}] hold {}",
                dtype_label(dtype, bits),
                end - start
            );
        }
        ranges.push((start, end, name.as_str()));
        out.push((
            name.clone(),
            TensorMeta { shape, dtype },
            Place {
                base: 8 + n + start,
                elem_size: if bits % 8 == 0 { bits / 8 } else { 0 },
                type_name: v["dtype"].as_str().unwrap_or("?").to_owned(),
                view: None,
                storage: None,
            },
        ));
    }
    // Sorted by start, a non-empty range overlaps an earlier one iff it starts before the
    // furthest end seen so far.
    ranges.sort();
    let mut furthest: Option<(usize, &str)> = None;
    for &(s, e, name) in ranges.iter().filter(|(s, e, _)| s < e) {
        if let Some((end, other)) = furthest {
            if s < end {
                bail!("tensors {other} and {name} overlap in the file (data ends at {end}, next starts at {s})");
            }
        }
        if furthest.is_none_or(|(end, _)| e > end) {
            furthest = Some((e, name));
        }
    }
    Ok(out)
}

fn dtype_label(dtype: StoredDType, bits: usize) -> String {
    match dtype {
        StoredDType::Other => format!("a {bits}-bit type"),
        d => d.name().to_owned(),
    }
}
