//! knit-bench: the benchmark suites behind `knit-lab bench` (and `knit bench`, which runs it;
//! DESIGN.md section 8, issue 8).
//!
//! Timings on shared machines drift from run to run, so every figure is measured against its
//! reference **in the same run**, the two alternating sample by sample, and is reported as a
//! median, a p99 and a knit/reference ratio.
//!
//! - [`Suite::CniAddDel`] ([`cni`]): N pods ADD then DEL in a throwaway node namespace:
//!   knit-routed + knit-ipam against Debian's ptp + host-local, and macvlan + knit-coordinator
//!   against macvlan alone; plus the floors (kernel veth deletion, starting a process).
//! - [`Suite::Ipam`] ([`ipam`]): 1000 allocations and releases, sequential and with 8 concurrent
//!   processes, knit-ipam (local store) against host-local; and the in-process allocation core.
//! - [`Suite::Matrix`], [`Suite::Datapath`] ([`lab`]): the default lab's matrix with setup,
//!   cells and teardown timed apart; iperf3 throughput and echo round trips on a lab.
//!
//! Plugins run as real processes, the way a runtime runs them: CNI_* variables and the network
//! configuration on stdin, from a thread that entered the node namespace (so the plugins run
//! in it, as they would under containerd). Only the plugin chain is timed; creating pod
//! namespaces and building configurations is outside the timed region. Everything lives in
//! namespaces whose names carry the run's pid, removed at the end, on errors, and on
//! Ctrl-C/SIGTERM ([`signals`]); the root namespace is never touched.

mod chain;
pub mod cni;
pub mod coordinator_scale;
mod etcd;
pub mod ipam;
pub mod lab;
mod report;
pub mod signals;
pub mod stats;
mod workspace;

use std::path::PathBuf;

pub use chain::PluginDirs;
pub use report::{Report, Row};

/// The benchmark suites.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suite {
    /// CNI ADD/DEL latency against the reference plugins.
    CniAddDel,
    /// IPAM allocation throughput against host-local.
    Ipam,
    /// The default lab matrix (needs the lab).
    Matrix,
    /// Datapath throughput and latency (needs the lab).
    Datapath,
}

impl Suite {
    /// The name used on the command line and in the JSON output.
    pub fn name(self) -> &'static str {
        match self {
            Suite::CniAddDel => "cni-add-del",
            Suite::Ipam => "ipam",
            Suite::Matrix => "matrix",
            Suite::Datapath => "datapath",
        }
    }

    /// The default sample count of the suite.
    pub fn default_n(self) -> usize {
        match self {
            Suite::CniAddDel => 200,
            Suite::Ipam => 1000,
            Suite::Matrix => 3,
            Suite::Datapath => 5,
        }
    }
}

/// How a suite runs.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Samples (pods for cni-add-del, allocations for ipam); the suite's default when `None`.
    pub n: Option<usize>,
    /// Where knit's plugins are; by default the directory of the running executable, then
    /// `$CNI_PATH`, then `/usr/lib/cni` (see [`PluginDirs::discover`]).
    pub plugin_dirs: Option<PluginDirs>,
    /// Progress lines on stderr.
    pub progress: bool,
}

impl Options {
    fn n(&self, suite: Suite) -> usize {
        self.n.unwrap_or_else(|| suite.default_n())
    }

    fn dirs(&self) -> PluginDirs {
        self.plugin_dirs.clone().unwrap_or_else(PluginDirs::discover)
    }

    fn progress(&self, msg: impl AsRef<str>) {
        if self.progress {
            eprintln!("knit bench: {}", msg.as_ref());
        }
    }
}

/// Why a suite could not run or finish.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The suite exists but cannot run yet (matrix and datapath need the lab).
    #[error("suite {suite} is not yet available: {why}")]
    NotAvailable { suite: &'static str, why: String },
    /// A plugin binary is missing.
    #[error("plugin {name:?} not found in [{searched}]: {hint}")]
    MissingPlugin { name: String, searched: String, hint: &'static str },
    /// Bad options.
    #[error("invalid option: {0}")]
    Invalid(String),
    /// Building the namespaces or files the suite needs failed.
    #[error("set-up: {0}")]
    Setup(String),
    /// A plugin call failed.
    #[error("{what}: {err}")]
    Plugin { what: String, err: knit_cni::CniError },
    /// A check on the results failed (e.g. duplicate addresses).
    #[error("check failed: {0}")]
    Check(String),
    /// Ctrl-C or SIGTERM: the run stopped and cleaned up.
    #[error("interrupted")]
    Interrupted,
}

impl From<knit_host::Error> for Error {
    fn from(e: knit_host::Error) -> Error {
        Error::Setup(e.to_string())
    }
}

/// Shorthand for this crate's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Runs one suite. Installs the Ctrl-C/SIGTERM handler for the duration of the run.
pub fn run(suite: Suite, opts: &Options) -> Result<Report> {
    let n = opts.n(suite);
    if n == 0 {
        return Err(Error::Invalid("--n must be at least 1".into()));
    }
    let suite_fn: fn(usize, &PluginDirs, &Options) -> Result<Report> = match suite {
        Suite::CniAddDel => cni::run,
        Suite::Ipam => ipam::run,
        Suite::Matrix => lab::run_matrix,
        Suite::Datapath => lab::run_datapath,
    };
    let _signals = signals::Guard::install();
    suite_fn(n, &opts.dirs(), opts)
}

/// The directory of the running executable, if it can be found.
pub fn exe_dir() -> Option<PathBuf> {
    std::env::current_exe().ok().and_then(|p| p.parent().map(|d| d.to_path_buf()))
}
