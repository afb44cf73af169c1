#!/usr/bin/env bash
# Batch tasks end to end on a 3-node cluster: closed-loop submitters (1, 16, 64) of `true`
# through every node, tasks/s completed and submit → succeeded latency; next to the raw cost of
# starting `true` on this machine and the plain key/value put rate (64 clients) of the same
# cluster. docs/BENCHMARKS.md records a run (issue 14's goals: ≥ 1,000 tasks/s at 64
# submitters, p50 ≤ 10 ms at 1 submitter).
#
#   scripts/bench/tasks.sh
#
# Knobs (environment): SUBMITTERS (1,16,64), DURATION (10s), WARMUP (2s), PORT_BASE (25500),
# BENCH_DIR (.blixard/bench), CARGO_TARGET_DIR (target). Every process it starts is killed on
# exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"
SUBMITTERS="${SUBMITTERS:-1,16,64}" DURATION="${DURATION:-10s}" WARMUP="${WARMUP:-2s}"
PORT_BASE="${PORT_BASE:-25500}" BENCH_DIR="${BENCH_DIR:-$ROOT/.blixard/bench}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
READY_TIMEOUT=30
log() { echo "bench: $*" >&2; }

scripts/setup.sh
NODE_ARGS=()
# shellcheck source=scripts/bench/lib.sh
source "$ROOT/scripts/bench/lib.sh"
bench_setup tasks

log "machine: $(machine); load average $(cut -d' ' -f1-3 /proc/loadavg)"
"$BENCH" spawn --n 2000 | tee "$RESULTS/spawn.txt"
blixard_start "$WORK/c" 3
EPS="$(join_eps "${BLIXARD_EPS[@]}")"
SERVER_PIDS="$(join_eps "${PIDS[@]}")"
"$BENCH" tasks --endpoints "$EPS" --submitters "$SUBMITTERS" --duration "$DURATION" --warmup "$WARMUP" \
  --server-pids "$SERVER_PIDS" --json >"$RESULTS/tasks.json"
# What the servers do once the tasks are done (nothing should keep running): their CPU over 3 s.
ticks() { local p t=0; for p in "${PIDS[@]}"; do t=$((t + $(cut -d')' -f2- "/proc/$p/stat" | awk '{print $12+$13}'))); done; echo "$t"; }
t0="$(ticks)"; sleep 3; IDLE="$(echo "$(ticks) $t0 $(getconf CLK_TCK)" | awk '{printf "%.3f", ($1-$2)/$3/3}')"
"$BENCH" write --target blixard --endpoints "$EPS" --clients 64 --duration "$DURATION" --warmup "$WARMUP" \
  --keys 100000 --value-size 64 --server-pids "$SERVER_PIDS" --json >"$RESULTS/puts.json"
stop_all
{
  echo "Run $(date -u +%Y-%m-%dT%H:%MZ) on $(machine); 3 nodes; $WARMUP warm-up, $DURATION measured per case."
  echo
  echo "| submitters | tasks/s | submit → succeeded p50 / p99 (ms), client | recorded p50 / p99 (ms) | recorded: to started / started to finished, p50 (ms) | servers' CPU per task (ms) | other load (cores) | errors |"
  echo "|---:|---:|---:|---:|---:|---:|---:|---:|"
  jq -r '.[] | "| \(.submitters) | \(.tasks_per_sec|floor) | \(.p50_ms) / \(.p99_ms) | \(.recorded_p50_ms) / \(.recorded_p99_ms) | \(.to_started_p50_ms) / \(.to_finished_p50_ms) | \(.server_cpu_ms_per_task*100|floor/100) | \(.other_cores*100|floor/100) | \(.errors) |"' "$RESULTS/tasks.json"
  echo
  echo "Anchors: $(cat "$RESULTS/spawn.txt"); key/value puts on the same cluster, 64 clients: $(jq '.cases[0].ops_per_sec|floor' "$RESULTS/puts.json") ops/s (other load $(jq '.cases[0].cpu_other_cores // 0 | .*100|floor/100' "$RESULTS/puts.json") cores). The servers idle after the tasks: $IDLE cores."
} | tee "$RESULTS/table.md"
log "results in $RESULTS"
