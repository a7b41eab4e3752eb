//! `knit-lab lab …` (and `knit lab …`, which runs it): a multi-node cluster in network
//! namespaces, and its connectivity matrix.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand, ValueEnum};
use knit_lab::kubeproxy::Mode;
use knit_lab::matrix::{self, Cell};
use knit_lab::plan::DEFAULT_RUN_DIR;
use knit_lab::topology::Topology;
use knit_lab::{Lab, LabError, Options, Serve};

#[derive(Args)]
pub struct LabCmd {
    #[command(subcommand)]
    cmd: LabSub,
}

#[derive(Clone, Copy, ValueEnum)]
enum KubeProxy {
    /// kube-proxy < 1.29: `ctstate INVALID` drop, strict TCP tracking (nf_conntrack_tcp_be_liberal=0).
    Legacy,
    /// kube-proxy >= 1.29 with conntrack's liberal TCP tracking (=1), hence no INVALID drop.
    Modern,
}

impl From<KubeProxy> for Mode {
    fn from(k: KubeProxy) -> Mode {
        match k {
            KubeProxy::Legacy => Mode::Legacy,
            KubeProxy::Modern => Mode::Modern,
        }
    }
}

#[derive(Args, Clone)]
struct BuildArgs {
    /// Topology file (TOML); the embedded default lab when absent.
    #[arg(long)]
    topology: Option<PathBuf>,
    /// Which kube-proxy to mimic.
    #[arg(long, value_enum, default_value = "legacy")]
    kube_proxy: KubeProxy,
    /// Don't exchange underlay pod /32 routes between nodes (shows the seeds' failures).
    #[arg(long)]
    no_underlay_routes: bool,
    /// Where lab directories live.
    #[arg(long, default_value = DEFAULT_RUN_DIR)]
    run_dir: PathBuf,
    /// `local`: knit-ipam's file store and BGP peers from the topology; `etcd`: one etcd in the
    /// fabric, knit-ipam on etcd, and `knit node run` agents that find their peers there.
    #[arg(long, value_enum, default_value = "local")]
    datastore: DatastoreArg,
}

#[derive(Clone, Copy, ValueEnum)]
enum DatastoreArg {
    Local,
    Etcd,
}

