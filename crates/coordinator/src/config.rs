//! knit-coordinator's configuration. Field names and defaults are Spiderpool's coordinator's,
//! so a user can switch by changing `type` only (DESIGN.md section 4). Unknown fields are
//! ignored (a conflist carries other plugins' keys), with one warning each in the log
//! ([`warn_unknown_keys`]), naming the closest known key.
//!
//! CIDRs (`overlayPodCIDR`, `serviceCIDR`, `hijackCIDR`) come from the config; those absent
//! there are read from a node-local file the agent writes (`cidrFile`, default
//! `/var/lib/knit/coordinator.json`, same field names). ADD, DEL and CHECK never call a
//! control plane. Where the cluster CIDRs came from is kept ([`CidrSource`]): a mode that
//! needs them fails loudly when there are none (the plan decides which modes do).

use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use knit_cni::{CniError, PluginConf};
use serde::Deserialize;
use serde_json::Value;

pub const DEFAULT_CIDR_FILE: &str = "/var/lib/knit/coordinator.json";
pub const DEFAULT_HOST_RULE_TABLE: u32 = 500;
/// The pod's reply table: NodePort replies (underlay) or eth0's copied default (overlay).
pub const REPLY_TABLE: u32 = 100;
/// The first table for a NIC's own routes (net1 → 101, net2 → 102, …).
pub const FIRST_NIC_TABLE: u32 = 101;
/// The host rule's priority: stable, so `ip rule` output and tooling can rely on it.
pub const HOST_RULE_PRIORITY: u32 = 1000;
/// The pod's fwmark rule priority.
pub const MARK_RULE_PRIORITY: u32 = 1000;
/// Priority of the pod's `from <ip> lookup <table>` rules (Spiderpool leaves them to the kernel;
/// a fixed value keeps them stable across restarts and ahead of `main`).
pub const SOURCE_RULE_PRIORITY: u32 = 1100;
pub const REPLY_MARK: u32 = 0x1;

/// The configuration keys the coordinator knows: Spiderpool's coordinator's fields, knit's own
/// (`cidrFile`, `nodeIPs`), and Spiderpool's fields that knit ignores ([`IGNORED_KEYS`]).
pub const KNOWN_KEYS: &[&str] = &[
    "mode",
    "podDefaultCniNic",
    "tunePodRoutes",
    "podDefaultRouteNic",
    "overlayPodCIDR",
    "serviceCIDR",
    "hijackCIDR",
    "policyRoutes",
    "hostRuleTable",
    "podRPFilter",
    "txQueueLen",
    "podMACPrefix",
    "vethLinkAddress",
    "vethMTU",
    "logOptions",
    "cidrFile",
    "nodeIPs",
    "detectIPConflict",
    "detectGateway",
    "detectOptions",
    "hostRPFilter",
    "multusNicPrefix",
    "podCIDRType",
];

/// Spiderpool fields a migrated configuration may still carry, which knit-coordinator accepts
/// and ignores, and why.
pub const IGNORED_KEYS: &[(&str, &str)] = &[
    ("detectIPConflict", "conflict detection is an IPAM job (knit-ipam's detectIPConflict)"),
    ("detectGateway", "gateway detection is an IPAM job (knit-ipam's detectGateway)"),
    ("detectOptions", "detection is an IPAM job (knit-ipam)"),
    ("hostRPFilter", "Spiderpool removed it too: the node's rp_filter is left alone"),
    ("multusNicPrefix", "Spiderpool parses it and never uses it"),
    ("podCIDRType", "the cluster CIDRs come from the config or the agent's CIDR file"),
];

/// Logs one warning per key of the plugin configuration that the coordinator does not know
/// (naming the closest known key) and one note per Spiderpool key it ignores.
pub fn warn_unknown_keys(conf: &PluginConf) {
    let extra = Value::Object(conf.extra.clone());
    knit_cni::keys::warn_unknown("knit-coordinator config", &extra, KNOWN_KEYS);
    for (key, why) in IGNORED_KEYS {
        if conf.extra.contains_key(*key) {
            tracing::info!("knit-coordinator config: {key:?} is ignored: {why}");
        }
    }
}

