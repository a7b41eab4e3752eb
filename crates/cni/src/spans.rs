//! Phase timings at debug level for the plugins (`KNIT_LOG=knit_routed=debug`, with
//! `KNIT_LOG_FILE` to collect them from under a runtime): where an ADD or a DEL spends its
//! time. `knit bench cni-add-del` measures the whole; these spans say which part to look at.
//!
//! [`phase_mark!`](crate::phase_mark) logs at its call site, so the plugin's own log target
//! (and filter) applies.

use std::cell::Cell;
use std::time::Instant;

thread_local! {
    static LAST: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Starts timing on this thread.
pub fn start() {
    LAST.with(|l| l.set(Some(Instant::now())));
}

/// Microseconds since the previous lap (or [`start`]); 0 the first time.
pub fn lap() -> u64 {
    let now = Instant::now();
    LAST.with(|l| l.replace(Some(now))).map(|t| (now - t).as_micros() as u64).unwrap_or(0)
}

#[doc(hidden)]
pub use tracing as __tracing;

/// Logs the time since the previous mark (or since [`start`]) under `phase`, at debug level.
#[macro_export]
macro_rules! phase_mark {
    ($phase:expr) => {
        if $crate::spans::__tracing::enabled!($crate::spans::__tracing::Level::DEBUG) {
            let us = $crate::spans::lap();
            $crate::spans::__tracing::debug!(phase = $phase, us, "span");
        }
    };
}
