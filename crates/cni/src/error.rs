//! The CNI error object (`{cniVersion, code, msg, details}`), the crate's only error type, and the
//! well-known error codes.

use serde::{Deserialize, Serialize};

/// Well-known CNI error codes (spec section "Error"). 0–99 are reserved; plugins use 100+.
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in network configuration; the message names the key and value.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist; the runtime needs no cleanup.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables, like CNI_COMMAND or CNI_CONTAINERID.
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure, e.g. reading a file or executing a plugin.
    pub const IO: u32 = 5;
    /// Failed to decode content, e.g. JSON syntax.
    pub const DECODE: u32 = 6;
    /// Invalid network configuration.
    pub const INVALID_CONFIG: u32 = 7;
    /// Invalid network namespace (libcni `types.go`).
    pub const INVALID_NETNS: u32 = 8;
    /// Try again later: a transient condition.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin is not available (cannot serve ADD).
    pub const NOT_AVAILABLE: u32 = 50;
    /// STATUS: not available, and existing containers may be degraded.
    pub const NOT_AVAILABLE_DEGRADED: u32 = 51;
    /// Untyped error (Go skel uses 999 for plain errors).
    pub const GENERIC: u32 = 999;
}

/// A CNI error, as printed by a failing plugin on stdout. `cniVersion` is optional when parsing:
/// Debian's 1.1.1 plugins omit it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{msg} (CNI error {code}){}", details_suffix(.details))]
pub struct CniError {
    #[serde(rename = "cniVersion", default, skip_serializing_if = "String::is_empty")]
    pub cni_version: String,
    pub code: u32,
    #[serde(default)]
    pub msg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

fn details_suffix(details: &str) -> String {
    if details.is_empty() {
        String::new()
    } else {
        format!(": {details}")
    }
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        CniError { cni_version: String::new(), code, msg: msg.into(), details: String::new() }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    pub fn with_version(mut self, version: impl Into<String>) -> Self {
        self.cni_version = version.into();
        self
    }

    /// Prefixes the message with some context, keeping the code.
    pub fn context(mut self, ctx: impl std::fmt::Display) -> Self {
        self.msg = format!("{ctx}: {}", self.msg);
        self
    }

    pub fn incompatible_version(msg: impl Into<String>) -> Self {
        Self::new(code::INCOMPATIBLE_VERSION, msg)
    }

    pub fn unsupported_field(msg: impl Into<String>) -> Self {
        Self::new(code::UNSUPPORTED_FIELD, msg)
    }

    pub fn unknown_container(msg: impl Into<String>) -> Self {
        Self::new(code::UNKNOWN_CONTAINER, msg)
    }

    pub fn invalid_env(msg: impl Into<String>) -> Self {
        Self::new(code::INVALID_ENV, msg)
    }

    /// An I/O failure with what was being done and the OS error.
    pub fn io(what: impl std::fmt::Display, err: std::io::Error) -> Self {
        Self::new(code::IO, format!("{what}: {err}"))
    }

    pub fn decode(msg: impl Into<String>) -> Self {
        Self::new(code::DECODE, msg)
    }

    pub fn invalid_config(msg: impl Into<String>) -> Self {
        Self::new(code::INVALID_CONFIG, msg)
    }

    pub fn invalid_netns(msg: impl Into<String>) -> Self {
        Self::new(code::INVALID_NETNS, msg)
    }

    pub fn try_again_later(msg: impl Into<String>) -> Self {
        Self::new(code::TRY_AGAIN_LATER, msg)
    }

    pub fn generic(msg: impl Into<String>) -> Self {
        Self::new(code::GENERIC, msg)
    }

    /// The error as Go's skel prints it: JSON indented with four spaces.
    pub fn to_json_pretty(&self) -> String {
        crate::types::to_go_json(self)
            .unwrap_or_else(|_| format!("{{\"code\": {}, \"msg\": {:?}}}", self.code, self.msg))
    }
}

impl From<std::io::Error> for CniError {
    fn from(err: std::io::Error) -> Self {
        Self::new(code::IO, err.to_string())
    }
}
