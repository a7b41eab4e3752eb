//! The kernel's IPv4 route lookup on a snapshot: policy rules, longest-prefix match per table,
//! route types, and the input-path checks (martians, forwarding, source validation /
//! rp_filter), following `ip_route_input_slow`, `ip_route_output_key_hash_rcu`,
//! `fib_rules_lookup` and `fib_validate_source`.

use std::net::{IpAddr, Ipv4Addr};

use knit_host::route::{Route, RouteKind};
use knit_host::rule::{Rule, RuleAction};
use serde::Serialize;

use crate::snapshot::NsSnap;

/// A route lookup, as `ip route get DST [from SRC] [iif DEV] [mark M]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Query {
    /// Incoming interface (`None`: a locally generated packet, the output path).
    pub iif: Option<String>,
    /// Source address (`None`: unspecified).
    pub src: Option<IpAddr>,
    /// Destination.
    pub dst: IpAddr,
    /// Firewall mark.
    pub mark: u32,
}

/// Why a lookup failed, as the kernel's errno.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum FibError {
    /// `ENETUNREACH`: no route.
    NetUnreachable,
    /// `EHOSTUNREACH`: an unreachable route, or forwarding is off on the incoming interface.
    HostUnreachable(String),
    /// `EINVAL`: blackhole, martian source/destination.
    Invalid(String),
    /// `EACCES`: prohibit.
    Prohibited,
    /// `EXDEV`: reverse-path filter.
    RpFilter(String),
}

impl FibError {
    /// The errno the kernel returns.
    pub fn errno(&self) -> i32 {
        match self {
            FibError::NetUnreachable => 101,
            FibError::HostUnreachable(_) => 113,
            FibError::Invalid(_) => 22,
            FibError::Prohibited => 13,
            FibError::RpFilter(_) => 18,
        }
    }

    /// For people.
    pub fn describe(&self) -> String {
        match self {
            FibError::NetUnreachable => "no route (ENETUNREACH)".into(),
            FibError::HostUnreachable(w) => format!("{w} (EHOSTUNREACH)"),
            FibError::Invalid(w) => format!("{w} (EINVAL)"),
            FibError::Prohibited => "prohibit route (EACCES)".into(),
            FibError::RpFilter(w) => format!("{w} (EXDEV)"),
        }
    }
}

/// A successful lookup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// The rule that led to the table (`None` if the rule list was empty).
    pub rule: Option<Rule>,
    /// The table the route was found in.
    pub table: u32,
    /// The route.
    pub route: Route,
    /// Its type.
    pub kind: RouteKind,
    /// Output interface index (`lo` for local delivery on the output path).
    pub oif: Option<u32>,
    /// Next-hop gateway.
    pub gateway: Option<IpAddr>,
    /// All next hops' output interfaces (several for multipath routes; the model takes the first).
    pub oifs: Vec<u32>,
}

impl Decision {
    /// Whether the packet is delivered locally.
    pub fn is_local(&self) -> bool {
        matches!(self.kind, RouteKind::Local | RouteKind::Broadcast)
    }
}

fn v4(ip: IpAddr) -> Option<Ipv4Addr> {
    match ip {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(_) => None,
    }
}

fn rule_matches(r: &Rule, iif: &str, oif: Option<&str>, src: Option<IpAddr>, dst: IpAddr, mark: u32) -> bool {
    if let Some(n) = r.from {
        let s = src.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        if n.prefix_len() > 0 && !n.contains(&s) {
            return false;
        }
    }
    if let Some(n) = r.to {
        if n.prefix_len() > 0 && !n.contains(&dst) {
            return false;
        }
    }
    if let Some(i) = &r.iif {
        if i != iif {
            return false;
        }
    }
    if let Some(o) = &r.oif {
        if Some(o.as_str()) != oif {
            return false;
        }
    }
    if r.fwmark.is_some() || r.fwmask.is_some() {
        let m = r.fwmark.unwrap_or(0);
        let mask = r.fwmask.unwrap_or(u32::MAX);
        if (m ^ mark) & mask != 0 {
            return false;
        }
    }
    true
}

/// Longest-prefix match in one table: the first route (lowest metric) of the longest prefix.
pub fn table_lookup(ns: &NsSnap, table: u32, dst: IpAddr) -> Option<&Route> {
    let mut best: Option<&Route> = None;
    for r in ns.routes.iter().filter(|r| r.table == table && r.dst.contains(&dst)) {
        best = match best {
            None => Some(r),
            Some(b) => {
                let (bl, rl) = (b.dst.prefix_len(), r.dst.prefix_len());
                if rl > bl || (rl == bl && r.metric.unwrap_or(0) < b.metric.unwrap_or(0)) {
                    Some(r)
                } else {
                    Some(b)
                }
            }
        };
    }
    best
}

