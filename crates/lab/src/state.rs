//! What a running lab is, written to `<lab dir>/state.json` once it is up, so that
//! `knit lab exec`, `status`, `down` and the matrix of another process can find it.

use std::collections::BTreeMap;
use std::fs;
use std::net::IpAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{io, LabError, Result};
use crate::topology::{PodKind, Topology};

/// A pod as built: where it runs and what addresses its interfaces got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodState {
    /// Pod name.
    pub name: String,
    /// Its node.
    pub node: String,
    /// Its kind.
    pub kind: PodKind,
    /// Its underlay pool (macvlan kinds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Interface name → addresses, from the CNI results.
    pub ips: BTreeMap<String, Vec<IpAddr>>,
}

impl PodState {
    /// The first address of `ifname`.
    pub fn ip(&self, ifname: &str) -> Option<IpAddr> {
        self.ips.get(ifname).and_then(|v| v.first()).copied()
    }

    /// The address Kubernetes lists for the pod (its `eth0`).
    pub fn primary_ip(&self) -> Option<IpAddr> {
        self.ip("eth0")
    }
}

/// A lab that is up.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabState {
    /// The lab's name.
    pub name: String,
    /// Its topology.
    pub topology: Topology,
    /// `legacy` or `modern`.
    pub kube_proxy: String,
    /// Whether nodes exchange underlay pod /32s (the cross-CNI fix).
    pub underlay_routes: bool,
    /// Pods by name.
    pub pods: BTreeMap<String, PodState>,
    /// Cluster mode: the lab's etcd endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd: Option<String>,
    /// Processes the lab started (BIRD, echo servers) that outlive the command.
    #[serde(default)]
    pub pids: Vec<u32>,
}

impl LabState {
    /// Reads `path`.
    pub fn load(path: &Path) -> Result<LabState> {
        let text = fs::read_to_string(path).map_err(io("read lab state", path))?;
        serde_json::from_str(&text).map_err(|e| LabError::Invalid(format!("{}: {e}", path.display())))
    }

    /// Writes `path` atomically (temp file + rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(|e| LabError::Invalid(e.to_string()))?;
        let tmp = path.with_extension("json.tmp");
        fs::write(&tmp, text).map_err(io("write lab state", &tmp))?;
        fs::rename(&tmp, path).map_err(io("write lab state", path))
    }
}
