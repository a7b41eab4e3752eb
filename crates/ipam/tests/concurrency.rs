//! Concurrency and crash safety of the local store, with real processes.
//!
//! The parent tests re-execute this test binary (`child_worker`, which does nothing unless
//! `KNIT_IPAM_CHILD_DIR` is set): each child is a separate process with its own store handle,
//! exactly like concurrent CNI plugin invocations. It prints `DONE <containerID> <ip>` after each
//! allocation returned.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use knit_ipam::{AllocRequest, Ipam, IpamConfig, MemStore};

const POOLS: &str = r#"[{"name":"overlay","cidr":"10.233.64.0/18","blockSize":26},
    {"name":"under6","cidr":"fd00:16::/116","blocks":false}]"#;

fn config(dir: &Path, node: &str) -> IpamConfig {
    let json = format!(r#"{{"node":"{node}","dataDir":"{}","pools":{POOLS}}}"#, dir.display());
    IpamConfig::parse(json.as_bytes()).unwrap()
}

#[test]
fn child_worker() {
    let Ok(dir) = std::env::var("KNIT_IPAM_CHILD_DIR") else {
        return;
    };
    let node = std::env::var("KNIT_IPAM_CHILD_NODE").unwrap();
    let prefix = std::env::var("KNIT_IPAM_CHILD_PREFIX").unwrap();
    let count: u64 = std::env::var("KNIT_IPAM_CHILD_COUNT").unwrap().parse().unwrap();
    let mut out = std::io::stdout().lock();
    let mut n = 0u64;
    while count == 0 || n < count {
        // A fresh handle per operation, like one plugin process per ADD.
        let ipam = Ipam::open(config(Path::new(&dir), &node)).unwrap();
        let cid = format!("{prefix}-{n}");
        let r = ipam.allocate(&AllocRequest::new(&cid, "eth0")).unwrap();
        let addrs: Vec<String> = r.ips.iter().map(|i| i.address.addr().to_string()).collect();
        writeln!(out, "DONE {cid} {}", addrs.join(" ")).unwrap();
        out.flush().unwrap();
        // Churn: release every third one, so kills also land in releases.
        if n % 3 == 2 {
            let victim = format!("{prefix}-{}", n - 1);
            ipam.release(&victim, "eth0").unwrap();
            writeln!(out, "RELEASED {victim}").unwrap();
            out.flush().unwrap();
        }
        n += 1;
    }
}

fn spawn_child(dir: &Path, node: &str, prefix: &str, count: u64) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["child_worker", "--exact", "--nocapture", "--test-threads=1"])
        .env("KNIT_IPAM_CHILD_DIR", dir)
        .env("KNIT_IPAM_CHILD_NODE", node)
        .env("KNIT_IPAM_CHILD_PREFIX", prefix)
        .env("KNIT_IPAM_CHILD_COUNT", count.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

/// Reported state: container → addresses, minus released ones.
fn apply_line(line: &str, live: &mut HashMap<String, Vec<IpAddr>>) {
    // libtest prints "test child_worker ... " without a newline before the first line.
    let line = match ["DONE ", "RELEASED "].iter().filter_map(|k| line.find(k)).min() {
        Some(i) => &line[i..],
        None => return,
    };
    let mut parts = line.split_whitespace();
    match parts.next() {
        Some("DONE") => {
            let cid = parts.next().unwrap().to_string();
            let ips: Vec<IpAddr> = parts.map(|p| p.parse().unwrap()).collect();
            live.insert(cid, ips);
        }
        Some("RELEASED") => {
            live.remove(parts.next().unwrap());
        }
        _ => {}
    }
}

/// Every reported live allocation is stored; no address is held twice; invariants hold.
fn verify(dir: &Path, live: &HashMap<String, Vec<IpAddr>>) {
    let ipam = Ipam::open(config(dir, "checker")).unwrap();
    let st = ipam.snapshot().unwrap();
    st.check_invariants().unwrap();
    for (cid, ips) in live {
        let mut got: Vec<IpAddr> = st.lookup(cid, "eth0").iter().map(|g| g.ip).collect();
        got.sort();
        let mut want = ips.clone();
        want.sort();
        assert_eq!(got, want, "{cid} lost or changed");
    }
    let s = ipam.show().unwrap();
    // No duplicates: each block map holds an address once, and per-pool used counts match
    // the number of distinct live attachments.
    let mut seen = HashSet::new();
    for ips in live.values() {
        for ip in ips {
            assert!(seen.insert(*ip), "{ip} reported twice");
        }
    }
    let used: u128 = s.pools.iter().map(|p| p.used).sum();
    assert!(used as usize >= seen.len());
    // Blocks are owned by one node each (file per block) and nodes hold disjoint sets.
    let mut owners = HashMap::new();
    for p in &s.pools {
        for b in &p.blocks {
            assert!(owners.insert(b.cidr, b.owner.clone()).is_none());
        }
    }
}

#[test]
fn eight_processes_times_fifty_no_duplicates() {
    let d = tempfile::tempdir().unwrap();
    let children: Vec<Child> =
        (0..8).map(|k| spawn_child(d.path(), &format!("node{}", k % 2 + 1), &format!("p{k}"), 50)).collect();
    let mut live = HashMap::new();
    let mut done = 0;
    for mut c in children {
        let out = BufReader::new(c.stdout.take().unwrap());
        for line in out.lines() {
            let line = line.unwrap();
            if line.contains("DONE ") {
                done += 1;
            }
            apply_line(&line, &mut live);
        }
        assert!(c.wait().unwrap().success());
    }
    assert_eq!(done, 400);
    let mut seen = HashSet::new();
    for ips in live.values() {
        assert_eq!(ips.len(), 2);
        for ip in ips {
            assert!(seen.insert(*ip), "duplicate {ip}");
        }
    }
    verify(d.path(), &live);
    // Two nodes shared the dataDir: their blocks are disjoint.
    let ipam = Ipam::open(config(d.path(), "checker")).unwrap();
    let b1: HashSet<_> = ipam.blocks_of("node1").unwrap().into_iter().collect();
    let b2: HashSet<_> = ipam.blocks_of("node2").unwrap().into_iter().collect();
    assert!(!b1.is_empty() && !b2.is_empty());
    assert!(b1.is_disjoint(&b2));
}

#[test]
fn sigkill_during_allocation_loses_nothing() {
    let d = tempfile::tempdir().unwrap();
    let mut live = HashMap::new();
    for round in 0..4 {
        // Two writers at once, one killed mid-stream, the other finishing.
        let mut victim = spawn_child(d.path(), "node1", &format!("k{round}"), 0);
        let steady = spawn_child(d.path(), "node2", &format!("s{round}"), 30);
        let out = BufReader::new(victim.stdout.take().unwrap());
        let mut lines = out.lines();
        let mut seen = 0;
        while let Some(Ok(line)) = lines.next() {
            if line.contains("DONE ") {
                seen += 1;
            }
            apply_line(&line, &mut live);
            if seen >= 40 + round * 7 {
                break;
            }
        }
        victim.kill().unwrap(); // SIGKILL
                                // Whatever the victim printed before dying counts as done.
        for line in lines.map_while(Result::ok) {
            apply_line(&line, &mut live);
        }
        assert!(!victim.wait().unwrap().success());
        let out = steady.wait_with_output().unwrap();
        assert!(out.status.success());
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            apply_line(line, &mut live);
        }
        verify(d.path(), &live);
        // The store is fully usable afterwards and hands out no taken address.
        let ipam = Ipam::open(config(d.path(), "node1")).unwrap();
        let r = ipam.allocate(&AllocRequest::new(format!("after{round}"), "eth0")).unwrap();
        for ip in r.addrs() {
            assert!(!live.values().flatten().any(|x| *x == ip), "{ip} handed out twice");
        }
        live.insert(format!("after{round}"), r.addrs());
    }
    // No temp file survives the next locked operation.
    let ipam = Ipam::open(config(d.path(), "node1")).unwrap();
    ipam.release("nothing", "eth0").unwrap();
    for pool in ["overlay", "under6"] {
        for e in std::fs::read_dir(d.path().join("pools").join(pool)).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            assert!(!name.ends_with(".tmp"), "left {name}");
        }
    }
}

