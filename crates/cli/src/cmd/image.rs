//! `blixard image build`: build (or reuse) the default guest image.

use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum ImageCmd {
    /// Build the default guest (Debian cloud kernel + busybox initramfs) into the cache.
    Build {
        /// The image cache (the same directory nodes use with --image-cache).
        #[arg(long, env = "BLIXARD_IMAGE_CACHE", default_value = ".blixard/images")]
        cache: PathBuf,
    },
}

pub async fn run(c: ImageCmd) -> anyhow::Result<()> {
    match c {
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
