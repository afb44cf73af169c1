//! The protocol between the host and the default guest's task mode, as pure functions: what
//! the host appends to the initramfs, the QEMU command line, and how the guest's reports and
//! the end of its output streams are recognised.
//!
//! **Delivery: an appended initramfs, not the kernel command line.** Linux concatenates cpio
//! archives given as one initrd, so the host appends a small `newc` archive to a copy of the
//! image's initramfs: `blixard-task/nonce`, `cmd`, `arg/NNNN` (one file per argument, in order)
//! and `env/NAME` (one per variable), each file holding its value's bytes exactly. The guest
//! (`blixard-task-exec`, in `scripts/guest/build-image.sh`) reads each file whole and builds the
//! argument vector from them without any shell parsing. The command line could not carry a
//! task: x86 Linux keeps 2,048 bytes of it (a task may have 64 KiB of arguments and 128
//! variables of 4 KiB), and it is world-readable on the host (`/proc/<qemu>/cmdline`) and in
//! the guest, where environment values (secrets, maybe) do not belong. The archive is bounded
//! by [`MAX_ARCHIVE`] (the spec's own limits keep it well under).
//!
//! **Reports** are lines on the serial console carrying a per-attempt random nonce, which the
//! guest reads and deletes before the task starts: `BLIXARD-TASK-START <nonce>`,
//! `BLIXARD-TASK-EXIT <nonce> <code>` and `BLIXARD-TASK-ERROR <nonce> <reason>`. The task's
//! stdout and stderr never reach the console (each has a virtio serial port of its own), so
//! what a task prints cannot be taken for a report; a line is a report only if it is exactly
//! one of these forms with this attempt's nonce.
//!
//! **End of output.** After the task (and whatever it left running) is gone, the guest writes
//! [`trailer`] to each port; QEMU may still hold output it has not passed on (it stops reading
//! a port while the host's socket is full), so the host reads each stream up to its trailer
//! ([`EndOfStream`]) before it kills the VM.

use std::path::{Path, PathBuf};

use blixard_core::TaskSpec;
use blixard_vmm::Accel;

/// Largest archive appended to the initramfs, in bytes.
pub const MAX_ARCHIVE: usize = 1024 * 1024;
/// The directory the archive creates in the guest's root.
pub const TASK_DIR: &str = "blixard-task";
/// Names of the virtio serial ports the guest writes the task's streams to.
pub const STDOUT_PORT: &str = "blixard.stdout";
pub const STDERR_PORT: &str = "blixard.stderr";
/// A report line is never longer (the host ignores longer lines).
pub const MAX_REPORT_LINE: usize = 256;

/// A fresh per-attempt nonce: 128 random bits, hex.
pub fn new_nonce() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// One `newc` cpio entry.
fn cpio_entry(out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, data: &[u8]) {
    let namesize = name.len() + 1;
    let fields = [ino, mode, 0, 0, if mode & 0o040000 != 0 { 2 } else { 1 }, 0, data.len() as u32, 0, 0, 0, 0];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(format!("{namesize:08x}{:08x}", 0).as_bytes());
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// The archive appended to the guest's initramfs (see the module docs), or why it cannot be
/// built. Entries start on 4-byte boundaries relative to the archive's start: the caller
/// appends it at a 4-byte aligned offset ([`appended_at`]).
pub fn archive(spec: &TaskSpec, nonce: &str) -> Result<Vec<u8>, String> {
    const DIR: u32 = 0o040700;
    const FILE: u32 = 0o100600;
    let mut out = Vec::new();
    let mut ino = 0x0b1a_0000u32;
    let mut add = |out: &mut Vec<u8>, name: String, mode: u32, data: &[u8]| {
        ino += 1;
        cpio_entry(out, ino, &name, mode, data);
    };
    add(&mut out, TASK_DIR.into(), DIR, b"");
    add(&mut out, format!("{TASK_DIR}/arg"), DIR, b"");
    add(&mut out, format!("{TASK_DIR}/env"), DIR, b"");
    add(&mut out, format!("{TASK_DIR}/nonce"), FILE, nonce.as_bytes());
    add(&mut out, format!("{TASK_DIR}/cmd"), FILE, spec.command.as_bytes());
    for (i, a) in spec.args.iter().enumerate() {
        add(&mut out, format!("{TASK_DIR}/arg/{i:04}"), FILE, a.as_bytes());
    }
    for (k, v) in &spec.env {
        // Validation allows [A-Za-z0-9_] names only; never let another name make a path.
        if k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!("environment variable name {k:?} cannot be passed to a VM"));
        }
        add(&mut out, format!("{TASK_DIR}/env/{k}"), FILE, v.as_bytes());
    }
    cpio_entry(&mut out, 0, "TRAILER!!!", 0, b"");
    if out.len() > MAX_ARCHIVE {
        return Err(format!(
            "the task's command, arguments and environment take {} bytes in the VM's initramfs; at most {MAX_ARCHIVE}",
            out.len()
        ));
    }
    Ok(out)
}

