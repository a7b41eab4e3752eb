//! The few kernel facts the plans are made from, as plain data. `apply` reads them once per
//! call (what it reads is decided by [`Needs`]) and hands them over; the plans never ask the
//! kernel themselves, so every decision can be tested without root.

use std::net::IpAddr;

use ipnet::IpNet;
use knit_cni::CniResult;
use knit_host::addr::Address;
use knit_host::route::Route;
use knit_host::rule::Rule;
use knit_host::Family;

use super::mode::underlay_first;
use super::nic_ips;
use crate::config::Conf;

/// A link in the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodLink {
    pub index: u32,
    pub name: String,
    /// `IFLA_INFO_KIND` (`veth`, `macvlan`, …); `None` for physical devices.
    pub kind: Option<String>,
    /// `IFLA_LINK`: for a veth, the index of its peer (in the node for a pod's eth0).
    pub peer: Option<u32>,
}

/// What the pod looks like.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodFacts {
    pub links: Vec<PodLink>,
    /// Global-scope addresses (read when [`Needs::pod_state`]).
    pub addrs: Vec<Address>,
    /// Every route of every table, both families (read when [`Needs::pod_state`]).
    pub routes: Vec<Route>,
    /// Every rule, both families (read when [`Needs::pod_state`]).
    pub rules: Vec<Rule>,
}

impl PodFacts {
    pub fn link(&self, name: &str) -> Option<&PodLink> {
        self.links.iter().find(|l| l.name == name)
    }

    pub fn link_names(&self) -> Vec<&str> {
        self.links.iter().map(|l| l.name.as_str()).collect()
    }

    /// The name of the link with index `index`.
    pub fn name_of(&self, index: u32) -> Option<&str> {
        self.links.iter().find(|l| l.index == index).map(|l| l.name.as_str())
    }

    /// Global addresses on link `name`.
    pub fn addrs_of(&self, name: &str) -> Vec<IpNet> {
        match self.link(name) {
            Some(l) => self.addrs.iter().filter(|a| a.index == l.index).map(|a| a.net).collect(),
            None => Vec::new(),
        }
    }

    /// Main-table routes through link `name`.
    pub fn main_routes_of(&self, name: &str) -> Vec<Route> {
        match self.link(name) {
            Some(l) => {
                self.routes.iter().filter(|r| r.table == super::MAIN_TABLE && r.oif == Some(l.index)).cloned().collect()
            }
            None => Vec::new(),
        }
    }
}

/// A global address of the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAddr {
    pub index: u32,
    /// The interface's name (read when [`Needs::node_names`]).
    pub ifname: Option<String>,
    pub net: IpNet,
}

/// What the node looks like.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeFacts {
    /// Global-scope addresses of the families in [`Needs::node_families`].
    pub addrs: Vec<NodeAddr>,
    /// Output interfaces of the main table's default routes, read only for the families where
    /// the node-IP choice needs them ([`super::node_ips::default_routes_needed`]).
    pub default_route_oifs: Vec<u32>,
    /// The host side of the pod's default NIC (e.g. knit-routed's `cali…`), when it is a veth.
    pub default_nic_peer: Option<String>,
}

/// Everything a plan is made from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    pub pod: PodFacts,
    pub node: NodeFacts,
}

/// Which facts a call needs: `apply` reads exactly these. An underlay first NIC (the hot path:
/// every underlay pod) needs the pod's links and the node's addresses of its own families; a
/// secondary NIC's plan moves routes and shares tables, so it reads the pod's state too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Needs {
    /// The pod's addresses, routes and rules.
    pub pod_state: bool,
    /// The node's addresses of these families.
    pub node_families: Vec<Family>,
    /// The names of the node's interfaces that carry those addresses (to choose node IPs).
    pub node_names: bool,
    /// The host side of the pod's default NIC.
    pub default_nic_peer: bool,
}

fn families_of(ips: &[IpNet]) -> Vec<Family> {
    let mut out = Vec::new();
    for f in ips.iter().map(Family::of_net) {
        if !out.contains(&f) {
            out.push(f);
        }
    }
    if out.is_empty() {
        out = vec![Family::V4, Family::V6];
    }
    out
}

/// What ADD and CHECK read.
pub fn needs_for_add(conf: &Conf, ifname: &str, prev: &CniResult) -> Needs {
    if underlay_first(conf, ifname) {
        Needs {
            pod_state: false,
            node_families: families_of(&nic_ips(prev, ifname)),
            node_names: conf.node_ips.is_empty(),
            default_nic_peer: false,
        }
    } else {
        Needs {
            pod_state: true,
            node_families: vec![Family::V4, Family::V6],
            node_names: conf.node_ips.is_empty(),
            default_nic_peer: true,
        }
    }
}

/// What DEL reads (from a pod it can reach). An underlay first NIC's DEL removes what hangs on
/// no address (its veth pair, its fwmark rules, its nf_tables table): the pod's links are
/// enough. A secondary NIC's DEL finds its table and the shared state in the pod, and the node
/// IPs of the main-table routes it shares.
pub fn needs_for_del(conf: &Conf, ifname: &str) -> Needs {
    if underlay_first(conf, ifname) {
        Needs { pod_state: false, node_families: Vec::new(), node_names: false, default_nic_peer: false }
    } else {
        Needs {
            pod_state: true,
            node_families: vec![Family::V4, Family::V6],
            node_names: conf.node_ips.is_empty(),
            default_nic_peer: true,
        }
    }
}

/// `ip/32` or `ip/128`.
pub fn host_net(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}
