//! Test harness: throwaway network namespaces that never touch the host.
//!
//! ```no_run
//! # fn main() -> knit_host::Result<()> {
//! use knit_host::testing::TestNet;
//! let tn = TestNet::new("kx")?;          // the test's "node" namespace
//! let pod = tn.pod("pod1")?;              // a "pod" namespace
//! let (host_if, pod_if) = tn.link(tn.host(), "veth1", &pod, "eth0")?;
//! let out = tn.exec(&pod, &["ip", "-br", "link"])?;
//! # let _ = (host_if, pod_if, out); Ok(()) }
//! ```
//!
//! Every namespace is a named one (`/run/netns/<prefix>-<pid>-<n>[-<pod>]`)
//! removed when the `TestNet` is dropped, including during a panic unwind;
//! processes started with [`TestNet::spawn`], and any other process still
//! inside one of its namespaces, are killed first. Creating a
//! `TestNet` switches on the root-namespace guard ([`crate::guard`]) for the
//! whole process, so a test that forgets to enter a namespace fails instead of
//! changing the host.

use std::process::{Child, Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use crate::netns::{Netns, NsId};
use crate::{guard, link, Error, Handle, Result};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A set of throwaway namespaces: one "host" plus any number of "pods".
#[derive(Debug)]
pub struct TestNet {
    base: String,
    host: Netns,
    // Every named namespace we created (host first), deleted in reverse on drop.
    names: Mutex<Vec<String>>,
    children: Mutex<Vec<Child>>,
}

/// Creates a named namespace; a leftover of the same name can only come from
/// a dead process that had our pid, so it is removed and creation retried.
fn create_fresh(name: &str) -> Result<Netns> {
    match Netns::create_named(name) {
        Err(e) if e.is_exists() => {
            Netns::delete_named(name)?;
            Netns::create_named(name)
        }
        other => other,
    }
}

fn lo_up(ns: &Netns) -> Result<()> {
    let h = Handle::in_netns(ns)?;
    let lo = link::require(&h, "lo")?;
    link::set_up(&h, lo.index)
}

impl TestNet {
    /// Creates the "host" namespace `<prefix>-<pid hex>-<counter hex>` with `lo` up.
    pub fn new(prefix: &str) -> Result<TestNet> {
        guard::forbid_root_netns();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let base = format!("{prefix}-{:x}-{n:x}", std::process::id());
        let host = create_fresh(&base)?;
        let tn = TestNet { base: base.clone(), host, names: Mutex::new(vec![base]), children: Mutex::new(Vec::new()) };
        // From here on Drop cleans up, even if bringing lo up fails.
        lo_up(&tn.host)?;
        Ok(tn)
    }

    /// The host namespace's name.
    pub fn name(&self) -> &str {
        &self.base
    }

    /// The "host"/"node" namespace.
    pub fn host(&self) -> &Netns {
        &self.host
    }

    /// Creates a further namespace `<host name>-<name>` with `lo` up; removed on drop.
    pub fn pod(&self, name: &str) -> Result<Netns> {
        let full = format!("{}-{name}", self.base);
        let ns = create_fresh(&full)?;
        self.names.lock().unwrap_or_else(|p| p.into_inner()).push(full);
        lo_up(&ns)?;
        Ok(ns)
    }

    /// Runs `f` in the host namespace, after checking that the thread really
    /// is not in the root namespace.
    pub fn run<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        self.run_in(&self.host, f)
    }

    /// Runs `f` in `ns`, after checking that the thread is not in the root namespace.
    pub fn run_in<T, F>(&self, ns: &Netns, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        ns.try_run(|| {
            if guard::in_root_netns()? {
                return Err(Error::RootNamespace { op: format!("run in {}", ns.describe()) });
            }
            Ok(f())
        })
    }

    /// A netlink handle in the host namespace.
    pub fn handle(&self) -> Result<Handle> {
        Handle::in_netns(&self.host)
    }

    /// A netlink handle in `ns`.
    pub fn handle_in(&self, ns: &Netns) -> Result<Handle> {
        Handle::in_netns(ns)
    }

    /// Runs `argv` in `ns` and returns its output (whatever the exit status).
    pub fn exec(&self, ns: &Netns, argv: &[&str]) -> Result<Output> {
        let (prog, args) = argv.split_first().ok_or_else(|| Error::invalid("exec", "empty argv"))?;
        let mut cmd = Command::new(prog);
        cmd.args(args).env("LC_ALL", "C");
        ns.output(&mut cmd)
    }

    /// Like [`TestNet::exec`] but a non-zero exit is an [`Error::Command`].
    pub fn exec_ok(&self, ns: &Netns, argv: &[&str]) -> Result<Output> {
        let out = self.exec(ns, argv)?;
        if out.status.success() {
            return Ok(out);
        }
        Err(Error::Command {
            op: format!("exec in {}", ns.describe()),
            program: argv.join(" "),
            status: out.status.code(),
            stderr: format!("{}{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout)),
        })
    }

    /// Spawns a long-running process in `ns`; it is killed when the `TestNet` drops.
    /// Returns its pid.
    pub fn spawn(&self, ns: &Netns, cmd: &mut Command) -> Result<u32> {
        let child = ns.spawn(cmd)?;
        let pid = child.id();
        self.children.lock().unwrap_or_else(|p| p.into_inner()).push(child);
        Ok(pid)
    }

    /// Connects two namespaces with a veth pair (`a_name` in `a`, `b_name` in
    /// `b`), both ends up. Returns the two interface indexes.
    pub fn link(&self, a: &Netns, a_name: &str, b: &Netns, b_name: &str) -> Result<(u32, u32)> {
        let ha = Handle::in_netns(a)?;
        let ia =
            link::create_veth(&ha, a_name, b_name, Some(b), &link::VethOptions { up: true, ..Default::default() })?;
        let hb = Handle::in_netns(b)?;
        let ib = link::index_of(&hb, b_name)?;
        Ok((ia, ib))
    }

    /// Names of all namespaces this harness created (host first).
    pub fn namespace_names(&self) -> Vec<String> {
        self.names.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        let mut children = std::mem::take(&mut *self.children.lock().unwrap_or_else(|p| p.into_inner()));
        for c in children.iter_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let names = std::mem::take(&mut *self.names.lock().unwrap_or_else(|p| p.into_inner()));
        // Processes started some other way (daemons a test launched through
        // Netns::spawn, plugin grandchildren) would keep the namespaces alive.
        let ids: Vec<NsId> =
            names.iter().filter_map(|n| Netns::open_named(n).ok()).filter_map(|ns| ns.id().ok()).collect();
        kill_processes_in(&ids);
        for name in names.iter().rev() {
            if let Err(e) = Netns::delete_named(name) {
                tracing::warn!(%name, error = %e, "could not delete test namespace");
            }
        }
    }
}

/// Removes namespaces named `<prefix>-<pid>-...` whose creating process is gone
/// (leftovers of a test run that was killed). Returns the names removed.
pub fn cleanup_stale(prefix: &str) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for name in Netns::list_named()? {
        let Some(rest) = name.strip_prefix(prefix).and_then(|r| r.strip_prefix('-')) else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| u32::from_str_radix(p, 16).ok()) else { continue };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        Netns::delete_named(&name)?;
        removed.push(name);
    }
    Ok(removed)
}

/// Sends SIGKILL to every process (other than this one) whose network
/// namespace is one of `ids`.
fn kill_processes_in(ids: &[NsId]) {
    if ids.is_empty() {
        return;
    }
    let me = std::process::id();
    let Ok(proc_dir) = std::fs::read_dir("/proc") else { return };
    for entry in proc_dir.filter_map(|e| e.ok()) {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if pid == me {
            continue;
        }
        let Ok(id) = NsId::of_path(&entry.path().join("ns/net")) else { continue };
        if ids.contains(&id) {
            if let Ok(pid) = i32::try_from(pid) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
}