#[derive(Subcommand)]
enum LabSub {
    /// Build a lab and leave it running.
    Up {
        #[command(flatten)]
        build: BuildArgs,
        /// The lab's name (part of every namespace name).
        #[arg(long, default_value = "lab")]
        name: String,
    },
    /// Remove a lab: its processes, namespaces (and so links) and files.
    Down {
        #[arg(long, default_value = "lab")]
        name: String,
        #[arg(long, default_value = DEFAULT_RUN_DIR)]
        run_dir: PathBuf,
    },
    /// Run a command inside a node, pod or client of a lab (or `fabric`).
    Exec {
        #[arg(long, default_value = "lab")]
        name: String,
        #[arg(long, default_value = DEFAULT_RUN_DIR)]
        run_dir: PathBuf,
        /// Node, pod or client name.
        target: String,
        /// The command.
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Show the labs on this machine, or one lab's pods.
    Status {
        #[arg(long)]
        name: Option<String>,
        #[arg(long, default_value = DEFAULT_RUN_DIR)]
        run_dir: PathBuf,
    },
    /// Build a throwaway lab, probe every cell of the connectivity matrix, remove the lab.
    /// Exits 0 only when every cell passes.
    Matrix {
        #[command(flatten)]
        build: BuildArgs,
        /// Print JSON instead of the table.
        #[arg(long)]
        json: bool,
        /// The lab's name (default: `m<pid>`).
        #[arg(long)]
        name: Option<String>,
        /// Probe a lab that is up (`knit lab up`) instead of building one; it stays up.
        #[arg(long, conflicts_with_all = ["topology", "name"])]
        lab: Option<String>,
    },
    /// Add a node (with pods) to a running cluster-mode lab (`up --datastore etcd`).
    AddNode {
        #[arg(long, default_value = "lab")]
        name: String,
        #[arg(long, default_value = DEFAULT_RUN_DIR)]
        run_dir: PathBuf,
        /// The new node's name.
        node: String,
        /// Its eth0 address (CIDR, in the nodes' fabric subnet).
        #[arg(long)]
        ip: ipnet::IpNet,
        /// A pod on it: NAME:overlay, NAME:underlay:POOL or NAME:multinic:POOL (repeatable).
        #[arg(long = "pod")]
        pods: Vec<String>,
    },
    /// Remove a node and its pods from a running cluster-mode lab.
    RemoveNode {
        #[arg(long, default_value = "lab")]
        name: String,
        #[arg(long, default_value = DEFAULT_RUN_DIR)]
        run_dir: PathBuf,
        /// The node.
        node: String,
    },
    /// The pods' TCP/UDP echo server (runs inside a pod; `knit lab up` starts it).
    Serve {
        /// The pod name it answers with.
        #[arg(long)]
        pod: String,
        #[arg(long, default_value_t = 8080)]
        port: u16,
    },
}

pub fn run(c: LabCmd) -> ExitCode {
    let res = match c.cmd {
        LabSub::Up { build, name } => up(&build, &name),
        LabSub::Down { name, run_dir } => down(&name, &run_dir),
        LabSub::Exec { name, run_dir, target, cmd } => return exec(&name, &run_dir, &target, &cmd),
        LabSub::Status { name, run_dir } => status(name.as_deref(), &run_dir),
        LabSub::Matrix { build, json, name, lab: Some(lab) } => {
            let _ = name;
            return matrix_existing(&build, json, &lab);
        }
        LabSub::Matrix { build, json, name, lab: None } => return wait_if_interrupted(matrix_cmd(&build, json, name)),
        LabSub::AddNode { name, run_dir, node, ip, pods } => add_node(&name, &run_dir, &node, ip, &pods),
        LabSub::RemoveNode { name, run_dir, node } => remove_node(&name, &run_dir, &node),
        LabSub::Serve { pod, port } => serve(&pod, port),
    };
    wait_if_interrupted(ExitCode::FAILURE);
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("knit lab: {e}");
            ExitCode::FAILURE
        }
    }
}

fn load_topology(path: Option<&Path>) -> Result<Topology, LabError> {
    match path {
        Some(p) => Ok(Topology::load(p)?),
        None => Ok(Topology::default_lab()?),
    }
}

/// Where the CNI plugins are: next to this executable (knit's plugins are built beside it),
/// then `$CNI_PATH`, then Debian's and the usual directory (as `knit bench` finds them).
fn cni_path() -> Vec<PathBuf> {
    knit_bench::PluginDirs::discover().dirs
}

/// The node binary `knit` (cluster mode runs `knit node run` on every node): next to this
/// executable, as the build puts them, else the one on PATH.
fn knit_exe() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("knit")))
        .filter(|p| p.exists())
        .or_else(|| knit_lab::build::preflight::find_program("knit"))
        .unwrap_or_else(|| PathBuf::from("knit"))
}

/// This executable (`knit-lab`), which pods run as their echo server (`knit-lab lab serve`).
fn own_exe() -> Result<PathBuf, LabError> {
    std::env::current_exe().map_err(|e| LabError::Invalid(format!("own executable: {e}")))
}

/// Fails with "no lab X (labs here: …)" unless lab `name` has a directory or a namespace.
fn must_exist(name: &str, run_dir: &Path) -> Result<(), LabError> {
    knit_lab::plan::validate_name(name)?;
    if run_dir.join(name).is_dir() || !knit_lab::build::existing_namespaces(name)?.is_empty() {
        return Ok(());
    }
    Err(LabError::NoLab { name: name.to_string(), here: knit_lab::build::list(run_dir)? })
}

/// After Ctrl-C, the build or the probes fail as the lab vanishes under them; the watcher
/// thread is removing the lab and exits with 130, so don't exit first with another code.
fn wait_if_interrupted(code: ExitCode) -> ExitCode {
    while crate::signals::terminated() {
        std::thread::sleep(Duration::from_millis(100));
    }
    code
}

