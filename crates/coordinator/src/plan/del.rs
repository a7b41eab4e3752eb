//! What DEL removes, with and without prevResult, whether or not the pod can be reached.
//!
//! A runtime sends DEL after a successful ADD (with the cached result), after a failed or
//! killed ADD (usually without one), and again after the pod is gone; DEL must remove
//! everything its ADD may have made in each case, and nothing else:
//! - what hangs on no address is found by name: the veth pair (its host end by the mark it
//!   carries), the fwmark rules, the nf_tables table, the NIC's own table;
//! - the NIC's addresses come from prevResult and, when it is missing, from the NIC itself
//!   (the coordinator's DEL runs before the NIC's own plugin's, so the NIC is still there);
//! - what the overlay-mode NICs of a pod share (table 100, eth0's source rule, eth0's routes
//!   in main) goes with the last of them.
//!
//! Objects that go with a device are not listed: the kernel removes the routes of a deleted
//! link (the table-500 routes of the host veth, veth0's routes in the pod).

use std::net::IpAddr;

use ipnet::IpNet;
use knit_cni::CniResult;
use knit_host::route::Route;
use knit_host::rule::Rule;
use knit_host::Family;

use super::facts::{Facts, PodFacts};
use super::mode::{nic_table, resolve_mode, underlay_first, ResolvedMode, POD_VETH};
use super::names::{host_veth_name, owner_mark};
use super::{families, first_per_family, host_route, nic_ips, node_ips, overlay_eth0_routes, DevRoute, MAIN_TABLE};
use crate::config::{Conf, FIRST_NIC_TABLE, MARK_RULE_PRIORITY, REPLY_MARK, REPLY_TABLE};

/// A host veth to delete if (and only if) it carries `owner`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedVeth {
    pub name: String,
    pub owner: String,
}

/// Everything one DEL removes, in the order `apply` removes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DelPlan {
    pub mode: Option<ResolvedMode>,
    pub ifname: String,
    pub pod_rules: Vec<Rule>,
    pub pod_routes: Vec<DevRoute>,
    /// Routes ADD moved out of main (`podDefaultRouteNic`), put back.
    pub pod_routes_restore: Vec<DevRoute>,
    /// The families whose reply-steering table goes.
    pub pod_steering: Vec<Family>,
    /// Pod links deleted together in one kernel batch: each device deletion waits about 20 ms
    /// for the kernel, one batch waits once.
    pub pod_links: Vec<String>,
    pub host_routes: Vec<DevRoute>,
    pub host_veth: Option<OwnedVeth>,
    /// What the plan left alone and why, for the log.
    pub notes: Vec<String>,
}

/// Computes what DEL removes. `facts` is `None` when the pod's namespace cannot be entered
/// (gone, empty CNI_NETNS, a stale bind-mount file, not a namespace). Never fails: a DEL
/// always removes what it can.
pub fn del_plan(
    conf: &Conf,
    ifname: &str,
    container_id: &str,
    prev: Option<&CniResult>,
    facts: Option<&Facts>,
) -> DelPlan {
    let mut p = DelPlan { ifname: ifname.to_string(), ..DelPlan::default() };
    let prev_ips = prev.map(|r| nic_ips(r, ifname)).unwrap_or_default();
    if underlay_first(conf, ifname) {
        underlay_first_nic(&mut p, container_id, &prev_ips, facts);
        return p;
    }
    let Some(facts) = facts else {
        // The pod is out of reach: its links and rules are beyond DEL, and gone with it when
        // the namespace is. On the node, a further underlay NIC's routes hang on this
        // container's host veth; an overlay-mode NIC's on the pod's eth0's host side, which goes
        // with the overlay plugin's DEL.
        for ip in prev_ips.iter().map(|n| n.addr()) {
            p.host_routes.push(DevRoute::new(host_route(conf, ip), &host_veth_name(container_id)));
        }
        p.notes.push("the pod's namespace is out of reach: only the node's side is cleaned".into());
        return p;
    };
    let mode = match resolve_mode(conf, ifname, &facts.pod.link_names()) {
        Ok(m) => m,
        Err(e) => {
            p.notes.push(format!("{}: removing the NIC's own table only", e.msg));
            None
        }
    };
    p.mode = mode;
    // The NIC's addresses: prevResult's, and what the NIC holds now.
    let mut ips: Vec<IpNet> = prev_ips.clone();
    for a in facts.pod.addrs_of(ifname) {
        if !ips.iter().any(|i| i.addr() == a.addr()) {
            ips.push(a);
        }
    }
    let ip_addrs: Vec<IpAddr> = ips.iter().map(|n| n.addr()).collect();
    let own_table = own_table(&facts.pod, ifname, &ip_addrs);
    match own_table {
        Some(t) => {
            p.pod_rules.extend(facts.pod.rules.iter().filter(|r| r.table == t && r.fwmark.is_none()).cloned());
            p.pod_routes.extend(routes_in(&facts.pod, t));
        }
        None => p.notes.push(format!("no table of {ifname} found in the pod")),
    }
    if mode == Some(ResolvedMode::Overlay) {
        overlay_shared(conf, &mut p, facts, own_table, &ip_addrs, prev);
    }
    // The node's routes to the NIC's IPs, through the host side they were put on.
    let host_dev = match mode {
        Some(ResolvedMode::Overlay) => facts.node.default_nic_peer.clone(),
        _ => Some(host_veth_name(container_id)),
    };
    match host_dev {
        Some(dev) => {
            for ip in &ip_addrs {
                p.host_routes.push(DevRoute::new(host_route(conf, *ip), &dev));
            }
        }
        None => p.notes.push(format!(
            "no host side of the pod's {}: the node's routes to {ifname} go with it",
            conf.pod_default_cni_nic
        )),
    }
    p
}

