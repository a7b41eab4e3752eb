//! `knit doctor`: problems a node has, found on a snapshot without tracing a packet.

use std::net::IpAddr;

use ipnet::IpNet;
use knit_host::route::RouteKind;
use serde::Serialize;

use crate::inventory::PodKind;
use crate::snapshot::{Port, Role, Snapshot};

/// The coordinator's host-rule table.
pub const HOST_TABLE: u32 = 500;
/// The coordinator's host-rule priority.
pub const HOST_RULE_PRIORITY: u32 = 1000;

/// One problem.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Problem {
    /// The namespace it is in.
    pub ns: String,
    /// Short check name.
    pub check: &'static str,
    /// What is wrong.
    pub detail: String,
    /// How to fix it.
    pub fix: String,
}

fn invalid_drop_rule(snap: &Snapshot, i: usize) -> Option<String> {
    let t = snap.namespaces[i].parsed()?.get("filter")?;
    t.chains
        .values()
        .flatten()
        .find(|r| r.text.contains("--ctstate INVALID") && r.text.ends_with("-j DROP"))
        .map(|r| r.text.clone())
}

/// Underlay pod /32s a node routes to its pods through table 500 (over the coordinator's veth;
/// multi-NIC pods' macvlan addresses, routed over their calico veth, are left out).
fn underlay_ips(snap: &Snapshot, i: usize) -> Vec<(IpAddr, Option<u32>)> {
    let ns = &snap.namespaces[i];
    let overlay_oifs: Vec<u32> =
        ns.routes.iter().filter(|r| r.table == 254 && r.gateway.is_none()).filter_map(|r| r.oif).collect();
    ns.routes
        .iter()
        .filter(|r| {
            r.table == HOST_TABLE && r.kind == RouteKind::Unicast && r.dst.prefix_len() == r.dst.max_prefix_len()
        })
        .filter(|r| !r.oif.is_some_and(|o| overlay_oifs.contains(&o)))
        .map(|r| (r.dst.addr(), r.oif))
        .collect()
}

