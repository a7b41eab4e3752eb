//! knit-coordinator: a chained CNI plugin that makes underlay (macvlan) and multi-NIC pods
//! reach overlay pods, Services, their node and the outside (DESIGN.md section 4, seeds
//! spiderpool-multi-cni-coexist.*).
//!
//! - [`config`]: Spiderpool's fields and defaults, validated;
//! - [`plan`]: every decision, as plain data: what ADD installs, what CHECK verifies, what DEL
//!   removes, from the config, prevResult and a snapshot of a few kernel facts;
//! - [`apply`]: reads the facts, executes the plans through `knit-host`, rolls back;
//! - [`error`]: every failure's CNI error, and the teardown collector;
//! - [`underlay`]: the table-500 record of the underlay pod IPs this node wires, which the
//!   node agent shares with the other nodes (the cross-CNI fix).

pub mod apply;
pub mod config;
pub mod error;
pub mod plan;
pub mod underlay;
