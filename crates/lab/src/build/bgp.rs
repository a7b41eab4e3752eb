//! BGP: BIRD on every node and on the ToR (from the topology, or in cluster mode from the node
//! agents' configurations), and the wait until every node and the ToR have their routes.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use knit_agent::bird::{self, Bird, NodeBgp, Peer, Timers, TorBgp, TorSession};
use knit_host::route;
use knit_host::{Family, Handle};

use super::Lab;
use crate::error::{host, io, LabError, Result};

/// The coordinator's host rule table, where it routes underlay pod IPs to their `veth0`.
const HOST_RULE_TABLE: u32 = 500;
/// How long BGP may take to give every node and the ToR its routes.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);

impl Lab {
    /// Underlay pod IPs node `node` wires (the coordinator's table-500 /32s).
    pub(super) fn underlay_ips(&self, node: &str) -> Result<Vec<IpNet>> {
        let ns = self.netns(node)?;
        let h = Handle::in_netns(ns).map_err(host(format!("netlink in {node}")))?;
        let list =
            knit_coordinator::underlay::list(&h, HOST_RULE_TABLE).map_err(host(format!("{node}: underlay IPs")))?;
        Ok(list.into_iter().map(|u| IpNet::from(u.ip)).collect())
    }

    pub(crate) fn blocks(&self, node: &str) -> Result<Vec<IpNet>> {
        let err = |e: String| LabError::Ipam(format!("blocks of {node}: {e}"));
        if self.plan.etcd.is_none() {
            return knit_ipam::blocks_of(&self.plan.ipam_dir(), node).map_err(|e| err(e.to_string()));
        }
        // Cluster mode: the blocks are in etcd, which listens on a fabric address; ask from a
        // node's namespace with the node's own IPAM configuration.
        let conf = self.plan.overlay_conflist(node);
        let cfg =
            knit_ipam::IpamConfig::from_value(&conf["plugins"][0]["ipam"], "ipam").map_err(|e| err(e.to_string()))?;
        self.netns(node)?
            .run(|| knit_ipam::Ipam::open_for_inspection(cfg).and_then(|i| i.blocks_of(node)))
            .map_err(host(format!("enter node {node}")))?
            .map_err(|e| err(e.to_string()))
    }

    pub(super) fn start_bgp(&mut self, underlay_routes: bool) -> Result<()> {
        let topo = self.plan.topo.clone();
        let v4 = |what: &str, ip: IpAddr| -> Result<Ipv4Addr> {
            match ip {
                IpAddr::V4(a) => Ok(a),
                IpAddr::V6(_) => Err(LabError::Invalid(format!("{what}: BGP in the lab is IPv4 only ({ip})"))),
            }
        };
        for n in &topo.nodes {
            let node_ip = v4(&n.name, n.ip.addr())?;
            let gw = topo
                .fabric_gateway_for(n.ip.addr())
                .map(|g| g.addr())
                .ok_or_else(|| LabError::Invalid(format!("node {}: no fabric subnet", n.name)))?;
            let gw = v4("fabric gateway", gw)?;
            let peers = topo
                .nodes
                .iter()
                .filter(|o| o.name != n.name)
                .map(|o| v4(&o.name, o.ip.addr()))
                .collect::<Result<Vec<_>>>()?;
            let cfg = NodeBgp {
                node_ip,
                asn: topo.node_asn,
                node_peers: peers,
                tor: Some(Peer { ip: IpAddr::V4(gw), asn: topo.tor_asn }),
                overlay_cidrs: vec![topo.overlay_cidr],
                blocks: self.blocks(&n.name)?,
                underlay_routes: if underlay_routes { self.underlay_ips(&n.name)? } else { Vec::new() },
                service_cidrs: vec![topo.service_cidr],
                timers: Timers::FAST,
            };
            let text =
                bird::node_config(&cfg).map_err(|e| LabError::Bgp { node: n.name.clone(), msg: e.to_string() })?;
            self.spawn_bird(&n.name, Some(&text))?;
        }
        self.start_tor()
    }

