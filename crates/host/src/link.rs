//! Network interfaces: look up, create (veth, macvlan, bridge, vxlan), change, delete.

use std::net::IpAddr;
use std::os::fd::AsRawFd;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoMacVlan, InfoVeth, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo as NlLinkInfo,
    LinkMessage, MacVlanMode as NlMacVlanMode,
};
use netlink_packet_route::RouteNetlinkMessage;
use serde::{Deserialize, Serialize};

use crate::netns::Netns;
use crate::types::Mac;
use crate::{Error, Handle, Result};

/// What the kernel reports about one interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkInfo {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// `IFLA_INFO_KIND` (`veth`, `macvlan`, `bridge`, ...); `None` for physical devices and `lo`.
    pub kind: Option<String>,
    /// Hardware address, if it is a 6-byte Ethernet address.
    pub mac: Option<Mac>,
    /// MTU.
    pub mtu: u32,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// Carrier present (`IFF_LOWER_UP`).
    pub lower_up: bool,
    /// Index of the master (bridge/bond), if enslaved.
    pub master: Option<u32>,
    /// `IFLA_LINK`: the veth peer's or macvlan parent's index, which lives in the
    /// namespace `link_netnsid` refers to when that is set.
    pub link: Option<u32>,
    /// Namespace id (as seen from this namespace) of the `link` device's namespace.
    pub link_netnsid: Option<i32>,
    /// Transmit queue length.
    pub txqlen: u32,
    /// Macvlan mode, for macvlan links.
    pub macvlan_mode: Option<MacvlanMode>,
    /// Raw `IFF_*` flags.
    pub flags: u32,
}

/// Macvlan modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MacvlanMode {
    /// No traffic between macvlans of one parent.
    Private,
    /// Traffic between macvlans goes out to the switch and back.
    Vepa,
    /// Macvlans of one parent talk directly (the CNI default).
    #[default]
    Bridge,
    /// One macvlan takes over the parent.
    Passthru,
    /// Source-MAC based.
    Source,
}

impl MacvlanMode {
    fn to_nl(self) -> NlMacVlanMode {
        match self {
            MacvlanMode::Private => NlMacVlanMode::Private,
            MacvlanMode::Vepa => NlMacVlanMode::Vepa,
            MacvlanMode::Bridge => NlMacVlanMode::Bridge,
            MacvlanMode::Passthru => NlMacVlanMode::Passthrough,
            MacvlanMode::Source => NlMacVlanMode::Source,
        }
    }

    fn from_nl(m: &NlMacVlanMode) -> Option<MacvlanMode> {
        Some(match m {
            NlMacVlanMode::Private => MacvlanMode::Private,
            NlMacVlanMode::Vepa => MacvlanMode::Vepa,
            NlMacVlanMode::Bridge => MacvlanMode::Bridge,
            NlMacVlanMode::Passthrough => MacvlanMode::Passthru,
            NlMacVlanMode::Source => MacvlanMode::Source,
            _ => return None,
        })
    }
}

impl std::str::FromStr for MacvlanMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "private" => MacvlanMode::Private,
            "vepa" => MacvlanMode::Vepa,
            "bridge" => MacvlanMode::Bridge,
            "passthru" => MacvlanMode::Passthru,
            "source" => MacvlanMode::Source,
            _ => return Err(Error::invalid("parse macvlan mode", format!("unknown mode {s:?}"))),
        })
    }
}

/// Options for [`create_veth`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VethOptions {
    /// MTU of both ends.
    pub mtu: Option<u32>,
    /// MAC of the local end.
    pub mac: Option<Mac>,
    /// MAC of the peer end.
    pub peer_mac: Option<Mac>,
    /// Bring both ends up: the local end within the create request, the peer
    /// right after (through a socket in its namespace when it lives elsewhere).
    pub up: bool,
}