/// Where the cluster CIDRs (overlay pods, Services) came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CidrSource {
    /// `overlayPodCIDR` or `serviceCIDR` is in the config (an empty list is a choice too).
    Config,
    /// From the node agent's CIDR file.
    File(PathBuf),
    /// Neither: the config has none and the file does not exist (yet).
    Missing(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Auto,
    Underlay,
    Overlay,
    Disabled,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PolicyRoute {
    pub dst: IpNet,
    pub gw: IpAddr,
}

/// The raw configuration as it arrives (every field optional, Spiderpool's names).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConf {
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    pod_default_cni_nic: Option<String>,
    #[serde(default)]
    tune_pod_routes: Option<bool>,
    #[serde(default)]
    pod_default_route_nic: Option<String>,
    #[serde(default, rename = "overlayPodCIDR")]
    overlay_pod_cidr: Option<Vec<String>>,
    #[serde(default, rename = "serviceCIDR")]
    service_cidr: Option<Vec<String>>,
    #[serde(default, rename = "hijackCIDR")]
    hijack_cidr: Option<Vec<String>>,
    #[serde(default)]
    policy_routes: Option<Vec<Value>>,
    #[serde(default)]
    host_rule_table: Option<i64>,
    #[serde(default, rename = "podRPFilter")]
    pod_rp_filter: Option<i64>,
    #[serde(default)]
    tx_queue_len: Option<i64>,
    #[serde(default, rename = "podMACPrefix")]
    pod_mac_prefix: Option<String>,
    #[serde(default)]
    veth_link_address: Option<String>,
    #[serde(default, rename = "vethMTU")]
    veth_mtu: Option<i64>,
    #[serde(default)]
    log_options: Option<Value>,
    /// knit: where the agent's CIDR file is.
    #[serde(default)]
    cidr_file: Option<PathBuf>,
    /// knit: the node IPs to use as the pod's gateway, instead of detecting them.
    #[serde(default, rename = "nodeIPs")]
    node_ips: Option<Vec<String>>,
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Conf {
    pub mode: Mode,
    pub pod_default_cni_nic: String,
    pub tune_pod_routes: bool,
    pub pod_default_route_nic: Option<String>,
    pub overlay_pod_cidr: Vec<IpNet>,
    pub service_cidr: Vec<IpNet>,
    pub hijack_cidr: Vec<IpNet>,
    pub policy_routes: Vec<PolicyRoute>,
    pub host_rule_table: u32,
    /// `None` leaves the pod's rp_filter alone (Spiderpool: a negative value).
    pub pod_rp_filter: Option<u8>,
    pub tx_queue_len: Option<u32>,
    pub pod_mac_prefix: Option<[u8; 2]>,
    pub veth_link_address: Option<IpNet>,
    pub veth_mtu: u32,
    pub node_ips: Vec<IpAddr>,
    /// Where `overlay_pod_cidr` and `service_cidr` came from.
    pub cidr_source: CidrSource,
}

fn bad(field: &str, msg: impl std::fmt::Display) -> CniError {
    CniError::invalid_config(format!("field \"{field}\": {msg}"))
}

/// Parses a CIDR or a bare IP (a bare IP becomes /32 or /128, as Spiderpool's webhook does),
/// and rejects non-unicast prefixes.
fn parse_cidr(field: &str, s: &str) -> Result<IpNet, CniError> {
    let net = match s.parse::<IpNet>() {
        Ok(n) => n,
        Err(_) => match s.parse::<IpAddr>() {
            Ok(ip) => IpNet::from(ip),
            Err(_) => return Err(bad(field, format!("{s:?} is not a CIDR"))),
        },
    };
    let a = net.network();
    let unicast = match a {
        IpAddr::V4(v4) => !(v4.is_multicast() || v4.is_broadcast() || (v4.is_unspecified() && net.prefix_len() != 0)),
        IpAddr::V6(v6) => !(v6.is_multicast() || (v6.is_unspecified() && net.prefix_len() != 0)),
    };
    if !unicast {
        return Err(bad(field, format!("{s:?} is not a unicast prefix")));
    }
    Ok(net.trunc())
}

fn parse_cidrs(field: &str, v: &[String]) -> Result<Vec<IpNet>, CniError> {
    v.iter().map(|s| parse_cidr(field, s)).collect()
}

/// The agent-written CIDR file (same field names as the config).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CidrFile {
    #[serde(default, rename = "overlayPodCIDR")]
    overlay_pod_cidr: Vec<String>,
    #[serde(default, rename = "serviceCIDR")]
    service_cidr: Vec<String>,
    #[serde(default, rename = "hijackCIDR")]
    hijack_cidr: Vec<String>,
}

