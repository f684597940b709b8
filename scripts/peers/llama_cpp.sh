#!/usr/bin/env bash
# llama.cpp as an EXTERNAL engine of scripts/bench_precisions.sh and scripts/bench_scale.sh:
# one line per precision in the EXTERNAL file (see scripts/peers/engines.txt),
#
#   llama.cpp q8_0 scripts/peers/llama_cpp.sh q8_0
#
# Runs with the bench scripts' $MODEL (our safetensors checkpoint), $THREADS, $CONTEXT and
# $DECODE_TOKENS and prints one JSON line:
#   - prefill_tokens_per_second, decode_ms_per_token: llama-bench's `-p $CONTEXT` and
#     `-n $DECODE_TOKENS` tests, after llama-bench's warm-up (the median of LLAMA_BENCH_REPS
#     samples; default 1, as the bench scripts take the median over their repetitions);
#   - weight_bytes_per_token: the GGUF's tensor bytes less token_embd (a decode step reads one
#     row of it), as rwkv-cli's bench counts its own (decode_weight_bytes in src/cli/bench.rs);
#   - ready_seconds, ready_seconds_second_run: two runs of `llama-completion -n 1 -p Hi`
#     (process start, load, warm-up, the prompt, one token), the GGUF read into the page cache
#     first as the bench scripts do with our checkpoint. The one-off conversion to GGUF is not
#     in them;
#   - peak_rss_bytes: llama-bench's maximum resident set (its mapped GGUF included).
# Take its figures on an otherwise idle machine: with a third busy process on two cores its
# decode fell 3-30x here (its threads wait for each other at every op), ours far less.
#
# Environment: LLAMA_CPP_BIN, the folder of llama-bench, llama-quantize, llama-completion
# (default /work/peers/llama-build/bin); PEER_DIR, where the GGUFs live (default
# /work/peers/gguf), named after the checkpoint: rwkv-v7-0.1b-random-bf16.safetensors ->
# rwkv-v7-0.1b-random-bf16-q8_0.gguf; PEER_PYTHON, a python with `gguf` and `numpy` (default
# python3); LLAMA_BENCH_REPS (default 1). A missing GGUF is made on first use, as a llama.cpp
# user makes one: an f32 GGUF in llama.cpp's converter layout (scripts/make_gguf_fixture.py;
# its peak memory is ~3.5× the bf16 checkpoint: 10 GB for 1.5B), then `llama-quantize` to the
# precision. Making them is not timed.
#
# Rebuilding llama.cpp offline (only package registries reachable): the PyPI sdist of
# llama-cpp-python vendors llama.cpp (0.3.36: ggml 0.25.3, with src/models/rwkv7.cpp).
#   curl -LO https://files.pythonhosted.org/packages/ec/e9/e7de2b0463ea3ffbf0ede6cb21b58c1258a8f6521aae45ca773a59fe7cf3/llama_cpp_python-0.3.36.tar.gz
#   tar xzf llama_cpp_python-0.3.36.tar.gz   # sha256 832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
#   pip install cmake ninja gguf numpy
#   cmake -S llama_cpp_python-0.3.36/vendor/llama.cpp -B llama-build -G Ninja \
#     -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
#     -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF
#   cmake --build llama-build -j2 --target llama-bench llama-quantize llama-completion
# (7 min 20 s on two shared Zen 5 cores, 5 min 23 s of CPU.) Greedy decoding of our random
# 0.1B and 1.5B checkpoints gives the same tokens in llama.cpp (f32, f16, bf16, q8_0 GGUFs) as
# in rwkv-cli. rwkv.cpp has no RWKV-7 source in the registries (PyPI's rwkv-cpp and
# rwkv-cpp-python are 0.0.1 of April 2023, RWKV-4 only).
set -euo pipefail
prec=${1:?usage: llama_cpp.sh PRECISION (f32, f16, bf16, q8_0, q4_0, ...)}
bin=${LLAMA_CPP_BIN:-/work/peers/llama-build/bin}
dir=${PEER_DIR:-/work/peers/gguf}
py=${PEER_PYTHON:-python3}
reps=${LLAMA_BENCH_REPS:-1}
here=$(cd "$(dirname "$0")" && pwd)
stem=$dir/$(basename "$MODEL" .safetensors)
gguf=$stem-$prec.gguf

if [ ! -f "$gguf" ]; then
    mkdir -p "$dir"
    if [ ! -f "$stem-f32.gguf" ]; then
        "$py" "$here/../make_gguf_fixture.py" "$MODEL" "$stem-f32.part" --type f32 >&2
        mv "$stem-f32.part" "$stem-f32.gguf"
    fi
    if [ "$prec" != f32 ]; then
        "$bin/llama-quantize" "$stem-f32.gguf" "$gguf.part" "${prec^^}" >&2
        mv "$gguf.part" "$gguf"
    fi
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
ready() {
    local t0 t1
    t0=$(date +%s.%N)
    "$bin/llama-completion" -m "$gguf" -t "$THREADS" -p Hi -n 1 -no-cnv --temp 0 </dev/null >/dev/null 2>"$tmp/err" ||
        { tail -3 "$tmp/err" >&2; return 1; }
    t1=$(date +%s.%N)
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f\n", b - a }'
}
cat "$gguf" >/dev/null
first=$(ready)
second=$(ready)
/usr/bin/time -f %M -o "$tmp/rss" "$bin/llama-bench" -m "$gguf" -t "$THREADS" -p "$CONTEXT" \
    -n "$DECODE_TOKENS" -r "$reps" -o json >"$tmp/bench.json" 2>"$tmp/err" ||
    { tail -3 "$tmp/err" >&2; exit 1; }

"$py" - "$gguf" "$tmp/bench.json" "$(cat "$tmp/rss")" "$first" "$second" <<'EOF'
import json, statistics, sys
import gguf

path, bench, rss_kb, first, second = sys.argv[1:6]
tests = json.load(open(bench))
pp = next(t for t in tests if t["n_prompt"] > 0 and t["n_gen"] == 0)
tg = next(t for t in tests if t["n_gen"] > 0 and t["n_prompt"] == 0)
weights = sum(int(t.n_bytes) for t in gguf.GGUFReader(path).tensors if t.name != "token_embd.weight")
print(json.dumps({
    "engine": f"llama.cpp {tests[0].get('build_commit', '?')} ({tests[0].get('model_type', '?')})",
    "prefill_tokens_per_second": pp["n_prompt"] / (statistics.median(pp["samples_ns"]) / 1e9),
    "decode_ms_per_token": statistics.median(tg["samples_ns"]) / 1e6 / tg["n_gen"],
    "weight_bytes_per_token": weights,
    "peak_rss_bytes": int(rss_kb) * 1024,
    "ready_seconds": float(first),
    "ready_seconds_second_run": float(second),
}))
EOF
