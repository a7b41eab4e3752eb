//! ADD, DEL and CHECK of the coordinator against the kernel, through `knit-host`.
//!
//! The plugin runs in the node's namespace. Pod state is read and written through a netlink
//! socket created inside the pod namespace; pod sysctls and the pod's reply-steering nf_tables
//! rules are written from a short-lived thread inside it (knit-host's `Netns::run`), never by
//! switching this thread.
//!
//! Speed (DESIGN.md section 8, `knit bench cni-add-del`): an underlay ADD starts its pod
//! thread (reply-steering rules in one nf_tables batch, no helper process) first and does the
//! netlink work beside it; the node's IPs come from the address list, not a dump of every
//! link; host routes are replaced and deleted by key, never by listing table 500; an underlay
//! DEL deletes veth0 and the macvlan/ipvlan NIC in one kernel batch (one ~20 ms wait for the
//! kernel instead of two: see [`delete_with_nic`]). Debug-level spans (`KNIT_LOG=knit_coordinator=debug`)
//! show where an ADD or DEL spends its time.

use std::net::IpAddr;

use ipnet::IpNet;
use knit_cni::{CmdArgs, CniError, CniResult, Plugin};
use knit_host::nft::Nft;
use knit_host::route::Route;
use knit_host::rule::Rule;
use knit_host::{addr, link, neigh, route, rule, sysctl, Family, Handle, Netns, Scope};

use crate::config::Conf;
use crate::plan::{self, DevRoute, Facts, Plan, ResolvedMode, POD_VETH};

const MAIN_TABLE: u32 = 254;

use knit_cni::phase_mark as mark;
use knit_cni::spans;

fn herr(ctx: impl Into<String>) -> impl FnOnce(knit_host::Error) -> CniError {
    let ctx = ctx.into();
    move |e| CniError::generic(format!("{ctx}: {e}"))
}

/// Interface name prefixes that never carry the node's own IP (Spiderpool's list, plus ours).
const NOT_NODE_IFACES: &[&str] = &[
    "lo",
    "veth",
    "cali",
    "docker",
    "cbr",
    "virbr",
    "lxcbr",
    "cni",
    "flannel",
    "kube-ipvs",
    "vx-submariner",
    "cilium",
    "knit",
    "vxlan",
];

/// Above this many interfaces carrying global addresses, one link dump is cheaper than a
/// lookup per interface.
const LINK_LOOKUPS_MAX: usize = 16;

/// The node's IPs, best first: the one in the pod's subnet, then those on the default route's
/// device, then the rest (global scope only).
///
/// Cost matters here (it runs in every ADD and DEL): a node with many pods has hundreds of
/// links and routes, so this reads the address list (small records), looks up only the
/// interfaces that carry a global address, and reads the routing table only when a family
/// has several candidates and none in the pod's subnet.
pub fn node_ips(host: &Handle, pod_ips: &[IpNet]) -> Result<Vec<IpAddr>, CniError> {
    node_ips_of(host, pod_ips, None)
}

