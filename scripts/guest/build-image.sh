#!/usr/bin/env bash
# Builds the default Blixard guest image: a Debian cloud kernel and a busybox initramfs.
#
#   build-image.sh OUT_DIR
#
# Outputs OUT_DIR/vmlinux (or OUT_DIR/vmlinuz if the uncompressed kernel cannot be extracted),
# OUT_DIR/initrd.img and OUT_DIR/manifest.json (written last: its presence means the image is
# complete). Idempotent and reproducible: rebuilding gives the same sha256 for every output, so the
# initramfs is sorted, has zero mtimes, root ownership and no inode numbers.
#
# The kernel .deb is fetched with `apt-get download` and unpacked with `dpkg-deb -x`; no kernel is
# ever installed on the host. Needs: apt-get, dpkg-deb, busybox (static), cpio, lz4, kmod,
# sha256sum (see scripts/guest/DEPS). Set BLIXARD_KERNEL_PACKAGE to pin a kernel package.
set -euo pipefail
export LC_ALL=C

out=${1:?usage: build-image.sh OUT_DIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)

# Modules the cloud kernel builds as modules but the guest needs (see /work/shared/QEMU-NOTES.md).
modules="virtio_ring virtio virtio_mmio virtio_blk failover net_failover virtio_net button evdev pvpanic_mmio virtio_console"

die() { echo "build-image: $*" >&2; exit 1; }
for tool in apt-get apt-cache dpkg-deb cpio lz4 depmod modprobe sha256sum; do
  command -v "$tool" >/dev/null || die "$tool not found (install the packages in scripts/guest/DEPS)"
done
busybox=$(command -v busybox) || die "busybox not found (install busybox-static)"
if ldd "$busybox" >/dev/null 2>&1; then die "$busybox is dynamically linked (install busybox-static)"; fi

# The meta package depends on the real, versioned one: resolve it so the image names its kernel.
pkg=${BLIXARD_KERNEL_PACKAGE:-$(apt-cache depends linux-image-cloud-amd64 2>/dev/null \
  | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')}
[ -n "$pkg" ] || die "cannot resolve linux-image-cloud-amd64 (run apt-get update?)"
kver=${pkg#linux-image-}

work=$(mktemp -d "${TMPDIR:-/tmp}/blixard-image.XXXXXX")
trap 'rm -rf "$work"' EXIT

# Keep the downloaded .deb next to the outputs so rebuilds do not fetch it again.
debs="$out/.debs"
mkdir -p "$debs"
if ! ls "$debs/${pkg}_"*.deb >/dev/null 2>&1; then
  (cd "$work" && apt-get download "$pkg" >/dev/null 2>"$work/apt.log") \
    || { cat "$work/apt.log" >&2; die "apt-get download $pkg failed"; }
  mv "$work/${pkg}_"*.deb "$debs/"
fi
deb=$(ls "$debs/${pkg}_"*.deb | head -n1)
dpkg-deb -x "$deb" "$work/kroot"
vmlinuz="$work/kroot/boot/vmlinuz-$kver"
[ -f "$vmlinuz" ] || die "$deb has no boot/vmlinuz-$kver"

# The uncompressed vmlinux boots faster (PVH entry, no self-decompression). The bzImage carries it
# as an LZ4 frame: find the frame magic 02 21 4c 18 and decompress from there.
kernel_name=vmlinux
boot_protocol=pvh
offset=$(grep -obUaP '\x02\x21\x4c\x18' "$vmlinuz" | head -n1 | cut -d: -f1 || true)
if [ -n "$offset" ]; then
  # lz4 may complain about the bzImage trailer after the frame; the ELF check below decides.
  tail -c +"$((offset + 1))" "$vmlinuz" | lz4 -dc >"$work/vmlinux" 2>/dev/null || true
fi
if [ "$(head -c 4 "$work/vmlinux" 2>/dev/null | od -An -tx1 | tr -d ' ')" != "7f454c46" ]; then
  echo "build-image: could not extract vmlinux, using the bzImage" >&2
  kernel_name=vmlinuz
  boot_protocol=bzimage
  cp "$vmlinuz" "$work/vmlinux"
fi

# Modules in dependency order, as modprobe would load them, deduplicated.
depmod -b "$work/kroot" "$kver"
root="$work/initramfs"
mkdir -p "$root"/{bin,dev,proc,sys,run,tmp,www,etc/acpi/button,etc/acpi/PWRF,lib/modules}
: >"$root/etc/modules.order"
for m in $modules; do
  modprobe -S "$kver" -d "$work/kroot" --show-depends "$m"
done | awk '$1 == "insmod" && !seen[$2]++ { print $2 }' | while read -r ko; do
  name=$(basename "$ko")
  case "$name" in
    *.ko) cp "$ko" "$root/lib/modules/$name" ;;
    *.ko.xz) xz -dc "$ko" >"$root/lib/modules/${name%.xz}"; name=${name%.xz} ;;
    *.ko.zst) zstd -qdc "$ko" >"$root/lib/modules/${name%.zst}"; name=${name%.zst} ;;
    *) die "unexpected module file $ko" ;;
  esac
  echo "/lib/modules/$name" >>"$root/etc/modules.order"
