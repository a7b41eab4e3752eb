//! knit-routed chained with knit-ipam, through the real CNI path (`knit cni` running the
//! conflist inside a node namespace), with real namespaces and packets:
//!
//! - two "nodes" sharing one knit-ipam dataDir get different blocks; `knit node blackholes`
//!   installs their blackhole routes (idempotently); with static block routes between the nodes
//!   pods reach each other on one node and across nodes by TCP, UDP and ICMP, and proxy ARP
//!   answers with ee:ee:ee:ee:ee:ee;
//! - bad input returns the right CNI error code and leaves no interface and no allocation;
//! - a requested IP (`CNI_ARGS IP=`) is honoured, or refused with a clear error.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use knit_host::Netns;
use knit_testkit::{
    bin, ip, links_with_prefix, ping, result_ip, tcp_echo, tcp_probe, udp_echo, udp_probe, Cni, CniOutcome, Fabric,
    Scratch, TestNet,
};
use serde_json::Value;

const OVERLAY: &str = r#"[{"name":"overlay","cidr":"10.233.64.0/18","blockSize":26}]"#;

/// A conflist chaining knit-routed with knit-ipam; `ipam_extra` is spliced into the ipam object
/// (it must start with a comma when not empty), `pools` is the raw `pools` value.
fn conflist(dir: &Scratch, file: &str, node: &str, data: &Path, pools: &str, ipam_extra: &str) -> PathBuf {
    dir.write(
        file,
        &format!(
            r#"{{"cniVersion":"1.0.0","name":"k8s-pod-network","plugins":[{{"type":"knit-routed","mtu":1480,"nodename":"{node}",
                "ipam":{{"type":"knit-ipam","node":"{node}","dataDir":"{}","pools":{pools}{ipam_extra}}}}}]}}"#,
            data.display()
        ),
    )
}

