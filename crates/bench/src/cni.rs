//! `knit bench cni-add-del`: N pods ADD then DEL in a throwaway node namespace.
//!
//! Four chains run side by side in one node namespace, pod by pod, in an order that rotates
//! with every pod so that drift and noise hit them alike:
//! - knit-routed + knit-ipam against Debian's ptp + host-local;
//! - macvlan + static + knit-coordinator (underlay mode) against macvlan + static alone, the
//!   macvlan master being a veth (`eth0`, 172.16.1.2/16) of the node namespace.
//!
//! Two floors are measured in the same rotation: starting a trivial process (`/bin/true`), and
//! the kernel's deletion of a veth pair whose peer is in another namespace (both ends up), as a
//! pod's DEL does. All N pods are ADDed first (so the node holds N pods of each kind at the
//! end, as at high density), then all are DELeted. Pod namespaces are created before their ADD
//! and removed with the node at the end, outside the timed region.

use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use knit_cni::RuntimeArgs;
use knit_host::route::Route;
use knit_host::testing::TestNet;
use knit_host::{addr, guard, link, route, Handle, IpNet, Netns};
use serde_json::Value;

use crate::chain::{container_id, pod_args, Chain, PluginDirs};
use crate::report::{Report, Row};
use crate::stats::Samples;
use crate::workspace::Workspace;
use crate::{signals, Error, Options, Result};

/// The underlay node's uplink (and macvlan master) and its address; the gateway sits in the
/// fabric.
const NODE_IF: &str = "eth0";
const NODE_ADDR: &str = "172.16.1.2/16";
const GATEWAY: &str = "172.16.0.1";
/// At most this many pods per kind (address plan below).
pub const MAX_N: usize = 10_000;

/// Row names, shared by the report and its consumers (tests, BENCHMARKS.md).
pub mod rows {
    pub const PROCESS: &str = "floor: start a process (/bin/true)";
    pub const VETH_DEL: &str = "floor: kernel veth deletion";
    pub const PTP_ADD: &str = "ptp + host-local ADD";
    pub const ROUTED_ADD: &str = "knit-routed + knit-ipam ADD";
    pub const PTP_DEL: &str = "ptp + host-local DEL";
    pub const ROUTED_DEL: &str = "knit-routed + knit-ipam DEL";
    pub const PTP_DEL_NET: &str = "ptp + host-local DEL - veth deletion";
    pub const ROUTED_DEL_NET: &str = "knit-routed + knit-ipam DEL - veth deletion";
    pub const MACVLAN_ADD: &str = "macvlan ADD";
    pub const COORD_ADD: &str = "macvlan + knit-coordinator ADD";
    pub const COORD_SHARE_ADD: &str = "knit-coordinator in the chain, ADD";
    pub const COORD_SHARE_DEL: &str = "knit-coordinator in the chain, DEL";
    pub const MACVLAN_DEL: &str = "macvlan DEL";
    pub const MACVLAN_DEL_FLOOR: &str = "macvlan DEL + veth deletion";
    pub const COORD_DEL: &str = "macvlan + knit-coordinator DEL";
}

/// One timed thing of the rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Item {
    RoutedKnit,
    RoutedRef,
    MacvlanKnit,
    MacvlanRef,
    Floor,
}

const ITEMS: [Item; 5] = [Item::RoutedKnit, Item::RoutedRef, Item::MacvlanKnit, Item::MacvlanRef, Item::Floor];

impl Item {
    fn kind(self) -> u8 {
        match self {
            Item::RoutedKnit => 1,
            Item::RoutedRef => 2,
            Item::MacvlanKnit => 3,
            Item::MacvlanRef => 4,
            Item::Floor => 5,
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Item::RoutedKnit => "rk",
            Item::RoutedRef => "rr",
            Item::MacvlanKnit => "mk",
            Item::MacvlanRef => "mr",
            Item::Floor => "fl",
        }
    }
}

/// The items in the order of sample `i`: rotated by `i`, so each takes every position equally.
fn order(i: usize) -> [Item; 5] {
    let mut o = ITEMS;
    o.rotate_left(i % ITEMS.len());
    o
}

fn routed_knit_conflist(ws: &Workspace) -> String {
    format!(
        r#"{{"cniVersion":"1.0.0","name":"bench-routed","plugins":[{{"type":"knit-routed","mtu":1480,
            "ipam":{{"type":"knit-ipam","node":"bench","dataDir":"{}",
                     "pools":[{{"name":"overlay","cidr":"10.233.64.0/18","blockSize":26}}]}}}}]}}"#,
        ws.path("knit-ipam").display()
    )
}

