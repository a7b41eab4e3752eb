//! A mount namespace of the test's own, held by a sleeping process.
//!
//! Both runtimes insist on fixed paths: podman makes its containers' network namespaces under
//! `/run/netns` and libcni keeps its cache in `/var/lib/cni`; `ctr run --cni` reads only
//! `/etc/cni/net.d` and runs plugins only from `/opt/cni/bin` (and Debian's `/usr/lib/cni`), and
//! containerd's shims put their sockets under `/run/containerd`. In this namespace those paths are
//! the test's own directories (bind mounts) or empty tmpfs, so a runtime shares nothing with the
//! host or with other tests, and whatever it leaves mounted there (a namespace file, a cache) goes
//! away with the namespace when the holder and the runtime's processes are killed.
//!
//! Only mount points are created on the host's filesystem (`mkdir -p` of the paths above when
//! missing: the empty directories a runtime's own package or first run creates).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use knit_host::{Netns, NsId};

/// What to mount at a path inside the namespace.
#[derive(Debug, Clone)]
pub enum Source {
    /// A bind mount of this directory.
    Dir(PathBuf),
    /// An empty tmpfs.
    Empty,
}

/// The namespace; the holder is killed on drop, which ends the namespace once the runtime's own
/// processes are gone too.
#[derive(Debug)]
pub struct MountNs {
    holder: Child,
    pid: u32,
}

fn quote(p: &Path) -> Result<String, String> {
    let s = p.to_str().ok_or_else(|| format!("{} is not UTF-8", p.display()))?;
    if s.contains('\'') {
        return Err(format!("{s} contains a quote"));
    }
    Ok(format!("'{s}'"))
}

impl MountNs {
    /// Starts the holder inside `net` (nothing of the test runs in the root network namespace)
    /// with `mounts` applied, and returns once they are in place.
    pub fn new(net: &Netns, mounts: &[(&str, Source)]) -> Result<MountNs, String> {
        // The namespace starts as a copy of ours, and its copy of /run/netns would pin every
        // network namespace that exists now (other tests' too) until it ends: detach that copy
        // and give the runtime an empty /run/netns.
        let mut script = String::from(
            "set -eu\numount -l /run/netns 2>/dev/null || true\nmkdir -p /run/netns\nmount -t tmpfs knit-e2e /run/netns\n",
        );
        for (target, source) in mounts {
            let t = quote(Path::new(target))?;
            script.push_str(&format!("mkdir -p {t}\n"));
            match source {
                Source::Dir(src) => script.push_str(&format!("mount --bind {} {t}\n", quote(src)?)),
                Source::Empty => script.push_str(&format!("mount -t tmpfs knit-e2e {t}\n")),
            }
        }
        script.push_str("echo ready\nexec sleep infinity\n");

        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut holder = net.spawn(&mut cmd).map_err(|e| format!("start the mount namespace holder: {e}"))?;
        let pid = holder.id();
        let mut line = String::new();
        if let Some(out) = holder.stdout.take() {
            let _ = BufReader::new(out).read_line(&mut line);
        }
        if line.trim() != "ready" {
            crate::kill(pid);
            let mut err = String::new();
            if let Some(mut e) = holder.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            let _ = holder.wait();
            return Err(format!("setting up the private mounts failed: {}", err.trim()));
        }
        Ok(MountNs { holder, pid })
    }

    /// `nsenter` into this mount namespace, then `program`: the network namespace is the caller's
    /// (spawn it with [`Netns::output`]/[`Netns::spawn`]).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--mount=/proc/{}/ns/mnt", self.pid)).arg("--").arg(program);
        cmd
    }

    /// `path` as this namespace sees it, readable from the test (through `/proc/PID/root`).
    pub fn view(&self, path: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{path}", self.pid))
    }

    /// The namespace's identity, to find the processes in it.
    pub fn id(&self) -> Result<NsId, String> {
        NsId::of_path(Path::new(&format!("/proc/{}/ns/mnt", self.pid))).map_err(|e| e.to_string())
    }

    /// The holder's pid.
    pub fn holder_pid(&self) -> u32 {
        self.pid
    }
}

impl Drop for MountNs {
    fn drop(&mut self) {
        crate::kill(self.pid);
        let _ = self.holder.wait();
    }
}
