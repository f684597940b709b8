//! Safetensors surgery: a file's header and data taken apart, edited and put back, so that
//! `bad_input.rs` can build damaged and lying checkpoints from the fixtures.

use super::read_fixture;

/// A safetensors file's header (JSON object) and data area.
pub fn st_split(bytes: &[u8]) -> (serde_json::Map<String, serde_json::Value>, Vec<u8>) {
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header = serde_json::from_slice(&bytes[8..8 + n]).expect("fixture header");
    (header, bytes[8 + n..].to_vec())
}

/// Writes a header (any JSON value, or raw bytes) and a data area as a safetensors file.
pub fn st_raw(header: &[u8], data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header);
    out.extend_from_slice(data);
    out
}

/// Writes a header object and a data area as a safetensors file.
pub fn st_join(header: &serde_json::Map<String, serde_json::Value>, data: &[u8]) -> Vec<u8> {
    st_raw(
        serde_json::Value::Object(header.clone())
            .to_string()
            .as_bytes(),
        data,
    )
}

/// One tensor of a safetensors file.
#[derive(Clone)]
pub struct Tensor {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

/// The tensors of a safetensors file, in file order.
pub fn st_tensors(bytes: &[u8]) -> Vec<Tensor> {
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
pub fn st_write(tensors: &[Tensor]) -> Vec<u8> {
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
pub fn st_edit(fixture_name: &str, name: &str, f: impl Fn(&mut Tensor) -> bool) -> Vec<u8> {
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
pub fn st_lie(
    fixture_name: &str,
    f: impl Fn(&mut serde_json::Map<String, serde_json::Value>),
) -> Vec<u8> {
    let (mut header, data) = st_split(&read_fixture(fixture_name));
    f(&mut header);
    st_join(&header, &data)
}
