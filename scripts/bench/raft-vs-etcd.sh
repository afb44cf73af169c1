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
#   TLS=1 scripts/bench/raft-vs-etcd.sh      # both with TLS
#   TLS=both scripts/bench/raft-vs-etcd.sh   # both with TLS, and blixard without TLS too
#
# TLS=1: blixard with mutual TLS (certificates from `blixard cert`, a fresh CA per run under the
# run directory) against etcd with client TLS (--client-cert-auth, server certificates from the
# same CA) and --peer-auto-tls; the benchmark client presents a client certificate to both.
# TLS=both: the same, and every round also runs blixard without TLS next to its TLS run (round
# order etcd, blixard with TLS, blixard without; reversed in even rounds), and the report adds a
# table of blixard's own TLS cost. TLS=0 (the default): plaintext, as before.
#
# Knobs (environment): ROUNDS (3), DURATION (10s per case), WARMUP (2s), CLIENTS (1,16,64,256),
# FAILOVER_RUNS (5), PORT_BASE (24000), BENCH_DIR (.blixard/bench: data dirs and results),
# CARGO_TARGET_DIR (target), QUIET_WAIT (0: seconds to wait, after building, for the 1-minute
# load average to drop below 1 on a shared machine), BLIXARD_NODE_ARGS (extra `blixard node`
# flags, e.g. "--idle-spin-us 0", for an ablation; the recorded runs use none), TLS (0, 1 or
# both, above). Every process it starts is killed on exit.
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
TLS="${TLS:-0}"
read -r -a NODE_ARGS <<<"${BLIXARD_NODE_ARGS:-}"
READY_TIMEOUT=30 # seconds a cluster gets to elect a leader and gather its voters
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || { echo "bench: error: ROUNDS must be a positive integer, not '$ROUNDS'" >&2; exit 1; }
[[ "$TLS" =~ ^(0|1|both)$ ]] || { echo "bench: error: TLS must be 0, 1 or both, not '$TLS'" >&2; exit 1; }

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

# Names in the report, and TLS: one fresh CA for both systems (lib.sh's bench_certs).
ETCD_NAME=etcd BX_NAME=blixard PLAIN_NAME="blixard (plaintext)"
ETCD_TLS_CA="" BLIXARD_TLS_CA="" CA=""
if [ "$TLS" != 0 ]; then
  unset BLIXARD_TLS_DIR # each blixard command gets --tls-dir (or none) explicitly
  CA="$WORK/ca"
  bench_certs "$CA"
  ETCD_TLS_CA="$CA" BLIXARD_TLS_CA="$CA"
  ETCD_NAME="etcd (TLS)" BX_NAME="blixard (mTLS)"
  log "TLS: certificates from a fresh CA in $CA; etcd: client TLS (--client-cert-auth) and --peer-auto-tls; blixard: mutual TLS"
fi

# ---- the runs ----

# The benchmark client's TLS flags for $1 (etcd or blixard) as its cluster is set up now, into
# BENCH_TLS (empty: plaintext).
bench_tls() {
  local ca="$BLIXARD_TLS_CA"
  [ "$1" = etcd ] && ca="$ETCD_TLS_CA"
  BENCH_TLS=()
  [ -z "$ca" ] || BENCH_TLS=(--tls-dir "$ca/client-bench")
}

