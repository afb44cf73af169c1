//! What the state machine costs per command, on one thread, over the node's own store: redb
//! tables through `TxnStore`, committed without an fsync every `batch` commands as the Ready
//! loop's open transaction is. `commands` key/value puts (64-byte values, 8-byte keys from
//! 100,000), each in the session of one of `clients` clients (round robin), or, with
//! `--no-sessions`, in none: the difference is what exactly-once costs each node per write.
//! Figures are this thread's CPU time, so other load on the host barely moves them.

use blixard_core::{state, ClientSession, Command, Envelope};

#[derive(clap::Args)]
pub struct ApplyArgs {
    #[arg(long, default_value_t = 300_000)]
    commands: u64,
    /// Client sessions the puts are spread over.
    #[arg(long, default_value_t = 64)]
    clients: u64,
    /// Apply the puts without sessions.
    #[arg(long)]
    no_sessions: bool,
    /// Commands per transaction.
    #[arg(long, default_value_t = 2_000)]
    batch: u64,
}

pub fn run(a: ApplyArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.clients > 0 && a.batch > 0, "--clients and --batch must be at least 1");
    let dir = tempfile::tempdir()?;
    let db = redb::Database::create(dir.path().join("state.redb"))?;
    {
        let txn = db.begin_write()?;
        blixard_consensus::sm::create_tables(&txn).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        txn.commit()?;
    }
    let mut sessions: Vec<ClientSession> = (0..a.clients).map(|c| ClientSession::new(u128::from(c) + 1)).collect();
    let t0 = std::time::Instant::now();
    let cpu0 = crate::place::thread_cpu();
    let mut i = 0u64;
    while i < a.commands {
        let mut txn = db.begin_write()?;
        txn.set_durability(redb::Durability::None)?;
        {
            let mut st = blixard_consensus::sm::TxnStore::new(&txn);
            for _ in 0..a.batch.min(a.commands - i) {
                let c = &mut sessions[(i % a.clients) as usize];
                let s = c.begin();
                let key = format!("{:08}", (i.wrapping_mul(2_654_435_761)) % 100_000).into_bytes();
                let env = Envelope {
                    session: (!a.no_sessions).then_some(s),
                    now_ms: 1_700_000_000_000 + i / 10,
                    command: Command::KvPut { key, value: vec![b'v'; 64] },
                };
                let applied = state::apply(&mut st, i + 1, &env).map_err(|e| anyhow::anyhow!("{e:?}"))?;
                anyhow::ensure!(applied.outcome.is_ok(), "put {i} refused: {:?}", applied.outcome);
                c.end(s.seq);
                i += 1;
            }
        }
        txn.commit()?;
    }
    let cpu = crate::place::thread_cpu() - cpu0;
    let wall = t0.elapsed().as_secs_f64();
    println!(
        "{} puts {} ({} clients), {} per transaction: {:.2} µs of CPU each ({:.0}/s by CPU time; {:.0}/s wall)",
        a.commands,
        if a.no_sessions { "without sessions" } else { "in sessions" },
        a.clients,
        a.batch,
        cpu * 1e6 / a.commands as f64,
        a.commands as f64 / cpu,
        a.commands as f64 / wall
    );
    Ok(())
}
