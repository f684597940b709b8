#!/usr/bin/env bash
# Decode and prefill speed of rwkv-cli at every precision, on a random checkpoint of the
# official RWKV-7 0.1B shape (12 layers, width 768, vocab 65536), printed as a markdown table.
#
#   scripts/bench_precisions.sh                      # 5 repetitions, 2 threads
#   REPS=9 THREADS=2 scripts/bench_precisions.sh
#   BASELINE=/path/to/older/rwkv-cli scripts/bench_precisions.sh   # add its rows, same run
#   BUILDS="patched=/tmp/a/rwkv-cli other=/tmp/b/rwkv-cli" scripts/bench_precisions.sh
#   OFFICIAL=/path/to/venv/bin/python scripts/bench_precisions.sh  # + the official package
#   EXTERNAL=engines.txt scripts/bench_precisions.sh                # + other engines
#
# OFFICIAL names a python that has the packages of scripts/requirements-fixtures.txt: each
# repetition then also runs scripts/bench_official.py (BlinkDL's `rwkv` package, torch, fp32)
# on the same checkpoint. EXTERNAL names a file of lines `LABEL WEIGHTS COMMAND...` (LABEL without spaces,
# slashes or `~`; WEIGHTS
# is f32, f16, bf16, q8_0, q5_1, q4_0, ...): each COMMAND runs once per repetition with
# $MODEL and $THREADS, $CONTEXT, $DECODE_TOKENS in its environment, and prints one JSON
# object with prefill_tokens_per_second, decode_ms_per_token, peak_rss_bytes and, for the
# bandwidth column, weight_bytes_per_token. Their rows sit beside ours, precision by
# precision, followed by the ratio of our figures to the best other one at each precision.
#
# Each repetition runs `rwkv-cli bench` once per precision, in turn (so that a slow spell of
# the machine touches every precision alike): a 1024-token prompt through the sequence path
# (prefill) and 32 tokens decoded one at a time (the median step is kept), with the weight
# traffic of a decode step next to the memory bandwidth measured in the same process. The
# table gives the median over repetitions of each figure (with three or more repetitions, runs
# whose weights come from the weight cache: each build has one of its own, in a temporary
# folder, written by its first run: for a 1.5B MODEL that is ~15 GB of TMPDIR per build).
# Needs python3 (and numpy, to build the checkpoint once).
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
    # Each build its own weight cache (the first repetition writes it, the others map it):
    # builds sharing one would each find the other's file stale and rewrite it every run.
    if RWKV_CLI_CACHE="$OUT/cache-$label" "$bin" --threads "$THREADS" bench --model "$MODEL" \
        --context "$CONTEXT" --segments 1 \
        --decode-tokens "$DECODE_TOKENS" "${flag[@]}" --json >"$OUT/$label~$p~$rep.json" 2>"$OUT/err"; then
        echo -n "." >&2
    else
        if [ "$label" = rwkv-cli ]; then
            echo "($label $p failed: $(tail -1 "$OUT/err"))" >&2
        fi
        rm -f "$OUT/$label~$p~$rep.json"
    fi
}

external() { # label weights rep command
    local label=$1 weights=$2 rep=$3 cmd=$4
    if MODEL="$MODEL" THREADS="$THREADS" CONTEXT="$CONTEXT" DECODE_TOKENS="$DECODE_TOKENS" \
        bash -c "$cmd" >"$OUT/ext" 2>"$OUT/err" && [ -s "$OUT/ext" ]; then
        # '@' marks another engine's row for the table.
        tail -1 "$OUT/ext" >"$OUT/@$label~$weights~$rep.json"
        echo -n "." >&2
    else
        echo "($label $weights failed: $(tail -1 "$OUT/err"))" >&2
    fi
}

EXTERNALS=()
if [ -n "${EXTERNAL:-}" ]; then
    while read -r line; do
        case $line in '' | '#'*) continue ;; esac
        EXTERNALS+=("$line")
    done <"$EXTERNAL"
fi
if [ -n "${OFFICIAL:-}" ]; then
    EXTERNALS+=("official-rwkv-package f32 $OFFICIAL scripts/bench_official.py \"\$MODEL\" --threads \$THREADS --context \$CONTEXT --decode-tokens \$DECODE_TOKENS")
fi

echo -n "running $REPS repetitions" >&2
for rep in $(seq "$REPS"); do
    for p in $PRECISIONS; do
        run rwkv-cli "$BIN" "$p" "$rep"
        for b in $BUILDS; do
            # Older builds may not know a format: their failed runs are skipped.
            run "${b%%=*}" "${b#*=}" "$p" "$rep"
        done
    done
    for e in "${EXTERNALS[@]}"; do
        read -r label weights cmd <<<"$e"
        external "$label" "$weights" "$rep" "$cmd"
    done
done
echo >&2

python3 - "$OUT" "$REPS" "$THREADS" "$CONTEXT" "$BIN" <<'EOF'
import glob, json, os, statistics, sys

