//! knit-routed: the Calico-style routed veth pod (DESIGN.md section 3, seed
//! calico-pod-to-pod-path).
//!
//! - [`config`]: the plugin's network configuration;
//! - [`plan`]: the desired state as plain data (names, addresses, routes, sysctls), pure;
//! - [`apply`]: ADD/DEL/CHECK against the kernel through `knit-host`.

pub mod apply;
pub mod config;
pub mod ipam;
pub mod plan;
