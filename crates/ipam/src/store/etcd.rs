//! The etcd store (`store: "etcd"`): every block write is an etcd transaction.
//!
//! ```text
//! /knit/ipam/pools/<pool>                          pool definition (JSON RawPool)
//! /knit/ipam/blocks/<pool>/<net>_<len>             block record (JSON BlockRecord)
//! /knit/ipam/handles/<cid>/<ifname>/<v4|v6>        {"ip":..,"pool":..,"block":..}
//! ```
//!
//! * A record's [`Version`] is its etcd `mod_revision`.
//! * **Claim a block**: a txn `create_revision(block) == 0` → put block (with its first IP).
//! * **Claim an IP in a block**: a txn `mod_revision(block) == version read` and
//!   `create_revision(handle) == 0` → put block, put handle. The handle key of the
//!   (containerID, ifname, family) is written in the same transaction, so an attachment can never
//!   hold two addresses of one family even when two of its ADDs race in different blocks.
//! * **Release**: a txn `mod_revision(block) == version read` and `value(handle) == that IP` →
//!   put block (or delete an emptied stripe), delete handle. A handle that is missing or names
//!   another address is left alone (the block compare is what guards the address).
//! * All writes of one operation (a dual-stack ADD touches two blocks, a GC many) are **one**
//!   transaction: written entirely or not at all. On a failed compare the same transaction reads
//!   back the compared keys (its `else` branch) to tell a concurrent change ([`Error::Conflict`]:
//!   [`crate::Ipam`] reloads and re-runs, bounded, with jitter) from a stale handle.
//! * Reading is one range request per pool (`list_blocks`); nothing ever rewrites a pool.
//! * etcd-client is async: the store owns a current-thread tokio runtime and blocks on it. Each
//!   request is bounded by `etcdTimeoutMs` (connecting too): an unreachable etcd turns into
//!   [`Error::Busy`] (CNI code 11) after about that long, before anything was written.
//! * `etcdNodeLock` (default on): the processes of one node take turns through a `flock` on
//!   `dataDir/etcd.lock` (bounded wait: twice `etcdTimeoutMs`, then code 11), like Calico's
//!   host-wide IPAM lock: concurrent ADDs on a node would otherwise all pick the same lowest free
//!   address of the node's block and retry each other. Nodes meet only in etcd transactions.
//! * `KNIT_IPAM_ETCD_STATS=1` in the environment makes a store print its request and conflict
//!   counts to stderr when dropped (benchmarks).

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::net::IpAddr;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, KeyValue, KvClient, TlsOptions, Txn,
    TxnOp, TxnOpResponse,
};
use ipnet::IpNet;

use super::{BlockRecord, BlockWrite, Store, Version, Versioned};
use crate::config::{EtcdConfig, RawPool};
use crate::error::{Error, Result};

/// Key prefix of everything knit-ipam stores in etcd.
pub const DEFAULT_PREFIX: &str = "/knit/ipam";

/// How often one commit is re-sent after dropping stale handle checks.
const HANDLE_FIXUPS: usize = 4;

/// A knit-ipam store in etcd. See the module doc.
pub struct EtcdStore {
    rt: tokio::runtime::Runtime,
    client: Client,
    endpoints: String,
    prefix: String,
    timeout: Duration,
    lock_path: Option<PathBuf>,
    lock_timeout: Duration,
    /// The block records this handle last read or wrote: (pool, cidr) → (version, record).
    cache: Mutex<HashMap<(String, IpNet), (Version, BlockRecord)>>,
    requests: AtomicU64,
    conflicts: AtomicU64,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("lock_path", &self.lock_path)
            .finish_non_exhaustive()
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        if std::env::var_os("KNIT_IPAM_ETCD_STATS").is_some() {
            let (requests, conflicts) = self.stats();
            eprintln!("knit-ipam etcd stats: requests={requests} conflicts={conflicts}");
        }
    }
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c == '/' || c == '%' || c.is_control() {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn family_name(ip: &IpAddr) -> &'static str {
    if ip.is_ipv4() {
        "v4"
    } else {
        "v6"
    }
}

fn handle_value(ip: &IpAddr, pool: &str, block: &IpNet) -> String {
    // Built by hand so that the bytes are the same every time (value compares).
    format!("{{\"ip\":\"{ip}\",\"pool\":{},\"block\":\"{block}\"}}", serde_json::Value::String(pool.to_string()))
}