#[test]
fn threads_with_separate_handles_and_one_shared_handle() {
    let d = tempfile::tempdir().unwrap();
    let shared = Ipam::open(config(d.path(), "node3")).unwrap();
    let results: Vec<Vec<(String, Vec<IpAddr>)>> = std::thread::scope(|s| {
        let mut hs = Vec::new();
        for t in 0..8 {
            let dir = d.path().to_path_buf();
            let shared = &shared;
            hs.push(s.spawn(move || {
                let own = Ipam::open(config(&dir, &format!("node{}", t % 2 + 1))).unwrap();
                let mut v = Vec::new();
                for n in 0..50 {
                    let cid = format!("t{t}-{n}");
                    let ipam = if n % 5 == 0 { shared } else { &own };
                    let r = ipam.allocate(&AllocRequest::new(&cid, "eth0")).unwrap();
                    v.push((cid, r.addrs()));
                }
                v
            }));
        }
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut seen = HashSet::new();
    let mut live = HashMap::new();
    for (cid, ips) in results.into_iter().flatten() {
        for ip in &ips {
            assert!(seen.insert(*ip), "duplicate {ip}");
        }
        live.insert(cid, ips);
    }
    assert_eq!(live.len(), 400);
    verify(d.path(), &live);
}

#[test]
fn optimistic_store_with_conflicts_no_duplicates() {
    // MemStore has no lock: concurrent operations conflict on block versions and are re-run,
    // the way they will be over etcd.
    let store = MemStore::new();
    let d = tempfile::tempdir().unwrap();
    let results: Vec<Vec<IpAddr>> = std::thread::scope(|s| {
        let mut hs = Vec::new();
        for t in 0..8 {
            let store = &store;
            let cfg = config(d.path(), &format!("node{}", t % 4 + 1));
            hs.push(s.spawn(move || {
                let ipam = Ipam::with_store(cfg, store);
                let mut v = Vec::new();
                for n in 0..50 {
                    let r = ipam.allocate(&AllocRequest::new(format!("t{t}-{n}"), "eth0")).unwrap();
                    v.extend(r.addrs());
                }
                v
            }));
        }
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut seen = HashSet::new();
    for ip in results.into_iter().flatten() {
        assert!(seen.insert(ip), "duplicate {ip}");
    }
    assert_eq!(seen.len(), 800);
    let ipam = Ipam::with_store(config(d.path(), "x"), &store);
    let st = ipam.snapshot().unwrap();
    st.check_invariants().unwrap();
    assert_eq!(st.allocated_count(), 800);
    println!("MemStore CAS conflicts retried: {}", store.conflicts());
}
