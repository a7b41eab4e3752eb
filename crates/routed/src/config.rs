//! knit-routed's configuration: `mtu`, `nodename` and `ipam` (delegated through the CNI IPAM
//! protocol, so Debian's host-local works as well as knit-ipam).

use knit_cni::{CniError, IpamConf};
use serde::Deserialize;

/// The plugin object as it arrives on stdin (unknown keys are ignored here; the runtime keeps
/// them in the conflist).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoutedConf {
    #[serde(default)]
    pub cni_version: String,
    /// MTU of both veth ends; the kernel default (1500) when absent or 0.
    #[serde(default)]
    pub mtu: Option<u32>,
    /// The node's name; informational (IPAM plugins have their own `node`).
    #[serde(default)]
    pub nodename: Option<String>,
    #[serde(default)]
    pub ipam: Option<IpamConf>,
}

impl RoutedConf {
    /// Parses and validates; every error is a CNI error naming the field.
    pub fn parse(stdin: &[u8]) -> Result<RoutedConf, CniError> {
        let conf: RoutedConf = knit_cni::parse_conf(stdin)?;
        conf.validate()?;
        Ok(conf)
    }

    pub fn validate(&self) -> Result<(), CniError> {
        if let Some(mtu) = self.mtu {
            if mtu != 0 && !(68..=65535).contains(&mtu) {
                return Err(CniError::invalid_config(format!(
                    "field \"mtu\": {mtu} is out of range (68..65535, or 0 for the default)"
                )));
            }
        }
        match &self.ipam {
            Some(ipam) if !ipam.plugin_type.is_empty() => Ok(()),
            _ => Err(CniError::invalid_config("field \"ipam.type\" is required: knit-routed delegates addressing")),
        }
    }

    /// The MTU to set, if any.
    pub fn mtu(&self) -> Option<u32> {
        self.mtu.filter(|m| *m != 0)
    }
}