/// What a handle value names.
#[derive(serde::Deserialize)]
struct HandleValue {
    ip: IpAddr,
    pool: String,
    block: IpNet,
}

/// A precondition of a commit transaction.
#[derive(Debug, Clone)]
enum Check {
    /// The block is at this revision (0: absent). `delete`: the write is a delete.
    Block { key: String, rev: i64, delete: bool },
    /// The handle does not exist (we create it).
    HandleAbsent { key: String },
    /// The handle holds this value (we replace or delete it).
    HandleIs { key: String, value: String },
}

impl Check {
    fn key(&self) -> &str {
        match self {
            Check::Block { key, .. } | Check::HandleAbsent { key } | Check::HandleIs { key, .. } => key,
        }
    }

    fn compare(&self) -> Compare {
        match self {
            Check::Block { key, rev, .. } if *rev == 0 => Compare::create_revision(key.as_str(), CompareOp::Equal, 0),
            Check::Block { key, rev, .. } => Compare::mod_revision(key.as_str(), CompareOp::Equal, *rev),
            Check::HandleAbsent { key } => Compare::create_revision(key.as_str(), CompareOp::Equal, 0),
            Check::HandleIs { key, value } => Compare::value(key.as_str(), CompareOp::Equal, value.as_str()),
        }
    }
}

/// The handle change of one key: its value before and after.
#[derive(Debug, Default, Clone)]
struct HandleDiff {
    old: Option<String>,
    new: Option<String>,
}

/// One transaction: checks (each compared and read back on failure) and operations.
#[derive(Debug, Default)]
struct Plan {
    /// Block checks and writes, in write order: (check, Some(json) to put / None to delete).
    blocks: Vec<(Check, Option<String>)>,
    /// Handle key → check and what to write (`None`: delete).
    handles: BTreeMap<String, (Check, Option<String>)>,
    /// Writes whose delete found the block already gone: skipped.
    skipped: Vec<usize>,
}

impl EtcdStore {
    /// Connect to etcd (no request is made yet). `data_dir` is where the node lock lives
    /// (`None`, or `cfg.node_lock == false`: no node lock).
    pub fn connect(cfg: &EtcdConfig, data_dir: Option<&Path>) -> Result<EtcdStore> {
        Self::connect_with_prefix(cfg, data_dir, DEFAULT_PREFIX)
    }

    /// [`EtcdStore::connect`] under another key prefix.
    pub fn connect_with_prefix(cfg: &EtcdConfig, data_dir: Option<&Path>, prefix: &str) -> Result<EtcdStore> {
        let endpoints = cfg.endpoints.join(",");
        let timeout = Duration::from_millis(cfg.timeout_ms);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::io("tokio runtime", e))?;
        let mut opts = ConnectOptions::new().with_connect_timeout(timeout).with_timeout(timeout);
        if cfg.ca_file.is_some() || cfg.cert_file.is_some() {
            let read = |p: &PathBuf| std::fs::read(p).map_err(|e| Error::io(p, e));
            let mut tls = TlsOptions::new();
            if let Some(ca) = &cfg.ca_file {
                tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
            }
            if let (Some(cert), Some(key)) = (&cfg.cert_file, &cfg.key_file) {
                tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            opts = opts.with_tls(tls);
        }
        let eps = cfg.endpoints.clone();
        let client = rt
            .block_on(async { tokio::time::timeout(timeout, Client::connect(eps, Some(opts))).await })
            .map_err(|_| Error::Busy(format!("etcd {endpoints}: no connection within {} ms", timeout.as_millis())))?
            .map_err(|e| match e {
                etcd_client::Error::InvalidArgs(_) | etcd_client::Error::InvalidUri(_) => {
                    Error::config("etcdEndpoints", format!("{endpoints}: {e}"))
                }
                e => Error::Busy(format!("etcd {endpoints}: {e}")),
            })?;
        let lock_path = match data_dir {
            Some(d) if cfg.node_lock => Some(d.join("etcd.lock")),
            _ => None,
        };
        Ok(EtcdStore {
            rt,
            client,
            endpoints,
            prefix: prefix.trim_end_matches('/').to_string(),
            timeout,
            lock_path,
            lock_timeout: timeout * 2,
            cache: Mutex::new(HashMap::new()),
            requests: AtomicU64::new(0),
            conflicts: AtomicU64::new(0),
        })
    }

