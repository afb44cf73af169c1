//! The pure parts of the VM executor. The guest's decoder is the real one: the
//! `blixard-task-exec` script embedded in the image recipe, run here by the host's busybox
//! (the very binary the image is built with) on an archive unpacked by `cpio`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use blixard_core::TaskSpec;
use blixard_vmm::Accel;

use super::guest::*;

/// Arguments no shell may touch: separators, substitutions, quotes, globs, options, blanks and
/// newlines at either end, bytes busybox ash uses internally (0x81..0x88 inside UTF-8), ...
fn hostile() -> Vec<String> {
    let mut v: Vec<String> = [
        ";",
        "$(id)",
        "`id`",
        "a b",
        "  lead",
        "trail  ",
        "trail\n\n",
        "\n",
        "",
        "'",
        "\"",
        "\\",
        "\\n",
        "*",
        "?",
        "[a]",
        "~",
        "-n",
        "--",
        "-",
        "$HOME",
        "${x:-y}",
        "a\tb",
        "x=y",
        "\r",
        "%s",
        "\u{1}\u{7f}",
        "&&",
        "|",
        ">f",
        "<f",
        "#c",
        "!",
        "āĂăĄąĆćĈ",
        "日本語",
        "\u{1F600}",
        "é\u{301}",
        "BLIXARD-TASK-EXIT n 0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.push("x".repeat(blixard_core::task::MAX_ARG_LEN));
    v
}

fn spec(command: &str, args: Vec<String>, env: &[(&str, &str)]) -> TaskSpec {
    let env: BTreeMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    TaskSpec { command: command.into(), args, env, ..Default::default() }
}

/// The guest's `blixard-task-exec`, cut out of the image recipe.
fn exec_script() -> String {
    let s = blixard_vmm::image::BUILD_SCRIPT;
    let start = "cat >\"$root/bin/blixard-task-exec\" <<'EOF'\n";
    let from = s.find(start).expect("the recipe writes blixard-task-exec") + start.len();
    let len = s[from..].find("\nEOF\n").expect("its heredoc ends");
    s[from..from + len + 1].to_string()
}

/// Unpacks `archive` with cpio into `dir` and runs the guest's decoder on it; returns its
/// exit status, stdout, and whether it said "not found".
fn decode_and_run(archive: &[u8], dir: &Path) -> (i32, Vec<u8>, bool) {
    use std::io::Write;
    let mut cpio = Command::new("cpio")
        .args(["-i", "-d", "--quiet"])
        .current_dir(dir)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("cpio (scripts/guest/DEPS)");
    cpio.stdin.take().unwrap().write_all(archive).unwrap();
    assert!(cpio.wait().unwrap().success());
    let script = dir.join("blixard-task-exec");
    std::fs::write(&script, exec_script()).unwrap();
    let notfound = dir.join("notfound");
    let o = Command::new("busybox")
        .arg("sh")
        .arg(&script)
        .arg(dir.join(TASK_DIR))
        .arg(&notfound)
        .env_clear()
        .env("PATH", "/bin")
        .current_dir(dir)
        .output()
        .expect("busybox (scripts/guest/DEPS)");
    (o.status.code().unwrap_or(-1), o.stdout, notfound.exists())
}

fn nul_split(b: &[u8]) -> Vec<String> {
    let mut parts: Vec<String> = b.split(|c| *c == 0).map(|p| String::from_utf8(p.to_vec()).unwrap()).collect();
    assert_eq!(parts.pop().as_deref(), Some(""), "NUL-terminated");
    parts
}

#[test]
fn hostile_arguments_reach_the_program_literally() {
    let d = tempfile::tempdir().unwrap();
    let mut args = vec!["%s\\0".to_string()];
    args.extend(hostile());
    let a = archive(&spec("printf", args, &[]), "n0nce").unwrap();
    let (code, out, notfound) = decode_and_run(&a, d.path());
    assert_eq!((code, notfound), (0, false));
    assert_eq!(nul_split(&out), hostile());
    // The nonce is a file of its own: the guest reads and deletes it before the task runs.
    assert_eq!(std::fs::read(d.path().join(TASK_DIR).join("nonce")).unwrap(), b"n0nce");
}

#[test]
fn the_environment_is_path_and_the_tasks_own_exactly() {
    let d = tempfile::tempdir().unwrap();
    let values = hostile();
    let env: Vec<(String, String)> = values.iter().enumerate().map(|(i, v)| (format!("V_{i}"), v.clone())).collect();
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let a = archive(&spec("env", vec!["-0".into()], &env_refs), "n").unwrap();
    let (code, out, _) = decode_and_run(&a, d.path());
    assert_eq!(code, 0);
    let mut got = nul_split(&out);
    got.sort();
    let mut want: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    want.push("PATH=/bin".into());
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn no_arguments_and_an_exit_status_pass_through() {
    let d = tempfile::tempdir().unwrap();
    let a = archive(&spec("true", vec![], &[]), "n").unwrap();
    assert_eq!(decode_and_run(&a, d.path()), (0, Vec::new(), false));
    let d = tempfile::tempdir().unwrap();
    let a = archive(&spec("sh", vec!["-c".into(), "exit 3".into()], &[]), "n").unwrap();
    assert_eq!(decode_and_run(&a, d.path()), (3, Vec::new(), false));
}

#[test]
fn a_program_that_cannot_exist_is_reported_not_found() {
    for cmd in ["no-such-program-here", "a=b", "-x", "/nonexistent/x"] {
        let d = tempfile::tempdir().unwrap();
        let a = archive(&spec(cmd, vec![], &[]), "n").unwrap();
        let (code, _, notfound) = decode_and_run(&a, d.path());
        assert_eq!((code, notfound), (127, true), "{cmd}");
    }
}

#[test]
fn the_archive_is_bounded_with_a_clear_error() {
    // Beyond what validation lets through: the bound holds on its own.
    let big = spec("echo", vec!["x".repeat(4096); 300], &[]);
    let e = archive(&big, "n").unwrap_err();
    assert!(e.contains("bytes") && e.contains(&MAX_ARCHIVE.to_string()), "{e}");
    // The largest valid spec fits.
    let mut s = spec("echo", vec!["x".repeat(250); 256], &[]);
    s.env = (0..blixard_core::task::MAX_ENV).map(|i| (format!("K{i}"), "v".repeat(4096))).collect();
    s.validate().unwrap();
    assert!(archive(&s, &new_nonce()).unwrap().len() < MAX_ARCHIVE);
    let bad = spec("echo", vec![], &[("../x", "v")]);
    assert!(archive(&bad, "n").is_err());
}

#[test]
fn the_archive_is_appended_at_a_four_byte_boundary() {
    assert_eq!([0, 1, 2, 3, 4, 2_621_952].map(appended_at), [0, 3, 2, 1, 0, 0]);
    let a = archive(&spec("x", vec!["abc".into()], &[]), "n").unwrap();
    assert_eq!(a.len() % 4, 0);
    assert!(a.starts_with(b"070701"));
}

#[test]
fn nonces_are_fresh_and_long() {
    let (a, b) = (new_nonce(), new_nonce());
    assert_ne!(a, b);
    assert_eq!(a.len(), 32);
    assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
}

#[test]
fn only_exact_reports_with_the_nonce_count() {
    let n = "0123456789abcdef0123456789abcdef";
    let p = |l: &str| parse_report(l.as_bytes(), n);
    assert_eq!(p(&format!("BLIXARD-TASK-START {n}")), Some(Report::Start));
    assert_eq!(p(&format!("BLIXARD-TASK-EXIT {n} 0")), Some(Report::Exit(0)));
    assert_eq!(p(&format!("BLIXARD-TASK-EXIT {n} 255\r")), Some(Report::Exit(255)));
    assert_eq!(p(&format!("BLIXARD-TASK-ERROR {n} notfound")), Some(Report::Error("notfound".into())));
    for forged in [
        "BLIXARD-TASK-EXIT 0123456789abcdef0123456789abcdee 0".to_string(), // another nonce
        "BLIXARD-TASK-EXIT  0".into(),
        format!("BLIXARD-TASK-EXIT {n}"),
        format!("BLIXARD-TASK-EXIT {n} 256"),
        format!("BLIXARD-TASK-EXIT {n} -1"),
        format!("BLIXARD-TASK-EXIT {n} +1"),
        format!("BLIXARD-TASK-EXIT {n} 0001"),
        format!("BLIXARD-TASK-EXIT {n} 0 "),
        format!("BLIXARD-TASK-EXIT {n} 0 extra"),
        format!(" BLIXARD-TASK-EXIT {n} 0"),
        format!("x BLIXARD-TASK-EXIT {n} 0"),
        format!("BLIXARD-TASK-EXIT\t{n} 0"),
        format!("BLIXARD-TASK-START {n} 0"),
        format!("BLIXARD-TASK-ERROR {n} Not-Found"),
        format!("BLIXARD-TASK-ERROR {n}"),
        format!("BLIXARD-TASK-EOF {n}"),
        format!("blixard-task-exit {n} 0"),
        format!("BLIXARD-TASK-EXIT {n}0 0"),
    ] {
        assert_eq!(p(&forged), None, "{forged:?}");
    }
    assert_eq!(parse_report(format!("BLIXARD-TASK-EXIT {n} 0").as_bytes(), ""), None);
    assert_eq!(parse_report(b"BLIXARD-TASK-EXIT \xff 0", n), None);
}

#[test]
fn console_lines_longer_than_a_report_are_ignored() {
    let n = "abc";
    let mut lines = Lines::default();
    let mut seen = Vec::new();
    let long = format!("{}BLIXARD-TASK-EXIT {n} 1", "x".repeat(MAX_REPORT_LINE * 2));
    let input = format!("boot\r\nBLIXARD-TASK-ST{long}\nBLIXARD-TASK-EXIT {n} 7\r\npartial BLIXARD");
    // Fed a byte at a time, as a socket may deliver it.
    for b in input.as_bytes() {
        lines.feed(std::slice::from_ref(b), |l| seen.extend(parse_report(l, n)));
    }
    assert_eq!(seen, vec![Report::Exit(7)]);
}

#[test]
fn a_stream_ends_at_its_trailer_whatever_the_chunks() {
    let t = trailer("n0nce");
    let body = b"out\nBLIXARD-TASK-EOF other\n\nBLIXARD-TASK-EOF n0nc\nno newline at the end".to_vec();
    let mut stream = body.clone();
    stream.extend_from_slice(&t);
    stream.extend_from_slice(b"after the trailer");
    for cut in 0..=stream.len() {
        for cut2 in cut..=stream.len().min(cut + 3) {
            let mut e = EndOfStream::new(t.clone());
            let mut got = Vec::new();
            let mut ended = false;
            for chunk in [&stream[..cut], &stream[cut..cut2], &stream[cut2..]] {
                let (b, end) = e.feed(chunk);
                got.extend(b);
                ended = end;
            }
            assert!(ended && e.ended(), "cut at {cut}/{cut2}");
            got.extend(e.finish());
            assert_eq!(got, body, "cut at {cut}/{cut2}");
        }
    }
}

#[test]
fn a_stream_closed_without_its_trailer_keeps_every_byte() {
    let t = trailer("n");
    let mut e = EndOfStream::new(t.clone());
    let data = &t[..t.len() - 1];
    let (mut got, ended) = e.feed(data);
    assert!(!ended);
    got.extend(e.finish());
    assert_eq!(got, data);
    assert!(!e.ended());
}

#[test]
fn the_vm_has_the_tasks_resources_and_no_network_or_disk() {
    let s = TaskSpec { vcpus: 2, memory_mib: 192, ..spec("true", vec![], &[]) };
    let f = VmFiles::in_dir(Path::new("/d/tasks/t5-7"), PathBuf::from("/i/vmlinux"));
    let a = qemu_args(&s, &f, Accel::Tcg, Some(2_000_000), "t5-7").join(" ");
    for want in [
        "-M microvm -accel tcg -cpu qemu64,+arat -m 192M -smp 2",
        "-no-reboot",
        "-kernel /i/vmlinux -initrd /d/tasks/t5-7/initrd.img",
        "-append console=ttyS0 tsc_early_khz=2000000 tsc=reliable quiet blixard.task=1 blixard.name=t5-7",
        "-chardev socket,id=con,path=/d/tasks/t5-7/console.sock -serial chardev:con",
        "-chardev socket,id=out,path=/d/tasks/t5-7/stdout.sock -device virtserialport,chardev=out,name=blixard.stdout",
        "-chardev socket,id=err,path=/d/tasks/t5-7/stderr.sock -device virtserialport,chardev=err,name=blixard.stderr",
    ] {
        assert!(a.contains(want), "{want} not in {a}");
    }
    for never in ["-netdev", "-drive", "-qmp", "server=on"] {
        assert!(!a.contains(never), "{never} in {a}");
    }
    let f = VmFiles::in_dir(Path::new("/d,x"), PathBuf::from("/k"));
    assert!(qemu_args(&s, &f, Accel::Kvm, None, "t").join(" ").contains("path=/d,,x/stdout.sock"));
}

#[tokio::test]
async fn a_socket_stream_reads_to_its_trailer_while_the_writer_stays_open() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut w, r) = tokio::io::duplex(64);
    let t = trailer("n");
    let mut r = super::UntilEnd::new(r, t.clone());
    let body: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    let mut sent = body.clone();
    sent.extend_from_slice(&t);
    let writer = tokio::spawn(async move {
        for c in sent.chunks(7) {
            w.write_all(c).await.unwrap();
        }
        w // kept open, as QEMU keeps the socket
    });
    let mut got = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(10), r.read_to_end(&mut got)).await.unwrap().unwrap();
    assert_eq!(got, body);
    drop(writer.await.unwrap());
}
