//! Scale and crash safety through the knit-ipam plugin binary itself (one process per CNI call,
//! as a runtime runs it):
//!
//! - 200 pods on one node get 200 distinct IPs from exactly ceil(200/64) = 4 blocks, and keep
//!   them across DEL (blocks stay claimed, no new block for the next 200);
//! - plugin processes SIGKILLed at arbitrary points of an ADD lose no acknowledged allocation
//!   and leave no duplicate; the store is usable afterwards and re-ADDs are idempotent.
//!
//! (8 concurrent plugin processes × 50 ADDs: `plugin.rs`; SIGKILL of library writers in
//! the middle of streams of allocations and releases: `concurrency.rs`.)

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::net::IpAddr;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use knit_ipam::{Ipam, IpamConfig};
use serde_json::Value;

const OVERLAY: &str = r#"{"name":"overlay","cidr":"10.233.64.0/18","blockSize":26}"#;

fn conf(dir: &Path, node: &str) -> String {
    format!(
        r#"{{"cniVersion":"1.0.0","name":"net","type":"knit-routed","ipam":{{"type":"knit-ipam","node":"{node}","dataDir":"{}","pools":[{OVERLAY}]}}}}"#,
        dir.display()
    )
}

fn spawn(command: &str, cid: &str, conf: &str) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_knit-ipam"))
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", cid)
        .env("CNI_NETNS", "/var/run/netns/unused")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_ARGS", "")
        .env("CNI_PATH", "/nonexistent")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn knit-ipam");
    // The child may already be dead (killed): a broken pipe is fine then.
    let _ = child.stdin.take().unwrap().write_all(conf.as_bytes());
    child
}

/// The address of a successful ADD, or None.
fn added_ip(out: &Output) -> Option<IpAddr> {
    if !out.status.success() {
        return None;
    }
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    v["ips"][0]["address"].as_str()?.parse::<IpNet>().ok().map(|n| n.addr())
}