/// Options for [`create_vxlan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanOptions {
    /// VXLAN network identifier.
    pub vni: u32,
    /// Local (source) address.
    pub local: Option<IpAddr>,
    /// Underlay device index.
    pub dev: Option<u32>,
    /// UDP destination port (4789 is the IANA port; the kernel's default is 8472).
    pub port: u16,
    /// Learn remote MACs from traffic (off when the FDB is managed statically).
    pub learning: bool,
    /// MTU.
    pub mtu: Option<u32>,
    /// MAC address.
    pub mac: Option<Mac>,
}

impl Default for VxlanOptions {
    fn default() -> Self {
        VxlanOptions { vni: 1, local: None, dev: None, port: 4789, learning: false, mtu: None, mac: None }
    }
}

/// Checks an interface name the way the kernel's `dev_valid_name` does.
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name.bytes().any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace());
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "interface name",
            format!("{name:?} is not a valid interface name (1-15 chars, no '/', ':' or spaces)"),
        ))
    }
}

fn parse_link(msg: LinkMessage) -> LinkInfo {
    let mut info = LinkInfo {
        index: msg.header.index,
        name: String::new(),
        kind: None,
        mac: None,
        mtu: 0,
        up: msg.header.flags.contains(LinkFlags::Up),
        lower_up: msg.header.flags.contains(LinkFlags::LowerUp),
        master: None,
        link: None,
        link_netnsid: None,
        txqlen: 0,
        macvlan_mode: None,
        flags: msg.header.flags.bits(),
    };
    for attr in msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => info.name = n,
            LinkAttribute::Address(a) => info.mac = Mac::from_slice(&a),
            LinkAttribute::Mtu(m) => info.mtu = m,
            LinkAttribute::Controller(m) if m != 0 => info.master = Some(m),
            LinkAttribute::Link(l) if l != 0 => info.link = Some(l),
            LinkAttribute::LinkNetNsId(id) => info.link_netnsid = Some(id),
            LinkAttribute::TxQueueLen(q) => info.txqlen = q,
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    match i {
                        NlLinkInfo::Kind(k) => info.kind = Some(k.to_string()),
                        NlLinkInfo::Data(InfoData::MacVlan(data)) => {
                            for d in data {
                                if let InfoMacVlan::Mode(m) = d {
                                    info.macvlan_mode = MacvlanMode::from_nl(&m);
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    info
}

fn first_link(msgs: Vec<RouteNetlinkMessage>) -> Option<LinkInfo> {
    msgs.into_iter().find_map(|m| match m {
        RouteNetlinkMessage::NewLink(l) => Some(parse_link(l)),
        _ => None,
    })
}

fn not_found_to_none(r: Result<Vec<RouteNetlinkMessage>>) -> Result<Option<LinkInfo>> {
    match r {
        Ok(msgs) => Ok(first_link(msgs)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// The link called `name`, if any.
pub fn get_by_name(h: &Handle, name: &str) -> Result<Option<LinkInfo>> {
    validate_name(name)?;
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_string()));
    not_found_to_none(h.request(RouteNetlinkMessage::GetLink(msg), 0, || format!("get link {name}")))
}

/// The link with index `index`, if any.
pub fn get_by_index(h: &Handle, index: u32) -> Result<Option<LinkInfo>> {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    not_found_to_none(h.request(RouteNetlinkMessage::GetLink(msg), 0, || format!("get link #{index}")))
}

/// Like [`get_by_name`] but a missing link is an [`Error::NotFound`].
pub fn require(h: &Handle, name: &str) -> Result<LinkInfo> {
    get_by_name(h, name)?.ok_or_else(|| Error::NotFound { what: format!("link {name}") })
}

/// The index of link `name`, or [`Error::NotFound`].
pub fn index_of(h: &Handle, name: &str) -> Result<u32> {
    Ok(require(h, name)?.index)
}

/// All links, ordered by index.
pub fn list(h: &Handle) -> Result<Vec<LinkInfo>> {
    let msgs = h.dump(RouteNetlinkMessage::GetLink(LinkMessage::default()), || "list links".to_string())?;
    let mut links: Vec<LinkInfo> = msgs
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(parse_link(l)),
            _ => None,
        })
        .collect();
    links.sort_by_key(|l| l.index);
    Ok(links)
}

fn new_link(h: &Handle, msg: LinkMessage, op: impl Fn() -> String) -> Result<()> {
    h.request(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL, op).map(|_| ())
}

fn set_link(h: &Handle, msg: LinkMessage, op: impl Fn() -> String) -> Result<()> {
    // RTM_NEWLINK without NLM_F_CREATE on an existing index changes it, as `ip link set` does.
    h.request(RouteNetlinkMessage::NewLink(msg), 0, op).map(|_| ())
}

fn lookup_created(h: &Handle, name: &str) -> Result<u32> {
    Ok(get_by_name(h, name)?
        .ok_or_else(|| Error::NotFound { what: format!("link {name} right after creating it") })?
        .index)
}

/// Creates a veth pair: `name` in the handle's namespace, `peer_name` in
/// `peer_ns` (directly, via `IFLA_NET_NS_FD`) or next to it. Returns the index of `name`.
pub fn create_veth(
    h: &Handle,
    name: &str,
    peer_name: &str,
    peer_ns: Option<&Netns>,
    opts: &VethOptions,
) -> Result<u32> {
    validate_name(name)?;
    validate_name(peer_name)?;
    let mut peer = LinkMessage::default();
    peer.attributes.push(LinkAttribute::IfName(peer_name.to_string()));
    if let Some(mtu) = opts.mtu {
        peer.attributes.push(LinkAttribute::Mtu(mtu));
    }
    if let Some(mac) = opts.peer_mac {
        peer.attributes.push(LinkAttribute::Address(mac.0.to_vec()));
    }
    if let Some(ns) = peer_ns {
        peer.attributes.push(LinkAttribute::NetNsFd(ns.as_raw_fd()));
    }
    let mut msg = LinkMessage::default();
    if opts.up {
        // Only the first end can be brought up in the create request: the
        // kernel configures the peer before tying the pair together, and
        // opening an untied veth fails with ENOTCONN.
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
    }
    msg.attributes.push(LinkAttribute::IfName(name.to_string()));
    if let Some(mtu) = opts.mtu {
        msg.attributes.push(LinkAttribute::Mtu(mtu));
    }
    if let Some(mac) = opts.mac {
        msg.attributes.push(LinkAttribute::Address(mac.0.to_vec()));
    }
    msg.attributes.push(LinkAttribute::LinkInfo(vec![
        NlLinkInfo::Kind(InfoKind::Veth),
        NlLinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
    ]));
    let where_ = peer_ns.map(|n| format!(" in {}", n.describe())).unwrap_or_default();
    new_link(h, msg, || format!("create veth {name} (peer {peer_name}{where_})"))?;
    let created = get_by_name(h, name)?
        .ok_or_else(|| Error::NotFound { what: format!("link {name} right after creating it") })?;
    if opts.up {
        // Setting the peer up needs a socket in the peer's namespace: an
        // RTM_NEWLINK carrying IFLA_TARGET_NETNSID would *move* our own
        // device with that index there instead.
        match peer_ns {
            None => {
                let peer_index =
                    created.link.ok_or_else(|| Error::NotFound { what: format!("peer of veth {name}") })?;
                set_up(h, peer_index)?;
            }
            Some(ns) => {
                let hp = Handle::in_netns(ns)?;
                let peer = require(&hp, peer_name)?;
                set_up(&hp, peer.index)?;
            }
        }
    }
    Ok(created.index)
}

/// Creates a macvlan on parent `master` (an index in the handle's namespace).
///
/// With `ns`, the link is created directly in that namespace and `None` is
/// returned (its index there is only meaningful to a handle in `ns`); otherwise
/// the new index is returned.
pub fn create_macvlan(
    h: &Handle,
    name: &str,
    master: u32,
    mode: MacvlanMode,
    ns: Option<&Netns>,
) -> Result<Option<u32>> {
    create_macvlan_with(h, name, master, mode, ns, None, None)
}

/// [`create_macvlan`] with an MTU and/or MAC.
pub fn create_macvlan_with(
    h: &Handle,
    name: &str,
    master: u32,
    mode: MacvlanMode,
    ns: Option<&Netns>,
    mtu: Option<u32>,
    mac: Option<Mac>,
) -> Result<Option<u32>> {
    validate_name(name)?;
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_string()));
    msg.attributes.push(LinkAttribute::Link(master));
    if let Some(mtu) = mtu {
        msg.attributes.push(LinkAttribute::Mtu(mtu));
    }
    if let Some(mac) = mac {
        msg.attributes.push(LinkAttribute::Address(mac.0.to_vec()));
    }
    if let Some(ns) = ns {
        msg.attributes.push(LinkAttribute::NetNsFd(ns.as_raw_fd()));
    }
    msg.attributes.push(LinkAttribute::LinkInfo(vec![
        NlLinkInfo::Kind(InfoKind::MacVlan),
        NlLinkInfo::Data(InfoData::MacVlan(vec![InfoMacVlan::Mode(mode.to_nl())])),
    ]));
    let where_ = ns.map(|n| format!(" in {}", n.describe())).unwrap_or_default();
    new_link(h, msg, || format!("create macvlan {name} on #{master}{where_}"))?;
    match ns {
        Some(_) => Ok(None),
        None => lookup_created(h, name).map(Some),
    }
}

/// Creates a bridge; returns its index.
pub fn create_bridge(h: &Handle, name: &str) -> Result<u32> {
    validate_name(name)?;
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_string()));
    msg.attributes.push(LinkAttribute::LinkInfo(vec![NlLinkInfo::Kind(InfoKind::Bridge)]));
    new_link(h, msg, || format!("create bridge {name}"))?;
    lookup_created(h, name)
}

