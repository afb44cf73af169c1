#!/usr/bin/env bash
# Real-process chaos: `blixard node` processes, each in its own network namespace on a private
# bridge, concurrent recording clients through every node, and a seeded nemesis that kills (-9)
# and restarts nodes, pauses them (SIGSTOP/SIGCONT), partitions them with blackhole routes and
# transfers leadership (`blixard cluster transfer-leader`).
# At the end: all nodes converge to one KV state, a final linearizable read of every key, and
# the whole history through the linearizability checker (so no acknowledged write is lost).
#
#   scripts/chaos.sh [--duration 60s|10m|N] [--nodes 5] [--seed N] [--keep-history FILE]
#                    [--inject-violation] [--keep-logs DIR]
#
# --inject-violation appends a read of a value nobody wrote to the history before checking: the
# run must then report a violation and exit 1 (the check of the checking). --keep-logs copies
# the nodes' logs, the history and the checker's output to DIR at the end (also on a violation).
#
# Needs root (network namespaces). Exit status: 0 no violation; 1 a violation (or a fault the
# cluster did not recover from); 2 bad usage or setup failure. Everything it creates
# (processes, namespaces, veths, the work directory) is removed on exit, also on failure and
# Ctrl-C. Env: BLIXARD_BIN, CHAOS_CLIENT_BIN, BLIXARD_CHECK_BIN to use prebuilt binaries.
set -uo pipefail
cd "$(dirname "$0")/.."

duration=60
nodes=5
seed=$(( $(date +%s) % 100000 ))
keep_history=""
inject=0
keep_logs=""
usage() {
  echo "usage: scripts/chaos.sh [--duration 60s|10m|N] [--nodes N] [--seed N] [--keep-history FILE] [--inject-violation] [--keep-logs DIR]" >&2
  exit 2
}
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) [ $# -ge 2 ] || usage
      case "$2" in
        *m) duration=$(( ${2%m} * 60 )) ;;
        *s) duration=${2%s} ;;
        *) duration=$2 ;;
      esac; shift 2 ;;
    --nodes) [ $# -ge 2 ] || usage; nodes=$2; shift 2 ;;
    --seed) [ $# -ge 2 ] || usage; seed=$2; shift 2 ;;
    --keep-history) [ $# -ge 2 ] || usage; keep_history=$2; shift 2 ;;
    --inject-violation) inject=1; shift ;;
    --keep-logs) [ $# -ge 2 ] || usage; keep_logs=$2; shift 2 ;;
    -h|--help) usage ;;
    *) echo "chaos.sh: unknown argument $1" >&2; usage ;;
  esac
done
[[ "$duration" =~ ^[0-9]+$ ]] && [ "$duration" -ge 10 ] || { echo "chaos.sh: --duration must be >= 10s" >&2; exit 2; }
[[ "$nodes" =~ ^[0-9]+$ ]] && [ "$nodes" -ge 3 ] && [ "$nodes" -le 9 ] || { echo "chaos.sh: --nodes must be 3..9" >&2; exit 2; }
[[ "$seed" =~ ^[0-9]+$ ]] || { echo "chaos.sh: --seed must be a whole number" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "chaos.sh: needs root (network namespaces)" >&2; exit 2; }

if [ -z "${BLIXARD_BIN:-}" ] || [ -z "${CHAOS_CLIENT_BIN:-}" ] || [ -z "${BLIXARD_CHECK_BIN:-}" ]; then
  cargo build -q -p blixard --bin blixard || exit 2
  cargo build -q -p blixard-testkit --features chaos --bin blixard-chaos-client --bin blixard-check || exit 2
fi
target=${CARGO_TARGET_DIR:-target}/debug
BIN=$(realpath "${BLIXARD_BIN:-$target/blixard}")
CLIENT=$(realpath "${CHAOS_CLIENT_BIN:-$target/blixard-chaos-client}")
CHECK=$(realpath "${BLIXARD_CHECK_BIN:-$target/blixard-check}")

RANDOM=$seed
tag="bc$(( $$ % 10000 ))"
subnet="10.214.$(( $$ % 250 ))"
work=$(mktemp -d /tmp/blixard-chaos.XXXXXX)
declare -A pid paused
client_pid=""

log() { echo "[chaos $(date -u +%H:%M:%S)] $*"; }
ns() { echo "${tag}n$1"; }
addr() { echo "$subnet.$1:7001"; }

