//! knit-lab: a multi-node cluster in network namespaces, and the matrix that proves its paths.
//!
//! - [`topology`]: the lab's TOML topology format (the default lab is embedded) and its validation;
//! - [`plan`]: names and CNI configuration of a lab, as plain data;
//! - [`build`]: building a lab (namespaces, links, pods through the real CNI path, kube-proxy
//!   rules, echo servers, BIRD, etcd and node agents), one module per concern, and tearing it
//!   down by name;
//! - [`state`]: what a running lab is, saved for `knit lab exec/status/down`;
//! - [`inventory`]: what is where in a running lab, saved for `knit trace --lab`;
//! - [`matrix`]: the connectivity matrix (cells, parallel probes, the seeds' table);
//! - [`kubeproxy`]: kube-proxy (iptables mode) rules for the lab's Services, as `iptables-restore` text;
//! - [`serve`]: the pods' TCP/UDP echo server and the probes the matrix runs.

pub mod build;
pub mod error;
pub mod inventory;
pub mod kubeproxy;
pub mod matrix;
pub mod membership;
pub mod plan;
pub mod serve;
pub mod state;
pub mod topology;

pub use build::{down, Datastore, Lab, Options, Serve};
pub use error::{LabError, Result};
