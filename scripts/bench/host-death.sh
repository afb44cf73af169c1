#!/usr/bin/env bash
# Host death → the VM serving again elsewhere, as a user sees it: a 3-node cluster runs a VM
# whose guest serves HTTP through a forwarded port; the daemon of the node hosting it and its
# QEMU get SIGKILL at once (a host death), and the figure is the wall time from the kill to the
# first HTTP answer from the VM's replacement on another node. Each run is on a fresh cluster.
# The breakdown comes from `vm events` (wall-clock times of the commands that recorded them):
# detection (kill → node down, the VM placed elsewhere), start (→ its new node reports it
# running), HTTP (→ the first answer). Then, in the same run, the boot of the same image by
# QEMU started by hand (`blixard-bench vmstart`, PAIRS pairs) as the anchor.
#
#   scripts/bench/host-death.sh
#
# Knobs (environment): RUNS (5), PAIRS (5), PORT_BASE (27000), BENCH_DIR (.blixard/bench),
# CARGO_TARGET_DIR (target), BLIXARD_NODE_ARGS (extra `blixard node` flags), KEEP (non-empty:
# keep the daemons' logs and data dirs). Every process it starts is killed on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"

RUNS="${RUNS:-5}"
PAIRS="${PAIRS:-5}"
PORT_BASE="${PORT_BASE:-27000}"
BENCH_DIR="${BENCH_DIR:-$ROOT/.blixard/bench}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
read -r -a NODE_ARGS <<<"${BLIXARD_NODE_ARGS:-}"
READY_TIMEOUT=120
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || { echo "bench: error: RUNS must be a positive integer, not '$RUNS'" >&2; exit 1; }
[[ "$PAIRS" =~ ^[1-9][0-9]*$ ]] || { echo "bench: error: PAIRS must be a positive integer, not '$PAIRS'" >&2; exit 1; }

log() { echo "bench: $*" >&2; }
die() { log "error: $*"; exit 1; }

scripts/setup.sh
command -v jq >/dev/null || die "jq is needed"
command -v curl >/dev/null || die "curl is needed"
log "building release binaries into $TARGET_DIR"
cargo build --release --locked -q -p blixard -p blixard-bench
export BLIXARD_IMAGE_CACHE="${BLIXARD_IMAGE_CACHE:-$PWD/.blixard/images}"
BLIXARD="$TARGET_DIR/release/blixard"
"$BLIXARD" image build --cache "$BLIXARD_IMAGE_CACHE" >/dev/null

mkdir -p "$BENCH_DIR"
WORK="$(mktemp -d "$BENCH_DIR/host-death.XXXXXX")"
# shellcheck source=scripts/bench/lib.sh
source "$ROOT/scripts/bench/lib.sh"
kill_vms() { pkill -9 -f "qemu-system.*$WORK" 2>/dev/null || true; }
trap 'rc=$?; kill_vms; stop_all; kill_vms; if [ $rc = 0 ] && [ -z "${KEEP:-}" ]; then rm -rf "$WORK"; else log "logs kept in $WORK"; fi' EXIT

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
http_ok() { curl -s --max-time 0.5 "http://127.0.0.1:$1/" 2>/dev/null | grep -q "hello from web"; }

# The node that runs the VM, once every node is ready and the VM is placed, reported running
# there and not handed over; fails (prints nothing) otherwise.
vm_host() {
  "$BLIXARD" --addr "$1" node list -o json | jq -e '.nodes | length == 3 and all(.status == "ready")' >/dev/null \
    || return 1
  "$BLIXARD" --addr "$1" vm get web -o json \
    | jq -er 'select(.node != null and .handoff_from == null and .observed.phase == "running") | .node'
}

# The VM's node, once it is placed on a node other than $2 and reported running there.
moved_to() {
  "$BLIXARD" --addr "$1" vm get web -o json \
    | jq -er --argjson dead "$2" 'select(.node != null and .node != $dead and .observed.phase == "running") | .node'
}

