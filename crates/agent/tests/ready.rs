//! A node turns Ready (its conflist appears in the CNI conf dir) only after the agent's first
//! successful round: registered in etcd, BIRD's configuration and the coordinator's CIDR file
//! written, the cluster settings known. `knit node run` runs in a test namespace against a real
//! etcd in that namespace.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use knit_testkit::etcd::{Etcd, ENDPOINT};
use knit_testkit::{bin, Scratch, TestNet};
use serde_json::Value;

/// Polls `f` until it holds, for at most `limit` (a bound for a busy machine, not a timing claim).
fn wait_until(what: &str, limit: Duration, log: &Path, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; agent log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn registered(tn: &TestNet, node: &str) -> bool {
    let knit = bin("knit");
    let out = tn
        .exec(tn.host(), &[knit.to_str().expect("utf-8"), "cluster", "show", "--etcd-endpoints", ENDPOINT])
        .expect("knit cluster show");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v["nodes"].as_array().is_some_and(|n| n.iter().any(|r| r["name"] == node))
}

#[test]
fn the_conflist_appears_only_after_the_first_successful_reconcile() {
    let tn = TestNet::new("kar").expect("testnet");
    let Some(_etcd) = Etcd::start_in(tn.host()) else { return };
    let dir = Scratch::new("agent-ready");
    let (stage, conf_dir, bird) = (dir.path.join("stage"), dir.path.join("net.d"), dir.path.join("bird"));
    for d in [&stage, &conf_dir, &bird, &dir.path.join("ipam")] {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    // The conflist `knit install --stage-conflist` stages (a local IPAM store here: the agent
    // reads the node's blocks from it).
    let staged = stage.join("10-knit.conflist");
    let conflist = serde_json::json!({
        "cniVersion": "1.0.0",
        "cniVersions": ["1.0.0", "1.1.0"],
        "name": "knit",
        "plugins": [{"type": "knit-routed", "ipam": {"type": "knit-ipam", "node": "n1",
            "dataDir": dir.path.join("ipam"), "pools": [{"name": "overlay", "cidr": "10.244.0.0/16"}]}}],
    });
    std::fs::write(&staged, serde_json::to_string_pretty(&conflist).expect("json")).expect("write");
    let cidr_file = dir.path.join("coordinator.json");
    let log = dir.path.join("agent.log");
    let out = std::fs::File::create(&log).expect("log");
    let mut cmd = Command::new(bin("knit"));
    cmd.args(["node", "run", "--etcd-endpoints", ENDPOINT, "--node", "n1", "--node-ip", "192.0.2.10"])
        .arg("--bird-dir")
        .arg(&bird)
        .arg("--ipam-config")
        .arg(&staged)
        .arg("--conflist")
        .arg(&staged)
        .arg("--cni-conf-dir")
        .arg(&conf_dir)
        .arg("--cidr-file")
        .arg(&cidr_file)
        .args(["--interval-ms", "100", "--lease-ttl", "4"])
        .env("KNIT_LOG", "info")
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log"))
        .stderr(out);
    tn.spawn(tn.host(), &mut cmd).expect("start the agent");
    let installed = conf_dir.join("10-knit.conflist");

    // No cluster settings yet: the agent registers, writes BIRD's configuration and the CIDR
    // file, and says what it waits for, round after round; the node is not Ready.
    wait_until("the node's registration", Duration::from_secs(30), &log, || registered(&tn, "n1"));
    wait_until("BIRD's configuration and the CIDR file", Duration::from_secs(30), &log, || {
        bird.join("bird.conf").exists() && cidr_file.exists()
    });
    wait_until("two rounds that are not ready", Duration::from_secs(30), &log, || {
        std::fs::read_to_string(&log).unwrap_or_default().matches("not ready").count() >= 2
    });
    assert!(!installed.exists(), "conflist installed before a successful reconcile");
    assert_eq!(std::fs::read_dir(&conf_dir).expect("conf dir").count(), 0, "nothing else in the conf dir either");

    // The operator sets the cluster's CIDRs: the next round succeeds and the node turns Ready.
    let knit = bin("knit");
    let set = tn
        .exec_ok(
            tn.host(),
            &[knit.to_str().expect("utf-8"), "cluster", "set", "--etcd-endpoints", ENDPOINT]
                .into_iter()
                .chain(["--overlay-cidr", "10.244.0.0/16", "--service-cidr", "10.96.0.0/12"])
                .collect::<Vec<_>>(),
        )
        .expect("knit cluster set");
    assert!(set.status.success());
    wait_until("the installed conflist", Duration::from_secs(30), &log, || installed.exists());
    assert_eq!(std::fs::read(&installed).expect("read"), std::fs::read(&staged).expect("read"));
    let cidrs: Value = serde_json::from_slice(&std::fs::read(&cidr_file).expect("read")).expect("json");
    assert_eq!(cidrs["overlayPodCIDR"], serde_json::json!(["10.244.0.0/16"]), "{cidrs}");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(text.contains("first successful reconcile"), "{text}");
}
