//! knit-coordinator: a chained CNI plugin that makes underlay (macvlan) and multi-NIC pods
//! reach overlay pods, Services, their node and the outside (DESIGN.md section 4, seeds
//! spiderpool-multi-cni-coexist.*).
//!
//! - [`config`]: Spiderpool's fields and defaults, validated;
//! - [`plan`]: the routes, rules, veth and firewall rules to install, as plain data;
//! - [`apply`]: ADD/DEL/CHECK against the kernel through `knit-host`;
//! - [`underlay`]: the table-500 record of the underlay pod IPs this node wires, which the
//!   node agent shares with the other nodes (the cross-CNI fix).

pub mod apply;
pub mod config;
pub mod plan;
pub mod underlay;
