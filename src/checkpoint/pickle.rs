//! A minimal, bounded pickle machine for the `data.pkl` of a `torch.save` state dict.
//!
//! It understands the opcodes torch emits for a dict of tensors (protocols 2–5) and the few
//! callables such a pickle names (`collections.OrderedDict`, `torch._utils._rebuild_tensor_v2`,
//! `_rebuild_parameter`, `torch._tensor._rebuild_from_type_v2`, the `torch.*Storage` classes);
//! anything else is an opaque object or an error. Nothing is ever imported or executed.
//!
//! Hostile input is bounded: strings are slices of the input, containers nest at most
//! [`MAX_DEPTH`] deep, and the copies made by the memo (`BINGET`, `BINPUT`) are charged to a
//! budget proportional to the input's size, so no pickle can allocate much more than its own
//! size or build a structure whose drop would overflow the stack.

use super::StoredDType;
use anyhow::{bail, Result};
use std::collections::HashMap;

/// How deep containers may nest (a state dict needs 4: dict, tensor args, shape tuple).
const MAX_DEPTH: u32 = 32;
/// Most dimensions a tensor may have.
const MAX_RANK: usize = 16;
/// Longest module or class name of a `GLOBAL`.
const MAX_GLOBAL_LEN: usize = 256;

/// A storage named by a persistent id: `('storage', torch.XStorage, key, location, numel)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Storage {
    pub dtype: StoredDType,
    /// The storage class's element type, for messages (`Float`, `BFloat16`, `Long`, …).
    pub type_name: String,
    /// Bytes per element.
    pub elem_size: usize,
    /// Name of the entry `data/<key>` that holds the bytes.
    pub key: String,
    pub numel: u64,
}

/// A tensor: a strided view of a storage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorRef {
    pub storage: Storage,
    /// Offset of the first element, in elements.
    pub offset: u64,
    pub shape: Vec<u64>,
    /// Strides in elements.
    pub stride: Vec<u64>,
}

#[derive(Clone, Debug)]
enum Value {
    None,
    Bool,
    Int(i64),
    Float,
    Str(String),
    Global(String, String),
    /// A tuple or list.
    Seq(Box<Container<Value>>),
    Dict(Box<Container<(Value, Value)>>),
    Storage(Box<Storage>),
    Tensor(Box<TensorRef>),
    /// The result of a callable we do not model.
    Object,
}

#[derive(Clone, Debug)]
struct Container<T> {
    items: Vec<T>,
    /// Nesting depth (1 for a container of scalars).
    depth: u32,
    /// Approximate size in bytes, including everything inside.
    weight: usize,
}

/// Bytes charged for a value of any kind, on top of its strings and children.
const NODE: usize = 32;

impl Value {
    fn depth(&self) -> u32 {
        match self {
            Value::Seq(c) => c.depth,
            Value::Dict(c) => c.depth,
            _ => 0,
        }
    }

    fn weight(&self) -> usize {
        match self {
            Value::Str(s) => NODE + s.len(),
            Value::Global(m, n) => NODE + m.len() + n.len(),
            Value::Seq(c) => c.weight,
            Value::Dict(c) => c.weight,
            Value::Storage(s) => NODE + s.key.len() + s.type_name.len(),
            Value::Tensor(t) => NODE * 2 + t.storage.key.len() + 16 * t.shape.len(),
            _ => NODE,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool => "a bool",
            Value::Int(_) => "an int",
            Value::Float => "a float",
            Value::Str(_) => "a string",
            Value::Global(..) => "a global",
            Value::Seq(_) => "a tuple or list",
            Value::Dict(_) => "a dict",
            Value::Storage(_) => "a storage",
            Value::Tensor(_) => "a tensor",
            Value::Object => "an object",
        }
    }
}

fn seq(items: Vec<Value>) -> Result<Value> {
    let depth = 1 + items.iter().map(Value::depth).max().unwrap_or(0);
    if depth > MAX_DEPTH {
        bail!("data.pkl nests containers more than {MAX_DEPTH} deep");
    }
    let weight = NODE + items.iter().map(Value::weight).sum::<usize>();
    Ok(Value::Seq(Box::new(Container {
        items,
        depth,
        weight,
    })))
}

fn empty_dict() -> Value {
    Value::Dict(Box::new(Container {
        items: Vec::new(),
        depth: 1,
        weight: NODE,
    }))
}

/// The machine's state while it runs.
struct Machine<'a> {
    input: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    /// Stack lengths at each MARK.
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    /// Bytes the memo's copies may still use.
    budget: usize,
}

