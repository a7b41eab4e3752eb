//! podman (Debian 12: 4.3, libcni 1.1.2) with its CNI backend, as rootful podman on a node runs
//! it, but private: a `containers.conf` given by `CONTAINERS_CONF` (CNI backend, the test's
//! network config dir and plugin dirs, cgroupfs, file locks and events, runc) and a
//! `storage.conf` by `CONTAINERS_STORAGE_CONF` (vfs), all under the test's scratch directory.
//!
//! Every podman command runs inside the node's network namespace (so the plugins run there, as
//! under a real node's podman) and inside a [`MountNs`] with private `/run/netns` (where podman
//! makes its containers' namespaces) and `/var/lib/cni` (libcni's cache, fixed in podman 4.3).
//! Containers run busybox from a `--rootfs` directory.

use std::cell::RefCell;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ipnet::IpNet;
use knit_host::Netns;
use serde_json::Value;

use crate::cgroups;
use crate::mounts::{MountNs, Source};

/// Limits for every container: podman's defaults raise RLIMIT_NOFILE and RLIMIT_NPROC to values
/// above the hard limits, which needs CAP_SYS_RESOURCE (runc then fails with "error setting
/// rlimits ... operation not permitted" where the test runs without it).
const ULIMITS: &[&str] = &["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"];

/// A podman instance private to one test.
pub struct Podman {
    net: Netns,
    dir: PathBuf,
    rootfs: PathBuf,
    conf_dir: PathBuf,
    /// `--cgroup-parent`: the containers' and conmon's cgroups, removed on drop.
    cgroup_parent: String,
    env: Vec<(String, String)>,
    /// Names given to `run`, removed on drop.
    names: RefCell<Vec<String>>,
    /// Container and conmon processes, killed on drop.
    procs: RefCell<Vec<crate::Proc>>,
    // Last: dropped after the containers are gone.
    mounts: MountNs,
}

/// A running container as podman reports it.
#[derive(Debug, Clone)]
pub struct Container {
    pub name: String,
    pub id: String,
    pub network: String,
    pub pid: u32,
    /// The namespace path the plugins were given (inside podman's mount namespace).
    pub sandbox: String,
    /// `IPAddress/IPPrefixLen`, `Gateway` and `MacAddress` of the network.
    pub ip: IpNet,
    pub gateway: Option<IpAddr>,
    pub mac: String,
}

impl Container {
    /// The container's network namespace (through its pid: the sandbox path exists only inside
    /// podman's mount namespace).
    pub fn netns(&self) -> Result<Netns, String> {
        Netns::open(format!("/proc/{}/ns/net", self.pid)).map_err(|e| format!("container {}: {e}", self.name))
    }
}

fn toml_str(p: &Path) -> String {
    format!("{:?}", p.to_string_lossy())
}

impl Podman {
    /// Sets podman up under `dir` with the plugins from `plugin_dirs`, for commands run in `net`;
    /// `env` is passed to podman and so to the plugins.
    pub fn new(net: &Netns, dir: &Path, plugin_dirs: &[PathBuf], env: Vec<(String, String)>) -> Result<Podman, String> {
        let net = net.try_clone().map_err(|e| e.to_string())?;
        let conf_dir = dir.join("net.d");
        for d in [&conf_dir, &dir.join("tmp"), &dir.join("cni-cache")] {
            std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        let rootfs = crate::rootfs::build(dir)?;
        let plugin_dirs: Vec<String> = plugin_dirs.iter().map(|d| toml_str(d)).collect();
        let containers_conf = format!(
            "[containers]\nlog_driver = \"k8s-file\"\n\n\
             [network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [{}]\nnetwork_config_dir = {}\n\n\
             [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\nevents_logfile_path = {}\n\
             lock_type = \"file\"\ntmp_dir = {}\nstatic_dir = {}\nvolume_path = {}\nruntime = \"runc\"\n",
            plugin_dirs.join(", "),
            toml_str(&conf_dir),
            toml_str(&dir.join("events.log")),
            toml_str(&dir.join("tmp")),
            toml_str(&dir.join("root/libpod")),
            toml_str(&dir.join("root/volumes")),
        );
        let storage_conf = format!(
            "[storage]\ndriver = \"vfs\"\ngraphroot = {}\nrunroot = {}\n",
            toml_str(&dir.join("root")),
            toml_str(&dir.join("runroot"))
        );
        for (f, text) in [("containers.conf", containers_conf), ("storage.conf", storage_conf)] {
            std::fs::write(dir.join(f), text).map_err(|e| format!("{f}: {e}"))?;
        }
        let mounts = MountNs::new(&net, &[("/var/lib/cni", Source::Dir(dir.join("cni-cache")))])?;
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Podman {
            net,
            dir: dir.to_path_buf(),
            rootfs,
            conf_dir,
            cgroup_parent: format!("/knit-e2e-{}-{n}", std::process::id()),
            env,
            names: RefCell::new(Vec::new()),
            procs: RefCell::new(Vec::new()),
            mounts,
        })
    }

    /// Where podman reads network configurations.
    pub fn conf_dir(&self) -> &Path {
        &self.conf_dir
    }

