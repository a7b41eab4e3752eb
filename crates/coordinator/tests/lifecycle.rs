//! knit-coordinator's lifecycle with real namespaces: a failed ADD rolls back everything it made
//! (the pod's nf_tables table included), a DEL without prevResult (what a runtime sends after a
//! failed or killed ADD) removes everything its ADD may have made, DEL succeeds whatever
//! CNI_NETNS points at, host veth names cannot clash between two live pods and a veth is never
//! deleted unless it carries this container's mark, and a mode that needs the cluster CIDRs
//! fails loudly (code 11) without them.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use knit_host::Netns;
use knit_testkit::{
    bin, cni_path, ip, links_with_prefix, tcp_echo, tcp_probe, Cni, CniOutcome, Fabric, Scratch, TestNet,
};
use serde_json::Value;

const NODE_IP: &str = "172.16.1.2";
const PORT: u16 = 8080;

fn node<'a>(tn: &'a TestNet) -> (Fabric<'a>, Netns) {
    let fabric = Fabric::new(tn, &["172.16.0.1/16"]);
    let node = fabric.node("n1", &format!("{NODE_IP}/16"), "172.16.0.1");
    (fabric, node)
}

/// The coordinator's plugin object; `extra` is spliced in (leading comma).
fn coordinator(mode: &str, extra: &str) -> String {
    format!(
        r#"{{"type":"knit-coordinator","mode":"{mode}","overlayPodCIDR":["10.233.64.0/18"],"serviceCIDR":["10.233.0.0/18"],"hijackCIDR":[]{extra}}}"#
    )
}

fn macvlan(addr: &str) -> String {
    format!(
        r#"{{"type":"macvlan","master":"eth0","mode":"bridge","ipam":{{"type":"static","addresses":[{{"address":"{addr}","gateway":"172.16.0.1"}}],"routes":[{{"dst":"0.0.0.0/0","gw":"172.16.0.1"}}]}}}}"#
    )
}