impl Conf {
    /// Parses the plugin's stdin; every error is code 6 (JSON) or 7 naming the field.
    pub fn parse(stdin: &[u8]) -> Result<Conf, CniError> {
        let raw: RawConf = knit_cni::parse_conf(stdin)?;
        Conf::from_raw(raw)
    }

    /// The defaults alone (no CIDRs): what DEL cleans up with when the config it is given no
    /// longer validates, so that a bad config never makes a pod impossible to tear down.
    pub fn fallback() -> Conf {
        let raw = RawConf {
            overlay_pod_cidr: Some(Vec::new()),
            service_cidr: Some(Vec::new()),
            hijack_cidr: Some(Vec::new()),
            ..RawConf::default()
        };
        // Defaults always validate; the match keeps this free of panics all the same.
        match Conf::from_raw(raw) {
            Ok(c) => c,
            Err(_) => Conf {
                mode: Mode::Auto,
                pod_default_cni_nic: "eth0".into(),
                tune_pod_routes: true,
                pod_default_route_nic: None,
                overlay_pod_cidr: Vec::new(),
                service_cidr: Vec::new(),
                hijack_cidr: Vec::new(),
                policy_routes: Vec::new(),
                host_rule_table: DEFAULT_HOST_RULE_TABLE,
                pod_rp_filter: Some(0),
                tx_queue_len: None,
                pod_mac_prefix: None,
                veth_link_address: None,
                veth_mtu: 1500,
                node_ips: Vec::new(),
                cidr_source: CidrSource::Config,
            },
        }
    }

    /// Parses from an already decoded plugin configuration.
    pub fn from_plugin_conf(conf: &PluginConf) -> Result<Conf, CniError> {
        let v = serde_json::to_value(conf).map_err(|e| CniError::decode(e.to_string()))?;
        let raw: RawConf = knit_cni::types::from_value_named(&v)?;
        Conf::from_raw(raw)
    }

