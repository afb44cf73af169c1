//! VM drivers: how a Blixard node turns a [`VmSpec`] into a running guest and watches it.
//!
//! The reconciler talks to one [`VmDriver`] (see [`driver`] for the contract). Backends:
//! - [`qemu::QemuDriver`]: QEMU's `microvm` machine, one child process per VM, controlled over QMP;
//!   the accelerator is chosen by a real boot probe ([`accel`]) because KVM can be present and
//!   still hang guests.
//! - `microvm_nix::MicrovmNixDriver`: renders a microvm.nix flake per VM and runs its runner.
//! - [`fake::FakeDriver`]: deterministic and in-memory, for simulation only.
//!
//! The default guest (kernel + busybox initramfs) is built by `scripts/guest/build-image.sh`,
//! embedded here and run by [`image::ensure_image`].
//!
//! Under `--cfg madsim` only the pure parts and the fake compile: the real backends need real
//! processes and unix sockets, which the simulator does not provide.

#[cfg(not(madsim))]
pub mod accel;
pub mod driver;
mod error;
pub mod fake;
pub mod host_files;
#[cfg(not(madsim))]
pub mod image;
pub mod microvm_nix;
mod paths;
#[cfg(not(madsim))]
pub mod qemu;

pub use blixard_core::VmSpec;
pub use driver::{ConsoleChunk, Instance, LegacyFate, StopOutcome, VmDriver, VmObserved, VmState};
pub use error::{Result, VmmError};
pub use paths::{instance_dir, legacy_dir};

/// The line the default guest prints on its serial console once it is up (network configured,
/// services started). Followed by ` uptime=<seconds>`.
pub const BOOT_MARKER: &str = "BLIXARD-BOOT-OK";

/// Which accelerator QEMU uses. Lives here (not in [`accel`]) so the fake and the status types
/// can name it in every build.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Milliseconds since the Unix epoch. Only for timestamps shown to users, never for ordering.
#[cfg(not(madsim))]
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
