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

# Deterministic simulation (MadSim): a few seeds; each run checks same-seed-same-history.
for seed in 1 2 3 4 5; do
  scripts/sim.sh "$seed"
done
