//! Running a plugin chain the way a runtime does: each plugin as a process with the CNI_*
//! variables and its configuration (with `prevResult`) on stdin. The caller's thread decides
//! the network namespace the plugins run in.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use knit_cni::delegate::{exec_plugin, find_plugin};
use knit_cni::runtime::plugin_config;
use knit_cni::{CniError, NetConfList, Runtime, RuntimeArgs};
use serde_json::Value;

use crate::{Error, Result};

/// Where plugin binaries are looked up, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginDirs {
    pub dirs: Vec<PathBuf>,
}

/// Debian's reference plugins.
const DEBIAN_CNI_DIRS: &[&str] = &["/usr/lib/cni", "/opt/cni/bin"];

impl PluginDirs {
    /// The directory of the running executable (knit's plugins are built next to `knit`),
    /// then `$CNI_PATH`, then `/usr/lib/cni` and `/opt/cni/bin` (Debian's plugins).
    pub fn discover() -> PluginDirs {
        let mut dirs: Vec<PathBuf> = Vec::new();
        dirs.extend(crate::exe_dir());
        if let Ok(p) = std::env::var(knit_cni::env::CNI_PATH) {
            dirs.extend(knit_cni::env::split_path(&p));
        }
        dirs.extend(DEBIAN_CNI_DIRS.iter().map(PathBuf::from));
        PluginDirs::new(dirs)
    }

    /// These directories (duplicates dropped, order kept).
    pub fn new(dirs: impl IntoIterator<Item = PathBuf>) -> PluginDirs {
        let mut out: Vec<PathBuf> = Vec::new();
        for d in dirs {
            if !out.contains(&d) {
                out.push(d);
            }
        }
        PluginDirs { dirs: out }
    }

    /// The binary of plugin `name`.
    pub fn find(&self, name: &str) -> Result<PathBuf> {
        find_plugin(name, &self.dirs).map_err(|_| Error::MissingPlugin {
            name: name.to_string(),
            searched: self.dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(" "),
            hint: if name.starts_with("knit") {
                "build knit's plugins next to knit: cargo build --release --workspace --bins"
            } else {
                "install Debian's reference plugins: apt-get install containernetworking-plugins"
            },
        })
    }

    /// Fails naming the first of `names` that is missing.
    pub fn require(&self, names: &[&str]) -> Result<()> {
        for n in names {
            self.find(n)?;
        }
        Ok(())
    }

    /// The `CNI_PATH` value handed to plugins (for their delegated IPAM plugin).
    pub fn cni_path(&self) -> String {
        knit_cni::env::join_path(&self.dirs)
    }
}

/// A parsed network configuration list with its plugin binaries resolved.
#[derive(Debug, Clone)]
pub struct Chain {
    list: NetConfList,
    version: String,
    bins: Vec<PathBuf>,
    cni_path: String,
}

impl Chain {
    pub fn new(conflist: &str, dirs: &PluginDirs) -> Result<Chain> {
        let list = NetConfList::from_bytes(conflist.as_bytes())
            .map_err(|e| Error::Setup(format!("bench conflist {conflist}: {e}")))?;
        let version = list
            .negotiated_version(Runtime::supported_versions())
            .map_err(|e| Error::Setup(format!("bench conflist version: {e}")))?;
        let mut bins = Vec::new();
        for p in &list.plugins {
            let ty = p.get("type").and_then(Value::as_str).unwrap_or("");
            bins.push(dirs.find(ty)?);
        }
        Ok(Chain { list, version, bins, cni_path: dirs.cni_path() })
    }

    fn vars(&self, rt: &RuntimeArgs) -> Vec<(String, String)> {
        use knit_cni::env;
        vec![
            (env::CNI_PATH.to_string(), self.cni_path.clone()),
            (env::CNI_CONTAINERID.to_string(), rt.container_id.clone()),
            (env::CNI_NETNS.to_string(), rt.netns.clone()),
            (env::CNI_IFNAME.to_string(), rt.ifname.clone()),
            (env::CNI_ARGS.to_string(), env::format_cni_args(&rt.args)),
        ]
    }

