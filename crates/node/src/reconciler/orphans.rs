//! Which VM directories on this host the reconciler may remove, decided in two steps.
//!
//! An instance (name + create index) the driver has is an orphan when no record assigned here
//! names it: its VM was deleted, recreated (a new incarnation of the name), or moved to another
//! node. Removing a VM destroys its disk, so a stale view must never decide it: a node restarting
//! from an old checkpoint, or one that was cut off, may simply not have applied the record yet.
//! So [`suspects`] is computed from the local (possibly stale) state, and only if there are any
//! does the reconciler make a linearizable read (ReadIndex), read the assignments again, and
//! remove what [`confirm`] still finds unassigned.
//!
//! **Upgrade rule for legacy directories** (named by the bare VM name, from drivers before
//! incarnations, so of unknown incarnation): each is a suspect; after the linearizable read, if a
//! record of that name is assigned here and its instance has no directory yet, the legacy
//! directory is adopted as that record's current incarnation (its disk, and its QEMU if one runs,
//! are kept: that is what the old driver would have used for this record). This happens once: it
//! is renamed to the instance's directory. Otherwise (no record of that name here, or the
//! instance already has files of its own) it is removed.

use std::collections::BTreeSet;

use blixard_vmm::{Instance, LegacyFate};

/// Something on this host that the (possibly stale) local state does not account for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Suspect {
    Instance(Instance),
    Legacy(String),
}

/// What to do once a linearizable read has confirmed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cleanup {
    Delete(Instance),
    Legacy(String, LegacyFate),
}

/// The instances the driver has that `assigned` (the instances of the records assigned here)
/// does not contain, and every legacy directory.
pub fn suspects(assigned: &BTreeSet<Instance>, found: &[Instance], legacy: &[String]) -> Vec<Suspect> {
    let strays = found.iter().filter(|i| !assigned.contains(i)).cloned().map(Suspect::Instance);
    strays.chain(legacy.iter().cloned().map(Suspect::Legacy)).collect()
}

/// Decides each suspect against `assigned` as read after a linearizable read: an instance still
/// unassigned is deleted, one assigned after all is left alone; legacy directories follow the
/// upgrade rule of the module docs (`found`: the instances the driver has).
pub fn confirm(assigned: &BTreeSet<Instance>, found: &[Instance], suspects: Vec<Suspect>) -> Vec<Cleanup> {
    suspects
        .into_iter()
        .filter_map(|s| match s {
            Suspect::Instance(i) => (!assigned.contains(&i)).then_some(Cleanup::Delete(i)),
            Suspect::Legacy(name) => {
                let fate = match assigned.iter().find(|i| i.name == name) {
                    Some(i) if !found.contains(i) => LegacyFate::Adopt(i.incarnation),
                    _ => LegacyFate::Remove,
                };
                Some(Cleanup::Legacy(name, fate))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(xs: &[(&str, u64)]) -> BTreeSet<Instance> {
        xs.iter().map(|(n, i)| Instance::new(*n, *i)).collect()
    }

    #[test]
    fn only_unassigned_instances_and_legacy_dirs_are_suspects() {
        let found = [Instance::new("web", 5), Instance::new("web", 9), Instance::new("db", 3)];
        let s = suspects(&set(&[("web", 9), ("db", 3)]), &found, &["old".into()]);
        assert_eq!(s, [Suspect::Instance(Instance::new("web", 5)), Suspect::Legacy("old".into())]);
        assert!(suspects(&set(&[("web", 5)]), &found[..1], &[]).is_empty());
    }

    #[test]
    fn a_record_seen_only_after_the_linearizable_read_saves_its_vm() {
        // Restarted from an old checkpoint: the local state did not assign web.5 here yet.
        let found = [Instance::new("web", 5)];
        let s = suspects(&set(&[]), &found, &[]);
        assert_eq!(confirm(&set(&[("web", 5)]), &found, s.clone()), []);
        // Still unassigned after the read (deleted, or recreated as web.9): removed.
        assert_eq!(confirm(&set(&[]), &found, s.clone()), [Cleanup::Delete(Instance::new("web", 5))]);
        assert_eq!(confirm(&set(&[("web", 9)]), &found, s), [Cleanup::Delete(Instance::new("web", 5))]);
    }

    #[test]
    fn a_legacy_dir_is_adopted_by_the_record_of_its_name_or_removed() {
        let legacy = || vec![Suspect::Legacy("web".into())];
        let adopt = |i| [Cleanup::Legacy("web".into(), LegacyFate::Adopt(i))];
        let remove = [Cleanup::Legacy("web".into(), LegacyFate::Remove)];
        assert_eq!(confirm(&set(&[("web", 7)]), &[], legacy()), adopt(7));
        assert_eq!(confirm(&set(&[("db", 7)]), &[], legacy()), remove);
        // The record's instance already has files of its own: the legacy dir is older.
        assert_eq!(confirm(&set(&[("web", 7)]), &[Instance::new("web", 7)], legacy()), remove);
    }
}
