//! The lab's topology: a TOML file describing the fabric, nodes, underlay
//! pools, pods, Services and clients of one lab.
//!
//! The default lab lives in `default.toml` next to this module and is the only
//! place its addresses appear; every other part of the lab reads them from a
//! [`Topology`], so another file (other CIDRs, node count, pods) needs no code
//! change. [`Topology::from_toml`] parses *and* validates: a topology that
//! loads is one the lab can build, and each error names the offending field.
//!
//! ```toml
//! overlay_cidr = "10.233.64.0/18"   # knit-routed pool = kube-proxy's cluster CIDR
//! service_cidr = "10.233.0.0/18"
//! block_size = 26                   # per-node blocks of overlay_cidr
//! node_asn = 64512                  # iBGP mesh between nodes
//! tor_asn = 64513                   # eBGP node <-> ToR
//! echo_port = 8080                  # every pod's TCP/UDP echo (default 8080)
//! [fabric]
//! gateways = ["172.16.0.1/16"]      # on the fabric bridge; each defines an underlay subnet
//! external_gateway = "198.51.100.1/24"
//! [[nodes]]          # name, ip (CIDR, in a fabric subnet)
//! [[underlay_pools]] # name, cidr, gateway, range_start, range_end
//! [[pods]]           # name, node, kind = overlay|underlay|multinic, pool (macvlan kinds)
//! [[services]]       # name, endpoints = "<kind>" | ["pod", ...], cluster_ip, port,
//!                    # target_port, node_port?, external_traffic_policy = Cluster|Local
//! [[clients]]        # name, ip (CIDR), gateway, side = external|underlay
//! ```

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// The default lab's topology file.
pub const DEFAULT_TOML: &str = include_str!("default.toml");

/// Longest node or client name: the lab builds interface names as a short
/// prefix plus the name, and Linux caps interface names at 15 bytes.
pub const MAX_HOST_NAME_LEN: usize = 10;
/// Longest pod, pool or Service name: these only end up in namespace names
/// (which carry a run id too), CNI_ARGS and iptables comments.
pub const MAX_NAME_LEN: usize = 24;
/// The NodePort range of a default kube-apiserver.
pub const NODE_PORT_RANGE: std::ops::RangeInclusive<u16> = 30000..=32767;
/// Name reserved for the fabric/ToR namespace.
pub const FABRIC_NAME: &str = "fabric";

/// One lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// The overlay (knit-routed) pool, i.e. kube-proxy's cluster CIDR.
    pub overlay_cidr: IpNet,
    /// The Service CIDR; announced to the ToR so external clients reach Service IPs.
    pub service_cidr: IpNet,
    /// Prefix length of the per-node blocks carved out of `overlay_cidr`.
    pub block_size: u8,
    /// The nodes' AS (one AS: an iBGP mesh between nodes).
    pub node_asn: u32,
    /// The ToR's AS (eBGP to every node).
    pub tor_asn: u32,
    /// The port every pod's TCP/UDP echo server listens on.
    #[serde(default = "default_echo_port")]
    pub echo_port: u16,
    /// The underlay switch / ToR router.
    pub fabric: Fabric,
    /// The nodes, each with `eth0` on the fabric bridge (missing = empty, so
    /// validation can say "needs at least one node").
    #[serde(default)]
    pub nodes: Vec<Node>,
    /// Address pools for macvlan NICs (underlay pods, multi-NIC pods' `net1`).
    #[serde(default)]
    pub underlay_pools: Vec<UnderlayPool>,
    /// The pods.
    #[serde(default)]
    pub pods: Vec<Pod>,
    /// ClusterIP (+ NodePort) Services over the pods.
    #[serde(default)]
    pub services: Vec<Service>,
    /// Clients outside the cluster.
    #[serde(default)]
    pub clients: Vec<Client>,
}

fn default_echo_port() -> u16 {
    8080
}

/// The fabric namespace: a bridge for the underlay and the ToR's routing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fabric {
    /// Gateway addresses with their prefix (`172.16.0.1/16`), all on the bridge;
    /// each one defines an underlay subnet.
    pub gateways: Vec<IpNet>,
    /// The ToR's address towards external clients (`198.51.100.1/24`).
    pub external_gateway: IpNet,
}

/// A node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// Node name (also its BGP and namespace name part).
    pub name: String,
    /// `eth0`'s address with the underlay subnet's prefix length.
    pub ip: IpNet,
}

