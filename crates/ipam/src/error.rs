//! Errors of knit-ipam, each with the CNI error code a plugin reports for it.
//!
//! | code | meaning |
//! |---|---|
//! | 4 | bad `CNI_ARGS` (e.g. `IP=` that is not an address) |
//! | 5 | I/O failure of the store (unreadable or corrupt record) |
//! | 6 | the configuration is not valid JSON |
//! | 7 | the configuration is invalid; the message names the field |
//! | 11 | try again later: lock timeout, or too many store conflicts |
//! | 50 | `status()`: the store is not usable |
//! | 110 | the pool(s) are exhausted |
//! | 111 | a requested IP is unavailable (in use, reserved, excluded, another node's block) |
//! | 112 | a requested IP is in no configured pool |

use std::path::PathBuf;

/// CNI code: invalid environment variables (`CNI_ARGS`).
pub const CODE_BAD_ARGS: u32 = 4;
/// CNI code: I/O failure.
pub const CODE_IO: u32 = 5;
/// CNI code: failure to decode content.
pub const CODE_DECODE: u32 = 6;
/// CNI code: invalid network config.
pub const CODE_INVALID_CONFIG: u32 = 7;
/// CNI code: try again later.
pub const CODE_TRY_AGAIN: u32 = 11;
/// CNI code: plugin not available (STATUS).
pub const CODE_NOT_AVAILABLE: u32 = 50;
/// Plugin-specific: no free address left in the pools.
pub const CODE_EXHAUSTED: u32 = 110;
/// Plugin-specific: a requested address cannot be given.
pub const CODE_IP_UNAVAILABLE: u32 = 111;
/// Plugin-specific: a requested address lies in no pool.
pub const CODE_IP_NOT_IN_POOL: u32 = 112;

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every failure of knit-ipam.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config text is not JSON at all.
    #[error("invalid JSON in ipam config: {0}")]
    Syntax(String),
    /// The config is JSON but a field is wrong (type or value).
    #[error("invalid ipam config: {field}: {msg}")]
    Config { field: String, msg: String },
    /// `CNI_ARGS` could not be understood.
    #[error("invalid CNI_ARGS: {0}")]
    Args(String),
    /// The store lock was not obtained within the bounded wait.
    #[error("timed out after {waited_ms} ms waiting for the ipam lock {}", path.display())]
    LockTimeout { path: PathBuf, waited_ms: u64 },
    /// An optimistic store kept reporting concurrent changes.
    #[error("ipam store busy: {0}; try again later")]
    Busy(String),
    /// A compare-and-swap precondition failed (internal; retried by [`crate::Ipam`]).
    #[error("store conflict on {0}")]
    Conflict(String),
    /// No free address in any candidate pool.
    #[error("{0}")]
    Exhausted(String),
    /// A requested address cannot be given (in use, reserved, excluded, foreign block).
    #[error("{0}")]
    IpUnavailable(String),
    /// A requested address is in no configured pool.
    #[error("{0}")]
    NotInPool(String),
    /// Reading or writing the store failed.
    #[error("ipam store I/O on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A stored record is unreadable.
    #[error("corrupt ipam record {}: {msg}", path.display())]
    Corrupt { path: PathBuf, msg: String },
    /// `status()` found the store unusable.
    #[error("ipam store not available: {0}")]
    NotAvailable(String),
}

impl Error {
    /// The CNI error code to report for this error.
    pub fn cni_code(&self) -> u32 {
        match self {
            Error::Syntax(_) => CODE_DECODE,
            Error::Config { .. } => CODE_INVALID_CONFIG,
            Error::Args(_) => CODE_BAD_ARGS,
            Error::LockTimeout { .. } | Error::Busy(_) | Error::Conflict(_) => CODE_TRY_AGAIN,
            Error::Exhausted(_) => CODE_EXHAUSTED,
            Error::IpUnavailable(_) => CODE_IP_UNAVAILABLE,
            Error::NotInPool(_) => CODE_IP_NOT_IN_POOL,
            Error::Io { .. } | Error::Corrupt { .. } => CODE_IO,
            Error::NotAvailable(_) => CODE_NOT_AVAILABLE,
        }
    }

    /// The config field an [`Error::Config`] is about (e.g. `pools[0].blockSize`).
    pub fn field(&self) -> Option<&str> {
        match self {
            Error::Config { field, .. } => Some(field),
            _ => None,
        }
    }

    /// Short CNI `msg` (the Display text); CNI `details` can carry `{:?}`.
    pub fn msg(&self) -> String {
        self.to_string()
    }

    pub(crate) fn config(field: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Config { field: field.into(), msg: msg.into() }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}
