//! Where a VM instance's files live, and the checks that keep them inside the base directory.
//!
//! Layout: `<base>/vms/<name>.<incarnation>` per [`Instance`]. A VM name is a DNS label
//! (`[a-z0-9-]`), so it never contains the `.`, and the incarnation is written in canonical
//! decimal: a directory name maps back to exactly one instance, which is how a restarted daemon
//! finds its instances (and their processes: a QEMU's command line names its directory).
//! Directories named by the bare VM name are *legacy*, left by drivers from before incarnations;
//! they are never created any more. Anything else in `<base>/vms` is ignored.

use std::path::{Component, Path, PathBuf};

use crate::{Instance, Result, VmmError};

/// A directory found in `<base>/vms`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[cfg_attr(madsim, allow(dead_code))]
pub(crate) enum Entry {
    /// Named by the bare VM name: from a driver before incarnations.
    Legacy(String),
    Instance(Instance),
}

fn checked_name(name: &str) -> Result<&str> {
    blixard_core::spec::validate_name(name).map_err(|_| VmmError::InvalidName(name.to_string()))?;
    let mut comps = Path::new(name).components();
    match (comps.next(), comps.next()) {
        (Some(Component::Normal(c)), None) if c == name => Ok(name),
        _ => Err(VmmError::InvalidName(name.to_string())),
    }
}

/// `<base>/vms/<name>.<incarnation>`, after checking the name is a valid VM name (a DNS label) and
/// that the result cannot escape `<base>/vms` (defence in depth: the name rule alone already
/// guarantees it).
pub fn instance_dir(base: &Path, vm: &Instance) -> Result<PathBuf> {
    checked_name(&vm.name)?;
    Ok(base.join("vms").join(vm.to_string()))
}

/// `<base>/vms/<name>`: a legacy directory (see the module docs).
pub fn legacy_dir(base: &Path, name: &str) -> Result<PathBuf> {
    Ok(base.join("vms").join(checked_name(name)?))
}

/// What a directory name in `<base>/vms` stands for, if anything.
#[cfg_attr(madsim, allow(dead_code))]
pub(crate) fn parse_entry(file_name: &str) -> Option<Entry> {
    match file_name.split_once('.') {
        None => checked_name(file_name).ok().map(|n| Entry::Legacy(n.to_string())),
        Some((name, digits)) => {
            let incarnation: u64 = digits.parse().ok()?;
            // Canonical only ("7", not "07" or "+7"): one directory per instance.
            (incarnation.to_string() == digits && checked_name(name).is_ok())
                .then(|| Entry::Instance(Instance::new(name, incarnation)))
        }
    }
}

/// Every instance and legacy directory under `<base>/vms`, sorted (by name; for one name the
/// legacy directory first, then incarnations in order). A missing `vms` directory is empty.
#[cfg_attr(madsim, allow(dead_code))]
pub(crate) fn entries(base: &Path) -> Result<Vec<Entry>> {
    let dir = base.join("vms");
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(VmmError::io("list", &dir)(e)),
    };
    let mut out: Vec<Entry> = rd
        .filter_map(|e| {
            let e = e.ok()?;
            e.file_type().ok()?.is_dir().then_some(())?;
            parse_entry(e.file_name().to_str()?)
        })
        .collect();
    out.sort_by(|a, b| sort_key(a).cmp(&sort_key(b)));
    Ok(out)
}

fn sort_key(e: &Entry) -> (&str, Option<u64>) {
    match e {
        Entry::Legacy(n) => (n, None),
        Entry::Instance(i) => (&i.name, Some(i.incarnation)),
    }
}

/// The directory of the newest incarnation of `name` here, else its legacy directory; `None`
/// if there is neither.
#[cfg_attr(madsim, allow(dead_code))]
pub(crate) fn current(base: &Path, name: &str) -> Result<Option<(PathBuf, Entry)>> {
    checked_name(name)?;
    let newest = entries(base)?.into_iter().rev().find(|e| sort_key(e).0 == name);
    Ok(newest.map(|e| {
        let dir = match &e {
            Entry::Legacy(n) => base.join("vms").join(n),
            Entry::Instance(i) => base.join("vms").join(i.to_string()),
        };
        (dir, e)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_stay_inside_the_base_dir() {
        let base = Path::new("/data");
        assert_eq!(instance_dir(base, &Instance::new("web-1", 42)).unwrap(), Path::new("/data/vms/web-1.42"));
        assert_eq!(legacy_dir(base, "web-1").unwrap(), Path::new("/data/vms/web-1"));
        for bad in ["", "..", ".", "a/b", "../etc", "/abs", "Web", "a\0b", "a.1"] {
            assert!(matches!(instance_dir(base, &Instance::new(bad, 1)), Err(VmmError::InvalidName(_))), "{bad:?}");
            assert!(matches!(legacy_dir(base, bad), Err(VmmError::InvalidName(_))), "{bad:?}");
        }
    }

    #[test]
    fn a_directory_name_maps_back_to_one_instance() {
        assert_eq!(parse_entry("web-1.42"), Some(Entry::Instance(Instance::new("web-1", 42))));
        assert_eq!(parse_entry("web-1"), Some(Entry::Legacy("web-1".into())));
        for other in ["web.07", "web.+7", "web.", "web.1.2", "web.x", ".7", "Web.1", "web.1.tmp", "spec.json", "-a"] {
            assert_eq!(parse_entry(other), None, "{other:?}");
        }
        for i in [Instance::new("a", 0), Instance::new("a-b-c", u64::MAX)] {
            assert_eq!(parse_entry(&i.to_string()), Some(Entry::Instance(i)));
        }
    }

    #[test]
    fn entries_are_sorted_and_the_newest_incarnation_is_current() {
        let base = tempfile::tempdir().unwrap();
        for d in ["web.10", "web.9", "web", "db.3", "junk.07", "web-2.1"] {
            std::fs::create_dir_all(base.path().join("vms").join(d)).unwrap();
        }
        std::fs::write(base.path().join("vms/file.5"), "").unwrap();
        let want = vec![
            Entry::Instance(Instance::new("db", 3)),
            Entry::Legacy("web".into()),
            Entry::Instance(Instance::new("web", 9)),
            Entry::Instance(Instance::new("web", 10)),
            Entry::Instance(Instance::new("web-2", 1)),
        ];
        assert_eq!(entries(base.path()).unwrap(), want);
        let (dir, e) = current(base.path(), "web").unwrap().unwrap();
        assert_eq!((dir, e), (base.path().join("vms/web.10"), Entry::Instance(Instance::new("web", 10))));
        std::fs::create_dir_all(base.path().join("vms/old")).unwrap();
        assert_eq!(current(base.path(), "old").unwrap().unwrap().1, Entry::Legacy("old".into()));
        assert!(current(base.path(), "none").unwrap().is_none());
        assert!(entries(&base.path().join("missing")).unwrap().is_empty());
    }
}
