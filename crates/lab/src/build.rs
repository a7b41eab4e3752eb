//! Building a lab from a [`LabPlan`] and tearing it down.
//!
//! Order: namespaces and links (fabric bridge, nodes, clients) → pods through the
//! real CNI path (`knit_cni::Runtime`, run from a thread inside the node's
//! namespace, as containerd runs plugins) → kube-proxy rules → echo servers →
//! BIRD on every node and on the ToR → wait until every node and the ToR have
//! the routes BGP must give them.
//!
//! Teardown works from the lab's name alone (every namespace is
//! `knit-<lab>-…`): it kills every process living in those namespaces (BIRD,
//! echo servers), deletes the namespaces (which destroys their links) and the
//! lab's directory. It is idempotent, so Ctrl-C, a failed build and `down` all
//! use it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use knit_agent::bird::{self, Bird, NodeBgp, Peer, Timers, TorBgp, TorSession};
use knit_cni::runtime::{Runtime, RuntimeArgs};
use knit_cni::NetConfList;
use knit_host::link::{self, VethOptions};
use knit_host::route::{self, Route};
use knit_host::{addr, firewall, sysctl, Family, Handle, Netns};
use nix::sys::signal::Signal;
use serde_json::Value;

use crate::error::{host, io, LabError, Result};
use crate::kubeproxy::{self, Mode, NodeConfig};
use crate::plan::{self, LabPlan, EXTERNAL_BRIDGE, K8S_NAMESPACE, UNDERLAY_BRIDGE};
use crate::serve::{EchoServer, ServerHandle};
use crate::state::{LabState, PodState};
use crate::topology::{ClientSide, Endpoints, Topology};

/// Set (by a signal handler's watcher) to stop a build between steps.
pub static CANCEL: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn check_cancel() -> Result<()> {
    if CANCEL.load(std::sync::atomic::Ordering::SeqCst) {
        Err(LabError::Interrupted)
    } else {
        Ok(())
    }
}

/// The coordinator's host rule table, where it routes underlay pod IPs to their `veth0`.
const HOST_RULE_TABLE: u32 = 500;
/// How long BGP may take to give every node and the ToR its routes.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);

/// How pods' echo servers run.
#[derive(Debug, Clone)]
pub enum Serve {
    /// Threads of this process (the matrix: gone with it).
    InProcess,
    /// `<exe> lab serve --pod P --port N` processes inside each pod (`knit lab up`).
    Processes {
        /// The `knit` executable.
        exe: PathBuf,
    },
    /// No echo servers (the pods' port is left to the caller, e.g. iperf3 in `knit bench`).
    Nothing,
}

/// How to build a lab.
#[derive(Debug, Clone)]
pub struct Options {
    /// The lab's name.
    pub name: String,
    /// Where lab directories live.
    pub run_dir: PathBuf,
    /// Which kube-proxy to mimic.
    pub kube_proxy: Mode,
    /// Whether nodes exchange their underlay pods' /32s (the cross-CNI fix).
    pub underlay_routes: bool,
    /// Echo servers.
    pub serve: Serve,
    /// Where the CNI plugins are.
    pub cni_path: Vec<PathBuf>,
    /// Where IPAM state and the node registry live.
    pub datastore: Datastore,
    /// The `knit` executable (cluster mode runs `knit node run` in every node).
    pub knit_exe: PathBuf,
}

/// Where a lab keeps cluster state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datastore {
    /// knit-ipam's file store shared by the nodes; BGP peers come from the topology file.
    Local,
    /// One etcd in the fabric namespace: knit-ipam's etcd store, and node agents (`knit node
    /// run`) that find their BGP peers and the coordinator's CIDRs there.
    Etcd,
}

/// A lab that is up. Dropping it tears it down unless [`Lab::keep`] was called.
pub struct Lab {
    /// Names and configuration.
    pub plan: LabPlan,
    /// What was built.
    pub state: LabState,
    pub(crate) namespaces: BTreeMap<String, Netns>,
    servers: Vec<ServerHandle>,
    children: Vec<Child>,
    keep: bool,
}

/// The kube-proxy mode's name in state and output.
pub fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::Legacy => "legacy",
        Mode::Modern => "modern",
    }
}

impl Lab {
    /// Builds the lab. On any failure everything already made is removed.
    pub fn up(topo: Topology, opts: &Options, progress: &dyn Fn(&str)) -> Result<Lab> {
        let plan = LabPlan::new(&opts.name, &opts.run_dir, topo)?;
        if plan.dir.exists() || !existing_namespaces(&plan.name)?.is_empty() {
            return Err(LabError::Invalid(format!(
                "a lab named {:?} exists already (knit lab down --name {0})",
                plan.name
            )));
        }
        let state = LabState {
            name: plan.name.clone(),
            topology: plan.topo.clone(),
            kube_proxy: mode_name(opts.kube_proxy).into(),
            underlay_routes: opts.underlay_routes,
            pods: BTreeMap::new(),
            etcd: None,
            pids: Vec::new(),
        };
        let mut plan = plan;
        let mut state = state;
        if opts.datastore == Datastore::Etcd {
            plan.etcd = Some(plan::etcd_endpoint(&plan.topo)?);
            state.etcd = plan.etcd.clone();
        }
        let mut lab =
            Lab { plan, state, namespaces: BTreeMap::new(), servers: Vec::new(), children: Vec::new(), keep: false };
        // On error `lab` drops here and tears down what was made.
        lab.build(opts, progress)?;
        Ok(lab)
    }

