//! Everything the coordinator decides, as plain data from plain inputs: the configuration,
//! prevResult and a snapshot of a few kernel facts ([`Facts`], read once by `apply`). `apply`
//! executes a plan and rolls it back; it decides nothing. What ADD installs ([`plan`]), what
//! CHECK verifies (the same plan) and what DEL removes ([`del_plan`], with and without
//! prevResult) are computed here, so they cannot drift apart, and are tested as whole plans
//! (`tests/plans.rs`) without root.
//!
//! Underlay mode (first NIC `eth0` from macvlan), DESIGN.md section 4:
//! - veth pair: pod `veth0`, host `veth` + 11 hex characters of SHA-1 of the container ID,
//!   marked with the container ID ([`names`]);
//! - pod: `<nodeIP>/32 dev veth0 src <podIP>` for this node's own IPs only ([`node_ips`]), and
//!   `<overlayPodCIDR|serviceCIDR|hijackCIDR> via <nodeIP> dev veth0 src <podIP>` in main;
//! - pod reply steering: nf_tables MARK/CONNMARK equivalents on veth0 ([`steering`]),
//!   `fwmark 0x1 lookup 100`, table 100 `default via <nodeIP> dev veth0`;
//! - host: `pref 1000 lookup 500`, `<podIP>/32 dev veth… scope link table 500`.
//!
//! Overlay mode (`net1` from macvlan beside `eth0` from knit-routed):
//! - `from <net1 IP> lookup 101` with net1's routes (and its gateway as default) in 101;
//! - `from <eth0 IP> lookup 100` with eth0's default copied into 100;
//! - `<nodeIP>/32 dev eth0 src <eth0 IP>` in main and in 101;
//! - host: `<net1 IP>/32 dev cali… scope link table 500`.

mod del;
mod facts;
mod mode;
mod names;
pub mod node_ips;
mod steering;

use std::net::IpAddr;

use ipnet::IpNet;
use knit_cni::{CniError, CniResult};
use knit_host::route::{Route, RouteKind};
use knit_host::rule::Rule;
use knit_host::{Family, Mac, Scope};

pub use del::{del_plan, DelPlan, OwnedVeth};
pub use facts::{host_net, needs_for_add, needs_for_del, Facts, Needs, NodeAddr, NodeFacts, PodFacts, PodLink};
pub use mode::{needs_cluster_cidrs, nic_table, resolve_mode, underlay_first, ResolvedMode, POD_VETH};
pub use names::{host_veth_name, owner_mark};
pub use steering::{steering_table, STEERING_TABLE};

use crate::config::{
    CidrSource, Conf, HOST_RULE_PRIORITY, MARK_RULE_PRIORITY, REPLY_MARK, REPLY_TABLE, SOURCE_RULE_PRIORITY,
};
use crate::error;

/// The kernel's main routing table.
pub const MAIN_TABLE: u32 = 254;

/// A route whose output device is known by name at plan time; `apply` resolves the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevRoute {
    pub route: Route,
    pub dev: Option<String>,
}

impl DevRoute {
    /// The device is named; an index carried over from a kernel dump is dropped so that the
    /// name is the only source of truth.
    pub fn new(route: Route, dev: &str) -> DevRoute {
        DevRoute { route: Route { oif: None, ..route }, dev: Some(dev.to_string()) }
    }

    /// A route the kernel resolves the device of (`via <gw>` alone).
    pub fn any_dev(route: Route) -> DevRoute {
        DevRoute { route, dev: None }
    }
}

impl std::fmt::Display for DevRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.route)?;
        if let Some(d) = &self.dev {
            write!(f, " dev {d}")?;
        }
        Ok(())
    }
}

