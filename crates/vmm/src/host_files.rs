//! Which host files a VM may boot from or be backed by: QEMU runs as root, so a spec's
//! `kernel`, `initrd` or `rootfs` that named any path would let any client have QEMU read any
//! host file (`/etc/shadow` as an initrd, `/proc/self/environ`, `/dev/vda` as a backing file).
//!
//! A reference resolves only to an image Blixard manages — the image cache: the default guest
//! and what `blixard image import` put in `<cache>/imported/` — or to a file inside a directory
//! the node's admin allowed (`blixard node --allow-image-dir DIR`). The path is canonicalized
//! first (symlinks and `..` resolved), so a symlink out of an allowed directory is judged by
//! where it leads; the target must be a regular file and never under `/proc`, `/sys` or `/dev`;
//! a qcow2's backing chain (and external data file) is walked one file at a time, each judged
//! the same way before `qemu-img` opens it. Refusals name the field and the rule.

use std::path::{Path, PathBuf};

use blixard_core::image_ref::{self, ImageRef};

use crate::{Result, VmmError};

/// Where imported images live inside an image cache.
pub fn imported_dir(cache: &Path) -> PathBuf {
    cache.join("imported")
}

/// The files a node lets VMs use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostFiles {
    /// The image cache (the default guest, and imported images in `imported/`).
    pub image_cache: PathBuf,
    /// Directories an admin allowed (`--allow-image-dir`).
    pub allowed_dirs: Vec<PathBuf>,
}

fn refused(field: &str, reference: &str, rule: impl Into<String>) -> VmmError {
    VmmError::HostFileRefused { field: field.to_string(), reference: reference.to_string(), rule: rule.into() }
}

impl HostFiles {
    pub fn new(image_cache: impl Into<PathBuf>, allowed_dirs: Vec<PathBuf>) -> Self {
        HostFiles { image_cache: image_cache.into(), allowed_dirs }
    }

    /// The canonical roots a file must be in (those that exist).
    fn roots(&self) -> Vec<PathBuf> {
        std::iter::once(&self.image_cache)
            .chain(&self.allowed_dirs)
            .filter_map(|d| std::fs::canonicalize(d).ok())
            .collect()
    }

    /// The file `reference` (given for `field`) stands for, if a VM may use it.
    pub fn resolve(&self, field: &str, reference: &str) -> Result<PathBuf> {
        let path = match image_ref::parse(field, reference).map_err(|e| refused(field, reference, e.rule))? {
            ImageRef::Imported(name) => imported_dir(&self.image_cache).join(name),
            ImageRef::Path(p) => p.to_path_buf(),
        };
        self.check_path(field, reference, &path)
    }

    fn check_path(&self, field: &str, reference: &str, path: &Path) -> Result<PathBuf> {
        let real = std::fs::canonicalize(path)
            .map_err(|e| refused(field, reference, format!("{} cannot be resolved: {e}", path.display())))?;
        if let Some(d) = image_ref::never_allowed(&real) {
            return Err(refused(
                field,
                reference,
                format!("resolves to {}, under {d}, which is never allowed", real.display()),
            ));
        }
        let meta = std::fs::metadata(&real)
            .map_err(|e| refused(field, reference, format!("{} cannot be read: {e}", real.display())))?;
        if !meta.file_type().is_file() {
            return Err(refused(
                field,
                reference,
                format!(
                    "{} is not a regular file (devices, directories and sockets are never allowed)",
                    real.display()
                ),
            ));
        }
        if !self.roots().iter().any(|r| real.starts_with(r)) {
            return Err(refused(
                field,
                reference,
                format!(
                    "{} is outside the image cache and every --allow-image-dir (import it with `blixard image import`)",
                    real.display()
                ),
            ));
        }
        Ok(real)
    }

