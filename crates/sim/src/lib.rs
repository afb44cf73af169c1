//! Deterministic simulation of Blixard clusters.
//!
//! The unmodified node (`blixard_node::Node`) runs on MadSim's simulated runtime and network:
//! `tokio` and `tonic` are MadSim's (package renames in the workspace), so under
//! `--cfg madsim` time, scheduling, randomness and the network are all driven by one seed.
//! `scripts/sim.sh [SEED]` builds with `--cfg madsim` into its own target dir and runs the
//! scenarios in `tests/`.