cleanup() {
  trap - EXIT INT TERM
  if [ -n "$keep_logs" ]; then
    mkdir -p "$keep_logs" && cp "$work"/*.log "$work"/*.out "$work"/*.err "$work"/history.jsonl "$keep_logs"/ 2>/dev/null
  fi
  {
    for i in "${!pid[@]}"; do
      kill -CONT "${pid[$i]}"
      kill -9 "${pid[$i]}"
    done
    [ -n "$client_pid" ] && kill -9 "$client_pid"
    wait
  } 2>/dev/null
  for i in $(seq 1 "$nodes"); do ip netns del "$(ns "$i")" 2>/dev/null; done
  ip netns del "${tag}sw" 2>/dev/null
  ip link del "${tag}br" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
trap 'echo "chaos.sh: interrupted" >&2; exit 130' INT TERM

# The network: a bridge namespace, one namespace per node, and a veth from the root namespace
# (where the clients and this script run) onto the bridge.
setup_net() {
  ip netns add "${tag}sw" && ip -n "${tag}sw" link add br0 type bridge && ip -n "${tag}sw" link set br0 up || return 1
  for i in $(seq 1 "$nodes"); do
    ip netns add "$(ns "$i")" || return 1
    ip link add "${tag}a$i" type veth peer name "${tag}b$i" || return 1
    ip link set "${tag}a$i" netns "${tag}sw" && ip link set "${tag}b$i" netns "$(ns "$i")" || return 1
    ip -n "${tag}sw" link set "${tag}a$i" master br0 up || return 1
    ip -n "$(ns "$i")" addr add "$subnet.$i/24" dev "${tag}b$i" || return 1
    ip -n "$(ns "$i")" link set "${tag}b$i" up && ip -n "$(ns "$i")" link set lo up || return 1
  done
  ip link add "${tag}ar" type veth peer name "${tag}br" || return 1
  ip link set "${tag}ar" netns "${tag}sw" && ip -n "${tag}sw" link set "${tag}ar" master br0 up || return 1
  ip addr add "$subnet.100/24" dev "${tag}br" && ip link set "${tag}br" up
}

# A checkpoint (and log compaction) every 2000 entries: they happen throughout a run, a node
# that falls further behind gets a snapshot, and a restarted node replays at most that much log
# (with the default, 64 MiB of log, kill recovery grew to ~9 s on average over a 10-minute run).
start_node() { # id [--join addr]
  local i=$1; shift
  ip netns exec "$(ns "$i")" "$BIN" node --id "$i" --bind "$(addr "$i")" --data-dir "$work/n$i" --insecure \
    --snapshot-entries 2000 "$@" \
    >/dev/null 2>>"$work/n$i.log" &
  pid[$i]=$!
  paused[$i]=0
}

# Polls `cmd` until it succeeds or `secs` pass; prints the seconds it took.
wait_for() { # secs cmd...
  local secs=$1; shift
  local start now
  start=$(date +%s.%N)
  while :; do
    if "$@" >/dev/null 2>&1; then
      now=$(date +%s.%N); echo "$now $start" | awk '{printf "%.1f", $1 - $2}'; return 0
    fi
    now=$(date +%s.%N)
    if awk -v n="$now" -v s="$start" -v l="$secs" 'BEGIN { exit !(n - s > l) }'; then return 1; fi
    sleep 0.2 # a poll interval
  done
}

voters_ready() {
  local n
  n=$("$BIN" --addr "$(addr 1)" cluster status -o json 2>/dev/null |
    jq '[.members[] | select(.membership == "voter" and .reachable == true)] | length') || return 1
  [ "$n" = "$nodes" ]
}
is_leader_1() { "$BIN" --addr "$(addr 1)" cluster status -o json 2>/dev/null | jq -e '.role == "leader"'; }
leader_id() {
  local i
  for i in $(seq 1 "$nodes"); do
    [ "${paused[$i]}" = 1 ] && continue
    timeout 3 "$BIN" --addr "$(addr "$i")" cluster status -o json 2>/dev/null | jq -e '.leader_id // empty' && return 0
  done
  return 1
}
# A write through node `i` succeeds (the cluster has recovered, seen from there).
write_via() { timeout 10 "$BIN" --addr "$(addr "$1")" kv put chaos-probe "$1"; }
# Waits (at most `secs`) until a write through every node succeeds, polling all nodes at once;
# prints the seconds until the last one did.
recovered_everywhere() { # secs
  local i t max=0 rc=0 jobs=()
  for i in $(seq 1 "$nodes"); do
    wait_for "$1" write_via "$i" >"$work/rec.$i" &
    jobs+=($!)
  done
  for i in "${jobs[@]}"; do wait "$i" || rc=1; done
  [ "$rc" = 0 ] || return 1
  for i in $(seq 1 "$nodes"); do
    t=$(cat "$work/rec.$i"); max=$(echo "$t $max" | awk '{print ($1 > $2) ? $1 : $2}')
  done
  echo "$max"
}

# Cuts (add) or heals (del) every link between the nodes of two groups with blackhole routes:
# one `ip -batch` per namespace, so a partition takes effect at once even on a loaded machine.
cut() { # add|del "a1 a2 ..." "b1 b2 ..."
  local op=$1 a b
  for a in $2; do
    for b in $3; do echo "route $op blackhole $subnet.$b/32"; done | ip -n "$(ns "$a")" -force -batch - 2>/dev/null
  done
  for b in $3; do
    for a in $2; do echo "route $op blackhole $subnet.$a/32"; done | ip -n "$(ns "$b")" -force -batch - 2>/dev/null
  done
}

kinds="kill kill-leader pause partition-one partition-minority transfer"
declare -A faults
for k in $kinds; do faults[$k]=0; done
recoveries=()
unrecovered=0
transfers_refused=0

# One fault, held for a while, then healed; records the time until a write through every node
# succeeds again (its recovery time).
fault() {
  local kind=$1 victim=$2 hold=$(( 1 + RANDOM % 2 ))
  local others=() group=() j a b t to
  case "$kind" in
    kill|kill-leader)
      { kill -9 "${pid[$victim]}"; wait "${pid[$victim]}"; } 2>/dev/null
      sleep $(( hold - 1 )) # how long it stays down: the schedule, not a wait for an outcome
      start_node "$victim" ;;
    transfer)
      # Through the victim (a follower forwards to the leader), to a random node or to any.
      to=$(( RANDOM % (nodes + 1) ))
      hold=0
      if ! timeout 20 "$BIN" --addr "$(addr "$victim")" cluster transfer-leader \
          $([ "$to" -gt 0 ] && echo "--to $to") >>"$work/transfer.out" 2>&1; then
        transfers_refused=$(( transfers_refused + 1 ))
        log "transfer via node $victim (to ${to/#0/any}) refused: $(tail -1 "$work/transfer.out")"
      fi ;;
    pause)
      kill -STOP "${pid[$victim]}"; paused[$victim]=1
      sleep "$hold"
      kill -CONT "${pid[$victim]}"; paused[$victim]=0 ;;
    partition-one)
      for j in $(seq 1 "$nodes"); do [ "$j" != "$victim" ] && others+=("$j"); done
      cut add "$victim" "${others[*]}"
      sleep "$hold"
      cut del "$victim" "${others[*]}" ;;
    partition-minority)
      # The victim and the next ones up to a minority, against the rest.
      for j in $(seq 0 $(( (nodes - 1) / 2 - 1 ))); do group+=( $(( (victim - 1 + j) % nodes + 1 )) ); done
      for j in $(seq 1 "$nodes"); do [[ " ${group[*]} " == *" $j "* ]] || others+=("$j"); done
      cut add "${group[*]}" "${others[*]}"
      sleep "$hold"
      cut del "${group[*]}" "${others[*]}" ;;
  esac
  faults[$kind]=$(( faults[$kind] + 1 ))
  if t=$(recovered_everywhere 60); then
    recoveries+=("$kind:$t")
    log "$kind node $victim (held ${hold}s): recovered in ${t}s"
  else
    unrecovered=$(( unrecovered + 1 ))
    log "$kind node $victim: NOT recovered within 60s"
  fi
}

log "seed $seed, $nodes nodes, ${duration}s, work dir $work"
setup_net || { echo "chaos.sh: network setup failed" >&2; exit 2; }
start_node 1
wait_for 60 is_leader_1 >/dev/null || { echo "chaos.sh: node 1 did not become leader" >&2; exit 2; }
for i in $(seq 2 "$nodes"); do start_node "$i" --join "$(addr 1)"; done
wait_for 120 voters_ready >/dev/null || { echo "chaos.sh: the cluster did not form" >&2; exit 2; }
log "cluster of $nodes voters formed"

addrs=$(for i in $(seq 1 "$nodes"); do addr "$i"; done | paste -sd,)
history="$work/history.jsonl"
"$CLIENT" run --addrs "$addrs" --clients-per-node 2 --duration-secs "$duration" --keys 8 --seed "$seed" \
  --out "$history" >"$work/client.out" 2>"$work/client.err" &
client_pid=$!

end=$(( $(date +%s) + duration - 5 ))
while [ "$(date +%s)" -lt "$end" ]; do
  sleep $(( RANDOM % 2 )) # the gap between faults: part of the seeded schedule
  [ "$(date +%s)" -lt "$end" ] || break
  victim=$(( 1 + RANDOM % nodes ))
  # Partitions are cheap to heal, restarts are not (a debug-build node takes seconds to start
  # and catch up): partitions come up twice as often, so that kills plus partitions make most
  # of the schedule.
  case $(( RANDOM % 10 )) in
    0) kind=kill ;;
    1) kind=kill-leader; victim=$(leader_id) || victim=$(( 1 + RANDOM % nodes )) ;;
    2) kind=pause ;;
    3) kind=transfer ;;
    4|5|6) kind=partition-one ;;
    *) kind=partition-minority ;;
  esac
  fault "$kind" "$victim"
done

wait "$client_pid"; client_rc=$?; client_pid=""
[ "$client_rc" = 0 ] || { echo "chaos.sh: the recording client failed:" >&2; cat "$work/client.err" >&2; exit 2; }
log "nemesis stopped; $(cat "$work/client.out")"

violations=0
if conv=$("$CLIENT" converge --addrs "$addrs" --keys 8 --timeout-secs 60 2>"$work/converge.err"); then
  log "all nodes $conv"
else
  violations=$(( violations + 1 )); log "VIOLATION: the nodes did not converge"; cat "$work/converge.err"
fi
if ! "$CLIENT" final --addrs "$addrs" --keys 8 --timeout-secs 60 --out "$history" 2>"$work/final.err"; then
  violations=$(( violations + 1 )); log "VIOLATION: the final reads failed"; cat "$work/final.err"
fi
ops=$(wc -l <"$history")
if [ "$inject" = 1 ]; then
  t=$(date +%s%N)
  echo "{\"client\":2000000000,\"invoke\":$t,\"complete\":$((t + 1000)),\"op\":{\"get\":{\"key\":\"k0\"}},\"result\":{\"ok\":{\"value\":\"never-written\"}}}" >>"$history"
  log "injected a read of a value nobody wrote"
fi
"$CHECK" "$history" >"$work/check.out" 2>&1; check_rc=$?
case $check_rc in
  0) ;;
  1) # "NOT linearizable: N of M partitions have no linearization; ..."
     n=$(sed -n '1s/^NOT linearizable: \([0-9]*\) of .*/\1/p' "$work/check.out")
     violations=$(( violations + ${n:-1} )) ;;
  *) violations=$(( violations + 1 )) ;;