/// [`node_ips`] of one family only, when given (the kernel filters; a node has an IPv6
/// link-local address per pod veth, which an IPv4 pod never needs to read).
fn node_ips_of(host: &Handle, pod_ips: &[IpNet], family: Option<Family>) -> Result<Vec<IpAddr>, CniError> {
    let addrs: Vec<addr::Address> = addr::list(host, family, None)
        .map_err(herr("listing host addresses"))?
        .into_iter()
        .filter(|a| a.scope == Scope::Universe)
        .collect();
    let mut indexes: Vec<u32> = addrs.iter().map(|a| a.index).collect();
    indexes.sort_unstable();
    indexes.dedup();
    let usable_name = |name: &str| !NOT_NODE_IFACES.iter().any(|p| name.starts_with(p));
    let usable: Vec<u32> = if indexes.len() > LINK_LOOKUPS_MAX {
        link::list(host)
            .map_err(herr("listing host links"))?
            .into_iter()
            .filter(|l| indexes.binary_search(&l.index).is_ok() && usable_name(&l.name))
            .map(|l| l.index)
            .collect()
    } else {
        let mut out = Vec::new();
        for &i in &indexes {
            if let Some(l) = link::get_by_index(host, i).map_err(herr("reading host links"))? {
                if usable_name(&l.name) {
                    out.push(i);
                }
            }
        }
        out
    };
    let in_pod_subnet = |a: &addr::Address| pod_ips.iter().any(|p| a.net.contains(&p.addr()));
    let cands: Vec<&addr::Address> = addrs.iter().filter(|a| usable.contains(&a.index)).collect();
    // The default route's devices matter only to order candidates of a family that has
    // several and none in the pod's subnet.
    let mut default_oifs = Vec::new();
    for f in [Family::V4, Family::V6] {
        let of_f: Vec<&&addr::Address> = cands.iter().filter(|a| Family::of_net(&a.net) == f).collect();
        if of_f.len() > 1 && !of_f.iter().any(|a| in_pod_subnet(a)) {
            if let Ok(rs) = route::list(host, f, Some(MAIN_TABLE)) {
                default_oifs.extend(rs.iter().filter(|r| r.is_default()).filter_map(|r| r.oif));
            }
        }
    }
    let mut ranked: Vec<(u8, IpAddr)> = cands
        .iter()
        .map(|a| {
            let rank = if in_pod_subnet(a) {
                0
            } else if default_oifs.contains(&a.index) {
                1
            } else {
                2
            };
            (rank, a.net.addr())
        })
        .collect();
    ranked.sort_by_key(|c| c.0);
    let mut out: Vec<IpAddr> = Vec::new();
    for (_, ip) in ranked {
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    Ok(out)
}

/// The node IPs an underlay first NIC with addresses `nic_ips` needs: those of its families.
fn underlay_node_ips(host: &Handle, nic_ips: &[IpNet]) -> Result<Vec<IpAddr>, CniError> {
    let v4 = nic_ips.iter().any(|n| n.addr().is_ipv4());
    let v6 = nic_ips.iter().any(|n| n.addr().is_ipv6());
    match (v4, v6) {
        (true, false) => node_ips_of(host, nic_ips, Some(Family::V4)),
        (false, true) => node_ips_of(host, nic_ips, Some(Family::V6)),
        _ => node_ips(host, nic_ips),
    }
}

/// Reads the facts the plan needs from the pod and the node.
fn read_facts(conf: &Conf, ifname: &str, prev: &CniResult, host: &Handle, pod: &Handle) -> Result<Facts, CniError> {
    mark!("facts: begin");
    let links = link::list(pod).map_err(herr("listing pod links"))?;
    let mut facts = Facts { pod_links: links.iter().map(|l| l.name.clone()).collect(), ..Facts::default() };
    let nic = links.iter().find(|l| l.name == ifname);
    let eth0 = links.iter().find(|l| l.name == conf.pod_default_cni_nic);
    // An underlay first NIC's plan needs only the pod's links and the node's IPs; the pod's
    // addresses, routes and rules matter to secondary NICs.
    let secondary = !plan::underlay_first(conf, ifname);
    if let Some(e) = eth0.filter(|_| secondary) {
        facts.default_nic_addrs = addr::list(pod, None, Some(e.index))
            .map_err(herr("listing pod addresses"))?
            .into_iter()
            .filter(|a| a.scope == Scope::Universe)
            .map(|a| a.net)
            .collect();
        // The host side of the default NIC's veth: its link index is the peer's ifindex in the
        // node namespace (the pod was created from there).
        if let Some(peer) = e.link {
            if let Ok(Some(h)) = link::get_by_index(host, peer) {
                facts.default_nic_host_peer = Some(h.name);
            }
        }
    }
    for f in [Family::V4, Family::V6].into_iter().filter(|_| secondary) {
        let routes = route::list(pod, f, Some(MAIN_TABLE)).map_err(herr("listing pod routes"))?;
        for r in routes {
            if eth0.is_some_and(|e| r.oif == Some(e.index)) && ifname != conf.pod_default_cni_nic {
                facts.default_nic_routes.push(r.clone());
            }
            if nic.is_some_and(|n| r.oif == Some(n.index)) {
                facts.nic_routes.push(r);
            }
        }
        let rules = rule::list(pod, f).map_err(herr("listing pod rules"))?;
        facts.used_tables.extend(rules.iter().filter(|r| r.from.is_some()).map(|r| r.table));
    }
    mark!("facts: pod links, addresses, routes, rules");
    let pod_ips: Vec<IpNet> = prev.ips.iter().map(|i| i.address).collect();
    facts.node_ips = if !conf.node_ips.is_empty() {
        conf.node_ips.clone()
    } else if secondary {
        node_ips(host, &pod_ips)?
    } else {
        // An underlay first NIC uses the node IPs of its own families only.
        underlay_node_ips(host, &plan::nic_ips(prev, ifname))?
    };
    mark!("facts: node IPs");
    Ok(facts)
}

/// What a failed ADD must undo, in reverse order.
enum Undo {
    HostLink(u32),
    HostRoute(Route),
    PodRoute(Route),
    PodRule(Rule),
}

struct Rollback<'a> {
    host: &'a Handle,
    pod: &'a Handle,
    steps: Vec<Undo>,
    armed: bool,
}

impl Drop for Rollback<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        for step in self.steps.drain(..).rev() {
            let res = match &step {
                Undo::HostLink(i) => link::delete(self.host, *i),
                Undo::HostRoute(r) => route::del(self.host, r),
                Undo::PodRoute(r) => route::del(self.pod, r),
                Undo::PodRule(r) => rule::del(self.pod, r),
            };
            if let Err(e) = res {
                if !e.is_not_found() {
                    tracing::warn!("rollback: {e}");
                }
            }
        }
    }
}

