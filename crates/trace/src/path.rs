//! Hop-by-hop walk of a packet and its reply through a snapshot: routing ([`crate::fib`]),
//! netfilter ([`crate::netfilter`]: mangle marks, kube-proxy DNAT/MASQUERADE, the filter
//! FORWARD chain with conntrack state), and L2 delivery (veth peers, bridges, macvlan
//! bridge mode with its parent↔child isolation, ARP and proxy ARP).

use std::collections::BTreeMap;
use std::net::IpAddr;

use knit_host::link::MacvlanMode;
use knit_host::neigh::NeighState;
use knit_host::route::RouteKind;
use serde::Serialize;

use crate::fib::{self, Decision, FibError};
use crate::netfilter::{self, CtState, Outcome, Pkt};
use crate::snapshot::{Port, Snapshot};

/// Most hops a path may have before it is called a loop.
pub const MAX_HOPS: usize = 24;

/// L4 protocol of a trace (and of a lab matrix cell, which uses this type).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP connect + echo.
    Tcp,
    /// UDP echo.
    Udp,
    /// ICMP echo (ping).
    Icmp,
}

impl Proto {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Icmp => "icmp",
        }
    }
}

impl std::str::FromStr for Proto {
    type Err = String;
    fn from_str(s: &str) -> Result<Proto, String> {
        match s {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            "icmp" => Ok(Proto::Icmp),
            o => Err(format!("unknown protocol {o:?} (tcp, udp or icmp)")),
        }
    }
}

/// What to trace.
#[derive(Debug, Clone)]
pub struct Request {
    /// The source namespace (index in the snapshot).
    pub src_ns: usize,
    /// A source address to bind (None: the kernel picks one).
    pub src_ip: Option<IpAddr>,
    /// Destination address.
    pub dst: IpAddr,
    /// Destination port (ignored for ICMP).
    pub dport: u16,
    /// Protocol.
    pub proto: Proto,
    /// The Service endpoint to follow when kube-proxy picks one at random.
    pub endpoint: Option<IpAddr>,
}

/// One hop: a namespace the packet passes through.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Hop {
    /// 1-based position on its path.
    pub n: usize,
    /// Namespace.
    pub ns: String,
    /// Incoming interface (`None` where the packet starts).
    pub iif: Option<String>,
    /// The packet as it arrives (`src:port → dst:port`).
    pub packet: String,
    /// The policy rule that led to the table.
    pub rule: Option<String>,
    /// The table.
    pub table: Option<u32>,
    /// The route.
    pub route: Option<String>,
    /// Output interface.
    pub oif: Option<String>,
    /// Where the frame goes: next hop and the receiving namespace/interface, and how.
    pub via: Option<String>,
    /// NAT applied here.
    pub nat: Vec<String>,
    /// Other facts (marks, conntrack state, notes).
    pub notes: Vec<String>,
    /// `originate`, `forward` or `deliver`.
    pub action: String,
}

/// Where and why a packet is dropped.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Drop {
    /// `forward`, `reply` or `handshake` (the client's ACK after the reply).
    pub path: String,
    /// Hop number on that path.
    pub hop: usize,
    /// Namespace.
    pub ns: String,
    /// Why.
    pub reason: String,
    /// The netfilter rule that dropped it, if one did.
    pub rule: Option<String>,
    /// A fix, when one is known.
    pub fix: Option<String>,
}

/// One direction.
#[derive(Debug, Clone, Serialize, Default)]
pub struct PathTrace {
    /// Hops.
    pub hops: Vec<Hop>,
    /// The namespace that received it, when delivered.
    pub delivered_to: Option<String>,
    /// The address and port it was delivered to (after NAT).
    pub delivered_addr: Option<(IpAddr, u16)>,
    /// The packet's source as delivered.
    pub delivered_from: Option<(IpAddr, u16)>,
    /// Why it was dropped.
    pub drop: Option<Drop>,
}

