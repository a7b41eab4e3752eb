//! Policy-routing rules (`ip rule`), as plain data.

use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::rule::{RuleAction as NlRuleAction, RuleAttribute, RuleMessage};
use netlink_packet_route::RouteNetlinkMessage;
use serde::{Deserialize, Serialize};

use crate::types::{ipnet, Family};
use crate::{Error, Handle, Result};

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleAction {
    /// Look up `table` (the usual case).
    #[default]
    ToTable,
    /// Jump to another rule (`goto`).
    Goto,
    /// Do nothing (`nop`).
    Nop,
    /// Drop silently.
    Blackhole,
    /// Drop with ICMP unreachable.
    Unreachable,
    /// Drop with ICMP prohibited.
    Prohibit,
    /// Any other action.
    Other(u8),
}

impl RuleAction {
    fn to_nl(self) -> NlRuleAction {
        match self {
            RuleAction::ToTable => NlRuleAction::ToTable,
            RuleAction::Goto => NlRuleAction::Goto,
            RuleAction::Nop => NlRuleAction::Nop,
            RuleAction::Blackhole => NlRuleAction::Blackhole,
            RuleAction::Unreachable => NlRuleAction::Unreachable,
            RuleAction::Prohibit => NlRuleAction::Prohibit,
            RuleAction::Other(v) => NlRuleAction::from(v),
        }
    }

    fn from_nl(a: NlRuleAction) -> RuleAction {
        match a {
            NlRuleAction::ToTable => RuleAction::ToTable,
            NlRuleAction::Goto => RuleAction::Goto,
            NlRuleAction::Nop => RuleAction::Nop,
            NlRuleAction::Blackhole => RuleAction::Blackhole,
            NlRuleAction::Unreachable => RuleAction::Unreachable,
            NlRuleAction::Prohibit => RuleAction::Prohibit,
            other => RuleAction::Other(u8::from(other)),
        }
    }
}

/// One policy-routing rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// Address family.
    pub family: Family,
    /// Priority (`pref`); `None` lets the kernel pick on add and matches any on delete.
    pub priority: Option<u32>,
    /// Source prefix (`from`); `None` = all.
    pub from: Option<IpNet>,
    /// Destination prefix (`to`); `None` = all.
    pub to: Option<IpNet>,
    /// Firewall mark (`fwmark`).
    pub fwmark: Option<u32>,
    /// Mask for `fwmark`.
    pub fwmask: Option<u32>,
    /// Incoming interface name (`iif`).
    pub iif: Option<String>,
    /// Outgoing interface name (`oif`).
    pub oif: Option<String>,
    /// Table to look up (for [`RuleAction::ToTable`]); 0 if none.
    pub table: u32,
    /// What to do.
    #[serde(default)]
    pub action: RuleAction,
}

impl Rule {
    /// `from all lookup table` for a family, no priority.
    pub fn new(family: Family, table: u32) -> Rule {
        Rule {
            family,
            priority: None,
            from: None,
            to: None,
            fwmark: None,
            fwmask: None,
            iif: None,
            oif: None,
            table,
            action: RuleAction::ToTable,
        }
    }

    /// `from <net> lookup table`.
    pub fn from_net(from: IpNet, table: u32) -> Rule {
        Rule { from: Some(from), ..Rule::new(Family::of_net(&from), table) }
    }

    /// Sets the priority.
    pub fn priority(mut self, p: u32) -> Rule {
        self.priority = Some(p);
        self
    }

    /// Sets `to`.
    pub fn to(mut self, to: IpNet) -> Rule {
        self.to = Some(to);
        self
    }

    /// Sets `fwmark` (and optionally its mask).
    pub fn fwmark(mut self, mark: u32, mask: Option<u32>) -> Rule {
        self.fwmark = Some(mark);
        self.fwmask = mask;
        self
    }

    /// Sets `iif`.
    pub fn iif(mut self, name: &str) -> Rule {
        self.iif = Some(name.to_string());
        self
    }

    /// Sets `oif`.
    pub fn oif(mut self, name: &str) -> Rule {
        self.oif = Some(name.to_string());
        self
    }
}

impl std::fmt::Display for Rule {
    /// Roughly `ip rule` syntax.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(p) = self.priority {
            write!(f, "{p}: ")?;
        }
        match self.from {
            Some(n) => write!(f, "from {n}")?,
            None => write!(f, "from all")?,
        }
        if let Some(n) = self.to {
            write!(f, " to {n}")?;
        }
        if let Some(m) = self.fwmark {
            write!(f, " fwmark {m:#x}")?;
            if let Some(k) = self.fwmask {
                write!(f, "/{k:#x}")?;
            }
        }
        if let Some(i) = &self.iif {
            write!(f, " iif {i}")?;
        }
        if let Some(o) = &self.oif {
            write!(f, " oif {o}")?;
        }
        match self.action {
            RuleAction::ToTable => write!(f, " lookup {}", self.table),
            a => write!(f, " {}", format!("{a:?}").to_lowercase()),
        }
    }
}

