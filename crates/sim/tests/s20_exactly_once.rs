//! Exactly-once under leader failure (issue 11): clients write through every node while a
//! nemesis kills the leader (and restarts it) or cuts it off (and heals it), so proposals are
//! forwarded to leaders that die with them in flight. Each client writes only its own keys, one
//! write at a time, retrying a write with the same session until its outcome is known, exactly
//! as the CLI does. So after the faults the state must be exactly each client's acknowledged
//! writes applied once, in order: an earlier put applied again after a later write to its key
//! (a re-proposed duplicate that was not recognised) would show as an old value or a deleted
//! key come back, in a linearizable read the client makes of its keys after every write, and in
//! the final state. Applications are also counted: each client restarts its VM a number of
//! times, and a restart applied twice would bump the VM's restart generation twice. The same
//! seed gives the same history.
#![cfg(madsim)]

use std::collections::BTreeMap;
use std::time::Duration;

use blixard_sim::*;
use madsim::rand::{thread_rng, Rng};

const CLIENTS: u64 = 4;
const OPS: u64 = 40;

/// What a client ends with: its keys' values, how many restarts it had acknowledged, its log.
type Done = (BTreeMap<String, String>, u64, Vec<String>);

async fn client(c: u64) -> Done {
    let mut cl = Client::new(0xC11E_0000 + u128::from(c), 3);
    let mut model = BTreeMap::new();
    let mut log = Vec::new();
    let vm = format!("vm-c{c}");
    let created = cl.write(1 + c % 3, Write::VmCreate(&vm), Duration::from_secs(30)).await;
    created.unwrap_or_else(|e| panic!("client {c} creating its vm: {e}"));
    let mut restarts = 0;
    for j in 0..OPS {
        let key = format!("c{c}/k{}", j % 3);
        let via = 1 + (c + j) % 3;
        if j % 5 == 2 {
            let g = cl.write(via, Write::VmRestart(&vm), Duration::from_secs(30)).await;
            let g = g.unwrap_or_else(|e| panic!("client {c} restart {j} through node {via}: {e}"));
            restarts += 1;
            assert_eq!(g, restarts, "client {c}: the restart answered a generation other than its own");
            log.push(format!("c{c} op {j} restart via {via} -> generation {g} in {} attempts", cl.attempts));
            continue;
        }
        let idx = if j % 4 == 3 {
            let r = cl.write(via, Write::Delete(&key), Duration::from_secs(30)).await;
            model.remove(&key);
            r
        } else {
            let v = format!("v{c}.{j}");
            let r = cl.write(via, Write::Put(&key, &v), Duration::from_secs(30)).await;
            model.insert(key.clone(), v);
            r
        };
        let idx = idx.unwrap_or_else(|e| panic!("client {c} op {j} through node {via}: {e}"));
        log.push(format!("c{c} op {j} via {via} @{idx} in {} attempts", cl.attempts));
        // Each of its keys reads as its last acknowledged write: a duplicate of an earlier
        // write applied since would show here.
        for k in 0..3 {
            let key = format!("c{c}/k{k}");
            let got = cl.get(1 + (c + j + k) % 3, &key, Duration::from_secs(30)).await;
            let got = got.unwrap_or_else(|e| panic!("client {c} reading {key}: {e}"));
            assert_eq!(
                got.as_ref(),
                model.get(&key),
                "client {c} after op {j}: {key} is not its last acknowledged write"
            );
        }
        tokio::time::sleep(Duration::from_millis(thread_rng().gen_range(0..150))).await;
        // the schedule's pacing, in seeded simulated time
    }
    (model, restarts, log)
}

async fn scenario(dir: std::path::PathBuf) -> Vec<String> {
    let cluster = Cluster::start(3, &dir);
    let host = cluster.client_host();
    host.spawn(async move {
        let mut history = Vec::new();
        let leader = wait_formed(1, 3).await;
        history.push(format!("formed: leader {leader}"));
        let clients: Vec<_> = (0..CLIENTS).map(|c| tokio::spawn(client(c))).collect();

        // The nemesis: faults to the current leader, while the clients write.
        for round in 0..6 {
            tokio::time::sleep(Duration::from_millis(thread_rng().gen_range(200..900))).await; // the schedule's pacing, in seeded simulated time
            let Some(l) = status(1 + round % 3).await.map(|s| s.leader_id).filter(|&l| l != 0) else { continue };
            if round % 2 == 0 {
                cluster.kill(l);
                history.push(format!("killed leader {l}"));
                tokio::time::sleep(Duration::from_millis(thread_rng().gen_range(300..1500))).await; // the schedule's pacing, in seeded simulated time
                cluster.restart(l);
                history.push(format!("restarted {l}"));
            } else {
                cluster.isolate(l);
                history.push(format!("isolated leader {l}"));
                // Longer than a client's attempt: clients give up on the old leader, retry
                // elsewhere and move on, while it still holds their earlier attempts.
                tokio::time::sleep(Duration::from_millis(thread_rng().gen_range(2_000..6_000))).await; // the schedule's pacing, in seeded simulated time
                cluster.heal(l);
                history.push(format!("healed {l}"));
            }
        }

        let mut expected = BTreeMap::new();
        let mut restarts = BTreeMap::new();
        for (c, t) in clients.into_iter().enumerate() {
            let (model, n, log) = t.await.expect("client task");
            history.extend(log);
            expected.extend(model);
            restarts.insert(format!("vm-c{c}"), n);
        }
        // Every node converges to exactly the acknowledged writes, each applied once.
        let applied = wait("every node to hold exactly the acknowledged writes", || {
            let expected = expected.clone();
            async move {
                let mut applied = Vec::new();
                for n in 1..=3 {
                    if local_pairs(n).await? != expected {
                        return None;
                    }
                    applied.push(status(n).await?.applied_index);
                }
                applied.windows(2).all(|w| w[0] == w[1]).then_some(applied[0])
            }
        })
        .await;
        history.push(format!("converged at applied index {applied} with {} keys", expected.len()));
        for (vm, n) in &restarts {
            for node in 1..=3 {
                let g = restart_generation(node, vm).await.expect("the vm is there");
                assert_eq!(g, *n, "node {node}: {vm} was restarted {g} times for {n} acknowledged restarts");
            }
        }
        history.push(format!("restart generations match: {restarts:?}"));
        history
    })
    .await
    .expect("client host")
}

#[test]
fn writes_through_every_node_across_leader_kills_and_partitions_apply_exactly_once_same_seed_same_history() {
    let seed = seed();
    let first = run(seed, scenario);
    eprintln!(
        "seed {seed} history (faults):\n  {}",
        first
            .iter()
            .filter(|l| !l.starts_with('c') || !l.ends_with(" in 1 attempts"))
            .cloned()
            .collect::<Vec<_>>()
            .join("\n  ")
    );
    let second = run(seed, scenario);
    assert_eq!(first, second, "seed {seed}: the same seed must give the same history");
}
