//! Host-side helpers of the QEMU backend: disks, the stored spec, killing a process group.

use std::path::Path;

use blixard_core::VmSpec;

use super::args::VmPaths;
use crate::host_files::HostFiles;
use crate::{Result, VmmError};

/// Creates `disk.qcow2` if the spec asks for a disk and none exists yet (existing data is kept):
/// an empty qcow2 of `disk_gib`, or a copy-on-write overlay of the `rootfs` base image.
/// The rootfs (and every file of its backing chain) must be one VMs may use (see
/// [`crate::host_files`]).
pub async fn create_disk(qemu_img: &Path, files: &HostFiles, spec: &VmSpec, paths: &VmPaths) -> Result<()> {
    if paths.disk.exists() || (spec.disk_gib.is_none() && spec.rootfs.is_none()) {
        return Ok(());
    }
    let mut cmd = tokio::process::Command::new(qemu_img);
    cmd.args(["create", "-q", "-f", "qcow2"]);
    if let Some(given) = &spec.rootfs {
        let base = files.resolve("rootfs", given)?;
        let (files, qemu_img, given, checked) = (files.clone(), qemu_img.to_path_buf(), given.clone(), base.clone());
        tokio::task::spawn_blocking(move || files.check_backing_chain(&qemu_img, "rootfs", &given, &checked))
            .await
            .map_err(|e| VmmError::Command { program: "qemu-img info".into(), detail: e.to_string() })??;
        cmd.arg("-b").arg(base).args(["-F", "qcow2"]);
    }
    cmd.arg(&paths.disk);
    if let Some(gib) = spec.disk_gib {
        cmd.arg(format!("{gib}G"));
    }
    let program = qemu_img.display().to_string();
    let out = cmd.output().await.map_err(|source| VmmError::Spawn { program: program.clone(), source })?;
    if !out.status.success() {
        let detail = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(VmmError::Command { program, detail });
    }
    Ok(())
}

/// The spec stored by `prepare`.
pub fn read_spec(paths: &VmPaths, name: &str) -> Result<VmSpec> {
    let text = std::fs::read_to_string(&paths.spec).map_err(|_| VmmError::NotPrepared(name.to_string()))?;
    serde_json::from_str(&text).map_err(|source| VmmError::BadFile { path: paths.spec.clone(), source })
}

/// SIGKILL to the whole process group (QEMU is its leader), then to the pid itself in case it
/// is not.
pub fn kill_group(pid: u32) -> Result<()> {
    use rustix::process::{kill_process, kill_process_group, Pid, Signal};
    let pid = Pid::from_raw(pid as i32).ok_or_else(|| VmmError::Qmp("pid 0".into()))?;
    let group = kill_process_group(pid, Signal::KILL);
    let single = kill_process(pid, Signal::KILL);
    group.or(single).map_err(|e| VmmError::io("kill", format!("pid {}", pid.as_raw_nonzero()))(e.into()))
}

fn ip(args: &[&str]) -> std::result::Result<(), String> {
    let o = std::process::Command::new("ip").args(args).output().map_err(|e| format!("cannot run ip: {e}"))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&o.stderr).trim()))
    }
}

/// Creates (if missing) a persistent tap device and enslaves it to `bridge`, up. Needs
/// CAP_NET_ADMIN; the error says what `ip` refused.
pub fn ensure_tap(ifname: &str, bridge: &str) -> std::result::Result<(), String> {
    if ip(&["link", "show", "dev", ifname]).is_err() {
        ip(&["tuntap", "add", "dev", ifname, "mode", "tap"])?;
    }
    ip(&["link", "set", "dev", ifname, "master", bridge])?;
    ip(&["link", "set", "dev", ifname, "up"])
}

/// Removes a tap device made by [`ensure_tap`]; a missing one is fine.
pub fn remove_tap(ifname: &str) {
    if let Err(e) = ip(&["link", "del", "dev", ifname]) {
        tracing::debug!("{e}");
    }
}