done

cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list | sort); do
  [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
done

# busybox acpid runs ./button/power (evdev KEY_POWER) or ./PWRF/00000080 (ACPI event) from its
# config dir; either way the guest powers off at once, which is what QMP system_powerdown expects.
for h in button/power PWRF/00000080; do
  printf '#!/bin/sh\npoweroff -f\n' >"$root/etc/acpi/$h"
  chmod 0755 "$root/etc/acpi/$h"
done

cat >"$root/etc/udhcpc.script" <<'EOF'
#!/bin/sh
# Applies a DHCP lease from busybox udhcpc.
case "$1" in
  deconfig) ip addr flush dev "$interface"; ip link set "$interface" up ;;
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    # The first NIC (eth0, user-mode) keeps the default route; a bridge NIC only adds its subnet.
    if ! ip route show default | grep -q .; then
      for r in $router; do ip route replace default via "$r" dev "$interface"; break; done
      : >/etc/resolv.conf
      for d in $dns; do echo "nameserver $d" >>/etc/resolv.conf; done
    fi
    echo "BLIXARD-NET $interface $ip" >/dev/console ;;
esac
exit 0
EOF
chmod 0755 "$root/etc/udhcpc.script"

cat >"$root/init" <<'EOF'
#!/bin/busybox sh
# Blixard guest init. Kernel command line knobs:
#   blixard.name=NAME    hostname, and the body of /www/index.html ("hello from NAME")
#   blixard.http=PORT    serve /www with busybox httpd on PORT
#   blixard.run64=B64    run the base64-encoded shell script (output to the console)
#   blixard.task=1       task mode: run the task the host appended to the initramfs, report,
#                        and never start a console shell (see /bin/blixard-task-run)
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
while read -r ko; do insmod "$ko" 2>/dev/null || echo "blixard-init: insmod $ko failed"; done </etc/modules.order
# acpid exits if no input device exists yet, and devtmpfs creates nodes asynchronously: wait.
i=0
while [ ! -e /dev/input/event0 ] && [ $i -lt 100 ]; do usleep 10000; i=$((i + 1)); done
acpid -c /etc/acpi -l /run/acpid.log -p /run/acpid.pid

name=blixard; http=; run64=; task=
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    blixard.name=*) name=${arg#blixard.name=} ;;
    blixard.http=*) http=${arg#blixard.http=} ;;
    blixard.run64=*) run64=${arg#blixard.run64=} ;;
    blixard.task=1) task=1 ;;
  esac
done
hostname "$name"
ip link set lo up
if ip link show eth0 >/dev/null 2>&1; then
  udhcpc -i eth0 -s /etc/udhcpc.script -t 5 -T 1 -b >/dev/null 2>&1
