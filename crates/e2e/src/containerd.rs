//! containerd (Debian 12: 1.6, go-cni 1.1.7 over libcni 1.1.2) and `ctr run --cni --rootfs`.
//!
//! The daemon runs inside the node's network namespace with its own root, state, sockets and
//! configuration under the test's scratch directory (the CRI plugin off: `ctr` talks to it
//! directly), and is stopped on drop. `ctr run --cni` does the CNI calls itself, through go-cni
//! with fixed paths: the first conflist of `/etc/cni/net.d`, plugins from `/opt/cni/bin` and
//! Debian's `/usr/lib/cni`, the cache in `/var/lib/cni`; and the shims put their sockets under
//! `/run/containerd`. Daemon and `ctr` therefore run in a [`MountNs`] where those paths are the
//! test's directories.
//!
//! `ctr run` sends DEL only when it runs in the foreground with `--rm` and the task ends (a
//! detached task's network is never torn down by `ctr task kill`/`delete`), so [`Containerd::run`]
//! keeps a foreground `ctr run` per container and [`Containerd::stop`] kills the task and waits
//! for that `ctr` to finish its DEL.

use std::cell::RefCell;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use knit_host::Netns;

use crate::mounts::{MountNs, Source};
use crate::Proc;

/// Waits of 100 ms: how long a task may take to start or to be torn down before the test gives
/// up on it (generous: the machine may be busy).
const PATIENCE: u32 = 600;

/// A containerd daemon private to one test.
pub struct Containerd {
    net: Netns,
    dir: PathBuf,
    sock: PathBuf,
    rootfs: PathBuf,
    env: Vec<(String, String)>,
    daemon: Option<Child>,
    /// Foreground `ctr run` processes, by container ID.
    runs: RefCell<Vec<(String, Child)>>,
    /// Every container ID used, deleted on drop.
    ids: RefCell<Vec<String>>,
    /// The parent of the tasks' cgroups (`--cgroup <parent>/<id>`), removed on drop.
    cgroup_parent: String,
    /// Container processes, killed on drop.
    procs: RefCell<Vec<Proc>>,
    // Last: dropped after the daemon and the containers are gone.
    mounts: MountNs,
}

/// A running task.
#[derive(Debug, Clone)]
pub struct Task {
    pub id: String,
    /// CNI_CONTAINERID: ctr prefixes the containerd namespace.
    pub cni_id: String,
    pub pid: u32,
}

impl Task {
    /// The task's network namespace (the path ctr gave the plugins, `/proc/<pid>/ns/net`).
    pub fn netns(&self) -> Result<Netns, String> {
        Netns::open(format!("/proc/{}/ns/net", self.pid)).map_err(|e| format!("task {}: {e}", self.id))
    }
}

impl Containerd {
    /// Starts the daemon in `net`, with `/opt/cni/bin` = `cni_bin` and `/etc/cni/net.d` =
    /// `conf_dir` for `ctr`; `env` is passed to `ctr` and so to the plugins.
    pub fn start(
        net: &Netns,
        dir: &Path,
        cni_bin: &Path,
        conf_dir: &Path,
        env: Vec<(String, String)>,
    ) -> Result<Containerd, String> {
        let net = net.try_clone().map_err(|e| e.to_string())?;
        for d in ["root", "state", "cni-cache", "opt"] {
            std::fs::create_dir_all(dir.join(d)).map_err(|e| format!("{d}: {e}"))?;
        }
        let rootfs = crate::rootfs::build(dir)?;
        let sock = dir.join("containerd.sock");
        let q = |p: PathBuf| format!("{:?}", p.to_string_lossy());
        let config = format!(
            "version = 2\nroot = {}\nstate = {}\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\", \"io.containerd.snapshotter.v1.btrfs\", \
             \"io.containerd.snapshotter.v1.zfs\", \"io.containerd.snapshotter.v1.devmapper\", \
             \"io.containerd.snapshotter.v1.aufs\"]\n\
             [grpc]\n  address = {}\n[ttrpc]\n  address = {}\n[debug]\n  address = \"\"\n[metrics]\n  address = \"\"\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = {}\n",
            q(dir.join("root")),
            q(dir.join("state")),
            q(sock.clone()),
            q(dir.join("containerd.sock.ttrpc")),
            q(dir.join("opt")),
        );
        let config_path = dir.join("containerd.toml");
        std::fs::write(&config_path, config).map_err(|e| format!("containerd.toml: {e}"))?;
        let mounts = MountNs::new(
            &net,
            &[
                ("/run/containerd", Source::Empty),
                ("/etc/cni/net.d", Source::Dir(conf_dir.to_path_buf())),
                ("/opt/cni/bin", Source::Dir(cni_bin.to_path_buf())),
                ("/var/lib/cni", Source::Dir(dir.join("cni-cache"))),
            ],
        )?;
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut cd = Containerd {
            net,
            dir: dir.to_path_buf(),
            sock,
            rootfs,
            env,
            daemon: None,
            runs: RefCell::new(Vec::new()),
            ids: RefCell::new(Vec::new()),
            cgroup_parent: format!("/knit-e2e-{}-{n}", std::process::id()),
            procs: RefCell::new(Vec::new()),
            mounts,
        };
        let log = File::create(dir.join("containerd.log")).map_err(|e| format!("containerd.log: {e}"))?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = cd.mounts.command("containerd");
        cmd.arg("--config").arg(&config_path).stdin(Stdio::null()).stdout(log).stderr(log2);
        cd.daemon = Some(cd.net.spawn(&mut cmd).map_err(|e| format!("start containerd: {e}"))?);
        let ready = crate::wait_for(PATIENCE, || {
            if cd.daemon_exited() {
                return Some(false);
            }
            cd.ctr(&["version"]).ok().filter(|o| o.status.success()).map(|_| true)
        });
        if ready != Some(true) {
            return Err(format!("containerd did not come up: {}", cd.daemon_log()));
        }
        Ok(cd)
    }