    fn from_raw(raw: RawConf) -> Result<Conf, CniError> {
        let mode = match raw.mode.as_deref().unwrap_or("auto") {
            "auto" | "" => Mode::Auto,
            "underlay" => Mode::Underlay,
            "overlay" => Mode::Overlay,
            "disabled" | "disable" => Mode::Disabled,
            other => return Err(bad("mode", format!("{other:?} is not one of auto, underlay, overlay, disabled"))),
        };
        let host_rule_table = match raw.host_rule_table {
            None => DEFAULT_HOST_RULE_TABLE,
            // 0 is unspec; 253-255 are the kernel's default/main/local tables.
            Some(t) if (1..=252).contains(&t) || (256..=i64::from(u32::MAX)).contains(&t) => t as u32,
            Some(t) => {
                return Err(bad(
                    "hostRuleTable",
                    format!("{t} is not a usable routing table (1-252 or 256-4294967295)"),
                ))
            }
        };
        let pod_rp_filter = match raw.pod_rp_filter {
            None => Some(0),
            Some(v) if v < 0 => None,
            Some(v @ 0..=2) => Some(v as u8),
            Some(v) => return Err(bad("podRPFilter", format!("{v} is not -1, 0, 1 or 2"))),
        };
        let tx_queue_len = match raw.tx_queue_len {
            None | Some(0) => None,
            Some(v) if v > 0 && v <= i64::from(u32::MAX) => Some(v as u32),
            Some(v) => return Err(bad("txQueueLen", format!("{v} is out of range"))),
        };
        let veth_mtu = match raw.veth_mtu {
            None => 1500,
            Some(v) if (68..=65535).contains(&v) => v as u32,
            Some(v) => return Err(bad("vethMTU", format!("{v} is out of range (68-65535)"))),
        };
        let pod_mac_prefix = match raw.pod_mac_prefix.as_deref() {
            None | Some("") => None,
            Some(s) => Some(parse_mac_prefix(s)?),
        };
        let veth_link_address = match raw.veth_link_address.as_deref() {
            None | Some("") => None,
            Some(s) => {
                let ip: IpAddr = s
                    .split('/')
                    .next()
                    .unwrap_or(s)
                    .parse()
                    .map_err(|_| bad("vethLinkAddress", format!("{s:?} is not an IP address")))?;
                match ip {
                    IpAddr::V4(v4) if v4.is_link_local() => Some(IpNet::from(ip)),
                    _ => return Err(bad("vethLinkAddress", format!("{s:?} is not an IPv4 link-local address"))),
                }
            }
        };
        let mut policy_routes = Vec::new();
        for (i, v) in raw.policy_routes.unwrap_or_default().iter().enumerate() {
            let field = format!("policyRoutes[{i}]");
            let pr: PolicyRoute = serde_json::from_value(v.clone()).map_err(|e| bad(&field, e))?;
            if pr.dst.addr().is_ipv4() != pr.gw.is_ipv4() {
                return Err(bad(&field, "dst and gw are of different families"));
            }
            policy_routes.push(PolicyRoute { dst: pr.dst.trunc(), gw: pr.gw });
        }

        // CIDRs: the config's, else the agent's file.
        let need_file = raw.overlay_pod_cidr.is_none() || raw.service_cidr.is_none() || raw.hijack_cidr.is_none();
        let path = raw.cidr_file.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_CIDR_FILE));
        let file = if need_file { read_cidr_file(&path)? } else { Some(CidrFile::default()) };
        let cidr_source = match &file {
            _ if raw.overlay_pod_cidr.is_some() || raw.service_cidr.is_some() => CidrSource::Config,
            Some(_) => CidrSource::File(path.clone()),
            None => CidrSource::Missing(path.clone()),
        };
        let file = file.unwrap_or_default();
        let overlay_pod_cidr =
            parse_cidrs("overlayPodCIDR", raw.overlay_pod_cidr.as_deref().unwrap_or(&file.overlay_pod_cidr))?;
        let service_cidr = parse_cidrs("serviceCIDR", raw.service_cidr.as_deref().unwrap_or(&file.service_cidr))?;
        let hijack_cidr = parse_cidrs("hijackCIDR", raw.hijack_cidr.as_deref().unwrap_or(&file.hijack_cidr))?;
        for (field, list) in
            [("overlayPodCIDR", &overlay_pod_cidr), ("serviceCIDR", &service_cidr), ("hijackCIDR", &hijack_cidr)]
        {
            if list.iter().any(|n| n.prefix_len() == 0) {
                return Err(bad(field, "a default route (/0) cannot be hijacked"));
            }
        }
        let node_ips = raw
            .node_ips
            .unwrap_or_default()
            .iter()
            .map(|s| s.parse::<IpAddr>().map_err(|_| bad("nodeIPs", format!("{s:?} is not an IP address"))))
            .collect::<Result<Vec<_>, _>>()?;
        let _ = raw.log_options;

        Ok(Conf {
            mode,
            pod_default_cni_nic: raw.pod_default_cni_nic.filter(|s| !s.is_empty()).unwrap_or_else(|| "eth0".into()),
            tune_pod_routes: raw.tune_pod_routes.unwrap_or(true),
            pod_default_route_nic: raw.pod_default_route_nic.filter(|s| !s.is_empty()),
            overlay_pod_cidr,
            service_cidr,
            hijack_cidr,
            policy_routes,
            host_rule_table,
            pod_rp_filter,
            tx_queue_len,
            pod_mac_prefix,
            veth_link_address,
            veth_mtu,
            node_ips,
            cidr_source,
        })
    }

    /// Every CIDR whose traffic goes through the node: overlay pods, Services, hijacked ranges.
    pub fn hijack_routes(&self) -> Vec<IpNet> {
        let mut out: Vec<IpNet> = Vec::new();
        for n in self.overlay_pod_cidr.iter().chain(&self.service_cidr).chain(&self.hijack_cidr) {
            if !out.contains(n) {
                out.push(*n);
            }
        }
        out
    }
}