fn resolve(h: &Handle, r: &DevRoute) -> Result<Route, CniError> {
    let mut route = r.route.clone();
    if let Some(dev) = &r.dev {
        route.oif = Some(link::index_of(h, dev).map_err(herr(format!("finding {dev}")))?);
    }
    Ok(route)
}

fn add_rule(h: &Handle, r: &Rule) -> Result<bool, CniError> {
    match rule::add(h, r) {
        Ok(()) => Ok(true),
        Err(e) if e.is_exists() => Ok(false),
        Err(e) => Err(herr(format!("adding rule {r}"))(e)),
    }
}

fn set_sysctls(kv: &[(String, String)]) -> knit_host::Result<()> {
    for (k, v) in kv {
        sysctl::set(k, v)?;
    }
    Ok(())
}

/// Interface indexes by name, looked up once per install (several routes name one device).
struct Indexes<'a> {
    h: &'a Handle,
    known: Vec<(String, u32)>,
}

impl<'a> Indexes<'a> {
    fn new(h: &'a Handle) -> Indexes<'a> {
        Indexes { h, known: Vec::new() }
    }

    fn learn(&mut self, name: &str, index: u32) {
        self.known.retain(|(n, _)| n != name);
        self.known.push((name.to_string(), index));
    }

    fn get(&mut self, name: &str) -> Result<u32, CniError> {
        if let Some((_, i)) = self.known.iter().find(|(n, _)| n == name) {
            return Ok(*i);
        }
        let i = link::index_of(self.h, name).map_err(herr(format!("finding {name}")))?;
        self.known.push((name.to_string(), i));
        Ok(i)
    }

    fn resolve(&mut self, r: &DevRoute) -> Result<Route, CniError> {
        let mut route = r.route.clone();
        if let Some(dev) = &r.dev {
            route.oif = Some(self.get(dev)?);
        }
        Ok(route)
    }
}

/// What [`install`] tells the pod helper once the plan is in progress.
enum HelperMsg {
    /// Set these pod sysctls (veth0 exists by now), and remove the reply-steering tables of
    /// these families (written speculatively, not in the plan).
    Finish { sysctls: Vec<(String, String)>, remove: Vec<Family> },
    /// The ADD failed: remove the rules installed.
    Abort,
}

/// The pod-side work that needs a thread inside the pod's namespace: the reply-steering
/// nf_tables rules and the pod sysctls. It starts as soon as the pod's namespace is open, runs
/// beside the netlink work, and is waited for before ADD succeeds; dropped without
/// [`PodHelper::finish`] (a failed ADD), it removes the tables it wrote and is waited for too,
/// so no thread outlives the plugin.
struct PodHelper {
    families: Vec<Family>,
    tx: Option<std::sync::mpsc::Sender<HelperMsg>>,
    handle: Option<std::thread::JoinHandle<Result<(), CniError>>>,
}

impl PodHelper {
    /// Starts the helper; with `want_handle`, it also opens a netlink socket in the pod (it
    /// is inside the pod anyway) and hands it back, sparing the caller a thread of its own.
    fn start(
        families: Vec<Family>,
        pod_ns: &Netns,
        want_handle: bool,
    ) -> Result<(PodHelper, Option<Handle>), CniError> {
        let ns = pod_ns.try_clone().map_err(herr("opening the pod netns"))?;
        let (tx, rx) = std::sync::mpsc::channel::<HelperMsg>();
        let (htx, hrx) = std::sync::mpsc::channel::<knit_host::Result<Handle>>();
        let fams = families.clone();
        let handle = std::thread::Builder::new()
            .name("knit-coordinator-pod".into())
            .spawn(move || {
                ns.run(move || -> Result<(), CniError> {
                    // This thread is inside the pod, so its sockets are too. The netlink
                    // socket first: the caller waits for it, while nobody waits for the rules
                    // until the end of the ADD.
                    if want_handle {
                        let h = Handle::new();
                        let failed = h.is_err();
                        let _ = htx.send(h);
                        if failed {
                            return Ok(()); // the caller reports it
                        }
                    }
                    drop(htx);
                    let mut nft = Nft::new().map_err(herr("opening nf_tables in the pod netns"))?;
                    let remove = |nft: &mut Nft, families: &[Family]| -> Result<(), CniError> {
                        for f in families {
                            nft.delete_table((*f).into(), plan::STEERING_TABLE)
                                .map_err(herr("removing the pod's reply-steering rules"))?;
                        }
                        Ok(())
                    };
                    for (i, f) in fams.iter().enumerate() {
                        if let Err(e) = nft.apply(&plan::steering_table(*f)) {
                            let _ = remove(&mut nft, &fams[..i]);
                            return Err(herr("writing the pod's reply-steering rules")(e));
                        }
                    }
                    match rx.recv() {
                        Ok(HelperMsg::Finish { sysctls, remove: extra }) => {
                            set_sysctls(&sysctls).map_err(herr("setting pod sysctls"))?;
                            remove(&mut nft, &extra)
                        }
                        Ok(HelperMsg::Abort) | Err(_) => remove(&mut nft, &fams),
                    }
                })
                .map_err(herr("entering the pod netns"))
                .and_then(|r| r)
            })
            .map_err(|e| CniError::generic(format!("starting the pod helper thread: {e}")))?;
        let helper = PodHelper { families, tx: Some(tx), handle: Some(handle) };
        let pod = if want_handle {
            match hrx.recv() {
                Ok(Ok(h)) => Some(h),
                Ok(Err(e)) => return Err(herr("opening netlink in the pod netns")(e)),
                // The thread could not enter the pod: its error comes with the join.
                Err(_) => {
                    let mut helper = helper;
                    helper.wait()?;
                    return Err(CniError::generic("the pod helper thread ended early"));
                }
            }
        } else {
            None
        };
        Ok((helper, pod))
    }

