//! kube-proxy, iptables mode, as a pure function: Services in, `iptables-restore`
//! text for the nat and filter tables out.
//!
//! The lab runs no Kubernetes, but its cells only mean something if nodes NAT
//! Service traffic exactly as kube-proxy does (the seeds' failures come from
//! kube-proxy's chains, marks and its INVALID drop). So chain names, hashes,
//! rule order and rule shapes follow `pkg/proxy/iptables/proxier.go` (see
//! `shared/reference/calico-kubeproxy.md`, section 4); only features the lab has
//! no use for (session affinity, load balancers, external IPs, health check
//! node ports) are left out.
//!
//! The text declares the built-in chains too and is meant to be loaded without
//! `--noflush`: in a lab node, kube-proxy owns the nat and filter tables, and a
//! full reload is how the jump rules stay single.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use sha2::{Digest, Sha256};

use crate::topology::{self, TrafficPolicy};

/// kube-proxy's masquerade mark (`1 << 14`).
pub const MASQ_MARK: &str = "0x4000";

/// L4 protocol of a Service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// Lowercase name, as used in chain hashes and `-p`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// Which kube-proxy behaviour to mimic for the `KUBE-FORWARD` INVALID drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Before 1.29: the drop rule is always installed.
    Legacy,
    /// 1.29 and later: installed only when `nf_conntrack_tcp_be_liberal` is 0.
    Modern,
}

impl Mode {
    /// Whether `-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP` is installed.
    pub fn drops_invalid(self, tcp_be_liberal: bool) -> bool {
        match self {
            Mode::Legacy => true,
            Mode::Modern => !tcp_be_liberal,
        }
    }
}

/// One endpoint of a Service port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Pod IP.
    pub ip: IpAddr,
    /// Target port.
    pub port: u16,
    /// The node the pod runs on (decides "local" for `externalTrafficPolicy: Local`).
    pub node: String,
}

impl Endpoint {
    fn addr(&self) -> String {
        SocketAddr::new(self.ip, self.port).to_string()
    }
}

/// One port of one Service: kube-proxy's unit of rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// Kubernetes namespace.
    pub namespace: String,
    /// Service name.
    pub name: String,
    /// Port name (empty for an unnamed port).
    pub port_name: String,
    /// Protocol.
    pub protocol: Protocol,
    /// ClusterIP.
    pub cluster_ip: IpAddr,
    /// Service port.
    pub port: u16,
    /// NodePort, if any.
    pub node_port: Option<u16>,
    /// `externalTrafficPolicy`.
    pub external_traffic_policy: TrafficPolicy,
    /// Ready endpoints, in the order they are balanced over.
    pub endpoints: Vec<Endpoint>,
}

impl ServicePort {
    /// `ns/name:port` (`ns/name` for an unnamed port), kube-proxy's ServicePortName.
    pub fn port_name_string(&self) -> String {
        if self.port_name.is_empty() {
            format!("{}/{}", self.namespace, self.name)
        } else {
            format!("{}/{}:{}", self.namespace, self.name, self.port_name)
        }
    }

    fn hash(&self) -> String {
        port_proto_hash(&self.port_name_string(), self.protocol, "")
    }

    /// `KUBE-SVC-<hash>`: all endpoints.
    pub fn svc_chain(&self) -> String {
        format!("KUBE-SVC-{}", self.hash())
    }

    /// `KUBE-SVL-<hash>`: this node's endpoints only.
    pub fn svl_chain(&self) -> String {
        format!("KUBE-SVL-{}", self.hash())
    }

    /// `KUBE-EXT-<hash>`: where NodePort traffic goes.
    pub fn ext_chain(&self) -> String {
        format!("KUBE-EXT-{}", self.hash())
    }

    /// `KUBE-SEP-<hash>` of one endpoint.
    pub fn sep_chain(&self, ep: &Endpoint) -> String {
        format!("KUBE-SEP-{}", port_proto_hash(&self.port_name_string(), self.protocol, &ep.addr()))
    }
}