/// Everything ADD installs for one attachment (and CHECK verifies).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub mode: Option<ResolvedMode>,
    pub ifname: String,
    /// The node IPs the pod reaches its node by, best first.
    pub node_ips: Vec<IpAddr>,
    /// Pod links of an earlier sandbox of this container to delete first (a stale veth0).
    pub pod_links_stale: Vec<String>,
    /// Underlay first NIC: the veth pair to create.
    pub veth: Option<VethSpec>,
    /// The NIC's own table (policy routing for its source IPs), when it gets one.
    pub table: Option<u32>,
    pub pod_sysctls: Vec<(String, String)>,
    /// MAC for `ifname` from `podMACPrefix`.
    pub pod_mac: Option<Mac>,
    pub txqlen: Option<u32>,
    /// Pod routes to add, in order.
    pub pod_routes: Vec<DevRoute>,
    /// Pod routes to remove from main (moved into the NIC's table); a rollback puts them back.
    pub pod_routes_del: Vec<DevRoute>,
    pub pod_rules: Vec<Rule>,
    /// The families that get the pod's reply-steering table ([`steering_table`]).
    pub pod_steering: Vec<Family>,
    /// Node rules shared by every pod: added when missing, never removed (not by a rollback
    /// either: another pod's ADD may have found it in place a moment ago).
    pub host_rules: Vec<Rule>,
    /// Neighbour entries for the pod's IPs an earlier pod may have left on the node.
    pub host_neigh_flush: Vec<NeighFlush>,
    pub host_routes: Vec<DevRoute>,
    pub host_sysctls: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VethSpec {
    pub pod: String,
    pub host: String,
    /// The mark the host end carries ([`owner_mark`]): a veth of this name is only ever
    /// deleted when it carries it.
    pub owner: String,
    pub mtu: u32,
    pub link_address: Option<IpNet>,
}

/// A neighbour entry to delete from the node (missing is fine).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeighFlush {
    /// The node interface's index.
    pub index: u32,
    pub ip: IpAddr,
}

/// The NIC's addresses, from prevResult: the IPs of the interface named `ifname` in the
/// sandbox, or every IP when the result does not say which interface holds it.
pub fn nic_ips(prev: &CniResult, ifname: &str) -> Vec<IpNet> {
    prev.ips
        .iter()
        .filter(|ip| match ip.interface {
            Some(i) => prev.interfaces.get(i as usize).map(|x| x.name == ifname).unwrap_or(true),
            None => true,
        })
        .map(|ip| ip.address)
        .collect()
}

/// The families whose reply-steering rules ([`steering_table`]) an underlay first NIC would get:
/// one per family of its addresses (the plan drops a family the node has no IP of). ADD starts
/// writing them before the plan exists, so they must be foreseeable from prevResult alone.
pub fn steering_families(prev: &CniResult, ifname: &str) -> Vec<Family> {
    families(&nic_ips(prev, ifname))
}

/// The distinct families of `ips`, in order of first appearance.
fn families(ips: &[IpNet]) -> Vec<Family> {
    let mut out: Vec<Family> = Vec::new();
    for f in ips.iter().map(Family::of_net) {
        if !out.contains(&f) {
            out.push(f);
        }
    }
    out
}

/// The first address of each family among `ips`.
fn first_per_family(ips: &[IpNet]) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    for n in ips {
        if !out.iter().any(|x| x.is_ipv4() == n.addr().is_ipv4()) {
            out.push(n.addr());
        }
    }
    out
}

fn of_family(ips: &[IpAddr], f: Family) -> Option<IpAddr> {
    ips.iter().copied().find(|ip| Family::of(ip) == f)
}

fn gateway_of(prev: &CniResult, f: Family) -> Option<IpAddr> {
    prev.ips.iter().filter_map(|i| i.gateway).find(|g| Family::of(g) == f)
}

/// `src` on IPv4 routes only: the kernel ignores it on IPv6 routes in some versions
/// (Spiderpool notes kernel bug 107071), and only IPv4 needs it.
fn with_src(r: Route, src: Option<IpAddr>) -> Route {
    match src {
        Some(s) if s.is_ipv4() && r.family() == Family::V4 => r.src(s),
        _ => r,
    }
}

