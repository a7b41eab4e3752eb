//! knit-trace against a real lab: the model's routing equals the kernel's (`RTM_GETROUTE`), its
//! verdicts equal the matrix probes, and the seeds' walkthroughs print their hops. trace reads
//! the lab through the inventory the lab writes, as `knit trace --lab` does.
//!
//! Each test builds its own lab with `knit-lab lab up --name <unique>` and removes it with
//! `knit-lab lab down`, even on panic.

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use knit_host::route::{self, RouteQuery};
use knit_host::Handle;
use knit_lab::matrix::{self, Job, Want};
use knit_lab::plan::DEFAULT_RUN_DIR;
use knit_testkit::bin;
use knit_trace::{fib, render, snapshot, Proto, Request, Snapshot, Trace};

/// Removes the lab when dropped (also on panic).
struct LabGuard(String);

impl LabGuard {
    fn up(tag: &str, extra: &[&str]) -> LabGuard {
        let name = format!("tr{}{tag}", std::process::id());
        let g = LabGuard(name.clone());
        let mut args = vec!["lab", "up", "--name", &name];
        args.extend_from_slice(extra);
        let out = Command::new(bin("knit-lab")).args(&args).output().expect("run knit-lab lab up");
        assert!(out.status.success(), "knit lab up: {}", String::from_utf8_lossy(&out.stderr));
        g
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        let _ = Command::new(bin("knit-lab")).args(["lab", "down", "--name", &self.0]).output();
    }
}

fn snap(name: &str) -> Snapshot {
    let inv = knit_trace::inventory::load_lab(Path::new(DEFAULT_RUN_DIR), name).expect("inventory");
    snapshot::read_inventory(&inv, None).expect("snapshot")
}

/// xorshift64*: enough randomness for query generation, reproducible from the seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
}

fn seed() -> u64 {
    std::env::var("KNIT_TRACE_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        t ^ (std::process::id() as u64) << 32 | 1
    })
}

fn kernel_agreement(name: &str, s: &Snapshot) {
    let lab = knit_lab::Lab::open(name, Path::new(DEFAULT_RUN_DIR)).expect("open lab");
    let handles: Vec<Handle> =
        s.namespaces.iter().map(|n| Handle::in_netns(lab.netns(&n.name).expect("netns")).expect("handle")).collect();
    let mut pool: Vec<IpAddr> =
        s.namespaces.iter().flat_map(|n| n.addrs.iter().map(|a| a.net.addr())).filter(|a| !a.is_loopback()).collect();
    for svc in &s.inventory.as_ref().expect("inventory").services {
        pool.push(svc.cluster_ip);
    }
    for extra in [
        "8.8.8.8",
        "10.233.64.200",
        "10.233.65.7",
        "172.16.9.9",
        "172.17.200.1",
        "198.51.100.77",
        "169.254.1.1",
        "10.233.0.99",
    ] {
        pool.push(extra.parse().expect("ip"));
    }
    let marks = [0u32, 0, 0, 0x1, 0x4000, 0x4001, 0x2];
    let seed = seed();
    let mut rng = Rng(seed);
    let (mut compared, mut errors, mut local) = (0, 0, 0);
    let mut mismatches = Vec::new();
    for _ in 0..1000 {
        let ni = rng.below(s.namespaces.len());
        let ns = &s.namespaces[ni];
        let links: Vec<&knit_host::link::LinkInfo> = ns.links.iter().filter(|l| l.name != "lo").collect();
        let iif = if rng.below(10) < 4 || links.is_empty() { None } else { Some(*rng.pick(&links)) };
        let src = match iif {
            None => {
                let own: Vec<IpAddr> = ns.addrs.iter().map(|a| a.net.addr()).filter(|a| !a.is_loopback()).collect();
                if own.is_empty() || rng.below(2) == 0 {
                    None
                } else {
                    Some(*rng.pick(&own))
                }
            }
            Some(_) => Some(*rng.pick(&pool)),
        };
        let dst = *rng.pick(&pool);
        let mark = *rng.pick(&marks);
        let q = fib::Query { iif: iif.map(|l| l.name.clone()), src, dst, mark };
        let model = fib::lookup(ns, &q);
        let rq = RouteQuery {
            dst,
            src,
            iif: iif.map(|l| l.index),
            oif: None,
            mark: (mark != 0).then_some(mark),
            fib_match: false,
        };
        let kernel = route::get(&handles[ni], &rq);
        let kernel_fib = route::get(&handles[ni], &RouteQuery { fib_match: true, ..rq.clone() });
        let what = format!("{} {q:?}", ns.name);
        match (&model, &kernel) {
            (Err(m), Err(k)) => {
                errors += 1;
                if Some(m.errno()) != k.errno() {
                    mismatches.push(format!("{what}: model {m:?}, kernel {k}"));
                }
            }
            (Ok(m), Ok(k)) => {
                compared += 1;
                if m.is_local() {
                    local += 1;
                }
                let kf = kernel_fib.as_ref().ok();
                let same_route = kf.is_none_or(|f| f.dst == m.route.dst && f.table == m.table);
                let same_oif = k.oif.is_some_and(|o| m.oifs.contains(&o));
                if k.table != m.table || !same_route || !same_oif || k.kind != m.kind {
                    mismatches.push(format!(
                        "{what}: model table {} route {} kind {:?} oifs {:?}; kernel table {} oif {:?} kind {:?} fib entry {:?}",
                        m.table,
                        m.route.dst,
                        m.kind,
                        m.oifs,
                        k.table,
                        k.oif,
                        k.kind,
                        kf.map(|f| (f.dst, f.table))
                    ));
                }
            }
            (m, k) => mismatches.push(format!("{what}: model {m:?}, kernel {k:?}")),
        }
    }
    assert!(
        mismatches.is_empty(),
        "seed {seed} (rerun with KNIT_TRACE_SEED={seed}): {} of 1000 queries disagree:\n{}",
        mismatches.len(),
        mismatches.iter().take(30).cloned().collect::<Vec<_>>().join("\n")
    );
    eprintln!(
        "kernel agreement: seed {seed}, 1000 queries: {compared} routes ({local} local), {errors} errors, all equal"
    );
    assert!(compared > 300 && errors > 20, "the queries should cover routes and errors ({compared}, {errors})");
}