    /// Opens a lab that is up (for `exec` and the matrix of another process).
    pub fn open(name: &str, run_dir: &Path) -> Result<Lab> {
        plan::validate_name(name)?;
        let path = run_dir.join(name).join("state.json");
        let state = LabState::load(&path)?;
        let mut plan = LabPlan::new(name, run_dir, state.topology.clone())?;
        plan.etcd = state.etcd.clone();
        let mut namespaces = BTreeMap::new();
        for full in existing_namespaces(name)? {
            let ns = Netns::open_named(&full).map_err(host(format!("open namespace {full}")))?;
            namespaces.insert(full, ns);
        }
        Ok(Lab { plan, state, namespaces, servers: Vec::new(), children: Vec::new(), keep: true })
    }

    /// Leaves the lab up when this value is dropped (`knit lab up`).
    pub fn keep(mut self) {
        self.keep = true;
        self.servers.clear();
        // The children (BIRD, echo servers) run on by themselves; forget their handles.
        self.children.clear();
    }

    /// The namespace of a node, pod, client or the fabric (`fabric`).
    pub fn netns(&self, part: &str) -> Result<&Netns> {
        let full = self.plan.ns(part);
        self.namespaces
            .get(&full)
            .ok_or_else(|| LabError::Invalid(format!("lab {} has no node, pod or client {part:?}", self.plan.name)))
    }

    fn build(&mut self, opts: &Options, progress: &dyn Fn(&str)) -> Result<()> {
        let progress = |p: &str| -> Result<()> {
            check_cancel()?;
            progress(p);
            Ok(())
        };
        fs::create_dir_all(&self.plan.dir).map_err(io("create lab directory", &self.plan.dir))?;
        self.plan.topo.to_toml().ok().map(|t| fs::write(self.plan.dir.join("topology.toml"), t));
        progress("namespaces and links")?;
        self.make_namespaces()?;
        self.wire_fabric()?;
        if opts.datastore == Datastore::Etcd {
            progress("etcd and node agents")?;
            self.start_etcd()?;
            self.start_agents(opts)?;
        }
        progress("pods (CNI ADD)")?;
        self.add_pods(&opts.cni_path, None)?;
        progress("kube-proxy rules")?;
        self.install_kube_proxy(opts.kube_proxy)?;
        progress("echo servers")?;
        self.start_servers(&opts.serve, None)?;
        progress("BGP (BIRD)")?;
        match opts.datastore {
            Datastore::Local => self.start_bgp(opts.underlay_routes)?,
            Datastore::Etcd => self.start_bgp_cluster()?,
        }
        self.wait_converged(opts.underlay_routes)?;
        self.state.save(&self.plan.state_path())?;
        Ok(())
    }

    fn make_namespaces(&mut self) -> Result<()> {
        let topo = &self.plan.topo;
        let mut parts: Vec<String> = vec![crate::topology::FABRIC_NAME.to_string()];
        parts.extend(topo.nodes.iter().map(|n| n.name.clone()));
        parts.extend(topo.clients.iter().map(|c| c.name.clone()));
        parts.extend(topo.pods.iter().map(|p| p.name.clone()));
        for part in parts {
            check_cancel()?;
            self.make_ns(&part)?;
        }
        Ok(())
    }

    fn wire_fabric(&self) -> Result<()> {
        let topo = &self.plan.topo;
        let fabric = self.netns(crate::topology::FABRIC_NAME)?;
        let fname = self.plan.fabric_ns();
        let fh = Handle::in_netns(fabric).map_err(host(format!("netlink in {fname}")))?;
        // The ToR routes between hosts of one subnet (underlay clients → nodes for the Service
        // CIDR), and an ICMP redirect would make a client cache "via <node>" for five minutes:
        // a node that leaves (remove-node) or an ECMP set that changes then blackholes it. A
        // fabric switch sends none; `all` and the interface are OR-ed, so both must be 0
        // (`default` covers the bridges made next).
        for conf in ["all", "default"] {
            sysctl::set_in(fabric, &format!("net.ipv4.conf.{conf}.send_redirects"), "0")
                .map_err(host(format!("{fname}: no ICMP redirects")))?;
        }
        let br = bridge(&fh, UNDERLAY_BRIDGE, &topo.fabric.gateways, &fname)?;
        let has_external = topo.clients.iter().any(|c| c.side == ClientSide::External);
        let brx = if has_external {
            Some(bridge(&fh, EXTERNAL_BRIDGE, &[topo.fabric.external_gateway], &fname)?)
        } else {
            None
        };
        sysctl::set_in(fabric, "net.ipv4.ip_forward", "1").map_err(host(format!("forwarding in {fname}")))?;

        let mut uplinks: Vec<(String, char, IpNet, IpAddr, u32)> = Vec::new();
        for n in &topo.nodes {
            let gw = topo
                .fabric_gateway_for(n.ip.addr())
                .ok_or_else(|| LabError::Invalid(format!("node {}: {} is in no fabric subnet", n.name, n.ip)))?;
            uplinks.push((n.name.clone(), 'n', n.ip, gw.addr(), br));
        }
        for c in &topo.clients {
            let master = match c.side {
                ClientSide::External => brx.unwrap_or(br),
                ClientSide::Underlay => br,
            };
            uplinks.push((c.name.clone(), 'c', c.ip, c.gateway, master));
        }
        for (name, kind, ip, gw, master) in uplinks {
            self.uplink(&fh, &name, kind, ip, gw, master)?;
        }
        Ok(())
    }