/// The agent's CIDR file, `None` when it does not exist (yet): whether that matters depends on
/// the mode ([`CidrSource::Missing`]). A file that exists but cannot be read or parsed is a
/// configuration error.
fn read_cidr_file(path: &std::path::Path) -> Result<Option<CidrFile>, CniError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).map(Some).map_err(|e| bad("cidrFile", format!("{}: {e}", path.display())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(bad("cidrFile", format!("{}: {e}", path.display()))),
    }
}

fn parse_mac_prefix(s: &str) -> Result<[u8; 2], CniError> {
    let parts: Vec<&str> = s.split(':').collect();
    let err = || bad("podMACPrefix", format!("{s:?} is not two bytes like \"0a:1b\""));
    if parts.len() != 2 {
        return Err(err());
    }
    let b0 = u8::from_str_radix(parts[0], 16).map_err(|_| err())?;
    let b1 = u8::from_str_radix(parts[1], 16).map_err(|_| err())?;
    if b0 & 1 != 0 {
        return Err(bad("podMACPrefix", format!("{s:?} is a multicast prefix")));
    }
    Ok([b0, b1])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Conf, CniError> {
        Conf::parse(json.as_bytes())
    }

    #[test]
    fn defaults_are_spiderpools() {
        let c = parse(r#"{"cniVersion":"1.0.0","name":"n","type":"knit-coordinator","overlayPodCIDR":[],"serviceCIDR":[],"hijackCIDR":[]}"#).unwrap();
        assert_eq!(c.mode, Mode::Auto);
        assert_eq!(c.pod_default_cni_nic, "eth0");
        assert!(c.tune_pod_routes);
        assert_eq!(c.host_rule_table, 500);
        assert_eq!(c.pod_rp_filter, Some(0));
        assert_eq!(c.veth_mtu, 1500);
        assert_eq!(c.cidr_source, CidrSource::Config);
    }

    #[test]
    fn known_keys_cover_every_field_of_the_raw_config() {
        // Every field RawConf reads is a known key (a renamed field would otherwise warn).
        let all = serde_json::json!({
            "mode": "auto", "podDefaultCniNic": "eth0", "tunePodRoutes": true, "podDefaultRouteNic": "",
            "overlayPodCIDR": [], "serviceCIDR": [], "hijackCIDR": [], "policyRoutes": [], "hostRuleTable": 500,
            "podRPFilter": 0, "txQueueLen": 0, "podMACPrefix": "", "vethLinkAddress": "", "vethMTU": 1500,
            "logOptions": {}, "cidrFile": "/x", "nodeIPs": []
        });
        let map = all.as_object().unwrap();
        assert!(knit_cni::keys::unknown_keys(map, KNOWN_KEYS).is_empty());
        let typo = serde_json::json!({"vethMut": 1400, "podDefaultRouteNIC": "net1"});
        let u = knit_cni::keys::unknown_keys(typo.as_object().unwrap(), KNOWN_KEYS);
        assert_eq!(u[0].closest, Some("vethMTU"));
        assert_eq!(u[1].closest, Some("podDefaultRouteNic"));
        for (k, _) in IGNORED_KEYS {
            assert!(KNOWN_KEYS.contains(k), "{k}");
        }
    }

    #[test]
    fn bare_ips_become_host_prefixes() {
        let c = parse(
            r#"{"overlayPodCIDR":["10.233.64.0/18"],"serviceCIDR":["10.233.0.0/18"],"hijackCIDR":["192.0.2.9"]}"#,
        )
        .unwrap();
        assert_eq!(c.hijack_routes().len(), 3);
        assert_eq!(c.hijack_cidr[0].to_string(), "192.0.2.9/32");
    }

    #[test]
    fn bad_values_name_their_field() {
        for (json, field) in [
            (r#"{"mode":"sideways"}"#, "mode"),
            (r#"{"hostRuleTable":254,"serviceCIDR":[],"overlayPodCIDR":[],"hijackCIDR":[]}"#, "hostRuleTable"),
            (r#"{"hostRuleTable":0,"serviceCIDR":[],"overlayPodCIDR":[],"hijackCIDR":[]}"#, "hostRuleTable"),
            (r#"{"serviceCIDR":["224.0.0.0/4"],"overlayPodCIDR":[],"hijackCIDR":[]}"#, "serviceCIDR"),
            (r#"{"overlayPodCIDR":["10.0.0.0/33"],"serviceCIDR":[],"hijackCIDR":[]}"#, "overlayPodCIDR"),
            (r#"{"podRPFilter":3,"serviceCIDR":[],"overlayPodCIDR":[],"hijackCIDR":[]}"#, "podRPFilter"),
            (r#"{"podMACPrefix":"01:02","serviceCIDR":[],"overlayPodCIDR":[],"hijackCIDR":[]}"#, "podMACPrefix"),
            (r#"{"vethMTU":10,"serviceCIDR":[],"overlayPodCIDR":[],"hijackCIDR":[]}"#, "vethMTU"),
            (
                r#"{"vethLinkAddress":"10.0.0.1","serviceCIDR":[],"overlayPodCIDR":[],"hijackCIDR":[]}"#,
                "vethLinkAddress",
            ),
            (
                r#"{"policyRoutes":[{"dst":"10.0.0.0/8","gw":"fd00::1"}],"serviceCIDR":[],"overlayPodCIDR":[],"hijackCIDR":[]}"#,
                "policyRoutes[0]",
            ),
        ] {
            let e = parse(json).unwrap_err();
            assert_eq!(e.code, 7, "{json}");
            assert!(e.msg.contains(field), "{json}: {}", e.msg);
        }
    }

    #[test]
    fn wrong_types_are_code_7_and_bad_json_code_6() {
        assert_eq!(parse(r#"{"hostRuleTable":"x"}"#).unwrap_err().code, 7);
        assert_eq!(parse(r#"{"mode": "#).unwrap_err().code, 6);
    }

    #[test]
    fn cidrs_fall_back_to_the_agent_file() {
        let dir = std::env::temp_dir().join(format!("knit-coord-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("coordinator.json");
        std::fs::write(&f, r#"{"overlayPodCIDR":["10.233.64.0/18"],"serviceCIDR":["10.233.0.0/18"]}"#).unwrap();
        let c = parse(&format!(r#"{{"cidrFile":"{}","hijackCIDR":[]}}"#, f.display())).unwrap();
        assert_eq!(c.overlay_pod_cidr[0].to_string(), "10.233.64.0/18");
        assert_eq!(c.service_cidr[0].to_string(), "10.233.0.0/18");
        // The config wins over the file.
        let c = parse(&format!(r#"{{"cidrFile":"{}","serviceCIDR":["10.96.0.0/12"]}}"#, f.display())).unwrap();
        assert_eq!(c.service_cidr[0].to_string(), "10.96.0.0/12");
        assert_eq!(c.cidr_source, CidrSource::Config);
        let c = parse(&format!(r#"{{"cidrFile":"{}"}}"#, f.display())).unwrap();
        assert_eq!(c.cidr_source, CidrSource::File(f.clone()));
        // A missing file is not an error here: whether the mode needs the CIDRs decides.
        let c = parse(r#"{"cidrFile":"/nonexistent/knit.json"}"#).unwrap();
        assert_eq!(c.cidr_source, CidrSource::Missing("/nonexistent/knit.json".into()));
        assert!(c.hijack_routes().is_empty());
        // A file that is not JSON is a configuration error naming the field.
        std::fs::write(&f, "not json").unwrap();
        let e = parse(&format!(r#"{{"cidrFile":"{}"}}"#, f.display())).unwrap_err();
        assert!(e.code == 7 && e.msg.contains("cidrFile"), "{}", e.msg);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
