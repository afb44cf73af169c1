#!/usr/bin/env bash
# VM creates through Raft against plain puts, same cluster, same client count: a fresh 3-node
# blixard cluster with SIM_NODES simulated nodes registered through Raft (capacity-only, no
# members, running nothing: `blixard-bench simulated-nodes`), so every create is a placement
# among them, gets CLIENTS closed-loop clients doing `kv put`s, then the same number doing
# `vm create`s of new stopped VMs (1 vCPU, 64 MiB: each one a full placement by the scheduler
# inside apply), then puts again (so a drift of the machine shows). Each case also reports the
# servers' CPU time per operation (from /proc), the figure that holds on a loaded machine. Then
# the scheduler alone, in memory on one thread (`blixard-bench place`: 10,000 nodes, 100,000
# VMs placed first).
#
# Simulated nodes never heartbeat, so the cluster runs with the longest down timeout, 10 min
# (--down-after-ms) to keep them ready; heartbeats are measured by scripts/bench/heartbeats.sh.
#
#   scripts/bench/vm-creates.sh
#
# Knobs (environment): CLIENTS (64), SIM_NODES (10000; 0: the 3 members only), DURATION (10s),
# WARMUP (2s), PORT_BASE (28000), BENCH_DIR (.blixard/bench), CARGO_TARGET_DIR (target). Every
# process it starts is killed on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"

CLIENTS="${CLIENTS:-64}"
SIM_NODES="${SIM_NODES:-10000}"
DURATION="${DURATION:-10s}"
WARMUP="${WARMUP:-2s}"
PORT_BASE="${PORT_BASE:-28000}"
BENCH_DIR="${BENCH_DIR:-$ROOT/.blixard/bench}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
NODE_ARGS=(--down-after-ms 600000)
READY_TIMEOUT=60
[[ "$CLIENTS" =~ ^[1-9][0-9]*$ ]] || { echo "bench: error: CLIENTS must be a positive integer, not '$CLIENTS'" >&2; exit 1; }
[[ "$SIM_NODES" =~ ^[0-9]+$ ]] || { echo "bench: error: SIM_NODES must be a number, not '$SIM_NODES'" >&2; exit 1; }

log() { echo "bench: $*" >&2; }

scripts/setup.sh
log "building release binaries into $TARGET_DIR"
cargo build --release --locked -q -p blixard -p blixard-bench
export BLIXARD_IMAGE_CACHE="${BLIXARD_IMAGE_CACHE:-$PWD/.blixard/images}"
BLIXARD="$TARGET_DIR/release/blixard"
BENCH="$TARGET_DIR/release/blixard-bench"
"$BLIXARD" image build --cache "$BLIXARD_IMAGE_CACHE" >/dev/null
mkdir -p "$BENCH_DIR"
WORK="$(mktemp -d "$BENCH_DIR/vm-creates.XXXXXX")"
# shellcheck source=scripts/bench/lib.sh
source "$ROOT/scripts/bench/lib.sh"

log "machine: $(machine)"
blixard_start "$WORK/bx" 3 >/dev/null
eps="$(join_eps "${BLIXARD_EPS[@]}")"
pids="$(join_eps "${PIDS[@]}")"
if [ "$SIM_NODES" -gt 0 ]; then
  log "registering $SIM_NODES simulated nodes"
  "$BENCH" simulated-nodes --endpoint "${BLIXARD_EPS[0]}" --nodes "$SIM_NODES"
fi
run() {
  "$BENCH" write --target blixard --endpoints "$eps" --clients "$CLIENTS" --duration "$DURATION" --warmup "$WARMUP" \
    --server-pids "$pids" "$@"
}
echo "== $((SIM_NODES + 3)) registered nodes ($SIM_NODES simulated)"
echo "== kv put, $CLIENTS clients"; run
echo "== vm create (a placement each), $CLIENTS clients"; run --vm-creates
echo "== kv put again, $CLIENTS clients"; run
stop_all
echo "== the scheduler alone, in memory, one thread"
taskset -c 0 "$BENCH" place