bench_write() { # $1: target, $2: endpoints, $3: output file, then more `blixard-bench write` flags
  local target="$1" eps="$2" out="$3"
  shift 3
  bench_tls "$target"
  "$BENCH" write --target "$target" --endpoints "$eps" --clients "$CLIENTS" --duration "$DURATION" --warmup "$WARMUP" \
    --keys 100000 --value-size 64 --server-pids "$(join_eps "${PIDS[@]}")" "${BENCH_TLS[@]}" "$@" --json >"$out"
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
      blixard_start "$WORK/$(basename "$out" .jsonl)-$r" 3 # a fresh data dir per series and run
      eps="$(join_eps "${BLIXARD_EPS[@]}")" pids="$BLIXARD_PIDMAP"
    fi
    bench_tls "$target"
    "$BENCH" failover --target "$target" --endpoints "$eps" --pids "$pids" "${BENCH_TLS[@]}" --json | tee -a "$out" >&2
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
blixard_round() { # $1: round; $2: "plain" for blixard without TLS in a TLS=both run
  local name=blixard file=blixard label="" before after
  if [ "${2:-}" = plain ]; then
    name="blixard (plaintext)" file=blixard-plain label=" (plaintext)"
    BLIXARD_TLS_CA=""
  fi
  log "$name: round $1/$ROUNDS: 3 nodes, write benchmark"
  blixard_start "$WORK/$file-write-$1" 3
  before=$(blixard_status "${BLIXARD_EPS[0]}" | jq .term)
  bench_write blixard "$(join_eps "${BLIXARD_EPS[@]}")" "$RESULTS/$file-write-$1.json"
  after=$(blixard_status "${BLIXARD_EPS[0]}" | jq .term)
  # Elections under full write load show as term changes.
  log "$name: round $1: Raft term $before → $after ($((after - before)) elections)"
  ELECTIONS_TOTAL=$((ELECTIONS_TOTAL + after - before))
  TERMS+="${TERMS:+, }round $1$label: $before → $after"
  stop_all
  BLIXARD_TLS_CA="$CA"
}

# The write benchmark: ROUNDS rounds, each system on a fresh cluster per round, alternating
# which goes first (with TLS=both, blixard without TLS runs right next to blixard with it).
for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then
    etcd_round "$r"
    blixard_round "$r"
    [ "$TLS" != both ] || blixard_round "$r" plain
  else
    [ "$TLS" != both ] || blixard_round "$r" plain
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
if [ "$TLS" = both ]; then
  BLIXARD_TLS_CA=""
  failover_series blixard "$RESULTS/blixard-plain-failover.jsonl"
  BLIXARD_TLS_CA="$CA"
fi

report_args=()
for r in $(seq "$ROUNDS"); do
  report_args+=(--blixard "$RESULTS/blixard-write-$r.json" --etcd "$RESULTS/etcd-write-$r.json")
  [ "$TLS" != both ] || report_args+=(--blixard-plain "$RESULTS/blixard-plain-write-$r.json")
done
if [ "$TLS" != 0 ]; then
  report_args+=(--blixard-label "$BX_NAME" --etcd-label "$ETCD_NAME" --plain-label "$PLAIN_NAME")
fi
if [ -f "$RESULTS/blixard-failover.jsonl" ]; then
  report_args+=(--failover "$BX_NAME (defaults: heartbeat $BX_HB_MS ms, election $BX_EL_MS ms)=$RESULTS/blixard-failover.jsonl")
fi
if [ -f "$RESULTS/blixard-plain-failover.jsonl" ]; then
  report_args+=(--failover "$PLAIN_NAME (defaults: heartbeat $BX_HB_MS ms, election $BX_EL_MS ms)=$RESULTS/blixard-plain-failover.jsonl")
fi
report_args+=(--failover "$ETCD_NAME (defaults: heartbeat 100 ms, election 1000 ms)=$RESULTS/etcd-failover.jsonl"
  --failover "$ETCD_NAME with blixard's timers (heartbeat $BX_HB_MS ms, election $BX_EL_MS ms)=$RESULTS/etcd-failover-matched.jsonl")
{
  echo "Run $(date -u +%Y-%m-%dT%H:%MZ) on $(machine); $(etcd --version | head -n1)."
  echo "Per case: $WARMUP warm-up, $DURATION measured; 64-byte values, 8-byte keys drawn from 100000;"
  echo "$ROUNDS rounds, each a fresh cluster per system, alternating which system goes first (etcd in round 1)."
  if [ "$TLS" != 0 ]; then
    echo "TLS=$TLS: blixard with mutual TLS (certificates from \`blixard cert\`, a fresh CA per run); etcd with client"
    echo "TLS (--client-cert-auth, server certificates from the same CA) and --peer-auto-tls; the benchmark client"
    echo "presents a client certificate to both, through tonic's rustls (ring) TLS."
  fi
  [ "$TLS" != both ] || echo "Each round also ran blixard without TLS, next to its TLS run (etcd, blixard (mTLS), blixard (plaintext); reversed in even rounds)."
  [ ${#NODE_ARGS[@]} = 0 ] || echo "blixard nodes ran with: ${NODE_ARGS[*]}"
  echo
  "$BENCH" report "${report_args[@]}"
  [ -z "${ELECTIONS:-}" ] || { echo; echo "$ELECTIONS."; }
} | tee "$RESULTS/table.md"
log "results in $RESULTS"
