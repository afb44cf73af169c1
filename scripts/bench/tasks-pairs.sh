#!/usr/bin/env bash
# Server CPU per task, this build against another, in interleaved pairs: for each pair a fresh
# 3-node cluster of BASELINE's build runs `blixard-bench tasks` (its own bench binary, so its
# own way of waiting for a task), then one of this build, each under SUBMITTERS closed-loop
# submitters of `true`. CPU per task (the servers' and their children's, from /proc) stays
# comparable on a loaded machine where tasks/s does not; the load average is printed with each.
#
#   BASELINE=/path/to/old/release scripts/bench/tasks-pairs.sh
#
# Knobs: BASELINE (a dir with another build's `blixard` and `blixard-bench`; required), PAIRS
# (3), SUBMITTERS (64), DURATION (10s), WARMUP (2s), PORT_BASE (25800), BENCH_DIR,
# CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"
PAIRS="${PAIRS:-3}" SUBMITTERS="${SUBMITTERS:-64}" DURATION="${DURATION:-10s}" WARMUP="${WARMUP:-2s}"
PORT_BASE="${PORT_BASE:-25800}" BENCH_DIR="${BENCH_DIR:-$ROOT/.blixard/bench}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
READY_TIMEOUT=30
log() { echo "bench: $*" >&2; }
[ -n "${BASELINE:-}" ] || { log "error: BASELINE=DIR (another build's blixard and blixard-bench) is needed"; exit 1; }

NODE_ARGS=()
# shellcheck source=scripts/bench/lib.sh
source "$ROOT/scripts/bench/lib.sh"
bench_setup tasks-pairs
THIS="$TARGET_DIR/release"

one() { # $1: label, $2: dir with blixard and blixard-bench, $3: pair number
  BLIXARD="$2/blixard"
  blixard_start "$WORK/$1-$3" 3
  local load; load="$(cut -d' ' -f1 /proc/loadavg)"
  "$2/blixard-bench" tasks --endpoints "$(join_eps "${BLIXARD_EPS[@]}")" --submitters "$SUBMITTERS" \
    --duration "$DURATION" --warmup "$WARMUP" --server-pids "$(join_eps "${PIDS[@]}")" --json >"$WORK/$1-$3.json"
  stop_all
  rm -rf "$WORK/$1-$3"
  jq -r --arg l "$1" --arg p "$3" --arg load "$load" '.[] | "| \($p) | \($l) | \(.server_cpu_ms_per_task*100|floor/100) | \(.tasks_per_sec|floor) | \(.p50_ms) / \(.p99_ms) | \(.other_cores*100|floor/100) | \($load) | \(.errors) |"' \
    "$WORK/$1-$3.json"
}

{
  echo "Run $(date -u +%Y-%m-%dT%H:%MZ) at $(git -C "$ROOT" rev-parse --short HEAD); $SUBMITTERS submitters; $WARMUP warm-up, $DURATION measured; baseline $BASELINE."
  echo
  echo "| pair | build | servers' CPU per task (ms) | tasks/s | p50 / p99 (ms) | other load (cores) | load average | errors |"
  echo "|---:|---|---:|---:|---:|---:|---:|---:|"
  for i in $(seq "$PAIRS"); do
    one baseline "$BASELINE" "$i"
    one this "$THIS" "$i"
  done
} | tee "$RESULTS/table.md"
log "results in $RESULTS"
