//! Reading a CNI invocation into an [`AllocRequest`]: `CNI_ARGS` (`K8S_POD_NAMESPACE`,
//! `K8S_POD_NAME`, `IP=`) and the network config's `runtimeConfig.ips` / `args.cni.ips`.

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::state::{AllocRequest, PodRef};

/// What knit-ipam uses from `CNI_ARGS`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    pub pod: Option<PodRef>,
    /// `IP=a[,b]`.
    pub ips: Vec<IpAddr>,
    /// Every `K=V` pair, in order.
    pub pairs: Vec<(String, String)>,
}

/// An address that may carry a prefix length (`10.0.0.5/24`), which is ignored.
pub fn parse_ip_loose(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    s.parse::<IpNet>().ok().map(|n| n.addr())
}

/// Parse `CNI_ARGS` (`K=V;K=V`).
pub fn parse_cni_args(s: &str) -> Result<CniArgs> {
    let mut out = CniArgs::default();
    let mut ns = None;
    let mut name = None;
    for part in s.split(';') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let Some((k, v)) = part.split_once('=') else {
            return Err(Error::Args(format!("{part:?} is not KEY=VALUE")));
        };
        match k {
            "K8S_POD_NAMESPACE" if !v.is_empty() => ns = Some(v.to_string()),
            "K8S_POD_NAME" if !v.is_empty() => name = Some(v.to_string()),
            "IP" => {
                for ip in v.split(',').filter(|s| !s.trim().is_empty()) {
                    let ip =
                        parse_ip_loose(ip).ok_or_else(|| Error::Args(format!("IP={ip:?} is not an IP address")))?;
                    out.ips.push(ip);
                }
            }
            _ => {}
        }
        out.pairs.push((k.to_string(), v.to_string()));
    }
    if let (Some(namespace), Some(name)) = (ns, name) {
        out.pod = Some(PodRef { namespace, name });
    }
    Ok(out)
}

/// Requested addresses from a network config: `runtimeConfig.ips` and `args.cni.ips`.
pub fn netconf_ips(netconf: &Value) -> Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for (path, v) in [
        ("runtimeConfig.ips", netconf.get("runtimeConfig").and_then(|r| r.get("ips"))),
        ("args.cni.ips", netconf.get("args").and_then(|a| a.get("cni")).and_then(|c| c.get("ips"))),
    ] {
        let Some(v) = v else { continue };
        let Some(list) = v.as_array() else {
            return Err(Error::config(path, "expected a list of IP addresses"));
        };
        for (i, item) in list.iter().enumerate() {
            let ip = item
                .as_str()
                .and_then(parse_ip_loose)
                .ok_or_else(|| Error::config(format!("{path}[{i}]"), format!("{item} is not an IP address")))?;
            if !out.contains(&ip) {
                out.push(ip);
            }
        }
    }
    Ok(out)
}

impl AllocRequest {
    /// Build a request from a CNI invocation: `CNI_CONTAINERID`, `CNI_IFNAME`, `CNI_ARGS` and the
    /// parsed network config (for `runtimeConfig.ips`).
    pub fn from_cni(container_id: &str, ifname: &str, cni_args: Option<&str>, netconf: Option<&Value>) -> Result<Self> {
        let args = match cni_args {
            Some(s) => parse_cni_args(s)?,
            None => CniArgs::default(),
        };
        let mut requested = args.ips;
        if let Some(nc) = netconf {
            for ip in netconf_ips(nc)? {
                if !requested.contains(&ip) {
                    requested.push(ip);
                }
            }
        }
        Ok(AllocRequest {
            container_id: container_id.to_string(),
            ifname: ifname.to_string(),
            pod: args.pod,
            requested,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cni_args() {
        let a = parse_cni_args("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;IP=10.0.0.5/24,fd00::5")
            .unwrap();
        assert_eq!(a.pod, Some(PodRef::new("default", "web-0")));
        assert_eq!(a.ips, vec!["10.0.0.5".parse::<IpAddr>().unwrap(), "fd00::5".parse().unwrap()]);
        assert_eq!(parse_cni_args("IP=nope").unwrap_err().cni_code(), 4);
        assert_eq!(parse_cni_args("junk").unwrap_err().cni_code(), 4);
        assert_eq!(parse_cni_args("").unwrap(), CniArgs::default());
    }

    #[test]
    fn runtime_config_ips() {
        let nc: Value = serde_json::json!({"runtimeConfig": {"ips": ["10.0.0.7/24"]}, "args": {"cni": {"ips": ["10.0.0.7", "fd00::7"]}}});
        let r = AllocRequest::from_cni("c1", "eth0", Some("IP=10.0.0.7"), Some(&nc)).unwrap();
        assert_eq!(r.requested.len(), 2);
        let bad: Value = serde_json::json!({"runtimeConfig": {"ips": [5]}});
        let e = netconf_ips(&bad).unwrap_err();
        assert_eq!(e.cni_code(), 7);
        assert_eq!(e.field(), Some("runtimeConfig.ips[0]"));
    }
}
