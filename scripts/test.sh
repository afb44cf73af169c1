#!/usr/bin/env bash
# Sets up what is missing, then runs every check and test: fmt, clippy, the whole workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi

# Deterministic simulation (MadSim, see README "Simulation"): every file with seed 1 (the kept
# regression seeds too), then the fencing scenarios over 100 more seeds and the random fault
# schedules over 20 (about 3 minutes on 2 cores).
scripts/sim.sh 1
scripts/sim.sh --seeds 2..101 --test s30_fencing
scripts/sim.sh --seeds 2..21 --test s40_no_lost_writes --test s41_one_leader_per_term \
  --test s42_converged --test s43_one_vm_runner --test s44_same_seed
