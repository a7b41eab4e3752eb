//! Network sysctls (`/proc/sys/net/...`).
//!
//! `/proc/sys/net` resolves against the network namespace of the thread that
//! opens the file, so [`set`]/[`get`] act on the *calling thread's* namespace;
//! use [`set_in`]/[`get_in`] (or wrap in [`Netns::run`]) for another one.
//!
//! Keys may be given in slash form (`net/ipv4/conf/eth0.100/rp_filter`, taken
//! literally) or dotted form (`net.ipv4.ip_forward`). In dotted form the
//! interface part of `net.ipv{4,6}.{conf,neigh}.<ifname>.<leaf>` may itself
//! contain dots, and, as with sysctl(8), a `/` stands for a literal dot.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;

use crate::netns::Netns;
use crate::{guard, Error, Result};

/// Prefixes whose next component is an interface name.
const IFACE_PREFIXES: [&str; 4] = ["net.ipv4.conf.", "net.ipv6.conf.", "net.ipv4.neigh.", "net.ipv6.neigh."];

/// The `/proc/sys` path for a key, after validation (only `net` keys, no `..`).
pub fn path_for(key: &str) -> Result<PathBuf> {
    let op = format!("sysctl {key}");
    let key = key.strip_prefix("/proc/sys/").unwrap_or(key);
    let rel: String = if key.starts_with("net/") {
        key.to_string()
    } else if key.starts_with("net.") {
        match IFACE_PREFIXES.iter().find(|p| key.starts_with(*p)) {
            Some(prefix) => {
                let rest = &key[prefix.len()..];
                match rest.rsplit_once('.') {
                    Some((ifname, leaf)) => {
                        format!(
                            "{}/{}/{}",
                            prefix.trim_end_matches('.').replace('.', "/"),
                            ifname.replace('/', "."),
                            leaf
                        )
                    }
                    None => key.split('.').map(|c| c.replace('/', ".")).collect::<Vec<_>>().join("/"),
                }
            }
            None => key.split('.').map(|c| c.replace('/', ".")).collect::<Vec<_>>().join("/"),
        }
    } else {
        return Err(Error::invalid(op, "only net.* sysctls can be set (they are per namespace)"));
    };
    if rel.split('/').any(|c| c.is_empty() || c == "." || c == ".." || c.contains('\0')) {
        return Err(Error::invalid(op, format!("bad sysctl path {rel:?}")));
    }
    Ok(PathBuf::from("/proc/sys").join(rel))
}

/// Writes `value` to a sysctl in the calling thread's namespace.
pub fn set(key: &str, value: &str) -> Result<()> {
    let path = path_for(key)?;
    let op = format!("set sysctl {key}={value}");
    guard::check(&op)?;
    let mut f = OpenOptions::new().write(true).open(&path).map_err(|e| Error::io(op.clone(), e))?;
    f.write_all(value.as_bytes()).map_err(|e| Error::io(op, e))
}

/// Reads a sysctl in the calling thread's namespace (trailing newline removed).
pub fn get(key: &str) -> Result<String> {
    let path = path_for(key)?;
    let s = std::fs::read_to_string(&path).map_err(|e| Error::io(format!("read sysctl {key}"), e))?;
    Ok(s.trim_end_matches('\n').to_string())
}

/// [`set`] inside `ns`.
pub fn set_in(ns: &Netns, key: &str, value: &str) -> Result<()> {
    ns.try_run(|| set(key, value))
}

/// [`get`] inside `ns`.
pub fn get_in(ns: &Netns, key: &str) -> Result<String> {
    ns.try_run(|| get(key))
}

#[cfg(test)]
mod tests {
    use super::path_for;

    #[test]
    fn keys() {
        let p = |k: &str| path_for(k).unwrap().to_string_lossy().into_owned();
        assert_eq!(p("net.ipv4.ip_forward"), "/proc/sys/net/ipv4/ip_forward");
        assert_eq!(p("net/ipv4/ip_forward"), "/proc/sys/net/ipv4/ip_forward");
        assert_eq!(p("net.ipv4.conf.eth0.100.rp_filter"), "/proc/sys/net/ipv4/conf/eth0.100/rp_filter");
        assert_eq!(p("net.ipv4.conf.eth0/100.rp_filter"), "/proc/sys/net/ipv4/conf/eth0.100/rp_filter");
        assert_eq!(p("net/ipv4/conf/eth0.100/rp_filter"), "/proc/sys/net/ipv4/conf/eth0.100/rp_filter");
        assert_eq!(p("net.ipv6.conf.all.forwarding"), "/proc/sys/net/ipv6/conf/all/forwarding");
        assert_eq!(
            p("net.netfilter.nf_conntrack_tcp_be_liberal"),
            "/proc/sys/net/netfilter/nf_conntrack_tcp_be_liberal"
        );
        assert_eq!(p("/proc/sys/net/ipv4/ip_forward"), "/proc/sys/net/ipv4/ip_forward");
        assert!(path_for("kernel.hostname").is_err());
        assert!(path_for("net/../kernel/hostname").is_err());
        assert!(path_for("net.ipv4..x").is_err());
    }
}
