//! `knit bench <suite> [--n N] [--json]`: the benchmark suites of knit-bench (DESIGN.md
//! section 8). Tables go to stdout, progress to stderr; `--json` prints the report as JSON.

use std::process::ExitCode;

use clap::{Args, ValueEnum};
use knit_bench::{Options, Suite};

#[derive(Clone, Copy, ValueEnum)]
enum SuiteArg {
    /// N pods ADD then DEL: knit-routed + knit-ipam vs ptp + host-local, macvlan +
    /// knit-coordinator vs macvlan alone, with the veth-deletion and process-start floors.
    CniAddDel,
    /// N allocations and releases, sequential and 8 concurrent processes, knit-ipam vs
    /// host-local; the in-process allocation core.
    Ipam,
    /// The default lab matrix, N runs: setup, cells and teardown timed apart (target < 60 s).
    Matrix,
    /// iperf3 throughput (N runs per path) and echo round trips on the lab: coordinator-tuned
    /// macvlan vs bare macvlan, overlay across nodes, underlay to a ClusterIP.
    Datapath,
}

impl From<SuiteArg> for Suite {
    fn from(s: SuiteArg) -> Suite {
        match s {
            SuiteArg::CniAddDel => Suite::CniAddDel,
            SuiteArg::Ipam => Suite::Ipam,
            SuiteArg::Matrix => Suite::Matrix,
            SuiteArg::Datapath => Suite::Datapath,
        }
    }
}

#[derive(Args)]
pub struct BenchCmd {
    #[arg(value_enum)]
    suite: SuiteArg,
    /// Samples: pods for cni-add-del (default 200), allocations for ipam (default 1000), lab runs for
    /// matrix (default 3), iperf3 runs per path for datapath (default 5).
    #[arg(long)]
    n: Option<usize>,
    /// Print the report as JSON: {"suite":…,"results":[{"name":…,"median_ms":…,"p99_ms":…,"reference":…,"ratio":…}]}.
    #[arg(long)]
    json: bool,
    /// No progress lines on stderr.
    #[arg(long, short)]
    quiet: bool,
}

pub fn run(c: BenchCmd) -> ExitCode {
    let opts = Options { n: c.n, plugin_dirs: None, progress: !c.quiet };
    match knit_bench::run(c.suite.into(), &opts) {
        Ok(report) => {
            if c.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report.to_json()).unwrap_or_else(|_| report.to_json().to_string())
                );
            } else {
                print!("{}", report.to_table());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("knit bench: {e}");
            ExitCode::FAILURE
        }
    }
}
