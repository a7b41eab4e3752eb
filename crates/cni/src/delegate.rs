//! Executing plugins: finding a binary on CNI_PATH, running it with CNI_* variables and a config
//! on stdin, decoding its result or error. IPAM delegation and its rollback guard sit on top.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::env;
use crate::error::{code, CniError};
use crate::skel::{CmdArgs, Command};
use crate::types::CniResult;

/// Finds the plugin binary `plugin_type` in `dirs`. A type containing `/` is code 7; a missing
/// binary is code 5 naming the type and the searched directories.
pub fn find_plugin(plugin_type: &str, dirs: &[PathBuf]) -> Result<PathBuf, CniError> {
    if plugin_type.is_empty() || plugin_type.contains('/') || plugin_type == "." || plugin_type == ".." {
        return Err(CniError::invalid_config(format!("invalid plugin type {plugin_type:?}")));
    }
    for dir in dirs {
        let candidate = dir.join(plugin_type);
        if is_executable_file(&candidate) {
            return Ok(candidate);
        }
    }
    let searched: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    Err(CniError::new(code::IO, format!("failed to find plugin {plugin_type:?} in path [{}]", searched.join(" "))))
}

fn is_executable_file(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Ok(m) => m.is_file() && m.permissions().mode() & 0o111 != 0,
        Err(_) => false,
    }
}

/// Runs the plugin at `plugin` with `CNI_COMMAND=command`, the given CNI_* variables (inherited
/// CNI_* variables are cleared first, everything else is inherited) and `stdin`.
///
/// Exit 0: `Ok(Some(json))`, or `Ok(None)` when stdout is empty. Non-zero exit: the error the
/// plugin printed (code, msg, details kept), or code 999 with its stderr if it printed none.
/// The plugin's stderr is forwarded to ours.
pub fn exec_plugin(
    plugin: &Path,
    command: &str,
    vars: &[(String, String)],
    stdin: &[u8],
) -> Result<Option<Value>, CniError> {
    let mut cmd = Process::new(plugin);
    for var in env::ALL_VARS {
        cmd.env_remove(var);
    }
    cmd.env(env::CNI_COMMAND, command);
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = spawn_retrying(&mut cmd, plugin)?;
    // Write stdin from a thread so a plugin that prints before reading cannot deadlock us.
    let writer = child.stdin.take().map(|mut pipe| {
        let data = stdin.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&data);
        })
    });
    let output = child
        .wait_with_output()
        .map_err(|e| CniError::io(format_args!("waiting for plugin {}", plugin.display()), e))?;
    if let Some(w) = writer {
        let _ = w.join();
    }
    if !output.stderr.is_empty() {
        let _ = std::io::stderr().write_all(&output.stderr);
    }
    let name = plugin.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    tracing::debug!(plugin = %name, command, status = ?output.status, "plugin finished");
    if output.status.success() {
        if output.stdout.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        return serde_json::from_slice(&output.stdout)
            .map(Some)
            .map_err(|e| CniError::decode(format!("decoding output of plugin {name:?} ({command}): {e}")));
    }
    match serde_json::from_slice::<CniError>(&output.stdout) {
        Ok(err) => Err(err),
        Err(_) => {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let stdout = String::from_utf8_lossy(&output.stdout);
            Err(CniError::generic(format!(
                "plugin {name:?} ({command}) failed with {}: {}",
                output.status,
                if stdout.trim().is_empty() { stderr.trim() } else { stdout.trim() }
            )))
        }
    }
}

/// Spawns, retrying a few times on ETXTBSY ("text file busy"), as libcni does.
fn spawn_retrying(cmd: &mut Process, plugin: &Path) -> Result<std::process::Child, CniError> {
    let mut attempt = 0;
    loop {
        match cmd.spawn() {
            Ok(child) => return Ok(child),
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempt < 5 => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(100 * attempt));
            }
            Err(e) => return Err(CniError::io(format_args!("executing plugin {}", plugin.display()), e)),
        }
    }
}

/// Runs plugin `plugin_type` (found on the caller's CNI_PATH) for `command` with the caller's
/// CNI_* variables and `stdin`.
pub fn delegate(plugin_type: &str, command: Command, args: &CmdArgs, stdin: &[u8]) -> Result<Option<Value>, CniError> {
    let path = find_plugin(plugin_type, &args.path)?;
    exec_plugin(&path, command.as_str(), &args.env_vars(), stdin)
}

/// IPAM ADD: runs `ipam.type` with the full config; returns its result (code 6 when it prints
/// none or an undecodable one).
pub fn ipam_add(args: &CmdArgs) -> Result<CniResult, CniError> {
    let ipam = args.conf.ipam_type()?;
    match delegate(ipam, Command::Add, args, &args.stdin)? {
        Some(v) => CniResult::from_value(&v).map_err(|e| e.context(format_args!("IPAM plugin {ipam:?}"))),
        None => Err(CniError::decode(format!("IPAM plugin {ipam:?} returned no result"))),
    }
}

/// IPAM DEL with the full config.
pub fn ipam_del(args: &CmdArgs) -> Result<(), CniError> {
    let ipam = args.conf.ipam_type()?;
    delegate(ipam, Command::Del, args, &args.stdin).map(drop)
}

/// IPAM CHECK with the full config.
pub fn ipam_check(args: &CmdArgs) -> Result<(), CniError> {
    let ipam = args.conf.ipam_type()?;
    delegate(ipam, Command::Check, args, &args.stdin).map(drop)
}

/// IPAM STATUS with the full config.
pub fn ipam_status(args: &CmdArgs) -> Result<(), CniError> {
    let ipam = args.conf.ipam_type()?;
    delegate(ipam, Command::Status, args, &args.stdin).map(drop)
}

/// IPAM GC with the full config (which carries the valid attachments).
pub fn ipam_gc(args: &CmdArgs) -> Result<(), CniError> {
    let ipam = args.conf.ipam_type()?;
    delegate(ipam, Command::Gc, args, &args.stdin).map(drop)
}

/// Releases an IPAM allocation when dropped, unless disarmed: create it right after a
/// successful [`ipam_add`], return early with `?` freely, call [`IpamGuard::disarm`] on success.
#[must_use = "the guard releases the allocation when dropped"]
pub struct IpamGuard<'a> {
    args: &'a CmdArgs,
    release: fn(&CmdArgs) -> Result<(), CniError>,
    armed: bool,
}

impl<'a> IpamGuard<'a> {
    /// Releases through the IPAM plugin ([`ipam_del`]).
    pub fn new(args: &'a CmdArgs) -> IpamGuard<'a> {
        IpamGuard::with_release(args, ipam_del)
    }

    /// Releases with `release` (a plugin that runs its IPAM in-process).
    pub fn with_release(args: &'a CmdArgs, release: fn(&CmdArgs) -> Result<(), CniError>) -> IpamGuard<'a> {
        IpamGuard { args, release, armed: true }
    }

    /// Keeps the allocation.
    pub fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for IpamGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = (self.release)(self.args) {
                tracing::warn!("rolling back IPAM allocation: {e}");
            }
        }
    }
}

/// [`ipam_add`] plus a guard that releases the allocation unless disarmed.
pub fn ipam_add_guarded(args: &CmdArgs) -> Result<(CniResult, IpamGuard<'_>), CniError> {
    let result = ipam_add(args)?;
    Ok((result, IpamGuard::new(args)))
}