fi
# Further NICs (a host bridge) ask for a lease in the background: boot does not wait for them.
for dev in /sys/class/net/eth*; do
  n=${dev##*/}
  [ "$n" = eth0 ] || [ ! -e "$dev" ] || udhcpc -i "$n" -s /etc/udhcpc.script -t 10 -T 1 -b >/dev/null 2>&1 &
done
read -r up _ </proc/uptime
echo "BLIXARD-BOOT-OK uptime=$up"
# A task VM runs its task as PID 1's job and nothing else (blixard-task-run never returns).
if [ -n "$task" ]; then exec /bin/blixard-task-run; fi

echo "hello from $name" >/www/index.html
if [ -n "$http" ]; then httpd -f -p "$http" -h /www & fi
if [ -n "$run64" ]; then
  echo "$run64" | base64 -d >/run/blixard-run.sh && sh /run/blixard-run.sh </dev/null & 
fi
# init must never exit (the kernel would panic): keep a shell on the serial console.
while true; do
  setsid cttyhack sh
  sleep 1
done
EOF
chmod 0755 "$root/init"

# Task mode: the host (crates/node/src/tasks/vm/) appends a second cpio archive to this
# initramfs holding /blixard-task/{nonce,cmd,arg/NNNN,env/NAME}, and boots with blixard.task=1.
cat >"$root/bin/blixard-task-run" <<'EOF'
#!/bin/busybox sh
# Runs the task under /blixard-task (see blixard-task-exec) as PID 1 of a task VM: its stdout
# and stderr go to the virtio ports named blixard.stdout and blixard.stderr, and it reports on
# the serial console with lines carrying the attempt's nonce, which is read and deleted before
# the task starts (the task's own output never reaches the console, and cannot name the nonce):
#   BLIXARD-TASK-START <nonce>
#   BLIXARD-TASK-EXIT <nonce> <code>       repeated every second until the host kills the VM
#   BLIXARD-TASK-ERROR <nonce> <reason>    notfound (no such program here), noports
# Once the task's program exits, whatever it left running is killed, then each port gets the
# trailer "\nBLIXARD-TASK-EOF <nonce>\n": the host knows it then has all the output.
export PATH=/bin
d=/blixard-task
n=$(cat "$d/nonce" 2>/dev/null)
rm -f "$d/nonce"
# Only emergencies reach the console from now on: a kernel message cannot split a report line.
echo 1 >/proc/sys/kernel/printk
report() {
  i=0
  while [ $i -lt 60 ]; do
    printf '\n%s\n' "$1" >/dev/console
    sleep 1
    i=$((i + 1))
  done
  poweroff -f
}
# The ports appear (and get their names) asynchronously after virtio_console loads.
out=; err=; i=0
while [ $i -lt 500 ]; do
  for p in /sys/class/virtio-ports/*; do
    pn=; read -r pn <"$p/name" 2>/dev/null
    case "$pn" in
      blixard.stdout) out=/dev/${p##*/} ;;
      blixard.stderr) err=/dev/${p##*/} ;;
    esac
  done
  [ -c "$out" ] && [ -c "$err" ] && break
  usleep 10000
  i=$((i + 1))
done
[ -c "$out" ] && [ -c "$err" ] || report "BLIXARD-TASK-ERROR $n noports"
mkdir -p /work
cd /work
printf '\nBLIXARD-TASK-START %s\n' "$n" >/dev/console
/bin/blixard-task-exec "$d" /run/blixard-task.notfound </dev/null >"$out" 2>"$err"
code=$?
cd /
# Everything else dies (PID 1 is spared by kill -1); wait until no user process is left, so
# nothing writes to a port after its trailer.
kill -9 -1 2>/dev/null
i=0
while [ $i -lt 200 ]; do
  left=
  for p in /proc/[0-9]*; do
    [ "$p" = /proc/1 ] && continue
    c=; read -r c <"$p/cmdline" 2>/dev/null
    [ -n "$c" ] && left=1 && break
  done
  [ -z "$left" ] && break
  usleep 10000
  i=$((i + 1))
done
printf '\nBLIXARD-TASK-EOF %s\n' "$n" >"$out"
printf '\nBLIXARD-TASK-EOF %s\n' "$n" >"$err"
if [ -e /run/blixard-task.notfound ]; then report "BLIXARD-TASK-ERROR $n notfound"; fi
report "BLIXARD-TASK-EXIT $n $code"
EOF
cat >"$root/bin/blixard-task-exec" <<'EOF'
#!/bin/busybox sh
# blixard-task-exec DIR NOTFOUND: execs the task described by DIR with exactly its arguments
# and environment; no value ever goes through a shell's parsing. DIR/cmd is the program,
# DIR/arg/NNNN its arguments in order, DIR/env/NAME the value of variable NAME, each file
# holding the value's bytes exactly. The environment is PATH=/bin and the task's own. When the
# program cannot be found here, NOTFOUND is created and the exit status is 127.
d=$1
# Reads a file into v, keeping trailing newlines (which $(...) would strip).
val() { v=$(cat "$1"; echo .); v=${v%.}; }
val "$d/cmd"
cmd=$v
# env(1) would take a program name with "=" for a variable; no such program exists here anyway.
case "$cmd" in '' | -* | *=*) : >"$2"; exit 127 ;; esac
command -v "$cmd" >/dev/null 2>&1 || { : >"$2"; exit 127; }
set -- env -i PATH=/bin
for f in "$d"/env/*; do
  [ -f "$f" ] || continue
  val "$f"
  set -- "$@" "${f##*/}=$v"
done
set -- "$@" "$cmd"
for f in "$d"/arg/*; do
  [ -f "$f" ] || continue
  val "$f"
  set -- "$@" "$v"
done
exec "$@"
EOF
chmod 0755 "$root/bin/blixard-task-run" "$root/bin/blixard-task-exec"

find "$root" -exec touch -h -d @0 {} +
(cd "$root" && find . -print0 | sort -z \
  | cpio --null --create --format=newc --reproducible --owner=0:0 --quiet) >"$work/initrd.img"

sum() { sha256sum "$1" | cut -d' ' -f1; }
install -m 0644 "$work/vmlinux" "$out/$kernel_name.tmp"
install -m 0644 "$work/initrd.img" "$out/initrd.img.tmp"
rm -f "$out/manifest.json"
mv "$out/$kernel_name.tmp" "$out/$kernel_name"
mv "$out/initrd.img.tmp" "$out/initrd.img"
cat >"$out/manifest.json.tmp" <<EOF
{
  "kernel": "$kernel_name",
  "kernel_sha256": "$(sum "$out/$kernel_name")",
  "kernel_package": "$pkg",
  "kernel_version": "$kver",
  "deb": "$(basename "$deb")",
  "boot_protocol": "$boot_protocol",
  "initrd": "initrd.img",
  "initrd_sha256": "$(sum "$out/initrd.img")"
}
EOF
mv "$out/manifest.json.tmp" "$out/manifest.json"
echo "build-image: $out ($pkg, $boot_protocol)" >&2
