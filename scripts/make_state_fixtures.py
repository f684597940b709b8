#!/usr/bin/env python3
"""Build state-tuning and RWKV-7 DeepEmbed fixtures and record the official logits.

Usage, from the repository root, with the python3 of scripts/requirements-fixtures.txt
(see scripts/make_fixtures.py, whose model fixtures this script builds on):

    /tmp/rwkv-ref/bin/python scripts/make_state_fixtures.py            # writes tests/fixtures/
    /tmp/rwkv-ref/bin/python scripts/make_state_fixtures.py --out DIR  # somewhere else

A developer tool, never run in CI; it writes only new files and never touches the ones
make_fixtures.py writes (it reads v5_2.pth, v6.pth and v7.pth from the output directory).

1. State-tuned initial states, for NAME in v5_2 v6 v7:

  NAME.state.pth          {"blocks.{i}.att.time_state": (H, N, N)} for each layer, as
                          RWKV-PEFT saves a state-tuning checkpoint (random values, fixed
                          seed; stored as f32 (v5_2), bf16 (v6) and f16 (v7))
  NAME.state.safetensors  the same tensors
  NAME.state.ref.safetensors  the official package's outputs started from that state, in
                          the layout of make_fixtures.py's NAME.ref.safetensors (tokens,
                          tokens2, logits_last, logits_seq_all, logits_steps, logits2_last),
                          every run starting from the state instead of zeros.

  How the reference state is built, exactly as the official loaders do:
  - v5_2, v6: the package itself. The time_state tensors are merged into the model's
    checkpoint as ChatRWKV's rwkv_state_merger.py does (a copy of every key), and the
    package's class RWKV, seeing `.time_state` keys, starts `forward(tokens, None)` from
    `time_state.transpose(1,2)` (rwkv/model.py). Cross-checked against a state list built
    by hand as RWKV-Runner's load_rwkv_state does (`.transpose(1, 2)` for version < 7).
  - v7: the package's RWKV_x070 never reads time_state, so the state list is built as
    RWKV-Runner's load_rwkv_state does for version >= 7: per layer [zeros(C),
    time_state.float() as stored, zeros(C)], handed to forward(tokens, state).

2. RWKV-7 DeepEmbed (BlinkDL's rwkv7a files), NAME = v7_de:

  v7_de.pth, v7_de.safetensors  a small random v7 model with the DeepEmbed tensors per
                          layer: ffn.s_emb.weight (V, 32*32), ffn.s_emb_x.weight (32*32, C),
                          ffn.s1 (C, 32), ffn.s2 (32, F), ffn.s0 (1, 1, F), and layer 0's
                          unused att.v0/v1/v2 as the published files have them. Every tensor
                          bf16 (as published), vocab 32 to keep the files small.
  v7_de.ref.safetensors   RWKV_x070 with RWKV_DE_VERSION=1 ('cpu fp32'), same layout.

The 32 is fixed by the official code (`semb_.view(32,32)`).
"""

import argparse
import json
import os
import subprocess
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402  (sizes, random helpers, the v7 builder)

STATES = ["v5_2", "v6", "v7"]
STATE_DTYPES = {"v5_2": torch.float32, "v6": torch.bfloat16, "v7": torch.float16}
STATE_SEEDS = {"v5_2": 3052, "v6": 3006, "v7": 3007}
STATE_STD = 1.0
DE_SEED = 4007
DE_VOCAB = 32
DE_R = 32  # fixed by the official code

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO_ROOT, "tests", "fixtures")


def build_state(name):
    r = mf.Init(STATE_SEEDS[name])
    st = {}
    for i in range(mf.N_LAYER):
        st[f"blocks.{i}.att.time_state"] = r.normal(mf.H, mf.N, mf.N, std=STATE_STD).to(STATE_DTYPES[name])
    return {k: v.contiguous().clone() for k, v in st.items()}, r.ids(mf.T), r.ids(mf.T2)


