//! Choosing and opening this node's VM backend.

use std::path::PathBuf;
use std::sync::Arc;

use blixard_vmm::VmDriver;

/// Which hypervisor backend a node runs VMs with (`--vm-backend`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// QEMU's `microvm` machine (KVM when a probe boots a guest, else TCG).
    Qemu,
    /// microvm.nix: a generated flake per VM, run by its declared runner (needs `nix`).
    MicrovmNix,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Qemu => "qemu",
            Backend::MicrovmNix => "microvm-nix",
        }
    }
}

/// An opened backend: the driver and the accelerator it uses.
pub struct Opened {
    pub driver: Arc<dyn VmDriver>,
    pub accel: String,
}

/// A driver handed to the node instead of one it opens ([`crate::NodeConfig::vm_driver`]): the
/// simulation's fake that records every start and stop in a view shared by all hosts.
#[derive(Clone)]
pub struct Injected {
    pub driver: Arc<dyn VmDriver>,
    pub accel: String,
}

impl std::fmt::Debug for Injected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Injected({} driver, accel {})", self.driver.backend(), self.accel)
    }
}

/// Under simulation every node runs the fake driver: there are no processes to boot there. It is
/// never selectable in a real build.
#[cfg(madsim)]
pub async fn open(
    _backend: Backend,
    _vm_dir: PathBuf,
    _image_cache: PathBuf,
    _bridge: Option<String>,
    _files: blixard_vmm::host_files::HostFiles,
) -> Result<Opened, String> {
    Ok(Opened { driver: Arc::new(blixard_vmm::fake::FakeDriver::new()), accel: "fake".into() })
}

/// Opens the backend: for QEMU, builds (or reuses) the guest image in `image_cache`, picks the
/// accelerator with a boot probe (cached per host boot), and adopts VMs still running from a
/// previous run of this node.
#[cfg(not(madsim))]
pub async fn open(
    backend: Backend,
    vm_dir: PathBuf,
    image_cache: PathBuf,
    bridge: Option<String>,
    files: blixard_vmm::host_files::HostFiles,
) -> Result<Opened, String> {
    match backend {
        Backend::Qemu => {
            use blixard_vmm::qemu::{QemuConfig, QemuDriver};
            let cache = image_cache.join("default");
            let image = tokio::task::spawn_blocking(move || blixard_vmm::image::ensure_image(&cache))
                .await
                .map_err(|e| format!("guest image build panicked: {e}"))?
                .map_err(|e| format!("cannot build the guest image: {}", crate::status::chain(&e)))?;
            let verdict = blixard_vmm::accel::select(&image, &image_cache)
                .await
                .map_err(|e| format!("cannot choose an accelerator: {}", crate::status::chain(&e)))?;
            tracing::info!(accel = %verdict.accel, why = %verdict.detail, "VM backend qemu");
            let mut cfg = QemuConfig::new(vm_dir, image, verdict.accel);
            cfg.bridge = bridge;
            cfg.host_files = files;
            let driver = QemuDriver::new(cfg)
                .map_err(|e| format!("cannot open the VM directory: {}", crate::status::chain(&e)))?;
            let adopted = driver.adopt_all().await.map_err(|e| format!("cannot adopt running VMs: {e}"))?;
            if !adopted.is_empty() {
                let adopted: Vec<String> = adopted.iter().map(ToString::to_string).collect();
                tracing::info!(?adopted, "adopted VMs still running from before");
            }
            Ok(Opened { driver: Arc::new(driver), accel: verdict.accel.to_string() })
        }
        Backend::MicrovmNix => {
            let which = std::process::Command::new("sh").args(["-c", "command -v nix"]).output();
            if !which.is_ok_and(|o| o.status.success()) {
                return Err("the microvm-nix backend needs nix on the host: not found on PATH".into());
            }
            let driver = blixard_vmm::microvm_nix::MicrovmNixDriver::new(vm_dir);
            Ok(Opened { driver: Arc::new(driver), accel: "kvm".into() })
        }
    }
}

/// Default places under a data dir.
pub fn default_dirs(data_dir: &std::path::Path) -> (PathBuf, PathBuf) {
    (data_dir.join("vmm"), data_dir.join("images"))
}
