//! Routes (`ip route`), as plain data that planners can compute and compare.

use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::RouteNetlinkMessage;
use serde::{Deserialize, Serialize};

use crate::types::{ipnet, Family, Scope};
use crate::{Error, Handle, Result};

/// Well-known routing tables.
pub mod table {
    /// `local` (255).
    pub const LOCAL: u32 = 255;
    /// `main` (254).
    pub const MAIN: u32 = 254;
    /// `default` (253).
    pub const DEFAULT: u32 = 253;
}

/// Well-known route protocols (`RTPROT_*`).
pub mod proto {
    /// Unspecified; as a delete filter it matches any protocol.
    pub const UNSPEC: u8 = 0;
    /// Installed by the kernel (connected routes).
    pub const KERNEL: u8 = 2;
    /// `ip route add` default.
    pub const BOOT: u8 = 3;
    /// Static routes set by an administrator/daemon.
    pub const STATIC: u8 = 4;
    /// BIRD.
    pub const BIRD: u8 = 12;
}

/// Route type (`RTN_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteKind {
    /// A normal route.
    #[default]
    Unicast,
    /// Local delivery (table local).
    Local,
    /// Broadcast.
    Broadcast,
    /// Anycast.
    Anycast,
    /// Multicast.
    Multicast,
    /// Silently drop.
    Blackhole,
    /// Drop with ICMP unreachable.
    Unreachable,
    /// Drop with ICMP prohibited.
    Prohibit,
    /// Stop lookup in this table, continue with the next rule.
    Throw,
    /// Any other type.
    Other(u8),
}

impl RouteKind {
    fn to_nl(self) -> RouteType {
        match self {
            RouteKind::Unicast => RouteType::Unicast,
            RouteKind::Local => RouteType::Local,
            RouteKind::Broadcast => RouteType::Broadcast,
            RouteKind::Anycast => RouteType::Anycast,
            RouteKind::Multicast => RouteType::Multicast,
            RouteKind::Blackhole => RouteType::BlackHole,
            RouteKind::Unreachable => RouteType::Unreachable,
            RouteKind::Prohibit => RouteType::Prohibit,
            RouteKind::Throw => RouteType::Throw,
            RouteKind::Other(v) => RouteType::from(v),
        }
    }

    fn from_nl(t: RouteType) -> RouteKind {
        match t {
            RouteType::Unicast => RouteKind::Unicast,
            RouteType::Local => RouteKind::Local,
            RouteType::Broadcast => RouteKind::Broadcast,
            RouteType::Anycast => RouteKind::Anycast,
            RouteType::Multicast => RouteKind::Multicast,
            RouteType::BlackHole => RouteKind::Blackhole,
            RouteType::Unreachable => RouteKind::Unreachable,
            RouteType::Prohibit => RouteKind::Prohibit,
            RouteType::Throw => RouteKind::Throw,
            other => RouteKind::Other(u8::from(other)),
        }
    }
}

/// One route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// Destination prefix (`0.0.0.0/0` / `::/0` for the default route).
    pub dst: IpNet,
    /// Next hop.
    pub gateway: Option<IpAddr>,
    /// Output interface index.
    pub oif: Option<u32>,
    /// Routing table (254 = main); tables above 255 are fine.
    pub table: u32,
    /// Scope.
    pub scope: Scope,
    /// Type.
    pub kind: RouteKind,
    /// Preferred source address (`RTA_PREFSRC`, what `ip route ... src X` sets).
    pub src: Option<IpAddr>,
    /// Gateway is on-link even if no connected route covers it (`onlink`).
    pub onlink: bool,
    /// Protocol (`RTPROT_*`, see [`proto`]).
    pub protocol: u8,
    /// Metric / priority.
    pub metric: Option<u32>,
}

impl Route {
    /// A unicast route to `dst` in table main, scope global, protocol `boot` (as `ip route add`).
    pub fn new(dst: IpNet) -> Route {
        Route {
            dst,
            gateway: None,
            oif: None,
            table: table::MAIN,
            scope: Scope::Universe,
            kind: RouteKind::Unicast,
            src: None,
            onlink: false,
            protocol: proto::BOOT,
            metric: None,
        }
    }

