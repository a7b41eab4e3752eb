//! The connectivity matrix: every path of the seeds' conclusion table (and the
//! ones knit adds), as real TCP/UDP/ICMP exchanges between the lab's namespaces.
//!
//! [`plan_cells`] turns a built lab ([`LabState`]) into probe jobs, as plain
//! data; [`run`] executes them from threads inside each source namespace; [`table`]
//! folds the results into the seeds' table (rows = sources, columns = targets).
//!
//! Services balance at random (kube-proxy's `statistic` rules), and some
//! failures only show when the endpoint picked is on the client's own node. So a
//! Service is two cells per protocol: "an endpoint on the same node answered"
//! and "an endpoint on another node answered". Each keeps opening new
//! connections (new conntrack entries, new random picks) until an endpoint of
//! its kind answers, or [`ROUNDS`] rounds of [`BURST`] concurrent tries went by.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

use crate::build::Lab;
use crate::serve::{probe_icmp, probe_tcp, probe_udp};
use crate::state::{LabState, PodState};
use crate::topology::{ClientSide, Endpoints, PodKind, TrafficPolicy};

/// Per-try timeout.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Concurrent tries per round of a Service cell.
pub const BURST: usize = 8;
/// Rounds of a Service cell: with one wanted endpoint of three, all rounds miss it with
/// probability (2/3)^(ROUNDS*BURST), about 2e-6.
pub const ROUNDS: usize = 4;
/// Probing threads per source namespace.
pub const WORKERS_PER_SOURCE: usize = 6;

/// L4 protocol of a cell: trace's, so a cell's protocol is a trace's.
pub use knit_trace::Proto;

/// Where the source sits relative to the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Placement {
    /// Source and target (or the answering endpoint) on one node.
    SameNode,
    /// On different nodes.
    CrossNode,
    /// From a client outside the cluster.
    External,
    /// From a node's own network namespace.
    Node,
}

impl Placement {
    /// The name in JSON (`same-node`, `cross-node`, `external`, `node`).
    pub fn as_str(self) -> &'static str {
        match self {
            Placement::SameNode => "same-node",
            Placement::CrossNode => "cross-node",
            Placement::External => "external",
            Placement::Node => "node",
        }
    }
}

/// Which answers make a cell pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Want {
    /// This pod must answer (a direct probe; ICMP has no answer text).
    Pod(String),
    /// Any of these pods (a Service's endpoints of one placement).
    AnyOf(Vec<String>),
}

/// One probe job: a future cell.
#[derive(Debug, Clone)]
pub struct Job {
    /// The namespace part (node, pod or client name) the probe runs in.
    pub source: String,
    /// The seeds' table row.
    pub row: String,
    /// The seeds' table column.
    pub column: String,
    /// What is probed, for people (`underlay2/eth0 172.16.2.3`, `svc overlay 10.233.0.10:80`).
    pub target: String,
    /// Where the source is relative to the target.
    pub placement: Placement,
    /// Protocol.
    pub proto: Proto,
    /// Destination.
    pub dst: SocketAddr,
    /// What makes it pass.
    pub want: Want,
}

/// One cell's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    /// Source (node, pod or client name).
    pub source: String,
    /// Target, as in [`Job::target`].
    pub target: String,
    /// Placement.
    pub placement: Placement,
    /// Protocol.
    pub proto: Proto,
    /// Passed.
    pub ok: bool,
    /// What answered, or why it failed.
    pub detail: String,
    /// The seeds' table row.
    pub row: String,
    /// The seeds' table column.
    pub column: String,
    /// It failed once and passed when probed again.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub retried: bool,
}

/// The table row or column of a pod's interface.
fn pod_label(state: &LabState, pod: &PodState, ifname: &str) -> String {
    match pod.kind {
        PodKind::Overlay => "overlay pod".into(),
        PodKind::Underlay => format!("underlay pod ({})", subnet_label(state, pod)),
        PodKind::Multinic => format!("multi-NIC pod {ifname}"),
    }
}

/// Whether an underlay pod's pool is the subnet of its node's `eth0`.
fn subnet_label(state: &LabState, pod: &PodState) -> &'static str {
    let topo = &state.topology;
    let node_ip = topo.node(&pod.node).map(|n| n.ip.addr());
    let pool = pod.pool.as_deref().and_then(|p| topo.pool(p));
    match (node_ip, pool) {
        (Some(ip), Some(pool)) if pool.cidr.contains(&ip) => "node subnet",
        _ => "other subnet",
    }
}

