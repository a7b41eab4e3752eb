//! Reads the kernel facts a plan is made from ([`Needs`] says which), once per call.
//!
//! Cost matters (it runs in every ADD and DEL, and a node with many pods has hundreds of links
//! and routes): the node's addresses are read for the families needed only (the kernel
//! filters), the names of just the interfaces that carry one, and the node's routing table
//! only when the node-IP choice needs the default route.

use ipnet::IpNet;
use knit_cni::CniError;
use knit_host::{addr, link, route, rule, Family, Handle, Scope};

use crate::error;
use crate::plan::{self, Facts, Needs, NodeAddr, NodeFacts, PodFacts, PodLink, MAIN_TABLE};

/// Above this many interfaces carrying global addresses, one link dump is cheaper than a
/// lookup per interface.
const LINK_LOOKUPS_MAX: usize = 16;

/// Reads what `needs` asks for. `pod_ips` are the pod's addresses known so far (they rank the
/// node's addresses, which decides whether the default routes are read).
pub fn read(
    needs: &Needs,
    default_nic: &str,
    pod_ips: &[IpNet],
    host: &Handle,
    pod: &Handle,
) -> Result<Facts, CniError> {
    let pod_facts = read_pod(needs, pod)?;
    let mut node = read_node(needs, host, pod_ips)?;
    if needs.default_nic_peer {
        // The host side of the default NIC's veth: its link index is the peer's ifindex in the
        // node's namespace (the pod was created from there).
        if let Some(peer) = pod_facts.link(default_nic).and_then(|l| l.peer) {
            if let Some(h) = link::get_by_index(host, peer).map_err(error::kernel("reading host links"))? {
                node.default_nic_peer = Some(h.name);
            }
        }
    }
    Ok(Facts { pod: pod_facts, node })
}

/// The pod's links, and with [`Needs::pod_state`] its addresses, routes and rules.
pub fn read_pod(needs: &Needs, pod: &Handle) -> Result<PodFacts, CniError> {
    let links = link::list(pod)
        .map_err(error::kernel("listing pod links"))?
        .into_iter()
        .map(|l| PodLink { index: l.index, name: l.name, kind: l.kind, peer: l.link })
        .collect();
    let mut p = PodFacts { links, ..PodFacts::default() };
    if needs.pod_state {
        p.addrs = addr::list(pod, None, None)
            .map_err(error::kernel("listing pod addresses"))?
            .into_iter()
            .filter(|a| a.scope == Scope::Universe)
            .collect();
        for f in [Family::V4, Family::V6] {
            p.routes.extend(route::list(pod, f, None).map_err(error::kernel("listing pod routes"))?);
            p.rules.extend(rule::list(pod, f).map_err(error::kernel("listing pod rules"))?);
        }
    }
    Ok(p)
}

/// The node's global addresses of the families needed, their interfaces' names, and the
/// default routes' interfaces when the node-IP choice needs them.
fn read_node(needs: &Needs, host: &Handle, pod_ips: &[IpNet]) -> Result<NodeFacts, CniError> {
    let mut node = NodeFacts::default();
    let filter = match needs.node_families.as_slice() {
        [] => return Ok(node),
        [f] => Some(*f),
        _ => None,
    };
    node.addrs = addr::list(host, filter, None)
        .map_err(error::kernel("listing host addresses"))?
        .into_iter()
        .filter(|a| a.scope == Scope::Universe)
        .map(|a| NodeAddr { index: a.index, ifname: None, net: a.net })
        .collect();
    if !needs.node_names {
        return Ok(node);
    }
    let mut indexes: Vec<u32> = node.addrs.iter().map(|a| a.index).collect();
    indexes.sort_unstable();
    indexes.dedup();
    let mut names: Vec<(u32, String)> = Vec::new();
    if indexes.len() > LINK_LOOKUPS_MAX {
        for l in link::list(host).map_err(error::kernel("listing host links"))? {
            if indexes.binary_search(&l.index).is_ok() {
                names.push((l.index, l.name));
            }
        }
    } else {
        for &i in &indexes {
            if let Some(l) = link::get_by_index(host, i).map_err(error::kernel("reading host links"))? {
                names.push((i, l.name));
            }
        }
    }
    for a in &mut node.addrs {
        a.ifname = names.iter().find(|(i, _)| *i == a.index).map(|(_, n)| n.clone());
    }
    for f in plan::node_ips::default_routes_needed(&node.addrs, pod_ips) {
        let routes = route::list(host, f, Some(MAIN_TABLE)).map_err(error::kernel("listing host routes"))?;
        node.default_route_oifs.extend(routes.iter().filter(|r| r.is_default()).filter_map(|r| r.oif));
    }
    Ok(node)
}