    /// Checks every file a disk image at `path` (already resolved) leads QEMU to open: its
    /// backing files, one by one (each judged before it is inspected), and any external data
    /// file. Blocking (runs `qemu-img info`).
    pub fn check_backing_chain(&self, qemu_img: &Path, field: &str, reference: &str, path: &Path) -> Result<()> {
        let mut current = path.to_path_buf();
        for _ in 0..MAX_CHAIN {
            let out = std::process::Command::new(qemu_img)
                .args(["info", "--output=json", "-U"])
                .arg(&current)
                .output()
                .map_err(|source| VmmError::Spawn { program: qemu_img.display().to_string(), source })?;
            if !out.status.success() {
                let detail = String::from_utf8_lossy(&out.stderr).trim().to_string();
                return Err(refused(
                    field,
                    reference,
                    format!("{} is not a disk image qemu-img reads: {detail}", current.display()),
                ));
            }
            let info: serde_json::Value = serde_json::from_slice(&out.stdout)
                .map_err(|e| refused(field, reference, format!("qemu-img info of {}: {e}", current.display())))?;
            if let Some(data) = info["format-specific"]["data"]["data-file"].as_str() {
                let data = relative_to(&current, data);
                self.check_path(field, reference, &data)
                    .map_err(|e| with_prefix(e, &format!("the data file of {}: ", current.display())))?;
            }
            let backing = info["full-backing-filename"].as_str().or(info["backing-filename"].as_str());
            let Some(backing) = backing else { return Ok(()) };
            if backing.contains(':') && !backing.starts_with('/') {
                return Err(refused(
                    field,
                    reference,
                    format!("{} has a backing file that is not a local file: {backing:?}", current.display()),
                ));
            }
            let next = relative_to(&current, backing);
            current = self
                .check_path(field, reference, &next)
                .map_err(|e| with_prefix(e, &format!("the backing file of {}: ", current.display())))?;
        }
        Err(refused(field, reference, format!("its backing chain is longer than {MAX_CHAIN} files")))
    }
}

/// What `blixard image import` recorded about an image (`<cache>/imported/NAME.json`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Imported {
    pub name: String,
    pub path: PathBuf,
    pub sha256: String,
    pub bytes: u64,
    /// The file it was copied from.
    pub source: PathBuf,
}

/// Copies the regular file `src` into the image store of `cache` as `name` (written to a
/// temporary file, synced, then renamed: never half an image) and records its sha256. The
/// same content again is a no-op; another content under a taken name is refused. Blocking.
pub fn import(cache: &Path, name: &str, src: &Path) -> Result<Imported> {
    use sha2::Digest;
    use std::io::{Read, Write};
    image_ref::validate_image_name(name).map_err(|rule| refused("name", name, rule))?;
    let given = src.display().to_string();
    let real = std::fs::canonicalize(src).map_err(|e| refused("path", &given, format!("cannot be resolved: {e}")))?;
    if let Some(d) = image_ref::never_allowed(&real) {
        return Err(refused(
            "path",
            &given,
            format!("resolves to {}, under {d}, which is never allowed", real.display()),
        ));
    }
    let mut from = std::fs::File::open(&real).map_err(VmmError::io("open", &real))?;
    if !from.metadata().map_err(VmmError::io("read", &real))?.file_type().is_file() {
        return Err(refused("path", &given, format!("{} is not a regular file", real.display())));
    }
    let dir = imported_dir(cache);
    std::fs::create_dir_all(&dir).map_err(VmmError::io("create", &dir))?;
    let (dest, meta) = (dir.join(name), dir.join(format!("{name}.json")));
    let tmp = dir.join(format!(".{name}.partial"));
    let mut to = std::fs::File::create(&tmp).map_err(VmmError::io("create", &tmp))?;
    let (mut hash, mut bytes, mut buf) = (sha2::Sha256::new(), 0u64, vec![0u8; 1 << 20]);
    loop {
        let n = from.read(&mut buf).map_err(VmmError::io("read", &real))?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        to.write_all(&buf[..n]).map_err(VmmError::io("write", &tmp))?;
        bytes += n as u64;
    }
    to.sync_all().map_err(VmmError::io("sync", &tmp))?;
    let sha256 = format!("{:x}", hash.finalize());
    let rec = Imported { name: name.to_string(), path: dest.clone(), sha256, bytes, source: real };
    if let Ok(old) = read_imported(cache, name) {
        let _ = std::fs::remove_file(&tmp);
        if old.sha256 == rec.sha256 && dest.is_file() {
            return Ok(old);
        }
        return Err(refused("name", name, format!("image {name} exists with another content (sha256 {})", old.sha256)));
    }
    std::fs::rename(&tmp, &dest).map_err(VmmError::io("rename", &dest))?;
    let json = serde_json::to_vec_pretty(&rec).map_err(|source| VmmError::BadFile { path: meta.clone(), source })?;
    std::fs::write(&meta, json).map_err(VmmError::io("write", &meta))?;
    Ok(rec)
}

/// The record of an imported image.
pub fn read_imported(cache: &Path, name: &str) -> Result<Imported> {
    let meta = imported_dir(cache).join(format!("{name}.json"));
    let text = std::fs::read_to_string(&meta).map_err(VmmError::io("read", &meta))?;
    serde_json::from_str(&text).map_err(|source| VmmError::BadFile { path: meta, source })
}

