//! Spec 1.0.0/1.1.0 wire types: network configuration lists, plugin configurations, results.
//! Unknown keys are kept in `extra` and serialised back unchanged. Results serialise like the Go
//! library (camelCase, empty and absent fields omitted).

use std::net::IpAddr;

use ipnet::IpNet;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{code, CniError};
use crate::version::{self, Version};

fn is_false(b: &bool) -> bool {
    !*b
}

/// A network configuration list (`*.conflist`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConfList {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cni_version: String,
    /// 1.1: the versions this list is valid for; the runtime picks the highest it supports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cni_versions: Vec<String>,
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub disable_check: bool,
    #[serde(rename = "disableGC", default, skip_serializing_if = "is_false")]
    pub disable_gc: bool,
    /// Plugin objects, kept as raw maps so that everything passes through to the plugin.
    #[serde(default)]
    pub plugins: Vec<Map<String, Value>>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl NetConfList {
    /// Parses a conflist (JSON syntax → code 6, shape → code 7) and checks its name and plugins.
    pub fn from_bytes(bytes: &[u8]) -> Result<NetConfList, CniError> {
        let list: NetConfList = parse_conf(bytes)?;
        crate::validate::network_name(&list.name)?;
        if list.plugins.is_empty() {
            return Err(CniError::invalid_config(format!("network {:?}: no plugins in list", list.name)));
        }
        for (i, p) in list.plugins.iter().enumerate() {
            match p.get("type") {
                Some(Value::String(t)) if !t.is_empty() => {}
                _ => {
                    return Err(CniError::invalid_config(format!(
                        "network {:?}: plugin {i} has no \"type\"",
                        list.name
                    )))
                }
            }
        }
        Ok(list)
    }

    /// The version the runtime will use: the highest supported of `cniVersions` when given
    /// (1.1), else `cniVersion`. Code 1 when none is supported.
    pub fn negotiated_version(&self, supported: &[&str]) -> Result<String, CniError> {
        if !self.cni_versions.is_empty() {
            return version::highest_supported(self.cni_versions.iter().map(String::as_str), supported).ok_or_else(
                || {
                    CniError::incompatible_version(format!(
                        "network {:?}: none of cniVersions [{}] is supported",
                        self.name,
                        self.cni_versions.join(" ")
                    ))
                    .with_details(format!("supported: [{}]", supported.join(" ")))
                },
            );
        }
        let v = if self.cni_version.is_empty() { version::IMPLICIT_VERSION } else { &self.cni_version };
        if supported.contains(&v) {
            Ok(v.to_string())
        } else {
            Err(version::incompatible(v, supported))
        }
    }
}

/// The `ipam` object: `type` plus whatever the IPAM plugin defines.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IpamConf {
    #[serde(rename = "type", default, skip_serializing_if = "String::is_empty")]
    pub plugin_type: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// DNS settings, in configs and results.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub domain: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// One plugin's configuration as it arrives on stdin. Plugins parse their own struct with
/// [`parse_conf`]; unknown keys land in `extra` and serialise back unchanged.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PluginConf {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cni_version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(rename = "type", default, skip_serializing_if = "String::is_empty")]
    pub plugin_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipam: Option<IpamConf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Dns>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_config: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Map<String, Value>>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl PluginConf {
    /// The config's version, or the implicit "0.1.0" when absent.
    pub fn version(&self) -> &str {
        if self.cni_version.is_empty() {
            version::IMPLICIT_VERSION
        } else {
            &self.cni_version
        }
    }

    /// The parsed `prevResult`, if any (a malformed one is a code 7 error).
    pub fn prev_result(&self) -> Result<Option<CniResult>, CniError> {
        self.prev_result
            .as_ref()
            .map(|v| {
                CniResult::deserialize(v).map_err(|e| CniError::invalid_config(format!("invalid prevResult: {e}")))
            })
            .transpose()
    }

    /// The `ipam.type`, or a code 7 error when there is none.
    pub fn ipam_type(&self) -> Result<&str, CniError> {
        match &self.ipam {
            Some(ipam) if !ipam.plugin_type.is_empty() => Ok(&ipam.plugin_type),
            _ => Err(CniError::invalid_config("missing ipam.type")),
        }
    }
}

/// Parses a configuration from stdin bytes: JSON syntax errors are code 6, shape and type errors
/// are code 7 with the offending top-level field named in the message.
pub fn parse_conf<T: DeserializeOwned>(stdin: &[u8]) -> Result<T, CniError> {
    let value: Value =
        serde_json::from_slice(stdin).map_err(|e| CniError::decode(format!("error parsing configuration: {e}")))?;
    from_value_named(&value)
}

/// Deserialises `value`, naming the culprit field on failure (code 7).
pub fn from_value_named<T: DeserializeOwned>(value: &Value) -> Result<T, CniError> {
    let err = match T::deserialize(value) {
        Ok(t) => return Ok(t),
        Err(e) => e,
    };
    let msg = err.to_string();
    if msg.starts_with("missing field") {
        return Err(CniError::invalid_config(format!("invalid configuration: {msg}")));
    }
    // Find the top-level key whose removal makes the error go away (or turns it into "missing
    // field `key`"): that key holds a value of the wrong shape.
    if let Value::Object(map) = value {
        for key in map.keys() {
            let mut without = map.clone();
            without.remove(key);
            let blamed = match T::deserialize(&Value::Object(without)) {
                Ok(_) => true,
                Err(e2) => e2.to_string().starts_with(&format!("missing field `{key}`")),
            };
            if blamed {
                return Err(CniError::invalid_config(format!("invalid configuration: field {key:?}: {msg}")));
            }
        }
    }
    Err(CniError::invalid_config(format!("invalid configuration: {msg}")))
}

