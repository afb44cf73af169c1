#!/usr/bin/env bash
# A write through a follower at the instant the leader dies, as a user makes it: the leader of a
# 3-node cluster gets SIGKILL and, at once, the CLI writes through a follower —
# `blixard --addr FOLLOWER kv put K V` against `etcdctl --endpoints FOLLOWER put K V` (etcd with
# its defaults and with blixard's timers). The figure is the CLI's wall time from the kill to
# its exit, process start included; each run is on a fresh cluster, and the value is read back
# afterwards (through both survivors) to check the write was applied.
#
#   scripts/bench/follower-failover.sh
#
# Knobs (environment): RUNS (9), PORT_BASE (26000), BENCH_DIR (.blixard/bench), CARGO_TARGET_DIR
# (target), BLIXARD_NODE_ARGS (extra `blixard node` flags). Every process it starts is killed on
# exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"

RUNS="${RUNS:-9}"
PORT_BASE="${PORT_BASE:-26000}"
BENCH_DIR="${BENCH_DIR:-$ROOT/.blixard/bench}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
read -r -a NODE_ARGS <<<"${BLIXARD_NODE_ARGS:-}"
READY_TIMEOUT=30
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || { echo "bench: error: RUNS must be a positive integer, not '$RUNS'" >&2; exit 1; }

log() { echo "bench: $*" >&2; }
die() { log "error: $*"; exit 1; }

scripts/setup.sh
command -v jq >/dev/null || die "jq is needed"
command -v etcd >/dev/null || die "etcd not found (Debian package etcd-server)"
command -v etcdctl >/dev/null || die "etcdctl not found (Debian package etcd-client)"
log "building release binaries into $TARGET_DIR"
cargo build --release -p blixard
export BLIXARD_IMAGE_CACHE="${BLIXARD_IMAGE_CACHE:-$PWD/.blixard/images}"
BLIXARD="$TARGET_DIR/release/blixard"
"$BLIXARD" image build --cache "$BLIXARD_IMAGE_CACHE" >/dev/null

mkdir -p "$BENCH_DIR"
WORK="$(mktemp -d "$BENCH_DIR/follower.XXXXXX")"
RESULTS="$BENCH_DIR/follower-failover-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$RESULTS"
# shellcheck source=scripts/bench/lib.sh
source "$ROOT/scripts/bench/lib.sh"

now_ns() { date +%s%N; }

# One blixard run: prints "MS RC".
blixard_run() { # $1: run
  blixard_start "$WORK/bx-$1" 3 >/dev/null
  local st leader laddr follower pid t0 t1 rc=0
  st="$("$BLIXARD" cluster status -o json --addr "${BLIXARD_EPS[0]}")"
  leader="$(jq -r .leader_id <<<"$st")"
  laddr="$(jq -r --argjson l "$leader" '.members[] | select(.id == $l) | .addr' <<<"$st")"
  follower="$(for e in "${BLIXARD_EPS[@]}"; do [ "$e" != "$laddr" ] && echo "$e"; done | head -n1)"
  pid="$(tr ',' '\n' <<<"$BLIXARD_PIDMAP" | sed -n "s/^$laddr=//p")"
  t0=$(now_ns)
  kill -KILL "$pid"
  "$BLIXARD" --addr "$follower" kv put "failover-$1" "v$1" >/dev/null 2>"$RESULTS/bx-$1.err" || rc=$?
  t1=$(now_ns)
  # Applied, and readable through both survivors.
  local e got
  for e in "${BLIXARD_EPS[@]}"; do
    [ "$e" = "$laddr" ] && continue
    got="$("$BLIXARD" --addr "$e" kv get "failover-$1" 2>/dev/null || true)"
    [ "$got" = "v$1" ] || { log "blixard run $1: $e reads '$got', not v$1"; rc=99; }
  done
  stop_all
  echo "$(( (t1 - t0) / 1000000 )) $rc"
}

