//! Where a VM's files live, and the check that keeps them inside the base directory.

use std::path::{Component, Path, PathBuf};

use crate::{Result, VmmError};

/// `<base>/vms/<name>`, after checking `name` is a valid VM name (a DNS label) and that the result
/// cannot escape `<base>/vms` (defence in depth: the name rule alone already guarantees it).
pub fn vm_dir(base: &Path, name: &str) -> Result<PathBuf> {
    blixard_core::spec::validate_name(name).map_err(|_| VmmError::InvalidName(name.to_string()))?;
    let mut comps = Path::new(name).components();
    match (comps.next(), comps.next()) {
        (Some(Component::Normal(c)), None) if c == name => Ok(base.join("vms").join(name)),
        _ => Err(VmmError::InvalidName(name.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_stay_inside_the_base_dir() {
        let base = Path::new("/data");
        assert_eq!(vm_dir(base, "web-1").unwrap(), Path::new("/data/vms/web-1"));
        for bad in ["", "..", ".", "a/b", "../etc", "/abs", "Web", "a\0b"] {
            assert!(matches!(vm_dir(base, bad), Err(VmmError::InvalidName(_))), "{bad:?}");
        }
    }
}
