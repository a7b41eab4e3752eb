//! Real container runtimes from Debian 12 drive knit's plugins (issue 14, "A real runtime"):
//! podman 4.3 with its CNI backend (libcni 1.1.2) and containerd 1.6's `ctr run --cni` (go-cni
//! 1.1.7 over libcni 1.1.2), each inside a node namespace plugged into a fabric namespace, with
//! `--rootfs` busybox containers (see `knit_e2e` for how each runtime is kept private).
//!
//! Each test runs overlay containers (knit-routed + knit-ipam) and an underlay container (Debian's
//! macvlan on the node's uplink + knit-ipam's shared pool + knit-coordinator), both networks on one
//! knit-ipam store; checks that the addresses the runtime reports are the ones on the interfaces,
//! TCP overlay ↔ overlay, overlay ↔ underlay, container → node and node → container; removes the
//! containers and checks that nothing is left: links, routes, rules, neighbours and nf_tables of
//! the node, knit-ipam allocations, the runtime's containers, cache entries, namespace files,
//! processes and cgroups; then sends the runtime's DEL a second time.
//!
//! What the runtimes send, observed with Debian 12's packages (knit-testplugin at the end of every
//! conflist logs each call; the assertions marked "runtime contract" check the parts knit relies on):
//!
//! podman 4.3.1:
//! - VERSION to every plugin when it loads a conflist (CNI_NETNS=dummy, stdin `{"cniVersion"}`),
//!   then ADD at `podman run` and DEL when the container stops (`podman rm -f`). Never CHECK, GC
//!   or STATUS: libcni 1.1.2 has no GC or STATUS, and podman never calls CHECK.
//! - CNI_ARGS `IgnoreUnknown=1;K8S_POD_NAME=<container name>` (no K8S_POD_NAMESPACE), plus
//!   `IP=<addr>` for `--ip`. CNI_CONTAINERID is the 64-hex container ID, CNI_NETNS
//!   `/run/netns/netns-<uuid>` (podman's own bind mount, removed after the DEL).
//! - DEL carries the cached result as prevResult (libcni's cache
//!   `/var/lib/cni/results/<network>-<id>-<ifname>`: the result, the conflist in base64, the
//!   CNI_ARGS and capabilityArgs `{"aliases": …}`, which a plugin sees only if it declares that
//!   capability).
//! - A conflist with `"cniVersion": "1.1.0"`: the ADD succeeds but libcni cannot read a 1.1.0
//!   result ("unsupported CNI result version"), so `podman run` fails and podman sends DEL.
//!   A conflist with `cniVersions` and no `cniVersion`: libcni reads the version as "" and
//!   validates it as 0.1.0, which every knit plugin refuses; podman skips the file ("network not
//!   found"). So a conflist for these runtimes must carry `"cniVersion": "1.0.0"` (it may carry
//!   `cniVersions` as well: libcni 1.1.2 ignores it, newer runtimes choose from it).
//! - `podman rm` of a removed container: "no such container", exit 1, no plugin call; with `-f`,
//!   exit 0, no plugin call. So a DEL is never sent twice by podman itself; the test sends it again.
//!
//! containerd 1.6.20 / ctr:
//! - Only the first conflist of `/etc/cni/net.d` (sorted), plugins only from `/opt/cni/bin` and
//!   `/usr/lib/cni` (Debian's CNI_PATH), no VERSION call, never CHECK, GC or STATUS.
//! - CNI_CONTAINERID `<containerd namespace>-<id>` (`default-o1`), CNI_ARGS empty (no
//!   IgnoreUnknown, no K8S_POD_*), CNI_NETNS `/proc/<task pid>/ns/net`.
//! - DEL only from a foreground `ctr run --rm` once the task has ended: CNI_NETNS is empty (the
//!   namespace is gone) and prevResult is the cached result. A failed DEL is only logged ("network
//!   review"; ctr exits with the task's status). A detached task (`ctr run -d`, then `ctr task
//!   kill` and `delete`) never gets a DEL: its addresses leak, by ctr's design.
//! - `"cniVersion": "1.1.0"`: "unsupported CNI result version", and ctr leaves the task created;
//!   `cniVersions` alone: "incompatible CNI versions; config is \"0.1.0\"".
//! - The CNI_CONTAINERID prefix matters to knit-coordinator, which names the host veth from the
//!   first 11 characters of the container ID: every ctr container starts with `default-`.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;