fn row_of(state: &LabState, pod: &PodState) -> String {
    match pod.kind {
        PodKind::Multinic => "multi-NIC pod".into(),
        _ => pod_label(state, pod, "eth0"),
    }
}

fn service_column(prefix: &str, svc: &crate::topology::Service) -> String {
    match &svc.endpoints {
        Endpoints::Kind(k) => format!("{prefix} → {}", kind_name(*k)),
        Endpoints::Pods(_) => format!("{prefix} {}", svc.name),
    }
}

fn kind_name(k: PodKind) -> &'static str {
    match k {
        PodKind::Overlay => "overlay",
        PodKind::Underlay => "underlay",
        PodKind::Multinic => "multi-NIC",
    }
}

/// Every interface address of every pod: (pod, ifname, ip).
fn targets(state: &LabState) -> Vec<(&PodState, String, IpAddr)> {
    let mut out = Vec::new();
    for p in state.pods.values() {
        for (ifname, ips) in &p.ips {
            for ip in ips {
                out.push((p, ifname.clone(), *ip));
            }
        }
    }
    out
}

/// The probe jobs of a built lab.
pub fn plan_cells(state: &LabState) -> Vec<Job> {
    let topo = &state.topology;
    let port = topo.echo_port;
    let mut jobs = Vec::new();
    let all_protos = [Proto::Tcp, Proto::Udp, Proto::Icmp];
    let l4 = [Proto::Tcp, Proto::Udp];
    let tgts = targets(state);
    let service_eps = |svc: &crate::topology::Service| -> Vec<(String, String)> {
        let pods: Vec<&PodState> = match &svc.endpoints {
            Endpoints::Kind(k) => state.pods.values().filter(|p| p.kind == *k).collect(),
            Endpoints::Pods(names) => names.iter().filter_map(|n| state.pods.get(n)).collect(),
        };
        pods.iter().map(|p| (p.name.clone(), p.node.clone())).collect()
    };
    let split = |eps: &[(String, String)], node: &str| -> (Vec<String>, Vec<String>) {
        let local = eps.iter().filter(|(_, n)| n == node).map(|(p, _)| p.clone()).collect();
        let remote = eps.iter().filter(|(_, n)| n != node).map(|(p, _)| p.clone()).collect();
        (local, remote)
    };

    // Pods → pods, and pods → Services.
    for src in state.pods.values() {
        let row = row_of(state, src);
        for (dst, ifname, ip) in &tgts {
            if dst.name == src.name {
                continue;
            }
            let placement = if dst.node == src.node { Placement::SameNode } else { Placement::CrossNode };
            for proto in all_protos {
                jobs.push(Job {
                    source: src.name.clone(),
                    row: row.clone(),
                    column: pod_label(state, dst, ifname),
                    target: format!("{}/{ifname} {ip}", dst.name),
                    placement,
                    proto,
                    dst: SocketAddr::new(*ip, port),
                    want: Want::Pod(dst.name.clone()),
                });
            }
        }
        for svc in &topo.services {
            let (local, remote) = split(&service_eps(svc), &src.node);
            for (set, placement, what) in [
                (local, Placement::SameNode, "endpoint on the same node"),
                (remote, Placement::CrossNode, "endpoint on another node"),
            ] {
                if set.is_empty() {
                    continue;
                }
                for proto in l4 {
                    jobs.push(Job {
                        source: src.name.clone(),
                        row: row.clone(),
                        column: service_column("Service", svc),
                        target: format!("svc {} {}:{} ({what})", svc.name, svc.cluster_ip, svc.port),
                        placement,
                        proto,
                        dst: SocketAddr::new(svc.cluster_ip, svc.port),
                        want: Want::AnyOf(set.clone()),
                    });
                }
            }
        }
    }

    // Nodes → pods.
    for node in &topo.nodes {
        for (dst, ifname, ip) in &tgts {
            let where_ = if dst.node == node.name { "same node" } else { "other node" };
            for proto in all_protos {
                jobs.push(Job {
                    source: node.name.clone(),
                    row: "node".into(),
                    column: pod_label(state, dst, ifname),
                    target: format!("{}/{ifname} {ip} ({where_})", dst.name),
                    placement: Placement::Node,
                    proto,
                    dst: SocketAddr::new(*ip, port),
                    want: Want::Pod(dst.name.clone()),
                });
            }
        }
    }

    // External clients → pod IPs and Service IPs (BGP), and NodePorts.
    for client in &topo.clients {
        let row = match client.side {
            ClientSide::External => "external client".to_string(),
            ClientSide::Underlay => "underlay-subnet client".to_string(),
        };
        for (dst, ifname, ip) in &tgts {
            for proto in all_protos {
                jobs.push(Job {
                    source: client.name.clone(),
                    row: row.clone(),
                    column: pod_label(state, dst, ifname),
                    target: format!("{}/{ifname} {ip}", dst.name),
                    placement: Placement::External,
                    proto,
                    dst: SocketAddr::new(*ip, port),
                    want: Want::Pod(dst.name.clone()),
                });
            }
        }
        for svc in &topo.services {
            let eps = service_eps(svc);
            if eps.is_empty() {
                continue;
            }
            for proto in l4 {
                jobs.push(Job {
                    source: client.name.clone(),
                    row: row.clone(),
                    column: service_column("Service", svc),
                    target: format!("svc {} {}:{}", svc.name, svc.cluster_ip, svc.port),
                    placement: Placement::External,
                    proto,
                    dst: SocketAddr::new(svc.cluster_ip, svc.port),
                    want: Want::AnyOf(eps.iter().map(|(p, _)| p.clone()).collect()),
                });
            }
            let Some(node_port) = svc.node_port else { continue };
            for node in &topo.nodes {
                let (local, remote) = split(&eps, &node.name);
                let mut sets = vec![(local, "endpoint on that node")];
                // Local policy: only the node's own endpoints serve (a node without one drops).
                if svc.external_traffic_policy == TrafficPolicy::Cluster {
                    sets.push((remote, "endpoint on another node"));
                }
                for (set, what) in sets {
                    if set.is_empty() {
                        continue;
                    }
                    for proto in l4 {
                        jobs.push(Job {
                            source: client.name.clone(),
                            row: row.clone(),
                            column: service_column("NodePort", svc),
                            target: format!(
                                "nodeport {} {}:{node_port} via {} ({what})",
                                svc.name,
                                node.ip.addr(),
                                node.name
                            ),
                            placement: Placement::External,
                            proto,
                            dst: SocketAddr::new(node.ip.addr(), node_port),
                            want: Want::AnyOf(set.clone()),
                        });
                    }
                }
            }
        }
    }
    jobs
}

