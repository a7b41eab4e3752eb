//! Network namespaces: open, create (like `ip netns add`), delete, and run code
//! or commands inside one.
//!
//! `setns(CLONE_NEWNET)` only affects the calling thread, and threads and child
//! processes inherit the thread's namespace. So this module never switches the
//! caller's thread: [`Netns::run`] does its work on a short-lived dedicated
//! thread that enters the namespace and then exits, which keeps every other
//! thread (test harness threads, async runtimes) where it was.

use std::fs::{self, File, OpenOptions};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

use crate::{Error, Result};

/// Where named namespaces live, as with iproute2.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// Lock serialising the one-time "make /run/netns a shared mount point" step
/// between concurrent processes, so parallel creators don't stack bind mounts.
const RUN_DIR_LOCK: &str = "/run/knit-netns.lock";

/// Identity of a namespace: the (device, inode) of its nsfs file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NsId {
    /// Device number of the nsfs.
    pub dev: u64,
    /// Inode number (what `ls -i /proc/PID/ns/net` shows).
    pub ino: u64,
}

impl NsId {
    /// The identity of the namespace file at `path` (e.g. `/proc/1/ns/net`).
    pub fn of_path(path: &Path) -> Result<NsId> {
        let m = fs::metadata(path).map_err(|e| Error::io(format!("stat {}", path.display()), e))?;
        Ok(NsId { dev: m.dev(), ino: m.ino() })
    }

    /// The identity of the calling thread's network namespace.
    pub fn current() -> Result<NsId> {
        NsId::of_path(Path::new("/proc/thread-self/ns/net"))
    }
}

/// An open network namespace.
///
/// Holding the file descriptor keeps the namespace alive even if its
/// `/run/netns` entry is removed.
#[derive(Debug)]
pub struct Netns {
    fd: OwnedFd,
    path: Option<PathBuf>,
    name: Option<String>,
}

