use std::collections::HashMap;

use super::*;

fn top(argv: &[&str]) -> ArgMatches {
    Command::new("top")
        .no_binary_name(true)
        .arg(clap::Arg::new("tls_dir").long("tls-dir").value_parser(clap::value_parser!(PathBuf)))
        .get_matches_from(argv)
}

fn run(file: Option<&str>, env: &[(&str, &str)], flags: &[&str]) -> Result<Resolved, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let mut argv: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
    if let Some(text) = file {
        let p = dir.path().join("node.toml");
        std::fs::write(&p, text).unwrap();
        argv.extend(["--config".into(), p.to_string_lossy().into_owned()]);
    }
    let m = node_command().try_get_matches_from(&argv).unwrap();
    let env: HashMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    resolve(&m, &top(&[]), &|k| env.get(k).cloned())
}

fn err(file: &str) -> String {
    match run(Some(file), &[], &[]) {
        Err(e) => e.0,
        Ok(_) => panic!("{file:?} was accepted"),
    }
}

#[test]
fn flag_beats_env_beats_file_beats_default() {
    let file = "[raft]\ntick_ms = 30\n";
    let r = run(None, &[], &[]).unwrap();
    assert_eq!(r.args.tick_ms, 20);
    assert_eq!(r.get("raft.tick_ms").unwrap().source, Source::Default);
    let r = run(Some(file), &[], &[]).unwrap();
    assert_eq!(r.args.tick_ms, 30);
    assert!(matches!(&r.get("raft.tick_ms").unwrap().source, Source::File(at) if at.ends_with("node.toml:2")));
    let r = run(Some(file), &[("BLIXARD_RAFT_TICK_MS", "40")], &[]).unwrap();
    assert_eq!(r.args.tick_ms, 40);
    assert_eq!(r.get("raft.tick_ms").unwrap().source, Source::Env("BLIXARD_RAFT_TICK_MS".into()));
    let r = run(Some(file), &[("BLIXARD_RAFT_TICK_MS", "40")], &["--tick-ms", "50"]).unwrap();
    assert_eq!(r.args.tick_ms, 50);
    assert_eq!(r.get("raft.tick_ms").unwrap().source, Source::Flag);
    // Unset keys stay unset; required ones are refused by `require`.
    let r = run(None, &[], &[]).unwrap();
    assert_eq!(r.get("node.id").unwrap().source, Source::Unset);
    let e = r.require().unwrap_err().0;
    assert!(e.contains("node.id") && e.contains("--id") && e.contains("BLIXARD_NODE_ID"), "{e}");
}

#[test]
fn every_kind_of_value_reaches_the_flags() {
    let file = "[node]\nid = 3\ndata_dir = \"d\"\nlabels = { zone = \"a\", rack = \"r1\" }\n\
                [vm]\nbackend = \"microvm-nix\"\nallow_image_dirs = [\"/srv/img\"]\n[tls]\ninsecure = true\n\
                [log]\nformat = \"json\"\n[http]\nbind = \"127.0.0.1:7101\"\n";
    let r = run(Some(file), &[], &[]).unwrap();
    r.require().unwrap();
    assert_eq!(r.args.id, Some(3));
    assert!(r.args.data_dir.as_ref().unwrap().ends_with("d") && r.args.data_dir.as_ref().unwrap().is_absolute());
    assert_eq!(r.args.labels, vec![("rack".into(), "r1".into()), ("zone".into(), "a".into())]);
    assert!(matches!(r.args.vm_backend, crate::cmd::node::VmBackend::MicrovmNix));
    assert_eq!(r.args.allow_image_dirs, vec![PathBuf::from("/srv/img")]);
    assert!(r.args.insecure);
    assert_eq!(r.args.log_format, crate::cmd::node_ops::LogFormat::Json);
    assert_eq!(r.args.http_bind.as_deref(), Some("127.0.0.1:7101"));
    // The environment: lists comma-separated, switches true/false, the old image cache name.
    let env = [("BLIXARD_NODE_LABELS", "zone=b"), ("BLIXARD_TLS_INSECURE", "false"), ("BLIXARD_IMAGE_CACHE", "/c")];
    let r = run(Some(file), &env, &[]).unwrap();
    assert_eq!(r.args.labels, vec![("zone".into(), "b".into())]);
    assert!(!r.args.insecure);
    assert_eq!(r.args.image_cache, Some(PathBuf::from("/c")));
    assert_eq!(r.get("vm.image_cache").unwrap().source, Source::Env("BLIXARD_IMAGE_CACHE".into()));
    // A flag's labels replace the file's.
    let r = run(Some(file), &[], &["--label", "x=y", "--insecure"]).unwrap();
    assert_eq!(r.args.labels, vec![("x".into(), "y".into())]);
    assert!(r.args.insecure);
}