/// A whole trace.
#[derive(Debug, Clone, Serialize)]
pub struct Trace {
    /// Source namespace.
    pub source: String,
    /// Destination as asked.
    pub destination: String,
    /// Protocol.
    pub proto: Proto,
    /// Service endpoints kube-proxy could pick (empty when no DNAT applies).
    pub endpoints: Vec<IpAddr>,
    /// The endpoint followed.
    pub endpoint: Option<IpAddr>,
    /// The request.
    pub forward: PathTrace,
    /// The reply (when the request was delivered).
    pub reply: Option<PathTrace>,
    /// Delivered both ways.
    pub delivered: bool,
    /// The drop, if any (on the forward, reply or handshake path).
    pub drop: Option<Drop>,
}

#[derive(Debug, Clone, Default)]
struct Ct {
    seen: bool,
    ctmark: u32,
    /// (original dst, original port, new dst, new port)
    dnat: Option<(IpAddr, u16, IpAddr, u16)>,
    /// (original src, original port, new src)
    snat: Option<(IpAddr, u16, IpAddr)>,
    /// Forwarded the request: (iif, oif).
    forwarded: Option<(String, String, usize)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    Forward,
    Reply,
}

#[derive(Debug, Clone, Copy)]
struct Packet {
    src: Option<IpAddr>,
    dst: IpAddr,
    sport: u16,
    dport: u16,
}

impl Packet {
    fn describe(&self, proto: Proto) -> String {
        let src = self.src.map(|s| s.to_string()).unwrap_or_else(|| "?".into());
        match proto {
            Proto::Icmp => format!("{src} → {} icmp", self.dst),
            p => format!("{src}:{} → {}:{} {}", self.sport, self.dst, self.dport, p.as_str()),
        }
    }
}

const SPORT: u16 = 40000;

/// The fix for an INVALID drop on an asymmetric path.
pub const FIX_INVALID: &str =
    "install /32 routes for underlay pods via their node on every node (knit lab without --no-underlay-routes), \
or set net.netfilter.nf_conntrack_tcp_be_liberal=1 with kube-proxy >= 1.29 (which then leaves out the INVALID drop)";

