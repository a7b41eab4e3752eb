//! A libcni-like runtime: runs a network configuration list against a container (ADD, DEL,
//! CHECK, STATUS, GC), chaining `prevResult` and caching ADD results under a state directory.
//! Plugins run in the caller's network namespace, as containerd runs them; `CNI_NETNS` is
//! passed through as given.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::delegate::{exec_plugin, find_plugin};
use crate::env;
use crate::error::{code, CniError};
use crate::skel::Command;
use crate::types::{Attachment, NetConfList, LEGACY_ATTACHMENTS_KEY, VALID_ATTACHMENTS_KEY};
use crate::validate;
use crate::version;

pub use crate::env::parse_cni_args;

/// Where ADD results are cached by default.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/knit/cni";
/// Plugin directories when neither `--cni-path` nor `$CNI_PATH` is given.
pub const DEFAULT_CNI_PATH: &str = "/opt/cni/bin:/usr/lib/cni";

/// Per-attachment arguments: what containerd passes to libcni.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuntimeArgs {
    pub container_id: String,
    /// Network namespace path; may be empty for DEL.
    pub netns: String,
    pub ifname: String,
    /// `CNI_ARGS` pairs.
    pub args: Vec<(String, String)>,
    /// Capability arguments (`portMappings`, `ips`, `mac`, …), sent as `runtimeConfig` to plugins
    /// that declare the capability.
    pub capability_args: Map<String, Value>,
}

/// One cached ADD, stored as `<state_dir>/results/<network>-<containerID>-<ifname>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheEntry {
    pub kind: String,
    pub network_name: String,
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
    #[serde(default)]
    pub netns: String,
    #[serde(default)]
    pub cni_args: Vec<(String, String)>,
    #[serde(default)]
    pub capability_args: Map<String, Value>,
    /// The final ADD result, exactly as the last plugin printed it.
    pub result: Value,
}

const CACHE_KIND: &str = "knitCniCacheV1";

/// The runtime: where plugins are found and where results are cached.
#[derive(Debug, Clone, PartialEq)]
pub struct Runtime {
    pub cni_path: Vec<PathBuf>,
    pub state_dir: PathBuf,
}

impl Runtime {
    pub fn new(cni_path: Vec<PathBuf>, state_dir: impl Into<PathBuf>) -> Runtime {
        Runtime { cni_path, state_dir: state_dir.into() }
    }

    /// `$CNI_PATH` if set and non-empty, else `/opt/cni/bin:/usr/lib/cni`.
    pub fn default_cni_path() -> Vec<PathBuf> {
        Self::cni_path_from(std::env::var(env::CNI_PATH).ok().as_deref())
    }

    /// The fallback of [`Runtime::default_cni_path`] for a given `$CNI_PATH` value.
    pub fn cni_path_from(var: Option<&str>) -> Vec<PathBuf> {
        match var {
            Some(v) if !env::split_path(v).is_empty() => env::split_path(v),
            _ => env::split_path(DEFAULT_CNI_PATH),
        }
    }

