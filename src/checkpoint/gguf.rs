//! The GGUF container (llama.cpp's model files): header, metadata key–value pairs, tensor
//! infos, and where each tensor's data lies. Read by this module's own code rather than a
//! crate: the crates that read GGUF either come with a tensor library (candle-core, which this
//! project dropped) or are small and unmaintained, and the reader must hold against hostile
//! files as our safetensors and `.pth` readers do — every count, string length, dimension and
//! offset is checked against the file (overflow-checked) before it is used, and nothing is
//! allocated from an unchecked count.
//!
//! Layout (GGUF v2 and v3, little-endian): `"GGUF"`, version u32, tensor count u64, metadata
//! count u64; the metadata (key string, value type u32, value); the tensor infos (name string,
//! dimension count u32, dimensions u64 each — ggml order, fastest first —, ggml type u32,
//! offset u64 from the data area); then the data area, which starts at the next multiple of
//! the alignment (`general.alignment`, default 32); every tensor's offset is a multiple of it.
//! Strings are a u64 length and UTF-8 bytes.
//!
//! The element decoders for the types rwkv-cli reads are here too ([`GgmlType::decode`]):
//! F32, F16, BF16, Q8_0, Q4_0, and the K-quants Q4_K, Q5_K, Q6_K (decoded to f32 at load).

use anyhow::{bail, Context, Result};
use half::f16;

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
}

impl Value {
    /// An unsigned integer value of any width, if it is one (and non-negative).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// A short rendering for `info`: arrays as their length and first items.
    pub fn short(&self) -> String {
        match self {
            Value::Str(s) if s.chars().count() > 60 => {
                format!("{:?}…", s.chars().take(60).collect::<String>())
            }
            Value::Str(s) => format!("{s:?}"),
            Value::Array(a) => {
                let head: Vec<String> = a.iter().take(4).map(|v| v.short()).collect();
                let more = if a.len() > 4 { ", …" } else { "" };
                format!("[{} items: {}{more}]", a.len(), head.join(", "))
            }
            Value::U8(v) => v.to_string(),
            Value::I8(v) => v.to_string(),
            Value::U16(v) => v.to_string(),
            Value::I16(v) => v.to_string(),
            Value::U32(v) => v.to_string(),
            Value::I32(v) => v.to_string(),
            Value::U64(v) => v.to_string(),
            Value::I64(v) => v.to_string(),
            Value::F32(v) => v.to_string(),
            Value::F64(v) => v.to_string(),
            Value::Bool(v) => v.to_string(),
        }
    }
}

/// A ggml tensor type: its id, name, and block shape (values per block, bytes per block).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct GgmlType {
    pub id: u32,
    pub name: &'static str,
    pub block: usize,
    pub bytes: usize,
}

/// Every type ggml defines (so that `info` names them and offsets can be checked); the ones
/// rwkv-cli decodes are those [`GgmlType::readable`] accepts.
const TYPES: &[(u32, &str, usize, usize)] = &[
    (0, "F32", 1, 4),
    (1, "F16", 1, 2),
    (2, "Q4_0", 32, 18),
    (3, "Q4_1", 32, 20),
    (6, "Q5_0", 32, 22),
    (7, "Q5_1", 32, 24),
    (8, "Q8_0", 32, 34),
    (9, "Q8_1", 32, 36),
    (10, "Q2_K", 256, 84),
    (11, "Q3_K", 256, 110),
    (12, "Q4_K", 256, 144),
    (13, "Q5_K", 256, 176),
    (14, "Q6_K", 256, 210),
    (15, "Q8_K", 256, 292),
    (16, "IQ2_XXS", 256, 66),
    (17, "IQ2_XS", 256, 74),
    (18, "IQ3_XXS", 256, 98),
    (19, "IQ1_S", 256, 50),
    (20, "IQ4_NL", 32, 18),
    (21, "IQ3_S", 256, 110),
    (22, "IQ2_S", 256, 82),
    (23, "IQ4_XS", 256, 136),
    (24, "I8", 1, 1),
    (25, "I16", 1, 2),
    (26, "I32", 1, 4),
    (27, "I64", 1, 8),
    (28, "F64", 1, 8),
    (29, "IQ1_M", 256, 56),
    (30, "BF16", 1, 2),
    (34, "TQ1_0", 256, 54),
    (35, "TQ2_0", 256, 66),
    (39, "MXFP4", 32, 17),
];

