//! `knit-lab`: the developer binary. It holds what a node never needs, the lab of network
//! namespaces (`knit-lab lab …`) and the benchmarks (`knit-lab bench …`), so that the `knit`
//! binary installed on every node links neither. `knit lab …` and `knit bench …` execute this
//! binary (found next to `knit`, then on PATH).

mod bench_cmd;
mod lab_cmd;
mod pipe;
mod signals;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "knit-lab",
    version,
    about = "knit's developer tools: the lab of network namespaces and the benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// A multi-node cluster in network namespaces, and its connectivity matrix.
    Lab(lab_cmd::LabCmd),
    /// Benchmarks against the reference plugins, as ratios measured in one run.
    Bench(bench_cmd::BenchCmd),
}

fn init_logging() {
    // Logs go to stderr only: stdout carries tables and JSON.
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
        Cmd::Lab(c) => lab_cmd::run(c),
        Cmd::Bench(c) => bench_cmd::run(c),
    }
}
