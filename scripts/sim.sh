#!/usr/bin/env bash
# Runs the deterministic simulation tests (MadSim) with SEED (default 1), in their own target dir.
#   scripts/sim.sh [SEED]      reproduce one run: same seed, same history
set -euo pipefail
cd "$(dirname "$0")/.."
export BLIXARD_SIM_SEED="${1:-${BLIXARD_SIM_SEED:-1}}"
export RUSTFLAGS="--cfg madsim ${RUSTFLAGS:-}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR_SIM:-target-sim}"
echo "sim: seed $BLIXARD_SIM_SEED" >&2
cargo test -p blixard-sim --locked --release --tests -- --nocapture 2>&1 | grep -v "^  put "
