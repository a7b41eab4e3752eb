//! The knit-ipam plugin binary over a real etcd: many nodes and concurrent processes, etcd
//! killed mid-run, etcd unreachable, fixed IPs across nodes.
//!
//! Sizes: `four_nodes_eight_processes_fifty_adds` runs the full 4 × 8 × 50 by default;
//! `KNIT_IPAM_ETCD_ADDS=N` changes the ADDs per process.

mod etcd_support;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::net::IpAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_support::Etcd;
use ipnet::IpNet;
use knit_ipam::{AnyStore, Ipam, IpamConfig};
use serde_json::Value;

struct Out {
    ok: bool,
    v: Value,
    conflicts: u64,
    elapsed: Duration,
}

fn plugin(command: &str, cid: &str, args: &str, conf: &str) -> Out {
    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_knit-ipam"))
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", cid)
        .env("CNI_NETNS", "/var/run/netns/unused")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_ARGS", args)
        .env("CNI_PATH", "/nonexistent")
        .env("KNIT_IPAM_ETCD_STATS", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn knit-ipam");
    child.stdin.take().unwrap().write_all(conf.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let elapsed = start.elapsed();
    let text = String::from_utf8_lossy(&out.stdout);
    let v = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text.into()))
    };
    let err = String::from_utf8_lossy(&out.stderr);
    let conflicts =
        err.split_whitespace().find_map(|w| w.strip_prefix("conflicts=")).and_then(|n| n.parse().ok()).unwrap_or(0);
    Out { ok: out.status.success(), v, conflicts, elapsed }
}

/// Dual stack, both with per-node blocks: a node's processes meet other nodes only when
/// claiming blocks.
const POOLS: &str = r#"[{"name":"overlay","cidr":"10.233.64.0/18","blockSize":26},
    {"name":"overlay6","cidr":"fd00:16::/112","blockSize":122}]"#;
/// A shared pool (`blocks: false`): every node allocates the lowest free address of the same
/// stripes, so nodes contend on every allocation.
const SHARED: &str = r#"[{"name":"under6","cidr":"fd00:16::/116","blocks":false}]"#;

fn ipam_json(endpoint: &str, node: &str, data: &Path, pools: &str, extra: &str) -> String {
    format!(
        r#"{{"type":"knit-ipam","node":"{node}","dataDir":"{}","store":"etcd","etcdEndpoints":["{endpoint}"]{extra},"pools":{pools}}}"#,
        data.join(node).display()
    )
}

fn conf(endpoint: &str, node: &str, data: &Path, pools: &str, extra: &str) -> String {
    format!(
        r#"{{"cniVersion":"1.1.0","name":"net","type":"knit-routed","ipam":{}}}"#,
        ipam_json(endpoint, node, data, pools, extra)
    )
}

fn checker(endpoint: &str, data: &Path) -> Ipam {
    let j = ipam_json(endpoint, "checker", data, POOLS, "");
    Ipam::open(IpamConfig::parse(j.as_bytes()).unwrap()).unwrap()
}

