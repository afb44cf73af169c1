#!/usr/bin/env bash
# The scheduler alone, in memory, on one core: `blixard-bench place` (10,000 nodes in three
# zones, 100,000 VMs placed first, then 1,000,000 placements timed, each a full sampled plan
# and the chosen node's counts updated as apply does; half the VMs with a constraint, a
# quarter in soft groups). Pinned to one CPU. With BASE_BIN (a blixard-bench built from
# another commit, e.g. main's, copied aside) it runs PAIRS interleaved pairs, base first, so a
# drift of the machine shows in both. Each line carries the UTC time and the load average; on
# a loaded machine the figure to read is the rate by the thread's CPU time.
#
#   scripts/bench/place.sh
#   BASE_BIN=/tmp/blixard-bench-main PAIRS=3 scripts/bench/place.sh
#
# Knobs (environment): PAIRS (3), CPU (0), NODES (10000), PRELOAD (100000),
# PLACEMENTS (1000000), BASE_BIN (none), CARGO_TARGET_DIR (target).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"

PAIRS="${PAIRS:-3}"
CPU="${CPU:-0}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
ARGS=(place --nodes "${NODES:-10000}" --preload "${PRELOAD:-100000}" --placements "${PLACEMENTS:-1000000}")
[[ "$PAIRS" =~ ^[1-9][0-9]*$ ]] || { echo "bench: error: PAIRS must be a positive integer, not '$PAIRS'" >&2; exit 1; }
if [[ -n "${BASE_BIN:-}" && ! -x "$BASE_BIN" ]]; then
    echo "bench: error: BASE_BIN '$BASE_BIN' is not an executable" >&2
    exit 1
fi

echo "bench: building blixard-bench (release) into $TARGET_DIR" >&2
cargo build --release --locked -q -p blixard-bench
BIN="$TARGET_DIR/release/blixard-bench"

run() { # $1: label, $2: binary
    local load
    load=$(cut -d' ' -f1-3 /proc/loadavg)
    printf '%s %s (load %s, commit %s): ' "$(date -u +%FT%TZ)" "$1" "$load" "$(git rev-parse --short HEAD)"
    taskset -c "$CPU" "$2" "${ARGS[@]}"
}

for _ in $(seq "$PAIRS"); do
    if [[ -n "${BASE_BIN:-}" ]]; then
        run base "$BASE_BIN"
    fi
    run this "$BIN"
done