impl GgmlType {
    pub fn from_id(id: u32) -> Option<Self> {
        TYPES
            .iter()
            .find(|t| t.0 == id)
            .map(|&(id, name, block, bytes)| Self {
                id,
                name,
                block,
                bytes,
            })
    }

    /// Whether rwkv-cli decodes this type.
    pub fn readable(self) -> bool {
        matches!(self.id, 0 | 1 | 2 | 8 | 12 | 13 | 14 | 30)
    }

    /// Bytes of `n` values (`n` a whole number of blocks), or `None` on overflow.
    pub fn bytes_for(self, n: usize) -> Option<usize> {
        (n / self.block).checked_mul(self.bytes)
    }

    /// Decodes whole blocks `src` into `out` (as many values as the blocks hold). The caller
    /// passes `src.len() == out.len() / block × bytes`; a type that is not readable is an error.
    pub fn decode(self, src: &[u8], out: &mut [f32]) -> Result<()> {
        if !out.len().is_multiple_of(self.block) || self.bytes_for(out.len()) != Some(src.len()) {
            bail!(
                "{}: {} bytes do not hold {} values",
                self.name,
                src.len(),
                out.len()
            );
        }
        let blocks = src
            .chunks_exact(self.bytes)
            .zip(out.chunks_exact_mut(self.block));
        match self.id {
            0 => blocks.for_each(|(b, o)| o[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            1 => blocks.for_each(|(b, o)| o[0] = f16::from_le_bytes([b[0], b[1]]).to_f32()),
            30 => blocks.for_each(|(b, o)| o[0] = half::bf16::from_le_bytes([b[0], b[1]]).to_f32()),
            2 => blocks.for_each(|(b, o)| decode_q4_0(b, o)),
            8 => blocks.for_each(|(b, o)| decode_q8_0(b, o)),
            12 => blocks.for_each(|(b, o)| decode_q4_k(b, o)),
            13 => blocks.for_each(|(b, o)| decode_q5_k(b, o)),
            14 => blocks.for_each(|(b, o)| decode_q6_k(b, o)),
            _ => bail!(
                "tensor type {} is not supported (rwkv-cli reads F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q5_K and Q6_K)",
                self.name
            ),
        }
        Ok(())
    }
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Q8_0: f16 scale `d`, 32 signed bytes; `x = d·q`.
fn decode_q8_0(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, 0);
    for (x, &q) in o.iter_mut().zip(&b[2..34]) {
        *x = d * q as i8 as f32;
    }
}

/// Q4_0: f16 scale `d`, 16 bytes of nibbles; value `j` is the low nibble of byte `j`, value
/// `j + 16` its high nibble; `x = d·(q − 8)`.
fn decode_q4_0(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, 0);
    for (j, &q) in b[2..18].iter().enumerate() {
        o[j] = d * ((q & 15) as i32 - 8) as f32;
        o[j + 16] = d * ((q >> 4) as i32 - 8) as f32;
    }
}

/// The 6-bit scale and min of sub-block `j` (0..8) of a Q4_K/Q5_K block's 12 scale bytes.
fn k_scale_min(j: usize, s: &[u8]) -> (f32, f32) {
    let (sc, m) = if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    };
    (sc as f32, m as f32)
}

/// Q4_K (256 values): f16 `d`, f16 `dmin`, 12 bytes of 6-bit sub-block scales and mins, 128
/// bytes of nibbles. Each 64 values use 32 bytes: the low nibbles for the first 32 (sub-block
/// `2i`), the high nibbles for the next 32 (`2i + 1`); `x = d·sc·q − dmin·m`.
fn decode_q4_k(b: &[u8], o: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (scales, qs) = (&b[4..16], &b[16..144]);
    for i in 0..4 {
        let (s0, m0) = k_scale_min(2 * i, scales);
        let (s1, m1) = k_scale_min(2 * i + 1, scales);
        for l in 0..32 {
            let q = qs[32 * i + l];
            o[64 * i + l] = d * s0 * (q & 15) as f32 - dmin * m0;
            o[64 * i + 32 + l] = d * s1 * (q >> 4) as f32 - dmin * m1;
        }
    }
}

