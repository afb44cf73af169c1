//! VM start overhead: `vm start` through a blixard node → the guest's boot marker on its
//! console, against the very same QEMU command line started by hand → the same marker.
//! Pairs are interleaved (and their order alternates) so drift on the machine hits both sides.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use blixard_proto::v1::vm_service_client::VmServiceClient;
use blixard_proto::v1::{CreateVmRequest, GetVmRequest, ReadOptions, VmNameRequest, VmSpec};
use serde::Serialize;
use tonic::transport::Channel;

const MARKER: &[u8] = b"BLIXARD-BOOT-OK";
const POLL: Duration = Duration::from_millis(1);
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

pub struct Config {
    pub addr: String,
    pub data_dir: PathBuf,
    pub name: String,
    pub memory_mib: u32,
    pub pairs: usize,
}

#[derive(Serialize)]
pub struct Report {
    pub pairs: usize,
    pub memory_mib: u32,
    pub blixard_ms: Vec<f64>,
    pub raw_ms: Vec<f64>,
    pub median_blixard_ms: f64,
    pub median_raw_ms: f64,
    /// Median of the per-pair differences (blixard − raw).
    pub median_added_ms: f64,
    pub ratio_of_medians: f64,
    /// The same runs observed early: until QEMU has written its pidfile (a step of QEMU's own
    /// start-up, identical on both sides), so the difference is the control plane's latency
    /// without the guest's boot jitter.
    pub blixard_pidfile_ms: Vec<f64>,
    pub raw_pidfile_ms: Vec<f64>,
    pub median_added_to_pidfile_ms: f64,
}

/// Polls (busy-ish, 100 µs) until `path` exists; returns when it was seen.
fn wait_file(path: &Path) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + BOOT_TIMEOUT;
    loop {
        if path.exists() {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            bail!("{} did not appear", path.display());
        }
        std::thread::sleep(Duration::from_micros(100));
    }
}

pub(crate) fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn inode(p: &Path) -> Option<u64> {
    std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).ok()?).into()
}

/// Waits until `path` holds the marker past byte `from` of the file that had inode `old` (a
/// new run renames the old log away, so a different inode means all of it is new).
async fn wait_marker(path: &Path, old: Option<u64>, from: u64) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + BOOT_TIMEOUT;
    loop {
        if let Ok(b) = std::fs::read(path) {
            let skip = if inode(path) == old { from as usize } else { 0 };
            let tail = b.get(skip..).unwrap_or(&[]);
            if tail.windows(MARKER.len()).any(|w| w == MARKER) {
                return Ok(Instant::now());
            }
        }
        if Instant::now() > deadline {
            bail!("no boot marker in {} after {BOOT_TIMEOUT:?}", path.display());
        }
        tokio::time::sleep(POLL).await;
    }
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

async fn observed(vm: &mut VmServiceClient<Channel>, name: &str) -> anyhow::Result<(String, Option<u32>)> {
    let r = vm.get_vm(GetVmRequest { name: name.into(), read: Some(ReadOptions { stale: true }) }).await?.into_inner();
    let o = r.vm.and_then(|v| v.observed);
    Ok((o.as_ref().map(|o| o.phase.clone()).unwrap_or_default(), o.and_then(|o| o.pid)))
}

