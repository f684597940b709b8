#!/usr/bin/env python3
"""Writes the fuzzers' seed corpora (fuzz/corpus/<target>/), small and deterministic.

Needs only Python 3 (no torch): `.pth` archives are written in torch.save's layout by a
pickler that names the same globals torch does (`torch._utils._rebuild_tensor_v2`,
`torch.FloatStorage`, ...), through stand-in modules. Tiny models of every version are the
committed fixtures (tests/fixtures/*.safetensors) with every dimension shrunk.

    python3 fuzz/make_seeds.py        # from the repository root
"""
import collections
import io
import json
import os
import pickle
import random
import struct
import sys
import types
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")

# --- stand-ins for the globals torch.save names -----------------------------------------------
torch = types.ModuleType("torch")
torch_utils = types.ModuleType("torch._utils")
sys.modules["torch"] = torch
sys.modules["torch._utils"] = torch_utils


def _rebuild_tensor_v2(*args):
    raise NotImplementedError


_rebuild_tensor_v2.__module__ = "torch._utils"
_rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
torch_utils._rebuild_tensor_v2 = _rebuild_tensor_v2

STORAGES = {"F32": ("FloatStorage", 4), "F16": ("HalfStorage", 2), "BF16": ("BFloat16Storage", 2),
            "F64": ("DoubleStorage", 8), "I64": ("LongStorage", 8)}
for cls_name, _ in STORAGES.values():
    cls = type(cls_name, (), {})
    cls.__module__ = "torch"
    setattr(torch, cls_name, cls)


class Storage:
    def __init__(self, dtype, key, numel):
        self.cls = getattr(torch, STORAGES[dtype][0])
        self.key, self.numel = key, numel


class Tensor:
    def __init__(self, storage, offset, shape, stride):
        self.storage, self.offset, self.shape, self.stride = storage, offset, shape, stride

    def __reduce_ex__(self, proto):
        return (_rebuild_tensor_v2, (self.storage, self.offset, tuple(self.shape),
                                     tuple(self.stride), False, collections.OrderedDict()))


class TorchPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", obj.cls, obj.key, "cpu", obj.numel)
        return None


def row_major(shape):
    stride, acc = [], 1
    for d in reversed(shape):
        stride.insert(0, acc)
        acc *= d
    return stride


def pth(name, tensors):
    """tensors: list of (name, dtype, shape, bytes) stored contiguously, plus optional views:
    (name, dtype, shape, bytes, offset, stride)."""
    sd, blobs = {}, []
    for i, t in enumerate(tensors):
        tname, dtype, shape, data = t[:4]
        offset, stride = (t[4], t[5]) if len(t) > 4 else (0, row_major(shape))
        size = STORAGES[dtype][1]
        st = Storage(dtype, str(i), len(data) // size)
        sd[tname] = Tensor(st, offset, shape, stride)
        blobs.append((str(i), data))
    buf = io.BytesIO()
    TorchPickler(buf, protocol=2).dump(sd)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{name}/data.pkl", buf.getvalue())
        z.writestr(f"{name}/byteorder", "little")
        for key, data in blobs:
            z.writestr(f"{name}/data/{key}", data)
        z.writestr(f"{name}/version", "3\n")
    return out.getvalue(), buf.getvalue()


def safetensors(tensors):
    header, data = {}, b""
    for name, dtype, shape, blob in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(blob)]}
        data += blob
    h = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(h)) + h + data


def values(rng, n, dtype):
    xs = [rng.uniform(-1, 1) for _ in range(n)]
    if dtype == "F32":
        return struct.pack(f"<{n}f", *xs)
    if dtype == "F64":
        return struct.pack(f"<{n}d", *xs)
    if dtype == "F16":
        return struct.pack(f"<{n}e", *xs)
    if dtype == "BF16":
        return b"".join(struct.pack("<f", x)[2:] for x in xs)
    if dtype == "I64":
        return struct.pack(f"<{n}q", *range(n))
    raise ValueError(dtype)


def prod(shape):
    p = 1
    for d in shape:
        p *= d
    return p


# Fixture dimension -> tiny dimension (vocab 8, width 4, ffn 8, 2 heads of 2, LoRA ranks 2).
SHRINK = {256: 8, 32: 4, 96: 8, 16: 2, 12: 2, 8: 2, 4: 2, 40: 10, 5: 5, 2: 2, 1: 1}


