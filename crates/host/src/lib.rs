//! knit-host: the only knit crate that changes kernel state.
//!
//! - [`netns`]: open/create/delete network namespaces and run code inside them
//!   (always on a dedicated thread, never by switching the caller's thread);
//! - [`Handle`]: a NETLINK_ROUTE socket bound to one namespace;
//! - [`link`], [`addr`], [`route`], [`rule`], [`neigh`]: kernel objects as plain data;
//! - [`sysctl`], [`firewall`]: per-namespace knobs and iptables/nftables writers;
//! - [`nft`]: nf_tables tables, chains and rules over netlink, written in one transaction;
//! - [`guard`], [`testing`]: keep tests out of the root namespace.

#![warn(missing_docs)]

pub mod addr;
pub mod arp;
mod error;
pub mod firewall;
pub mod guard;
mod handle;
pub mod inspect;
pub mod link;
pub mod neigh;
pub mod netns;
pub mod nft;
pub mod route;
pub mod rule;
pub mod sysctl;
pub mod testing;
mod types;

pub use error::{Error, Result};
pub use handle::Handle;
pub use netns::{Netns, NsId};
pub use types::{Family, Mac, Scope};

pub use ipnet::IpNet;