/// Traces `req` on `snap` (which must be [`Snapshot::prepare`]d).
pub fn trace(snap: &Snapshot, req: &Request) -> Trace {
    let mut cts: BTreeMap<usize, Ct> = BTreeMap::new();
    let mut endpoints = Vec::new();
    let mut chosen = None;
    let pkt = Packet { src: req.src_ip, dst: req.dst, sport: SPORT, dport: req.dport };
    let fwd = walk(snap, req, req.src_ns, pkt, Dir::Forward, &mut cts, &mut endpoints, &mut chosen);
    let mut out = Trace {
        source: snap.namespaces[req.src_ns].name.clone(),
        destination: match req.proto {
            Proto::Icmp => req.dst.to_string(),
            _ => format!("{}:{}", req.dst, req.dport),
        },
        proto: req.proto,
        endpoints: endpoints.clone(),
        endpoint: chosen,
        forward: fwd.0.clone(),
        reply: None,
        delivered: false,
        drop: fwd.0.drop.clone(),
    };
    let Some(dst_ns) = fwd.1 else { return out };
    let (Some((rdst, rdport)), Some((rsrc, rsport))) = (out.forward.delivered_from, out.forward.delivered_addr) else {
        return out;
    };
    let rpkt = Packet { src: Some(rsrc), dst: rdst, sport: rsport, dport: rdport };
    let (mut rep, reply_end) = walk(snap, req, dst_ns, rpkt, Dir::Reply, &mut cts, &mut Vec::new(), &mut None);
    if rep.drop.is_none() {
        match reply_end {
            Some(ns) if ns == req.src_ns && rep.delivered_from.map(|x| x.0) != Some(req.dst) => {
                let n = rep.hops.len();
                rep.drop = Some(Drop {
                    path: "reply".into(),
                    hop: n,
                    ns: snap.namespaces[ns].name.clone(),
                    reason: format!(
                        "the reply comes from {}, not {}: it bypassed the node that translated the request, so nothing reverses the NAT",
                        rep.delivered_from.map(|(a, p)| format!("{a}:{p}")).unwrap_or_default(),
                        out.destination
                    ),
                    rule: None,
                    fix: Some("make the reply return through the node that did the DNAT (masquerade, or routes back via that node)".into()),
                });
            }
            Some(ns) if ns == req.src_ns => {}
            Some(ns) => {
                let n = rep.hops.len();
                rep.drop = Some(Drop {
                    path: "reply".into(),
                    hop: n,
                    ns: snap.namespaces[ns].name.clone(),
                    reason: format!(
                        "the reply is delivered to {}, not to the client {}",
                        snap.namespaces[ns].name, out.source
                    ),
                    rule: None,
                    fix: None,
                });
            }
            None => {}
        }
    }
    out.drop = rep.drop.clone();
    // TCP's third packet: a node that forwarded the request but not the reply sees the client's
    // ACK for a connection whose SYN-ACK it never saw: INVALID.
    if out.drop.is_none() && req.proto == Proto::Tcp {
        let reply_fwd: Vec<&str> = rep.hops.iter().filter(|h| h.action == "forward").map(|h| h.ns.as_str()).collect();
        for h in out.forward.hops.iter().filter(|h| h.action == "forward") {
            if reply_fwd.contains(&h.ns.as_str()) {
                continue;
            }
            let Some(i) = snap.ns_index(&h.ns) else { continue };
            let ns = &snap.namespaces[i];
            let is_local = |ip: IpAddr| ns.is_local(ip);
            let p = Pkt {
                src: req.src_ip.or(out.forward.delivered_from.map(|x| x.0)).unwrap_or(req.dst),
                dst: out.forward.delivered_addr.map(|x| x.0).unwrap_or(req.dst),
                proto: "tcp",
                sport: SPORT,
                dport: req.dport,
                iif: h.iif.as_deref(),
                oif: h.oif.as_deref(),
                ct: CtState::Invalid,
                is_local: &is_local,
            };
            let o = netfilter::eval(ns.parsed().and_then(|t| t.get("filter")), "FORWARD", &p, 0, 0);
            if let Some(rule) = o.first().and_then(|o| o.dropped_by.clone()) {
                out.drop = Some(Drop {
                    path: "handshake".into(),
                    hop: h.n,
                    ns: h.ns.clone(),
                    reason: format!(
                        "{} forwarded the SYN but the SYN-ACK went around it, so the client's ACK is conntrack state INVALID there{}",
                        h.ns,
                        liberal_note(ns.tcp_be_liberal)
                    ),
                    rule: Some(rule),
                    fix: Some(FIX_INVALID.into()),
                });
                break;
            }
        }
    }
    out.delivered = out.drop.is_none() && reply_end == Some(req.src_ns);
    out.reply = Some(rep);
    out
}

fn liberal_note(l: Option<bool>) -> String {
    match l {
        Some(false) => " (nf_conntrack_tcp_be_liberal=0)".into(),
        Some(true) => " (nf_conntrack_tcp_be_liberal=1)".into(),
        None => String::new(),
    }
}

fn table_name(t: u32) -> String {
    match t {
        255 => "local".into(),
        254 => "main".into(),
        253 => "default".into(),
        t => t.to_string(),
    }
}

fn describe_route(snap: &Snapshot, ns: usize, d: &Decision) -> String {
    let n = &snap.namespaces[ns];
    let r = &d.route;
    let mut s = String::new();
    match d.kind {
        RouteKind::Unicast => {}
        k => s.push_str(&format!("{} ", format!("{k:?}").to_lowercase())),
    }
    s.push_str(&r.dst.to_string());
    if d.oifs.len() > 1 {
        s.push_str(&format!(" multipath ({} next hops, first taken)", d.oifs.len()));
    }
    if let Some(g) = d.gateway {
        s.push_str(&format!(" via {g}"));
    }
    if let Some(o) = r.oif.or(d.oif) {
        s.push_str(&format!(" dev {}", n.ifname(o)));
    }
    if r.scope == knit_host::Scope::Link {
        s.push_str(" scope link");
    }
    if r.onlink {
        s.push_str(" onlink");
    }
    if let Some(src) = r.src {
        s.push_str(&format!(" src {src}"));
    }
    if r.protocol == knit_host::route::proto::BIRD {
        s.push_str(" proto bird");
    }
    s
}

