//! ADD: installs a [`Plan`], or undoes everything it did and fails.

use knit_cni::CniError;
use knit_host::{addr, link, neigh, route, rule, Handle, Netns};

use super::indexes::Indexes;
use super::journal::{Journal, Undo};
use super::owner;
use super::pod_thread::{self, PodThread};
use crate::error;
use crate::plan::{Plan, VethSpec};

use knit_cni::phase_mark as mark;

/// Installs the plan. `thread` is the pod thread when ADD started it early (it writes the
/// reply-steering tables); one is started here when the plan needs it and none was.
pub fn install(
    plan: &Plan,
    host: &Handle,
    pod: &Handle,
    pod_ns: &Netns,
    thread: Option<PodThread>,
) -> Result<(), CniError> {
    let mut journal = Journal::new(host, pod);
    // Declared after the journal, so that on failure it is dropped (removing its tables) first.
    let mut thread = match thread {
        Some(t) => Some(t),
        None if !plan.pod_steering.is_empty() => Some(PodThread::start(plan.pod_steering.clone(), pod_ns, false)?.0),
        None => None,
    };
    let mut pod_idx = Indexes::new(pod);
    let mut host_idx = Indexes::new(host);
    let nic_index = pod_idx.get(&plan.ifname)?;

    for name in &plan.pod_links_stale {
        // An earlier sandbox's veth0 in this pod (its host end goes with it).
        match link::delete_by_name(pod, name) {
            Ok(_) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(error::kernel(format!("removing a stale {name}"))(e)),
        }
    }
    if let Some(v) = &plan.veth {
        let (hidx, pidx) = create_veth(v, host, pod, pod_ns)?;
        journal.push(Undo::HostLink { index: hidx, name: v.host.clone() });
        host_idx.learn(&v.host, hidx);
        pod_idx.learn(&v.pod, pidx);
        link::set_up(pod, pidx).map_err(error::kernel(format!("bringing {} up", v.pod)))?;
        // Up and marked as this container's in one request.
        owner::set_up_marked(host, hidx, &v.owner).map_err(error::kernel(format!("bringing {} up", v.host)))?;
        if let Some(a) = v.link_address {
            addr::add(pod, &addr::Address::new(pidx, a)).map_err(error::kernel("adding vethLinkAddress"))?;
        }
        mark!("install: veth pair");
    }
    link::set_up(pod, nic_index).map_err(error::kernel(format!("bringing {} up", plan.ifname)))?;

    let kv = plan.pod_sysctls.clone();
    match thread.as_mut() {
        // arp_notify must be on before a MAC change: with podMACPrefix, wait for them.
        Some(t) => t.set_sysctls(kv, plan.pod_mac.is_some())?,
        None if !kv.is_empty() => {
            pod_ns.try_run(move || pod_thread::set_sysctls(&kv)).map_err(error::kernel("setting pod sysctls"))?
        }
        None => {}
    }
    if let Some(mac) = plan.pod_mac {
        // arp_notify=1 (set above) makes the kernel send the gratuitous ARP for the new MAC.
        link::set_mac(pod, nic_index, mac).map_err(error::kernel("setting the podMACPrefix MAC"))?;
    }
    if let Some(q) = plan.txqlen {
        link::set_txqlen(pod, nic_index, q).map_err(error::kernel("setting txQueueLen"))?;
    }
    mark!("install: pod sysctls, mac, txqlen");

    for r in &plan.pod_routes {
        let route = pod_idx.resolve(r)?;
        match route::add(pod, &route) {
            Ok(()) => journal.push(Undo::PodRoute(route)),
            Err(e) if e.is_exists() => {}
            Err(e) => return Err(error::kernel(format!("adding pod route {r}"))(e)),
        }
    }
    for r in &plan.pod_routes_del {
        let route = pod_idx.resolve(r)?;
        match route::del(pod, &route) {
            Ok(()) => journal.push(Undo::PodRouteMoved(route)),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(error::kernel(format!("moving pod route {r} out of main"))(e)),
        }
    }
    for r in &plan.pod_rules {
        match rule::add(pod, r) {
            Ok(()) => journal.push(Undo::PodRule(r.clone())),
            Err(e) if e.is_exists() => {}
            Err(e) => return Err(error::kernel(format!("adding pod rule {r}"))(e)),
        }
    }
    mark!("install: pod routes and rules");

    // The node's side (this thread is in the node's namespace).
    pod_thread::set_sysctls(&plan.host_sysctls).map_err(error::kernel("setting host sysctls"))?;
    for r in &plan.host_rules {
        match rule::add(host, r) {
            Ok(()) => {}
            Err(e) if e.is_exists() => {}
            Err(e) => return Err(error::kernel(format!("adding host rule {r}"))(e)),
        }
    }
    for n in &plan.host_neigh_flush {
        // Stale entries matter little once the pod's route is in (it picks the device): a
        // failure is logged, not fatal.
        if let Err(e) = neigh::del(host, n.index, n.ip) {
            if !e.is_not_found() {
                tracing::warn!("removing a stale neighbour entry for {}: {e}", n.ip);
            }
        }
    }
    mark!("install: host sysctls, rules, stale neighbours");
    for r in &plan.host_routes {
        let route = host_idx.resolve(r)?;
        // Replace: a route left for this IP by an earlier pod (same table, same metric) is
        // taken over in one step, without listing the table.
        route::replace(host, &route).map_err(error::kernel(format!("adding host route {r}")))?;
        journal.push(Undo::HostRoute(route));
    }
    mark!("install: host routes");
    if let Some(t) = thread.take() {
        t.commit(&plan.pod_steering)?;
    }
    mark!("install: pod reply-steering rules and sysctls (waited for)");
    journal.commit();
    Ok(())
}

