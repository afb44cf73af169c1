//! Starting an attempt's process without a `fork` of the daemon.
//!
//! A child that must join its cgroup before it execs needs code to run between fork and exec,
//! and the standard library then forks the whole daemon: its page tables are copied, and every
//! page the daemon writes afterwards takes a copy-on-write fault. On a 3-node cluster running
//! `true` tasks, that fork and those faults were ~24 % of the daemons' CPU (BENCHMARKS.md).
//! Without such code (and with the program given as a path), the standard library uses
//! `posix_spawn`, which shares the daemon's memory with the child until its exec.
//!
//! Under cgroup v1 the child can still be born in its cgroups: v1 lets the threads of one
//! process sit in different cgroups, and a child starts in the cgroups of the thread that made
//! it. So one thread of the daemon, kept for this, writes itself into the attempt's cgroups'
//! `tasks` files, spawns, and writes itself back into the daemon's own cgroups. (cgroup v2
//! puts whole processes in a cgroup, so there the child joins before exec, as before.)

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::OnceLock;

type Work = Box<dyn FnOnce() + Send>;

/// The spawning thread, made on first use: it runs one closure at a time, in the runtime of
/// the task that asked (the child is registered with that runtime's process driver).
fn spawner() -> &'static mpsc::Sender<(tokio::runtime::Handle, Work)> {
    static TX: OnceLock<mpsc::Sender<(tokio::runtime::Handle, Work)>> = OnceLock::new();
    TX.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<(tokio::runtime::Handle, Work)>();
        let spawned = std::thread::Builder::new().name("task-spawner".into()).spawn(move || {
            for (handle, work) in rx {
                let _entered = handle.enter();
                work();
            }
        });
        if let Err(e) = spawned {
            tracing::error!("cannot start the task-spawner thread: {e}");
        }
        tx
    })
}

/// Runs `f` on the spawning thread; `None` if that thread is gone.
pub async fn on_spawner<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let work: Work = Box::new(move || {
        let _ = tx.send(f());
    });
    spawner().send((tokio::runtime::Handle::current(), work)).ok()?;
    rx.await.ok()
}

/// The path `program` (a name without `/`) is run from, searched in `path` as `execvp` would
/// search it in the child: the first regular file there that may be executed. `None` for a
/// name with a `/` (used as it is) or one found nowhere (left to fail as before).
pub fn resolve(program: &str, path: &str) -> Option<PathBuf> {
    if program.is_empty() || program.contains('/') {
        return None;
    }
    path.split(':').filter(|d| !d.is_empty()).map(|d| Path::new(d).join(program)).find(|p| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file())
            && rustix::fs::access(p.as_path(), rustix::fs::Access::EXEC_OK).is_ok()
    })
}

/// This thread's id, from `/proc/thread-self` (`<pid>/task/<tid>`).
fn tid() -> std::io::Result<String> {
    let link = std::fs::read_link("/proc/thread-self")?;
    link.file_name()
        .and_then(|n| n.to_str())
        .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        .map(str::to_string)
        .ok_or_else(|| std::io::Error::other(format!("unexpected /proc/thread-self: {}", link.display())))
}

/// Moves the calling thread into each cgroup v1 directory whose `tasks` file is in `files`.
fn move_thread(tid: &str, files: &[PathBuf]) -> std::io::Result<()> {
    for f in files {
        std::fs::write(f, tid).map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", f.display())))?;
    }
    Ok(())
}

/// On the spawning thread: `spawn()` with the calling thread in the cgroups of `into` (their
/// `tasks` files), then back in those of `home`, whatever happened. `Err` when the thread
/// could not move in (nothing was started: the caller starts the child another way).
pub fn spawn_in_v1<T>(
    into: &[PathBuf],
    home: &[PathBuf],
    spawn: impl FnOnce() -> std::io::Result<T>,
) -> Result<std::io::Result<T>, std::io::Error> {
    let tid = tid()?;
    if let Err(e) = move_thread(&tid, into) {
        if let Err(back) = move_thread(&tid, home) {
            tracing::error!("the task-spawner thread cannot go back to the daemon's cgroups: {back}");
        }
        return Err(e);
    }
    let r = spawn();
    if let Err(back) = move_thread(&tid, home) {
        // It stays where it is until the next spawn moves it; the attempt's cgroup cannot be
        // removed meanwhile (and says so when its removal is tried).
        tracing::error!("the task-spawner thread cannot go back to the daemon's cgroups: {back}");
    }
    Ok(r)
}