fn fib_fix(e: &FibError, ns: &str, iif: Option<&str>) -> Option<String> {
    match e {
        FibError::RpFilter(_) => {
            Some(format!("set net.ipv4.conf.{}.rp_filter=0 (or 2, loose) in {ns}", iif.unwrap_or("all")))
        }
        FibError::HostUnreachable(w) if w.contains("forwarding") => {
            Some(format!("enable net.ipv4.conf.{}.forwarding in {ns}", iif.unwrap_or("all")))
        }
        FibError::NetUnreachable => Some(format!("add a route for the destination in {ns}")),
        _ => None,
    }
}

#[allow(clippy::too_many_arguments)]
fn walk(
    snap: &Snapshot,
    req: &Request,
    start: usize,
    mut p: Packet,
    dir: Dir,
    cts: &mut BTreeMap<usize, Ct>,
    endpoints: &mut Vec<IpAddr>,
    chosen: &mut Option<IpAddr>,
) -> (PathTrace, Option<usize>) {
    let path_name = if dir == Dir::Forward { "forward" } else { "reply" };
    let mut out = PathTrace::default();
    let mut cur = start;
    let mut iif: Option<u32> = None;
    let mut seen = Vec::new();
    let proto = req.proto.as_str();
    for n in 1..=MAX_HOPS {
        let ns = &snap.namespaces[cur];
        let tables = ns.parsed();
        let tab = |name: &str| tables.and_then(|t| t.get(name));
        let iif_name = iif.map(|i| ns.ifname(i));
        let mut hop =
            Hop { n, ns: ns.name.clone(), iif: iif_name.clone(), packet: p.describe(req.proto), ..Default::default() };
        let drop = |hop: Hop, out: &mut PathTrace, reason: String, rule: Option<String>, fix: Option<String>| {
            out.drop = Some(Drop { path: path_name.into(), hop: hop.n, ns: hop.ns.clone(), reason, rule, fix });
            out.hops.push(hop);
        };
        if seen.contains(&(cur, iif)) {
            drop(hop, &mut out, "routing loop".into(), None, None);
            return (out, None);
        }
        seen.push((cur, iif));
        let entry = cts.get(&cur).cloned().unwrap_or_default();
        let ctstate = match dir {
            Dir::Forward if entry.seen => CtState::Established,
            Dir::Forward => CtState::New,
            Dir::Reply if entry.seen => CtState::Established,
            Dir::Reply if req.proto == Proto::Udp => CtState::New,
            Dir::Reply => CtState::Invalid,
        };
        if ctstate != CtState::Established || dir == Dir::Reply {
            hop.notes.push(format!("conntrack {ctstate:?}"));
        }
        let is_local = |ip: IpAddr| ns.is_local(ip);
        let mut mark = 0u32;
        let mut ctmark = entry.ctmark;
        let decision;
        if iif.is_none() {
            hop.action = "originate".into();
            // Source selection: a lookup with no source, as connect() does.
            if p.src.is_none() {
                match fib::route_output(ns, None, p.dst, 0) {
                    Ok(d0) => p.src = fib::select_source(ns, &d0, p.dst),
                    Err(e) => {
                        let fix = fib_fix(&e, &ns.name, None);
                        drop(hop, &mut out, e.describe(), None, fix);
                        return (out, None);
                    }
                }
                hop.packet = p.describe(req.proto);
            }
            let src = p.src.unwrap_or(p.dst);
            let pk = Pkt {
                src,
                dst: p.dst,
                proto,
                sport: p.sport,
                dport: p.dport,
                iif: None,
                oif: None,
                ct: ctstate,
                is_local: &is_local,
            };
            mangle(tab("mangle"), "OUTPUT", &pk, &mut mark, &mut ctmark, &mut hop);
            if ctstate == CtState::New {
                let outs = netfilter::eval(tab("nat"), "OUTPUT", &pk, mark, ctmark);
                let o = pick(outs, req.endpoint, endpoints, chosen);
                apply_dnat(&o, &mut p, &mut hop, cts.entry(cur).or_default());
                mark = o.mark;
            }
            decision = fib::route_output(ns, p.src, p.dst, mark);
        } else {
            let iname = iif_name.clone().unwrap_or_default();
            if dir == Dir::Reply {
                if let Some((osrc, osport, nsrc)) = entry.snat {
                    if p.dst == nsrc {
                        hop.nat.push(format!("un-MASQUERADE: destination {} → {osrc}:{osport}", p.dst));
                        p.dst = osrc;
                        p.dport = osport;
                    }
                }
            }
            let src = p.src.unwrap_or(p.dst);
            let pk = Pkt {
                src,
                dst: p.dst,
                proto,
                sport: p.sport,
                dport: p.dport,
                iif: Some(&iname),
                oif: None,
                ct: ctstate,
                is_local: &is_local,
            };
            mangle(tab("mangle"), "PREROUTING", &pk, &mut mark, &mut ctmark, &mut hop);
            if ctstate == CtState::New {
                let outs = netfilter::eval(tab("nat"), "PREROUTING", &pk, mark, ctmark);
                let o = pick(outs, req.endpoint, endpoints, chosen);
                apply_dnat(&o, &mut p, &mut hop, cts.entry(cur).or_default());
                mark = o.mark;
            }
            decision = fib::route_input(ns, &iname, p.src, p.dst, mark);
        }
        {
            let e = cts.entry(cur).or_default();
            if dir == Dir::Forward {
                e.seen = true;
            }
            e.ctmark = ctmark;
        }
        if mark != 0 {
            hop.notes.push(format!("mark {mark:#x}"));
        }
        let d = match decision {
            Ok(d) => d,
            Err(e) => {
                let fix = fib_fix(&e, &ns.name, iif_name.as_deref());
                drop(hop, &mut out, e.describe(), None, fix);
                return (out, None);
            }
        };
        hop.rule = d.rule.as_ref().map(|r| r.to_string());
        hop.table = Some(d.table);
        hop.route = Some(format!("table {}: {}", table_name(d.table), describe_route(snap, cur, &d)));
        hop.oif = d.oif.map(|o| ns.ifname(o));
        let src = p.src.unwrap_or(p.dst);
        if d.is_local() {
            hop.action = "deliver".into();
            if iif.is_some() {
                let pk = Pkt {
                    src,
                    dst: p.dst,
                    proto,
                    sport: p.sport,
                    dport: p.dport,
                    iif: iif_name.as_deref(),
                    oif: None,
                    ct: ctstate,
                    is_local: &is_local,
                };
                if let Some(rule) = netfilter::eval(tab("filter"), "INPUT", &pk, mark, ctmark)
                    .first()
                    .and_then(|o| o.dropped_by.clone())
                {
                    drop(hop, &mut out, format!("filter INPUT drops it (conntrack {ctstate:?})"), Some(rule), None);
                    return (out, None);
                }
            }
            if dir == Dir::Reply {
                if let Some((odst, odport, ndst, _)) = entry.dnat {
                    if p.src == Some(ndst) {
                        hop.nat.push(format!("un-DNAT: source {ndst} → {odst}:{odport}"));
                        p.src = Some(odst);
                        p.sport = odport;
                    }
                }
            }
            let src = p.src.unwrap_or(p.dst);
            out.delivered_to = Some(ns.name.clone());
            out.delivered_addr = Some((p.dst, p.dport));
            out.delivered_from = Some((src, p.sport));
            out.hops.push(hop);
            return (out, Some(cur));
        }
        let Some(oif) = d.oif else {
            drop(hop, &mut out, "route without an output device".into(), None, None);
            return (out, None);
        };
        let oname = ns.ifname(oif);
        if let Some(i) = &iif_name {
            hop.action = "forward".into();
            let pk = Pkt {
                src,
                dst: p.dst,
                proto,
                sport: p.sport,
                dport: p.dport,
                iif: Some(i),
                oif: Some(&oname),
                ct: ctstate,
                is_local: &is_local,
            };
            let o = netfilter::eval(tab("filter"), "FORWARD", &pk, mark, ctmark);
            if let Some(rule) = o.first().and_then(|o| o.dropped_by.clone()) {
                let reason = if ctstate == CtState::Invalid {
                    format!(
                        "the reply reaches {} which never saw the request (asymmetric path): conntrack state INVALID{}, dropped by kube-proxy's rule",
                        ns.name,
                        liberal_note(ns.tcp_be_liberal)
                    )
                } else {
                    format!("filter FORWARD drops it (conntrack {ctstate:?})")
                };
                let fix = (ctstate == CtState::Invalid).then(|| FIX_INVALID.to_string());
                drop(hop, &mut out, reason, Some(rule), fix);
                return (out, None);
            }
            if dir == Dir::Forward {
                cts.entry(cur).or_default().forwarded = Some((i.clone(), oname.clone(), n));
            }
        }
        // POSTROUTING.
        if ctstate == CtState::New && dir == Dir::Forward {
            let pk = Pkt {
                src,
                dst: p.dst,
                proto,
                sport: p.sport,
                dport: p.dport,
                iif: iif_name.as_deref(),
                oif: Some(&oname),
                ct: ctstate,
                is_local: &is_local,
            };
            let outs = netfilter::eval(tab("nat"), "POSTROUTING", &pk, mark, ctmark);
            if let Some(o) = outs.first() {
                if let Some(to) = o.masquerade {
                    let new = to.or_else(|| fib::select_source(ns, &d, p.dst)).unwrap_or(src);
                    hop.nat.push(format!(
                        "MASQUERADE: source {src} → {new} ({})",
                        o.masq_rule.clone().unwrap_or_default()
                    ));
                    cts.entry(cur).or_default().snat = Some((src, p.sport, new));
                    p.src = Some(new);
                }
            }
        }
        if dir == Dir::Reply {
            if let Some((odst, odport, ndst, _)) = entry.dnat {
                if p.src == Some(ndst) {
                    hop.nat.push(format!("un-DNAT: source {ndst} → {odst}:{odport}"));
                    p.src = Some(odst);
                    p.sport = odport;
                }
            }
        }
        let nexthop = d.gateway.unwrap_or(p.dst);
        match receiver(snap, Port { ns: cur, link: oif }, nexthop) {
            Ok((port, how)) => {
                hop.via = Some(format!("next hop {nexthop} → {} ({how})", snap.port_name(port)));
                out.hops.push(hop);
                cur = port.ns;
                iif = Some(port.link);
            }
            Err((why, fix)) => {
                drop(hop, &mut out, why, None, fix);
                return (out, None);
            }
        }
    }
    let n = out.hops.len();
    out.drop = Some(Drop {
        path: path_name.into(),
        hop: n,
        ns: snap.namespaces[cur].name.clone(),
        reason: format!("more than {MAX_HOPS} hops"),
        rule: None,
        fix: None,
    });
    (out, None)
}