fn addrs(v: &Value) -> Vec<IpAddr> {
    v["ips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["address"].as_str().unwrap().parse::<IpNet>().unwrap().addr())
        .collect()
}

fn handle_count(i: &Ipam) -> usize {
    match i.store() {
        AnyStore::Etcd(s) => s.handles().unwrap().len(),
        AnyStore::Local(_) => 0,
    }
}

/// The store agrees with what the plugin reported; nodes' v4 addresses lie in their blocks.
fn verify(endpoint: &str, data: &Path, live: &HashMap<String, (String, Vec<IpAddr>)>) {
    let ipam = checker(endpoint, data);
    let st = ipam.snapshot().unwrap();
    st.check_invariants().unwrap();
    let mut seen = HashSet::new();
    let mut blocks: HashMap<String, Vec<IpNet>> = HashMap::new();
    for (cid, (node, ips)) in live {
        let mut got: Vec<IpAddr> = st.lookup(cid, "eth0").iter().map(|g| g.ip).collect();
        got.sort();
        let mut want = ips.clone();
        want.sort();
        assert_eq!(got, want, "{cid}: store and reported result differ");
        let nb = blocks.entry(node.clone()).or_insert_with(|| ipam.blocks_of(node).unwrap());
        for ip in ips {
            assert!(seen.insert(*ip), "duplicate {ip}");
            if ip.is_ipv4() {
                assert!(nb.iter().any(|b| b.contains(ip)), "{ip} of {node} outside its blocks {nb:?}");
            }
        }
    }
    assert_eq!(st.allocated_count(), seen.len(), "allocations nobody reported");
    assert_eq!(handle_count(&ipam), seen.len(), "handles != allocations");
    let mut all: Vec<IpNet> = blocks.values().flatten().copied().collect();
    let n = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), n, "a block owned by two nodes");
}

fn adds_per_process() -> usize {
    std::env::var("KNIT_IPAM_ETCD_ADDS").ok().and_then(|s| s.parse().ok()).unwrap_or(50)
}

fn run_workers<T: Send + 'static>(
    nodes: usize,
    procs: usize,
    f: impl Fn(usize, usize) -> T + Send + Sync + 'static,
) -> Vec<T> {
    let f = Arc::new(f);
    let hs: Vec<_> = (0..nodes * procs)
        .map(|k| {
            let f = f.clone();
            std::thread::spawn(move || f(k / procs, k % procs))
        })
        .collect();
    hs.into_iter().map(|h| h.join().unwrap()).collect()
}

#[test]
fn four_nodes_eight_processes_fifty_adds() {
    concurrent_adds_then_dels(POOLS, 2, adds_per_process(), "dual stack, per-node blocks");
}

#[test]
fn shared_pool_four_nodes_eight_processes() {
    // Every ADD of every node competes for the same stripe: retries, but no failure.
    concurrent_adds_then_dels(SHARED, 1, 10, "shared pool, blocks: false");
}

/// The concurrency runs share 2 cores with the rest of the suite: a generous etcd timeout (and
/// so node-lock wait) keeps a slow moment from failing an ADD; the kill test keeps the default.
const LOADED: &str = r#","etcdTimeoutMs":10000"#;

fn concurrent_adds_then_dels(pools: &'static str, families: usize, per: usize, label: &str) {
    let etcd = Etcd::start();
    let ep = etcd.endpoint();
    let data = tempfile::tempdir().unwrap();
    let (nodes, procs) = (4, 8);
    let t0 = Instant::now();
    let results = {
        let (ep, d) = (ep.clone(), data.path().to_path_buf());
        run_workers(nodes, procs, move |n, w| {
            let node = format!("node{n}");
            let c = conf(&ep, &node, &d, pools, LOADED);
            let mut out = Vec::new();
            let mut conflicts = 0;
            for k in 0..per {
                let cid = format!("{node}-w{w}-{k}");
                let r = plugin("ADD", &cid, "", &c);
                assert!(r.ok, "ADD {cid}: {}", r.v);
                conflicts += r.conflicts;
                out.push((cid, node.clone(), addrs(&r.v)));
            }
            (out, conflicts)
        })
    };
    let add_time = t0.elapsed();
    let mut live = HashMap::new();
    let mut conflicts = 0;
    for (out, c) in results {
        conflicts += c;
        for (cid, node, ips) in out {
            assert_eq!(ips.len(), families);
            live.insert(cid, (node, ips));
        }
    }
    assert_eq!(live.len(), nodes * procs * per);
    verify(&ep, data.path(), &live);
    let t1 = Instant::now();
    let del_conflicts: u64 = {
        let (ep, d) = (ep.clone(), data.path().to_path_buf());
        run_workers(nodes, procs, move |n, w| {
            let node = format!("node{n}");
            let c = conf(&ep, &node, &d, pools, LOADED);
            let mut conflicts = 0;
            for k in 0..per {
                let cid = format!("{node}-w{w}-{k}");
                let r = plugin("DEL", &cid, "", &c);
                assert!(r.ok, "DEL {cid}: {}", r.v);
                conflicts += r.conflicts;
            }
            conflicts
        })
        .into_iter()
        .sum()
    };
    let del_time = t1.elapsed();
    let ipam = checker(&ep, data.path());
    let s = ipam.show().unwrap();
    for p in &s.pools {
        assert_eq!((p.used, p.reserved), (0, 0), "pool {} not empty", p.name);
    }
    assert_eq!(handle_count(&ipam), 0);
    let total = nodes * procs * per;
    println!(
        "etcd store, {nodes} nodes x {procs} processes x {per} ADDs ({label}): \
         {total} ADDs in {:.2?} ({:.1} ms each, {:.0}/s), {conflicts} CAS retries; \
         {total} DELs in {:.2?}, {del_conflicts} CAS retries",
        add_time,
        add_time.as_secs_f64() * 1000.0 / total as f64,
        total as f64 / add_time.as_secs_f64(),
        del_time
    );
}

