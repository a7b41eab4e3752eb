//! A closed stdout (`knit lab status | head -1`) ends the program quietly, as it ends a C tool.
//!
//! Rust starts programs with SIGPIPE ignored, so writing to a closed pipe is an EPIPE error,
//! which `println!` turns into a panic ("failed printing to stdout: Broken pipe"). Restoring
//! SIGPIPE's default for the whole process would also kill it on a write to a child's stdin
//! (iptables-restore, the plugins), so only that panic becomes the conventional death by SIGPIPE
//! (exit status 141 in a shell), with no panic text.

use nix::sys::signal::{raise, signal, SigHandler, Signal};

/// Installs the panic hook; other panics keep the default report.
pub fn exit_quietly_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let msg =
            payload.downcast_ref::<String>().map(String::as_str).or_else(|| payload.downcast_ref::<&str>().copied());
        if msg.is_some_and(|m| m.starts_with("failed printing to stdout") && m.contains("Broken pipe")) {
            // SAFETY: restores the default disposition of SIGPIPE; no handler runs.
            let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
            let _ = raise(Signal::SIGPIPE);
            std::process::exit(141);
        }
        default(info)
    }));
}