def tiny_model(fixture, dtype, rng):
    raw = open(os.path.join(ROOT, "tests", "fixtures", fixture), "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    tensors = []
    for name, t in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0] if kv[0] != "__metadata__" else -1):
        if name == "__metadata__":
            continue
        shape = [SHRINK[d] for d in t["shape"]]
        tensors.append((name, dtype, shape, values(rng, prod(shape), dtype)))
    return tensors


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def fnv1a(data, h=0xCBF29CE484222325):
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def main():
    rng = random.Random(7)

    # safetensors: every float dtype, an integer tensor, metadata.
    small = [("a", "F32", [2, 3], values(rng, 6, "F32")), ("b", "F16", [4], values(rng, 4, "F16")),
             ("c", "BF16", [1, 1, 4], values(rng, 4, "BF16")), ("d", "F64", [2], values(rng, 2, "F64")),
             ("e", "I64", [3], values(rng, 3, "I64"))]
    write("safetensors", "dtypes.safetensors", safetensors(small))
    h = json.dumps({"__metadata__": {"format": "pt"}, "x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    write("safetensors", "metadata.safetensors", struct.pack("<Q", len(h)) + h + values(rng, 2, "F32"))

    # pth: a whole archive (first byte even), and a bare pickle (first byte odd) that the
    # harness wraps with storages a/data/0..7 of 256 bytes.
    archive, _ = pth("seed", [("w", "F32", [2, 3], values(rng, 6, "F32")),
                              ("b", "BF16", [4], values(rng, 4, "BF16")),
                              ("t", "F32", [3, 2], values(rng, 6, "F32"), 0, [1, 3]),
                              ("o", "F16", [2], values(rng, 4, "F16"), 2, [1])])
    write("pth", "archive.pth", b"\x00" + archive)
    _, pkl = pth("a", [("w", "F32", [4, 4], values(rng, 64, "F32")),
                       ("h", "F16", [8, 2], values(rng, 128, "F16")),
                       ("v", "BF16", [2, 8], values(rng, 128, "BF16"), 3, [1, 2]),
                       ("d", "F64", [32], values(rng, 32, "F64"))])
    write("pth", "pickle.pkl", b"\x01" + pkl)

    # load_model: tiny models of every version, and one as .pth.
    for v in ["v4", "v5_0", "v5_1", "v5_2", "v6", "v7"]:
        write("load_model", f"tiny_{v}.safetensors", safetensors(tiny_model(f"{v}.safetensors", "F32", rng)))
    write("load_model", "tiny_v7_bf16.safetensors", safetensors(tiny_model("v7.safetensors", "BF16", rng)))
    archive, _ = pth("tiny_v6", tiny_model("v6.safetensors", "F16", rng))
    write("load_model", "tiny_v6.pth", archive)

    # World tokenizer: text, mixed scripts, bytes that are not UTF-8.
    write("world_tokenizer", "english.txt", b"The Eiffel tower is in Paris.\n\nQ: 2+2?\nA: 4")
    write("world_tokenizer", "mixed.txt", "héllo wörld — 你好，世界 🎉 \t\r\n  ".encode())
    write("world_tokenizer", "invalid.bin", b"\xff\xfe\x80abc\xc3\xed\xa0\x80\xc0\xaf\xf4\x90\x80\x80")
    write("world_tokenizer", "code.txt", b"fn main() {\n    println!(\"{}\", 1 << 3);\n}\n")

    # State files for the harness's model (v7, 2 layers, width 8, 2 heads of 4, vocab 5).
    header = json.dumps({"att_width": 8, "dtype": "f32", "fingerprint": "%016x" % 42, "head_size": 4,
                         "heads": 2, "layers": 2, "model_version": "v7", "tokens": 1234, "vocab": 5,
                         "width": 8}, separators=(",", ":")).encode()
    floats = [rng.uniform(-2, 2) for _ in range(2 * (8 + 2 * 4 * 4 + 8) + 5)]
    body = b"RWKVSTATE\x00" + struct.pack("<II", 1, len(header)) + header + struct.pack(f"<{len(floats)}f", *floats)
    state = body + struct.pack("<Q", fnv1a(body))
    write("state_file", "valid.state", state)
    write("state_file", "truncated.state", state[: len(state) // 2])


if __name__ == "__main__":
    main()
