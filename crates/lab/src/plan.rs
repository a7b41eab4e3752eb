//! What a lab is made of, as plain data: namespace and link names, the knit-ipam
//! configuration, and the conflists each pod's attachments run. Nothing here
//! touches the kernel, so the shapes are unit-tested without root.
//!
//! Every namespace is named `knit-<lab>-<part>`, so a lab's objects are found
//! (and removed) by its name alone.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::error::{LabError, Result};
use crate::topology::{Pod, PodKind, Topology, UnderlayPool, FABRIC_NAME};

/// Where labs keep their files (IPAM store, CNI cache, BIRD configs, state, inventory):
/// tmpfs, gone at reboot together with the namespaces it describes. trace looks there too.
pub const DEFAULT_RUN_DIR: &str = knit_trace::inventory::LAB_RUN_DIR;
/// Longest lab name: it is part of every namespace name.
pub const MAX_LAB_NAME_LEN: usize = 24;
/// The overlay network's name (Calico's, so conflists read as in a real cluster).
pub const OVERLAY_NETWORK: &str = "k8s-pod-network";
/// The pool name of the overlay in knit-ipam.
pub const OVERLAY_POOL: &str = "overlay";
/// The fabric bridge holding the underlay gateways.
pub const UNDERLAY_BRIDGE: &str = "br0";
/// The fabric bridge holding the external gateway.
pub const EXTERNAL_BRIDGE: &str = "brx";
/// Kubernetes namespace of the lab's pods and Services.
pub const K8S_NAMESPACE: &str = "default";

/// Checks a lab name: lower-case letters, digits and `-`, starting with a letter or digit.
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_LAB_NAME_LEN
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(LabError::Invalid(format!(
            "lab name {name:?}: use 1 to {MAX_LAB_NAME_LEN} characters out of a-z, 0-9 and '-', not starting with '-'"
        )))
    }
}

/// One CNI attachment of a pod: which network, which interface.
#[derive(Debug, Clone, PartialEq)]
pub struct Attachment {
    /// The interface in the pod.
    pub ifname: String,
    /// The conflist (as JSON) the runtime runs.
    pub conflist: Value,
}

/// A lab's names and generated configuration.
#[derive(Debug, Clone)]
pub struct LabPlan {
    /// The lab's name.
    pub name: String,
    /// The lab's directory.
    pub dir: PathBuf,
    /// Its topology.
    pub topo: Topology,
    /// Cluster mode: the lab's etcd (`http://<fabric gateway>:2379`); `None`: the file store.
    pub etcd: Option<String>,
}

impl LabPlan {
    /// A plan for lab `name` with files under `run_dir/<name>`.
    pub fn new(name: &str, run_dir: &Path, topo: Topology) -> Result<LabPlan> {
        validate_name(name)?;
        topo.validate()?;
        Ok(LabPlan { name: name.to_string(), dir: run_dir.join(name), topo, etcd: None })
    }

    /// The prefix of every namespace of this lab.
    pub fn ns_prefix(&self) -> String {
        ns_prefix(&self.name)
    }

    /// The fabric (switch + ToR) namespace.
    pub fn fabric_ns(&self) -> String {
        format!("{}{FABRIC_NAME}", self.ns_prefix())
    }

    /// A node's, pod's or client's namespace (their names are unique across all three).
    pub fn ns(&self, part: &str) -> String {
        format!("{}{part}", self.ns_prefix())
    }

    /// The fabric-side link of a node (`n-<node>`) or client (`c-<client>`).
    pub fn fabric_link(kind: char, name: &str) -> String {
        format!("{kind}-{name}")
    }

    /// knit-ipam's shared store: every node of the lab uses it, as nodes sharing a datastore do.
    pub fn ipam_dir(&self) -> PathBuf {
        self.dir.join("ipam")
    }

    /// A node's CNI result cache.
    pub fn cni_state_dir(&self, node: &str) -> PathBuf {
        self.dir.join("cni").join(node)
    }

