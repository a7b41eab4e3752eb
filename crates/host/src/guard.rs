//! A guard that stops tests from touching the host's ("root") network namespace.
//!
//! Once switched on (by [`forbid_root_netns`], which the [`crate::testing`]
//! harness does, or by the [`FORBID_ENV`] environment variable, which tests
//! pass to the plugin binaries they spawn), every entry point that would act
//! on the calling thread's namespace ([`crate::Handle::new`], sysctl writes,
//! firewall commands without a namespace) first checks that the thread is
//! *not* in the host's namespace ([`root_id`]) and fails with [`Error::RootNamespace`] if it is.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use crate::netns::NsId;
use crate::{Error, Result};

/// Environment variable that switches the guard on for a whole process (any
/// value but "" or "0"; a `dev:ino` value also names the root namespace).
pub const FORBID_ENV: &str = "KNIT_FORBID_ROOT_NETNS";

static FORBID: AtomicBool = AtomicBool::new(false);

/// Switches the guard on for the rest of this process.
pub fn forbid_root_netns() {
    FORBID.store(true, Ordering::SeqCst);
}

/// Whether the guard is on.
pub fn root_forbidden() -> bool {
    FORBID.load(Ordering::SeqCst) || std::env::var_os(FORBID_ENV).is_some_and(|v| !v.is_empty() && v != "0")
}

/// The identity of the namespace the guard protects (cached: it never changes).
///
/// Resolution order: a `dev:ino` value in [`FORBID_ENV`] (how a test passes
/// the host's identity to the binaries it spawns, see [`child_env`]); else
/// PID 1's namespace; else, where `/proc/1/ns/net` is unreadable (some
/// sandboxes), the namespace this process started in (`/proc/self/ns/net`,
/// the main thread's, which this crate never switches).
pub fn root_id() -> Result<NsId> {
    static ROOT: OnceLock<NsId> = OnceLock::new();
    if let Some(id) = ROOT.get() {
        return Ok(*id);
    }
    let id = match std::env::var(FORBID_ENV).ok().as_deref().and_then(parse_id) {
        Some(id) => id,
        None => match NsId::of_path(Path::new("/proc/1/ns/net")) {
            Ok(id) => id,
            Err(_) => NsId::of_path(Path::new("/proc/self/ns/net"))?,
        },
    };
    Ok(*ROOT.get_or_init(|| id))
}

fn parse_id(v: &str) -> Option<NsId> {
    let (dev, ino) = v.split_once(':')?;
    Some(NsId { dev: dev.parse().ok()?, ino: ino.parse().ok()? })
}

/// The `(name, value)` environment pair that switches the guard on in a child
/// process and tells it which namespace is the host's, e.g.
/// `cmd.env(k, v)` before spawning a plugin binary from a test.
pub fn child_env() -> Result<(&'static str, String)> {
    let id = root_id()?;
    Ok((FORBID_ENV, format!("{}:{}", id.dev, id.ino)))
}

/// True if the calling thread is in the protected (root) namespace, see [`root_id`].
pub fn in_root_netns() -> Result<bool> {
    Ok(NsId::current()? == root_id()?)
}

/// Fails with [`Error::RootNamespace`] if the guard is on and the calling thread is in the root namespace.
pub fn check(op: &str) -> Result<()> {
    if root_forbidden() && in_root_netns()? {
        return Err(Error::RootNamespace { op: op.to_string() });
    }
    Ok(())
}
