#!/usr/bin/env bash
# Start-up and speed at real model sizes: for random checkpoints of the official RWKV-7 0.1B
# (12 × 768) and 1.5B (24 × 2048) shapes, at every precision, in one run:
#   - start to ready, first run: `rwkv-cli generate -n 0 -p Hi` (process start to the prompt's
#     one token through the model, then exit) with an empty cache directory, so the weights
#     are converted from the checkpoint (and the packed-weight cache written, where the build
#     has one);
#   - start to ready, second run: the same command again (the packed weights from the cache);
#   - decode: ms/token and the fraction of the memory bandwidth measured in the same process,
#     and prefill tokens/s, from `rwkv-cli bench --json` (the cache in place, as users run it).
# Printed as a markdown table with the CPU it ran on; medians over REPS repetitions.
#
#   scripts/bench_scale.sh
#   REPS=3 THREADS=2 SIZES="0.1b 1.5b" PRECISIONS="f32 bf16 f16 q8_0 q4_0" scripts/bench_scale.sh
#   BASELINE=/path/to/older/rwkv-cli scripts/bench_scale.sh   # its rows beside ours, same run
#   EXTERNAL=engines.txt scripts/bench_scale.sh                # + other engines
#
# The checkpoint is read from the page cache in every run (it is read once before the first):
# "first run" is the cost of converting, not of the disk. MODEL_0_1B and MODEL_1_5B name the
# checkpoints (built with scripts/make_random_v7.py when missing: 0.4 and 3 GB, bf16; needs
# numpy; a .pth made from one by scripts/safetensors_to_pth.py measures the official format);
# CONTEXT_0_1B and CONTEXT_1_5B the prefill's prompt length (1024 and 256).
# EXTERNAL is a file of lines `LABEL WEIGHTS COMMAND...` as in scripts/bench_precisions.sh;
# each COMMAND runs once per size and repetition with $MODEL, $SIZE, $THREADS, $CONTEXT and
# $DECODE_TOKENS in its environment and prints one JSON object with
# prefill_tokens_per_second, decode_ms_per_token, weight_bytes_per_token and, optionally,
# ready_seconds (its own start to ready) and ready_seconds_second_run.
set -euo pipefail
cd "$(dirname "$0")/.."

REPS=${REPS:-3}
THREADS=${THREADS:-2}
SIZES=${SIZES:-"0.1b 1.5b"}
PRECISIONS=${PRECISIONS:-"f32 bf16 f16 q8_0 q4_0"}
DECODE_TOKENS=${DECODE_TOKENS:-16}
MODEL_0_1B=${MODEL_0_1B:-${TMPDIR:-/tmp}/rwkv-v7-0.1b-random-bf16.safetensors}
MODEL_1_5B=${MODEL_1_5B:-${TMPDIR:-/tmp}/rwkv-v7-1.5b-random-bf16.safetensors}
CONTEXT_0_1B=${CONTEXT_0_1B:-1024}
CONTEXT_1_5B=${CONTEXT_1_5B:-256}
BUILDS=""
[ -n "${BASELINE:-}" ] && BUILDS="baseline=$BASELINE"
OUT=$(mktemp -d)
CACHE=$(mktemp -d)
trap 'rm -rf "$OUT" "$CACHE"' EXIT

cargo build --release --quiet
BIN=target/release/rwkv-cli

model_of() { case $1 in 0.1b) echo "$MODEL_0_1B" ;; 1.5b) echo "$MODEL_1_5B" ;; *) echo "unknown size $1" >&2; exit 2 ;; esac; }
context_of() { case $1 in 0.1b) echo "$CONTEXT_0_1B" ;; 1.5b) echo "$CONTEXT_1_5B" ;; esac; }
for s in $SIZES; do
    m=$(model_of "$s")
    if [ ! -f "$m" ]; then
        echo "building the random $s-shaped checkpoint at $m" >&2
        case $s in
            0.1b) python3 scripts/make_random_v7.py "$m" ;;
            1.5b) python3 scripts/make_random_v7.py "$m" --layers 24 --width 2048 ;;
        esac
    fi
    cat "$m" >/dev/null # into the page cache: the runs below measure conversion, not the disk
done

now() { date +%s.%N; }

# Seconds of one `generate -n 0 -p Hi`, or nothing when it fails.
ready() { # binary precision-flags...
    local bin=$1 t0 t1
    shift
    t0=$(now)
    if "$bin" --threads "$THREADS" generate --model "$M" -n 0 -p Hi -q "$@" >/dev/null 2>"$OUT/err"; then
        t1=$(now)
        python3 -c "print($t1 - $t0)"
    fi
}

