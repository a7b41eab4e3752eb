//! The lab's inventory for `knit trace` and `knit doctor`: which namespace each fabric, node,
//! client and pod lives in, the pods' addresses, the Services with their endpoints. Written
//! next to the lab's state whenever it changes ([`crate::Lab`]), in trace's format, so trace
//! needs nothing of the lab.

use knit_trace::inventory::{self as inv, Inventory};

use crate::plan::LabPlan;
use crate::state::LabState;
use crate::topology::{PodKind, FABRIC_NAME};

fn kind(k: PodKind) -> inv::PodKind {
    match k {
        PodKind::Overlay => inv::PodKind::Overlay,
        PodKind::Underlay => inv::PodKind::Underlay,
        PodKind::Multinic => inv::PodKind::Multinic,
    }
}

/// The inventory of a lab as built.
pub fn of(plan: &LabPlan, state: &LabState) -> Inventory {
    let topo = &plan.topo;
    let place = |name: &str| inv::Place { name: name.to_string(), netns: plan.ns(name) };
    Inventory {
        name: plan.name.clone(),
        default_port: Some(topo.echo_port),
        fabric: vec![place(FABRIC_NAME)],
        nodes: topo
            .nodes
            .iter()
            .map(|n| inv::Node { name: n.name.clone(), netns: plan.ns(&n.name), ip: n.ip.addr() })
            .collect(),
        clients: topo.clients.iter().map(|c| place(&c.name)).collect(),
        // Pods in topology order (as the namespaces were made), with the addresses CNI gave them.
        pods: topo
            .pods
            .iter()
            .filter_map(|p| state.pods.get(&p.name))
            .map(|p| inv::Pod {
                name: p.name.clone(),
                netns: plan.ns(&p.name),
                node: p.node.clone(),
                kind: kind(p.kind),
                ips: p.ips.clone(),
            })
            .collect(),
        services: topo
            .services
            .iter()
            .map(|svc| inv::Service {
                name: svc.name.clone(),
                cluster_ip: svc.cluster_ip,
                port: svc.port,
                node_port: svc.node_port,
                endpoints: crate::Lab::service_endpoints(state, svc)
                    .into_iter()
                    .filter_map(|(ip, node)| {
                        let pod = state.pods.values().find(|p| p.primary_ip() == Some(ip))?;
                        Some(inv::Endpoint { pod: pod.name.clone(), ip, node })
                    })
                    .collect(),
            })
            .collect(),
    }
}