    /// A node's BIRD directory (config, socket, pid file, log).
    pub fn bird_dir(&self, node: &str) -> PathBuf {
        self.dir.join("bird").join(node)
    }

    /// The state file.
    pub fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    /// The inventory file (what is where, for `knit trace`).
    pub fn inventory_path(&self) -> PathBuf {
        self.dir.join(knit_trace::inventory::FILE_NAME)
    }

    /// The container ID a pod's attachments use.
    pub fn container_id(&self, pod: &str) -> String {
        // 64 hex digits, as containerd's IDs: plugins name host links after its first
        // characters (the coordinator's `veth` + 11), so they must differ between pods.
        use sha2::{Digest, Sha256};
        let d = Sha256::digest(format!("knit-lab/{}/{pod}", self.name).as_bytes());
        d.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// CNI_ARGS of a pod, as the kubelet sets them.
    pub fn cni_args(&self, pod: &str) -> Vec<(String, String)> {
        vec![
            // Go plugins refuse CNI_ARGS they don't know unless told otherwise.
            ("IgnoreUnknown".into(), "1".into()),
            ("K8S_POD_NAMESPACE".into(), K8S_NAMESPACE.into()),
            ("K8S_POD_NAME".into(), pod.into()),
            ("K8S_POD_INFRA_CONTAINER_ID".into(), self.container_id(pod)),
        ]
    }

    /// The coordinator's CIDR file a node agent writes (cluster mode).
    pub fn cidr_file(&self, node: &str) -> PathBuf {
        self.dir.join(format!("coordinator-{node}.json"))
    }

    fn ipam(&self, node: &str, pool: Value) -> Value {
        match &self.etcd {
            None => json!({
                "type": "knit-ipam",
                "node": node,
                "dataDir": self.ipam_dir(),
                "pools": [pool],
            }),
            // Cluster mode: state in etcd; dataDir only holds the node's lock file.
            Some(ep) => json!({
                "type": "knit-ipam",
                "node": node,
                "store": "etcd",
                "etcdEndpoints": [ep],
                "dataDir": self.ipam_dir().join(node),
                "pools": [pool],
            }),
        }
    }

    fn coordinator(&self, node: &str) -> Value {
        match &self.etcd {
            None => json!({
                "type": "knit-coordinator",
                "mode": "auto",
                "overlayPodCIDR": [self.topo.overlay_cidr.to_string()],
                "serviceCIDR": [self.topo.service_cidr.to_string()],
                "hijackCIDR": [],
            }),
            // Cluster mode: the CIDRs come from the file the node agent writes from etcd.
            Some(_) => json!({
                "type": "knit-coordinator",
                "mode": "auto",
                "cidrFile": self.cidr_file(node),
            }),
        }
    }

    /// The overlay conflist on `node`: knit-routed with knit-ipam's per-node blocks.
    pub fn overlay_conflist(&self, node: &str) -> Value {
        let pool = json!({
            "name": OVERLAY_POOL,
            "cidr": self.topo.overlay_cidr.to_string(),
            "blockSize": self.topo.block_size,
        });
        json!({
            "cniVersion": "1.0.0",
            "name": OVERLAY_NETWORK,
            "plugins": [{
                "type": "knit-routed",
                "mtu": 1500,
                "nodename": node,
                "ipam": self.ipam(node, pool),
            }],
        })
    }

    /// A macvlan conflist on `node` for `pool`: Debian macvlan on the node's eth0 with
    /// knit-ipam (no block affinity: the subnet is the fabric's, shared by all nodes), then
    /// knit-coordinator, which picks underlay mode for `eth0` and overlay mode for `net1`.
    pub fn macvlan_conflist(&self, node: &str, pool: &UnderlayPool) -> Value {
        let gw = pool.gateway.to_string();
        let default = if pool.gateway.is_ipv4() { "0.0.0.0/0" } else { "::/0" };
        let ipam_pool = json!({
            "name": pool.name,
            "cidr": pool.cidr.to_string(),
            "blocks": false,
            "rangeStart": pool.range_start.to_string(),
            "rangeEnd": pool.range_end.to_string(),
            "gateway": gw,
            "routes": [{"dst": default, "gw": gw}],
        });
        json!({
            "cniVersion": "1.0.0",
            "name": format!("macvlan-{}", pool.name),
            "plugins": [
                {
                    "type": "macvlan",
                    "master": "eth0",
                    "mode": "bridge",
                    "ipam": self.ipam(node, ipam_pool),
                },
                self.coordinator(node),
            ],
        })
    }

    /// A pod's attachments, in the order the kubelet (and Multus) makes them.
    pub fn attachments(&self, pod: &Pod) -> Result<Vec<Attachment>> {
        let pool = || -> Result<&UnderlayPool> {
            let name = pod.pool.as_deref().ok_or_else(|| LabError::Invalid(format!("pod {}: no pool", pod.name)))?;
            self.topo.pool(name).ok_or_else(|| LabError::Invalid(format!("pod {}: no pool {name}", pod.name)))
        };
        Ok(match pod.kind {
            PodKind::Overlay => vec![Attachment { ifname: "eth0".into(), conflist: self.overlay_conflist(&pod.node) }],
            PodKind::Underlay => {
                vec![Attachment { ifname: "eth0".into(), conflist: self.macvlan_conflist(&pod.node, pool()?) }]
            }
            PodKind::Multinic => vec![
                Attachment { ifname: "eth0".into(), conflist: self.overlay_conflist(&pod.node) },
                Attachment { ifname: "net1".into(), conflist: self.macvlan_conflist(&pod.node, pool()?) },
            ],
        })
    }
}

/// The lab's etcd client URL: port 2379 on the fabric's first IPv4 gateway.
pub fn etcd_endpoint(topo: &Topology) -> Result<String> {
    topo.fabric
        .gateways
        .iter()
        .find(|g| g.addr().is_ipv4())
        .map(|g| format!("http://{}:2379", g.addr()))
        .ok_or_else(|| LabError::Invalid("fabric: cluster mode needs an IPv4 gateway for etcd".into()))
}

/// The namespace-name prefix of lab `name`.
pub fn ns_prefix(name: &str) -> String {
    format!("knit-{name}-")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> LabPlan {
        LabPlan::new("t1", Path::new("/run/knit/lab"), Topology::default_lab().unwrap()).unwrap()
    }

    #[test]
    fn names_carry_the_lab_name() {
        let p = plan();
        assert_eq!(p.fabric_ns(), "knit-t1-fabric");
        assert_eq!(p.ns("node1"), "knit-t1-node1");
        let (a, b) = (p.container_id("underlay1"), p.container_id("underlay2"));
        assert_eq!(a.len(), 64);
        assert_ne!(a[..11], b[..11], "host link names derive from the first characters");
        assert!(p.ipam_dir().starts_with("/run/knit/lab/t1"));
    }

    #[test]
    fn bad_lab_names_are_refused() {
        for bad in ["", "-x", "A", "a b", "a/b", &"x".repeat(25)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        validate_name("matrix-123").unwrap();
    }

    #[test]
    fn multinic_pods_get_eth0_then_net1() {
        let p = plan();
        let pod = p.topo.pods.iter().find(|x| x.kind == PodKind::Multinic).unwrap().clone();
        let atts = p.attachments(&pod).unwrap();
        assert_eq!(atts.iter().map(|a| a.ifname.as_str()).collect::<Vec<_>>(), ["eth0", "net1"]);
        assert_eq!(atts[0].conflist["plugins"][0]["type"], "knit-routed");
        assert_eq!(atts[1].conflist["plugins"][0]["type"], "macvlan");
        assert_eq!(atts[1].conflist["plugins"][1]["type"], "knit-coordinator");
        assert_eq!(atts[1].conflist["plugins"][0]["ipam"]["pools"][0]["blocks"], false);
    }
}