/// The mangle table's chain at one hook: the packet's mark and conntrack mark after it (the
/// first outcome: only `-m statistic` forks, and mangle chains use none), with a note on
/// the hop when the mark changed.
fn mangle(
    table: Option<&netfilter::Table>,
    chain: &str,
    pk: &Pkt<'_>,
    mark: &mut u32,
    ctmark: &mut u32,
    hop: &mut Hop,
) {
    if let Some(o) = netfilter::eval(table, chain, pk, *mark, *ctmark).first() {
        if o.mark != *mark {
            hop.notes.push(format!("mangle {chain} sets mark {:#x}", o.mark));
        }
        *mark = o.mark;
        *ctmark = o.ctmark;
    }
}

fn pick(outs: Vec<Outcome>, want: Option<IpAddr>, endpoints: &mut Vec<IpAddr>, chosen: &mut Option<IpAddr>) -> Outcome {
    let mut cands: Vec<IpAddr> = outs.iter().filter_map(|o| o.dnat.map(|d| d.0)).collect();
    cands.dedup();
    if !cands.is_empty() && endpoints.is_empty() {
        *endpoints = cands.clone();
    }
    let o = match want {
        Some(w) => outs.iter().find(|o| o.dnat.map(|d| d.0) == Some(w)).or_else(|| outs.first()),
        None => outs.first(),
    };
    let o = o.cloned().unwrap_or_default();
    if let Some((a, _)) = o.dnat {
        if chosen.is_none() {
            *chosen = Some(a);
        }
    }
    o
}