def build_de():
    """A v7 model (make_fixtures' builder, vocab DE_VOCAB) plus the DeepEmbed tensors."""
    saved_v = mf.V
    mf.V = DE_VOCAB  # the builders read the module's vocabulary size
    try:
        r = mf.Init(DE_SEED)
        w = mf.build_v7(r)
        C, F, R = mf.C, mf.F, DE_R
        out = {}
        for k, v in w.items():
            out[k] = v
            if k == "blocks.0.att.a2":  # layer 0's v0/v1/v2 exist in the files, unused
                out["blocks.0.att.v0"] = r.uniform(-1.0, 1.0, 1, 1, C)
                out["blocks.0.att.v1"] = r.normal(C, 4, std=0.3)
                out["blocks.0.att.v2"] = r.normal(4, C, std=0.4)
            if k.endswith(".ffn.value.weight"):
                f = k[: -len("value.weight")]
                # scale = s2^T (E^T (s1^T x)) + s0 with E = s_emb[tok] + s_emb_x x0: values
                # chosen so that the scale varies by about +-0.5 around s0 ~ 1.
                out[f + "s_emb.weight"] = r.normal(DE_VOCAB, R * R, std=0.25)
                out[f + "s_emb_x.weight"] = r.normal(R * R, C, std=0.25 / C**0.5)
                out[f + "s1"] = r.normal(C, R, std=0.5 / C**0.5)
                out[f + "s2"] = r.normal(R, F, std=0.25 / R**0.5)
                out[f + "s0"] = r.uniform(0.5, 1.5, 1, 1, F)
        out = {k: v.to(torch.bfloat16).contiguous().clone() for k, v in out.items()}
        return out, r.ids(mf.T), r.ids(mf.T2)
    finally:
        mf.V = saved_v


def save_pair(tensors, base):
    """torch.save + safetensors with identical tensors; checks the round trip."""
    from safetensors.torch import load_file, save_file

    torch.save(tensors, base + ".pth")
    save_file(tensors, base + ".safetensors", metadata={"format": "pt"})
    for ext in (".pth", ".safetensors"):
        os.chmod(base + ext, 0o644)
    a = torch.load(base + ".pth", map_location="cpu", weights_only=True)
    b = load_file(base + ".safetensors")
    assert list(a.keys()) == list(tensors.keys()) and set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def write_inputs(out_dir):
    for name in STATES:
        st, tokens, tokens2 = build_state(name)
        save_pair(st, os.path.join(out_dir, name + ".state"))
        with open(os.path.join(out_dir, name + ".state.tokens.json.tmp"), "w") as fh:
            json.dump({"tokens": tokens.tolist(), "tokens2": tokens2.tolist()}, fh)
        print(f"[{name}.state] {len(st)} tensors {tuple(next(iter(st.values())).shape)} {STATE_DTYPES[name]}")
    w, tokens, tokens2 = build_de()
    save_pair(w, os.path.join(out_dir, "v7_de"))
    with open(os.path.join(out_dir, "v7_de.tokens.json.tmp"), "w") as fh:
        json.dump({"tokens": tokens.tolist(), "tokens2": tokens2.tolist()}, fh)
    print(f"[v7_de] {len(w)} tensors, {sum(v.numel() for v in w.values())} parameters, bf16")


# ----------------------------------------------------------------------------
# Reference worker (a child process: the package reads its switches at import).


def record(model, tokens, tokens2, fresh_state, vocab):
    """The six outputs of make_fixtures.py, every run starting from fresh_state()."""
    logits_last, seq_state = model.forward(list(tokens), fresh_state())
    logits_seq_all, _ = model.forward(list(tokens), fresh_state(), full_output=True)
    state = fresh_state()
    steps = []
    for tok in tokens:
        out, state = model.forward([tok], state)
        steps.append(out.float().clone())
    logits_steps = torch.stack(steps)
    logits2_last, _ = model.forward(list(tokens2), [s.clone() for s in seq_state])
    zero_last, _ = model.forward(list(tokens), None)
    res = {
        "tokens": torch.tensor(tokens, dtype=torch.int64),
        "tokens2": torch.tensor(tokens2, dtype=torch.int64),
        "logits_last": logits_last.float().contiguous(),
        "logits_seq_all": logits_seq_all.float().contiguous(),
        "logits_steps": logits_steps.contiguous(),
        "logits2_last": logits2_last.float().contiguous(),
    }
    assert res["logits_seq_all"].shape == (len(tokens), vocab)
    for t in res.values():
        if t.dtype == torch.float32:
            assert torch.isfinite(t).all()

    def mad(x, y):
        return float((x - y).abs().max())

    stats = {
        "last_vs_steps": mad(res["logits_last"], logits_steps[-1]),
        "seq_all_vs_steps": mad(res["logits_seq_all"], logits_steps),
        "logits_std": float(res["logits_seq_all"].std()),
    }
    if fresh_state() is not None:
        # How much the initial state matters: the same prompt from zeros.
        stats["last_vs_zero_state"] = mad(res["logits_last"], zero_last.float())
        first_zero, _ = model.forward([tokens[0]], None)
        stats["first_vs_zero_state"] = mad(logits_steps[0], first_zero.float())
    return res, stats


