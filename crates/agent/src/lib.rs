//! knit-agent: the knit node agent.
//!
//! - [`bird`]: BIRD 2 configurations for nodes and the ToR (pod blocks, underlay
//!   /32s between nodes, the Service CIDR to the ToR) and a small runner;
//! - [`registry`]: the node registry and cluster settings in etcd;
//! - [`node`]: `knit node run`, the reconcile loop of cluster mode.

pub mod bird;
pub mod node;
pub mod registry;