impl<'a> Machine<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let input: &'a [u8] = self.input;
        match self
            .pos
            .checked_add(n)
            .and_then(|end| input.get(self.pos..end))
        {
            Some(s) => {
                self.pos += n;
                Ok(s)
            }
            None => bail!("data.pkl is truncated (an opcode's argument runs past its end)"),
        }
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }

    fn string(&mut self, len: u64) -> Result<String> {
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        let bytes = self.take(len)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => bail!("data.pkl holds a string that is not UTF-8"),
        }
    }

    /// A newline-terminated line (the text arguments of `GLOBAL`).
    fn line(&mut self) -> Result<String> {
        let rest = &self.input[self.pos..];
        let Some(n) = rest
            .iter()
            .take(MAX_GLOBAL_LEN + 1)
            .position(|&b| b == b'\n')
        else {
            bail!("data.pkl: a GLOBAL name is unterminated or longer than {MAX_GLOBAL_LEN} bytes");
        };
        let s = self.string(n as u64)?;
        self.pos += 1;
        Ok(s)
    }

    fn push(&mut self, v: Value) {
        self.stack.push(v);
    }

    fn pop(&mut self) -> Result<Value> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            bail!("data.pkl pops past a MARK: the pickle is damaged");
        }
        match self.stack.pop() {
            Some(v) => Ok(v),
            None => bail!("data.pkl pops from an empty stack: the pickle is damaged"),
        }
    }

    fn top(&mut self) -> Result<&mut Value> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            bail!("data.pkl uses a MARK as a value: the pickle is damaged");
        }
        match self.stack.last_mut() {
            Some(v) => Ok(v),
            None => bail!("data.pkl reads an empty stack: the pickle is damaged"),
        }
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        match self.marks.pop() {
            Some(m) => Ok(self.stack.split_off(m)),
            None => bail!("data.pkl closes a MARK it never opened: the pickle is damaged"),
        }
    }

    /// Charges `w` bytes of copies to the budget, before they are made.
    fn charge(&mut self, w: usize) -> Result<()> {
        if w > self.budget {
            bail!(
                "data.pkl copies more data through its memo than its size allows (a pickle bomb?)"
            );
        }
        self.budget -= w;
        Ok(())
    }

    /// A charged copy of the value on top of the stack.
    fn copy_top(&mut self) -> Result<Value> {
        let w = self.top()?.weight();
        self.charge(w)?;
        self.top().cloned()
    }

    fn memo_put(&mut self, key: u32) -> Result<()> {
        let v = self.copy_top()?;
        self.memo.insert(key, v);
        Ok(())
    }

    fn memo_get(&mut self, key: u32) -> Result<()> {
        let Some(w) = self.memo.get(&key).map(Value::weight) else {
            bail!("data.pkl refers to memo entry {key}, which was never stored");
        };
        self.charge(w)?;
        if let Some(v) = self.memo.get(&key).cloned() {
            self.push(v);
        }
        Ok(())
    }

    fn run(&mut self) -> Result<Value> {
        loop {
            let at = self.pos;
            let Ok(op) = self.u8() else {
                bail!("data.pkl is truncated (it ends before its STOP opcode)");
            };
            match op {
                0x80 => {
                    let proto = self.u8()?;
                    if !(2..=5).contains(&proto) {
                        bail!("data.pkl uses pickle protocol {proto}; torch.save writes 2 to 5");
                    }
                }
                0x95 => {
                    self.u64()?; // FRAME: a hint only
                }
                b'.' => return self.pop(),
                b'(' => self.marks.push(self.stack.len()),
                b'}' => self.push(empty_dict()),
                b']' => self.push(seq(Vec::new())?),
                b')' => self.push(seq(Vec::new())?),
                b'N' => self.push(Value::None),
                0x88 => self.push(Value::Bool),
                0x89 => self.push(Value::Bool),
                b'J' => {
                    let v = self.u32()? as i32;
                    self.push(Value::Int(i64::from(v)))
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(i64::from(v)))
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push(Value::Int(i64::from(v)))
                }
                0x8a => {
                    // LONG1: n bytes, two's complement, little-endian.
                    let n = usize::from(self.u8()?);
                    if n > 8 {
                        bail!("data.pkl holds an integer of {n} bytes, too large for a tensor's size or offset");
                    }
                    let b = self.take(n)?;
                    let mut v: i64 = 0;
                    for (i, &byte) in b.iter().enumerate() {
                        v |= i64::from(byte) << (8 * i);
                    }
                    if (1..8).contains(&n) && b[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n); // sign-extend
                    }
                    self.push(Value::Int(v))
                }
                b'G' => {
                    self.take(8)?; // BINFLOAT: no float matters to a state dict
                    self.push(Value::Float)
                }
                b'X' => {
                    let n = self.u32()?;
                    let s = self.string(u64::from(n))?;
                    self.push(Value::Str(s))
                }
                0x8c => {
                    let n = self.u8()?;
                    let s = self.string(u64::from(n))?;
                    self.push(Value::Str(s))
                }
                0x8d => {
                    let n = self.u64()?;
                    let s = self.string(n)?;
                    self.push(Value::Str(s))
                }
                b'q' => {
                    let k = self.u8()?;
                    self.memo_put(u32::from(k))?
                }
                b'r' => {
                    let k = self.u32()?;
                    self.memo_put(k)?
                }
                0x94 => {
                    let k = u32::try_from(self.memo.len()).unwrap_or(u32::MAX);
                    self.memo_put(k)?
                }
                b'h' => {
                    let k = self.u8()?;
                    self.memo_get(u32::from(k))?
                }
                b'j' => {
                    let k = self.u32()?;
                    self.memo_get(k)?
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.push(Value::Global(module, name))
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => self.push(Value::Global(m, n)),
                        _ => bail!("data.pkl: STACK_GLOBAL needs two strings"),
                    }
                }
                b't' => {
                    let items = self.pop_mark()?;
                    let v = seq(items)?;
                    self.push(v)
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    let v = seq(items)?;
                    self.push(v)
                }
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.copy_top()?;
                    self.push(v)
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let s = persistent_load(pid)?;
                    self.push(Value::Storage(Box::new(s)))
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = reduce(callable, args)?;
                    self.push(v)
                }
                0x81 => {
                    // NEWOBJ: cls.__new__(cls, *args) — nothing a state dict needs.
                    self.pop()?;
                    self.pop()?;
                    self.push(Value::Object)
                }
                b'b' => {
                    // BUILD: sets an object's state (e.g. an OrderedDict's `_metadata`); the
                    // tensors do not depend on it.
                    self.pop()?;
                    self.top()?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    add_items(self.top()?, vec![(k, v)])?
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    if items.len() % 2 != 0 {
                        bail!("data.pkl: SETITEMS with an odd number of values");
                    }
                    let mut pairs = Vec::with_capacity(items.len() / 2);
                    let mut it = items.into_iter();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        pairs.push((k, v));
                    }
                    add_items(self.top()?, pairs)?
                }
                b'a' => {
                    let v = self.pop()?;
                    append(self.top()?, vec![v])?
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    append(self.top()?, items)?
                }
                _ => bail!("data.pkl: unsupported pickle opcode 0x{op:02x} at byte {at}"),
            }
        }
    }
}