#[test]
fn etcd_killed_mid_run() {
    let mut etcd = Etcd::start();
    let ep = etcd.endpoint();
    let data = tempfile::tempdir().unwrap();
    let (nodes, procs, per) = (4, 2, 30);
    let extra = r#","etcdTimeoutMs":1000"#;
    let successes = Arc::new(AtomicUsize::new(0));
    let stop_at = nodes * procs * per / 3;
    let down = Arc::new(AtomicBool::new(false));
    let workers = {
        let (ep, d, successes, down) = (ep.clone(), data.path().to_path_buf(), successes.clone(), down.clone());
        std::thread::spawn(move || {
            run_workers(nodes, procs, move |n, w| {
                let node = format!("node{n}");
                let c = conf(&ep, &node, &d, POOLS, extra);
                let mut out = Vec::new();
                let mut failures = Vec::new();
                for k in 0..per {
                    let cid = format!("{node}-w{w}-{k}");
                    // Like a runtime: retry the same ADD until it succeeds.
                    loop {
                        let was_down = down.load(Ordering::SeqCst);
                        let r = plugin("ADD", &cid, "", &c);
                        if r.ok {
                            successes.fetch_add(1, Ordering::SeqCst);
                            out.push((cid.clone(), node.clone(), addrs(&r.v)));
                            break;
                        }
                        failures.push((r.v["code"].as_u64(), r.elapsed, was_down, r.v.clone()));
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
                (out, failures)
            })
        })
    };
    while successes.load(Ordering::SeqCst) < stop_at {
        std::thread::sleep(Duration::from_millis(5));
    }
    down.store(true, Ordering::SeqCst);
    etcd.kill();
    let at_kill = successes.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(2500));
    let while_down = successes.load(Ordering::SeqCst) - at_kill;
    etcd.restart();
    down.store(false, Ordering::SeqCst);
    let results = workers.join().unwrap();
    let mut live = HashMap::new();
    let mut failures = Vec::new();
    for (out, f) in results {
        failures.extend(f);
        for (cid, node, ips) in out {
            live.insert(cid, (node, ips));
        }
    }
    assert_eq!(live.len(), nodes * procs * per, "the run did not complete");
    assert!(!failures.is_empty(), "killing etcd failed no ADD");
    for (code, elapsed, _, v) in &failures {
        assert_eq!(*code, Some(11), "failure other than code 11: {v}");
        // Request timeout 1 s; the node lock wait is bounded by 2 s.
        assert!(*elapsed < Duration::from_secs(5), "failure took {elapsed:?}: {v}");
    }
    // ADDs in flight at the kill may have finished; none can succeed for long without etcd.
    assert!(while_down <= nodes * procs, "{while_down} ADDs succeeded while etcd was down");
    verify(&ep, data.path(), &live);
    let slowest = failures.iter().map(|f| f.1).max().unwrap();
    println!(
        "etcd killed after {at_kill} ADDs: {} ADDs failed with code 11 (slowest {slowest:.2?}), \
         {while_down} finished after the kill, all {} completed after the restart",
        failures.len(),
        live.len()
    );
    // Everything can be released afterwards.
    for (cid, (node, _)) in &live {
        let r = plugin("DEL", cid, "", &conf(&ep, node, data.path(), POOLS, extra));
        assert!(r.ok, "{}", r.v);
    }
    let ipam = checker(&ep, data.path());
    assert!(ipam.show().unwrap().pools.iter().all(|p| p.used == 0));
    assert_eq!(handle_count(&ipam), 0);
}

#[test]
fn unreachable_etcd_fails_add_with_11_and_status_with_50() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let ep = format!("http://127.0.0.1:{port}");
    let data = tempfile::tempdir().unwrap();
    let c = conf(&ep, "node1", data.path(), POOLS, r#","etcdTimeoutMs":1000"#);
    let r = plugin("ADD", "c1", "", &c);
    assert!(!r.ok);
    assert_eq!(r.v["code"], 11, "{}", r.v);
    assert!(r.elapsed < Duration::from_secs(6), "{:?}", r.elapsed);
    let r = plugin("STATUS", "", "", &c);
    assert!(!r.ok);
    assert_eq!(r.v["code"], 50, "{}", r.v);
    assert!(r.elapsed < Duration::from_secs(6), "{:?}", r.elapsed);
    // DEL cannot confirm the release either: code 11, so the runtime retries it.
    let r = plugin("DEL", "c1", "", &c);
    assert_eq!(r.v["code"], 11, "{}", r.v);
    // With etcd up, STATUS is fine.
    let etcd = Etcd::start();
    let c = conf(&etcd.endpoint(), "node1", data.path(), POOLS, "");
    assert!(plugin("STATUS", "", "", &c).ok);
}

#[test]
fn fixed_ip_follows_a_statefulset_pod_to_another_node() {
    let etcd = Etcd::start();
    let ep = etcd.endpoint();
    let data = tempfile::tempdir().unwrap();
    let pools = r#"[{"name":"sts","cidr":"10.50.0.0/24","blockSize":28,"fixedIPs":true}]"#;
    let args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=db;K8S_POD_NAME=db-0";
    let c1 = conf(&ep, "node1", data.path(), pools, "");
    let c2 = conf(&ep, "node2", data.path(), pools, "");
    let r = plugin("ADD", "c1", args, &c1);
    assert!(r.ok, "{}", r.v);
    let ip = addrs(&r.v);
    assert!(plugin("DEL", "c1", args, &c1).ok);
    // Someone else on node1 does not get it.
    let other = plugin("ADD", "x", "K8S_POD_NAMESPACE=db;K8S_POD_NAME=other", &c1);
    assert_ne!(addrs(&other.v), ip);
    // The pod, re-created on node2 with a new container ID, gets its address back.
    let r = plugin("ADD", "c2", args, &c2);
    assert!(r.ok, "{}", r.v);
    assert_eq!(addrs(&r.v), ip);
    assert!(plugin("DEL", "c2", args, &c2).ok);
    // Released only by GC (all) or `knit ipam release`: a CNI GC keeps it.
    let gc = format!(
        r#"{{"cniVersion":"1.1.0","name":"net","type":"knit-routed","ipam":{},"cni.dev/valid-attachments":[]}}"#,
        ipam_json(&ep, "node2", data.path(), pools, "")
    );
    let r = plugin("GC", "", "", &gc);
    assert!(r.ok, "{}", r.v);
    let r = plugin("ADD", "c3", args, &c1);
    assert_eq!(addrs(&r.v), ip);
}