fn routed_ref_conflist(ws: &Workspace) -> String {
    format!(
        r#"{{"cniVersion":"1.0.0","name":"bench-ptp","plugins":[{{"type":"ptp","mtu":1480,
            "ipam":{{"type":"host-local","dataDir":"{}","ranges":[[{{"subnet":"10.234.0.0/16"}}]]}}}}]}}"#,
        ws.path("host-local").display()
    )
}

/// The underlay address of pod `i` of a macvlan kind: ref pods from 172.16.16.1, knit pods
/// from 172.16.128.1 (250 per /24).
fn underlay_addr(i: usize, knit: bool) -> Ipv4Addr {
    let base: usize = if knit { 128 } else { 16 };
    Ipv4Addr::new(172, 16, (base + i / 250) as u8, (1 + i % 250) as u8)
}

fn macvlan_conflist(i: usize, knit: bool) -> String {
    let ip = underlay_addr(i, knit);
    let macvlan = format!(
        r#"{{"type":"macvlan","master":"{NODE_IF}","mode":"bridge",
            "ipam":{{"type":"static","addresses":[{{"address":"{ip}/16","gateway":"{GATEWAY}"}}],
                     "routes":[{{"dst":"0.0.0.0/0","gw":"{GATEWAY}"}}]}}}}"#
    );
    let coordinator = r#",{"type":"knit-coordinator","mode":"underlay","overlayPodCIDR":["10.233.64.0/18"],
            "serviceCIDR":["10.233.0.0/18"],"hijackCIDR":[]}"#;
    format!(
        r#"{{"cniVersion":"1.0.0","name":"{}","plugins":[{macvlan}{}]}}"#,
        if knit { "bench-underlay" } else { "bench-macvlan" },
        if knit { coordinator } else { "" }
    )
}

/// Every sample series of the run, in the order taken.
#[derive(Default)]
struct Series {
    add: [Samples; 4],
    del: [Samples; 4],
    process: Samples,
    veth_del: Samples,
    /// knit-coordinator's own process in the underlay chain.
    coord_add: Samples,
    coord_del: Samples,
}

fn index(item: Item) -> usize {
    match item {
        Item::RoutedKnit => 0,
        Item::RoutedRef => 1,
        Item::MacvlanKnit => 2,
        Item::MacvlanRef => 3,
        Item::Floor => 4,
    }
}

/// One pod of one kind: its namespace, runtime arguments, chain and ADD result.
struct Pod {
    _ns: Netns,
    rt: RuntimeArgs,
    chain: Arc<Chain>,
    result: Option<Value>,
}

pub fn run(n: usize, dirs: &PluginDirs, opts: &Options) -> Result<Report> {
    if n > MAX_N {
        return Err(Error::Invalid(format!("--n {n}: cni-add-del supports at most {MAX_N} pods")));
    }
    dirs.require(&["knit-routed", "knit-ipam", "knit-coordinator", "ptp", "host-local", "macvlan", "static"])?;
    // Two nodes: one for the routed pods (knit-routed and ptp), one for the underlay pods
    // (macvlan with and without the coordinator), as a cluster would have them.
    let ws = Workspace::new("cni")?;
    let underlay = TestNet::new(crate::workspace::NS_PREFIX)?;
    opts.progress(format!("node namespaces {} and {}, {n} pods of each kind", ws.tn.name(), underlay.name()));
    let routed_knit = Arc::new(Chain::new(&routed_knit_conflist(&ws), dirs)?);
    let routed_ref = Arc::new(Chain::new(&routed_ref_conflist(&ws), dirs)?);
    setup_underlay_node(&underlay)?;
    let nodes = [&ws.tn, &underlay];
    let floors = [ws.tn.pod("floor")?, underlay.pod("floor")?];

    let series = std::thread::scope(|sc| -> Result<Series> {
        let mut workers = Vec::new();
        for (tn, floor) in nodes.iter().zip(&floors) {
            let (jobs, rx) = mpsc::channel::<Job>();
            let (tx, replies) = mpsc::channel::<Reply>();
            let handle = sc.spawn(move || tn.run(|| node_worker(rx, tx, floor)).map_err(Error::from).and_then(|r| r));
            workers.push((Worker { jobs, replies }, handle));
        }
        let res = {
            let w: Vec<&Worker> = workers.iter().map(|(w, _)| w).collect();
            measure(n, [w[0], w[1]], nodes, &routed_knit, &routed_ref, dirs, opts)
        };
        // Closing the job channels ends the node threads; a node thread's own error (it could
        // not start) explains a driver error better than "node thread ended".
        let mut worker_err = None;
        for (w, h) in workers {
            drop(w);
            match h.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    worker_err.get_or_insert(e);
                }
                Err(p) => std::panic::resume_unwind(p),
            }
        }
        match (res, worker_err) {
            (Err(Error::Interrupted), _) => Err(Error::Interrupted),
            (_, Some(e)) => Err(e),
            (res, None) => res,
        }
    })?;
    Ok(report(n, &series))
}

