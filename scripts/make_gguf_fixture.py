#!/usr/bin/env python3
"""Writes an RWKV-7 (or RWKV-6) checkpoint (BlinkDL names, safetensors) as a GGUF file laid out
exactly as llama.cpp's converter lays it out, so that rwkv-cli's GGUF reader can be tested on
files of the real layout without llama.cpp.

    python3 scripts/make_gguf_fixture.py IN.safetensors OUT.gguf --type f32|f16|bf16|q8_0|q4_0|q6_k
    python3 scripts/make_gguf_fixture.py --kquants OUT.gguf     # K-quant decoding fixture

Needs `pip install gguf numpy` (gguf = gguf-py, llama.cpp's own GGUF writer and quantizers).

How this mirrors llama.cpp (convert_hf_to_gguf.py, class `Rwkv7Model`; newer trees keep it in
conversion/rwkv.py). That converter reads Hugging Face "RWKV7ForCausalLM" checkpoints, so:

1. BlinkDL names are first renamed to the HF names that converter reads (`emb.weight` ->
   `model.embeddings.weight`, `blocks.0.ln0` -> `model.pre_ln`, `blocks.N.ln1/ln2` ->
   `model.layers.N.ln1/ln2`, `blocks.N.att.X` -> `model.layers.N.attention.X`,
   `blocks.N.ffn.X` -> `model.layers.N.feed_forward.X`, `ln_out` -> `model.ln_out`); the
   tensors keep BlinkDL's orientation (LoRAs stored (in, out)), as in BlinkDL's HF exports, so
   the converter's `lora_needs_transpose` stays True.
2. `Rwkv7Model.modify_tensors`, step by step:
   - layer 0's `attention.v0/v1/v2` (dummies in BlinkDL files) are dropped;
   - the six token-shift mixes `x_r, x_w, x_k, x_v, x_a, x_g` of a layer are stacked, in that
     order, into `blk.N.time_mix_lerp_fused.weight` of shape (6, 1, 1, C);
   - every other tensor is squeezed, renamed through gguf-py's tensor map
     (`gguf.get_tensor_name_map(MODEL_ARCH.RWKV7, n_layer)`, suffix `.weight` added where the
     map gives none), the LoRAs `w1 w2 a1 a2 v1 v2 g1 g2` transposed, `r_k` flattened to (C,);
   - layer 0's `time_mix_a0/a1/a2` are also written as `time_mix_v0/v1/v2` (dummies that
     llama.cpp needs present and never uses).
3. `ModelBase.prepare_tensors` picks each tensor's type: 1-D tensors, `*_norm.weight`, tensors
   whose name does not end in `.weight`, `time_mix_w1/w2` and `time_mix_lerp_fused` stay F32;
   the others take the requested type; a Q8_0 (or other block type) tensor whose rows are not a
   whole number of blocks falls back to F16 (gguf-py raises QuantError, the converter catches).
4. `Rwkv7Model.set_gguf_parameters`: context length 1048576, embedding length, block count,
   layer norm epsilon (1e-5), WKV head size, the four LoRA ranks, feed-forward length, file
   type, and head count 0; `_set_vocab_rwkv_world` stores the World vocabulary (tokenizer model
   "rwkv", token 0 "<s>", each token as Python's bytes repr without b'', "[PADn]" to the
   vocabulary size, EOT 261). It only works for a 65536-token vocabulary: for our small
   fixtures (vocab 256) no tokenizer metadata is written (the converter would refuse them),
   unless --world-vocab asks for it (a fixture for the reader's vocabulary check).

RWKV-6 (told by `blocks.0.att.time_maa_x`) follows class `Rwkv6Model` instead: HF names
`rwkv.blocks.N.attention.X` / `feed_forward.X` (`rwkv.embeddings`, `rwkv.blocks.0.pre_ln`,
`rwkv.ln_out`); `time_maa_w1` and the decay LoRA transposed, `time_maa_w2` permuted (0, 2, 1),
the decay and mixes squeezed, the mixes `w k v r g` stacked into `time_mix_lerp_fused`
(5, 1, 1, C), and each layer's `time_mix_output` and `channel_mix_value` divided by
2^(layer // rescale_every) (`--rescale-every`, the HF config's value, 6 in BlinkDL's models);
`time_mix_first` also stays F32.

`--type q4_0` has no converter equivalent (llama.cpp makes Q4_0 with its C++ llama-quantize
from an F16/F32 GGUF): this script mimics its choices — the LoRAs, 1-D tensors and the fused
mixes stay as they were (F32), the large matrices and the embedding become Q4_0, and
`output.weight` takes Q6_K, or Q8_0 where its rows are not a whole number of 256-blocks (the
fallback llama-quantize uses). `--type q6_k` likewise puts every matrix the converter would
quantize in Q6_K (Q8_0 where rows are not whole 256-blocks). gguf-py cannot encode K-quants:
Q6_K blocks come from this script's plain encoder (`quantize_q6_k`, simpler than llama.cpp's
scale search; same layout, checked against gguf-py's decoder).

`--kquants` writes a container of Q4_K, Q5_K and Q6_K tensors of random blocks next to their
values as gguf-py decodes them (F32 tensors named `NAME.ref`): the reader's K-quant decoders
are checked against llama.cpp's own reference decoders (gguf-py cannot encode K-quants).
"""
import argparse
import json
import struct
import sys

