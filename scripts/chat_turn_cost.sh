#!/usr/bin/env bash
# What a chat turn costs as the conversation grows: pipes TURNS messages through
# `rwkv-cli chat --stats-json` and prints, for turns 1, 10, 25 and 50, the context so far, the
# tokens the turn read and its prefill time (the time to the first reply token, less one
# sampling step). For contrast, `rwkv-cli compare` measures a softmax transformer of the same
# shape at the same context lengths: re-reading the whole conversation (a server without a
# prompt cache, or llama.cpp's server with a recurrent model), and its decode time per token at
# that context (what each new token costs even with a KV cache).
#
#   scripts/chat_turn_cost.sh                       # the embedded model
#   MODEL=path/to/model.safetensors scripts/chat_turn_cost.sh
#
# Environment: RWKV_CLI (binary, default target/release/rwkv-cli), MODEL, TURNS (50),
# REPLY_TOKENS (32, the reply limit per turn), RUNS (3: the chat runs that many times, same
# seed, and each prefill time is the median), THREADS (default: all cores).
set -euo pipefail

BIN=${RWKV_CLI:-target/release/rwkv-cli}
TURNS=${TURNS:-50}
REPLY=${REPLY_TOKENS:-32}
RUNS=${RUNS:-3}
ARGS=()
INFO=()
if [ -n "${MODEL:-}" ]; then
  ARGS+=(--model "$MODEL")
  INFO+=("$MODEL")
fi
if [ -n "${THREADS:-}" ]; then ARGS+=(--threads "$THREADS"); fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

for i in $(seq 1 "$TURNS"); do
  echo "Message $i: what do you think of the weather at Longbourn, and of the officers?"
done >"$tmp/in"

for r in $(seq 1 "$RUNS"); do
  "$BIN" chat "${ARGS[@]}" --stats-json --max-tokens "$REPLY" --seed 1 <"$tmp/in" >"$tmp/out" 2>"$tmp/stats.$r"
done
cat "$tmp"/stats.* >"$tmp/stats"

# The contexts at which the chosen turns read their message (the whole conversation so far).
contexts=$(python3 - "$tmp/stats" "$TURNS" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
turns = [t for t in (1, 10, 25, 50) if t <= int(sys.argv[2])]
prev = {r["turn"]: r["context_tokens"] - r["reply_tokens"] for r in rows}  # same in every run
print(",".join(str(prev[t]) for t in turns))
EOF
)

"$BIN" compare "${ARGS[@]}" --baseline softmax --contexts "$contexts" --json \
  --time-budget none >"$tmp/compare.json" 2>"$tmp/compare.log"

echo "CPU: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores; $(
  "$BIN" info "${INFO[@]}" | awk '/^version/{v=$2" "$3} /^parameters/{p=$2} END{print v",", p, "params"}'); \
median of $RUNS runs, replies of at most $REPLY tokens"
python3 - "$tmp/stats" "$tmp/compare.json" "$TURNS" <<'EOF'
import json, sys
runs = {}
for r in map(json.loads, open(sys.argv[1])):
    runs.setdefault(r["turn"], []).append(r)
rows = {t: v[0] for t, v in runs.items()}
def prefill_ms(t):
    v = sorted(1000 * r["prompt_tokens"] / r["prefill_tokens_per_second"] for r in runs[t])
    return v[len(v) // 2]
cmp = json.load(open(sys.argv[2]))
soft = next(m for m in cmp["models"] if m["name"] == "softmax")
at = {p["context"]: p for p in soft["points"]}
print(f"{'turn':>4}  {'context':>7}  {'read':>5}  {'RWKV prefill':>12}  "
      f"{'softmax: re-read all':>20}  {'softmax decode/tok':>18}")
for t in (1, 10, 25, 50):
    if t not in rows:
        continue
    r = rows[t]
    ctx = r["context_tokens"] - r["reply_tokens"]
    ms = prefill_ms(t)
    p = at.get(ctx)
    full = f"{1000 * p['prefill_seconds']:.1f} ms" if p else "n/a"
    dec = f"{p['decode_ms_per_token']:.2f} ms" if p else "n/a"
    print(f"{t:>4}  {ctx:>7}  {r['prompt_tokens']:>5}  {ms:>9.2f} ms  {full:>20}  {dec:>18}")
last = rows[max(rows)]
print(f"state {last['state_bytes']} bytes at every turn; peak RSS {last['peak_rss_bytes'] / 2**20:.1f} MiB")
EOF