/// `<nodeIP>/32 scope link src <src>` for each of this node's IPs of family `f`, and only
/// those: a route to another node's IP through the node would make that node's replies come
/// back over the wire, asymmetric.
fn node_routes(node_ips: &[IpAddr], f: Family, src: Option<IpAddr>) -> Vec<Route> {
    node_ips
        .iter()
        .filter(|ip| Family::of(ip) == f)
        .map(|ip| with_src(Route::new(host_net(*ip)).scope(Scope::Link), src))
        .collect()
}

/// `<cidr> via <nodeIP> src <src>` for the cluster CIDRs of family `f`.
fn cluster_routes(hijack: &[IpNet], node: IpAddr, f: Family, src: Option<IpAddr>) -> Vec<Route> {
    hijack.iter().filter(|d| Family::of_net(d) == f).map(|d| with_src(Route::via(*d, node, None), src)).collect()
}

/// The overlay-mode routes in the pod's main table through the default NIC (eth0): the node's
/// IPs (macvlan bridge mode blocks child ↔ parent, so node ↔ pod must use eth0) and, with
/// `tunePodRoutes`, the cluster CIDRs via the node. Shared by every overlay-mode NIC of the pod.
fn overlay_eth0_routes(conf: &Conf, node_ips: &[IpAddr], eth0_srcs: &[IpAddr]) -> Vec<DevRoute> {
    let eth0 = &conf.pod_default_cni_nic;
    let mut out = Vec::new();
    for f in [Family::V4, Family::V6] {
        // A family eth0 has no address of cannot reach the node through it.
        let Some(src) = of_family(eth0_srcs, f) else { continue };
        out.extend(node_routes(node_ips, f, Some(src)).into_iter().map(|r| DevRoute::new(r, eth0)));
    }
    if conf.tune_pod_routes {
        for f in [Family::V4, Family::V6] {
            let (Some(node), Some(src)) = (of_family(node_ips, f), of_family(eth0_srcs, f)) else { continue };
            out.extend(
                cluster_routes(&conf.hijack_routes(), node, f, Some(src)).into_iter().map(|r| DevRoute::new(r, eth0)),
            );
        }
    }
    out
}

