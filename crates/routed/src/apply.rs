//! ADD, DEL and CHECK of the routed pod against the kernel, through `knit-host`.
//!
//! The plugin runs in the node's namespace (as containerd runs plugins): the host side is
//! worked on through a netlink socket of the calling thread's namespace, the pod side through a
//! socket created inside the pod namespace, so no thread ever switches namespace here except
//! the short-lived one `knit-host` uses for pod sysctls.

use knit_cni::{CmdArgs, CniError, CniResult, Plugin};
use knit_host::route::Route;
use knit_host::{addr, link, route, sysctl, Family, Handle, Netns};

use crate::config::RoutedConf;
use crate::ipam;
use crate::plan::{self, Plan, HOST_VETH_MAC};

use knit_cni::phase_mark as mark;
use knit_cni::spans;

/// Maps a host-state error to a CNI error with context. Kernel errors have no CNI code of their
/// own; 999 is what the reference skeleton uses for untyped errors.
fn herr(ctx: &str) -> impl FnOnce(knit_host::Error) -> CniError + '_ {
    move |e| CniError::generic(format!("{ctx}: {e}"))
}

fn open_netns(path: &str) -> Result<Netns, CniError> {
    Netns::open(path).map_err(|e| CniError::invalid_netns(format!("opening netns {path:?}: {e}")))
}

pub struct Routed;

impl Routed {
    fn identity(args: &CmdArgs) -> String {
        plan::pod_identity(&args.args, &args.container_id, &args.ifname)
    }

    /// DEL's links: the host veth by name (deleting one end of a pair deletes both, and the
    /// host routes go with it), then, only when there was none, the pod's interface. Missing
    /// links are success.
    ///
    /// Host end first because entering the pod's namespace right after the kernel deleted a
    /// device (the previous pod's DEL, often) waits 2-4 ms here; the normal DEL never enters it.
    fn del_links(&self, args: &CmdArgs) -> Result<(), CniError> {
        let host = Handle::new().map_err(herr("opening netlink"))?;
        let name = plan::host_veth_name(&Self::identity(args));
        if link::delete_by_name(&host, &name).map_err(herr("deleting the host veth"))? {
            return Ok(());
        }
        if !args.netns.is_empty() {
            if let Ok(pod_ns) = Netns::open(&args.netns) {
                let pod = Handle::in_netns(&pod_ns).map_err(herr("opening netlink in the pod netns"))?;
                link::delete_by_name(&pod, &args.ifname).map_err(herr("deleting the pod interface"))?;
            }
        }
        Ok(())
    }

    /// ADD. IPAM (knit-ipam in-process, another plugin as a process) runs on a thread while
    /// this one opens the netlink sockets and creates the veth pair, which need no address;
    /// addresses and routes follow once IPAM answers. Either failing undoes the other: the
    /// veth guard deletes the pair, the IPAM guard releases the allocation.
    fn add_with(&self, args: &CmdArgs, conf: &RoutedConf) -> Result<CniResult, CniError> {
        let pod_ns = open_netns(&args.netns)?;
        let identity = Self::identity(args);
        mark!("add: config");
        std::thread::scope(|s| {
            let ipam_job = std::thread::Builder::new()
                .name("knit-routed-ipam".into())
                .spawn_scoped(s, || ipam::add(args))
                .map_err(|e| CniError::generic(format!("starting the IPAM thread: {e}")))?;
            let veth = prepare_veth(args, conf, &identity, &pod_ns);
            mark!("add: netlink sockets, veth pair");
            let ipam = match ipam_job.join() {
                Ok(r) => r,
                Err(p) => std::panic::resume_unwind(p),
            };
            // From here a failure releases the allocation (and `veth` deletes the pair).
            let ipam_guard = match &ipam {
                Ok(_) => Some(ipam::guard(args)),
                Err(_) => None,
            };
            let ipam = ipam?;
            mark!("add: IPAM plugin (waited for)");
            let (host, pod, host_index, mut veth_guard) = veth?;
            let plan = plan::plan(&identity, &args.ifname, conf.mtu(), &ipam)?;
            let pod_mac = install(&plan, &host, host_index, &pod, &pod_ns)?;
            mark!("add: addresses, routes, sysctls");
            let result = plan::result(&plan, &ipam, pod_mac, &args.netns, args.conf.version());
            veth_guard.index = None;
            if let Some(g) = ipam_guard {
                g.disarm();
            }
            Ok(result)
        })
    }
}