/// Creates a VXLAN device; returns its index.
pub fn create_vxlan(h: &Handle, name: &str, opts: &VxlanOptions) -> Result<u32> {
    validate_name(name)?;
    let mut data = vec![InfoVxlan::Id(opts.vni), InfoVxlan::Port(opts.port), InfoVxlan::Learning(opts.learning)];
    match opts.local {
        Some(IpAddr::V4(a)) => data.push(InfoVxlan::Local(a)),
        Some(IpAddr::V6(a)) => data.push(InfoVxlan::Local6(a)),
        None => {}
    }
    if let Some(dev) = opts.dev {
        data.push(InfoVxlan::Link(dev));
    }
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_string()));
    if let Some(mtu) = opts.mtu {
        msg.attributes.push(LinkAttribute::Mtu(mtu));
    }
    if let Some(mac) = opts.mac {
        msg.attributes.push(LinkAttribute::Address(mac.0.to_vec()));
    }
    msg.attributes.push(LinkAttribute::LinkInfo(vec![
        NlLinkInfo::Kind(InfoKind::Vxlan),
        NlLinkInfo::Data(InfoData::Vxlan(data)),
    ]));
    new_link(h, msg, || format!("create vxlan {name} vni {}", opts.vni))?;
    lookup_created(h, name)
}

