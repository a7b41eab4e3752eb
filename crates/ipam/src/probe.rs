//! Probes on the pod interface during ADD: address conflicts, the gateway, gratuitous ARP.
//!
//! Enabled per pool (or for every pool from the ipam object) with `detectIPConflict` and
//! `detectGateway`. Meant for **underlay pools** (macvlan, ipvlan, bridge on a real L2): the
//! main plugin has already created `CNI_IFNAME` in `CNI_NETNS` when it calls IPAM (Debian's
//! macvlan does), so knit-ipam probes from the pod's own interface and MAC. When the
//! interface does not exist yet (knit-routed creates its veth after IPAM; and there proxy ARP
//! would answer for every address anyway) or `CNI_NETNS` is empty, nothing is probed.
//! IPv4 only (ARP); IPv6 pools are never probed (no NDP DAD).
//!
//! [`allocate`] runs an ADD:
//! 1. allocate as usual;
//! 2. open the interface; bring it up if it is down (it is put back down at the end, so the
//!    probe leaves no trace), and open an `AF_PACKET` socket on it ([`knit_host::arp`]);
//! 3. **conflict probe**: for every IPv4 address of a `detectIPConflict` pool, an RFC 5227
//!    probe (ARP request, sender IP `0.0.0.0`), [`TRIES`] tries spread over at most
//!    [`PROBE_TIME`]. An ARP packet from another MAC with that address as sender (a reply, or
//!    any request), or another host's probe for it, is a conflict. The address is then
//!    **marked** and the attachment gets the next one (probed in turn), all in one store
//!    transaction: the marker is an ordinary allocation of the attachment
//!    (`conflict:<ip>`, [`CONFLICT_IFNAME`]) on this node (in an affinity pool: on the
//!    block's owner), so every store, `knit ipam show` and the allocator see it as in use.
//!    It stays until `knit ipam release --container-id conflict:<ip>` or a GC that does not
//!    list it (CNI GC does not, so a GC gives the address another chance; a later ADD that
//!    still finds it taken marks it again). At most [`MAX_CONFLICTS`] addresses are marked
//!    per ADD; then the ADD fails with code 11 (a link where everything answers, like a
//!    proxy-ARP veth, would otherwise eat the pool). A requested address (`IP=`,
//!    runtimeConfig `ips`) or a fixed IP the pod identity already held is not replaced: the
//!    ADD fails with code 111 and nothing is marked;
//! 4. **gateway probe**: for every `detectGateway` pool, an ARP request for the gateway with
//!    the new address as sender; no reply within [`PROBE_TIME`] fails the ADD with **code 11**
//!    (try again later: a gateway that does not answer is usually transient, a switch port or
//!    a router coming up, and the runtime retries the sandbox; code 7 is kept for configs
//!    that are wrong in themselves);
//! 5. **gratuitous ARP** (an RFC 5227 announcement) for every probed address, so neighbours
//!    drop stale entries of a previous owner. Sent only when a probe is on for the pool (the
//!    interface is open then anyway); best effort, a send failure does not fail the ADD.
//!
//! Any failure after step 1 releases the attachment again (fixed IPs stay reserved for their
//! pod identity, as on DEL) and restores the link state.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use knit_host::arp::{ArpPacket, ArpSocket, Interface, OP_REPLY, OP_REQUEST};
use knit_host::{Mac, Netns};

use crate::error::{Error, CODE_IO, CODE_TRY_AGAIN};
use crate::state::{AllocRequest, State};
use crate::store::Store;
use crate::{addr, Ipam, IpamResult, Scope};

/// Probe packets sent per address (conflict) or gateway.
pub const TRIES: u32 = 3;
/// Upper bound of one probe (all its tries).
pub const PROBE_TIME: Duration = Duration::from_secs(1);
/// Addresses marked as conflicting per ADD before giving up (code 11).
pub const MAX_CONFLICTS: usize = 4;
/// Interface name of conflict markers (so `knit ipam release --container-id conflict:IP`
/// finds them with its default `--ifname`).
pub const CONFLICT_IFNAME: &str = "eth0";
/// Container-ID prefix of conflict markers.
pub const CONFLICT_PREFIX: &str = "conflict:";

