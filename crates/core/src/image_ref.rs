//! What a VM spec's `kernel`, `initrd` and `rootfs` may name: an image Blixard manages
//! (`image:NAME`, put in a host's image store by `blixard image import`) or an absolute path
//! on the host. The rules here are the ones a spec can be checked against anywhere (at create
//! time); whether a path resolves inside the image store or a directory the node's admin
//! allowed is checked on the node that starts the VM (`blixard_vmm::host_files`), after
//! symlinks are resolved.

use std::path::{Component, Path};

use crate::spec::ValidationError;

/// The prefix of a reference to an imported image.
pub const IMAGE_PREFIX: &str = "image:";
/// Directories never usable, whatever the node allows: the kernel's views of processes,
/// devices and itself.
pub const NEVER_ALLOWED: [&str; 3] = ["/proc", "/sys", "/dev"];
pub const MAX_IMAGE_NAME_LEN: usize = 64;

/// A parsed reference.
#[derive(Debug, PartialEq, Eq)]
pub enum ImageRef<'a> {
    /// `image:NAME`: an imported image.
    Imported(&'a str),
    /// An absolute host path.
    Path(&'a Path),
}

/// An imported image's name: 1 to 64 of `[a-z0-9._-]`, starting with a letter or digit (it is a
/// file name in the image store).
pub fn validate_image_name(name: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || name.len() > MAX_IMAGE_NAME_LEN {
        return Err(format!("an image name must be 1 to {MAX_IMAGE_NAME_LEN} characters (got {name:?})"));
    }
    if !name.chars().all(ok_char) || !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(format!("an image name is [a-z0-9._-] starting with a letter or digit (got {name:?})"));
    }
    Ok(())
}

/// The first never-allowed directory `p` is in, judged by its components.
pub fn never_allowed(p: &Path) -> Option<&'static str> {
    NEVER_ALLOWED.into_iter().find(|d| p.starts_with(d))
}

/// Parses `v` given for `field`, by the rules that need no host.
pub fn parse<'a>(field: &str, v: &'a str) -> Result<ImageRef<'a>, ValidationError> {
    if let Some(name) = v.strip_prefix(IMAGE_PREFIX) {
        validate_image_name(name).map_err(|rule| ValidationError::new(field, rule))?;
        return Ok(ImageRef::Imported(name));
    }
    let p = Path::new(v);
    if !p.is_absolute() {
        return Err(ValidationError::new(
            field,
            format!("must be {IMAGE_PREFIX}NAME (an imported image) or an absolute path (got {v:?})"),
        ));
    }
    if p.components().any(|c| matches!(c, Component::ParentDir | Component::CurDir)) {
        return Err(ValidationError::new(field, format!("must not contain . or .. components (got {v:?})")));
    }
    if let Some(d) = never_allowed(p) {
        return Err(ValidationError::new(field, format!("must not be under {d} (got {v:?})")));
    }
    Ok(ImageRef::Path(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(v: &str) -> String {
        parse("initrd", v).unwrap_err().rule
    }

    #[test]
    fn image_references_are_imported_names_or_plain_absolute_paths_outside_proc_sys_dev() {
        assert_eq!(parse("kernel", "image:debian-12.vmlinux"), Ok(ImageRef::Imported("debian-12.vmlinux")));
        assert_eq!(parse("kernel", "/srv/images/k"), Ok(ImageRef::Path(Path::new("/srv/images/k"))));
        assert!(rule("image:").contains("1 to 64"));
        assert!(rule("image:../etc/shadow").contains("[a-z0-9._-]"));
        assert!(rule("image:.hidden").contains("starting with"));
        assert!(rule("vmlinuz").contains("absolute path"));
        assert!(rule("/srv/images/../../etc/shadow").contains(".."));
        assert!(rule("/proc/self/environ").contains("under /proc"));
        assert!(rule("/dev/vda").contains("under /dev"));
        assert!(rule("/sys/firmware/efi").contains("under /sys"));
        assert!(parse("rootfs", "/devices/x").is_ok(), "/devices is not /dev");
        assert_eq!(parse("rootfs", "/dev/vda").unwrap_err().field, "rootfs");
    }
}
