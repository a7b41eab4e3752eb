//! ADD, DEL and CHECK against the kernel, through `knit-host`. Nothing here decides: the facts
//! are read ([`facts`]), the plan computed ([`crate::plan`]), and the plan executed:
//! - [`install`], ADD, undone by its [`journal`] when it fails;
//! - [`remove`], DEL, which continues past failures and reports them all;
//! - [`verify`], CHECK.
//!
//! The plugin runs in the node's namespace. Pod state is read and written through a netlink
//! socket created inside the pod's namespace; the pod's sysctls and reply-steering nf_tables
//! tables are written from a short-lived thread inside it ([`pod_thread`]), never by switching
//! this thread.
//!
//! Speed (DESIGN.md section 8, `knit bench cni-add-del`): an underlay ADD starts its pod thread
//! (reply-steering tables in one nf_tables batch, no helper process) first and does the
//! netlink work beside it; the node's IPs come from the address list, not a dump of every
//! link; host routes are replaced and deleted by key, never by listing table 500; stale
//! neighbour entries are deleted by key on the interfaces the pod's IP is on-link on, never by
//! listing the neighbour table; an underlay DEL deletes veth0 and the macvlan/ipvlan NIC in one
//! kernel batch. Debug-level spans (`KNIT_LOG=knit_coordinator=debug`) show where an ADD or DEL
//! spends its time.

mod facts;
mod indexes;
mod install;
mod journal;
mod owner;
mod pod_thread;
mod remove;
mod verify;

use ipnet::IpNet;
use knit_cni::{CmdArgs, CniError, CniResult, Plugin};
use knit_host::nft::Nft;
use knit_host::{Handle, Netns};

use crate::config::{self, Conf, Mode};
use crate::error::{self, Teardown};
use crate::plan;
use pod_thread::PodThread;
use remove::PodSockets;

use knit_cni::phase_mark as mark;
use knit_cni::spans;

pub struct Coordinator;

fn prev_required(args: &CmdArgs) -> Result<CniResult, CniError> {
    args.prev_result()?.ok_or_else(error::no_prev_result)
}

fn open_pod_ns(args: &CmdArgs) -> Result<Netns, CniError> {
    Netns::open(&args.netns).map_err(|e| error::netns(&args.netns, e))
}

/// The pod's sockets for DEL, or `None` when CNI_NETNS cannot be entered: empty, gone, a stale
/// bind-mount file, not a network namespace. All mean the same to DEL: nothing of the pod's
/// side is reachable (and, unless a process still holds it, nothing of it is left).
fn open_pod_for_del(netns: &str) -> Option<PodSockets> {
    if netns.is_empty() {
        return None;
    }
    let ns = match Netns::open(netns) {
        Ok(ns) => ns,
        Err(e) => {
            tracing::info!("DEL: the pod's netns is gone ({e})");
            return None;
        }
    };
    // One thread inside the pod opens both sockets there.
    match ns.try_run(|| Ok((Handle::new()?, Nft::new()))) {
        Ok((handle, nft)) => {
            let nft = nft
                .map_err(|e| tracing::info!("DEL: no nf_tables in the pod ({e}): no reply-steering table to remove"))
                .ok();
            Some(PodSockets { handle, nft })
        }
        Err(e) => {
            tracing::info!("DEL: {netns:?} cannot be entered ({e}): treating the pod as gone");
            None
        }
    }
}