/// Q5_K (256 values): as Q4_K with a fifth bit per value from 32 bytes `qh` (bit `2i` of
/// `qh[l]` for value `l` of sub-block `2i`, bit `2i + 1` for sub-block `2i + 1`).
fn decode_q5_k(b: &[u8], o: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (scales, qh, qs) = (&b[4..16], &b[16..48], &b[48..176]);
    for i in 0..4 {
        let (s0, m0) = k_scale_min(2 * i, scales);
        let (s1, m1) = k_scale_min(2 * i + 1, scales);
        for l in 0..32 {
            let q = qs[32 * i + l];
            let h0 = ((qh[l] >> (2 * i)) & 1) << 4;
            let h1 = ((qh[l] >> (2 * i + 1)) & 1) << 4;
            o[64 * i + l] = d * s0 * ((q & 15) | h0) as f32 - dmin * m0;
            o[64 * i + 32 + l] = d * s1 * ((q >> 4) | h1) as f32 - dmin * m1;
        }
    }
}

/// Q6_K (256 values): 128 bytes `ql` (low 4 bits), 64 bytes `qh` (high 2 bits), 16 signed
/// 8-bit scales (one per 16 values), f16 `d`; `x = d·scale·(q − 32)`. Each half of 128 values
/// uses 64 `ql` bytes, 32 `qh` bytes and 8 scales.
fn decode_q6_k(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, 208);
    for half in 0..2 {
        let ql = &b[64 * half..64 * half + 64];
        let qh = &b[128 + 32 * half..128 + 32 * half + 32];
        let sc = &b[192 + 8 * half..192 + 8 * half + 8];
        let y = &mut o[128 * half..128 * half + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 15) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            y[l] = d * (sc[is] as i8 as f32) * q1 as f32;
            y[l + 32] = d * (sc[is + 2] as i8 as f32) * q2 as f32;
            y[l + 64] = d * (sc[is + 4] as i8 as f32) * q3 as f32;
            y[l + 96] = d * (sc[is + 6] as i8 as f32) * q4 as f32;
        }
    }
}

/// One tensor as the file describes it, checked.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions in ggml order (fastest-varying first).
    pub ne: Vec<usize>,
    pub ty: GgmlType,
    /// Absolute byte range of its data in the file.
    pub start: usize,
    pub len: usize,
}

impl TensorInfo {
    pub fn numel(&self) -> usize {
        self.ne.iter().product()
    }
    /// The shape in row-major order (slowest first), as safetensors and PyTorch write it.
    pub fn shape(&self) -> Vec<usize> {
        self.ne.iter().rev().copied().collect()
    }
}

/// A parsed GGUF file: its version, metadata in file order, and tensors.
#[derive(Clone, Debug)]
pub struct Gguf {
    pub version: u32,
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: usize,
}

impl Gguf {
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// `general.architecture`, if present.
    pub fn architecture(&self) -> Option<&str> {
        self.get("general.architecture").and_then(Value::as_str)
    }

    /// Per tensor type: (type name, tensor count, values, bytes), most bytes first.
    pub fn type_summary(&self) -> Vec<(&'static str, usize, u64, u64)> {
        let mut rows: Vec<(&'static str, usize, u64, u64)> = Vec::new();
        for t in &self.tensors {
            match rows.iter_mut().find(|r| r.0 == t.ty.name) {
                Some(r) => {
                    r.1 += 1;
                    r.2 += t.numel() as u64;
                    r.3 += t.len as u64;
                }
                None => rows.push((t.ty.name, 1, t.numel() as u64, t.len as u64)),
            }
        }
        rows.sort_by(|a, b| b.3.cmp(&a.3).then(a.0.cmp(b.0)));
        rows
    }

    /// What `rwkv-cli info` prints of a GGUF file: container, tensor types, metadata (arrays
    /// shortened), and each tensor's GGUF name, type and shape.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "gguf          v{}, architecture {}, alignment {}, {} tensors\n",
            self.version,
            self.architecture().unwrap_or("(none)"),
            self.alignment,
            self.tensors.len()
        );
        for (i, (name, n, values, bytes)) in self.type_summary().into_iter().enumerate() {
            let label = if i == 0 { "tensor types" } else { "" };
            let bits = if values > 0 {
                8.0 * bytes as f64 / values as f64
            } else {
                0.0
            };
            out += &format!(
                "{label:<14}{name:<6} {n:>4} tensors, {values} values, {bytes} bytes ({bits:.2} bits/value)\n"
            );
        }
        for (i, (k, v)) in self.metadata.iter().enumerate() {
            let label = if i == 0 { "metadata" } else { "" };
            out += &format!("{label:<14}{k} = {}\n", v.short());
        }
        for (i, t) in self.tensors.iter().enumerate() {
            let label = if i == 0 { "gguf tensors" } else { "" };
            out += &format!("{label:<14}{} {} {:?}\n", t.name, t.ty.name, t.shape());
        }
        out
    }

    /// [`Gguf::summary`] as JSON.
    pub fn summary_json(&self) -> serde_json::Value {
        let types: Vec<_> = self
            .type_summary()
            .into_iter()
            .map(|(name, n, values, bytes)| {
                serde_json::json!({"type": name, "tensors": n, "values": values, "bytes": bytes})
            })
            .collect();
        let meta: serde_json::Map<String, serde_json::Value> = self
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.short())))
            .collect();
        let tensors: Vec<_> = self
            .tensors
            .iter()
            .map(|t| serde_json::json!({"name": t.name, "type": t.ty.name, "shape": t.shape()}))
            .collect();
        serde_json::json!({
            "version": self.version,
            "architecture": self.architecture(),
            "alignment": self.alignment,
            "tensor_types": types,
            "metadata": meta,
            "tensors": tensors,
        })
    }
}

