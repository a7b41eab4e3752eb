//! Validation of container IDs, network names and interface names, as libcni's `utils` does.

use crate::error::CniError;

/// Linux `IFNAMSIZ - 1`.
pub const MAX_IFNAME_LEN: usize = 15;

/// `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`
fn is_safe_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    match bytes.next() {
        Some(b) if b.is_ascii_alphanumeric() => {}
        _ => return false,
    }
    bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Empty → code 3 (unknown container); bad characters → code 4.
pub fn container_id(id: &str) -> Result<(), CniError> {
    if id.is_empty() {
        return Err(CniError::unknown_container("missing containerID"));
    }
    if !is_safe_name(id) {
        return Err(CniError::invalid_env(format!("invalid characters in containerID {id:?}")));
    }
    Ok(())
}

/// Empty or bad characters → code 7 (the name becomes part of file names).
pub fn network_name(name: &str) -> Result<(), CniError> {
    if name.is_empty() {
        return Err(CniError::invalid_config("missing network name"));
    }
    if !is_safe_name(name) {
        return Err(CniError::invalid_config(format!("invalid characters found in network name {name:?}")));
    }
    Ok(())
}

/// 1–15 bytes, not `.` or `..`, no `/`, `:` or whitespace → else code 4.
pub fn ifname(name: &str) -> Result<(), CniError> {
    let problem = if name.is_empty() {
        Some("interface name is empty")
    } else if name.len() > MAX_IFNAME_LEN {
        Some("interface name is too long")
    } else if name == "." || name == ".." {
        Some("interface name is . or ..")
    } else if name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace()) {
        Some("interface name contains / or : or whitespace characters")
    } else {
        None
    };
    match problem {
        Some(p) => Err(CniError::invalid_env(format!("{p}: {name:?}"))),
        None => Ok(()),
    }
}