run() { # label binary size precision rep
    local label=$1 bin=$2 size=$3 p=$4 rep=$5 flag=(--dtype "$p") first second
    case $p in q*) flag=(--quant "$p") ;; esac
    local f="$OUT/$label~$size~$p~$rep"
    # An empty cache: the first run converts (and writes the cache where the build has one).
    rm -rf "$CACHE"/*
    first=$(RWKV_CLI_CACHE=$CACHE ready "$bin" "${flag[@]}")
    second=$(RWKV_CLI_CACHE=$CACHE ready "$bin" "${flag[@]}")
    if [ -z "$first" ] || [ -z "$second" ]; then
        [ "$label" = rwkv-cli ] && echo "($label $size $p failed: $(tail -1 "$OUT/err"))" >&2
        return 0
    fi
    if RWKV_CLI_CACHE=$CACHE "$bin" --threads "$THREADS" bench --model "$M" --context "$CONTEXT" \
        --segments 1 --decode-tokens "$DECODE_TOKENS" "${flag[@]}" --json >"$f.json" 2>"$OUT/err"; then
        echo "$first $second" >"$f.ready"
        echo -n "." >&2
    else
        [ "$label" = rwkv-cli ] && echo "($label $size $p failed: $(tail -1 "$OUT/err"))" >&2
        rm -f "$f.json"
    fi
    rm -rf "$CACHE"/*
}

EXTERNALS=()
if [ -n "${EXTERNAL:-}" ]; then
    while read -r line; do
        case $line in '' | '#'*) continue ;; esac
        EXTERNALS+=("$line")
    done <"$EXTERNAL"
fi

# The memory bandwidth now: the probe of `bench --decode` on the embedded model (0.4 s).
probe() {
    "$BIN" --threads "$THREADS" bench --decode --decode-tokens 1 --no-weight-cache --json 2>/dev/null |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["decode"]["memory_read_bandwidth_bytes_per_second"])' ||
        true
}

external() { # label weights command size rep
    local label=$1 weights=$2 cmd=$3 size=$4 rep=$5 f="$OUT/@$1~$4~$2~$5"
    # Other engines measure no bandwidth: the host's moves by half within minutes, so their
    # decode is set against a probe taken just before it, not against our runs' median.
    probe >"$f.bw"
    if MODEL="$M" SIZE="$size" THREADS="$THREADS" CONTEXT="$CONTEXT" DECODE_TOKENS="$DECODE_TOKENS" \
        bash -c "$cmd" >"$OUT/ext" 2>"$OUT/err" && [ -s "$OUT/ext" ]; then
        tail -1 "$OUT/ext" >"$f.json"
        echo -n "." >&2
    else
        echo "($label $size $weights failed: $(tail -1 "$OUT/err"))" >&2
    fi
}

echo -n "running $REPS repetitions" >&2
for rep in $(seq "$REPS"); do
    for size in $SIZES; do
        M=$(model_of "$size")
        CONTEXT=$(context_of "$size")
        # Each precision's rows run back to back (our builds, then the other engines at that
        # precision), so that a change of the host's bandwidth falls between precisions rather
        # than between the systems compared.
        for p in $PRECISIONS; do
            # The builds in turn, the first one changing with each repetition: a first run
            # right after another engine has filled the page cache pays for reclaiming it
            # (1.5B f32: about twice the time), and every build should take that place as often
            # (equally often when REPS is a multiple of the number of builds: REPS=4 with a
            # BASELINE).
            systems=("rwkv-cli=$BIN" $BUILDS)
            n=${#systems[@]}
            for i in $(seq 0 $((n - 1))); do
                b=${systems[$(((i + rep - 1) % n))]}
                run "${b%%=*}" "${b#*=}" "$size" "$p" "$rep"
            done
            for e in "${EXTERNALS[@]}"; do
                read -r label weights cmd <<<"$e"
                if [ "$weights" = "$p" ]; then external "$label" "$weights" "$cmd" "$size" "$rep"; fi
            done
        done
        # Engines at a precision of their own (q5_1, ...), after ours.
        for e in "${EXTERNALS[@]}"; do
            read -r label weights cmd <<<"$e"
            case " $PRECISIONS " in *" $weights "*) ;; *) external "$label" "$weights" "$cmd" "$size" "$rep" ;; esac
        done
    done
done
echo >&2

python3 - "$OUT" "$REPS" "$THREADS" "$CONTEXT_0_1B" "$CONTEXT_1_5B" "$MODEL_0_1B" "$MODEL_1_5B" "$BIN" <<'EOF'
import glob, json, os, statistics, sys

out, reps, threads, ctx01, ctx15, model01, model15, BIN = sys.argv[1:9]
med = lambda xs: statistics.median(xs) if xs else None
# Percent of bandwidth `bw` (bytes/s) that `wbytes` read in `ms` milliseconds take.
pct = lambda wbytes, ms, bw: 100 * wbytes / (ms / 1e3) / bw
rows = {}
bandwidth = {}
for path in sorted(glob.glob(os.path.join(out, "*.json"))):
    label, size, prec, _rep = os.path.basename(path)[: -len(".json")].rsplit("~", 3)
    other = label.startswith("@")
    label = label.lstrip("@")
    v = json.load(open(path))
    d = v.get("decode") or {}
    r = rows.setdefault((size, label, prec), {"other": other, **{k: [] for k in
        ("first", "second", "ms", "frac", "prefill", "rss", "wbytes", "cache")}})
    ready = path[: -len(".json")] + ".ready"
    if os.path.exists(ready):
        a, b = open(ready).read().split()
        r["first"].append(float(a))
        r["second"].append(float(b))
    else:
        if v.get("ready_seconds") is not None:
            r["first"].append(v["ready_seconds"])
        if v.get("ready_seconds_second_run") is not None:
            r["second"].append(v["ready_seconds_second_run"])
    r["ms"].append(d.get("ms_per_token", v.get("decode_ms_per_token")))
    r["prefill"].append(v["prefill_tokens_per_second"])
    rss = v.get("model_peak_rss_bytes") or v.get("peak_rss_bytes")
    if rss:
        r["rss"].append(rss / 2**20)
    if d:
        r["frac"].append(100 * d["fraction_of_memory_bandwidth"])
        bandwidth.setdefault(size, []).append(d["memory_read_bandwidth_bytes_per_second"])
    elif v.get("weight_bytes_per_token"):
        r["wbytes"].append(v["weight_bytes_per_token"])
        bw = path[: -len(".json")] + ".bw"
        ms = v.get("decode_ms_per_token")
        try:
            probe = float(open(bw).read())
        except (OSError, ValueError):
            probe = None
        if probe and ms:
            r["frac"].append(pct(v["weight_bytes_per_token"], ms, probe))
    if v.get("weight_cache"):
        r["cache"].append(str(v["weight_cache"]))

# Other engines report no bandwidth: theirs is set against the probe taken just before each
# of their runs, or (no probe) against the median of what our runs measured.
for (size, _, _), r in rows.items():
    if r["wbytes"] and not r["frac"] and bandwidth.get(size):
        r["frac"] = [pct(med(r["wbytes"]), med(r["ms"]), med(bandwidth[size]))]

sys.path.insert(0, "scripts")
from bench_machine import commit, machine

print(f"Random RWKV-7 checkpoints of the official shapes (0.1B: 12 × 768; 1.5B: 24 × 2048; vocab 65536; "
      f"{os.path.basename(model01)}, {os.path.basename(model15)}), {threads} threads, {machine(BIN)}; medians of {reps} runs; "
      f"prefill = {ctx01}-token (0.1B) / {ctx15}-token (1.5B) prompt; git {commit()} (+ working tree)\n")
print("| size | system | weights | start to ready, first run | second run | decode tok/s (ms/token) | of measured bandwidth | prefill tok/s | peak RSS |")
print("|---|---|---|---|---|---|---|---|---|")
order = {p: i for i, p in enumerate(["f32", "bf16", "f16", "q8_0", "q4_0"])}
fmt = lambda x, f: f.format(x) if x is not None else "—"
for (size, label, prec), r in sorted(rows.items(), key=lambda kv: (kv[0][0], order.get(kv[0][2], 9), kv[1]["other"], kv[0][1] != "rwkv-cli", kv[0][1])):
    ms = med([m for m in r["ms"] if m])
    print(f"| {size} | {label} | {prec} | {fmt(med(r['first']), '{:.2f} s')} | {fmt(med(r['second']), '{:.2f} s')} | "
          f"{fmt(ms and 1000 / ms, '{:.1f}')} ({fmt(ms, '{:.1f}')}) | {fmt(med(r['frac']), '{:.0f}%')} | "
          f"{fmt(med(r['prefill']), '{:.0f}')} | {fmt(med(r['rss']), '{:.0f} MiB')} |")
EOF
