#!/usr/bin/env python3
"""Benchmarks `rwkv-cli serve`: aggregate decode throughput with 1, 2, 4, 8 concurrent streams,
and the time to first token of a request sharing a long prefix with a cached one.

    python3 scripts/make_random_v7.py /tmp/v7.safetensors     # the RWKV-7 0.1B shape (numpy)
    python3 scripts/bench_serve.py --model /tmp/v7.safetensors [--quant q8_0] [--tokens 64]

Python 3 standard library only. Starts the server itself (release build by default) on a free
loopback port and stops it at the end. Figures on a shared machine vary between runs: compare
rows of one run, not across runs.

- decode: N clients send greedy completions of --tokens tokens at once (short, distinct
  prompts); aggregate tok/s = all completion tokens / wall time of the round (median of
  --repeat rounds; each round runs every N in turn). Speed-up is against one stream.
- prefix: a ~2,000-token text P is sent once (max_tokens 1) so its state is cached; then
  P + a question is streamed and the time to its first token measured (warm). Cold: the same
  with a different text Q of the same length that was never sent (the server reads it all).
"""
import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start(binary, args):
    p = subprocess.Popen([binary, "serve", "--port", "0"] + args,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        line = p.stderr.readline()
        if not line:
            break
        m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
        if m:
            threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()
            return p, int(m.group(1))
    p.kill()
    sys.exit("the server did not start")


def post(port, path, body, stream=False):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    return urllib.request.urlopen(req, timeout=600)


def completion(port, model, prompt, n):
    with post(port, "/v1/completions", {"model": model, "prompt": prompt, "max_tokens": n,
                                        "temperature": 0}) as r:
        return json.load(r)


def ttft(port, model, prompt):
    """Seconds to the first streamed text, and the usage of the request."""
    t0 = time.perf_counter()
    first = None
    usage = None
    with post(port, "/v1/completions", {"model": model, "prompt": prompt, "max_tokens": 8,
                                        "temperature": 0, "stream": True,
                                        "stream_options": {"include_usage": True}}) as r:
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            ev = json.loads(line[6:])
            if first is None and ev["choices"] and ev["choices"][0]["text"]:
                first = time.perf_counter() - t0
            if ev.get("usage"):
                usage = ev["usage"]
    return first, usage


def words(seed, n):
    rng = random.Random(seed)
    vocab = ["the", "of", "river", "morning", "light", "said", "house", "garden", "letter",
             "walked", "quiet", "never", "again", "before", "window", "evening", "friend"]
    return " ".join(rng.choice(vocab) for _ in range(n))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/rwkv-cli"))
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--quant", default=None)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--streams", default="1,2,4,8")
    ap.add_argument("--prefix-tokens", type=int, default=2000)
    args = ap.parse_args()
    extra = ["--model", args.model]
    if args.dtype:
        extra += ["--dtype", args.dtype]
    if args.quant:
        extra += ["--quant", args.quant]
    proc, port = start(args.bin, extra + ["--max-batch", "8"])
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=60) as r:
            model = json.load(r)["data"][0]["id"]
        completion(port, model, "warm up", 4)
        print(f"model {args.model} ({model}), {args.tokens} tokens per stream, "
              f"median of {args.repeat}")
        print("streams | aggregate tok/s | per stream tok/s | speed-up")
        counts = [int(s) for s in args.streams.split(",")]
        # Rounds interleave the stream counts, so that a busy spell of a shared machine
        # slows every count alike rather than one.
        rates = {n: [] for n in counts}
        for rep in range(args.repeat):
            for n in counts:
                results = [None] * n

                def one(i):
                    results[i] = completion(port, model, f"Story {rep} {i}:", args.tokens)

                threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
                t0 = time.perf_counter()
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                wall = time.perf_counter() - t0
                total = sum(r["usage"]["completion_tokens"] for r in results)
                rates[n].append(total / wall)
        base = None
        for n in counts:
            rate = statistics.median(rates[n])
            base = base or rate
            print(f"{n:7d} | {rate:15.1f} | {rate / n:16.1f} | {rate / base:7.2f}x")

        # About one World token per word of this text (the usage line says how many).
        p_text = words(1, args.prefix_tokens)
        q_text = words(2, args.prefix_tokens)
        question = "\n\nQuestion: what happened next?\nAnswer:"
        cold, cu = ttft(port, model, q_text + question)
        completion(port, model, p_text, 1)  # caches the state of P
        warm, wu = ttft(port, model, p_text + question)
        print(f"prefix: cold TTFT {cold * 1000:.0f} ms ({cu['prompt_tokens']} prompt tokens, "
              f"{cu['prompt_tokens_details']['cached_tokens']} cached); "
              f"warm TTFT {warm * 1000:.0f} ms ({wu['prompt_tokens']} prompt tokens, "
              f"{wu['prompt_tokens_details']['cached_tokens']} cached): {cold / warm:.1f}x")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    main()
