//! SIGINT/SIGTERM as a flag: the handler only sets it (async-signal-safe); the long-running
//! `knit node run` polls it and leaves the registry outside signal context.

use std::sync::atomic::{AtomicBool, Ordering};

/// Set once SIGINT or SIGTERM arrived (after [`catch`]).
pub static TERMINATE: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    TERMINATE.store(true, Ordering::SeqCst);
}

/// Installs the handler for SIGINT and SIGTERM.
pub fn catch() -> Result<(), String> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(SigHandler::Handler(on_signal), SaFlags::SA_RESTART, SigSet::empty());
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(sig, &action) }.map_err(|e| format!("signal handler for {sig}: {e}"))?;
    }
    Ok(())
}