fn apply_dnat(o: &Outcome, p: &mut Packet, hop: &mut Hop, ct: &mut Ct) {
    for n in &o.notes {
        hop.notes.push(format!("marked for masquerade: {n}"));
    }
    if let Some((a, port)) = o.dnat {
        let np = port.unwrap_or(p.dport);
        hop.nat.push(format!("DNAT {}:{} → {a}:{np} ({})", p.dst, p.dport, o.dnat_rule.clone().unwrap_or_default()));
        ct.dnat = Some((p.dst, p.dport, a, np));
        p.dst = a;
        p.dport = np;
    }
}

/// Who receives a frame sent out of `out` to `nexthop`: the namespace and interface, and how
/// the frame got there; or why nobody does (and a fix).
pub fn receiver(snap: &Snapshot, out: Port, nexthop: IpAddr) -> Result<(Port, String), (String, Option<String>)> {
    let eps = segment(snap, out);
    let ns = &snap.namespaces[out.ns];
    // A neighbour entry with a MAC names the receiver.
    if let Some(nb) = ns.neigh.iter().find(|nb| {
        nb.index == out.link
            && nb.ip == nexthop
            && nb.lladdr.is_some()
            && !matches!(nb.state, NeighState::Failed | NeighState::Incomplete)
    }) {
        if let Some((p, how)) =
            eps.iter().find(|(p, _)| snap.namespaces[p.ns].link(p.link).and_then(|l| l.mac) == nb.lladdr)
        {
            return Ok((
                *p,
                format!("{how}, neighbour {:?} {}", nb.state, nb.lladdr.map(|m| m.to_string()).unwrap_or_default()),
            ));
        }
    }
    // ARP: the namespace holding the address answers (arp_ignore=0: on any of its interfaces).
    for (p, how) in &eps {
        let rns = &snap.namespaces[p.ns];
        let rname = rns.ifname(p.link);
        let ignore = rns.ifconf(&rname).arp_ignore;
        let owns =
            if ignore == 0 { rns.is_local(nexthop) } else { rns.addrs_on(p.link).any(|a| a.net.addr() == nexthop) };
        if owns {
            return Ok((*p, format!("{how}, ARP")));
        }
    }
    for (p, how) in &eps {
        let rns = &snap.namespaces[p.ns];
        let rname = rns.ifname(p.link);
        if rns.ifconf(&rname).proxy_arp == 0 {
            continue;
        }
        if let Ok(d) = fib::route_output(rns, None, nexthop, 0) {
            if d.kind == RouteKind::Unicast && d.oif != Some(p.link) {
                return Ok((*p, format!("{how}, proxy ARP on {rname}")));
            }
        }
    }
    // Nobody: say why, naming macvlan isolation when it is the cause.
    let l = ns.link(out.link);
    if l.and_then(|l| l.kind.as_deref()) == Some("macvlan") {
        if let Some(parent) = snap.link_target(out) {
            if snap.namespaces[parent.ns].is_local(nexthop) {
                return Err((
                    format!("{nexthop} belongs to {}, the parent of macvlan {}: macvlan bridge mode never passes frames between a parent and its children", snap.namespaces[parent.ns].name, snap.port_name(out)),
                    Some("route parent↔child traffic through a veth (knit-coordinator's veth0 and the node's table-500 /32 routes)".into()),
                ));
            }
        }
    }
    for c in snap.macvlan_children(out) {
        if snap.namespaces[c.ns].addrs_on(c.link).any(|a| a.net.addr() == nexthop) {
            return Err((
                format!(
                    "{nexthop} is on {}, a macvlan child of {}: a parent never reaches its own macvlan children",
                    snap.port_name(c),
                    snap.port_name(out)
                ),
                Some("route to the pod through its veth (knit-coordinator's table-500 /32 routes, rule 1000)".into()),
            ));
        }
    }
    if eps.is_empty() {
        return Err((format!("{} leads outside the snapshot", snap.port_name(out)), None));
    }
    Err((
        format!("nobody on the segment of {} answers ARP for {nexthop}", snap.port_name(out)),
        Some(format!("add a route for {nexthop} via a host that can reach it")),
    ))
}

