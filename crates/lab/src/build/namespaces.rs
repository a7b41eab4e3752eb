//! The lab's namespaces and links: the fabric's bridges (the underlay switch, the external
//! side) and each node's and client's `eth0` on them.

use std::net::IpAddr;

use ipnet::IpNet;
use knit_host::link::{self, VethOptions};
use knit_host::route::{self, Route};
use knit_host::{addr, sysctl, Handle, Netns};

use super::{check_cancel, Lab};
use crate::error::{host, LabError, Result};
use crate::plan::{LabPlan, EXTERNAL_BRIDGE, UNDERLAY_BRIDGE};
use crate::topology::ClientSide;

impl Lab {
    pub(super) fn make_namespaces(&mut self) -> Result<()> {
        let topo = &self.plan.topo;
        let mut parts: Vec<String> = vec![crate::topology::FABRIC_NAME.to_string()];
        parts.extend(topo.nodes.iter().map(|n| n.name.clone()));
        parts.extend(topo.clients.iter().map(|c| c.name.clone()));
        parts.extend(topo.pods.iter().map(|p| p.name.clone()));
        for part in parts {
            check_cancel()?;
            self.make_ns(&part)?;
        }
        Ok(())
    }

    pub(super) fn wire_fabric(&self) -> Result<()> {
        let topo = &self.plan.topo;
        let fabric = self.netns(crate::topology::FABRIC_NAME)?;
        let fname = self.plan.fabric_ns();
        let fh = Handle::in_netns(fabric).map_err(host(format!("netlink in {fname}")))?;
        // The ToR routes between hosts of one subnet (underlay clients → nodes for the Service
        // CIDR), and an ICMP redirect would make a client cache "via <node>" for five minutes:
        // a node that leaves (remove-node) or an ECMP set that changes then blackholes it. A
        // fabric switch sends none; `all` and the interface are OR-ed, so both must be 0
        // (`default` covers the bridges made next).
        for conf in ["all", "default"] {
            sysctl::set_in(fabric, &format!("net.ipv4.conf.{conf}.send_redirects"), "0")
                .map_err(host(format!("{fname}: no ICMP redirects")))?;
        }
        let br = bridge(&fh, UNDERLAY_BRIDGE, &topo.fabric.gateways, &fname)?;
        let has_external = topo.clients.iter().any(|c| c.side == ClientSide::External);
        let brx = if has_external {
            Some(bridge(&fh, EXTERNAL_BRIDGE, &[topo.fabric.external_gateway], &fname)?)
        } else {
            None
        };
        sysctl::set_in(fabric, "net.ipv4.ip_forward", "1").map_err(host(format!("forwarding in {fname}")))?;

        let mut uplinks: Vec<(String, char, IpNet, IpAddr, u32)> = Vec::new();
        for n in &topo.nodes {
            let gw = topo
                .fabric_gateway_for(n.ip.addr())
                .ok_or_else(|| LabError::Invalid(format!("node {}: {} is in no fabric subnet", n.name, n.ip)))?;
            uplinks.push((n.name.clone(), 'n', n.ip, gw.addr(), br));
        }
        for c in &topo.clients {
            let master = match c.side {
                ClientSide::External => brx.unwrap_or(br),
                ClientSide::Underlay => br,
            };
            uplinks.push((c.name.clone(), 'c', c.ip, c.gateway, master));
        }
        for (name, kind, ip, gw, master) in uplinks {
            self.uplink(&fh, &name, kind, ip, gw, master)?;
        }
        Ok(())
    }

    /// `eth0` of `name` (a node or client namespace) on a fabric bridge, with its address and
    /// default route.
    pub(super) fn uplink(&self, fh: &Handle, name: &str, kind: char, ip: IpNet, gw: IpAddr, master: u32) -> Result<()> {
        let ns = self.netns(name)?;
        let port = LabPlan::fabric_link(kind, name);
        let what = format!("{name}'s uplink");
        let idx = link::create_veth(fh, &port, "eth0", Some(ns), &VethOptions { up: true, ..Default::default() })
            .map_err(host(what.clone()))?;
        link::set_master(fh, idx, Some(master)).map_err(host(what.clone()))?;
        let h = Handle::in_netns(ns).map_err(host(what.clone()))?;
        let eth0 = link::index_of(&h, "eth0").map_err(host(what.clone()))?;
        addr::add(&h, &addr::Address::new(eth0, ip)).map_err(host(format!("{name}: address {ip}")))?;
        route::add(&h, &Route::default_via(gw, Some(eth0))).map_err(host(format!("{name}: default via {gw}")))?;
        if kind == 'n' {
            sysctl::set_in(ns, "net.ipv4.ip_forward", "1").map_err(host(format!("{name}: forwarding")))?;
        }
        Ok(())
    }

    /// Adds node `node` (already in the topology) to the fabric: namespace and uplink.
    pub(crate) fn make_node(&mut self, node: &str) -> Result<()> {
        self.make_ns(node)?;
        let n = self.plan.topo.node(node).cloned().ok_or_else(|| LabError::Invalid(format!("no node {node}")))?;
        let gw = self
            .plan
            .topo
            .fabric_gateway_for(n.ip.addr())
            .ok_or_else(|| LabError::Invalid(format!("node {node}: {} is in no fabric subnet", n.ip)))?;
        let fh = Handle::in_netns(self.netns(crate::topology::FABRIC_NAME)?).map_err(host("netlink in the fabric"))?;
        let br = link::index_of(&fh, UNDERLAY_BRIDGE).map_err(host("fabric bridge"))?;
        self.uplink(&fh, node, 'n', n.ip, gw.addr(), br)
    }

    /// Creates the namespace of a node, pod or client (`part`), with `lo` up.
    pub(crate) fn make_ns(&mut self, part: &str) -> Result<()> {
        let full = self.plan.ns(part);
        let ns = Netns::create_named(&full).map_err(host(format!("create namespace {full}")))?;
        let h = Handle::in_netns(&ns).map_err(host(format!("netlink in {full}")))?;
        let lo = link::index_of(&h, "lo").map_err(host(format!("lo in {full}")))?;
        link::set_up(&h, lo).map_err(host(format!("lo up in {full}")))?;
        self.namespaces.insert(full, ns);
        Ok(())
    }
}

fn bridge(h: &Handle, name: &str, addrs: &[IpNet], ns: &str) -> Result<u32> {
    let what = format!("{ns}: bridge {name}");
    let idx = link::create_bridge(h, name).map_err(host(what.clone()))?;
    // A bridge whose MAC was never set takes the lowest MAC of its ports, so it changes when a
    // node leaves (remove-node) and hosts holding the gateway's old MAC lose it until their ARP
    // entry fails. Setting the (random) MAC it was created with pins it.
    if let Some(mac) = link::get_by_index(h, idx).map_err(host(what.clone()))?.and_then(|l| l.mac) {
        link::set_mac(h, idx, mac).map_err(host(format!("{what}: pin MAC")))?;
    }
    for a in addrs {
        addr::add(h, &addr::Address::new(idx, *a)).map_err(host(format!("{what}: address {a}")))?;
    }
    link::set_up(h, idx).map_err(host(what))?;
    Ok(idx)
}