/// Computes what ADD installs (CHECK verifies the same plan).
pub fn plan(conf: &Conf, ifname: &str, container_id: &str, prev: &CniResult, facts: &Facts) -> Result<Plan, CniError> {
    let mode = resolve_mode(conf, ifname, &facts.pod.link_names())?;
    let mut p = Plan { mode, ifname: ifname.to_string(), ..Plan::default() };
    let Some(mode) = mode else { return Ok(p) };
    if needs_cluster_cidrs(conf, mode, ifname) {
        if let CidrSource::Missing(file) = &conf.cidr_source {
            return Err(error::cidrs_unknown(file));
        }
    }

    let nic_ips = nic_ips(prev, ifname);
    if nic_ips.is_empty() {
        return Err(error::bad_input(format!("prevResult has no IP for {ifname}")));
    }
    let fams = families(&nic_ips);
    // An underlay first NIC ranks node IPs by its own subnet; a secondary NIC by every address
    // of the pod (eth0's subnet is the node's in overlay mode).
    let rank_by: Vec<IpNet> = match mode {
        ResolvedMode::Underlay { first: true } => nic_ips.clone(),
        _ => prev.ips.iter().map(|i| i.address).collect(),
    };
    p.node_ips = node_ips::select(conf, &facts.node, &rank_by);

    if let Some(rp) = conf.pod_rp_filter {
        if fams.contains(&Family::V4) {
            p.pod_sysctls.push(("net/ipv4/conf/all/rp_filter".into(), rp.to_string()));
            p.pod_sysctls.push((format!("net/ipv4/conf/{ifname}/rp_filter"), rp.to_string()));
        }
    }
    // Gratuitous ARP when the MAC changes (podMACPrefix) and when addresses come up.
    if fams.contains(&Family::V4) {
        p.pod_sysctls.push((format!("net/ipv4/conf/{ifname}/arp_notify"), "1".into()));
    }
    if let Some(prefix) = conf.pod_mac_prefix {
        let tail: [u8; 4] = match nic_ips[0].addr() {
            IpAddr::V4(v4) => v4.octets(),
            IpAddr::V6(v6) => {
                let o = v6.octets();
                [o[12], o[13], o[14], o[15]]
            }
        };
        p.pod_mac = Some(Mac([prefix[0], prefix[1], tail[0], tail[1], tail[2], tail[3]]));
    }
    p.txqlen = conf.tx_queue_len;
    // Entries an earlier pod with one of these IPs may have left on the node: a neighbour entry
    // for an address exists only on an interface it is on-link on, so only those are asked.
    for ip in nic_ips.iter().map(|n| n.addr()) {
        for a in facts.node.addrs.iter().filter(|a| a.net.contains(&ip)) {
            let flush = NeighFlush { index: a.index, ip };
            if !p.host_neigh_flush.contains(&flush) {
                p.host_neigh_flush.push(flush);
            }
        }
    }

    match mode {
        ResolvedMode::Underlay { first: true } => underlay_first_nic(conf, &mut p, container_id, facts, &nic_ips),
        ResolvedMode::Underlay { first: false } => {
            // A further underlay NIC: its own table for its source IPs; veth0 already carries
            // the cluster routes.
            let table = nic_table(ifname, &used_tables(&facts.pod));
            p.table = Some(table);
            move_nic_routes(&mut p, prev, facts, ifname, &nic_ips, table);
            for pr in &conf.policy_routes {
                p.pod_routes.push(DevRoute::any_dev(Route::via(pr.dst, pr.gw, None).table(table)));
            }
            for &f in &fams {
                host_side(conf, &mut p, f, &nic_ips, &host_veth_name(container_id));
            }
        }
        ResolvedMode::Overlay => overlay_nic(conf, &mut p, prev, facts, &nic_ips)?,
    }
    Ok(p)
}

/// Underlay mode, the pod's first NIC: the veth pair to the node and everything through it.
fn underlay_first_nic(conf: &Conf, p: &mut Plan, container_id: &str, facts: &Facts, nic_ips: &[IpNet]) {
    let veth = VethSpec {
        pod: POD_VETH.to_string(),
        host: host_veth_name(container_id),
        owner: owner_mark(container_id),
        mtu: conf.veth_mtu,
        link_address: conf.veth_link_address,
    };
    if facts.pod.link(POD_VETH).is_some() {
        p.pod_links_stale.push(POD_VETH.to_string());
    }
    let fams = families(nic_ips);
    let srcs = first_per_family(nic_ips);
    if fams.contains(&Family::V4) {
        p.pod_sysctls
            .push((format!("net/ipv4/conf/{POD_VETH}/rp_filter"), conf.pod_rp_filter.unwrap_or(0).to_string()));
    }
    let hijack = conf.hijack_routes();
    for &f in &fams {
        // A family the node has no IP of gets nothing (no gateway through the node).
        let Some(node) = of_family(&p.node_ips, f) else { continue };
        let src = of_family(&srcs, f);
        let mut routes: Vec<DevRoute> =
            node_routes(&p.node_ips, f, src).into_iter().map(|r| DevRoute::new(r, POD_VETH)).collect();
        if conf.tune_pod_routes {
            routes.extend(cluster_routes(&hijack, node, f, src).into_iter().map(|r| DevRoute::new(r, POD_VETH)));
        }
        p.pod_routes.extend(routes);
        for pr in conf.policy_routes.iter().filter(|r| Family::of_net(&r.dst) == f) {
            p.pod_routes.push(DevRoute::any_dev(Route::via(pr.dst, pr.gw, None)));
        }
        // Reply steering: connections that came in on veth0 answer through it.
        p.pod_rules.push(Rule::new(f, REPLY_TABLE).priority(MARK_RULE_PRIORITY).fwmark(REPLY_MARK, Some(0xffff_ffff)));
        p.pod_routes.push(DevRoute::new(Route::via(f.any(), node, None).table(REPLY_TABLE), POD_VETH));
        p.pod_steering.push(f);
        host_side(conf, p, f, nic_ips, &veth.host);
    }
    p.veth = Some(veth);
}

