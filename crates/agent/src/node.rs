//! `knit node run`: the long-running node agent in cluster mode.
//!
//! Every `interval` it reconciles:
//! - its registry record (IP, AS, IPAM blocks, underlay pod IPs) under its lease;
//! - BIRD's configuration from the other nodes' records (peers) and its own blocks and underlay
//!   IPs; BIRD is reloaded (`birdc configure`) only when the text changed, and BIRD keeps the
//!   sessions of unchanged peers across a reload;
//! - the coordinator's CIDR file from the cluster settings;
//! - `net.ipv4.ip_forward=1`.
//!
//! A round succeeds once all of that is done and the cluster settings name the overlay CIDR.
//! Only then, and so never before the first successful round, does the agent put the node's
//! conflist (`--conflist`, staged by `knit install --stage-conflist`) into the CNI conf dir:
//! the runtime reports the node Ready once a conflist is there, and a pod made before the node
//! is registered, its routes announced and the coordinator's CIDRs known would not work.
//!
//! The other nodes' records are read each round (a prefix get: a handful of keys) rather than
//! watched; a dead node's record expires with its lease, so its peer goes within TTL + interval.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ipnet::IpNet;

use crate::bird::{node_config, Bird, NodeBgp, Peer, Timers};
use crate::registry::{ClusterConfig, NodeRecord, Registry, Tls};

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Node name.
    pub node: String,
    /// Node IP (IPv4: BGP in knit is IPv4 for now).
    pub node_ip: Ipv4Addr,
    /// The nodes' AS.
    pub asn: u32,
    /// The ToR to peer with, if any.
    pub tor: Option<Peer>,
    /// etcd endpoints.
    pub endpoints: Vec<String>,
    /// etcd TLS files.
    pub tls: Tls,
    /// Registry key prefix.
    pub prefix: String,
    /// BIRD's directory (config, control socket).
    pub bird_dir: PathBuf,
    /// knit-ipam configuration to read this node's blocks from.
    pub ipam_config: Option<PathBuf>,
    /// Where to write the coordinator's CIDR file.
    pub cidr_file: PathBuf,
    /// The node's conflist to put into the CNI conf dir after the first successful reconcile
    /// (and to keep in step after each one), if the agent is to make the node Ready.
    pub conflist: Option<ConflistInstall>,
    /// The coordinator's hostRuleTable.
    pub host_rule_table: u32,
    /// Lease TTL in seconds.
    pub lease_ttl: i64,
    /// Reconcile period.
    pub interval: Duration,
}

/// Where the agent installs the node's conflist from, and to.
#[derive(Debug, Clone)]
pub struct ConflistInstall {
    /// The staged conflist (`knit install --stage-conflist DIR` writes `DIR/10-knit.conflist`).
    pub source: PathBuf,
    /// The runtime's conf dir (`/etc/cni/net.d`); the file keeps its name there.
    pub conf_dir: PathBuf,
}

impl ConflistInstall {
    /// The installed file's path.
    pub fn dest(&self) -> PathBuf {
        self.conf_dir.join(self.source.file_name().unwrap_or_else(|| std::ffi::OsStr::new("10-knit.conflist")))
    }
}

/// Why a round that did everything else still does not make the node Ready.
pub const NO_CLUSTER_SETTINGS: &str =
    "not ready: the cluster settings in etcd have no overlayPodCIDR yet (knit cluster set --etcd-endpoints … --overlay-cidr … --service-cidr …)";

fn v4_nets(nets: &[IpNet]) -> Vec<IpNet> {
    nets.iter().copied().filter(|n| matches!(n, IpNet::V4(_))).collect()
}