/// The container ID of the marker of a conflicting address.
pub fn conflict_container_id(ip: IpAddr) -> String {
    format!("{CONFLICT_PREFIX}{ip}")
}

/// A failed ADD step: the CNI code and message to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeError {
    pub code: u32,
    pub msg: String,
}

impl std::fmt::Display for ProbeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (code {})", self.msg, self.code)
    }
}

impl std::error::Error for ProbeError {}

impl From<Error> for ProbeError {
    fn from(e: Error) -> Self {
        ProbeError { code: e.cni_code(), msg: e.msg() }
    }
}

fn host_err(what: &str, e: knit_host::Error) -> ProbeError {
    ProbeError { code: CODE_IO, msg: format!("{what}: {e}") }
}

/// The pod interface opened for probing, with an ARP socket on it.
pub struct Prober {
    iface: Interface,
    sock: ArpSocket,
    mac: Mac,
}

impl Prober {
    /// Opens `ifname` in the namespace at `netns`, bringing it up if it is down. `None` when
    /// the interface does not exist.
    pub fn open(netns: &str, ifname: &str) -> Result<Option<Prober>, ProbeError> {
        let what = format!("probe {ifname} in {netns}");
        let ns = Netns::open(netns).map_err(|e| host_err(&what, e))?;
        let Some(mut iface) = Interface::open(&ns, ifname).map_err(|e| host_err(&what, e))? else {
            return Ok(None);
        };
        let mac = iface.mac().map_err(|e| host_err(&what, e))?;
        // Up first: a packet socket bound to a down link reports ENETDOWN on its first send.
        iface.ensure_up().map_err(|e| host_err(&what, e))?;
        let sock = ArpSocket::open(&ns, &iface).map_err(|e| host_err(&what, e))?;
        Ok(Some(Prober { iface, sock, mac }))
    }

    /// The interface's MAC.
    pub fn mac(&self) -> Mac {
        self.mac
    }

    /// Sends `pkt` up to [`TRIES`] times, evenly over [`PROBE_TIME`], until `pred` accepts a
    /// received packet.
    fn ask(&self, pkt: ArpPacket, mut pred: impl FnMut(&ArpPacket) -> bool) -> Result<Option<ArpPacket>, ProbeError> {
        let start = Instant::now();
        let what = format!("ARP on {}", self.iface.name());
        for i in 1..=TRIES {
            self.sock.send(&pkt).map_err(|e| host_err(&what, e))?;
            let deadline = start + PROBE_TIME * i / TRIES;
            if let Some(p) = self.sock.wait_for(deadline, &mut pred).map_err(|e| host_err(&what, e))? {
                return Ok(Some(p));
            }
        }
        Ok(None)
    }

    /// RFC 5227 probe for `ip`: the MAC of another host using (or probing for) it, if any.
    pub fn conflict(&self, ip: Ipv4Addr) -> Result<Option<Mac>, ProbeError> {
        let me = self.mac;
        let hit = self.ask(ArpPacket::probe(me, ip), |p| {
            p.sender_mac != me
                && (p.sender_ip == ip || (p.op == OP_REQUEST && p.sender_ip.is_unspecified() && p.target_ip == ip))
        })?;
        Ok(hit.map(|p| p.sender_mac))
    }

    /// ARP request for `gateway` from `sender`: the gateway's MAC, if it answered.
    pub fn gateway(&self, sender: Ipv4Addr, gateway: Ipv4Addr) -> Result<Option<Mac>, ProbeError> {
        let me = self.mac;
        let hit = self.ask(ArpPacket::request(me, sender, gateway), |p| {
            p.op == OP_REPLY && p.sender_ip == gateway && p.sender_mac != me
        })?;
        Ok(hit.map(|p| p.sender_mac))
    }

    /// Gratuitous ARP (announcement) for `ip`.
    pub fn announce(&self, ip: Ipv4Addr) -> Result<(), ProbeError> {
        self.sock
            .send(&ArpPacket::announcement(self.mac, ip))
            .map_err(|e| host_err(&format!("gratuitous ARP on {}", self.iface.name()), e))
    }

