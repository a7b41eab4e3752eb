//! `knit ipam show | release | gc` on both stores (the `knit` binary of this workspace, built
//! by `cargo build --workspace --bins`; the test is skipped with a message when it is missing,
//! and fails then under `CI=true`).

mod etcd_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use etcd_support::Etcd;
use knit_ipam::{AllocRequest, Ipam, IpamConfig, PodRef};
use serde_json::Value;

const POOLS: &str = r#"[{"name":"overlay","cidr":"10.233.64.0/18","blockSize":26},
    {"name":"sts","cidr":"fd00:50::/120","blockSize":124,"fixedIPs":true}]"#;

fn knit_bin() -> Option<PathBuf> {
    // target/debug/deps/etcd_cli-<hash> → target/debug/knit
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.parent()?.join("knit");
    p.exists().then_some(p)
}

fn knit(bin: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(bin).args(args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn cli_suite(store_args: &[&str], ipam_json: &dyn Fn(&str) -> String, bin: &Path) {
    let ipam = |node: &str| Ipam::open(IpamConfig::parse(ipam_json(node).as_bytes()).unwrap()).unwrap();
    let n1 = ipam("node1");
    let n2 = ipam("node2");
    for k in 0..3 {
        n1.allocate(&AllocRequest::new(format!("a{k}"), "eth0")).unwrap();
        n2.allocate(&AllocRequest::new(format!("b{k}"), "eth0")).unwrap();
    }
    let pod = PodRef::new("db", "db-0");
    let fixed = n1.allocate(&AllocRequest::new("s1", "eth0").with_pod(pod.clone())).unwrap().addrs()[1];
    n1.release("s1", "eth0").unwrap();

    let with =
        |extra: &[&str]| -> Vec<String> { extra.iter().chain(store_args.iter()).map(|s| s.to_string()).collect() };
    let run = |extra: &[&str]| {
        let args = with(extra);
        let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        knit(bin, &refs)
    };
    let (ok, out) = run(&["ipam", "show", "--json"]);
    assert!(ok, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["pools"][0]["name"], "overlay");
    assert_eq!(v["pools"][0]["used"], 6);
    assert_eq!(v["pools"][1]["used"], 6);
    assert_eq!(v["pools"][1]["reserved"], 1);
    let (ok, out) = run(&["ipam", "show"]);
    assert!(ok && out.contains("node1") && out.contains("node2"), "{out}");

    // release: one attachment, then the pod's fixed IP.
    let (ok, out) = run(&["ipam", "release", "--container-id", "a0"]);
    assert!(ok && out.contains("released"), "{out}");
    assert!(n1.lookup("a0", "eth0").unwrap().is_none());
    let (ok, out) = run(&["ipam", "release", "--pod", "db/db-0"]);
    assert!(ok && out.contains(&fixed.to_string()), "{out}");
    let (ok, out) = run(&["ipam", "release", "--pod", "nonsense"]);
    assert!(!ok, "{out}");

    // gc --valid: cluster-wide, both nodes.
    let valid = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(valid.path(), r#"[{"containerID":"a1","ifname":"eth0"},{"containerID":"b2","ifname":"eth0"}]"#)
        .unwrap();
    let (ok, out) = run(&["ipam", "gc", "--json", "--valid", valid.path().to_str().unwrap()]);
    assert!(ok, "{out}");
    let rep: Value = serde_json::from_str(&out).unwrap();
    // a0 went already; a2, b0, b1 with a v4 and a v6 address each.
    assert_eq!(rep["released"].as_array().unwrap().len(), 6, "{rep}");
    assert!(n1.lookup("a1", "eth0").unwrap().is_some());
    assert!(n2.lookup("b2", "eth0").unwrap().is_some());
    assert!(n2.lookup("b0", "eth0").unwrap().is_none());
    // Text format of the valid file, and --fixed frees reservations.
    n1.allocate(&AllocRequest::new("s2", "eth0").with_pod(pod.clone())).unwrap();
    n1.release("s2", "eth0").unwrap();
    std::fs::write(valid.path(), "# cid ifname\na1 eth0\n").unwrap();
    let (ok, out) = run(&["ipam", "gc", "--fixed", "--valid", valid.path().to_str().unwrap()]);
    assert!(ok && out.contains("2 released, 1 fixed IPs freed"), "{out}");
    let s = n1.show().unwrap();
    assert_eq!((s.pools[0].used, s.pools[1].used, s.pools[1].reserved), (1, 1, 0));
}

#[test]
fn knit_ipam_cli_on_etcd_and_local() {
    let Some(bin) = knit_bin() else {
        knit_testkit::require::skip("target/debug/knit not built (cargo build --workspace --bins)");
        return;
    };
    // etcd, by flags.
    let etcd = Etcd::start();
    let ep = etcd.endpoint();
    let data = tempfile::tempdir().unwrap();
    let d = data.path().to_path_buf();
    let ep2 = ep.clone();
    let json = move |node: &str| {
        format!(
            r#"{{"type":"knit-ipam","node":"{node}","dataDir":"{}","store":"etcd","etcdEndpoints":["{ep2}"],"pools":{POOLS}}}"#,
            d.join(node).display()
        )
    };
    cli_suite(&["--etcd-endpoints", &ep], &json, &bin);

    // etcd, by a conflist (--config), fresh etcd.
    let etcd2 = Etcd::start();
    let ep = etcd2.endpoint();
    let d = data.path().to_path_buf();
    let ep2 = ep.clone();
    let json = move |node: &str| {
        format!(
            r#"{{"type":"knit-ipam","node":"{node}","dataDir":"{}","store":"etcd","etcdEndpoints":["{ep2}"],"pools":{POOLS}}}"#,
            d.join(node).display()
        )
    };
    let conflist = data.path().join("net.conflist");
    std::fs::write(
        &conflist,
        format!(r#"{{"cniVersion":"1.1.0","name":"net","plugins":[{{"type":"knit-routed","ipam":{}}}]}}"#, json("cli")),
    )
    .unwrap();
    cli_suite(&["--config", conflist.to_str().unwrap()], &json, &bin);

    // The local store, by --data-dir.
    let local = tempfile::tempdir().unwrap();
    let dir = local.path().to_path_buf();
    let json = move |node: &str| {
        format!(r#"{{"type":"knit-ipam","node":"{node}","dataDir":"{}","pools":{POOLS}}}"#, dir.display())
    };
    cli_suite(&["--data-dir", local.path().to_str().unwrap()], &json, &bin);
    // An empty etcd shows no pools.
    let etcd3 = Etcd::start();
    let (ok, out) = knit(&bin, &["ipam", "show", "--etcd-endpoints", &etcd3.endpoint()]);
    assert!(ok && out.contains("no pools"), "{out}");
}