def save_ref(res, meta, path):
    from safetensors.torch import save_file

    save_file(res, path, metadata={"reference": json.dumps(meta, sort_keys=True)})
    os.chmod(path, 0o644)


def reference_worker(group, out_dir):
    from importlib.metadata import version

    from rwkv.model import RWKV  # the parent set the environment

    torch.set_grad_enabled(False)
    torch.manual_seed(0)
    summary = {}
    common = {"rwkv_package": version("rwkv"), "torch": torch.__version__, "strategy": "cpu fp32"}

    def ids(name):
        with open(os.path.join(out_dir, name + ".tokens.json.tmp")) as fh:
            d = json.load(fh)
        return d["tokens"], d["tokens2"]

    if group == "de":
        tokens, tokens2 = ids("v7_de")
        model = RWKV(model=os.path.join(out_dir, "v7_de"), strategy="cpu fp32")
        assert type(model).__name__ == "RWKV_x070"
        res, stats = record(model, tokens, tokens2, lambda: None, DE_VOCAB)
        # How much DeepEmbed matters: the package without RWKV_DE_VERSION ignores its tensors.
        plain = torch.load(os.path.join(out_dir, "v7_de.plain.tmp"))
        os.remove(os.path.join(out_dir, "v7_de.plain.tmp"))
        stats["last_vs_without_deep_embed"] = float((plain - res["logits_last"]).abs().max())
        summary["v7_de"] = stats
        meta = dict(common, model="v7_de", rwkv_version="7.0", RWKV_DE_VERSION="1", vocab=str(DE_VOCAB),
                    self_agreement=stats)
        save_ref(res, meta, os.path.join(out_dir, "v7_de.ref.safetensors"))
    else:
        names = ["v7"] if group == "v7" else ["v5_2", "v6"]
        for name in names:
            from safetensors.torch import load_file

            tokens, tokens2 = ids(name + ".state")
            ts = load_file(os.path.join(out_dir, name + ".state.safetensors"))
            C = mf.C

            def by_hand(transpose):
                # RWKV-Runner's load_rwkv_state (backend-python/utils/rwkv.py)
                st = []
                for i in range(mf.N_LAYER):
                    t = ts[f"blocks.{i}.att.time_state"]
                    t = t.transpose(1, 2) if transpose else t
                    st += [torch.zeros(C), t.to(dtype=torch.float).contiguous(), torch.zeros(C)]
                return st

            if group == "v7":
                model = RWKV(model=os.path.join(out_dir, name), strategy="cpu fp32")
                assert type(model).__name__ == "RWKV_x070"
                res, stats = record(model, tokens, tokens2, lambda: by_hand(False), mf.V)
                how = "RWKV-Runner load_rwkv_state, version >= 7: time_state as stored"
                # Stored the other way round, the logits would differ by this much.
                wrong, _ = model.forward(list(tokens[:1]), by_hand(True))
                stats["first_vs_transposed_state"] = float((wrong.float() - res["logits_steps"][0]).abs().max())
                # v7_de without DeepEmbed, for the de worker's summary.
                tokens_de, _ = ids("v7_de")
                plain_model = RWKV(model=os.path.join(out_dir, "v7_de"), strategy="cpu fp32")
                plain, _ = plain_model.forward(list(tokens_de), None)
                torch.save(plain.float(), os.path.join(out_dir, "v7_de.plain.tmp"))
            else:
                # ChatRWKV's rwkv_state_merger.py: copy the state's keys into the model.
                w = torch.load(os.path.join(out_dir, name + ".pth"), map_location="cpu", weights_only=True)
                for k, v in ts.items():
                    w[k] = v.clone()
                merged = os.path.join(out_dir, name + ".merged.tmp")
                torch.save(w, merged + ".pth")
                model = RWKV(model=merged, strategy="cpu fp32")
                os.remove(merged + ".pth")
                assert model.args.time_state, "the package did not see the merged time_state"
                res, stats = record(model, tokens, tokens2, lambda: None, mf.V)
                # Cross-check: the hand-built list (transposed) gives the same logits.
                by_list, _ = model.forward(list(tokens), by_hand(True))
                stats["merged_vs_hand_built"] = float((by_list.float() - res["logits_last"]).abs().max())
                assert stats["merged_vs_hand_built"] == 0.0, stats
                zero = [torch.zeros(C), torch.zeros(mf.H, mf.N, mf.N), torch.zeros(C)] * mf.N_LAYER
                zero_last, _ = model.forward(list(tokens), zero)
                stats["last_vs_zero_state"] = float((zero_last.float() - res["logits_last"]).abs().max())
                zero = [torch.zeros(C), torch.zeros(mf.H, mf.N, mf.N), torch.zeros(C)] * mf.N_LAYER
                first_zero, _ = model.forward(list(tokens[:1]), zero)
                stats["first_vs_zero_state"] = float((first_zero.float() - res["logits_steps"][0]).abs().max())
                wrong, _ = model.forward(list(tokens[:1]), by_hand(False))
                stats["first_vs_transposed_state"] = float((wrong.float() - res["logits_steps"][0]).abs().max())
                how = ("rwkv.model.RWKV on the model with the state merged in (rwkv_state_merger.py): "
                       "time_state.transpose(1,2)")
            summary[name + ".state"] = stats
            meta = dict(common, model=name, state=name + ".state", state_from=how, self_agreement=stats)
            save_ref(res, meta, os.path.join(out_dir, name + ".state.ref.safetensors"))
    with open(os.path.join(out_dir, f"summary_state_{group}.json.tmp"), "w") as fh:
        json.dump(summary, fh)


