//! The audit log: one JSON line per mutating request (who, what, which name, the answer's code,
//! the request id), in a file of its own (`--audit-log`, default `<data-dir>/audit.log`), as
//! kube-apiserver's `--audit-log-path` does.
//!
//! **Off the request path.** A request appends its event to a shared, bounded list under a
//! mutex (no system call, no wake-up); a thread of its own takes the list every
//! [`FLUSH_EVERY`], formats it and appends it to the file with one `write`. An audit line per
//! write used to be a `tracing` event on the process log: formatting it (timestamp, span
//! context, field visitors) and one `write(2)` each cost ~6 % of a leader's CPU under the write
//! benchmark, the largest single cost of the request layers; a channel that woke the writer
//! per event cost as much again in wake-ups.
//!
//! **Bounds.** The file is rotated at [`MAX_FILE_BYTES`] (the previous one is kept as
//! `audit.log.1`, so at most twice that on disk). Past [`QUEUE`] waiting events (the disk
//! cannot keep up) events are dropped and counted, never waited for: a request is never held by
//! its audit line. Drops and write errors are reported on the process log, at most once a
//! minute. Lines are written, not fsynced: a crash may lose the last ones (at most
//! [`FLUSH_EVERY`] of them, plus what the kernel had not written); a clean stop writes them all.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Events waiting to be written, at most.
const QUEUE: usize = 65_536;
/// How often the writer takes the waiting events.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// The file is rotated past this size.
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;
/// The longest text of one field written (longer is cut, with `…`).
const MAX_FIELD: usize = 256;

/// One audited request.
#[derive(Clone, Debug)]
pub struct Event {
    pub at_ms: u64,
    /// `token:NAME`, `cert:NAME`, `node:N`, `anonymous@IP`, `unauthenticated@IP`.
    pub who: Arc<str>,
    /// The gRPC path, `/blixard.v1.KvService/Put`.
    pub method: &'static str,
    /// The key or name the request is about, when cheap to find.
    pub name: Option<String>,
    /// The answer's gRPC code name (`OK`, `PERMISSION_DENIED`, ...).
    pub code: &'static str,
    pub request_id: Option<Arc<str>>,
}

/// Where audit lines go.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Sink {
    /// Not written at all.
    #[default]
    Off,
    /// Appended to this file.
    File(PathBuf),
}

#[derive(Default)]
struct Shared {
    waiting: Mutex<Vec<Event>>,
    dropped: AtomicU64,
    stop: AtomicBool,
    wake: Condvar,
}

/// The sending side, shared by every request. Dropping it writes what waits, then stops the
/// writer.
pub struct AuditLog {
    shared: Arc<Shared>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl AuditLog {
    /// Opens the sink (the file is created now, so a bad path fails at start) and starts the
    /// writing thread.
    pub fn open(sink: &Sink) -> std::io::Result<AuditLog> {
        let shared = Arc::new(Shared::default());
        let Sink::File(path) = sink else { return Ok(AuditLog { shared, writer: None }) };
        let file = open_append(path)?;
        let writer = Writer { path: path.clone(), size: file.metadata().map(|m| m.len()).unwrap_or(0), out: file };
        let s = shared.clone();
        let handle = std::thread::Builder::new().name("audit".into()).spawn(move || writer.run(&s))?;
        Ok(AuditLog { shared, writer: Some(handle) })
    }

    /// Queues one event for the writer; never waits for the disk.
    pub fn record(&self, e: Event) {
        if self.writer.is_none() {
            return;
        }
        let mut w = self.shared.waiting.lock().unwrap_or_else(|p| p.into_inner());
        if w.len() >= QUEUE {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
        } else {
            w.push(e);
        }
    }

    /// Events dropped so far (queue full or the file not writable).
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.wake.notify_all();
        if let Some(h) = self.writer.take() {
            let _ = h.join();
        }
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

struct Writer {
    path: PathBuf,
    size: u64,
    out: File,
}

impl Writer {
    fn run(mut self, shared: &Shared) {
        let mut buf = Vec::with_capacity(64 * 1024);
        let mut batch = Vec::new();
        let mut last_report: Option<Instant> = None;
        let mut reported = 0u64;
        loop {
            let stopping = {
                let w = shared.waiting.lock().unwrap_or_else(|p| p.into_inner());
                let (mut w, _) = shared
                    .wake
                    .wait_timeout_while(w, FLUSH_EVERY, |_| !shared.stop.load(Ordering::Relaxed))
                    .unwrap_or_else(|p| p.into_inner());
                std::mem::swap(&mut *w, &mut batch);
                shared.stop.load(Ordering::Relaxed)
            };
            if !batch.is_empty() {
                buf.clear();
                for e in batch.drain(..) {
                    line(&mut buf, &e);
                }
                if let Err(e) = self.write(&buf) {
                    let lost = buf.iter().filter(|b| **b == b'\n').count() as u64;
                    shared.dropped.fetch_add(lost, Ordering::Relaxed);
                    if last_report.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                        tracing::warn!(path = %self.path.display(), error = %e, "cannot write the audit log");
                        last_report = Some(Instant::now());
                        reported = shared.dropped.load(Ordering::Relaxed);
                    }
                }
            }
            let d = shared.dropped.load(Ordering::Relaxed);
            if d > reported && last_report.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                tracing::warn!(dropped = d, path = %self.path.display(), "audit events dropped (the log could not keep up)");
                reported = d;
                last_report = Some(Instant::now());
            }
            if stopping {
                return;
            }
        }
    }