/// The Service ports of one lab Service: kube-proxy handles one protocol per
/// port, and the lab probes Services over TCP and UDP, so every lab Service
/// has a port named `tcp` and one named `udp` with the same numbers.
/// `endpoints` are (pod IP, node name) pairs; the target port comes from `svc`.
pub fn lab_service_ports(namespace: &str, svc: &topology::Service, endpoints: &[(IpAddr, String)]) -> Vec<ServicePort> {
    [Protocol::Tcp, Protocol::Udp]
        .into_iter()
        .map(|protocol| ServicePort {
            namespace: namespace.to_string(),
            name: svc.name.clone(),
            port_name: protocol.as_str().to_string(),
            protocol,
            cluster_ip: svc.cluster_ip,
            port: svc.port,
            node_port: svc.node_port,
            external_traffic_policy: svc.external_traffic_policy,
            endpoints: endpoints
                .iter()
                .map(|(ip, node)| Endpoint { ip: *ip, port: svc.target_port, node: node.clone() })
                .collect(),
        })
        .collect()
}

/// The node kube-proxy runs on, and how it is configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// This node's name (matched against [`Endpoint::node`]).
    pub node: String,
    /// The cluster (pod) CIDR: traffic from outside it is masqueraded, and
    /// pods in it are treated as local for `externalTrafficPolicy: Local`.
    pub cluster_cidr: IpNet,
    /// Which kube-proxy generation to mimic.
    pub mode: Mode,
    /// The node's `net.netfilter.nf_conntrack_tcp_be_liberal != 0`.
    pub tcp_be_liberal: bool,
}

/// Generated rules, one `iptables-restore` table section each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// `*nat ... COMMIT`.
    pub nat: String,
    /// `*filter ... COMMIT`.
    pub filter: String,
}

impl Rules {
    /// Both tables, ready for `iptables-restore` (without `--noflush`).
    pub fn restore_text(&self) -> String {
        format!("{}{}", self.nat, self.filter)
    }
}

/// One table being written: chain declarations first, then rules, as kube-proxy writes them.
struct Table {
    name: &'static str,
    builtin: &'static [&'static str],
    chains: Vec<String>,
    rules: Vec<String>,
}

