//! The KVM probe boots the real guest under KVM and falls back to TCG when it does not boot; the
//! verdict is cached per host boot.
#![cfg(not(madsim))]

mod common;

use std::time::Instant;

use blixard_vmm::accel::{select, verdict_path, Source};
use blixard_vmm::Accel;

#[tokio::test]
async fn the_probe_reports_a_verdict_and_caches_it() {
    if std::env::var_os(blixard_vmm::accel::ENV_OVERRIDE).is_some() {
        eprintln!("skipped: {} is set, so the probe would not run", blixard_vmm::accel::ENV_OVERRIDE);
        return;
    }
    let image = common::image();
    let dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let v = select(&image, dir.path()).await.unwrap();
    eprintln!("verdict: {} ({:?}: {}) in {} ms", v.accel, v.source, v.detail, t0.elapsed().as_millis());
    assert!(matches!(v.source, Source::Probed | Source::NoKvmDevice), "{v:?}");
    if v.source == Source::Probed && v.accel == Accel::Tcg {
        assert!(v.detail.contains("KVM"), "{}", v.detail);
    }
    assert!(verdict_path(dir.path()).exists());
    assert!(std::fs::read_dir(dir.path()).unwrap().count() == 1, "the probe VM's directory is removed");

    let t1 = Instant::now();
    let again = select(&image, dir.path()).await.unwrap();
    assert_eq!((again.accel, again.source), (v.accel, Source::Cached));
    assert!(t1.elapsed().as_millis() < 1000, "a cached verdict needs no probe");
}
