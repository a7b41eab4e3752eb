//! knit-coordinator with real namespaces and packets: the path matrix of DESIGN.md section 4
//! and seed spiderpool-multi-cni-coexist, on two "nodes" plugged into one fabric bridge.
//!
//! Every test builds its own cluster (so nextest runs them in parallel):
//! - fabric: bridge with gateways 172.16.0.1/16 and 172.17.0.1/16;
//! - node1 172.16.1.2/16, node2 172.16.1.3/16, kube-proxy's old
//!   `FORWARD --ctstate INVALID -j DROP` rule and `nf_conntrack_tcp_be_liberal=0` on both;
//! - overlay pods from knit-routed + host-local (node1 10.233.64.0/26, node2 10.233.64.64/26)
//!   with static block routes between the nodes, as BIRD would install them;
//! - underlay pods from macvlan + static + knit-coordinator: u1 172.16.100.10 on node1,
//!   u2 172.16.100.20 and u3 172.17.100.30 (the other subnet, "across the gateway") on node2;
//! - a multi-NIC pod on node1: eth0 from knit-routed, net1 from macvlan + knit-coordinator;
//! - the cross-CNI fix: every node routes the other nodes' underlay pod IPs (from
//!   `knit node underlay-ips`) as `/32 via <owning node IP>`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use knit_host::Netns;
use knit_testkit::{bin, ip, links_with_prefix, result_ip, tcp_echo, tcp_probe, Cni, Fabric, Scratch, TestNet};

const PORT: u16 = 8080;
const NODE_IPS: [&str; 2] = ["172.16.1.2", "172.16.1.3"];
const OVERLAY_BLOCKS: [&str; 2] = ["10.233.64.0/26", "10.233.64.64/26"];

/// One CNI attachment of a pod: which conflist, on which node, as which interface.
struct Att {
    node: usize,
    conflist: PathBuf,
    ifname: &'static str,
    cid: String,
    args: String,
    ip: IpAddr,
}

struct Pod {
    name: &'static str,
    ns: Netns,
    atts: Vec<Att>,
}

impl Pod {
    fn ip(&self) -> IpAddr {
        self.atts[0].ip
    }
    fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip(), PORT)
    }
}

struct Cluster<'a> {
    tn: &'a TestNet,
    dir: Scratch,
    fabric: Fabric<'a>,
    nodes: Vec<Netns>,
    /// Overlay pods: o1 on node1, o2 on node2.
    o1: Pod,
    o2: Pod,
    /// Underlay pods: u1 (172.16.100.10) on node1, u2 (172.16.100.20) and u3 (172.17.100.30)
    /// on node2.
    u1: Pod,
    u2: Pod,
    u3: Pod,
    /// Multi-NIC pod on node1: atts[0] is eth0 (knit-routed), atts[1] is net1 (macvlan).
    m: Pod,
    /// The `/32 via <node>` routes installed by the fix: (node index, ip, via).
    fix_routes: std::cell::RefCell<Vec<(usize, IpAddr, IpAddr)>>,
}

fn node_ip(i: usize) -> IpAddr {
    NODE_IPS[i].parse().unwrap()
}

