//! `knit`: the command-line tool that goes onto every node. Each subcommand lives in its own
//! module; this file only parses arguments and maps failures to exit codes. The lab and the
//! benchmarks are not linked in: `knit lab …` and `knit bench …` execute the developer binary
//! `knit-lab` ([`devtool`]).

mod cluster_cmd;
mod cni_cmd;
mod devtool;
mod install_cmd;
mod ipam_cmd;
mod node_cmd;
mod pipe;
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
    /// Benchmarks against the reference plugins, as ratios measured in one run (runs
    /// `knit-lab bench`, the developer binary).
    #[command(disable_help_flag = true)]
    Bench {
        /// Arguments of `knit-lab bench` (`knit bench --help` shows them).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// A multi-node cluster in network namespaces, and its connectivity matrix (runs
    /// `knit-lab lab`, the developer binary).
    #[command(disable_help_flag = true)]
    Lab {
        /// Arguments of `knit-lab lab` (`knit lab --help` shows them).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// A packet's forward and reply path hop by hop, with the verdict (a lab, an inventory's
    /// namespaces, or this machine).
    Trace(trace_cmd::TraceCmd),
    /// Problems of a lab's or an inventory's nodes, or of this machine (INVALID drop, rp_filter,
    /// table 500, ...).
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
    pipe::exit_quietly_on_closed_stdout();
    init_logging();
    let cli = Cli::parse();
    match cli.command {
        Cmd::Cni(c) => cni_cmd::run(c),
        Cmd::Node(c) => node_cmd::run(c),
        Cmd::Cluster(c) => cluster_cmd::run(c),
        Cmd::Ipam(c) => ipam_cmd::run(c),
        Cmd::Bench { args } => devtool::run("bench", &args),
        Cmd::Lab { args } => devtool::run("lab", &args),
        Cmd::Trace(c) => trace_cmd::run(c),
        Cmd::Doctor(c) => trace_cmd::run_doctor(c),
        Cmd::Install(c) => install_cmd::run(c),
    }
}
