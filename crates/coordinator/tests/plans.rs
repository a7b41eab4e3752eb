//! Whole plans, compared with golden files (`tests/plans/*.txt`): every decision of every mode,
//! for ADD (what it installs, and so what CHECK verifies) and for DEL (what it removes, with and
//! without prevResult, with the pod reachable or not). No root needed: the facts are written
//! here as the kernel would report them.
//!
//! The renderer destructures every struct without `..`, so a field added to a plan (or to a
//! route or rule) fails to compile here until it is rendered: nothing a plan holds escapes the
//! comparison. After an intended change: `KNIT_BLESS=1 cargo nextest run -p knit-coordinator
//! --test plans`, then read the diff of the golden files.
//!
//! DEL plans are computed from the state the ADD plan leaves ([`after_add`]), and every test
//! also checks that DEL removes everything ADD made that does not go with a deleted device.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use knit_cni::{CniResult, Interface, IpConfig};
use knit_coordinator::config::Conf;
use knit_coordinator::plan::{
    self, del_plan, DelPlan, DevRoute, Facts, NeighFlush, NodeAddr, NodeFacts, OwnedVeth, Plan, PodFacts, PodLink,
    VethSpec,
};
use knit_host::addr::Address;
use knit_host::route::{Route, RouteKind};
use knit_host::rule::Rule;
use knit_host::{Family, Scope};

const CID: &str = "0123456789abcdef0123";

// ---------------------------------------------------------------------------------------------
// Rendering

fn opt<T: std::fmt::Display>(v: &Option<T>) -> String {
    v.as_ref().map(|x| x.to_string()).unwrap_or_else(|| "-".into())
}

fn route(r: &Route, dev: Option<&str>) -> String {
    let Route { dst, gateway, oif, table, scope, kind, src, onlink, protocol, metric } = r;
    let dev = match (dev, oif) {
        (Some(d), _) => d.to_string(),
        (None, Some(i)) => format!("#{i}"),
        (None, None) => "-".into(),
    };
    format!(
        "{dst} via {} dev {dev} table {table} scope {scope:?} kind {kind:?} src {} onlink {onlink} proto {protocol} metric {}",
        opt(gateway),
        opt(src),
        opt(metric)
    )
}

fn dev_route(r: &DevRoute) -> String {
    let DevRoute { route: r, dev } = r;
    route(r, dev.as_deref())
}

fn rule(r: &Rule) -> String {
    let Rule { family, priority, from, to, fwmark, fwmask, iif, oif, table, action } = r;
    format!(
        "{family:?} pref {} from {} to {} fwmark {}/{} iif {} oif {} lookup {table} action {action:?}",
        opt(priority),
        opt(from),
        opt(to),
        opt(&fwmark.map(|m| format!("{m:#x}"))),
        opt(&fwmask.map(|m| format!("{m:#x}"))),
        opt(iif),
        opt(oif),
    )
}

fn section<T>(out: &mut String, name: &str, items: &[T], f: impl Fn(&T) -> String) {
    let _ = writeln!(out, "{name}:");
    for i in items {
        let _ = writeln!(out, "  {}", f(i));
    }
}

fn render(p: &Plan) -> String {
    let Plan {
        mode,
        ifname,
        node_ips,
        pod_links_stale,
        veth,
        table,
        pod_sysctls,
        pod_mac,
        txqlen,
        pod_routes,
        pod_routes_del,
        pod_rules,
        pod_steering,
        host_rules,
        host_neigh_flush,
        host_routes,
        host_sysctls,
    } = p;
    let mut s = String::new();
    let _ = writeln!(s, "mode: {mode:?}");
    let _ = writeln!(s, "ifname: {ifname}");
    let _ = writeln!(s, "table: {}", opt(table));
    section(&mut s, "node ips", node_ips, |ip| ip.to_string());
    section(&mut s, "pod links stale", pod_links_stale, |l| l.clone());
    match veth {
        Some(VethSpec { pod, host, owner, mtu, link_address }) => {
            let _ =
                writeln!(s, "veth: pod {pod} host {host} owner {owner} mtu {mtu} link address {}", opt(link_address));
        }
        None => s.push_str("veth: -\n"),
    }
    section(&mut s, "pod sysctls", pod_sysctls, |(k, v)| format!("{k} = {v}"));
    let _ = writeln!(s, "pod mac: {}", opt(pod_mac));
    let _ = writeln!(s, "txqlen: {}", opt(txqlen));
    section(&mut s, "pod routes", pod_routes, dev_route);
    section(&mut s, "pod routes moved out of main", pod_routes_del, dev_route);
    section(&mut s, "pod rules", pod_rules, rule);
    section(&mut s, "pod reply steering", pod_steering, |f| format!("{f:?}"));
    section(&mut s, "host rules (shared)", host_rules, rule);
    section(&mut s, "host neighbours flushed", host_neigh_flush, |NeighFlush { index, ip }| {
        format!("{ip} dev #{index}")
    });
    section(&mut s, "host routes", host_routes, dev_route);
    section(&mut s, "host sysctls", host_sysctls, |(k, v)| format!("{k} = {v}"));
    s
}