fn add_items(target: &mut Value, pairs: Vec<(Value, Value)>) -> Result<()> {
    let Value::Dict(d) = target else {
        bail!(
            "data.pkl sets items on {}, not a dict: the pickle is damaged",
            target.kind()
        );
    };
    for (k, v) in pairs {
        let depth = 1 + k.depth().max(v.depth());
        if depth > MAX_DEPTH {
            bail!("data.pkl nests containers more than {MAX_DEPTH} deep");
        }
        d.depth = d.depth.max(depth);
        d.weight = d.weight.saturating_add(k.weight() + v.weight());
        d.items.push((k, v));
    }
    Ok(())
}

fn append(target: &mut Value, items: Vec<Value>) -> Result<()> {
    let Value::Seq(s) = target else {
        bail!(
            "data.pkl appends to {}, not a list: the pickle is damaged",
            target.kind()
        );
    };
    for v in items {
        let depth = 1 + v.depth();
        if depth > MAX_DEPTH {
            bail!("data.pkl nests containers more than {MAX_DEPTH} deep");
        }
        s.depth = s.depth.max(depth);
        s.weight = s.weight.saturating_add(v.weight());
        s.items.push(v);
    }
    Ok(())
}

fn items(v: Value, what: &str) -> Result<Vec<Value>> {
    match v {
        Value::Seq(c) => Ok(c.items),
        other => bail!("data.pkl: {what} is {}, expected a tuple", other.kind()),
    }
}

fn int(v: &Value, what: &str) -> Result<u64> {
    match v {
        Value::Int(i) if *i >= 0 => Ok(*i as u64),
        Value::Int(i) => bail!("data.pkl: {what} is negative ({i})"),
        other => bail!("data.pkl: {what} is {}, expected an int", other.kind()),
    }
}

