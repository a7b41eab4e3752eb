//! knit-coordinator's cost against the size of the node (issue 16): macvlan + knit-coordinator
//! ADD, the coordinator's CHECK, and DEL, on underlay nodes that hold 0, 1000 and 5000
//! neighbour entries on their uplink. The coordinator's own process is timed within the chain
//! (as `cni-add-del` does), the three nodes in an order that rotates with every pod. Each pod is
//! ADDed, CHECKed and DELeted before the next, so only the neighbour table differs between the
//! nodes. The old stale-neighbour cleanup dumped the node's whole neighbour table in every ADD:
//! that dump is timed beside, as a reference.
//!
//! Not wired into `knit bench` (crates/knit is not this change's); run it with
//! `cargo run --release -p knit-bench --example coordinator-scale -- [N]` after
//! `scripts/build-release.sh`.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use knit_cni::delegate::exec_plugin;
use knit_cni::RuntimeArgs;
use knit_host::neigh::{self, Neighbour};
use knit_host::route::Route;
use knit_host::testing::TestNet;
use knit_host::{addr, route, Family, Handle, IpNet, Mac};
use serde_json::{json, Value};

use crate::chain::{container_id, pod_args, Chain, PluginDirs};
use crate::report::{Report, Row};
use crate::stats::Samples;
use crate::{signals, Error, Options, Result};

/// Neighbour entries on each node's uplink.
pub const SIZES: [usize; 3] = [0, 1000, 5000];

const NODE_IF: &str = "eth0";
const NODE_ADDR: &str = "172.16.1.2/16";
const GATEWAY: &str = "172.16.0.1";

fn coordinator_conf() -> Value {
    json!({"type": "knit-coordinator", "mode": "underlay", "overlayPodCIDR": ["10.233.64.0/18"],
           "serviceCIDR": ["10.233.0.0/18"], "hijackCIDR": []})
}

/// Pod `i`'s underlay address: 172.16.100.1 … (one pod at a time per node, so the nodes may
/// use the same addresses).
fn pod_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(172, 16, 100 + (i / 250) as u8, (1 + i % 250) as u8)
}

/// Neighbour `k` of a node: 172.16.200.1 …, in the node's subnet, never a pod's.
fn neighbour_addr(k: usize) -> Ipv4Addr {
    Ipv4Addr::new(172, 16, 200 + (k / 250) as u8, (1 + k % 250) as u8)
}

fn conflist(i: usize) -> String {
    let macvlan = json!({"type": "macvlan", "master": NODE_IF, "mode": "bridge",
        "ipam": {"type": "static", "addresses": [{"address": format!("{}/16", pod_addr(i)), "gateway": GATEWAY}],
                 "routes": [{"dst": "0.0.0.0/0", "gw": GATEWAY}]}});
    json!({"cniVersion": "1.0.0", "name": "bench-coord-scale", "plugins": [macvlan, coordinator_conf()]}).to_string()
}

fn net(s: &str) -> Result<IpNet> {
    s.parse().map_err(|e| Error::Setup(format!("{s}: {e}")))
}

/// An underlay node: uplink `eth0` into a fabric namespace with the gateway, and `entries`
/// permanent neighbour entries on it.
fn node(entries: usize) -> Result<TestNet> {
    let tn = TestNet::new(crate::workspace::NS_PREFIX)?;
    let fabric = tn.pod("fabric")?;
    let (node_idx, fabric_idx) = tn.link(tn.host(), NODE_IF, &fabric, "p0")?;
    addr::add(&Handle::in_netns(&fabric)?, &addr::Address::new(fabric_idx, net(&format!("{GATEWAY}/16"))?))?;
    let h = Handle::in_netns(tn.host())?;
    addr::add(&h, &addr::Address::new(node_idx, net(NODE_ADDR)?))?;
    let gw: IpAddr = GATEWAY.parse().map_err(|e| Error::Setup(format!("{GATEWAY}: {e}")))?;
    route::add(&h, &Route::via(net("0.0.0.0/0")?, gw, Some(node_idx)))?;
    let mac = Mac([0x02, 0x6b, 0x6e, 0x00, 0x00, 0x01]);
    for k in 0..entries {
        neigh::add(&h, &Neighbour::permanent(node_idx, IpAddr::V4(neighbour_addr(k)), mac))?;
    }
    Ok(tn)
}