    /// `dst via gateway [dev oif]`.
    pub fn via(dst: IpNet, gateway: IpAddr, oif: Option<u32>) -> Route {
        Route { gateway: Some(gateway), oif, ..Route::new(dst) }
    }

    /// `dst dev oif scope link` (a directly connected destination).
    pub fn dev(dst: IpNet, oif: u32) -> Route {
        Route { oif: Some(oif), scope: Scope::Link, ..Route::new(dst) }
    }

    /// `blackhole dst`.
    pub fn blackhole(dst: IpNet) -> Route {
        Route { kind: RouteKind::Blackhole, ..Route::new(dst) }
    }

    /// The default route of a family via `gateway`.
    pub fn default_via(gateway: IpAddr, oif: Option<u32>) -> Route {
        Route::via(Family::of(&gateway).any(), gateway, oif)
    }

    /// Sets the table.
    pub fn table(mut self, table: u32) -> Route {
        self.table = table;
        self
    }

    /// Sets the preferred source address.
    pub fn src(mut self, src: IpAddr) -> Route {
        self.src = Some(src);
        self
    }

    /// Marks the gateway on-link.
    pub fn onlink(mut self) -> Route {
        self.onlink = true;
        self
    }

    /// Sets the metric.
    pub fn metric(mut self, metric: u32) -> Route {
        self.metric = Some(metric);
        self
    }

    /// Sets the protocol.
    pub fn protocol(mut self, protocol: u8) -> Route {
        self.protocol = protocol;
        self
    }

    /// Sets the scope.
    pub fn scope(mut self, scope: Scope) -> Route {
        self.scope = scope;
        self
    }

    /// The address family.
    pub fn family(&self) -> Family {
        Family::of_net(&self.dst)
    }

    /// True for `0.0.0.0/0` and `::/0`.
    pub fn is_default(&self) -> bool {
        self.dst.prefix_len() == 0
    }
}

impl std::fmt::Display for Route {
    /// Roughly `ip route` syntax, with `dev #index`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            RouteKind::Unicast => {}
            k => write!(f, "{} ", format!("{k:?}").to_lowercase())?,
        }
        if self.is_default() {
            write!(f, "default")?;
        } else {
            write!(f, "{}", self.dst)?;
        }
        if let Some(gw) = self.gateway {
            write!(f, " via {gw}")?;
        }
        if let Some(oif) = self.oif {
            write!(f, " dev #{oif}")?;
        }
        if self.table != table::MAIN {
            write!(f, " table {}", self.table)?;
        }
        if self.scope != Scope::Universe {
            write!(f, " scope {:?}", self.scope)?;
        }
        if let Some(src) = self.src {
            write!(f, " src {src}")?;
        }
        if self.onlink {
            write!(f, " onlink")?;
        }
        if let Some(m) = self.metric {
            write!(f, " metric {m}")?;
        }
        Ok(())
    }
}

fn route_addr(ip: IpAddr) -> RouteAddress {
    match ip {
        IpAddr::V4(a) => RouteAddress::Inet(a),
        IpAddr::V6(a) => RouteAddress::Inet6(a),
    }
}

fn from_route_addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

fn check(r: &Route, op: &str) -> Result<()> {
    let fam = r.family();
    for ip in r.gateway.iter().chain(r.src.iter()) {
        if Family::of(ip) != fam {
            return Err(Error::invalid(op, format!("{ip} is not the same family as {}", r.dst)));
        }
    }
    if r.dst != r.dst.trunc() {
        return Err(Error::invalid(op, format!("{} has host bits set (use {})", r.dst, r.dst.trunc())));
    }
    Ok(())
}

fn set_table(header: &mut RouteHeader, attrs: &mut Vec<RouteAttribute>, table: u32) {
    // As iproute2: small ids go in the header; RTA_TABLE carries the full id
    // and the kernel prefers it, which is what makes tables > 255 work.
    header.table = if table < 256 { table as u8 } else { RouteHeader::RT_TABLE_UNSPEC };
    attrs.push(RouteAttribute::Table(table));
}