/// An address pool for macvlan NICs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnderlayPool {
    /// Pool name.
    pub name: String,
    /// The pool's subnet (inside one of the fabric's subnets).
    pub cidr: IpNet,
    /// Default gateway handed to pods: the fabric's address in that subnet.
    pub gateway: IpAddr,
    /// First address handed out.
    pub range_start: IpAddr,
    /// Last address handed out.
    pub range_end: IpAddr,
}

/// Which CNI chain makes a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PodKind {
    /// `eth0` from knit-routed.
    Overlay,
    /// `eth0` from macvlan + knit-coordinator (underlay mode).
    Underlay,
    /// `eth0` from knit-routed + `net1` from macvlan + knit-coordinator (overlay mode).
    Multinic,
}

impl PodKind {
    /// The name used in the topology file.
    pub fn as_str(self) -> &'static str {
        match self {
            PodKind::Overlay => "overlay",
            PodKind::Underlay => "underlay",
            PodKind::Multinic => "multinic",
        }
    }

    /// Whether pods of this kind have a macvlan NIC (and so need a pool).
    pub fn has_macvlan(self) -> bool {
        !matches!(self, PodKind::Overlay)
    }
}

/// A pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pod {
    /// Pod name (namespace name part, `K8S_POD_NAME`, echo reply).
    pub name: String,
    /// The node it runs on.
    pub node: String,
    /// Its kind.
    pub kind: PodKind,
    /// The underlay pool of its macvlan NIC (underlay and multinic pods only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
}

/// Kubernetes' `externalTrafficPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum TrafficPolicy {
    /// Any endpoint; external traffic is masqueraded.
    #[default]
    Cluster,
    /// Only endpoints on the receiving node; the client's source IP is kept.
    Local,
}

/// Which pods back a Service: every pod of a kind, or named pods.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Endpoints {
    /// `endpoints = "underlay"`: all pods of that kind on all nodes.
    Kind(PodKind),
    /// `endpoints = ["pod-a", "pod-b"]`.
    Pods(Vec<String>),
}

/// A ClusterIP Service, optionally with a NodePort; the lab serves it over TCP and UDP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// Service name (in namespace `default`).
    pub name: String,
    /// The pods behind it.
    pub endpoints: Endpoints,
    /// ClusterIP, inside `service_cidr`.
    pub cluster_ip: IpAddr,
    /// Service port.
    pub port: u16,
    /// The pods' port (must be `echo_port`).
    pub target_port: u16,
    /// NodePort, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_port: Option<u16>,
    /// `externalTrafficPolicy`.
    #[serde(default)]
    pub external_traffic_policy: TrafficPolicy,
}

/// Where a client sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientSide {
    /// Behind the ToR, on the external subnet.
    External,
    /// On the fabric bridge, inside an underlay subnet.
    Underlay,
}

/// A client outside the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Client {
    /// Client name.
    pub name: String,
    /// Its address with prefix length.
    pub ip: IpNet,
    /// Its default gateway (a fabric address).
    pub gateway: IpAddr,
    /// Which side of the ToR it is on.
    pub side: ClientSide,
}

/// Why a topology was rejected.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// The file could not be read.
    #[error("read topology {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Not valid TOML, or not the topology's shape (the message has line and column).
    #[error("parse topology: {0}")]
    Parse(String),
    /// Well-formed but not buildable.
    #[error("topology field `{field}`: {message}")]
    Invalid {
        /// The offending field, as a path: `pods[3].pool`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
}