/// Whether a file starts like a GGUF file.
pub fn is_gguf(b: &[u8]) -> bool {
    b.starts_with(b"GGUF")
}

/// Nesting limit for array values (GGUF writers nest at most one level in practice).
const MAX_DEPTH: usize = 4;

struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.b.len());
        let Some(end) = end else {
            bail!(
                "the file ends inside {what} (at byte {}, {n} bytes wanted, {} left)",
                self.at,
                self.b.len() - self.at
            );
        };
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self, w: &str) -> Result<u8> {
        Ok(self.take(1, w)?[0])
    }
    fn u16(&mut self, w: &str) -> Result<u16> {
        let s = self.take(2, w)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }
    fn u32(&mut self, w: &str) -> Result<u32> {
        let s = self.take(4, w)?;
        Ok(u32::from_le_bytes(s.try_into().expect("4 bytes")))
    }
    fn u64(&mut self, w: &str) -> Result<u64> {
        let s = self.take(8, w)?;
        Ok(u64::from_le_bytes(s.try_into().expect("8 bytes")))
    }
    fn left(&self) -> usize {
        self.b.len() - self.at
    }
    /// A count that must not exceed what `min_each` bytes per item leave room for.
    fn count(&mut self, what: &str, min_each: usize) -> Result<usize> {
        let n = self.u64(what)?;
        let room = (self.left() / min_each.max(1)) as u64;
        if n > room {
            bail!(
                "{what} is {n}, more than the {} bytes left can hold",
                self.left()
            );
        }
        Ok(n as usize)
    }
    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.count(&format!("the length of {what}"), 1)?;
        let s = self.take(n, what)?;
        String::from_utf8(s.to_vec()).with_context(|| format!("{what} is not UTF-8"))
    }
    fn value(&mut self, ty: u32, what: &str, depth: usize) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.u8(what)?),
            1 => Value::I8(self.u8(what)? as i8),
            2 => Value::U16(self.u16(what)?),
            3 => Value::I16(self.u16(what)? as i16),
            4 => Value::U32(self.u32(what)?),
            5 => Value::I32(self.u32(what)? as i32),
            6 => Value::F32(f32::from_bits(self.u32(what)?)),
            7 => match self.u8(what)? {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                v => bail!("{what}: {v} is not a boolean"),
            },
            8 => Value::Str(self.string(what)?),
            9 => {
                if depth >= MAX_DEPTH {
                    bail!("{what}: arrays nested more than {MAX_DEPTH} deep");
                }
                let ety = self.u32(what)?;
                let min_each = match ety {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8..=12 => 8,
                    t => bail!("{what}: unknown array element type {t}"),
                };
                let n = self.count(&format!("the length of {what}"), min_each)?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.value(ety, what, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64(what)?),
            11 => Value::I64(self.u64(what)? as i64),
            12 => Value::F64(f64::from_bits(self.u64(what)?)),
            t => bail!("{what}: unknown value type {t}"),
        })
    }
}