fn pod_args(name: &str) -> String {
    format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={name}")
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

/// Addresses held by containers in the store (0 when the store does not exist).
fn used(data: &Path) -> u128 {
    knit_ipam::show(data).unwrap().pools.iter().map(|p| p.used).sum()
}

/// Runs the `knit` binary with `args` inside `ns` and returns its stdout; panics on failure.
fn knit(tn: &TestNet, ns: &Netns, args: &[&str]) -> String {
    let knit = bin("knit");
    let mut argv = vec![knit.to_str().unwrap()];
    argv.extend_from_slice(args);
    let out = tn.exec_ok(ns, &argv).unwrap_or_else(|e| panic!("knit {}: {e}", args.join(" ")));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The blackhole routes of `ns`, one destination per entry.
fn blackholes(tn: &TestNet, ns: &Netns) -> Vec<String> {
    ip(tn, ns, &["-4", "route", "show", "type", "blackhole"])
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
        .collect()
}

/// One ARP request from the pod's eth0 for `dst`; the replies as printed (lowercase).
/// Works with Debian's `arping` (Habets) and with iputils' `arping`: both take -c, -w, -I.
fn arping(tn: &TestNet, pod: &Netns, dst: &str) -> String {
    let out = tn.exec(pod, &["arping", "-c", "1", "-w", "2", "-I", "eth0", dst]).unwrap();
    String::from_utf8_lossy(&out.stdout).to_lowercase()
}

/// The failed outcome's code, after checking it failed with a non-empty message.
fn failed(out: &CniOutcome, what: &str) -> u64 {
    assert!(!out.ok, "{what}: expected a CNI error, got {}", out.json);
    assert!(out.json["msg"].as_str().is_some_and(|m| !m.is_empty()), "{what}: no msg in {}", out.json);
    out.err_code()
}

/// Nothing of a failed ADD is left: no host veth on the node, no `ifname` in the pod.
fn assert_no_interfaces(node: &Netns, pod: &Netns, what: &str) {
    assert!(
        links_with_prefix(node, "cali").is_empty(),
        "{what}: left a host veth {:?}",
        links_with_prefix(node, "cali")
    );
    assert!(links_with_prefix(pod, "eth").is_empty(), "{what}: left {:?} in the pod", links_with_prefix(pod, "eth"));
}

#[test]
fn two_nodes_share_a_store_get_own_blocks_and_pods_talk() {
    let tn = TestNet::new("kri").unwrap();
    let dir = Scratch::new("routed-ipam-2n");
    let data = dir.path.join("ipam");
    let fabric = Fabric::new(&tn, &["172.16.0.1/16"]);
    let node1 = fabric.node("n1", "172.16.1.2/16", "172.16.0.1");
    let node2 = fabric.node("n2", "172.16.1.3/16", "172.16.0.1");
    let conf1 = conflist(&dir, "n1.conflist", "node1", &data, OVERLAY, "");
    let conf2 = conflist(&dir, "n2.conflist", "node2", &data, OVERLAY, "");
    let cni1 = Cni::new(&tn, &node1, conf1.clone(), dir.path.join("s1"));
    let cni2 = Cni::new(&tn, &node2, conf2.clone(), dir.path.join("s2"));

    let a = tn.pod("a").unwrap();
    let b = tn.pod("b").unwrap();
    let c = tn.pod("c").unwrap();
    let d = tn.pod("d").unwrap();
    let ra = cni1.add(&a, "eth0", "cid-a", &pod_args("a")).unwrap();
    let rc = cni2.add(&c, "eth0", "cid-c", &pod_args("c")).unwrap();
    let rb = cni1.add(&b, "eth0", "cid-b", &pod_args("b")).unwrap();
    let rd = cni2.add(&d, "eth0", "cid-d", &pod_args("d")).unwrap();
    let (ipa, ipb, ipc, ipd) = (result_ip(&ra), result_ip(&rb), result_ip(&rc), result_ip(&rd));

    // The chained result: host veth + pod interface, the pod IP as /32 on the pod interface.
    assert_eq!(ra["interfaces"].as_array().unwrap().len(), 2, "{ra}");
    assert!(ra["interfaces"][0]["name"].as_str().unwrap().starts_with("cali"), "{ra}");
    assert_eq!(ra["interfaces"][0]["mac"], "ee:ee:ee:ee:ee:ee");
    assert_eq!(ra["ips"][0]["interface"], 1);
    assert_eq!(ra["ips"][0]["address"], format!("{ipa}/32"));
    let pod_addrs = ip(&tn, &a, &["-4", "-o", "addr", "show", "dev", "eth0"]);
    assert!(pod_addrs.contains(&format!("inet {ipa}/32")), "{pod_addrs}");

    // Two nodes on one dataDir: one block each, different, holding their own pods.
    let blocks1 = knit_ipam::blocks_of(&data, "node1").unwrap();
    let blocks2 = knit_ipam::blocks_of(&data, "node2").unwrap();
    assert_eq!(blocks1.len(), 1, "{blocks1:?}");
    assert_eq!(blocks2.len(), 1, "{blocks2:?}");
    let (block1, block2) = (blocks1[0], blocks2[0]);
    assert_ne!(block1, block2);
    assert!(!block1.contains(&block2.network()) && !block2.contains(&block1.network()));
    assert_eq!((block1.prefix_len(), block2.prefix_len()), (26, 26));
    assert!(block1.contains(&ipa) && block1.contains(&ipb), "{ipa} {ipb} not in {block1}");
    assert!(block2.contains(&ipc) && block2.contains(&ipd), "{ipc} {ipd} not in {block2}");
    assert_eq!(used(&data), 4);
    // `knit ipam show --json` tells the same.
    let shown: Value =
        serde_json::from_str(&knit(&tn, &node1, &["ipam", "show", "--json", "--data-dir", data.to_str().unwrap()]))
            .unwrap();
    let pool = &shown["pools"][0];
    assert_eq!(pool["name"], "overlay");
    assert_eq!(pool["used"], 4);
    assert_eq!(pool["nodes"]["node1"]["blocks"], serde_json::json!([block1.to_string()]), "{shown}");
    assert_eq!(pool["nodes"]["node2"]["blocks"], serde_json::json!([block2.to_string()]), "{shown}");

    // The node agent's blackholes: one per owned block, and running it again changes nothing.
    for (node, conf, block) in [(&node1, &conf1, block1), (&node2, &conf2, block2)] {
        for _ in 0..2 {
            let out = knit(&tn, node, &["node", "blackholes", "--ipam-config", conf.to_str().unwrap()]);
            assert_eq!(out.trim(), format!("blackhole {block}"), "knit node blackholes printed {out:?}");
            assert_eq!(blackholes(&tn, node), vec![block.to_string()]);
        }
    }
    // --node picks another node's blocks from the same config (node2's, asked on node1's
    // namespace only to read the output; the route is removed again).
    let out = knit(&tn, &node1, &["node", "blackholes", "--ipam-config", conf1.to_str().unwrap(), "--node", "node2"]);
    assert_eq!(out.trim(), format!("blackhole {block2}"));
    ip(&tn, &node1, &["route", "del", "blackhole", &block2.to_string()]);
    assert_eq!(blackholes(&tn, &node1), vec![block1.to_string()]);

    // Static block routes, as BIRD would install them.
    ip(&tn, &node1, &["route", "add", &block2.to_string(), "via", "172.16.1.3", "dev", "eth0"]);
    ip(&tn, &node2, &["route", "add", &block1.to_string(), "via", "172.16.1.2", "dev", "eth0"]);
    // The /32 of a local pod wins over the blackhole; an unused local address hits it.
    let get = ip(&tn, &node1, &["route", "get", &ipa.to_string()]);
    assert!(get.contains("dev cali"), "{get}");
    let unused = IpAddr::V4(match block1 {
        IpNet::V4(n) => n.broadcast(),
        IpNet::V6(_) => unreachable!(),
    });
    assert!(unused != ipa && unused != ipb);
    let get = tn.exec(&node1, &["ip", "route", "get", &unused.to_string()]).unwrap();
    assert!(!get.status.success(), "{unused} should be blackholed on node1");

    for (ns, ip) in [(&a, ipa), (&b, ipb), (&c, ipc), (&d, ipd)] {
        tcp_echo(ns, SocketAddr::new(ip, 8080));
        udp_echo(ns, SocketAddr::new(ip, 8081));
    }
    // Same node (a↔b, c↔d) and across nodes (a↔c, b↔d), both directions, TCP, UDP and ICMP.
    for (from, to) in [(&a, ipb), (&b, ipa), (&c, ipd), (&d, ipc), (&a, ipc), (&c, ipa), (&b, ipd), (&d, ipb)] {
        tcp_probe(from, SocketAddr::new(to, 8080)).unwrap_or_else(|e| panic!("tcp to {to}: {e}"));
        udp_probe(from, SocketAddr::new(to, 8081)).unwrap_or_else(|e| panic!("udp to {to}: {e}"));
        assert!(ping(&tn, from, to), "ping {to}");
    }
    // Proxy ARP: the pod sees ee:ee:ee:ee:ee:ee for its gateway and for any routable
    // destination: a pod on its node, a pod on the other node, a node, an outside address.
    // And an unused address of the remote block (blackholed on node2) gets no reply. These
    // wait for replies (about 1 s each), so they run side by side.
    let remote_unused = match block2 {
        IpNet::V4(n) => IpAddr::V4(n.broadcast()),
        IpNet::V6(_) => unreachable!(),
    };
    let dsts = [
        "169.254.1.1".to_string(),
        ipb.to_string(),
        ipc.to_string(),
        "172.16.1.3".to_string(),
        "198.51.100.7".to_string(),
    ];
    std::thread::scope(|s| {
        let (tn, a) = (&tn, &a);
        let lost = s.spawn(move || ping(tn, a, remote_unused));
        let replies: Vec<_> = dsts.iter().map(|dst| (dst, s.spawn(move || arping(tn, a, dst)))).collect();
        for (dst, h) in replies {
            // The reply line names the address asked for and the MAC that answered.
            let text = h.join().unwrap();
            let answered = text.lines().any(|l| {
                l.contains("ee:ee:ee:ee:ee:ee") && l.contains(&format!("{dst})")) || l.contains(&format!("from {dst} "))
            });
            assert!(answered, "arping {dst}: {text}");
        }
        assert!(!lost.join().unwrap(), "{remote_unused} (unused, in node2's block) answered a ping");
    });
    // The pod's neighbour for its gateway is the host veth's MAC.
    let neigh = ip(&tn, &a, &["neigh", "show", "169.254.1.1"]);
    assert!(neigh.contains("ee:ee:ee:ee:ee:ee"), "{neigh}");

    // CHECK passes for a healthy chained pod.
    assert!(cni1.check(&a, "eth0", "cid-a", &pod_args("a")).ok);

    // DEL (twice) removes the veths and gives every address back; the blocks stay claimed.
    for _ in 0..2 {
        for (cni, pod, cid, name) in
            [(&cni1, &a, "cid-a", "a"), (&cni1, &b, "cid-b", "b"), (&cni2, &c, "cid-c", "c"), (&cni2, &d, "cid-d", "d")]
        {
            let out = cni.del(pod, "eth0", cid, &pod_args(name));
            assert!(out.ok, "DEL {cid}: {:?}", out);
        }
    }
    assert!(links_with_prefix(&node1, "cali").is_empty());
    assert!(links_with_prefix(&node2, "cali").is_empty());
    assert_eq!(used(&data), 0);
    assert_eq!(knit_ipam::blocks_of(&data, "node1").unwrap(), vec![block1]);
    assert_eq!(knit_ipam::blocks_of(&data, "node2").unwrap(), vec![block2]);
}

#[test]
fn bad_input_gives_the_right_code_and_leaves_nothing() {
    let tn = TestNet::new("kri").unwrap();
    let dir = Scratch::new("routed-ipam-bad");
    let fabric = Fabric::new(&tn, &["172.16.0.1/16"]);
    let node = fabric.node("n1", "172.16.1.2/16", "172.16.0.1");
    let pod = tn.pod("p").unwrap();

    // Config errors: code 7 from knit-ipam, passed through knit-routed; the message names the
    // field. (`pools` value, extra ipam fields, field named in the message.)
    let cases: &[(&str, &str, &str, &str)] = &[
        ("bad CIDR (prefix 33)", r#"[{"name":"p","cidr":"10.233.64.0/33"}]"#, "", "cidr"),
        ("bad CIDR (not a CIDR)", r#"[{"name":"p","cidr":"ten.dot.zero/18"}]"#, "", "cidr"),
        ("bad CIDR (host bits)", r#"[{"name":"p","cidr":"10.233.64.1/18"}]"#, "", "cidr"),
        ("blockSize above 32", r#"[{"name":"p","cidr":"10.233.64.0/18","blockSize":33}]"#, "", "blockSize"),
        (
            "blockSize below the pool prefix",
            r#"[{"name":"p","cidr":"10.233.64.0/18","blockSize":16}]"#,
            "",
            "blockSize",
        ),
        ("blockSize of the wrong type", r#"[{"name":"p","cidr":"10.233.64.0/18","blockSize":"26"}]"#, "", "blockSize"),
        ("cidr of the wrong type", r#"[{"name":"p","cidr":167854080}]"#, "", "cidr"),
        ("pools of the wrong type", r#""10.233.64.0/18""#, "", "pools"),
        (
            "excludeIPs of the wrong type",
            r#"[{"name":"p","cidr":"10.233.64.0/18","excludeIPs":"10.233.64.1"}]"#,
            "",
            "excludeIPs",
        ),
        ("lockTimeoutMs of the wrong type", OVERLAY, r#","lockTimeoutMs":"soon""#, "lockTimeoutMs"),
        ("no pools", "[]", "", "pools"),
    ];
    for (i, (what, pools, extra, field)) in cases.iter().enumerate() {
        let data = dir.path.join(format!("ipam-{i}"));
        let conf = conflist(&dir, &format!("bad{i}.conflist"), "node1", &data, pools, extra);
        let cni = Cni::new(&tn, &node, conf, dir.path.join("s"));
        let out = cni.add(&pod, "eth0", &format!("cid-{i}"), &pod_args("p"));
        assert_eq!(failed(&out, what), u64::from(knit_ipam::error::CODE_INVALID_CONFIG), "{what}: {}", out.json);
        let msg = out.json["msg"].as_str().unwrap();
        assert!(msg.contains(field), "{what}: message does not name {field}: {msg}");
        assert_no_interfaces(&node, &pod, what);
        assert_eq!(used(&data), 0, "{what}");
    }

    // A field of the wrong type in knit-routed's own part fails before IPAM runs.
    let data = dir.path.join("ipam-routed");
    let conf = dir.write(
        "routed-mtu.conflist",
        &format!(
            r#"{{"cniVersion":"1.0.0","name":"n","plugins":[{{"type":"knit-routed","mtu":"big",
                "ipam":{{"type":"knit-ipam","node":"node1","dataDir":"{}","pools":{OVERLAY}}}}}]}}"#,
            data.display()
        ),
    );
    let out = Cni::new(&tn, &node, conf, dir.path.join("s")).add(&pod, "eth0", "cid-mtu", "");
    assert_eq!(failed(&out, "mtu of the wrong type"), 7);
    assert_no_interfaces(&node, &pod, "mtu of the wrong type");
    assert_eq!(used(&data), 0);

    // CNI_ARGS with an IP= that is not an address: code 4.
    let data = dir.path.join("ipam-args");
    let conf = conflist(&dir, "args.conflist", "node1", &data, OVERLAY, "");
    let cni = Cni::new(&tn, &node, conf, dir.path.join("s"));
    let out = cni.add(&pod, "eth0", "cid-args", "IgnoreUnknown=1;IP=10.233.64.300");
    assert_eq!(failed(&out, "IP= not an address"), u64::from(knit_ipam::error::CODE_BAD_ARGS), "{}", out.json);
    assert_no_interfaces(&node, &pod, "IP= not an address");
    assert_eq!(used(&data), 0);

    // Pool exhausted: a /30 pool holds two addresses; the third pod gets code 110, no
    // interface, and the two others keep theirs.
    let data = dir.path.join("ipam-tiny");
    let conf =
        conflist(&dir, "tiny.conflist", "node1", &data, r#"[{"name":"tiny","cidr":"10.9.0.0/30","blockSize":30}]"#, "");
    let cni = Cni::new(&tn, &node, conf, dir.path.join("s-tiny"));
    let p1 = tn.pod("t1").unwrap();
    let p2 = tn.pod("t2").unwrap();
    let ip1 = result_ip(&cni.add(&p1, "eth0", "cid-t1", &pod_args("t1")).unwrap());
    let ip2 = result_ip(&cni.add(&p2, "eth0", "cid-t2", &pod_args("t2")).unwrap());
    assert_ne!(ip1, ip2);
    let p3 = tn.pod("t3").unwrap();
    let out = cni.add(&p3, "eth0", "cid-t3", &pod_args("t3"));
    assert_eq!(failed(&out, "pool exhausted"), u64::from(knit_ipam::error::CODE_EXHAUSTED), "{}", out.json);
    assert!(links_with_prefix(&p3, "eth").is_empty(), "exhausted ADD left eth0 in the pod");
    assert_eq!(links_with_prefix(&node, "cali").len(), 2, "exhausted ADD left a host veth");
    assert_eq!(used(&data), 2);

    // IPAM succeeds but the interface cannot be made (eth0 taken in the pod): knit-routed
    // rolls back and gives the address back to knit-ipam.
    cni.del(&p2, "eth0", "cid-t2", &pod_args("t2")).unwrap();
    assert_eq!(used(&data), 1);
    ip(&tn, &p3, &["link", "add", "eth0", "type", "bridge"]);
    let out = cni.add(&p3, "eth0", "cid-t3", &pod_args("t3"));
    assert!(!out.ok, "ADD over an existing eth0 must fail: {}", out.json);
    assert_eq!(links_with_prefix(&node, "cali").len(), 1, "failed ADD left a host veth");
    assert_eq!(used(&data), 1, "failed ADD kept its address");
    // ... so the next pod gets it.
    let p4 = tn.pod("t4").unwrap();
    let ip4 = result_ip(&cni.add(&p4, "eth0", "cid-t4", &pod_args("t4")).unwrap());
    assert_eq!(ip4, ip2);
}

#[test]
fn requested_ip_is_honoured_or_refused() {
    let tn = TestNet::new("kri").unwrap();
    let dir = Scratch::new("routed-ipam-req");
    let data = dir.path.join("ipam");
    let fabric = Fabric::new(&tn, &["172.16.0.1/16"]);
    let node1 = fabric.node("n1", "172.16.1.2/16", "172.16.0.1");
    let node2 = fabric.node("n2", "172.16.1.3/16", "172.16.0.1");
    let cni1 = Cni::new(&tn, &node1, conflist(&dir, "n1.conflist", "node1", &data, OVERLAY, ""), dir.path.join("s1"));
    let cni2 = Cni::new(&tn, &node2, conflist(&dir, "n2.conflist", "node2", &data, OVERLAY, ""), dir.path.join("s2"));

    // Honoured: the pod holds exactly the requested address, and its block is now node1's.
    let x = tn.pod("x").unwrap();
    let args = format!("{};IP=10.233.65.77", pod_args("x"));
    let r = cni1.add(&x, "eth0", "cid-x", &args).unwrap();
    assert_eq!(r["ips"][0]["address"], "10.233.65.77/32", "{r}");
    let pod_addrs = ip(&tn, &x, &["-4", "-o", "addr", "show", "dev", "eth0"]);
    assert!(pod_addrs.contains("inet 10.233.65.77/32"), "{pod_addrs}");
    let node_routes = ip(&tn, &node1, &["route", "show", "10.233.65.77"]);
    assert!(node_routes.contains("dev cali"), "{node_routes}");
    assert_eq!(knit_ipam::blocks_of(&data, "node1").unwrap(), vec![net("10.233.65.64/26")]);
    // A second interface of the same pod asking for the same address is refused.
    let again = cni1.add(&x, "eth1", "cid-x", &format!("{};IP=10.233.65.77", pod_args("x")));
    assert_eq!(failed(&again, "eth1 with x's IP"), u64::from(knit_ipam::error::CODE_IP_UNAVAILABLE));
    assert!(links_with_prefix(&x, "eth1").is_empty());
    assert_eq!(links_with_prefix(&node1, "cali").len(), 1);

    // Refused, with a clear message naming the address, and nothing left behind.
    let y = tn.pod("y").unwrap();
    let refusals: &[(&str, &Cni, String, u32)] = &[
        ("in use", &cni1, "10.233.65.77".into(), knit_ipam::error::CODE_IP_UNAVAILABLE),
        ("outside every pool", &cni1, "192.0.2.10".into(), knit_ipam::error::CODE_IP_NOT_IN_POOL),
        ("in another node's block", &cni2, "10.233.65.78".into(), knit_ipam::error::CODE_IP_UNAVAILABLE),
        ("the pool's network address", &cni1, "10.233.64.0".into(), knit_ipam::error::CODE_IP_UNAVAILABLE),
    ];
    for (what, cni, want, code) in refusals {
        let out = cni.add(&y, "eth0", "cid-y", &format!("{};IP={want}", pod_args("y")));
        assert_eq!(failed(&out, what), u64::from(*code), "{what}: {}", out.json);
        let msg = out.json["msg"].as_str().unwrap();
        assert!(msg.contains(want.as_str()), "{what}: message does not name {want}: {msg}");
        assert!(links_with_prefix(&y, "eth").is_empty(), "{what}: left eth0 in the pod");
        assert_eq!(
            links_with_prefix(cni.node, "cali").len(),
            if std::ptr::eq(cni.node, &node1) { 1 } else { 0 },
            "{what}"
        );
        assert_eq!(used(&data), 1, "{what}: an address stayed allocated");
    }
    // node2 was refused node1's block and claimed none.
    assert!(knit_ipam::blocks_of(&data, "node2").unwrap().is_empty());

    // A free requested address in an unclaimed block on node2: honoured, packets flow to x.
    let r = cni2.add(&y, "eth0", "cid-y", &format!("{};IP=10.233.100.9", pod_args("y"))).unwrap();
    assert_eq!(r["ips"][0]["address"], "10.233.100.9/32", "{r}");
    assert_eq!(knit_ipam::blocks_of(&data, "node2").unwrap(), vec![net("10.233.100.0/26")]);
    ip(&tn, &node1, &["route", "add", "10.233.100.0/26", "via", "172.16.1.3", "dev", "eth0"]);
    ip(&tn, &node2, &["route", "add", "10.233.65.64/26", "via", "172.16.1.2", "dev", "eth0"]);
    tcp_echo(&x, "10.233.65.77:8080".parse().unwrap());
    tcp_probe(&y, "10.233.65.77:8080".parse().unwrap()).unwrap();
    assert!(ping(&tn, &x, "10.233.100.9".parse().unwrap()));

    // The address comes back on DEL and can be requested by another pod.
    cni1.del(&x, "eth0", "cid-x", &pod_args("x")).unwrap();
    let z = tn.pod("z").unwrap();
    let r = cni1.add(&z, "eth0", "cid-z", &format!("{};IP=10.233.65.77", pod_args("z"))).unwrap();
    assert_eq!(r["ips"][0]["address"], "10.233.65.77/32", "{r}");
}