/// The underlay node's uplink: `eth0` (172.16.1.2/16, default via 172.16.0.1) into a fabric
/// namespace holding the gateway. It is the macvlan master; the coordinator finds the node IP
/// on it.
fn setup_underlay_node(tn: &TestNet) -> Result<()> {
    let fabric = tn.pod("fabric")?;
    let (node_idx, fabric_idx) = tn.link(tn.host(), NODE_IF, &fabric, "p0")?;
    let hf = Handle::in_netns(&fabric)?;
    addr::add(&hf, &addr::Address::new(fabric_idx, net(&format!("{GATEWAY}/16"))?))?;
    let hn = Handle::in_netns(tn.host())?;
    addr::add(&hn, &addr::Address::new(node_idx, net(NODE_ADDR)?))?;
    let gw: IpAddr = GATEWAY.parse().map_err(|e| Error::Setup(format!("{GATEWAY}: {e}")))?;
    route::add(&hn, &Route::via(net("0.0.0.0/0")?, gw, Some(node_idx)))?;
    Ok(())
}

fn net(s: &str) -> Result<IpNet> {
    s.parse().map_err(|e| Error::Setup(format!("{s}: {e}")))
}

fn plugin_err(what: String) -> impl FnOnce(knit_cni::CniError) -> Error {
    move |err| if signals::interrupted() { Error::Interrupted } else { Error::Plugin { what, err } }
}

fn progress(opts: &Options, phase: &str, i: usize, n: usize) {
    let step = (n / 10).max(1);
    if (i + 1).is_multiple_of(step) || i + 1 == n {
        opts.progress(format!("{phase} {}/{n}", i + 1));
    }
}

/// Work for a node's thread. Everything a job needs is owned, so it crosses the channel.
enum Job {
    Add(Arc<Chain>, RuntimeArgs),
    Del(Arc<Chain>, RuntimeArgs, Option<Value>),
    /// Start `/bin/true` and wait for it.
    Process,
    /// Create a veth pair (untimed), then time its deletion.
    VethDel,
}

/// The chain's time, each plugin's own time (in chain order), and the outcome.
enum Reply {
    Added(Duration, Vec<Duration>, Result<Value, knit_cni::CniError>),
    Deleted(Duration, Vec<Duration>, Result<(), knit_cni::CniError>),
    Floor(Result<Duration, String>),
}

/// The driver's end of a node thread.
struct Worker {
    jobs: mpsc::Sender<Job>,
    replies: mpsc::Receiver<Reply>,
}

impl Worker {
    fn call(&self, job: Job) -> Result<Reply> {
        self.jobs.send(job).map_err(|_| Error::Setup("node thread ended".into()))?;
        self.replies.recv().map_err(|_| Error::Setup("node thread ended".into()))
    }
}

/// Runs on a thread inside a node namespace: plugins and floors it runs inherit the namespace.
fn node_worker(jobs: mpsc::Receiver<Job>, replies: mpsc::Sender<Reply>, floor_ns: &Netns) -> Result<()> {
    if guard::in_root_netns()? {
        return Err(Error::Setup("refusing to run plugins in the root network namespace".into()));
    }
    let host = Handle::new()?;
    for job in jobs {
        let reply = match job {
            Job::Add(chain, rt) => {
                let mut each = Vec::new();
                let t = Instant::now();
                let r = chain.add_timed(&rt, &mut each);
                Reply::Added(t.elapsed(), each, r)
            }
            Job::Del(chain, rt, prev) => {
                let mut each = Vec::new();
                let t = Instant::now();
                let r = chain.del_timed(&rt, prev.as_ref(), &mut each);
                Reply::Deleted(t.elapsed(), each, r)
            }
            Job::Process => {
                let t = Instant::now();
                let st = Command::new("/bin/true").stdin(Stdio::null()).status();
                let d = t.elapsed();
                Reply::Floor(match st {
                    Ok(st) if st.success() => Ok(d),
                    Ok(st) => Err(format!("/bin/true exited with {st}")),
                    Err(e) => Err(format!("starting /bin/true: {e}")),
                })
            }
            Job::VethDel => {
                // A veth pair like a pod's: peer in another namespace, both ends up.
                let opts = link::VethOptions { up: true, ..Default::default() };
                let r = link::create_veth(&host, "kbfloor0", "eth0", Some(floor_ns), &opts).and_then(|idx| {
                    let t = Instant::now();
                    link::delete(&host, idx).map(|()| t.elapsed())
                });
                Reply::Floor(r.map_err(|e| format!("veth deletion floor: {e}")))
            }
        };
        if replies.send(reply).is_err() {
            break;
        }
    }
    Ok(())
}

