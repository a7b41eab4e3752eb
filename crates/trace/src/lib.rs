//! knit-trace: `knit trace` and `knit doctor`.
//!
//! - [`inventory`]: what is where (pods, nodes, clients, Services and their namespaces), as the
//!   lab or a real node describes it;
//! - [`snapshot`]: reads links, addresses, rules, routes, neighbours, sysctls and iptables
//!   of a set of namespaces (an inventory's, or a real node's) into plain data;
//! - [`fib`]: the kernel's route lookup on that data (checked against `RTM_GETROUTE`);
//! - [`netfilter`]: iptables-save text and an evaluator for kube-proxy's and the coordinator's rules;
//! - [`nftables`]: native nf_tables tables (the coordinator's) shown to the evaluator as iptables rules;
//! - [`path`]: a packet's forward and reply path hop by hop, with NAT, conntrack and a verdict;
//! - [`doctor`]: problems a node has, without a packet in mind;
//! - [`render`]: the seeds' style of text.

pub mod doctor;
pub mod fib;
pub mod inventory;
pub mod netfilter;
pub mod nftables;
pub mod path;
pub mod render;
pub mod snapshot;

use std::net::IpAddr;

pub use inventory::Inventory;
pub use path::{trace, Proto, Request, Trace};
pub use snapshot::{NsSnap, Snapshot};

/// trace's errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A kernel read failed.
    #[error("{what}: {source}")]
    Host {
        /// What was being read.
        what: String,
        /// The host layer's error.
        #[source]
        source: knit_host::Error,
    },
    /// A name or address that doesn't resolve, and the like.
    #[error("{0}")]
    Other(String),
}

/// Result with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// A source as given on the command line: a namespace (pod, node, client) name or an address.
pub fn resolve_source(snap: &Snapshot, s: &str) -> Result<(usize, Option<IpAddr>)> {
    if let Some(i) = snap.ns_index(s) {
        return Ok((i, None));
    }
    let ip: IpAddr =
        s.parse().map_err(|_| Error::Other(format!("{s:?} is neither a namespace of the snapshot nor an address")))?;
    let i = snap.owner_of(ip).ok_or_else(|| Error::Other(format!("no namespace has address {ip}")))?;
    Ok((i, Some(ip)))
}

/// A destination: `pod`, `pod:port`, `ip`, `ip:port`, `svc/NAME` (an inventory Service's
/// ClusterIP). Returns the address and port (the inventory's default port, else 80, when none
/// is given).
pub fn resolve_destination(snap: &Snapshot, s: &str) -> Result<(IpAddr, u16)> {
    let default_port = snap.inventory.as_ref().and_then(|i| i.default_port).unwrap_or(80);
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return Ok((sa.ip(), sa.port()));
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok((ip, default_port));
    }
    let (name, port) = match s.rsplit_once(':') {
        Some((n, p)) => (n, Some(p.parse::<u16>().map_err(|_| Error::Other(format!("bad port in {s:?}")))?)),
        None => (s, None),
    };
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok((ip, port.unwrap_or(default_port)));
    }
    if let Some(inv) = &snap.inventory {
        if let Some(svc) = name.strip_prefix("svc/").and_then(|n| inv.service(n)) {
            return Ok((svc.cluster_ip, port.unwrap_or(svc.port)));
        }
        if let Some(pod) = inv.pod(name) {
            let ip = pod.primary_ip().ok_or_else(|| Error::Other(format!("pod {name} has no eth0 address")))?;
            return Ok((ip, port.unwrap_or(default_port)));
        }
        if let Some(n) = inv.node(name) {
            return Ok((n.ip, port.unwrap_or(default_port)));
        }
    }
    if let Some(i) = snap.ns_index(name) {
        let ip = snap.namespaces[i]
            .addrs
            .iter()
            .find(|a| !a.net.addr().is_loopback())
            .map(|a| a.net.addr())
            .ok_or_else(|| Error::Other(format!("{name} has no address")))?;
        return Ok((ip, port.unwrap_or(default_port)));
    }
    Err(Error::Other(format!("{s:?}: not a pod, node, Service (svc/NAME) or address")))
}
