//! Placement throughput of the scheduler itself, in memory, on one thread: `nodes` registered
//! nodes (in three zones), `preload` VMs placed first, then `placements` more timed, each a
//! full `plan` (sampled, seeded by its index as in `apply`) and the chosen node's aggregates
//! updated, as `apply` does. Half the timed VMs carry a constraint, a quarter a soft group.
//! The nodes are a [`Cluster`]: their records, and their views with the label strings
//! interned, which is what the scheduler reads per node.

use std::time::Instant;

use blixard_core::placement::{Constraint, PlacementSpec};
use blixard_core::scheduler::{self, Cluster, NodeRecord, NodeState, Nodes};
use blixard_core::spec::VmSpec;

#[derive(clap::Args)]
pub struct PlaceArgs {
    #[arg(long, default_value_t = 10_000)]
    nodes: usize,
    /// VMs placed before the timed ones.
    #[arg(long, default_value_t = 100_000)]
    preload: usize,
    /// Timed placements.
    #[arg(long, default_value_t = 1_000_000)]
    placements: usize,
}

fn node(i: usize) -> NodeRecord {
    NodeRecord {
        id: i as u64 + 1,
        vcpus: 4096,
        memory_mib: 16 << 20,
        disk_gib: 1 << 20,
        accel: "kvm".into(),
        backend: "qemu".into(),
        labels: [("zone".to_string(), format!("z{}", i % 3))].into(),
        state: NodeState::Ready,
        eligible: true,
        slot: i as u32,
        ..Default::default()
    }
}

/// The VMs' specs: with a constraint or not, in one of 100 soft groups or none. The scheduler
/// never reads a VM's name, so VM `i` uses the spec of its kind (built once, outside the
/// timed loop, as `apply` gets its spec already decoded from the command).
struct Specs {
    plain: [VmSpec; 2],
    grouped: Vec<[VmSpec; 2]>,
}

impl Specs {
    fn new(zone: &Constraint) -> Specs {
        let spec = |constrained: bool, group: Option<String>| {
            let mut placement = PlacementSpec { group, ..Default::default() };
            if constrained {
                placement.constraints.push(zone.clone());
            }
            VmSpec { name: "vm".into(), vcpus: 1, memory_mib: 128, placement, ..Default::default() }
        };
        Specs {
            plain: [spec(false, None), spec(true, None)],
            grouped: (0..100).map(|g| [false, true].map(|c| spec(c, Some(format!("g{g}"))))).collect(),
        }
    }

    /// VM `i`'s: half carry the constraint, a quarter a soft group.
    fn of(&self, i: usize) -> &VmSpec {
        let constrained = usize::from(i.is_multiple_of(2));
        if i % 4 == 1 {
            &self.grouped[i % 100][constrained]
        } else {
            &self.plain[constrained]
        }
    }
}

/// Places VMs `from..to`, returning how many found a node and how many nodes were looked at.
fn place(nodes: &mut Cluster, from: usize, to: usize, specs: &Specs) -> (usize, usize) {
    let mut placed = 0;
    let mut visited = 0;
    for i in from..to {
        let spec = specs.of(i);
        let plan = scheduler::plan(&*nodes, spec, None, i as u64, false);
        visited += nodes.count() - plan.unvisited;
        if let Some(id) = plan.chosen {
            nodes.add(id, spec);
            placed += 1;
        }
    }
    (placed, visited)
}

pub fn run(a: PlaceArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.nodes > 0, "--nodes must be at least 1");
    let zone = Constraint::parse("zone in (z0, z1)").map_err(|e| anyhow::anyhow!("{}", e.rule))?;
    let specs = Specs::new(&zone);
    let mut nodes = Cluster::new((0..a.nodes).map(node).collect());
    let t = Instant::now();
    let (pre, _) = place(&mut nodes, 0, a.preload, &specs);
    let pre_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let cpu0 = thread_cpu();
    let (placed, visited) = place(&mut nodes, a.preload, a.preload + a.placements, &specs);
    let s = t.elapsed().as_secs_f64();
    let cpu = thread_cpu() - cpu0;
    anyhow::ensure!(pre == a.preload && placed == a.placements, "some VMs found no node ({pre}, {placed})");
    let rate = a.placements as f64 / s;
    println!(
        "{} nodes, {} VMs placed first ({:.0}/s), then {} placements in {:.3} s: {:.0} placements/s ({:.2} µs each), \
         one thread; by the thread's CPU time ({:.3} s): {:.0} placements/s; {:.1} nodes looked at per placement",
        a.nodes,
        a.preload,
        a.preload as f64 / pre_s,
        a.placements,
        s,
        rate,
        1e6 / rate,
        cpu,
        a.placements as f64 / cpu,
        visited as f64 / a.placements.max(1) as f64
    );
    Ok(())
}

/// This thread's CPU time in seconds (what the figure costs, whatever else runs on the host).
pub(crate) fn thread_cpu() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}
