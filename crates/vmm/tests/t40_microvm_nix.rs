//! The microvm.nix flake: a golden file for a fixed spec, and a parse check with `nix-instantiate`.
//! Regenerate the golden file with `BLIXARD_BLESS=1 cargo test -p blixard-vmm --test t40_microvm_nix`.

use std::collections::BTreeMap;
use std::path::Path;

use blixard_core::{PortForward, VmSpec};
use blixard_vmm::microvm_nix::render_flake;

fn fixed_spec() -> VmSpec {
    VmSpec {
        name: "web-1".into(),
        vcpus: 2,
        memory_mib: 256,
        disk_gib: Some(4),
        cmdline: Some("quiet blixard.http=80".into()),
        ports: vec![PortForward { host: 8080, guest: 80 }, PortForward { host: 2222, guest: 22 }],
        labels: BTreeMap::from([("tier".to_string(), "web".to_string())]),
        ..Default::default()
    }
}

#[test]
fn flake_matches_the_golden_file() {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/web-1.flake.nix");
    let out = render_flake(&fixed_spec());
    if std::env::var_os("BLIXARD_BLESS").is_some() {
        std::fs::write(&golden, &out).unwrap();
    }
    let want = std::fs::read_to_string(&golden).expect("golden file (BLIXARD_BLESS=1 writes it)");
    assert_eq!(out, want, "render_flake changed; rerun with BLIXARD_BLESS=1 if intended");
}

#[test]
fn flakes_parse_with_nix_instantiate() {
    let Some(nix) = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("nix-instantiate"))
        .find(|p| p.is_file())
    else {
        panic!("nix-instantiate not found on PATH: install Debian's nix-bin (scripts/setup.sh does)");
    };
    let tmp = tempfile::tempdir().unwrap();
    let minimal = VmSpec { name: "a".into(), vcpus: 1, memory_mib: 64, ..Default::default() };
    let tricky = VmSpec { cmdline: Some(r#"x="${y}" a\b"#.into()), ..minimal.clone() };
    for (i, spec) in [fixed_spec(), minimal, tricky].iter().enumerate() {
        let file = tmp.path().join(format!("flake{i}.nix"));
        std::fs::write(&file, render_flake(spec)).unwrap();
        // Even --parse creates /nix/var unless every Nix directory points elsewhere.
        let out = std::process::Command::new(&nix)
            .arg("--parse")
            .arg(&file)
            .env("NIX_STORE_DIR", tmp.path().join("store"))
            .env("NIX_STATE_DIR", tmp.path().join("state"))
            .env("NIX_LOG_DIR", tmp.path().join("log"))
            .env("NIX_CONF_DIR", tmp.path().join("conf"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}: {}", file.display(), String::from_utf8_lossy(&out.stderr));
    }
}
