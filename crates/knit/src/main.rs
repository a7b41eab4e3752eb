//! `knit`: the command-line tool. Each subcommand lives in its own module; this file only
//! parses arguments and maps failures to exit codes.

mod bench_cmd;
mod cluster_cmd;
mod cni_cmd;
mod install_cmd;
mod ipam_cmd;
mod lab_cmd;
mod node_cmd;
mod signals;
mod trace_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "knit", version, about = "Multi-CNI pod networking: runtime, IPAM, node agent")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a CNI conflist against a network namespace, as containerd does.
    Cni(cni_cmd::CniCmd),
    /// Inspect knit-ipam's embedded store.
    Ipam(ipam_cmd::IpamCmd),
    /// Cluster-wide settings in etcd (cluster mode).
    Cluster(cluster_cmd::ClusterCmd),
    /// Node-agent helpers.
    Node(node_cmd::NodeCmd),
    /// Benchmarks against the reference plugins, as ratios measured in one run.
    Bench(bench_cmd::BenchCmd),
    /// A multi-node cluster in network namespaces, and its connectivity matrix.
    Lab(lab_cmd::LabCmd),
    /// A packet's forward and reply path hop by hop, with the verdict (a lab, or this machine).
    Trace(trace_cmd::TraceCmd),
    /// Problems of a lab's nodes or of this machine (INVALID drop, rp_filter, table 500, ...).
    Doctor(trace_cmd::DoctorCmd),
    /// Install knit's binaries and a default conflist on a node (the DaemonSet's init container).
    Install(install_cmd::InstallCmd),
}

fn init_logging() {
    // Logs go to stderr only: stdout carries results and CNI errors as JSON.
    let filter = tracing_subscriber::EnvFilter::try_from_env("KNIT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    match cli.command {
        Cmd::Cni(c) => cni_cmd::run(c),
        Cmd::Node(c) => node_cmd::run(c),
        Cmd::Cluster(c) => cluster_cmd::run(c),
        Cmd::Ipam(c) => ipam_cmd::run(c),
        Cmd::Bench(c) => bench_cmd::run(c),
        Cmd::Lab(c) => lab_cmd::run(c),
        Cmd::Trace(c) => trace_cmd::run(c),
        Cmd::Doctor(c) => trace_cmd::run_doctor(c),
        Cmd::Install(c) => install_cmd::run(c),
    }
}