fn set_flags(h: &Handle, index: u32, up: bool) -> Result<()> {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg.header.flags = if up { LinkFlags::Up } else { LinkFlags::empty() };
    msg.header.change_mask = LinkFlags::Up;
    set_link(h, msg, || format!("set link #{index} {}", if up { "up" } else { "down" }))
}

/// Sets a link administratively up.
pub fn set_up(h: &Handle, index: u32) -> Result<()> {
    set_flags(h, index, true)
}

/// Sets a link administratively down.
pub fn set_down(h: &Handle, index: u32) -> Result<()> {
    set_flags(h, index, false)
}

fn set_attr(h: &Handle, index: u32, attr: LinkAttribute, what: String) -> Result<()> {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg.attributes.push(attr);
    set_link(h, msg, || format!("set link #{index} {what}"))
}

/// Sets the MTU.
pub fn set_mtu(h: &Handle, index: u32, mtu: u32) -> Result<()> {
    set_attr(h, index, LinkAttribute::Mtu(mtu), format!("mtu {mtu}"))
}

/// Sets the MAC address.
pub fn set_mac(h: &Handle, index: u32, mac: Mac) -> Result<()> {
    set_attr(h, index, LinkAttribute::Address(mac.0.to_vec()), format!("address {mac}"))
}

