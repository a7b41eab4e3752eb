//! knit-ipam's CNI verbs on top of the allocator: the `knit-ipam` binary runs them through the
//! CNI skeleton, and knit-routed calls them in-process when its `ipam.type` is `knit-ipam`
//! (no second process per ADD, as Calico's plugin calls its IPAM library).

use crate::{AllocRequest, GcMode, Ipam, IpamConfig};
use knit_cni::{CmdArgs, CniError, CniResult, Plugin};

/// The knit-ipam plugin.
pub struct KnitIpam;

fn cni_err(e: crate::Error) -> CniError {
    CniError::new(e.cni_code(), e.msg())
}

fn open(args: &CmdArgs) -> Result<Ipam, CniError> {
    let cfg = IpamConfig::from_netconf(&args.stdin).map_err(cni_err)?;
    Ipam::open(cfg).map_err(cni_err)
}

fn to_result(r: &crate::IpamResult) -> CniResult {
    CniResult {
        ips: r
            .ips
            .iter()
            .map(|ip| knit_cni::IpConfig { interface: None, address: ip.address, gateway: ip.gateway })
            .collect(),
        routes: r.routes.iter().map(|rt| knit_cni::Route::new(rt.dst, rt.gw)).collect(),
        ..CniResult::default()
    }
}

impl Plugin for KnitIpam {
    fn add(&self, args: &CmdArgs) -> Result<CniResult, CniError> {
        let ipam = open(args)?;
        let netconf: serde_json::Value =
            serde_json::from_slice(&args.stdin).map_err(|e| CniError::decode(e.to_string()))?;
        let cni_args = knit_cni::env::format_cni_args(&args.args);
        let req = AllocRequest::from_cni(&args.container_id, &args.ifname, Some(&cni_args), Some(&netconf))
            .map_err(cni_err)?;
        // With detectIPConflict/detectGateway: ARP from CNI_IFNAME first (see knit_ipam::probe).
        let r =
            crate::probe::allocate(&ipam, &req, &args.netns, &args.ifname).map_err(|e| CniError::new(e.code, e.msg))?;
        Ok(to_result(&r))
    }

    /// Idempotent: releasing what is not allocated succeeds.
    fn del(&self, args: &CmdArgs) -> Result<(), CniError> {
        let ipam = open(args)?;
        ipam.release(&args.container_id, &args.ifname).map_err(cni_err)?;
        Ok(())
    }

    fn check(&self, args: &CmdArgs) -> Result<(), CniError> {
        let ipam = open(args)?;
        match ipam.lookup(&args.container_id, &args.ifname).map_err(cni_err)? {
            Some(_) => Ok(()),
            None => Err(CniError::generic(format!(
                "CHECK: no allocation for container {} interface {}",
                args.container_id, args.ifname
            ))),
        }
    }

    fn status(&self, args: &CmdArgs) -> Result<(), CniError> {
        let ipam = open(args).map_err(|e| CniError::new(knit_cni::code::NOT_AVAILABLE, e.msg))?;
        ipam.status().map_err(|e| CniError::new(knit_cni::code::NOT_AVAILABLE, e.msg()))
    }

    /// CNI GC keeps fixed-IP reservations: a StatefulSet pod being re-created must get its
    /// address back; `knit ipam release` frees them explicitly.
    fn gc(&self, args: &CmdArgs) -> Result<(), CniError> {
        let ipam = open(args)?;
        let valid: Vec<(String, String)> =
            args.conf.valid_attachments()?.into_iter().map(|a| (a.container_id, a.ifname)).collect();
        ipam.gc(&valid, GcMode::KeepFixed).map_err(cni_err)?;
        Ok(())
    }
}