/// An underlay first NIC: its veth pair, its fwmark rules and its nf_tables table, all found
/// by name. Without prevResult, both families' (removing what does not exist costs a request).
fn underlay_first_nic(p: &mut DelPlan, container_id: &str, prev_ips: &[IpNet], facts: Option<&Facts>) {
    p.mode = Some(ResolvedMode::Underlay { first: true });
    let fams = match families(prev_ips) {
        f if f.is_empty() => vec![Family::V4, Family::V6],
        f => f,
    };
    if let Some(facts) = facts {
        for &f in &fams {
            p.pod_rules
                .push(Rule::new(f, REPLY_TABLE).priority(MARK_RULE_PRIORITY).fwmark(REPLY_MARK, Some(0xffff_ffff)));
        }
        p.pod_steering = fams;
        if facts.pod.link(POD_VETH).is_some() {
            p.pod_links.push(POD_VETH.to_string());
            // The underlay NIC goes in the same batch when it is a link its plugin deletes
            // anyway (macvlan, ipvlan): its own DEL, which runs next, finds it gone, which the
            // reference plugins treat as done, and the pod's teardown waits for the kernel once
            // instead of twice. Any other kind (a VF its plugin moves back) is left to its plugin.
            let nic = facts.pod.link(&p.ifname);
            if nic.is_some_and(|l| matches!(l.kind.as_deref(), Some("macvlan" | "ipvlan"))) {
                p.pod_links.push(p.ifname.clone());
            }
        }
    } else {
        p.notes.push("the pod's namespace is out of reach: only the host veth is removed".into());
    }
    // Normally gone with veth0 by now; not when the pod is out of reach but alive.
    p.host_veth = Some(OwnedVeth { name: host_veth_name(container_id), owner: owner_mark(container_id) });
}

/// The NIC's table: the one its addresses' source rules look up, else the table its name
/// gives (`netN` → 100 + N).
fn own_table(pod: &PodFacts, ifname: &str, ips: &[IpAddr]) -> Option<u32> {
    let by_rule = pod
        .rules
        .iter()
        .find(|r| r.table >= FIRST_NIC_TABLE && r.from.is_some_and(|n| ips.contains(&n.addr())))
        .map(|r| r.table);
    by_rule.or_else(|| {
        ifname
            .strip_prefix("net")
            .and_then(|n| n.parse::<u32>().ok())
            .filter(|n| (1..=150).contains(n))
            .map(|_| nic_table(ifname, &[]))
    })
}

/// Every route of table `t`, named by device.
fn routes_in(pod: &PodFacts, t: u32) -> Vec<DevRoute> {
    pod.routes
        .iter()
        .filter(|r| r.table == t)
        .map(|r| match r.oif.and_then(|i| pod.name_of(i)) {
            Some(dev) => DevRoute::new(r.clone(), dev),
            None => DevRoute::any_dev(r.clone()),
        })
        .collect()
}

/// What the overlay-mode NICs of a pod share with each other: table 100 and eth0's source rule
/// (NodePort replies through eth0), eth0's node and cluster routes in main. They go with the
/// last overlay-mode NIC: when no other NIC's table is looked up any more.
fn overlay_shared(
    conf: &Conf,
    p: &mut DelPlan,
    facts: &Facts,
    own: Option<u32>,
    ips: &[IpAddr],
    prev: Option<&CniResult>,
) {
    let eth0 = &conf.pod_default_cni_nic;
    let swap = conf.pod_default_route_nic.as_deref() == Some(p.ifname.as_str());
    if swap {
        // ADD moved eth0's default route out of main into the NIC's table: put it back.
        if let Some(t) = own {
            for r in
                routes_in(&facts.pod, t).into_iter().filter(|r| r.route.is_default() && r.dev.as_deref() == Some(eth0))
            {
                p.pod_routes_restore.push(DevRoute::new(Route { table: MAIN_TABLE, ..r.route }, eth0));
            }
        }
    }
    let others: Vec<u32> = facts
        .pod
        .rules
        .iter()
        .filter(|r| {
            r.from.is_some_and(|n| !ips.contains(&n.addr())) && r.table >= FIRST_NIC_TABLE && Some(r.table) != own
        })
        .map(|r| r.table)
        .collect();
    if !others.is_empty() {
        p.notes.push(format!("table {REPLY_TABLE} and {eth0}'s routes stay: table(s) {others:?} still use them"));
        return;
    }
    let eth0_srcs = first_per_family(&facts.pod.addrs_of(eth0));
    p.pod_rules.extend(
        facts.pod.rules.iter().filter(|r| r.table == REPLY_TABLE && r.from.is_some() && r.fwmark.is_none()).cloned(),
    );
    p.pod_routes.extend(routes_in(&facts.pod, REPLY_TABLE));
    let rank_by: Vec<IpNet> = match prev {
        Some(r) => r.ips.iter().map(|i| i.address).collect(),
        None => ips.iter().map(|ip| IpNet::from(*ip)).collect(),
    };
    let node_ips = node_ips::select(conf, &facts.node, &rank_by);
    p.pod_routes.extend(overlay_eth0_routes(conf, &node_ips, &eth0_srcs));
}
