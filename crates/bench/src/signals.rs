//! Ctrl-C and SIGTERM: a flag the suites poll between samples, so that they stop, return
//! [`crate::Error::Interrupted`] and clean up through the normal drop path (namespaces,
//! scratch files). Plugin processes in the terminal's process group get the same SIGINT and
//! exit; the suite then reports the interruption rather than their error.

use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

const SIGNALS: [Signal; 3] = [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP];

extern "C" fn on_signal(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// True once Ctrl-C/SIGTERM/SIGHUP arrived during a run.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// `Err(Interrupted)` once a signal arrived.
pub fn check() -> crate::Result<()> {
    if interrupted() {
        Err(crate::Error::Interrupted)
    } else {
        Ok(())
    }
}

/// Installs the handler; the previous dispositions come back on drop.
pub struct Guard {
    previous: Vec<(Signal, SigAction)>,
}

impl Guard {
    pub fn install() -> Guard {
        INTERRUPTED.store(false, Ordering::SeqCst);
        let action = SigAction::new(SigHandler::Handler(on_signal), SaFlags::SA_RESTART, SigSet::empty());
        let mut previous = Vec::new();
        for sig in SIGNALS {
            // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
            if let Ok(old) = unsafe { sigaction(sig, &action) } {
                previous.push((sig, old));
            }
        }
        Guard { previous }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        for (sig, old) in self.previous.drain(..) {
            // SAFETY: restoring the disposition that was in place before `install`.
            let _ = unsafe { sigaction(sig, &old) };
        }
    }
}