#[test]
fn unknown_keys_and_sections_are_refused_with_line_and_key() {
    let e = err("[raft]\ntick_ms = 20\ntickms = 20\n");
    assert!(e.contains("node.toml:3:") && e.contains("tickms") && e.contains("unknown field"), "{e}");
    let e = err("\n[rafts]\ntick_ms = 20\n");
    assert!(e.contains("node.toml:2:") && e.contains("rafts"), "{e}");
    let e = err("id = 1\n");
    assert!(e.contains("node.toml:1:") && e.contains("`id`"), "{e}");
    let e = err("[raft\n");
    assert!(e.contains("node.toml:1:"), "{e}");
}

#[test]
fn bad_values_are_refused_with_line_key_and_rule() {
    let cases = [
        ("[raft]\n\ntick_ms = 0\n", 3, "raft.tick_ms", "not in 1..=10000"),
        ("[raft]\ntick_ms = \"20\"\n", 2, "raft.tick_ms", "expected an integer"),
        ("[raft]\nelection_ticks = -4\n", 2, "raft.election_ticks", "-4"),
        ("[vm]\nbackend = \"kvm\"\n", 2, "vm.backend", "qemu"),
        ("[tls]\ninsecure = \"yes\"\n", 2, "tls.insecure", "expected true or false"),
        ("[node]\nlabels = [\"a=b\"]\n", 2, "node.labels", "expected a table"),
        ("[node]\nlabels = { \"bad key\" = \"x\" }\n", 2, "node.labels", "bad key"),
        ("[node]\njoin = \"nohost\"\n", 2, "node.join", "HOST:PORT"),
        ("[vm]\nallow_image_dirs = [1]\n", 2, "vm.allow_image_dirs", "array of strings"),
        ("[liveness]\nfence_after_ms = 5\n", 2, "liveness.fence_after_ms", "not in 20..=600000"),
        ("[log]\nformat = \"xml\"\n", 2, "log.format", "text"),
    ];
    for (file, line, key, rule) in cases {
        let e = err(file);
        assert!(e.contains(&format!("node.toml:{line}: {key}:")) && e.contains(rule), "{file:?}: {e}");
    }
    let e = run(None, &[("BLIXARD_RAFT_TICK_MS", "0")], &[]).err().unwrap().0;
    assert!(e.contains("BLIXARD_RAFT_TICK_MS") && e.contains("not in 1..=10000"), "{e}");
    let e = run(None, &[("BLIXARD_TLS_INSECURE", "maybe")], &[]).err().unwrap().0;
    assert!(e.contains("BLIXARD_TLS_INSECURE"), "{e}");
}

#[test]
fn the_example_file_has_every_key_and_its_defaults_are_the_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/node.example.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let m = node_command().try_get_matches_from(["--config", path.to_str().unwrap()]).unwrap();
    let r = resolve(&m, &top(&[]), &|_| None).unwrap();
    r.require().unwrap();
    let defaults = run(None, &[], &[]).unwrap();
    let mut section = "";
    let mut seen = Vec::new();
    for line in text.lines() {
        let l = line.trim_start_matches('#').trim();
        if let Some(s) = l.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            section = s;
            continue;
        }
        let Some((k, _)) = l.split_once(" = ") else { continue };
        let name = format!("{section}.{}", k.trim());
        assert!(KEYS.iter().any(|k| k.name() == name), "the example names an unknown key {name}");
        seen.push(name.clone());
        if !line.starts_with('#') && line.contains("# default") {
            let (got, want) = (r.get(&name).unwrap(), defaults.get(&name).unwrap());
            assert!(matches!(got.source, Source::File(_)), "{name}");
            assert_eq!(got.values, want.values, "{name} is marked default");
        }
    }
    for k in KEYS {
        assert!(seen.contains(&k.name()), "the example lacks {}", k.name());
    }
}

#[test]
fn the_tls_dir_comes_from_the_global_flag_or_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("node.toml");
    std::fs::write(&p, "[tls]\ndir = \"tls\"\n").unwrap();
    let m = node_command().try_get_matches_from(["--config", p.to_str().unwrap()]).unwrap();
    let r = resolve(&m, &top(&[]), &|_| None).unwrap();
    assert_eq!(r.tls_dir(), Some(dir.path().join("tls")));
    assert!(matches!(r.get("tls.dir").unwrap().source, Source::File(_)));
    let r = resolve(&m, &top(&["--tls-dir", "/etc/x"]), &|_| None).unwrap();
    assert_eq!(r.tls_dir(), Some(PathBuf::from("/etc/x")));
    assert_eq!(r.get("tls.dir").unwrap().source, Source::Flag);
    let r = resolve(&m, &top(&[]), &|k| (k == "BLIXARD_TLS_DIR").then(|| "/e".to_string())).unwrap();
    assert_eq!(r.tls_dir(), Some(PathBuf::from("/e")));
}

#[test]
fn every_daemon_flag_has_a_key() {
    // A flag without a key would be dropped when the arguments are rebuilt from the sources.
    for a in node_command().get_arguments() {
        let id = a.get_id().as_str();
        if ["config", "help"].contains(&id) || a.get_long().is_none() {
            continue;
        }
        assert!(KEYS.iter().any(|k| k.arg == id), "`blixard node --{}` has no config key", a.get_long().unwrap());
    }
}
