//! The crate's single error type.
//!
//! Every variant names the operation and the object it was applied to, so a
//! message like `add route 10.0.0.0/24 table 500: File exists (os error 17)` is
//! useful on its own. Callers that need to branch on the kernel's answer (an
//! idempotent DEL that ignores ENOENT, an ADD that tolerates EEXIST) use
//! [`Error::errno`] or the `is_*` helpers instead of matching on text.

use std::io;

/// Errors from knit-host.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel rejected a netlink request (NLMSG_ERROR with a negative errno).
    #[error("{op}: {}{}", io::Error::from_raw_os_error(*.errno), .ext_ack.as_ref().map(|m| format!(" ({m})")).unwrap_or_default())]
    Netlink {
        /// What was being done, to which object.
        op: String,
        /// Positive errno (e.g. `libc::EEXIST`).
        errno: i32,
        /// The kernel's extended-ack message, if it sent one.
        ext_ack: Option<String>,
    },
    /// A system call or file operation failed.
    #[error("{op}: {source}")]
    Io {
        /// What was being done, to which object.
        op: String,
        /// The underlying OS error.
        #[source]
        source: io::Error,
    },
    /// A netlink reply could not be decoded.
    #[error("{op}: cannot decode netlink reply: {msg}")]
    Decode {
        /// What was being done.
        op: String,
        /// Decoder message.
        msg: String,
    },
    /// An external command (iptables-restore, nft, ...) exited unsuccessfully.
    #[error("{op}: `{program}` exited with {}: {}", .status.map(|s| s.to_string()).unwrap_or_else(|| "a signal".into()), .stderr.trim())]
    Command {
        /// What was being done.
        op: String,
        /// The program that was run.
        program: String,
        /// Exit code (`None` if killed by a signal).
        status: Option<i32>,
        /// Captured standard error.
        stderr: String,
    },
    /// An argument was rejected before anything was sent to the kernel.
    #[error("{op}: invalid argument: {msg}")]
    Invalid {
        /// What was being done.
        op: String,
        /// Why the argument is invalid.
        msg: String,
    },
    /// A looked-up object does not exist (e.g. no link with that name).
    #[error("{what} not found")]
    NotFound {
        /// The object that was looked for.
        what: String,
    },
    /// The root-namespace guard (see [`crate::guard`]) refused an operation.
    #[error("{op}: refusing to touch the root network namespace (test guard is on)")]
    RootNamespace {
        /// What was being attempted.
        op: String,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The errno behind this error, if there is one.
    ///
    /// [`Error::NotFound`] reports `ENOENT` so callers can treat "no such
    /// object" uniformly whether it came from the kernel or from a lookup.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Netlink { errno, .. } => Some(*errno),
            Error::Io { source, .. } => source.raw_os_error(),
            Error::NotFound { .. } => Some(libc::ENOENT),
            _ => None,
        }
    }

    /// True if the object already exists (`EEXIST`).
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc::EEXIST)
    }

    /// True if the object (or the device/process/namespace it refers to) is
    /// missing: `ENOENT`, `ENODEV`, `ESRCH` or `EADDRNOTAVAIL` (the kernel's
    /// answer when deleting an address that is not there).
    pub fn is_not_found(&self) -> bool {
        matches!(self.errno(), Some(libc::ENOENT) | Some(libc::ENODEV) | Some(libc::ESRCH) | Some(libc::EADDRNOTAVAIL))
    }

    pub(crate) fn io(op: impl Into<String>, source: io::Error) -> Self {
        Error::Io { op: op.into(), source }
    }

    pub(crate) fn invalid(op: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Invalid { op: op.into(), msg: msg.into() }
    }

    pub(crate) fn nix(op: impl Into<String>, errno: nix::errno::Errno) -> Self {
        Error::Io { op: op.into(), source: io::Error::from_raw_os_error(errno as i32) }
    }
}
