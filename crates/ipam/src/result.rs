//! What an allocation returns: enough for a CNI IPAM result.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;
use serde_json::{json, Value};

use crate::config::Route;

/// One address handed out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IpConfig {
    /// The pool it came from.
    pub pool: String,
    /// The address with the pool's prefix length.
    pub address: IpNet,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
}

/// The IPAM result: addresses and the routes of their pools.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct IpamResult {
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
}

impl IpamResult {
    /// The CNI result object `{cniVersion?, ips: [{address, gateway}], routes: [{dst, gw}]}`.
    pub fn to_cni_json(&self, cni_version: Option<&str>) -> Value {
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut o = json!({"address": ip.address.to_string()});
                if let Some(g) = ip.gateway {
                    o["gateway"] = json!(g.to_string());
                }
                o
            })
            .collect();
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|r| {
                let mut o = json!({"dst": r.dst.to_string()});
                if let Some(g) = r.gw {
                    o["gw"] = json!(g.to_string());
                }
                o
            })
            .collect();
        let mut out = json!({});
        if let Some(v) = cni_version {
            out["cniVersion"] = json!(v);
        }
        out["ips"] = Value::Array(ips);
        if !routes.is_empty() {
            out["routes"] = Value::Array(routes);
        }
        out
    }

    /// The addresses alone.
    pub fn addrs(&self) -> Vec<IpAddr> {
        self.ips.iter().map(|i| i.address.addr()).collect()
    }
}