fn decision(ns: &NsSnap, rule: Option<&Rule>, table: u32, r: &Route) -> Decision {
    let mut oifs: Vec<u32> = r.oif.into_iter().collect();
    let mut gateway = r.gateway;
    if r.oif.is_none() {
        if let Some(mp) = ns.multipath.iter().find(|m| m.table == table && m.dst == r.dst && m.metric == r.metric) {
            oifs = mp.nexthops.iter().map(|n| n.oif).collect();
            gateway = mp.nexthops.first().and_then(|n| n.gateway);
        }
    }
    Decision { rule: rule.cloned(), table, route: r.clone(), kind: r.kind, oif: oifs.first().copied(), gateway, oifs }
}

/// `fib_lookup`: walks the rules. `iif` is the incoming interface's name (`lo` for the output path).
///
/// Without custom rules the kernel keeps tables local and main merged in one trie and
/// reports table main for local routes too; so does this model.
pub fn fib_lookup(ns: &NsSnap, iif: &str, src: Option<IpAddr>, dst: IpAddr, mark: u32) -> Result<Decision, FibError> {
    let mut d = fib_rules_lookup(ns, iif, src, dst, mark)?;
    if d.table == 255 && !ns.custom_rules() {
        d.table = 254;
    }
    Ok(d)
}

fn fib_rules_lookup(ns: &NsSnap, iif: &str, src: Option<IpAddr>, dst: IpAddr, mark: u32) -> Result<Decision, FibError> {
    for r in &ns.rules {
        if !rule_matches(r, iif, None, src, dst, mark) {
            continue;
        }
        match r.action {
            RuleAction::ToTable => {
                if r.table == 0 {
                    continue;
                }
                let Some(route) = table_lookup(ns, r.table, dst) else { continue };
                match route.kind {
                    RouteKind::Throw => continue,
                    RouteKind::Blackhole => {
                        return Err(FibError::Invalid(format!("blackhole route {} in table {}", route.dst, r.table)))
                    }
                    RouteKind::Unreachable => {
                        return Err(FibError::HostUnreachable(format!(
                            "unreachable route {} in table {}",
                            route.dst, r.table
                        )))
                    }
                    RouteKind::Prohibit => return Err(FibError::Prohibited),
                    _ => return Ok(decision(ns, Some(r), r.table, route)),
                }
            }
            RuleAction::Blackhole => return Err(FibError::Invalid(format!("blackhole rule {r}"))),
            RuleAction::Unreachable => return Err(FibError::HostUnreachable(format!("unreachable rule {r}"))),
            RuleAction::Prohibit => return Err(FibError::Prohibited),
            _ => continue,
        }
    }
    Err(FibError::NetUnreachable)
}

fn martian_src(ip: IpAddr) -> bool {
    match v4(ip) {
        Some(a) => a.is_multicast() || a.is_broadcast() || a.octets()[0] == 0,
        None => false,
    }
}

/// `fib_validate_source` for a packet from `src` to `dst` arriving on `iif`, routed out of
/// `oif` (0 for local delivery). `mark` is the packet's mark.
pub fn validate_source(ns: &NsSnap, iif: &str, src: IpAddr, dst: IpAddr, oif: u32, mark: u32) -> Result<(), FibError> {
    let conf = ns.ifconf(iif);
    let rpf = conf.rp_filter;
    let iif_index = ns.link_by_name(iif).map(|l| l.index).unwrap_or(0);
    if rpf == 0 && (iif_index != oif || conf.send_redirects == 0) {
        if conf.accept_local != 0 {
            return Ok(());
        }
        if !ns.custom_rules() {
            if ns.is_local(src) {
                return Err(FibError::Invalid(format!("martian source {src}: it is an address of {}", ns.name)));
            }
            return Ok(());
        }
    }
    // __fib_validate_source: a reverse lookup.
    let rev_iif = if oif != 0 { ns.ifname(oif) } else { "lo".to_string() };
    let rev_mark = if conf.src_valid_mark != 0 { mark } else { 0 };
    let no_addr = ns.addrs_on(iif_index).next().is_none();
    let strict = |why: String| if rpf != 0 { Err(FibError::RpFilter(why)) } else { Ok(()) };
    match fib_lookup(ns, &rev_iif, Some(dst), src, rev_mark) {
        Err(_) => strict(format!("rp_filter={rpf} on {iif}: no route back to {src}")),
        Ok(d) => {
            if d.kind != RouteKind::Unicast && !(d.kind == RouteKind::Local && conf.accept_local != 0) {
                return Err(FibError::Invalid(format!("martian source {src}: the route back is {:?}", d.kind)));
            }
            if d.oifs.contains(&iif_index) {
                return Ok(());
            }
            if no_addr {
                return strict(format!(
                    "rp_filter={rpf} on {iif} (no address): the route back to {src} leaves by {}",
                    d.oif.map(|o| ns.ifname(o)).unwrap_or_default()
                ));
            }
            if rpf == 1 {
                return Err(FibError::RpFilter(format!(
                    "rp_filter=1 (strict) on {iif}: the route back to {src} leaves by {}",
                    d.oif.map(|o| ns.ifname(o)).unwrap_or_default()
                )));
            }
            Ok(())
        }
    }
}

