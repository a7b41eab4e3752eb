//! The embedded store: files under `dataDir`, one `flock` for every process of the machine.
//!
//! ```text
//! dataDir/lock                          flock(2) target (never written)
//! dataDir/pools/<pool>/pool.json        the pool definition as last configured
//! dataDir/pools/<pool>/<net>_<len>.json one block record: {"version":N,"block":{cidr,owner,allocs}}
//! dataDir/pools/<pool>/.<file>.tmp      a record being written (stale if seen under the lock)
//! ```
//!
//! * Every operation runs under an exclusive `flock` on `dataDir/lock`, taken with a bounded
//!   wait (`lockTimeoutMs`, then [`Error::LockTimeout`], CNI code 11). Each operation opens its
//!   own descriptor, so threads sharing one handle are serialised as well as processes.
//! * A record is replaced by writing `.<file>.tmp`, optionally fsyncing it, and renaming it over
//!   the record (then optionally fsyncing the directory). A process killed at any point leaves
//!   either the old or the new record, never a torn one; the temp file it may leave is removed
//!   by the next lock holder.
//! * An allocation rewrites one block record (at most `2^(32-blockSize)` entries, 64 by
//!   default), never the whole pool. Nodes sharing a dataDir see each other's blocks under the
//!   same lock, so they never claim the same block.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{BlockRecord, Store, Version, Versioned};
use crate::config::{RawPool, DEFAULT_LOCK_TIMEOUT_MS};
use crate::error::{Error, Result};

const POOL_FILE: &str = "pool.json";

#[derive(Serialize, Deserialize)]
struct BlockFile {
    version: Version,
    block: BlockRecord,
}

#[derive(Serialize)]
struct BlockFileRef<'a> {
    version: Version,
    block: &'a BlockRecord,
}

/// Files under a data directory. See the module doc.
#[derive(Debug)]
pub struct LocalStore {
    dir: PathBuf,
    lock_timeout: Duration,
    fsync: bool,
    /// Set while this handle holds the lock (enables stale temp-file cleanup).
    locked: AtomicBool,
}

fn block_file_name(cidr: &IpNet) -> String {
    format!("{}_{}.json", cidr.network(), cidr.prefix_len())
}

impl LocalStore {
    /// A store in `dir` (created if missing) with the default lock timeout, no fsync.
    pub fn open(dir: impl Into<PathBuf>) -> Result<LocalStore> {
        Self::with_options(dir, Duration::from_millis(DEFAULT_LOCK_TIMEOUT_MS), false)
    }

    /// A store in `dir` (created if missing).
    pub fn with_options(dir: impl Into<PathBuf>, lock_timeout: Duration, fsync: bool) -> Result<LocalStore> {
        let dir = dir.into();
        let pools = dir.join("pools");
        if !pools.is_dir() {
            fs::create_dir_all(&pools).map_err(|e| Error::io(&pools, e))?;
        }
        Ok(LocalStore { dir, lock_timeout, fsync, locked: AtomicBool::new(false) })
    }

    /// A store that does not create anything (for read-only inspection).
    pub fn open_existing(dir: impl Into<PathBuf>) -> LocalStore {
        LocalStore {
            dir: dir.into(),
            lock_timeout: Duration::from_millis(DEFAULT_LOCK_TIMEOUT_MS),
            fsync: false,
            locked: AtomicBool::new(false),
        }
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn pool_dir(&self, pool: &str) -> PathBuf {
        self.dir.join("pools").join(pool)
    }

    fn lock_path(&self) -> PathBuf {
        self.dir.join("lock")
    }

    /// Take the lock, waiting at most the lock timeout.
    fn lock(&self, timeout: Duration) -> Result<File> {
        let path = self.lock_path();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        let fd = file.as_raw_fd();
        let start = Instant::now();
        let mut pause = Duration::from_micros(50);
        loop {
            // SAFETY: fd is an open descriptor owned by `file` for the duration of the call.
            let rc = unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                return Ok(file);
            }
            let err = std::io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EWOULDBLOCK) | Some(libc::EINTR) => {}
                _ => return Err(Error::io(&path, err)),
            }
            let waited = start.elapsed();
            if waited >= timeout {
                return Err(Error::LockTimeout { path, waited_ms: waited.as_millis() as u64 });
            }
            std::thread::sleep(pause.min(timeout.saturating_sub(waited)));
            pause = (pause * 2).min(Duration::from_millis(2));
        }
    }

    fn write_atomic(&self, dir: &Path, name: &str, data: &[u8]) -> Result<()> {
        let tmp = dir.join(format!(".{name}.tmp"));
        let dst = dir.join(name);
        {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)
                .map_err(|e| Error::io(&tmp, e))?;
            f.write_all(data).map_err(|e| Error::io(&tmp, e))?;
            if self.fsync {
                f.sync_data().map_err(|e| Error::io(&tmp, e))?;
            }
        }
        fs::rename(&tmp, &dst).map_err(|e| Error::io(&dst, e))?;
        if self.fsync {
            self.sync_dir(dir)?;
        }
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> Result<()> {
        let d = File::open(dir).map_err(|e| Error::io(dir, e))?;
        d.sync_all().map_err(|e| Error::io(dir, e))
    }
}

