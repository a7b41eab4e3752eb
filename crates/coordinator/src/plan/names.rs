//! The host veth's name and its ownership mark.
//!
//! Spiderpool names the host end `veth` + the first 11 characters of the container ID, so two
//! containers whose IDs share those (a runtime's IDs need not be random hex) clash, and the
//! second ADD used to delete the first pod's veth. knit hashes the whole ID instead (as
//! knit-routed's `cali` names hash the pod identity): a clash between two live pods needs a
//! 44-bit SHA-1 collision. And a veth is only ever deleted when its mark (IFLA_IFALIAS) is this
//! container's ID.

use sha1::{Digest, Sha1};

/// The kernel's limit on an interface alias (IFALIASZ, NUL included).
const ALIAS_MAX: usize = 255;

/// `veth` + the first 11 hex characters of SHA-1 of the container ID (15 characters,
/// IFNAMSIZ − 1).
pub fn host_veth_name(container_id: &str) -> String {
    let digest = Sha1::digest(container_id.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("veth{}", &hex[..11])
}

/// The mark a host veth of this container carries: the container ID (cut to what an alias
/// holds, at a character boundary).
pub fn owner_mark(container_id: &str) -> String {
    let mut end = container_id.len().min(ALIAS_MAX);
    while !container_id.is_char_boundary(end) {
        end -= 1;
    }
    container_id[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_hash_the_whole_container_id() {
        let a = host_veth_name("0123456789abcdef-a");
        let b = host_veth_name("0123456789abcdef-b");
        assert_ne!(a, b);
        for n in [&a, &b] {
            assert!(n.starts_with("veth") && n.len() == 15, "{n}");
            assert!(n[4..].chars().all(|c| c.is_ascii_hexdigit()), "{n}");
        }
        // Stable: the same ID always gives the same name (DEL finds what ADD made).
        assert_eq!(a, host_veth_name("0123456789abcdef-a"));
        let hex: String = Sha1::digest(b"0123456789abcdef-a").iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(a, format!("veth{}", &hex[..11]));
    }

    #[test]
    fn marks_fit_an_alias() {
        assert_eq!(owner_mark("cid"), "cid");
        assert_eq!(owner_mark(&"x".repeat(300)).len(), 255);
    }
}