impl Netns {
    /// Opens a namespace file: `/run/netns/NAME`, `/proc/PID/ns/net`, or a bind mount elsewhere.
    pub fn open(path: impl AsRef<Path>) -> Result<Netns> {
        let path = path.as_ref();
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| Error::io(format!("open netns {}", path.display()), e))?;
        let name = path
            .parent()
            .filter(|p| *p == Path::new(NETNS_RUN_DIR))
            .and_then(|_| path.file_name())
            .map(|n| n.to_string_lossy().into_owned());
        Ok(Netns { fd: file.into(), path: Some(path.to_path_buf()), name })
    }

    /// Opens the named namespace `/run/netns/NAME`.
    pub fn open_named(name: &str) -> Result<Netns> {
        validate_name(name, "open netns")?;
        Netns::open(Netns::named_path(name))
    }

    /// The calling thread's namespace.
    pub fn current() -> Result<Netns> {
        let mut ns = Netns::open("/proc/thread-self/ns/net")?;
        // The path names "whoever opens it", not this namespace, so don't keep it.
        ns.path = None;
        Ok(ns)
    }

    /// The host's ("root") namespace: PID 1's, or, where `/proc/1/ns/net` is
    /// unreadable (some sandboxes), the one this process started in.
    pub fn root() -> Result<Netns> {
        Netns::open("/proc/1/ns/net").or_else(|_| Netns::open("/proc/self/ns/net"))
    }

    /// The path a named namespace has under [`NETNS_RUN_DIR`].
    pub fn named_path(name: &str) -> PathBuf {
        Path::new(NETNS_RUN_DIR).join(name)
    }

    /// Creates a new, empty namespace pinned at `/run/netns/NAME`, like `ip netns add`.
    ///
    /// Fails with `EEXIST` if the name is taken. The namespace is created by
    /// `unshare(CLONE_NEWNET)` on a throwaway thread whose namespace file is then
    /// bind-mounted, so the caller's thread is never switched.
    pub fn create_named(name: &str) -> Result<Netns> {
        let op = format!("create netns {name}");
        validate_name(name, &op)?;
        fs::create_dir_all(NETNS_RUN_DIR).map_err(|e| Error::io(format!("{op}: mkdir {NETNS_RUN_DIR}"), e))?;
        make_run_dir_shared(&op)?;

        let path = Netns::named_path(name);
        // The bind-mount target; create_new so two creators of one name can't both win.
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o444)
            .open(&path)
            .map_err(|e| Error::io(format!("{op}: create {}", path.display()), e))?;

        let mounted = run_on_thread(|| -> Result<()> {
            nix::sched::unshare(CloneFlags::CLONE_NEWNET).map_err(|e| Error::nix(format!("{op}: unshare"), e))?;
            nix::mount::mount(Some("/proc/thread-self/ns/net"), &path, None::<&str>, MsFlags::MS_BIND, None::<&str>)
                .map_err(|e| Error::nix(format!("{op}: bind-mount onto {}", path.display()), e))
        })
        .and_then(|r| r);
        if let Err(e) = mounted {
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        Netns::open(&path)
    }

    /// Removes `/run/netns/NAME` (unmount + unlink). Missing names are not an error.
    ///
    /// The namespace itself disappears once no process, open fd or socket uses it.
    pub fn delete_named(name: &str) -> Result<()> {
        let op = format!("delete netns {name}");
        validate_name(name, &op)?;
        let path = Netns::named_path(name);
        // Loop: a racing `ip netns add` elsewhere may have stacked a second mount.
        for _ in 0..8 {
            match nix::mount::umount2(&path, MntFlags::MNT_DETACH) {
                Ok(()) => continue,
                Err(Errno::EINVAL) | Err(Errno::ENOENT) => break,
                Err(e) => return Err(Error::nix(format!("{op}: umount {}", path.display()), e)),
            }
        }
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("{op}: remove {}", path.display()), e)),
        }
    }

    /// Names of all namespaces under [`NETNS_RUN_DIR`].
    pub fn list_named() -> Result<Vec<String>> {
        let rd = match fs::read_dir(NETNS_RUN_DIR) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(format!("list {NETNS_RUN_DIR}"), e)),
        };
        let mut names: Vec<String> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        Ok(names)
    }

    /// The (device, inode) identity of this namespace.
    pub fn id(&self) -> Result<NsId> {
        let f = File::from(self.fd.try_clone().map_err(|e| Error::io("dup netns fd", e))?);
        let m = f.metadata().map_err(|e| Error::io(format!("stat netns {}", self.describe()), e))?;
        Ok(NsId { dev: m.dev(), ino: m.ino() })
    }

    /// The namespace's inode number (as shown by `ls -i /proc/PID/ns/net`).
    pub fn inode(&self) -> Result<u64> {
        Ok(self.id()?.ino)
    }

    /// The path this namespace was opened from, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The `/run/netns` name, if opened or created by name.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// Another handle on the same namespace (dup'ed fd).
    pub fn try_clone(&self) -> Result<Netns> {
        Ok(Netns {
            fd: self.fd.try_clone().map_err(|e| Error::io(format!("dup netns fd {}", self.describe()), e))?,
            path: self.path.clone(),
            name: self.name.clone(),
        })
    }

    /// Runs `f` on a fresh thread that has entered this namespace, and returns its result.
    ///
    /// The caller's thread is never switched. A panic in `f` is re-raised in the
    /// caller (so test assertions inside work as expected).
    pub fn run<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        let fd = self.fd.as_fd();
        let what = self.describe();
        run_on_thread(move || -> Result<T> {
            nix::sched::setns(fd, CloneFlags::CLONE_NEWNET).map_err(|e| Error::nix(format!("setns into {what}"), e))?;
            Ok(f())
        })
        .and_then(|r| r)
    }

    /// Like [`Netns::run`] for closures that return this crate's `Result`.
    pub fn try_run<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> Result<T> + Send,
        T: Send,
    {
        self.run(f).and_then(|r| r)
    }

    /// Runs a command inside this namespace and collects its output.
    ///
    /// The child is spawned from a thread that entered the namespace and so
    /// inherits it; no shell is involved.
    pub fn output(&self, cmd: &mut Command) -> Result<Output> {
        let prog = cmd.get_program().to_string_lossy().into_owned();
        let what = self.describe();
        self.run(|| cmd.output())?.map_err(|e| Error::io(format!("run {prog} in {what}"), e))
    }

    /// Spawns a command inside this namespace; the caller owns (and must reap) the child.
    pub fn spawn(&self, cmd: &mut Command) -> Result<Child> {
        let prog = cmd.get_program().to_string_lossy().into_owned();
        let what = self.describe();
        self.run(|| cmd.spawn())?.map_err(|e| Error::io(format!("spawn {prog} in {what}"), e))
    }

    /// A short description for error messages: name, path, or fd.
    pub fn describe(&self) -> String {
        match (&self.name, &self.path) {
            (Some(n), _) => format!("netns {n}"),
            (None, Some(p)) => format!("netns {}", p.display()),
            (None, None) => format!("netns fd {}", self.fd.as_raw_fd()),
        }
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Netns {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Runs `f` on a scoped thread and returns its value, re-raising its panic.
pub(crate) fn run_on_thread<T, F>(f: F) -> Result<T>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    std::thread::scope(|s| {
        let h = std::thread::Builder::new()
            .name("knit-netns".into())
            .spawn_scoped(s, f)
            .map_err(|e| Error::io("spawn netns thread", e))?;
        match h.join() {
            Ok(v) => Ok(v),
            Err(payload) => std::panic::resume_unwind(payload),
        }
    })
}

fn validate_name(name: &str, op: &str) -> Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') || name.len() > 255 {
        return Err(Error::invalid(op, format!("bad namespace name {name:?}")));
    }
    Ok(())
}

/// Makes [`NETNS_RUN_DIR`] a shared mount point, as iproute2 does, so that
/// unmounting a namespace file propagates to other mount namespaces and the
/// namespace can be freed.
fn make_run_dir_shared(op: &str) -> Result<()> {
    let lock_file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(RUN_DIR_LOCK)
        .map_err(|e| Error::io(format!("{op}: open {RUN_DIR_LOCK}"), e))?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| Error::nix(format!("{op}: lock {RUN_DIR_LOCK}"), e))?;
    let shared =
        || nix::mount::mount(Some(""), NETNS_RUN_DIR, Some("none"), MsFlags::MS_SHARED | MsFlags::MS_REC, None::<&str>);
    match shared() {
        Ok(()) => Ok(()),
        // EINVAL: not a mount point yet; bind it onto itself, then retry once.
        Err(Errno::EINVAL) => {
            nix::mount::mount(
                Some(NETNS_RUN_DIR),
                NETNS_RUN_DIR,
                Some("none"),
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| Error::nix(format!("{op}: bind-mount {NETNS_RUN_DIR}"), e))?;
            shared().map_err(|e| Error::nix(format!("{op}: make {NETNS_RUN_DIR} shared"), e))
        }
        Err(e) => Err(Error::nix(format!("{op}: make {NETNS_RUN_DIR} shared"), e)),
    }
}