fn check(r: &Rule, op: &str) -> Result<()> {
    for n in r.from.iter().chain(r.to.iter()) {
        if Family::of_net(n) != r.family {
            return Err(Error::invalid(op, format!("{n} is not {:?}", r.family)));
        }
    }
    Ok(())
}

fn to_msg(r: &Rule) -> RuleMessage {
    let mut msg = RuleMessage::default();
    msg.header.family = r.family.to_nl();
    msg.header.action = r.action.to_nl();
    // Full table id in FRA_TABLE (kernel prefers it); header only holds ids < 256.
    msg.header.table = if r.table < 256 { r.table as u8 } else { 0 };
    if r.table != 0 {
        msg.attributes.push(RuleAttribute::Table(r.table));
    }
    if let Some(p) = r.priority {
        msg.attributes.push(RuleAttribute::Priority(p));
    }
    if let Some(n) = r.from {
        msg.header.src_len = n.prefix_len();
        msg.attributes.push(RuleAttribute::Source(n.addr()));
    }
    if let Some(n) = r.to {
        msg.header.dst_len = n.prefix_len();
        msg.attributes.push(RuleAttribute::Destination(n.addr()));
    }
    if let Some(m) = r.fwmark {
        msg.attributes.push(RuleAttribute::FwMark(m));
    }
    if let Some(m) = r.fwmask {
        msg.attributes.push(RuleAttribute::FwMask(m));
    }
    if let Some(i) = &r.iif {
        msg.attributes.push(RuleAttribute::Iifname(i.clone()));
    }
    if let Some(o) = &r.oif {
        msg.attributes.push(RuleAttribute::Oifname(o.clone()));
    }
    msg
}

/// Adds a rule; fails with `EEXIST` if an identical rule exists.
pub fn add(h: &Handle, r: &Rule) -> Result<()> {
    let op = format!("add rule {r}");
    check(r, &op)?;
    h.request(RouteNetlinkMessage::NewRule(to_msg(r)), NLM_F_CREATE | NLM_F_EXCL, || op.clone()).map(|_| ())
}

/// Deletes the first rule matching the fields set in `r` (`ENOENT` if none).
pub fn del(h: &Handle, r: &Rule) -> Result<()> {
    let op = format!("delete rule {r}");
    check(r, &op)?;
    h.request(RouteNetlinkMessage::DelRule(to_msg(r)), 0, || op.clone()).map(|_| ())
}

fn parse_rule(m: RuleMessage) -> Result<Option<Rule>> {
    let Some(family) = Family::from_nl(m.header.family) else { return Ok(None) };
    let mut r = Rule::new(family, u32::from(m.header.table));
    r.action = RuleAction::from_nl(m.header.action);
    let mut src: Option<IpAddr> = None;
    let mut dst: Option<IpAddr> = None;
    for attr in m.attributes {
        match attr {
            RuleAttribute::Priority(p) => r.priority = Some(p),
            RuleAttribute::Table(t) => r.table = t,
            RuleAttribute::Source(a) => src = Some(a),
            RuleAttribute::Destination(a) => dst = Some(a),
            RuleAttribute::FwMark(v) => r.fwmark = Some(v),
            RuleAttribute::FwMask(v) => r.fwmask = Some(v),
            RuleAttribute::Iifname(n) => r.iif = Some(n),
            RuleAttribute::Oifname(n) => r.oif = Some(n),
            _ => {}
        }
    }
    if let Some(a) = src {
        r.from = Some(ipnet(a, m.header.src_len, "list rules")?);
    }
    if let Some(a) = dst {
        r.to = Some(ipnet(a, m.header.dst_len, "list rules")?);
    }
    // The kernel reports a mask only alongside a mark; a full mask is the default.
    if r.fwmark.is_some() && r.fwmask == Some(u32::MAX) {
        r.fwmask = None;
    }
    if r.fwmark.is_none() && r.fwmask.is_some() {
        r.fwmask = None;
    }
    Ok(Some(r))
}

/// Lists the rules of one family, in priority order (including the default
/// `local`, `main` and `default` rules).
pub fn list(h: &Handle, family: Family) -> Result<Vec<Rule>> {
    let mut req = RuleMessage::default();
    req.header.family = family.to_nl();
    let msgs = h.dump(RouteNetlinkMessage::GetRule(req), || format!("list {family:?} rules"))?;
    let mut out = Vec::new();
    for m in msgs {
        let RouteNetlinkMessage::NewRule(m) = m else { continue };
        if let Some(r) = parse_rule(m)? {
            if r.family == family {
                out.push(r);
            }
        }
    }
    Ok(out)
}