    /// `eth0` of `name` (a node or client namespace) on a fabric bridge, with its address and
    /// default route.
    fn uplink(&self, fh: &Handle, name: &str, kind: char, ip: IpNet, gw: IpAddr, master: u32) -> Result<()> {
        let ns = self.netns(name)?;
        let port = LabPlan::fabric_link(kind, name);
        let what = format!("{name}'s uplink");
        let idx = link::create_veth(fh, &port, "eth0", Some(ns), &VethOptions { up: true, ..Default::default() })
            .map_err(host(what.clone()))?;
        link::set_master(fh, idx, Some(master)).map_err(host(what.clone()))?;
        let h = Handle::in_netns(ns).map_err(host(what.clone()))?;
        let eth0 = link::index_of(&h, "eth0").map_err(host(what.clone()))?;
        addr::add(&h, &addr::Address::new(eth0, ip)).map_err(host(format!("{name}: address {ip}")))?;
        route::add(&h, &Route::default_via(gw, Some(eth0))).map_err(host(format!("{name}: default via {gw}")))?;
        if kind == 'n' {
            sysctl::set_in(ns, "net.ipv4.ip_forward", "1").map_err(host(format!("{name}: forwarding")))?;
        }
        Ok(())
    }

    /// Adds node `node` (already in the topology) to the fabric: namespace and uplink.
    pub(crate) fn make_node(&mut self, node: &str) -> Result<()> {
        self.make_ns(node)?;
        let n = self.plan.topo.node(node).cloned().ok_or_else(|| LabError::Invalid(format!("no node {node}")))?;
        let gw = self
            .plan
            .topo
            .fabric_gateway_for(n.ip.addr())
            .ok_or_else(|| LabError::Invalid(format!("node {node}: {} is in no fabric subnet", n.ip)))?;
        let fh = Handle::in_netns(self.netns(crate::topology::FABRIC_NAME)?).map_err(host("netlink in the fabric"))?;
        let br = link::index_of(&fh, UNDERLAY_BRIDGE).map_err(host("fabric bridge"))?;
        self.uplink(&fh, node, 'n', n.ip, gw.addr(), br)
    }

    /// Creates the namespace of a node, pod or client (`part`), with `lo` up.
    pub(crate) fn make_ns(&mut self, part: &str) -> Result<()> {
        let full = self.plan.ns(part);
        let ns = Netns::create_named(&full).map_err(host(format!("create namespace {full}")))?;
        let h = Handle::in_netns(&ns).map_err(host(format!("netlink in {full}")))?;
        let lo = link::index_of(&h, "lo").map_err(host(format!("lo in {full}")))?;
        link::set_up(&h, lo).map_err(host(format!("lo up in {full}")))?;
        self.namespaces.insert(full, ns);
        Ok(())
    }

