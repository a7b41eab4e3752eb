//! knit-cni: CNI 1.0/1.1 spec types ([`types`]), the plugin skeleton ([`skel`]), plugin execution
//! and IPAM delegation ([`delegate`]) and a libcni-like runtime ([`runtime`]).

pub mod delegate;
pub mod env;
pub mod error;
pub mod keys;
pub mod log;
pub mod runtime;
pub mod skel;
pub mod spans;
pub mod types;
pub mod validate;
pub mod version;

pub use error::{code, CniError};
pub use runtime::{parse_cni_args, Runtime, RuntimeArgs};
pub use skel::{CmdArgs, Command, Plugin};
pub use types::{
    parse_conf, Attachment, CniResult, Dns, Interface, IpConfig, IpamConf, NetConfList, PluginConf, Route,
};
pub use version::{CURRENT_VERSION, SUPPORTED_VERSIONS};