impl Table {
    fn new(name: &'static str, builtin: &'static [&'static str]) -> Table {
        Table { name, builtin, chains: Vec::new(), rules: Vec::new() }
    }

    fn chain(&mut self, name: &str) {
        if !self.chains.iter().any(|c| c == name) {
            self.chains.push(name.to_string());
        }
    }

    fn rule(&mut self, chain: &str, args: &str) {
        self.rules.push(format!("-A {chain} {args}"));
    }

    fn render(&self) -> String {
        let mut out = format!("*{}\n", self.name);
        for c in self.builtin {
            // Writing into a String cannot fail.
            let _ = writeln!(out, ":{c} ACCEPT [0:0]");
        }
        for c in &self.chains {
            let _ = writeln!(out, ":{c} - [0:0]");
        }
        for r in &self.rules {
            out.push_str(r);
            out.push('\n');
        }
        out.push_str("COMMIT\n");
        out
    }
}

/// `-m comment --comment X`, quoted only when needed (as kube-proxy does).
fn comment(text: &str) -> String {
    if text.contains(char::is_whitespace) {
        format!("-m comment --comment \"{text}\"")
    } else {
        format!("-m comment --comment {text}")
    }
}

/// Generates the node's kube-proxy rules for `services`.
pub fn generate(cfg: &NodeConfig, services: &[ServicePort]) -> Rules {
    let v4 = cfg.cluster_cidr.addr().is_ipv4();
    let mut nat = Table::new("nat", &["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"]);
    let mut filter = Table::new("filter", &["INPUT", "FORWARD", "OUTPUT"]);

    for c in ["KUBE-NODEPORTS", "KUBE-SERVICES", "KUBE-MARK-MASQ", "KUBE-POSTROUTING", "KUBE-PROXY-CANARY"] {
        nat.chain(c);
    }
    for c in [
        "KUBE-NODEPORTS",
        "KUBE-SERVICES",
        "KUBE-EXTERNAL-SERVICES",
        "KUBE-FIREWALL",
        "KUBE-FORWARD",
        "KUBE-PROXY-FIREWALL",
        "KUBE-PROXY-CANARY",
    ] {
        filter.chain(c);
    }

    jump_rules(&mut nat, &mut filter);
    static_rules(cfg, v4, &mut nat, &mut filter);

    let mut service_rules = Vec::new();
    for sp in services {
        service(cfg, sp, &mut nat, &mut filter, &mut service_rules);
    }
    // KUBE-SERVICES rules go after the per-service chains, with the NodePort
    // catch-all last ("this must be the last rule in this chain").
    nat.rules.extend(service_rules);
    nat.rule(
        "KUBE-SERVICES",
        &format!(
            "{} -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS",
            comment("kubernetes service nodeports; NOTE: this must be the last rule in this chain")
        ),
    );

    Rules { nat: nat.render(), filter: filter.render() }
}

/// The built-in chains' jumps, in the order iptables-save shows them after
/// kube-proxy prepended each one (so the last prepended comes first).
fn jump_rules(nat: &mut Table, filter: &mut Table) {
    let new = "-m conntrack --ctstate NEW";
    filter.rule("INPUT", &format!("{new} {} -j KUBE-PROXY-FIREWALL", comment("kubernetes load balancer firewall")));
    filter.rule("INPUT", &format!("{} -j KUBE-NODEPORTS", comment("kubernetes health check service ports")));
    filter.rule(
        "INPUT",
        &format!("{new} {} -j KUBE-EXTERNAL-SERVICES", comment("kubernetes externally-visible service portals")),
    );
    filter.rule("INPUT", "-j KUBE-FIREWALL");
    filter.rule("FORWARD", &format!("{new} {} -j KUBE-PROXY-FIREWALL", comment("kubernetes load balancer firewall")));
    filter.rule("FORWARD", &format!("{} -j KUBE-FORWARD", comment("kubernetes forwarding rules")));
    filter.rule("FORWARD", &format!("{new} {} -j KUBE-SERVICES", comment("kubernetes service portals")));
    filter.rule(
        "FORWARD",
        &format!("{new} {} -j KUBE-EXTERNAL-SERVICES", comment("kubernetes externally-visible service portals")),
    );
    filter.rule("OUTPUT", &format!("{new} {} -j KUBE-PROXY-FIREWALL", comment("kubernetes load balancer firewall")));
    filter.rule("OUTPUT", &format!("{new} {} -j KUBE-SERVICES", comment("kubernetes service portals")));
    filter.rule("OUTPUT", "-j KUBE-FIREWALL");
    nat.rule("PREROUTING", &format!("{} -j KUBE-SERVICES", comment("kubernetes service portals")));
    nat.rule("OUTPUT", &format!("{} -j KUBE-SERVICES", comment("kubernetes service portals")));
    nat.rule("POSTROUTING", &format!("{} -j KUBE-POSTROUTING", comment("kubernetes postrouting rules")));
}

/// Rules that do not depend on Services: masquerade marking and KUBE-FORWARD.
fn static_rules(cfg: &NodeConfig, v4: bool, nat: &mut Table, filter: &mut Table) {
    nat.rule("KUBE-POSTROUTING", &format!("-m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN"));
    // Clear the mark so a packet re-entering the stack (e.g. tunnelled) is not masqueraded twice.
    nat.rule("KUBE-POSTROUTING", &format!("-j MARK --xor-mark {MASQ_MARK}"));
    nat.rule(
        "KUBE-POSTROUTING",
        &format!("{} -j MASQUERADE --random-fully", comment("kubernetes service traffic requiring SNAT")),
    );
    nat.rule("KUBE-MARK-MASQ", &format!("-j MARK --or-mark {MASQ_MARK}"));

    if v4 {
        // Localhost NodePorts are on by default for IPv4; this keeps 127/8 from being reached from outside.
        filter.rule(
            "KUBE-FIREWALL",
            &format!(
                "{} -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP",
                comment("block incoming localnet connections")
            ),
        );
    }
    // The rule the seeds' asymmetric-path failures come from (kubernetes PR 74840, made
    // conditional on tcp_be_liberal by PR 120412 in 1.29).
    if cfg.mode.drops_invalid(cfg.tcp_be_liberal) {
        filter.rule("KUBE-FORWARD", "-m conntrack --ctstate INVALID -j DROP");
    }
    filter.rule(
        "KUBE-FORWARD",
        &format!("{} -m mark --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT", comment("kubernetes forwarding rules")),
    );
    filter.rule(
        "KUBE-FORWARD",
        &format!(
            "{} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            comment("kubernetes forwarding conntrack rule")
        ),
    );
}

/// Rules of one Service port; its KUBE-SERVICES rules go to `service_rules`.
fn service(cfg: &NodeConfig, sp: &ServicePort, nat: &mut Table, filter: &mut Table, service_rules: &mut Vec<String>) {
    let name = sp.port_name_string();
    let p = sp.protocol.as_str();
    let cluster_match = format!("-m {p} -p {p} -d {} --dport {}", sp.cluster_ip, sp.port);

    if sp.endpoints.is_empty() {
        // kube-proxy rejects instead of letting the packet go to the ClusterIP itself.
        filter.rule(
            "KUBE-SERVICES",
            &format!("{} {cluster_match} -j REJECT", comment(&format!("{name} has no endpoints"))),
        );
        if let Some(np) = sp.node_port {
            filter.rule(
                "KUBE-EXTERNAL-SERVICES",
                &format!(
                    "{} -m addrtype --dst-type LOCAL -m {p} -p {p} --dport {np} -j REJECT",
                    comment(&format!("{name} has no endpoints"))
                ),
            );
        }
        return;
    }

    let svc_chain = sp.svc_chain();
    let local: Vec<&Endpoint> = sp.endpoints.iter().filter(|e| e.node == cfg.node).collect();
    let policy_local = sp.external_traffic_policy == TrafficPolicy::Local;

    service_rules
        .push(format!("-A KUBE-SERVICES {} {cluster_match} -j {svc_chain}", comment(&format!("{name} cluster IP"))));

    // KUBE-SVC: masquerade what does not come from a pod, then pick an endpoint.
    nat.chain(&svc_chain);
    nat.rule(
        &svc_chain,
        &format!(
            "{} {cluster_match} ! -s {} -j KUBE-MARK-MASQ",
            comment(&format!("{name} cluster IP")),
            cfg.cluster_cidr
        ),
    );
    let all: Vec<&Endpoint> = sp.endpoints.iter().collect();
    balance(nat, sp, &svc_chain, &all);

    if let Some(np) = sp.node_port {
        let ext = sp.ext_chain();
        nat.chain(&ext);
        nat.rule("KUBE-NODEPORTS", &format!("{} -m {p} -p {p} --dport {np} -j {ext}", comment(&name)));
        if policy_local {
            // Pods and the node itself may use any endpoint; external clients
            // only this node's, without SNAT, so the pod sees their address.
            nat.rule(
                &ext,
                &format!(
                    "{} -s {} -j {svc_chain}",
                    comment(&format!("pod traffic for {name} external destinations")),
                    cfg.cluster_cidr
                ),
            );
            nat.rule(
                &ext,
                &format!(
                    "{} -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ",
                    comment(&format!("masquerade LOCAL traffic for {name} external destinations"))
                ),
            );
            nat.rule(
                &ext,
                &format!(
                    "{} -m addrtype --src-type LOCAL -j {svc_chain}",
                    comment(&format!("route LOCAL traffic for {name} external destinations"))
                ),
            );
            if local.is_empty() {
                // External traffic falls through KUBE-EXT un-NATed; filter drops it.
                filter.rule(
                    "KUBE-EXTERNAL-SERVICES",
                    &format!(
                        "{} -m addrtype --dst-type LOCAL -m {p} -p {p} --dport {np} -j DROP",
                        comment(&format!("{name} has no local endpoints"))
                    ),
                );
            } else {
                let svl = sp.svl_chain();
                nat.chain(&svl);
                nat.rule(&ext, &format!("-j {svl}"));
                balance(nat, sp, &svl, &local);
            }
        } else {
            nat.rule(
                &ext,
                &format!(
                    "{} -j KUBE-MARK-MASQ",
                    comment(&format!("masquerade traffic for {name} external destinations"))
                ),
            );
            nat.rule(&ext, &format!("-j {svc_chain}"));
        }
    }

    for ep in &sp.endpoints {
        let sep = sp.sep_chain(ep);
        nat.chain(&sep);
        // Hairpin: a pod reaching itself through the Service must see the node as source.
        nat.rule(&sep, &format!("{} -s {} -j KUBE-MARK-MASQ", comment(&name), ep.ip));
        nat.rule(&sep, &format!("{} -m {p} -p {p} -j DNAT --to-destination {}", comment(&name), ep.addr()));
    }
}

/// Endpoint i of n is taken with probability 1/(n-i), so each is equally likely;
/// the last rule matches unconditionally.
fn balance(nat: &mut Table, sp: &ServicePort, chain: &str, eps: &[&Endpoint]) {
    let name = sp.port_name_string();
    let n = eps.len();
    for (i, ep) in eps.iter().enumerate() {
        let c = comment(&format!("{name} -> {}", ep.addr()));
        let sep = sp.sep_chain(ep);
        if i + 1 < n {
            let prob = 1.0 / (n - i) as f64;
            nat.rule(chain, &format!("{c} -m statistic --mode random --probability {prob:.10} -j {sep}"));
        } else {
            nat.rule(chain, &format!("{c} -j {sep}"));
        }
    }
}

/// kube-proxy's chain-name hash: `base32(sha256(name + protocol + endpoint))[:16]`.
pub fn port_proto_hash(port_name: &str, protocol: Protocol, endpoint: &str) -> String {
    let digest = Sha256::new()
        .chain_update(port_name.as_bytes())
        .chain_update(protocol.as_str().as_bytes())
        .chain_update(endpoint.as_bytes())
        .finalize();
    let mut enc = base32(&digest);
    enc.truncate(16);
    enc
}

/// RFC 4648 base32 (Go's `base32.StdEncoding`), without padding: only the
/// first 16 characters are ever used.
fn base32(data: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(data.len().div_ceil(5) * 8);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for &b in data {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((acc >> bits) & 31) as usize]));
        }
        // Keep only the bits not yet emitted, so the accumulator never overflows.
        acc &= (1 << bits) - 1;
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((acc << (5 - bits)) & 31) as usize]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(ip: &str, node: &str) -> Endpoint {
        Endpoint { ip: ip.parse().expect("ip"), port: 80, node: node.into() }
    }

    fn svc1(endpoints: Vec<Endpoint>, policy: TrafficPolicy) -> ServicePort {
        ServicePort {
            namespace: "ns1".into(),
            name: "svc1".into(),
            port_name: "p80".into(),
            protocol: Protocol::Tcp,
            cluster_ip: "172.30.0.41".parse().expect("ip"),
            port: 80,
            node_port: Some(3001),
            external_traffic_policy: policy,
            endpoints,
        }
    }

    fn cfg(mode: Mode, tcp_be_liberal: bool) -> NodeConfig {
        NodeConfig { node: "node1".into(), cluster_cidr: "10.0.0.0/8".parse().expect("cidr"), mode, tcp_be_liberal }
    }

    #[test]
    fn chain_names_match_kube_proxy() {
        // Values from kube-proxy's own proxier_test.go.
        let sp = svc1(vec![ep("10.180.0.1", "node1")], TrafficPolicy::Cluster);
        assert_eq!(sp.svc_chain(), "KUBE-SVC-XPGD46QRK7WJZT7O");
        assert_eq!(sp.ext_chain(), "KUBE-EXT-XPGD46QRK7WJZT7O");
        assert_eq!(sp.sep_chain(&sp.endpoints[0]), "KUBE-SEP-SXIVWICOYRO3J4NJ");
        let mut svc2 = sp.clone();
        svc2.namespace = "ns2".into();
        svc2.name = "svc2".into();
        assert_eq!(svc2.svc_chain(), "KUBE-SVC-GNZBNJ2PO5MGZ6GT");
    }

    #[test]
    fn base32_matches_rfc4648() {
        assert_eq!(base32(b""), "");
        assert_eq!(base32(b"f"), "MY");
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
    }

    #[test]
    fn invalid_drop_depends_on_mode() {
        assert!(Mode::Legacy.drops_invalid(true));
        assert!(Mode::Legacy.drops_invalid(false));
        assert!(Mode::Modern.drops_invalid(false));
        assert!(!Mode::Modern.drops_invalid(true));
        let rule = "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n";
        assert!(generate(&cfg(Mode::Legacy, true), &[]).filter.contains(rule));
        assert!(!generate(&cfg(Mode::Modern, true), &[]).filter.contains(rule));
        assert!(generate(&cfg(Mode::Modern, false), &[]).filter.contains(rule));
    }

    #[test]
    fn cluster_policy_rules() {
        let sp = svc1(vec![ep("10.180.0.1", "node1"), ep("10.180.1.1", "node2")], TrafficPolicy::Cluster);
        let rules = generate(&cfg(Mode::Legacy, false), &[sp]);
        let want = r#"*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-PROXY-CANARY - [0:0]
:KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]
:KUBE-EXT-XPGD46QRK7WJZT7O - [0:0]
:KUBE-SEP-SXIVWICOYRO3J4NJ - [0:0]
:KUBE-SEP-TOIS5JUHRKSSXDL7 - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-SXIVWICOYRO3J4NJ
-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.180.1.1:80" -j KUBE-SEP-TOIS5JUHRKSSXDL7
-A KUBE-NODEPORTS -m comment --comment ns1/svc1:p80 -m tcp -p tcp --dport 3001 -j KUBE-EXT-XPGD46QRK7WJZT7O
-A KUBE-EXT-XPGD46QRK7WJZT7O -m comment --comment "masquerade traffic for ns1/svc1:p80 external destinations" -j KUBE-MARK-MASQ
-A KUBE-EXT-XPGD46QRK7WJZT7O -j KUBE-SVC-XPGD46QRK7WJZT7O
-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -s 10.180.0.1 -j KUBE-MARK-MASQ
-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.1:80
-A KUBE-SEP-TOIS5JUHRKSSXDL7 -m comment --comment ns1/svc1:p80 -s 10.180.1.1 -j KUBE-MARK-MASQ
-A KUBE-SEP-TOIS5JUHRKSSXDL7 -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.1.1:80
-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O
-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
COMMIT
"#;
        assert_eq!(rules.nat, want);
        let want_filter_tail = r#"-A KUBE-FIREWALL -m comment --comment "block incoming localnet connections" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