fn segment(snap: &Snapshot, out: Port) -> Vec<(Port, String)> {
    let mut eps = Vec::new();
    let Some(l) = snap.namespaces[out.ns].link(out.link) else { return eps };
    match l.kind.as_deref() {
        Some("macvlan") => {
            let Some(parent) = snap.link_target(out) else { return eps };
            let mode = l.macvlan_mode.unwrap_or_default();
            if mode == MacvlanMode::Bridge {
                for c in snap.macvlan_children(parent) {
                    let cm = snap.namespaces[c.ns].link(c.link).and_then(|x| x.macvlan_mode).unwrap_or_default();
                    if c != out && cm == MacvlanMode::Bridge {
                        eps.push((c, format!("macvlan bridge mode: sibling on {}", snap.port_name(parent))));
                    }
                }
            }
            wire_from(snap, parent, &format!("macvlan out through parent {}", snap.port_name(parent)), &mut eps, 0);
        }
        Some("bridge") => {
            let ports: Vec<u32> =
                snap.namespaces[out.ns].links.iter().filter(|x| x.master == Some(out.link)).map(|x| x.index).collect();
            for q in ports {
                let qp = Port { ns: out.ns, link: q };
                wire_from(
                    snap,
                    qp,
                    &format!("bridge {} port {}", l.name, snap.namespaces[out.ns].ifname(q)),
                    &mut eps,
                    0,
                );
            }
        }
        _ => wire_from(snap, out, "veth", &mut eps, 0),
    }
    eps
}