/// Zero bytes to put between an initramfs of `base_len` bytes and an appended archive, which
/// the kernel only looks for at a 4-byte aligned offset (it skips zeros in between).
pub fn appended_at(base_len: u64) -> usize {
    ((4 - base_len % 4) % 4) as usize
}

/// The task VM's kernel command line.
pub fn kernel_cmdline(tsc_khz: Option<u64>, name: &str) -> String {
    let mut parts = vec!["console=ttyS0".to_string()];
    if let Some(khz) = tsc_khz {
        parts.push(format!("tsc_early_khz={khz}"));
    }
    parts.extend(["tsc=reliable".into(), "quiet".into(), "blixard.task=1".into(), format!("blixard.name={name}")]);
    parts.join(" ")
}

/// Files of one task VM, all absolute (QEMU runs in the attempt's `work` directory).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmFiles {
    pub kernel: PathBuf,
    /// The attempt's copy of the image's initramfs with the task appended.
    pub initrd: PathBuf,
    pub console: PathBuf,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

impl VmFiles {
    pub fn in_dir(dir: &Path, kernel: PathBuf) -> Self {
        VmFiles {
            kernel,
            initrd: dir.join("initrd.img"),
            console: dir.join("console.sock"),
            stdout: dir.join("stdout.sock"),
            stderr: dir.join("stderr.sock"),
        }
    }
}

/// QEMU option values are comma-separated: a literal comma in a path is written twice.
fn esc(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

/// The arguments after the QEMU binary: the VM has the task's vCPUs and memory, no network and
/// no disk; its serial console and both task streams are unix sockets QEMU connects to (the
/// host listens before QEMU starts, so no byte is written before someone reads). A reboot or a
/// panic ends QEMU instead of running the task again.
pub fn qemu_args(spec: &TaskSpec, f: &VmFiles, accel: Accel, tsc_khz: Option<u64>, name: &str) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |xs: &[&str]| a.extend(xs.iter().map(|s| s.to_string()));
    push(&["-name", &format!("blixard-task-{name},debug-threads=off")]);
    push(&["-M", "microvm", "-accel", accel.as_str(), "-cpu", "qemu64,+arat"]);
    push(&["-m", &format!("{}M", spec.memory_mib), "-smp", &spec.vcpus.to_string()]);
    push(&["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"]);
    push(&["-kernel", &f.kernel.display().to_string(), "-initrd", &f.initrd.display().to_string()]);
    push(&["-append", &kernel_cmdline(tsc_khz, name)]);
    push(&["-chardev", &format!("socket,id=con,path={}", esc(&f.console)), "-serial", "chardev:con"]);
    push(&["-device", "virtio-serial-device"]);
    for (id, path, port) in [("out", &f.stdout, STDOUT_PORT), ("err", &f.stderr, STDERR_PORT)] {
        push(&["-chardev", &format!("socket,id={id},path={}", esc(path))]);
        push(&["-device", &format!("virtserialport,chardev={id},name={port}")]);
    }
    push(&["-device", "pvpanic", "-action", "panic=exit-failure"]);
    a
}