/// The coordinator's CHECK of pod `rt` with its ADD result, as a runtime runs it.
fn check(bin: &std::path::Path, dirs: &PluginDirs, rt: &RuntimeArgs, result: &Value) -> Result<(), knit_cni::CniError> {
    let mut conf = coordinator_conf();
    conf["cniVersion"] = "1.0.0".into();
    conf["name"] = "bench-coord-scale".into();
    conf["prevResult"] = result.clone();
    let vars = vec![
        (knit_cni::env::CNI_PATH.to_string(), dirs.cni_path()),
        (knit_cni::env::CNI_CONTAINERID.to_string(), rt.container_id.clone()),
        (knit_cni::env::CNI_NETNS.to_string(), rt.netns.clone()),
        (knit_cni::env::CNI_IFNAME.to_string(), rt.ifname.clone()),
        (knit_cni::env::CNI_ARGS.to_string(), knit_cni::env::format_cni_args(&rt.args)),
    ];
    exec_plugin(bin, "CHECK", &vars, conf.to_string().as_bytes()).map(|_| ())
}

#[derive(Default)]
struct Series {
    add: Samples,
    check: Samples,
    del: Samples,
    dump: Samples,
}

/// Runs `n` pods on each node; see the module comment.
pub fn run(n: usize, dirs: &PluginDirs, opts: &Options) -> Result<Report> {
    dirs.require(&["knit-coordinator", "macvlan", "static"])?;
    let coord = dirs.find("knit-coordinator")?;
    let nodes: Vec<TestNet> = SIZES.iter().map(|s| node(*s)).collect::<Result<_>>()?;
    opts.progress(format!("{} underlay nodes with {SIZES:?} neighbour entries, {n} pods each", nodes.len()));
    let mut series: Vec<Series> = SIZES.iter().map(|_| Series::default()).collect();
    for i in 0..n {
        signals::check()?;
        let chain = Chain::new(&conflist(i), dirs)?;
        for k in 0..nodes.len() {
            let j = (i + k) % nodes.len();
            let tn = &nodes[j];
            let pod = tn.pod(&format!("p{i}"))?;
            let cid = container_id(i, j as u8 + 1);
            let rt = RuntimeArgs {
                args: pod_args(&format!("pod-{i}"), &cid),
                container_id: cid,
                netns: pod.path().map(|p| p.display().to_string()).unwrap_or_default(),
                ifname: "eth0".into(),
                capability_args: Default::default(),
            };
            let s = &mut series[j];
            let what = |verb: &str| format!("{verb} pod {i} on the node with {} neighbours", SIZES[j]);
            // Plugins run from a thread inside the node's namespace, as under containerd.
            let mut each = Vec::new();
            let result = tn.run(|| chain.add_timed(&rt, &mut each))?.map_err(plugin_err(what("ADD")))?;
            s.add.push(each.get(1).copied().unwrap_or_default());
            let t = Instant::now();
            tn.run(|| check(&coord, dirs, &rt, &result))?.map_err(plugin_err(what("CHECK")))?;
            s.check.push(t.elapsed());
            let mut each = Vec::new();
            tn.run(|| chain.del_timed(&rt, Some(&result), &mut each))?.map_err(plugin_err(what("DEL")))?;
            s.del.push(each.get(1).copied().unwrap_or_default());
            // What the old cleanup read in every ADD: the node's IPv4 neighbour table.
            let dump = tn.run(|| -> knit_host::Result<std::time::Duration> {
                let h = Handle::new()?;
                let t = Instant::now();
                neigh::list(&h, Some(Family::V4), None)?;
                Ok(t.elapsed())
            })??;
            s.dump.push(dump);
        }
        if (i + 1).is_multiple_of((n / 10).max(1)) || i + 1 == n {
            opts.progress(format!("{}/{n}", i + 1));
        }
    }
    Ok(report(n, &series))
}

fn plugin_err(what: String) -> impl FnOnce(knit_cni::CniError) -> Error {
    move |err| if signals::interrupted() { Error::Interrupted } else { Error::Plugin { what, err } }
}

fn report(n: usize, s: &[Series]) -> Report {
    let mut r = Report::new("coordinator-scale", n);
    let name = |what: &str, k: usize| format!("knit-coordinator {what}, {} neighbours on the node", SIZES[k]);
    for (what, get, target) in [
        ("ADD", (|x: &Series| &x.add) as fn(&Series) -> &Samples, Some(1.2)),
        ("CHECK", |x: &Series| &x.check, Some(1.3)),
        ("DEL", |x: &Series| &x.del, None),
    ] {
        let base = get(&s[0]);
        r.results.push(Row::plain(name(what, 0), base));
        for (k, x) in s.iter().enumerate().skip(1) {
            r.results.push(Row::versus(name(what, k), get(x), &name(what, 0), base.median(), target));
        }
    }
    for (k, x) in s.iter().enumerate() {
        r.results.push(
            Row::plain(format!("dump of the node's IPv4 neighbour table, {} entries", SIZES[k]), &x.dump)
                .note("what the previous stale-neighbour cleanup read in every ADD"),
        );
    }
    r.notes.push(format!(
        "{n} pods per node, each ADDed, CHECKed and DELeted before the next; the coordinator's own process is timed \
         within the macvlan chain; nodes in an order that rotates every pod"
    ));
    r
}
