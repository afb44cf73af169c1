#!/usr/bin/env bash
# Where a put's CPU goes: a fresh 3-node blixard cluster under the closed-loop puts of
# raft-vs-etcd.sh (64-byte values, keys from 100k), every node sampled by `perf record` with
# DWARF call graphs, and each sample put in one bucket by the frames on its stack (the gRPC
# layers, the handler, sessions, the key/value insert, the WAL, Raft stepping, the transport...).
# Prints server CPU µs per put (from /proc) and, per bucket, µs of CPU per put summed over the
# three nodes. With BASELINE=DIR (a dir holding another build's `blixard` and `blixard-bench`),
# the same run is made with it right after, and the buckets are shown side by side: what
# BENCHMARKS.md's "where the write path's CPU went" was measured with.
#
#   scripts/bench/write-profile.sh
#   BASELINE=/path/to/old/release scripts/bench/write-profile.sh
#
# CPU per put stays comparable on a busy machine where throughput does not; sampling is by the
# cpu-clock (virtual machines often lack hardware counters). Knobs: DURATION (20 s), CLIENTS
# (64), FREQ (250 Hz), PORT_BASE (25700), BENCH_DIR, CARGO_TARGET_DIR, KEEP (=1: keep the perf
# files in the results dir, for `perf report -i`). Needs perf and python3.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"
DURATION="${DURATION:-20}" CLIENTS="${CLIENTS:-64}" FREQ="${FREQ:-250}"
PORT_BASE="${PORT_BASE:-25700}" BENCH_DIR="${BENCH_DIR:-$ROOT/.blixard/bench}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
READY_TIMEOUT=30
[[ "$DURATION" =~ ^[1-9][0-9]*$ ]] || { echo "bench: error: DURATION is whole seconds, not '$DURATION'" >&2; exit 1; }
log() { echo "bench: $*" >&2; }
command -v perf >/dev/null || { log "error: perf is needed (apt-get install linux-perf)"; exit 1; }
command -v python3 >/dev/null || { log "error: python3 is needed"; exit 1; }

NODE_ARGS=()
# shellcheck source=scripts/bench/lib.sh
source "$ROOT/scripts/bench/lib.sh"
bench_setup profile

cpu_ticks() {
  local t=0 p f
  for p in "${PIDS[@]}"; do read -r -a f < <(cut -d')' -f2- "/proc/$p/stat"); t=$((t + f[11] + f[12])); done
  echo "$t"
}

profile() { # $1: label, $2: dir with blixard and blixard-bench
  BLIXARD="$2/blixard"
  local bench="$2/blixard-bench" c0 c1 ops
  blixard_start "$WORK/$1" 3
  "$bench" write --target blixard --endpoints "$(join_eps "${BLIXARD_EPS[@]}")" --clients "$CLIENTS" \
    --duration "${DURATION}s" --warmup 2s --keys 100000 --value-size 64 --json >"$WORK/$1.json" &
  local load=$!
  sleep 2.5 # the warm-up
  c0=$(cpu_ticks)
  perf record -q -F "$FREQ" --call-graph dwarf,32768 -o "$WORK/$1.perf" -p "$(join_eps "${PIDS[@]}")" \
    -- sleep "$((DURATION - 1))" >/dev/null 2>&1
  c1=$(cpu_ticks)
  wait "$load"
  stop_all
  [ -z "${KEEP:-}" ] || cp "$WORK/$1.perf" "$RESULTS/$1.perf"
  ops=$(jq '.cases[0].ops_per_sec' "$WORK/$1.json")
  log "$1: $ops puts/s; server CPU $(awk -v t=$((c1 - c0)) -v o="$ops" -v d="$DURATION" \
    'BEGIN {printf "%.1f", t * 10000 / (o * (d - 1))}') µs per put (3 nodes)"
  echo "$1 $WORK/$1.perf $ops"
}

runs=("$(profile this "$TARGET_DIR/release")")
[ -z "${BASELINE:-}" ] || runs+=("$(profile baseline "$BASELINE")")
python3 "$ROOT/scripts/bench/write_profile.py" "$FREQ" "$((DURATION - 1))" "${runs[@]}" | tee "$RESULTS/table.md"