/// Serialises like Go's `json.MarshalIndent(v, "", "    ")`.
pub fn to_go_json<T: Serialize + ?Sized>(v: &T) -> Result<String, CniError> {
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    v.serialize(&mut ser).map_err(|e| CniError::new(code::DECODE, format!("encoding JSON: {e}")))?;
    String::from_utf8(out).map_err(|e| CniError::new(code::DECODE, format!("encoding JSON: {e}")))
}

/// An interface in a result. `sandbox` is the netns path for container interfaces, empty on
/// the host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// 1.1
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
    /// 1.1
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_path: Option<String>,
    /// 1.1
    #[serde(rename = "pciID", default, skip_serializing_if = "Option::is_none")]
    pub pci_id: Option<String>,
}

/// An address in a result. `interface` indexes `interfaces` (IPAM results omit it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<u32>,
    pub address: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
}

/// A route in a result or config. A route without `gw` uses the same-family gateway of `ips`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    /// 1.1
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// 1.1
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    /// 1.1
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    /// 1.1
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    /// 1.1
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u32>,
}

impl Route {
    pub fn new(dst: IpNet, gw: Option<IpAddr>) -> Route {
        Route { dst, gw, mtu: None, advmss: None, priority: None, table: None, scope: None }
    }
}

/// An ADD result (spec 1.0/1.1). Also parses 0.3/0.4 results (`ips[].version` is ignored).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniResult {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cni_version: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// Go always prints `"dns": {}`; `None` only when the input had no `dns`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Dns>,
}

impl CniResult {
    /// Parses a plugin's result output (code 6 on failure).
    pub fn from_slice(bytes: &[u8]) -> Result<CniResult, CniError> {
        serde_json::from_slice(bytes).map_err(|e| CniError::decode(format!("decoding result: {e}")))
    }

    /// Parses a result from a JSON value (code 6 on failure).
    pub fn from_value(value: &Value) -> Result<CniResult, CniError> {
        CniResult::deserialize(value).map_err(|e| CniError::decode(format!("decoding result: {e}")))
    }

    /// The result as JSON in `version`'s format: 1.1.0 as is; 1.0.0 without the 1.1-only
    /// fields; 0.3.x/0.4.0 with `ips[].version`. Unsupported versions are code 1.
    pub fn to_value(&self, version: &str) -> Result<Value, CniError> {
        if !version::is_supported(version) {
            return Err(version::incompatible(version, version::SUPPORTED_VERSIONS));
        }
        let v = Version::parse(version)?;
        let mut out = self.clone();
        out.cni_version = version.to_string();
        if v < (Version { major: 1, minor: 1, patch: 0 }) {
            for i in &mut out.interfaces {
                i.mtu = None;
                i.socket_path = None;
                i.pci_id = None;
            }
            for r in &mut out.routes {
                *r = Route::new(r.dst, r.gw);
            }
        }
        let mut value = serde_json::to_value(&out).map_err(|e| CniError::decode(format!("encoding result: {e}")))?;
        if v.major == 0 {
            if let Some(Value::Array(ips)) = value.get_mut("ips") {
                for (ip, cfg) in ips.iter_mut().zip(&self.ips) {
                    if let Value::Object(m) = ip {
                        let fam = if cfg.address.addr().is_ipv4() { "4" } else { "6" };
                        let mut with_version = Map::new();
                        with_version.insert("version".into(), Value::String(fam.into()));
                        with_version.extend(std::mem::take(m));
                        *m = with_version;
                    }
                }
            }
        }
        Ok(value)
    }

    /// The result as Go's skel prints it (four-space indented JSON) in `version`'s format.
    pub fn to_json_pretty(&self, version: &str) -> Result<String, CniError> {
        to_go_json(&self.to_value(version)?)
    }
}

/// A `{containerID, ifname}` pair, as sent in GC's `cni.dev/valid-attachments`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// The GC keys (the 1.1.0 tag misnamed it `cni.dev/attachments`; libcni sends both).
pub const VALID_ATTACHMENTS_KEY: &str = "cni.dev/valid-attachments";
pub const LEGACY_ATTACHMENTS_KEY: &str = "cni.dev/attachments";

impl PluginConf {
    /// GC's valid attachments, from either key (code 7 if malformed).
    pub fn valid_attachments(&self) -> Result<Vec<Attachment>, CniError> {
        let raw = self.extra.get(VALID_ATTACHMENTS_KEY).or_else(|| self.extra.get(LEGACY_ATTACHMENTS_KEY));
        match raw {
            None => Ok(Vec::new()),
            Some(v) => Vec::<Attachment>::deserialize(v)
                .map_err(|e| CniError::invalid_config(format!("invalid {VALID_ATTACHMENTS_KEY}: {e}"))),
        }
    }
}