use ipnet::IpNet;
use knit_e2e::calls::{self, Call, Runner};
use knit_e2e::containerd::{Containerd, Task};
use knit_e2e::node::{self, NodeState, NsKind};
use knit_e2e::podman::{Container, Podman};
use knit_e2e::site::{Plan, Site};
use knit_e2e::{rootfs, tools};
use knit_host::testing::TestNet;
use knit_host::{addr, link, Family, Handle, Netns, NsId};
use knit_testkit::{tcp_echo, tcp_probe};
use serde_json::Value;

/// Every container runs busybox's echo server (`ECHO`) on this port.
const PORT: u16 = 8080;
const ECHO: &[&str] = &["/bin/nc", "-ll", "-p", "8080", "-e", "/bin/cat"];
/// The test's echo server in the node namespace.
const NODE_PORT: u16 = 9090;

const PODMAN_PLAN: Plan = Plan {
    gateway: "198.51.100.1/24",
    node: "198.51.100.10/24",
    node_name: "rt-podman",
    underlay_range: ("198.51.100.100", "198.51.100.119"),
    overlay: "10.123.0.0/16",
    block_size: 28,
    services: "10.124.0.0/16",
};

const CTR_PLAN: Plan = Plan {
    gateway: "203.0.113.1/24",
    node: "203.0.113.20/24",
    node_name: "rt-ctr",
    underlay_range: ("203.0.113.140", "203.0.113.150"),
    overlay: "172.30.0.0/16",
    block_size: 27,
    services: "172.31.0.0/16",
};

/// The IPv4 addresses and the MAC of `eth0` in `ns`.
fn eth0(ns: &Netns) -> (Vec<IpNet>, String) {
    let h = Handle::in_netns(ns).expect("netlink in the container");
    let l = link::require(&h, "eth0").expect("eth0 in the container");
    let addrs =
        addr::list(&h, Some(Family::V4), Some(l.index)).expect("addresses").into_iter().map(|a| a.net).collect();
    (addrs, l.mac.map(|m| m.to_string()).unwrap_or_default())
}

