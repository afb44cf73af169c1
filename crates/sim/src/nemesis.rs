//! The nemesis of the random fault schedules: from the seed, `ROUNDS` faults one after another,
//! each held for a random while and then healed.
//!
//! [`Faults::Classic`]: one node cut off both ways; a node that cannot send; a node that cannot
//! hear; a split of two nodes from three; a host crash (restarted later from its data dir, its
//! disk losing unsynced writes page by page); the leader's crash; a lossy, slow network (10 % of
//! packets lost and retransmitted, up to 150 ms latency); a paused daemon (shorter than its
//! lease: a longer pause is the job of the `fence-watch` watchdog process, which the simulation
//! does not run). The task schedules and the kept seeds use these (the same draws as when those
//! seeds were found).
//!
//! [`Faults::All`] adds: crashes whose disk loses its unsynced writes in any of the simulated
//! disk's modes (page by page, a prefix with a torn write, all, all but a torn last write); a
//! leader transfer; a node joining (a new id on a fresh host and disk); a member leaving
//! (drained first or not, its host running on through the hold); a member replaced (its host
//! dies, it is removed, a fresh one added); a bit flipped in a record of a crashed node's
//! oldest log segment (the node must refuse to start, naming the file and the offset, if a
//! durability claim covers the byte; it is then replaced); EIO on a log `fsync` (the node must
//! stop). A majority always keeps its data and
//! stays up; the cluster keeps 4 to 7 members.

use std::collections::BTreeMap;
use std::time::Duration;

use blixard_node::datadir::Crash;
use madsim::net::NetSim;
use madsim::rand::{thread_rng, Rng};
use madsim::runtime::Handle;

use crate::{status, Client, Cluster};

const ROUNDS: usize = 8;
const NODES: u64 = crate::chaos::NODES;
const MIN_MEMBERS: usize = 4;
const MAX_MEMBERS: usize = 7;

/// Which faults a schedule draws from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Faults {
    Classic,
    All,
}

/// What the disk faults were expected to do: `Ok` what happened as expected, `Err` what did not.
#[derive(Clone, Debug, Default)]
pub struct DiskChecks {
    pub results: Vec<Result<String, String>>,
    /// Faults injected, by kind.
    pub injected: BTreeMap<&'static str, u64>,
}

impl DiskChecks {
    fn count(&mut self, kind: &'static str) {
        *self.injected.entry(kind).or_default() += 1;
    }
}