/// Overlay mode: a secondary NIC beside the overlay eth0.
fn overlay_nic(conf: &Conf, p: &mut Plan, prev: &CniResult, facts: &Facts, nic_ips: &[IpNet]) -> Result<(), CniError> {
    let ifname = p.ifname.clone();
    let table = nic_table(&ifname, &used_tables(&facts.pod));
    p.table = Some(table);
    let eth0 = conf.pod_default_cni_nic.clone();
    let eth0_srcs = first_per_family(&facts.pod.addrs_of(&eth0));
    let eth0_routes = facts.pod.main_routes_of(&eth0);
    let swap = conf.pod_default_route_nic.as_deref() == Some(ifname.as_str());
    if swap {
        // net1 keeps the main default route; eth0's routes move to the NIC table and eth0's
        // source IPs look it up.
        for a in &eth0_srcs {
            p.pod_rules.push(Rule::from_net(host_net(*a), table).priority(SOURCE_RULE_PRIORITY));
        }
        for r in &eth0_routes {
            p.pod_routes.push(DevRoute::new(Route { table, ..r.clone() }, &eth0));
            if r.is_default() {
                p.pod_routes_del.push(DevRoute::new(r.clone(), &eth0));
            }
        }
        let nic_routes = facts.pod.main_routes_of(&ifname);
        for f in families(nic_ips) {
            if let Some(gw) = gateway_of(prev, f) {
                if !nic_routes.iter().any(|r| r.is_default() && r.family() == f) {
                    p.pod_routes.push(DevRoute::new(Route::via(f.any(), gw, None), &ifname));
                }
            }
        }
    } else {
        move_nic_routes(p, prev, facts, &ifname, nic_ips, table);
        // NodePort replies that came in on eth0 leave on eth0.
        for a in &eth0_srcs {
            p.pod_rules.push(Rule::from_net(host_net(*a), REPLY_TABLE).priority(SOURCE_RULE_PRIORITY));
        }
        for r in default_route_and_gateway(&eth0_routes) {
            p.pod_routes.push(DevRoute::new(Route { table: REPLY_TABLE, ..r.clone() }, &eth0));
        }
    }
    // Node ↔ pod must use eth0 (macvlan bridge mode blocks child ↔ parent): in main and in the
    // NIC's table; the cluster CIDRs through the node in main.
    p.pod_routes.extend(overlay_eth0_routes(conf, &p.node_ips, &eth0_srcs));
    for f in [Family::V4, Family::V6] {
        let Some(src) = of_family(&eth0_srcs, f) else { continue };
        for r in node_routes(&p.node_ips, f, Some(src)) {
            p.pod_routes.push(DevRoute::new(r.table(table), &eth0));
        }
    }
    for pr in &conf.policy_routes {
        p.pod_routes.push(DevRoute::any_dev(Route::via(pr.dst, pr.gw, None).table(table)));
    }
    let peer =
        facts.node.default_nic_peer.clone().ok_or_else(|| {
            error::missing_fact(format!("overlay mode: cannot find the host side of the pod's {eth0}"))
        })?;
    for f in families(nic_ips) {
        host_side(conf, p, f, nic_ips, &peer);
    }
    Ok(())
}

/// Tables other NICs' `from` rules already use in the pod.
fn used_tables(pod: &PodFacts) -> Vec<u32> {
    pod.rules.iter().filter(|r| r.from.is_some()).map(|r| r.table).collect()
}