fn sock(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

fn pod_args(name: &str) -> String {
    format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={name}")
}

/// The coordinator's plugin object; `extra` is spliced in (leading comma).
fn coordinator(mode: &str, extra: &str) -> String {
    format!(
        r#"{{"type":"knit-coordinator","mode":"{mode}","overlayPodCIDR":["10.233.64.0/18"],"serviceCIDR":["10.233.0.0/18"],"hijackCIDR":[]{extra}}}"#
    )
}

/// macvlan on the node's eth0 with static IPAM; `default_gw` adds a default route.
fn macvlan(addr: &str, gw: &str, default_gw: bool) -> String {
    let routes = if default_gw { format!(r#","routes":[{{"dst":"0.0.0.0/0","gw":"{gw}"}}]"#) } else { String::new() };
    format!(
        r#"{{"type":"macvlan","master":"eth0","mode":"bridge","ipam":{{"type":"static","addresses":[{{"address":"{addr}","gateway":"{gw}"}}]{routes}}}}}"#
    )
}

fn conflist(dir: &Scratch, file: &str, name: &str, plugins: &[String]) -> PathBuf {
    dir.write(file, &format!(r#"{{"cniVersion":"1.0.0","name":"{name}","plugins":[{}]}}"#, plugins.join(",")))
}

fn routed_conflist(dir: &Scratch, node: usize) -> PathBuf {
    let data = dir.path.join(format!("ipam-n{}", node + 1));
    let plugin = format!(
        r#"{{"type":"knit-routed","mtu":1480,"ipam":{{"type":"host-local","dataDir":"{}","ranges":[[{{"subnet":"{}"}}]]}}}}"#,
        data.display(),
        OVERLAY_BLOCKS[node]
    );
    conflist(dir, &format!("routed-n{}.conflist", node + 1), "k8s-pod-network", &[plugin])
}

fn underlay_conflist(dir: &Scratch, pod: &str, addr: &str, gw: &str, mode: &str) -> PathBuf {
    conflist(
        dir,
        &format!("underlay-{pod}.conflist"),
        "macvlan-underlay",
        &[macvlan(addr, gw, true), coordinator(mode, "")],
    )
}

#[derive(Clone, Copy)]
struct Opts {
    /// Install the cross-CNI fix (`/32 via <owning node>` on the other nodes).
    fix: bool,
}

impl<'a> Cluster<'a> {
    fn cni(&self, node: usize, conflist: &std::path::Path) -> Cni<'_> {
        Cni::new(self.tn, &self.nodes[node], conflist.to_path_buf(), self.dir.path.join(format!("state-n{}", node + 1)))
    }

    fn node(&self, i: usize) -> &Netns {
        &self.nodes[i]
    }

    /// Every pod, in creation order.
    fn pods(&self) -> [&Pod; 6] {
        [&self.o1, &self.o2, &self.u1, &self.u2, &self.u3, &self.m]
    }

    /// ADD every attachment of `pod`, in order; returns the results.
    fn add_all(&self, pod: &Pod) -> Vec<serde_json::Value> {
        let mut results = Vec::new();
        for a in &pod.atts {
            let out = self.cni(a.node, &a.conflist).add(&pod.ns, a.ifname, &a.cid, &a.args);
            assert!(out.ok, "ADD {} {}: {}\n{}", pod.name, a.ifname, out.json, out.stderr);
            results.push(out.json);
        }
        results
    }

    /// DEL every attachment of every pod, in reverse order; panics on a failed DEL.
    fn del_all(&self) {
        for pod in self.pods().iter().rev() {
            for a in pod.atts.iter().rev() {
                let out = self.cni(a.node, &a.conflist).del(&pod.ns, a.ifname, &a.cid, &a.args);
                assert!(out.ok, "DEL {} {}: {}\n{}", pod.name, a.ifname, out.json, out.stderr);
            }
        }
    }

    /// `knit node underlay-ips` inside node `i`.
    fn underlay_ips(&self, i: usize) -> Vec<(IpAddr, String)> {
        let knit = bin("knit");
        let out = self
            .tn
            .exec_ok(self.node(i), &[knit.to_str().unwrap(), "node", "underlay-ips"])
            .expect("knit node underlay-ips");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("underlay-ips prints JSON");
        v.as_array()
            .expect("a JSON array")
            .iter()
            .map(|e| (e["ip"].as_str().unwrap().parse().unwrap(), e["dev"].as_str().unwrap().to_string()))
            .collect()
    }

    /// The cross-CNI fix, as the node agent would install it.
    fn install_fix(&self) {
        let mut routes = Vec::new();
        for owner in 0..self.nodes.len() {
            for (uip, _dev) in self.underlay_ips(owner) {
                for other in (0..self.nodes.len()).filter(|o| *o != owner) {
                    routes.push((other, uip, node_ip(owner)));
                }
            }
        }
        for (node, uip, via) in &routes {
            ip(
                self.tn,
                self.node(*node),
                &["route", "add", &format!("{uip}/32"), "via", &via.to_string(), "dev", "eth0"],
            );
        }
        self.fix_routes.borrow_mut().extend(routes);
    }

    /// Diagnostics for a failed cell: routes, rules, filter and conntrack of every namespace.
    fn dump(&self) -> String {
        let mut s = String::new();
        let mut nss: Vec<(&str, &Netns)> = vec![("node1", &self.nodes[0]), ("node2", &self.nodes[1])];
        for p in self.pods() {
            nss.push((p.name, &p.ns));
        }
        for (name, ns) in nss {
            for argv in [
                &["ip", "-br", "addr"][..],
                &["ip", "rule"],
                &["ip", "route", "show", "table", "all"],
                &["iptables-save"],
                &["nft", "list", "ruleset"],
                &["conntrack", "-L"],
            ] {
                if let Ok(o) = self.tn.exec(ns, argv) {
                    s.push_str(&format!(
                        "--- {name}: {}\n{}{}",
                        argv.join(" "),
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    ));
                }
            }
        }
        s
    }
}

/// `ip route show table N`, empty when the table does not exist (yet or any more).
fn table(tn: &TestNet, ns: &Netns, table: u32) -> String {
    let t = table.to_string();
    let out = tn.exec(ns, &["ip", "route", "show", "table", &t]).expect("spawn ip");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() || err.contains("does not exist"), "ip route show table {t}: {err}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// kube-proxy < 1.29 on a node: the INVALID drop rule, and strict TCP window tracking.
fn kube_proxy_old(tn: &TestNet, node: &Netns) {
    // The rule loads conntrack into the namespace, which makes the per-netns sysctl appear.
    tn.exec_ok(node, &["iptables", "-A", "FORWARD", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP"])
        .expect("INVALID drop rule");
    tn.exec_ok(node, &["sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_be_liberal=0"]).expect("be_liberal=0");
}

fn setup<'a>(tn: &'a TestNet, tag: &str, opts: Opts) -> Cluster<'a> {
    let dir = Scratch::new(tag);
    let fabric = Fabric::new(tn, &["172.16.0.1/16", "172.17.0.1/16"]);
    let nodes =
        vec![fabric.node("n1", "172.16.1.2/16", "172.16.0.1"), fabric.node("n2", "172.16.1.3/16", "172.16.0.1")];
    // Static block routes, as BIRD would install them.
    ip(tn, &nodes[0], &["route", "add", OVERLAY_BLOCKS[1], "via", NODE_IPS[1], "dev", "eth0"]);
    ip(tn, &nodes[1], &["route", "add", OVERLAY_BLOCKS[0], "via", NODE_IPS[0], "dev", "eth0"]);
    for n in &nodes {
        kube_proxy_old(tn, n);
    }

    let routed = [routed_conflist(&dir, 0), routed_conflist(&dir, 1)];
    let overlay = |name: &'static str, node: usize| Pod {
        name,
        ns: tn.pod(name).unwrap(),
        atts: vec![Att {
            node,
            conflist: routed[node].clone(),
            ifname: "eth0",
            cid: format!("cid-{name}"),
            args: pod_args(name),
            ip: IpAddr::from([0, 0, 0, 0]),
        }],
    };
    let underlay = |name: &'static str, node: usize, addr: &str, gw: &str, mode: &str| Pod {
        name,
        ns: tn.pod(name).unwrap(),
        atts: vec![Att {
            node,
            conflist: underlay_conflist(&dir, name, addr, gw, mode),
            ifname: "eth0",
            cid: format!("cid-{name}"),
            args: pod_args(name),
            ip: addr.split('/').next().unwrap().parse().unwrap(),
        }],
    };
    let o1 = overlay("o1", 0);
    let o2 = overlay("o2", 1);
    // One pod with mode underlay, the others with auto (eth0 → underlay).
    let u1 = underlay("u1", 0, "172.16.100.10/16", "172.16.0.1", "underlay");
    let u2 = underlay("u2", 1, "172.16.100.20/16", "172.16.0.1", "auto");
    let u3 = underlay("u3", 1, "172.17.100.30/16", "172.17.0.1", "auto");
    let mut m = overlay("m", 0);
    // net1: a second network; its IPAM gives an address and a gateway but no default route.
    m.atts.push(Att {
        node: 0,
        conflist: conflist(
            &dir,
            "multi-net1.conflist",
            "macvlan-net1",
            &[macvlan("172.16.100.40/16", "172.16.0.1", false), coordinator("auto", "")],
        ),
        ifname: "net1",
        cid: "cid-m".into(),
        args: pod_args("m"),
        ip: "172.16.100.40".parse().unwrap(),
    });

    let mut c = Cluster { tn, dir, fabric, nodes, o1, o2, u1, u2, u3, m, fix_routes: Default::default() };
    // Overlay pods first, then the underlay pods, then the multi-NIC pod (eth0, then net1).
    // Overlay IPs come from host-local: take them from the results.
    let ips: Vec<IpAddr> =
        [&c.o1, &c.o2, &c.u1, &c.u2, &c.u3, &c.m].iter().map(|p| result_ip(&c.add_all(p)[0])).collect();
    c.o1.atts[0].ip = ips[0];
    c.o2.atts[0].ip = ips[1];
    c.m.atts[0].ip = ips[5];
    for (i, p) in [&c.u1, &c.u2, &c.u3].into_iter().enumerate() {
        assert_eq!(p.ip(), ips[2 + i], "static IPAM gave {}", p.name);
    }
    if opts.fix {
        c.install_fix();
    }
    for pod in c.pods() {
        for a in &pod.atts {
            tcp_echo(&pod.ns, SocketAddr::new(a.ip, PORT));
        }
    }
    for i in 0..2 {
        tcp_echo(c.node(i), SocketAddr::new(node_ip(i), PORT));
    }
    c
}

/// Probes every (label, from, to) cell in parallel; returns the failures as "label (dst): error".
fn probe_all(cells: &[(&str, &Netns, SocketAddr)]) -> Vec<String> {
    std::thread::scope(|s| {
        let handles: Vec<_> = cells
            .iter()
            .map(|(label, from, to)| {
                s.spawn(move || tcp_probe(from, *to).err().map(|e| format!("{label} ({to}): {e}")))
            })
            .collect();
        handles.into_iter().filter_map(|h| h.join().expect("probe thread")).collect()
    })
}

/// Runs every cell and panics listing the failures, with diagnostics.
fn expect_all(c: &Cluster, cells: &[(&str, &Netns, SocketAddr)]) {
    let failed = probe_all(cells);
    assert!(
        failed.is_empty(),
        "{} of {} cells failed:\n{}\n{}",
        failed.len(),
        cells.len(),
        failed.join("\n"),
        c.dump()
    );
}

// ---------------------------------------------------------------------------------------------
// Underlay ↔ underlay, node ↔ pod

#[test]
fn underlay_to_underlay_within_subnet_and_across_gateway() {
    let tn = TestNet::new("kc").unwrap();
    let c = setup(&tn, "coord-uu", Opts { fix: true });
    expect_all(
        &c,
        &[
            ("u1(node1) -> u2(node2), same subnet", &c.u1.ns, c.u2.addr()),
            ("u2(node2) -> u1(node1), same subnet", &c.u2.ns, c.u1.addr()),
            ("u1 172.16 -> u3 172.17, across the gateway", &c.u1.ns, c.u3.addr()),
            ("u3 172.17 -> u1 172.16, across the gateway", &c.u3.ns, c.u1.addr()),
            ("u2 -> u3, same node, across the gateway", &c.u2.ns, c.u3.addr()),
        ],
    );
}

#[test]
fn node_and_its_underlay_pod_both_directions() {
    let tn = TestNet::new("kc").unwrap();
    let c = setup(&tn, "coord-node", Opts { fix: true });
    expect_all(
        &c,
        &[
            ("node1 -> u1", c.node(0), c.u1.addr()),
            ("u1 -> node1", &c.u1.ns, sock(NODE_IPS[0], PORT)),
            ("node2 -> u2", c.node(1), c.u2.addr()),
            ("u2 -> node2", &c.u2.ns, sock(NODE_IPS[1], PORT)),
            ("node2 -> u3 (other subnet)", c.node(1), c.u3.addr()),
            ("u3 -> node2 (other subnet)", &c.u3.ns, sock(NODE_IPS[1], PORT)),
        ],
    );
    // The pod routes only its own node's IP through veth0 (DESIGN.md section 4).
    // No PERMANENT neighbour entries anywhere (DESIGN.md: no per-node-IP neighbour floods).
    for ns in [c.node(0), c.node(1), &c.u1.ns, &c.u2.ns, &c.u3.ns] {
        let perm = ip(&tn, ns, &["neigh", "show", "nud", "permanent"]);
        assert!(perm.trim().is_empty(), "{perm}");
    }
    let routes = ip(&tn, &c.u1.ns, &["route"]);
    assert!(routes.contains("172.16.1.2 dev veth0"), "{routes}");
    assert!(!routes.contains("172.16.1.3"), "{routes}");
    assert!(routes.contains("10.233.64.0/18 via 172.16.1.2 dev veth0 src 172.16.100.10"), "{routes}");
    assert!(routes.contains("10.233.0.0/18 via 172.16.1.2 dev veth0 src 172.16.100.10"), "{routes}");
    assert!(routes.contains("default via 172.16.0.1 dev eth0"), "{routes}");
    let rules = ip(&tn, c.node(0), &["rule"]);
    assert!(rules.contains("1000:\tfrom all lookup 500"), "{rules}");
    let t500 = table(&tn, c.node(0), 500);
    assert!(t500.contains("172.16.100.10 dev veth"), "{t500}");
}

// ---------------------------------------------------------------------------------------------
// Underlay ↔ overlay, with kube-proxy's INVALID drop rule and be_liberal=0

fn underlay_overlay_cells<'c>(c: &'c Cluster) -> Vec<(String, &'c Netns, SocketAddr)> {
    let mut cells = Vec::new();
    for u in [&c.u1, &c.u2, &c.u3] {
        for o in [&c.o1, &c.o2] {
            let un = u.atts[0].node + 1;
            let on = o.atts[0].node + 1;
            cells.push((format!("{}(node{un}) -> {}(node{on})", u.name, o.name), &u.ns, o.addr()));
            cells.push((format!("{}(node{on}) -> {}(node{un})", o.name, u.name), &o.ns, u.addr()));
        }
    }
    cells
}

#[test]
fn underlay_and_overlay_same_node_and_across_nodes() {
    let tn = TestNet::new("kc").unwrap();
    let c = setup(&tn, "coord-uo", Opts { fix: true });
    let cells = underlay_overlay_cells(&c);
    let cells: Vec<(&str, &Netns, SocketAddr)> = cells.iter().map(|(l, n, a)| (l.as_str(), *n, *a)).collect();
    expect_all(&c, &cells);
    // The fix: each node routes the other node's underlay pods via that node.
    let r1 = ip(&tn, c.node(0), &["route"]);
    assert!(r1.contains("172.16.100.20 via 172.16.1.3 dev eth0"), "{r1}");
    assert!(r1.contains("172.17.100.30 via 172.16.1.3 dev eth0"), "{r1}");
    let r2 = ip(&tn, c.node(1), &["route"]);
    assert!(r2.contains("172.16.100.10 via 172.16.1.2 dev eth0"), "{r2}");
    // underlay-ips lists the underlay pods only: not the multi-NIC pod's net1 (wired via cali).
    let ips1: Vec<IpAddr> = c.underlay_ips(0).into_iter().map(|(ip, _)| ip).collect();
    assert_eq!(ips1, vec![c.u1.ip()]);
    let mut ips2: Vec<IpAddr> = c.underlay_ips(1).into_iter().map(|(ip, _)| ip).collect();
    ips2.sort();
    assert_eq!(ips2, vec![c.u2.ip(), c.u3.ip()]);
}

#[test]
fn without_the_fix_cross_node_overlay_underlay_fails() {
    let tn = TestNet::new("kc").unwrap();
    let c = setup(&tn, "coord-nofix", Opts { fix: false });
    // Same-node cells don't need the fix: both directions pass the pod's own node.
    expect_all(
        &c,
        &[
            ("u1 -> o1 (node1)", &c.u1.ns, c.o1.addr()),
            ("o1 -> u1 (node1)", &c.o1.ns, c.u1.addr()),
            ("u2 -> o2 (node2)", &c.u2.ns, c.o2.addr()),
            ("o2 -> u2 (node2)", &c.o2.ns, c.u2.addr()),
        ],
    );
    // Across nodes, one direction goes over the wire and the other through the underlay
    // pod's node, whose conntrack sees half a connection: INVALID, dropped.
    let must_fail = [
        ("o2(node2) -> u1(node1)", &c.o2.ns, c.u1.addr()),
        ("u1(node1) -> o2(node2)", &c.u1.ns, c.o2.addr()),
        ("o1(node1) -> u2(node2)", &c.o1.ns, c.u2.addr()),
        ("u2(node2) -> o1(node1)", &c.u2.ns, c.o1.addr()),
    ];
    let failed = probe_all(&must_fail);
    assert_eq!(
        failed.len(),
        must_fail.len(),
        "every cross-node cell should fail without the fix; failed only: {failed:#?}"
    );

    // Installing the fix afterwards repairs them (proof that the /32 routes are the fix).
    c.install_fix();
    expect_all(&c, &must_fail.iter().map(|(l, n, a)| (*l, *n, *a)).collect::<Vec<_>>());
}

// ---------------------------------------------------------------------------------------------
// Multi-NIC pod (eth0 overlay + net1 macvlan, coordinator overlay mode)

#[test]
fn multi_nic_pod_paths() {
    let tn = TestNet::new("kc").unwrap();
    let c = setup(&tn, "coord-multi", Opts { fix: true });
    let m_eth0 = SocketAddr::new(c.m.atts[0].ip, PORT);
    let m_net1 = SocketAddr::new(c.m.atts[1].ip, PORT);
    expect_all(
        &c,
        &[
            ("m -> o1 (same node)", &c.m.ns, c.o1.addr()),
            ("m -> o2 (other node)", &c.m.ns, c.o2.addr()),
            ("m -> u1 (same node)", &c.m.ns, c.u1.addr()),
            ("m -> u2 (other node)", &c.m.ns, c.u2.addr()),
            ("m -> u3 (other node, other subnet)", &c.m.ns, c.u3.addr()),
            ("u1 -> m net1", &c.u1.ns, m_net1),
            ("u1 -> m eth0", &c.u1.ns, m_eth0),
            ("u2 -> m net1", &c.u2.ns, m_net1),
            ("u2 -> m eth0", &c.u2.ns, m_eth0),
            ("u3 -> m net1", &c.u3.ns, m_net1),
            ("o1 -> m eth0", &c.o1.ns, m_eth0),
            ("o2 -> m eth0", &c.o2.ns, m_eth0),
            ("node1 -> m net1", c.node(0), m_net1),
            ("node2 -> m net1", c.node(1), m_net1),
            ("node1 -> m eth0", c.node(0), m_eth0),
            ("m -> node1", &c.m.ns, sock(NODE_IPS[0], PORT)),
            ("m -> node2", &c.m.ns, sock(NODE_IPS[1], PORT)),
        ],
    );
    // The pod's policy routing (DESIGN.md section 4, overlay mode).
    let m_ip = c.m.atts[0].ip;
    let rules = ip(&tn, &c.m.ns, &["rule"]);
    assert!(rules.contains("from 172.16.100.40 lookup 101"), "{rules}");
    assert!(rules.contains(&format!("from {m_ip} lookup 100")), "{rules}");
    let main = ip(&tn, &c.m.ns, &["route"]);
    assert_eq!(main.matches("default").count(), 1, "one default route in main: {main}");
    assert!(main.contains("default via 169.254.1.1 dev eth0"), "{main}");
    assert!(main.contains(&format!("172.16.1.2 dev eth0 scope link src {m_ip}")), "{main}");
    let t101 = table(&tn, &c.m.ns, 101);
    assert!(t101.contains("default via 172.16.0.1 dev net1"), "{t101}");
    let t500 = table(&tn, c.node(0), 500);
    assert!(t500.contains("172.16.100.40 dev cali"), "{t500}");
}

// ---------------------------------------------------------------------------------------------
// Services: hand-written kube-proxy DNAT rules on node1

fn dnat(tn: &TestNet, node: &Netns, chain: &str, dst: &str, dport: u16, to: SocketAddr) {
    let dport = dport.to_string();
    let to = to.to_string();
    tn.exec_ok(
        node,
        &[
            "iptables",
            "-t",
            "nat",
            "-A",
            chain,
            "-d",
            dst,
            "-p",
            "tcp",
            "--dport",
            &dport,
            "-j",
            "DNAT",
            "--to-destination",
            &to,
        ],
    )
    .expect("DNAT rule");
}

#[test]
fn underlay_pod_to_cluster_ip_with_an_overlay_endpoint_on_the_other_node() {
    let tn = TestNet::new("kc").unwrap();
    let c = setup(&tn, "coord-svc-a", Opts { fix: true });
    dnat(&tn, c.node(0), "PREROUTING", "10.233.0.10/32", 80, c.o2.addr());
    expect_all(&c, &[("u1 -> 10.233.0.10:80 -> o2(node2)", &c.u1.ns, sock("10.233.0.10", 80))]);
}

#[test]
fn overlay_pod_to_cluster_ip_with_an_underlay_endpoint_on_the_same_node() {
    let tn = TestNet::new("kc").unwrap();
    let c = setup(&tn, "coord-svc-b", Opts { fix: true });
    dnat(&tn, c.node(0), "PREROUTING", "10.233.0.11/32", 80, c.u1.addr());
    expect_all(&c, &[("o1 -> 10.233.0.11:80 -> u1(node1)", &c.o1.ns, sock("10.233.0.11", 80))]);
}

#[test]
fn nodeport_to_an_underlay_pod_replies_through_veth0() {
    let tn = TestNet::new("kc").unwrap();
    let c = setup(&tn, "coord-np", Opts { fix: true });
    let client = c.fabric.node("client", "172.16.1.100/16", "172.16.0.1");
    // NodePort without SNAT (externalTrafficPolicy: Local style): the pod sees the client's IP.
    dnat(&tn, c.node(0), "PREROUTING", "172.16.1.2/32", 30080, c.u1.addr());
    let before = mark_packets(&tn, &c.u1.ns);
    expect_all(&c, &[("client -> node1:30080 -> u1", &client, sock("172.16.1.2", 30080))]);
    let after = mark_packets(&tn, &c.u1.ns);
    assert!(after > before, "the pod's MARK rule counted no packet ({before} -> {after})");
    let rules = ip(&tn, &c.u1.ns, &["rule"]);
    assert!(rules.contains("fwmark 0x1 lookup 100"), "{rules}");
    let t100 = table(&tn, &c.u1.ns, 100);
    assert!(t100.contains("default via 172.16.1.2 dev veth0"), "{t100}");
    // The client reaches the pod directly too (the underlay subnet is routable).
    expect_all(&c, &[("client -> u1 directly", &client, c.u1.addr())]);
    // Without the fwmark rule the reply leaves on eth0 un-NATed and the client drops it.
    ip(&tn, &c.u1.ns, &["rule", "del", "fwmark", "0x1", "lookup", "100"]);
    let failed = probe_all(&[("client -> node1:30080 -> u1, no fwmark rule", &client, sock("172.16.1.2", 30080))]);
    assert_eq!(failed.len(), 1, "NodePort should fail without the pod's reply steering");
}

#[test]
fn nodeport_to_the_multi_nic_pods_eth0_replies_through_eth0() {
    let tn = TestNet::new("kc").unwrap();
    let c = setup(&tn, "coord-np-m", Opts { fix: true });
    let client = c.fabric.node("client", "172.16.1.100/16", "172.16.0.1");
    let m_eth0 = SocketAddr::new(c.m.atts[0].ip, PORT);
    let m_net1 = SocketAddr::new(c.m.atts[1].ip, PORT);
    dnat(&tn, c.node(0), "PREROUTING", "172.16.1.2/32", 30081, m_eth0);
    // (A NodePort endpoint is the pod IP kubelet reports, eth0's; a DNAT to the net1 IP would
    // be answered from table 101 straight over net1, un-NATed, and is not a Kubernetes path.)
    // Replies from eth0's IP use table 100 (eth0's default), not main's 172.16.0.0/16 dev net1.
    expect_all(
        &c,
        &[
            ("client -> node1:30081 -> m eth0", &client, sock("172.16.1.2", 30081)),
            ("client -> m net1 directly", &client, m_net1),
        ],
    );
}

/// Connections the pod's reply-steering rules marked (conntrack entries with mark 0x1).
fn mark_packets(tn: &TestNet, pod: &Netns) -> u64 {
    let out = tn.exec(pod, &["conntrack", "-L", "--mark", "1"]).expect("conntrack -L");
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains("mark=1")).count() as u64
}

// ---------------------------------------------------------------------------------------------
// CHECK and DEL

#[test]
fn check_then_del_cleans_everything() {
    let tn = TestNet::new("kc").unwrap();
    let c = setup(&tn, "coord-del", Opts { fix: true });

    // CHECK passes on a live underlay pod and fails once a coordinator route is gone.
    let u1 = &c.u1.atts[0];
    let chk = c.cni(0, &u1.conflist).check(&c.u1.ns, "eth0", &u1.cid, &u1.args);
    assert!(chk.ok, "CHECK on a healthy pod: {} {}", chk.json, chk.stderr);
    let listed = String::from_utf8_lossy(
        &tn.exec_ok(&c.u1.ns, &["nft", "list", "table", "ip", "knit-coordinator"]).unwrap().stdout,
    )
    .into_owned();
    assert!(listed.contains("iifname \"veth0\" ct state new meta mark set 0x00000001"), "{listed}");
    tn.exec_ok(&c.u1.ns, &["nft", "delete", "table", "ip", "knit-coordinator"]).unwrap();
    let chk = c.cni(0, &u1.conflist).check(&c.u1.ns, "eth0", &u1.cid, &u1.args);
    assert!(!chk.ok, "CHECK should notice the missing reply-steering table");
    assert!(chk.json["msg"].as_str().unwrap_or("").contains("reply-steering"), "{}", chk.json);
    ip(&tn, &c.u1.ns, &["route", "del", "10.233.64.0/18"]);
    let chk = c.cni(0, &u1.conflist).check(&c.u1.ns, "eth0", &u1.cid, &u1.args);
    assert!(!chk.ok, "CHECK should notice the missing 10.233.64.0/18 route");
    assert!(chk.json["msg"].as_str().unwrap_or("").contains("10.233.64.0/18"), "{}", chk.json);

    c.del_all();
    for i in 0..2 {
        let node = c.node(i);
        assert!(
            links_with_prefix(node, "veth").is_empty(),
            "node{} veths: {:?}",
            i + 1,
            links_with_prefix(node, "veth")
        );
        assert!(
            links_with_prefix(node, "cali").is_empty(),
            "node{} calis: {:?}",
            i + 1,
            links_with_prefix(node, "cali")
        );
        let t500 = table(&tn, node, 500);
        assert!(t500.trim().is_empty(), "node{} table 500: {t500}", i + 1);
        assert!(c.underlay_ips(i).is_empty());
    }
    for pod in c.pods() {
        let links = links_with_prefix(&pod.ns, "");
        assert_eq!(links, vec!["lo".to_string()], "{} still has links", pod.name);
        let rules = ip(&tn, &pod.ns, &["rule"]);
        let ours: Vec<&str> = rules.lines().filter(|l| l.contains("lookup 10")).collect();
        assert!(ours.is_empty(), "{}: {rules}", pod.name);
        let tables =
            String::from_utf8_lossy(&tn.exec_ok(&pod.ns, &["nft", "list", "tables"]).unwrap().stdout).into_owned();
        assert!(!tables.contains("knit-coordinator"), "{}: {tables}", pod.name);
    }
    // The /32 routes of the fix belong to the agent (here, the test): remove them.
    let fix_routes = c.fix_routes.borrow().clone();
    for (node, uip, via) in &fix_routes {
        ip(&tn, c.node(*node), &["route", "del", &format!("{uip}/32"), "via", &via.to_string(), "dev", "eth0"]);
    }
    for i in 0..2 {
        let r = ip(&tn, c.node(i), &["route"]);
        for (_, uip, _) in &fix_routes {
            assert!(!r.contains(&format!("{uip} via")), "node{}: {r}", i + 1);
        }
    }
    // DEL again (no cached result now): succeeds, changes nothing.
    c.del_all();
}

#[test]
fn check_passes_on_the_multi_nic_pods_net1() {
    let tn = TestNet::new("kc").unwrap();
    let c = setup(&tn, "coord-chk-m", Opts { fix: false });
    let m1 = &c.m.atts[1];
    let chk = c.cni(0, &m1.conflist).check(&c.m.ns, "net1", &m1.cid, &m1.args);
    assert!(chk.ok, "CHECK on the multi-NIC pod's net1 right after ADD: {} {}", chk.json, chk.stderr);
    // And it notices a missing route.
    ip(&tn, &c.m.ns, &["route", "del", "default", "table", "101"]);
    let chk = c.cni(0, &m1.conflist).check(&c.m.ns, "net1", &m1.cid, &m1.args);
    assert!(!chk.ok, "CHECK should notice the missing table-101 default");
}

#[test]
fn del_of_an_overlay_mode_nic_removes_what_add_made() {
    let tn = TestNet::new("kc").unwrap();
    let c = setup(&tn, "coord-del-m", Opts { fix: false });
    let before_rules = ip(&tn, &c.m.ns, &["rule"]);
    let before_routes = ip(&tn, &c.m.ns, &["route", "show", "table", "all"]);
    let m1 = &c.m.atts[1];
    let out = c.cni(0, &m1.conflist).del(&c.m.ns, "net1", &m1.cid, &m1.args);
    assert!(out.ok, "{} {}", out.json, out.stderr);
    let rules = ip(&tn, &c.m.ns, &["rule"]);
    let routes = ip(&tn, &c.m.ns, &["route", "show", "table", "all"]);
    let m_ip = c.m.ip().to_string();
    let leftovers: Vec<&str> = rules
        .lines()
        .filter(|l| l.contains("lookup 10"))
        .chain(routes.lines().filter(|l| {
            l.contains("table 10")
                || l.contains("172.16.1.2")
                || l.contains("10.233.0.0/18")
                || l.contains("10.233.64.0/18")
        }))
        .collect();
    assert!(
        leftovers.is_empty(),
        "after DEL of net1, the pod ({m_ip}) still has what the coordinator added for it:\n{}\n--- before DEL:\n{before_rules}{before_routes}",
        leftovers.join("\n")
    );
}

#[test]
fn del_after_the_pod_netns_is_gone() {
    let tn = TestNet::new("kc").unwrap();
    let c = setup(&tn, "coord-gone", Opts { fix: false });
    let u1 = &c.u1.atts[0];
    let path = c.u1.ns.path().unwrap().display().to_string();
    let name = std::path::Path::new(&path).file_name().unwrap().to_str().unwrap().to_string();
    // Deleting the namespace takes veth0 and with it the host veth; the table-500 route goes
    // with its device.
    Netns::delete_named(&name).unwrap();
    // The echo server keeps the namespace alive; the named mount is gone, which is what a
    // runtime sees.
    let out = c.cni(0, &u1.conflist).call_netns("del", &path, "eth0", &u1.cid, &u1.args);
    assert!(out.ok, "DEL with the netns gone: {} {}", out.json, out.stderr);
    let out = c.cni(0, &u1.conflist).call_netns("del", &path, "eth0", &u1.cid, &u1.args);
    assert!(out.ok, "second DEL: {} {}", out.json, out.stderr);
    let t500 = table(&tn, c.node(0), 500);
    assert!(!t500.contains("172.16.100.10"), "{t500}");
}

// ---------------------------------------------------------------------------------------------
// Bad configuration and failed ADD

/// One node with an empty pod, for error cases.
fn lone_node<'a>(tn: &'a TestNet) -> (Fabric<'a>, Netns) {
    let fabric = Fabric::new(tn, &["172.16.0.1/16"]);
    let node = fabric.node("n1", "172.16.1.2/16", "172.16.0.1");
    (fabric, node)
}

