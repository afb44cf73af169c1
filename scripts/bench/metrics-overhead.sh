#!/usr/bin/env bash
# What metrics cost on the write path: fresh 3-node blixard clusters with metrics on (the
# default) and with `--metrics off`, alternating (on first in odd rounds, off first in even
# ones), each measured with the same closed-loop puts as raft-vs-etcd.sh (64-byte values, keys
# from 100k) at CLIENTS clients. Prints each round and the median ratio on/off (issue 16's
# goal: metrics on within 3 % of off). docs/BENCHMARKS.md records a run.
#
#   scripts/bench/metrics-overhead.sh
#
# Knobs (environment): ROUNDS (5), DURATION (10s), WARMUP (2s), CLIENTS (64), PORT_BASE
# (25000), BENCH_DIR (.blixard/bench), CARGO_TARGET_DIR (target). Every process it starts is
# killed on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"
ROUNDS="${ROUNDS:-5}" DURATION="${DURATION:-10s}" WARMUP="${WARMUP:-2s}" CLIENTS="${CLIENTS:-64}"
PORT_BASE="${PORT_BASE:-25000}" BENCH_DIR="${BENCH_DIR:-$ROOT/.blixard/bench}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
READY_TIMEOUT=30
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || { echo "bench: error: ROUNDS must be a positive integer, not '$ROUNDS'" >&2; exit 1; }
log() { echo "bench: $*" >&2; }

scripts/setup.sh
NODE_ARGS=()
# shellcheck source=scripts/bench/lib.sh
source "$ROOT/scripts/bench/lib.sh"
bench_setup metrics

one() { # $1: on|off, $2: round
  NODE_ARGS=(--metrics "$1")
  blixard_start "$WORK/$1-$2" 3
  "$BENCH" write --target blixard --endpoints "$(join_eps "${BLIXARD_EPS[@]}")" --clients "$CLIENTS" \
    --duration "$DURATION" --warmup "$WARMUP" --keys 100000 --value-size 64 \
    --server-pids "$(join_eps "${PIDS[@]}")" --json >"$RESULTS/$1-$2.json"
  stop_all
}

log "machine: $(machine); load average $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then one on "$r"; one off "$r"; else one off "$r"; one on "$r"; fi
done

{
  echo "Run $(date -u +%Y-%m-%dT%H:%MZ) on $(machine); $CLIENTS clients, $WARMUP warm-up, $DURATION measured, $ROUNDS rounds."
  echo
  echo "| round | metrics on ops/s | metrics off ops/s | on/off | on p50 / p99 (ms) | off p50 / p99 (ms) |"
  echo "|---:|---:|---:|---:|---:|---:|"
  ratios=()
  for r in $(seq "$ROUNDS"); do
    on=$(jq '.cases[0]' "$RESULTS/on-$r.json") off=$(jq '.cases[0]' "$RESULTS/off-$r.json")
    ratio=$(jq -n --argjson a "$on" --argjson b "$off" '$a.ops_per_sec / $b.ops_per_sec')
    ratios+=("$ratio")
    jq -rn --argjson a "$on" --argjson b "$off" --arg r "$r" --argjson q "$ratio" \
      '"| \($r) | \($a.ops_per_sec|floor) | \($b.ops_per_sec|floor) | \($q*1000|round/1000) | \($a.p50_us/1000) / \($a.p99_us/1000) | \($b.p50_us/1000) / \($b.p99_us/1000) |"'
  done
  median=$(printf '%s\n' "${ratios[@]}" | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}')
  echo
  echo "Median ratio metrics on / off: $median (overhead $(awk -v m="$median" 'BEGIN {printf "%.1f", (1-m)*100}') %)."
} | tee "$RESULTS/table.md"
log "results in $RESULTS"