fn render_del(p: &DelPlan) -> String {
    let DelPlan {
        mode,
        ifname,
        pod_rules,
        pod_routes,
        pod_routes_restore,
        pod_steering,
        pod_links,
        host_routes,
        host_veth,
        notes,
    } = p;
    let mut s = String::new();
    let _ = writeln!(s, "mode: {mode:?}");
    let _ = writeln!(s, "ifname: {ifname}");
    section(&mut s, "pod rules", pod_rules, rule);
    section(&mut s, "pod routes", pod_routes, dev_route);
    section(&mut s, "pod routes restored", pod_routes_restore, dev_route);
    section(&mut s, "pod reply steering", pod_steering, |f| format!("{f:?}"));
    section(&mut s, "pod links (one batch)", pod_links, |l| l.clone());
    section(&mut s, "host routes", host_routes, dev_route);
    match host_veth {
        Some(OwnedVeth { name, owner }) => {
            let _ = writeln!(s, "host veth: {name} if marked {owner}");
        }
        None => s.push_str("host veth: -\n"),
    }
    section(&mut s, "notes", notes, |n| n.clone());
    s
}

/// Compares `text` with `tests/plans/<name>.txt` (or writes it with `KNIT_BLESS=1`).
fn golden(name: &str, text: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/plans").join(format!("{name}.txt"));
    if std::env::var_os("KNIT_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        return;
    }
    let want =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e} (KNIT_BLESS=1 writes it)", path.display()));
    if want != text {
        let mut diff = String::new();
        for (i, (w, h)) in want.lines().zip(text.lines()).enumerate() {
            if w != h {
                let _ = writeln!(diff, "line {}:\n  golden: {w}\n  now:    {h}", i + 1);
            }
        }
        panic!(
            "{name}: the plan differs from {} ({} vs {} lines)\n{diff}\n--- now:\n{text}",
            path.display(),
            want.lines().count(),
            text.lines().count()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Inputs

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn conf(extra: &str) -> Conf {
    let json = format!(
        r#"{{"cniVersion":"1.0.0","name":"n","type":"knit-coordinator","overlayPodCIDR":["10.233.64.0/18","2001:db8:64::/56"],"serviceCIDR":["10.233.0.0/18"],"hijackCIDR":["169.254.0.0/16"]{extra}}}"#
    );
    Conf::parse(json.as_bytes()).unwrap()
}

/// A prevResult: `ifname` with these addresses (and gateways).
fn prev(ifname: &str, ips: &[(&str, Option<&str>)]) -> CniResult {
    CniResult {
        interfaces: vec![Interface { name: ifname.into(), sandbox: "/run/netns/p".into(), ..Default::default() }],
        ips: ips.iter().map(|(a, g)| IpConfig { interface: Some(0), address: net(a), gateway: g.map(ip) }).collect(),
        ..Default::default()
    }
}

fn link(index: u32, name: &str, kind: Option<&str>, peer: Option<u32>) -> PodLink {
    PodLink { index, name: name.into(), kind: kind.map(String::from), peer }
}

fn node_addr(index: u32, ifname: &str, n: &str) -> NodeAddr {
    NodeAddr { index, ifname: Some(ifname.into()), net: net(n) }
}

/// A node with its uplink eth0 (#2, v4 and v6), a second uplink (#3) and addresses that never
/// count as the node's (a cali veth, a coordinator veth).
fn node() -> NodeFacts {
    NodeFacts {
        addrs: vec![
            node_addr(2, "eth0", "172.16.1.2/16"),
            node_addr(2, "eth0", "2001:db8:16::2/64"),
            node_addr(3, "eth1", "10.0.0.2/24"),
            node_addr(40, "cali0123456789a", "169.254.1.1/32"),
            node_addr(41, "veth0123456789a", "172.16.9.9/32"),
        ],
        default_route_oifs: vec![],
        default_nic_peer: None,
    }
}

fn kernel_route(dst: &str, gw: Option<&str>, oif: u32, table: u32, scope: Scope, src: Option<&str>) -> Route {
    Route {
        dst: net(dst),
        gateway: gw.map(ip),
        oif: Some(oif),
        table,
        scope,
        kind: RouteKind::Unicast,
        src: src.map(ip),
        onlink: false,
        protocol: 2, // kernel, or the plugin that put it there
        metric: None,
    }
}

fn default_rules() -> Vec<Rule> {
    let mut out = Vec::new();
    for f in [Family::V4, Family::V6] {
        out.push(Rule::new(f, 255).priority(0));
        out.push(Rule::new(f, 254).priority(32766));
    }
    out
}

/// An underlay pod before the coordinator's ADD: macvlan's eth0 (#2) and lo.
fn underlay_pod() -> PodFacts {
    PodFacts {
        links: vec![link(1, "lo", None, None), link(2, "eth0", Some("macvlan"), Some(2))],
        ..PodFacts::default()
    }
}

/// A multi-NIC pod before net1's coordinator ADD: knit-routed's eth0 (#3, peer #40 on the
/// node: cali…) and macvlan's net1 (#4), with their routes and addresses.
fn multi_nic_pod() -> PodFacts {
    PodFacts {
        links: vec![
            link(1, "lo", None, None),
            link(3, "eth0", Some("veth"), Some(40)),
            link(4, "net1", Some("macvlan"), Some(2)),
        ],
        addrs: vec![Address::new(3, net("10.233.64.5/32")), Address::new(4, net("172.16.100.40/16"))],
        routes: vec![
            kernel_route("169.254.1.1/32", None, 3, 254, Scope::Link, None),
            kernel_route("0.0.0.0/0", Some("169.254.1.1"), 3, 254, Scope::Universe, None),
            kernel_route("172.16.0.0/16", None, 4, 254, Scope::Link, Some("172.16.100.40")),
        ],
        rules: default_rules(),
    }
}

fn multi_nic_node() -> NodeFacts {
    NodeFacts { default_nic_peer: Some("cali0123456789a".into()), ..node() }
}

// ---------------------------------------------------------------------------------------------
// What ADD leaves, and what DEL must remove of it

/// The pod as the ADD plan leaves it (its links, routes and rules), as the kernel would report
/// it to DEL.
fn after_add(p: &Plan, before: &Facts) -> Facts {
    let mut f = before.clone();
    f.pod.links.retain(|l| !p.pod_links_stale.contains(&l.name));
    if let Some(v) = &p.veth {
        f.pod.links.push(link(100, &v.pod, Some("veth"), Some(200)));
    }
    let index = |f: &Facts, dev: &Option<String>| dev.as_ref().and_then(|d| f.pod.link(d)).map(|l| l.index);
    for r in &p.pod_routes {
        let oif = index(&f, &r.dev).or(r.route.oif);
        f.pod.routes.push(Route { oif, ..r.route.clone() });
    }
    for r in &p.pod_routes_del {
        let oif = index(&f, &r.dev);
        f.pod.routes.retain(|x| !(x.dst == r.route.dst && x.table == r.route.table && x.oif == oif));
    }
    f.pod.rules.extend(p.pod_rules.iter().cloned());
    f
}

/// Every pod route and rule ADD made is removed by DEL, or goes with a link DEL deletes (or,
/// for the NIC's own routes in main, with the NIC its own plugin deletes); every host route
/// is removed by DEL or goes with the host veth DEL deletes.
fn assert_del_covers_add(add: &Plan, del: &DelPlan) {
    let gone_links: Vec<&str> = del.pod_links.iter().map(String::as_str).collect();
    for r in &add.pod_routes {
        let with_link = r.dev.as_deref().is_some_and(|d| gone_links.contains(&d));
        let nic_main = r.dev.as_deref() == Some(add.ifname.as_str()) && r.route.table == plan::MAIN_TABLE;
        // A `via` route without a named device, on the first NIC: goes with eth0 or veth0.
        let first_nic_unnamed = r.dev.is_none() && !gone_links.is_empty();
        let removed = del.pod_routes.iter().any(|d| d.route.dst == r.route.dst && d.route.table == r.route.table);
        assert!(with_link || nic_main || first_nic_unnamed || removed, "DEL leaves pod route {r}");
    }
    for r in &add.pod_rules {
        assert!(del.pod_rules.contains(r), "DEL leaves pod rule {}", rule(r));
    }
    assert_eq!(del.pod_steering, add.pod_steering, "reply-steering tables");
    for r in &add.host_routes {
        let with_veth = del.host_veth.as_ref().is_some_and(|v| r.dev.as_deref() == Some(v.name.as_str()));
        assert!(with_veth || del.host_routes.contains(r), "DEL leaves host route {r}");
    }
}

// ---------------------------------------------------------------------------------------------
// ADD and DEL, mode by mode

#[test]
fn underlay_first_nic() {
    let c = conf("");
    let p = prev("eth0", &[("172.16.100.10/16", Some("172.16.0.1"))]);
    let facts = Facts { pod: underlay_pod(), node: node() };
    let add = plan::plan(&c, "eth0", CID, &p, &facts).unwrap();
    golden("underlay-first-add", &render(&add));
    let after = after_add(&add, &facts);
    let del = del_plan(&c, "eth0", CID, Some(&p), Some(&after));
    assert_del_covers_add(&add, &del);
    golden("underlay-first-del", &render_del(&del));
    // Without prevResult: the same, for both families (they are found by name).
    let del = del_plan(&c, "eth0", CID, None, Some(&after));
    golden("underlay-first-del-without-prev", &render_del(&del));
    // The pod's namespace out of reach: only the host veth, if it is this container's.
    let del = del_plan(&c, "eth0", CID, Some(&p), None);
    golden("underlay-first-del-pod-gone", &render_del(&del));
}

#[test]
fn underlay_first_nic_dual_stack() {
    let c = conf("");
    let p = prev("eth0", &[("172.16.100.10/16", Some("172.16.0.1")), ("2001:db8:16::10/64", Some("2001:db8:16::1"))]);
    let facts = Facts { pod: underlay_pod(), node: node() };
    let add = plan::plan(&c, "eth0", CID, &p, &facts).unwrap();
    golden("underlay-first-dual-stack-add", &render(&add));
    let del = del_plan(&c, "eth0", CID, Some(&p), Some(&after_add(&add, &facts)));
    assert_del_covers_add(&add, &del);
    golden("underlay-first-dual-stack-del", &render_del(&del));
}

#[test]
fn underlay_first_nic_with_every_option() {
    let c = conf(
        r#","policyRoutes":[{"dst":"192.0.2.0/24","gw":"172.16.0.254"}],"podMACPrefix":"0a:1b","txQueueLen":2000,
           "vethLinkAddress":"169.254.200.1","vethMTU":9000,"podRPFilter":1,"hostRuleTable":600,
           "nodeIPs":["172.16.1.2"],"tunePodRoutes":true"#,
    );
    let p = prev("eth0", &[("172.16.100.10/16", Some("172.16.0.1"))]);
    // A veth0 left in the pod by an earlier sandbox of the container.
    let mut pod = underlay_pod();
    pod.links.push(link(7, "veth0", Some("veth"), Some(77)));
    let facts = Facts { pod, node: node() };
    let add = plan::plan(&c, "eth0", CID, &p, &facts).unwrap();
    golden("underlay-first-options-add", &render(&add));
    let del = del_plan(&c, "eth0", CID, Some(&p), Some(&after_add(&add, &facts)));
    assert_del_covers_add(&add, &del);
}

#[test]
fn underlay_second_nic() {
    let c = conf("");
    let p = prev("net1", &[("172.17.100.30/16", Some("172.17.0.1"))]);
    let mut pod = underlay_pod();
    pod.links.push(link(100, "veth0", Some("veth"), Some(200)));
    pod.links.push(link(5, "net1", Some("macvlan"), Some(3)));
    pod.addrs = vec![Address::new(2, net("172.16.100.10/16")), Address::new(5, net("172.17.100.30/16"))];
    pod.routes = vec![
        kernel_route("172.17.0.0/16", None, 5, 254, Scope::Link, Some("172.17.100.30")),
        kernel_route("0.0.0.0/0", Some("172.17.0.1"), 5, 254, Scope::Universe, None),
        kernel_route("0.0.0.0/0", Some("172.16.0.1"), 2, 254, Scope::Universe, None),
    ];
    pod.rules = default_rules();
    pod.rules.push(Rule::new(Family::V4, 100).priority(1000).fwmark(1, Some(0xffff_ffff)));
    let facts = Facts { pod, node: node() };
    let add = plan::plan(&c, "net1", CID, &p, &facts).unwrap();
    golden("underlay-second-nic-add", &render(&add));
    let after = after_add(&add, &facts);
    let del = del_plan(&c, "net1", CID, Some(&p), Some(&after));
    assert_del_covers_add(&add, &del);
    golden("underlay-second-nic-del", &render_del(&del));
    // The first NIC's fwmark rule and table 100 are not net1's.
    assert!(!del.pod_rules.iter().any(|r| r.fwmark.is_some()));
    assert!(!del.pod_routes.iter().any(|r| r.route.table == 100));
}

#[test]
fn overlay_net1() {
    let c = conf("");
    let p = prev("net1", &[("172.16.100.40/16", Some("172.16.0.1"))]);
    let facts = Facts { pod: multi_nic_pod(), node: multi_nic_node() };
    let add = plan::plan(&c, "net1", CID, &p, &facts).unwrap();
    golden("overlay-net1-add", &render(&add));
    let after = after_add(&add, &facts);
    let del = del_plan(&c, "net1", CID, Some(&p), Some(&after));
    assert_del_covers_add(&add, &del);
    golden("overlay-net1-del", &render_del(&del));
    // Without prevResult: net1's address comes from net1 itself; the same removals.
    let without = del_plan(&c, "net1", CID, None, Some(&after));
    golden("overlay-net1-del-without-prev", &render_del(&without));
    assert_eq!(without, del);
    // The pod out of reach: nothing to do on the node (the route goes with the cali veth).
    golden("overlay-net1-del-pod-gone", &render_del(&del_plan(&c, "net1", CID, Some(&p), None)));
}

#[test]
fn overlay_net1_dual_stack_with_policy_routes() {
    let c = conf(
        r#","policyRoutes":[{"dst":"192.0.2.0/24","gw":"172.16.0.254"},{"dst":"2001:db8:ff::/48","gw":"2001:db8:16::fe"}]"#,
    );
    let p = prev("net1", &[("172.16.100.40/16", Some("172.16.0.1")), ("2001:db8:16::40/64", Some("2001:db8:16::1"))]);
    let mut pod = multi_nic_pod();
    pod.addrs.push(Address::new(3, net("2001:db8:64::5/128")));
    pod.addrs.push(Address::new(4, net("2001:db8:16::40/64")));
    pod.routes.push(kernel_route("fe80::/64", None, 3, 254, Scope::Universe, None));
    pod.routes.push(kernel_route("::/0", Some("fe80::ecee:eeff:feee:eeee"), 3, 254, Scope::Universe, None));
    pod.routes.push(kernel_route("2001:db8:16::/64", None, 4, 254, Scope::Universe, None));
    pod.routes.push(kernel_route("fe80::/64", None, 4, 254, Scope::Universe, None));
    let facts = Facts { pod, node: multi_nic_node() };
    let add = plan::plan(&c, "net1", CID, &p, &facts).unwrap();
    golden("overlay-net1-dual-stack-add", &render(&add));
    let del = del_plan(&c, "net1", CID, Some(&p), Some(&after_add(&add, &facts)));
    assert_del_covers_add(&add, &del);
    golden("overlay-net1-dual-stack-del", &render_del(&del));
}

#[test]
fn overlay_net2_beside_net1_shares_table_100() {
    let c = conf("");
    let p1 = prev("net1", &[("172.16.100.40/16", Some("172.16.0.1"))]);
    let facts = Facts { pod: multi_nic_pod(), node: multi_nic_node() };
    let add1 = plan::plan(&c, "net1", CID, &p1, &facts).unwrap();
    let mut after1 = after_add(&add1, &facts);
    after1.pod.links.push(link(6, "net2", Some("macvlan"), Some(3)));
    after1.pod.addrs.push(Address::new(6, net("172.18.100.50/16")));
    after1.pod.routes.push(kernel_route("172.18.0.0/16", None, 6, 254, Scope::Link, Some("172.18.100.50")));
    let p2 = prev("net2", &[("172.18.100.50/16", Some("172.18.0.1"))]);
    let add2 = plan::plan(&c, "net2", CID, &p2, &after1).unwrap();
    golden("overlay-net2-add", &render(&add2));
    let after2 = after_add(&add2, &after1);
    // DEL of net2 first: net1 still looks table 100 up, so it stays.
    let del2 = del_plan(&c, "net2", CID, Some(&p2), Some(&after2));
    golden("overlay-net2-del-while-net1-stays", &render_del(&del2));
    assert!(!del2.pod_routes.iter().any(|r| r.route.table == 100));
    // A NIC not named netN finds the first free table.
    let add_ext = plan::plan(&c, "ext", CID, &prev("ext", &[("172.18.100.50/16", None)]), &{
        let mut f = after1.clone();
        f.pod.links.push(link(7, "ext", Some("macvlan"), Some(3)));
        f
    })
    .unwrap();
    assert_eq!(add_ext.table, Some(102));
}

#[test]
fn overlay_net1_takes_the_default_route() {
    let c = conf(r#","podDefaultRouteNic":"net1""#);
    let p = prev("net1", &[("172.16.100.40/16", Some("172.16.0.1"))]);
    let facts = Facts { pod: multi_nic_pod(), node: multi_nic_node() };
    let add = plan::plan(&c, "net1", CID, &p, &facts).unwrap();
    golden("overlay-net1-default-route-add", &render(&add));
    let del = del_plan(&c, "net1", CID, Some(&p), Some(&after_add(&add, &facts)));
    assert_del_covers_add(&add, &del);
    golden("overlay-net1-default-route-del", &render_del(&del));
}

#[test]
fn disabled_mode_plans_nothing() {
    let c = conf(r#","mode":"disabled""#);
    let p = prev("eth0", &[("172.16.100.10/16", Some("172.16.0.1"))]);
    let add = plan::plan(&c, "eth0", CID, &p, &Facts { pod: underlay_pod(), node: node() }).unwrap();
    assert_eq!(add, Plan { ifname: "eth0".into(), ..Plan::default() });
}

// ---------------------------------------------------------------------------------------------
// Decisions that fail

#[test]
fn modes_that_need_the_cluster_cidrs_fail_without_them() {
    let missing = Conf::parse(br#"{"cidrFile":"/nonexistent/knit/coordinator.json"}"#).unwrap();
    let p = prev("eth0", &[("172.16.100.10/16", Some("172.16.0.1"))]);
    let e = plan::plan(&missing, "eth0", CID, &p, &Facts { pod: underlay_pod(), node: node() }).unwrap_err();
    assert_eq!(e.code, 11);
    assert!(e.msg.contains("/nonexistent/knit/coordinator.json") && e.msg.contains("knit cluster set"), "{}", e.msg);
    // Overlay mode beside eth0's default route installs no route it cannot do without.
    let p1 = prev("net1", &[("172.16.100.40/16", Some("172.16.0.1"))]);
    let facts = Facts { pod: multi_nic_pod(), node: multi_nic_node() };
    assert!(plan::plan(&missing, "net1", CID, &p1, &facts).is_ok());
    let mut swap = missing.clone();
    swap.pod_default_route_nic = Some("net1".into());
    assert_eq!(plan::plan(&swap, "net1", CID, &p1, &facts).unwrap_err().code, 11);
}

#[test]
fn bad_inputs_are_errors() {
    let c = conf("");
    let facts = Facts { pod: underlay_pod(), node: node() };
    let no_ip = prev("eth0", &[]);
    assert_eq!(plan::plan(&c, "eth0", CID, &no_ip, &facts).unwrap_err().code, 7);
    // Overlay mode without the host side of eth0.
    let p1 = prev("net1", &[("172.16.100.40/16", Some("172.16.0.1"))]);
    let f = Facts { pod: multi_nic_pod(), node: node() };
    assert!(plan::plan(&c, "net1", CID, &p1, &f).is_err());
}