    pub(super) fn tor_sessions(&self) -> Result<Vec<TorSession>> {
        let topo = &self.plan.topo;
        let mut sessions = Vec::new();
        for n in &topo.nodes {
            let (IpAddr::V4(node_ip), Some(IpAddr::V4(gw))) =
                (n.ip.addr(), topo.fabric_gateway_for(n.ip.addr()).map(|g| g.addr()))
            else {
                return Err(LabError::Invalid(format!("node {}: BGP in the lab is IPv4 only", n.name)));
            };
            sessions.push(TorSession { local_ip: gw, node: Peer { ip: IpAddr::V4(node_ip), asn: topo.node_asn } });
        }
        Ok(sessions)
    }

    pub(super) fn start_tor(&mut self) -> Result<()> {
        let text = self.tor_text()?;
        self.spawn_bird(crate::topology::FABRIC_NAME, Some(&text))
    }

    /// The ToR's BIRD configuration: one session per node of the topology.
    pub(super) fn tor_text(&self) -> Result<String> {
        let sessions = self.tor_sessions()?;
        let topo = self.plan.topo.clone();
        let router_id = topo
            .fabric
            .gateways
            .iter()
            .find_map(|g| match g.addr() {
                IpAddr::V4(a) => Some(a),
                IpAddr::V6(_) => None,
            })
            .ok_or_else(|| LabError::Invalid("fabric: BGP needs an IPv4 gateway".into()))?;
        let tor = TorBgp {
            router_id,
            asn: topo.tor_asn,
            nodes: sessions,
            accept: vec![topo.overlay_cidr, topo.service_cidr],
            timers: Timers::FAST,
        };
        bird::tor_config(&tor).map_err(|e| LabError::Bgp { node: "fabric".into(), msg: e.to_string() })
    }

    /// Cluster mode: node BIRDs run the configuration their agent wrote (the agent reloads
    /// them as the registry changes); the ToR's is static, as a real ToR's is.
    pub(super) fn start_bgp_cluster(&mut self) -> Result<()> {
        let nodes: Vec<String> = self.plan.topo.nodes.iter().map(|n| n.name.clone()).collect();
        for n in &nodes {
            self.start_node_bird_cluster(n)?;
        }
        self.start_tor()
    }

    /// Rewrites the ToR's configuration for the current nodes and reloads it (sessions of
    /// unchanged nodes stay up).
    pub(crate) fn reconfigure_tor(&mut self) -> Result<()> {
        let text = self.tor_text()?;
        let b = Bird::new(self.plan.bird_dir(crate::topology::FABRIC_NAME));
        let err = |e: bird::BirdError| LabError::Bgp { node: "fabric".into(), msg: e.to_string() };
        b.write_config(&text).map_err(err)?;
        let ns = self.netns(crate::topology::FABRIC_NAME)?;
        ns.run(|| b.configure()).map_err(host("enter fabric"))?.map_err(err)
    }