/// The default NIC's default routes and the on-link routes to their gateways (Calico's
/// `169.254.1.1 dev eth0 scope link`): what table 100 needs. Other eth0 routes, including the
/// ones the coordinator itself added to main, are not copied.
fn default_route_and_gateway(routes: &[Route]) -> Vec<&Route> {
    let defaults: Vec<&Route> = routes.iter().filter(|r| r.is_default()).collect();
    let mut out: Vec<&Route> = routes
        .iter()
        .filter(|r| {
            !r.is_default()
                && r.scope == Scope::Link
                && r.gateway.is_none()
                && defaults.iter().any(|d| d.gateway.is_some_and(|g| r.dst.contains(&g)))
        })
        .collect();
    out.extend(defaults);
    out
}

/// `from <nic IP> lookup <table>`, and the NIC's routes (with its gateway as default) copied
/// into the table; a default route of the NIC is removed from main, where it would clash with
/// the default NIC's.
fn move_nic_routes(p: &mut Plan, prev: &CniResult, facts: &Facts, ifname: &str, nic_ips: &[IpNet], table: u32) {
    for a in nic_ips {
        p.pod_rules.push(Rule::from_net(host_net(a.addr()), table).priority(SOURCE_RULE_PRIORITY));
    }
    let mut have_default = Vec::new();
    for r in facts.pod.main_routes_of(ifname) {
        if r.kind != RouteKind::Unicast {
            continue;
        }
        if let IpNet::V6(v6) = r.dst {
            if v6.addr().segments()[0] & 0xffc0 == 0xfe80 {
                continue;
            }
        }
        p.pod_routes.push(DevRoute::new(Route { table, protocol: 0, metric: None, ..r.clone() }, ifname));
        if r.is_default() {
            have_default.push(r.family());
            p.pod_routes_del.push(DevRoute::new(r.clone(), ifname));
        }
    }
    for f in families(nic_ips) {
        if have_default.contains(&f) {
            continue;
        }
        if let Some(gw) = gateway_of(prev, f) {
            p.pod_routes.push(DevRoute::new(Route::via(f.any(), gw, None).table(table), ifname));
        }
    }
}

/// Host rule `pref 1000 lookup <hostRuleTable>` and `<ip>/32 dev <host veth> table 500`.
fn host_side(conf: &Conf, p: &mut Plan, f: Family, nic_ips: &[IpNet], host_dev: &str) {
    let rule = Rule::new(f, conf.host_rule_table).priority(HOST_RULE_PRIORITY);
    if !p.host_rules.contains(&rule) {
        p.host_rules.push(rule);
    }
    for a in nic_ips.iter().filter(|a| Family::of_net(a) == f) {
        p.host_routes.push(DevRoute::new(host_route(conf, a.addr()), host_dev));
    }
    let fam = match f {
        Family::V4 => "ipv4",
        Family::V6 => "ipv6",
    };
    let key = format!("net/{fam}/conf/{host_dev}/forwarding");
    if !p.host_sysctls.iter().any(|(k, _)| k == &key) {
        p.host_sysctls.push((key, "1".into()));
    }
    if f == Family::V4 {
        // The pod's packets arrive with the pod IP as source on the host veth: strict
        // reverse-path filtering would pass (table 500 routes it back there), but a node with
        // rp_filter=1 and the rule missing would drop silently; loose is what Calico uses.
        let key = format!("net/ipv4/conf/{host_dev}/rp_filter");
        if !p.host_sysctls.iter().any(|(k, _)| k == &key) {
            p.host_sysctls.push((key, "0".into()));
        }
    }
}

/// `<ip>/32 scope link table <hostRuleTable>` (the device is added by the caller).
fn host_route(conf: &Conf, ip: IpAddr) -> Route {
    Route::new(host_net(ip)).scope(Scope::Link).table(conf.host_rule_table)
}
