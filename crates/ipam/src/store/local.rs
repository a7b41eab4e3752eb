//! The embedded store: files under `dataDir`, one `flock` for every process of the machine.
//!
//! ```text
//! dataDir/lock                          flock(2) target (never written)
//! dataDir/pools/<pool>/pool.json        the pool definition as last configured
//! dataDir/pools/<pool>/<net>_<len>.blk  block snapshot (header, one line per allocation, end line)
//! dataDir/pools/<pool>/<net>_<len>.log  block journal: one entry per change after the snapshot
//! dataDir/pools/<pool>/.<file>.tmp      a snapshot being written (stale if seen under the lock)
//! ```
//!
//! * Every operation runs under an exclusive `flock` on `dataDir/lock`, taken with a bounded
//!   wait (`lockTimeoutMs`, then [`Error::LockTimeout`], CNI code 11). Each operation opens its
//!   own descriptor, so threads sharing one handle are serialised as well as processes.
//! * Records are tab-separated text lines (format in `lines.rs`): JSON parsing of every
//!   allocation on every operation cost several times more than the allocation itself.
//! * A change to a block is **one `write(2)` of one journal entry** (the changed allocations,
//!   then a commit line `C <version>`) appended to the block's journal: about 10 µs, where
//!   replacing a file by rename costs ~0.4 ms on ext4 (it forces write-back of the new file).
//!   Every 64 entries the journal is folded into the snapshot (temp file, optional fsync,
//!   rename) and removed.
//! * Crash safety: a snapshot is only ever replaced by rename, so it is never torn. A journal
//!   entry counts only once its commit line is complete; a process killed inside the `write`
//!   leaves an incomplete entry, which belongs to an operation that never returned: it is
//!   ignored, and cut off by the next lock holder before it appends. Entries with a version not
//!   above the snapshot's (a crash between folding and removing the journal) are skipped.
//!   Deleting a block appends a tombstone entry first, so a crash half-way never resurrects
//!   it. Stale temp files are removed by the next lock holder.
//! * `fsync: true` adds `fdatasync` of each appended line and of each snapshot (and a directory
//!   sync on rename/create/delete) for durability against power loss; killed processes need none.
//! * Nodes sharing a dataDir see each other's blocks under the same lock, so they never claim the
//!   same block; an allocation touches one block's journal, never the whole pool.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::IpAddr;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ipnet::IpNet;

use super::lines;
use super::{BlockRecord, Store, Version, Versioned};
use crate::config::{RawPool, DEFAULT_LOCK_TIMEOUT_MS};
use crate::error::{Error, Result};

const POOL_FILE: &str = "pool.json";
/// Journal lines before folding into the snapshot.
const COMPACT_LINES: usize = 64;

/// What this handle last read or wrote of a block: its version and journal length.
#[derive(Debug, Clone, Copy)]
struct Cached {
    version: Version,
    lines: usize,
}

/// Files under a data directory. See the module doc.
#[derive(Debug)]
pub struct LocalStore {
    dir: PathBuf,
    lock_timeout: Duration,
    fsync: bool,
    /// Set while this handle holds the lock (enables repairs and cleanup while reading).
    locked: AtomicBool,
    cache: Mutex<HashMap<(String, IpNet), Cached>>,
}

/// Reads a whole file into `buf` (cleared first), reusing its capacity: every call reads every
/// block's files, and `fs::read` would allocate a buffer and `statx` each file to size it.
fn read_into(path: &Path, buf: &mut Vec<u8>) -> std::io::Result<()> {
    use std::io::Read;
    buf.clear();
    File::open(path)?.read_to_end(buf).map(|_| ())
}

fn block_base_name(cidr: &IpNet) -> String {
    format!("{}_{}", cidr.network(), cidr.prefix_len())
}

