//! Mapping and checking a cache file before a load trusts it.

use super::{Entry, HEADER, MAGIC, SEGMENT};
use crate::kernels::FileMap;
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use xxhash_rust::xxh3::xxh3_64;

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Maps and checks the file at `path` against `key`: the mapping and its index, or why it
/// cannot be used ("stale (…)" or "damaged (…)").
pub(super) fn read(
    path: &Path,
    key: &Value,
) -> Result<(Arc<FileMap>, HashMap<String, Entry>), String> {
    let damaged = |why: &str| format!("damaged ({why})");
    let file = std::fs::File::open(path).map_err(|e| format!("unreadable ({e})"))?;
    let len = file
        .metadata()
        .map_err(|e| format!("unreadable ({e})"))?
        .len() as usize;
    if len < HEADER {
        return Err(damaged("shorter than its header"));
    }
    // The header alone first: a stale file is not read whole.
    let map = FileMap::new(&file, len, false).map_err(|e| format!("unreadable ({e})"))?;
    let b = map.bytes();
    if &b[..8] != MAGIC {
        return Err(damaged("not a weight cache file of this layout"));
    }
    if xxh3_64(&b[..40]) != u64_at(b, 40) {
        return Err(damaged("header checksum"));
    }
    let (total, at, n, index_hash) = (
        u64_at(b, 8) as usize,
        u64_at(b, 16) as usize,
        u64_at(b, 24) as usize,
        u64_at(b, 32),
    );
    if total != len {
        return Err(damaged(&format!("{len} bytes, its header says {total}")));
    }
    let index = at
        .checked_add(n)
        .filter(|&end| at >= HEADER && end <= len)
        .map(|end| &b[at..end])
        .ok_or_else(|| damaged("index outside the file"))?;
    if xxh3_64(index) != index_hash {
        return Err(damaged("index checksum"));
    }
    let index: Value = serde_json::from_slice(index).map_err(|_| damaged("index"))?;
    if index.get("key") != Some(key) {
        return Err(stale_reason(index.get("key"), key));
    }
    let mut entries = HashMap::new();
    let mut segments: Vec<(usize, usize, u64)> = Vec::new();
    let Some(list) = index.get("entries").and_then(Value::as_object) else {
        return Err(damaged("index"));
    };
    for (k, e) in list {
        let num = |f: &str| e.get(f).and_then(Value::as_u64).map(|v| v as usize);
        let dims = e.get("dims").and_then(Value::as_array);
        let parsed = (|| {
            let (offset, len) = (num("offset")?, num("len")?);
            let dims = dims?;
            let dims = [
                dims.first()?.as_u64()? as usize,
                dims.get(1)?.as_u64()? as usize,
            ];
            let format = e.get("format")?.as_str()?.to_string();
            let hashes = e.get("hashes")?.as_array()?;
            Some((offset, len, dims, format, hashes))
        })();
        let Some((offset, elen, dims, format, hashes)) = parsed else {
            return Err(damaged("index entry"));
        };
        let inside = offset
            .checked_add(elen)
            .is_some_and(|end| offset >= HEADER && end <= at && offset.is_multiple_of(64));
        if !inside || hashes.len() != elen.div_ceil(SEGMENT) {
            return Err(damaged("index entry"));
        }
        for (i, h) in hashes.iter().enumerate() {
            let h = h.as_u64().ok_or_else(|| damaged("index entry"))?;
            let s = offset + i * SEGMENT;
            segments.push((s, SEGMENT.min(offset + elen - s), h));
        }
        entries.insert(
            k.clone(),
            Entry {
                offset,
                len: elen,
                dims,
                format,
            },
        );
    }
    drop(map);
    // The key matches: map the whole file with its pages read in at once, and check every
    // byte of data on all threads.
    let map = FileMap::new(&file, len, true).map_err(|e| format!("unreadable ({e})"))?;
    let bad = std::sync::atomic::AtomicBool::new(false);
    let bytes = map.bytes();
    crate::ops::pool::run(segments.len(), &|i| {
        let (s, n, h) = segments[i];
        if xxh3_64(&bytes[s..s + n]) != h {
            bad.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    });
    if bad.into_inner() {
        return Err(damaged("data checksum"));
    }
    Ok((Arc::new(map), entries))
}

/// "stale (…)", naming the first key field that differs.
fn stale_reason(found: Option<&Value>, want: &Value) -> String {
    let why = match (found.and_then(Value::as_object), want.as_object()) {
        (Some(f), Some(w)) => w
            .iter()
            .find(|(k, v)| f.get(*k) != Some(*v))
            .map(|(k, _)| match k.as_str() {
                "size" | "mtime_ns" | "inode" | "fingerprint" => "the checkpoint changed",
                "exe" | "crate" | "packing" | "layout" => "written by another build",
                "isa" => "for another CPU",
                _ => "for another checkpoint or format",
            })
            .unwrap_or("key differs"),
        _ => "key missing",
    };
    format!("stale ({why})")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn stale_reasons_name_what_changed() {
        let want = json!({"exe": "1", "size": 2});
        assert_eq!(
            stale_reason(Some(&json!({"exe": "1", "size": 3})), &want),
            "stale (the checkpoint changed)"
        );
        assert_eq!(
            stale_reason(Some(&json!({"exe": "0", "size": 2})), &want),
            "stale (written by another build)"
        );
        assert_eq!(stale_reason(None, &want), "stale (key missing)");
    }
}
