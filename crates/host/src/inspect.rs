//! Read-only helpers for inspection tools (`knit trace`): namespace ids and multipath routes.
//! Nothing here changes kernel state.

use std::net::IpAddr;
use std::os::fd::AsRawFd;

use ipnet::IpNet;
use netlink_packet_route::nsid::{NsidAttribute, NsidMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteFlags, RouteMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::netns::Netns;
use crate::types::{ipnet, Family};
use crate::{Handle, Result};

/// The id the handle's namespace uses for `target` (`RTM_GETNSID`), as veth and macvlan links
/// report it in [`crate::link::LinkInfo::link_netnsid`]; `None` when none is assigned.
pub fn nsid_of(h: &Handle, target: &Netns) -> Result<Option<i32>> {
    let mut msg = NsidMessage::default();
    msg.header.family = AddressFamily::Unspec;
    msg.attributes.push(NsidAttribute::Fd(target.as_raw_fd() as u32));
    let op = format!("get nsid of {}", target.describe());
    for m in h.request(RouteNetlinkMessage::GetNsId(msg), 0, || op.clone())? {
        if let RouteNetlinkMessage::NewNsId(m) = m {
            for a in m.attributes {
                if let NsidAttribute::Id(id) = a {
                    return Ok(if id < 0 { None } else { Some(id) });
                }
            }
        }
    }
    Ok(None)
}

/// One next hop of a multipath route.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NextHop {
    /// Gateway.
    pub gateway: Option<IpAddr>,
    /// Output interface index.
    pub oif: u32,
}

/// A route with `RTA_MULTIPATH` next hops (which [`crate::route::list`] does not report).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MultipathRoute {
    /// Destination prefix.
    pub dst: IpNet,
    /// Table.
    pub table: u32,
    /// Metric.
    pub metric: Option<u32>,
    /// Next hops, in kernel order.
    pub nexthops: Vec<NextHop>,
}

fn addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v) => Some(IpAddr::V4(*v)),
        RouteAddress::Inet6(v) => Some(IpAddr::V6(*v)),
        _ => None,
    }
}

/// Lists the multipath routes of one family in all tables.
pub fn multipath_routes(h: &Handle, family: Family) -> Result<Vec<MultipathRoute>> {
    let mut req = RouteMessage::default();
    req.header.address_family = family.to_nl();
    let msgs = h.dump(RouteNetlinkMessage::GetRoute(req), || format!("list {family:?} multipath routes"))?;
    let mut out = Vec::new();
    for m in msgs {
        let RouteNetlinkMessage::NewRoute(m) = m else { continue };
        if m.header.flags.contains(RouteFlags::Cloned) || Family::from_nl(m.header.address_family) != Some(family) {
            continue;
        }
        let mut dst = None;
        let mut table = u32::from(m.header.table);
        let mut metric = None;
        let mut hops = Vec::new();
        for a in &m.attributes {
            match a {
                RouteAttribute::Destination(d) => dst = addr(d),
                RouteAttribute::Table(t) => table = *t,
                RouteAttribute::Priority(p) => metric = Some(*p),
                RouteAttribute::MultiPath(nhs) => {
                    for nh in nhs {
                        let gateway = nh.attributes.iter().find_map(|x| match x {
                            RouteAttribute::Gateway(g) => addr(g),
                            _ => None,
                        });
                        hops.push(NextHop { gateway, oif: nh.interface_index });
                    }
                }
                _ => {}
            }
        }
        if hops.is_empty() {
            continue;
        }
        let dst = match dst {
            Some(ip) => ipnet(ip, m.header.destination_prefix_length, "list multipath routes")?,
            None => family.any(),
        };
        out.push(MultipathRoute { dst, table, metric, nexthops: hops });
    }
    Ok(out)
}
