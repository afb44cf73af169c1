//! The QEMU command line for one VM, as a pure function of its spec and paths.
//!
//! Every choice here is a measured fact from QEMU-NOTES.md: `-M microvm` (fastest boot),
//! `-cpu qemu64,+arat` + `tsc=reliable` (idle guests go tickless), `tsc_early_khz` (the microvm
//! machine has no HPET/PM timer, and PIT calibration fails on a busy host), ACPI left on (the
//! power button is how `system_powerdown` reaches the guest).

use std::path::{Path, PathBuf};

use blixard_core::VmSpec;

use crate::image::GuestImage;
use crate::Accel;

/// Files of one VM, all absolute (QEMU runs with the daemon's cwd, which means nothing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmPaths {
    pub dir: PathBuf,
    pub spec: PathBuf,
    pub run: PathBuf,
    pub qmp: PathBuf,
    pub console_sock: PathBuf,
    pub console_log: PathBuf,
    pub console_old: PathBuf,
    pub pidfile: PathBuf,
    pub stderr: PathBuf,
    pub disk: PathBuf,
}

impl VmPaths {
    pub fn new(dir: PathBuf) -> Self {
        let f = |n: &str| dir.join(n);
        Self {
            spec: f("spec.json"),
            run: f("vm.json"),
            qmp: f("qmp.sock"),
            console_sock: f("console.sock"),
            console_log: f("console.log"),
            console_old: f("console.log.1"),
            pidfile: f("qemu.pid"),
            stderr: f("qemu.stderr"),
            disk: f("disk.qcow2"),
            dir,
        }
    }
}

/// The host's TSC frequency in kHz, from the first `cpu MHz` line of /proc/cpuinfo.
pub fn host_tsc_khz() -> Option<u64> {
    parse_cpu_khz(&std::fs::read_to_string("/proc/cpuinfo").ok()?)
}

pub fn parse_cpu_khz(cpuinfo: &str) -> Option<u64> {
    let line = cpuinfo.lines().find(|l| l.starts_with("cpu MHz"))?;
    let mhz: f64 = line.split(':').nth(1)?.trim().parse().ok()?;
    (mhz > 0.0).then(|| (mhz * 1000.0).round() as u64)
}

/// `console=ttyS0 tsc_early_khz=… tsc=reliable <spec cmdline> blixard.name=<name>`: the name
/// goes last so a user cmdline cannot override it.
pub fn kernel_cmdline(spec: &VmSpec, tsc_khz: Option<u64>) -> String {
    let mut parts = vec!["console=ttyS0".to_string()];
    if let Some(khz) = tsc_khz {
        parts.push(format!("tsc_early_khz={khz}"));
    }
    parts.push("tsc=reliable".into());
    if let Some(c) = spec.cmdline.as_deref().map(str::trim).filter(|c| !c.is_empty()) {
        parts.push(c.to_string());
    }
    parts.push(format!("blixard.name={}", spec.name));
    parts.join(" ")
}

/// QEMU option values are comma-separated: a literal comma in a path is written twice.
fn esc(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

/// A second NIC on a host bridge: the tap device and the NIC's MAC address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tap {
    pub ifname: String,
    pub mac: String,
}

impl Tap {
    /// Names and addresses derived from the VM's directory, so they are stable across restarts
    /// and distinct for every VM of every node on the host (interface names: at most 15 bytes).
    pub fn for_dir(dir: &Path) -> Tap {
        let mut h: u64 = 0xcbf29ce484222325;
        for b in dir.to_string_lossy().bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x100000001b3);
        }
        let b = h.to_be_bytes();
        Tap {
            ifname: format!("bx{:010x}", h >> 24),
            mac: format!("52:54:{:02x}:{:02x}:{:02x}:{:02x}", b[4] & 0xfe, b[5], b[6], b[7]),
        }
    }
}

