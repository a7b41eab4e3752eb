//! Pods through the real CNI path: each node's pods are added by `knit_cni::Runtime` from a
//! thread inside the node's namespace, as containerd runs plugins on a node.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use knit_cni::runtime::{Runtime, RuntimeArgs};
use knit_cni::NetConfList;
use knit_host::Netns;
use serde_json::Value;

use super::{check_cancel, Lab};
use crate::error::{host, LabError, Result};
use crate::state::{LabState, PodState};
use crate::topology::Endpoints;

impl Lab {
    pub(crate) fn add_pods(&mut self, cni_path: &[PathBuf], only_node: Option<&str>) -> Result<()> {
        let plan = &self.plan;
        let topo = &plan.topo;
        let namespaces = &self.namespaces;
        // Nodes in parallel (each is its own "kubelet"); a node's pods one after another.
        let results: Vec<Result<Vec<PodState>>> = std::thread::scope(|s| {
            let handles: Vec<_> = topo
                .nodes
                .iter()
                .filter(|n| only_node.is_none_or(|o| o == n.name))
                .map(|node| {
                    s.spawn(move || -> Result<Vec<PodState>> {
                        let node_ns = namespaces
                            .get(&plan.ns(&node.name))
                            .ok_or_else(|| LabError::Invalid(format!("no namespace for node {}", node.name)))?;
                        let runtime = Runtime::new(cni_path.to_vec(), plan.cni_state_dir(&node.name));
                        let mut pods = Vec::new();
                        for pod in topo.pods_on(&node.name) {
                            check_cancel()?;
                            let pod_ns = plan.ns(&pod.name);
                            let mut st = PodState {
                                name: pod.name.clone(),
                                node: pod.node.clone(),
                                kind: pod.kind,
                                pool: pod.pool.clone(),
                                ips: BTreeMap::new(),
                            };
                            for att in plan.attachments(pod)? {
                                let cni_err = |msg: String| LabError::Cni {
                                    verb: "ADD",
                                    pod: pod.name.clone(),
                                    ifname: att.ifname.clone(),
                                    node: node.name.clone(),
                                    msg,
                                };
                                let bytes = serde_json::to_vec(&att.conflist).map_err(|e| cni_err(e.to_string()))?;
                                let list = NetConfList::from_bytes(&bytes).map_err(|e| cni_err(e.msg.clone()))?;
                                let rt = RuntimeArgs {
                                    container_id: plan.container_id(&pod.name),
                                    netns: Netns::named_path(&pod_ns).to_string_lossy().into_owned(),
                                    ifname: att.ifname.clone(),
                                    args: plan.cni_args(&pod.name),
                                    capability_args: Default::default(),
                                };
                                let result = node_ns
                                    .run(|| runtime.add(&list, &rt))
                                    .map_err(host(format!("enter node {}", node.name)))?
                                    .map_err(|e| {
                                        cni_err(format!(
                                            "{} (code {}){}",
                                            e.msg,
                                            e.code,
                                            if e.details.is_empty() {
                                                String::new()
                                            } else {
                                                format!(": {}", e.details)
                                            }
                                        ))
                                    })?;
                                st.ips.insert(att.ifname.clone(), result_ips(&result, &att.ifname));
                            }
                            pods.push(st);
                        }
                        Ok(pods)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(LabError::Invalid("a CNI thread panicked".into()))))
                .collect()
        });
        for r in results {
            for p in r? {
                self.state.pods.insert(p.name.clone(), p);
            }
        }
        Ok(())
    }

    /// The (IP, node) endpoints of a Service, from the pods as built.
    pub fn service_endpoints(state: &LabState, svc: &crate::topology::Service) -> Vec<(IpAddr, String)> {
        let pods: Vec<&PodState> = match &svc.endpoints {
            Endpoints::Kind(k) => state.pods.values().filter(|p| p.kind == *k).collect(),
            Endpoints::Pods(names) => names.iter().filter_map(|n| state.pods.get(n)).collect(),
        };
        pods.iter().filter_map(|p| p.primary_ip().map(|ip| (ip, p.node.clone()))).collect()
    }
}

/// The addresses a CNI result gives interface `ifname` (or every address when the result
/// names no interfaces).
fn result_ips(result: &Value, ifname: &str) -> Vec<IpAddr> {
    let ifaces = result["interfaces"].as_array().cloned().unwrap_or_default();
    let parse = |v: &Value| v["address"].as_str().and_then(|a| a.parse::<IpNet>().ok()).map(|n| n.addr());
    let ips = result["ips"].as_array().cloned().unwrap_or_default();
    let mine: Vec<IpAddr> = ips
        .iter()
        .filter(|ip| {
            ip["interface"].as_u64().and_then(|i| ifaces.get(i as usize)).is_some_and(|iface| {
                iface["name"] == ifname && iface["sandbox"].as_str().is_some_and(|s| !s.is_empty())
            })
        })
        .filter_map(parse)
        .collect();
    if mine.is_empty() {
        ips.iter().filter_map(parse).collect()
    } else {
        mine
    }
}