    /// The versions this runtime can drive.
    pub fn supported_versions() -> &'static [&'static str] {
        version::SUPPORTED_VERSIONS
    }

    /// ADD: runs the plugins in order, each getting the previous result as `prevResult`; caches
    /// and returns the final result as the last plugin printed it.
    pub fn add(&self, list: &NetConfList, rt: &RuntimeArgs) -> Result<Value, CniError> {
        let version = self.prepare(list, Some(rt))?;
        let mut prev: Option<Value> = None;
        for (i, plugin) in list.plugins.iter().enumerate() {
            let conf = plugin_config(list, i, &version, Some(rt), prev.as_ref())?;
            let out = self.exec(plugin, Command::Add, &conf, Some(rt))?;
            match out {
                Some(result) => prev = Some(result),
                None => {
                    return Err(CniError::decode(format!(
                        "plugin {:?} returned no result for ADD",
                        plugin_type(plugin)
                    )))
                }
            }
        }
        let result = prev.unwrap_or(Value::Null);
        let entry = CacheEntry {
            kind: CACHE_KIND.into(),
            network_name: list.name.clone(),
            container_id: rt.container_id.clone(),
            ifname: rt.ifname.clone(),
            netns: rt.netns.clone(),
            cni_args: rt.args.clone(),
            capability_args: rt.capability_args.clone(),
            result: result.clone(),
        };
        self.write_cache(&entry)?;
        Ok(result)
    }

    /// DEL: runs the plugins in reverse order with the cached ADD result as `prevResult` (none
    /// if there is no cache), then removes the cache. Stops at the first error, keeping the cache.
    pub fn del(&self, list: &NetConfList, rt: &RuntimeArgs) -> Result<(), CniError> {
        let version = self.prepare(list, Some(rt))?;
        let cached = match self.cached_entry(&list.name, &rt.container_id, &rt.ifname) {
            Ok(entry) => entry.map(|e| e.result),
            Err(e) => {
                tracing::warn!("ignoring unreadable cached result: {e}");
                None
            }
        };
        for i in (0..list.plugins.len()).rev() {
            let conf = plugin_config(list, i, &version, Some(rt), cached.as_ref())?;
            self.exec(&list.plugins[i], Command::Del, &conf, Some(rt))?;
        }
        self.remove_cache(&list.name, &rt.container_id, &rt.ifname)
    }

    /// CHECK (config 0.4.0+): runs the plugins in order with the cached ADD result. Skipped when
    /// the list sets `disableCheck`; code 3 when nothing was ADDed.
    pub fn check(&self, list: &NetConfList, rt: &RuntimeArgs) -> Result<(), CniError> {
        let version = self.prepare(list, Some(rt))?;
        require_version(&version, Command::Check)?;
        if list.disable_check {
            return Ok(());
        }
        let cached = self.cached_entry(&list.name, &rt.container_id, &rt.ifname)?.ok_or_else(|| {
            CniError::unknown_container(format!(
                "no cached ADD result for network {:?}, container {:?}, interface {:?}",
                list.name, rt.container_id, rt.ifname
            ))
        })?;
        for (i, plugin) in list.plugins.iter().enumerate() {
            let conf = plugin_config(list, i, &version, Some(rt), Some(&cached.result))?;
            self.exec(plugin, Command::Check, &conf, Some(rt))?;
        }
        Ok(())
    }

    /// STATUS (config 1.1.0+): asks every plugin in order; the first error is returned.
    pub fn status(&self, list: &NetConfList) -> Result<(), CniError> {
        let version = self.prepare(list, None)?;
        require_version(&version, Command::Status)?;
        for (i, plugin) in list.plugins.iter().enumerate() {
            let conf = plugin_config(list, i, &version, None, None)?;
            self.exec(plugin, Command::Status, &conf, None)?;
        }
        Ok(())
    }

    /// GC (config 1.1.0+; skipped when the list sets `disableGC`): DELs cached attachments of this
    /// network that are not in `valid`, removes their cache entries, then sends GC with
    /// `cni.dev/valid-attachments` (and the legacy `cni.dev/attachments`) to every plugin.
    /// Continues past errors and returns them together.
    pub fn gc(&self, list: &NetConfList, valid: &[Attachment]) -> Result<(), CniError> {
        let version = self.prepare(list, None)?;
        require_version(&version, Command::Gc)?;
        if list.disable_gc {
            return Ok(());
        }
        let mut errors = Vec::new();
        let keep: BTreeSet<&Attachment> = valid.iter().collect();
        for entry in self.cached_attachments(&list.name)? {
            let att = Attachment { container_id: entry.container_id.clone(), ifname: entry.ifname.clone() };
            if keep.contains(&att) {
                continue;
            }
            let rt = RuntimeArgs {
                container_id: entry.container_id.clone(),
                netns: entry.netns.clone(),
                ifname: entry.ifname.clone(),
                args: entry.cni_args.clone(),
                capability_args: entry.capability_args.clone(),
            };
            if let Err(e) = self.del(list, &rt) {
                errors.push(e.context(format_args!("GC: DEL {}/{}", att.container_id, att.ifname)));
            }
            if let Err(e) = self.remove_cache(&list.name, &entry.container_id, &entry.ifname) {
                errors.push(e);
            }
        }
        let attachments =
            serde_json::to_value(valid).map_err(|e| CniError::decode(format!("encoding attachments: {e}")))?;
        for (i, plugin) in list.plugins.iter().enumerate() {
            let mut conf = plugin_config(list, i, &version, None, None)?;
            if let Value::Object(m) = &mut conf {
                m.insert(VALID_ATTACHMENTS_KEY.into(), attachments.clone());
                m.insert(LEGACY_ATTACHMENTS_KEY.into(), attachments.clone());
            }
            if let Err(e) = self.exec(plugin, Command::Gc, &conf, None) {
                errors.push(e);
            }
        }
        join_errors(errors)
    }

    /// The cached final ADD result of an attachment.
    pub fn cached_result(&self, network: &str, container_id: &str, ifname: &str) -> Result<Option<Value>, CniError> {
        Ok(self.cached_entry(network, container_id, ifname)?.map(|e| e.result))
    }

    /// The cache entry of an attachment.
    pub fn cached_entry(
        &self,
        network: &str,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<CacheEntry>, CniError> {
        let path = self.cache_path(network, container_id, ifname);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| CniError::decode(format!("decoding cache {}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(CniError::io(format_args!("reading {}", path.display()), e)),
        }
    }

    /// Every cached attachment of `network` (unreadable entries are skipped with a warning).
    pub fn cached_attachments(&self, network: &str) -> Result<Vec<CacheEntry>, CniError> {
        let dir = self.results_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(CniError::io(format_args!("listing {}", dir.display()), e)),
        };
        let mut out = Vec::new();
        for dirent in entries {
            let dirent = dirent.map_err(|e| CniError::io(format_args!("listing {}", dir.display()), e))?;
            let path = dirent.path();
            if path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')) {
                continue;
            }
            match std::fs::read(&path)
                .map_err(CniError::from)
                .and_then(|b| serde_json::from_slice::<CacheEntry>(&b).map_err(|e| CniError::decode(e.to_string())))
            {
                Ok(entry) if entry.network_name == network => out.push(entry),
                Ok(_) => {}
                Err(e) => tracing::warn!("skipping cache file {}: {e}", path.display()),
            }
        }
        out.sort_by(|a, b| (&a.container_id, &a.ifname).cmp(&(&b.container_id, &b.ifname)));
        Ok(out)
    }

    fn results_dir(&self) -> PathBuf {
        self.state_dir.join("results")
    }

    fn cache_path(&self, network: &str, container_id: &str, ifname: &str) -> PathBuf {
        self.results_dir().join(format!("{network}-{container_id}-{ifname}"))
    }

    fn write_cache(&self, entry: &CacheEntry) -> Result<(), CniError> {
        let dir = self.results_dir();
        std::fs::create_dir_all(&dir).map_err(|e| CniError::io(format_args!("creating {}", dir.display()), e))?;
        let path = self.cache_path(&entry.network_name, &entry.container_id, &entry.ifname);
        let bytes = serde_json::to_vec(entry).map_err(|e| CniError::decode(format!("encoding cache: {e}")))?;
        write_atomic(&path, &bytes)
    }

    fn remove_cache(&self, network: &str, container_id: &str, ifname: &str) -> Result<(), CniError> {
        let path = self.cache_path(network, container_id, ifname);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(CniError::io(format_args!("removing {}", path.display()), e)),
        }
    }

    /// Validates the list and the attachment; returns the negotiated version.
    fn prepare(&self, list: &NetConfList, rt: Option<&RuntimeArgs>) -> Result<String, CniError> {
        validate::network_name(&list.name)?;
        if let Some(rt) = rt {
            validate::container_id(&rt.container_id)?;
            validate::ifname(&rt.ifname)?;
        }
        list.negotiated_version(Self::supported_versions())
    }

    fn exec(
        &self,
        plugin: &Map<String, Value>,
        command: Command,
        conf: &Value,
        rt: Option<&RuntimeArgs>,
    ) -> Result<Option<Value>, CniError> {
        let ty = plugin_type(plugin);
        let path = find_plugin(ty, &self.cni_path)?;
        let mut vars = vec![(env::CNI_PATH.to_string(), env::join_path(&self.cni_path))];
        if let Some(rt) = rt {
            vars.push((env::CNI_CONTAINERID.into(), rt.container_id.clone()));
            vars.push((env::CNI_NETNS.into(), rt.netns.clone()));
            vars.push((env::CNI_IFNAME.into(), rt.ifname.clone()));
            vars.push((env::CNI_ARGS.into(), env::format_cni_args(&rt.args)));
        }
        let stdin = serde_json::to_vec(conf).map_err(|e| CniError::decode(format!("encoding config: {e}")))?;
        tracing::debug!(plugin = ty, command = %command, "running plugin");
        exec_plugin(&path, command.as_str(), &vars, &stdin)
    }
}