/// Element type and size of a `torch.<Name>Storage` class.
fn storage_type(module: &str, class: &str) -> Result<(StoredDType, &'static str, usize)> {
    if module != "torch" {
        bail!("data.pkl: unsupported storage class {module}.{class}");
    }
    Ok(match class {
        "FloatStorage" => (StoredDType::F32, "Float", 4),
        "HalfStorage" => (StoredDType::F16, "Half", 2),
        "BFloat16Storage" => (StoredDType::BF16, "BFloat16", 2),
        "DoubleStorage" => (StoredDType::F64, "Double", 8),
        "LongStorage" => (StoredDType::Other, "Long", 8),
        "IntStorage" => (StoredDType::Other, "Int", 4),
        "ShortStorage" => (StoredDType::Other, "Short", 2),
        "CharStorage" => (StoredDType::Other, "Char", 1),
        "ByteStorage" => (StoredDType::Other, "Byte", 1),
        "BoolStorage" => (StoredDType::Other, "Bool", 1),
        _ => bail!("data.pkl: unsupported storage class {module}.{class}"),
    })
}

fn persistent_load(pid: Value) -> Result<Storage> {
    let mut it = items(pid, "a persistent id")?.into_iter();
    let (Some(tag), Some(class), Some(key), Some(_location), Some(numel)) =
        (it.next(), it.next(), it.next(), it.next(), it.next())
    else {
        bail!("data.pkl: a persistent id has fewer than 5 fields");
    };
    if !matches!(&tag, Value::Str(s) if s == "storage") {
        bail!("data.pkl: unsupported persistent id (not a storage)");
    }
    let Value::Global(module, class) = class else {
        bail!(
            "data.pkl: a storage's type is {}, not a class",
            class.kind()
        );
    };
    let (dtype, type_name, elem_size) = storage_type(&module, &class)?;
    let key = match key {
        Value::Str(s) => s,
        Value::Int(i) => i.to_string(),
        other => bail!("data.pkl: a storage key is {}", other.kind()),
    };
    let numel = int(&numel, "a storage's size")?;
    Ok(Storage {
        dtype,
        type_name: type_name.to_owned(),
        elem_size,
        key,
        numel,
    })
}

fn dims(v: Value, what: &str) -> Result<Vec<u64>> {
    let items = items(v, what)?;
    if items.len() > MAX_RANK {
        bail!(
            "data.pkl: a tensor has {} dimensions (at most {MAX_RANK} supported)",
            items.len()
        );
    }
    items.iter().map(|d| int(d, what)).collect()
}

/// `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, hooks, …)`.
fn rebuild_tensor(args: Value) -> Result<Value> {
    let mut it = items(args, "the arguments of _rebuild_tensor_v2")?.into_iter();
    let (Some(storage), Some(offset), Some(size), Some(stride)) =
        (it.next(), it.next(), it.next(), it.next())
    else {
        bail!("data.pkl: _rebuild_tensor_v2 called with fewer than 4 arguments");
    };
    let Value::Storage(storage) = storage else {
        bail!(
            "data.pkl: a tensor's storage is {}, not a storage",
            storage.kind()
        );
    };
    let offset = int(&offset, "a tensor's storage offset")?;
    let shape = dims(size, "a tensor's size")?;
    let stride = dims(stride, "a tensor's stride")?;
    if shape.len() != stride.len() {
        bail!(
            "data.pkl: a tensor has {} sizes but {} strides",
            shape.len(),
            stride.len()
        );
    }
    Ok(Value::Tensor(Box::new(TensorRef {
        storage: *storage,
        offset,
        shape,
        stride,
    })))
}

fn reduce(callable: Value, args: Value) -> Result<Value> {
    let Value::Global(module, name) = callable else {
        bail!(
            "data.pkl calls {}, not a global: the pickle is damaged",
            callable.kind()
        );
    };
    match (module.as_str(), name.as_str()) {
        ("collections", "OrderedDict") => Ok(empty_dict()),
        ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor") => {
            rebuild_tensor(args)
        }
        ("torch._utils", "_rebuild_parameter")
        | ("torch._utils", "_rebuild_parameter_with_state") => {
            match items(args, "the arguments of _rebuild_parameter")?
                .into_iter()
                .next()
            {
                Some(t @ Value::Tensor(_)) => Ok(t),
                _ => bail!("data.pkl: _rebuild_parameter without a tensor"),
            }
        }
        ("torch._tensor", "_rebuild_from_type_v2") => {
            // (func, type, args, state): the tensor is func(*args).
            let mut it = items(args, "the arguments of _rebuild_from_type_v2")?.into_iter();
            let (Some(func), Some(_), Some(inner)) = (it.next(), it.next(), it.next()) else {
                bail!("data.pkl: _rebuild_from_type_v2 called with fewer than 3 arguments");
            };
            match func {
                Value::Global(m, n) if m == "torch._utils" && n.starts_with("_rebuild_tensor") => {
                    rebuild_tensor(inner)
                }
                _ => Ok(Value::Object),
            }
        }
        _ => Ok(Value::Object),
    }
}