    /// (requests sent, compare-and-swap conflicts reported) by this handle so far.
    pub fn stats(&self) -> (u64, u64) {
        (self.requests.load(Ordering::Relaxed), self.conflicts.load(Ordering::Relaxed))
    }

    fn kv(&self) -> KvClient {
        self.client.kv_client().max_decoding_message_size(256 << 20)
    }

    fn cache(&self) -> MutexGuard<'_, HashMap<(String, IpNet), (Version, BlockRecord)>> {
        match self.cache.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Run one request, bounded by the timeout; failures are code 11.
    fn run<T>(&self, what: &str, fut: impl Future<Output = std::result::Result<T, etcd_client::Error>>) -> Result<T> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let t = self.timeout;
        match self.rt.block_on(async { tokio::time::timeout(t, fut).await }) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(Error::Busy(format!("etcd {} ({what}): {e}", self.endpoints))),
            Err(_) => {
                Err(Error::Busy(format!("etcd {} ({what}): no answer within {} ms", self.endpoints, t.as_millis())))
            }
        }
    }

    fn get(&self, key: &str, opts: Option<GetOptions>) -> Result<Vec<KeyValue>> {
        let mut kv = self.kv();
        let key = key.to_string();
        let mut resp = self.run("get", async move { kv.get(key, opts).await })?;
        Ok(resp.take_kvs())
    }

    fn pool_key(&self, pool: &str) -> String {
        format!("{}/pools/{pool}", self.prefix)
    }

    fn blocks_prefix(&self, pool: &str) -> String {
        format!("{}/blocks/{pool}/", self.prefix)
    }

    fn block_key(&self, pool: &str, cidr: &IpNet) -> String {
        format!("{}{}_{}", self.blocks_prefix(pool), cidr.network(), cidr.prefix_len())
    }

    fn handle_key(&self, cid: &str, ifname: &str, ip: &IpAddr) -> String {
        format!("{}/handles/{}/{}/{}", self.prefix, escape(cid), escape(ifname), family_name(ip))
    }

    fn corrupt(key: &[u8], msg: impl std::fmt::Display) -> Error {
        Error::Corrupt { path: PathBuf::from(String::from_utf8_lossy(key).into_owned()), msg: msg.to_string() }
    }

    fn parse_block(kv: &KeyValue) -> Result<BlockRecord> {
        serde_json::from_slice(kv.value()).map_err(|e| Self::corrupt(kv.key(), e))
    }

    /// The handles a block record holds: key → value.
    fn handles_of(&self, pool: &str, block: &BlockRecord, out: &mut Vec<(String, String)>) {
        for a in &block.allocs {
            if let Some(cid) = &a.cid {
                out.push((self.handle_key(cid, &a.ifname, &a.ip), handle_value(&a.ip, pool, &block.cidr)));
            }
        }
    }

    /// The record a write replaces, as of version `expect`, from the cache or etcd.
    fn old_block(&self, pool: &str, cidr: &IpNet, expect: Version) -> Result<Option<BlockRecord>> {
        if let Some((v, rec)) = self.cache().get(&(pool.to_string(), *cidr)) {
            if *v == expect {
                return Ok(Some(rec.clone()));
            }
        }
        let key = self.block_key(pool, cidr);
        match self.get(&key, None)?.first() {
            Some(kv) if kv.mod_revision() as u64 == expect => Ok(Some(Self::parse_block(kv)?)),
            Some(kv) => Err(self.conflict(format!(
                "block {cidr} of pool {pool}: expected version {expect}, found {}",
                kv.mod_revision()
            ))),
            None => Ok(None),
        }
    }

    fn conflict(&self, what: String) -> Error {
        self.conflicts.fetch_add(1, Ordering::Relaxed);
        Error::Conflict(what)
    }

    /// Turn the writes of one operation into checks and operations.
    fn plan(&self, writes: &[BlockWrite<'_>]) -> Result<Plan> {
        let mut plan = Plan::default();
        let mut diffs: BTreeMap<String, HandleDiff> = BTreeMap::new();
        for w in writes {
            let (pool, cidr, expect, new) = match *w {
                BlockWrite::Put { pool, block, expect, .. } => (pool, &block.cidr, expect, Some(block)),
                BlockWrite::Delete { pool, cidr, expect } => (pool, cidr, Some(expect), None),
            };
            let key = self.block_key(pool, cidr);
            let old = match expect {
                Some(v) => self.old_block(pool, cidr, v)?,
                None => None,
            };
            let mut olds = Vec::new();
            let mut news = Vec::new();
            if let Some(o) = &old {
                self.handles_of(pool, o, &mut olds);
            }
            if let Some(n) = new {
                self.handles_of(pool, n, &mut news);
            }
            for (k, v) in olds {
                diffs.entry(k).or_default().old.get_or_insert(v);
            }
            for (k, v) in news {
                diffs.entry(k).or_default().new.get_or_insert(v);
            }
            let value = match new {
                Some(b) => Some(
                    serde_json::to_string(b)
                        .map_err(|e| Self::corrupt(key.as_bytes(), format!("cannot encode: {e}")))?,
                ),
                None => None,
            };
            plan.blocks.push((Check::Block { key, rev: expect.unwrap_or(0) as i64, delete: new.is_none() }, value));
        }
        for (key, d) in diffs {
            match (d.old, d.new) {
                (Some(a), Some(b)) if a == b => {}
                (None, None) => {}
                (None, Some(b)) => {
                    plan.handles.insert(key.clone(), (Check::HandleAbsent { key }, Some(b)));
                }
                (Some(a), new) => {
                    plan.handles.insert(key.clone(), (Check::HandleIs { key, value: a }, new));
                }
            }
        }
        Ok(plan)
    }

    /// Send a plan as one transaction. `Ok(Some(rev))`: written at `rev`; `Ok(None)`: the
    /// plan was adjusted (stale handle checks, vanished deletes), send it again.
    fn send(&self, plan: &mut Plan) -> Result<Option<i64>> {
        let checks: Vec<Check> = plan
            .blocks
            .iter()
            .enumerate()
            .filter(|(i, _)| !plan.skipped.contains(i))
            .map(|(_, (c, _))| c.clone())
            .chain(plan.handles.values().map(|(c, _)| c.clone()))
            .collect();
        let mut ops = Vec::new();
        for (i, (c, v)) in plan.blocks.iter().enumerate() {
            if plan.skipped.contains(&i) {
                continue;
            }
            ops.push(match v {
                Some(v) => TxnOp::put(c.key(), v.as_str(), None),
                None => TxnOp::delete(c.key(), None),
            });
        }
        for (k, (_, v)) in &plan.handles {
            ops.push(match v {
                Some(v) => TxnOp::put(k.as_str(), v.as_str(), None),
                None => TxnOp::delete(k.as_str(), None),
            });
        }
        let txn = Txn::new()
            .when(checks.iter().map(Check::compare).collect::<Vec<_>>())
            .and_then(ops)
            .or_else(checks.iter().map(|c| TxnOp::get(c.key(), None)).collect::<Vec<_>>());
        let mut kv = self.kv();
        let resp = self.run("txn", async move { kv.txn(txn).await })?;
        if resp.succeeded() {
            let rev = resp
                .header()
                .map(|h| h.revision())
                .ok_or_else(|| Error::Busy("etcd txn response without header".into()))?;
            return Ok(Some(rev));
        }
        // Which check failed, and why.
        let current: Vec<Option<KeyValue>> = resp
            .op_responses()
            .into_iter()
            .map(|r| match r {
                TxnOpResponse::Get(g) => g.kvs().first().cloned(),
                _ => None,
            })
            .collect();
        let mut adjusted = false;
        for (check, cur) in checks.iter().zip(current.iter()) {
            match check {
                Check::Block { key, rev, delete } => {
                    let found = cur.as_ref().map(|kv| kv.mod_revision()).unwrap_or(0);
                    if found == *rev {
                        continue;
                    }
                    if *delete && cur.is_none() {
                        // Deleting what is gone already is fine.
                        if let Some(i) = plan.blocks.iter().position(|(c, _)| c.key() == key) {
                            plan.skipped.push(i);
                            adjusted = true;
                        }
                        continue;
                    }
                    return Err(self.conflict(format!("{key}: expected revision {rev}, found {found}")));
                }
                Check::HandleAbsent { key } => {
                    let Some(kv) = cur else { continue };
                    let value = String::from_utf8_lossy(kv.value()).into_owned();
                    let want = plan.handles.get(key).and_then(|(_, v)| v.clone());
                    if want.as_deref() == Some(value.as_str()) {
                        // Already what we write (cannot normally happen): just rewrite it.
                        plan.handles.insert(key.clone(), (Check::HandleIs { key: key.clone(), value }, want));
                        adjusted = true;
                    } else if self.handle_is_live(&value, key)? {
                        return Err(self.conflict(format!(
                            "{key} already holds {value} (a concurrent ADD of the same attachment)"
                        )));
                    } else {
                        // Stale handle (its address is no longer held by the attachment).
                        plan.handles.insert(key.clone(), (Check::HandleIs { key: key.clone(), value }, want));
                        adjusted = true;
                    }
                }
                Check::HandleIs { key, value } => {
                    let found = cur.as_ref().map(|kv| kv.value().to_vec());
                    if found.as_deref() == Some(value.as_bytes()) {
                        continue;
                    }
                    let want = plan.handles.get(key).and_then(|(_, v)| v.clone());
                    match (want, found) {
                        // A release whose handle is gone or names another address: leave the
                        // handle alone.
                        (None, _) => {
                            plan.handles.remove(key);
                        }
                        (Some(w), None) => {
                            plan.handles.insert(key.clone(), (Check::HandleAbsent { key: key.clone() }, Some(w)));
                        }
                        (Some(_), Some(other)) => {
                            return Err(self.conflict(format!(
                                "{key} changed concurrently to {}",
                                String::from_utf8_lossy(&other)
                            )));
                        }
                    }
                    adjusted = true;
                }
            }
        }
        if adjusted {
            Ok(None)
        } else {
            // Every check held when read back: something changed in between.
            Err(self.conflict("transaction compare failed, nothing differs on re-read".into()))
        }
    }

    /// Whether the handle `value` (under `key`) names an address its block still gives to the
    /// attachment of `key`.
    fn handle_is_live(&self, value: &str, key: &str) -> Result<bool> {
        let Ok(h) = serde_json::from_str::<HandleValue>(value) else {
            return Ok(false);
        };
        let bkey = self.block_key(&h.pool, &h.block);
        let Some(kv) = self.get(&bkey, None)?.into_iter().next() else {
            return Ok(false);
        };
        let block = Self::parse_block(&kv)?;
        Ok(block
            .allocs
            .iter()
            .any(|a| a.ip == h.ip && a.cid.as_ref().is_some_and(|cid| self.handle_key(cid, &a.ifname, &a.ip) == key)))
    }

    /// Delete everything under the prefix (tests, `knit ipam` maintenance).
    pub fn wipe(&self) -> Result<()> {
        let mut kv = self.kv();
        let p = format!("{}/", self.prefix);
        self.run("delete", async move { kv.delete(p, Some(etcd_client::DeleteOptions::new().with_prefix())).await })?;
        self.cache().clear();
        Ok(())
    }

    /// Every handle key: (containerID, ifname, family) → value (inspection, tests).
    pub fn handles(&self) -> Result<Vec<(String, String)>> {
        let p = format!("{}/handles/", self.prefix);
        Ok(self
            .get(&p, Some(GetOptions::new().with_prefix()))?
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(&kv.key()[p.len()..]).into_owned(),
                    String::from_utf8_lossy(kv.value()).into_owned(),
                )
            })
            .collect())
    }

    fn lock(&self) -> Result<Option<File>> {
        let Some(path) = &self.lock_path else {
            return Ok(None);
        };
        if let Some(dir) = path.parent() {
            if !dir.is_dir() && std::fs::create_dir_all(dir).is_err() {
                // No writable dataDir: etcd's transactions alone keep things consistent.
                return Ok(None);
            }
        }
        let file = match OpenOptions::new().create(true).truncate(false).write(true).open(path) {
            Ok(f) => f,
            Err(_) => return Ok(None),
        };
        let start = Instant::now();
        let mut pause = Duration::from_micros(200);
        loop {
            // SAFETY: flock on a descriptor we own; no memory is passed.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                return Ok(Some(file));
            }
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) && err.raw_os_error() != Some(libc::EINTR) {
                return Err(Error::io(path, err));
            }
            if start.elapsed() >= self.lock_timeout {
                return Err(Error::LockTimeout { path: path.clone(), waited_ms: start.elapsed().as_millis() as u64 });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(5));
        }
    }
}