    fn exec(&self, i: usize, verb: &str, rt: &RuntimeArgs, prev: Option<&Value>) -> Result<Option<Value>, CniError> {
        let conf = plugin_config(&self.list, i, &self.version, Some(rt), prev)?;
        let stdin = serde_json::to_vec(&conf).map_err(|e| CniError::decode(format!("encoding config: {e}")))?;
        exec_plugin(&self.bins[i], verb, &self.vars(rt), &stdin)
    }

    /// ADD: the plugins in order, each given the previous result; returns the last result.
    pub fn add(&self, rt: &RuntimeArgs) -> Result<Value, CniError> {
        self.add_timed(rt, &mut Vec::new())
    }

    /// [`Chain::add`], pushing each plugin's own time (building its stdin, running it) onto
    /// `times`, in chain order.
    pub fn add_timed(&self, rt: &RuntimeArgs, times: &mut Vec<Duration>) -> Result<Value, CniError> {
        let mut prev: Option<Value> = None;
        for i in 0..self.bins.len() {
            let t = Instant::now();
            let out = self.exec(i, "ADD", rt, prev.as_ref());
            times.push(t.elapsed());
            match out? {
                Some(r) => prev = Some(r),
                None => return Err(CniError::decode(format!("{} returned no result for ADD", name(&self.bins[i])))),
            }
        }
        Ok(prev.unwrap_or(Value::Null))
    }

    /// DEL: the plugins in reverse order with the ADD result as `prevResult`.
    pub fn del(&self, rt: &RuntimeArgs, prev: Option<&Value>) -> Result<(), CniError> {
        self.del_timed(rt, prev, &mut Vec::new())
    }

    /// [`Chain::del`], pushing each plugin's own time onto `times`, in chain order (DEL runs
    /// them in reverse, so the first entry is the last plugin's).
    pub fn del_timed(&self, rt: &RuntimeArgs, prev: Option<&Value>, times: &mut Vec<Duration>) -> Result<(), CniError> {
        let mut own = vec![Duration::ZERO; self.bins.len()];
        for i in (0..self.bins.len()).rev() {
            let t = Instant::now();
            let out = self.exec(i, "DEL", rt, prev);
            own[i] = t.elapsed();
            out?;
        }
        times.extend(own);
        Ok(())
    }
}

fn name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Kubelet-style CNI_ARGS for pod `name` of namespace `bench`.
pub fn pod_args(name: &str, container_id: &str) -> Vec<(String, String)> {
    [
        ("IgnoreUnknown", "1"),
        ("K8S_POD_NAMESPACE", "bench"),
        ("K8S_POD_NAME", name),
        ("K8S_POD_INFRA_CONTAINER_ID", container_id),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// A 64-hex-character container ID, unique in its first 12 characters for (`i`, `kind`) (the
/// coordinator named its host veth after the first 11 before it hashed the whole ID).
pub fn container_id(i: usize, kind: u8) -> String {
    format!("{i:011x}{kind:x}{:052x}", 0xb3c4u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_are_valid_and_distinct() {
        let a = container_id(5, 1);
        let b = container_id(5, 2);
        assert_eq!(a.len(), 64);
        assert_ne!(a[..12], b[..12]);
        assert!(knit_cni::validate::container_id(&a).is_ok());
    }

    #[test]
    fn plugin_dirs_dedupe() {
        let d = PluginDirs::new([PathBuf::from("/a"), PathBuf::from("/b"), PathBuf::from("/a")]);
        assert_eq!(d.dirs, vec![PathBuf::from("/a"), PathBuf::from("/b")]);
        assert!(matches!(d.find("nope"), Err(Error::MissingPlugin { .. })));
    }
}
