"""Buckets `perf record` samples of blixard nodes by the frames on their stacks (see
write-profile.sh) and prints µs of CPU per put for each, for one or two runs side by side.

usage: write_profile.py FREQ SECONDS "LABEL PERF_FILE OPS_PER_S" ...
"""
import collections
import subprocess
import sys

# First match wins, in this order; a frame matches when it contains any of the strings.
BUCKETS = [
    ("apply: client sessions", ["blixard_core::session::"]),
    ("apply: key/value insert", ["blixard_core::state::run"]),
    ("apply: the rest", ["blixard_core::state::apply", "apply_entries", "apply_committed"]),
    ("state commits, checkpoints", ["WriteTransaction::commit", "commit_state", "checkpoint"]),
    ("WAL", ["persist_log", "wal::Wal"]),
    ("raft: step, validate", ["on_peer", "RawNode<T>>::step", "Raft<T>>::step", "validate"]),
    ("raft: ready, advance", ["RawNode<T>>::ready", "advance", "on_ready"]),
    ("raft: client queue", ["on_client", "Driver<T>::drain", "Envelope::encode"]),
    ("gRPC: auth layer + inner", ["AuthService"]),
    ("gRPC: request-id layer", ["RequestIdService"]),
    ("gRPC: handler", ["KvService>::put", "Handle::propose", "Handle::write"]),
    ("gRPC: metrics layer, tonic, h2", ["ApiService", "hyper::", "h2::", "tonic::", "serve_connection"]),
    ("peer transport", ["transport::", "Transport"]),
    ("tracing", ["tracing"]),
    ("audit log", ["audit"]),
]


def samples(path):
    out = subprocess.run(["perf", "script", "-i", path, "-F", "comm,tid,ip,sym"],
                         capture_output=True, text=True, check=True).stdout
    cur = None
    for line in out.splitlines():
        if line.startswith("\t"):
            parts = line.strip().split(" ", 1)
            cur[1].append(parts[1] if len(parts) > 1 else parts[0])
        elif line.strip():
            if cur:
                yield cur
            cur = (line.split()[0], [])
    if cur:
        yield cur


def bucket(comm, frames):
    for name, keys in BUCKETS:
        if any(k in f for f in frames for k in keys):
            return name
    kernel = bool(frames) and frames[0].startswith("ffff")
    return f"other ({comm[:12]}, {'kernel' if kernel else 'user'})"


def main():
    freq, secs = float(sys.argv[1]), float(sys.argv[2])
    runs = []
    for arg in sys.argv[3:]:
        label, path, ops = arg.split()
        counts = collections.Counter(bucket(c, f) for c, f in samples(path))
        # One sample stands for 1/freq s of CPU; per put: divided by the puts in the window.
        us = {k: v / freq / (float(ops) * secs) * 1e6 for k, v in counts.items()}
        runs.append((label, us))
    keys = sorted({k for _, us in runs for k in us}, key=lambda k: -runs[0][1].get(k, 0))
    print("| bucket | " + " | ".join(f"{l} (µs/put)" for l, _ in runs) + " |")
    print("|---|" + "---:|" * len(runs))
    for k in keys:
        print(f"| {k} | " + " | ".join(f"{us.get(k, 0):.1f}" for _, us in runs) + " |")
    print("| **total sampled** | " + " | ".join(f"**{sum(us.values()):.1f}**" for _, us in runs) + " |")


main()
