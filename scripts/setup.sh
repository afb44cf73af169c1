#!/usr/bin/env bash
# Installs what Blixard needs on a Debian/Ubuntu machine, only what is missing. Idempotent.
#   scripts/setup.sh            everything (build, VMs, tests, benchmarks)
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: protoc for raft-rs and our .proto (libprotobuf-dev: the well-known types
# etcd-client's protos import); QEMU + guest-image tools for microVMs;
# etcd for the side-by-side benchmark; nix-bin to parse generated microvm.nix flakes;
# prometheus (with promtool) to scrape a test cluster and check metrics, alerts and the dashboard;
# systemd for `systemd-analyze verify` of deploy/blixard.service.
pkgs=(protobuf-compiler libprotobuf-dev pkg-config qemu-system-x86 qemu-utils busybox-static cpio lz4 kmod
      etcd-server etcd-client iproute2 curl jq prometheus systemd)
if [ -f scripts/guest/DEPS ]; then
  while read -r p; do [ -n "$p" ] && [ "${p#\#}" = "$p" ] && pkgs+=("$p"); done < scripts/guest/DEPS
fi

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null | grep -q '^ii' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
  echo "setup: error: cargo not found; install a Rust toolchain (rustup, Rust >= 1.90) first" >&2
  exit 1
fi
