//! The plugin skeleton: environment + stdin → validated [`CmdArgs`] → [`Plugin`] verb → result
//! or error JSON on stdout. Logs never go to stdout: see [`init_logging`].

use std::io::{Read, Write};
use std::path::PathBuf;

use serde_json::Value;

use crate::env;
use crate::error::CniError;
use crate::types::{parse_conf, CniResult, PluginConf};
use crate::validate;
use crate::version;

/// A CNI verb.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Command {
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Status => "STATUS",
            Command::Gc => "GC",
            Command::Version => "VERSION",
        }
    }

    /// The variables that must be set and non-empty for this verb (besides CNI_COMMAND).
    pub fn required_env(self) -> &'static [&'static str] {
        match self {
            Command::Add | Command::Check => &[env::CNI_CONTAINERID, env::CNI_NETNS, env::CNI_IFNAME, env::CNI_PATH],
            Command::Del => &[env::CNI_CONTAINERID, env::CNI_IFNAME, env::CNI_PATH],
            Command::Status | Command::Gc => &[env::CNI_PATH],
            Command::Version => &[],
        }
    }

    /// The oldest config version allowed to use this verb.
    pub fn min_version(self) -> Option<&'static str> {
        match self {
            Command::Check => Some("0.4.0"),
            Command::Status | Command::Gc => Some("1.1.0"),
            _ => None,
        }
    }
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything a plugin verb gets: the CNI_* variables, stdin and the parsed config.
#[derive(Debug, Clone)]
pub struct CmdArgs {
    pub command: Command,
    pub container_id: String,
    /// May be empty for DEL, GC and STATUS.
    pub netns: String,
    pub ifname: String,
    /// Parsed `CNI_ARGS`.
    pub args: Vec<(String, String)>,
    /// `CNI_PATH`, split.
    pub path: Vec<PathBuf>,
    pub stdin: Vec<u8>,
    pub conf: PluginConf,
}

impl CmdArgs {
    /// The value of a `CNI_ARGS` key.
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// The parsed `prevResult`, if any.
    pub fn prev_result(&self) -> Result<Option<CniResult>, CniError> {
        self.conf.prev_result()
    }

    /// The CNI_* variables (except CNI_COMMAND) to hand to a delegate.
    pub fn env_vars(&self) -> Vec<(String, String)> {
        vec![
            (env::CNI_CONTAINERID.into(), self.container_id.clone()),
            (env::CNI_NETNS.into(), self.netns.clone()),
            (env::CNI_IFNAME.into(), self.ifname.clone()),
            (env::CNI_ARGS.into(), env::format_cni_args(&self.args)),
            (env::CNI_PATH.into(), env::join_path(&self.path)),
        ]
    }
}

/// A CNI plugin. The skeleton has validated the environment, the config and its version.
pub trait Plugin {
    fn add(&self, args: &CmdArgs) -> Result<CniResult, CniError>;
    fn del(&self, args: &CmdArgs) -> Result<(), CniError>;
    fn check(&self, args: &CmdArgs) -> Result<(), CniError>;
    fn status(&self, _args: &CmdArgs) -> Result<(), CniError> {
        Ok(())
    }
    fn gc(&self, _args: &CmdArgs) -> Result<(), CniError> {
        Ok(())
    }
    /// The config versions this plugin accepts.
    fn supported_versions(&self) -> &[&str] {
        version::SUPPORTED_VERSIONS
    }
}

/// Runs a plugin as a process: reads the real environment and stdin, prints to stdout, exits.
pub fn run<P: Plugin>(plugin: &P, about: &str) -> ! {
    init_logging();
    let mut stdin = Vec::new();
    let code = match std::io::stdin().read_to_end(&mut stdin) {
        Ok(_) => {
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            let rc = run_with(plugin, about, |k| std::env::var(k).ok(), &stdin, &mut out);
            let _ = out.flush();
            rc
        }
        Err(e) => {
            let err = CniError::io("reading stdin", e).with_version(version::CURRENT_VERSION);
            print!("{}", err.to_json_pretty());
            1
        }
    };
    std::process::exit(code)
}

