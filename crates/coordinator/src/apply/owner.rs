//! The host veth's ownership mark: IFLA_IFALIAS holds the container ID ([`crate::plan::owner_mark`]).
//!
//! knit-host's link module can neither read nor write an alias yet (the plugins' ownership mark
//! is being added there); until it can, this is the coordinator's own small version, through
//! knit-host's `Handle`. Fold it onto knit-host's when that lands.

use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;

use knit_host::Handle;

/// A link found by name, with its mark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marked {
    pub index: u32,
    /// IFLA_IFALIAS, when set.
    pub mark: Option<String>,
}

/// The link called `name` and its mark; `None` when there is none.
pub fn find(h: &Handle, name: &str) -> knit_host::Result<Option<Marked>> {
    knit_host::link::validate_name(name)?;
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_string()));
    let msgs = match h.request(RouteNetlinkMessage::GetLink(msg), 0, || format!("get link {name}")) {
        Ok(m) => m,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(msgs.into_iter().find_map(|m| match m {
        RouteNetlinkMessage::NewLink(l) => {
            let mark = l.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfAlias(s) if !s.is_empty() => Some(s.clone()),
                _ => None,
            });
            Some(Marked { index: l.header.index, mark })
        }
        _ => None,
    }))
}

/// Sets link `index` up and marks it with `mark`, in one request.
pub fn set_up_marked(h: &Handle, index: u32, mark: &str) -> knit_host::Result<()> {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg.header.flags = LinkFlags::Up;
    msg.header.change_mask = LinkFlags::Up;
    msg.attributes.push(LinkAttribute::IfAlias(mark.to_string()));
    h.request(RouteNetlinkMessage::NewLink(msg), 0, || format!("set link #{index} up alias {mark}")).map(|_| ())
}