impl TopologyError {
    /// The offending field, for validation errors.
    pub fn field(&self) -> Option<&str> {
        match self {
            TopologyError::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> TopologyError {
    TopologyError::Invalid { field: field.into(), message: message.into() }
}

type Result<T> = std::result::Result<T, TopologyError>;

impl Topology {
    /// The default lab (`default.toml`).
    pub fn default_lab() -> Result<Topology> {
        Topology::from_toml(DEFAULT_TOML)
    }

    /// Parses and validates a topology.
    pub fn from_toml(text: &str) -> Result<Topology> {
        let topo: Topology = toml::from_str(text).map_err(|e| TopologyError::Parse(e.to_string()))?;
        topo.validate()?;
        Ok(topo)
    }

    /// Reads, parses and validates a topology file.
    pub fn load(path: &Path) -> Result<Topology> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| TopologyError::Read { path: path.display().to_string(), source })?;
        Topology::from_toml(&text)
    }

    /// The topology as TOML (e.g. for `knit lab status`).
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self).map_err(|e| TopologyError::Parse(e.to_string()))
    }

    /// The node named `name`.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The pod named `name`.
    pub fn pod(&self, name: &str) -> Option<&Pod> {
        self.pods.iter().find(|p| p.name == name)
    }

    /// The underlay pool named `name`.
    pub fn pool(&self, name: &str) -> Option<&UnderlayPool> {
        self.underlay_pools.iter().find(|p| p.name == name)
    }

    /// The pods running on `node`, in file order.
    pub fn pods_on<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Pod> + 'a {
        self.pods.iter().filter(move |p| p.node == node)
    }

    /// The pods backing `svc`, in file order.
    pub fn service_pods<'a>(&'a self, svc: &'a Service) -> Vec<&'a Pod> {
        match &svc.endpoints {
            Endpoints::Kind(kind) => self.pods.iter().filter(|p| p.kind == *kind).collect(),
            Endpoints::Pods(names) => names.iter().filter_map(|n| self.pod(n)).collect(),
        }
    }

    /// The fabric gateway (with prefix) whose subnet holds `ip`.
    pub fn fabric_gateway_for(&self, ip: IpAddr) -> Option<IpNet> {
        self.fabric.gateways.iter().copied().find(|g| g.trunc().contains(&ip))
    }

    /// Validates everything the lab relies on; the first problem found is returned.
    pub fn validate(&self) -> Result<()> {
        self.validate_cidrs()?;
        self.validate_fabric()?;
        self.validate_names()?;
        self.validate_nodes()?;
        self.validate_pools()?;
        self.validate_pods()?;
        self.validate_services()?;
        self.validate_clients()?;
        self.validate_unique_ips()
    }

    fn validate_cidrs(&self) -> Result<()> {
        check_network("overlay_cidr", self.overlay_cidr)?;
        check_network("service_cidr", self.service_cidr)?;
        if !same_family(self.overlay_cidr.addr(), self.service_cidr.addr()) {
            return Err(invalid("service_cidr", "must be of the same IP family as overlay_cidr"));
        }
        if overlaps(self.overlay_cidr, self.service_cidr) {
            return Err(invalid(
                "service_cidr",
                format!("{} overlaps overlay_cidr {}", self.service_cidr, self.overlay_cidr),
            ));
        }
        let max = self.overlay_cidr.max_prefix_len();
        if self.block_size <= self.overlay_cidr.prefix_len() || self.block_size > max {
            return Err(invalid(
                "block_size",
                format!("must be longer than overlay_cidr's /{} and at most /{max}", self.overlay_cidr.prefix_len()),
            ));
        }
        let bits = u32::from(self.block_size - self.overlay_cidr.prefix_len());
        let blocks = 1u128.checked_shl(bits).unwrap_or(u128::MAX);
        if blocks < self.nodes.len() as u128 {
            return Err(invalid(
                "block_size",
                format!("overlay_cidr has only {blocks} blocks for {} nodes", self.nodes.len()),
            ));
        }
        if self.node_asn == 0 {
            return Err(invalid("node_asn", "must not be 0"));
        }
        if self.tor_asn == 0 {
            return Err(invalid("tor_asn", "must not be 0"));
        }
        if self.node_asn == self.tor_asn {
            return Err(invalid("tor_asn", "must differ from node_asn (nodes peer with the ToR over eBGP)"));
        }
        if self.echo_port == 0 {
            return Err(invalid("echo_port", "must not be 0"));
        }
        Ok(())
    }

    fn validate_fabric(&self) -> Result<()> {
        if self.fabric.gateways.is_empty() {
            return Err(invalid("fabric.gateways", "needs at least one gateway"));
        }
        let mut subnets: Vec<(String, IpNet)> = Vec::new();
        for (i, g) in self.fabric.gateways.iter().enumerate() {
            let field = format!("fabric.gateways[{i}]");
            check_host_address(&field, *g)?;
            subnets.push((field, g.trunc()));
        }
        let field = "fabric.external_gateway".to_string();
        check_host_address(&field, self.fabric.external_gateway)?;
        subnets.push((field, self.fabric.external_gateway.trunc()));
        subnets.push(("overlay_cidr".into(), self.overlay_cidr));
        subnets.push(("service_cidr".into(), self.service_cidr));
        // Every subnet is routed separately by the ToR, so none may overlap another.
        for (i, (fa, a)) in subnets.iter().enumerate() {
            for (fb, b) in &subnets[i + 1..] {
                if overlaps(*a, *b) {
                    return Err(invalid(fb.as_str(), format!("{b} overlaps {a} of `{fa}`")));
                }
            }
        }
        Ok(())
    }

    fn validate_names(&self) -> Result<()> {
        if self.nodes.is_empty() {
            return Err(invalid("nodes", "needs at least one node"));
        }
        // Nodes, pods and clients each get a namespace named after them, so
        // they share one name space (and `fabric` is taken).
        let mut hosts: HashMap<&str, String> = HashMap::new();
        hosts.insert(FABRIC_NAME, "the fabric namespace".into());
        let named = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (format!("nodes[{i}].name"), n.name.as_str(), MAX_HOST_NAME_LEN))
            .chain(
                self.clients
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (format!("clients[{i}].name"), c.name.as_str(), MAX_HOST_NAME_LEN)),
            )
            .chain(
                self.pods.iter().enumerate().map(|(i, p)| (format!("pods[{i}].name"), p.name.as_str(), MAX_NAME_LEN)),
            );
        for (field, name, max) in named {
            check_name(&field, name, max)?;
            if let Some(prev) = hosts.insert(name, field.clone()) {
                return Err(invalid(field, format!("name {name:?} is already used by `{prev}`")));
            }
        }
        let mut pools = HashSet::new();
        for (i, p) in self.underlay_pools.iter().enumerate() {
            let field = format!("underlay_pools[{i}].name");
            check_name(&field, &p.name, MAX_NAME_LEN)?;
            if !pools.insert(p.name.as_str()) {
                return Err(invalid(field, format!("duplicate pool name {:?}", p.name)));
            }
        }
        let mut services = HashSet::new();
        for (i, s) in self.services.iter().enumerate() {
            let field = format!("services[{i}].name");
            check_name(&field, &s.name, MAX_NAME_LEN)?;
            if !services.insert(s.name.as_str()) {
                return Err(invalid(field, format!("duplicate service name {:?}", s.name)));
            }
        }
        Ok(())
    }

    fn validate_nodes(&self) -> Result<()> {
        let mut first: Option<IpNet> = None;
        for (i, n) in self.nodes.iter().enumerate() {
            let field = format!("nodes[{i}].ip");
            let gw = self.check_on_fabric(&field, n.ip)?;
            // Nodes peer over iBGP with direct next hops, and route underlay pod /32s to each
            // other's eth0: both need the nodes on one subnet (as a Kubernetes node network is).
            match first {
                None => first = Some(gw),
                Some(f) if f != gw => {
                    return Err(invalid(
                        field,
                        format!(
                            "{} is not in the first node's subnet {}: all nodes share one underlay subnet",
                            n.ip,
                            f.trunc()
                        ),
                    ))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// `ip` must sit in one of the fabric's subnets with that subnet's prefix
    /// length (so it is on-link with the bridge) and not be a gateway.
    fn check_on_fabric(&self, field: &str, ip: IpNet) -> Result<IpNet> {
        check_host_address(field, ip)?;
        let Some(gw) = self.fabric_gateway_for(ip.addr()) else {
            return Err(invalid(field, format!("{} is in none of the fabric's subnets", ip.addr())));
        };
        if gw.prefix_len() != ip.prefix_len() {
            return Err(invalid(field, format!("prefix must be /{} like the fabric gateway {gw}", gw.prefix_len())));
        }
        Ok(gw)
    }

    fn validate_pools(&self) -> Result<()> {
        let mut ranges: Vec<(usize, u128, u128)> = Vec::new();
        for (i, p) in self.underlay_pools.iter().enumerate() {
            let f = |name: &str| format!("underlay_pools[{i}].{name}");
            check_network(&f("cidr"), p.cidr)?;
            let Some(gw) = self.fabric.gateways.iter().find(|g| g.trunc().contains(&p.cidr)) else {
                return Err(invalid(f("cidr"), format!("{} is inside none of the fabric's subnets", p.cidr)));
            };
            if p.gateway != gw.addr() {
                return Err(invalid(
                    f("gateway"),
                    format!("must be the fabric's address {} in that subnet", gw.addr()),
                ));
            }
            for (name, ip) in [("range_start", p.range_start), ("range_end", p.range_end)] {
                if !p.cidr.contains(&ip) || ip == p.cidr.network() || ip == p.cidr.broadcast() {
                    return Err(invalid(f(name), format!("{ip} is not a usable address of {}", p.cidr)));
                }
            }
            let (lo, hi) = (ip_u128(p.range_start), ip_u128(p.range_end));
            if lo > hi {
                return Err(invalid(f("range_end"), "must not come before range_start"));
            }
            if (lo..=hi).contains(&ip_u128(p.gateway)) {
                return Err(invalid(f("range_start"), "the range holds the gateway"));
            }
            for (j, plo, phi) in &ranges {
                if same_family(p.range_start, self.underlay_pools[*j].range_start) && lo <= *phi && *plo <= hi {
                    return Err(invalid(f("range_start"), format!("range overlaps the range of underlay_pools[{j}]")));
                }
            }
            ranges.push((i, lo, hi));
            let size = hi - lo + 1;
            let users = self.pods.iter().filter(|pod| pod.pool.as_deref() == Some(p.name.as_str())).count() as u128;
            if users > size {
                return Err(invalid(f("range_end"), format!("{size} addresses for {users} pods")));
            }
        }
        // Fixed addresses must stay out of every range, or IPAM could hand them to a pod.
        let fixed = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (format!("nodes[{i}].ip"), n.ip.addr()))
            .chain(self.clients.iter().enumerate().map(|(i, c)| (format!("clients[{i}].ip"), c.ip.addr())));
        for (field, ip) in fixed {
            let v = ip_u128(ip);
            let hit = ranges
                .iter()
                .find(|(j, lo, hi)| same_family(ip, self.underlay_pools[*j].range_start) && (*lo..=*hi).contains(&v));
            if let Some((j, _, _)) = hit {
                return Err(invalid(field, format!("{ip} lies in the range of underlay_pools[{j}]")));
            }
        }
        Ok(())
    }

    fn validate_pods(&self) -> Result<()> {
        for (i, p) in self.pods.iter().enumerate() {
            if self.node(&p.node).is_none() {
                return Err(invalid(format!("pods[{i}].node"), format!("no node named {:?}", p.node)));
            }
            match (&p.pool, p.kind.has_macvlan()) {
                (None, true) => {
                    return Err(invalid(
                        format!("pods[{i}].pool"),
                        format!("a {} pod needs an underlay pool", p.kind.as_str()),
                    ))
                }
                (Some(_), false) => {
                    return Err(invalid(format!("pods[{i}].pool"), "an overlay pod has no underlay NIC"))
                }
                (Some(pool), true) if self.pool(pool).is_none() => {
                    return Err(invalid(format!("pods[{i}].pool"), format!("no underlay pool named {pool:?}")))
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn validate_services(&self) -> Result<()> {
        let mut ips = HashMap::new();
        let mut node_ports = HashMap::new();
        for (i, s) in self.services.iter().enumerate() {
            let f = |name: &str| format!("services[{i}].{name}");
            let net = self.service_cidr;
            if !net.contains(&s.cluster_ip) || s.cluster_ip == net.network() || s.cluster_ip == net.broadcast() {
                return Err(invalid(
                    f("cluster_ip"),
                    format!("{} is not a usable address of service_cidr {net}", s.cluster_ip),
                ));
            }
            if let Some(prev) = ips.insert(s.cluster_ip, i) {
                return Err(invalid(f("cluster_ip"), format!("{} is already services[{prev}]'s", s.cluster_ip)));
            }
            if s.port == 0 {
                return Err(invalid(f("port"), "must not be 0"));
            }
            if s.target_port != self.echo_port {
                return Err(invalid(f("target_port"), format!("pods only serve echo_port {}", self.echo_port)));
            }
            if let Some(np) = s.node_port {
                if !NODE_PORT_RANGE.contains(&np) {
                    return Err(invalid(
                        f("node_port"),
                        format!("{np} is outside {}-{}", NODE_PORT_RANGE.start(), NODE_PORT_RANGE.end()),
                    ));
                }
                if let Some(prev) = node_ports.insert(np, i) {
                    return Err(invalid(f("node_port"), format!("{np} is already services[{prev}]'s")));
                }
            } else if s.external_traffic_policy == TrafficPolicy::Local {
                return Err(invalid(f("external_traffic_policy"), "Local needs a node_port"));
            }
            if let Endpoints::Pods(names) = &s.endpoints {
                let mut seen = HashSet::new();
                for n in names {
                    if self.pod(n).is_none() {
                        return Err(invalid(f("endpoints"), format!("no pod named {n:?}")));
                    }
                    if !seen.insert(n) {
                        return Err(invalid(f("endpoints"), format!("pod {n:?} listed twice")));
                    }
                }
            }
            if self.service_pods(s).is_empty() {
                return Err(invalid(f("endpoints"), "selects no pod"));
            }
        }
        Ok(())
    }

    fn validate_clients(&self) -> Result<()> {
        for (i, c) in self.clients.iter().enumerate() {
            let field = format!("clients[{i}].ip");
            let gw = match c.side {
                ClientSide::External => {
                    check_host_address(&field, c.ip)?;
                    let ext = self.fabric.external_gateway;
                    if ext.trunc() != c.ip.trunc() {
                        return Err(invalid(field, format!("an external client must be in {}", ext.trunc())));
                    }
                    ext
                }
                ClientSide::Underlay => self.check_on_fabric(&field, c.ip)?,
            };
            if c.gateway != gw.addr() {
                return Err(invalid(
                    format!("clients[{i}].gateway"),
                    format!("must be the fabric's address {}", gw.addr()),
                ));
            }
        }
        Ok(())
    }

    fn validate_unique_ips(&self) -> Result<()> {
        let mut seen: HashMap<IpAddr, String> = HashMap::new();
        let all = self
            .fabric
            .gateways
            .iter()
            .enumerate()
            .map(|(i, g)| (format!("fabric.gateways[{i}]"), g.addr()))
            .chain(std::iter::once(("fabric.external_gateway".to_string(), self.fabric.external_gateway.addr())))
            .chain(self.nodes.iter().enumerate().map(|(i, n)| (format!("nodes[{i}].ip"), n.ip.addr())))
            .chain(self.clients.iter().enumerate().map(|(i, c)| (format!("clients[{i}].ip"), c.ip.addr())));
        for (field, ip) in all {
            if let Some(prev) = seen.insert(ip, field.clone()) {
                return Err(invalid(field, format!("{ip} is already used by `{prev}`")));
            }
        }
        Ok(())
    }
}

fn same_family(a: IpAddr, b: IpAddr) -> bool {
    a.is_ipv4() == b.is_ipv4()
}

fn overlaps(a: IpNet, b: IpNet) -> bool {
    same_family(a.addr(), b.addr()) && (a.contains(&b.network()) || b.contains(&a.network()))
}

fn ip_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// A CIDR written as its network address (`10.0.0.0/8`, not `10.1.2.3/8`).
fn check_network(field: &str, net: IpNet) -> Result<()> {
    if net.trunc() != net {
        return Err(invalid(field, format!("{net} is not a network address (did you mean {}?)", net.trunc())));
    }
    Ok(())
}

/// An interface address: neither the subnet's network nor (IPv4) broadcast address.
fn check_host_address(field: &str, ip: IpNet) -> Result<()> {
    let host_bits = ip.max_prefix_len() - ip.prefix_len();
    if host_bits < 2 {
        return Err(invalid(field, format!("/{} leaves no room for other hosts", ip.prefix_len())));
    }
    if ip.addr() == ip.network() || (ip.addr().is_ipv4() && ip.addr() == ip.broadcast()) {
        return Err(invalid(field, format!("{ip} is the subnet's network or broadcast address")));
    }
    Ok(())
}

/// Names become parts of namespace and interface names: lowercase letters,
/// digits and `-`, starting with a letter, bounded in length.
fn check_name(field: &str, name: &str, max: usize) -> Result<()> {
    if name.is_empty() || name.len() > max {
        return Err(invalid(field, format!("{name:?} must be 1 to {max} characters")));
    }
    let ok_start = name.as_bytes()[0].is_ascii_lowercase();
    let ok_chars = name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok_start || !ok_chars || name.ends_with('-') {
        return Err(invalid(
            field,
            format!(
                "{name:?} must be lowercase letters, digits and '-', starting with a letter and not ending with '-'"
            ),
        ));
    }
    Ok(())
}