    /// The mount namespace podman and its plugins run in.
    pub fn mounts(&self) -> &MountNs {
        &self.mounts
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = self.mounts.command("podman");
        cmd.arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("runroot"))
            .args(args)
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.dir.join("storage.conf"));
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// `podman ARGS…` inside the node; returns its output whatever the exit status.
    pub fn cmd(&self, args: &[&str]) -> Result<Output, String> {
        crate::output_in(&self.net, &mut self.command(args))
    }

    /// `podman run -d --name NAME --network NETWORK EXTRA… --rootfs ROOTFS ARGV…`; the container
    /// is removed on drop even when the run fails (a failed run can leave it created).
    pub fn run(&self, name: &str, network: &str, extra: &[&str], argv: &[&str]) -> Result<Container, String> {
        self.names.borrow_mut().push(name.to_string());
        let mut args = vec!["run", "-d", "--name", name, "--network", network, "--cgroup-parent", &self.cgroup_parent];
        args.extend_from_slice(ULIMITS);
        args.extend_from_slice(extra);
        let rootfs = self.rootfs.to_string_lossy().into_owned();
        args.extend_from_slice(&["--rootfs", &rootfs]);
        args.extend_from_slice(argv);
        let out = self.cmd(&args)?;
        // Record what is running before anything else can fail.
        if let Ok(v) = self.inspect_json(name) {
            let mut procs = self.procs.borrow_mut();
            for k in ["Pid", "ConmonPid"] {
                let pid = v["State"][k].as_u64().and_then(|p| u32::try_from(p).ok()).filter(|p| *p != 0);
                procs.extend(pid.and_then(crate::Proc::of));
            }
        }
        if !out.status.success() {
            return Err(format!("podman run {name}: {}", crate::show(&out)));
        }
        self.inspect(name, network)
    }

    fn inspect_json(&self, name: &str) -> Result<Value, String> {
        let out = self.cmd(&["inspect", "--format", "json", name])?;
        if !out.status.success() {
            return Err(format!("podman inspect {name}: {}", crate::show(&out)));
        }
        let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| format!("podman inspect {name}: {e}"))?;
        Ok(v[0].clone())
    }

    /// What podman reports about a running container on `network`.
    pub fn inspect(&self, name: &str, network: &str) -> Result<Container, String> {
        let v = self.inspect_json(name)?;
        let n = &v["NetworkSettings"]["Networks"][network];
        let field = |val: &Value, what: &str| -> Result<String, String> {
            val.as_str().map(str::to_string).ok_or_else(|| format!("podman inspect {name}: no {what} in {v}"))
        };
        let ip = format!("{}/{}", field(&n["IPAddress"], "IPAddress")?, n["IPPrefixLen"]);
        Ok(Container {
            name: name.to_string(),
            id: field(&v["Id"], "Id")?,
            network: network.to_string(),
            pid: v["State"]["Pid"]
                .as_u64()
                .and_then(|p| u32::try_from(p).ok())
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("podman inspect {name}: no State.Pid"))?,
            sandbox: field(&v["NetworkSettings"]["SandboxKey"], "SandboxKey")?,
            ip: ip.parse().map_err(|e| format!("podman inspect {name}: address {ip}: {e}"))?,
            gateway: n["Gateway"].as_str().and_then(|g| g.parse().ok()),
            mac: field(&n["MacAddress"], "MacAddress")?,
        })
    }

    /// `podman rm -f -t 0 NAMES…`: stop at once (the busybox servers are PID 1 and ignore
    /// SIGTERM) and remove; podman runs the CNI DEL while tearing the network down.
    pub fn rm(&self, names: &[&str]) -> Result<Output, String> {
        let mut args = vec!["rm", "-f", "-t", "0"];
        args.extend_from_slice(names);
        self.cmd(&args)
    }

    /// The names of every container podman knows.
    pub fn containers(&self) -> Result<Vec<String>, String> {
        let out = self.cmd(&["ps", "-a", "--format", "{{.Names}}"])?;
        if !out.status.success() {
            return Err(format!("podman ps: {}", crate::show(&out)));
        }
        Ok(String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).filter(|l| !l.is_empty()).collect())
    }

    /// libcni's cache entries (`/var/lib/cni/results/<network>-<id>-<ifname>` in podman's view).
    pub fn cache_entries(&self) -> Vec<String> {
        crate::list_dir(&self.mounts.view("/var/lib/cni/results"))
    }

    /// The cached result of a container's attachment, as libcni stored it.
    pub fn cached(&self, c: &Container, ifname: &str) -> Result<Value, String> {
        let p = self.mounts.view(&format!("/var/lib/cni/results/{}-{}-{ifname}", c.network, c.id));
        let text = std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))
    }

    /// The namespace files podman holds (in its view of `/run/netns`).
    pub fn netns_files(&self) -> Vec<String> {
        crate::list_dir(&self.mounts.view("/run/netns"))
    }

    /// The cgroups podman made for containers that are still there (`libpod-<id>` under the
    /// test's cgroup parent, in every hierarchy).
    pub fn container_cgroups(&self) -> Vec<PathBuf> {
        cgroups::dirs(&self.cgroup_parent)
            .into_iter()
            .flat_map(|d| cgroups::subdirs(&d))
            .filter(|d| is_libpod(d))
            .collect()
    }
}

fn is_libpod(p: &Path) -> bool {
    p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("libpod-"))
}

impl Drop for Podman {
    fn drop(&mut self) {
        let names = std::mem::take(&mut *self.names.borrow_mut());
        if !names.is_empty() {
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let _ = self.rm(&names);
        }
        for p in self.procs.borrow().iter() {
            p.kill();
        }
        // podman's cgroupfs manager leaves the parent and conmon's cgroup behind.
        for d in cgroups::dirs(&self.cgroup_parent) {
            cgroups::remove(&d);
        }
    }
}