/// The arguments after the QEMU binary. `disk` is whether `paths.disk` exists; `tap` adds a
/// second NIC on a host bridge.
pub fn qemu_args(
    spec: &VmSpec,
    paths: &VmPaths,
    image: &GuestImage,
    accel: Accel,
    tsc_khz: Option<u64>,
    disk: bool,
    tap: Option<&Tap>,
) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |xs: &[&str]| a.extend(xs.iter().map(|s| s.to_string()));
    push(&["-name", &format!("blixard-{},debug-threads=off", spec.name)]);
    push(&["-M", "microvm", "-accel", accel.as_str(), "-cpu", "qemu64,+arat"]);
    push(&["-m", &format!("{}M", spec.memory_mib), "-smp", &spec.vcpus.to_string()]);
    push(&["-nodefaults", "-no-user-config", "-nographic"]);
    push(&["-kernel", &image.kernel.display().to_string(), "-initrd", &image.initrd.display().to_string()]);
    push(&["-append", &kernel_cmdline(spec, tsc_khz)]);
    let console = format!(
        "socket,id=c0,path={},server=on,wait=off,logfile={},logappend=on",
        esc(&paths.console_sock),
        esc(&paths.console_log)
    );
    push(&["-chardev", &console, "-serial", "chardev:c0"]);
    push(&["-qmp", &format!("unix:{},server=on,wait=off", esc(&paths.qmp))]);
    push(&["-pidfile", &paths.pidfile.display().to_string()]);
    let mut netdev = "user,id=n0".to_string();
    for p in &spec.ports {
        netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{}-:{}", p.host, p.guest));
    }
    push(&["-netdev", &netdev, "-device", "virtio-net-device,netdev=n0"]);
    if let Some(t) = tap {
        let nd = format!("tap,id=n1,ifname={},script=no,downscript=no", t.ifname);
        push(&["-netdev", &nd, "-device", &format!("virtio-net-device,netdev=n1,mac={}", t.mac)]);
    }
    if disk {
        let drive = format!("file={},if=none,id=d0,format=qcow2", esc(&paths.disk));
        push(&["-drive", &drive, "-device", "virtio-blk-device,drive=d0"]);
    }
    // A guest panic makes QEMU exit 1 with SHUTDOWN reason guest-panic instead of idling forever.
    push(&["-device", "pvpanic", "-action", "panic=exit-failure"]);
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use blixard_core::PortForward;

    fn spec() -> VmSpec {
        VmSpec {
            name: "web-1".into(),
            vcpus: 2,
            memory_mib: 128,
            cmdline: Some("quiet blixard.http=80".into()),
            ports: vec![PortForward { host: 8080, guest: 80 }, PortForward { host: 2222, guest: 22 }],
            ..Default::default()
        }
    }

    #[test]
    fn a_tap_nic_gets_a_stable_short_name_and_a_local_unicast_mac() {
        let a = Tap::for_dir(Path::new("/var/lib/blixard/vmm/vms/web"));
        assert_eq!(a, Tap::for_dir(Path::new("/var/lib/blixard/vmm/vms/web")));
        assert_ne!(a, Tap::for_dir(Path::new("/var/lib/blixard/vmm/vms/db")));
        assert!(a.ifname.len() <= 15, "{}", a.ifname);
        let first = u8::from_str_radix(&a.mac[6..8], 16).unwrap();
        assert_eq!(first & 1, 0, "unicast: {}", a.mac);
    }

    #[test]
    fn cpu_mhz_becomes_khz() {
        assert_eq!(parse_cpu_khz("processor\t: 0\ncpu MHz\t\t: 2596.120\n"), Some(2_596_120));
        assert_eq!(parse_cpu_khz("nothing"), None);
    }

    #[test]
    fn cmdline_has_the_timer_options_then_the_spec_then_the_name() {
        assert_eq!(
            kernel_cmdline(&spec(), Some(2_596_120)),
            "console=ttyS0 tsc_early_khz=2596120 tsc=reliable quiet blixard.http=80 blixard.name=web-1"
        );
    }

    #[test]
    fn args_forward_ports_to_localhost_and_attach_the_disk() {
        let paths = VmPaths::new("/d/vms/web-1".into());
        let image = GuestImage { kernel: "/i/vmlinux".into(), initrd: "/i/initrd.img".into() };
        let a = qemu_args(&spec(), &paths, &image, Accel::Tcg, None, true, None).join(" ");
        for want in [
            "-M microvm -accel tcg -cpu qemu64,+arat -m 128M -smp 2",
            "-netdev user,id=n0,hostfwd=tcp:127.0.0.1:8080-:80,hostfwd=tcp:127.0.0.1:2222-:22",
            "-qmp unix:/d/vms/web-1/qmp.sock,server=on,wait=off",
            "-drive file=/d/vms/web-1/disk.qcow2,if=none,id=d0,format=qcow2",
            "logfile=/d/vms/web-1/console.log,logappend=on",
        ] {
            assert!(a.contains(want), "{want} not in {a}");
        }
        assert!(!qemu_args(&spec(), &paths, &image, Accel::Kvm, None, false, None).join(" ").contains("-drive"));
    }

    #[test]
    fn commas_in_paths_are_doubled() {
        assert_eq!(esc(Path::new("/a,b/c")), "/a,,b/c");
    }
}
