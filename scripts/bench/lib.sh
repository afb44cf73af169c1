# Shared by the benchmark scripts (sourced, not run): starting and stopping 3-node etcd and
# blixard clusters on 127.0.0.1, and waiting for them. The caller sets BLIXARD, PORT_BASE, WORK,
# READY_TIMEOUT and NODE_ARGS (an array), and defines log().
#
# TLS (optional): ETCD_TLS_CA and BLIXARD_TLS_CA name a directory made by `blixard cert init`
# (see bench_certs); when set (at the time a cluster is started or waited for), etcd members serve
# client TLS with --client-cert-auth and --peer-auto-tls, and blixard nodes mutual TLS; the
# waiting helpers connect with the client certificate. Unset or empty: plaintext.
# shellcheck shell=bash

PIDS=()
stop_all() {
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do
    # Give each process 5 s to exit on SIGTERM, then SIGKILL it and wait until it is gone
    # (so the next cluster finds its ports free).
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  done
  PIDS=()
}
cleanup() {
  local rc=$?
  stop_all
  # Keep the data dirs and logs of a failed run for a look.
  [ -n "${WORK:-}" ] || return 0
  if [ $rc = 0 ]; then rm -rf "$WORK"; else log "logs and data kept in $WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Polls "$@" (a command) every 100 ms until it succeeds or $READY_TIMEOUT seconds pass.
wait_for() {
  local what="$1"; shift
  local deadline=$((SECONDS + READY_TIMEOUT))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || { log "timed out waiting for $what"; return 1; }
    for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null || { log "pid $p exited while waiting for $what"; return 1; }; done
    sleep 0.1
  done
}

show_logs() {
  local f
  for f in "$1"/*.log; do [ -f "$f" ] && { log "--- $f"; tail -n 10 "$f" >&2; }; done
}

# The common start of a benchmark script (after sourcing this file; the caller sets ROOT and
# TARGET_DIR): the release binaries built (BLIXARD, BENCH), the guest image in the cache, a
# fresh work dir WORK (removed on success) and a results dir RESULTS under BENCH_DIR, both
# named after $1.
bench_setup() {
  command -v jq >/dev/null || { log "error: jq is needed"; exit 1; }
  bench_binaries "$1"
  export BLIXARD_IMAGE_CACHE="${BLIXARD_IMAGE_CACHE:-$ROOT/.blixard/images}"
  "$BLIXARD" image build --cache "$BLIXARD_IMAGE_CACHE" >/dev/null
  RESULTS="$BENCH_DIR/$1-$(date -u +%Y%m%dT%H%M%SZ)"
  mkdir -p "$RESULTS"
}

# The start of a script that boots no guest: the release binaries built (BLIXARD, BENCH) and a
# fresh work dir WORK under BENCH_DIR, named after $1 (removed on success).
bench_binaries() {
  log "building release binaries into $TARGET_DIR"
  cargo build --release --locked -q -p blixard -p blixard-bench
  BLIXARD="$TARGET_DIR/release/blixard" BENCH="$TARGET_DIR/release/blixard-bench"
  mkdir -p "$BENCH_DIR"
  WORK="$(mktemp -d "$BENCH_DIR/$1.XXXXXX")"
}

# Exits with an error unless every named variable holds a positive integer (the scripts' knobs).
require_positive() {
  local v
  for v in "$@"; do
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || { log "error: $v must be a positive integer, not '${!v}'"; exit 1; }
  done
}

# ---- TLS ----

# Certificates for both systems from one fresh CA in $1 (`blixard cert`): node-N (N = 1..3) for
# blixard node N at PORT_BASE+200+N; etcd-N for etcd member N's client port PORT_BASE+N (a node
# certificate: an IP SAN for 127.0.0.1, usable as a server certificate by any TLS server);
# client-bench, the client certificate of the benchmark and of the waiting helpers.
bench_certs() {
  local ca="$1" i
  "$BLIXARD" cert init --dir "$ca" >/dev/null
  for i in 1 2 3; do
    "$BLIXARD" cert node --dir "$ca" --id "$i" --addr "127.0.0.1:$((PORT_BASE + 200 + i))" >/dev/null
    "$BLIXARD" cert node --dir "$ca" --id "$((100 + i))" --addr "127.0.0.1:$((PORT_BASE + i))" --out "$ca/etcd-$i" >/dev/null
  done
  "$BLIXARD" cert client --dir "$ca" --name bench >/dev/null
}

# ---- etcd ----

ETCD_EPS=() ETCD_PIDMAP=""
etcd_start() { # $1: run directory; any further arguments go to every etcd
  local dir="$1" cluster="" token="bench-$RANDOM$RANDOM" i scheme=http ca="${ETCD_TLS_CA:-}" health_tls=()
  shift
  ETCD_EPS=() ETCD_PIDMAP=""
  if [ -n "$ca" ]; then
    scheme=https
    health_tls=(--cacert "$ca/client-bench/ca.pem" --cert "$ca/client-bench/client.pem" --key "$ca/client-bench/client-key.pem")
  fi
  for i in 1 2 3; do cluster+="${cluster:+,}e$i=$scheme://127.0.0.1:$((PORT_BASE + 100 + i))"; done
  for i in 1 2 3; do
    local cport=$((PORT_BASE + i)) pport=$((PORT_BASE + 100 + i)) tls=()
    [ -z "$ca" ] || tls=(--cert-file "$ca/etcd-$i/node.pem" --key-file "$ca/etcd-$i/node-key.pem"
      --trusted-ca-file "$ca/etcd-$i/ca.pem" --client-cert-auth --peer-auto-tls)
    mkdir -p "$dir/e$i"
    etcd --name "e$i" --data-dir "$dir/e$i" \
      --listen-client-urls "$scheme://127.0.0.1:$cport" --advertise-client-urls "$scheme://127.0.0.1:$cport" \
      --listen-peer-urls "$scheme://127.0.0.1:$pport" --initial-advertise-peer-urls "$scheme://127.0.0.1:$pport" \
      --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token "$token" \
      --logger zap --log-outputs stderr "${tls[@]}" "$@" 2>"$dir/e$i.log" &
    PIDS+=($!)
    disown $! # no "Killed" job notice when the failover kills it; the shell still reaps it
    ETCD_EPS+=("127.0.0.1:$cport")
    ETCD_PIDMAP+="${ETCD_PIDMAP:+,}127.0.0.1:$cport=$!"
  done
  local eps; eps="$(IFS=,; echo "${ETCD_EPS[*]}")"
  [ -z "$ca" ] || eps="$(printf 'https://%s\n' "${ETCD_EPS[@]}" | paste -sd,)"
  # Healthy means every member answers a quorum read, which needs an elected leader.
  wait_for "etcd to be healthy" etcdctl --endpoints="$eps" "${health_tls[@]}" --command-timeout=1s endpoint health \
    || { show_logs "$dir"; return 1; }
}

# ---- blixard ----

# `blixard cluster status -o json` at $1, with the client certificate under TLS.
blixard_status() {
  local tls=()
  [ -z "${BLIXARD_TLS_CA:-}" ] || tls=(--tls-dir "$BLIXARD_TLS_CA/client-bench")
  "$BLIXARD" cluster status -o json --addr "$1" "${tls[@]}"
}

# Whether `blixard cluster status` at $1 shows a leader and exactly $2 voters, each done starting
# (its VM backend open and its capacity registered), so no start-up work overlaps a measurement.
blixard_ready() {
  blixard_status "$1" \
    | jq -e --argjson n "$2" '.leader_id != 0 and ([.members[] | select(.membership == "voter" and .memory_mib != null)] | length) == $n'
}

BLIXARD_EPS=() BLIXARD_PIDMAP=""
blixard_start() { # $1: run directory, $2: number of nodes (1 or 3)
  local dir="$1" n="$2" i
  BLIXARD_EPS=() BLIXARD_PIDMAP=""
  mkdir -p "$dir"
  for i in $(seq "$n"); do
    local addr="127.0.0.1:$((PORT_BASE + 200 + i))" join=() tls=()
    [ "$i" -gt 1 ] && join=(--join "127.0.0.1:$((PORT_BASE + 201))")
    [ -z "${BLIXARD_TLS_CA:-}" ] || tls=(--tls-dir "$BLIXARD_TLS_CA/node-$i")
    "$BLIXARD" node --id "$i" --bind "$addr" --data-dir "$dir/n$i" "${join[@]}" "${tls[@]}" "${NODE_ARGS[@]}" 2>"$dir/n$i.log" &
    PIDS+=($!)
    disown $!
    BLIXARD_EPS+=("$addr")
    BLIXARD_PIDMAP+="${BLIXARD_PIDMAP:+,}$addr=$!"
    # One node at a time: each joins a cluster that already has a leader and the earlier voters.
    wait_for "blixard node $i to be a voter" blixard_ready "127.0.0.1:$((PORT_BASE + 201))" "$i" \
      || { show_logs "$dir"; return 1; }
  done
}

join_eps() { (IFS=,; echo "$*"); }

machine() {
  local cpu mem
  cpu="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
  mem="$(free -g | awk '/^Mem:/ {print $2}')"
  echo "$(nproc) CPUs ($cpu), $mem GiB RAM, Linux $(uname -r), data dirs on $(df -T "$BENCH_DIR" | awk 'NR==2 {print $2}')"
}

# The default of `blixard node --$1`, read from its --help.
blixard_default() {
  "$BLIXARD" node --help | sed -n "/--$1 /,/default:/ s/.*\[default: \([0-9]*\)\].*/\1/p" | head -n1
}