    /// Hands over the pod sysctls and the plan's reply-steering families; the helper applies the
    /// sysctls and drops rules of families the plan does not have.
    fn finish(&mut self, sysctls: Vec<(String, String)>, planned: &[Family]) {
        let remove = self.families.iter().copied().filter(|f| !planned.contains(f)).collect();
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(HelperMsg::Finish { sysctls, remove });
        }
    }

    fn wait(&mut self) -> Result<(), CniError> {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(HelperMsg::Abort);
        }
        match self.handle.take().map(|h| h.join()) {
            None | Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(e))) => Err(e),
            Some(Err(_)) => Err(CniError::generic("the pod helper thread panicked")),
        }
    }
}

impl Drop for PodHelper {
    fn drop(&mut self) {
        if let Err(e) = self.wait() {
            tracing::warn!("rollback: {}", e.msg);
        }
    }
}

/// Installs the plan. Returns after a full success, or rolls back what it did.
fn install(
    plan: &Plan,
    host: &Handle,
    pod: &Handle,
    pod_ns: &Netns,
    pod_links: &[String],
    helper: Option<PodHelper>,
) -> Result<(), CniError> {
    let mut rb = Rollback { host, pod, steps: Vec::new(), armed: true };
    let planned: Vec<Family> = plan.pod_steering.clone();
    // The helper (started early when the plan was foreseeable) or one started now. Declared
    // after the rollback so that on failure it is dropped (and waited for) first.
    let mut helper = match helper {
        Some(h) => Some(h),
        None if !planned.is_empty() => Some(PodHelper::start(planned.clone(), pod_ns, false)?.0),
        None => None,
    };
    let mut pod_idx = Indexes::new(pod);
    let mut host_idx = Indexes::new(host);
    let nic_index = pod_idx.get(&plan.ifname)?;

    if let Some(v) = &plan.veth {
        let remove_stale_pod_veth = || -> Result<(), CniError> {
            if let Some(stale) = link::get_by_name(pod, &v.pod).map_err(herr("reading pod links"))? {
                link::delete(pod, stale.index).map_err(herr("removing a stale veth0"))?;
            }
            Ok(())
        };
        if pod_links.iter().any(|l| l == &v.pod) {
            remove_stale_pod_veth()?;
        }
        // Created down and brought up here through the handles we have (creating it "up"
        // would open one more socket inside the pod).
        let opts = link::VethOptions { mtu: Some(v.mtu), mac: None, peer_mac: None, up: false };
        let hidx = match link::create_veth(host, &v.host, &v.pod, Some(pod_ns), &opts) {
            Ok(i) => i,
            Err(e) if e.is_exists() => {
                // A stale host veth of the same name belongs to an earlier sandbox of this
                // container (looked for only now: it is rare, and every ADD would pay).
                link::delete_by_name(host, &v.host).map_err(herr("removing a stale host veth"))?;
                remove_stale_pod_veth()?;
                link::create_veth(host, &v.host, &v.pod, Some(pod_ns), &opts).map_err(herr("creating the veth pair"))?
            }
            Err(e) => return Err(herr("creating the veth pair")(e)),
        };
        rb.steps.push(Undo::HostLink(hidx));
        host_idx.learn(&v.host, hidx);
        let pidx = link::index_of(pod, &v.pod).map_err(herr("finding veth0"))?;
        pod_idx.learn(&v.pod, pidx);
        link::set_up(pod, pidx).map_err(herr("bringing veth0 up"))?;
        link::set_up(host, hidx).map_err(herr("bringing the host veth up"))?;
        if let Some(a) = v.link_address {
            addr::add(pod, &addr::Address::new(pidx, a)).map_err(herr("adding vethLinkAddress"))?;
        }
        mark!("install: veth pair");
    }
    link::set_up(pod, nic_index).map_err(herr(format!("bringing {} up", plan.ifname)))?;

    let kv = plan.pod_sysctls.clone();
    match helper.as_mut() {
        // arp_notify must be on before a MAC change, so with podMACPrefix they go in now.
        Some(h) if plan.pod_mac.is_none() => h.finish(kv, &planned),
        Some(h) => {
            pod_ns.try_run(move || set_sysctls(&kv)).map_err(herr("setting pod sysctls"))?;
            h.finish(Vec::new(), &planned);
        }
        None if !kv.is_empty() => pod_ns.try_run(move || set_sysctls(&kv)).map_err(herr("setting pod sysctls"))?,
        None => {}
    }
    if let Some(mac) = plan.pod_mac {
        // arp_notify=1 (set above) makes the kernel send the gratuitous ARP for the new MAC.
        link::set_mac(pod, nic_index, mac).map_err(herr("setting the podMACPrefix MAC"))?;
    }
    if let Some(q) = plan.txqlen {
        link::set_txqlen(pod, nic_index, q).map_err(herr("setting txQueueLen"))?;
    }
    mark!("install: pod sysctls, mac, txqlen");

    for r in &plan.pod_routes {
        let route = pod_idx.resolve(r)?;
        match route::add(pod, &route) {
            Ok(()) => rb.steps.push(Undo::PodRoute(route)),
            Err(e) if e.is_exists() => {}
            Err(e) => return Err(herr(format!("adding pod route {r}"))(e)),
        }
    }
    for r in &plan.pod_routes_del {
        let route = pod_idx.resolve(r)?;
        if let Err(e) = route::del(pod, &route) {
            if !e.is_not_found() {
                return Err(herr(format!("moving pod route {r} out of main"))(e));
            }
        }
    }
    for r in &plan.pod_rules {
        if add_rule(pod, r)? {
            rb.steps.push(Undo::PodRule(r.clone()));
        }
    }
    mark!("install: pod routes and rules");

    // Host side (this thread is in the node's namespace).
    set_sysctls(&plan.host_sysctls).map_err(herr("setting host sysctls"))?;
    for r in &plan.host_rules {
        // The shared rule stays on rollback and DEL: other pods use it.
        add_rule(host, r)?;
    }
    mark!("install: host sysctls and rules");
    for r in &plan.host_routes {
        let route = host_idx.resolve(r)?;
        clear_stale_neighbours(host, &route);
        // Replace: a route left for this IP by an earlier pod (same table, same metric) is
        // taken over in one step, without listing the table.
        route::replace(host, &route).map_err(herr(format!("adding host route {r}")))?;
        rb.steps.push(Undo::HostRoute(route));
    }
    mark!("install: host routes");
    if let Some(h) = helper.as_mut() {
        h.wait()?;
    }
    mark!("install: pod reply-steering rules and sysctls (waited for)");
    rb.armed = false;
    Ok(())
}

