//! knit-e2e: real container runtimes installed from Debian drive knit's plugins (issue 14, "A real
//! runtime"), inside namespaces the tests create.
//!
//! - [`tools`]: the runtimes' binaries, and skipping without them (failing instead under `CI=true`);
//! - [`rootfs`]: a busybox-static root filesystem for `--rootfs` containers;
//! - [`mounts`]: a mount namespace of the test's own, where a runtime finds private directories at
//!   the fixed paths it insists on (`/run/netns`, `/var/lib/cni`, `/etc/cni/net.d`, ...);
//! - [`podman`]: podman with its CNI backend, private configuration and storage;
//! - [`containerd`]: a containerd daemon and `ctr run --cni`;
//! - [`cgroups`]: the cgroup directories runtimes leave;
//! - [`calls`]: what a runtime sent to the plugins (knit-testplugin's log), and a DEL sent again;
//! - [`node`]: a node namespace's network state, the processes in a namespace, the knit-ipam store;
//! - [`site`]: the fabric, the node, the IP plan and the conflists a test runs its runtime on.
//!
//! Everything here is test support: functions return `Result<_, String>` with the context a
//! failing test needs, and guards undo what they made when they are dropped, also during a panic.

pub mod calls;
pub mod cgroups;
pub mod containerd;
pub mod mounts;
pub mod node;
pub mod podman;
pub mod rootfs;
pub mod site;
pub mod tools;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use knit_host::Netns;

/// Runs `cmd` inside `ns` and collects its output; an error names the program.
pub fn output_in(ns: &Netns, cmd: &mut Command) -> Result<Output, String> {
    let what = describe(cmd);
    ns.output(cmd.stdin(Stdio::null())).map_err(|e| format!("{what}: {e}"))
}

/// Runs `cmd` inside `ns` with `input` on its stdin.
pub fn output_with_stdin(ns: &Netns, cmd: &mut Command, input: &[u8]) -> Result<Output, String> {
    let what = describe(cmd);
    let mut child = ns
        .spawn(cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()))
        .map_err(|e| format!("{what}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A plugin that exits before reading everything closes the pipe: its output says why.
        let _ = stdin.write_all(input);
    }
    child.wait_with_output().map_err(|e| format!("{what}: {e}"))
}

/// `program arg…` of a command, for messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// The exit status and both streams of a finished command, for assertion messages.
pub fn show(out: &Output) -> String {
    format!(
        "{}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

/// Like [`output_in`], but a non-zero exit is an error showing both streams.
pub fn ok_in(ns: &Netns, cmd: &mut Command) -> Result<Output, String> {
    let what = describe(cmd);
    let out = output_in(ns, cmd)?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!("{what}: {}", show(&out)))
    }
}

/// The names in a directory (empty when it does not exist), sorted.
pub fn list_dir(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// Sends SIGKILL to `pid`; a process that is already gone is fine.
pub fn kill(pid: u32) {
    if let Ok(p) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), nix::sys::signal::Signal::SIGKILL);
    }
}

/// A process identified by its pid and start time, so that a guard never kills another process
/// that got the pid after it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proc {
    pub pid: u32,
    start: u64,
}

impl Proc {
    /// The process `pid` now, if it exists.
    pub fn of(pid: u32) -> Option<Proc> {
        Some(Proc { pid, start: start_time(pid)? })
    }

    /// Whether it still runs (a zombie counts as ended).
    pub fn alive(&self) -> bool {
        start_time(self.pid) == Some(self.start) && !is_zombie(self.pid)
    }

    /// SIGKILL, if it is still this process.
    pub fn kill(&self) {
        if start_time(self.pid) == Some(self.start) {
            kill(self.pid);
        }
    }
}

/// Field 22 of /proc/PID/stat (start time in clock ticks since boot); the command name in field
/// 2 may hold spaces and parentheses, so fields are counted after its last ')'.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rfind(')').map(|i| s[i + 1..].trim_start().starts_with('Z')))
        .unwrap_or(false)
}

/// Polls `ready` every 100 ms until it returns `Some`, `attempts` times at most. A wait for
/// something to become ready, never a timing assertion: on a busy machine it just takes longer.
pub fn wait_for<T>(attempts: u32, mut ready: impl FnMut() -> Option<T>) -> Option<T> {
    for i in 0..attempts {
        if let Some(v) = ready() {
            return Some(v);
        }
        if i + 1 < attempts {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    None
}
