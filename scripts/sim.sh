#!/usr/bin/env bash
# Runs the deterministic simulation tests (MadSim) in their own target dir.
#   scripts/sim.sh [SEED] [--test NAME]
#       every simulation test (or the file tests/NAME.rs) with SEED (default 1), verbosely:
#       reproduce one run, same seed, same history
#   scripts/sim.sh --seeds A..B [--jobs J] [--timeout S] [--test NAME]...
#       every seed from A to B, J runs at a time (default: the number of cores); a failure
#       prints the seed, the test and the one command that replays it, and the script fails;
#       a run still going after S seconds (default 600) fails as hung (a simulation that spins
#       without advancing its clock never ends on its own)
set -euo pipefail
cd "$(dirname "$0")/.."
export RUSTFLAGS="--cfg madsim ${RUSTFLAGS:-}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR_SIM:-target-sim}"

seed="${BLIXARD_SIM_SEED:-1}" seeds="" jobs="$(nproc)" timeout=600 tests=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seeds) seeds="$2"; shift 2 ;;
    --jobs) jobs="$2"; shift 2 ;;
    --timeout) timeout="$2"; shift 2 ;;
    --test) tests+=("$2"); shift 2 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) seed="$1"; shift ;;
  esac
done
case "$seed" in ''|*[!0-9]*) echo "sim: SEED must be a number (got '$seed')" >&2; exit 2 ;; esac
case "$jobs" in ''|*[!0-9]*|0) echo "sim: --jobs must be a positive number (got '$jobs')" >&2; exit 2 ;; esac
case "$timeout" in ''|*[!0-9]*|0) echo "sim: --timeout must be a positive number of seconds (got '$timeout')" >&2; exit 2 ;; esac
targets=(--tests)
if [ ${#tests[@]} -gt 0 ]; then
  targets=()
  for t in "${tests[@]}"; do targets+=(--test "$t"); done
fi

if [ -z "$seeds" ]; then
  export BLIXARD_SIM_SEED="$seed"
  echo "sim: seed $BLIXARD_SIM_SEED" >&2
  cargo test -p blixard-sim --locked --release "${targets[@]}" -- --nocapture 2>&1 | grep -v "^  put "
  exit "${PIPESTATUS[0]}"
fi

from="${seeds%%..*}" to="${seeds##*..}"
case "$from$to" in ''|*[!0-9]*) echo "sim: --seeds must be A..B (got '$seeds')" >&2; exit 2 ;; esac
# Build once; then run the test executables directly, one process per seed and file.
# (s49_kept_seeds runs fixed seeds: once is enough, so only when named.)
exes=$(cargo test -p blixard-sim --locked --release "${targets[@]}" --no-run --message-format=json 2>/dev/null |
  sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' |
  { if [ ${#tests[@]} -gt 0 ]; then cat; else grep -v -e '/s49_kept_seeds-' -e '/blixard_sim-'; fi; } || true)
[ -n "$exes" ] || { echo "sim: no simulation test executables were built" >&2; exit 1; }
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
export logs timeout
start=$(date +%s)
for s in $(seq "$from" "$to"); do
  for exe in $exes; do echo "$s $exe"; done
done | xargs -P "$jobs" -L 1 sh -c '
  s=$0 exe=$1 name=$(basename "$1" | sed "s/-[0-9a-f]*$//")
  rc=0
  BLIXARD_SIM_SEED=$s timeout -k 10 "$timeout" "$exe" --test-threads 1 >"$logs/$name-$s.log" 2>&1 || rc=$?
  if [ "$rc" != 0 ]; then
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then what="hung (still running after $timeout s)"; else what="failed"; fi
    echo "FAIL seed $s: $name $what" >&2
    grep -E "panicked|^thread|seed $s" "$logs/$name-$s.log" | head -20 >&2
    echo "  replay: scripts/sim.sh $s --test $name" >&2
    touch "$logs/failed"
  fi'
runs=$(( (to - from + 1) * $(echo "$exes" | wc -w) ))
if [ -e "$logs/failed" ]; then
  echo "sim: seeds $from..$to: FAILED (see above); $runs runs in $(( $(date +%s) - start )) s" >&2
  exit 1
fi
echo "sim: seeds $from..$to: $runs runs of $(echo "$exes" | wc -w) file(s), all passed in $(( $(date +%s) - start )) s" >&2