def run_worker(group, out_dir):
    env = dict(os.environ)
    env.update(RWKV_JIT_ON="1", RWKV_CUDA_ON="0", RWKV_RESCALE_LAYER="0", CUDA_VISIBLE_DEVICES="")
    env.pop("RWKV_V7_ON", None)
    env.pop("RWKV_DE_VERSION", None)
    if group in ("v7", "de"):
        env["RWKV_V7_ON"] = "1"
    if group == "de":
        env["RWKV_DE_VERSION"] = "1"
    cmd = [sys.executable, os.path.abspath(__file__), "--out", out_dir, "--reference-worker", group]
    subprocess.run(cmd, env=env, check=True)
    path = os.path.join(out_dir, f"summary_state_{group}.json.tmp")
    with open(path) as fh:
        s = json.load(fh)
    os.remove(path)
    return s


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=DEFAULT_OUT, help="output directory (default: tests/fixtures)")
    ap.add_argument("--reference-worker", choices=["classic", "v7", "de"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    out_dir = os.path.abspath(args.out)
    if args.reference_worker:
        reference_worker(args.reference_worker, out_dir)
        return
    for name in STATES:
        assert os.path.exists(os.path.join(out_dir, name + ".pth")), f"run make_fixtures.py first ({name}.pth)"
    write_inputs(out_dir)
    summary = {}
    for group in ("classic", "v7", "de"):
        summary.update(run_worker(group, out_dir))
    for name in [n + ".state" for n in STATES] + ["v7_de"]:
        os.remove(os.path.join(out_dir, name + ".tokens.json.tmp"))
    print("\n=== reference summary ===")
    for k, v in summary.items():
        print(k, json.dumps(v))
    total = 0
    for name in [n + ".state" for n in STATES] + ["v7_de"]:
        for ext in (".pth", ".safetensors", ".ref.safetensors"):
            total += os.path.getsize(os.path.join(out_dir, name + ext))
    print(f"total size of generated files: {total} bytes")


if __name__ == "__main__":
    main()