fn to_msg(r: &Route) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = r.family().to_nl();
    msg.header.destination_prefix_length = r.dst.prefix_len();
    msg.header.scope = RouteScope::from(u8::from(r.scope));
    msg.header.kind = r.kind.to_nl();
    msg.header.protocol = RouteProtocol::from(r.protocol);
    if r.onlink {
        msg.header.flags = RouteFlags::Onlink;
    }
    // The default route is expressed by prefix length 0 and no RTA_DST.
    if r.dst.prefix_len() > 0 {
        msg.attributes.push(RouteAttribute::Destination(route_addr(r.dst.addr())));
    }
    set_table(&mut msg.header, &mut msg.attributes, r.table);
    if let Some(gw) = r.gateway {
        msg.attributes.push(RouteAttribute::Gateway(route_addr(gw)));
    }
    if let Some(oif) = r.oif {
        msg.attributes.push(RouteAttribute::Oif(oif));
    }
    if let Some(src) = r.src {
        msg.attributes.push(RouteAttribute::PrefSource(route_addr(src)));
    }
    if let Some(m) = r.metric {
        msg.attributes.push(RouteAttribute::Priority(m));
    }
    msg
}

/// Adds a route; fails with `EEXIST` if an equal route exists.
pub fn add(h: &Handle, r: &Route) -> Result<()> {
    let op = format!("add route {r}");
    check(r, &op)?;
    h.request(RouteNetlinkMessage::NewRoute(to_msg(r)), NLM_F_CREATE | NLM_F_EXCL, || op.clone()).map(|_| ())
}

/// Adds a route or replaces the one with the same destination/table/metric.
pub fn replace(h: &Handle, r: &Route) -> Result<()> {
    let op = format!("replace route {r}");
    check(r, &op)?;
    h.request(RouteNetlinkMessage::NewRoute(to_msg(r)), NLM_F_CREATE | NLM_F_REPLACE, || op.clone()).map(|_| ())
}

/// Deletes a route matching every field of `r` (protocol 0 matches any protocol).
///
/// Fails with `ESRCH` if none matches (see [`crate::Error::is_not_found`]).
pub fn del(h: &Handle, r: &Route) -> Result<()> {
    let op = format!("delete route {r}");
    h.request(RouteNetlinkMessage::DelRoute(to_msg(r)), 0, || op.clone()).map(|_| ())
}

/// Deletes the first route for `dst` in `table`, whatever its next hop or type.
pub fn del_dst(h: &Handle, dst: IpNet, table: u32) -> Result<()> {
    let mut msg = RouteMessage::default();
    msg.header.address_family = Family::of_net(&dst).to_nl();
    msg.header.destination_prefix_length = dst.prefix_len();
    // Wildcards: scope nowhere, type/protocol unspec match any route for dst.
    msg.header.scope = RouteScope::NoWhere;
    msg.header.kind = RouteType::Unspec;
    msg.header.protocol = RouteProtocol::Unspec;
    if dst.prefix_len() > 0 {
        msg.attributes.push(RouteAttribute::Destination(route_addr(dst.addr())));
    }
    set_table(&mut msg.header, &mut msg.attributes, table);
    h.request(RouteNetlinkMessage::DelRoute(msg), 0, || format!("delete route {dst} table {table}")).map(|_| ())
}

fn parse_route(m: RouteMessage) -> Result<Option<Route>> {
    if m.header.flags.contains(RouteFlags::Cloned) {
        return Ok(None); // route cache entries, not configuration
    }
    parse_any_route(m)
}

fn parse_any_route(m: RouteMessage) -> Result<Option<Route>> {
    let Some(fam) = Family::from_nl(m.header.address_family) else { return Ok(None) };
    let mut dst_ip = None;
    let mut r = Route::new(fam.any());
    r.table = u32::from(m.header.table);
    r.scope = Scope::from(u8::from(m.header.scope));
    r.kind = RouteKind::from_nl(m.header.kind);
    r.protocol = u8::from(m.header.protocol);
    r.onlink = m.header.flags.contains(RouteFlags::Onlink);
    for attr in &m.attributes {
        match attr {
            RouteAttribute::Destination(a) => dst_ip = from_route_addr(a),
            RouteAttribute::Gateway(a) => r.gateway = from_route_addr(a),
            RouteAttribute::Oif(i) => r.oif = Some(*i),
            RouteAttribute::Table(t) => r.table = *t,
            RouteAttribute::PrefSource(a) => r.src = from_route_addr(a),
            RouteAttribute::Priority(p) => r.metric = Some(*p),
            _ => {}
        }
    }
    if let Some(ip) = dst_ip {
        r.dst = ipnet(ip, m.header.destination_prefix_length, "list routes")?;
    }
    Ok(Some(r))
}

