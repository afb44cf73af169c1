//! The default guest image: built once per host by the embedded `build-image.sh` and cached.
//!
//! The script is embedded (not looked up next to the binary) so an installed daemon is
//! self-contained. The cache is keyed by a hash of the script: changing the recipe rebuilds.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::{Result, VmmError};

/// The builder script, as checked in under `scripts/guest/`.
pub const BUILD_SCRIPT: &str = include_str!("../../../scripts/guest/build-image.sh");

/// Boot files of a guest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestImage {
    /// Uncompressed `vmlinux` (PVH boot) or, if extraction failed, a bzImage.
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

/// `manifest.json`, written last by the builder: its presence means the image is complete.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub kernel: String,
    pub kernel_sha256: String,
    pub kernel_package: String,
    pub kernel_version: String,
    pub boot_protocol: String,
    pub initrd: String,
    pub initrd_sha256: String,
}

/// Identity of the embedded recipe (FNV-1a, hex). Not a security boundary, only a cache key.
pub fn recipe_id() -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in BUILD_SCRIPT.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

/// Reads the manifest of a built image in `dir`.
pub fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join("manifest.json");
    let text = fs::read_to_string(&path).map_err(VmmError::io("read", &path))?;
    serde_json::from_str(&text).map_err(|source| VmmError::BadFile { path, source })
}

/// Returns the image in `cache_dir`, building it first if it is missing or from another recipe.
///
/// Blocking (a build takes seconds, downloads the kernel .deb once): call it from
/// `spawn_blocking` or before the runtime starts. Concurrent callers, in this or other processes,
/// serialize on an exclusive `flock` of `cache_dir/.lock`, so only one builds.
pub fn ensure_image(cache_dir: &Path) -> Result<GuestImage> {
    fs::create_dir_all(cache_dir).map_err(VmmError::io("create", cache_dir))?;
    let cache_dir = fs::canonicalize(cache_dir).map_err(VmmError::io("resolve", cache_dir))?;
    let lock_path = cache_dir.join(".lock");
    let lock = fs::File::create(&lock_path).map_err(VmmError::io("create", &lock_path))?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| VmmError::io("lock", &lock_path)(e.into()))?;

    let recipe_path = cache_dir.join("recipe");
    let recipe = recipe_id();
    let fresh = fs::read_to_string(&recipe_path).is_ok_and(|r| r.trim() == recipe);
    if !(fresh && read_manifest(&cache_dir).is_ok()) {
        build(&cache_dir)?;
        fs::write(&recipe_path, format!("{recipe}\n")).map_err(VmmError::io("write", &recipe_path))?;
    }
    let m = read_manifest(&cache_dir)?;
    let image = GuestImage { kernel: cache_dir.join(&m.kernel), initrd: cache_dir.join(&m.initrd) };
    for f in [&image.kernel, &image.initrd] {
        if !f.is_file() {
            return Err(VmmError::io("find", f)(std::io::ErrorKind::NotFound.into()));
        }
    }
    Ok(image)
}

fn build(out: &Path) -> Result<()> {
    let script = out.join("build-image.sh");
    let mut f = fs::File::create(&script).map_err(VmmError::io("create", &script))?;
    f.write_all(BUILD_SCRIPT.as_bytes()).map_err(VmmError::io("write", &script))?;
    drop(f);
    tracing::info!(dir = %out.display(), "building the guest image");
    let result = Command::new("bash")
        .arg(&script)
        .arg(out)
        .output()
        .map_err(|source| VmmError::Spawn { program: "bash build-image.sh".into(), source })?;
    if !result.status.success() {
        let stderr = String::from_utf8_lossy(&result.stderr);
        let detail = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no output").to_string();
        return Err(VmmError::Command { program: "build-image.sh".into(), detail });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipe_id_is_stable_hex() {
        assert_eq!(recipe_id(), recipe_id());
        assert_eq!(recipe_id().len(), 16);
        assert!(BUILD_SCRIPT.starts_with("#!/usr/bin/env bash"));
    }
}