    fn write(&mut self, buf: &[u8]) -> std::io::Result<()> {
        if self.size + buf.len() as u64 > MAX_FILE_BYTES && self.size > 0 {
            let mut old = self.path.clone().into_os_string();
            old.push(".1");
            std::fs::rename(&self.path, &old)?;
            self.out = open_append(&self.path)?;
            self.size = 0;
        }
        self.out.write_all(buf)?;
        self.size += buf.len() as u64;
        Ok(())
    }
}

/// Appends `e` as one JSON line.
pub fn line(out: &mut Vec<u8>, e: &Event) {
    out.extend_from_slice(b"{\"ts\":\"");
    rfc3339_ms(out, e.at_ms);
    out.extend_from_slice(b"\",\"who\":");
    json_str(out, &e.who);
    out.extend_from_slice(b",\"method\":");
    json_str(out, e.method);
    out.extend_from_slice(b",\"name\":");
    json_str(out, e.name.as_deref().unwrap_or(""));
    out.extend_from_slice(b",\"code\":");
    json_str(out, e.code);
    out.extend_from_slice(b",\"request_id\":");
    json_str(out, e.request_id.as_deref().unwrap_or(""));
    out.extend_from_slice(b"}\n");
}

/// A JSON string of at most [`MAX_FIELD`] characters of `s`.
fn json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for (i, c) in s.chars().enumerate() {
        if i == MAX_FIELD {
            out.extend_from_slice("…".as_bytes());
            break;
        }
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes());
            }
            c => {
                let mut b = [0; 4];
                out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
            }
        }
    }
    out.push(b'"');
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` of a Unix time in milliseconds (UTC).
fn rfc3339_ms(out: &mut Vec<u8>, ms: u64) {
    let secs = ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let s = format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3600, rem % 3600 / 60, rem % 60, ms % 1000);
    out.extend_from_slice(s.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(name: Option<&str>) -> Event {
        Event {
            at_ms: 1_796_688_000_123, // 2026-12-08T00:00:00.123Z
            who: "token:ops".into(),
            method: "/blixard.v1.KvService/Put",
            name: name.map(str::to_string),
            code: "OK",
            request_id: Some("abc".into()),
        }
    }

    #[test]
    fn a_line_is_one_json_object() {
        let mut out = Vec::new();
        line(&mut out, &ev(Some("k")));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"ts\":\"2026-12-08T00:00:00.123Z\",\"who\":\"token:ops\",\"method\":\"/blixard.v1.KvService/Put\",\
             \"name\":\"k\",\"code\":\"OK\",\"request_id\":\"abc\"}\n"
        );
    }

    #[test]
    fn dates_are_utc_civil_dates() {
        let at = |ms| {
            let mut o = Vec::new();
            rfc3339_ms(&mut o, ms);
            String::from_utf8(o).unwrap()
        };
        assert_eq!(at(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(at(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
    }

    #[test]
    fn hostile_text_stays_one_line_and_bounded() {
        let mut out = Vec::new();
        let nasty = format!("a\"b\\c\nd\u{1}{}", "x".repeat(10_000));
        line(&mut out, &Event { who: nasty.into(), ..ev(None) });
        let s = String::from_utf8(out).unwrap();
        assert_eq!(s.matches('\n').count(), 1, "{s}");
        assert!(s.contains("a\\\"b\\\\c\\nd\\u0001x") && s.contains('…') && s.len() < 1024, "{s}");
    }

    #[test]
    fn events_reach_the_file_and_the_file_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&Sink::File(path.clone())).unwrap();
        log.record(ev(Some("one")));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(&path).unwrap_or_default().contains("\"one\"") {
            assert!(Instant::now() < deadline, "the event never reached the file");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(log.dropped(), 0);

        // Rotation: a writer at the size limit moves the file to `.1` and starts a new one.
        let mut w = Writer { path: path.clone(), size: MAX_FILE_BYTES, out: open_append(&path).unwrap() };
        w.write(b"{\"next\":1}\n").unwrap();
        assert!(std::fs::read_to_string(dir.path().join("audit.log.1")).unwrap().contains("\"one\""));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"next\":1}\n");
    }

    #[test]
    fn a_dropped_log_writes_what_waits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&Sink::File(path.clone())).unwrap();
        for i in 0..1000 {
            log.record(ev(Some(&format!("k{i}"))));
        }
        drop(log);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1000);
        assert!(text.lines().last().unwrap().contains("\"k999\""));
    }

    #[test]
    fn off_writes_nothing_and_never_blocks() {
        let log = AuditLog::open(&Sink::Off).unwrap();
        for _ in 0..10 {
            log.record(ev(None));
        }
        assert_eq!(log.dropped(), 0);
    }
}
