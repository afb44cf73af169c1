#!/usr/bin/env bash
# Heartbeat cost on the leader: a fresh 3-node blixard cluster (default liveness timings), SIM_NODES
# simulated nodes registered through Raft (`blixard-bench simulated-nodes`), then each of them
# heartbeats the leader every INTERVAL for DURATION (`blixard-bench heartbeats`) while the leader's
# CPU time is read from /proc: the share of a core it spent, and per heartbeat. A baseline window
# of the same length before the simulated nodes exist comes first: what the leader spends anyway.
# Then PAIRS interleaved pairs of windows on the same cluster: heartbeats as one unary call each
# (`--mode unary`, how nodes sent them before) and as messages on one long-lived stream per node
# (`--mode stream`, how nodes send them now), so the two are compared under the same load.
#
#   scripts/bench/heartbeats.sh
#
# Knobs (environment): SIM_NODES (1000), INTERVAL (500ms), DURATION (30s), PAIRS (2),
# CONNECTIONS (16: the HTTP/2 connections the simulated nodes share; a real node has its own, but
# a node accepts at most 64 connections from one address, so more than that fail here),
# PORT_BASE (28000), BENCH_DIR (.blixard/bench), CARGO_TARGET_DIR (target). Every process it
# starts is killed on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"

SIM_NODES="${SIM_NODES:-1000}"
INTERVAL="${INTERVAL:-500ms}"
DURATION="${DURATION:-30s}"
PAIRS="${PAIRS:-2}"
CONNECTIONS="${CONNECTIONS:-16}"
PORT_BASE="${PORT_BASE:-28000}"
BENCH_DIR="${BENCH_DIR:-$ROOT/.blixard/bench}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
NODE_ARGS=()
READY_TIMEOUT=60
log() { echo "bench: $*" >&2; }
# shellcheck source=scripts/bench/lib.sh
source "$ROOT/scripts/bench/lib.sh"
require_positive SIM_NODES PAIRS CONNECTIONS
bench_binaries heartbeats

log "machine: $(machine); load average: $(cut -d' ' -f1-3 /proc/loadavg)"
blixard_start "$WORK/bx" 3 >/dev/null
eps="$(join_eps "${BLIXARD_EPS[@]}")"
hb() {
  "$BENCH" heartbeats --endpoints "$eps" --pids "$BLIXARD_PIDMAP" --interval "$INTERVAL" --duration "$DURATION" \
    --connections "$CONNECTIONS" "$@"
}
echo "== baseline: the leader with no simulated node"
hb --nodes 0 --warmup 0s
"$BENCH" simulated-nodes --endpoint "${BLIXARD_EPS[0]}" --nodes "$SIM_NODES"
for pair in $(seq "$PAIRS"); do
  for mode in unary stream; do
    echo "== pair $pair: $SIM_NODES simulated nodes heartbeating every $INTERVAL, --mode $mode; load average $(cut -d' ' -f1-3 /proc/loadavg)"
    # The warm-up covers the nodes declared down in the gap between two windows coming back.
    hb --nodes "$SIM_NODES" --mode "$mode" --warmup 5s
  done
done
stop_all
