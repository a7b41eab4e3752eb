//! Which mode an attachment runs in, and which routing table a NIC gets.

use knit_cni::CniError;

use crate::config::{Conf, Mode, FIRST_NIC_TABLE, REPLY_TABLE};
use crate::error;

/// The pod side of the coordinator's veth pair.
pub const POD_VETH: &str = "veth0";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolvedMode {
    /// Underlay; `first` is true for the pod's first NIC (the one that gets veth0).
    Underlay {
        first: bool,
    },
    Overlay,
}

/// Mode auto: ifname eth0 → underlay; else veth0 present → underlay; else overlay. `None` is
/// mode disabled (prevResult passes through).
pub fn resolve_mode(conf: &Conf, ifname: &str, pod_links: &[&str]) -> Result<Option<ResolvedMode>, CniError> {
    let has_veth0 = pod_links.contains(&POD_VETH);
    let first_nic = ifname == conf.pod_default_cni_nic;
    Ok(match conf.mode {
        Mode::Disabled => None,
        Mode::Auto | Mode::Underlay if first_nic => Some(ResolvedMode::Underlay { first: true }),
        Mode::Auto | Mode::Underlay if has_veth0 => Some(ResolvedMode::Underlay { first: false }),
        Mode::Auto => Some(ResolvedMode::Overlay),
        Mode::Underlay => {
            return Err(error::bad_input(format!(
                "mode underlay: {ifname} is not the first NIC ({}) and the pod has no {POD_VETH}",
                conf.pod_default_cni_nic
            )))
        }
        Mode::Overlay if first_nic || has_veth0 => {
            return Err(error::bad_input(format!(
                "mode overlay: {ifname} must be a secondary NIC beside an overlay {} without {POD_VETH}",
                conf.pod_default_cni_nic
            )))
        }
        Mode::Overlay => Some(ResolvedMode::Overlay),
    })
}

/// True when the config and interface alone decide underlay mode for the pod's first NIC (no
/// facts needed), as [`resolve_mode`] does.
pub fn underlay_first(conf: &Conf, ifname: &str) -> bool {
    matches!(conf.mode, Mode::Auto | Mode::Underlay) && ifname == conf.pod_default_cni_nic
}

/// The table for a secondary NIC: `netN` → 100 + N, else the first table from 101 not used by
/// another NIC's rules. Stable across restarts, unlike counting links.
pub fn nic_table(ifname: &str, used: &[u32]) -> u32 {
    if let Some(n) = ifname.strip_prefix("net").and_then(|n| n.parse::<u32>().ok()) {
        if (1..=150).contains(&n) {
            return REPLY_TABLE + n;
        }
    }
    (FIRST_NIC_TABLE..).find(|t| !used.contains(t)).unwrap_or(FIRST_NIC_TABLE)
}

/// Whether the attachment installs routes for the cluster CIDRs that its pod cannot do without:
/// an underlay first NIC (the pod's only way to overlay pods and Services is veth0), and an
/// overlay-mode NIC that takes the default route (`podDefaultRouteNic`), which leaves eth0 only
/// the cluster routes. An overlay-mode NIC beside eth0's default, and further underlay NICs
/// (veth0 already has the routes), do not need them; nor does `tunePodRoutes: false`.
pub fn needs_cluster_cidrs(conf: &Conf, mode: ResolvedMode, ifname: &str) -> bool {
    conf.tune_pod_routes
        && match mode {
            ResolvedMode::Underlay { first } => first,
            ResolvedMode::Overlay => conf.pod_default_route_nic.as_deref() == Some(ifname),
        }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(mode: Mode) -> Conf {
        let mut c = Conf::fallback();
        c.mode = mode;
        c
    }

    #[test]
    fn auto_mode() {
        let c = conf(Mode::Auto);
        assert_eq!(resolve_mode(&c, "eth0", &[]).unwrap(), Some(ResolvedMode::Underlay { first: true }));
        // veth0 left by ADD does not change the first NIC's mode (CHECK and DEL see it).
        assert_eq!(resolve_mode(&c, "eth0", &["veth0"]).unwrap(), Some(ResolvedMode::Underlay { first: true }));
        assert_eq!(
            resolve_mode(&c, "net1", &["eth0", "veth0"]).unwrap(),
            Some(ResolvedMode::Underlay { first: false })
        );
        assert_eq!(resolve_mode(&c, "net1", &["eth0"]).unwrap(), Some(ResolvedMode::Overlay));
        assert_eq!(resolve_mode(&conf(Mode::Disabled), "eth0", &[]).unwrap(), None);
        assert_eq!(resolve_mode(&conf(Mode::Overlay), "eth0", &[]).unwrap_err().code, 7);
        assert_eq!(resolve_mode(&conf(Mode::Underlay), "net1", &["eth0"]).unwrap_err().code, 7);
    }

    #[test]
    fn nic_tables() {
        assert_eq!(nic_table("net1", &[]), 101);
        assert_eq!(nic_table("net2", &[]), 102);
        assert_eq!(nic_table("ext", &[101, 102]), 103);
    }

    #[test]
    fn which_modes_need_the_cluster_cidrs() {
        let mut c = conf(Mode::Auto);
        assert!(needs_cluster_cidrs(&c, ResolvedMode::Underlay { first: true }, "eth0"));
        assert!(!needs_cluster_cidrs(&c, ResolvedMode::Underlay { first: false }, "net1"));
        assert!(!needs_cluster_cidrs(&c, ResolvedMode::Overlay, "net1"));
        c.pod_default_route_nic = Some("net1".into());
        assert!(needs_cluster_cidrs(&c, ResolvedMode::Overlay, "net1"));
        c.tune_pod_routes = false;
        assert!(!needs_cluster_cidrs(&c, ResolvedMode::Overlay, "net1"));
        assert!(!needs_cluster_cidrs(&c, ResolvedMode::Underlay { first: true }, "eth0"));
    }
}