/// Injects `ROUNDS` random faults, each healed before the next.
pub(crate) async fn nemesis(
    cluster: &mut Cluster,
    h: &mut Vec<String>,
    t0: tokio::time::Instant,
    faults: Faults,
) -> DiskChecks {
    let net = NetSim::current();
    let mut checks = DiskChecks::default();
    let mut admin = Client::over(0xAD41_0000, cluster.members.clone());
    for round in 0..ROUNDS {
        tokio::time::sleep(Duration::from_millis(thread_rng().gen_range(300..2_000))).await;
        let victim = match faults {
            Faults::Classic => thread_rng().gen_range(1..=NODES),
            Faults::All => {
                let m = cluster.current();
                m[thread_rng().gen_range(0..m.len())]
            }
        };
        let hold = Duration::from_millis(thread_rng().gen_range(500..6_000));
        let kinds = if faults == Faults::Classic { 8 } else { 14 };
        let mut eio = None;
        let mut left = None;
        let kind = thread_rng().gen_range(0..kinds);
        checks.count(KIND_NAMES[kind]);
        let what = match kind {
            0 => {
                cluster.isolate(victim);
                format!("isolate {victim}")
            }
            1 => {
                cluster.cut_outbound(victim);
                format!("cut {victim} outbound")
            }
            2 => {
                cluster.cut_inbound(victim);
                format!("cut {victim} inbound")
            }
            3 => {
                let other = if faults == Faults::Classic { victim % NODES + 1 } else { cluster.members.after(victim) };
                cluster.split(&[victim, other]);
                format!("split {victim},{other} from the rest")
            }
            4 => {
                let how = crash_mode(faults);
                cluster.kill_with(victim, how);
                format!("crash {victim} ({how:?})")
            }
            5 => {
                let leader = status(victim).await.map_or(0, |s| s.leader_id);
                if leader == 0 || !cluster.ids.contains_key(&leader) {
                    "no leader known to crash".to_string()
                } else {
                    let how = crash_mode(faults);
                    cluster.kill_with(leader, how);
                    format!("crash leader {leader} ({how:?})")
                }
            }
            6 => {
                net.update_config(|c| {
                    c.packet_loss_rate = 0.1;
                    c.send_latency = Duration::from_millis(1)..Duration::from_millis(150);
                });
                "lossy slow network".to_string()
            }
            7 => {
                let pause = Duration::from_millis(thread_rng().gen_range(100..1_500));
                Handle::current().pause(cluster.ids[&victim]);
                tokio::time::sleep(pause).await;
                Handle::current().resume(cluster.ids[&victim]);
                format!("paused {victim} for {} ms", pause.as_millis())
            }
            8 => cluster.transfer_leadership().await,
            9 if cluster.current().len() < MAX_MEMBERS => match cluster.add_node().await {
                Ok(id) => format!("node {id} joined"),
                Err(e) => format!("join failed: {e}"),
            },
            // Drained first in even rounds, not in odd ones (no draw: the seeds' schedules stay);
            // its host runs on through the hold, as a removed daemon does.
            10 if cluster.current().len() > MIN_MEMBERS => {
                let drained = round % 2 == 0;
                let d = if drained { cluster.drain_node(victim, &mut admin).await } else { Ok(()) };
                match d {
                    Err(e) => format!("drain of {victim} failed: {e}"),
                    Ok(()) => match cluster.leave(victim, &mut admin).await {
                        Ok(i) => {
                            left = Some(victim);
                            let how = if drained { "drained" } else { "not drained" };
                            format!("node {victim} ({how}) left at {i}, its host still running")
                        }
                        Err(e) => format!("leave failed: {e}"),
                    },
                }
            }
            9 | 10 => format!("membership stays at {} nodes", cluster.current().len()),
            11 => cluster.replace_node(victim, &mut admin).await,
            12 => {
                let r = flip_a_bit(cluster, victim).await;
                let what = format!("bit flip on {victim}: {}", r.as_ref().unwrap_or_else(|e| e));
                checks.results.push(r);
                format!("{what}; {}", cluster.replace_node(victim, &mut admin).await)
            }
            _ => {
                let after = thread_rng().gen_range(0..20);
                eio = Some((victim, cluster.disks[&victim].failed_syncs()));
                cluster.disks[&victim].fail_sync(after, ".wal");
                format!("EIO on {victim}'s log fsync after {after} more")
            }
        };
        h.push(format!("round {round}: {what}, held {} ms (at {} ms)", hold.as_millis(), t0.elapsed().as_millis()));
        match eio {
            None => tokio::time::sleep(hold).await,
            Some((v, before)) => {
                // The fault strikes during the hold, or never; a node it stopped has its host
                // rebooted at once (its VMs die with it): the simulation runs no `fence-watch`
                // watchdog, which would kill the VMs of a daemon gone longer than its lease.
                let end = tokio::time::Instant::now() + hold;
                while tokio::time::Instant::now() < end && cluster.disks[&v].failed_syncs() == before {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                if let Some(r) = eio_outcome(cluster, v, before).await {
                    h.push(format!("round {round}: {}", r.as_ref().unwrap_or_else(|e| e)));
                    checks.results.push(r);
                }
                // (The crash also disarms the fault if it never struck.)
                cluster.restart(v);
                tokio::time::sleep(end.saturating_duration_since(tokio::time::Instant::now())).await;
            }
        }
        if let Some(id) = left {
            cluster.retire_host(id);
        }
        heal_everything(cluster);
    }
    checks
}

const KIND_NAMES: [&str; 14] = [
    "isolate",
    "cut outbound",
    "cut inbound",
    "split",
    "crash",
    "crash leader",
    "lossy network",
    "pause",
    "leader transfer",
    "join",
    "leave",
    "replace",
    "bit flip",
    "fsync EIO",
];

fn crash_mode(faults: Faults) -> Crash {
    match faults {
        Faults::Classic => Crash::Pages,
        Faults::All => [Crash::Pages, Crash::Prefix, Crash::LoseAll, Crash::TornLast][thread_rng().gen_range(0..4)],
    }
}

/// Crashes `v`, flips a bit of a record of its oldest log segment, restarts it: it must refuse
/// to start, naming the segment and an offset at or before the flipped byte — if the log could
/// know that the byte was acknowledged: a durability claim on the disk covers it (see
/// `blixard_consensus::wal`'s records). Past the last claim (only the newest segment has such a
/// tail, and the oldest is the newest until the node's first restart) a bad record cannot be
/// told from a write torn by the crash, which was never acknowledged, and the log drops it: the
/// node may start then (what it dropped it fetches again from the leader).
async fn flip_a_bit(cluster: &mut Cluster, v: u64) -> Result<String, String> {
    // What was synced before the crash (to say whether the flipped byte was).
    let synced = cluster.segments(v).first().and_then(|s| cluster.disks[&v].durable(s).ok()).unwrap_or_default();
    let synced = synced.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1) as u64;
    cluster.kill(v);
    let Some(seg) = cluster.segments(v).into_iter().next() else {
        cluster.restart(v);
        return Ok(format!("node {v} has no log segment yet: nothing flipped"));
    };
    let disk = &cluster.disks[&v];
    let bytes = disk.durable(&seg).map_err(|e| format!("cannot read {}: {e}", seg.display()))?;
    let claimed = last_claim(&bytes);
    let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
    if end == 0 {
        cluster.restart(v);
        return Ok(format!("{} holds no record: nothing flipped", seg.display()));
    }
    let offset = thread_rng().gen_range(0..end) as u64;
    let bit = thread_rng().gen_range(0..8u8);
    disk.flip_bit(&seg, offset, bit).map_err(|e| format!("cannot flip a bit of {}: {e}", seg.display()))?;
    cluster.restart(v);
    let name = seg.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
    let flipped = format!("{name} byte {offset} bit {bit}");
    let claimed_past = offset < claimed;
    for _ in 0..100 {
        if !claimed_past && cluster.reg.stopped(v).is_none() && crate::status(v).await.is_some() {
            let was = if offset < synced { "synced before the crash" } else { "never synced" };
            return Ok(format!(
                "{flipped}: past the log's last durability claim (byte {claimed}; {was}): taken for a torn \
                 tail, node {v} started without it"
            ));
        }
        if let Some(why) = cluster.reg.stopped(v) {
            let at = why
                .split_once(" is damaged at byte ")
                .and_then(|(f, rest)| f.ends_with(&name).then_some(rest))
                .and_then(|rest| rest.split(':').next())
                .and_then(|n| n.parse::<u64>().ok());
            return match at {
                Some(at) if at <= offset => Ok(format!("{flipped}: node {v} refused as expected ({why})")),
                _ => Err(format!(
                    "{flipped}: node {v} stopped, but not naming the file and an offset at or before it: {why}"
                )),
            };
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("{flipped}: node {v} started on a damaged log (no refusal within 10 s)"))
}

/// The largest durability claim in a log segment's bytes: every byte before it was synced. A
/// claim is a record `len = 9 | crc32(kind ++ payload) | kind 6 | offset: u64 LE`, looked for at
/// every offset, as the log itself does past a bad record.
fn last_claim(data: &[u8]) -> u64 {
    const K_SYNCED: u8 = 6;
    // (A claim's offset may end in zero bytes: only its start is before the last non-zero one.)
    let end = data.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
    let mut best = 0;
    for at in 0..end {
        let Some(r) = data.get(at..at + 17) else { break };
        if r[..4] != 9u32.to_le_bytes() || r[8] != K_SYNCED {
            continue;
        }
        if crc32(&r[8..17]).to_le_bytes() == r[4..8] {
            best = best.max(u64::from_le_bytes(r[9..17].try_into().unwrap_or_default()));
        }
    }
    best
}

/// CRC-32 (IEEE, as `crc32fast` computes it).
fn crc32(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in bytes {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 == 1 { (c >> 1) ^ 0xEDB8_8320 } else { c >> 1 };
        }
    }
    !c
}

/// If the injected EIO struck `v`'s log since `before`, `v` must have stopped, naming the I/O
/// error.
async fn eio_outcome(cluster: &Cluster, v: u64, before: u64) -> Option<Result<String, String>> {
    if cluster.disks[&v].failed_syncs() == before {
        return None;
    }
    for _ in 0..100 {
        if let Some(why) = cluster.reg.stopped(v) {
            return Some(if why.contains("Input/output error") {
                Ok(format!("node {v} {why}"))
            } else {
                Err(format!("node {v} stopped after EIO on fsync without naming it: {why}"))
            });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Some(Err(format!("node {v} kept running for 1 s after an fsync of its log failed with EIO")))
}

pub(crate) fn heal_everything(cluster: &Cluster) {
    cluster.heal_all();
    NetSim::current().update_config(|c| *c = madsim::net::Config::default());
    for id in cluster.dead() {
        cluster.restart(id);
    }
}
