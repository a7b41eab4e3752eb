//! Shared helpers for the knit-cni conformance tests: the test plugin binary, temporary CNI_PATH
//! directories and black-box plugin invocation.
#![allow(dead_code)]

use std::io::Write;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

/// The test plugin, built as a binary of this package (see crates/cni/Cargo.toml).
pub fn testplugin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_knit-cni-testplugin"))
}

/// A temporary CNI_PATH directory holding the test plugin under several type names, plus a
/// state directory and the test plugin's log file.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new(types: &[&str]) -> Sandbox {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("bin")).expect("mkdir bin");
        for t in types {
            symlink(testplugin(), dir.path().join("bin").join(t)).expect("symlink");
        }
        Sandbox { dir }
    }

    pub fn bin(&self) -> PathBuf {
        self.dir.path().join("bin")
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn log(&self) -> PathBuf {
        self.dir.path().join("plugin.log")
    }

    /// The test plugin's log lines, parsed.
    pub fn calls(&self) -> Vec<Value> {
        match std::fs::read_to_string(self.log()) {
            Ok(s) => s.lines().map(|l| serde_json::from_str(l).expect("log line")).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// The runtime over this sandbox.
    pub fn runtime(&self) -> knit_cni::Runtime {
        knit_cni::Runtime::new(vec![self.bin()], self.state())
    }

    /// A plugin object of type `ty` that logs to this sandbox's log (key `testLog`), merged
    /// with `extra`.
    pub fn plugin(&self, ty: &str, extra: Value) -> Value {
        let mut obj = serde_json::json!({"type": ty, "testLog": self.log()});
        if let (Value::Object(o), Value::Object(e)) = (&mut obj, extra) {
            o.extend(e);
        }
        obj
    }

    /// A conflist named `name` with version `version` over the given plugin objects.
    pub fn list(&self, name: &str, version: &str, plugins: Vec<Value>) -> knit_cni::NetConfList {
        let v = serde_json::json!({"cniVersion": version, "name": name, "plugins": plugins});
        knit_cni::NetConfList::from_bytes(v.to_string().as_bytes()).expect("conflist")
    }
}

/// The outcome of running a plugin binary directly.
#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?}", self.stdout))
    }

    /// The CNI error printed on stdout; asserts a non-zero exit.
    pub fn error(&self) -> knit_cni::CniError {
        assert_ne!(self.code, 0, "expected failure, got {self:?}");
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not a CNI error ({e}): {:?}", self.stdout))
    }
}

/// Runs `plugin` with exactly the given environment (plus PATH) and stdin.
pub fn run_plugin(plugin: &Path, env: &[(&str, &str)], stdin: &str) -> Output {
    let mut cmd = Command::new(plugin);
    cmd.env_clear();
    if let Ok(p) = std::env::var("PATH") {
        cmd.env("PATH", p);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn plugin");
    child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("write stdin");
    let out = child.wait_with_output().expect("wait plugin");
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A full ADD environment for the test plugin.
pub fn add_env(path: &str) -> Vec<(&str, &str)> {
    vec![
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "ctr-1"),
        ("CNI_NETNS", "/var/run/netns/none"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", path),
    ]
}

/// Replaces (or adds) one variable.
pub fn with<'a>(mut env: Vec<(&'a str, &'a str)>, key: &'a str, value: &'a str) -> Vec<(&'a str, &'a str)> {
    env.retain(|(k, _)| *k != key);
    env.push((key, value));
    env
}

/// Removes variables.
pub fn without<'a>(mut env: Vec<(&'a str, &'a str)>, keys: &[&str]) -> Vec<(&'a str, &'a str)> {
    env.retain(|(k, _)| !keys.contains(k));
    env
}