median() { sort -n | awk '{a[NR]=$1} END {if (NR % 2) print a[(NR+1)/2]; else print int((a[NR/2]+a[NR/2+1])/2)}'; }

log "machine: $(machine)"
: >"$WORK/runs"
for run in $(seq "$RUNS"); do
  dir="$WORK/run-$run"
  blixard_start "$dir" 3 >/dev/null
  a="${BLIXARD_EPS[0]}"
  port=$((PORT_BASE + 500 + run))
  "$BLIXARD" --addr "$a" vm create web --memory 128 --port "$port:80" --cmdline blixard.http=80 \
    --restart always --start -o json >/dev/null
  READY_TIMEOUT=120 wait_for "the VM's HTTP answer" http_ok "$port"
  # Settled before the kill: every node ready, and the VM placed, running and not moving (a
  # node marked down meanwhile would move it, and the run would measure that instead).
  READY_TIMEOUT=30 wait_for "every node ready and the VM running on one" vm_host "$a"
  host="$(vm_host "$a")"
  survivor="${BLIXARD_EPS[$(( host % 3 ))]}" # a node other than the host
  t0="$(now_ms)"
  kill -9 "${PIDS[$((host - 1))]}"
  pkill -9 -f "qemu-system.*$dir/n$host/" || true
  deadline=$((SECONDS + 120))
  until http_ok "$port"; do
    [ $SECONDS -lt $deadline ] || die "run $run: the VM did not answer again within 120 s"
    sleep 0.02 # the poll interval
  done
  t1="$(now_ms)"
  # The node it answers from now, read once it is reported running there (not mid-placement;
  # not with wait_for, which gives up when a process of the cluster is gone: one was killed).
  deadline=$((SECONDS + 30))
  until to="$(moved_to "$survivor" "$host")"; do
    [ $SECONDS -lt $deadline ] || die "run $run: the VM was not reported running on another node within 30 s"
    sleep 0.1
  done
  ev="$("$BLIXARD" --addr "$survivor" vm events web -o json)"
  down="$(jq -r --arg h "node $host is down" --argjson t0 "$t0" \
    '[.events[] | select((.what | startswith($h)) and .at_ms >= $t0)][0].at_ms' <<<"$ev")"
  running="$(jq -r --arg r "running on node $to" '[.events[] | select(.what | startswith($r))][-1].at_ms' <<<"$ev")"
  [ "$down" != null ] && [ "$running" != null ] \
    || die "run $run: no 'node $host is down' after the kill or no 'running on node $to' event: $ev"
  total=$((t1 - t0)) detect=$((down - t0)) start=$((running - down)) http=$((t1 - running))
  log "run $run: node $host killed, VM on node $to: total $total ms (detection $detect, start $start, HTTP $http)"
  # The steps as the daemons logged them (the leader's down declaration; the new node's QEMU
  # start, the reconciler's prepare/start times, the guest's boot), for where the time goes.
  sed 's/\x1b\[[0-9;]*m//g' "$dir"/n*.log \
    | grep -hE "declaring it down|started QEMU|(started|guest booted) vm=web|lease ran out" \
    | sort | sed 's/^/bench:   /' >&2 || true
  echo "$total $detect $start $http" >>"$WORK/runs"
  kill_vms
  stop_all
done

col() { awk -v c="$1" '{print $c}' "$WORK/runs" | median; }
echo "host death → HTTP again elsewhere, median of $RUNS runs: total $(col 1) ms (detection $(col 2), start $(col 3), HTTP $(col 4)); every run (total ms): $(awk '{printf "%s ", $1}' "$WORK/runs")"

log "anchor: the same image booted by blixard and by hand (blixard-bench vmstart, $PAIRS pairs)"
blixard_start "$WORK/anchor" 1 >/dev/null
"$TARGET_DIR/release/blixard-bench" vmstart --addr "${BLIXARD_EPS[0]}" --data-dir "$WORK/anchor/n1" --pairs "$PAIRS"