/// The input path: a packet arriving on `q.iif` (`ip route get … iif …`).
pub fn route_input(ns: &NsSnap, iif: &str, src: Option<IpAddr>, dst: IpAddr, mark: u32) -> Result<Decision, FibError> {
    let s = src.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    if martian_src(s) {
        return Err(FibError::Invalid(format!("martian source {s}")));
    }
    if let Some(d) = v4(dst) {
        if d.octets()[0] == 0 {
            return Err(FibError::Invalid(format!("martian destination {dst}")));
        }
    }
    if v4(s).is_some_and(|a| a.is_loopback()) || v4(dst).is_some_and(|a| a.is_loopback()) {
        return Err(FibError::Invalid("loopback address on the wire".into()));
    }
    let fwd = ns.ifconf(iif).forwarding != 0;
    let d = match fib_lookup(ns, iif, src, dst, mark) {
        Ok(d) => d,
        Err(e) => {
            if !fwd {
                return Err(FibError::HostUnreachable(format!("forwarding is off on {iif}")));
            }
            return Err(e);
        }
    };
    match d.kind {
        RouteKind::Broadcast | RouteKind::Local => {
            validate_source(ns, iif, s, dst, 0, mark)?;
            let mut d = d;
            if d.kind == RouteKind::Local {
                // Local delivery goes through the loopback device (what RTM_GETROUTE reports).
                let lo = ns.link_by_name("lo").map(|l| l.index);
                d.oif = lo;
                d.oifs = lo.into_iter().collect();
            }
            return Ok(d);
        }
        _ => {}
    }
    if !fwd {
        return Err(FibError::HostUnreachable(format!("forwarding is off on {iif}")));
    }
    if d.kind != RouteKind::Unicast {
        return Err(FibError::Invalid(format!("martian destination {dst} ({:?} route)", d.kind)));
    }
    validate_source(ns, iif, s, dst, d.oif.unwrap_or(0), mark)?;
    Ok(d)
}

/// The output path: a locally generated packet (`ip route get … [from SRC] [mark M]`).
pub fn route_output(ns: &NsSnap, src: Option<IpAddr>, dst: IpAddr, mark: u32) -> Result<Decision, FibError> {
    if let Some(s) = src {
        if martian_src(s) {
            return Err(FibError::Invalid(format!("bad source {s}")));
        }
        if !ns.is_local(s) {
            return Err(FibError::Invalid(format!("source {s} is not an address of {}", ns.name)));
        }
    }
    let mut d = fib_lookup(ns, "lo", src, dst, mark)?;
    if d.kind == RouteKind::Local {
        let lo = ns.link_by_name("lo").map(|l| l.index);
        d.oif = lo;
        d.oifs = lo.into_iter().collect();
    }
    Ok(d)
}

/// Either path, by `q.iif`.
pub fn lookup(ns: &NsSnap, q: &Query) -> Result<Decision, FibError> {
    match &q.iif {
        Some(i) => route_input(ns, i, q.src, q.dst, q.mark),
        None => route_output(ns, q.src, q.dst, q.mark),
    }
}

