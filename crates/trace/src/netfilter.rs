//! iptables rules from `iptables-save` text, and an evaluator for the matches and targets
//! kube-proxy and knit-coordinator use. `-m statistic` rules fork the evaluation, so a
//! Service's chain yields every endpoint it can pick.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

/// Connection-tracking state of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum CtState {
    /// First packet of a connection.
    New,
    /// A packet of a known connection.
    Established,
    /// A packet conntrack can't place (e.g. a SYN-ACK it never saw the SYN of).
    Invalid,
}

impl CtState {
    fn name(self) -> &'static str {
        match self {
            CtState::New => "NEW",
            CtState::Established => "ESTABLISHED",
            CtState::Invalid => "INVALID",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum M {
    Src(IpNet),
    Dst(IpNet),
    Proto(String),
    InIf(String),
    OutIf(String),
    Dport(u16),
    Sport(u16),
    DstLocal,
    SrcLocal,
    Mark(u32, u32),
    CtState(Vec<String>),
    Statistic,
    Unknown(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum T {
    Jump(String),
    Goto(String),
    Accept,
    Drop,
    Reject,
    Return,
    Dnat(IpAddr, Option<u16>),
    Masquerade,
    Snat(IpAddr),
    Mark { and: u32, xor: u32 },
    ConnmarkSave,
    ConnmarkRestore,
    Other(String),
    None,
}

/// One rule.
#[derive(Debug, Clone)]
pub struct IptRule {
    /// The `-A …` line.
    pub text: String,
    matches: Vec<(bool, M)>,
    target: T,
}

/// One table: chains (with their policies) and rules.
#[derive(Debug, Clone, Default)]
pub struct Table {
    /// Chain → policy (`ACCEPT`/`DROP` for built-in chains, `-` for user chains).
    pub policies: BTreeMap<String, String>,
    /// Chain → rules.
    pub chains: BTreeMap<String, Vec<IptRule>>,
}

/// A namespace's tables.
#[derive(Debug, Clone, Default)]
pub struct Tables {
    /// By table name.
    pub tables: BTreeMap<String, Table>,
}

fn tokenize(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            '\\' if quoted => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

fn parse_net(s: &str) -> Option<IpNet> {
    crate::snapshot::parse_net(s)
}

fn parse_num(s: &str) -> Option<u32> {
    match s.strip_prefix("0x") {
        Some(h) => u32::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

fn parse_mark(s: &str) -> (u32, u32) {
    match s.split_once('/') {
        Some((v, m)) => (parse_num(v).unwrap_or(0), parse_num(m).unwrap_or(u32::MAX)),
        None => (parse_num(s).unwrap_or(0), u32::MAX),
    }
}

fn parse_rule(text: &str) -> Option<(String, IptRule)> {
    let toks = tokenize(text);
    let mut it = toks.iter().map(String::as_str).peekable();
    if it.next()? != "-A" {
        return None;
    }
    let chain = it.next()?.to_string();
    let mut matches = Vec::new();
    let mut target = T::None;
    let mut neg = false;
    let mut tname = String::new();
    let mut topts: Vec<(String, Option<String>)> = Vec::new();
    let mut in_target = false;
    while let Some(t) = it.next() {
        if in_target {
            if t.starts_with("--") {
                let v =
                    if it.peek().is_some_and(|n| !n.starts_with("--")) { it.next().map(String::from) } else { None };
                topts.push((t.to_string(), v));
            }
            continue;
        }
        match t {
            "!" => {
                neg = true;
                continue;
            }
            "-s" | "--source" => {
                matches.push((neg, it.next().and_then(parse_net).map(M::Src).unwrap_or(M::Unknown("-s".into()))))
            }
            "-d" | "--destination" => {
                matches.push((neg, it.next().and_then(parse_net).map(M::Dst).unwrap_or(M::Unknown("-d".into()))))
            }
            "-p" | "--protocol" => matches.push((neg, M::Proto(it.next().unwrap_or("").to_string()))),
            "-i" | "--in-interface" => matches.push((neg, M::InIf(it.next().unwrap_or("").to_string()))),
            "-o" | "--out-interface" => matches.push((neg, M::OutIf(it.next().unwrap_or("").to_string()))),
            "-m" | "--match" => {
                let module = it.next().unwrap_or("");
                if module == "statistic" {
                    matches.push((false, M::Statistic));
                }
                // Options follow as --x; handled below.
            }
            "--dport" | "--destination-port" => matches.push((
                neg,
                it.next().and_then(|p| p.parse().ok()).map(M::Dport).unwrap_or(M::Unknown("--dport".into())),
            )),
            "--sport" | "--source-port" => matches.push((
                neg,
                it.next().and_then(|p| p.parse().ok()).map(M::Sport).unwrap_or(M::Unknown("--sport".into())),
            )),
            "--dst-type" => {
                let v = it.next().unwrap_or("");
                matches.push((neg, if v == "LOCAL" { M::DstLocal } else { M::Unknown(format!("--dst-type {v}")) }));
            }
            "--src-type" => {
                let v = it.next().unwrap_or("");
                matches.push((neg, if v == "LOCAL" { M::SrcLocal } else { M::Unknown(format!("--src-type {v}")) }));
            }
            "--mark" => {
                let (v, m) = parse_mark(it.next().unwrap_or("0"));
                matches.push((neg, M::Mark(v, m)));
            }
            "--ctstate" | "--state" => {
                let v = it.next().unwrap_or("");
                matches.push((neg, M::CtState(v.split(',').map(String::from).collect())));
            }
            "--comment" | "--mode" | "--probability" | "--every" | "--packet" => {
                it.next();
            }
            "-j" | "--jump" | "-g" | "--goto" => {
                tname = it.next().unwrap_or("").to_string();
                in_target = true;
                if t == "-g" || t == "--goto" {
                    target = T::Goto(tname.clone());
                }
            }
            other => {
                if other.starts_with('-') {
                    let v = if it.peek().is_some_and(|n| !n.starts_with('-')) { it.next().unwrap_or("") } else { "" };
                    matches.push((neg, M::Unknown(format!("{other} {v}"))));
                }
            }
        }
        neg = false;
    }
    let opt = |k: &str| topts.iter().find(|(n, _)| n == k).and_then(|(_, v)| v.clone());
    let has = |k: &str| topts.iter().any(|(n, _)| n == k);
    if !matches!(target, T::Goto(_)) {
        target = match tname.as_str() {
            "" => T::None,
            "ACCEPT" => T::Accept,
            "DROP" => T::Drop,
            "REJECT" => T::Reject,
            "RETURN" => T::Return,
            "MASQUERADE" => T::Masquerade,
            "SNAT" => match opt("--to-source").and_then(|s| s.split(':').next().and_then(|a| a.parse().ok())) {
                Some(a) => T::Snat(a),
                None => T::Other("SNAT".into()),
            },
            "DNAT" => {
                let to = opt("--to-destination").unwrap_or_default();
                let (ip, port) = match to.rsplit_once(':') {
                    Some((a, p)) if !a.contains(':') || a.starts_with('[') => {
                        (a.trim_matches(['[', ']']).parse().ok(), p.parse().ok())
                    }
                    _ => (to.parse().ok(), None),
                };
                match ip {
                    Some(ip) => T::Dnat(ip, port),
                    None => T::Other(format!("DNAT {to}")),
                }
            }
            "MARK" => {
                if let Some(v) = opt("--set-xmark") {
                    let (v, m) = parse_mark(&v);
                    T::Mark { and: !m, xor: v }
                } else if let Some(v) = opt("--set-mark") {
                    let (v, m) = parse_mark(&v);
                    T::Mark { and: !m, xor: v }
                } else if let Some(v) = opt("--or-mark") {
                    let v = parse_num(&v).unwrap_or(0);
                    T::Mark { and: !v, xor: v }
                } else if let Some(v) = opt("--xor-mark") {
                    T::Mark { and: u32::MAX, xor: parse_num(&v).unwrap_or(0) }
                } else if let Some(v) = opt("--and-mark") {
                    T::Mark { and: parse_num(&v).unwrap_or(u32::MAX), xor: 0 }
                } else {
                    T::Other("MARK".into())
                }
            }
            "CONNMARK" if has("--save-mark") => T::ConnmarkSave,
            "CONNMARK" if has("--restore-mark") => T::ConnmarkRestore,
            // Any other name may be a chain (Calico's are lower-case: cali-FORWARD); the
            // table's parse turns names that are not chains back into opaque targets.
            name => T::Jump(name.to_string()),
        };
    }
    Some((chain, IptRule { text: text.to_string(), matches, target }))
}

impl Table {
    /// Parses one table's `iptables-save` text.
    pub fn parse(text: &str) -> Table {
        let mut t = Table::default();
        for line in text.lines() {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix(':') {
                let mut parts = rest.split_whitespace();
                if let (Some(c), Some(p)) = (parts.next(), parts.next()) {
                    t.policies.insert(c.to_string(), p.to_string());
                    t.chains.entry(c.to_string()).or_default();
                }
            } else if line.starts_with("-A ") {
                if let Some((chain, r)) = parse_rule(line) {
                    t.chains.entry(chain).or_default().push(r);
                }
            }
        }
        // Built-in targets that are real chains here are jumps; others (LOG, …) stay opaque.
        let names: Vec<String> = t.chains.keys().cloned().collect();
        for rules in t.chains.values_mut() {
            for r in rules {
                if let T::Jump(n) = &r.target {
                    if !names.contains(n) {
                        r.target = T::Other(n.clone());
                    }
                }
            }
        }
        t
    }

    /// Rules of a chain.
    pub fn rules(&self, chain: &str) -> &[IptRule] {
        self.chains.get(chain).map(Vec::as_slice).unwrap_or(&[])
    }
}

impl Tables {
    /// Parses every table.
    pub fn parse_all(texts: &BTreeMap<String, String>) -> Tables {
        Tables { tables: texts.iter().map(|(k, v)| (k.clone(), Table::parse(v))).collect() }
    }

    /// A table (empty when absent).
    pub fn get(&self, name: &str) -> Option<&Table> {
        self.tables.get(name)
    }
}

/// What the evaluator knows about a packet.
#[derive(Clone)]
pub struct Pkt<'a> {
    /// Source.
    pub src: IpAddr,
    /// Destination.
    pub dst: IpAddr,
    /// `tcp`, `udp` or `icmp`.
    pub proto: &'a str,
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// Incoming interface.
    pub iif: Option<&'a str>,
    /// Outgoing interface.
    pub oif: Option<&'a str>,
    /// Conntrack state.
    pub ct: CtState,
    /// Whether an address is local to the namespace (`-m addrtype … LOCAL`).
    pub is_local: &'a dyn Fn(IpAddr) -> bool,
}

/// The result of one way through a chain.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// `None`: accepted (or fell through to an ACCEPT policy).
    pub dropped_by: Option<String>,
    /// DNAT to (address, port).
    pub dnat: Option<(IpAddr, Option<u16>)>,
    /// The DNAT rule.
    pub dnat_rule: Option<String>,
    /// MASQUERADE (or SNAT to an address).
    pub masquerade: Option<Option<IpAddr>>,
    /// The masquerade rule.
    pub masq_rule: Option<String>,
    /// Packet mark after the chain.
    pub mark: u32,
    /// Conntrack mark after the chain.
    pub ctmark: u32,
    /// Rules that marked the packet for masquerade (kube-proxy's KUBE-MARK-MASQ jumps).
    pub notes: Vec<String>,
}

fn iface_match(pat: &str, name: Option<&str>) -> bool {
    let Some(n) = name else { return false };
    match pat.strip_suffix('+') {
        Some(p) => n.starts_with(p),
        None => n == pat,
    }
}

fn match_one(m: &M, p: &Pkt<'_>, mark: u32) -> bool {
    match m {
        M::Src(n) => n.contains(&p.src),
        M::Dst(n) => n.contains(&p.dst),
        M::Proto(pr) => pr == p.proto || pr == "all",
        M::InIf(i) => iface_match(i, p.iif),
        M::OutIf(o) => iface_match(o, p.oif),
        M::Dport(d) => p.proto != "icmp" && *d == p.dport,
        M::Sport(s) => p.proto != "icmp" && *s == p.sport,
        M::DstLocal => (p.is_local)(p.dst),
        M::SrcLocal => (p.is_local)(p.src),
        M::Mark(v, m) => mark & m == *v,
        M::CtState(states) => states.iter().any(|x| x == p.ct.name()),
        M::Statistic => true,
        M::Unknown(_) => false,
    }
}

const MAX_OUTCOMES: usize = 256;

/// Evaluates `chain` of `table` (a built-in chain: its policy applies at the end).
pub fn eval(table: Option<&Table>, chain: &str, p: &Pkt<'_>, mark: u32, ctmark: u32) -> Vec<Outcome> {
    let start = Outcome { mark, ctmark, ..Default::default() };
    let Some(t) = table else { return vec![start] };
    let mut out = Vec::new();
    for (o, fin) in walk(t, chain, p, start, 0) {
        let mut o = o;
        if !fin && t.policies.get(chain).is_some_and(|pol| pol == "DROP") {
            o.dropped_by = Some(format!("policy DROP of chain {chain}"));
        }
        out.push(o);
    }
    out
}

/// Runs a chain; each result says whether a terminal verdict was reached.
fn walk(t: &Table, chain: &str, p: &Pkt<'_>, start: Outcome, depth: usize) -> Vec<(Outcome, bool)> {
    if depth > 32 {
        return vec![(start, false)];
    }
    // Pending ways through the chain: (rule index to look at, state).
    let mut todo = vec![(0usize, start)];
    let mut done = Vec::new();
    let rules = t.rules(chain);
    while let Some((mut i, mut st)) = todo.pop() {
        let mut finished = false;
        let mut consumed = false;
        while i < rules.len() {
            let r = &rules[i];
            i += 1;
            let stat = r.matches.iter().any(|(_, m)| *m == M::Statistic);
            if !r.matches.iter().all(|(neg, m)| match_one(m, p, st.mark) != *neg) {
                continue;
            }
            if stat && todo.len() + done.len() < MAX_OUTCOMES {
                // Fork: the way where this random pick did not fire goes on with the next rule.
                todo.push((i, st.clone()));
            }
            match &r.target {
                T::Accept => {
                    finished = true;
                    break;
                }
                T::Drop | T::Reject => {
                    st.dropped_by = Some(r.text.clone());
                    finished = true;
                    break;
                }
                T::Return => break,
                T::Dnat(a, port) => {
                    st.dnat = Some((*a, *port));
                    st.dnat_rule = Some(r.text.clone());
                    finished = true;
                    break;
                }
                T::Masquerade => {
                    st.masquerade = Some(None);
                    st.masq_rule = Some(r.text.clone());
                    finished = true;
                    break;
                }
                T::Snat(a) => {
                    st.masquerade = Some(Some(*a));
                    st.masq_rule = Some(r.text.clone());
                    finished = true;
                    break;
                }
                T::Mark { and, xor } => st.mark = (st.mark & and) ^ xor,
                T::ConnmarkSave => st.ctmark = st.mark,
                T::ConnmarkRestore => st.mark = st.ctmark,
                T::Jump(c) | T::Goto(c) => {
                    if c == "KUBE-MARK-MASQ" {
                        st.notes.push(r.text.clone());
                    }
                    let goto = matches!(r.target, T::Goto(_));
                    for (s, fin) in walk(t, c, p, st.clone(), depth + 1) {
                        if fin || goto {
                            done.push((s, fin));
                        } else {
                            todo.push((i, s));
                        }
                    }
                    consumed = true;
                    break;
                }
                T::Other(_) | T::None => {}
            }
        }
        if !consumed {
            done.push((st, finished));
        }
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAT: &str = r#"*nat
:PREROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-A - [0:0]
:KUBE-SEP-1 - [0:0]
:KUBE-SEP-2 - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-EXT-A - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-SERVICES -m comment --comment "ns/a cluster IP" -m tcp -p tcp -d 10.233.0.10/32 --dport 80 -j KUBE-SVC-A
-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-NODEPORTS -m comment --comment ns/a -m tcp -p tcp --dport 30080 -j KUBE-EXT-A
-A KUBE-EXT-A -m comment --comment "masquerade traffic for ns/a external destinations" -j KUBE-MARK-MASQ
-A KUBE-EXT-A -j KUBE-SVC-A
-A KUBE-SVC-A ! -s 10.233.64.0/18 -d 10.233.0.10/32 -p tcp -m comment --comment "ns/a cluster IP" -m tcp --dport 80 -j KUBE-MARK-MASQ
-A KUBE-SVC-A -m comment --comment "ns/a -> 10.233.64.1:8080" -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-1
-A KUBE-SVC-A -m comment --comment "ns/a -> 10.233.64.2:8080" -j KUBE-SEP-2
-A KUBE-SEP-1 -s 10.233.64.1/32 -m comment --comment ns/a -j KUBE-MARK-MASQ
-A KUBE-SEP-1 -p tcp -m comment --comment ns/a -m tcp -j DNAT --to-destination 10.233.64.1:8080
-A KUBE-SEP-2 -s 10.233.64.2/32 -m comment --comment ns/a -j KUBE-MARK-MASQ
-A KUBE-SEP-2 -p tcp -m comment --comment ns/a -m tcp -j DNAT --to-destination 10.233.64.2:8080
COMMIT
"#;

    fn pkt<'a>(src: &str, dst: &str, dport: u16, local: &'a dyn Fn(IpAddr) -> bool) -> Pkt<'a> {
        Pkt {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            proto: "tcp",
            sport: 40000,
            dport,
            iif: Some("eth0"),
            oif: None,
            ct: CtState::New,
            is_local: local,
        }
    }

    #[test]
    fn cluster_ip_forks_over_endpoints() {
        let t = Table::parse(NAT);
        let no = |_: IpAddr| false;
        let outs = eval(Some(&t), "PREROUTING", &pkt("10.233.64.9", "10.233.0.10", 80, &no), 0, 0);
        let mut eps: Vec<_> = outs.iter().filter_map(|o| o.dnat).collect();
        eps.sort();
        assert_eq!(
            eps,
            vec![("10.233.64.1".parse().unwrap(), Some(8080)), ("10.233.64.2".parse().unwrap(), Some(8080))]
        );
        assert!(outs.iter().all(|o| o.mark == 0), "pod sources aren't masqueraded");
        let outs = eval(Some(&t), "PREROUTING", &pkt("172.16.2.2", "10.233.0.10", 80, &no), 0, 0);
        assert!(outs.iter().all(|o| o.mark == 0x4000 && o.dnat.is_some()));
        assert_eq!(outs.len(), 2);
    }

    #[test]
    fn node_port_needs_a_local_destination() {
        let t = Table::parse(NAT);
        let local = |ip: IpAddr| ip == "172.16.1.2".parse::<IpAddr>().unwrap();
        let outs = eval(Some(&t), "PREROUTING", &pkt("198.51.100.10", "172.16.1.2", 30080, &local), 0, 0);
        assert_eq!(outs.len(), 2);
        assert!(outs.iter().all(|o| o.mark == 0x4000 && o.dnat.is_some()));
        let outs = eval(Some(&t), "PREROUTING", &pkt("198.51.100.10", "172.16.1.3", 30080, &local), 0, 0);
        assert!(outs.iter().all(|o| o.dnat.is_none()));
    }

    #[test]
    fn invalid_drop_and_connmark() {
        let f = Table::parse(
            "*filter\n:FORWARD ACCEPT [0:0]\n:KUBE-FORWARD - [0:0]\n-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n-A KUBE-FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\nCOMMIT\n",
        );
        let no = |_: IpAddr| false;
        let mut p = pkt("10.233.64.1", "172.16.2.2", 80, &no);
        p.ct = CtState::Invalid;
        let o = eval(Some(&f), "FORWARD", &p, 0, 0);
        assert_eq!(o[0].dropped_by.as_deref(), Some("-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP"));
        p.ct = CtState::Established;
        assert!(eval(Some(&f), "FORWARD", &p, 0, 0)[0].dropped_by.is_none());
        let m = Table::parse(
            "*mangle\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:KNIT-COORD-OUT - [0:0]\n:KNIT-COORD-PRE - [0:0]\n-A PREROUTING -j KNIT-COORD-PRE\n-A OUTPUT -j KNIT-COORD-OUT\n-A KNIT-COORD-OUT -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff\n-A KNIT-COORD-PRE -i veth0 -m conntrack --ctstate NEW -j MARK --set-xmark 0x1/0xffffffff\n-A KNIT-COORD-PRE -m mark --mark 0x1 -j CONNMARK --save-mark --nfmask 0xffffffff --ctmask 0xffffffff\nCOMMIT\n",
        );
        let mut p = pkt("10.233.64.1", "172.16.2.2", 80, &no);
        p.iif = Some("veth0");
        let o = eval(Some(&m), "PREROUTING", &p, 0, 0);
        assert_eq!((o[0].mark, o[0].ctmark), (1, 1));
        p.iif = None;
        let o = eval(Some(&m), "OUTPUT", &p, 0, 1);
        assert_eq!(o[0].mark, 1);
    }
}