/// Renames a link (it must be down unless the kernel allows live renames for it).
pub fn set_name(h: &Handle, index: u32, name: &str) -> Result<()> {
    validate_name(name)?;
    set_attr(h, index, LinkAttribute::IfName(name.to_string()), format!("name {name}"))
}

/// Sets the transmit queue length.
pub fn set_txqlen(h: &Handle, index: u32, txqlen: u32) -> Result<()> {
    set_attr(h, index, LinkAttribute::TxQueueLen(txqlen), format!("txqueuelen {txqlen}"))
}

/// Puts a link in device group `group` (0 is the default group).
pub fn set_group(h: &Handle, index: u32, group: u32) -> Result<()> {
    set_attr(h, index, LinkAttribute::Group(group), format!("group {group}"))
}

/// Enslaves a link to `master` (bridge/bond), or releases it with `None`.
pub fn set_master(h: &Handle, index: u32, master: Option<u32>) -> Result<()> {
    let what = match master {
        Some(m) => format!("master #{m}"),
        None => "nomaster".to_string(),
    };
    set_attr(h, index, LinkAttribute::Controller(master.unwrap_or(0)), what)
}

/// Moves a link into another namespace (it keeps its name).
pub fn move_to_netns(h: &Handle, index: u32, ns: &Netns) -> Result<()> {
    set_attr(h, index, LinkAttribute::NetNsFd(ns.as_raw_fd()), format!("netns {}", ns.describe()))
}

/// Moves a link into another namespace and renames it there in one step.
pub fn move_to_netns_as(h: &Handle, index: u32, ns: &Netns, new_name: &str) -> Result<()> {
    validate_name(new_name)?;
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg.attributes.push(LinkAttribute::NetNsFd(ns.as_raw_fd()));
    msg.attributes.push(LinkAttribute::IfName(new_name.to_string()));
    set_link(h, msg, || format!("set link #{index} netns {} name {new_name}", ns.describe()))
}

/// Deletes a link (deleting one veth end deletes the pair).
pub fn delete(h: &Handle, index: u32) -> Result<()> {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    h.request(RouteNetlinkMessage::DelLink(msg), 0, || format!("delete link #{index}")).map(|_| ())
}

/// Deletes every link of device group `group` in one kernel batch.
///
/// Why: each RTM_DELLINK waits for the kernel to let go of the device (RCU grace periods and a
/// sleep in `netdev_run_todo`, about 20 ms on the benchmark VM), while one group deletion
/// unregisters all its devices together and waits once. The kernel refuses the whole group
/// (EOPNOTSUPP) when any member cannot be deleted (a physical NIC), so nothing is half done.
pub fn delete_group(h: &Handle, group: u32) -> Result<()> {
    if group == 0 {
        return Err(Error::invalid("delete link group", "refusing group 0, the default group of every link"));
    }
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::Group(group));
    h.request(RouteNetlinkMessage::DelLink(msg), 0, || format!("delete link group {group}")).map(|_| ())
}

/// Deletes the link called `name`; returns `false` if there was none (idempotent DEL).
pub fn delete_by_name(h: &Handle, name: &str) -> Result<bool> {
    match get_by_name(h, name)? {
        None => Ok(false),
        Some(l) => match delete(h, l.index) {
            Ok(()) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        },
    }
}