/// The netlink sockets and the veth pair (down): everything of ADD that needs no address.
/// The guard deletes the pair unless disarmed.
fn prepare_veth(
    args: &CmdArgs,
    conf: &RoutedConf,
    identity: &str,
    pod_ns: &Netns,
) -> Result<(Handle, Handle, u32, VethGuard), CniError> {
    let host = Handle::new().map_err(herr("opening netlink"))?;
    let pod = Handle::in_netns(pod_ns).map_err(herr("opening netlink in the pod netns"))?;
    let host_veth = plan::host_veth_name(identity);
    let opts = link::VethOptions { mtu: conf.mtu(), mac: Some(HOST_VETH_MAC), peer_mac: None, up: false };
    let host_index = match link::create_veth(&host, &host_veth, &args.ifname, Some(pod_ns), &opts) {
        Ok(i) => i,
        Err(e) if e.is_exists() => {
            if link::get_by_name(&pod, &args.ifname).map_err(herr("reading pod links"))?.is_some() {
                return Err(CniError::generic(format!("interface {:?} already exists in {}", args.ifname, args.netns)));
            }
            // A stale host veth of the same name belongs to an earlier sandbox of this pod
            // (looked for only now: it is rare, and every ADD would pay for the lookup).
            if link::delete_by_name(&host, &host_veth).map_err(herr("removing a stale host veth"))? {
                tracing::info!("removed stale host veth {host_veth}");
            }
            link::create_veth(&host, &host_veth, &args.ifname, Some(pod_ns), &opts)
                .map_err(herr("creating the veth pair"))?
        }
        Err(e) => return Err(herr("creating the veth pair")(e)),
    };
    let guard = VethGuard { index: Some(host_index) };
    Ok((host, pod, host_index, guard))
}

/// Deletes the host veth (and with it the pod end) when dropped, unless `index` was cleared: a
/// failed ADD leaves no interface behind. It opens its own socket (in the node's namespace,
/// where the plugin runs), so it does not borrow the handle the pair was made with.
struct VethGuard {
    index: Option<u32>,
}

impl Drop for VethGuard {
    fn drop(&mut self) {
        if let Some(index) = self.index {
            let res = Handle::new().and_then(|h| link::delete(&h, index));
            if let Err(e) = res {
                tracing::warn!("rolling back veth {index}: {e}");
            }
        }
    }
}

/// Installs everything but the veth pair itself; returns the pod interface's MAC.
fn install(
    plan: &Plan,
    host: &Handle,
    host_index: u32,
    pod: &Handle,
    pod_ns: &Netns,
) -> Result<Option<knit_host::Mac>, CniError> {
    // Host side. The plugin runs in the node's namespace, so /proc/sys is the node's.
    for (k, v) in &plan.host_sysctls {
        if let Err(e) = sysctl::set(k, v) {
            // proxy_delay is best effort in Calico too; IPv6 knobs are absent when v6 is off.
            if k.contains("proxy_delay") || k.starts_with("net/ipv6/") && plan.families() == [Family::V4] {
                tracing::debug!("sysctl {k}={v}: {e}");
            } else {
                return Err(herr("setting a host sysctl")(e));
            }
        }
    }
    link::set_up(host, host_index).map_err(herr("bringing the host veth up"))?;

    // Pod side.
    if !plan.pod_sysctls.is_empty() {
        let sysctls = plan.pod_sysctls.clone();
        pod_ns
            .try_run(move || {
                for (k, v) in &sysctls {
                    sysctl::set(k, v)?;
                }
                Ok(())
            })
            .map_err(herr("setting pod sysctls"))?;
    }
    let pod_link = link::require(pod, &plan.pod_ifname).map_err(herr("finding the pod interface"))?;
    let pod_index = pod_link.index;
    for a in &plan.pod_addrs {
        addr::add(pod, &addr::Address::new(pod_index, *a)).map_err(herr("adding the pod address"))?;
    }
    link::set_up(pod, pod_index).map_err(herr("bringing the pod interface up"))?;
    for r in &plan.pod_routes {
        let r = Route { oif: Some(pod_index), ..r.clone() };
        route::add(pod, &r).map_err(herr(&format!("adding pod route {r}")))?;
    }

    for r in &plan.host_routes {
        let r = Route { oif: Some(host_index), ..r.clone() };
        add_host_route(host, &r)?;
    }
    Ok(pod_link.mac)
}

/// Adds `<podIP>/32 dev cali… scope link`. EEXIST on the same device is success (an agent may
/// have added it first); on another device it is an error: two pods would claim one IP.
fn add_host_route(host: &Handle, r: &Route) -> Result<(), CniError> {
    match route::add(host, r) {
        Ok(()) => Ok(()),
        Err(e) if e.is_exists() => {
            let existing = route::list(host, r.family(), Some(r.table)).map_err(herr("listing host routes"))?;
            match existing.iter().find(|x| x.dst == r.dst) {
                Some(x) if x.oif == r.oif => Ok(()),
                Some(x) => Err(CniError::generic(format!(
                    "host route for {} already exists on another interface (index {:?})",
                    r.dst, x.oif
                ))),
                None => Err(herr("adding the host route")(e)),
            }
        }
        Err(e) => Err(herr(&format!("adding host route {r}"))(e)),
    }
}