    /// Starts node `n`'s BIRD once its agent wrote a complete configuration.
    pub(crate) fn start_node_bird_cluster(&mut self, n: &String) -> Result<()> {
        {
            let conf = Bird::new(self.plan.bird_dir(n)).config_path();
            // Start BIRD once the agent's configuration holds everything the node has (its
            // blocks, underlay IPs and every peer): a later reload would then change nothing,
            // and no route flaps while the matrix runs.
            let mut want: Vec<String> = self
                .blocks(n)?
                .iter()
                .chain(self.underlay_ips(n)?.iter())
                .map(|net| format!("route {} blackhole;", net.trunc()))
                .collect();
            for o in self.plan.topo.nodes.iter().filter(|o| &o.name != n) {
                want.push(format!("protocol bgp {} {{", bird::peer_protocol_name(o.ip.addr())));
            }
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                let text = fs::read_to_string(&conf).unwrap_or_default();
                if want.iter().all(|w| text.contains(w.as_str())) {
                    break;
                }
                if Instant::now() > deadline {
                    let missing: Vec<&String> = want.iter().filter(|w| !text.contains(w.as_str())).collect();
                    return Err(LabError::Bgp {
                        node: n.clone(),
                        msg: format!(
                            "the node agent's {} lacks {missing:?} (log in {})",
                            conf.display(),
                            self.plan.dir.display()
                        ),
                    });
                }
                if let Some(dead) = self.dead_child() {
                    return Err(LabError::Bgp {
                        node: n.clone(),
                        msg: format!("a process exited early: {dead} (logs in {})", self.plan.dir.display()),
                    });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            self.spawn_bird(n, None)?;
        }
        Ok(())
    }

    pub(super) fn spawn_bird(&mut self, part: &str, config: Option<&str>) -> Result<()> {
        let bgp_err = |msg: String| LabError::Bgp { node: part.to_string(), msg };
        let dir = self.plan.bird_dir(part);
        fs::create_dir_all(&dir).map_err(io("create BIRD directory", &dir))?;
        let b = Bird::new(&dir);
        if let Some(config) = config {
            b.write_config(config).map_err(|e| bgp_err(e.to_string()))?;
        }
        let mut cmd = b.command().map_err(|e| bgp_err(e.to_string()))?;
        let log = b.log_path();
        let out = fs::File::create(&log).map_err(io("create log", &log))?;
        let err = out.try_clone().map_err(io("create log", &log))?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err).process_group(0);
        let ns = self.netns(part)?;
        let child = ns.spawn(&mut cmd).map_err(host(format!("{part}: start bird")))?;
        self.state.pids.push(child.id());
        self.children.push(child);
        Ok(())
    }

    /// Waits until every node has the other nodes' blocks (and underlay /32s) from BIRD, and
    /// the ToR has every block and the Service CIDR.
    pub(crate) fn wait_converged(&mut self, underlay_routes: bool) -> Result<()> {
        let topo = self.plan.topo.clone();
        let mut want: BTreeMap<String, BTreeSet<IpNet>> = BTreeMap::new();
        let mut all_blocks = BTreeSet::new();
        for n in &topo.nodes {
            let blocks = self.blocks(&n.name)?;
            let ul = if underlay_routes { self.underlay_ips(&n.name)? } else { Vec::new() };
            all_blocks.extend(blocks.iter().copied());
            for o in topo.nodes.iter().filter(|o| o.name != n.name) {
                let w = want.entry(o.name.clone()).or_default();
                w.extend(blocks.iter().copied());
                w.extend(ul.iter().copied());
            }
        }
        let tor = want.entry(crate::topology::FABRIC_NAME.to_string()).or_default();
        tor.extend(all_blocks);
        tor.insert(topo.service_cidr);

        let deadline = Instant::now() + CONVERGE_TIMEOUT;
        loop {
            let mut missing = Vec::new();
            for (part, nets) in &want {
                let ns = self.netns(part)?;
                let h = Handle::in_netns(ns).map_err(host(format!("netlink in {part}")))?;
                let have: BTreeSet<IpNet> = route::list(&h, Family::V4, Some(254))
                    .map_err(host(format!("{part}: routes")))?
                    .into_iter()
                    .filter(|r| r.protocol == route::proto::BIRD)
                    .map(|r| r.dst)
                    .collect();
                for n in nets.difference(&have) {
                    missing.push(format!("{part}: {n}"));
                }
            }
            if missing.is_empty() {
                return Ok(());
            }
            if let Some(dead) = self.dead_child() {
                return Err(LabError::Bgp {
                    node: "lab".into(),
                    msg: format!("a process exited early: {dead} (logs in {})", self.plan.dir.display()),
                });
            }
            if Instant::now() > deadline {
                return Err(LabError::Bgp {
                    node: "lab".into(),
                    msg: format!(
                        "no convergence after {CONVERGE_TIMEOUT:?}; missing {} (BIRD logs in {})",
                        missing.join(", "),
                        self.plan.dir.join("bird").display()
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
