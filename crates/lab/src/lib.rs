//! knit-lab: the building blocks of `knit lab`.
//!
//! - [`topology`]: the lab's TOML topology format (the default lab is embedded) and its validation;
//! - [`kubeproxy`]: kube-proxy (iptables mode) rules for the lab's Services, as `iptables-restore` text;
//! - [`serve`]: the pods' TCP/UDP echo server and the probes the matrix runs.

pub mod kubeproxy;
pub mod serve;
pub mod topology;
