//! kube-proxy's rules on every node: the generator ([`crate::kubeproxy`]) renders them from
//! the Services and their endpoints as built, this loads them with `iptables-restore`.

use knit_host::{firewall, sysctl, Family};

use super::Lab;
use crate::error::{host, Result};
use crate::kubeproxy::{self, Mode, NodeConfig};
use crate::plan::K8S_NAMESPACE;

impl Lab {
    pub(crate) fn install_kube_proxy(&self, mode: Mode) -> Result<()> {
        let topo = &self.plan.topo;
        let mut ports = Vec::new();
        for svc in &topo.services {
            let eps = Lab::service_endpoints(&self.state, svc);
            ports.extend(kubeproxy::lab_service_ports(K8S_NAMESPACE, svc, &eps));
        }
        // 1.29+ is run the way Spiderpool asks for: with conntrack's liberal TCP tracking (and
        // so without the INVALID drop); the older one drops INVALID and tracks strictly.
        let liberal = mode == Mode::Modern;
        for n in &topo.nodes {
            let ns = self.netns(&n.name)?;
            let cfg =
                NodeConfig { node: n.name.clone(), cluster_cidr: topo.overlay_cidr, mode, tcp_be_liberal: liberal };
            let rules = kubeproxy::generate(&cfg, &ports);
            firewall::iptables_restore(Some(ns), Family::V4, &rules.restore_text(), false)
                .map_err(host(format!("{}: kube-proxy rules", n.name)))?;
            // The rules load conntrack, which makes this per-namespace sysctl appear.
            sysctl::set_in(ns, "net.netfilter.nf_conntrack_tcp_be_liberal", if liberal { "1" } else { "0" })
                .map_err(host(format!("{}: nf_conntrack_tcp_be_liberal", n.name)))?;
        }
        Ok(())
    }
}
