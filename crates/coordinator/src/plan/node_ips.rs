//! Which of the node's addresses count as "this node's IP" for the pod: the gateway of its
//! cluster routes through the node, and the `/32` routes to the node itself.

use std::net::IpAddr;

use ipnet::IpNet;
use knit_host::Family;

use super::facts::{NodeAddr, NodeFacts};
use crate::config::Conf;

/// Interface name prefixes that never carry the node's own IP (Spiderpool's list, plus ours).
pub const NOT_NODE_IFACES: &[&str] = &[
    "lo",
    "veth",
    "cali",
    "docker",
    "cbr",
    "virbr",
    "lxcbr",
    "cni",
    "flannel",
    "kube-ipvs",
    "vx-submariner",
    "cilium",
    "knit",
    "vxlan",
];

fn usable(a: &NodeAddr) -> bool {
    a.ifname.as_deref().is_some_and(|n| !NOT_NODE_IFACES.iter().any(|p| n.starts_with(p)))
}

fn in_subnet(a: &NodeAddr, pod_ips: &[IpNet]) -> bool {
    pod_ips.iter().any(|p| a.net.contains(&p.addr()))
}

/// The families whose default routes decide the order of the node IPs: those with several
/// candidates and none in the pod's subnet. Reading the routing table costs (a node with many
/// pods has many routes), so it is read for these only.
pub fn default_routes_needed(addrs: &[NodeAddr], pod_ips: &[IpNet]) -> Vec<Family> {
    let mut out = Vec::new();
    for f in [Family::V4, Family::V6] {
        let of_f: Vec<&NodeAddr> = addrs.iter().filter(|a| usable(a) && Family::of_net(&a.net) == f).collect();
        if of_f.len() > 1 && !of_f.iter().any(|a| in_subnet(a, pod_ips)) {
            out.push(f);
        }
    }
    out
}

/// The node's IPs, best first: `nodeIPs` from the config when given; else the global addresses
/// of interfaces that can carry the node's IP, the one in the pod's subnet first, then those on
/// a default route's interface, then the rest.
pub fn select(conf: &Conf, node: &NodeFacts, pod_ips: &[IpNet]) -> Vec<IpAddr> {
    if !conf.node_ips.is_empty() {
        return conf.node_ips.clone();
    }
    let mut ranked: Vec<(u8, IpAddr)> = node
        .addrs
        .iter()
        .filter(|a| usable(a))
        .map(|a| {
            let rank = if in_subnet(a, pod_ips) {
                0
            } else if node.default_route_oifs.contains(&a.index) {
                1
            } else {
                2
            };
            (rank, a.net.addr())
        })
        .collect();
    ranked.sort_by_key(|c| c.0);
    let mut out: Vec<IpAddr> = Vec::new();
    for (_, ip) in ranked {
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(index: u32, ifname: &str, net: &str) -> NodeAddr {
        NodeAddr { index, ifname: Some(ifname.into()), net: net.parse().unwrap() }
    }

    fn ips(v: &[&str]) -> Vec<IpAddr> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn the_address_in_the_pods_subnet_comes_first_and_pod_veths_never_count() {
        let node = NodeFacts {
            addrs: vec![
                addr(2, "eth1", "10.0.0.2/24"),
                addr(3, "eth0", "172.16.1.2/16"),
                addr(9, "cali0123456789a", "169.254.1.1/32"),
                addr(10, "veth0123456789a", "172.16.9.9/32"),
            ],
            ..NodeFacts::default()
        };
        let pod = ["172.16.100.10/16".parse().unwrap()];
        assert!(default_routes_needed(&node.addrs, &pod).is_empty());
        assert_eq!(select(&Conf::fallback(), &node, &pod), ips(&["172.16.1.2", "10.0.0.2"]));
    }

    #[test]
    fn without_one_in_the_subnet_the_default_routes_device_comes_first() {
        let mut node = NodeFacts {
            addrs: vec![addr(2, "eth1", "10.0.0.2/24"), addr(3, "eth0", "172.16.1.2/16")],
            ..NodeFacts::default()
        };
        let pod = ["192.0.2.10/24".parse().unwrap()];
        assert_eq!(default_routes_needed(&node.addrs, &pod), vec![Family::V4]);
        node.default_route_oifs = vec![3];
        assert_eq!(select(&Conf::fallback(), &node, &pod), ips(&["172.16.1.2", "10.0.0.2"]));
    }

    #[test]
    fn configured_node_ips_win_and_unnamed_interfaces_are_not_candidates() {
        let node = NodeFacts {
            addrs: vec![NodeAddr { index: 2, ifname: None, net: "10.0.0.2/24".parse().unwrap() }],
            ..NodeFacts::default()
        };
        assert!(select(&Conf::fallback(), &node, &[]).is_empty());
        let mut c = Conf::fallback();
        c.node_ips = ips(&["198.51.100.7"]);
        assert_eq!(select(&c, &node, &[]), ips(&["198.51.100.7"]));
    }
}