/// Backing files deeper than this are refused.
const MAX_CHAIN: usize = 16;

/// A backing file name as QEMU resolves it: relative to the image that names it.
fn relative_to(image: &Path, name: &str) -> PathBuf {
    let p = Path::new(name);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        image.parent().unwrap_or(Path::new("/")).join(p)
    }
}

fn with_prefix(e: VmmError, prefix: &str) -> VmmError {
    match e {
        VmmError::HostFileRefused { field, reference, rule } => {
            VmmError::HostFileRefused { field, reference, rule: format!("{prefix}{rule}") }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(r: Result<PathBuf>) -> String {
        match r {
            Err(VmmError::HostFileRefused { rule, .. }) => rule,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn import_copies_records_the_digest_and_resolves_by_name() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path().join("cache");
        let src = tmp.path().join("vmlinux");
        std::fs::write(&src, b"hello").unwrap();
        let rec = import(&cache, "k1", &src).unwrap();
        assert_eq!(rec.sha256, "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
        assert_eq!((rec.bytes, std::fs::read(&rec.path).unwrap()), (5, b"hello".to_vec()));
        assert_eq!(read_imported(&cache, "k1").unwrap(), rec);
        assert_eq!(import(&cache, "k1", &src).unwrap(), rec, "the same content again");
        std::fs::write(&src, b"other").unwrap();
        assert!(rule(import(&cache, "k1", &src).map(|r| r.path)).contains("another content"));
        assert!(rule(import(&cache, "../x", &src).map(|r| r.path)).contains("[a-z0-9._-]"));
        assert!(rule(import(&cache, "k2", Path::new("/dev/null")).map(|r| r.path)).contains("under /dev"));
        assert!(rule(import(&cache, "k2", tmp.path()).map(|r| r.path)).contains("not a regular file"));
        let h = HostFiles::new(&cache, vec![]);
        assert_eq!(h.resolve("kernel", "image:k1").unwrap(), rec.path.canonicalize().unwrap());
    }

    #[test]
    fn only_files_in_the_cache_or_an_allowed_directory_resolve() {
        let tmp = tempfile::tempdir().unwrap();
        let (cache, allowed, other) = (tmp.path().join("cache"), tmp.path().join("allowed"), tmp.path().join("other"));
        for d in [&cache, &allowed, &other, &imported_dir(&cache)] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(imported_dir(&cache).join("k1"), b"k").unwrap();
        std::fs::write(allowed.join("initrd"), b"i").unwrap();
        std::fs::write(other.join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", allowed.join("link")).unwrap();
        std::os::unix::fs::symlink(other.join("secret"), imported_dir(&cache).join("sneaky")).unwrap();
        std::fs::create_dir(allowed.join("dir")).unwrap();
        let h = HostFiles::new(&cache, vec![allowed.clone()]);

        assert_eq!(h.resolve("kernel", "image:k1").unwrap(), imported_dir(&cache).canonicalize().unwrap().join("k1"));
        let given = allowed.join("initrd").display().to_string();
        assert!(h.resolve("initrd", &given).is_ok());
        assert!(rule(h.resolve("initrd", "/etc/shadow")).contains("outside the image cache"));
        assert!(
            rule(h.resolve("initrd", &allowed.join("link").display().to_string())).contains("/etc/passwd is outside")
        );
        assert!(rule(h.resolve("kernel", "image:sneaky")).contains("is outside"));
        assert!(rule(h.resolve("kernel", "image:missing")).contains("cannot be resolved"));
        assert!(rule(h.resolve("initrd", "/proc/self/environ")).contains("under /proc"));
        assert!(rule(h.resolve("rootfs", "/dev/null")).contains("under /dev"));
        assert!(rule(h.resolve("rootfs", &allowed.join("dir").display().to_string())).contains("not a regular file"));
        assert!(rule(h.resolve("rootfs", "relative/path")).contains("absolute path"));
        let bad = HostFiles::new(&cache, vec![PathBuf::from("/")]);
        std::os::unix::fs::symlink("/proc/self/environ", allowed.join("env")).unwrap();
        let via_link = allowed.join("env").display().to_string();
        assert!(rule(bad.resolve("rootfs", &via_link)).contains("never allowed"), "/ allowed still leaves /proc out");
        match h.resolve("initrd", "/etc/shadow") {
            Err(e) => assert!(e.to_string().starts_with("initrd \"/etc/shadow\" refused: "), "{e}"),
            Ok(_) => unreachable!(),
        }
    }
}