fn wire_from(snap: &Snapshot, p: Port, how: &str, eps: &mut Vec<(Port, String)>, depth: usize) {
    if depth > 4 {
        return;
    }
    let Some(l) = snap.namespaces[p.ns].link(p.link) else { return };
    if l.kind.as_deref() != Some("veth") {
        return;
    }
    let Some(peer) = snap.link_target(p) else { return };
    receive_at(snap, peer, &format!("{how} → veth peer"), eps, depth);
}

fn receive_at(snap: &Snapshot, r: Port, how: &str, eps: &mut Vec<(Port, String)>, depth: usize) {
    let ns = &snap.namespaces[r.ns];
    let Some(l) = ns.link(r.link) else { return };
    if let Some(br) = l.master.filter(|b| ns.link(*b).and_then(|x| x.kind.as_deref()) == Some("bridge")) {
        let bname = ns.ifname(br);
        eps.push((Port { ns: r.ns, link: br }, format!("{how} {}, bridge {bname}", snap.port_name(r))));
        let ports: Vec<u32> =
            ns.links.iter().filter(|x| x.master == Some(br) && x.index != r.link).map(|x| x.index).collect();
        for q in ports {
            wire_from(
                snap,
                Port { ns: r.ns, link: q },
                &format!("{how} {}, bridge {bname} port {}", snap.port_name(r), ns.ifname(q)),
                eps,
                depth + 1,
            );
        }
        return;
    }
    eps.push((r, how.to_string()));
    for c in snap.macvlan_children(r) {
        eps.push((c, format!("{how} {}, macvlan child {}", snap.port_name(r), snap.port_name(c))));
    }
}