/// The addresses of a CNI result (`ips[].address`).
fn result_ips(result: &Value) -> Vec<IpNet> {
    result["ips"]
        .as_array()
        .map(|ips| ips.iter().filter_map(|i| i["address"].as_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

/// The MAC a CNI result gives the interface named `ifname` inside the sandbox.
fn result_mac(result: &Value, ifname: &str) -> Option<String> {
    result["interfaces"]
        .as_array()?
        .iter()
        .find(|i| i["name"] == ifname && i.get("sandbox").is_some())
        .and_then(|i| i["mac"].as_str())
        .map(str::to_ascii_lowercase)
}

/// Waits until the container's echo server answers on its own loopback (it starts after the
/// runtime returns), so the probes between namespaces below are single tries.
fn wait_for_server(ns: &Netns, what: &str) {
    let lo = SocketAddr::new(IpAddr::from([127, 0, 0, 1]), PORT);
    let up = knit_e2e::wait_for(100, || tcp_probe(ns, lo).ok());
    assert!(up.is_some(), "{what}'s echo server never answered on its loopback");
}

/// TCP from `from` to `to`, with what the failure needs to be understood.
fn tcp(site: &Site<'_>, what: &str, from: &Netns, to: SocketAddr) {
    if let Err(e) = tcp_probe(from, to) {
        panic!(
            "TCP {what} ({to}): {e}\nnode routes:\n{}\nplugin log:\n{}",
            site.state().routes.join("\n"),
            site.knit_log()
        );
    }
}

/// The node route of a pod address: `ip/32 dev <iface>` in `table` (`None`: main).
fn has_host_route(state: &NodeState, ip: IpAddr, table: Option<u32>) -> bool {
    let prefix = format!("{ip} dev ");
    state.routes.iter().any(|r| {
        r.starts_with(&prefix)
            && match table {
                Some(t) => r.contains(&format!(" table {t} ")) || r.ends_with(&format!(" table {t}")),
                None => !r.contains(" table "),
            }
    })
}

/// Processes in `net` other than `except`.
fn processes_in_net(net: NsId, except: &[u32]) -> Vec<String> {
    node::processes_in(NsKind::Net, net)
        .into_iter()
        .filter(|p| !except.iter().any(|e| p.split_whitespace().next() == Some(&e.to_string())))
        .collect()
}

/// Runs a DEL again with the runtime's exact input and expects every plugin to succeed.
fn replay(site: &Site<'_>, runner: &Runner<'_>, conflist: &Value, del: &Call) {
    let runs = calls::replay_del(runner, conflist, del).unwrap_or_else(|e| panic!("replay DEL: {e}"));
    for r in runs {
        assert!(
            r.output.status.success() && r.output.stdout.is_empty(),
            "a second DEL ({}) failed in {}: {}\nplugin log:\n{}",
            del.summary(),
            r.plugin,
            knit_e2e::show(&r.output),
            site.knit_log()
        );
    }
}

/// Nothing of the removed containers is left in the node's state or in knit-ipam.
fn assert_clean(site: &Site<'_>, before: &NodeState, when: &str) {
    let diff = site.state().diff(before);
    assert!(diff.is_empty(), "{when}: the node kept state of removed containers:\n{diff}");
    let used = node::ipam_in_use(&site.node, &site.store).expect("knit ipam show");
    assert!(used.is_empty(), "{when}: knit-ipam still holds addresses: {used:?}");
}

/// The calls of one container.
fn calls_of<'c>(calls: &'c [Call], container_id: &str) -> Vec<&'c Call> {
    calls.iter().filter(|c| c.container_id == container_id).collect()
}

/// The `n`-th host address of the overlay pool, for a requested IP.
fn nth_overlay_ip(plan: &Plan, n: usize) -> IpAddr {
    plan.overlay_net().hosts().nth(n).expect("the overlay pool is large enough")
}

#[test]
fn podman_runs_overlay_and_underlay_containers() {
    let mut problems = tools::missing(tools::PODMAN);
    problems.extend(rootfs::busybox_problem());
    if !tools::can_run("podman_runs_overlay_and_underlay_containers", &problems) {
        return;
    }
    let tn = TestNet::new("rtp").expect("test namespaces");
    let site = Site::new(&tn, PODMAN_PLAN, "podman");
    let plugin_dirs = [knit_testkit::bin_dir(), PathBuf::from("/usr/lib/cni")];
    let podman = Podman::new(&site.node, &site.dir.path.join("podman"), &plugin_dirs, site.plugin_env())
        .unwrap_or_else(|e| panic!("set podman up: {e}"));
    let overlay = site.conflist("knit-overlay", site.overlay_plugins());
    let underlay = site.conflist("knit-underlay", site.underlay_plugins());
    site.write(podman.conf_dir(), "10-overlay.conflist", &overlay);
    site.write(podman.conf_dir(), "20-underlay.conflist", &underlay);
    let node_ip = site.plan.node_ip();
    tcp_echo(&site.node, SocketAddr::new(node_ip, NODE_PORT));
    let node_id = site.node.id().expect("node netns id");
    let before = site.state();

    // o1 takes an address from the pool, o2 asks for one (`--ip`: CNI_ARGS IP=), u1 is underlay.
    let requested = nth_overlay_ip(&site.plan, 8);
    let run = |name: &str, network: &str, extra: &[&str]| -> Container {
        podman.run(name, network, extra, ECHO).unwrap_or_else(|e| panic!("{e}\nplugin log:\n{}", site.knit_log()))
    };
    let o1 = run("o1", "knit-overlay", &[]);
    let o2 = run("o2", "knit-overlay", &["--ip", &requested.to_string()]);
    let u1 = run("u1", "knit-underlay", &[]);
    let containers = [&o1, &o2, &u1];

    // The addresses podman reports (and caches) are the ones on the interfaces.
    let running = site.state();
    for c in containers {
        let ns = c.netns().expect("container netns");
        let (addrs, mac) = eth0(&ns);
        assert_eq!(addrs, vec![c.ip], "{}: podman reports {}, eth0 has {addrs:?}", c.name, c.ip);
        assert_eq!(mac, c.mac.to_ascii_lowercase(), "{}: podman reports MAC {}, eth0 has {mac}", c.name, c.mac);
        let cached = podman.cached(c, "eth0").unwrap_or_else(|e| panic!("{}: podman's CNI cache: {e}", c.name));
        assert_eq!(result_ips(&cached["result"]), vec![c.ip], "{}: cached result {}", c.name, cached["result"]);
        assert_eq!(result_mac(&cached["result"], "eth0"), Some(mac.clone()), "{}: cached MAC", c.name);
    }
    assert_eq!(o2.ip.addr(), requested, "o2 asked for {requested} with --ip");
    assert_eq!(o1.gateway, Some(IpAddr::from([169, 254, 1, 1])), "knit-routed's gateway");
    assert_eq!(u1.gateway, Some(site.plan.gateway_ip()), "the underlay pool's gateway");
    assert!(site.plan.overlay_net().contains(&o1.ip.addr()), "o1 {} is in the overlay pool", o1.ip);
    assert!(site.plan.underlay_subnet().contains(&u1.ip.addr()), "u1 {} is in the underlay subnet", u1.ip);
    for c in [&o1, &o2] {
        assert!(has_host_route(&running, c.ip.addr(), None), "no host route for {}:\n{:#?}", c.ip, running.routes);
    }
    assert!(
        has_host_route(&running, u1.ip.addr(), Some(knit_e2e::site::HOST_RULE_TABLE)),
        "no table-500 route for {}:\n{:#?}",
        u1.ip,
        running.routes
    );
    assert!(!podman.container_cgroups().is_empty(), "podman made no cgroups under its parent: the check below is void");
    let used: Vec<(String, u64)> = node::ipam_pools(&site.node, &site.store)
        .expect("knit ipam show")
        .into_iter()
        .map(|p| (p.name, p.used))
        .collect();
    assert_eq!(used, vec![("overlay".to_string(), 2), ("underlay".to_string(), 1)], "knit-ipam's allocations");

    // TCP between the containers and with the node.
    {
        let (n1, n2, nu) = (o1.netns().expect("o1"), o2.netns().expect("o2"), u1.netns().expect("u1"));
        for (ns, c) in [(&n1, &o1), (&n2, &o2), (&nu, &u1)] {
            wait_for_server(ns, &c.name);
        }
        let at = |c: &Container| SocketAddr::new(c.ip.addr(), PORT);
        let node_addr = SocketAddr::new(node_ip, NODE_PORT);
        tcp(&site, "overlay o2 → overlay o1", &n2, at(&o1));
        tcp(&site, "overlay o1 → underlay u1", &n1, at(&u1));
        tcp(&site, "underlay u1 → overlay o2", &nu, at(&o2));
        tcp(&site, "overlay o1 → node", &n1, node_addr);
        tcp(&site, "underlay u1 → node", &nu, node_addr);
        tcp(&site, "node → overlay o1", &site.node, at(&o1));
        tcp(&site, "node → underlay u1", &site.node, at(&u1));
        let nft = tn.exec(&nu, &["nft", "list", "table", "ip", "knit-coordinator"]).expect("nft");
        assert!(nft.status.success(), "u1 has no knit-coordinator table: {}", knit_e2e::show(&nft));
    }
    let container_nets: Vec<NsId> =
        containers.iter().map(|c| c.netns().and_then(|n| n.id().map_err(|e| e.to_string())).expect("id")).collect();

    // Runtime contract: what podman sent for the ADDs.
    let adds = calls::read(&site.calls).expect("the recorder's log");
    for c in &adds {
        eprintln!("podman sent: {}", c.summary());
    }
    assert_eq!(adds.iter().filter(|c| c.command == "ADD").count(), 3, "one ADD per container: {adds:#?}");
    assert!(adds.iter().all(|c| c.command == "ADD"), "only ADDs so far: {adds:#?}");
    for c in containers {
        let add = calls_of(&adds, &c.id)[0];
        assert_eq!(add.netns, c.sandbox, "{}: CNI_NETNS is podman's SandboxKey", c.name);
        assert_eq!(add.ifname, "eth0");
        assert_eq!(add.arg("K8S_POD_NAME"), Some(c.name.as_str()), "{}: {}", c.name, add.summary());
        assert_eq!(add.arg("IgnoreUnknown"), Some("1"), "{}: {}", c.name, add.summary());
        assert_eq!(add.stdin["cniVersion"], "1.0.0", "{}", add.summary());
    }
    assert_eq!(calls_of(&adds, &o2.id)[0].arg("IP"), Some(requested.to_string().as_str()), "--ip becomes IP=");

    // Remove them: podman sends the DELs; nothing may be left.
    let rm = podman.rm(&["o1", "o2", "u1"]).expect("podman rm");
    assert!(rm.status.success(), "podman rm: {}\nplugin log:\n{}", knit_e2e::show(&rm), site.knit_log());
    // conmon runs `podman container cleanup` once the container is gone, which may still be
    // under way when `podman rm` returns: wait for both to end.
    let holder = podman.mounts().holder_pid();
    let gone = knit_e2e::wait_for(300, || Some(()).filter(|_| processes_in_net(node_id, &[holder]).is_empty()));
    assert!(gone.is_some(), "processes left in the node: {:?}", processes_in_net(node_id, &[holder]));
    assert_clean(&site, &before, "after podman rm");
    assert_eq!(podman.containers().expect("podman ps"), Vec::<String>::new(), "podman still lists containers");
    assert_eq!(podman.cache_entries(), Vec::<String>::new(), "libcni cache entries left");
    assert_eq!(podman.netns_files(), Vec::<String>::new(), "podman's namespace files left");
    assert_eq!(podman.container_cgroups(), Vec::<PathBuf>::new(), "container cgroups left");
    for (c, id) in containers.iter().zip(&container_nets) {
        assert_eq!(node::processes_in(NsKind::Net, *id), Vec::<String>::new(), "processes left in {}'s netns", c.name);
    }

    // Runtime contract: one DEL per container, with the cached result and the ADD's arguments.
    let all = calls::read(&site.calls).expect("the recorder's log");
    for c in containers {
        let cs = calls_of(&all, &c.id);
        let kinds: Vec<&str> = cs.iter().map(|c| c.command.as_str()).collect();
        assert_eq!(kinds, ["ADD", "DEL"], "{}: podman's calls", c.name);
        let del = cs[1];
        eprintln!("podman sent: {}", del.summary());
        assert!(del.stdin.get("prevResult").is_some(), "{}: DEL without prevResult", c.name);
        assert_eq!(result_ips(&del.stdin["prevResult"]), vec![c.ip], "{}: DEL's prevResult", c.name);
        assert_eq!(del.args, cs[0].args, "{}: DEL's CNI_ARGS", c.name);
    }

    // A second `podman rm` sends nothing; the DEL sent again (as libcni would on a retry, with a
    // CNI_NETNS that no longer exists) succeeds and changes nothing.
    let again = podman.cmd(&["rm", "o1"]).expect("podman rm");
    assert!(!again.status.success(), "podman rm of a removed container: {}", knit_e2e::show(&again));
    let again = podman.rm(&["o1"]).expect("podman rm -f");
    assert!(again.status.success(), "podman rm -f of a removed container: {}", knit_e2e::show(&again));
    assert_eq!(
        calls::read(&site.calls).expect("log").len(),
        all.len(),
        "podman rm of a removed container called a plugin"
    );
    let mounts = podman.mounts();
    let command = |bin: &Path| mounts.command(bin);
    let cni_path = std::env::join_paths(&plugin_dirs).expect("CNI_PATH").to_string_lossy().into_owned();
    let env = site.plugin_env();
    let runner =
        Runner { net: &site.node, command: &command, plugin_dirs: &plugin_dirs, cni_path: &cni_path, env: &env };
    for c in containers {
        let del = calls_of(&all, &c.id)[1];
        let conflist = if c.network == "knit-overlay" { &overlay } else { &underlay };
        replay(&site, &runner, conflist, del);
    }
    assert_clean(&site, &before, "after a second DEL");

    // CNI versions libcni 1.1.2 cannot use: the run fails, and nothing is left.
    let calls_before = calls::read(&site.calls).expect("log").len();
    let mut v110 = site.conflist("knit-v110", site.overlay_plugins());
    v110["cniVersion"] = "1.1.0".into();
    v110.as_object_mut().expect("object").remove("cniVersions");
    site.write(podman.conf_dir(), "30-v110.conflist", &v110);
    let err = podman.run("v110", "knit-v110", &[], ECHO).expect_err("a 1.1.0 conflist under libcni 1.1.2");
    assert!(err.contains("unsupported CNI result version"), "podman with a 1.1.0 conflist: {err}");
    let mut vlist = site.conflist("knit-vlist", site.overlay_plugins());
    vlist.as_object_mut().expect("object").remove("cniVersion");
    site.write(podman.conf_dir(), "40-vlist.conflist", &vlist);
    let err = podman.run("vlist", "knit-vlist", &[], ECHO).expect_err("a conflist without cniVersion");
    assert!(err.contains("network not found"), "podman with cniVersions only: {err}");
    let rm = podman.rm(&["v110", "vlist"]).expect("podman rm");
    assert!(rm.status.success(), "podman rm: {}", knit_e2e::show(&rm));
    let late: BTreeSet<String> =
        calls::read(&site.calls).expect("log")[calls_before..].iter().map(|c| c.command.clone()).collect();
    assert!(late.iter().all(|c| c == "ADD" || c == "DEL"), "calls for the failed runs: {late:?}");
    assert_clean(&site, &before, "after the failed runs");
}

/// Symlinks every `knit*` binary of the build into `dir`: `knit install` finds them identical
/// and copies nothing, and `ctr` runs them from `/opt/cni/bin`.
fn link_binaries(dir: &Path) {
    std::fs::create_dir_all(dir).expect("cni bin dir");
    let bin_dir = knit_testkit::bin_dir();
    for e in std::fs::read_dir(&bin_dir).expect("bin dir").filter_map(|e| e.ok()) {
        let name = e.file_name();
        let p = e.path();
        if name.to_string_lossy().starts_with("knit") && p.is_file() && p.extension().is_none() {
            std::os::unix::fs::symlink(&p, dir.join(&name)).expect("symlink a plugin");
        }
    }
}

/// `knit install` (as the DaemonSet's init container runs it) writes the overlay conflist; the
/// test gives its knit-ipam a private `dataDir` and appends the recorder, and keeps everything
/// else as written: its top-level version keys are what the runtime must accept.
fn installed_overlay(site: &Site<'_>, cni_bin: &Path, conf_dir: &Path) -> (String, Value) {
    let knit = knit_testkit::bin("knit");
    let mut cmd = Command::new(&knit);
    cmd.arg("install")
        .arg("--cni-bin-dir")
        .arg(cni_bin)
        .arg("--cni-conf-dir")
        .arg(conf_dir)
        .args(["--node", site.plan.node_name, "--overlay-cidr", site.plan.overlay])
        .args(["--block-size", &site.plan.block_size.to_string()]);
    knit_e2e::ok_in(&site.node, &mut cmd).unwrap_or_else(|e| panic!("knit install: {e}"));
    let file = "10-knit.conflist";
    let text = std::fs::read_to_string(conf_dir.join(file)).expect("knit install's conflist");
    let mut conf: Value = serde_json::from_str(&text).expect("knit install writes JSON");
    conf["plugins"][0]["ipam"]["dataDir"] = site.store.to_string_lossy().into_owned().into();
    conf["plugins"].as_array_mut().expect("plugins").push(calls::recorder(&site.calls));
    site.write(conf_dir, file, &conf);
    (conf["name"].as_str().expect("a network name").to_string(), conf)
}

#[test]
fn containerd_ctr_runs_overlay_and_underlay_containers() {
    let mut problems = tools::missing(tools::CONTAINERD);
    problems.extend(rootfs::busybox_problem());
    if !tools::can_run("containerd_ctr_runs_overlay_and_underlay_containers", &problems) {
        return;
    }
    let tn = TestNet::new("rtc").expect("test namespaces");
    let site = Site::new(&tn, CTR_PLAN, "ctr");
    let cni_bin = site.dir.path.join("cni-bin");
    let conf_dir = site.dir.path.join("net.d");
    std::fs::create_dir_all(&conf_dir).expect("conf dir");
    link_binaries(&cni_bin);
    let (overlay_name, overlay) = installed_overlay(&site, &cni_bin, &conf_dir);
    let underlay = site.conflist("knit-underlay", site.underlay_plugins());
    let cd = Containerd::start(&site.node, &site.dir.path.join("containerd"), &cni_bin, &conf_dir, site.plugin_env())
        .unwrap_or_else(|e| panic!("start containerd: {e}"));
    let node_ip = site.plan.node_ip();
    tcp_echo(&site.node, SocketAddr::new(node_ip, NODE_PORT));
    let node_id = site.node.id().expect("node netns id");
    let before = site.state();

    // ctr uses the first conflist of the directory: the underlay one is put first only while
    // u1 starts (ctr keeps the configuration it loaded for the DEL).
    let run = |id: &str| -> Task {
        cd.run(id, ECHO)
            .unwrap_or_else(|e| panic!("{e}\nplugin log:\n{}\ncontainerd:\n{}", site.knit_log(), cd.daemon_log()))
    };
    let o1 = run("o1");
    let o2 = run("o2");
    let first = site.write(&conf_dir, "05-underlay.conflist", &underlay);
    let u1 = run("u1");
    std::fs::remove_file(first).expect("remove the underlay conflist");
    let tasks = [(&o1, overlay_name.as_str()), (&o2, overlay_name.as_str()), (&u1, "knit-underlay")];

    // ctr prints nothing about the network: what it recorded is libcni's cache.
    let mut ips = Vec::new();
    for (t, network) in tasks {
        let cached = cd.cached(network, t, "eth0").unwrap_or_else(|e| panic!("{}: ctr's CNI cache: {e}", t.id));
        let ns = t.netns().expect("task netns");
        let (addrs, mac) = eth0(&ns);
        assert_eq!(result_ips(&cached["result"]), addrs, "{}: cached result {} vs eth0", t.id, cached["result"]);
        assert_eq!(result_mac(&cached["result"], "eth0"), Some(mac), "{}: cached MAC", t.id);
        assert_eq!(addrs.len(), 1, "{}: one IPv4 address on eth0: {addrs:?}", t.id);
        ips.push(addrs[0].addr());
    }
    let (o1_ip, o2_ip, u1_ip) = (ips[0], ips[1], ips[2]);
    assert!(site.plan.overlay_net().contains(&o1_ip) && site.plan.overlay_net().contains(&o2_ip), "{ips:?}");
    assert!(site.plan.underlay_subnet().contains(&u1_ip), "{ips:?}");
    assert!(!cd.task_cgroups().is_empty(), "runc made no cgroups under the tasks' parent: the check below is void");
    let running = site.state();
    assert!(has_host_route(&running, o1_ip, None) && has_host_route(&running, o2_ip, None), "{:#?}", running.routes);
    assert!(has_host_route(&running, u1_ip, Some(knit_e2e::site::HOST_RULE_TABLE)), "{:#?}", running.routes);

    {
        let (n1, n2, nu) = (o1.netns().expect("o1"), o2.netns().expect("o2"), u1.netns().expect("u1"));
        for (ns, t) in [(&n1, &o1), (&n2, &o2), (&nu, &u1)] {
            wait_for_server(ns, &t.id);
        }
        let at = |ip: IpAddr| SocketAddr::new(ip, PORT);
        let node_addr = SocketAddr::new(node_ip, NODE_PORT);
        tcp(&site, "overlay o2 → overlay o1", &n2, at(o1_ip));
        tcp(&site, "overlay o1 → underlay u1", &n1, at(u1_ip));
        tcp(&site, "underlay u1 → overlay o2", &nu, at(o2_ip));
        tcp(&site, "overlay o1 → node", &n1, node_addr);
        tcp(&site, "underlay u1 → node", &nu, node_addr);
        tcp(&site, "node → overlay o1", &site.node, at(o1_ip));
        tcp(&site, "node → underlay u1", &site.node, at(u1_ip));
    }
    let task_nets: Vec<NsId> = [&o1, &o2, &u1]
        .iter()
        .map(|t| t.netns().and_then(|n| n.id().map_err(|e| e.to_string())).expect("id"))
        .collect();

    // Runtime contract: what ctr sent for the ADDs.
    let adds = calls::read(&site.calls).expect("the recorder's log");
    for c in &adds {
        eprintln!("ctr sent: {}", c.summary());
    }
    assert!(adds.iter().all(|c| c.command == "ADD") && adds.len() == 3, "one ADD per task: {adds:#?}");
    for t in [&o1, &o2, &u1] {
        let add = calls_of(&adds, &t.cni_id);
        assert_eq!(add.len(), 1, "{}: CNI_CONTAINERID is <namespace>-<id>: {adds:#?}", t.id);
        assert_eq!(add[0].netns, format!("/proc/{}/ns/net", t.pid), "{}", add[0].summary());
    }

    // Stop them: each foreground `ctr run` sends the DEL, deletes the task and the container.
    for t in [&o1, &o2, &u1] {
        let log = cd.stop(&t.id).unwrap_or_else(|e| panic!("{e}\nplugin log:\n{}", site.knit_log()));
        assert!(
            !log.contains("network review"),
            "ctr's DEL of {} failed: {log}\nplugin log:\n{}",
            t.id,
            site.knit_log()
        );
    }
    assert_clean(&site, &before, "after the tasks ended");
    assert_eq!(cd.containers().expect("ctr container ls"), Vec::<String>::new(), "ctr still lists containers");
    assert_eq!(cd.tasks().expect("ctr task ls"), Vec::new(), "ctr still lists tasks");
    assert_eq!(cd.cache_entries(), Vec::<String>::new(), "libcni cache entries left");
    assert_eq!(cd.task_cgroups(), Vec::<PathBuf>::new(), "task cgroups left");
    let shims = knit_e2e::wait_for(100, || Some(cd.shims()).filter(Vec::is_empty));
    assert!(shims.is_some(), "processes left next to containerd: {:?}", cd.shims());
    let holder = cd.mounts().holder_pid();
    let left = processes_in_net(node_id, &[holder]);
    assert!(left.iter().all(|p| p.ends_with(" containerd")), "processes left in the node: {left:?}");
    for (t, id) in [&o1, &o2, &u1].iter().zip(&task_nets) {
        assert_eq!(node::processes_in(NsKind::Net, *id), Vec::<String>::new(), "processes left in {}'s netns", t.id);
    }

    // Runtime contract: one DEL per task, with an empty CNI_NETNS and the cached result.
    let all = calls::read(&site.calls).expect("the recorder's log");
    for (t, network) in tasks {
        let cs = calls_of(&all, &t.cni_id);
        let kinds: Vec<&str> = cs.iter().map(|c| c.command.as_str()).collect();
        assert_eq!(kinds, ["ADD", "DEL"], "{}: ctr's calls", t.id);
        let del = cs[1];
        eprintln!("ctr sent: {}", del.summary());
        assert_eq!(del.netns, "", "{}: ctr's DEL comes after the task ended", t.id);
        assert!(del.stdin.get("prevResult").is_some(), "{}: DEL without prevResult", t.id);
        assert_eq!(del.stdin["name"], network, "{}", del.summary());
    }

    // The DEL again, exactly as ctr sent it (inside its mount namespace: CNI_PATH is
    // /opt/cni/bin:/usr/lib/cni there).
    let mounts = cd.mounts();
    let command = |bin: &Path| mounts.command(bin);
    let plugin_dirs = [cni_bin.clone(), PathBuf::from("/usr/lib/cni")];
    let env = site.plugin_env();
    let runner = Runner {
        net: &site.node,
        command: &command,
        plugin_dirs: &plugin_dirs,
        cni_path: "/opt/cni/bin:/usr/lib/cni",
        env: &env,
    };
    for (t, _) in tasks {
        let del = calls_of(&all, &t.cni_id)[1];
        let conflist = if t.id == "u1" { &underlay } else { &overlay };
        replay(&site, &runner, conflist, del);
    }
    assert_clean(&site, &before, "after a second DEL");

    // A conflist with `cniVersions` only, as the first file: go-cni reads version "" as 0.1.0.
    let mut vlist = site.conflist("knit-vlist", site.overlay_plugins());
    vlist.as_object_mut().expect("object").remove("cniVersion");
    let first = site.write(&conf_dir, "01-vlist.conflist", &vlist);
    let err = cd.run("vlist", ECHO).expect_err("a conflist without cniVersion");
    assert!(err.contains("incompatible CNI versions"), "ctr with cniVersions only: {err}");
    std::fs::remove_file(first).expect("remove the conflist");
    cd.force_delete("vlist");
    assert_clean(&site, &before, "after the failed run");
}

/// KNOWN BUG (issue 14, defect 10; knit-coordinator): the coordinator names the host end of
/// veth0 `veth` + the first 11 alphanumerics of CNI_CONTAINERID, and ctr's IDs all start with
/// `default-`, so two ctr containers whose names share their first 4 alphanumerics (`nginx-1`,
/// `nginx-2` → `vethdefaultngin`) get the same host veth name, and the second ADD deletes the
/// first container's veth: the first container loses its node (and overlay) path. Ignored until
/// the coordinator's fix lands; `cargo nextest run -p knit-e2e --run-ignored all` shows it.
#[test]
#[ignore = "issue 14 defect 10: knit-coordinator host veth names clash for ctr's default-<name> IDs"]
fn containerd_ctr_underlay_containers_with_a_common_name_prefix() {
    let mut problems = tools::missing(tools::CONTAINERD);
    problems.extend(rootfs::busybox_problem());
    if !tools::can_run("containerd_ctr_underlay_containers_with_a_common_name_prefix", &problems) {
        return;
    }
    let tn = TestNet::new("rtv").expect("test namespaces");
    let site = Site::new(&tn, CTR_PLAN, "ctr-prefix");
    let cni_bin = site.dir.path.join("cni-bin");
    let conf_dir = site.dir.path.join("net.d");
    std::fs::create_dir_all(&conf_dir).expect("conf dir");
    link_binaries(&cni_bin);
    site.write(&conf_dir, "10-underlay.conflist", &site.conflist("knit-underlay", site.underlay_plugins()));
    let cd = Containerd::start(&site.node, &site.dir.path.join("containerd"), &cni_bin, &conf_dir, site.plugin_env())
        .unwrap_or_else(|e| panic!("start containerd: {e}"));
    let node_addr = SocketAddr::new(site.plan.node_ip(), NODE_PORT);
    tcp_echo(&site.node, node_addr);
    let run =
        |id: &str| -> Task { cd.run(id, ECHO).unwrap_or_else(|e| panic!("{e}\nplugin log:\n{}", site.knit_log())) };
    let tasks = [run("nginx-1"), run("nginx-2")];
    for t in &tasks {
        let ns = t.netns().expect("task netns");
        wait_for_server(&ns, &t.id);
        let h = Handle::in_netns(&ns).expect("netlink");
        // The assertion that shows the bug: nginx-1's veth0 is gone once nginx-2 is added.
        assert!(
            link::get_by_name(&h, "veth0").expect("links").is_some(),
            "{}: veth0 is gone (host veth name clash with the other container)\nnode links: {:?}\nplugin log:\n{}",
            t.id,
            site.state().links,
            site.knit_log()
        );
        tcp(&site, &format!("underlay {} → node", t.id), &ns, node_addr);
    }
    for t in &tasks {
        let log = cd.stop(&t.id).expect("stop");
        assert!(!log.contains("network review"), "ctr's DEL of {} failed: {log}", t.id);
    }
}
