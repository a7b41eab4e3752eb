//! BIRD in namespaces: three nodes and a ToR on one bridge exchange pod blocks,
//! underlay /32s (nodes only) and the Service CIDR (ToR only).

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use knit_agent::bird::{node_config, peer_protocol_name, tor_config, Bird, NodeBgp, Peer, Timers, TorBgp, TorSession};
use knit_host::route::{self, proto, table, RouteKind};
use knit_host::{link, Family, Handle, Netns};
use knit_testkit::{Fabric, Scratch, TestNet};

const NODE_ASN: u32 = 65100;
const TOR_ASN: u32 = 65200;
const OVERLAY: &str = "10.250.0.0/16";
const SERVICES: &str = "10.251.0.0/18";

fn net(s: &str) -> IpNet {
    s.parse().expect("cidr")
}

struct TestNode {
    ns: Netns,
    ip: Ipv4Addr,
    block: IpNet,
    underlay: IpNet,
}

/// Polls `f` every 200 ms until it returns Some, for at most `timeout`.
fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn main_routes(ns: &Netns) -> Vec<route::Route> {
    let h = Handle::in_netns(ns).expect("netlink");
    route::list(&h, Family::V4, Some(table::MAIN)).expect("list routes")
}

fn ip_route(tn: &TestNet, ns: &Netns, args: &[&str]) -> String {
    let mut argv = vec!["ip", "-4", "route", "show"];
    argv.extend_from_slice(args);
    String::from_utf8_lossy(&tn.exec_ok(ns, &argv).expect("ip route").stdout).into_owned()
}

#[test]
fn nodes_and_tor_exchange_routes() {
    let tn = TestNet::new("kbgp").expect("testnet");
    let scratch = Scratch::new("bird");
    let tor_ip: Ipv4Addr = "10.77.0.1".parse().expect("ip");
    let fabric = Fabric::new(&tn, &["10.77.0.1/24"]);
    let nodes: Vec<TestNode> = (1..=3u8)
        .map(|i| {
            let ip = Ipv4Addr::new(10, 77, 0, 10 + i);
            let ns = fabric.node(&format!("n{i}"), &format!("{ip}/24"), "10.77.0.1");
            let block = net(&format!("10.250.{}.0/26", i));
            // An underlay pod address in the fabric subnet, wired by node i.
            let underlay = net(&format!("10.77.0.{}/32", 100 + i));
            TestNode { ns, ip, block, underlay }
        })
        .collect();

    let mut pids = Vec::new();
    let mut birds = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let cfg = NodeBgp {
            node_ip: n.ip,
            asn: NODE_ASN,
            node_peers: nodes.iter().filter(|o| o.ip != n.ip).map(|o| o.ip).collect(),
            tor: Some(Peer { ip: IpAddr::V4(tor_ip), asn: TOR_ASN }),
            overlay_cidrs: vec![net(OVERLAY)],
            blocks: vec![n.block],
            underlay_routes: vec![n.underlay],
            service_cidrs: vec![net(SERVICES)],
            timers: Timers::FAST,
        };
        let bird = Bird::new(scratch.path.join(format!("n{}", i + 1)));
        bird.write_config(&node_config(&cfg).expect("node config")).expect("write config");
        pids.push(tn.spawn(&n.ns, &mut bird.command().expect("bird command")).expect("spawn bird"));
        birds.push(bird);
    }
    let tor_cfg = TorBgp {
        router_id: tor_ip,
        asn: TOR_ASN,
        nodes: nodes
            .iter()
            .map(|n| TorSession { local_ip: tor_ip, node: Peer { ip: IpAddr::V4(n.ip), asn: NODE_ASN } })
            .collect(),
        accept: vec![net(OVERLAY), net(SERVICES)],
        timers: Timers::FAST,
    };
    let tor = Bird::new(scratch.path.join("tor"));
    tor.write_config(&tor_config(&tor_cfg).expect("tor config")).expect("write tor config");
    pids.push(tn.spawn(&fabric.ns, &mut tor.command().expect("bird command")).expect("spawn tor bird"));

    // Every session up: each node has 2 node peers + the ToR, the ToR has 3 nodes.
    for b in birds.iter().chain([&tor]) {
        if let Err(e) = b.wait_established(&[], Duration::from_secs(20)) {
            let log = std::fs::read_to_string(b.log_path()).unwrap_or_default();
            panic!("{e}\nlog:\n{log}");
        }
    }
    let names: Vec<String> = nodes.iter().map(|n| peer_protocol_name(IpAddr::V4(n.ip))).collect();
    tor.wait_established(&names, Duration::from_secs(5)).expect("ToR sessions by name");

    for n in &nodes {
        let eth0 = link::index_of(&Handle::in_netns(&n.ns).expect("netlink"), "eth0").expect("eth0");
        let others: Vec<&TestNode> = nodes.iter().filter(|o| o.ip != n.ip).collect();
        let routes = wait_for("blocks and underlay /32s of the other nodes", Duration::from_secs(10), || {
            let rs = main_routes(&n.ns);
            let has = |dst: IpNet, via: Ipv4Addr| {
                rs.iter().any(|r| {
                    r.dst == dst
                        && r.gateway == Some(IpAddr::V4(via))
                        && r.oif == Some(eth0)
                        && r.protocol == proto::BIRD
                })
            };
            others.iter().all(|o| has(o.block, o.ip) && has(o.underlay, o.ip)).then_some(rs)
        });
        // Its own block is a blackhole; its own underlay /32 and the Service CIDR are not installed.
        assert!(
            routes.iter().any(|r| r.dst == n.block && r.kind == RouteKind::Blackhole && r.protocol == proto::BIRD),
            "{:?}",
            routes
        );
        assert!(!routes.iter().any(|r| r.dst == n.underlay), "own underlay /32 must not be in main");
        assert!(!routes.iter().any(|r| r.dst == net(SERVICES)), "Service CIDR must not be installed on nodes");
    }

    // The ToR: every block via its node, the Service CIDR over all three nodes, no /32s.
    let tor_routes = wait_for("blocks and Service CIDR at the ToR", Duration::from_secs(10), || {
        let text = ip_route(&tn, &fabric.ns, &["proto", "bird"]);
        let blocks_ok = nodes.iter().all(|n| text.contains(&format!("{} via {} dev br0", n.block, n.ip)));
        let ecmp = nodes.iter().all(|n| text.contains(&format!("nexthop via {} dev br0", n.ip)));
        (blocks_ok && text.contains(SERVICES) && ecmp).then_some(text)
    });
    for n in &nodes {
        assert!(!tor_routes.contains(&n.underlay.addr().to_string()), "underlay /32 leaked to the ToR:\n{tor_routes}");
    }

    drop(tn);
    // TestNet killed the daemons it spawned.
    for pid in pids {
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "bird {pid} still running");
    }
}