impl Store for EtcdStore {
    fn exclusive<R>(&self, f: impl FnOnce() -> Result<R>) -> Result<R> {
        let _lock = self.lock()?;
        f()
    }

    fn list_pools(&self) -> Result<Vec<String>> {
        let p = format!("{}/pools/", self.prefix);
        let mut v: Vec<String> = self
            .get(&p, Some(GetOptions::new().with_prefix().with_keys_only()))?
            .iter()
            .map(|kv| String::from_utf8_lossy(&kv.key()[p.len()..]).into_owned())
            .collect();
        v.sort();
        Ok(v)
    }

    fn get_pool(&self, pool: &str) -> Result<Option<RawPool>> {
        match self.get(&self.pool_key(pool), None)?.first() {
            Some(kv) => Ok(Some(serde_json::from_slice(kv.value()).map_err(|e| Self::corrupt(kv.key(), e))?)),
            None => Ok(None),
        }
    }

    fn put_pool(&self, pool: &RawPool) -> Result<()> {
        let key = self.pool_key(&pool.name);
        let value =
            serde_json::to_string(pool).map_err(|e| Self::corrupt(key.as_bytes(), format!("cannot encode: {e}")))?;
        let mut kv = self.kv();
        self.run("put", async move { kv.put(key, value, None).await })?;
        Ok(())
    }

