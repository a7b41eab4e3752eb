//! Building a lab from a [`LabPlan`] and tearing it down.
//!
//! Order: the programs it needs ([`preflight`]) → namespaces and links ([`namespaces`]:
//! fabric bridge, nodes, clients) → in cluster mode etcd ([`etcd`]) and the node agents
//! ([`agents`]) → pods through the real CNI path ([`pods`]: `knit_cni::Runtime`, run from a
//! thread inside the node's namespace, as containerd runs plugins) → kube-proxy rules
//! ([`kube_proxy`]) → echo servers ([`echo`]) → BIRD on every node and on the ToR, and the wait
//! until every node and the ToR have the routes BGP must give them ([`bgp`]). Once up, the
//! lab's state and its inventory (what is where, for `knit trace`) are written to its directory.
//!
//! Teardown works from the lab's name alone ([`processes`]: every namespace is
//! `knit-<lab>-…`): it kills every process living in those namespaces (BIRD,
//! echo servers), deletes the namespaces (which destroys their links) and the
//! lab's directory. It is idempotent, so Ctrl-C, a failed build and `down` all
//! use it.

mod agents;
mod bgp;
mod echo;
mod etcd;
mod kube_proxy;
mod namespaces;
mod pods;
pub mod preflight;
mod processes;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Child;

use knit_host::Netns;

use crate::error::{host, io, LabError, Result};
use crate::kubeproxy::Mode;
use crate::plan::{self, LabPlan};
use crate::serve::ServerHandle;
use crate::state::LabState;
use crate::topology::Topology;

pub(crate) use processes::remove_namespaces;
pub use processes::{down, existing_namespaces, list, Teardown};

/// Set (by a signal handler's watcher) to stop a build between steps.
pub static CANCEL: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn check_cancel() -> Result<()> {
    if CANCEL.load(std::sync::atomic::Ordering::SeqCst) {
        Err(LabError::Interrupted)
    } else {
        Ok(())
    }
}

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
        // Before anything is made: a missing program would otherwise show up mid-build.
        preflight::check(&preflight::needs(opts, &plan.topo))?;
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

    /// Opens a lab that is up (for `exec` and the matrix of another process). A lab that
    /// doesn't exist is [`LabError::NoLab`], naming the labs that do.
    pub fn open(name: &str, run_dir: &Path) -> Result<Lab> {
        plan::validate_name(name)?;
        let dir = run_dir.join(name);
        if !dir.is_dir() {
            if existing_namespaces(name)?.is_empty() {
                return Err(LabError::NoLab { name: name.to_string(), here: list(run_dir)? });
            }
            return Err(LabError::Invalid(format!(
                "lab {name} is incomplete: it has namespaces but no directory {} (remove it with knit lab down --name {name})",
                dir.display()
            )));
        }
        let path = dir.join("state.json");
        if !path.exists() {
            return Err(LabError::Invalid(format!(
                "lab {name} is not up: no {} (being built, or a build failed; remove it with knit lab down --name {name})",
                path.display()
            )));
        }
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
        self.save_state()
    }

    /// Writes the lab's state (for `knit lab …` of other processes) and its inventory (what is
    /// where, for `knit trace --lab` and `knit doctor --lab`).
    pub(crate) fn save_state(&mut self) -> Result<()> {
        self.state.topology = self.plan.topo.clone();
        self.state.save(&self.plan.state_path())?;
        let path = self.plan.inventory_path();
        crate::inventory::of(&self.plan, &self.state)
            .save(&path)
            .map_err(|e| LabError::Invalid(format!("write {}: {e}", path.display())))
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