/// Runs one job on the current thread (which is inside the source namespace).
fn run_job(job: &Job) -> (bool, String) {
    match &job.want {
        Want::Pod(pod) => {
            // Two tries: the first packet of a cold path may wait for ARP.
            let mut last = String::new();
            for _ in 0..2 {
                let r = match job.proto {
                    Proto::Tcp => probe_tcp(job.dst, PROBE_TIMEOUT),
                    Proto::Udp => probe_udp(job.dst, PROBE_TIMEOUT),
                    Proto::Icmp => probe_icmp(job.dst.ip(), PROBE_TIMEOUT).map(|()| pod.clone()),
                };
                match r {
                    Ok(p) if &p == pod => return (true, format!("{pod} answered")),
                    Ok(p) => last = format!("{p} answered instead of {pod}"),
                    Err(e) => last = e.to_string(),
                }
            }
            (false, last)
        }
        Want::AnyOf(set) => {
            // Rounds of concurrent tries (threads spawned here inherit this thread's namespace):
            // a failed try can't be pinned on an endpoint, so the cell passes as soon as one of
            // its endpoints answers, and fails only when none did in [`ROUNDS`] × [`BURST`] tries.
            let mut failures = Vec::new();
            let mut others = BTreeMap::<String, u32>::new();
            for _ in 0..ROUNDS {
                let answers: Vec<Result<String, String>> = std::thread::scope(|s| {
                    let hs: Vec<_> = (0..BURST)
                        .map(|_| {
                            s.spawn(|| match job.proto {
                                Proto::Tcp => probe_tcp(job.dst, PROBE_TIMEOUT).map_err(|e| e.to_string()),
                                Proto::Udp => probe_udp(job.dst, PROBE_TIMEOUT).map_err(|e| e.to_string()),
                                Proto::Icmp => probe_icmp(job.dst.ip(), PROBE_TIMEOUT)
                                    .map(|()| String::new())
                                    .map_err(|e| e.to_string()),
                            })
                        })
                        .collect();
                    hs.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("probe thread panicked".into()))).collect()
                });
                for a in answers {
                    match a {
                        Ok(p) if set.contains(&p) => return (true, format!("{p} answered")),
                        Ok(p) => *others.entry(p).or_default() += 1,
                        Err(e) => failures.push(e),
                    }
                }
            }
            let answered = if others.is_empty() {
                "none answered".to_string()
            } else {
                format!("only {} answered", others.keys().cloned().collect::<Vec<_>>().join(", "))
            };
            let why = failures.last().cloned().unwrap_or_default();
            (
                false,
                format!(
                    "no answer from {} in {} tries ({answered}; {} failed, last: {why})",
                    set.join("|"),
                    ROUNDS * BURST,
                    failures.len()
                ),
            )
        }
    }
}