/// The source address the kernel picks for a locally generated packet on this route
/// (the route's `src`, else an address of the output interface, preferring one whose
/// subnet holds the next hop, else any global address of the namespace).
pub fn select_source(ns: &NsSnap, d: &Decision, dst: IpAddr) -> Option<IpAddr> {
    if let Some(s) = d.route.src {
        return Some(s);
    }
    if d.kind == RouteKind::Local {
        return Some(dst);
    }
    let nh = d.gateway.unwrap_or(dst);
    let oif = d.oif?;
    let on_dev: Vec<_> = ns.addrs_on(oif).filter(|a| u8::from(a.scope) < 254).collect();
    if let Some(a) = on_dev.iter().find(|a| a.net.contains(&nh)) {
        return Some(a.net.addr());
    }
    if let Some(a) = on_dev.first() {
        return Some(a.net.addr());
    }
    ns.addrs.iter().find(|a| u8::from(a.scope) == 0 && !a.net.addr().is_loopback()).map(|a| a.net.addr())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{IfConf, Role};
    use knit_host::link::LinkInfo;
    use knit_host::{addr::Address, route::Route, Family};

    fn link(index: u32, name: &str) -> LinkInfo {
        LinkInfo {
            index,
            name: name.into(),
            kind: None,
            mac: None,
            mtu: 1500,
            up: true,
            lower_up: true,
            master: None,
            link: None,
            link_netnsid: None,
            txqlen: 0,
            macvlan_mode: None,
            flags: 0,
        }
    }

    fn node() -> NsSnap {
        let mut ns = NsSnap::new("node1", Role::Node);
        ns.links = vec![link(1, "lo"), link(2, "eth0"), link(3, "cali1"), link(4, "veth1")];
        ns.addrs = vec![Address::new(2, "172.16.1.2/16".parse().unwrap())];
        ns.routes = vec![
            Route::dev("172.16.0.0/16".parse().unwrap(), 2),
            Route::default_via("172.16.0.1".parse().unwrap(), Some(2)),
            Route::dev("10.233.64.128/32".parse().unwrap(), 3),
            Route::blackhole("10.233.64.128/26".parse().unwrap()),
            Route::dev("172.16.2.2/32".parse().unwrap(), 4).table(500),
            Route { kind: RouteKind::Local, ..Route::dev("172.16.1.2/32".parse().unwrap(), 2).table(255) },
        ];
        ns.rules.insert(1, Rule::new(Family::V4, 500).priority(1000));
        ns.rules.insert(2, Rule::new(Family::V4, 100).priority(1001).fwmark(1, None));
        ns.conf.insert("all".into(), IfConf { forwarding: 1, ..Default::default() });
        for n in ["eth0", "cali1", "veth1"] {
            ns.conf.insert(n.into(), IfConf { forwarding: 1, send_redirects: 1, ..Default::default() });
        }
        ns
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn rules_then_longest_prefix() {
        let ns = node();
        let d = route_output(&ns, None, ip("172.16.2.2"), 0).unwrap();
        assert_eq!((d.table, d.oif), (500, Some(4)));
        assert_eq!(d.rule.unwrap().priority, Some(1000));
        let d = route_output(&ns, None, ip("10.233.64.128"), 0).unwrap();
        assert_eq!((d.table, d.oif), (254, Some(3)));
        let d = route_output(&ns, None, ip("8.8.8.8"), 0).unwrap();
        assert_eq!(d.gateway, Some(ip("172.16.0.1")));
        assert_eq!(route_output(&ns, None, ip("10.233.64.130"), 0).unwrap_err().errno(), 22);
        let d = route_output(&ns, None, ip("172.16.1.2"), 0).unwrap();
        assert!(d.is_local());
        assert_eq!(d.table, 255, "custom rules: local and main are separate tables");
        let mut plain = node();
        plain.rules = crate::snapshot::default_rules();
        assert_eq!(route_output(&plain, None, ip("172.16.1.2"), 0).unwrap().table, 254, "merged tables report main");
    }

    #[test]
    fn fwmark_with_mask() {
        let mut ns = node();
        ns.routes.push(Route::default_via("172.16.1.9".parse().unwrap(), Some(4)).table(100));
        ns.rules[2].fwmask = Some(0xff);
        assert_eq!(route_output(&ns, None, ip("9.9.9.9"), 0x101).unwrap().table, 100);
        assert_eq!(route_output(&ns, None, ip("9.9.9.9"), 0x102).unwrap().table, 254);
    }

    #[test]
    fn input_path_checks() {
        let mut ns = node();
        assert_eq!(route_input(&ns, "eth0", Some(ip("172.16.1.2")), ip("10.233.64.128"), 0).unwrap_err().errno(), 22);
        assert!(route_input(&ns, "eth0", Some(ip("172.16.9.9")), ip("10.233.64.128"), 0).is_ok());
        ns.conf.insert("eth0".into(), IfConf { forwarding: 0, ..Default::default() });
        assert_eq!(route_input(&ns, "eth0", Some(ip("172.16.9.9")), ip("10.233.64.128"), 0).unwrap_err().errno(), 113);
        let mut ns = node();
        ns.conf.get_mut("cali1").unwrap().rp_filter = 1;
        // From cali1 with a source whose route back leaves by eth0: strict rp_filter drops.
        assert_eq!(route_input(&ns, "cali1", Some(ip("172.16.9.9")), ip("172.16.1.50"), 0).unwrap_err().errno(), 18);
        assert!(route_input(&ns, "cali1", Some(ip("10.233.64.128")), ip("172.16.1.50"), 0).is_ok());
    }
}
