//! The coordinator's desired state as plain data: computed from the config, prevResult and a
//! few facts read from the pod and the node, without touching the kernel. `apply` installs it
//! and DEL/CHECK use the same plan, so what ADD does, what CHECK verifies and what DEL removes
//! cannot drift apart. The trace tool reads the same route and rule model.
//!
//! Underlay mode (first NIC `eth0` from macvlan), DESIGN.md section 4:
//! - veth pair: pod `veth0`, host `veth` + the first 11 characters of the container ID;
//! - pod: `<nodeIP>/32 dev veth0 src <podIP>` for this node's own IPs only, and
//!   `<overlayPodCIDR|serviceCIDR|hijackCIDR> via <nodeIP> dev veth0 src <podIP>` in main;
//! - pod reply steering: nf_tables MARK/CONNMARK equivalents on veth0, `fwmark 0x1 lookup 100`,
//!   table 100 `default via <nodeIP> dev veth0`;
//! - host: `pref 1000 lookup 500`, `<podIP>/32 dev veth… scope link table 500`.
//!
//! Overlay mode (`net1` from macvlan beside `eth0` from knit-routed):
//! - `from <net1 IP> lookup 101` with net1's routes (and its gateway as default) in 101;
//! - `from <eth0 IP> lookup 100` with eth0's default copied into 100;
//! - `<nodeIP>/32 dev eth0 src <eth0 IP>` in main and in 101;
//! - host: `<net1 IP>/32 dev cali… scope link table 500`.

use std::net::IpAddr;

use ipnet::IpNet;
use knit_cni::{CniError, CniResult};
use knit_host::route::{Route, RouteKind};
use knit_host::rule::Rule;
use knit_host::{nft, Family, Mac, Scope};

use crate::config::{
    Conf, Mode, FIRST_NIC_TABLE, HOST_RULE_PRIORITY, MARK_RULE_PRIORITY, REPLY_MARK, REPLY_TABLE, SOURCE_RULE_PRIORITY,
};

/// The pod side of the coordinator's veth pair.
pub const POD_VETH: &str = "veth0";

/// A route whose output device is known by name at plan time; `apply` resolves the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevRoute {
    pub route: Route,
    pub dev: Option<String>,
}