/// Runs every job in parallel: [`WORKERS_PER_SOURCE`] threads inside each source namespace.
/// `tick` is called after each cell.
pub fn run(lab: &Lab, jobs: Vec<Job>, tick: &(dyn Fn(&Cell) + Sync)) -> crate::error::Result<Vec<Cell>> {
    let mut cells = run_pass(lab, jobs.clone(), tick)?;
    // A cell that failed is probed once more after a pause: on a loaded machine a BGP session
    // or a slow first ARP can make one try fail. A path that is really broken fails again; one
    // that passes the second time says so in its detail.
    let failed: Vec<usize> = cells.iter().enumerate().filter(|(_, c)| !c.ok).map(|(i, _)| i).collect();
    if failed.is_empty() {
        return Ok(cells);
    }
    std::thread::sleep(Duration::from_millis(500));
    let again = run_pass(lab, failed.iter().map(|i| jobs[*i].clone()).collect(), &|_| {})?;
    for (i, c) in failed.into_iter().zip(again) {
        if c.ok {
            let first = std::mem::take(&mut cells[i].detail);
            cells[i].ok = true;
            cells[i].detail = format!("{} (passed on a second try; first: {first})", c.detail);
            cells[i].retried = true;
        }
    }
    Ok(cells)
}

fn run_pass(lab: &Lab, jobs: Vec<Job>, tick: &(dyn Fn(&Cell) + Sync)) -> crate::error::Result<Vec<Cell>> {
    let mut by_source: BTreeMap<String, VecDeque<(usize, Job)>> = BTreeMap::new();
    for (i, j) in jobs.into_iter().enumerate() {
        by_source.entry(j.source.clone()).or_default().push_back((i, j));
    }
    let total: usize = by_source.values().map(VecDeque::len).sum();
    let results: Mutex<Vec<Option<Cell>>> = Mutex::new(vec![None; total]);
    let done = AtomicUsize::new(0);
    let mut sources = Vec::new();
    for (src, q) in by_source {
        let ns = lab.netns(&src)?;
        sources.push((ns, Mutex::new(q)));
    }
    std::thread::scope(|s| {
        for (ns, queue) in &sources {
            for _ in 0..WORKERS_PER_SOURCE {
                let results = &results;
                let done = &done;
                s.spawn(move || {
                    let _ = ns.run(|| loop {
                        let next = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
                        let Some((i, job)) = next else { break };
                        let (ok, detail) = run_job(&job);
                        let cell = Cell {
                            source: job.source,
                            target: job.target,
                            placement: job.placement,
                            proto: job.proto,
                            ok,
                            detail,
                            row: job.row,
                            column: job.column,
                            retried: false,
                        };
                        tick(&cell);
                        done.fetch_add(1, Ordering::Relaxed);
                        results.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(cell);
                    });
                });
            }
        }
    });
    Ok(results.into_inner().unwrap_or_else(|p| p.into_inner()).into_iter().flatten().collect())
}

/// The preferred order of rows and columns (others follow in order of appearance).
const ORDER: &[&str] = &[
    "overlay pod",
    "underlay pod (node subnet)",
    "underlay pod (other subnet)",
    "multi-NIC pod",
    "multi-NIC pod eth0",
    "multi-NIC pod net1",
    "Service → overlay",
    "Service → underlay",
    "Service → multi-NIC",
    "NodePort → overlay",
    "NodePort → underlay",
    "NodePort → multi-NIC",
    "node",
    "external client",
    "underlay-subnet client",
];

fn ordered(mut labels: Vec<String>) -> Vec<String> {
    labels.sort_by_key(|l| {
        let rank = ORDER.iter().position(|o| o == l).unwrap_or(ORDER.len());
        let group = if l.starts_with("Service") {
            1
        } else if l.starts_with("NodePort") {
            2
        } else {
            0
        };
        (group, rank, l.clone())
    });
    labels.dedup();
    labels
}