    fn daemon_exited(&self) -> bool {
        // try_wait needs &mut; the daemon's /proc entry says the same without it.
        self.daemon.as_ref().is_none_or(|c| Proc::of(c.id()).is_none_or(|p| !p.alive()))
    }

    /// The daemon's log.
    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// The mount namespace the daemon, `ctr` and the plugins run in.
    pub fn mounts(&self) -> &MountNs {
        &self.mounts
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = self.mounts.command("ctr");
        cmd.arg("--address").arg(&self.sock).args(args);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// `ctr ARGS…` inside the node; its output whatever the exit status.
    pub fn ctr(&self, args: &[&str]) -> Result<Output, String> {
        crate::output_in(&self.net, &mut self.command(args))
    }

    /// `(id, pid, status)` of every task (`ctr task ls`).
    pub fn tasks(&self) -> Result<Vec<(String, u32, String)>, String> {
        let out = self.ctr(&["task", "ls"])?;
        if !out.status.success() {
            return Err(format!("ctr task ls: {}", crate::show(&out)));
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                Some((f.first()?.to_string(), f.get(1)?.parse().ok()?, f.get(2)?.to_string()))
            })
            .collect())
    }

    /// The IDs of every container (`ctr container ls -q`).
    pub fn containers(&self) -> Result<Vec<String>, String> {
        let out = self.ctr(&["container", "ls", "-q"])?;
        if !out.status.success() {
            return Err(format!("ctr container ls: {}", crate::show(&out)));
        }
        Ok(String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).filter(|l| !l.is_empty()).collect())
    }

    fn run_log(&self, id: &str) -> PathBuf {
        self.dir.join(format!("run-{id}.log"))
    }

    /// `ctr run --rm --cni --cgroup PARENT/ID --rootfs ROOTFS ID ARGV…` in the foreground (the
    /// cgroup under a parent of this test's own); returns once the task runs, that is once the CNI
    /// ADD succeeded, or the `ctr` output when it ended before.
    pub fn run(&self, id: &str, argv: &[&str]) -> Result<Task, String> {
        self.ids.borrow_mut().push(id.to_string());
        let log = File::create(self.run_log(id)).map_err(|e| format!("run log: {e}"))?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let rootfs = self.rootfs.to_string_lossy().into_owned();
        let cgroup = format!("{}/{id}", self.cgroup_parent);
        let mut args = vec!["run", "--rm", "--cni", "--cgroup", &cgroup, "--rootfs", &rootfs, id];
        args.extend_from_slice(argv);
        let mut cmd = self.command(&args);
        cmd.stdin(Stdio::null()).stdout(log).stderr(log2);
        let child = self.net.spawn(&mut cmd).map_err(|e| format!("ctr run {id}: {e}"))?;
        let ctr = Proc::of(child.id());
        self.runs.borrow_mut().push((id.to_string(), child));
        let pid = crate::wait_for(PATIENCE, || {
            if ctr.is_none_or(|p| !p.alive()) {
                return Some(None);
            }
            let tasks = self.tasks().ok()?;
            tasks.into_iter().find(|(t, _, s)| t == id && s == "RUNNING").map(|(_, pid, _)| Some(pid))
        });
        match pid {
            Some(Some(pid)) => {
                self.procs.borrow_mut().extend(Proc::of(pid));
                Ok(Task { id: id.to_string(), cni_id: format!("default-{id}"), pid })
            }
            Some(None) => {
                self.reap(id);
                Err(format!("ctr run {id} ended: {}", self.read_run_log(id)))
            }
            None => Err(format!("ctr run {id}: the task is not running: {}", self.read_run_log(id))),
        }
    }

    /// What `ctr run ID` printed (its errors, e.g. a failed CNI ADD or DEL).
    pub fn read_run_log(&self, id: &str) -> String {
        std::fs::read_to_string(self.run_log(id)).unwrap_or_default()
    }

    /// Waits for the foreground `ctr run ID` to end; true when it did.
    fn reap(&self, id: &str) -> bool {
        let mut runs = self.runs.borrow_mut();
        let Some(i) = runs.iter().position(|(r, _)| r == id) else { return true };
        let ended = crate::wait_for(PATIENCE, || runs[i].1.try_wait().ok().flatten().map(|_| ())).is_some();
        if ended {
            runs.remove(i);
        }
        ended
    }

    /// `ctr task kill -s KILL ID`, then waits for the foreground `ctr run` to send the CNI DEL,
    /// delete the task and the container, and end. Returns what it printed.
    pub fn stop(&self, id: &str) -> Result<String, String> {
        let out = self.ctr(&["task", "kill", "-s", "KILL", id])?;
        if !out.status.success() {
            return Err(format!("ctr task kill {id}: {}", crate::show(&out)));
        }
        if !self.reap(id) {
            return Err(format!("ctr run {id} did not end after its task was killed"));
        }
        Ok(self.read_run_log(id))
    }

    /// libcni's cache entries (`/var/lib/cni/results/<network>-<id>-<ifname>` in ctr's view).
    pub fn cache_entries(&self) -> Vec<String> {
        crate::list_dir(&self.mounts.view("/var/lib/cni/results"))
    }

    /// The cached result of a task's attachment on `network`.
    pub fn cached(&self, network: &str, task: &Task, ifname: &str) -> Result<serde_json::Value, String> {
        let p = self.mounts.view(&format!("/var/lib/cni/results/{network}-{}-{ifname}", task.cni_id));
        let text = std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))
    }

    /// Processes in the daemon's mount namespace other than the holder and the daemon (shims).
    pub fn shims(&self) -> Vec<String> {
        let daemon = self.daemon.as_ref().map(|c| c.id());
        let holder = self.mounts.holder_pid();
        match self.mounts.id() {
            Ok(id) => crate::node::processes_in(crate::node::NsKind::Mnt, id)
                .into_iter()
                .filter(|p| {
                    let pid = p.split_whitespace().next().and_then(|s| s.parse::<u32>().ok());
                    pid != daemon && pid != Some(holder)
                })
                .collect(),
            Err(e) => vec![e],
        }
    }

    /// The tasks' cgroups that are still there (under the test's parent, in every hierarchy).
    pub fn task_cgroups(&self) -> Vec<PathBuf> {
        crate::cgroups::dirs(&self.cgroup_parent).into_iter().flat_map(|d| crate::cgroups::subdirs(&d)).collect()
    }

    /// Removes what a failed `ctr run ID` left (ctr leaves the task created when the CNI ADD fails).
    pub fn force_delete(&self, id: &str) {
        let _ = self.ctr(&["task", "delete", "--force", id]);
        let _ = self.ctr(&["container", "delete", id]);
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let running: Vec<String> = self.runs.borrow().iter().map(|(id, _)| id.clone()).collect();
        for id in &running {
            let _ = self.ctr(&["task", "kill", "-s", "KILL", id]);
        }
        for (_, mut child) in std::mem::take(&mut *self.runs.borrow_mut()) {
            if crate::wait_for(100, || child.try_wait().ok().flatten()).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let ids = std::mem::take(&mut *self.ids.borrow_mut());
        for id in &ids {
            self.force_delete(id);
        }
        if let Some(mut d) = self.daemon.take() {
            if let Ok(pid) = i32::try_from(d.id()) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
            }
            if crate::wait_for(50, || d.try_wait().ok().flatten()).is_none() {
                let _ = d.kill();
                let _ = d.wait();
            }
        }
        for p in self.procs.borrow().iter() {
            p.kill();
        }
        if let Ok(id) = self.mounts.id() {
            for p in crate::node::processes_in(crate::node::NsKind::Mnt, id) {
                if let Some(pid) = p.split_whitespace().next().and_then(|s| s.parse::<u32>().ok()) {
                    if pid != self.mounts.holder_pid() {
                        crate::kill(pid);
                    }
                }
            }
        }
        // The parent, and the cgroups of tasks that were never deleted.
        for d in crate::cgroups::dirs(&self.cgroup_parent) {
            crate::cgroups::remove(&d);
        }
    }
}