#[test]
fn bad_coordinator_config_is_code_7_naming_the_field() {
    let tn = TestNet::new("kc").unwrap();
    let dir = Scratch::new("coord-bad");
    let (_fabric, node) = lone_node(&tn);
    let cases = [
        ("hostRuleTable", coordinator("underlay", r#","hostRuleTable":254"#)),
        ("hostRuleTable", coordinator("underlay", r#","hostRuleTable":0"#)),
        ("mode", coordinator("sideways", "")),
        ("vethMTU", coordinator("underlay", r#","vethMTU":10"#)),
        ("podRPFilter", coordinator("underlay", r#","podRPFilter":7"#)),
    ];
    for (i, (field, coord)) in cases.into_iter().enumerate() {
        let pod = tn.pod(&format!("p{i}")).unwrap();
        let list = conflist(
            &dir,
            &format!("bad{i}.conflist"),
            "macvlan-underlay",
            &[macvlan("172.16.100.10/16", "172.16.0.1", true), coord],
        );
        check_bad(&tn, &node, &pod, &dir, list, field, i);
    }
    // A multicast Service CIDR.
    let pod = tn.pod("pm").unwrap();
    let coord = r#"{"type":"knit-coordinator","mode":"underlay","overlayPodCIDR":["10.233.64.0/18"],"serviceCIDR":["224.0.0.0/4"],"hijackCIDR":[]}"#.to_string();
    let list = conflist(
        &dir,
        "bad-svc.conflist",
        "macvlan-underlay",
        &[macvlan("172.16.100.10/16", "172.16.0.1", true), coord],
    );
    check_bad(&tn, &node, &pod, &dir, list, "serviceCIDR", 99);
}

/// ADD fails with code 7 naming `field`, the coordinator leaves nothing of its own, and the
/// macvlan the runtime does not roll back is what a runtime's DEL must clean.
fn check_bad(tn: &TestNet, node: &Netns, pod: &Netns, dir: &Scratch, list: PathBuf, field: &str, i: usize) {
    let cni = Cni::new(tn, node, list, dir.path.join("state"));
    let cid = format!("cid-bad{i}");
    let out = cni.add(pod, "eth0", &cid, "");
    assert_eq!(out.err_code(), 7, "{field}: {} {}", out.json, out.stderr);
    let msg = out.json["msg"].as_str().unwrap_or("");
    assert!(msg.contains(field), "{field}: {msg}");
    // Nothing of the coordinator's: no veth pair, no host rule or table-500 route, no pod rule.
    assert!(links_with_prefix(node, "veth").is_empty(), "{field}: host veth left");
    assert!(links_with_prefix(pod, "veth0").is_empty(), "{field}: veth0 left");
    assert!(!ip(tn, node, &["rule"]).contains("lookup 500"), "{field}: host rule left");
    assert!(ip(tn, node, &["route", "show", "table", "all"]).lines().all(|l| !l.contains("table 500")), "{field}");
    assert!(!ip(tn, pod, &["rule"]).contains("lookup 100"), "{field}: pod rule left");
}

#[test]
fn failed_add_chain_leftovers_and_del() {
    // What the runtime does when the coordinator fails after macvlan succeeded: the CNI
    // runtime (like libcni) does not roll back earlier plugins; the caller (containerd) runs
    // DEL. Record what is left and whether DEL cleans it.
    let tn = TestNet::new("kc").unwrap();
    let dir = Scratch::new("coord-chain");
    let (_fabric, node) = lone_node(&tn);
    let pod = tn.pod("p").unwrap();
    let coord = coordinator("underlay", r#","hostRuleTable":254"#);
    let list =
        conflist(&dir, "bad.conflist", "macvlan-underlay", &[macvlan("172.16.100.10/16", "172.16.0.1", true), coord]);
    let cni = Cni::new(&tn, &node, list, dir.path.join("state"));
    let out = cni.add(&pod, "eth0", "cid-chain", "");
    assert_eq!(out.err_code(), 7);
    // macvlan's eth0 stays in the pod: the runtime does not roll back (as libcni).
    assert_eq!(links_with_prefix(&pod, "eth0"), vec!["eth0".to_string()], "macvlan's eth0 after the failed chain");
    assert!(links_with_prefix(&node, "veth").is_empty());
    // DEL with the same (bad) config: the coordinator cleans up with its defaults instead of
    // refusing, so macvlan's DEL runs too and the pod can always be torn down.
    let out = cni.del(&pod, "eth0", "cid-chain", "");
    assert!(out.ok, "DEL with the bad config: {} {}", out.json, out.stderr);
    assert!(links_with_prefix(&pod, "eth0").is_empty());
    assert!(links_with_prefix(&node, "veth").is_empty());
    // A second DEL, now with a good config, is a no-op that succeeds.
    let good = conflist(
        &dir,
        "good.conflist",
        "macvlan-underlay",
        &[macvlan("172.16.100.10/16", "172.16.0.1", true), coordinator("underlay", "")],
    );
    let out = Cni::new(&tn, &node, good, dir.path.join("state")).del(&pod, "eth0", "cid-chain", "");
    assert!(out.ok, "{} {}", out.json, out.stderr);
}

#[test]
fn add_failing_during_install_rolls_back() {
    // A policy route whose gateway is not on-link makes the kernel refuse it after the veth
    // pair and the cluster routes are in: the coordinator must undo all of it.
    let tn = TestNet::new("kc").unwrap();
    let dir = Scratch::new("coord-rb");
    let (_fabric, node) = lone_node(&tn);
    let pod = tn.pod("p").unwrap();
    let coord = coordinator("underlay", r#","policyRoutes":[{"dst":"192.0.2.0/24","gw":"198.51.100.1"}]"#);
    let list =
        conflist(&dir, "rb.conflist", "macvlan-underlay", &[macvlan("172.16.100.10/16", "172.16.0.1", true), coord]);
    let cni = Cni::new(&tn, &node, list, dir.path.join("state"));
    let out = cni.add(&pod, "eth0", "cid-rb", "");
    assert!(!out.ok, "ADD with an unreachable policy-route gateway should fail");
    assert!(links_with_prefix(&node, "veth").is_empty(), "host veth left: {:?}", links_with_prefix(&node, "veth"));
    assert!(links_with_prefix(&pod, "veth0").is_empty(), "veth0 left");
    let routes = ip(&tn, &pod, &["route", "show", "table", "all"]);
    assert!(!routes.contains("10.233.64.0/18") && !routes.contains("table 100"), "{routes}");
    assert!(!ip(&tn, &pod, &["rule"]).contains("lookup 100"));
    let t500 = table(&tn, &node, 500);
    assert!(t500.trim().is_empty(), "{t500}");
    // The runtime's DEL (as containerd would run it) then succeeds and removes macvlan's eth0.
    let out = cni.del(&pod, "eth0", "cid-rb", "");
    assert!(out.ok, "{} {}", out.json, out.stderr);
    assert!(links_with_prefix(&pod, "eth0").is_empty());
}