import numpy as np

try:
    import gguf
except ImportError:
    sys.exit("needs gguf-py: pip install gguf numpy")

LERP = ["r", "w", "k", "v", "a", "g"]
LORAS = ["w1", "w2", "a1", "a2", "v1", "v2", "g1", "g2"]


def read_safetensors(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    header = json.loads(b[8 : 8 + n])
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        s, t = e["data_offsets"]
        raw = b[8 + n + s : 8 + n + t]
        if e["dtype"] == "F32":
            a = np.frombuffer(raw, dtype=np.float32)
        elif e["dtype"] == "F16":
            a = np.frombuffer(raw, dtype=np.float16).astype(np.float32)
        elif e["dtype"] == "BF16":
            a = (np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            sys.exit(f"{name}: dtype {e['dtype']} not handled")
        out[name] = a.reshape(e["shape"]).copy()
    return out


def hf_name(name):
    """BlinkDL name -> the HF RWKV7ForCausalLM name the converter reads."""
    if name == "emb.weight":
        return "model.embeddings.weight"
    if name.startswith("blocks.0.ln0."):
        return "model.pre_ln." + name.split(".")[-1]
    if name.startswith("ln_out."):
        return "model.ln_out." + name.split(".")[-1]
    if name.startswith("blocks."):
        parts = name.split(".")
        bid, rest = parts[1], parts[2:]
        sub = {"att": "attention", "ffn": "feed_forward"}.get(rest[0], rest[0])
        return ".".join(["model", "layers", bid, sub] + rest[1:])
    return name  # head.weight


def hf_name6(name):
    """BlinkDL v6 name -> the HF Rwkv6ForCausalLM name the converter reads."""
    name = hf_name(name)
    if name.startswith("model.layers."):
        return "rwkv.blocks." + name[len("model.layers.") :]
    return {
        "model.embeddings.weight": "rwkv.embeddings.weight",
        "model.pre_ln.weight": "rwkv.blocks.0.pre_ln.weight",
        "model.pre_ln.bias": "rwkv.blocks.0.pre_ln.bias",
        "model.ln_out.weight": "rwkv.ln_out.weight",
        "model.ln_out.bias": "rwkv.ln_out.bias",
    }.get(name, name)


def convert6(tensors, n_layer, rescale_every):
    """Rwkv6Model.modify_tensors on every tensor: yields (gguf name, array)."""
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.RWKV6, n_layer)
    lerp = {}
    for name, data in tensors.items():
        name = hf_name6(name)
        parts = name.split(".")
        bid = int(parts[2]) if parts[:2] == ["rwkv", "blocks"] else None
        new = tmap.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None:
            sys.exit(f"no GGUF name for {name}")
        if not (new.endswith(".weight") or new.endswith(".bias")):
            new += ".weight"
        if any(new.endswith(s) for s in ("time_mix_w1.weight", "time_mix_decay_w1.weight", "time_mix_decay_w2.weight")):
            data = data.T.copy()
        if new.endswith("time_mix_w2.weight"):
            data = np.ascontiguousarray(data.transpose(0, 2, 1))
        if new.endswith("time_mix_decay.weight") or "lerp" in new:
            data = np.squeeze(data)
        if rescale_every > 0 and (new.endswith("time_mix_output.weight") or new.endswith("channel_mix_value.weight")):
            data = data / np.float32(2 ** int(bid // rescale_every))
        if bid is not None and "time_mix_lerp" in new and "time_mix_lerp_x" not in new:
            lerp.setdefault(bid, {})[new] = data
            keys = [f"blk.{bid}.time_mix_lerp_{i}.weight" for i in "wkvrg"]
            if all(k in lerp[bid] for k in keys):
                fused = np.stack([lerp[bid][k][None, :] for k in keys], axis=0)[:, None]
                yield (f"blk.{bid}.time_mix_lerp_fused.weight", fused)
            continue
        yield (new, data)


def convert(tensors, n_layer):
    """Rwkv7Model.modify_tensors on every tensor: yields (gguf name, array)."""
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.RWKV7, n_layer)
    lerp = {}
    for name, data in tensors.items():
        name = hf_name(name)
        parts = name.split(".")
        bid = int(parts[2]) if parts[:2] == ["model", "layers"] else None
        mapped = tmap.get_name(name, try_suffixes=(".weight", ".bias"))
        if "attention.v" in name and (mapped is None or "value" not in mapped) and bid == 0:
            continue  # dummy v0/v1/v2 of layer 0
        if bid is not None and "attention.x_" in name:
            lerp.setdefault(bid, {})[name] = data
            if all(f"model.layers.{bid}.attention.x_{i}" in lerp[bid] for i in LERP):
                yield (
                    f"blk.{bid}.time_mix_lerp_fused.weight",
                    np.stack([lerp[bid][f"model.layers.{bid}.attention.x_{i}"] for i in LERP]),
                )
            continue
        data = np.squeeze(data)
        if mapped is None:
            sys.exit(f"no GGUF name for {name}")
        if not (mapped.endswith(".weight") or mapped.endswith(".bias")):
            mapped += ".weight"
        if any(mapped.endswith(f"time_mix_{t}.weight") for t in LORAS):
            data = data.T.copy()
        if "r_k" in mapped:
            data = data.flatten()
        if bid == 0 and "time_mix_a" in mapped:
            yield (mapped.replace("time_mix_a", "time_mix_v"), data)
        yield (mapped, data)


def tensor_type(name, data, want):
    """ModelBase.prepare_tensors' choice of type for one tensor (want: a GGMLQuantizationType)."""
    T = gguf.GGMLQuantizationType
    if data.ndim <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight"):
        return T.F32
    forced = ("time_mix_first", "time_mix_w1", "time_mix_w2", "time_mix_decay_w1", "time_mix_decay_w2", "time_mix_lerp_fused")
    if any(name.endswith(f"{s}.weight") for s in forced):
        return T.F32
    return want


def quantize(data, qtype):
    T = gguf.GGMLQuantizationType
    data = np.ascontiguousarray(data, dtype=np.float32)
    try:
        return gguf.quants.quantize(data, qtype), qtype
    except gguf.QuantError:
        return gguf.quants.quantize(data, T.F16), T.F16


def quantize_q6_k(data):
    """A plain Q6_K encoder (gguf-py only decodes K-quants): per 16 values a scale
    max|x|/31, the 16 scales of a 256-block as int8 steps of one f16 `d`, values in -32..31.
    Simpler than llama.cpp's (which searches the scales), same block layout: 128 bytes of low
    nibbles, 64 of high 2-bit pairs, 16 int8 scales, f16 d; checked against gguf-py's decoder.
    """
    rows, cols = data.shape
    x = np.ascontiguousarray(data, dtype=np.float32).reshape(-1, 16, 16)
    nb = x.shape[0]
    scf = np.abs(x).max(-1) / 31
    d = np.float16(scf.max(-1) / 127).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        sci = np.where(d[:, None] > 0, np.round(scf / d[:, None]), 0).clip(0, 127)
        eff = d[:, None] * sci
        q = np.where(eff[..., None] > 0, np.round(x / eff[..., None]), 0)
    q = (q.clip(-32, 31) + 32).astype(np.uint8).reshape(nb, 2, 4, 32)
    ql = np.empty((nb, 2, 64), dtype=np.uint8)
    ql[:, :, :32] = (q[:, :, 0] & 15) | ((q[:, :, 2] & 15) << 4)
    ql[:, :, 32:] = (q[:, :, 1] & 15) | ((q[:, :, 3] & 15) << 4)
    qh = (q[:, :, 0] >> 4) | ((q[:, :, 1] >> 4) << 2) | ((q[:, :, 2] >> 4) << 4) | ((q[:, :, 3] >> 4) << 6)
    blocks = np.concatenate(
        [
            ql.reshape(nb, 128),
            qh.reshape(nb, 64).astype(np.uint8),
            sci.astype(np.int8).view(np.uint8),
            d.astype(np.float16).view(np.uint8).reshape(nb, 2),
        ],
        axis=1,
    )
    out = blocks.reshape(rows, cols // 256 * 210)
    back = gguf.quants.dequantize(out, gguf.GGMLQuantizationType.Q6_K).reshape(rows, cols)
    err = np.abs(back - data).max() / max(np.abs(data).max(), 1e-30)
    assert err < 0.05, f"Q6_K round trip error {err}"
    return out


def world_vocab():
    """_set_vocab_rwkv_world's token list, from the vocabulary the crate embeds."""
    import ast

    path = __file__.rsplit("/", 2)[0] + "/src/tokenizer/rwkv_vocab_v20230424.txt"
    tokens, types = [b"<s>"], [gguf.TokenType.CONTROL]
    for line in open(path, encoding="utf-8"):
        parts = line.rstrip("\n").split(" ")
        tok = ast.literal_eval(" ".join(parts[1:-1]))
        tok = tok.encode("utf-8") if isinstance(tok, str) else tok
        tokens.append(repr(tok)[2:-1].encode("utf-8"))
        types.append(gguf.TokenType.NORMAL)
    for i in range(len(tokens), 65536):
        tokens.append(f"[PAD{i}]".encode("utf-8"))
        types.append(gguf.TokenType.UNUSED)
    return tokens, types


def lora_rank(t, bid, x):
    return t[f"blocks.{bid}.att.{x}1"].shape[1]


def write_model(src, out, typ, world=False, rescale_every=6):
    T = gguf.GGMLQuantizationType
    t = read_safetensors(src)
    n_layer = 1 + max(int(k.split(".")[1]) for k in t if k.startswith("blocks."))
    vocab, C = t["emb.weight"].shape
    v6 = "blocks.0.att.time_maa_x" in t
    H, N = t["blocks.0.att.time_faaaa" if v6 else "blocks.0.att.r_k"].shape
    F = t["blocks.0.ffn.key.weight"].shape[0]
    want = {"f32": T.F32, "f16": T.F16, "bf16": T.BF16, "q8_0": T.Q8_0, "q4_0": T.Q4_0, "q6_k": T.Q6_K}[typ]
    ftype = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "bf16": gguf.LlamaFileType.MOSTLY_BF16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
        "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
        "q6_k": gguf.LlamaFileType.MOSTLY_Q6_K,
    }[typ]
    w = gguf.GGUFWriter(out, "rwkv6" if v6 else "rwkv7")
    w.add_name("rwkv-cli fixture")
    if v6:
        # Rwkv6Model.set_gguf_parameters
        w.add_context_length(1048576)
        w.add_embedding_length(C)
        w.add_block_count(n_layer)
        w.add_layer_norm_eps(1e-5)
        w.add_rescale_every_n_layers(rescale_every)
        w.add_wkv_head_size(N)
        w.add_time_mix_extra_dim(64 if C == 4096 else 32)
        w.add_time_decay_extra_dim(128 if C == 4096 else 64)
        w.add_feed_forward_length(F)
        w.add_file_type(ftype)
        w.add_head_count(0)
    else:
        write_params7(w, t, C, N, F, n_layer, ftype)
    if vocab == 65536 or world:
        tokens, types = world_vocab()
        w.add_tokenizer_model("rwkv")
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_chat_template("rwkv-world")
        w.add_eot_token_id(261)
    tensors = convert6(t, n_layer, rescale_every) if v6 else convert(t, n_layer)
    for name, data in tensors:
        if typ == "q4_0":
            # llama-quantize's choices (see the module notes).
            q = tensor_type(name, data, T.Q4_0)
            if any(name.endswith(f"time_mix_{x}.weight") for x in LORAS):
                q = T.F32
            elif name == "output.weight":
                q = T.Q6_K if data.shape[-1] % 256 == 0 else T.Q8_0
        elif typ == "q6_k":
            # Every matrix that llama.cpp's converter would quantize, in Q6_K where its rows are
            # whole 256-blocks (else Q8_0): for measuring the K-quant path.
            q = tensor_type(name, data, T.Q6_K)
            if q == T.Q6_K and data.shape[-1] % 256 != 0:
                q = T.Q8_0
        else:
            q = tensor_type(name, data, want)
        if q == T.Q6_K:
            w.add_tensor(name, quantize_q6_k(data), raw_dtype=T.Q6_K)
        elif q == T.F32:
            w.add_tensor(name, np.ascontiguousarray(data, dtype=np.float32))
        else:
            qd, q = quantize(data, q)
            w.add_tensor(name, qd, raw_dtype=q)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_params7(w, t, C, N, F, n_layer, ftype):
    """Rwkv7Model.set_gguf_parameters."""
    w.add_context_length(1048576)
    w.add_embedding_length(C)
    w.add_block_count(n_layer)
    w.add_layer_norm_eps(1e-5)
    w.add_wkv_head_size(N)
    w.add_decay_lora_rank(lora_rank(t, 0, "w"))
    w.add_iclr_lora_rank(lora_rank(t, 0, "a"))
    w.add_value_residual_mix_lora_rank(lora_rank(t, 1, "v") if n_layer > 1 else 32)
    w.add_gate_lora_rank(lora_rank(t, 0, "g"))
    w.add_feed_forward_length(F)
    w.add_file_type(ftype)
    w.add_head_count(0)


def write_kquants(out, seed=0):
    """Random K-quant blocks with their gguf-py decoding (see the module notes)."""
    T = gguf.GGMLQuantizationType
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(out, "rwkv7")
    for q in (T.Q4_K, T.Q5_K, T.Q6_K):
        block, size = gguf.GGML_QUANT_SIZES[q]
        rows, cols = 3, 2 * block
        raw = rng.integers(0, 256, size=(rows, cols // block * size), dtype=np.uint8)
        # Sane f16 scales (random bytes may make inf/nan): d and dmin in [2^-8, 2^-4).
        for r in range(rows):
            for b in range(cols // block):
                blk = raw[r, b * size : (b + 1) * size]
                d = np.array(rng.uniform(2**-8, 2**-4, size=2), dtype=np.float16).view(np.uint8)
                if q == T.Q6_K:
                    blk[size - 2 : size] = d[:2]  # Q6_K: ql, qh, scales, then d
                else:
                    blk[0:4] = d  # Q4_K/Q5_K: d, dmin first
        ref = gguf.quants.dequantize(raw, q).reshape(rows, cols).astype(np.float32)
        w.add_tensor(f"k.{q.name.lower()}", raw, raw_dtype=q)
        w.add_tensor(f"k.{q.name.lower()}.ref", ref)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("src", nargs="?")
    ap.add_argument("out")
    ap.add_argument("--type", default="f32", choices=["f32", "f16", "bf16", "q8_0", "q4_0", "q6_k"])
    ap.add_argument("--kquants", action="store_true")
    ap.add_argument(
        "--rescale-every",
        type=int,
        default=6,
        help="RWKV-6: the HF config's rescale_every (6 in BlinkDL's World models)",
    )
    ap.add_argument(
        "--world-vocab",
        action="store_true",
        help="store the World vocabulary whatever the model's vocabulary size (for a test)",
    )
    a = ap.parse_args()
    if a.kquants:
        write_kquants(a.out)
    else:
        if not a.src:
            ap.error("needs IN.safetensors")
        write_model(a.src, a.out, a.type, a.world_vocab, a.rescale_every)


if __name__ == "__main__":
    main()
