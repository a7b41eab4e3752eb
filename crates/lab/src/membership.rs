//! Nodes joining and leaving a running lab in cluster mode (`--datastore etcd`): the new
//! node's agent finds its peers in etcd and the others find it, as in a real cluster; only the
//! ToR, which is configured statically as a real one is, gets its sessions rewritten.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use knit_host::{inspect, route, Family, Handle};
use nix::sys::signal::Signal;

use crate::build::{Lab, Serve};
use crate::error::{host, LabError, Result};
use crate::kubeproxy::Mode;
use crate::topology::{Endpoints, Node, Pod};

/// The programs a joining node runs.
#[derive(Debug, Clone)]
pub struct Executables {
    /// The node binary, `knit` (its agent: `knit node run`).
    pub knit: std::path::PathBuf,
    /// The echo server of its pods (`<serve> lab serve`: `knit-lab`).
    pub serve: std::path::PathBuf,
}

/// How long a leaving node's routes may take to disappear from the others.
const WITHDRAW_TIMEOUT: Duration = Duration::from_secs(20);

fn mode(state: &str) -> Mode {
    if state == "modern" {
        Mode::Modern
    } else {
        Mode::Legacy
    }
}

impl Lab {
    fn require_cluster_mode(&self) -> Result<()> {
        if self.plan.etcd.is_none() {
            return Err(LabError::Invalid(format!(
                "lab {} was built from its topology file alone; nodes join and leave only in cluster mode (knit lab up --datastore etcd)",
                self.plan.name
            )));
        }
        Ok(())
    }

    /// Adds `node` with `pods` to a running cluster-mode lab: its namespace and uplink, its agent
    /// (which registers in etcd; the other agents add it as a BGP peer), its pods through CNI,
    /// their echo servers (`<exes.serve> lab serve`), kube-proxy rules everywhere (new
    /// endpoints), its BIRD, and the ToR's new session. Returns once every node and the ToR have
    /// its routes.
    pub fn add_node(
        &mut self,
        node: Node,
        pods: Vec<Pod>,
        exes: &Executables,
        cni_path: &[std::path::PathBuf],
    ) -> Result<()> {
        self.require_cluster_mode()?;
        let mut topo = self.plan.topo.clone();
        topo.nodes.push(node.clone());
        topo.pods.extend(pods.iter().cloned());
        topo.validate()?;
        self.plan.topo = topo;
        self.make_node(&node.name)?;
        self.start_agent(&node.name, &exes.knit)?;
        for p in &pods {
            self.make_ns(&p.name)?;
        }
        self.add_pods(cni_path, Some(&node.name))?;
        self.start_servers(&Serve::Processes { exe: exes.serve.clone() }, Some(&node.name))?;
        self.install_kube_proxy(mode(&self.state.kube_proxy))?;
        self.start_node_bird_cluster(&node.name)?;
        self.reconfigure_tor()?;
        self.save_state()?;
        let underlay = self.state.underlay_routes;
        self.wait_converged(underlay)
    }

    /// Removes `node` and its pods from a running cluster-mode lab: its agent leaves etcd
    /// (SIGTERM: it revokes its lease), its processes and namespaces go, the Services lose its
    /// endpoints, the ToR its session. Returns once no other node or the ToR routes to its
    /// blocks or through it any more.
    pub fn remove_node(&mut self, node: &str) -> Result<()> {
        self.require_cluster_mode()?;
        if self.plan.topo.node(node).is_none() {
            return Err(LabError::Invalid(format!("lab {} has no node {node:?}", self.plan.name)));
        }
        if self.plan.topo.nodes.len() == 1 {
            return Err(LabError::Invalid("the last node can't leave".into()));
        }
        let blocks: BTreeSet<IpNet> = self.blocks(node)?.into_iter().collect();
        let node_ip = self.plan.topo.node(node).map(|n| n.ip.addr());
        let pods: Vec<String> = self.plan.topo.pods.iter().filter(|p| p.node == node).map(|p| p.name.clone()).collect();
        // The node and its pods.
        let mut parts = vec![node.to_string()];
        parts.extend(pods.iter().cloned());
        let names: Vec<String> = parts.iter().map(|p| self.plan.ns(p)).collect();
        // SIGTERM first: the agent revokes its lease and leaves the registry at once.
        crate::build::remove_namespaces(
            &names,
            &[(Signal::SIGTERM, Duration::from_secs(3)), (Signal::SIGKILL, Duration::from_secs(3))],
        )?;
        for n in &names {
            self.namespaces.remove(n);
        }
        let mut topo = self.plan.topo.clone();
        topo.nodes.retain(|n| n.name != node);
        topo.pods.retain(|p| p.node != node);
        for svc in &mut topo.services {
            if let Endpoints::Pods(list) = &mut svc.endpoints {
                list.retain(|p| !pods.contains(p));
            }
        }
        topo.services.retain(|s| !matches!(&s.endpoints, Endpoints::Pods(l) if l.is_empty()));
        self.plan.topo = topo;
        for p in &pods {
            self.state.pods.remove(p);
        }
        self.install_kube_proxy(mode(&self.state.kube_proxy))?;
        self.reconfigure_tor()?;
        self.save_state()?;
        // Withdrawn everywhere: the other nodes (its peers' sessions drop, its record expires)
        // and the ToR: no route to its blocks, and no route (or ECMP next hop, like the ToR's
        // for the Service CIDR) through it.
        let mut parts: Vec<String> = self.plan.topo.nodes.iter().map(|n| n.name.clone()).collect();
        parts.push(crate::topology::FABRIC_NAME.to_string());
        let deadline = Instant::now() + WITHDRAW_TIMEOUT;
        loop {
            let mut left = Vec::new();
            for part in &parts {
                let h = Handle::in_netns(self.netns(part)?).map_err(host(format!("netlink in {part}")))?;
                for r in route::list(&h, Family::V4, Some(254)).map_err(host(format!("{part}: routes")))? {
                    if r.protocol == route::proto::BIRD
                        && (blocks.contains(&r.dst) || r.gateway.is_some() && r.gateway == node_ip)
                    {
                        left.push(format!("{part}: {}", r.dst));
                    }
                }
                for r in inspect::multipath_routes(&h, Family::V4).map_err(host(format!("{part}: routes")))? {
                    if r.nexthops.iter().any(|nh| nh.gateway.is_some() && nh.gateway == node_ip) {
                        left.push(format!("{part}: {} (a next hop)", r.dst));
                    }
                }
            }
            if left.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(LabError::Bgp {
                    node: node.into(),
                    msg: format!(
                        "routes to its blocks or through it still there after {WITHDRAW_TIMEOUT:?}: {}",
                        left.join(", ")
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