/// The trace requests that decide a matrix cell, and how to read their verdicts.
fn predict(s: &Snapshot, job: &Job) -> (bool, Vec<Trace>) {
    let src_ns = s.ns_index(&job.source).expect("source namespace");
    let proto = job.proto;
    let inv = s.inventory.as_ref().expect("inventory");
    let req = |endpoint: Option<IpAddr>| Request {
        src_ns,
        src_ip: None,
        dst: job.dst.ip(),
        dport: job.dst.port(),
        proto,
        endpoint,
    };
    match &job.want {
        Want::Pod(p) => {
            let t = knit_trace::trace(s, &req(None));
            let ok = t.delivered && t.forward.delivered_to.as_deref() == Some(p.as_str());
            (ok, vec![t])
        }
        Want::AnyOf(set) => {
            let mut traces = Vec::new();
            let mut ok = false;
            for p in set {
                let ep = inv.pod(p).and_then(|x| x.primary_ip());
                let t = knit_trace::trace(s, &req(ep));
                ok |= t.delivered && t.forward.delivered_to.as_deref() == Some(p.as_str());
                traces.push(t);
            }
            (ok, traces)
        }
    }
}

/// Runs the matrix and checks trace's verdict on every cell; returns the failing cells' traces.
fn probe_agreement(name: &str, s: &Snapshot) -> Vec<(Job, Vec<Trace>)> {
    let lab = knit_lab::Lab::open(name, Path::new(DEFAULT_RUN_DIR)).expect("open lab");
    let jobs = matrix::plan_cells(&lab.state);
    let t0 = Instant::now();
    let predictions: Vec<(bool, Vec<Trace>)> = jobs.iter().map(|j| predict(s, j)).collect();
    eprintln!("{} cells traced in {:?}", jobs.len(), t0.elapsed());
    let cells = matrix::run(&lab, jobs.clone(), &|_| {}).expect("matrix");
    assert_eq!(cells.len(), jobs.len());
    let mut disagree = Vec::new();
    let mut failing = Vec::new();
    for ((job, cell), (ok, traces)) in jobs.iter().zip(&cells).zip(predictions) {
        assert_eq!((&job.source, &job.target, job.proto), (&cell.source, &cell.target, cell.proto));
        if ok != cell.ok {
            let why = traces.iter().map(render::trace_text).next().unwrap_or_default();
            disagree.push(format!(
                "{} → {} [{}]: probe {} ({}), trace {}\n{why}",
                job.source,
                job.target,
                job.proto.as_str(),
                cell.ok,
                cell.detail,
                ok
            ));
        }
        if !cell.ok {
            failing.push((job.clone(), traces));
        }
    }
    assert!(
        disagree.is_empty(),
        "{} of {} cells disagree:\n{}",
        disagree.len(),
        cells.len(),
        disagree.iter().take(6).cloned().collect::<Vec<_>>().join("\n")
    );
    eprintln!("probe agreement: {} cells, {} failing, all predicted", cells.len(), failing.len());
    failing
}

fn trace_names(s: &Snapshot, src: &str, dst: &str, proto: Proto) -> Trace {
    let (src_ns, src_ip) = knit_trace::resolve_source(s, src).expect("source");
    let (dst, dport) = knit_trace::resolve_destination(s, dst).expect("destination");
    knit_trace::trace(s, &Request { src_ns, src_ip, dst, dport, proto, endpoint: None })
}