    /// Puts the interface back down if [`Prober::open`] brought it up.
    pub fn finish(mut self) -> Result<(), ProbeError> {
        let what = format!("restore {}", self.iface.name());
        self.iface.restore().map_err(|e| host_err(&what, e))
    }
}

/// Whether any pool of `ipam`'s config has a probe on.
pub fn enabled<S: Store>(ipam: &Ipam<S>) -> bool {
    ipam.cfg.pools.iter().any(|p| p.detect_ip_conflict || p.detect_gateway)
}

/// The fixed IPs `req`'s pod identity holds in `st` (any pool, any interface).
fn fixed_of(st: &State, req: &AllocRequest) -> HashSet<IpAddr> {
    let mut out = HashSet::new();
    let Some(pod) = &req.pod else {
        return out;
    };
    for ps in &st.pools {
        for b in ps.blocks.values() {
            for (off, a) in &b.allocs {
                if a.fixed && a.pod.as_ref() == Some(pod) {
                    out.insert(addr::from_u128(ps.cfg.family(), b.base + off));
                }
            }
        }
    }
    out
}

impl<S: Store> Ipam<S> {
    /// Mark `ip` (held by `req`'s attachment) as conflicting and give the attachment fresh
    /// addresses, in one transaction. `fixed_before`: the fixed IPs the pod identity held
    /// before this ADD (one of them is not replaced: code 111).
    pub fn replace_conflicting(
        &self,
        req: &AllocRequest,
        ip: IpAddr,
        fixed_before: &HashSet<IpAddr>,
    ) -> crate::Result<IpamResult> {
        let node = self.cfg.node.clone();
        let marker = AllocRequest::new(conflict_container_id(ip), CONFLICT_IFNAME).with_ip(ip);
        let grants = self.transact(Scope::Config, |st| {
            let n = addr::to_u128(&ip);
            let mut found = None;
            for (p, ps) in st.pools.iter().enumerate() {
                if !ps.cfg.cidr.contains(&ip) {
                    continue;
                }
                for b in ps.blocks.values() {
                    if b.cidr.contains(&ip) {
                        let a = b.allocs.get(&(n - b.base));
                        let owner = b.owner.clone().filter(|_| ps.cfg.affinity);
                        found = Some((p, owner, a.is_some_and(|a| a.fixed && a.pod.is_some())));
                    }
                }
            }
            let Some((p, owner, fixed)) = found else {
                return Err(Error::IpUnavailable(format!(
                    "{ip} is in use on the network, and no longer allocated here"
                )));
            };
            if fixed && fixed_before.contains(&ip) {
                return Err(Error::IpUnavailable(format!(
                    "fixed IP {ip} of pod {} is in use by another host on the network; \
                     free it with `knit ipam release --pod` or remove the other host",
                    req.pod.as_ref().map(|p| p.to_string()).unwrap_or_default()
                )));
            }
            st.release(&req.container_id, &req.ifname);
            if fixed {
                // A fresh fixed IP (the identity held none before): drop its reservation.
                if !fixed_before.is_empty() {
                    return Err(Error::IpUnavailable(format!(
                        "fixed IP {ip} is in use by another host on the network"
                    )));
                }
                if let Some(pod) = &req.pod {
                    st.release_fixed(pod);
                }
            }
            st.allocate(owner.as_deref().unwrap_or(&node), &marker, Some(&[p]))?;
            st.allocate(&node, req, None)
        })?;
        Ok(self.result(&grants))
    }
}