/// `ip/32` or `ip/128`.
fn host_prefix(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

/// Removes neighbour entries left for the pod's IP by an earlier pod.
fn clear_stale_neighbours(host: &Handle, want: &Route) {
    if let Ok(ns) = neigh::list(host, Some(want.family()), None) {
        for n in ns.iter().filter(|n| n.ip == want.dst.addr()) {
            let _ = neigh::del(host, n.index, n.ip);
        }
    }
}

pub struct Coordinator;

impl Coordinator {
    fn prev(args: &CmdArgs) -> Result<CniResult, CniError> {
        args.prev_result()?
            .ok_or_else(|| CniError::invalid_config("knit-coordinator is a chained plugin: prevResult is required"))
    }

    fn open_pod_ns(args: &CmdArgs) -> Result<Netns, CniError> {
        Netns::open(&args.netns).map_err(|e| CniError::invalid_netns(format!("opening netns {:?}: {e}", args.netns)))
    }

    fn open_pod(args: &CmdArgs) -> Result<(Netns, Handle), CniError> {
        let ns = Self::open_pod_ns(args)?;
        let h = Handle::in_netns(&ns).map_err(herr("opening netlink in the pod netns"))?;
        Ok((ns, h))
    }
}

impl Plugin for Coordinator {
    fn add(&self, args: &CmdArgs) -> Result<CniResult, CniError> {
        spans::start();
        let conf = Conf::parse(&args.stdin)?;
        let prev = Self::prev(args)?;
        if conf.mode == crate::config::Mode::Disabled {
            return Ok(prev);
        }
        mark!("add: config");
        let pod_ns = Self::open_pod_ns(args)?;
        // An underlay first NIC gets reply-steering rules: start the pod thread that writes
        // them now, beside everything else (install reconciles them with the plan).
        let fams = if plan::underlay_first(&conf, &args.ifname) {
            plan::steering_families(&prev, &args.ifname)
        } else {
            Vec::new()
        };
        let (helper, pod) = if fams.is_empty() {
            (None, None)
        } else {
            let (h, pod) = PodHelper::start(fams, &pod_ns, true)?;
            (Some(h), pod)
        };
        mark!("add: helper started, pod socket");
        let pod = match pod {
            Some(p) => p,
            None => Handle::in_netns(&pod_ns).map_err(herr("opening netlink in the pod netns"))?,
        };
        let host = Handle::new().map_err(herr("opening netlink"))?;
        mark!("add: config, netlink sockets");
        let facts = read_facts(&conf, &args.ifname, &prev, &host, &pod)?;
        let plan = plan::plan(&conf, &args.ifname, &args.container_id, &prev, &facts)?;
        tracing::debug!(?plan, "coordinator plan");
        install(&plan, &host, &pod, &pod_ns, &facts.pod_links, helper)?;
        Ok(prev)
    }

    /// Never fails for missing state; removes what ADD made except the shared host rule. A
    /// config that no longer validates is logged and cleaned up with the defaults: a pod must
    /// always be removable.
    fn del(&self, args: &CmdArgs) -> Result<(), CniError> {
        spans::start();
        let conf = match Conf::parse(&args.stdin) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("DEL with an invalid config ({}): cleaning up with the defaults", e.msg);
                Conf::fallback()
            }
        };
        if conf.mode == crate::config::Mode::Disabled {
            return Ok(());
        }
        let prev = args.prev_result().ok().flatten().unwrap_or_default();
        let host = Handle::new().map_err(herr("opening netlink"))?;
        if plan::underlay_first(&conf, &args.ifname) {
            return del_underlay_first(args, &conf, &prev, &host);
        }
        let pod = if args.netns.is_empty() { None } else { Self::open_pod(args).ok() };
        let is_first = args.ifname == conf.pod_default_cni_nic;
        let veth_name = plan::host_veth_name(&args.container_id);
        mark!("del: config, netlink sockets");

        // The pod side, from the same plan ADD computed.
        if let Some((_, pod_h)) = &pod {
            if !prev.ips.is_empty() {
                match read_facts(&conf, &args.ifname, &prev, &host, pod_h) {
                    Ok(mut facts) => {
                        if is_first {
                            facts.pod_links.retain(|l| l != POD_VETH);
                        }
                        match plan::plan(&conf, &args.ifname, &args.container_id, &prev, &facts) {
                            Ok(p) => remove_pod_side(&p, pod_h, &prev),
                            Err(e) => tracing::warn!("DEL: cannot plan the pod side: {}", e.msg),
                        }
                    }
                    Err(e) => tracing::warn!("DEL: cannot read the pod: {}", e.msg),
                }
            }
        }

        mark!("del: pod side");
        // Host routes in the host rule table that point at this pod's devices.
        let mut devs: Vec<u32> = Vec::new();
        if is_first {
            if let Some(l) = link::get_by_name(&host, &veth_name).map_err(herr("reading host links"))? {
                devs.push(l.index);
            }
        }
        if let Some((_, pod_h)) = &pod {
            if let Ok(Some(e)) = link::get_by_name(pod_h, &conf.pod_default_cni_nic) {
                if let Some(peer) = e.link {
                    devs.push(peer);
                }
            }
        }
        // Exactly the routes ADD made (`<ip>/32 dev <dev> scope link table <hostRuleTable>`),
        // deleted by key rather than by listing the table: a node with many pods has many.
        // Without a prevResult there is nothing to match; the first NIC's routes then go with
        // its host veth below.
        for ip in prev.ips.iter().map(|i| i.address.addr()) {
            for &dev in &devs {
                let mut r = Route::new(host_prefix(ip)).scope(Scope::Link).table(conf.host_rule_table);
                r.oif = Some(dev);
                if let Err(e) = route::del(&host, &r) {
                    if !e.is_not_found() {
                        tracing::debug!("DEL: host route {r}: {e}");
                    }
                }
            }
        }
        mark!("del: host routes");
        if let Some((_, pod_h)) = &pod {
            if is_first {
                let _ = link::delete_by_name(pod_h, POD_VETH);
            }
        }
        if is_first {
            link::delete_by_name(&host, &veth_name).map_err(herr("deleting the host veth"))?;
        }
        mark!("del: veth pair");
        Ok(())
    }

    fn check(&self, args: &CmdArgs) -> Result<(), CniError> {
        let conf = Conf::parse(&args.stdin)?;
        if conf.mode == crate::config::Mode::Disabled {
            return Ok(());
        }
        let prev = Self::prev(args)?;
        let (pod_ns, pod) = Self::open_pod(args)?;
        let host = Handle::new().map_err(herr("opening netlink"))?;
        let mut facts = read_facts(&conf, &args.ifname, &prev, &host, &pod)?;
        // veth0 exists after ADD; resolve the mode as ADD saw it.
        if args.ifname == conf.pod_default_cni_nic {
            facts.pod_links.retain(|l| l != POD_VETH);
        }
        let plan = plan::plan(&conf, &args.ifname, &args.container_id, &prev, &facts)?;
        verify(&plan, &host, &pod)?;
        if !plan.pod_steering.is_empty() {
            let mut nft = Nft::in_netns(&pod_ns).map_err(herr("opening nf_tables in the pod netns"))?;
            for f in &plan.pod_steering {
                let want = plan::steering_table(*f);
                let have =
                    nft.read_table(want.family, &want.name).map_err(herr("reading the pod's reply-steering rules"))?;
                if have.as_ref() != Some(&want) {
                    return Err(missing(format!(
                        "the pod's reply-steering table {} {} is missing or changed",
                        want.family.name(),
                        want.name
                    )));
                }
            }
        }
        Ok(())
    }
}

