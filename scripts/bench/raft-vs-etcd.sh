#!/usr/bin/env bash
# Blixard vs etcd, side by side on this machine: closed-loop puts (64-byte values, 8-byte keys
# from 100k) with 1/16/64/256 clients, then leader-kill failover, against 3-node etcd and 3-node
# blixard clusters, all on 127.0.0.1 with fsync on (the default of both). Prints a markdown
# table; docs/BENCHMARKS.md records a run.
#
# The write benchmark runs in ROUNDS rounds, so that a machine whose speed drifts over minutes
# hits both systems alike: each round starts a fresh etcd cluster and runs every client count
# against it, then a fresh blixard cluster and the same (the order alternates: etcd first in odd
# rounds, blixard first in even ones). One client runs twice, through the leader's endpoint and
# through a follower's; more clients are spread round-robin over the three endpoints. The table
# gives the median over the rounds and the range of the per-round ratios. The failover series
# follow the rounds.
#
#   scripts/bench/raft-vs-etcd.sh
#
# Knobs (environment): ROUNDS (3), DURATION (10s per case), WARMUP (2s), CLIENTS (1,16,64,256),
# FAILOVER_RUNS (5), PORT_BASE (24000), BENCH_DIR (.blixard/bench: data dirs and results),
# CARGO_TARGET_DIR (target), QUIET_WAIT (0: seconds to wait, after building, for the 1-minute
# load average to drop below 1 on a shared machine), BLIXARD_NODE_ARGS (extra `blixard node`
# flags, e.g. "--idle-spin-us 0", for an ablation; the recorded runs use none). Every process it
# starts is killed on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"

ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-10s}"
WARMUP="${WARMUP:-2s}"
CLIENTS="${CLIENTS:-1,16,64,256}"
FAILOVER_RUNS="${FAILOVER_RUNS:-5}"
PORT_BASE="${PORT_BASE:-24000}"
BENCH_DIR="${BENCH_DIR:-$ROOT/.blixard/bench}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
QUIET_WAIT="${QUIET_WAIT:-0}"
read -r -a NODE_ARGS <<<"${BLIXARD_NODE_ARGS:-}"
READY_TIMEOUT=30 # seconds a cluster gets to elect a leader and gather its voters
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || { echo "bench: error: ROUNDS must be a positive integer, not '$ROUNDS'" >&2; exit 1; }

log() { echo "bench: $*" >&2; }
die() { log "error: $*"; exit 1; }

scripts/setup.sh
command -v jq >/dev/null || die "jq is needed to read 'blixard cluster status -o json' (apt-get install jq)"
command -v etcd >/dev/null || die "etcd not found (Debian package etcd-server)"
command -v etcdctl >/dev/null || die "etcdctl not found (Debian package etcd-client)"

log "building release binaries into $TARGET_DIR"
cargo build --release -p blixard -p blixard-bench
# One guest image (and KVM verdict) for every node: built once here, not by each node at start.
export BLIXARD_IMAGE_CACHE="${BLIXARD_IMAGE_CACHE:-$PWD/.blixard/images}"
"$TARGET_DIR/release/blixard" image build --cache "$BLIXARD_IMAGE_CACHE" >/dev/null
BLIXARD="$TARGET_DIR/release/blixard"
BENCH="$TARGET_DIR/release/blixard-bench"

mkdir -p "$BENCH_DIR"
# fsync must really reach a disk: refuse tmpfs, where it is a no-op.
if [ "$(stat -f -c %T "$BENCH_DIR")" = tmpfs ]; then
  die "$BENCH_DIR is on tmpfs, where fsync does nothing; set BENCH_DIR to a directory on a disk"
fi
WORK="$(mktemp -d "$BENCH_DIR/run.XXXXXX")"
RESULTS="$BENCH_DIR/results-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$RESULTS"

# shellcheck source=scripts/bench/lib.sh
source "$ROOT/scripts/bench/lib.sh"

# ---- the runs ----

bench_write() { # $1: target, $2: endpoints, $3: output file, then more `blixard-bench write` flags
  local target="$1" eps="$2" out="$3"
  shift 3
  "$BENCH" write --target "$target" --endpoints "$eps" --clients "$CLIENTS" --duration "$DURATION" --warmup "$WARMUP" \
    --keys 100000 --value-size 64 --server-pids "$(join_eps "${PIDS[@]}")" "$@" --json >"$out"
}

# FAILOVER_RUNS fresh clusters; for each, kill the leader and time the first write.
# $1: target, $2: output file (JSON lines), then the etcd flags (etcd only).
failover_series() {
  local target="$1" out="$2" r eps pids
  shift 2
  : >"$out"
  for r in $(seq "$FAILOVER_RUNS"); do
    log "$target: failover run $r/$FAILOVER_RUNS $*"
    if [ "$target" = etcd ]; then
      etcd_start "$WORK/etcd-failover-$r-$RANDOM" "$@"
      eps="$(join_eps "${ETCD_EPS[@]}")" pids="$ETCD_PIDMAP"
    else
      blixard_start "$WORK/blixard-failover-$r" 3
      eps="$(join_eps "${BLIXARD_EPS[@]}")" pids="$BLIXARD_PIDMAP"
    fi
    "$BENCH" failover --target "$target" --endpoints "$eps" --pids "$pids" --json | tee -a "$out" >&2
    stop_all
  done
}

