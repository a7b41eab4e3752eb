//! What is where: the namespaces a trace reads and what lives in them (fabric, nodes, clients,
//! pods with their addresses, Services with their endpoints and ports).
//!
//! trace knows nothing about how these were made. Whoever made them writes this description as
//! JSON: `knit lab` writes `<lab dir>/inventory.json` for every lab it builds, and a real node
//! (its agent, or an operator) can write one for the host and its pods. Without an inventory,
//! trace reads the host namespace and every namespace under /run/netns ([`crate::snapshot::read_node`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Where `knit lab` keeps its labs (each in `<dir>/<lab>/`).
pub const LAB_RUN_DIR: &str = "/run/knit/lab";
/// The inventory's file name in a lab's directory.
pub const FILE_NAME: &str = "inventory.json";

/// A namespace and its name for people. `netns` is a name under /run/netns, an absolute path
/// to a namespace file (`/proc/PID/ns/net`, a bind mount), or empty for the host's namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Place {
    /// Display name (`fabric`, `node1`, `extclient`).
    pub name: String,
    /// Where the namespace is.
    #[serde(default)]
    pub netns: String,
}

/// A node: its namespace and the address other nodes and clients reach it at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Display name.
    pub name: String,
    /// Where the namespace is.
    #[serde(default)]
    pub netns: String,
    /// The node's address (NodePorts, `knit trace x node1`).
    pub ip: IpAddr,
}

/// What made a pod's interfaces (doctor's checks differ for underlay pods).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PodKind {
    /// `eth0` from knit-routed.
    Overlay,
    /// `eth0` from macvlan + knit-coordinator (underlay mode).
    Underlay,
    /// `eth0` from knit-routed, `net1` from macvlan + knit-coordinator.
    Multinic,
    /// Anything else.
    Other,
}

/// A pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pod {
    /// Pod name.
    pub name: String,
    /// Where the namespace is.
    #[serde(default)]
    pub netns: String,
    /// Its node's name.
    pub node: String,
    /// What made it.
    pub kind: PodKind,
    /// Interface name → addresses.
    #[serde(default)]
    pub ips: BTreeMap<String, Vec<IpAddr>>,
}

impl Pod {
    /// The address Kubernetes lists for the pod (its `eth0`).
    pub fn primary_ip(&self) -> Option<IpAddr> {
        self.ips.get("eth0").and_then(|v| v.first()).copied()
    }
}

/// One endpoint of a Service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// The pod behind it.
    pub pod: String,
    /// Its address.
    pub ip: IpAddr,
    /// Its node.
    pub node: String,
}

/// A Service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// Name (`svc/NAME` on the command line).
    pub name: String,
    /// ClusterIP.
    pub cluster_ip: IpAddr,
    /// Service port.
    pub port: u16,
    /// NodePort, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_port: Option<u16>,
    /// The pods behind it.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
}

/// The whole description.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    /// What it describes (a lab's or a node's name).
    pub name: String,
    /// The port of a destination given without one (the lab's echo port); 80 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_port: Option<u16>,
    /// Switches and routers between nodes (the lab's fabric namespace).
    #[serde(default)]
    pub fabric: Vec<Place>,
    /// Nodes.
    #[serde(default)]
    pub nodes: Vec<Node>,
    /// Clients outside the cluster.
    #[serde(default)]
    pub clients: Vec<Place>,
    /// Pods.
    #[serde(default)]
    pub pods: Vec<Pod>,
    /// Services.
    #[serde(default)]
    pub services: Vec<Service>,
}

impl Inventory {
    /// Reads an inventory file.
    pub fn load(path: &Path) -> Result<Inventory> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Other(format!("{}: {e}", path.display())))?;
        serde_json::from_str(&text).map_err(|e| Error::Other(format!("{}: {e}", path.display())))
    }

    /// Writes it atomically (temp file + rename), so a trace never reads half of it.
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(|e| Error::Other(e.to_string()))?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, text).map_err(|e| Error::Other(format!("{}: {e}", tmp.display())))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::Other(format!("{}: {e}", path.display())))
    }

    /// The pod called `name`.
    pub fn pod(&self, name: &str) -> Option<&Pod> {
        self.pods.iter().find(|p| p.name == name)
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The Service called `name`.
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }

    /// Whether some pod has address `ip`.
    pub fn is_pod_ip(&self, ip: IpAddr) -> bool {
        self.pods.iter().any(|p| p.ips.values().flatten().any(|a| *a == ip))
    }

    /// The pods a trace from `src` to `dst` can reach: the source and destination pods (by
    /// name or address) and every Service endpoint (a ClusterIP or NodePort leads to one).
    pub fn pods_for(&self, src: &str, dst: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for spec in [src, dst] {
            let host = spec.strip_prefix("svc/").unwrap_or(spec);
            // `pod:port`, `ip:port`, `[v6]:port`
            let host = match host.rsplit_once(':') {
                Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) && !h.contains(':') => h,
                _ => host,
            };
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if self.pod(host).is_some() {
                out.insert(host.to_string());
            } else if let Ok(ip) = host.parse::<IpAddr>() {
                out.extend(
                    self.pods.iter().filter(|p| p.ips.values().flatten().any(|a| *a == ip)).map(|p| p.name.clone()),
                );
            }
        }
        for svc in &self.services {
            out.extend(svc.endpoints.iter().map(|e| e.pod.clone()));
        }
        out
    }
}