/// This node's IPAM blocks. The store is opened once (an etcd store holds a connection) and
/// again only after an error.
fn blocks(cfg: &AgentConfig, ipam: &mut Option<knit_ipam::Ipam>) -> Result<Vec<IpNet>, String> {
    let Some(path) = &cfg.ipam_config else { return Ok(Vec::new()) };
    if ipam.is_none() {
        let ipam_cfg = knit_ipam::config::load_file(path)?;
        *ipam = Some(knit_ipam::Ipam::open_for_inspection(ipam_cfg).map_err(|e| e.to_string())?);
    }
    let r = ipam.as_ref().map(|i| i.blocks_of(&cfg.node)).unwrap_or_else(|| Ok(Vec::new()));
    r.map_err(|e| {
        *ipam = None;
        e.to_string()
    })
}

fn underlay(cfg: &AgentConfig) -> Result<Vec<IpAddr>, String> {
    let h = knit_host::Handle::new().map_err(|e| e.to_string())?;
    Ok(knit_coordinator::underlay::list(&h, cfg.host_rule_table)
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|u| u.ip)
        .collect())
}

/// Writes `path` through a temp file and `rename` (readers never see half a file) unless it
/// already holds `text`. The temp name has no `.conf`/`.conflist`/`.json` suffix, so a runtime
/// scanning the directory never loads it.
fn write_if_changed(path: &Path, text: &str) -> Result<bool, String> {
    if std::fs::read_to_string(path).ok().as_deref() == Some(text) {
        return Ok(false);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let tmp = path.with_extension("knit-tmp");
    std::fs::write(&tmp, text).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(true)
}

/// Whether `socket` (made by BIRD when it starts) is newer than `config`.
fn started_after(socket: &Path, config: &Path) -> bool {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    matches!((m(socket), m(config)), (Some(s), Some(c)) if s > c)
}

/// The coordinator's CIDR file for `c` (its field names).
pub fn cidr_file_text(c: &ClusterConfig) -> String {
    serde_json::to_string_pretty(c).unwrap_or_default()
}

/// The agent's connection and what it last wrote, so each round changes only what moved.
struct Agent {
    reg: Registry,
    /// The IPAM store, opened on first use.
    ipam: Option<knit_ipam::Ipam>,
    bird: Bird,
    last_record: Option<NodeRecord>,
    last_bird: String,
    /// BIRD runs `last_bird` (reloaded, or started after it was written).
    bird_current: bool,
    last_peers: Vec<Ipv4Addr>,
    /// A round has succeeded (the node's conflist may be installed).
    ready: bool,
}

/// Runs until `stop` is set; then revokes the lease so the node leaves at once.
pub fn run(cfg: &AgentConfig, stop: &AtomicBool) -> Result<(), String> {
    let mut reg =
        Registry::connect(&cfg.endpoints, &cfg.tls, &cfg.prefix, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    reg.grant(cfg.lease_ttl).map_err(|e| e.to_string())?;
    tracing::info!(node = %cfg.node, ip = %cfg.node_ip, ttl = cfg.lease_ttl, "registered");
    let mut agent = Agent {
        reg,
        ipam: None,
        bird: Bird::new(&cfg.bird_dir),
        last_record: None,
        last_bird: String::new(),
        bird_current: false,
        last_peers: Vec::new(),
        ready: false,
    };
    let mut last_ka = Instant::now();
    let ka_every = Duration::from_secs((cfg.lease_ttl as u64 / 3).max(1));
    while !stop.load(Ordering::SeqCst) {
        if last_ka.elapsed() >= ka_every {
            if let Err(e) = agent.reg.keep_alive() {
                tracing::warn!(error = %e, "lease lost; registering again");
                if let Err(e) = agent.reg.grant(cfg.lease_ttl) {
                    tracing::warn!(error = %e, "lease grant failed");
                }
                agent.last_record = None;
            }
            last_ka = Instant::now();
        }
        match agent.reconcile(cfg) {
            Ok(()) => {
                if !agent.ready {
                    tracing::info!(node = %cfg.node, "first successful reconcile: registered, BIRD configured, CIDR file written");
                    agent.ready = true;
                }
                if let Err(e) = install_conflist(cfg) {
                    tracing::warn!(error = %e, "install the node's conflist");
                }
            }
            Err(e) => tracing::warn!(error = %e, "reconcile"),
        }
        let until = Instant::now() + cfg.interval;
        while Instant::now() < until && !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    tracing::info!(node = %cfg.node, "stopping: leaving the registry");
    agent.reg.revoke().map_err(|e| e.to_string())
}

/// Puts the staged conflist into the conf dir (or updates it) after a successful round.
fn install_conflist(cfg: &AgentConfig) -> Result<(), String> {
    let Some(c) = &cfg.conflist else { return Ok(()) };
    let text =
        std::fs::read_to_string(&c.source).map_err(|e| format!("staged conflist {}: {e}", c.source.display()))?;
    let dest = c.dest();
    if write_if_changed(&dest, &text)? {
        tracing::info!(file = %dest.display(), "installed the node's conflist: the node can turn Ready");
    }
    Ok(())
}

impl Agent {
    fn reconcile(&mut self, cfg: &AgentConfig) -> Result<(), String> {
        let _ = knit_host::sysctl::set("net.ipv4.ip_forward", "1");
        let blocks = blocks(cfg, &mut self.ipam)?;
        let ul = underlay(cfg)?;
        let rec = NodeRecord {
            name: cfg.node.clone(),
            ip: IpAddr::V4(cfg.node_ip),
            asn: cfg.asn,
            blocks: blocks.clone(),
            underlay: ul.clone(),
        };
        if self.last_record.as_ref() != Some(&rec) {
            self.reg.put_node(&rec).map_err(|e| e.to_string())?;
            tracing::info!(blocks = blocks.len(), underlay = ul.len(), "published node record");
            self.last_record = Some(rec);
        }
        let cluster = self.reg.cluster_config().map_err(|e| e.to_string())?.unwrap_or_default();
        if write_if_changed(&cfg.cidr_file, &cidr_file_text(&cluster))? {
            tracing::info!(file = %cfg.cidr_file.display(), "wrote the coordinator's CIDR file");
        }
        let mut peers: Vec<Ipv4Addr> = self
            .reg
            .nodes()
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|n| n.name != cfg.node)
            .filter_map(|n| match n.ip {
                IpAddr::V4(a) if a != cfg.node_ip => Some(a),
                _ => None,
            })
            .collect();
        peers.sort();
        peers.dedup();
        if self.last_peers != peers {
            tracing::info!(peers = ?peers, "peers changed");
            self.last_peers = peers.clone();
        }
        if cluster.overlay_pod_cidr.is_empty() && !peers.is_empty() {
            // Without the overlay CIDR the peers' sessions would carry nothing useful.
            return Err(NO_CLUSTER_SETTINGS.into());
        }
        let bgp = NodeBgp {
            node_ip: cfg.node_ip,
            asn: cfg.asn,
            node_peers: peers,
            tor: cfg.tor,
            overlay_cidrs: v4_nets(&cluster.overlay_pod_cidr),
            blocks: v4_nets(&blocks),
            underlay_routes: v4_nets(&ul.iter().map(|ip| IpNet::from(*ip)).collect::<Vec<_>>()),
            service_cidrs: v4_nets(&cluster.service_cidr),
            timers: Timers::FAST,
        };
        let text = node_config(&bgp).map_err(|e| e.to_string())?;
        if text != self.last_bird {
            self.bird.write_config(&text).map_err(|e| e.to_string())?;
            self.last_bird = text;
            self.bird_current = false;
        }
        if !self.bird_current && started_after(&self.bird.socket_path(), &self.bird.config_path()) {
            // BIRD (re)started after the file was written, so it runs this text already: a reload
            // would be a no-op at best.
            self.bird_current = true;
        }
        if !self.bird_current && self.bird.socket_path().exists() {
            match self.bird.configure() {
                Ok(()) => {
                    self.bird_current = true;
                    tracing::info!("BIRD reconfigured");
                }
                Err(e) => tracing::warn!(error = %e, "birdc configure"),
            }
        }
        if cluster.overlay_pod_cidr.is_empty() {
            return Err(NO_CLUSTER_SETTINGS.into());
        }
        Ok(())
    }
}