impl Store for LocalStore {
    fn exclusive<R>(&self, f: impl FnOnce() -> Result<R>) -> Result<R> {
        let lock = self.lock(self.lock_timeout)?;
        self.locked.store(true, Ordering::SeqCst);
        let r = f();
        self.locked.store(false, Ordering::SeqCst);
        drop(lock); // closing the descriptor releases the flock
        r
    }

    fn list_pools(&self) -> Result<Vec<String>> {
        let dir = self.dir.join("pools");
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(&dir, e)),
        };
        let mut out = Vec::new();
        for ent in rd {
            let ent = ent.map_err(|e| Error::io(&dir, e))?;
            let name = ent.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            if ent.path().join(POOL_FILE).is_file() {
                out.push(name);
            }
        }
        out.sort();
        Ok(out)
    }

    fn get_pool(&self, pool: &str) -> Result<Option<RawPool>> {
        let path = self.pool_dir(pool).join(POOL_FILE);
        match fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| Error::Corrupt { path, msg: e.to_string() }),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(&path, e)),
        }
    }

    fn put_pool(&self, pool: &RawPool) -> Result<()> {
        let dir = self.pool_dir(&pool.name);
        if !dir.is_dir() {
            fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
        let data = serde_json::to_vec(pool).map_err(|e| Error::Corrupt { path: dir.clone(), msg: e.to_string() })?;
        self.write_atomic(&dir, POOL_FILE, &data)
    }

    fn list_blocks(&self, pool: &str) -> Result<Vec<Versioned<BlockRecord>>> {
        let dir = self.pool_dir(pool);
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(&dir, e)),
        };
        let mut out = Vec::new();
        for ent in rd {
            let ent = ent.map_err(|e| Error::io(&dir, e))?;
            let name = ent.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') {
                // A temp file seen under the lock belongs to a writer that died: drop it.
                if self.locked.load(Ordering::SeqCst) && name.ends_with(".tmp") {
                    let _ = fs::remove_file(ent.path());
                }
                continue;
            }
            if name == POOL_FILE || !name.ends_with(".json") {
                continue;
            }
            let path = ent.path();
            let data = match fs::read(&path) {
                Ok(d) => d,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(&path, e)),
            };
            let bf: BlockFile =
                serde_json::from_slice(&data).map_err(|e| Error::Corrupt { path: path.clone(), msg: e.to_string() })?;
            out.push(Versioned { value: bf.block, version: bf.version });
        }
        out.sort_by_key(|a| a.value.cidr);
        Ok(out)
    }

    fn put_block(&self, pool: &str, block: &BlockRecord, expect: Option<Version>) -> Result<Version> {
        let dir = self.pool_dir(pool);
        let name = block_file_name(&block.cidr);
        if expect.is_none() && dir.join(&name).exists() {
            return Err(Error::Conflict(format!("block {} of pool {pool} already exists", block.cidr)));
        }
        if !dir.is_dir() {
            fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
        // Under the lock nobody else writes, so the version read is the version on disk.
        let version = expect.unwrap_or(0) + 1;
        let data = serde_json::to_vec(&BlockFileRef { version, block })
            .map_err(|e| Error::Corrupt { path: dir.join(&name), msg: e.to_string() })?;
        self.write_atomic(&dir, &name, &data)?;
        Ok(version)
    }

    fn delete_block(&self, pool: &str, cidr: &IpNet, _expect: Version) -> Result<()> {
        let dir = self.pool_dir(pool);
        let path = dir.join(block_file_name(cidr));
        match fs::remove_file(&path) {
            Ok(()) => {
                if self.fsync {
                    self.sync_dir(&dir)?;
                }
                Ok(())
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(&path, e)),
        }
    }

    fn check(&self) -> Result<()> {
        let pools = self.dir.join("pools");
        fs::create_dir_all(&pools).map_err(|e| Error::NotAvailable(format!("cannot create {}: {e}", pools.display())))?;
        let probe = self.dir.join(format!(".probe.{}", std::process::id()));
        fs::write(&probe, b"ok")
            .map_err(|e| Error::NotAvailable(format!("{} is not writable: {e}", self.dir.display())))?;
        let _ = fs::remove_file(&probe);
        let lock = self
            .lock(self.lock_timeout.min(Duration::from_secs(2)))
            .map_err(|e| Error::NotAvailable(e.to_string()))?;
        drop(lock);
        Ok(())
    }
}
