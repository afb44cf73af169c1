#!/usr/bin/env bash
# State at scale: a fresh 3-node blixard cluster with SIM_NODES simulated nodes (capacity-only,
# no members, running nothing: `blixard-bench simulated-nodes`), filled with VMS stopped VM
# records through Raft (`blixard-bench vm-fill`, each a placement in apply; nothing boots). Then,
# with that many records:
# - each daemon's resident memory (VmRSS, and its peak VmHWM) before and after the fill;
# - the snapshot's size: `blixard backup save` writes the same export a Raft snapshot carries
#   (`snapshot_of`), and how long it took; each node's data dir and redb file on disk;
# - `vm list`: the CLI's first page (`vm list --limit 100`, wall time of the whole command), and
#   the whole listing walked page by page (`blixard-bench vm-list`, pages of 1000 and 10000);
# - restart time: a follower stopped (SIGTERM) and started again, until it answers as a ready
#   voter with the cluster's state (its `vm get` of the last VM created answers locally); then
#   its RSS again.
# Simulated nodes never heartbeat, so the cluster runs with the longest down timeout, 10 min.
#
#   scripts/bench/state-at-scale.sh
#
# Knobs (environment): VMS (100000), SIM_NODES (1000), CLIENTS (64), PORT_BASE (31000),
# BENCH_DIR (.blixard/bench), CARGO_TARGET_DIR (target). Every process it starts is killed on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"

VMS="${VMS:-100000}"
SIM_NODES="${SIM_NODES:-1000}"
CLIENTS="${CLIENTS:-64}"
PORT_BASE="${PORT_BASE:-31000}"
BENCH_DIR="${BENCH_DIR:-$ROOT/.blixard/bench}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
NODE_ARGS=(--down-after-ms 600000)
READY_TIMEOUT=300
log() { echo "bench: $*" >&2; }
# shellcheck source=scripts/bench/lib.sh
source "$ROOT/scripts/bench/lib.sh"
require_positive VMS SIM_NODES CLIENTS
bench_binaries state-at-scale

rss() { # "VmRSS / VmHWM" of pid $1, in MiB
  awk '/^VmRSS:/ {r=$2} /^VmHWM:/ {h=$2} END {printf "%.0f / %.0f MiB", r/1024, h/1024}' "/proc/$1/status"
}
show_rss() {
  local i
  for i in 1 2 3; do echo "node $i (pid ${PIDS[$((i - 1))]}): RSS / peak $(rss "${PIDS[$((i - 1))]}")"; done
}
now_ms() { date +%s%3N; }

log "machine: $(machine); load average: $(cut -d' ' -f1-3 /proc/loadavg)"
blixard_start "$WORK/bx" 3 >/dev/null
eps="$(join_eps "${BLIXARD_EPS[@]}")"
"$BENCH" simulated-nodes --endpoint "${BLIXARD_EPS[0]}" --nodes "$SIM_NODES" --zones 0
echo "== before the fill ($SIM_NODES simulated nodes)"
show_rss
echo "== creating $VMS VMs ($CLIENTS clients)"
"$BENCH" vm-fill --endpoints "$eps" --vms "$VMS" --clients "$CLIENTS"
echo "== with $VMS VM records; load average $(cut -d' ' -f1-3 /proc/loadavg)"
show_rss
t0=$(now_ms)
"$BLIXARD" backup save --addr "${BLIXARD_EPS[0]}" "$WORK/state.backup" >/dev/null
t1=$(now_ms)
echo "snapshot (backup save): $(stat -c %s "$WORK/state.backup") bytes, $((t1 - t0)) ms"
for i in 1 2 3; do
  echo "node $i data dir: $(du -sb "$WORK/bx/n$i" | cut -f1) bytes ($(du -sh "$WORK/bx/n$i" | cut -f1)); largest files:" \
    "$(find "$WORK/bx/n$i" -type f -printf '%s %P\n' | sort -rn | head -3 | paste -sd, -)"
done
echo "== vm list"
for limit in 100 1000; do
  t0=$(now_ms)
  lines=$("$BLIXARD" vm list --limit "$limit" --addr "${BLIXARD_EPS[1]}" | wc -l)
  t1=$(now_ms)
  echo "blixard vm list --limit $limit (a follower): $((t1 - t0)) ms for the command, $lines lines"
done
"$BENCH" vm-list --endpoint "${BLIXARD_EPS[1]}" --limit 1000 --rounds 3
"$BENCH" vm-list --endpoint "${BLIXARD_EPS[1]}" --limit 10000 --rounds 3
echo "== restart of a follower"
leader="$(blixard_status "${BLIXARD_EPS[0]}" | jq -r .leader_id)"
f=1
[ "$leader" != 1 ] || f=2
idx=$((f - 1))
pid="${PIDS[$idx]}"
kill -TERM "$pid"
for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$pid" 2>/dev/null && { log "node $f did not stop on SIGTERM"; exit 1; }
addr="${BLIXARD_EPS[$idx]}"
t0=$(now_ms)
"$BLIXARD" node --id "$f" --bind "$addr" --data-dir "$WORK/bx/n$f" "${NODE_ARGS[@]}" 2>>"$WORK/bx/n$f.log" &
PIDS[idx]=$!
disown $!
# Ready: it answers, sees a leader and 3 ready voters, and its local (stale) listing holds all VMs.
local_count() {
  "$BENCH" vm-list --endpoint "$addr" --limit 10000 --rounds 1 --stale | sed -n 's/^vm list of \([0-9]*\) VMs.*/\1/p'
}
has_all() { [ "$(local_count)" -ge "$VMS" ]; }
wait_for "node $f to answer as a ready voter" blixard_ready "$addr" 3
t1=$(now_ms)
wait_for "node $f to hold all $VMS VMs" has_all
t2=$(now_ms)
echo "node $f restarted: a ready voter after $((t1 - t0)) ms, all $VMS VMs listed locally after $((t2 - t0)) ms"
echo "node $f after the restart: RSS / peak $(rss "${PIDS[$idx]}")"
stop_all
