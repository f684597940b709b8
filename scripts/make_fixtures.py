#!/usr/bin/env python3
"""Build tiny random RWKV checkpoints and record the official reference logits.

Usage, from the repository root, with a python3 that has the packages listed
in scripts/requirements-fixtures.txt:

    python3 scripts/make_fixtures.py

for example in a throw-away virtual environment:

    python3 -m venv /tmp/rwkv-ref && /tmp/rwkv-ref/bin/pip install -r scripts/requirements-fixtures.txt
    /tmp/rwkv-ref/bin/python scripts/make_fixtures.py            # writes tests/fixtures/
    /tmp/rwkv-ref/bin/python scripts/make_fixtures.py --out DIR  # somewhere else

This needs torch and the official `rwkv` pip package (BlinkDL's ChatRWKV
implementation, pinned to 0.8.32); it is a developer tool and is never run in
CI -- the Rust tests only read the files it writes.

For every model NAME in v4 v5_0 v5_1 v5_2 v6 v7 v7_bf16 it writes:

  NAME.pth              plain dict of tensors, torch.save (zip format), with the
                        official BlinkDL tensor names and stored shapes
  NAME.safetensors      the same tensors (same names, dtypes and shapes)
  NAME.ref.safetensors  reference outputs of rwkv.model (strategy 'cpu fp32'):
      tokens          int64 (T=24)  input ids
      tokens2         int64 (8)     continuation ids
      logits_last     f32 (V)       forward(tokens, None)[0]            (sequence mode)
      logits_seq_all  f32 (T, V)    forward(tokens, None, full_output=True)[0]
      logits_steps    f32 (T, V)    forward([tok], state) one token at a time
      logits2_last    f32 (V)       forward(tokens2, state_after_tokens)[0]
    and one metadata entry, "reference": a JSON object (sorted keys) with the
    version the package detected, the sizes, package versions and the
    reference's own agreement between its code paths ("self_agreement").
  The checkpoint .safetensors carry the metadata {"format": "pt"}. Tensor order
  in the .pth follows BlinkDL's training code; safetensors sorts its own.

The reference runs in child processes (this script re-invokes itself with
--reference-worker) because the package reads RWKV_JIT_ON / RWKV_CUDA_ON /
RWKV_V7_ON at import time, and RWKV_V7_ON=1 replaces class RWKV by RWKV_x070.
All random values come from fixed seeds, so the output is deterministic for a
given torch version.
"""

import argparse
import json
import math
import os
import subprocess
import sys

import torch

# ----------------------------------------------------------------------------
# Model sizes (tiny on purpose, but with every dimension distinct enough that a
# port mixing two of them up fails).

V = 256  # vocab
C = 32  # width (n_embd == dim_att)
H = 2  # heads (v5+)
N = C // H  # head size
F = 96  # FFN width
N_LAYER = 2  # at least 2: the package's v5 version detection needs layer 1
T = 24  # length of `tokens`
T2 = 8  # length of `tokens2`

D_MIX = 8  # v6 time_maa LoRA rank
D_DECAY = 16  # v6 time_decay LoRA rank
D_W, D_A, D_V, D_G = 8, 12, 4, 16  # v7 LoRA ranks (all distinct)

MODELS = ["v4", "v5_0", "v5_1", "v5_2", "v6", "v7", "v7_bf16"]
CLASSIC = ["v4", "v5_0", "v5_1", "v5_2", "v6"]  # run by class RWKV
SEVEN = ["v7", "v7_bf16"]  # run by class RWKV_x070 (RWKV_V7_ON=1)
EXPECTED_VERSION = {"v4": 4.0, "v5_0": 5.0, "v5_1": 5.1, "v5_2": 5.2, "v6": 6.0}
SEEDS = {"v4": 1004, "v5_0": 1050, "v5_1": 1051, "v5_2": 1052, "v6": 1006, "v7": 1007, "v7_bf16": 2007}

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO_ROOT, "tests", "fixtures")


# ----------------------------------------------------------------------------
# Random tensor helpers. Every helper draws from the generator it is given, so
# each model depends only on its own seed.


