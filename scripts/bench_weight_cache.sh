#!/usr/bin/env bash
# Start-to-ready with and without the weight cache, and decode speed from the cache's mapping
# against the process's own memory, in one run.
#
#   scripts/bench_weight_cache.sh MODEL FORMAT [MODEL FORMAT ...]
#   e.g. scripts/bench_weight_cache.sh ck/v7-0.1b-f32.safetensors f32 ck/v7-1.5b-bf16.safetensors bf16
#
# FORMAT is f32, f16, bf16 (--dtype) or q8_0, q4_0 (--quant). BIN= picks the binary (default
# target/release/rwkv-cli), REPEAT= the runs per row (default 3: the best is shown), DECODE=0
# skips the decode rows. The cache goes to a scratch folder (RWKV_CLI_CACHE), removed at the
# end. Times are wall-clock seconds of `generate -n 0 -p Hi` (process start to the first
# token's logits): "uncached" is --no-weight-cache, "first" writes the cache file, "hit" maps it.
set -euo pipefail
BIN=${BIN:-target/release/rwkv-cli}
REPEAT=${REPEAT:-3}
DECODE=${DECODE:-1}
export RWKV_CLI_CACHE=$(mktemp -d)
trap 'rm -rf "$RWKV_CLI_CACHE"' EXIT

secs() { # command... → wall seconds
  local t0 t1
  t0=$(date +%s.%N)
  "$@" >/dev/null 2>&1
  t1=$(date +%s.%N)
  echo "$t1 - $t0" | bc
}
best() { sort -g | head -1; }

echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) threads"
printf '%-40s %-5s %9s %9s %9s' model fmt uncached first hit
[ "$DECODE" = 1 ] && printf ' %13s %13s' "ms/tok(anon)" "ms/tok(map)"
echo
while [ $# -ge 2 ]; do
  model=$1 fmt=$2
  shift 2
  case $fmt in q*) flag=(--quant "$fmt") ;; *) flag=(--dtype "$fmt") ;; esac
  run=("$BIN" generate -m "$model" "${flag[@]}" -n 0 -p Hi)
  cat "$model" >/dev/null # the checkpoint in the page cache for every row alike
  unc=$(for _ in $(seq "$REPEAT"); do secs "${run[@]}" --no-weight-cache; done | best)
  first=$(for _ in $(seq "$REPEAT"); do rm -rf "$RWKV_CLI_CACHE/weights"; secs "${run[@]}"; done | best)
  hit=$(for _ in $(seq "$REPEAT"); do secs "${run[@]}"; done | best)
  printf '%-40s %-5s %9.2f %9.2f %9.2f' "$(basename "$model")" "$fmt" "$unc" "$first" "$hit"
  if [ "$DECODE" = 1 ]; then
    ms() {
      "$BIN" bench -m "$model" "${flag[@]}" --decode --decode-tokens 32 --json "$@" 2>/dev/null |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["decode"]["ms_per_token"])'
    }
    # Alternated, so that a neighbour's load falls on both alike.
    anon=() mapped=()
    for _ in $(seq "$REPEAT"); do
      anon+=("$(ms --no-weight-cache)")
      mapped+=("$(ms)")
    done
    printf ' %13.2f %13.2f' "$(printf '%s\n' "${anon[@]}" | best)" "$(printf '%s\n' "${mapped[@]}" | best)"
  fi
  echo
  rm -rf "$RWKV_CLI_CACHE/weights"
done