fn parse_base_name(base: &str) -> Option<IpNet> {
    let (net, len) = base.rsplit_once('_')?;
    format!("{net}/{len}").parse().ok()
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
        Ok(Self::new_unchecked(dir, lock_timeout, fsync))
    }

    /// A store that does not create anything up front (for inspection).
    pub fn open_existing(dir: impl Into<PathBuf>) -> LocalStore {
        Self::new_unchecked(dir.into(), Duration::from_millis(DEFAULT_LOCK_TIMEOUT_MS), false)
    }

    fn new_unchecked(dir: PathBuf, lock_timeout: Duration, fsync: bool) -> LocalStore {
        LocalStore { dir, lock_timeout, fsync, locked: AtomicBool::new(false), cache: Mutex::new(HashMap::new()) }
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

    fn cache(&self) -> MutexGuard<'_, HashMap<(String, IpNet), Cached>> {
        match self.cache.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn is_locked(&self) -> bool {
        self.locked.load(Ordering::SeqCst)
    }

    /// Take the lock, waiting at most `timeout`.
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

    /// Replace `dir/name` by write-to-temp + rename.
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

    fn remove_if_exists(path: &Path) -> Result<()> {
        match fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    fn append(&self, path: &Path, buf: &[u8]) -> Result<()> {
        let mut f = OpenOptions::new().append(true).create(true).open(path).map_err(|e| Error::io(path, e))?;
        f.write_all(buf).map_err(|e| Error::io(path, e))?;
        if self.fsync {
            f.sync_data().map_err(|e| Error::io(path, e))?;
        }
        Ok(())
    }

    fn write_snapshot(&self, dir: &Path, base: &str, version: Version, block: &BlockRecord) -> Result<()> {
        self.write_atomic(dir, &format!("{base}.blk"), &lines::encode_snapshot(version, block))
    }

    /// Read one block from its snapshot and journal. `None` if it does not exist (or was
    /// deleted). Under the lock, repairs a torn journal tail and removes deleted leftovers.
    fn read_block(
        &self,
        dir: &Path,
        base: &str,
        has_snap: bool,
        has_log: bool,
        buf: &mut Vec<u8>,
    ) -> Result<Option<(Version, BlockRecord, usize)>> {
        let snap_path = dir.join(format!("{base}.blk"));
        let log_path = dir.join(format!("{base}.log"));
        let Some(cidr) = parse_base_name(base) else {
            return Err(Error::Corrupt { path: snap_path, msg: "file name is not <net>_<len>".into() });
        };
        let (mut version, mut record) = (0, BlockRecord { cidr, owner: None, allocs: Vec::new() });
        let mut exists = false;
        if has_snap {
            match read_into(&snap_path, buf) {
                Ok(()) => {
                    let (v, rec) =
                        lines::decode_snapshot(buf).map_err(|msg| Error::Corrupt { path: snap_path.clone(), msg })?;
                    if rec.cidr != cidr {
                        return Err(Error::Corrupt { path: snap_path, msg: format!("holds block {}", rec.cidr) });
                    }
                    version = v;
                    record = rec;
                    exists = true;
                }
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(&snap_path, e)),
            }
        }
        let mut entries = 0usize;
        let mut gone = false;
        if has_log {
            match read_into(&log_path, buf) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => buf.clear(),
                Err(e) => return Err(Error::io(&log_path, e)),
            }
            let data = &buf[..];
            let r = lines::replay(data, &mut version, &mut record);
            entries = r.entries;
            if r.applied {
                gone = r.gone;
                exists = !r.gone;
            }
            if r.good_len < data.len() && self.is_locked() {
                // An incomplete last entry: its writer died before returning. Cut it off so
                // the next append starts clean.
                let f = OpenOptions::new().write(true).open(&log_path).map_err(|e| Error::io(&log_path, e))?;
                f.set_len(r.good_len as u64).map_err(|e| Error::io(&log_path, e))?;
            }
        }
        if gone || !exists {
            if self.is_locked() {
                Self::remove_if_exists(&snap_path)?;
                Self::remove_if_exists(&log_path)?;
            }
            return Ok(None);
        }
        Ok(Some((version, record, entries)))
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
            Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| Error::Corrupt { path, msg: e.to_string() }),
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
        // base name → (snapshot present, journal present)
        let mut names: BTreeMap<String, (bool, bool)> = BTreeMap::new();
        for ent in rd {
            let ent = ent.map_err(|e| Error::io(&dir, e))?;
            let name = ent.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') {
                // A temp file seen under the lock belongs to a writer that died: drop it.
                if self.is_locked() && name.ends_with(".tmp") {
                    let _ = fs::remove_file(ent.path());
                }
                continue;
            }
            if name == POOL_FILE {
                continue;
            }
            if let Some(base) = name.strip_suffix(".blk") {
                names.entry(base.to_string()).or_default().0 = true;
            } else if let Some(base) = name.strip_suffix(".log") {
                names.entry(base.to_string()).or_default().1 = true;
            }
        }
        let mut out = Vec::with_capacity(names.len());
        let mut cache = self.cache();
        let mut buf = Vec::with_capacity(16 * 1024);
        for (base, (has_snap, has_log)) in names {
            let Some((version, record, lines)) = self.read_block(&dir, &base, has_snap, has_log, &mut buf)? else {
                continue;
            };
            cache.insert((pool.to_string(), record.cidr), Cached { version, lines });
            out.push(Versioned { value: record, version });
        }
        Ok(out)
    }

    fn put_block(
        &self,
        pool: &str,
        block: &BlockRecord,
        expect: Option<Version>,
        changed: &[IpAddr],
    ) -> Result<Version> {
        let dir = self.pool_dir(pool);
        let base = block_base_name(&block.cidr);
        let key = (pool.to_string(), block.cidr);
        let mut cache = self.cache();
        let Some(expect) = expect else {
            // Claim: the block must not exist.
            if dir.join(format!("{base}.blk")).exists() {
                return Err(Error::Conflict(format!("block {} of pool {pool} already exists", block.cidr)));
            }
            if !dir.is_dir() {
                fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            }
            Self::remove_if_exists(&dir.join(format!("{base}.log")))?;
            self.write_snapshot(&dir, &base, 1, block)?;
            cache.insert(key, Cached { version: 1, lines: 0 });
            return Ok(1);
        };
        let version = expect + 1;
        let log = dir.join(format!("{base}.log"));
        match cache.get(&key) {
            Some(c) if c.version == expect && c.lines + 1 < COMPACT_LINES => {
                let lines = c.lines + 1;
                let mut set = Vec::with_capacity(changed.len());
                let mut del = Vec::new();
                for ip in changed {
                    match block.allocs.binary_search_by(|a| a.ip.cmp(ip)) {
                        Ok(i) => set.push(&block.allocs[i]),
                        Err(_) => del.push(*ip),
                    }
                }
                self.append(&log, &lines::encode_entry(version, block.owner.as_deref(), &set, &del))?;
                cache.insert(key, Cached { version, lines });
            }
            _ => {
                // Fold: a fresh snapshot, then the journal goes (its lines are all older).
                self.write_snapshot(&dir, &base, version, block)?;
                Self::remove_if_exists(&log)?;
                cache.insert(key, Cached { version, lines: 0 });
            }
        }
        Ok(version)
    }

    fn delete_block(&self, pool: &str, cidr: &IpNet, expect: Version) -> Result<()> {
        let dir = self.pool_dir(pool);
        let base = block_base_name(cidr);
        let snap = dir.join(format!("{base}.blk"));
        let log = dir.join(format!("{base}.log"));
        if snap.exists() || log.exists() {
            // Tombstone first: a crash after it leaves a block that reads as deleted.
            self.append(&log, &lines::encode_tombstone(expect + 1))?;
            Self::remove_if_exists(&snap)?;
            Self::remove_if_exists(&log)?;
            if self.fsync {
                self.sync_dir(&dir)?;
            }
        }
        self.cache().remove(&(pool.to_string(), *cidr));
        Ok(())
    }

    fn check(&self) -> Result<()> {
        let pools = self.dir.join("pools");
        fs::create_dir_all(&pools)
            .map_err(|e| Error::NotAvailable(format!("cannot create {}: {e}", pools.display())))?;
        let probe = self.dir.join(format!(".probe.{}", std::process::id()));
        fs::write(&probe, b"ok")
            .map_err(|e| Error::NotAvailable(format!("{} is not writable: {e}", self.dir.display())))?;
        let _ = fs::remove_file(&probe);
        let lock =
            self.lock(self.lock_timeout.min(Duration::from_secs(2))).map_err(|e| Error::NotAvailable(e.to_string()))?;
        drop(lock);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::AllocRecord;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn rec(cidr: &str, ips: &[&str]) -> BlockRecord {
        BlockRecord {
            cidr: cidr.parse().unwrap(),
            owner: Some("n1".into()),
            allocs: ips
                .iter()
                .map(|ip| AllocRecord {
                    ip: ip.parse().unwrap(),
                    cid: Some(format!("c-{ip}")),
                    ifname: "eth0".into(),
                    node: "n1".into(),
                    ns: None,
                    pod: None,
                    fixed: false,
                })
                .collect(),
        }
    }

    #[test]
    fn journal_replay_torn_tail_and_compaction() {
        let d = tempfile::tempdir().unwrap();
        let s = LocalStore::open(d.path()).unwrap();
        let cidr: IpNet = "10.0.0.0/26".parse().unwrap();
        s.exclusive(|| {
            let v = s.put_block("p", &rec("10.0.0.0/26", &["10.0.0.1"]), None, &[ip("10.0.0.1")])?;
            let v = s.put_block("p", &rec("10.0.0.0/26", &["10.0.0.1", "10.0.0.2"]), Some(v), &[ip("10.0.0.2")])?;
            let v = s.put_block("p", &rec("10.0.0.0/26", &["10.0.0.2"]), Some(v), &[ip("10.0.0.1")])?;
            assert_eq!(v, 3);
            Ok(())
        })
        .unwrap();
        // A fresh handle replays the journal.
        let s2 = LocalStore::open(d.path()).unwrap();
        let blocks = s2.exclusive(|| s2.list_blocks("p")).unwrap();
        assert_eq!(blocks.len(), 1);
        assert_eq!(blocks[0].version, 3);
        assert_eq!(blocks[0].value, rec("10.0.0.0/26", &["10.0.0.2"]));
        // A torn last line is ignored and cut off under the lock.
        let log = d.path().join("pools/p/10.0.0.0_26.log");
        let before = fs::read(&log).unwrap();
        let mut f = OpenOptions::new().append(true).open(&log).unwrap();
        f.write_all(b"O\tn1\nS\t10.0.0.9\tc\teth0\tn1\t\t\t\nC\t").unwrap();
        drop(f);
        let blocks = s2.exclusive(|| s2.list_blocks("p")).unwrap();
        assert_eq!(blocks[0].value, rec("10.0.0.0/26", &["10.0.0.2"]));
        assert_eq!(fs::read(&log).unwrap(), before);
        // Many changes fold into the snapshot.
        s2.exclusive(|| {
            let mut v = 3;
            let mut prev: Option<String> = None;
            for i in 0..(COMPACT_LINES as u8 + 5) {
                let x = format!("10.0.0.{}", i % 60 + 3);
                let mut changed = vec![ip(&x)];
                if let Some(p) = prev.replace(x.clone()) {
                    changed.push(ip(&p));
                }
                changed.sort();
                v = s2.put_block("p", &rec("10.0.0.0/26", &["10.0.0.2", &x]), Some(v), &changed)?;
            }
            Ok(())
        })
        .unwrap();
        let lines = fs::read_to_string(&log).map(|s| s.lines().count()).unwrap_or(0);
        assert!(lines < COMPACT_LINES, "{lines}");
        let s3 = LocalStore::open(d.path()).unwrap();
        let blocks = s3.exclusive(|| s3.list_blocks("p")).unwrap();
        assert_eq!(blocks[0].version, 3 + COMPACT_LINES as u64 + 5);
        let last = format!("10.0.0.{}", (COMPACT_LINES as u8 + 4) % 60 + 3);
        assert_eq!(blocks[0].value, rec("10.0.0.0/26", &["10.0.0.2", &last]));
        // Delete with a tombstone; a crash between tombstone and unlink reads as deleted.
        s3.exclusive(|| s3.delete_block("p", &cidr, blocks[0].version)).unwrap();
        assert!(s3.exclusive(|| s3.list_blocks("p")).unwrap().is_empty());
        s3.exclusive(|| {
            s3.put_block("p", &rec("10.0.0.0/26", &["10.0.0.1"]), None, &[])?;
            Ok(())
        })
        .unwrap();
        let snap = d.path().join("pools/p/10.0.0.0_26.blk");
        s3.append(&log, &lines::encode_tombstone(2)).unwrap();
        assert!(s3.exclusive(|| s3.list_blocks("p")).unwrap().is_empty());
        assert!(!snap.exists() && !log.exists());
    }
}