async fn wait_phase(vm: &mut VmServiceClient<Channel>, name: &str, want: &str) -> anyhow::Result<Option<u32>> {
    let deadline = Instant::now() + BOOT_TIMEOUT;
    loop {
        let (phase, pid) = observed(vm, name).await?;
        if phase == want {
            return Ok(pid);
        }
        if Instant::now() > deadline {
            bail!("vm {name} is {phase}, not {want}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One `vm start` → pidfile → marker; leaves the VM running. Returns (pidfile, marker) in ms.
async fn blixard_once(vm: &mut VmServiceClient<Channel>, name: &str, log: &Path) -> anyhow::Result<(f64, f64)> {
    let (old, from) = (inode(log), file_len(log));
    let pidfile = log.with_file_name("qemu.pid");
    let t0 = Instant::now();
    vm.start_vm(VmNameRequest { name: name.into() }).await.context("vm start")?;
    let tp = wait_file(&pidfile)?;
    let t1 = wait_marker(log, old, from).await?;
    Ok(((tp - t0).as_secs_f64() * 1e3, (t1 - t0).as_secs_f64() * 1e3))
}

async fn blixard_stop(vm: &mut VmServiceClient<Channel>, name: &str) -> anyhow::Result<()> {
    vm.stop_vm(VmNameRequest { name: name.into() }).await.context("vm stop")?;
    wait_phase(vm, name, "stopped").await?;
    Ok(())
}

/// The same QEMU command line with the VM's directory swapped for `raw_dir`.
fn raw_command(args: &[String], vm_dir: &Path, raw_dir: &Path) -> Vec<String> {
    let (from, to) = (vm_dir.to_string_lossy().into_owned(), raw_dir.to_string_lossy().into_owned());
    args.iter().map(|a| a.replace(&from, &to)).collect()
}

/// One raw QEMU start → pidfile → marker; then kills it. Returns (pidfile, marker) in ms.
async fn raw_once(cmd: &[String], raw_dir: &Path) -> anyhow::Result<(f64, f64)> {
    use std::os::unix::process::CommandExt;
    let _ = std::fs::remove_dir_all(raw_dir);
    std::fs::create_dir_all(raw_dir)?;
    let log = raw_dir.join("console.log");
    let t0 = Instant::now();
    let mut child = std::process::Command::new(&cmd[0])
        .args(&cmd[1..])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .context("spawn raw qemu")?;
    let tp = wait_file(&raw_dir.join("qemu.pid"));
    let r = wait_marker(&log, None, 0).await;
    let _ = child.kill();
    let _ = child.wait();
    Ok(((tp? - t0).as_secs_f64() * 1e3, (r? - t0).as_secs_f64() * 1e3))
}

pub async fn run(c: Config) -> anyhow::Result<Report> {
    if c.pairs == 0 {
        bail!("invalid --pairs: must be at least 1");
    }
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", c.addr))?.connect().await?;
    let mut vm = VmServiceClient::new(ch);
    let spec = VmSpec { name: c.name.clone(), vcpus: 1, memory_mib: c.memory_mib, ..Default::default() };
    if let Err(s) =
        vm.create_vm(CreateVmRequest { spec: Some(spec), node: None, start: false, ..Default::default() }).await
    {
        if s.code() != tonic::Code::AlreadyExists {
            bail!("create vm: {}", s.message());
        }
    }
    // A VM's directory is its instance's: the name and the index of its create.
    let index = vm
        .get_vm(GetVmRequest { name: c.name.clone(), read: Some(ReadOptions { stale: false }) })
        .await
        .context("get vm")?
        .into_inner()
        .vm
        .map(|v| v.create_index)
        .context("the VM has no record")?;
    let vm_dir = std::fs::canonicalize(c.data_dir.join("vmm/vms"))
        .with_context(|| format!("no VM directory under {}", c.data_dir.display()))?
        .join(format!("{}.{index}", c.name));
    let log = vm_dir.join("console.log");
    // A first, unmeasured start: warms caches and shows the exact QEMU command line.
    blixard_once(&mut vm, &c.name, &log).await?;
    let pid = wait_phase(&mut vm, &c.name, "running").await?.context("no pid reported")?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).context("read the QEMU command line")?;
    let args: Vec<String> =
        cmdline.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    blixard_stop(&mut vm, &c.name).await?;
    // Outside the node's VM directory, which its reconciler keeps free of strangers.
    let raw_dir = std::fs::canonicalize(&c.data_dir)?.join("bench-raw");
    let raw_cmd = raw_command(&args, &vm_dir, &raw_dir);
    raw_once(&raw_cmd, &raw_dir).await?;

    let (mut b, mut r, mut bp, mut rp) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..c.pairs {
        let blixard_first = i % 2 == 0;
        for side in [blixard_first, !blixard_first] {
            if side {
                let (p, m) = blixard_once(&mut vm, &c.name, &log).await?;
                bp.push(p);
                b.push(m);
                blixard_stop(&mut vm, &c.name).await?;
            } else {
                let (p, m) = raw_once(&raw_cmd, &raw_dir).await?;
                rp.push(p);
                r.push(m);
            }
        }
        eprintln!(
            "pair {}: blixard {:.1} ms (pidfile {:.1}), raw {:.1} ms (pidfile {:.1})",
            i + 1,
            b[i],
            bp[i],
            r[i],
            rp[i]
        );
    }
    let _ = std::fs::remove_dir_all(&raw_dir);
    let diffs: Vec<f64> = b.iter().zip(&r).map(|(x, y)| x - y).collect();
    let pdiffs: Vec<f64> = bp.iter().zip(&rp).map(|(x, y)| x - y).collect();
    let (mb, mr) = (median(&b), median(&r));
    Ok(Report {
        pairs: c.pairs,
        memory_mib: c.memory_mib,
        median_blixard_ms: mb,
        median_raw_ms: mr,
        median_added_ms: median(&diffs),
        ratio_of_medians: mb / mr,
        blixard_ms: b,
        raw_ms: r,
        median_added_to_pidfile_ms: median(&pdiffs),
        blixard_pidfile_ms: bp,
        raw_pidfile_ms: rp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn the_raw_command_swaps_only_the_vm_directory() {
        let args = vec![
            "qemu".to_string(),
            "-chardev".into(),
            "socket,path=/d/vms/web/console.sock,logfile=/d/vms/web/console.log".into(),
            "-kernel".into(),
            "/img/vmlinux".into(),
        ];
        let raw = raw_command(&args, Path::new("/d/vms/web"), Path::new("/d/vms/web-raw"));
        assert_eq!(raw[2], "socket,path=/d/vms/web-raw/console.sock,logfile=/d/vms/web-raw/console.log");
        assert_eq!(raw[4], "/img/vmlinux");
    }
}
