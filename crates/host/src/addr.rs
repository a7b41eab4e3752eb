//! IP addresses on interfaces (`ip address`).

use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use serde::{Deserialize, Serialize};

use crate::types::{ipnet, Family, Scope};
use crate::{Handle, Result};

/// `IFA_F_NODAD`: skip IPv6 duplicate address detection (address usable at once).
pub const FLAG_NODAD: u32 = 0x02;
/// `IFA_F_NOPREFIXROUTE`: don't add the connected-prefix route.
pub const FLAG_NOPREFIXROUTE: u32 = 0x200;
/// `IFA_F_TENTATIVE`: IPv6 DAD still running.
pub const FLAG_TENTATIVE: u32 = 0x40;

/// An address on an interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address {
    /// Interface index.
    pub index: u32,
    /// Address with prefix length, e.g. `10.0.0.2/24`.
    pub net: IpNet,
    /// Scope (global unless set).
    #[serde(default)]
    pub scope: Scope,
    /// `IFA_F_*` flags (on add: e.g. [`FLAG_NODAD`]; on list: what the kernel reports).
    #[serde(default)]
    pub flags: u32,
}

impl Address {
    /// A global-scope address with no flags.
    pub fn new(index: u32, net: IpNet) -> Address {
        Address { index, net, scope: Scope::Universe, flags: 0 }
    }

    /// Adds `flags` (builder style).
    pub fn with_flags(mut self, flags: u32) -> Address {
        self.flags |= flags;
        self
    }

    /// Sets the scope (builder style).
    pub fn with_scope(mut self, scope: Scope) -> Address {
        self.scope = scope;
        self
    }
}

fn to_msg(a: &Address) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = Family::of_net(&a.net).to_nl();
    msg.header.prefix_len = a.net.prefix_len();
    msg.header.index = a.index;
    msg.header.scope = u8::from(a.scope).into();
    let ip = a.net.addr();
    // Like iproute2: IFA_LOCAL is the interface's address; IFA_ADDRESS is the
    // same unless point-to-point.
    if ip.is_ipv4() {
        msg.attributes.push(AddressAttribute::Local(ip));
    }
    msg.attributes.push(AddressAttribute::Address(ip));
    if a.flags != 0 {
        msg.attributes.push(AddressAttribute::Flags(AddressFlags::from_bits_retain(a.flags)));
    }
    msg
}

/// Adds an address; fails with `EEXIST` if it is already there.
pub fn add(h: &Handle, a: &Address) -> Result<()> {
    h.request(RouteNetlinkMessage::NewAddress(to_msg(a)), NLM_F_CREATE | NLM_F_EXCL, || {
        format!("add address {} dev #{}", a.net, a.index)
    })
    .map(|_| ())
}

/// Adds an address or updates it in place if present.
pub fn replace(h: &Handle, a: &Address) -> Result<()> {
    h.request(RouteNetlinkMessage::NewAddress(to_msg(a)), NLM_F_CREATE | NLM_F_REPLACE, || {
        format!("replace address {} dev #{}", a.net, a.index)
    })
    .map(|_| ())
}

/// Removes an address (`EADDRNOTAVAIL` if absent; see [`crate::Error::is_not_found`]).
pub fn del(h: &Handle, a: &Address) -> Result<()> {
    let mut msg = to_msg(a);
    // Flags/scope don't identify an address; leave them out of the match.
    msg.attributes.retain(|x| !matches!(x, AddressAttribute::Flags(_)));
    msg.header.scope = 0u8.into();
    h.request(RouteNetlinkMessage::DelAddress(msg), 0, || format!("delete address {} dev #{}", a.net, a.index))
        .map(|_| ())
}

/// Lists addresses, optionally only one family and/or one interface.
pub fn list(h: &Handle, family: Option<Family>, index: Option<u32>) -> Result<Vec<Address>> {
    let mut req = AddressMessage::default();
    req.header.family = family.map(Family::to_nl).unwrap_or(AddressFamily::Unspec);
    let msgs = h.dump(RouteNetlinkMessage::GetAddress(req), || "list addresses".to_string())?;
    let mut out = Vec::new();
    for m in msgs {
        let RouteNetlinkMessage::NewAddress(m) = m else { continue };
        let Some(fam) = Family::from_nl(m.header.family) else { continue };
        if family.is_some_and(|f| f != fam) || index.is_some_and(|i| i != m.header.index) {
            continue;
        }
        let mut local: Option<IpAddr> = None;
        let mut address: Option<IpAddr> = None;
        let mut flags = m.header.flags.bits() as u32;
        for attr in &m.attributes {
            match attr {
                AddressAttribute::Local(ip) => local = Some(*ip),
                AddressAttribute::Address(ip) => address = Some(*ip),
                AddressAttribute::Flags(f) => flags = f.bits(),
                _ => {}
            }
        }
        // IFA_LOCAL is the interface's own address when present (v4), else IFA_ADDRESS.
        let Some(ip) = local.or(address) else { continue };
        out.push(Address {
            index: m.header.index,
            net: ipnet(ip, m.header.prefix_len, "list addresses")?,
            scope: Scope::from(u8::from(m.header.scope)),
            flags,
        });
    }
    Ok(out)
}
