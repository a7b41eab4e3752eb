//! The place a runtime test runs: a fabric namespace (the switch, holding the underlay gateway)
//! and one node namespace plugged into it, an IP plan of the test's own, a knit-ipam store in the
//! test's scratch directory shared by the overlay and the underlay network, and their conflists.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use knit_host::testing::TestNet;
use knit_host::Netns;
use knit_testkit::{Fabric, Scratch};
use serde_json::{json, Value};

use crate::node::NodeState;

/// The coordinator's host rule table (its default).
pub const HOST_RULE_TABLE: u32 = 500;

/// An IP plan: nothing here is the lab's default, so nothing depends on it.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// The underlay gateway on the fabric's bridge (CIDR): the node's subnet.
    pub gateway: &'static str,
    /// The node's address on its uplink `eth0` (CIDR).
    pub node: &'static str,
    pub node_name: &'static str,
    /// The underlay pool's first and last address (inside the gateway's subnet).
    pub underlay_range: (&'static str, &'static str),
    /// The overlay pool and its per-node block size.
    pub overlay: &'static str,
    pub block_size: u8,
    /// The Service CIDR (only the coordinator's routes use it).
    pub services: &'static str,
}

impl Plan {
    fn net(cidr: &str) -> IpNet {
        cidr.parse().unwrap_or_else(|e| panic!("plan CIDR {cidr}: {e}"))
    }

    /// The node's address.
    pub fn node_ip(&self) -> IpAddr {
        Plan::net(self.node).addr()
    }

    /// The gateway's address.
    pub fn gateway_ip(&self) -> IpAddr {
        Plan::net(self.gateway).addr()
    }

    /// The underlay subnet.
    pub fn underlay_subnet(&self) -> IpNet {
        Plan::net(self.gateway).trunc()
    }

    /// The overlay pool.
    pub fn overlay_net(&self) -> IpNet {
        Plan::net(self.overlay)
    }
}

/// The fabric, the node and the store of one test.
pub struct Site<'a> {
    pub tn: &'a TestNet,
    pub plan: Plan,
    pub fabric: Fabric<'a>,
    pub node: Netns,
    pub dir: Scratch,
    /// knit-ipam's local store (`dataDir`), shared by both networks.
    pub store: PathBuf,
    /// knit-testplugin's log of the runtime's calls.
    pub calls: PathBuf,
    /// The plugins' log (`KNIT_LOG_FILE`).
    pub knit_log: PathBuf,
}

impl<'a> Site<'a> {
    /// Builds the fabric and the node; `tag` names the scratch directory.
    pub fn new(tn: &'a TestNet, plan: Plan, tag: &str) -> Site<'a> {
        let fabric = Fabric::new(tn, &[plan.gateway]);
        let node = fabric.node("node", plan.node, &plan.gateway_ip().to_string());
        let dir = Scratch::new(tag);
        let store = dir.path.join("ipam");
        let calls = dir.path.join("calls.jsonl");
        let knit_log = dir.path.join("knit.log");
        Site { tn, plan, fabric, node, dir, store, calls, knit_log }
    }

    /// knit-routed with knit-ipam's overlay pool.
    pub fn overlay_plugins(&self) -> Vec<Value> {
        vec![json!({
            "type": "knit-routed",
            "nodename": self.plan.node_name,
            "ipam": {
                "type": "knit-ipam",
                "node": self.plan.node_name,
                "dataDir": self.store.to_string_lossy(),
                "pools": [{"name": "overlay", "cidr": self.plan.overlay, "blockSize": self.plan.block_size}]
            }
        })]
    }

    /// Debian's macvlan on the node's uplink with knit-ipam's shared underlay pool, then
    /// knit-coordinator in underlay mode with this plan's cluster CIDRs.
    pub fn underlay_plugins(&self) -> Vec<Value> {
        let gw = self.plan.gateway_ip().to_string();
        vec![
            json!({
                "type": "macvlan",
                "master": "eth0",
                "mode": "bridge",
                "ipam": {
                    "type": "knit-ipam",
                    "node": self.plan.node_name,
                    "dataDir": self.store.to_string_lossy(),
                    "pools": [{
                        "name": "underlay",
                        "cidr": self.plan.underlay_subnet().to_string(),
                        "blocks": false,
                        "rangeStart": self.plan.underlay_range.0,
                        "rangeEnd": self.plan.underlay_range.1,
                        "gateway": gw,
                        "routes": [{"dst": "0.0.0.0/0", "gw": gw}]
                    }]
                }
            }),
            json!({
                "type": "knit-coordinator",
                "mode": "underlay",
                "overlayPodCIDR": [self.plan.overlay],
                "serviceCIDR": [self.plan.services],
                "hijackCIDR": [],
                "hostRuleTable": HOST_RULE_TABLE
            }),
        ]
    }

    /// A conflist of `plugins` then the recorder. `cniVersion` 1.0.0 is what Debian 12's
    /// runtimes (libcni 1.1.2) can read; `cniVersions` is what newer ones choose from.
    pub fn conflist(&self, name: &str, plugins: Vec<Value>) -> Value {
        let mut plugins = plugins;
        plugins.push(crate::calls::recorder(&self.calls));
        json!({"cniVersion": "1.0.0", "cniVersions": ["1.0.0", "1.1.0"], "name": name, "plugins": plugins})
    }

    /// Writes `conf` as `dir/file` (atomically: runtimes may be reading the directory).
    pub fn write(&self, dir: &Path, file: &str, conf: &Value) -> PathBuf {
        let path = dir.join(file);
        let tmp = dir.join(format!(".{file}.tmp"));
        let text = serde_json::to_string_pretty(conf).unwrap_or_else(|e| panic!("conflist {file}: {e}"));
        std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
        std::fs::rename(&tmp, &path).unwrap_or_else(|e| panic!("rename to {}: {e}", path.display()));
        path
    }

    /// The environment the runtime passes on to the plugins (libcni adds its own to the
    /// runtime's): their log file (events at info and above), and the guard that makes a knit
    /// plugin refuse to act in the root network namespace.
    pub fn plugin_env(&self) -> Vec<(String, String)> {
        let (k, v) = knit_host::guard::child_env().unwrap_or_else(|e| panic!("guard env: {e}"));
        vec![("KNIT_LOG_FILE".into(), self.knit_log.to_string_lossy().into_owned()), (k.into(), v)]
    }

    /// The node's network state now.
    pub fn state(&self) -> NodeState {
        NodeState::read(self.tn, &self.node, HOST_RULE_TABLE).unwrap_or_else(|e| panic!("read the node's state: {e}"))
    }

    /// The plugins' log so far, for failure messages.
    pub fn knit_log(&self) -> String {
        std::fs::read_to_string(&self.knit_log).unwrap_or_default()
    }
}