impl Plugin for Routed {
    fn add(&self, args: &CmdArgs) -> Result<CniResult, CniError> {
        spans::start();
        let conf = RoutedConf::parse(&args.stdin)?;
        self.add_with(args, &conf)
    }

    /// DEL is idempotent: a missing netns, link or allocation is success. The links go as
    /// [`Routed::del_links`] says while IPAM releases the address beside them.
    fn del(&self, args: &CmdArgs) -> Result<(), CniError> {
        spans::start();
        let _conf = RoutedConf::parse(&args.stdin)?;
        // The IPAM plugin releases the address on a thread while this one deletes the veth
        // pair (the kernel takes long over that): the two waits overlap. Debian's ptp also
        // releases before deleting the link.
        std::thread::scope(|s| {
            let ipam_job = std::thread::Builder::new()
                .name("knit-routed-ipam".into())
                .spawn_scoped(s, || ipam::del(args))
                .map_err(|e| CniError::generic(format!("starting the IPAM thread: {e}")))?;
            let links = self.del_links(args);
            mark!("del: veth pair");
            let ipam = match ipam_job.join() {
                Ok(r) => r,
                Err(p) => std::panic::resume_unwind(p),
            };
            mark!("del: IPAM plugin (waited for)");
            links.and(ipam)
        })
    }

    fn check(&self, args: &CmdArgs) -> Result<(), CniError> {
        let conf = RoutedConf::parse(&args.stdin)?;
        let prev = args.prev_result()?.ok_or_else(|| CniError::invalid_config("CHECK needs prevResult"))?;
        ipam::check(args)?;
        let plan = plan::plan(&Self::identity(args), &args.ifname, conf.mtu(), &prev)?;
        let pod_ns = open_netns(&args.netns)?;
        let host = Handle::new().map_err(herr("opening netlink"))?;
        let pod = Handle::in_netns(&pod_ns).map_err(herr("opening netlink in the pod netns"))?;
        check_state(&plan, &host, &pod)
    }

    fn status(&self, args: &CmdArgs) -> Result<(), CniError> {
        ipam::status(args)
    }

    fn gc(&self, args: &CmdArgs) -> Result<(), CniError> {
        ipam::gc(args)
    }
}

fn missing(what: String) -> CniError {
    CniError::generic(format!("CHECK: {what}"))
}

/// Verifies the link, addresses and routes of the plan.
pub fn check_state(plan: &Plan, host: &Handle, pod: &Handle) -> Result<(), CniError> {
    let hv = link::get_by_name(host, &plan.host_veth)
        .map_err(herr("reading host links"))?
        .ok_or_else(|| missing(format!("host veth {} is missing", plan.host_veth)))?;
    if !hv.up {
        return Err(missing(format!("host veth {} is down", plan.host_veth)));
    }
    let pv = link::get_by_name(pod, &plan.pod_ifname)
        .map_err(herr("reading pod links"))?
        .ok_or_else(|| missing(format!("pod interface {} is missing", plan.pod_ifname)))?;
    let addrs = addr::list(pod, None, Some(pv.index)).map_err(herr("reading pod addresses"))?;
    for a in &plan.pod_addrs {
        if !addrs.iter().any(|x| x.net.addr() == a.addr()) {
            return Err(missing(format!("address {a} is not on {}", plan.pod_ifname)));
        }
    }
    for f in plan.families() {
        let routes = route::list(pod, f, Some(254)).map_err(herr("reading pod routes"))?;
        for want in plan.pod_routes.iter().filter(|r| r.family() == f) {
            let ok = routes.iter().any(|r| r.dst == want.dst && r.gateway == want.gateway && r.oif == Some(pv.index));
            if !ok {
                return Err(missing(format!("pod route {want} via {} is missing", plan.pod_ifname)));
            }
        }
        let host_routes = route::list(host, f, Some(254)).map_err(herr("reading host routes"))?;
        for want in plan.host_routes.iter().filter(|r| r.family() == f) {
            if !host_routes.iter().any(|r| r.dst == want.dst && r.oif == Some(hv.index)) {
                return Err(missing(format!("host route {} dev {} is missing", want.dst, plan.host_veth)));
            }
        }
    }
    Ok(())
}