/// Creates the veth pair (created down and brought up by the caller through the handles it
/// has: creating it up would open one more socket inside the pod). A link already called like
/// the host end is replaced only when it carries this container's mark (an earlier attempt of
/// this ADD); anyone else's is left alone and the ADD fails. Returns the host and pod indexes.
fn create_veth(v: &VethSpec, host: &Handle, pod: &Handle, pod_ns: &Netns) -> Result<(u32, u32), CniError> {
    let opts = link::VethOptions { mtu: Some(v.mtu), mac: None, peer_mac: None, up: false };
    let create = || link::create_veth(host, &v.host, &v.pod, Some(pod_ns), &opts);
    let hidx = match create() {
        Ok(i) => i,
        Err(e) if e.is_exists() => {
            // Looked at only now: it is rare, and every ADD would pay.
            match owner::find(host, &v.host).map_err(error::kernel("reading host links"))? {
                Some(m) if m.mark.as_deref() == Some(v.owner.as_str()) => {
                    link::delete(host, m.index)
                        .map_err(error::kernel(format!("removing this container's stale {}", v.host)))?;
                }
                Some(m) => return Err(error::veth_taken(&v.host, m.mark.as_deref())),
                // Not the host end: a veth0 that appeared in the pod since the facts were read.
                None => {
                    link::delete_by_name(pod, &v.pod).map_err(error::kernel(format!("removing a stale {}", v.pod)))?;
                }
            }
            create().map_err(error::kernel("creating the veth pair"))?
        }
        Err(e) => return Err(error::kernel("creating the veth pair")(e)),
    };
    let pidx = match link::index_of(pod, &v.pod) {
        Ok(i) => i,
        Err(e) => {
            // Not journaled yet: delete the pair here.
            if let Err(d) = link::delete(host, hidx) {
                tracing::warn!("rollback: deleting {}: {d}", v.host);
            }
            return Err(error::kernel(format!("finding {}", v.pod))(e));
        }
    };
    Ok((hidx, pidx))
}
