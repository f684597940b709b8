#!/usr/bin/env python3
"""Writes a random RWKV-7 checkpoint of an official shape, for benchmarks.

    python3 scripts/make_random_v7.py OUT.safetensors [--layers 12 --width 768 --vocab 65536 --dtype bf16]

The default shape is the official RWKV-7 0.1B (12 layers, width 768, head size 64, FFN 3072,
vocab 65536; LoRA ranks 64/64/32/128 as in rwkv7-g1 0.1B). Values are random but in the ranges
of trained weights, so the maths runs on realistic magnitudes. Needs only numpy; the
safetensors file is written directly (bf16 = f32 rounded to nearest even).
"""
import argparse
import json
import struct

import numpy as np


def to_bf16_bytes(a):
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return rounded.astype(np.uint16).tobytes()


def write_tensor(f, arr, bf16, chunk=1 << 24):
    """Writes arr (f32) as bf16 or f32 in slices of `chunk` values (no second full-size copy)."""
    flat = np.ascontiguousarray(arr, dtype=np.float32).reshape(-1)
    for s in range(0, flat.size, chunk):
        part = flat[s : s + chunk]
        f.write(to_bf16_bytes(part) if bf16 else part.tobytes())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--head-size", type=int, default=64)
    ap.add_argument("--ffn", type=int, default=0, help="default 4 x width")
    ap.add_argument("--vocab", type=int, default=65536)
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="bf16")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    C, L, V, N = a.width, a.layers, a.vocab, a.head_size
    F = a.ffn or 4 * C
    H = C // N
    Dw, Da, Dv, Dg = 64, 64, 32, 128
    rng = np.random.default_rng(a.seed)
    bf16 = a.dtype == "bf16"

    # Tensors are made lazily, in the RNG's order, and each is written at its place in the
    # sorted layout: only one tensor is in memory at a time (7.2B is 29 GB as f32).
    t = {}

    def mat(o, i, scale=1.0, transpose=False):
        def make():
            x = rng.standard_normal((o, i), dtype=np.float32)
            # In place; the same values as `(x * s).astype(np.float32)` (f64 product, rounded).
            np.multiply(x, scale / np.sqrt(i), out=x, casting="same_kind")
            return x.T.copy() if transpose else x

        return ((i, o) if transpose else (o, i)), make

    def vec(shape, lo, hi):
        return shape, lambda: rng.uniform(lo, hi, size=shape).astype(np.float32)

    def emb():
        x = rng.standard_normal((V, C), dtype=np.float32)
        x *= np.float32(0.1)
        return x

    t["emb.weight"] = ((V, C), emb)
    t["blocks.0.ln0.weight"] = vec((C,), 0.9, 1.1)
    t["blocks.0.ln0.bias"] = vec((C,), -0.05, 0.05)
    for i in range(L):
        p, att, ffn = f"blocks.{i}.", f"blocks.{i}.att.", f"blocks.{i}.ffn."
        for n in ("ln1", "ln2"):
            t[p + n + ".weight"] = vec((C,), 0.9, 1.1)
            t[p + n + ".bias"] = vec((C,), -0.05, 0.05)
        for n in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g"):
            t[att + n] = vec((1, 1, C), 0, 1)
        t[att + "w0"] = vec((1, 1, C), -6, 1)
        t[att + "w1"] = mat(Dw, C, 0.3, True)
        t[att + "w2"] = mat(C, Dw, 0.3, True)
        t[att + "a0"] = vec((1, 1, C), -1, 1)
        t[att + "a1"] = mat(Da, C, 0.3, True)
        t[att + "a2"] = mat(C, Da, 0.3, True)
        if i > 0:
            t[att + "v0"] = vec((1, 1, C), -1, 1)
            t[att + "v1"] = mat(Dv, C, 0.3, True)
            t[att + "v2"] = mat(C, Dv, 0.3, True)
        t[att + "g1"] = mat(Dg, C, 0.5, True)
        t[att + "g2"] = mat(C, Dg, 0.5, True)
        t[att + "k_k"] = vec((1, 1, C), 0.5, 1.0)
        t[att + "k_a"] = vec((1, 1, C), 0.5, 1.5)
        t[att + "r_k"] = vec((H, N), -0.5, 0.5)
        for n in ("receptance", "key", "value", "output"):
            t[att + n + ".weight"] = mat(C, C)
        t[att + "ln_x.weight"] = vec((C,), 0.5, 1.5)
        t[att + "ln_x.bias"] = vec((C,), -0.05, 0.05)
        t[ffn + "x_k"] = vec((1, 1, C), 0, 1)
        t[ffn + "key.weight"] = mat(F, C)
        t[ffn + "value.weight"] = mat(C, F, 0.5)
    t["ln_out.weight"] = vec((C,), 0.9, 1.1)
    t["ln_out.bias"] = vec((C,), -0.05, 0.05)
    t["head.weight"] = mat(V, C, 2.0)

    width = 2 if bf16 else 4
    header, where, off = {}, {}, 0
    for name in sorted(t):
        shape = t[name][0]
        size = int(np.prod(shape)) * width
        header[name] = {"dtype": "BF16" if bf16 else "F32", "shape": list(shape), "data_offsets": [off, off + size]}
        where[name] = off
        off += size
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(a.out, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        f.truncate(8 + len(h) + off)
        for name, (shape, make) in t.items():
            arr = make()
            assert arr.shape == tuple(shape), name
            f.seek(8 + len(h) + where[name])
            write_tensor(f, arr, bf16)
            del arr
    n = sum(int(np.prod(v[0])) for v in t.values())
    print(f"wrote {a.out}: RWKV-7 {L} layers, width {C}, vocab {V}, {n/1e6:.1f}M params, {a.dtype}")


if __name__ == "__main__":
    main()