/// Parses and checks a whole GGUF file held in `b`.
pub fn parse(b: &[u8]) -> Result<Gguf> {
    let mut c = Cursor { b, at: 0 };
    if c.take(4, "the magic")? != b"GGUF" {
        bail!("not a GGUF file (no GGUF magic)");
    }
    let version = c.u32("the version")?;
    if !(2..=3).contains(&version) {
        bail!("GGUF version {version} is not supported (rwkv-cli reads versions 2 and 3)");
    }
    // Each tensor info takes at least 8 + 4 + 8 + 4 + 8 bytes, each key-value pair 8 + 4 + 1.
    let n_tensors = c.count("the tensor count", 32)?;
    let n_kv = c.count("the metadata count", 13)?;
    let mut metadata = Vec::with_capacity(n_kv);
    for i in 0..n_kv {
        let key = c.string(&format!("metadata key {i}"))?;
        let ty = c.u32(&format!("the type of {key}"))?;
        let v = c.value(ty, &format!("metadata {key}"), 0)?;
        if metadata.iter().any(|(k, _): &(String, Value)| *k == key) {
            bail!("metadata key {key} appears twice");
        }
        metadata.push((key, v));
    }
    let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => 32,
        Some((_, v)) => match v.as_u64() {
            Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a as usize,
            _ => bail!("general.alignment is {}, not a power of two", v.short()),
        },
    };
    struct Raw {
        name: String,
        ne: Vec<usize>,
        ty: GgmlType,
        offset: u64,
    }
    let mut raws = Vec::with_capacity(n_tensors);
    for i in 0..n_tensors {
        let name = c.string(&format!("the name of tensor {i}"))?;
        let nd = c.u32(&format!("the dimension count of {name}"))?;
        if nd == 0 || nd > 4 {
            bail!("tensor {name} has {nd} dimensions (ggml allows 1 to 4)");
        }
        let mut ne = Vec::with_capacity(nd as usize);
        for _ in 0..nd {
            let d = c.u64(&format!("the dimensions of {name}"))?;
            let d = usize::try_from(d).ok().filter(|&d| d <= 1 << 40);
            let Some(d) = d else {
                bail!("tensor {name} has a dimension too large");
            };
            ne.push(d);
        }
        let id = c.u32(&format!("the type of {name}"))?;
        let Some(ty) = GgmlType::from_id(id) else {
            bail!("tensor {name} has unknown ggml type id {id}");
        };
        let offset = c.u64(&format!("the offset of {name}"))?;
        raws.push(Raw {
            name,
            ne,
            ty,
            offset,
        });
    }
    let data_start = c.at.div_ceil(alignment) * alignment;
    if data_start > b.len() && n_tensors > 0 {
        bail!("the file ends before its data area (byte {data_start})");
    }
    let mut tensors: Vec<TensorInfo> = Vec::with_capacity(raws.len());
    for r in raws {
        if tensors.iter().any(|t| t.name == r.name) {
            bail!("tensor {} appears twice", r.name);
        }
        let numel = r.ne.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let Some(numel) = numel else {
            bail!("tensor {}: shape {:?} is too large", r.name, r.ne);
        };
        if r.ne[0] % r.ty.block != 0 {
            bail!(
                "tensor {}: its rows of {} values are not whole {} blocks of {}",
                r.name,
                r.ne[0],
                r.ty.name,
                r.ty.block
            );
        }
        let Some(len) = r.ty.bytes_for(numel) else {
            bail!("tensor {}: shape {:?} is too large", r.name, r.ne);
        };
        if r.offset % alignment as u64 != 0 {
            bail!(
                "tensor {}: offset {} is not a multiple of the alignment {alignment}",
                r.name,
                r.offset
            );
        }
        let start = usize::try_from(r.offset)
            .ok()
            .and_then(|o| o.checked_add(data_start));
        let end = start.and_then(|s| s.checked_add(len));
        let (Some(start), Some(end)) = (start, end) else {
            bail!("tensor {}: its data lie outside the file", r.name);
        };
        if end > b.len() {
            bail!(
                "tensor {}: its data (bytes {start}..{end}) lie outside the file ({} bytes)",
                r.name,
                b.len()
            );
        }
        tensors.push(TensorInfo {
            name: r.name,
            ne: r.ne,
            ty: r.ty,
            start,
            len,
        });
    }
    let mut spans: Vec<(usize, usize, &str)> = tensors
        .iter()
        .filter(|t| t.len > 0)
        .map(|t| (t.start, t.start + t.len, t.name.as_str()))
        .collect();
    spans.sort();
    for w in spans.windows(2) {
        if w[1].0 < w[0].1 {
            bail!("tensors {} and {} overlap", w[0].2, w[1].2);
        }
    }
    Ok(Gguf {
        version,
        metadata,
        tensors,
        alignment,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small GGUF v3 file: one u32 metadata value and the given (name, ne, type, data)
    /// tensors, each at the next 32-byte offset.
    pub(crate) fn build(tensors: &[(&str, &[u64], u32, Vec<u8>)]) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend((tensors.len() as u64).to_le_bytes());
        b.extend(1u64.to_le_bytes());
        let s = |b: &mut Vec<u8>, t: &str| {
            b.extend((t.len() as u64).to_le_bytes());
            b.extend(t.as_bytes());
        };
        s(&mut b, "general.architecture");
        b.extend(8u32.to_le_bytes());
        s(&mut b, "test");
        let mut off = 0u64;
        for (name, ne, ty, data) in tensors {
            s(&mut b, name);
            b.extend((ne.len() as u32).to_le_bytes());
            for d in *ne {
                b.extend(d.to_le_bytes());
            }
            b.extend(ty.to_le_bytes());
            b.extend(off.to_le_bytes());
            off += (data.len() as u64).div_ceil(32) * 32;
        }
        while !b.len().is_multiple_of(32) {
            b.push(0);
        }
        for (_, _, _, data) in tensors {
            b.extend(data);
            while !b.len().is_multiple_of(32) {
                b.push(0);
            }
        }
        b
    }

    fn f32s(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn reads_a_small_file() {
        let f = build(&[("a", &[2, 3], 0, f32s(&[1., 2., 3., 4., 5., 6.]))]);
        let g = parse(&f).unwrap();
        assert_eq!(g.architecture(), Some("test"));
        let t = g.tensor("a").unwrap();
        assert_eq!(t.shape(), [3, 2]);
        let mut out = vec![0.0; 6];
        t.ty.decode(&f[t.start..t.start + t.len], &mut out).unwrap();
        assert_eq!(out, [1., 2., 3., 4., 5., 6.]);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let f = build(&[
            ("a", &[4], 0, f32s(&[1., 2., 3., 4.])),
            ("b", &[32], 8, vec![0; 34]),
        ]);
        parse(&f).unwrap();
        // The last tensor ends at byte len - padding: cutting into any data must fail.
        let end = f.len() - (32 - 34 % 32);
        for n in 0..end {
            assert!(parse(&f[..n]).is_err(), "{n}");
        }
    }

    #[test]
    fn lies_are_caught() {
        let e = |f: Vec<u8>| format!("{:#}", parse(&f).unwrap_err());
        // Huge tensor count.
        let mut f = build(&[("a", &[4], 0, f32s(&[0.; 4]))]);
        f[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(e(f).contains("tensor count"));
        // A dimension that makes the data run past the end.
        let f = build(&[("a", &[400], 0, f32s(&[0.; 4]))]);
        assert!(e(f).contains("outside the file"));
        // Rows that are not whole blocks.
        let f = build(&[("a", &[33], 8, vec![0; 34])]);
        assert!(e(f).contains("not whole Q8_0 blocks"));
        // Unknown type id.
        let f = build(&[("a", &[4], 77, f32s(&[0.; 4]))]);
        assert!(e(f).contains("unknown ggml type id 77"));
        // An unsupported type is named on decode.
        let t = GgmlType::from_id(16).unwrap();
        let err = t.decode(&[0; 66], &mut [0.0; 256]).unwrap_err().to_string();
        assert!(err.contains("IQ2_XXS is not supported"), "{err}");
    }

    #[test]
    fn q8_0_and_q4_0_blocks_decode_as_ggml_defines_them() {
        let mut q8 = f16::from_f32(0.5).to_le_bytes().to_vec();
        q8.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let mut out = [0.0; 32];
        GgmlType::from_id(8).unwrap().decode(&q8, &mut out).unwrap();
        assert_eq!(out[0], -8.0);
        assert_eq!(out[31], 7.5);
        let mut q4 = f16::from_f32(2.0).to_le_bytes().to_vec();
        q4.extend((0..16).map(|i| (i as u8) | (15 - i as u8) << 4));
        GgmlType::from_id(2).unwrap().decode(&q4, &mut out).unwrap();
        assert_eq!(out[0], -16.0); // low nibble 0 of byte 0
        assert_eq!(out[16], 14.0); // high nibble 15 of byte 0
        assert_eq!(out[15], 14.0);
    }
}