    pub(crate) fn add_pods(&mut self, cni_path: &[PathBuf], only_node: Option<&str>) -> Result<()> {
        let plan = &self.plan;
        let topo = &plan.topo;
        let namespaces = &self.namespaces;
        // Nodes in parallel (each is its own "kubelet"); a node's pods one after another.
        let results: Vec<Result<Vec<PodState>>> = std::thread::scope(|s| {
            let handles: Vec<_> = topo
                .nodes
                .iter()
                .filter(|n| only_node.is_none_or(|o| o == n.name))
                .map(|node| {
                    s.spawn(move || -> Result<Vec<PodState>> {
                        let node_ns = namespaces
                            .get(&plan.ns(&node.name))
                            .ok_or_else(|| LabError::Invalid(format!("no namespace for node {}", node.name)))?;
                        let runtime = Runtime::new(cni_path.to_vec(), plan.cni_state_dir(&node.name));
                        let mut pods = Vec::new();
                        for pod in topo.pods_on(&node.name) {
                            check_cancel()?;
                            let pod_ns = plan.ns(&pod.name);
                            let mut st = PodState {
                                name: pod.name.clone(),
                                node: pod.node.clone(),
                                kind: pod.kind,
                                pool: pod.pool.clone(),
                                ips: BTreeMap::new(),
                            };
                            for att in plan.attachments(pod)? {
                                let cni_err = |msg: String| LabError::Cni {
                                    verb: "ADD",
                                    pod: pod.name.clone(),
                                    ifname: att.ifname.clone(),
                                    node: node.name.clone(),
                                    msg,
                                };
                                let bytes = serde_json::to_vec(&att.conflist).map_err(|e| cni_err(e.to_string()))?;
                                let list = NetConfList::from_bytes(&bytes).map_err(|e| cni_err(e.msg.clone()))?;
                                let rt = RuntimeArgs {
                                    container_id: plan.container_id(&pod.name),
                                    netns: Netns::named_path(&pod_ns).to_string_lossy().into_owned(),
                                    ifname: att.ifname.clone(),
                                    args: plan.cni_args(&pod.name),
                                    capability_args: Default::default(),
                                };
                                let result = node_ns
                                    .run(|| runtime.add(&list, &rt))
                                    .map_err(host(format!("enter node {}", node.name)))?
                                    .map_err(|e| {
                                        cni_err(format!(
                                            "{} (code {}){}",
                                            e.msg,
                                            e.code,
                                            if e.details.is_empty() {
                                                String::new()
                                            } else {
                                                format!(": {}", e.details)
                                            }
                                        ))
                                    })?;
                                st.ips.insert(att.ifname.clone(), result_ips(&result, &att.ifname));
                            }
                            pods.push(st);
                        }
                        Ok(pods)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(LabError::Invalid("a CNI thread panicked".into()))))
                .collect()
        });
        for r in results {
            for p in r? {
                self.state.pods.insert(p.name.clone(), p);
            }
        }
        Ok(())
    }

    /// The (IP, node) endpoints of a Service, from the pods as built.
    pub fn service_endpoints(state: &LabState, svc: &crate::topology::Service) -> Vec<(IpAddr, String)> {
        let pods: Vec<&PodState> = match &svc.endpoints {
            Endpoints::Kind(k) => state.pods.values().filter(|p| p.kind == *k).collect(),
            Endpoints::Pods(names) => names.iter().filter_map(|n| state.pods.get(n)).collect(),
        };
        pods.iter().filter_map(|p| p.primary_ip().map(|ip| (ip, p.node.clone()))).collect()
    }

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

    pub(crate) fn start_servers(&mut self, serve: &Serve, only_node: Option<&str>) -> Result<()> {
        let port = self.plan.topo.echo_port;
        let pods: Vec<String> = self
            .state
            .pods
            .values()
            .filter(|p| only_node.is_none_or(|o| o == p.node))
            .map(|p| p.name.clone())
            .collect();
        for pod in pods {
            let ns = self.netns(&pod)?;
            match serve {
                Serve::Nothing => {}
                Serve::InProcess => {
                    let server = ns
                        .run(|| EchoServer::bind(&pod, port))
                        .map_err(host(format!("enter pod {pod}")))?
                        .map_err(|e| LabError::Invalid(format!("pod {pod}: echo server on port {port}: {e}")))?;
                    let h = server.spawn().map_err(|e| LabError::Invalid(format!("pod {pod}: echo server: {e}")))?;
                    self.servers.push(h);
                }
                Serve::Processes { exe } => {
                    let log = self.plan.dir.join(format!("serve-{pod}.log"));
                    let out = fs::File::create(&log).map_err(io("create log", &log))?;
                    let err = out.try_clone().map_err(io("create log", &log))?;
                    let mut cmd = Command::new(exe);
                    cmd.args(["lab", "serve", "--pod", &pod, "--port", &port.to_string()])
                        .stdin(Stdio::null())
                        .stdout(out)
                        .stderr(err)
                        .process_group(0);
                    let child = ns.spawn(&mut cmd).map_err(host(format!("pod {pod}: start echo server")))?;
                    self.state.pids.push(child.id());
                    self.children.push(child);
                }
            }
        }
        if matches!(serve, Serve::Processes { .. }) {
            // Wait until every server listens, so `up` returns a usable lab.
            let deadline = Instant::now() + Duration::from_secs(5);
            for p in self.state.pods.values().filter(|p| only_node.is_none_or(|o| o == p.node)) {
                let Some(ip) = p.primary_ip() else { continue };
                let ns = self.netns(&p.name)?;
                let dst = std::net::SocketAddr::new(ip, port);
                loop {
                    let ok =
                        ns.run(|| crate::serve::probe_tcp(dst, Duration::from_millis(200)).is_ok()).unwrap_or(false);
                    if ok {
                        break;
                    }
                    if Instant::now() > deadline {
                        return Err(LabError::Invalid(format!(
                            "pod {}: echo server did not start (see {})",
                            p.name,
                            self.plan.dir.display()
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        Ok(())
    }

    /// Underlay pod IPs node `node` wires (the coordinator's table-500 /32s).
    fn underlay_ips(&self, node: &str) -> Result<Vec<IpNet>> {
        let ns = self.netns(node)?;
        let h = Handle::in_netns(ns).map_err(host(format!("netlink in {node}")))?;
        let list =
            knit_coordinator::underlay::list(&h, HOST_RULE_TABLE).map_err(host(format!("{node}: underlay IPs")))?;
        Ok(list.into_iter().map(|u| IpNet::from(u.ip)).collect())
    }

    pub(crate) fn blocks(&self, node: &str) -> Result<Vec<IpNet>> {
        let err = |e: String| LabError::Ipam(format!("blocks of {node}: {e}"));
        if self.plan.etcd.is_none() {
            return knit_ipam::blocks_of(&self.plan.ipam_dir(), node).map_err(|e| err(e.to_string()));
        }
        // Cluster mode: the blocks are in etcd, which listens on a fabric address; ask from a
        // node's namespace with the node's own IPAM configuration.
        let conf = self.plan.overlay_conflist(node);
        let cfg =
            knit_ipam::IpamConfig::from_value(&conf["plugins"][0]["ipam"], "ipam").map_err(|e| err(e.to_string()))?;
        self.netns(node)?
            .run(|| knit_ipam::Ipam::open_for_inspection(cfg).and_then(|i| i.blocks_of(node)))
            .map_err(host(format!("enter node {node}")))?
            .map_err(|e| err(e.to_string()))
    }

    fn start_bgp(&mut self, underlay_routes: bool) -> Result<()> {
        let topo = self.plan.topo.clone();
        let v4 = |what: &str, ip: IpAddr| -> Result<Ipv4Addr> {
            match ip {
                IpAddr::V4(a) => Ok(a),
                IpAddr::V6(_) => Err(LabError::Invalid(format!("{what}: BGP in the lab is IPv4 only ({ip})"))),
            }
        };
        for n in &topo.nodes {
            let node_ip = v4(&n.name, n.ip.addr())?;
            let gw = topo
                .fabric_gateway_for(n.ip.addr())
                .map(|g| g.addr())
                .ok_or_else(|| LabError::Invalid(format!("node {}: no fabric subnet", n.name)))?;
            let gw = v4("fabric gateway", gw)?;
            let peers = topo
                .nodes
                .iter()
                .filter(|o| o.name != n.name)
                .map(|o| v4(&o.name, o.ip.addr()))
                .collect::<Result<Vec<_>>>()?;
            let cfg = NodeBgp {
                node_ip,
                asn: topo.node_asn,
                node_peers: peers,
                tor: Some(Peer { ip: IpAddr::V4(gw), asn: topo.tor_asn }),
                overlay_cidrs: vec![topo.overlay_cidr],
                blocks: self.blocks(&n.name)?,
                underlay_routes: if underlay_routes { self.underlay_ips(&n.name)? } else { Vec::new() },
                service_cidrs: vec![topo.service_cidr],
                timers: Timers::FAST,
            };
            let text =
                bird::node_config(&cfg).map_err(|e| LabError::Bgp { node: n.name.clone(), msg: e.to_string() })?;
            self.spawn_bird(&n.name, Some(&text))?;
        }
        self.start_tor()
    }

    fn tor_sessions(&self) -> Result<Vec<TorSession>> {
        let topo = &self.plan.topo;
        let mut sessions = Vec::new();
        for n in &topo.nodes {
            let (IpAddr::V4(node_ip), Some(IpAddr::V4(gw))) =
                (n.ip.addr(), topo.fabric_gateway_for(n.ip.addr()).map(|g| g.addr()))
            else {
                return Err(LabError::Invalid(format!("node {}: BGP in the lab is IPv4 only", n.name)));
            };
            sessions.push(TorSession { local_ip: gw, node: Peer { ip: IpAddr::V4(node_ip), asn: topo.node_asn } });
        }
        Ok(sessions)
    }

    fn start_tor(&mut self) -> Result<()> {
        let text = self.tor_text()?;
        self.spawn_bird(crate::topology::FABRIC_NAME, Some(&text))
    }

    /// The ToR's BIRD configuration: one session per node of the topology.
    fn tor_text(&self) -> Result<String> {
        let sessions = self.tor_sessions()?;
        let topo = self.plan.topo.clone();
        let router_id = topo
            .fabric
            .gateways
            .iter()
            .find_map(|g| match g.addr() {
                IpAddr::V4(a) => Some(a),
                IpAddr::V6(_) => None,
            })
            .ok_or_else(|| LabError::Invalid("fabric: BGP needs an IPv4 gateway".into()))?;
        let tor = TorBgp {
            router_id,
            asn: topo.tor_asn,
            nodes: sessions,
            accept: vec![topo.overlay_cidr, topo.service_cidr],
            timers: Timers::FAST,
        };
        bird::tor_config(&tor).map_err(|e| LabError::Bgp { node: "fabric".into(), msg: e.to_string() })
    }

    /// Cluster mode: node BIRDs run the configuration their agent wrote (the agent reloads
    /// them as the registry changes); the ToR's is static, as a real ToR's is.
    fn start_bgp_cluster(&mut self) -> Result<()> {
        let nodes: Vec<String> = self.plan.topo.nodes.iter().map(|n| n.name.clone()).collect();
        for n in &nodes {
            self.start_node_bird_cluster(n)?;
        }
        self.start_tor()
    }

    /// Rewrites the ToR's configuration for the current nodes and reloads it (sessions of
    /// unchanged nodes stay up).
    pub(crate) fn reconfigure_tor(&mut self) -> Result<()> {
        let text = self.tor_text()?;
        let b = Bird::new(self.plan.bird_dir(crate::topology::FABRIC_NAME));
        let err = |e: bird::BirdError| LabError::Bgp { node: "fabric".into(), msg: e.to_string() };
        b.write_config(&text).map_err(err)?;
        let ns = self.netns(crate::topology::FABRIC_NAME)?;
        ns.run(|| b.configure()).map_err(host("enter fabric"))?.map_err(err)
    }

    /// Starts node `n`'s BIRD once its agent wrote a complete configuration.
    pub(crate) fn start_node_bird_cluster(&mut self, n: &String) -> Result<()> {
        {
            let conf = Bird::new(self.plan.bird_dir(n)).config_path();
            // Start BIRD once the agent's configuration holds everything the node has (its
            // blocks, underlay IPs and every peer): a later reload would then change nothing,
            // and no route flaps while the matrix runs.
            let mut want: Vec<String> = self
                .blocks(n)?
                .iter()
                .chain(self.underlay_ips(n)?.iter())
                .map(|net| format!("route {} blackhole;", net.trunc()))
                .collect();
            for o in self.plan.topo.nodes.iter().filter(|o| &o.name != n) {
                want.push(format!("protocol bgp {} {{", bird::peer_protocol_name(o.ip.addr())));
            }
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                let text = fs::read_to_string(&conf).unwrap_or_default();
                if want.iter().all(|w| text.contains(w.as_str())) {
                    break;
                }
                if Instant::now() > deadline {
                    let missing: Vec<&String> = want.iter().filter(|w| !text.contains(w.as_str())).collect();
                    return Err(LabError::Bgp {
                        node: n.clone(),
                        msg: format!(
                            "the node agent's {} lacks {missing:?} (log in {})",
                            conf.display(),
                            self.plan.dir.display()
                        ),
                    });
                }
                if let Some(dead) = self.dead_child() {
                    return Err(LabError::Bgp {
                        node: n.clone(),
                        msg: format!("a process exited early: {dead} (logs in {})", self.plan.dir.display()),
                    });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            self.spawn_bird(n, None)?;
        }
        Ok(())
    }

    fn start_etcd(&mut self) -> Result<()> {
        let ep = self.plan.etcd.clone().ok_or_else(|| LabError::Invalid("no etcd endpoint".into()))?;
        let data = self.plan.dir.join("etcd");
        let log = self.plan.dir.join("etcd.log");
        let out = fs::File::create(&log).map_err(io("create log", &log))?;
        let err = out.try_clone().map_err(io("create log", &log))?;
        let mut cmd = Command::new("etcd");
        cmd.args(["--name", "knit-lab", "--data-dir"])
            .arg(&data)
            .args(["--listen-client-urls", &ep, "--advertise-client-urls", &ep])
            .args([
                "--listen-peer-urls",
                "http://127.0.0.1:2380",
                "--initial-advertise-peer-urls",
                "http://127.0.0.1:2380",
            ])
            .args(["--initial-cluster", "knit-lab=http://127.0.0.1:2380", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let fabric = self.netns(crate::topology::FABRIC_NAME)?.try_clone().map_err(host("fabric namespace"))?;
        let child = fabric.spawn(&mut cmd).map_err(host("fabric: start etcd"))?;
        self.state.pids.push(child.id());
        self.children.push(child);
        // Set the cluster's CIDRs (what `knit cluster set` does), from inside the fabric.
        let cluster = knit_agent::registry::ClusterConfig {
            overlay_pod_cidr: vec![self.plan.topo.overlay_cidr],
            service_cidr: vec![self.plan.topo.service_cidr],
            hijack_cidr: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let r = fabric
                .run(|| -> std::result::Result<(), String> {
                    let mut reg = knit_agent::registry::Registry::connect(
                        std::slice::from_ref(&ep),
                        &Default::default(),
                        knit_agent::registry::DEFAULT_PREFIX,
                        Duration::from_secs(2),
                    )
                    .map_err(|e| e.to_string())?;
                    reg.set_cluster_config(&cluster).map_err(|e| e.to_string())
                })
                .map_err(host("enter fabric"))?;
            match r {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    return Err(LabError::Invalid(format!(
                        "etcd at {ep} did not come up: {e} (log: {})",
                        log.display()
                    )))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
            if let Some(dead) = self.dead_child() {
                return Err(LabError::Invalid(format!("etcd exited: {dead} (log: {})", log.display())));
            }
        }
    }

    fn start_agents(&mut self, opts: &Options) -> Result<()> {
        let nodes: Vec<String> = self.plan.topo.nodes.iter().map(|n| n.name.clone()).collect();
        for n in &nodes {
            self.start_agent(n, &opts.knit_exe)?;
        }
        Ok(())
    }

    /// Starts node `node`'s agent (`knit node run`) and waits for its CIDR file.
    pub(crate) fn start_agent(&mut self, node: &str, knit_exe: &Path) -> Result<()> {
        let ep = self.plan.etcd.clone().ok_or_else(|| LabError::Invalid("no etcd endpoint".into()))?;
        let topo = self.plan.topo.clone();
        for n in topo.nodes.iter().filter(|n| n.name == node) {
            let gw = topo
                .fabric_gateway_for(n.ip.addr())
                .map(|g| g.addr())
                .ok_or_else(|| LabError::Invalid(format!("node {}: no fabric subnet", n.name)))?;
            let ipam_file = self.plan.dir.join(format!("ipam-{}.json", n.name));
            let conf = self.plan.overlay_conflist(&n.name);
            fs::write(&ipam_file, serde_json::to_vec_pretty(&conf["plugins"][0]["ipam"]).unwrap_or_default())
                .map_err(io("write", &ipam_file))?;
            let bird_dir = self.plan.bird_dir(&n.name);
            fs::create_dir_all(&bird_dir).map_err(io("create BIRD directory", &bird_dir))?;
            let log = self.plan.dir.join(format!("agent-{}.log", n.name));
            let out = fs::File::create(&log).map_err(io("create log", &log))?;
            let err = out.try_clone().map_err(io("create log", &log))?;
            let mut cmd = Command::new(knit_exe);
            cmd.args([
                "node",
                "run",
                "--etcd-endpoints",
                &ep,
                "--node",
                &n.name,
                "--node-ip",
                &n.ip.addr().to_string(),
            ])
            .args(["--as", &topo.node_asn.to_string(), "--tor", &gw.to_string(), "--tor-as", &topo.tor_asn.to_string()])
            .arg("--bird-dir")
            .arg(&bird_dir)
            .arg("--ipam-config")
            .arg(&ipam_file)
            .arg("--cidr-file")
            .arg(self.plan.cidr_file(&n.name))
            .args(["--lease-ttl", "4", "--interval-ms", "200"])
            .env("KNIT_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
            let ns = self.netns(&n.name)?;
            let child = ns.spawn(&mut cmd).map_err(host(format!("{}: start the node agent", n.name)))?;
            self.state.pids.push(child.id());
            self.children.push(child);
        }
        // Pods need the coordinator's CIDR file, which the agents write from etcd.
        let deadline = Instant::now() + Duration::from_secs(15);
        for n in topo.nodes.iter().filter(|n| n.name == node) {
            let f = self.plan.cidr_file(&n.name);
            while !f.exists() {
                if let Some(dead) = self.dead_child() {
                    return Err(LabError::Invalid(format!(
                        "a node agent exited: {dead} (logs in {})",
                        self.plan.dir.display()
                    )));
                }
                if Instant::now() > deadline {
                    return Err(LabError::Invalid(format!(
                        "node agent of {} wrote no {} (log in {})",
                        n.name,
                        f.display(),
                        self.plan.dir.display()
                    )));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    fn spawn_bird(&mut self, part: &str, config: Option<&str>) -> Result<()> {
        let bgp_err = |msg: String| LabError::Bgp { node: part.to_string(), msg };
        let dir = self.plan.bird_dir(part);
        fs::create_dir_all(&dir).map_err(io("create BIRD directory", &dir))?;
        let b = Bird::new(&dir);
        if let Some(config) = config {
            b.write_config(config).map_err(|e| bgp_err(e.to_string()))?;
        }
        let mut cmd = b.command().map_err(|e| bgp_err(e.to_string()))?;
        let log = b.log_path();
        let out = fs::File::create(&log).map_err(io("create log", &log))?;
        let err = out.try_clone().map_err(io("create log", &log))?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err).process_group(0);
        let ns = self.netns(part)?;
        let child = ns.spawn(&mut cmd).map_err(host(format!("{part}: start bird")))?;
        self.state.pids.push(child.id());
        self.children.push(child);
        Ok(())
    }

    /// Waits until every node has the other nodes' blocks (and underlay /32s) from BIRD, and
    /// the ToR has every block and the Service CIDR.
    pub(crate) fn wait_converged(&mut self, underlay_routes: bool) -> Result<()> {
        let topo = self.plan.topo.clone();
        let mut want: BTreeMap<String, BTreeSet<IpNet>> = BTreeMap::new();
        let mut all_blocks = BTreeSet::new();
        for n in &topo.nodes {
            let blocks = self.blocks(&n.name)?;
            let ul = if underlay_routes { self.underlay_ips(&n.name)? } else { Vec::new() };
            all_blocks.extend(blocks.iter().copied());
            for o in topo.nodes.iter().filter(|o| o.name != n.name) {
                let w = want.entry(o.name.clone()).or_default();
                w.extend(blocks.iter().copied());
                w.extend(ul.iter().copied());
            }
        }
        let tor = want.entry(crate::topology::FABRIC_NAME.to_string()).or_default();
        tor.extend(all_blocks);
        tor.insert(topo.service_cidr);

        let deadline = Instant::now() + CONVERGE_TIMEOUT;
        loop {
            let mut missing = Vec::new();
            for (part, nets) in &want {
                let ns = self.netns(part)?;
                let h = Handle::in_netns(ns).map_err(host(format!("netlink in {part}")))?;
                let have: BTreeSet<IpNet> = route::list(&h, Family::V4, Some(254))
                    .map_err(host(format!("{part}: routes")))?
                    .into_iter()
                    .filter(|r| r.protocol == route::proto::BIRD)
                    .map(|r| r.dst)
                    .collect();
                for n in nets.difference(&have) {
                    missing.push(format!("{part}: {n}"));
                }
            }
            if missing.is_empty() {
                return Ok(());
            }
            if let Some(dead) = self.dead_child() {
                return Err(LabError::Bgp {
                    node: "lab".into(),
                    msg: format!("a process exited early: {dead} (logs in {})", self.plan.dir.display()),
                });
            }
            if Instant::now() > deadline {
                return Err(LabError::Bgp {
                    node: "lab".into(),
                    msg: format!(
                        "no convergence after {CONVERGE_TIMEOUT:?}; missing {} (BIRD logs in {})",
                        missing.join(", "),
                        self.plan.dir.join("bird").display()
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn dead_child(&mut self) -> Option<String> {
        for c in &mut self.children {
            if let Ok(Some(status)) = c.try_wait() {
                return Some(format!("pid {} {status}", c.id()));
            }
        }
        None
    }

    /// Stops the in-process servers and children, then removes everything of the lab.
    pub fn teardown(mut self) -> Result<Teardown> {
        self.keep = true;
        self.stop_local();
        self.namespaces.clear();
        down(&self.plan.name, self.plan.dir.parent().unwrap_or(Path::new(plan::DEFAULT_RUN_DIR)))
    }

    fn stop_local(&mut self) {
        // Stop all servers at once: each takes up to a poll tick to notice.
        let servers = std::mem::take(&mut self.servers);
        std::thread::scope(|s| {
            for h in servers {
                s.spawn(move || h.stop());
            }
        });
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.children.clear();
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        self.stop_local();
        self.namespaces.clear();
        let run_dir =
            self.plan.dir.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(plan::DEFAULT_RUN_DIR));
        if let Err(e) = down(&self.plan.name, &run_dir) {
            eprintln!("knit lab: cleaning up {}: {e}", self.plan.name);
        }
    }
}

fn bridge(h: &Handle, name: &str, addrs: &[IpNet], ns: &str) -> Result<u32> {
    let what = format!("{ns}: bridge {name}");
    let idx = link::create_bridge(h, name).map_err(host(what.clone()))?;
    // A bridge whose MAC was never set takes the lowest MAC of its ports, so it changes when a
    // node leaves (remove-node) and hosts holding the gateway's old MAC lose it until their ARP
    // entry fails. Setting the (random) MAC it was created with pins it.
    if let Some(mac) = link::get_by_index(h, idx).map_err(host(what.clone()))?.and_then(|l| l.mac) {
        link::set_mac(h, idx, mac).map_err(host(format!("{what}: pin MAC")))?;
    }
    for a in addrs {
        addr::add(h, &addr::Address::new(idx, *a)).map_err(host(format!("{what}: address {a}")))?;
    }
    link::set_up(h, idx).map_err(host(what))?;
    Ok(idx)
}

/// The addresses a CNI result gives interface `ifname` (or every address when the result
/// names no interfaces).
fn result_ips(result: &Value, ifname: &str) -> Vec<IpAddr> {
    let ifaces = result["interfaces"].as_array().cloned().unwrap_or_default();
    let parse = |v: &Value| v["address"].as_str().and_then(|a| a.parse::<IpNet>().ok()).map(|n| n.addr());
    let ips = result["ips"].as_array().cloned().unwrap_or_default();
    let mine: Vec<IpAddr> = ips
        .iter()
        .filter(|ip| {
            ip["interface"].as_u64().and_then(|i| ifaces.get(i as usize)).is_some_and(|iface| {
                iface["name"] == ifname && iface["sandbox"].as_str().is_some_and(|s| !s.is_empty())
            })
        })
        .filter_map(parse)
        .collect();
    if mine.is_empty() {
        ips.iter().filter_map(parse).collect()
    } else {
        mine
    }
}

/// Namespaces of lab `name` that exist now.
pub fn existing_namespaces(name: &str) -> Result<Vec<String>> {
    let prefix = plan::ns_prefix(name);
    Ok(Netns::list_named().map_err(host("list namespaces"))?.into_iter().filter(|n| n.starts_with(&prefix)).collect())
}

/// What a teardown removed.
#[derive(Debug, Default, Clone)]
pub struct Teardown {
    /// Namespaces deleted.
    pub namespaces: Vec<String>,
    /// Processes killed.
    pub processes: Vec<u32>,
}

/// Removes lab `name`: kills every process in its namespaces, deletes them and its directory.
/// Idempotent: a lab that is (partly) gone is removed as far as it exists.
pub fn down(name: &str, run_dir: &Path) -> Result<Teardown> {
    plan::validate_name(name)?;
    let names = existing_namespaces(name)?;
    let processes = remove_namespaces(&names, &[(Signal::SIGKILL, Duration::from_secs(5))])?;
    let dir = run_dir.join(name);
    if dir.exists() {
        fs::remove_dir_all(&dir).map_err(io("remove lab directory", &dir))?;
    }
    Ok(Teardown { namespaces: names, processes })
}

/// Deletes `names` (namespaces of a lab) after the processes living in them: each signal of
/// `signals` in turn, waiting up to its time for them to exit. Processes keep a namespace,
/// and so its links, alive after its name is gone (BIRD, echo servers, `knit lab exec`
/// shells). Returns the pids signalled.
pub(crate) fn remove_namespaces(names: &[String], signals: &[(Signal, Duration)]) -> Result<Vec<u32>> {
    let mut inodes = BTreeSet::new();
    for n in names {
        if let Ok(ns) = Netns::open_named(n) {
            if let Ok(i) = ns.inode() {
                inodes.insert(i);
            }
        }
    }
    let me = std::process::id();
    let victims: Vec<u32> = processes_in(&inodes).into_iter().filter(|p| *p != me).collect();
    let alive = |v: &[u32]| v.iter().any(|p| Path::new(&format!("/proc/{p}")).exists() && !is_zombie(*p));
    for (sig, wait) in signals {
        for pid in &victims {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid as i32), *sig);
        }
        let deadline = Instant::now() + *wait;
        while alive(&victims) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    for n in names {
        Netns::delete_named(n).map_err(host(format!("delete namespace {n}")))?;
    }
    Ok(victims)
}

fn is_zombie(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')))
        .unwrap_or(true)
}

/// Pids of processes whose network namespace is one of `inodes`.
fn processes_in(inodes: &BTreeSet<u64>) -> Vec<u32> {
    let mut out = Vec::new();
    if inodes.is_empty() {
        return out;
    }
    let Ok(rd) = fs::read_dir("/proc") else { return out };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(target) = fs::read_link(e.path().join("ns/net")) else { continue };
        // "net:[4026532123]"
        let ino = target
            .to_str()
            .and_then(|s| s.strip_prefix("net:["))
            .and_then(|s| s.strip_suffix(']'))
            .and_then(|s| s.parse::<u64>().ok());
        if ino.is_some_and(|i| inodes.contains(&i)) {
            out.push(pid);
        }
    }
    out
}

/// Labs with a directory under `run_dir` (a lab's namespaces can't be told apart from a
/// namespace name alone: lab names may hold '-').
pub fn list(run_dir: &Path) -> Result<Vec<String>> {
    let mut names = BTreeSet::new();
    if let Ok(rd) = fs::read_dir(run_dir) {
        for e in rd.flatten() {
            if let Some(n) = e.file_name().to_str() {
                names.insert(n.to_string());
            }
        }
    }
    Ok(names.into_iter().collect())
}
