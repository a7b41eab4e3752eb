//! Neighbour (ARP/NDP) entries (`ip neigh`).

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState};
use netlink_packet_route::route::RouteType;
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use serde::{Deserialize, Serialize};

use crate::types::{Family, Mac};
use crate::{Handle, Result};

/// Neighbour entry state (`NUD_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NeighState {
    /// Static, never expires.
    Permanent,
    /// Confirmed recently.
    Reachable,
    /// Valid but unconfirmed.
    Stale,
    /// Waiting before probing.
    Delay,
    /// Probing.
    Probe,
    /// Resolution in progress.
    Incomplete,
    /// Resolution failed.
    Failed,
    /// No ARP needed (e.g. point-to-point).
    Noarp,
    /// No state.
    None,
    /// Any other (combined) value.
    Other(u16),
}

impl NeighState {
    fn to_nl(self) -> NeighbourState {
        match self {
            NeighState::Permanent => NeighbourState::Permanent,
            NeighState::Reachable => NeighbourState::Reachable,
            NeighState::Stale => NeighbourState::Stale,
            NeighState::Delay => NeighbourState::Delay,
            NeighState::Probe => NeighbourState::Probe,
            NeighState::Incomplete => NeighbourState::Incomplete,
            NeighState::Failed => NeighbourState::Failed,
            NeighState::Noarp => NeighbourState::Noarp,
            NeighState::None => NeighbourState::None,
            NeighState::Other(v) => NeighbourState::from(v),
        }
    }

    fn from_nl(s: NeighbourState) -> NeighState {
        match s {
            NeighbourState::Permanent => NeighState::Permanent,
            NeighbourState::Reachable => NeighState::Reachable,
            NeighbourState::Stale => NeighState::Stale,
            NeighbourState::Delay => NeighState::Delay,
            NeighbourState::Probe => NeighState::Probe,
            NeighbourState::Incomplete => NeighState::Incomplete,
            NeighbourState::Failed => NeighState::Failed,
            NeighbourState::Noarp => NeighState::Noarp,
            NeighbourState::None => NeighState::None,
            other => NeighState::Other(u16::from(other)),
        }
    }
}

/// One neighbour entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Neighbour {
    /// Interface index.
    pub index: u32,
    /// Protocol address.
    pub ip: IpAddr,
    /// Link-layer address, if known.
    pub lladdr: Option<Mac>,
    /// State.
    pub state: NeighState,
}

impl Neighbour {
    /// A permanent entry `ip lladdr mac dev index`.
    pub fn permanent(index: u32, ip: IpAddr, mac: Mac) -> Neighbour {
        Neighbour { index, ip, lladdr: Some(mac), state: NeighState::Permanent }
    }
}

fn to_msg(n: &Neighbour) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = Family::of(&n.ip).to_nl();
    msg.header.ifindex = n.index;
    msg.header.state = n.state.to_nl();
    msg.header.kind = RouteType::Unspec;
    msg.attributes.push(NeighbourAttribute::Destination(match n.ip {
        IpAddr::V4(a) => NeighbourAddress::Inet(a),
        IpAddr::V6(a) => NeighbourAddress::Inet6(a),
    }));
    if let Some(mac) = n.lladdr {
        msg.attributes.push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
    }
    msg
}

fn describe(n: &Neighbour) -> String {
    match n.lladdr {
        Some(m) => format!("{} lladdr {m} dev #{} {:?}", n.ip, n.index, n.state),
        None => format!("{} dev #{} {:?}", n.ip, n.index, n.state),
    }
}

/// Adds an entry; `EEXIST` if one exists for that address on that interface.
pub fn add(h: &Handle, n: &Neighbour) -> Result<()> {
    h.request(RouteNetlinkMessage::NewNeighbour(to_msg(n)), NLM_F_CREATE | NLM_F_EXCL, || {
        format!("add neighbour {}", describe(n))
    })
    .map(|_| ())
}

/// Adds or overwrites an entry.
pub fn replace(h: &Handle, n: &Neighbour) -> Result<()> {
    h.request(RouteNetlinkMessage::NewNeighbour(to_msg(n)), NLM_F_CREATE | NLM_F_REPLACE, || {
        format!("replace neighbour {}", describe(n))
    })
    .map(|_| ())
}

/// Deletes the entry for `ip` on interface `index` (`ENOENT` if absent).
pub fn del(h: &Handle, index: u32, ip: IpAddr) -> Result<()> {
    let n = Neighbour { index, ip, lladdr: None, state: NeighState::None };
    h.request(RouteNetlinkMessage::DelNeighbour(to_msg(&n)), 0, || format!("delete neighbour {ip} dev #{index}"))
        .map(|_| ())
}

/// Lists entries, optionally of one family and/or one interface.
///
/// Both filters are applied by the kernel: the family in the request header, the interface as
/// `NDA_IFINDEX` (which the kernel honours in a neighbour dump with or without strict
/// checking), so a node with thousands of entries sends only those asked for.
pub fn list(h: &Handle, family: Option<Family>, index: Option<u32>) -> Result<Vec<Neighbour>> {
    let mut req = NeighbourMessage::default();
    req.header.family = family.map(Family::to_nl).unwrap_or(AddressFamily::Unspec);
    if let Some(i) = index {
        req.attributes.push(NeighbourAttribute::IfIndex(i));
    }
    let msgs = h.dump(RouteNetlinkMessage::GetNeighbour(req), || match index {
        Some(i) => format!("list neighbours dev #{i}"),
        None => "list neighbours".to_string(),
    })?;
    // Filtered again here: a kernel that ignores the filter must not widen the answer.
    Ok(msgs
        .into_iter()
        .filter_map(parse)
        .filter(|n| family.is_none_or(|f| f == Family::of(&n.ip)) && index.is_none_or(|i| i == n.index))
        .collect())
}

/// The entry for `ip` on interface `index`, if there is one: one `RTM_GETNEIGH` request for
/// that address, whatever the size of the neighbour table.
pub fn get(h: &Handle, index: u32, ip: IpAddr) -> Result<Option<Neighbour>> {
    let n = Neighbour { index, ip, lladdr: None, state: NeighState::None };
    let mut req = to_msg(&n);
    req.header.state = NeighbourState::None;
    match h.request(RouteNetlinkMessage::GetNeighbour(req), 0, || format!("get neighbour {ip} dev #{index}")) {
        Ok(msgs) => Ok(msgs.into_iter().filter_map(parse).find(|n| n.ip == ip && n.index == index)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

fn parse(m: RouteNetlinkMessage) -> Option<Neighbour> {
    let RouteNetlinkMessage::NewNeighbour(m) = m else { return None };
    Family::from_nl(m.header.family)?;
    let mut ip = None;
    let mut lladdr = None;
    for attr in &m.attributes {
        match attr {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => ip = Some(IpAddr::V4(*a)),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => ip = Some(IpAddr::V6(*a)),
            NeighbourAttribute::LinkLayerAddress(b) => lladdr = Mac::from_slice(b),
            _ => {}
        }
    }
    Some(Neighbour { index: m.header.ifindex, ip: ip?, lladdr, state: NeighState::from_nl(m.header.state) })
}