/// ADD with probes: see the module doc. Without a probe enabled this is [`Ipam::allocate`].
pub fn allocate<S: Store>(
    ipam: &Ipam<S>,
    req: &AllocRequest,
    netns: &str,
    ifname: &str,
) -> Result<IpamResult, ProbeError> {
    if !enabled(ipam) || netns.is_empty() {
        return Ok(ipam.allocate(req)?);
    }
    let fixed_before = if req.pod.is_some() && ipam.cfg.pools.iter().any(|p| p.fixed_ips) {
        fixed_of(&ipam.snapshot()?, req)
    } else {
        HashSet::new()
    };
    let r = ipam.allocate(req)?;
    let prober = match Prober::open(netns, ifname) {
        Ok(Some(p)) => p,
        Ok(None) => return Ok(r),
        Err(e) => {
            let _ = ipam.release(&req.container_id, &req.ifname);
            return Err(e);
        }
    };
    let out = probe_all(ipam, req, &prober, r, &fixed_before);
    let restored = prober.finish();
    match out.and_then(|r| restored.map(|()| r)) {
        Ok(r) => Ok(r),
        Err(e) => {
            let _ = ipam.release(&req.container_id, &req.ifname);
            Err(e)
        }
    }
}

/// The IPv4 addresses of `r` whose pool has a probe on, with their pool.
fn probed<'a>(r: &IpamResult, pools: &'a [crate::PoolConfig]) -> Vec<(Ipv4Addr, &'a crate::PoolConfig)> {
    r.ips
        .iter()
        .filter_map(|ipc| {
            let IpAddr::V4(ip) = ipc.address.addr() else {
                return None;
            };
            let pool = pools.iter().find(|p| p.name == ipc.pool)?;
            (pool.detect_ip_conflict || pool.detect_gateway).then_some((ip, pool))
        })
        .collect()
}

fn probe_all<S: Store>(
    ipam: &Ipam<S>,
    req: &AllocRequest,
    prober: &Prober,
    mut r: IpamResult,
    fixed_before: &HashSet<IpAddr>,
) -> Result<IpamResult, ProbeError> {
    let pools = &ipam.cfg.pools;
    let mut free: HashSet<Ipv4Addr> = HashSet::new();
    let mut marked: Vec<(Ipv4Addr, Mac)> = Vec::new();
    loop {
        let mut conflict = None;
        for (ip, pool) in probed(&r, pools) {
            if !pool.detect_ip_conflict || free.contains(&ip) {
                continue;
            }
            match prober.conflict(ip)? {
                Some(mac) => {
                    conflict = Some((ip, mac));
                    break;
                }
                None => {
                    free.insert(ip);
                }
            }
        }
        let Some((ip, mac)) = conflict else {
            break;
        };
        if req.requested.contains(&IpAddr::V4(ip)) {
            return Err(Error::IpUnavailable(format!(
                "requested IP {ip} is in use on the network (ARP answer from {mac})"
            ))
            .into());
        }
        if marked.len() >= MAX_CONFLICTS {
            let list: Vec<String> = marked.iter().map(|(ip, mac)| format!("{ip} ({mac})")).collect();
            return Err(ProbeError {
                code: CODE_TRY_AGAIN,
                msg: format!(
                    "{} addresses in a row answered ARP probes and were marked as conflicting: {}, {ip} ({mac}); \
                     is proxy ARP on? detectIPConflict is meant for underlay pools",
                    marked.len() + 1,
                    list.join(", ")
                ),
            });
        }
        r = ipam.replace_conflicting(req, IpAddr::V4(ip), fixed_before).map_err(|e| match e {
            Error::IpUnavailable(m) => {
                ProbeError { code: crate::error::CODE_IP_UNAVAILABLE, msg: format!("{m} (ARP answer from {mac})") }
            }
            other => other.into(),
        })?;
        marked.push((ip, mac));
    }
    for (ip, pool) in probed(&r, pools) {
        if !pool.detect_gateway {
            continue;
        }
        let Some(IpAddr::V4(gw)) = pool.gateway else {
            continue;
        };
        if prober.gateway(ip, gw)?.is_none() {
            return Err(ProbeError {
                code: CODE_TRY_AGAIN,
                msg: format!(
                    "gateway {gw} of pool {} did not answer ARP from {ip} within {} ms ({TRIES} tries); \
                     detectGateway is on",
                    pool.name,
                    PROBE_TIME.as_millis()
                ),
            });
        }
    }
    for (ip, _) in probed(&r, pools) {
        // Best effort: the address is good whether or not neighbours heard about it.
        let _ = prober.announce(ip);
    }
    Ok(r)
}
