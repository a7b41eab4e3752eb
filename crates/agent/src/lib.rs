//! knit-agent: pieces of the knit node agent.
//!
//! - [`bird`]: BIRD 2 configurations for nodes and the ToR (pod blocks, underlay
//!   /32s between nodes, the Service CIDR to the ToR) and a small runner.

pub mod bird;