/// What the guest reports on its console.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Report {
    /// The task's program is about to run (the guest has booted).
    Start,
    /// The program exited with this status (a shell's: 128+N for signal N).
    Exit(i32),
    /// The guest could not run it: `notfound` (no such program in the guest), `noports`.
    Error(String),
}

/// The report `line` (one console line, without its `\n`) carries for the attempt with `nonce`:
/// exactly `BLIXARD-TASK-<KIND> <nonce>[ <value>]`, nothing before or after (a trailing `\r`
/// from the terminal aside). Anything else, including a report with another nonce, is `None`.
pub fn parse_report(line: &[u8], nonce: &str) -> Option<Report> {
    let mut line = line;
    while let Some(l) = line.strip_suffix(b"\r") {
        line = l;
    }
    if line.len() > MAX_REPORT_LINE || nonce.is_empty() {
        return None;
    }
    let line = std::str::from_utf8(line).ok()?;
    let mut words = line.split(' ');
    let kind = words.next()?;
    if words.next()? != nonce {
        return None;
    }
    let value = words.next();
    if words.next().is_some() {
        return None;
    }
    match (kind, value) {
        ("BLIXARD-TASK-START", None) => Some(Report::Start),
        ("BLIXARD-TASK-EXIT", Some(v)) => {
            if v.is_empty() || v.len() > 3 || !v.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            v.parse::<i32>().ok().filter(|c| *c <= 255).map(Report::Exit)
        }
        ("BLIXARD-TASK-ERROR", Some(v))
            if !v.is_empty() && v.len() <= 32 && v.bytes().all(|b| b.is_ascii_lowercase()) =>
        {
            Some(Report::Error(v.to_string()))
        }
        _ => None,
    }
}

/// Splits a console byte stream into lines for [`parse_report`], keeping at most
/// [`MAX_REPORT_LINE`] bytes of a line (a longer one can be no report).
#[derive(Debug, Default)]
pub struct Lines {
    line: Vec<u8>,
    long: bool,
}

impl Lines {
    /// Feeds bytes; calls `each` with every complete line that may be a report.
    pub fn feed(&mut self, bytes: &[u8], mut each: impl FnMut(&[u8])) {
        for &b in bytes {
            if b == b'\n' {
                if !self.long {
                    each(&self.line);
                }
                self.line.clear();
                self.long = false;
            } else if self.line.len() < MAX_REPORT_LINE + 2 {
                self.line.push(b);
            } else {
                self.long = true;
            }
        }
    }
}

/// What the guest writes on each port after the task's last byte.
pub fn trailer(nonce: &str) -> Vec<u8> {
    format!("\nBLIXARD-TASK-EOF {nonce}\n").into_bytes()
}

/// Finds the end of a task stream: passes the bytes before the trailer on, and holds back
/// only as many as could be the start of a trailer.
#[derive(Debug)]
pub struct EndOfStream {
    trailer: Vec<u8>,
    held: Vec<u8>,
    /// The trailer was seen.
    ended: bool,
}

impl EndOfStream {
    pub fn new(trailer: Vec<u8>) -> Self {
        assert!(!trailer.is_empty());
        EndOfStream { trailer, held: Vec::new(), ended: false }
    }

    /// The bytes of `chunk` (with those held back before) that are surely output, and whether
    /// the trailer has been seen (what follows it is dropped). After the end, nothing more.
    pub fn feed(&mut self, chunk: &[u8]) -> (Vec<u8>, bool) {
        if self.ended {
            return (Vec::new(), true);
        }
        self.held.extend_from_slice(chunk);
        let t = self.trailer.len();
        if let Some(p) = self.held.windows(t).position(|w| w == self.trailer.as_slice()) {
            self.ended = true;
            self.held.truncate(p);
            return (std::mem::take(&mut self.held), true);
        }
        let keep = self.held.len().min(t - 1);
        let out: Vec<u8> = self.held.drain(..self.held.len() - keep).collect();
        (out, false)
    }

    /// The stream closed without a trailer: what was held back is output too.
    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.held)
    }

    /// Whether the trailer was seen (the stream is complete).
    pub fn ended(&self) -> bool {
        self.ended
    }
}