class Init:
    def __init__(self, seed):
        self.g = torch.Generator().manual_seed(seed)

    def normal(self, *shape, std=1.0):
        return torch.randn(*shape, generator=self.g, dtype=torch.float32) * std

    def uniform(self, lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(*shape, generator=self.g, dtype=torch.float32)

    def linear(self, n_out, n_in, gain=1.0):
        """nn.Linear weight layout (out, in), ~N(0, gain^2 / in)."""
        return self.normal(n_out, n_in, std=gain / math.sqrt(n_in))

    def ln_weight(self):
        return 1.0 + self.normal(C, std=0.1)

    def ln_bias(self):
        return self.normal(C, std=0.1)

    def mix(self):
        """A (1, 1, C) token-shift mix coefficient in [0, 1)."""
        return self.uniform(0.0, 1.0, 1, 1, C)

    def ids(self, n):
        return torch.randint(0, V, (n,), generator=self.g, dtype=torch.int64)


def add_embedding(w, r):
    w["emb.weight"] = r.normal(V, C, std=0.5)


def add_block_lns(w, r, i):
    b = f"blocks.{i}."
    w[b + "ln1.weight"] = r.ln_weight()
    w[b + "ln1.bias"] = r.ln_bias()
    w[b + "ln2.weight"] = r.ln_weight()
    w[b + "ln2.bias"] = r.ln_bias()
    if i == 0:
        w[b + "ln0.weight"] = r.ln_weight()
        w[b + "ln0.bias"] = r.ln_bias()


def add_head(w, r):
    w["ln_out.weight"] = r.ln_weight()
    w["ln_out.bias"] = r.ln_bias()
    w["head.weight"] = r.linear(V, C, gain=2.5)


def add_ffn_classic(w, r, i, mix_names):
    f = f"blocks.{i}.ffn."
    for m in mix_names:
        w[f + m] = r.mix()
    w[f + "key.weight"] = r.linear(F, C)
    w[f + "receptance.weight"] = r.linear(C, C)
    w[f + "value.weight"] = r.linear(C, F)


# ----------------------------------------------------------------------------
# Checkpoint builders. Insertion order follows the order of parameters in
# BlinkDL's training code (what real .pth files have); the package's version
# detection scans keys in order, which is one reason N_LAYER >= 2.


def build_v4(r):
    w = {}
    add_embedding(w, r)
    for i in range(N_LAYER):
        add_block_lns(w, r, i)
        a = f"blocks.{i}.att."
        w[a + "time_decay"] = r.uniform(-1.0, 2.0, C)  # used as -exp(.)
        w[a + "time_first"] = r.uniform(-1.0, 1.0, C)  # used as is
        w[a + "time_mix_k"] = r.mix()
        w[a + "time_mix_v"] = r.mix()
        w[a + "time_mix_r"] = r.mix()
        w[a + "key.weight"] = r.linear(C, C)
        w[a + "value.weight"] = r.linear(C, C)
        w[a + "receptance.weight"] = r.linear(C, C)
        w[a + "output.weight"] = r.linear(C, C)
        add_ffn_classic(w, r, i, ["time_mix_k", "time_mix_r"])
    add_head(w, r)
    return w


def build_v5(r, sub):
    """sub: '5.0' (time_first (H,), no gate), '5.1' (gate, time_faaaa (H,)),
    '5.2' (gate, time_decay/time_faaaa (H, N))."""
    w = {}
    add_embedding(w, r)
    gated = sub in ("5.1", "5.2")
    per_head_shape = (H, N) if sub == "5.2" else (H,)
    for i in range(N_LAYER):
        add_block_lns(w, r, i)
        a = f"blocks.{i}.att."
        w[a + "time_mix_k"] = r.mix()
        w[a + "time_mix_v"] = r.mix()
        w[a + "time_mix_r"] = r.mix()
        if gated:
            w[a + "time_mix_g"] = r.mix()
        w[a + "time_decay"] = r.uniform(-3.0, 0.5, *per_head_shape)  # exp(-exp(.))
        if sub == "5.0":
            w[a + "time_first"] = r.uniform(-1.0, 1.0, *per_head_shape)  # package uses exp(.)
        else:
            w[a + "time_faaaa"] = r.uniform(-1.0, 1.0, *per_head_shape)  # used raw
        w[a + "receptance.weight"] = r.linear(C, C)
        w[a + "key.weight"] = r.linear(C, C)
        w[a + "value.weight"] = r.linear(C, C)
        w[a + "output.weight"] = r.linear(C, C)
        if gated:
            w[a + "gate.weight"] = r.linear(C, C)
        w[a + "ln_x.weight"] = r.ln_weight()
        w[a + "ln_x.bias"] = r.ln_bias()
        add_ffn_classic(w, r, i, ["time_mix_k", "time_mix_r"])
    add_head(w, r)
    return w


def build_v6(r):
    w = {}
    add_embedding(w, r)
    for i in range(N_LAYER):
        add_block_lns(w, r, i)
        a = f"blocks.{i}.att."
        for m in ["x", "w", "k", "v", "r", "g"]:
            w[a + "time_maa_" + m] = r.mix()
        w[a + "time_maa_w1"] = r.normal(C, 5 * D_MIX, std=0.15)
        w[a + "time_maa_w2"] = r.normal(5, D_MIX, C, std=0.12)
        # decay = exp(-exp(time_decay + lora)); time_decay in [-4, 0] gives
        # decays from ~0.98 down to ~0.37 before the LoRA term.
        w[a + "time_decay"] = r.uniform(-4.0, 0.0, 1, 1, C)
        w[a + "time_decay_w1"] = r.normal(C, D_DECAY, std=0.15)
        w[a + "time_decay_w2"] = r.normal(D_DECAY, C, std=0.1)
        w[a + "time_faaaa"] = r.uniform(-1.0, 1.0, H, N)
        w[a + "receptance.weight"] = r.linear(C, C)
        w[a + "key.weight"] = r.linear(C, C)
        w[a + "value.weight"] = r.linear(C, C)
        w[a + "output.weight"] = r.linear(C, C)
        w[a + "gate.weight"] = r.linear(C, C)
        w[a + "ln_x.weight"] = r.ln_weight()
        w[a + "ln_x.bias"] = r.ln_bias()
        add_ffn_classic(w, r, i, ["time_maa_k", "time_maa_r"])
    add_head(w, r)
    return w


def build_v7(r):
    w = {}
    add_embedding(w, r)
    for i in range(N_LAYER):
        add_block_lns(w, r, i)
        a = f"blocks.{i}.att."
        for m in ["r", "w", "k", "v", "a", "g"]:
            w[a + "x_" + m] = r.mix()
        # decay = exp(-e^-0.5 * sigmoid(w0 + lora)) lies in (0.545, 1);
        # w0 in [-4, 1.5] spreads it over ~0.6 .. ~0.99.
        w[a + "w0"] = r.uniform(-4.0, 1.5, 1, 1, C)
        w[a + "w1"] = r.normal(C, D_W, std=0.2)
        w[a + "w2"] = r.normal(D_W, C, std=0.3)
        w[a + "a0"] = r.uniform(-1.0, 1.0, 1, 1, C)
        w[a + "a1"] = r.normal(C, D_A, std=0.2)
        w[a + "a2"] = r.normal(D_A, C, std=0.3)
        if i > 0:  # layer 0 has no value-residual LoRA
            w[a + "v0"] = r.uniform(-1.0, 1.0, 1, 1, C)
            w[a + "v1"] = r.normal(C, D_V, std=0.3)
            w[a + "v2"] = r.normal(D_V, C, std=0.4)
        w[a + "g1"] = r.normal(C, D_G, std=0.2)
        w[a + "g2"] = r.normal(D_G, C, std=0.4)
        w[a + "k_k"] = r.uniform(0.3, 1.3, 1, 1, C)
        w[a + "k_a"] = r.uniform(0.0, 1.0, 1, 1, C)
        w[a + "r_k"] = r.normal(H, N, std=0.3)
        w[a + "receptance.weight"] = r.linear(C, C)
        w[a + "key.weight"] = r.linear(C, C)
        w[a + "value.weight"] = r.linear(C, C)
        w[a + "output.weight"] = r.linear(C, C)
        w[a + "ln_x.weight"] = r.ln_weight()
        w[a + "ln_x.bias"] = r.ln_bias()
        f = f"blocks.{i}.ffn."
        w[f + "x_k"] = r.mix()
        w[f + "key.weight"] = r.linear(F, C)
        w[f + "value.weight"] = r.linear(C, F)
    add_head(w, r)
    return w


def build(name):
    """Returns (weights dict, tokens, tokens2) for model `name`."""
    r = Init(SEEDS[name])
    if name == "v4":
        w = build_v4(r)
    elif name == "v5_0":
        w = build_v5(r, "5.0")
    elif name == "v5_1":
        w = build_v5(r, "5.1")
    elif name == "v5_2":
        w = build_v5(r, "5.2")
    elif name == "v6":
        w = build_v6(r)
    elif name in ("v7", "v7_bf16"):
        w = build_v7(r)
    else:
        raise ValueError(name)
    if name == "v7_bf16":
        w = {k: v.to(torch.bfloat16) for k, v in w.items()}
    w = {k: v.contiguous().clone() for k, v in w.items()}  # own storage each
    tokens = r.ids(T)
    tokens2 = r.ids(T2)
    return w, tokens, tokens2


def write_checkpoints(out_dir):
    from safetensors.torch import load_file, save_file

    os.makedirs(out_dir, exist_ok=True)
    for name in MODELS:
        w, tokens, tokens2 = build(name)
        base = os.path.join(out_dir, name)
        torch.save(w, base + ".pth")
        save_file(w, base + ".safetensors", metadata={"format": "pt"})
        os.chmod(base + ".safetensors", 0o644)
        with open(base + ".tokens.json.tmp", "w") as fh:  # handed to the worker
            json.dump({"tokens": tokens.tolist(), "tokens2": tokens2.tolist()}, fh)
        # the two files must hold identical tensors
        a = torch.load(base + ".pth", map_location="cpu", weights_only=True)
        b = load_file(base + ".safetensors")
        assert list(a.keys()) == list(w.keys())
        assert set(a) == set(b)
        for k in a:
            assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and torch.equal(a[k], b[k]), k
        n_params = sum(v.numel() for v in w.values())
        print(f"[{name}] wrote {len(w)} tensors, {n_params} parameters, dtype {next(iter(w.values())).dtype}")


# ----------------------------------------------------------------------------
# Reference worker (runs in a child process with the right environment).


def package_version(dist):
    from importlib.metadata import version

    return version(dist)


def reference_worker(group, out_dir):
    from rwkv.model import RWKV  # env vars were set by the parent
    from safetensors.torch import save_file

    torch.set_grad_enabled(False)
    torch.manual_seed(0)
    names = SEVEN if group == "v7" else CLASSIC
    summary = {}
    for name in names:
        base = os.path.join(out_dir, name)
        with open(base + ".tokens.json.tmp") as fh:
            ids = json.load(fh)
        tokens, tokens2 = ids["tokens"], ids["tokens2"]

        print(f"\n================ {name} ================", flush=True)
        # always load from file: the package mutates the dict it loads
        model = RWKV(model=base, strategy="cpu fp32")
        if group == "v7":
            detected = "7.0"
            assert type(model).__name__ == "RWKV_x070", type(model)
            assert (model.n_head, model.head_size) == (H, N), (model.n_head, model.head_size)
        else:
            detected = f"{model.version:.1f}"
            assert model.version == EXPECTED_VERSION[name], (name, model.version)
            if model.version >= 5:
                assert model.args.n_head == H, model.args.n_head
        assert model.args.n_layer == N_LAYER

        logits_last, _ = model.forward(list(tokens), None)
        logits_seq_all, _ = model.forward(list(tokens), None, full_output=True)

        state = None
        steps = []
        for tok in tokens:
            out, state = model.forward([tok], state)
            steps.append(out.float().clone())
        logits_steps = torch.stack(steps)
        step_state = [s.clone() for s in state]

        _, seq_state = model.forward(list(tokens), None)
        seq_state = [s.clone() for s in seq_state]
        logits2_last, _ = model.forward(list(tokens2), [s.clone() for s in seq_state])

        # cross-check: continue the one-token path from its own state
        st = [s.clone() for s in step_state]
        for tok in tokens2:
            out2, st = model.forward([tok], st)

        logits_last = logits_last.float()
        logits_seq_all = logits_seq_all.float()
        logits2_last = logits2_last.float()
        assert logits_last.shape == (V,) and logits_seq_all.shape == (T, V)
        assert logits_steps.shape == (T, V) and logits2_last.shape == (V,)
        for t in (logits_last, logits_seq_all, logits_steps, logits2_last):
            assert torch.isfinite(t).all()

        def mad(x, y):
            return float((x - y).abs().max())

        state_diff = max(mad(a.float(), b.float()) for a, b in zip(seq_state, step_state))
        stats = {
            "detected_version": detected,
            "last_vs_steps": mad(logits_last, logits_steps[-1]),
            "last_vs_seq_all": mad(logits_last, logits_seq_all[-1]),
            "seq_all_vs_steps": mad(logits_seq_all, logits_steps),
            "state_seq_vs_steps": state_diff,
            "logits2_vs_steps": mad(logits2_last, out2.float()),
            "logits_std": float(logits_seq_all.std()),
            "logits_std_per_pos_mean": float(logits_seq_all.std(dim=1).mean()),
            "logits_absmax": float(logits_seq_all.abs().max()),
            "steps_spread_over_positions": float(logits_steps.std(dim=0).mean()),
        }
        summary[name] = stats

        meta = {
            "model": name,
            "rwkv_version": detected,
            "rwkv_package": package_version("rwkv"),
            "torch": torch.__version__,
            "strategy": "cpu fp32",
            "n_layer": str(N_LAYER),
            "n_embd": str(C),
            "n_head": str(H),
            "head_size": str(N),
            "ffn": str(F),
            "vocab": str(V),
            "self_agreement": {k: v for k, v in stats.items() if k != "detected_version"},
        }
        save_file(
            {
                "tokens": torch.tensor(tokens, dtype=torch.int64),
                "tokens2": torch.tensor(tokens2, dtype=torch.int64),
                "logits_last": logits_last.contiguous(),
                "logits_seq_all": logits_seq_all.contiguous(),
                "logits_steps": logits_steps.contiguous(),
                "logits2_last": logits2_last.contiguous(),
            },
            base + ".ref.safetensors",
            # one key only: safetensors writes its metadata map in random
            # order, a single JSON string keeps the file byte-for-byte stable
            metadata={"reference": json.dumps(meta, sort_keys=True)},
        )
        os.chmod(base + ".ref.safetensors", 0o644)
    with open(os.path.join(out_dir, f"summary_{group}.json.tmp"), "w") as fh:
        json.dump(summary, fh)


def run_worker(group, out_dir):
    env = dict(os.environ)
    env["RWKV_JIT_ON"] = "1"
    env["RWKV_CUDA_ON"] = "0"
    env["RWKV_RESCALE_LAYER"] = "0"  # fp32: no fp16 rescaling of the residual
    env["CUDA_VISIBLE_DEVICES"] = ""
    env.pop("RWKV_DE_VERSION", None)
    if group == "v7":
        env["RWKV_V7_ON"] = "1"
    else:
        env.pop("RWKV_V7_ON", None)
    cmd = [sys.executable, os.path.abspath(__file__), "--out", out_dir, "--reference-worker", group]
    subprocess.run(cmd, env=env, check=True)
    path = os.path.join(out_dir, f"summary_{group}.json.tmp")
    with open(path) as fh:
        summary = json.load(fh)
    os.remove(path)
    return summary


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=DEFAULT_OUT, help="output directory (default: tests/fixtures)")
    ap.add_argument("--reference-worker", choices=["classic", "v7"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    out_dir = os.path.abspath(args.out)

    if args.reference_worker:
        reference_worker(args.reference_worker, out_dir)
        return

    write_checkpoints(out_dir)
    summary = {}
    summary.update(run_worker("classic", out_dir))
    summary.update(run_worker("v7", out_dir))
    for name in MODELS:
        os.remove(os.path.join(out_dir, name + ".tokens.json.tmp"))

    print("\n=== reference summary (rwkv %s, torch %s) ===" % (package_version("rwkv"), torch.__version__))
    print(f"{'model':8} {'ver':>4} {'last-steps':>11} {'last-seqall':>11} {'seqall-steps':>12} "
          f"{'state':>9} {'l2-steps':>9} {'std':>6} {'absmax':>7}")
    for name in MODELS:
        s = summary[name]
        print(f"{name:8} {s['detected_version']:>4} {s['last_vs_steps']:11.3e} {s['last_vs_seq_all']:11.3e} "
              f"{s['seq_all_vs_steps']:12.3e} {s['state_seq_vs_steps']:9.2e} {s['logits2_vs_steps']:9.2e} "
              f"{s['logits_std']:6.3f} {s['logits_absmax']:7.3f}")
    total = 0
    for name in MODELS:
        for ext in (".pth", ".safetensors", ".ref.safetensors"):
            total += os.path.getsize(os.path.join(out_dir, name + ext))
    print(f"total size of generated files: {total} bytes")


if __name__ == "__main__":
    main()