impl Plugin for Coordinator {
    fn add(&self, args: &CmdArgs) -> Result<CniResult, CniError> {
        spans::start();
        let conf = Conf::parse(&args.stdin)?;
        config::warn_unknown_keys(&args.conf);
        let prev = prev_required(args)?;
        if conf.mode == Mode::Disabled {
            return Ok(prev);
        }
        mark!("add: config");
        let pod_ns = open_pod_ns(args)?;
        // An underlay first NIC gets reply-steering tables: start the pod thread that writes
        // them now, beside everything else (install keeps those the plan has).
        let fams = if plan::underlay_first(&conf, &args.ifname) {
            plan::steering_families(&prev, &args.ifname)
        } else {
            Vec::new()
        };
        let (thread, pod) = if fams.is_empty() {
            (None, None)
        } else {
            let (t, pod) = PodThread::start(fams, &pod_ns, true)?;
            (Some(t), pod)
        };
        mark!("add: pod thread, pod socket");
        let pod = match pod {
            Some(p) => p,
            None => Handle::in_netns(&pod_ns).map_err(error::kernel("opening netlink in the pod netns"))?,
        };
        let host = Handle::new().map_err(error::kernel("opening netlink"))?;
        let needs = plan::needs_for_add(&conf, &args.ifname, &prev);
        let pod_ips: Vec<IpNet> = prev.ips.iter().map(|i| i.address).collect();
        let facts = facts::read(&needs, &conf.pod_default_cni_nic, &pod_ips, &host, &pod)?;
        mark!("add: facts");
        let plan = plan::plan(&conf, &args.ifname, &args.container_id, &prev, &facts)?;
        tracing::debug!(?plan, "coordinator plan");
        install::install(&plan, &host, &pod, &pod_ns, thread)?;
        Ok(prev)
    }

    /// Removes what ADD made (see [`plan::del_plan`]) whatever state the pod is in. A config that
    /// no longer validates is logged and cleaned up with the defaults: a pod must always be
    /// removable. Fails only when something that exists could not be removed, naming all of it.
    fn del(&self, args: &CmdArgs) -> Result<(), CniError> {
        spans::start();
        let conf = match Conf::parse(&args.stdin) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("DEL with an invalid config ({}): cleaning up with the defaults", e.msg);
                Conf::fallback()
            }
        };
        if conf.mode == Mode::Disabled {
            return Ok(());
        }
        let prev = match args.prev_result() {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("DEL with an unreadable prevResult ({}): cleaning up without it", e.msg);
                None
            }
        };
        let host = Handle::new().map_err(error::kernel("opening netlink"))?;
        let mut pod = open_pod_for_del(&args.netns);
        mark!("del: config, sockets");
        let mut t = Teardown::default();
        let facts = match &pod {
            None => None,
            Some(p) => {
                let needs = plan::needs_for_del(&conf, &args.ifname);
                let pod_ips: Vec<IpNet> = prev.iter().flat_map(|r| r.ips.iter().map(|i| i.address)).collect();
                match facts::read(&needs, &conf.pod_default_cni_nic, &pod_ips, &host, &p.handle) {
                    Ok(f) => Some(f),
                    Err(e) => {
                        t.fail(format!("reading the pod: {}", e.msg));
                        None
                    }
                }
            }
        };
        mark!("del: facts");
        let plan = plan::del_plan(&conf, &args.ifname, &args.container_id, prev.as_ref(), facts.as_ref());
        for n in &plan.notes {
            tracing::info!("DEL: {n}");
        }
        tracing::debug!(?plan, "coordinator DEL plan");
        // With facts unreadable, the pod's side was not planned: don't touch it blind.
        let pod_side = if facts.is_some() { pod.as_mut() } else { None };
        remove::remove(&plan, &host, pod_side, &mut t);
        t.into_result("DEL")
    }

    fn check(&self, args: &CmdArgs) -> Result<(), CniError> {
        let conf = Conf::parse(&args.stdin)?;
        if conf.mode == Mode::Disabled {
            return Ok(());
        }
        let prev = prev_required(args)?;
        let pod_ns = open_pod_ns(args)?;
        let pod = Handle::in_netns(&pod_ns).map_err(error::kernel("opening netlink in the pod netns"))?;
        let host = Handle::new().map_err(error::kernel("opening netlink"))?;
        let needs = plan::needs_for_add(&conf, &args.ifname, &prev);
        let pod_ips: Vec<IpNet> = prev.ips.iter().map(|i| i.address).collect();
        let facts = facts::read(&needs, &conf.pod_default_cni_nic, &pod_ips, &host, &pod)?;
        let plan = plan::plan(&conf, &args.ifname, &args.container_id, &prev, &facts)?;
        let mut nft = if plan.pod_steering.is_empty() {
            None
        } else {
            Some(Nft::in_netns(&pod_ns).map_err(error::kernel("opening nf_tables in the pod netns"))?)
        };
        verify::verify(&plan, &host, &pod, nft.as_mut())
    }
}