quiet_deadline=$((SECONDS + QUIET_WAIT))
while awk '{exit !($1 >= 1)}' /proc/loadavg && [ $SECONDS -lt $quiet_deadline ]; do
  log "waiting for a quiet machine: load average $(cut -d' ' -f1-3 /proc/loadavg)"
  sleep 10
done
log "machine: $(machine)"
log "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
log "etcd: $(etcd --version | head -n1)"

# Blixard's Raft timers, so etcd can also be timed with the same ones (its defaults are
# heartbeat 100 ms, election 1000 ms; blixard's are much shorter, which decides failover).
TICK="$(blixard_default tick-ms)" ELECTION="$(blixard_default election-ticks)" HEARTBEAT="$(blixard_default heartbeat-ticks)"
[ -n "$TICK" ] && [ -n "$ELECTION" ] && [ -n "$HEARTBEAT" ] || die "cannot read blixard's Raft timer defaults from 'blixard node --help'"
BX_HB_MS=$((TICK * HEARTBEAT)) BX_EL_MS=$((TICK * ELECTION))
log "blixard timers: tick $TICK ms, heartbeat $BX_HB_MS ms, election $BX_EL_MS ms (randomized up to 2x)"

# One round of one system: a fresh cluster, every client count, then the cluster is stopped.
etcd_round() { # $1: round
  log "etcd: round $1/$ROUNDS: 3 nodes, write benchmark"
  etcd_start "$WORK/etcd-write-$1"
  bench_write etcd "$(join_eps "${ETCD_EPS[@]}")" "$RESULTS/etcd-write-$1.json"
  stop_all
}
ELECTIONS_TOTAL=0 TERMS=""
blixard_round() { # $1: round
  log "blixard: round $1/$ROUNDS: 3 nodes, write benchmark"
  blixard_start "$WORK/blixard-write-$1" 3
  local before after
  before=$("$BLIXARD" cluster status -o json --addr "${BLIXARD_EPS[0]}" | jq .term)
  bench_write blixard "$(join_eps "${BLIXARD_EPS[@]}")" "$RESULTS/blixard-write-$1.json"
  after=$("$BLIXARD" cluster status -o json --addr "${BLIXARD_EPS[0]}" | jq .term)
  # Elections under full write load show as term changes.
  log "blixard: round $1: Raft term $before → $after ($((after - before)) elections)"
  ELECTIONS_TOTAL=$((ELECTIONS_TOTAL + after - before))
  TERMS+="${TERMS:+, }round $1: $before → $after"
  stop_all
}

# The write benchmark: ROUNDS rounds, each system on a fresh cluster per round, alternating
# which goes first.
for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then
    etcd_round "$r"
    blixard_round "$r"
  else
    blixard_round "$r"
    etcd_round "$r"
  fi
done
ELECTIONS="blixard Raft term during the write benchmark: $TERMS ($ELECTIONS_TOTAL elections in $ROUNDS rounds)"
log "$ELECTIONS"

# Failover: a fresh cluster per run.
failover_series etcd "$RESULTS/etcd-failover.jsonl"
failover_series etcd "$RESULTS/etcd-failover-matched.jsonl" \
  --heartbeat-interval "$BX_HB_MS" --election-timeout "$BX_EL_MS"
failover_series blixard "$RESULTS/blixard-failover.jsonl"

report_args=()
for r in $(seq "$ROUNDS"); do
  report_args+=(--blixard "$RESULTS/blixard-write-$r.json" --etcd "$RESULTS/etcd-write-$r.json")
done
if [ -f "$RESULTS/blixard-failover.jsonl" ]; then
  report_args+=(--failover "blixard (defaults: heartbeat $BX_HB_MS ms, election $BX_EL_MS ms)=$RESULTS/blixard-failover.jsonl")
fi
report_args+=(--failover "etcd (defaults: heartbeat 100 ms, election 1000 ms)=$RESULTS/etcd-failover.jsonl"
  --failover "etcd with blixard's timers (heartbeat $BX_HB_MS ms, election $BX_EL_MS ms)=$RESULTS/etcd-failover-matched.jsonl")
{
  echo "Run $(date -u +%Y-%m-%dT%H:%MZ) on $(machine); $(etcd --version | head -n1)."
  echo "Per case: $WARMUP warm-up, $DURATION measured; 64-byte values, 8-byte keys drawn from 100000;"
  echo "$ROUNDS rounds, each a fresh cluster per system, alternating which system goes first (etcd in round 1)."
  [ ${#NODE_ARGS[@]} = 0 ] || echo "blixard nodes ran with: ${NODE_ARGS[*]}"
  echo
  "$BENCH" report "${report_args[@]}"
  [ -z "${ELECTIONS:-}" ] || { echo; echo "$ELECTIONS."; }
} | tee "$RESULTS/table.md"
log "results in $RESULTS"
