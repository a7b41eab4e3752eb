//! The underlay pod IPs this node wires: every `/32` (`/128`) route in the host rule table
//! whose device is a coordinator veth (`veth…`). Other nodes route these IPs via this node
//! (`/32 via <node IP>`), so that both directions of an overlay ↔ underlay connection pass
//! through the pod's own node and its conntrack sees the whole connection.

use std::net::IpAddr;

use knit_host::{link, route, Family, Handle};
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnderlayIp {
    pub ip: IpAddr,
    pub dev: String,
}

/// Lists the underlay pod IPs wired in `table` (the coordinator's hostRuleTable).
pub fn list(host: &Handle, table: u32) -> knit_host::Result<Vec<UnderlayIp>> {
    let links = link::list(host)?;
    let mut out = Vec::new();
    for f in [Family::V4, Family::V6] {
        for r in route::list(host, f, Some(table))? {
            if r.dst.prefix_len() != r.dst.max_prefix_len() {
                continue;
            }
            let Some(dev) = r.oif.and_then(|i| links.iter().find(|l| l.index == i)) else { continue };
            if dev.name.starts_with("veth") {
                out.push(UnderlayIp { ip: r.dst.addr(), dev: dev.name.clone() });
            }
        }
    }
    Ok(out)
}