/// Which node an item runs on: routed pods on node 0, underlay pods on node 1, the floors
/// alternating.
fn node_of(item: Item, i: usize) -> usize {
    match item {
        Item::RoutedKnit | Item::RoutedRef => 0,
        Item::MacvlanKnit | Item::MacvlanRef => 1,
        Item::Floor => i % 2,
    }
}

/// The driver: creates pods (untimed) and sends the timed work to the node threads.
fn measure(
    n: usize,
    workers: [&Worker; 2],
    nodes: [&TestNet; 2],
    routed_knit: &Arc<Chain>,
    routed_ref: &Arc<Chain>,
    dirs: &PluginDirs,
    opts: &Options,
) -> Result<Series> {
    let mut s = Series::default();
    let mut pods: Vec<[Option<Pod>; 4]> = Vec::with_capacity(n);

    for i in 0..n {
        signals::check()?;
        // Untimed: the pods' namespaces and configurations.
        let mut row: [Option<Pod>; 4] = [None, None, None, None];
        for item in [Item::RoutedKnit, Item::RoutedRef, Item::MacvlanKnit, Item::MacvlanRef] {
            let name = format!("{}{i}", item.tag());
            let ns = nodes[node_of(item, i)].pod(&name)?;
            let cid = container_id(i, item.kind());
            let netns = ns.path().map(|p| p.display().to_string()).unwrap_or_default();
            let chain = match item {
                Item::MacvlanKnit => Arc::new(Chain::new(&macvlan_conflist(i, true), dirs)?),
                Item::MacvlanRef => Arc::new(Chain::new(&macvlan_conflist(i, false), dirs)?),
                Item::RoutedKnit => routed_knit.clone(),
                _ => routed_ref.clone(),
            };
            let rt = RuntimeArgs {
                args: pod_args(&format!("pod-{name}"), &cid),
                container_id: cid,
                netns,
                ifname: "eth0".into(),
                capability_args: Default::default(),
            };
            row[index(item)] = Some(Pod { _ns: ns, rt, chain, result: None });
        }
        for item in order(i) {
            let w = workers[node_of(item, i)];
            if item == Item::Floor {
                match w.call(Job::Process)? {
                    Reply::Floor(Ok(d)) => s.process.push(d),
                    Reply::Floor(Err(e)) => return Err(Error::Setup(e)),
                    _ => return Err(Error::Setup("unexpected reply from a node thread".into())),
                }
                continue;
            }
            let k = index(item);
            let Some(pod) = row[k].as_mut() else { continue };
            match w.call(Job::Add(pod.chain.clone(), pod.rt.clone()))? {
                Reply::Added(d, each, res) => {
                    pod.result = Some(res.map_err(plugin_err(format!("ADD {} pod {i}", item.tag())))?);
                    s.add[k].push(d);
                    if item == Item::MacvlanKnit {
                        if let Some(c) = each.get(1) {
                            s.coord_add.push(*c);
                        }
                    }
                }
                _ => return Err(Error::Setup("unexpected reply from a node thread".into())),
            }
        }
        pods.push(row);
        progress(opts, "ADD", i, n);
    }

    for (i, row) in pods.iter().enumerate() {
        signals::check()?;
        for item in order(i) {
            let w = workers[node_of(item, i)];
            if item == Item::Floor {
                match w.call(Job::VethDel)? {
                    Reply::Floor(Ok(d)) => s.veth_del.push(d),
                    Reply::Floor(Err(e)) => return Err(Error::Setup(e)),
                    _ => return Err(Error::Setup("unexpected reply from a node thread".into())),
                }
                continue;
            }
            let k = index(item);
            let Some(pod) = row[k].as_ref() else { continue };
            match w.call(Job::Del(pod.chain.clone(), pod.rt.clone(), pod.result.clone()))? {
                Reply::Deleted(d, each, res) => {
                    res.map_err(plugin_err(format!("DEL {} pod {i}", item.tag())))?;
                    s.del[k].push(d);
                    if item == Item::MacvlanKnit {
                        if let Some(c) = each.get(1) {
                            s.coord_del.push(*c);
                        }
                    }
                }
                _ => return Err(Error::Setup("unexpected reply from a node thread".into())),
            }
        }
        progress(opts, "DEL", i, n);
    }
    Ok(s)
}

