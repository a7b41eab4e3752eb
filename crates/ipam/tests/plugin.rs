//! The knit-ipam binary through the CNI protocol: env + stdin in, JSON out.

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

fn plugin(command: &str, cid: &str, ifname: &str, args: &str, conf: &str) -> (bool, Value) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_knit-ipam"))
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", cid)
        .env("CNI_NETNS", "/var/run/netns/unused")
        .env("CNI_IFNAME", ifname)
        .env("CNI_ARGS", args)
        .env("CNI_PATH", "/nonexistent")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn knit-ipam");
    child.stdin.take().unwrap().write_all(conf.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let v = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text.into()))
    };
    (out.status.success(), v)
}

fn conf(dir: &Path, node: &str, pool: &str) -> String {
    format!(
        r#"{{"cniVersion":"1.0.0","name":"net","type":"knit-routed","ipam":{{"type":"knit-ipam","node":"{node}","dataDir":"{}","pools":[{pool}]}}}}"#,
        dir.display()
    )
}

const OVERLAY: &str = r#"{"name":"overlay","cidr":"10.233.64.0/18","blockSize":26}"#;

#[test]
fn add_is_idempotent_and_del_releases() {
    let dir = tempfile::tempdir().unwrap();
    let c = conf(dir.path(), "node1", OVERLAY);
    let (ok, r1) = plugin("ADD", "c1", "eth0", "", &c);
    assert!(ok, "{r1}");
    assert_eq!(r1["cniVersion"], "1.0.0");
    let (_, r2) = plugin("ADD", "c1", "eth0", "", &c);
    assert_eq!(r1["ips"], r2["ips"], "same (containerID, ifname) → same IP");
    assert!(plugin("CHECK", "c1", "eth0", "", &c).0);
    assert!(plugin("DEL", "c1", "eth0", "", &c).0);
    assert!(plugin("DEL", "c1", "eth0", "", &c).0, "DEL is idempotent");
    assert!(!plugin("CHECK", "c1", "eth0", "", &c).0);
}

#[test]
fn requested_ip_is_honoured_or_refused() {
    let dir = tempfile::tempdir().unwrap();
    let c = conf(dir.path(), "node1", OVERLAY);
    let (ok, r) = plugin("ADD", "c1", "eth0", "IP=10.233.64.9", &c);
    assert!(ok, "{r}");
    assert_eq!(r["ips"][0]["address"], "10.233.64.9/18");
    let (ok, e) = plugin("ADD", "c2", "eth0", "IP=10.233.64.9", &c);
    assert!(!ok);
    assert!(e["code"].as_u64().unwrap() >= 100, "{e}");
    assert!(e["msg"].as_str().unwrap().contains("10.233.64.9"), "{e}");
    let (ok, e) = plugin("ADD", "c3", "eth0", "IP=192.0.2.1", &c);
    assert!(!ok, "{e}");
}

#[test]
fn bad_input_codes() {
    let dir = tempfile::tempdir().unwrap();
    for (pool, code, field) in [
        (r#"{"name":"p","cidr":"10.233.64.0/33"}"#, 7, "cidr"),
        (r#"{"name":"p","cidr":"not-a-cidr"}"#, 7, "cidr"),
        (r#"{"name":"p","cidr":"10.233.64.0/18","blockSize":40}"#, 7, "blockSize"),
        (r#"{"name":"p","cidr":"10.233.64.0/18","blockSize":8}"#, 7, "blockSize"),
        (r#"{"name":"p","cidr":"10.233.64.0/18","blockSize":"big"}"#, 7, "blockSize"),
    ] {
        let (ok, e) = plugin("ADD", "c1", "eth0", "", &conf(dir.path(), "node1", pool));
        assert!(!ok, "{pool}");
        assert_eq!(e["code"], code, "{pool}: {e}");
        assert!(e["msg"].as_str().unwrap().contains(field), "{pool}: {e}");
    }
    let (ok, e) = plugin("ADD", "c1", "eth0", "", "{not json");
    assert!(!ok);
    assert_eq!(e["code"], 6, "{e}");
    // Exhaustion: a /30 has two usable addresses.
    let tiny = conf(dir.path(), "node1", r#"{"name":"tiny","cidr":"10.9.0.0/30","blockSize":30}"#);
    assert!(plugin("ADD", "a", "eth0", "", &tiny).0);
    assert!(plugin("ADD", "b", "eth0", "", &tiny).0);
    let (ok, e) = plugin("ADD", "c", "eth0", "", &tiny);
    assert!(!ok);
    assert!(e["code"].as_u64().unwrap() >= 100, "{e}");
}

#[test]
fn eight_concurrent_plugin_processes_times_fifty_adds() {
    let dir = tempfile::tempdir().unwrap();
    let c = conf(dir.path(), "node1", OVERLAY);
    let handles: Vec<_> = (0..8)
        .map(|w| {
            let c = c.clone();
            std::thread::spawn(move || {
                (0..50)
                    .map(|i| {
                        let (ok, r) = plugin("ADD", &format!("w{w}-c{i}"), "eth0", "", &c);
                        assert!(ok, "{r}");
                        r["ips"][0]["address"].as_str().unwrap().to_string()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all = HashSet::new();
    for h in handles {
        for ip in h.join().unwrap() {
            assert!(all.insert(ip.clone()), "duplicate {ip}");
        }
    }
    assert_eq!(all.len(), 400);
    // 400 addresses need ceil(400/64) = 7 blocks of this node.
    let blocks = knit_ipam::blocks_of(dir.path(), "node1").unwrap();
    assert_eq!(blocks.len(), 7, "{blocks:?}");
}

#[test]
fn gc_releases_everything_not_valid_and_status_works() {
    let dir = tempfile::tempdir().unwrap();
    let base = format!(
        r#""cniVersion":"1.1.0","name":"net","type":"knit-routed","ipam":{{"type":"knit-ipam","node":"node1","dataDir":"{}","pools":[{OVERLAY}]}}"#,
        dir.path().display()
    );
    let add = format!("{{{base}}}");
    for cid in ["keep", "drop1", "drop2"] {
        assert!(plugin("ADD", cid, "eth0", "", &add).0);
    }
    let gc = format!(r#"{{{base},"cni.dev/valid-attachments":[{{"containerID":"keep","ifname":"eth0"}}]}}"#);
    let (ok, e) = plugin("GC", "", "", "", &gc);
    assert!(ok, "{e}");
    assert!(plugin("CHECK", "keep", "eth0", "", &add).0);
    assert!(!plugin("CHECK", "drop1", "eth0", "", &add).0);
    assert!(plugin("STATUS", "", "", "", &add).0);
    // STATUS on an unusable store: code 50.
    let bad = format!(
        r#"{{"cniVersion":"1.1.0","name":"net","type":"x","ipam":{{"type":"knit-ipam","node":"n","dataDir":"/proc/knit-nope","pools":[{OVERLAY}]}}}}"#
    );
    let (ok, e) = plugin("STATUS", "", "", "", &bad);
    assert!(!ok);
    assert_eq!(e["code"], 50, "{e}");
}
