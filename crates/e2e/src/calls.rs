//! What a runtime sent to the plugins, seen by knit-testplugin at the end of each conflist (it
//! passes prevResult through, so it changes nothing), and a DEL sent again exactly as libcni would
//! send it on a retry.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use knit_host::Netns;
use serde_json::{json, Value};

/// knit-testplugin's entry for a conflist: appends one JSON line per call to `log`.
pub fn recorder(log: &Path) -> Value {
    json!({"type": "knit-testplugin", "testLog": log.to_string_lossy()})
}

/// One plugin call as knit-testplugin logged it.
#[derive(Debug, Clone)]
pub struct Call {
    pub command: String,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    /// CNI_ARGS as `(key, value)` pairs, in order.
    pub args: Vec<(String, String)>,
    /// The network configuration on stdin (with `prevResult`).
    pub stdin: Value,
}

impl Call {
    /// The value of `key` in CNI_ARGS.
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// CNI_ARGS as the runtime set it (`K=V;K=V`).
    pub fn cni_args(&self) -> String {
        self.args.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(";")
    }

    /// `DEL default-o1 netns="" args="..."`: for messages.
    pub fn summary(&self) -> String {
        format!(
            "{} {} ifname={} netns={:?} args={:?} cniVersion={} prevResult={}",
            self.command,
            self.container_id,
            self.ifname,
            self.netns,
            self.cni_args(),
            self.stdin["cniVersion"],
            if self.stdin.get("prevResult").is_some() { "yes" } else { "no" }
        )
    }
}

/// The calls logged in `log`, oldest first (none when it does not exist yet).
pub fn read(log: &Path) -> Result<Vec<Call>, String> {
    let text = match std::fs::read_to_string(log) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("{}: {e}", log.display())),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l).map_err(|e| format!("{}: {e}: {l}", log.display()))?;
            let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
            let args = v["args"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|p| Some((p.get(0)?.as_str()?.to_string(), p.get(1)?.as_str()?.to_string())))
                        .collect()
                })
                .unwrap_or_default();
            Ok(Call {
                command: s("command"),
                container_id: s("containerID"),
                netns: s("netns"),
                ifname: s("ifname"),
                args,
                stdin: v["stdin"].clone(),
            })
        })
        .collect()
}

/// How to run a plugin the way the runtime did: inside which network namespace, through which
/// command prefix (the runtime's mount namespace), with which CNI_PATH and extra environment.
pub struct Runner<'a> {
    pub net: &'a Netns,
    /// Makes the command for a plugin binary (e.g. `nsenter --mount=… -- <plugin>`).
    pub command: &'a dyn Fn(&Path) -> Command,
    /// Where the plugin binaries are, as the test sees them.
    pub plugin_dirs: &'a [PathBuf],
    /// CNI_PATH as the runtime set it.
    pub cni_path: &'a str,
    pub env: &'a [(String, String)],
}

/// The outcome of one plugin of a replayed DEL.
#[derive(Debug)]
pub struct PluginRun {
    pub plugin: String,
    pub output: Output,
}

/// Sends `del` again to every plugin of `conflist` except the recorder, in reverse order, as
/// libcni does: each plugin's own configuration with the list's `cniVersion` and `name` and the
/// runtime's cached result as `prevResult`, and the runtime's CNI_* environment.
pub fn replay_del(run: &Runner<'_>, conflist: &Value, del: &Call) -> Result<Vec<PluginRun>, String> {
    let plugins = conflist["plugins"].as_array().ok_or("the conflist has no plugins")?;
    let mut outcomes = Vec::new();
    for p in plugins.iter().rev() {
        let ty = p["type"].as_str().ok_or("a plugin without a type")?;
        if ty == "knit-testplugin" {
            continue;
        }
        let mut conf = p.clone();
        let obj = conf.as_object_mut().ok_or("a plugin that is not an object")?;
        obj.insert("cniVersion".into(), del.stdin["cniVersion"].clone());
        obj.insert("name".into(), del.stdin["name"].clone());
        if let Some(prev) = del.stdin.get("prevResult") {
            obj.insert("prevResult".into(), prev.clone());
        }
        let bin = run
            .plugin_dirs
            .iter()
            .map(|d| d.join(ty))
            .find(|b| b.is_file())
            .ok_or_else(|| format!("plugin {ty} is in none of {:?}", run.plugin_dirs))?;
        let mut cmd = (run.command)(&bin);
        cmd.env("CNI_COMMAND", "DEL")
            .env("CNI_CONTAINERID", &del.container_id)
            .env("CNI_NETNS", &del.netns)
            .env("CNI_IFNAME", &del.ifname)
            .env("CNI_ARGS", del.cni_args())
            .env("CNI_PATH", run.cni_path);
        for (k, v) in run.env {
            cmd.env(k, v);
        }
        let stdin = serde_json::to_vec(&conf).map_err(|e| e.to_string())?;
        let output = crate::output_with_stdin(run.net, &mut cmd, &stdin)?;
        outcomes.push(PluginRun { plugin: ty.to_string(), output });
    }
    Ok(outcomes)
}