# One etcd run; extra arguments go to etcd. Prints "MS RC".
etcd_run() { # $1: run
  local r="$1"
  shift
  etcd_start "$WORK/etcd-$r-$RANDOM" "$@" >/dev/null
  local eps leader lep follower pid t0 t1 rc=0 e
  eps="$(IFS=,; echo "${ETCD_EPS[*]}")"
  for e in "${ETCD_EPS[@]}"; do
    if etcdctl --endpoints="$e" endpoint status -w json | jq -e '.[0].Status.leader == .[0].Status.header.member_id' >/dev/null; then
      lep="$e"
    fi
  done
  [ -n "${lep:-}" ] || die "no etcd leader found"
  follower="$(for e in "${ETCD_EPS[@]}"; do [ "$e" != "$lep" ] && echo "$e"; done | head -n1)"
  pid="$(tr ',' '\n' <<<"$ETCD_PIDMAP" | sed -n "s/^$lep=//p")"
  t0=$(now_ns)
  kill -KILL "$pid"
  etcdctl --endpoints="$follower" put "failover-$r" "v$r" >/dev/null 2>"$RESULTS/etcd-$r.err" || rc=$?
  t1=$(now_ns)
  leader="$(etcdctl --endpoints="$follower" --command-timeout=10s get "failover-$r" --print-value-only 2>/dev/null || true)"
  [ "$rc" != 0 ] || [ "$leader" = "v$r" ] || { log "etcd run $r: reads '$leader', not v$r"; rc=99; }
  stop_all
  echo "$(( (t1 - t0) / 1000000 )) $rc"
}

TICK="$(blixard_default tick-ms)" ELECTION="$(blixard_default election-ticks)" HEARTBEAT="$(blixard_default heartbeat-ticks)"
BX_HB_MS=$((TICK * HEARTBEAT)) BX_EL_MS=$((TICK * ELECTION))
log "machine: $(machine)"

: >"$RESULTS/runs.txt"
for r in $(seq "$RUNS"); do
  b="$(blixard_run "$r")"
  e="$(etcd_run "$r")"
  m="$(etcd_run "m$r" --heartbeat-interval "$BX_HB_MS" --election-timeout "$BX_EL_MS")"
  log "run $r: blixard $b, etcd $e, etcd with blixard's timers $m (ms exit-code)"
  echo "$r $b $e $m" >>"$RESULTS/runs.txt"
done

# Median, min and max of column $1 (ms) over runs whose exit code (column $2) is 0, and the
# failures (with their median time to the error).
summary() {
  local ok bad n f med
  ok="$(awk -v c="$1" -v rc="$2" '$rc == 0 {print $c}' "$RESULTS/runs.txt" | sort -n)"
  bad="$(awk -v c="$1" -v rc="$2" '$rc != 0 {print $c}' "$RESULTS/runs.txt" | sort -n)"
  n=$(grep -c . <<<"$ok" || true) f=$(grep -c . <<<"$bad" || true)
  median() { awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : int((v[NR / 2] + v[NR / 2 + 1]) / 2)}'; }
  if [ "$n" -gt 0 ]; then
    med="$(median <<<"$ok")"
    printf '%s ms (min %s, max %s)' "$med" "$(head -n1 <<<"$ok")" "$(tail -n1 <<<"$ok")"
    [ "$f" = 0 ] || printf '; %s of %s runs failed' "$f" "$((n + f))"
  else
    printf 'every run failed (error after a median %s ms)' "$(median <<<"$bad")"
  fi
}
{
  echo "Run $(date -u +%Y-%m-%dT%H:%MZ) on $(machine); $(etcd --version | head -n1); $RUNS runs, a fresh cluster each."
  echo
  echo "| CLI write through a follower, leader killed at the same instant | median |"
  echo "|---|---|"
  echo "| blixard (\`blixard kv put\`, defaults: heartbeat $BX_HB_MS ms, election $BX_EL_MS ms) | $(summary 2 3) |"
  echo "| etcd (\`etcdctl put\`, defaults: heartbeat 100 ms, election 1000 ms) | $(summary 4 5) |"
  echo "| etcd with blixard's timers | $(summary 6 7) |"
} | tee "$RESULTS/table.md"
log "results in $RESULTS"