impl DevRoute {
    /// The device is named; an index carried over from a kernel dump is dropped so that the
    /// name is the only source of truth.
    fn new(route: Route, dev: &str) -> DevRoute {
        DevRoute { route: Route { oif: None, ..route }, dev: Some(dev.to_string()) }
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

/// What the pod and node look like before ADD: read by `apply`, passed in as data.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// Names of the pod's links.
    pub pod_links: Vec<String>,
    /// Addresses on the pod's default CNI NIC (`podDefaultCniNic`, eth0), from the kernel.
    pub default_nic_addrs: Vec<IpNet>,
    /// Routes of the default CNI NIC in the pod's main table (overlay mode: copied into 100).
    pub default_nic_routes: Vec<Route>,
    /// Routes of `ifname` in the pod's main table (they move to the NIC's own table).
    pub nic_routes: Vec<Route>,
    /// The node's IPs, best first per family (the pod's gateway through the node).
    pub node_ips: Vec<IpAddr>,
    /// Overlay mode: the host-side name of the default NIC's veth (e.g. `cali…`).
    pub default_nic_host_peer: Option<String>,
    /// Tables already used by other NICs' `from` rules in the pod.
    pub used_tables: Vec<u32>,
}

/// Everything the coordinator installs for one attachment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub mode: Option<ResolvedMode>,
    pub ifname: String,
    /// Underlay first NIC: the veth pair to create (host name, MTU, optional link address).
    pub veth: Option<VethSpec>,
    /// The NIC's own table (policy routing for its source IPs), when it gets one.
    pub table: Option<u32>,
    pub pod_sysctls: Vec<(String, String)>,
    /// MAC for `ifname` from `podMACPrefix`.
    pub pod_mac: Option<Mac>,
    pub txqlen: Option<u32>,
    /// Pod routes to add, in order.
    pub pod_routes: Vec<DevRoute>,
    /// Pod routes to remove from main (moved into the NIC's table).
    pub pod_routes_del: Vec<DevRoute>,
    pub pod_rules: Vec<Rule>,
    /// The families that get the pod's reply-steering table ([`steering_table`]).
    pub pod_steering: Vec<Family>,
    pub host_rules: Vec<Rule>,
    pub host_routes: Vec<DevRoute>,
    pub host_sysctls: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolvedMode {
    /// Underlay; `first` is true for the pod's first NIC (the one that gets veth0).
    Underlay {
        first: bool,
    },
    Overlay,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VethSpec {
    pub pod: String,
    pub host: String,
    pub mtu: u32,
    pub link_address: Option<IpNet>,
}

/// `veth` + the first 11 characters of the container ID (Spiderpool's naming).
pub fn host_veth_name(container_id: &str) -> String {
    let id: String = container_id.chars().filter(|c| c.is_ascii_alphanumeric()).take(11).collect();
    format!("veth{id}")
}

/// Mode auto: ifname eth0 → underlay; else veth0 present → underlay; else overlay.
pub fn resolve_mode(conf: &Conf, ifname: &str, pod_links: &[String]) -> Result<Option<ResolvedMode>, CniError> {
    let has_veth0 = pod_links.iter().any(|l| l == POD_VETH);
    let first_nic = ifname == conf.pod_default_cni_nic;
    Ok(match conf.mode {
        Mode::Disabled => None,
        Mode::Auto if first_nic => Some(ResolvedMode::Underlay { first: true }),
        Mode::Auto if has_veth0 => Some(ResolvedMode::Underlay { first: false }),
        Mode::Auto => Some(ResolvedMode::Overlay),
        Mode::Underlay if first_nic => Some(ResolvedMode::Underlay { first: true }),
        Mode::Underlay if has_veth0 => Some(ResolvedMode::Underlay { first: false }),
        Mode::Underlay => {
            return Err(CniError::invalid_config(format!(
                "mode underlay: {ifname} is not the first NIC ({}) and the pod has no {POD_VETH}",
                conf.pod_default_cni_nic
            )))
        }
        Mode::Overlay if first_nic || has_veth0 => {
            return Err(CniError::invalid_config(format!(
                "mode overlay: {ifname} must be a secondary NIC beside an overlay {} without {POD_VETH}",
                conf.pod_default_cni_nic
            )))
        }
        Mode::Overlay => Some(ResolvedMode::Overlay),
    })
}

/// The table for a secondary NIC: `netN` → 100 + N, else the first table from 101 not used by
/// another NIC's rules. Stable across restarts, unlike counting links.
pub fn nic_table(ifname: &str, used: &[u32]) -> u32 {
    if let Some(n) = ifname.strip_prefix("net").and_then(|n| n.parse::<u32>().ok()) {
        if (1..=150).contains(&n) {
            return REPLY_TABLE + n;
        }
    }
    (FIRST_NIC_TABLE..).find(|t| !used.contains(t)).unwrap_or(FIRST_NIC_TABLE)
}

fn host_net(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

/// The node IP of `family` the pod uses as its gateway through the node.
fn node_ip(facts: &Facts, f: Family) -> Option<IpAddr> {
    facts.node_ips.iter().copied().find(|ip| Family::of(ip) == f)
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

fn gateway_of(prev: &CniResult, f: Family) -> Option<IpAddr> {
    prev.ips.iter().filter_map(|i| i.gateway).find(|g| Family::of(g) == f)
}

/// The nf_tables table (one per family) that holds the pod's reply-steering rules.
pub const STEERING_TABLE: &str = "knit-coordinator";

/// The pod's reply-steering rules: connections that came in on veth0 (NodePort and
/// node-local traffic) get [`REPLY_MARK`] in conntrack, and their replies get it back as the
/// packet mark, which the pod's fwmark rule routes out of veth0 (without it they would leave
/// on eth0 un-NATed). The iptables equivalent, which `knit trace` shows:
///
/// ```text
/// -A PREROUTING -i veth0 -m conntrack --ctstate NEW -j MARK --set-xmark 0x1/0xffffffff
/// -A PREROUTING -m mark --mark 0x1 -j CONNMARK --save-mark
/// -A OUTPUT -j CONNMARK --restore-mark
/// ```
///
/// Written over nf_tables netlink in one transaction: an `iptables-restore` process cost
/// 1.7 ms of every underlay ADD, the netlink batch about 0.1 ms.
pub fn steering_table(family: Family) -> nft::Table {
    let mangle = -150; // iptables' mangle priority (NF_IP_PRI_MANGLE)
    nft::Table {
        family: family.into(),
        name: STEERING_TABLE.to_string(),
        chains: vec![
            nft::Chain {
                name: "prerouting".into(),
                kind: "filter".into(),
                hook: Some(nft::Hook::Prerouting),
                priority: mangle,
                rules: vec![
                    nft::NftRule {
                        exprs: vec![
                            nft::Expr::IifName(POD_VETH.into()),
                            nft::Expr::CtState(nft::CT_NEW),
                            nft::Expr::SetMark(REPLY_MARK),
                        ],
                    },
                    nft::NftRule { exprs: vec![nft::Expr::Mark(REPLY_MARK), nft::Expr::SaveMark] },
                ],
            },
            nft::Chain {
                // A `route` chain: a mark changed here makes the kernel route the packet again.
                name: "output".into(),
                kind: "route".into(),
                hook: Some(nft::Hook::Output),
                priority: mangle,
                rules: vec![nft::NftRule { exprs: vec![nft::Expr::RestoreMark] }],
            },
        ],
    }
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

/// True when the config and interface alone decide underlay mode for the pod's first NIC (no
/// facts needed), as [`resolve_mode`] does.
pub fn underlay_first(conf: &Conf, ifname: &str) -> bool {
    matches!(conf.mode, Mode::Auto | Mode::Underlay) && ifname == conf.pod_default_cni_nic
}

/// The families whose reply-steering rules ([`steering_table`]) an underlay first NIC would get:
/// one per family of its addresses (the plan drops a family the node has no IP of).
pub fn steering_families(prev: &CniResult, ifname: &str) -> Vec<Family> {
    let mut out: Vec<Family> = Vec::new();
    for n in nic_ips(prev, ifname) {
        let f = Family::of_net(&n);
        if !out.contains(&f) {
            out.push(f);
        }
    }
    out
}

/// Computes the plan for ADD (and for CHECK/DEL, which use the same data).
pub fn plan(conf: &Conf, ifname: &str, container_id: &str, prev: &CniResult, facts: &Facts) -> Result<Plan, CniError> {
    let mode = resolve_mode(conf, ifname, &facts.pod_links)?;
    let mut p = Plan { mode, ifname: ifname.to_string(), ..Plan::default() };
    let Some(mode) = mode else { return Ok(p) };

    let nic_ips = nic_ips(prev, ifname);
    if nic_ips.is_empty() {
        return Err(CniError::invalid_config(format!("prevResult has no IP for {ifname}")));
    }
    let families: Vec<Family> = {
        let mut f: Vec<Family> = nic_ips.iter().map(Family::of_net).collect();
        f.dedup();
        f
    };
    let pod_srcs = first_per_family(&nic_ips);
    let src_of = |f: Family| pod_srcs.iter().copied().find(|ip| Family::of(ip) == f);

    if let Some(rp) = conf.pod_rp_filter {
        if families.contains(&Family::V4) {
            p.pod_sysctls.push(("net/ipv4/conf/all/rp_filter".into(), rp.to_string()));
            p.pod_sysctls.push((format!("net/ipv4/conf/{ifname}/rp_filter"), rp.to_string()));
        }
    }
    // Gratuitous ARP when the MAC changes (podMACPrefix) and when addresses come up.
    if families.contains(&Family::V4) {
        p.pod_sysctls.push((format!("net/ipv4/conf/{ifname}/arp_notify"), "1".into()));
    }
    if let Some(prefix) = conf.pod_mac_prefix {
        let ip = nic_ips[0].addr();
        let tail: [u8; 4] = match ip {
            IpAddr::V4(v4) => v4.octets(),
            IpAddr::V6(v6) => {
                let o = v6.octets();
                [o[12], o[13], o[14], o[15]]
            }
        };
        p.pod_mac = Some(Mac([prefix[0], prefix[1], tail[0], tail[1], tail[2], tail[3]]));
    }
    p.txqlen = conf.tx_queue_len;

    let hijack = conf.hijack_routes();
    match mode {
        ResolvedMode::Underlay { first: true } => {
            let veth = VethSpec {
                pod: POD_VETH.to_string(),
                host: host_veth_name(container_id),
                mtu: conf.veth_mtu,
                link_address: conf.veth_link_address,
            };
            if families.contains(&Family::V4) {
                p.pod_sysctls
                    .push((format!("net/ipv4/conf/{POD_VETH}/rp_filter"), conf.pod_rp_filter.unwrap_or(0).to_string()));
            }
            for &f in &families {
                let Some(node) = node_ip(facts, f) else { continue };
                let src = src_of(f);
                // Only this node's IPs: a route to another node's IP via veth0 would make that
                // node's replies come back over the wire, asymmetric.
                for nip in facts.node_ips.iter().filter(|ip| Family::of(ip) == f) {
                    let mut r = Route::new(host_net(*nip)).scope(Scope::Link);
                    // The kernel ignores src on v6 routes in some versions (Spiderpool notes
                    // kernel bug 107071); it is only needed for v4 anyway.
                    if let (Some(s), Family::V4) = (src, f) {
                        r = r.src(s);
                    }
                    p.pod_routes.push(DevRoute::new(r, POD_VETH));
                }
                if conf.tune_pod_routes {
                    for dst in hijack.iter().filter(|d| Family::of_net(d) == f) {
                        let mut r = Route::via(*dst, node, None);
                        if let (Some(s), Family::V4) = (src, f) {
                            r = r.src(s);
                        }
                        p.pod_routes.push(DevRoute::new(r, POD_VETH));
                    }
                }
                for pr in conf.policy_routes.iter().filter(|r| Family::of_net(&r.dst) == f) {
                    p.pod_routes.push(DevRoute { route: Route::via(pr.dst, pr.gw, None), dev: None });
                }
                // Reply steering.
                p.pod_rules
                    .push(Rule::new(f, REPLY_TABLE).priority(MARK_RULE_PRIORITY).fwmark(REPLY_MARK, Some(0xffff_ffff)));
                p.pod_routes.push(DevRoute::new(Route::via(f.any(), node, None).table(REPLY_TABLE), POD_VETH));
                p.pod_steering.push(f);
                host_side(conf, &mut p, f, &nic_ips, &veth.host);
            }
            p.veth = Some(veth);
        }
        ResolvedMode::Underlay { first: false } => {
            // A further underlay NIC: its own table for its source IPs; veth0 already carries
            // the cluster routes.
            let table = nic_table(ifname, &facts.used_tables);
            p.table = Some(table);
            move_nic_routes(&mut p, prev, facts, ifname, &nic_ips, table);
            for pr in &conf.policy_routes {
                p.pod_routes.push(DevRoute { route: Route::via(pr.dst, pr.gw, None).table(table), dev: None });
            }
            for &f in &families {
                host_side(conf, &mut p, f, &nic_ips, &host_veth_name(container_id));
            }
        }
        ResolvedMode::Overlay => {
            let table = nic_table(ifname, &facts.used_tables);
            p.table = Some(table);
            let eth0 = conf.pod_default_cni_nic.clone();
            let eth0_srcs = first_per_family(&facts.default_nic_addrs);
            let swap = conf.pod_default_route_nic.as_deref() == Some(ifname);
            if swap {
                // net1 keeps the main default route; eth0's routes move to the NIC table
                // and eth0's source IPs look it up.
                for a in &eth0_srcs {
                    p.pod_rules.push(Rule::from_net(host_net(*a), table).priority(SOURCE_RULE_PRIORITY));
                }
                for r in &facts.default_nic_routes {
                    p.pod_routes.push(DevRoute::new(Route { table, ..r.clone() }, &eth0));
                    if r.is_default() {
                        p.pod_routes_del.push(DevRoute::new(r.clone(), &eth0));
                    }
                }
                for &f in &families {
                    if let Some(gw) = gateway_of(prev, f) {
                        if !facts.nic_routes.iter().any(|r| r.is_default() && r.family() == f) {
                            p.pod_routes.push(DevRoute::new(Route::via(f.any(), gw, None), ifname));
                        }
                    }
                }
            } else {
                move_nic_routes(&mut p, prev, facts, ifname, &nic_ips, table);
                // NodePort replies that came in on eth0 leave on eth0.
                for a in &eth0_srcs {
                    p.pod_rules.push(Rule::from_net(host_net(*a), REPLY_TABLE).priority(SOURCE_RULE_PRIORITY));
                }
                for r in default_route_and_gateway(&facts.default_nic_routes) {
                    p.pod_routes.push(DevRoute::new(Route { table: REPLY_TABLE, ..r.clone() }, &eth0));
                }
            }
            // Node ↔ pod must use eth0: macvlan bridge mode blocks child ↔ parent.
            for nip in &facts.node_ips {
                let f = Family::of(nip);
                let src = eth0_srcs.iter().copied().find(|ip| Family::of(ip) == f);
                let mut r = Route::new(host_net(*nip)).scope(Scope::Link);
                if let (Some(s), Family::V4) = (src, f) {
                    r = r.src(s);
                }
                p.pod_routes.push(DevRoute::new(r.clone(), &eth0));
                p.pod_routes.push(DevRoute::new(r.table(table), &eth0));
            }
            // Cluster and Service traffic leaves from eth0's IP through the node.
            if conf.tune_pod_routes {
                for dst in &hijack {
                    let f = Family::of_net(dst);
                    let (Some(node), Some(src)) =
                        (node_ip(facts, f), eth0_srcs.iter().copied().find(|ip| Family::of(ip) == f))
                    else {
                        continue;
                    };
                    let mut r = Route::via(*dst, node, None);
                    if f == Family::V4 {
                        r = r.src(src);
                    }
                    p.pod_routes.push(DevRoute::new(r, &eth0));
                }
            }
            for pr in &conf.policy_routes {
                p.pod_routes.push(DevRoute { route: Route::via(pr.dst, pr.gw, None).table(table), dev: None });
            }
            let peer = facts.default_nic_host_peer.clone().ok_or_else(|| {
                CniError::generic(format!("overlay mode: cannot find the host side of the pod's {eth0}"))
            })?;
            for &f in &families {
                host_side(conf, &mut p, f, &nic_ips, &peer);
            }
        }
    }
    Ok(p)
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
    for r in &facts.nic_routes {
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
    let mut fams: Vec<Family> = nic_ips.iter().map(Family::of_net).collect();
    fams.dedup();
    for f in fams {
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
        let r = Route::new(host_net(a.addr())).scope(Scope::Link).table(conf.host_rule_table);
        p.host_routes.push(DevRoute::new(r, host_dev));
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

#[cfg(test)]
mod tests {
    use super::*;
    use knit_cni::{Interface, IpConfig};

    fn conf(json: &str) -> Conf {
        Conf::parse(json.as_bytes()).unwrap()
    }

    fn base() -> Conf {
        conf(r#"{"overlayPodCIDR":["10.233.64.0/18"],"serviceCIDR":["10.233.0.0/18"],"hijackCIDR":["169.254.0.0/16"]}"#)
    }

    fn prev(ifname: &str, addr: &str, gw: Option<&str>) -> CniResult {
        CniResult {
            interfaces: vec![Interface { name: ifname.into(), sandbox: "/run/netns/x".into(), ..Default::default() }],
            ips: vec![IpConfig {
                interface: Some(0),
                address: addr.parse().unwrap(),
                gateway: gw.map(|g| g.parse().unwrap()),
            }],
            ..Default::default()
        }
    }

    fn shown(rs: &[DevRoute]) -> Vec<String> {
        rs.iter().map(|r| r.to_string()).collect()
    }

    #[test]
    fn auto_mode() {
        let c = base();
        let links = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(resolve_mode(&c, "eth0", &[]).unwrap(), Some(ResolvedMode::Underlay { first: true }));
        assert_eq!(
            resolve_mode(&c, "net1", &links(&["eth0", "veth0"])).unwrap(),
            Some(ResolvedMode::Underlay { first: false })
        );
        assert_eq!(resolve_mode(&c, "net1", &links(&["eth0"])).unwrap(), Some(ResolvedMode::Overlay));
        let mut d = base();
        d.mode = Mode::Disabled;
        assert_eq!(resolve_mode(&d, "eth0", &[]).unwrap(), None);
        let mut o = base();
        o.mode = Mode::Overlay;
        assert!(resolve_mode(&o, "eth0", &[]).is_err());
    }

    #[test]
    fn underlay_first_nic() {
        let facts = Facts { node_ips: vec!["172.16.1.2".parse().unwrap()], ..Default::default() };
        let p =
            plan(&base(), "eth0", "0123456789abcdef", &prev("eth0", "172.16.100.10/16", Some("172.16.0.1")), &facts)
                .unwrap();
        let v = p.veth.as_ref().unwrap();
        assert_eq!(v.host, "veth0123456789a");
        assert_eq!(v.pod, "veth0");
        let routes = shown(&p.pod_routes);
        assert!(
            routes
                .iter()
                .any(|r| r.starts_with("172.16.1.2/32") && r.contains("src 172.16.100.10") && r.ends_with("dev veth0")),
            "{routes:?}"
        );
        for cidr in ["10.233.64.0/18 via 172.16.1.2", "10.233.0.0/18 via 172.16.1.2", "169.254.0.0/16 via 172.16.1.2"] {
            assert!(
                routes.iter().any(|r| r.starts_with(cidr) && r.contains("src 172.16.100.10")),
                "{cidr}: {routes:?}"
            );
        }
        assert!(
            routes.iter().any(|r| r.starts_with("default via 172.16.1.2") && r.contains("table 100")),
            "{routes:?}"
        );
        assert_eq!(p.pod_rules.len(), 1);
        assert_eq!(p.pod_rules[0].fwmark, Some(1));
        assert_eq!(p.pod_rules[0].table, 100);
        assert_eq!(p.host_rules[0].priority, Some(1000));
        assert_eq!(p.host_rules[0].table, 500);
        let host = shown(&p.host_routes);
        assert!(
            host[0].starts_with("172.16.100.10/32")
                && host[0].contains("table 500")
                && host[0].ends_with("dev veth0123456789a"),
            "{host:?}"
        );
        assert_eq!(p.pod_steering, vec![Family::V4]);
    }

    #[test]
    fn underlay_pod_routes_only_this_nodes_ips() {
        let facts =
            Facts { node_ips: vec!["172.16.1.2".parse().unwrap(), "10.0.0.2".parse().unwrap()], ..Default::default() };
        let p = plan(&base(), "eth0", "c", &prev("eth0", "172.16.100.10/16", None), &facts).unwrap();
        let routes = shown(&p.pod_routes);
        assert!(routes.iter().any(|r| r.starts_with("10.0.0.2/32")));
        assert!(!routes.iter().any(|r| r.starts_with("172.16.1.3")), "{routes:?}");
    }

    #[test]
    fn overlay_mode_net1() {
        let facts = Facts {
            pod_links: vec!["lo".into(), "eth0".into(), "net1".into()],
            default_nic_addrs: vec!["10.233.64.5/32".parse().unwrap()],
            default_nic_routes: vec![
                Route::new("169.254.1.1/32".parse().unwrap()).scope(Scope::Link),
                Route::via("0.0.0.0/0".parse().unwrap(), "169.254.1.1".parse().unwrap(), Some(2)),
            ],
            nic_routes: vec![Route::new("172.16.0.0/16".parse().unwrap()).scope(Scope::Link)],
            node_ips: vec!["172.16.1.2".parse().unwrap()],
            default_nic_host_peer: Some("cali0123456789a".into()),
            used_tables: vec![],
        };
        let p = plan(&base(), "net1", "c", &prev("net1", "172.16.100.20/16", Some("172.16.0.1")), &facts).unwrap();
        assert_eq!(p.table, Some(101));
        let rules: Vec<String> = p.pod_rules.iter().map(|r| r.to_string()).collect();
        assert!(rules.iter().any(|r| r.contains("172.16.100.20") && r.contains("101")), "{rules:?}");
        assert!(rules.iter().any(|r| r.contains("10.233.64.5") && r.contains("100")), "{rules:?}");
        let routes = shown(&p.pod_routes);
        assert!(routes.iter().any(|r| r.starts_with("172.16.0.0/16") && r.contains("table 101")), "{routes:?}");
        assert!(
            routes.iter().any(|r| r.starts_with("default via 172.16.0.1") && r.contains("table 101")),
            "{routes:?}"
        );
        assert!(
            routes.iter().any(|r| r.starts_with("default via 169.254.1.1") && r.contains("table 100")),
            "{routes:?}"
        );
        assert!(
            routes.iter().any(|r| r.starts_with("172.16.1.2/32") && !r.contains("table") && r.ends_with("dev eth0")),
            "{routes:?}"
        );
        assert!(
            routes.iter().any(|r| r.starts_with("172.16.1.2/32") && r.contains("table 101") && r.ends_with("dev eth0")),
            "{routes:?}"
        );
        let host = shown(&p.host_routes);
        assert!(host[0].starts_with("172.16.100.20/32") && host[0].ends_with("dev cali0123456789a"), "{host:?}");
        assert!(p.veth.is_none());
    }

    #[test]
    fn nic_tables() {
        assert_eq!(nic_table("net1", &[]), 101);
        assert_eq!(nic_table("net2", &[]), 102);
        assert_eq!(nic_table("ext", &[101, 102]), 103);
    }

    #[test]
    fn mac_prefix() {
        let mut c = base();
        c.pod_mac_prefix = Some([0x0a, 0x1b]);
        let facts = Facts { node_ips: vec!["172.16.1.2".parse().unwrap()], ..Default::default() };
        let p = plan(&c, "eth0", "c", &prev("eth0", "172.16.100.10/16", None), &facts).unwrap();
        assert_eq!(p.pod_mac.unwrap().to_string(), "0a:1b:ac:10:64:0a");
    }
}
