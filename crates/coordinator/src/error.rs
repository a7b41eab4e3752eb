//! Every way the coordinator fails, in one place: the CNI error each failure becomes, and the
//! collector that lets DEL and rollback continue past a failure and report all of them.
//!
//! knit-cni's error model is being reworked (errors that keep the kernel's errno and their
//! context, mapped to CNI codes at the plugin's edge); the rest of the crate only calls the
//! constructors here, so moving to it changes this file alone.

use std::fmt::Display;
use std::path::Path;

use knit_cni::CniError;

/// A kernel operation failed while doing `ctx` (e.g. "adding pod route …").
pub fn kernel(ctx: impl Into<String>) -> impl FnOnce(knit_host::Error) -> CniError {
    let ctx = ctx.into();
    move |e| CniError::generic(format!("{ctx}: {e}"))
}

/// Something that is not a kernel call failed (a thread could not start, a helper died).
pub fn internal(msg: impl Into<String>) -> CniError {
    CniError::generic(msg)
}

/// CNI_NETNS cannot be opened (ADD and CHECK need the pod).
pub fn netns(path: &str, e: impl Display) -> CniError {
    CniError::invalid_netns(format!("opening netns {path:?}: {e}"))
}

/// The coordinator is chained: ADD and CHECK need the previous plugin's result.
pub fn no_prev_result() -> CniError {
    CniError::invalid_config("knit-coordinator is a chained plugin: prevResult is required")
}

/// The plan cannot be made from this configuration and prevResult (code 7).
pub fn bad_input(msg: impl Into<String>) -> CniError {
    CniError::invalid_config(msg)
}

/// The plan needs a fact the pod or node does not offer (e.g. no host side for eth0).
pub fn missing_fact(msg: impl Into<String>) -> CniError {
    CniError::generic(msg)
}

/// The mode needs the cluster CIDRs and neither the config nor the agent's file has them yet:
/// transient (code 11), since the node agent writes the file once the cluster settings exist.
pub fn cidrs_unknown(file: &Path) -> CniError {
    CniError::try_again_later(format!(
        "the cluster CIDRs are unknown: the config has no overlayPodCIDR or serviceCIDR and the node agent's \
         CIDR file {} does not exist (set them once with `knit cluster set --overlay-cidr … --service-cidr …`, \
         or put overlayPodCIDR and serviceCIDR in the config)",
        file.display()
    ))
}

/// The host veth name this container derives is taken by a link that is not its own (another
/// container's mark, or none): it is left alone. Code 11: it goes when its owner is removed.
pub fn veth_taken(name: &str, owner: Option<&str>) -> CniError {
    let whose = match owner {
        Some(o) => format!("it belongs to container {o:?}"),
        None => "it carries no container mark".to_string(),
    };
    CniError::try_again_later(format!("host veth {name} already exists and {whose}: not touching it"))
}

/// CHECK found the pod or node not as ADD left it.
pub fn check_failed(what: impl Display) -> CniError {
    CniError::generic(format!("CHECK: {what}"))
}

/// What a teardown (DEL, or a failed ADD's rollback) could not undo. Each step runs whatever
/// the earlier ones did; "not found" is success (already gone); every other failure is kept,
/// logged, and reported together at the end.
#[derive(Debug, Default)]
pub struct Teardown {
    failures: Vec<String>,
}

impl Teardown {
    /// Records the outcome of one kernel step described by `what`.
    pub fn step(&mut self, what: impl Display, r: knit_host::Result<()>) {
        match r {
            Ok(()) => {}
            Err(e) if e.is_not_found() => tracing::debug!("{what}: already gone"),
            Err(e) => self.fail(format!("{what}: {e}")),
        }
    }

    /// Records a failure that is not a kernel call's (the pod could not be read, …).
    pub fn fail(&mut self, msg: String) {
        tracing::warn!("{msg}");
        self.failures.push(msg);
    }

    /// The failures so far.
    pub fn failures(&self) -> &[String] {
        &self.failures
    }

    /// Success, or one error naming every failure.
    pub fn into_result(self, what: &str) -> Result<(), CniError> {
        match self.failures.len() {
            0 => Ok(()),
            1 => Err(CniError::generic(format!("{what}: {}", self.failures[0]))),
            n => Err(CniError::generic(format!("{what}: {n} failures: {}", self.failures.join("; ")))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel_err(errno: i32) -> knit_host::Error {
        knit_host::Error::Netlink { op: "delete something".into(), errno, ext_ack: None }
    }

    #[test]
    fn a_teardown_reports_every_failure_and_ignores_not_found() {
        let mut t = Teardown::default();
        t.step("deleting rule A", Err(kernel_err(1))); // EPERM
        t.step("deleting route B", Err(kernel_err(2))); // ENOENT: already gone
        t.step("deleting link C", Ok(()));
        t.step("deleting table D", Err(kernel_err(16))); // EBUSY
        assert_eq!(t.failures().len(), 2);
        let e = t.into_result("DEL").unwrap_err();
        assert!(e.msg.contains("2 failures") && e.msg.contains("rule A") && e.msg.contains("table D"), "{}", e.msg);
        assert!(!e.msg.contains("route B"), "{}", e.msg);
        assert!(Teardown::default().into_result("DEL").is_ok());
    }

    #[test]
    fn missing_cidrs_are_transient_and_say_how_to_fix_it() {
        let e = cidrs_unknown(Path::new("/var/lib/knit/coordinator.json"));
        assert_eq!(e.code, 11);
        assert!(e.msg.contains("/var/lib/knit/coordinator.json") && e.msg.contains("knit cluster set"), "{}", e.msg);
    }
}