out, reps, threads, context, BIN = sys.argv[1:6]
med = lambda xs: statistics.median(xs) if xs else float("nan")
rows, others = {}, set()
for path in sorted(glob.glob(os.path.join(out, "*.json"))):
    label, prec, _rep = os.path.basename(path)[: -len(".json")].rsplit("~", 2)
    if label.startswith("@"):
        label = label[1:]
        others.add((label, prec))
    v = json.load(open(path))
    d = v.get("decode") or {}
    ms = d.get("ms_per_token", v.get("decode_ms_per_token", v.get("decode_ms_per_token_depth_0")))
    r = rows.setdefault((label, prec), {k: [] for k in ("ms", "prefill", "rss", "traffic", "bw", "frac", "wbytes")})
    r["ms"].append(ms)
    r["prefill"].append(v["prefill_tokens_per_second"])
    # The model's peak: rwkv-cli's bench reports it as model_peak_rss_bytes (peak_rss_bytes is
    # the whole process's, the bandwidth probe's buffer included); older builds and other
    # engines give only peak_rss_bytes, which for them is the model's.
    r["rss"].append((v.get("model_peak_rss_bytes") or v.get("peak_rss_bytes") or 0) / 2**20)
    if d:
        r["traffic"].append(d["weight_bandwidth_bytes_per_second"] / 1e9)
        r["bw"].append(d["memory_read_bandwidth_bytes_per_second"] / 1e9)
        r["frac"].append(100 * d["fraction_of_memory_bandwidth"])
    elif v.get("weight_bytes_per_token"):
        r["wbytes"].append(v["weight_bytes_per_token"])

# Other engines print no bandwidth: theirs is set against the memory bandwidth that our
# runs measured in the same repetitions (the median over every rwkv-cli run).
bandwidth = med([b for (label, _), r in rows.items() if label == "rwkv-cli" for b in r["bw"]])
for r in rows.values():
    if r["wbytes"] and not r["traffic"]:
        traffic = med(r["wbytes"]) / (med(r["ms"]) / 1e3) / 1e9
        r["traffic"], r["bw"], r["frac"] = [traffic], [bandwidth], [100 * traffic / bandwidth]

CLASS_ORDER = ["32-bit", "16-bit", "8-bit", "4/5-bit"]
def cls(prec):
    p = prec.lower()
    if p in ("f32", "fp32"):
        return "32-bit"
    if p in ("f16", "fp16", "bf16"):
        return "16-bit"
    if p.startswith("q8"):
        return "8-bit"
    if p[:2] in ("q4", "q5"):
        return "4/5-bit"
    return p

sys.path.insert(0, "scripts")
from bench_machine import commit, machine

print(f"Random RWKV-7 0.1B-shaped checkpoint (12 × 768, vocab 65536), {threads} threads, {machine(BIN)}; "
      f"medians of {reps} runs; prefill = {context}-token prompt; git {commit()} (+ working tree)\n")
print("| system | weights | decode tok/s (ms/token) | weight traffic | of measured bandwidth | prefill tok/s | peak RSS |")
print("|---|---|---|---|---|---|---|")
order = {p: i for i, p in enumerate(["f32", "bf16", "f16", "q8_0", "q4_0"])}
key = lambda kv: (CLASS_ORDER.index(cls(kv[0][1])) if cls(kv[0][1]) in CLASS_ORDER else 9,
                  kv[0] in others, kv[0][0] != "rwkv-cli", kv[0][0], order.get(kv[0][1], 9), kv[0][1])
for (label, prec), r in sorted(rows.items(), key=key):
    ms = med(r["ms"])
    traffic = f"{med(r['traffic']):.1f} GB/s (memory {med(r['bw']):.1f} GB/s)" if r["traffic"] else "—"
    frac = f"{med(r['frac']):.0f}%" if r["frac"] else "—"
    print(f"| {label} | {prec} | {1000 / ms:.1f} ({ms:.1f}) | {traffic} | {frac} | {med(r['prefill']):.0f} | {med(r['rss']):.0f} MiB |")

if others:
    print("\n| precision | rwkv-cli decode tok/s | best other | ratio | rwkv-cli prefill tok/s | best other | ratio |")
    print("|---|---|---|---|---|---|---|")
    for c in CLASS_ORDER:
        ours = [(1000 / med(r["ms"]), med(r["prefill"])) for (l, p), r in rows.items() if l == "rwkv-cli" and cls(p) == c]
        theirs = [(1000 / med(r["ms"]), med(r["prefill"]), f"{l} {p}") for (l, p), r in rows.items() if (l, p) in others and cls(p) == c]
        if not ours or not theirs:
            continue
        od, op = max(o[0] for o in ours), max(o[1] for o in ours)
        td, tp = max(theirs), max(theirs, key=lambda t: t[1])
        print(f"| {c} | {od:.1f} | {td[0]:.1f} ({td[2]}) | {od / td[0]:.2f}× | {op:.0f} | {tp[1]:.0f} ({tp[2]}) | {op / tp[1]:.2f}× |")
EOF
