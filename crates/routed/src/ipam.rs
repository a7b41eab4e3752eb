//! IPAM for knit-routed: knit-ipam runs in-process (its library implements the same CNI
//! verbs, so the allocation is the one the `knit-ipam` binary would make, without a second
//! process per ADD, as Calico's plugin uses its IPAM library); any other `ipam.type`
//! (host-local, ...) is delegated through the CNI protocol. `KNIT_IPAM_EXEC=1` forces
//! delegation for knit-ipam too.

use knit_cni::{delegate, CmdArgs, CniError, CniResult, Plugin};
use knit_ipam::plugin::KnitIpam;

fn in_process(args: &CmdArgs) -> bool {
    std::env::var_os("KNIT_IPAM_EXEC").is_none_or(|v| v != "1") && args.conf.ipam_type().is_ok_and(|t| t == "knit-ipam")
}

pub fn add(args: &CmdArgs) -> Result<CniResult, CniError> {
    if in_process(args) {
        KnitIpam.add(args)
    } else {
        delegate::ipam_add(args)
    }
}

pub fn del(args: &CmdArgs) -> Result<(), CniError> {
    if in_process(args) {
        KnitIpam.del(args)
    } else {
        delegate::ipam_del(args)
    }
}

pub fn check(args: &CmdArgs) -> Result<(), CniError> {
    if in_process(args) {
        KnitIpam.check(args)
    } else {
        delegate::ipam_check(args)
    }
}

pub fn status(args: &CmdArgs) -> Result<(), CniError> {
    if in_process(args) {
        KnitIpam.status(args)
    } else {
        delegate::ipam_status(args)
    }
}

pub fn gc(args: &CmdArgs) -> Result<(), CniError> {
    if in_process(args) {
        KnitIpam.gc(args)
    } else {
        delegate::ipam_gc(args)
    }
}

/// Releases the allocation (through [`del`]) when dropped armed: a failed ADD.
pub fn guard(args: &CmdArgs) -> delegate::IpamGuard<'_> {
    delegate::IpamGuard::with_release(args, del)
}