/// On Ctrl-C or SIGTERM while a lab is being built or probed: remove it, then exit 130.
/// The handler only sets a flag; a watcher thread does the work outside signal context.
fn remove_on_interrupt(name: String, run_dir: PathBuf) {
    if let Err(e) = crate::signals::catch() {
        eprintln!("knit lab: {e}");
    }
    std::thread::spawn(move || loop {
        if crate::signals::terminated() {
            eprintln!("\nknit lab: interrupted, removing lab {name}");
            knit_lab::build::CANCEL.store(true, Ordering::SeqCst);
            // Twice: the build may have made one more namespace while the first pass ran.
            for _ in 0..2 {
                if let Err(e) = knit_lab::down(&name, &run_dir) {
                    eprintln!("knit lab: {e}");
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            std::process::exit(130);
        }
        std::thread::sleep(Duration::from_millis(50));
    });
}

fn options(build: &BuildArgs, name: &str, serve: Serve) -> Options {
    Options {
        name: name.to_string(),
        run_dir: build.run_dir.clone(),
        kube_proxy: build.kube_proxy.into(),
        underlay_routes: !build.no_underlay_routes,
        serve,
        cni_path: cni_path(),
        datastore: match build.datastore {
            DatastoreArg::Local => knit_lab::Datastore::Local,
            DatastoreArg::Etcd => knit_lab::Datastore::Etcd,
        },
        knit_exe: knit_exe(),
    }
}

fn up(build: &BuildArgs, name: &str) -> Result<(), LabError> {
    let topo = load_topology(build.topology.as_deref())?;
    let exe = own_exe()?;
    knit_lab::plan::validate_name(name)?;
    remove_on_interrupt(name.to_string(), build.run_dir.clone());
    let t0 = Instant::now();
    let lab = Lab::up(topo, &options(build, name, Serve::Processes { exe }), &|phase| eprintln!("knit lab: {phase}"))?;
    eprintln!(
        "knit lab: {name} is up in {:.1}s: {} nodes, {} pods (knit lab status --name {name}; knit lab down --name {name})",
        t0.elapsed().as_secs_f64(),
        lab.plan.topo.nodes.len(),
        lab.state.pods.len()
    );
    lab.keep();
    Ok(())
}

fn down(name: &str, run_dir: &Path) -> Result<(), LabError> {
    must_exist(name, run_dir)?;
    let r = knit_lab::down(name, run_dir)?;
    eprintln!("knit lab: removed {name}: {} namespaces, {} processes", r.namespaces.len(), r.processes.len());
    Ok(())
}

fn exec(name: &str, run_dir: &Path, target: &str, cmd: &[String]) -> ExitCode {
    let lab = match Lab::open(name, run_dir) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("knit lab: {e}");
            return ExitCode::FAILURE;
        }
    };
    let ns = match lab.netns(target) {
        Ok(ns) => ns,
        Err(e) => {
            eprintln!("knit lab: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (prog, args) = match cmd.split_first() {
        Some(x) => x,
        None => return ExitCode::FAILURE,
    };
    let mut c = Command::new(prog);
    c.args(args);
    match ns.spawn(&mut c).map(|mut child| child.wait()) {
        Ok(Ok(status)) => ExitCode::from(status.code().unwrap_or(1).clamp(0, 255) as u8),
        Ok(Err(e)) => {
            eprintln!("knit lab: {prog}: {e}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("knit lab: {e}");
            ExitCode::FAILURE
        }
    }
}

fn status(name: Option<&str>, run_dir: &Path) -> Result<(), LabError> {
    let names = match name {
        Some(n) => {
            must_exist(n, run_dir)?;
            vec![n.to_string()]
        }
        None => knit_lab::build::list(run_dir)?,
    };
    if names.is_empty() {
        println!("no labs");
        return Ok(());
    }
    for n in names {
        let namespaces = knit_lab::build::existing_namespaces(&n)?;
        match Lab::open(&n, run_dir) {
            Ok(lab) => {
                let alive = lab.state.pids.iter().filter(|p| Path::new(&format!("/proc/{p}")).exists()).count();
                println!(
                    "{n}: {} nodes, {} pods, kube-proxy {}, underlay routes {}, {} namespaces, {}/{} processes running",
                    lab.plan.topo.nodes.len(),
                    lab.state.pods.len(),
                    lab.state.kube_proxy,
                    if lab.state.underlay_routes { "on" } else { "off" },
                    namespaces.len(),
                    alive,
                    lab.state.pids.len()
                );
                if name.is_some() {
                    let mut t = comfy_table::Table::new();
                    t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
                    t.set_header(["pod", "node", "kind", "addresses"]);
                    for p in lab.state.pods.values() {
                        let ips: Vec<String> = p
                            .ips
                            .iter()
                            .map(|(i, a)| {
                                format!("{i} {}", a.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(","))
                            })
                            .collect();
                        t.add_row([p.name.clone(), p.node.clone(), p.kind.as_str().to_string(), ips.join("  ")]);
                    }
                    println!("{t}");
                }
            }
            Err(_) => {
                println!("{n}: incomplete ({} namespaces; remove with knit lab down --name {n})", namespaces.len())
            }
        }
    }
    Ok(())
}

fn serve(pod: &str, port: u16) -> Result<(), LabError> {
    let server = knit_lab::serve::EchoServer::bind(pod, port)
        .map_err(|e| LabError::Invalid(format!("bind port {port}: {e}")))?;
    server.run().map_err(|e| LabError::Invalid(format!("echo server: {e}")))
}

fn matrix_cmd(build: &BuildArgs, json: bool, name: Option<String>) -> ExitCode {
    match matrix_run(build, json, name) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("knit lab matrix: {e}");
            ExitCode::from(2)
        }
    }
}

fn matrix_run(build: &BuildArgs, json: bool, name: Option<String>) -> Result<bool, LabError> {
    let t0 = Instant::now();
    let topo = load_topology(build.topology.as_deref())?;
    let name = name.unwrap_or_else(|| format!("m{}", std::process::id()));
    knit_lab::plan::validate_name(&name)?;
    remove_on_interrupt(name.clone(), build.run_dir.clone());
    let tty = std::io::stderr().is_terminal();
    let phase = |p: &str| {
        if tty {
            eprint!("\r\x1b[2Kknit lab matrix: {p}…");
        } else {
            eprintln!("knit lab matrix: {p}");
        }
    };
    let lab = Lab::up(topo, &options(build, &name, Serve::InProcess), &phase)?;
    let setup = t0.elapsed();

    let jobs = matrix::plan_cells(&lab.state);
    let total = jobs.len();
    let done = AtomicUsize::new(0);
    let failed = AtomicUsize::new(0);
    let t1 = Instant::now();
    let tick = |c: &Cell| {
        let d = done.fetch_add(1, Ordering::Relaxed) + 1;
        let f = failed.fetch_add(usize::from(!c.ok), Ordering::Relaxed) + usize::from(!c.ok);
        if tty && (d.is_multiple_of(8) || d == total) {
            eprint!(
                "\r\x1b[2Kknit lab matrix: probing {d}/{total} cells, {f} failed, {:.1}s",
                t0.elapsed().as_secs_f64()
            );
            let _ = std::io::stderr().flush();
        }
    };
    let cells = matrix::run(&lab, jobs, &tick);
    let probes = t1.elapsed();
    phase("teardown");
    let t2 = Instant::now();
    let teardown = lab.teardown();
    let teardown_time = t2.elapsed();
    if tty {
        eprint!("\r\x1b[2K");
    }
    let cells = cells?;
    teardown?;
    let mode = knit_lab::build::mode_name(build.kube_proxy.into());
    let extra = serde_json::json!({
        "setup_seconds": setup.as_secs_f64(),
        "probe_seconds": probes.as_secs_f64(),
        "teardown_seconds": teardown_time.as_secs_f64(),
        "kube_proxy": mode,
        "underlay_routes": !build.no_underlay_routes,
        "datastore": match build.datastore { DatastoreArg::Local => "local", DatastoreArg::Etcd => "etcd" },
    });
    let context = format!(
        "setup {:.1}s, probes {:.1}s, teardown {:.1}s; kube-proxy {mode}{}",
        setup.as_secs_f64(),
        probes.as_secs_f64(),
        teardown_time.as_secs_f64(),
        if build.no_underlay_routes { ", no underlay routes" } else { "" }
    );
    Ok(print_cells(&cells, json, t0.elapsed().as_secs_f64(), extra, &context))
}

/// Prints the cells (the table, the failed and retried cells and a summary line, or JSON with
/// `extra`'s keys added); true when every cell passed.
fn print_cells(cells: &[Cell], json: bool, seconds: f64, extra: serde_json::Value, context: &str) -> bool {
    let passed = cells.iter().filter(|c| c.ok).count();
    let retried = cells.iter().filter(|c| c.retried).count();
    let failed = cells.len() - passed;
    if json {
        let mut out = serde_json::json!({
            "cells": cells,
            "passed": passed,
            "failed": failed,
            "retried": retried,
            "seconds": seconds,
        });
        if let (Some(o), serde_json::Value::Object(e)) = (out.as_object_mut(), extra) {
            o.extend(e);
        }
        println!("{out}");
    } else {
        println!("{}", matrix::table(cells));
        for c in cells.iter().filter(|c| !c.ok) {
            println!("❌ {} → {} [{} {}]: {}", c.source, c.target, c.proto.as_str(), c.placement.as_str(), c.detail);
        }
        for c in cells.iter().filter(|c| c.retried) {
            println!("⚠ {} → {} [{} {}]: {}", c.source, c.target, c.proto.as_str(), c.placement.as_str(), c.detail);
        }
        println!(
            "{} cells: {passed} passed ({retried} on a second try), {failed} failed in {seconds:.1}s ({context})",
            cells.len()
        );
    }
    failed == 0
}

fn parse_pod(spec: &str, node: &str) -> Result<knit_lab::topology::Pod, LabError> {
    let parts: Vec<&str> = spec.split(':').collect();
    let kind = match parts.get(1).copied() {
        Some("overlay") => knit_lab::topology::PodKind::Overlay,
        Some("underlay") => knit_lab::topology::PodKind::Underlay,
        Some("multinic") => knit_lab::topology::PodKind::Multinic,
        _ => {
            return Err(LabError::Invalid(format!(
                "--pod {spec:?}: use NAME:overlay, NAME:underlay:POOL or NAME:multinic:POOL"
            )))
        }
    };
    Ok(knit_lab::topology::Pod {
        name: parts[0].to_string(),
        node: node.to_string(),
        kind,
        pool: parts.get(2).map(|p| p.to_string()),
    })
}

fn add_node(name: &str, run_dir: &Path, node: &str, ip: ipnet::IpNet, pods: &[String]) -> Result<(), LabError> {
    let mut lab = Lab::open(name, run_dir)?;
    let pods = pods.iter().map(|p| parse_pod(p, node)).collect::<Result<Vec<_>, _>>()?;
    let t0 = Instant::now();
    let n = pods.len();
    let exes = knit_lab::membership::Executables { knit: knit_exe(), serve: own_exe()? };
    lab.add_node(knit_lab::topology::Node { name: node.to_string(), ip }, pods, &exes, &cni_path())?;
    eprintln!(
        "knit lab: {node} joined {name} with {n} pods; every node and the ToR route to it ({:.1}s)",
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

fn remove_node(name: &str, run_dir: &Path, node: &str) -> Result<(), LabError> {
    let mut lab = Lab::open(name, run_dir)?;
    let t0 = Instant::now();
    lab.remove_node(node)?;
    eprintln!("knit lab: {node} left {name}; its routes are withdrawn everywhere ({:.1}s)", t0.elapsed().as_secs_f64());
    Ok(())
}

/// The matrix against a lab that is up.
fn matrix_existing(build: &BuildArgs, json: bool, name: &str) -> ExitCode {
    let t0 = Instant::now();
    let lab = match Lab::open(name, &build.run_dir) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("knit lab matrix: {e}");
            return ExitCode::from(2);
        }
    };
    let jobs = matrix::plan_cells(&lab.state);
    let cells = match matrix::run(&lab, jobs, &|_| {}) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("knit lab matrix: {e}");
            return ExitCode::from(2);
        }
    };
    if print_cells(&cells, json, t0.elapsed().as_secs_f64(), serde_json::json!({"lab": name}), &format!("lab {name}")) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
