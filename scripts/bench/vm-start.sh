#!/usr/bin/env bash
# VM start overhead: `vm start` through a blixard node → the guest's boot marker, against the
# same QEMU command line started by hand → the same marker, PAIRS interleaved pairs (default 12).
# Then (unless TASKVM=0) `--isolation vm` tasks: `task submit --isolation vm -- true` → the task
# recorded succeeded, against the same task VM's QEMU command line started by hand → the
# guest's exit report, TASK_PAIRS pairs (default PAIRS).
#   scripts/bench/vm-start.sh [--json]
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/setup.sh
cargo build --release --locked -q -p blixard -p blixard-bench
T="${CARGO_TARGET_DIR:-target}/release"
DIR="$(mktemp -d "${TMPDIR:-/tmp}/bx-vmstart.XXXXXX")"
export BLIXARD_IMAGE_CACHE="${BLIXARD_IMAGE_CACHE:-$PWD/.blixard/images}"
PORT="${PORT:-24900}"
"$T/blixard" image build --cache "$BLIXARD_IMAGE_CACHE" >/dev/null
"$T/blixard" node --id 1 --bind "127.0.0.1:$PORT" --data-dir "$DIR/n1" 2> "$DIR/n1.log" &
NODE=$!
cleanup() {
  "$T/blixard" --addr "127.0.0.1:$PORT" vm delete bench-vm >/dev/null 2>&1 || true
  kill $NODE 2>/dev/null; wait $NODE 2>/dev/null || true
  pkill -9 -f "qemu-system.*$DIR" 2>/dev/null || true
  rm -rf "$DIR"
}
trap cleanup EXIT
for _ in $(seq 600); do
  "$T/blixard" --addr "127.0.0.1:$PORT" cluster status -o json 2>/dev/null | grep -q '"memory_mib": [0-9]' && break
  sleep 0.1
done
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), accel: $(sed 's/\x1b\[[0-9;]*m//g' "$DIR/n1.log" | grep -o 'accel=[a-z]*' | head -1)" >&2
"$T/blixard-bench" vmstart --addr "127.0.0.1:$PORT" --data-dir "$DIR/n1" --pairs "${PAIRS:-12}" "$@"
if [ "${TASKVM:-1}" != 0 ]; then
  "$T/blixard-bench" taskvm --addr "127.0.0.1:$PORT" --data-dir "$DIR/n1" --pairs "${TASK_PAIRS:-${PAIRS:-12}}" "$@"
fi
