#!/usr/bin/env bash
# Sets up what is missing, builds blixard, starts a local node and shows it working.
# Everything lives under .blixard/demo; the node is stopped when the script exits.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked -q
B="$PWD/target/release/blixard"
DIR="$PWD/.blixard/demo"
ADDR="${BLIXARD_DEMO_ADDR:-127.0.0.1:7001}"
mkdir -p "$DIR"

"$B" node --id 1 --bind "$ADDR" --data-dir "$DIR/n1" 2> "$DIR/n1.log" &
NODE=$!
trap 'kill $NODE 2>/dev/null; wait $NODE 2>/dev/null || true' EXIT

export BLIXARD_ADDR="$ADDR"
for _ in $(seq 100); do
  "$B" cluster status -o json 2>/dev/null | grep -q '"role": "leader"' && break
  kill -0 $NODE 2>/dev/null || { echo "demo: node exited:"; cat "$DIR/n1.log"; exit 1; }
  sleep 0.1
done

run() { echo "\$ blixard $*"; "$B" "$@"; echo; }
run cluster status
run kv put hello world
run kv get hello
"$B" vm delete demo-web >/dev/null 2>&1 || true
run vm create demo-web --vcpus 1 --memory 128 --port 8080:80 --label app=demo
run vm list
echo "demo: ok (node log: $DIR/n1.log)"