/// Runs every check on every node namespace of the snapshot.
pub fn check(snap: &Snapshot) -> Vec<Problem> {
    let mut out = Vec::new();
    let nodes: Vec<usize> = (0..snap.namespaces.len()).filter(|i| snap.namespaces[*i].role == Role::Node).collect();
    let known_ip = |ip: IpAddr| -> bool {
        match &snap.inventory {
            Some(inv) => inv.is_pod_ip(ip),
            None => snap.namespaces.iter().any(|n| n.role != Role::Node && n.addrs.iter().any(|a| a.net.addr() == ip)),
        }
    };
    for &i in &nodes {
        let ns = &snap.namespaces[i];
        let name = ns.name.clone();
        let mut add = |check: &'static str, detail: String, fix: String| {
            out.push(Problem { ns: name.clone(), check, detail, fix })
        };
        if ns.ifconf("all").forwarding == 0 {
            add(
                "forwarding",
                "IPv4 forwarding is off (net.ipv4.conf.all.forwarding=0): pods can't be routed".into(),
                "sysctl -w net.ipv4.ip_forward=1".into(),
            );
        }
        let ul = underlay_ips(snap, i);
        let listed_ul: Vec<IpAddr> = snap
            .inventory
            .as_ref()
            .map(|inv| {
                inv.pods
                    .iter()
                    .filter(|p| p.node == ns.name && p.kind == PodKind::Underlay)
                    .filter_map(|p| p.primary_ip())
                    .collect()
            })
            .unwrap_or_default();
        let has_underlay = !ul.is_empty() || !listed_ul.is_empty();
        let rule_ok = ns.rules.iter().any(|r| r.priority == Some(HOST_RULE_PRIORITY) && r.table == HOST_TABLE);
        if has_underlay && !rule_ok {
            add(
                "host-rule",
                format!("underlay pods live here but rule {HOST_RULE_PRIORITY} (lookup table {HOST_TABLE}) is missing: the node can't reach them through their veth"),
                format!("ip rule add pref {HOST_RULE_PRIORITY} lookup {HOST_TABLE} (knit-coordinator adds it on CNI ADD)"),
            );
        }
        // Stale table-500 routes.
        for (ip, oif) in &ul {
            match oif.and_then(|o| ns.link(o)) {
                None => add(
                    "stale-route",
                    format!("table {HOST_TABLE} routes {ip} to interface #{} which no longer exists", oif.unwrap_or(0)),
                    format!("ip route del {ip}/32 table {HOST_TABLE}"),
                ),
                Some(l) => {
                    if !known_ip(*ip) {
                        add(
                            "stale-route",
                            format!("table {HOST_TABLE} routes {ip} to {} but no pod has that address", l.name),
                            format!("ip route del {ip}/32 table {HOST_TABLE}"),
                        );
                    }
                    if ns.ifconf(&l.name).rp_filter == 1 {
                        add(
                            "rp_filter",
                            format!("rp_filter=1 (strict) on coordinator veth {}: the pod's replies that left by another path are dropped", l.name),
                            format!("sysctl -w net.ipv4.conf.{}.rp_filter=0", l.name),
                        );
                    }
                }
            }
        }
        let veths: Vec<u32> = ul.iter().filter_map(|(_, o)| *o).collect();
        for nb in ns.neigh.iter().filter(|nb| veths.contains(&nb.index)) {
            if !known_ip(nb.ip) && nb.ip.is_ipv4() && !ul.iter().any(|(ip, _)| *ip == nb.ip) && !ns.is_local(nb.ip) {
                add(
                    "stale-neighbour",
                    format!("neighbour {} on {} belongs to no pod", nb.ip, ns.ifname(nb.index)),
                    format!("ip neigh del {} dev {}", nb.ip, ns.ifname(nb.index)),
                );
            }
        }
        // INVALID drop with strict TCP tracking while this node's underlay pods have no /32 elsewhere.
        if let Some(rule) = invalid_drop_rule(snap, i) {
            if ns.tcp_be_liberal != Some(true) {
                let mut missing = Vec::new();
                for ip in ul.iter().map(|x| x.0).chain(listed_ul.iter().copied()) {
                    if missing.iter().any(|(m, _)| *m == ip) {
                        continue;
                    }
                    let host = IpNet::from(ip);
                    let without: Vec<String> = nodes
                        .iter()
                        .filter(|j| **j != i)
                        .filter(|j| !snap.namespaces[**j].routes.iter().any(|r| r.dst == host && r.table == 254))
                        .map(|j| snap.namespaces[*j].name.clone())
                        .collect();
                    if !without.is_empty() {
                        missing.push((ip, without));
                    }
                }
                if !missing.is_empty() {
                    let list: Vec<String> =
                        missing.iter().map(|(ip, w)| format!("{ip} (not on {})", w.join(", "))).collect();
                    add(
                        "invalid-drop",
                        format!(
                            "kube-proxy drops conntrack INVALID packets ({rule}) with nf_conntrack_tcp_be_liberal=0, and underlay pods here have no /32 route on other nodes: {}; overlay↔underlay TCP across nodes takes asymmetric paths and is dropped",
                            list.join("; ")
                        ),
                        crate::path::FIX_INVALID.into(),
                    );
                }
            }
        }
    }
    // Macvlan links whose parent is gone (pods of any node).
    for (i, ns) in snap.namespaces.iter().enumerate() {
        for l in ns.links.iter().filter(|l| l.kind.as_deref() == Some("macvlan")) {
            if snap.link_target(Port { ns: i, link: l.index }).is_none() {
                out.push(Problem {
                    ns: ns.name.clone(),
                    check: "macvlan-master",
                    detail: format!(
                        "macvlan {} has no parent in the snapshot (master #{} gone)",
                        l.name,
                        l.link.unwrap_or(0)
                    ),
                    fix: "recreate the pod's macvlan NIC (CNI DEL + ADD) on an existing master".into(),
                });
            }
        }
    }
    out
}