/// Runs `data.pkl` and returns the tensors of the state dict it holds, in pickle order
/// (a later entry with the same name replaces an earlier one, as in Python).
pub fn state_dict(pkl: &[u8]) -> Result<Vec<(String, TensorRef)>> {
    let mut m = Machine {
        input: pkl,
        pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        budget: (1 << 24) + pkl.len().saturating_mul(8),
    };
    let top = m.run()?;
    let Value::Dict(d) = top else {
        bail!("data.pkl holds {}, not a state dict of tensors", top.kind());
    };
    let mut out: Vec<(String, TensorRef)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for (k, v) in d.items {
        if let (Value::Str(name), Value::Tensor(t)) = (k, v) {
            match index.get(&name) {
                Some(&i) => out[i].1 = *t,
                None => {
                    index.insert(name.clone(), out.len());
                    out.push((name, *t));
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A protocol-2 pickle of `{name: tensor}` as torch.save writes it.
    fn one_tensor(name: &str, class: &str, numel: u8, shape: &[u8], stride: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, 2, b'}', b'q', 0, b'(', b'X'];
        p.extend_from_slice(&(name.len() as u32).to_le_bytes());
        p.extend_from_slice(name.as_bytes());
        p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storage");
        p.extend_from_slice(format!("ctorch\n{class}\n").as_bytes());
        p.extend_from_slice(b"X\x01\x00\x00\x000X\x03\x00\x00\x00cpuK");
        p.push(numel);
        p.extend_from_slice(b"tQK\x00(");
        for d in shape {
            p.extend_from_slice(&[b'K', *d]);
        }
        p.extend_from_slice(b"t(");
        for s in stride {
            p.extend_from_slice(&[b'K', *s]);
        }
        p.extend_from_slice(b"t\x89ccollections\nOrderedDict\n)RtRu.");
        p
    }

    #[test]
    fn reads_a_state_dict() {
        let p = one_tensor("w", "FloatStorage", 6, &[2, 3], &[3, 1]);
        let sd = state_dict(&p).unwrap();
        assert_eq!(sd.len(), 1);
        assert_eq!(sd[0].0, "w");
        let t = &sd[0].1;
        assert_eq!(t.shape, [2, 3]);
        assert_eq!(t.stride, [3, 1]);
        assert_eq!(t.storage.numel, 6);
        assert_eq!(t.storage.dtype, StoredDType::F32);
        assert_eq!(t.storage.key, "0");
    }

    #[test]
    fn damaged_pickles_are_errors_not_panics() {
        let p = one_tensor("w", "BFloat16Storage", 6, &[2, 3], &[3, 1]);
        for n in 0..p.len() {
            assert!(state_dict(&p[..n]).is_err(), "cut at {n}");
        }
        for i in 0..p.len() {
            for v in [0u8, 0x29, 0x2e, 0x71, 0x68, 0x74, 0x85, 0x52, 0xff] {
                let mut b = p.clone();
                b[i] = v;
                let _ = state_dict(&b);
            }
        }
    }

    #[test]
    fn deep_nesting_and_memo_bombs_are_refused() {
        // ((((…)))) a million deep.
        let mut p = vec![0x80, 2, b'K', 1];
        p.extend(std::iter::repeat_n(0x85u8, 1_000_000));
        p.push(b'.');
        let e = state_dict(&p).unwrap_err().to_string();
        assert!(e.contains("deep"), "{e}");
        // A list doubled through the memo 64 times.
        let mut p = vec![0x80, 2, b']', b'X', 0x00, 0x10, 0, 0];
        p.extend(std::iter::repeat_n(b'a', 4096));
        p.push(b'a');
        for _ in 0..64 {
            p.extend_from_slice(b"q\x00(h\x00h\x00t");
        }
        p.push(b'.');
        let e = state_dict(&p).unwrap_err().to_string();
        assert!(e.contains("bomb") || e.contains("deep"), "{e}");
    }

    #[test]
    fn unknown_opcodes_are_named() {
        let e = state_dict(&[0x80, 2, b'i', b'.']).unwrap_err().to_string();
        assert!(e.contains("opcode 0x69"), "{e}");
    }
}
