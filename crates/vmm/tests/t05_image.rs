//! The guest image builder is reproducible: a rebuild gives the same sha256 for every output.
#![cfg(not(madsim))]

mod common;

use blixard_vmm::image::{ensure_image, read_manifest};

#[test]
fn rebuilding_the_image_gives_identical_hashes() {
    let cached = common::image();
    let cached_manifest = read_manifest(cached.initrd.parent().unwrap()).unwrap();
    let fresh = tempfile::tempdir().unwrap();
    let image = ensure_image(fresh.path()).unwrap();
    let manifest = read_manifest(fresh.path()).unwrap();
    assert_eq!(manifest, cached_manifest);
    assert!(image.kernel.ends_with(&manifest.kernel) && image.initrd.ends_with("initrd.img"));
    eprintln!("image: {} {} initrd sha256 {}", manifest.kernel_package, manifest.boot_protocol, manifest.initrd_sha256);
    // A second ensure reuses the cache (manifest and recipe present): nothing changes.
    let mtime = |p: &std::path::Path| std::fs::metadata(p).unwrap().modified().unwrap();
    let before = mtime(&image.initrd);
    ensure_image(fresh.path()).unwrap();
    assert_eq!(mtime(&image.initrd), before);
}