fn report(n: usize, s: &Series) -> Report {
    use rows::*;
    let [rk_add, rr_add, mk_add, mr_add] = &s.add;
    let [rk_del, rr_del, mk_del, mr_del] = &s.del;
    let mut r = Report::new("cni-add-del", n);
    r.results.push(Row::plain(PROCESS, &s.process));
    r.results.push(Row::plain(VETH_DEL, &s.veth_del));

    r.results.push(Row::plain(PTP_ADD, rr_add));
    r.results.push(Row::versus(ROUTED_ADD, rk_add, PTP_ADD, rr_add.median(), Some(0.3)));
    r.results.push(Row::plain(PTP_DEL, rr_del));
    r.results.push(Row::versus(ROUTED_DEL, rk_del, PTP_DEL, rr_del.median(), Some(0.8)));
    let rr_net = rr_del.minus(&s.veth_del);
    let rk_net = rk_del.minus(&s.veth_del);
    r.results.push(Row::plain(PTP_DEL_NET, &rr_net).note("paired with the veth deletion of the same round"));
    r.results.push(
        Row::versus(ROUTED_DEL_NET, &rk_net, PTP_DEL_NET, rr_net.median(), None)
            .note("paired with the veth deletion of the same round"),
    );

    r.results.push(Row::plain(MACVLAN_ADD, mr_add).note("macvlan + static IPAM"));
    r.results.push(Row::versus(COORD_ADD, mk_add, MACVLAN_ADD, mr_add.median(), Some(1.5)));
    r.results.push(Row::plain(COORD_SHARE_ADD, &s.coord_add).note("its own process, timed within the chain"));
    r.results.push(Row::plain(MACVLAN_DEL, mr_del).note("macvlan + static IPAM"));
    let floor = mr_del.plus(&s.veth_del);
    r.results.push(Row::plain(MACVLAN_DEL_FLOOR, &floor).note("paired by round"));
    r.results.push(Row::versus(COORD_DEL, mk_del, MACVLAN_DEL_FLOOR, floor.median(), Some(1.1)).note(format!(
        "{:.2}x macvlan DEL alone",
        if mr_del.median() > 0.0 { mk_del.median() / mr_del.median() } else { 0.0 }
    )));
    r.results.push(Row::plain(COORD_SHARE_DEL, &s.coord_del).note("its own process, timed within the chain"));

    r.notes.push(format!(
        "{n} pods of each kind ADDed (N pods per kind on the node at the end), then DELeted; the order of the \
         chains and floors rotates every pod; only the plugin chain is timed"
    ));
    r.notes.push(
        "plugins run as processes with CNI_* variables and stdin, from a thread inside the node namespace".into(),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_puts_each_item_everywhere() {
        for pos in 0..ITEMS.len() {
            let seen: Vec<Item> = (0..ITEMS.len()).map(|i| order(i)[pos]).collect();
            for item in ITEMS {
                assert!(seen.contains(&item));
            }
        }
    }

    #[test]
    fn underlay_addresses_do_not_clash() {
        assert_eq!(underlay_addr(0, false), Ipv4Addr::new(172, 16, 16, 1));
        assert_eq!(underlay_addr(249, true), Ipv4Addr::new(172, 16, 128, 250));
        assert_eq!(underlay_addr(250, true), Ipv4Addr::new(172, 16, 129, 1));
        assert!(underlay_addr(MAX_N - 1, false) < underlay_addr(0, true));
        assert!(underlay_addr(MAX_N - 1, true) < Ipv4Addr::new(172, 16, 255, 255));
    }

    #[test]
    fn conflists_parse() {
        for knit in [false, true] {
            let list = knit_cni::NetConfList::from_bytes(macvlan_conflist(3, knit).as_bytes()).unwrap();
            assert_eq!(list.plugins.len(), if knit { 2 } else { 1 });
        }
    }
}
