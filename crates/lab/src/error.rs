//! The lab's one error type: every variant says which part of the lab failed.

use std::path::PathBuf;

/// Why building, running or tearing down a lab failed.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The topology file is invalid.
    #[error(transparent)]
    Topology(#[from] crate::topology::TopologyError),
    /// A kernel operation failed (namespace, link, address, route, sysctl, iptables).
    #[error("{what}: {source}")]
    Host {
        /// What the lab was doing.
        what: String,
        /// The host layer's error.
        #[source]
        source: knit_host::Error,
    },
    /// A CNI ADD (or DEL) of a pod failed.
    #[error("CNI {verb} of pod {pod} ({ifname}) on {node}: {msg}")]
    Cni {
        /// ADD or DEL.
        verb: &'static str,
        /// The pod.
        pod: String,
        /// The interface.
        ifname: String,
        /// The node.
        node: String,
        /// The CNI error, as the plugin said it.
        msg: String,
    },
    /// BIRD could not be configured or started, or BGP did not converge.
    #[error("BGP on {node}: {msg}")]
    Bgp {
        /// The node (or the fabric).
        node: String,
        /// What went wrong.
        msg: String,
    },
    /// knit-ipam could not be read.
    #[error("IPAM: {0}")]
    Ipam(String),
    /// A file of the lab could not be read or written.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A bad argument (lab name, node or pod that does not exist, ...).
    #[error("{0}")]
    Invalid(String),
    /// No lab of that name exists (neither its directory nor a namespace).
    #[error("no lab {name} ({})", if here.is_empty() { "no labs here".to_string() } else { format!("labs here: {}", here.join(", ")) })]
    NoLab {
        /// The name asked for.
        name: String,
        /// The labs that exist.
        here: Vec<String>,
    },
    /// Programs the lab runs are not installed.
    #[error("missing {}: {fix}", missing.join(", "))]
    Missing {
        /// The programs (or plugins) missing, each with the package that has it.
        missing: Vec<String>,
        /// What to do (`apt-get install …`, build knit's binaries).
        fix: String,
    },
    /// The lab was interrupted (Ctrl-C) while being built.
    #[error("interrupted")]
    Interrupted,
}

/// The lab's result type.
pub type Result<T> = std::result::Result<T, LabError>;

/// Wraps a host-layer error with what the lab was doing.
pub(crate) fn host(what: impl Into<String>) -> impl FnOnce(knit_host::Error) -> LabError {
    let what = what.into();
    move |source| LabError::Host { what, source }
}

/// Wraps an I/O error with the file it concerns.
pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> LabError {
    let path = path.into();
    move |source| LabError::Io { what, path, source }
}