/// The testable core of [`run`]: returns the exit code.
pub fn run_with<P: Plugin>(
    plugin: &P,
    about: &str,
    env: impl Fn(&str) -> Option<String>,
    stdin: &[u8],
    stdout: &mut dyn Write,
) -> i32 {
    let command = env(env::CNI_COMMAND).unwrap_or_default();
    if command.is_empty() && !about.is_empty() {
        eprintln!("{about}");
        eprintln!("CNI protocol versions supported: {}", plugin.supported_versions().join(", "));
        return 0;
    }
    match dispatch(plugin, &env, stdin) {
        Ok(out) => {
            if let Some(text) = out {
                if let Err(e) = stdout.write_all(text.as_bytes()) {
                    tracing::error!("writing result: {e}");
                    return 1;
                }
            }
            0
        }
        Err(mut err) => {
            if err.cni_version.is_empty() {
                err.cni_version = reply_version(stdin, plugin.supported_versions());
            }
            tracing::debug!(code = err.code, msg = %err.msg, "plugin error");
            let _ = stdout.write_all(err.to_json_pretty().as_bytes());
            1
        }
    }
}

/// The version to stamp on an error: the config's if we support it, else our newest.
fn reply_version(stdin: &[u8], supported: &[&str]) -> String {
    serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion").and_then(Value::as_str).map(str::to_string))
        .filter(|v| supported.contains(&v.as_str()))
        .unwrap_or_else(|| version::CURRENT_VERSION.to_string())
}

fn dispatch<P: Plugin>(
    plugin: &P,
    env: &impl Fn(&str) -> Option<String>,
    stdin: &[u8],
) -> Result<Option<String>, CniError> {
    let get = |k: &str| env(k).unwrap_or_default();
    let raw_command = get(env::CNI_COMMAND);
    if raw_command.is_empty() {
        return Err(missing_vars(&[env::CNI_COMMAND]));
    }
    let command = Command::parse(&raw_command)
        .ok_or_else(|| CniError::invalid_env(format!("unknown CNI_COMMAND: {raw_command}")))?;
    let missing: Vec<&str> = command.required_env().iter().copied().filter(|k| get(k).is_empty()).collect();
    if !missing.is_empty() {
        return Err(missing_vars(&missing));
    }
    let supported = plugin.supported_versions();
    if command == Command::Version {
        return Ok(Some(format!("{}\n", version_info(supported))));
    }

    let conf: PluginConf = parse_conf(stdin)?;
    validate::network_name(&conf.name)?;
    let container_id = get(env::CNI_CONTAINERID);
    let ifname = get(env::CNI_IFNAME);
    if matches!(command, Command::Add | Command::Del | Command::Check) {
        validate::container_id(&container_id)?;
        validate::ifname(&ifname)?;
    }
    let conf_version = conf.version().to_string();
    if !supported.contains(&conf_version.as_str()) {
        return Err(version::incompatible(&conf_version, supported));
    }
    if let Some(min) = command.min_version() {
        if !version::at_least(&conf_version, min) {
            return Err(CniError::incompatible_version(format!(
                "config version {conf_version:?} does not allow {command} (needs {min} or later)"
            )));
        }
    }
    let args = CmdArgs {
        command,
        container_id,
        netns: get(env::CNI_NETNS),
        ifname,
        args: env::parse_cni_args(&get(env::CNI_ARGS))?,
        path: env::split_path(&get(env::CNI_PATH)),
        stdin: stdin.to_vec(),
        conf,
    };
    tracing::debug!(command = %command, container = %args.container_id, ifname = %args.ifname, "plugin invoked");
    match command {
        Command::Add => {
            let result = plugin.add(&args)?;
            Ok(Some(result.to_json_pretty(&conf_version)?))
        }
        Command::Del => plugin.del(&args).map(|()| None),
        Command::Check => plugin.check(&args).map(|()| None),
        Command::Status => plugin.status(&args).map(|()| None),
        Command::Gc => plugin.gc(&args).map(|()| None),
        Command::Version => Ok(None),
    }
}

fn missing_vars(names: &[&str]) -> CniError {
    CniError::invalid_env(format!("required env variables [{}] missing", names.join(",")))
}

/// The VERSION reply, `{"cniVersion":…,"supportedVersions":[…]}`, as JSON.
pub fn version_info(supported: &[&str]) -> Value {
    serde_json::json!({ "cniVersion": version::CURRENT_VERSION, "supportedVersions": supported })
}

/// Sets up `tracing` once (see [`crate::log`]): to the file named by `KNIT_LOG_FILE` or to
/// stderr, never stdout.
pub fn init_logging() {
    crate::log::init();
}