/// Lists routes of one family, in one table or (with `None`) in all tables.
pub fn list(h: &Handle, family: Family, table: Option<u32>) -> Result<Vec<Route>> {
    let mut req = RouteMessage::default();
    req.header.address_family = family.to_nl();
    let msgs = h.dump(RouteNetlinkMessage::GetRoute(req), || format!("list {family:?} routes"))?;
    let mut out = Vec::new();
    for m in msgs {
        let RouteNetlinkMessage::NewRoute(m) = m else { continue };
        if let Some(r) = parse_route(m)? {
            if r.family() == family && table.is_none_or(|t| t == r.table) {
                out.push(r);
            }
        }
    }
    Ok(out)
}

/// A route lookup, as `ip route get DST [from SRC] [iif DEV] [oif DEV] [mark M] [fibmatch]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteQuery {
    /// Destination address.
    pub dst: IpAddr,
    /// Source address (`from`).
    pub src: Option<IpAddr>,
    /// Incoming interface index: simulates a forwarded packet (input route lookup).
    pub iif: Option<u32>,
    /// Outgoing interface index.
    pub oif: Option<u32>,
    /// Firewall mark.
    pub mark: Option<u32>,
    /// Return the matching FIB entry (its prefix) instead of the resolved per-destination result.
    pub fib_match: bool,
}

impl RouteQuery {
    /// A lookup of `dst` with nothing else set.
    pub fn to(dst: IpAddr) -> RouteQuery {
        RouteQuery { dst, src: None, iif: None, oif: None, mark: None, fib_match: false }
    }
}

/// Asks the kernel which route it would use (`RTM_GETROUTE`), including
/// policy rules. The result's `table` is the table the route was found in.
///
/// Unroutable destinations come back as errors (`ENETUNREACH`,
/// `EHOSTUNREACH`, `EINVAL` for blackholes, ...), see [`crate::Error::errno`].
pub fn get(h: &Handle, q: &RouteQuery) -> Result<Route> {
    let fam = Family::of(&q.dst);
    let op = format!("get route to {}", q.dst);
    let full = match fam {
        Family::V4 => 32,
        Family::V6 => 128,
    };
    let mut msg = RouteMessage::default();
    msg.header.address_family = fam.to_nl();
    msg.header.destination_prefix_length = full;
    // Report the table the route came from; optionally the FIB entry itself.
    msg.header.flags = RouteFlags::LookupTable;
    if q.fib_match {
        msg.header.flags |= RouteFlags::FibMatch;
    }
    msg.attributes.push(RouteAttribute::Destination(route_addr(q.dst)));
    if let Some(src) = q.src {
        if Family::of(&src) != fam {
            return Err(Error::invalid(op, format!("source {src} is not the same family")));
        }
        msg.header.source_prefix_length = full;
        msg.attributes.push(RouteAttribute::Source(route_addr(src)));
    }
    if let Some(i) = q.iif {
        msg.attributes.push(RouteAttribute::Iif(i));
    }
    if let Some(o) = q.oif {
        msg.attributes.push(RouteAttribute::Oif(o));
    }
    if let Some(m) = q.mark {
        msg.attributes.push(RouteAttribute::Mark(m));
    }
    let msgs = h.request(RouteNetlinkMessage::GetRoute(msg), 0, || op.clone())?;
    for m in msgs {
        if let RouteNetlinkMessage::NewRoute(m) = m {
            if let Some(r) = parse_any_route(m)? {
                return Ok(r);
            }
        }
    }
    Err(Error::NotFound { what: format!("route to {} (empty kernel reply)", q.dst) })
}