esac
[ -n "$keep_history" ] && cp "$history" "$keep_history"

total_faults=0; by_kind=""
for k in $kinds; do
  total_faults=$(( total_faults + faults[$k] )); by_kind+=" $k=${faults[$k]}"
done
restarts_partitions=$(( faults[kill] + faults[kill-leader] + faults[partition-one] + faults[partition-minority] ))
echo
echo "== chaos summary (seed $seed, $nodes nodes, ${duration}s) =="
echo "operations checked: $ops ($(cat "$work/client.out"), + $(( ops - $(awk '{print $2}' "$work/client.out") )) final reads)"
echo "faults: $total_faults ($by_kind ); kill/restart + partition events: $restarts_partitions"
echo "leadership transfers refused (a clear error, counted, not a violation): $transfers_refused"
if [ ${#recoveries[@]} -gt 0 ]; then
  printf '%s\n' "${recoveries[@]}" | awk -F: '
    { n[$1]++; s[$1]+=$2; if ($2 > m[$1]) m[$1]=$2; N++; S+=$2; if ($2 > M) M=$2 }
    END { for (k in n) printf "recovery %-19s n=%-3d mean %.1fs max %.1fs\n", k, n[k], s[k]/n[k], m[k];
          printf "recovery (all)              n=%-3d mean %.1fs max %.1fs\n", N, S/N, M }'
fi
echo "faults not recovered from within 60s: $unrecovered"
echo "checker: $(head -1 "$work/check.out")"
echo "violations: $violations"
if [ "$violations" -gt 0 ]; then
  cat "$work/check.out"
  echo "replay: scripts/chaos.sh --duration ${duration}s --nodes $nodes --seed $seed (timing-dependent)"
  exit 1
fi
[ "$unrecovered" -eq 0 ] || exit 1
exit 0
