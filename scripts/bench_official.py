#!/usr/bin/env python3
"""Time the official RWKV package (BlinkDL's `rwkv` on PyPI, torch on the CPU) on the
same work as `rwkv-cli bench --context 1024 --segments 1 --decode-tokens N`.

    python3 scripts/bench_official.py MODEL.safetensors [--threads 2] [--context 1024]
                                      [--decode-tokens 32] [--strategy "cpu fp32"]

Prints one JSON object on stdout:
    {"prefill_tokens_per_second", "decode_ms_per_token", "peak_rss_bytes", ...}

The prompt is a fixed list of pseudo-random token ids of the given length (rwkv-cli's bench
uses its built-in text instead; speed does not depend on which ids they are). Prefill is one
`forward(prompt, None)` call (the package's sequence path); decode is `forward([token],
state)` once per token, greedy, and the median step is kept. The weight bytes a decode step
reads (every tensor the package holds but the embedding, in the dtype it holds them) are
printed too, so that its fraction of the memory bandwidth can be set beside ours.
A warm-up pass of 16 tokens comes first, so that the TorchScript functions are compiled
before the clock starts. Needs the packages in scripts/requirements-fixtures.txt.

Used by scripts/bench_precisions.sh (OFFICIAL=1) so that our rows and the official
package's come from one run on the same checkpoint.
"""

import argparse
import contextlib
import json
import os
import resource
import statistics
import sys
import tempfile
import time


def load(path, strategy):
    """The package's model for `path` (.pth, or .safetensors written to a temporary .pth)."""
    import torch
    from rwkv.model import RWKV

    with tempfile.TemporaryDirectory() as tmp:
        stem = path[: -len(".pth")] if path.endswith(".pth") else None
        if stem is None:
            # The package only opens `<stem>.pth`: write the same tensors there once.
            from safetensors.torch import load_file

            stem = os.path.join(tmp, "model")
            torch.save(load_file(path), stem + ".pth")
        t0 = time.perf_counter()
        model = RWKV(stem, strategy)
        return model, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="RWKV-7 checkpoint, .safetensors or .pth")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--decode-tokens", type=int, default=32)
    ap.add_argument("--strategy", default="cpu fp32")
    args = ap.parse_args()

    # The package reads these at import time; RWKV_V7_ON=1 makes RWKV the x070 class.
    os.environ["RWKV_V7_ON"] = "1"
    os.environ.setdefault("RWKV_JIT_ON", "1")  # 0 to compare without TorchScript
    os.environ["RWKV_CUDA_ON"] = "0"
    import torch

    torch.set_num_threads(args.threads)
    # The package prints banners on stdout; stdout is for the JSON line only.
    with contextlib.redirect_stdout(sys.stderr):
        model, load_s = load(args.model, args.strategy)

    vocab = model.z["emb.weight"].shape[0]
    weight_bytes = sum(t.numel() * t.element_size() for k, t in model.z.items() if k != "emb.weight")
    prompt = [(i * 7919 + 13) % vocab for i in range(args.context)]
    with torch.no_grad():
        model.forward(prompt[:16], None)  # warm-up
        t0 = time.perf_counter()
        out, state = model.forward(prompt, None)
        prefill_s = time.perf_counter() - t0
        steps = []
        token = int(out.argmax())
        for _ in range(args.decode_tokens):
            t0 = time.perf_counter()
            out, state = model.forward([token], state)
            steps.append(time.perf_counter() - t0)
            token = int(out.argmax())

    print(
        json.dumps(
            {
                "system": "official rwkv package",
                "strategy": args.strategy,
                "threads": args.threads,
                "torch": torch.__version__,
                "load_seconds": load_s,
                "context": args.context,
                "prefill_tokens_per_second": args.context / prefill_s,
                "decode_tokens": args.decode_tokens,
                "decode_ms_per_token": 1e3 * statistics.median(steps),
                "weight_bytes_per_token": weight_bytes,
                # ru_maxrss is in KiB on Linux.
                "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            }
        )
    )


if __name__ == "__main__":
    sys.exit(main())