fn conflist(dir: &Scratch, file: &str, plugins: &[String]) -> PathBuf {
    dir.write(file, &format!(r#"{{"cniVersion":"1.0.0","name":"lifecycle","plugins":[{}]}}"#, plugins.join(",")))
}

/// Output of `cmd` in `ns`, or an empty string when it fails (a table that does not exist).
fn out(tn: &TestNet, ns: &Netns, argv: &[&str]) -> String {
    tn.exec(ns, argv).map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
}

/// Nothing of the coordinator's is left on the node or in the pod: no veth pair, no table-500
/// route, no pod rule or route of its tables, no cluster route, no nf_tables table.
fn assert_nothing_left(tn: &TestNet, node: &Netns, pod: &Netns, what: &str) {
    assert!(
        links_with_prefix(node, "veth").is_empty(),
        "{what}: host veth left: {:?}",
        links_with_prefix(node, "veth")
    );
    assert!(links_with_prefix(pod, "veth0").is_empty(), "{what}: veth0 left");
    let host_routes = ip(tn, node, &["route", "show", "table", "all"]);
    assert!(host_routes.lines().all(|l| !l.contains("table 500")), "{what}: host table 500:\n{host_routes}");
    let rules = ip(tn, pod, &["rule"]);
    assert!(!rules.contains("lookup 10"), "{what}: pod rules:\n{rules}");
    assert!(!rules.contains("fwmark"), "{what}: pod rules:\n{rules}");
    let v6rules = ip(tn, pod, &["-6", "rule"]);
    assert!(!v6rules.contains("lookup 10") && !v6rules.contains("fwmark"), "{what}: pod v6 rules:\n{v6rules}");
    let routes = ip(tn, pod, &["route", "show", "table", "all"]);
    assert!(
        !routes.contains("10.233.64.0/18") && !routes.contains("table 100") && !routes.contains(NODE_IP),
        "{what}: pod routes:\n{routes}"
    );
    let tables = out(tn, pod, &["nft", "list", "tables"]);
    assert!(!tables.contains("knit-coordinator"), "{what}: pod nf_tables: {tables}");
}

/// Runs the coordinator binary itself in `node` for `verb`, with `conf` (a whole plugin
/// configuration, prevResult included or not) on stdin: what a runtime does.
fn coord(tn: &TestNet, node: &Netns, verb: &str, netns: &str, ifname: &str, cid: &str, conf: &Value) -> CniOutcome {
    let _ = tn;
    let mut cmd = Command::new(bin("knit-coordinator"));
    cmd.env_clear()
        .env("CNI_COMMAND", verb)
        .env("CNI_CONTAINERID", cid)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", ifname)
        .env("CNI_PATH", cni_path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = node.spawn(&mut cmd).expect("spawn knit-coordinator");
    child.stdin.take().expect("stdin").write_all(conf.to_string().as_bytes()).expect("write stdin");
    let o = child.wait_with_output().expect("wait for knit-coordinator");
    let stdout = String::from_utf8_lossy(&o.stdout);
    let json =
        if stdout.trim().is_empty() { Value::Null } else { serde_json::from_str(&stdout).unwrap_or(Value::Null) };
    CniOutcome { ok: o.status.success(), json, stderr: String::from_utf8_lossy(&o.stderr).into_owned() }
}

fn netns_path(ns: &Netns) -> String {
    ns.path().expect("named netns").display().to_string()
}

// ---------------------------------------------------------------------------------------------
// Failed ADD: rollback

#[test]
fn failed_add_with_an_unreachable_policy_route_gateway_leaves_nothing() {
    let tn = TestNet::new("kl").unwrap();
    let dir = Scratch::new("coord-lc-pr");
    let (_fabric, node) = node(&tn);
    let pod = tn.pod("p").unwrap();
    let coord = coordinator("underlay", r#","policyRoutes":[{"dst":"192.0.2.0/24","gw":"198.51.100.1"}]"#);
    let list = conflist(&dir, "pr.conflist", &[macvlan("172.16.100.10/16"), coord]);
    let cni = Cni::new(&tn, &node, list, dir.path.join("state"));
    let add = cni.add(&pod, "eth0", "cid-pr", "");
    assert!(!add.ok, "ADD with an unreachable policy-route gateway should fail");
    assert_nothing_left(&tn, &node, &pod, "after the failed ADD");
    // The runtime's DEL (no cached result: no prevResult) succeeds and removes macvlan's eth0.
    let del = cni.del(&pod, "eth0", "cid-pr", "");
    assert!(del.ok, "{} {}", del.json, del.stderr);
    assert_nothing_left(&tn, &node, &pod, "after DEL");
    assert_eq!(links_with_prefix(&pod, ""), vec!["lo".to_string()]);
}

#[test]
fn failed_add_with_a_prev_result_ip_not_on_the_interface_leaves_nothing() {
    let tn = TestNet::new("kl").unwrap();
    let dir = Scratch::new("coord-lc-ip");
    let (_fabric, node) = node(&tn);
    let pod = tn.pod("p").unwrap();
    // The pod's eth0 holds 172.16.100.10; the result handed to the coordinator says .99.
    tn.link(&node, "hx0", &pod, "eth0").unwrap();
    ip(&tn, &pod, &["addr", "add", "172.16.100.10/16", "dev", "eth0"]);
    let liar = r#"{"type":"knit-testplugin","ip":"172.16.100.99/16","gateway":"172.16.0.1"}"#.to_string();
    let list = conflist(&dir, "ip.conflist", &[liar, coordinator("underlay", "")]);
    let cni = Cni::new(&tn, &node, list, dir.path.join("state"));
    let add = cni.add(&pod, "eth0", "cid-ip", "");
    assert!(!add.ok, "ADD with a prevResult IP that is not on eth0 should fail: {}", add.json);
    assert_nothing_left(&tn, &node, &pod, "after the failed ADD");
    let del = cni.del(&pod, "eth0", "cid-ip", "");
    assert!(del.ok, "{} {}", del.json, del.stderr);
    assert_nothing_left(&tn, &node, &pod, "after DEL");
}

// ---------------------------------------------------------------------------------------------
// DEL without prevResult

#[test]
fn del_without_prev_result_removes_everything_add_made() {
    let tn = TestNet::new("kl").unwrap();
    let dir = Scratch::new("coord-lc-noprev");
    let (_fabric, node) = node(&tn);
    let pod = tn.pod("p").unwrap();
    let list = conflist(&dir, "u.conflist", &[macvlan("172.16.100.10/16"), coordinator("underlay", "")]);
    let add = Cni::new(&tn, &node, list.clone(), dir.path.join("state")).add(&pod, "eth0", "cid-np", "");
    assert!(add.ok, "{} {}", add.json, add.stderr);
    assert!(out(&tn, &pod, &["nft", "list", "tables"]).contains("knit-coordinator"));
    assert!(ip(&tn, &pod, &["rule"]).contains("fwmark 0x1 lookup 100"));
    // A runtime that lost its cache (or whose ADD was killed) sends DEL without prevResult.
    let del = Cni::new(&tn, &node, list, dir.path.join("no-cache")).del(&pod, "eth0", "cid-np", "");
    assert!(del.ok, "{} {}", del.json, del.stderr);
    assert_nothing_left(&tn, &node, &pod, "after DEL without prevResult");
    assert_eq!(links_with_prefix(&pod, ""), vec!["lo".to_string()]);
}

#[test]
fn del_succeeds_whatever_cni_netns_points_at() {
    let tn = TestNet::new("kl").unwrap();
    let dir = Scratch::new("coord-lc-netns");
    let (_fabric, node) = node(&tn);
    let pod = tn.pod("p").unwrap();
    let stale = dir.write("stale-netns", ""); // what a bind mount leaves once unmounted
    let not_a_dir = dir.path.join("sub");
    std::fs::create_dir_all(&not_a_dir).unwrap();
    let cases: Vec<(&str, String)> = vec![
        ("present (empty)", netns_path(&pod)),
        ("empty CNI_NETNS", String::new()),
        ("gone", dir.path.join("no-such-netns").display().to_string()),
        ("stale bind-mount file", stale.display().to_string()),
        ("a directory", not_a_dir.display().to_string()),
        ("another kind of namespace", "/proc/self/ns/uts".to_string()),
    ];
    let prev: Value = serde_json::json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "sandbox": "x"}],
        "ips": [{"interface": 0, "address": "172.16.100.10/16", "gateway": "172.16.0.1"}],
    });
    for (what, netns) in &cases {
        for ifname in ["eth0", "net1"] {
            for with_prev in [false, true] {
                let mut conf: Value = serde_json::from_str(&coordinator("auto", "")).unwrap();
                conf["cniVersion"] = "1.0.0".into();
                conf["name"] = "lifecycle".into();
                if with_prev {
                    let mut p = prev.clone();
                    p["interfaces"][0]["name"] = ifname.into();
                    conf["prevResult"] = p;
                }
                let del = coord(&tn, &node, "DEL", netns, ifname, "cid-netns", &conf);
                assert!(
                    del.ok,
                    "DEL {ifname} with the netns {what} (prevResult: {with_prev}): {} {}",
                    del.json, del.stderr
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Host veth names and ownership

#[test]
fn host_veths_of_containers_sharing_a_prefix_do_not_clash() {
    let tn = TestNet::new("kl").unwrap();
    let dir = Scratch::new("coord-lc-names");
    let (_fabric, node) = node(&tn);
    // Two container IDs with the same first 11 characters.
    let pods = [("a", "0123456789abcdef-a", "172.16.100.11"), ("b", "0123456789abcdef-b", "172.16.100.12")];
    let mut nss = Vec::new();
    for (name, cid, addr) in pods {
        let pod = tn.pod(name).unwrap();
        let list =
            conflist(&dir, &format!("{name}.conflist"), &[macvlan(&format!("{addr}/16")), coordinator("underlay", "")]);
        let add = Cni::new(&tn, &node, list.clone(), dir.path.join("state")).add(&pod, "eth0", cid, "");
        assert!(add.ok, "ADD {name}: {} {}", add.json, add.stderr);
        tcp_echo(&pod, SocketAddr::new(addr.parse().unwrap(), PORT));
        nss.push((pod, list, cid, addr));
    }
    let veths = links_with_prefix(&node, "veth");
    assert_eq!(veths.len(), 2, "one host veth per pod: {veths:?}");
    for (pod, _, cid, addr) in &nss {
        // The node reaches both pods (their veth pairs and table-500 routes are both there) …
        tcp_probe(&node, SocketAddr::new(addr.parse().unwrap(), PORT))
            .unwrap_or_else(|e| panic!("node -> {addr}: {e}"));
        // … and each host veth carries its container's mark.
        let name = knit_coordinator::plan::host_veth_name(cid);
        assert!(name.starts_with("veth") && name.len() <= 15, "{name}");
        let shown = ip(&tn, &node, &["-d", "link", "show", &name]);
        assert!(shown.contains(&format!("alias {cid}")), "{shown}");
        let _ = pod;
    }
    // DEL of one leaves the other's veth.
    let (pod_a, list_a, cid_a, _) = &nss[0];
    let del = Cni::new(&tn, &node, list_a.clone(), dir.path.join("state")).del(pod_a, "eth0", cid_a, "");
    assert!(del.ok, "{} {}", del.json, del.stderr);
    assert_eq!(links_with_prefix(&node, "veth"), vec![knit_coordinator::plan::host_veth_name(nss[1].2)]);
    let (_, _, _, addr_b) = &nss[1];
    tcp_probe(&node, SocketAddr::new(addr_b.parse().unwrap(), PORT)).unwrap_or_else(|e| panic!("node -> b: {e}"));
}

#[test]
fn a_veth_of_another_owner_is_never_deleted() {
    let tn = TestNet::new("kl").unwrap();
    let dir = Scratch::new("coord-lc-owner");
    let (_fabric, node) = node(&tn);
    let pod = tn.pod("p").unwrap();
    let other = tn.pod("other").unwrap();
    let cid = "cid-owner";
    let name = knit_coordinator::plan::host_veth_name(cid);
    // A veth of that name that is someone else's (no mark, or another container's).
    tn.link(&node, &name, &other, "eth0").unwrap();
    let list = conflist(&dir, "o.conflist", &[macvlan("172.16.100.10/16"), coordinator("underlay", "")]);
    let cni = Cni::new(&tn, &node, list, dir.path.join("state"));
    for mark in [None, Some("someone-else")] {
        if let Some(m) = mark {
            ip(&tn, &node, &["link", "set", &name, "alias", m]);
        }
        let add = cni.add(&pod, "eth0", cid, "");
        assert!(!add.ok, "ADD must not take over a veth of another owner ({mark:?})");
        assert_eq!(add.err_code(), 11, "{}", add.json);
        assert!(add.json["msg"].as_str().unwrap_or("").contains(&name), "{}", add.json);
        assert_eq!(links_with_prefix(&node, &name), vec![name.clone()], "the other owner's veth is gone");
        assert_eq!(links_with_prefix(&other, "eth0"), vec!["eth0".to_string()]);
        let del = cni.del(&pod, "eth0", cid, "");
        assert!(del.ok, "{} {}", del.json, del.stderr);
        assert_eq!(links_with_prefix(&node, &name), vec![name.clone()], "DEL deleted another owner's veth");
    }
}

// ---------------------------------------------------------------------------------------------
// Cluster CIDRs

#[test]
fn a_mode_that_needs_the_cluster_cidrs_fails_loudly_without_them() {
    let tn = TestNet::new("kl").unwrap();
    let dir = Scratch::new("coord-lc-cidr");
    let (_fabric, node) = node(&tn);
    let missing = dir.path.join("coordinator.json");
    let coord = format!(r#"{{"type":"knit-coordinator","mode":"underlay","cidrFile":"{}"}}"#, missing.display());
    let list = conflist(&dir, "c.conflist", &[macvlan("172.16.100.10/16"), coord]);
    let pod = tn.pod("p").unwrap();
    let cni = Cni::new(&tn, &node, list, dir.path.join("state"));
    let add = cni.add(&pod, "eth0", "cid-cidr", "");
    assert_eq!(add.err_code(), 11, "{} {}", add.json, add.stderr);
    let msg = add.json["msg"].as_str().unwrap_or("");
    assert!(msg.contains(&missing.display().to_string()) && msg.contains("knit cluster set"), "{msg}");
    assert_nothing_left(&tn, &node, &pod, "after the failed ADD");
    assert!(cni.del(&pod, "eth0", "cid-cidr", "").ok);

    // Once the agent has written the file, the same configuration works.
    std::fs::write(&missing, r#"{"overlayPodCIDR":["10.233.64.0/18"],"serviceCIDR":["10.233.0.0/18"]}"#).unwrap();
    let pod2 = tn.pod("p2").unwrap();
    let add = cni.add(&pod2, "eth0", "cid-cidr2", "");
    assert!(add.ok, "{} {}", add.json, add.stderr);
    assert!(ip(&tn, &pod2, &["route"]).contains("10.233.64.0/18 via 172.16.1.2 dev veth0"));
    assert!(cni.del(&pod2, "eth0", "cid-cidr2", "").ok);

    // A mode that installs no cluster routes does not need them.
    std::fs::remove_file(&missing).unwrap();
    let coord = format!(
        r#"{{"type":"knit-coordinator","mode":"underlay","tunePodRoutes":false,"cidrFile":"{}"}}"#,
        missing.display()
    );
    let list = conflist(&dir, "c2.conflist", &[macvlan("172.16.100.10/16"), coord]);
    let pod3 = tn.pod("p3").unwrap();
    let cni = Cni::new(&tn, &node, list, dir.path.join("state"));
    let add = cni.add(&pod3, "eth0", "cid-cidr3", "");
    assert!(add.ok, "tunePodRoutes false needs no cluster CIDRs: {} {}", add.json, add.stderr);
    assert!(cni.del(&pod3, "eth0", "cid-cidr3", "").ok);
}

#[test]
fn del_of_an_overlay_mode_nic_without_prev_result_removes_what_its_add_made() {
    let tn = TestNet::new("kl").unwrap();
    let dir = Scratch::new("coord-lc-ovl");
    let (_fabric, node) = node(&tn);
    let pod = tn.pod("m").unwrap();
    let routed = format!(
        r#"{{"type":"knit-routed","mtu":1480,"ipam":{{"type":"host-local","dataDir":"{}","ranges":[[{{"subnet":"10.233.64.0/26"}}]]}}}}"#,
        dir.path.join("ipam").display()
    );
    let eth0 = conflist(&dir, "eth0.conflist", &[routed]);
    let net1_macvlan = r#"{"type":"macvlan","master":"eth0","mode":"bridge","ipam":{"type":"static","addresses":[{"address":"172.16.100.40/16","gateway":"172.16.0.1"}]}}"#;
    let net1 = conflist(&dir, "net1.conflist", &[net1_macvlan.to_string(), coordinator("auto", "")]);
    let state = dir.path.join("state");
    let add = Cni::new(&tn, &node, eth0.clone(), state.clone()).add(&pod, "eth0", "cid-m", "");
    assert!(add.ok, "{} {}", add.json, add.stderr);
    let add = Cni::new(&tn, &node, net1.clone(), state.clone()).add(&pod, "net1", "cid-m", "");
    assert!(add.ok, "{} {}", add.json, add.stderr);
    assert!(ip(&tn, &pod, &["rule"]).contains("lookup 101"));
    assert!(ip(&tn, &node, &["route", "show", "table", "500"]).contains("172.16.100.40 dev cali"));
    // DEL of net1 without prevResult (a runtime that lost its cache).
    let del = Cni::new(&tn, &node, net1, dir.path.join("no-cache")).del(&pod, "net1", "cid-m", "");
    assert!(del.ok, "{} {}", del.json, del.stderr);
    let rules = ip(&tn, &pod, &["rule"]);
    assert!(!rules.contains("lookup 10"), "{rules}");
    let routes = ip(&tn, &pod, &["route", "show", "table", "all"]);
    assert!(!routes.contains("table 101") && !routes.contains("table 100") && !routes.contains(NODE_IP), "{routes}");
    assert!(routes.contains("default via 169.254.1.1 dev eth0"), "eth0's own routes stay: {routes}");
    let t500 = ip(&tn, &node, &["route", "show", "table", "all"]);
    assert!(t500.lines().all(|l| !l.contains("table 500")), "{t500}");
    let del = Cni::new(&tn, &node, eth0, state).del(&pod, "eth0", "cid-m", "");
    assert!(del.ok, "{} {}", del.json, del.stderr);
    assert_nothing_left(&tn, &node, &pod, "after both DELs");
}