/// The seeds' table: sources down, targets across; ✅, ❌ with what failed, or blank.
pub fn table(cells: &[Cell]) -> comfy_table::Table {
    let rows = ordered(cells.iter().map(|c| c.row.clone()).collect());
    let cols = ordered(cells.iter().map(|c| c.column.clone()).collect());
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    let mut header = vec!["source \\ target".to_string()];
    header.extend(cols.iter().cloned());
    t.set_header(header);
    for r in &rows {
        let mut line = vec![r.clone()];
        for c in &cols {
            let these: Vec<&Cell> = cells.iter().filter(|x| &x.row == r && &x.column == c).collect();
            if these.is_empty() {
                line.push(String::new());
                continue;
            }
            let mut failed: BTreeMap<Proto, Vec<&'static str>> = BTreeMap::new();
            for x in these.iter().filter(|x| !x.ok) {
                let p = match x.placement {
                    Placement::SameNode => "same",
                    Placement::CrossNode => "cross",
                    Placement::External => "ext",
                    Placement::Node => "node",
                };
                let v = failed.entry(x.proto).or_default();
                if !v.contains(&p) {
                    v.push(p);
                }
            }
            if failed.is_empty() {
                line.push("✅".into());
            } else {
                let what: Vec<String> =
                    failed.iter().map(|(p, pl)| format!("{} ({})", p.as_str(), pl.join(","))).collect();
                line.push(format!("❌ {}", what.join(" ")));
            }
        }
        t.add_row(line);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::PodState;
    use crate::topology::Topology;

    fn fake_state() -> LabState {
        let topo = Topology::default_lab().unwrap();
        let mut pods = BTreeMap::new();
        for (i, p) in topo.pods.iter().enumerate() {
            let mut ips = BTreeMap::new();
            ips.insert("eth0".to_string(), vec![IpAddr::from([10, 233, 64, i as u8 + 1])]);
            if p.kind == PodKind::Multinic {
                ips.insert("net1".to_string(), vec![IpAddr::from([172, 16, 2, i as u8 + 1])]);
            }
            pods.insert(
                p.name.clone(),
                PodState { name: p.name.clone(), node: p.node.clone(), kind: p.kind, pool: p.pool.clone(), ips },
            );
        }
        LabState {
            name: "t".into(),
            topology: topo,
            kube_proxy: "legacy".into(),
            underlay_routes: true,
            pods,
            etcd: None,
            pids: vec![],
        }
    }

    #[test]
    fn every_seed_cell_is_planned() {
        let jobs = plan_cells(&fake_state());
        let has = |row: &str, col: &str, pl: Placement| {
            jobs.iter().any(|j| j.row == row && j.column == col && j.placement == pl)
        };
        for row in ["overlay pod", "underlay pod (node subnet)", "underlay pod (other subnet)", "multi-NIC pod"] {
            for col in [
                "overlay pod",
                "underlay pod (node subnet)",
                "multi-NIC pod eth0",
                "multi-NIC pod net1",
                "Service → overlay",
                "Service → underlay",
                "Service → multi-NIC",
            ] {
                assert!(has(row, col, Placement::CrossNode), "{row} → {col} cross node");
                // The default lab has one pod of each kind per node: no same-node pair of one kind.
                let same_kind = col.starts_with(row) || (row.starts_with("underlay") && col.starts_with("underlay"));
                if !same_kind {
                    assert!(has(row, col, Placement::SameNode), "{row} → {col} same node");
                }
            }
        }
        for row in ["external client", "underlay-subnet client"] {
            for col in [
                "NodePort → overlay",
                "NodePort → underlay",
                "NodePort → multi-NIC",
                "overlay pod",
                "Service → overlay",
            ] {
                assert!(has(row, col, Placement::External), "{row} → {col}");
            }
        }
        assert!(has("node", "underlay pod (node subnet)", Placement::Node));
        // No pod probes itself.
        assert!(jobs.iter().all(|j| !matches!(&j.want, Want::Pod(p) if *p == j.source)));
    }

    #[test]
    fn local_policy_nodeports_only_expect_local_endpoints() {
        let jobs = plan_cells(&fake_state());
        let local: Vec<&Job> = jobs.iter().filter(|j| j.target.starts_with("nodeport overlay-local")).collect();
        assert!(!local.is_empty());
        assert!(local.iter().all(|j| j.target.contains("endpoint on that node")));
    }

    #[test]
    fn the_table_marks_failures_with_protocol_and_placement() {
        let cell = |ok, proto, placement| Cell {
            source: "a".into(),
            target: "b".into(),
            placement,
            proto,
            ok,
            detail: String::new(),
            row: "overlay pod".into(),
            column: "underlay pod (node subnet)".into(),
            retried: false,
        };
        let t = table(&[cell(true, Proto::Tcp, Placement::SameNode), cell(false, Proto::Tcp, Placement::CrossNode)])
            .to_string();
        assert!(t.contains("❌ tcp (cross)"), "{t}");
        let t = table(&[cell(true, Proto::Udp, Placement::SameNode)]).to_string();
        assert!(t.contains('✅'), "{t}");
    }
}