    fn list_blocks(&self, pool: &str) -> Result<Vec<Versioned<BlockRecord>>> {
        let kvs = self.get(&self.blocks_prefix(pool), Some(GetOptions::new().with_prefix()))?;
        let mut out = Vec::with_capacity(kvs.len());
        for kv in &kvs {
            out.push(Versioned { value: Self::parse_block(kv)?, version: kv.mod_revision() as u64 });
        }
        out.sort_by_key(|b| b.value.cidr);
        let mut cache = self.cache();
        cache.retain(|(p, _), _| p != pool);
        for b in &out {
            cache.insert((pool.to_string(), b.value.cidr), (b.version, b.value.clone()));
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
        let v = self.write_blocks(&[BlockWrite::Put { pool, block, expect, changed }])?;
        v.first().copied().flatten().ok_or_else(|| Error::Busy("etcd put without a version".into()))
    }

    fn delete_block(&self, pool: &str, cidr: &IpNet, expect: Version) -> Result<()> {
        self.write_blocks(&[BlockWrite::Delete { pool, cidr, expect }])?;
        Ok(())
    }

    fn check(&self) -> Result<()> {
        // A linearizable read needs a leader and a quorum: the store is usable for writes.
        let p = format!("{}/pools/", self.prefix);
        self.get(&p, Some(GetOptions::new().with_prefix().with_keys_only().with_limit(1)))
            .map_err(|e| Error::NotAvailable(e.to_string()))?;
        Ok(())
    }

    fn write_blocks(&self, writes: &[BlockWrite<'_>]) -> Result<Vec<Option<Version>>> {
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        let mut plan = self.plan(writes)?;
        let mut rev = None;
        for _ in 0..HANDLE_FIXUPS {
            if let Some(r) = self.send(&mut plan)? {
                rev = Some(r);
                break;
            }
        }
        let Some(rev) = rev else {
            return Err(self.conflict("handle checks kept changing".into()));
        };
        let version = rev as Version;
        let mut cache = self.cache();
        let mut out = Vec::with_capacity(writes.len());
        for w in writes {
            match *w {
                BlockWrite::Put { pool, block, .. } => {
                    cache.insert((pool.to_string(), block.cidr), (version, block.clone()));
                    out.push(Some(version));
                }
                BlockWrite::Delete { pool, cidr, .. } => {
                    cache.remove(&(pool.to_string(), *cidr));
                    out.push(None);
                }
            }
        }
        Ok(out)
    }
}