COMMIT
"#;
        assert!(rules.filter.starts_with("*filter\n:INPUT ACCEPT [0:0]\n"), "{}", rules.filter);
        assert!(rules.filter.ends_with(want_filter_tail), "{}", rules.filter);
        assert!(rules
            .filter
            .contains("-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n"));
    }

    /// The rules for `chain`, in order, without the `-A <chain> ` prefix.
    fn chain_rules<'a>(text: &'a str, chain: &str) -> Vec<&'a str> {
        let prefix = format!("-A {chain} ");
        text.lines().filter_map(|l| l.strip_prefix(prefix.as_str())).collect()
    }

    #[test]
    fn local_policy_uses_only_local_endpoints_for_external_traffic() {
        let eps = vec![ep("10.180.0.1", "node1"), ep("10.180.1.1", "node2"), ep("10.180.0.2", "node1")];
        let sp = svc1(eps, TrafficPolicy::Local);
        let rules = generate(&cfg(Mode::Modern, true), std::slice::from_ref(&sp));
        let (svc, ext, svl) = (sp.svc_chain(), sp.ext_chain(), sp.svl_chain());
        assert_eq!(
            chain_rules(&rules.nat, &ext),
            [
                format!("-m comment --comment \"pod traffic for ns1/svc1:p80 external destinations\" -s 10.0.0.0/8 -j {svc}"),
                "-m comment --comment \"masquerade LOCAL traffic for ns1/svc1:p80 external destinations\" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ".to_string(),
                format!("-m comment --comment \"route LOCAL traffic for ns1/svc1:p80 external destinations\" -m addrtype --src-type LOCAL -j {svc}"),
                format!("-j {svl}"),
            ]
        );
        let sep = |i: usize| sp.sep_chain(&sp.endpoints[i]);
        assert_eq!(
            chain_rules(&rules.nat, &svl),
            [
                format!("-m comment --comment \"ns1/svc1:p80 -> 10.180.0.1:80\" -m statistic --mode random --probability 0.5000000000 -j {}", sep(0)),
                format!("-m comment --comment \"ns1/svc1:p80 -> 10.180.0.2:80\" -j {}", sep(2)),
            ]
        );
        // No masquerade rule in SVL; the cluster chain still balances over all three.
        let svc_rules = chain_rules(&rules.nat, &svc);
        assert_eq!(svc_rules.len(), 4);
        assert!(svc_rules[1].contains("--probability 0.3333333333"), "{}", svc_rules[1]);
        assert!(!rules.filter.contains("INVALID"));

        // On a node without local endpoints external traffic is dropped, and there is no SVL chain.
        let other = NodeConfig { node: "node3".into(), ..cfg(Mode::Modern, true) };
        let rules = generate(&other, std::slice::from_ref(&sp));
        assert!(!rules.nat.contains(&svl));
        assert_eq!(chain_rules(&rules.nat, &ext).len(), 3);
        assert_eq!(
            chain_rules(&rules.filter, "KUBE-EXTERNAL-SERVICES"),
            ["-m comment --comment \"ns1/svc1:p80 has no local endpoints\" -m addrtype --dst-type LOCAL -m tcp -p tcp --dport 3001 -j DROP"]
        );
    }

    #[test]
    fn services_without_endpoints_are_rejected() {
        let mut sp = svc1(Vec::new(), TrafficPolicy::Cluster);
        sp.protocol = Protocol::Udp;
        let rules = generate(&cfg(Mode::Legacy, false), &[sp.clone()]);
        assert!(!rules.nat.contains(&sp.svc_chain()));
        assert_eq!(
            chain_rules(&rules.filter, "KUBE-SERVICES"),
            ["-m comment --comment \"ns1/svc1:p80 has no endpoints\" -m udp -p udp -d 172.30.0.41 --dport 80 -j REJECT"]
        );
        assert_eq!(
            chain_rules(&rules.filter, "KUBE-EXTERNAL-SERVICES"),
            ["-m comment --comment \"ns1/svc1:p80 has no endpoints\" -m addrtype --dst-type LOCAL -m udp -p udp --dport 3001 -j REJECT"]
        );
    }

    #[test]
    fn lab_services_get_a_tcp_and_a_udp_port() {
        let topo = crate::topology::Topology::default_lab().expect("default lab");
        let svc = &topo.services[0];
        let eps = vec![("10.233.64.5".parse().expect("ip"), "node1".to_string())];
        let ports = lab_service_ports("default", svc, &eps);
        assert_eq!(ports.len(), 2);
        assert_eq!(ports[0].protocol, Protocol::Tcp);
        assert_eq!(ports[1].protocol, Protocol::Udp);
        assert_eq!(ports[1].port_name_string(), format!("default/{}:udp", svc.name));
        assert_eq!(ports[0].endpoints[0].port, svc.target_port);
        assert_ne!(ports[0].svc_chain(), ports[1].svc_chain());
    }
}
