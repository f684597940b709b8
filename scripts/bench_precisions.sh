#!/usr/bin/env bash
# Decode and prefill speed of rwkv-cli at every precision, on a random checkpoint of the
# official RWKV-7 0.1B shape (12 layers, width 768, vocab 65536), printed as a markdown table.
#
#   scripts/bench_precisions.sh                      # 5 repetitions, 2 threads
#   REPS=9 THREADS=2 scripts/bench_precisions.sh
#   BASELINE=/path/to/older/rwkv-cli scripts/bench_precisions.sh   # add its rows, same run
#   BUILDS="patched=/tmp/a/rwkv-cli other=/tmp/b/rwkv-cli" scripts/bench_precisions.sh
#
# Each repetition runs `rwkv-cli bench` once per precision, in turn (so that a slow spell of
# the machine touches every precision alike): a 1024-token prompt through the sequence path
# (prefill) and 32 tokens decoded one at a time (the median step is kept), with the weight
# traffic of a decode step next to the memory bandwidth measured in the same process. The
# table gives the median over repetitions of each figure. Needs python3 (and numpy, to build
# the checkpoint once).
set -euo pipefail
cd "$(dirname "$0")/.."

REPS=${REPS:-5}
THREADS=${THREADS:-2}
CONTEXT=${CONTEXT:-1024}
DECODE_TOKENS=${DECODE_TOKENS:-32}
PRECISIONS=${PRECISIONS:-"f32 bf16 f16 q8_0 q4_0"}
MODEL=${MODEL:-${TMPDIR:-/tmp}/rwkv-v7-0.1b-random-bf16.safetensors}
BASELINE=${BASELINE:-}
BUILDS=${BUILDS:-}
[ -n "$BASELINE" ] && BUILDS="baseline=$BASELINE $BUILDS"
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

cargo build --release --quiet
BIN=target/release/rwkv-cli
if [ ! -f "$MODEL" ]; then
    echo "building the random 0.1B-shaped checkpoint at $MODEL" >&2
    python3 scripts/make_random_v7.py "$MODEL"
fi

run() { # label binary precision rep
    local label=$1 bin=$2 p=$3 rep=$4 flag=(--dtype "$p")
    case $p in q*) flag=(--quant "$p") ;; esac
    if "$bin" --threads "$THREADS" bench --model "$MODEL" --context "$CONTEXT" --segments 1 \
        --decode-tokens "$DECODE_TOKENS" "${flag[@]}" --json >"$OUT/$label.$p.$rep.json" 2>"$OUT/err"; then
        echo -n "." >&2
    else
        if [ "$label" = rwkv-cli ]; then
            echo "($label $p failed: $(tail -1 "$OUT/err"))" >&2
        fi
        rm -f "$OUT/$label.$p.$rep.json"
    fi
}

echo -n "running $REPS repetitions" >&2
for rep in $(seq "$REPS"); do
    for p in $PRECISIONS; do
        run rwkv-cli "$BIN" "$p" "$rep"
        for b in $BUILDS; do
            # Older builds may not know a format: their failed runs are skipped.
            run "${b%%=*}" "${b#*=}" "$p" "$rep"
        done
    done
done
echo >&2

python3 - "$OUT" "$REPS" "$THREADS" "$CONTEXT" <<'EOF'
import glob, json, os, statistics, subprocess, sys

out, reps, threads, context = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
rows = {}
for path in sorted(glob.glob(os.path.join(out, "*.json"))):
    label, prec, _rep, _ = os.path.basename(path).rsplit(".", 3)
    v = json.load(open(path))
    d = v.get("decode") or {}
    ms = d.get("ms_per_token", v.get("decode_ms_per_token_depth_0"))
    r = rows.setdefault((label, prec), {k: [] for k in ("ms", "prefill", "rss", "traffic", "bw", "frac", "bound")})
    r["ms"].append(ms)
    r["prefill"].append(v["prefill_tokens_per_second"])
    r["rss"].append((v.get("peak_rss_bytes") or 0) / 2**20)
    if d:
        r["traffic"].append(d["weight_bandwidth_bytes_per_second"] / 1e9)
        r["bw"].append(d["memory_read_bandwidth_bytes_per_second"] / 1e9)
        r["frac"].append(100 * d["fraction_of_memory_bandwidth"])
        r["bound"].append(d["bandwidth_bound_ms_per_token"])

med = lambda xs: statistics.median(xs) if xs else float("nan")
cpu = "unknown CPU"
try:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
except OSError:
    pass
try:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
except OSError:
    commit = "?"
print(f"Random RWKV-7 0.1B-shaped checkpoint (12 × 768, vocab 65536), {threads} threads, {cpu} "
      f"({os.cpu_count()} CPUs); medians of {reps} runs; prefill = {context}-token prompt; git {commit or '?'} (+ working tree)\n")
print("| build | weights | decode tok/s (ms/token) | weight traffic | of measured bandwidth | bandwidth-bound ms/token | prefill tok/s | peak RSS |")
print("|---|---|---|---|---|---|---|---|")
order = {p: i for i, p in enumerate(["f32", "bf16", "f16", "q8_0", "q4_0"])}
for (label, prec), r in sorted(rows.items(), key=lambda kv: (kv[0][0] != "rwkv-cli", kv[0][0], order.get(kv[0][1], 9))):
    ms = med(r["ms"])
    traffic = f"{med(r['traffic']):.1f} GB/s (memory {med(r['bw']):.1f} GB/s)" if r["traffic"] else "—"
    frac = f"{med(r['frac']):.0f}%" if r["frac"] else "—"
    bound = f"{med(r['bound']):.1f}" if r["bound"] else "—"
    print(f"| {label} | {prec} | {1000 / ms:.1f} ({ms:.1f}) | {traffic} | {frac} | {bound} | {med(r['prefill']):.0f} | {med(r['rss']):.0f} MiB |")
EOF