/// Builds plugin `index`'s stdin: the plugin object plus `cniVersion` and `name`; for
/// attachment verbs also `runtimeConfig` (declared capabilities ∩ capability args) and
/// `prevResult`. `capabilities` is removed.
pub fn plugin_config(
    list: &NetConfList,
    index: usize,
    version: &str,
    rt: Option<&RuntimeArgs>,
    prev_result: Option<&Value>,
) -> Result<Value, CniError> {
    let plugin = list
        .plugins
        .get(index)
        .ok_or_else(|| CniError::invalid_config(format!("no plugin {index} in network {:?}", list.name)))?;
    let mut conf = plugin.clone();
    conf.insert("cniVersion".into(), Value::String(version.to_string()));
    conf.insert("name".into(), Value::String(list.name.clone()));
    let capabilities = conf.remove("capabilities");
    if let Some(rt) = rt {
        let mut runtime_config = Map::new();
        if let Some(Value::Object(caps)) = &capabilities {
            for (cap, enabled) in caps {
                if enabled == &Value::Bool(true) {
                    if let Some(arg) = rt.capability_args.get(cap) {
                        runtime_config.insert(cap.clone(), arg.clone());
                    }
                }
            }
        }
        if !runtime_config.is_empty() {
            conf.insert("runtimeConfig".into(), Value::Object(runtime_config));
        }
        if let Some(prev) = prev_result {
            conf.insert("prevResult".into(), prev.clone());
        }
    }
    Ok(Value::Object(conf))
}

fn plugin_type(plugin: &Map<String, Value>) -> &str {
    plugin.get("type").and_then(Value::as_str).unwrap_or("")
}

fn require_version(version: &str, command: Command) -> Result<(), CniError> {
    match command.min_version() {
        Some(min) if !version::at_least(version, min) => Err(CniError::incompatible_version(format!(
            "configuration version {version:?} does not support the {command} verb (needs {min} or later)"
        ))),
        _ => Ok(()),
    }
}

fn join_errors(mut errors: Vec<CniError>) -> Result<(), CniError> {
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        _ => {
            let first = errors[0].code;
            let code = if errors.iter().all(|e| e.code == first) { first } else { code::GENERIC };
            let msg = errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ");
            Err(CniError::new(code, msg))
        }
    }
}

/// Writes `bytes` to `path` via a temporary file in the same directory and a rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CniError> {
    use std::io::Write;
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        CniError::io(format_args!("writing {}", path.display()), e)
    })
}