/// DEL of an underlay first NIC (the pod's `eth0` from macvlan, plus our veth pair).
///
/// A thread inside the pod removes the pod's rules and routes and the reply-steering table,
/// then deletes veth0 (its host end goes with it) together with the macvlan/ipvlan NIC in one
/// kernel batch; the host end is deleted from here only when the pod's netns is gone. The plan
/// is the one ADD computed (an underlay first NIC's plan depends only on the config,
/// prevResult and the node's IPs).
fn del_underlay_first(args: &CmdArgs, conf: &Conf, prev: &CniResult, host: &Handle) -> Result<(), CniError> {
    let veth_name = plan::host_veth_name(&args.container_id);
    mark!("del: config, netlink socket");
    let pod_side = if args.netns.is_empty() || prev.ips.is_empty() {
        None
    } else {
        let node_ips = if conf.node_ips.is_empty() {
            underlay_node_ips(host, &plan::nic_ips(prev, &args.ifname))?
        } else {
            conf.node_ips.clone()
        };
        let facts = Facts { node_ips, ..Facts::default() };
        match plan::plan(conf, &args.ifname, &args.container_id, prev, &facts) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!("DEL: cannot plan the pod side: {}", e.msg);
                None
            }
        }
    };
    mark!("del: plan");
    // The pod side, with its own handle (None when the netns is gone): rules, routes and the
    // reply-steering table, then veth0 together with the underlay NIC.
    let nic = args.ifname.clone();
    let pod_work = |netns: String, plan: Option<Plan>, prev: CniResult| {
        let nic = nic.clone();
        move || -> Option<Handle> {
            spans::start();
            let ns = Netns::open(&netns).ok()?;
            // One thread inside the pod opens both sockets there.
            let (h, nft) = ns.try_run(|| Ok((Handle::new()?, Nft::new().ok()))).ok()?;
            mark!("del pod: sockets");
            if let Some(p) = &plan {
                remove_pod_side(p, &h, &prev);
                mark!("del pod: rules, routes");
                // Deleting a table with base chains waits for the kernel to drain their hooks
                // (about 15 ms here; running it beside the device deletion below saved nothing
                // measurable: the two waits do not overlap).
                if let Some(mut nft) = nft {
                    for f in &p.pod_steering {
                        if let Err(e) = nft.delete_table((*f).into(), plan::STEERING_TABLE) {
                            tracing::warn!("DEL: {e}");
                        }
                    }
                }
                mark!("del pod: reply-steering table");
            }
            delete_with_nic(&h, &nic);
            mark!("del pod: veth0 and the NIC");
            Some(h)
        }
    };
    let pod = match std::thread::Builder::new().name("knit-coordinator-pod".into()).spawn(pod_work(
        args.netns.clone(),
        pod_side.clone(),
        prev.clone(),
    )) {
        Ok(h) => h.join().unwrap_or_else(|_| {
            tracing::warn!("DEL: the pod-side thread panicked");
            None
        }),
        Err(e) => {
            tracing::warn!("DEL: no thread for the pod side ({e}); doing it here");
            pod_work(args.netns.clone(), pod_side, prev.clone())()
        }
    };
    mark!("del: pod side, veth0 and the NIC");
    // The host end (normally gone with veth0 by now; not when the pod's netns is gone): the
    // table-500 routes go with it.
    let deleted = match link::delete_by_name(host, &veth_name) {
        Ok(_) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(herr("deleting the host veth")(e)),
    };
    mark!("del: host veth");
    // A veth0 that did not belong to our host veth (a stale one) goes too.
    if let Some(pod) = &pod {
        let _ = link::delete_by_name(pod, POD_VETH);
    }
    deleted
}