/// The inventory file of lab `name` under `run_dir`.
pub fn lab_file(run_dir: &Path, name: &str) -> PathBuf {
    run_dir.join(name).join(FILE_NAME)
}

/// The labs with a directory under `run_dir`, sorted.
pub fn labs_in(run_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(run_dir)
        .map(|rd| rd.flatten().filter_map(|e| e.file_name().to_str().map(String::from)).collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// "no lab X (labs here: a, b)": what to say about a lab that isn't there.
pub fn no_lab_message(run_dir: &Path, name: &str) -> String {
    let labs = labs_in(run_dir);
    if labs.is_empty() {
        format!("no lab {name} (no labs here, in {})", run_dir.display())
    } else {
        format!("no lab {name} (labs here: {})", labs.join(", "))
    }
}

/// Reads lab `name`'s inventory, with the lab-level error when the lab doesn't exist.
pub fn load_lab(run_dir: &Path, name: &str) -> Result<Inventory> {
    let path = lab_file(run_dir, name);
    if !run_dir.join(name).is_dir() {
        return Err(Error::Other(no_lab_message(run_dir, name)));
    }
    if !path.exists() {
        return Err(Error::Other(format!(
            "lab {name} has no {} (still being built, or built by an older knit; knit lab down --name {name} and up again)",
            path.display()
        )));
    }
    Inventory::load(&path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inv() -> Inventory {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        Inventory {
            name: "t".into(),
            default_port: Some(8080),
            fabric: vec![Place { name: "fabric".into(), netns: "x-fabric".into() }],
            nodes: vec![Node { name: "n1".into(), netns: "x-n1".into(), ip: ip("192.0.2.2") }],
            clients: Vec::new(),
            pods: vec![
                Pod {
                    name: "a".into(),
                    netns: "x-a".into(),
                    node: "n1".into(),
                    kind: PodKind::Overlay,
                    ips: [("eth0".to_string(), vec![ip("10.9.0.1")])].into(),
                },
                Pod {
                    name: "b".into(),
                    netns: "x-b".into(),
                    node: "n1".into(),
                    kind: PodKind::Underlay,
                    ips: [("eth0".to_string(), vec![ip("192.0.2.50")])].into(),
                },
                Pod {
                    name: "c".into(),
                    netns: "x-c".into(),
                    node: "n1".into(),
                    kind: PodKind::Overlay,
                    ips: [("eth0".to_string(), vec![ip("10.9.0.3")])].into(),
                },
            ],
            services: vec![Service {
                name: "web".into(),
                cluster_ip: ip("10.96.0.10"),
                port: 80,
                node_port: None,
                endpoints: vec![Endpoint { pod: "c".into(), ip: ip("10.9.0.3"), node: "n1".into() }],
            }],
        }
    }

    #[test]
    fn a_trace_needs_its_ends_and_every_service_endpoint() {
        let i = inv();
        let want: BTreeSet<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        assert_eq!(i.pods_for("a", "192.0.2.50:8080"), want);
        let only_c: BTreeSet<String> = ["c".to_string()].into();
        assert_eq!(i.pods_for("n1", "svc/web"), only_c);
    }

    #[test]
    fn round_trips_through_json() {
        let i = inv();
        let text = serde_json::to_string(&i).unwrap();
        assert_eq!(serde_json::from_str::<Inventory>(&text).unwrap(), i);
        // The minimal file a node could write: one namespace, the host's.
        let min: Inventory =
            serde_json::from_str(r#"{"name":"n","nodes":[{"name":"host","ip":"192.0.2.9"}]}"#).unwrap();
        assert_eq!(min.nodes[0].netns, "");
    }
}
