#!/usr/bin/env bash
# Where a batch task's CPU goes: a fresh 3-node cluster under `blixard-bench tasks` (closed-loop
# submitters of `true`), every node sampled by `perf record` (cpu-clock, call graphs), and each
# sample put in the first bucket whose frames match: the fork of the daemon, copy-on-write
# faults, other page faults, file and directory system calls (ext4 and cgroupfs), the WAL's
# fdatasync, thread wake-ups (futex, sched_yield, epoll), else by thread (raft, tokio workers,
# task-spawner). Prints the servers' CPU per task and the share of each bucket.
#
#   scripts/bench/tasks-profile.sh
#   BIN=/path/to/other/release scripts/bench/tasks-profile.sh   # another build's binaries
#
# Knobs: BIN (this build's target/release), SUBMITTERS (64), SECONDS_SAMPLED (8), FREQ (250),
# PORT_BASE (25900), BENCH_DIR, CARGO_TARGET_DIR. Needs perf and python3.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"
SUBMITTERS="${SUBMITTERS:-64}" SECONDS_SAMPLED="${SECONDS_SAMPLED:-8}" FREQ="${FREQ:-250}"
PORT_BASE="${PORT_BASE:-25900}" BENCH_DIR="${BENCH_DIR:-$ROOT/.blixard/bench}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
READY_TIMEOUT=30
log() { echo "bench: $*" >&2; }
command -v perf >/dev/null || { log "error: perf is needed"; exit 1; }
command -v python3 >/dev/null || { log "error: python3 is needed"; exit 1; }

NODE_ARGS=()
# shellcheck source=scripts/bench/lib.sh
source "$ROOT/scripts/bench/lib.sh"
bench_setup tasks-profile
BIN="${BIN:-$TARGET_DIR/release}"
BLIXARD="$BIN/blixard"
blixard_start "$WORK/c" 3
"$BIN/blixard-bench" tasks --endpoints "$(join_eps "${BLIXARD_EPS[@]}")" --submitters "$SUBMITTERS" \
  --duration "$((SECONDS_SAMPLED + 4))s" --warmup 2s --server-pids "$(join_eps "${PIDS[@]}")" >"$RESULTS/bench.txt" 2>&1 &
load=$!
sleep 3
perf record -q -F "$FREQ" -g -o "$RESULTS/perf.data" -p "$(join_eps "${PIDS[@]}")" -- sleep "$SECONDS_SAMPLED" >/dev/null 2>&1 || true
wait "$load"
stop_all
perf script -i "$RESULTS/perf.data" -F comm,ip,sym 2>/dev/null >"$RESULTS/stacks.txt"
{
  echo "Run $(date -u +%Y-%m-%dT%H:%MZ) with $BIN; load average $(cut -d' ' -f1-3 /proc/loadavg)"
  grep -E "tasks/s|per task" "$RESULTS/bench.txt"
  python3 - "$RESULTS/stacks.txt" <<'PY'
import collections, sys
rules = [
    ("fork of the daemon (_Fork, clone)", ["_Fork", "__do_sys_clone", "copy_process"]),
    ("copy-on-write faults", ["do_wp_page", "wp_page_copy"]),
    ("other page faults", ["asm_exc_page_fault"]),
    ("files and dirs: openat, mkdir, rmdir, unlink", ["__x64_sys_openat", "__x64_sys_mkdir", "__x64_sys_rmdir", "__x64_sys_unlink"]),
    ("WAL fdatasync", ["fdatasync"]),
    ("thread wake-ups: futex, sched_yield, epoll", ["__x64_sys_futex", "__x64_sys_sched_yield", "__x64_sys_epoll_wait"]),
]
count, total = collections.Counter(), 0
for sample in open(sys.argv[1]).read().split("\n\n"):
    lines = [l for l in sample.strip().split("\n") if l.strip()]
    if not lines:
        continue
    total += 1
    frames = " ".join(lines[1:])
    name = next((n for n, keys in rules if any(k in frames for k in keys)), None)
    count[name or f"{lines[0].split()[0]} thread, the rest"] += 1
print(f"\n| bucket | share of the servers' samples ({total}) |\n|---|---:|")
for name, n in count.most_common():
    print(f"| {name} | {100 * n / max(total, 1):.1f} % |")
PY
} | tee "$RESULTS/table.md"
log "results in $RESULTS"