fn add(cid: &str, conf: &str) -> IpAddr {
    let out = spawn("ADD", cid, conf).wait_with_output().unwrap();
    added_ip(&out).unwrap_or_else(|| {
        panic!("ADD {cid} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    })
}

fn del(cid: &str, conf: &str) {
    let out = spawn("DEL", cid, conf).wait_with_output().unwrap();
    assert!(out.status.success(), "DEL {cid}: {}", String::from_utf8_lossy(&out.stdout));
}

fn checker(dir: &Path) -> Ipam {
    let json = format!(r#"{{"node":"checker","dataDir":"{}","pools":[{OVERLAY}]}}"#, dir.display());
    Ipam::open(IpamConfig::parse(json.as_bytes()).unwrap()).unwrap()
}

#[test]
fn two_hundred_pods_through_the_plugin_use_four_blocks() {
    let d = tempfile::tempdir().unwrap();
    let c = conf(d.path(), "node1");
    let t = Instant::now();
    let mut ips: HashMap<String, IpAddr> = HashMap::new();
    for n in 0..200 {
        let cid = format!("pod-{n}");
        let ip = add(&cid, &c);
        ips.insert(cid, ip);
    }
    let per_add = t.elapsed() / 200;
    let distinct: HashSet<IpAddr> = ips.values().copied().collect();
    assert_eq!(distinct.len(), 200, "duplicate addresses");

    let blocks = knit_ipam::blocks_of(d.path(), "node1").unwrap();
    assert_eq!(blocks.len(), 200usize.div_ceil(64), "{blocks:?}");
    assert!(blocks.iter().all(|b| b.prefix_len() == 26), "{blocks:?}");
    for ip in &distinct {
        assert!(blocks.iter().any(|b| b.contains(ip)), "{ip} is outside node1's blocks {blocks:?}");
    }
    let s = knit_ipam::show(d.path()).unwrap();
    assert_eq!(s.pools[0].used, 200);
    assert_eq!(s.pools[0].nodes["node1"].blocks, blocks);
    checker(d.path()).snapshot().unwrap().check_invariants().unwrap();

    // ADD again: the same address for every pod (keyed by containerID, ifname).
    for n in (0..200).step_by(17) {
        let cid = format!("pod-{n}");
        assert_eq!(add(&cid, &c), ips[&cid], "{cid} changed address on a repeated ADD");
    }

    // DEL everything: nothing used, the blocks stay this node's; the next 200 pods fit in them.
    for n in 0..200 {
        del(&format!("pod-{n}"), &c);
    }
    let s = knit_ipam::show(d.path()).unwrap();
    assert_eq!(s.pools[0].used, 0);
    assert_eq!(knit_ipam::blocks_of(d.path(), "node1").unwrap(), blocks);
    let mut again = HashSet::new();
    for n in 0..200 {
        assert!(again.insert(add(&format!("new-{n}"), &c)));
    }
    assert_eq!(knit_ipam::blocks_of(d.path(), "node1").unwrap(), blocks, "re-used blocks, no new claim");
    println!("knit-ipam plugin: {per_add:?} per ADD process (200 pods)");
}

#[test]
fn sigkilled_plugin_processes_lose_no_acknowledged_allocation() {
    let d = tempfile::tempdir().unwrap();
    let c = conf(d.path(), "node1");
    // How long one ADD process takes here, to spread the kills over its whole life.
    let t = Instant::now();
    for n in 0..10 {
        add(&format!("warm-{n}"), &c);
    }
    let life = (t.elapsed() / 10).max(Duration::from_micros(500));

    // Four workers at once, each starting ADDs and SIGKILLing them after 0..3×life (they run
    // slower side by side, so some finish, some die before, during or after their store write).
    let workers = 4;
    let per_worker = 60;
    let results: Vec<Vec<(String, Option<IpAddr>)>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..workers)
            .map(|w| {
                let c = &c;
                s.spawn(move || {
                    let mut v = Vec::new();
                    for n in 0..per_worker {
                        let cid = format!("k{w}-{n}");
                        let mut child = spawn("ADD", &cid, c);
                        // A deterministic spread of delays over 0..3×life.
                        let frac = ((n * 37 + w * 11) % 64) as u32;
                        std::thread::sleep(life * 3 * frac / 64);
                        let _ = child.kill(); // SIGKILL; fails only when it has been reaped
                        let out = child.wait_with_output().unwrap();
                        v.push((cid, added_ip(&out)));
                    }
                    v
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let all: Vec<(String, Option<IpAddr>)> = results.into_iter().flatten().collect();
    let acked: HashMap<&str, IpAddr> = all.iter().filter_map(|(cid, ip)| ip.map(|ip| (cid.as_str(), ip))).collect();
    let killed = all.len() - acked.len();
    assert!(killed > 0, "no ADD was killed: the test proved nothing");
    assert!(!acked.is_empty(), "every ADD was killed: the test proved little");

    // After the kills: the store loads, its invariants hold, every acknowledged ADD is there.
    let ipam = checker(d.path());
    let st = ipam.snapshot().unwrap();
    st.check_invariants().unwrap();
    for (cid, ip) in &acked {
        let got: Vec<IpAddr> = st.lookup(cid, "eth0").iter().map(|g| g.ip).collect();
        assert_eq!(got, vec![*ip], "{cid} lost or changed after the kills");
    }
    let distinct: HashSet<&IpAddr> = acked.values().collect();
    assert_eq!(distinct.len(), acked.len(), "an address was acknowledged twice");
    let written_unacked = all.iter().filter(|(cid, ip)| ip.is_none() && !st.lookup(cid, "eth0").is_empty()).count();
    println!(
        "{} ADDs: {} acknowledged, {killed} killed before answering, {written_unacked} of those after their write (process life ~{life:?})",
        all.len(),
        acked.len()
    );

    // Every ADD re-run (as the runtime retries a failed one) succeeds: acknowledged ones get
    // their address back, killed ones get one (their own if it had been written); all distinct.
    let mut seen = HashSet::new();
    for (cid, _) in &all {
        let ip = add(cid, &c);
        if let Some(want) = acked.get(cid.as_str()) {
            assert_eq!(ip, *want, "{cid} changed address on retry");
        }
        assert!(seen.insert(ip), "{ip} handed out twice");
    }
    let st = ipam.snapshot().unwrap();
    st.check_invariants().unwrap();
    assert_eq!(st.allocated_count(), all.len() + 10);
    // No temporary file outlives the next locked operation.
    ipam.release("nothing", "eth0").unwrap();
    for e in std::fs::read_dir(d.path().join("pools").join("overlay")).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!name.ends_with(".tmp"), "left {name}");
    }
}