/// The device group [`delete_with_nic`] puts veth0 and the NIC in ("knit").
const DEL_GROUP: u32 = 0x6b6e_6974;

/// Deletes veth0 (its host end goes with it) and, when it is a macvlan or ipvlan link, the
/// underlay NIC `nic`, in one kernel batch ([`link::delete_group`]): each deletion on its own
/// waits about 20 ms for the kernel, so deleting the NIC here makes the underlay plugin's DEL,
/// which runs next and finds its link gone (the reference plugins treat that as done), cost no
/// second wait. Any other NIC kind (a physical VF a plugin must move back) is left to its
/// plugin. Best effort: on failure veth0 alone is deleted.
fn delete_with_nic(pod: &Handle, nic: &str) {
    let Ok(Some(veth0)) = link::get_by_name(pod, POD_VETH) else { return };
    let nic_link =
        link::get_by_name(pod, nic).ok().flatten().filter(|l| matches!(l.kind.as_deref(), Some("macvlan" | "ipvlan")));
    if let Some(n) = nic_link {
        let grouped =
            link::set_group(pod, veth0.index, DEL_GROUP).and_then(|_| link::set_group(pod, n.index, DEL_GROUP));
        match grouped.and_then(|_| link::delete_group(pod, DEL_GROUP)) {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!("DEL: deleting {POD_VETH} and {nic} together: {e}; deleting {POD_VETH} alone");
                let _ = link::set_group(pod, n.index, 0);
            }
        }
    }
    if let Err(e) = link::delete(pod, veth0.index) {
        if !e.is_not_found() {
            tracing::warn!("DEL: deleting {POD_VETH}: {e}");
        }
    }
}

