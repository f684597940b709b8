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

    def mat(o, i, scale=1.0):
        return (rng.standard_normal((o, i), dtype=np.float32) * (scale / np.sqrt(i))).astype(np.float32)

    def vec(shape, lo, hi):
        return rng.uniform(lo, hi, size=shape).astype(np.float32)

    t = {}
    t["emb.weight"] = rng.standard_normal((V, C), dtype=np.float32) * 0.1
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
        t[att + "w1"] = mat(Dw, C, 0.3).T.copy()
        t[att + "w2"] = mat(C, Dw, 0.3).T.copy()
        t[att + "a0"] = vec((1, 1, C), -1, 1)
        t[att + "a1"] = mat(Da, C, 0.3).T.copy()
        t[att + "a2"] = mat(C, Da, 0.3).T.copy()
        if i > 0:
            t[att + "v0"] = vec((1, 1, C), -1, 1)
            t[att + "v1"] = mat(Dv, C, 0.3).T.copy()
            t[att + "v2"] = mat(C, Dv, 0.3).T.copy()
        t[att + "g1"] = mat(Dg, C, 0.5).T.copy()
        t[att + "g2"] = mat(C, Dg, 0.5).T.copy()
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

    header, blobs, off = {}, [], 0
    for name in sorted(t):
        arr = np.ascontiguousarray(t[name], dtype=np.float32)
        b = to_bf16_bytes(arr) if a.dtype == "bf16" else arr.tobytes()
        header[name] = {"dtype": "BF16" if a.dtype == "bf16" else "F32", "shape": list(arr.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(a.out, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    n = sum(v.size for v in t.values())
    print(f"wrote {a.out}: RWKV-7 {L} layers, width {C}, vocab {V}, {n/1e6:.1f}M params, {a.dtype}")


if __name__ == "__main__":
    main()