fn seed_walkthroughs(s: &Snapshot) {
    // Macvlan pod → calico pod on another node: out veth0 to its node, routed by BGP to node2.
    let t = trace_names(s, "underlay1", "overlay2", Proto::Tcp);
    let text = render::trace_text(&t);
    eprintln!("{text}");
    let nss: Vec<&str> = t.forward.hops.iter().map(|h| h.ns.as_str()).collect();
    assert_eq!(nss, ["underlay1", "node1", "node2", "overlay2"], "{text}");
    assert_eq!(t.forward.hops[0].oif.as_deref(), Some("veth0"), "{text}");
    assert!(t.forward.hops[1].route.as_deref().is_some_and(|r| r.contains("proto bird")), "{text}");
    assert!(t.forward.hops[2].oif.as_deref().is_some_and(|o| o.starts_with("cali")), "{text}");
    assert!(t.delivered, "{text}");
    // Calico pod → calico pod across nodes: cali veth, proxy ARP for 169.254.1.1, BGP route.
    let t = trace_names(s, "overlay1", "overlay3", Proto::Tcp);
    let text = render::trace_text(&t);
    eprintln!("{text}");
    assert!(t.forward.hops[0].via.as_deref().is_some_and(|v| v.contains("proxy ARP")), "{text}");
    let nss: Vec<&str> = t.forward.hops.iter().map(|h| h.ns.as_str()).collect();
    assert_eq!(nss, ["overlay1", "node1", "node3", "overlay3"], "{text}");
    assert!(t.delivered, "{text}");
    // External → NodePort of a multi-NIC pod: fabric ToR, node1's KUBE-NODEPORTS DNAT + MASQUERADE.
    let inv = s.inventory.as_ref().expect("inventory");
    let svc = inv.service("multinic").expect("multinic service");
    let node1 = inv.node("node1").expect("node1").ip;
    let remote = inv.pod("multinic2").and_then(|p| p.primary_ip());
    let (src_ns, _) = knit_trace::resolve_source(s, "extclient").expect("extclient");
    let t = knit_trace::trace(
        s,
        &Request {
            src_ns,
            src_ip: None,
            dst: node1,
            dport: svc.node_port.expect("node port"),
            proto: Proto::Tcp,
            endpoint: remote,
        },
    );
    let text = render::trace_text(&t);
    eprintln!("{text}");
    assert!(t.endpoints.len() == 3 && t.endpoint == remote, "{text}");
    let n1 = t.forward.hops.iter().find(|h| h.ns == "node1").expect("node1 hop");
    assert!(n1.nat.iter().any(|n| n.starts_with("DNAT") && n.contains("KUBE-SEP")), "{text}");
    assert!(n1.nat.iter().any(|n| n.starts_with("MASQUERADE")), "{text}");
    assert_eq!(t.forward.delivered_to.as_deref(), Some("multinic2"), "{text}");
    assert!(
        t.reply.as_ref().is_some_and(|r| r.hops.iter().any(|h| h.nat.iter().any(|n| n.starts_with("un-DNAT")))),
        "{text}"
    );
    assert!(t.delivered, "{text}");
}

#[test]
fn legacy_lab_kernel_probes_and_seeds() {
    let g = LabGuard::up("leg", &["--kube-proxy", "legacy"]);
    let t0 = Instant::now();
    let s = snap(&g.0);
    eprintln!("snapshot of {} namespaces in {:?}", s.namespaces.len(), t0.elapsed());
    kernel_agreement(&g.0, &s);
    seed_walkthroughs(&s);
    let failing = probe_agreement(&g.0, &s);
    assert!(failing.is_empty());
    let problems = knit_trace::doctor::check(&s);
    assert!(problems.is_empty(), "{problems:?}");
}

#[test]
fn modern_lab_probes() {
    let g = LabGuard::up("mod", &["--kube-proxy", "modern"]);
    let s = snap(&g.0);
    assert!(probe_agreement(&g.0, &s).is_empty());
}

#[test]
fn without_underlay_routes_trace_names_the_invalid_drop() {
    let g = LabGuard::up("nofix", &["--kube-proxy", "legacy", "--no-underlay-routes"]);
    let s = snap(&g.0);
    let failing = probe_agreement(&g.0, &s);
    assert!(!failing.is_empty(), "the seeds' cells fail without the fix");
    for (job, traces) in &failing {
        for t in traces {
            let d = t
                .drop
                .as_ref()
                .unwrap_or_else(|| panic!("{} → {}: no drop\n{}", job.source, job.target, render::trace_text(t)));
            assert_eq!(
                d.rule.as_deref(),
                Some("-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP"),
                "{}",
                render::trace_text(t)
            );
            assert!(
                s.namespaces[s.ns_index(&d.ns).expect("ns")].role == snapshot::Role::Node,
                "{}",
                render::trace_text(t)
            );
        }
    }
    // doctor sees it too, on every node.
    let problems = knit_trace::doctor::check(&s);
    let invalid: Vec<&str> = problems.iter().filter(|p| p.check == "invalid-drop").map(|p| p.ns.as_str()).collect();
    assert_eq!(invalid, ["node1", "node2", "node3"], "{problems:?}");
}