/// Removes the plan's pod rules and routes. What belongs to this NIC (its table, its source
/// rules, the fwmark rule) always goes; what the default NIC shares with other secondary NICs
/// (table 100, main-table routes on eth0, eth0's source rule) goes only when no other NIC
/// table remains. Everything is best effort: missing state is success.
fn remove_pod_side(plan: &Plan, pod: &Handle, prev: &CniResult) {
    let nic_ips: Vec<IpAddr> = prev.ips.iter().map(|i| i.address.addr()).collect();
    let own_table = plan.table;
    let mut others = false;
    for f in [Family::V4, Family::V6] {
        if let Ok(rules) = rule::list(pod, f) {
            others |= rules.iter().any(|r| {
                r.from.is_some_and(|n| !nic_ips.contains(&n.addr()))
                    && r.table >= crate::config::FIRST_NIC_TABLE
                    && Some(r.table) != own_table
            });
        }
    }
    for r in &plan.pod_rules {
        let own = r.from.is_some_and(|n| nic_ips.contains(&n.addr())) || r.fwmark.is_some();
        if own || !others {
            let _ = rule::del(pod, r);
        }
    }
    for r in &plan.pod_routes {
        let own = Some(r.route.table) == own_table;
        if !own && others {
            continue;
        }
        if let Ok(route) = resolve(pod, r) {
            let _ = route::del(pod, &route);
        }
    }
}

fn missing(what: String) -> CniError {
    CniError::generic(format!("CHECK: {what}"))
}

/// CHECK: every route and rule of the plan exists.
fn verify(plan: &Plan, host: &Handle, pod: &Handle) -> Result<(), CniError> {
    if let Some(v) = &plan.veth {
        link::get_by_name(host, &v.host)
            .map_err(herr("reading host links"))?
            .ok_or_else(|| missing(format!("host veth {} is missing", v.host)))?;
        link::get_by_name(pod, &v.pod)
            .map_err(herr("reading pod links"))?
            .ok_or_else(|| missing(format!("pod {} is missing", v.pod)))?;
    }
    let has_route = |h: &Handle, want: &Route| -> Result<bool, CniError> {
        let rs = route::list(h, want.family(), Some(want.table)).map_err(herr("listing routes"))?;
        Ok(rs
            .iter()
            .any(|r| r.dst == want.dst && r.gateway == want.gateway && (want.oif.is_none() || r.oif == want.oif)))
    };
    for r in &plan.pod_routes {
        let route = resolve(pod, r)?;
        if !has_route(pod, &route)? {
            return Err(missing(format!("pod route {r} is missing")));
        }
    }
    for r in &plan.host_routes {
        let route = resolve(host, r)?;
        if !has_route(host, &route)? {
            return Err(missing(format!("host route {r} is missing")));
        }
    }
    let has_rule = |h: &Handle, want: &Rule| -> Result<bool, CniError> {
        let rs = rule::list(h, want.family).map_err(herr("listing rules"))?;
        Ok(rs.iter().any(|r| {
            r.table == want.table
                && r.from == want.from
                && r.fwmark == want.fwmark
                && (want.priority.is_none() || r.priority == want.priority)
        }))
    };
    for r in &plan.pod_rules {
        if !has_rule(pod, r)? {
            return Err(missing(format!("pod rule {r} is missing")));
        }
    }
    for r in &plan.host_rules {
        if !has_rule(host, r)? {
            return Err(missing(format!("host rule {r} is missing")));
        }
    }
    let _ = ResolvedMode::Overlay;
    Ok(())
}
