//! The knit-ipam CNI IPAM plugin: CNI verbs on top of the allocator library.

use knit_cni::{CmdArgs, CniError, CniResult, Plugin};
use knit_ipam::{AllocRequest, GcMode, Ipam, IpamConfig};

struct KnitIpam;

fn cni_err(e: knit_ipam::Error) -> CniError {
    CniError::new(e.cni_code(), e.msg())
}

fn open(args: &CmdArgs) -> Result<Ipam, CniError> {
    let cfg = IpamConfig::from_netconf(&args.stdin).map_err(cni_err)?;
    Ipam::open(cfg).map_err(cni_err)
}

fn to_result(r: &knit_ipam::IpamResult) -> CniResult {
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
        let r = knit_ipam::probe::allocate(&ipam, &req, &args.netns, &args.ifname)
            .map_err(|e| CniError::new(e.code, e.msg))?;
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
        let valid: Vec<(String, String)> = args
            .conf
            .valid_attachments()?
            .into_iter()
            .map(|a| (a.container_id, a.ifname))
            .collect();
        ipam.gc(&valid, GcMode::KeepFixed).map_err(cni_err)?;
        Ok(())
    }
}

fn main() {
    knit_cni::skel::run(&KnitIpam, "knit-ipam: per-node block IPAM");
}
