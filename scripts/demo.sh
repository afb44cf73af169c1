#!/usr/bin/env bash
# Sets up what is missing, builds blixard, starts a local 3-node cluster with mutual TLS (a CA,
# a certificate per node and one for the CLI) and roles enforced (--auth), and boots a real
# microVM through it: shows the cluster, the VM's console output and an HTTP answer from inside
# the guest. Everything lives
# under .blixard/demo; the VM and the nodes are stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked -q -p blixard
B="$PWD/target/release/blixard"
DIR="$PWD/.blixard/demo"
export BLIXARD_IMAGE_CACHE="$PWD/.blixard/images"
BASE_PORT="${BLIXARD_DEMO_PORT:-7101}"
HTTP_PORT="${BLIXARD_DEMO_HTTP_PORT:-18080}"
rm -rf "$DIR" && mkdir -p "$DIR"

echo "demo: building the guest image (first run downloads the Debian cloud kernel)"
"$B" image build --cache "$BLIXARD_IMAGE_CACHE"

echo "demo: a cluster CA, node certificates and a client certificate under $DIR/ca"
"$B" cert init --dir "$DIR/ca" >/dev/null
for id in 1 2 3; do
  "$B" cert node --dir "$DIR/ca" --id "$id" --addr "127.0.0.1:$((BASE_PORT + id - 1))" >/dev/null
done
"$B" cert client --dir "$DIR/ca" --name demo --role admin >/dev/null
# Every CLI call below presents the client certificate (each node is given its own explicitly).
export BLIXARD_TLS_DIR="$DIR/ca/client-demo"

PIDS=()
cleanup() {
  "$B" vm delete demo-web >/dev/null 2>&1 || true
  for _ in $(seq 100); do [ -d "$DIR/n3/vmm/vms/demo-web" ] || [ -d "$DIR/n1/vmm/vms/demo-web" ] || [ -d "$DIR/n2/vmm/vms/demo-web" ] || break; sleep 0.1; done
  kill "${PIDS[@]}" 2>/dev/null || true
  wait "${PIDS[@]}" 2>/dev/null || true
  pkill -9 -f "qemu-system.*$DIR" 2>/dev/null || true
}
trap cleanup EXIT

for id in 1 2 3; do
  port=$((BASE_PORT + id - 1))
  join=()
  [ "$id" = 1 ] || join=(--join "127.0.0.1:$BASE_PORT")
  "$B" node --id "$id" --bind "127.0.0.1:$port" --data-dir "$DIR/n$id" --tls-dir "$DIR/ca/node-$id" --auth "${join[@]}" \
    2> "$DIR/n$id.log" &
  PIDS+=($!)
  if [ "$id" = 1 ]; then
    for _ in $(seq 300); do
      "$B" --addr "127.0.0.1:$BASE_PORT" cluster status -o json 2>/dev/null | grep -q '"role": "leader"' && break
      sleep 0.1
    done
  fi
done
export BLIXARD_ADDR="127.0.0.1:$BASE_PORT"
for _ in $(seq 600); do
  n=$("$B" cluster status -o json 2>/dev/null | grep -c '"memory_mib": [0-9]' || true)
  [ "$n" = 3 ] && break
  sleep 0.1
done

run() { echo; echo "\$ blixard $*"; "$B" "$@"; }
run cluster status
# Roles are enforced (--auth): the client certificate above carries the admin role; tokens are
# the other way in (the first admin token is in $DIR/n1/admin.token).
run token create --role viewer --name demo-viewer --ttl 1h >/dev/null
run token list
run --addr "127.0.0.1:$((BASE_PORT + 1))" vm create demo-web --memory 128 --port "$HTTP_PORT:80" \
  --cmdline "blixard.http=80" --restart always --start
run vm wait demo-web --state running --timeout 120s
echo; echo "\$ blixard --addr 127.0.0.1:$((BASE_PORT + 2)) vm logs demo-web   # console, from any node"
"$B" --addr "127.0.0.1:$((BASE_PORT + 2))" vm logs demo-web | tail -n 8
echo; echo "\$ curl http://127.0.0.1:$HTTP_PORT/   # served from inside the guest"
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$HTTP_PORT/" && break; sleep 0.2; done
run vm list
echo; echo "demo: ok (logs under $DIR)"
