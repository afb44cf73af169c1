//! `blixard image build`: build (or reuse) the default guest image. `blixard image import`:
//! copy a kernel, initrd or disk image into the image store VM specs name it from
//! (`--kernel image:NAME`).
//!
//! Both work on a host's image cache directly (the directory nodes use with --image-cache,
//! shared by the nodes on one host), not through a node: images are per host, and a node's
//! port never accepts files from the network.

use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum ImageCmd {
    /// Build the default guest (Debian cloud kernel + busybox initramfs) into the cache.
    Build {
        /// The image cache (the same directory nodes use with --image-cache).
        #[arg(long, env = "BLIXARD_IMAGE_CACHE", default_value = ".blixard/images")]
        cache: PathBuf,
    },
    /// Copy a file into the image store as NAME and record its sha256; VM specs then name it
    /// as image:NAME (--kernel, --initrd or --rootfs). Per host: run it where the VMs run.
    Import {
        /// 1 to 64 of [a-z0-9._-], starting with a letter or digit.
        name: String,
        /// The file to copy.
        path: PathBuf,
        /// The image cache (the same directory nodes use with --image-cache).
        #[arg(long, env = "BLIXARD_IMAGE_CACHE", default_value = ".blixard/images")]
        cache: PathBuf,
    },
}

pub async fn run(c: ImageCmd) -> anyhow::Result<()> {
    match c {
        ImageCmd::Import { name, path, cache } => {
            let rec = tokio::task::spawn_blocking(move || blixard_vmm::host_files::import(&cache, &name, &path))
                .await?
                .map_err(|e| anyhow::anyhow!(blixard_node::status::chain(&e)))?;
            println!("image:{}  {} ({} bytes, sha256 {})", rec.name, rec.path.display(), rec.bytes, rec.sha256);
            Ok(())
        }
        ImageCmd::Build { cache } => {
            let dir = cache.join("default");
            let d = dir.clone();
            let image = tokio::task::spawn_blocking(move || blixard_vmm::image::ensure_image(&d))
                .await?
                .map_err(|e| anyhow::anyhow!(blixard_node::status::chain(&e)))?;
            let m = blixard_vmm::image::read_manifest(&dir).map_err(|e| anyhow::anyhow!(e.to_string()))?;
            println!("kernel  {} ({}, {})", image.kernel.display(), m.kernel_version, m.boot_protocol);
            println!("initrd  {} (sha256 {})", image.initrd.display(), m.initrd_sha256);
            Ok(())
        }
    }
}
