//! knit-ipam: IP pools with per-node blocks, fixed IPs, and an embedded or etcd store.
//!
//! # Layers
//!
//! * [`config`]: the plugin's `ipam` object (serde, then validation with field-naming errors).
//! * [`state`]: the allocation core, pure and in memory: pools → blocks → allocations, with
//!   per-block free bitmaps and hash indexes; no I/O.
//! * [`store`]: persistence behind the [`Store`] trait, at the granularity of one **block
//!   record** per call (claim a block = create its record; claim or release an IP = a
//!   compare-and-swap of its block's record, with the changed addresses as a hint).
//!   [`EtcdStore`] makes each operation's writes one etcd transaction (see [`store::etcd`]),
//!   recording (containerID, ifname) handles in the same transaction; [`LocalStore`] implements it
//!   with files under one `flock` (per block: a snapshot plus an append-only journal, one
//!   `write(2)` per change); [`MemStore`] is an optimistic in-memory model of etcd.
//! * [`Ipam`]: runs one operation as a transaction: take the store's exclusive section, load the
//!   pools' block records into a [`State`], run the core, write back the changed block records
//!   with the versions they were read at. On a compare-and-swap conflict it reloads and re-runs
//!   the (idempotent) operation, a bounded number of times, then reports code 11.
//!
//! Why this shape: the pure core can be tested and benchmarked alone (property tests, over
//! 50,000 allocations/s), and a distributed store only has to offer create-if-absent and
//! compare-and-swap on small records; no operation ever rewrites a whole pool.
//!
//! # Behaviour
//!
//! * Allocations are keyed by (containerID, ifname): a second allocate returns the same
//!   addresses; release is idempotent; [`Ipam::gc`] releases this node's attachments that are not
//!   in the valid set.
//! * One address per address family of the configured pools (dual stack with a v4 and a v6 pool);
//!   several pools of one family are tried in config order (later ones when earlier are full).
//! * Affinity pools (`blocks: true`, the default): a node claims whole blocks (lowest free block
//!   first) and allocates the lowest free address of its blocks; with no free block left it
//!   borrows from another node's block (`borrow`, default true), recording itself as the
//!   allocating node ([`Ipam::borrowed_of`] lists those for /32 routes). [`Ipam::blocks_of`]
//!   lists a node's blocks for its blackhole routes. Blocks stay claimed when they empty.
//! * Shared pools (`blocks: false`): no affinity; every node allocates the lowest free address
//!   of the pool. Records are still kept per `blockSize` stripe (owner-less, deleted when empty).
//! * Requested IPs are honoured if they are in a pool, allocatable and free; in an affinity pool
//!   the IP's block must be this node's or unclaimed (it is then claimed).
//! * Fixed IPs (`fixedIPs: true`): an allocation with a pod identity records it; on release the
//!   address stays reserved for (namespace, name, ifname) and the next allocate of that identity
//!   (any container ID, any node) gets it back. [`Ipam::release_fixed`] frees it, and so does
//!   [`Ipam::gc`] with [`GcMode::All`].
//! * Probes (`detectIPConflict`, `detectGateway`, IPv4 underlay pools): the plugin's ADD ARPs
//!   from the pod interface, marks conflicting addresses and takes the next; see [`probe`].

pub mod addr;
pub mod args;
pub mod config;
pub mod error;
mod fxhash;
pub mod plugin;
pub mod probe;
pub mod result;
pub mod show;
pub mod state;
pub mod store;

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;

pub use config::{EtcdConfig, IpamConfig, PoolConfig, Route, StoreKind};
pub use error::{Error, Result};
pub use result::{IpConfig, IpamResult};
pub use show::Summary;
pub use state::{AllocRequest, Attachment, Change, GcMode, GcReport, Grant, PodRef, State};
pub use store::etcd::EtcdStore;
pub use store::local::LocalStore;
pub use store::mem::MemStore;
pub use store::Store;

/// How many times an operation is re-run after store conflicts before giving up (code 11).
const MAX_ATTEMPTS: u32 = 24;

/// Which pools an operation loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// The pools of the config, in config order (allocation).
    Config,
    /// Every pool of the store, as stored (release, gc, inspection).
    Stored,
}

/// knit-ipam over a store. See the crate doc.
#[derive(Debug)]
pub struct Ipam<S: Store = AnyStore> {
    cfg: IpamConfig,
    store: S,
}

/// The store a config names: [`LocalStore`] or [`EtcdStore`].
#[derive(Debug)]
pub enum AnyStore {
    Local(LocalStore),
    /// Boxed: it holds a runtime and a client, far larger than a local store handle.
    Etcd(Box<EtcdStore>),
}

impl AnyStore {
    /// Open the store of `cfg` (`store`, `dataDir`, `etcd*`).
    pub fn open(cfg: &IpamConfig) -> Result<AnyStore> {
        match &cfg.store {
            StoreKind::Local => Ok(AnyStore::Local(LocalStore::with_options(
                &cfg.data_dir,
                Duration::from_millis(cfg.lock_timeout_ms),
                cfg.fsync,
            )?)),
            StoreKind::Etcd(e) => Ok(AnyStore::Etcd(Box::new(EtcdStore::connect(e, Some(&cfg.data_dir))?))),
        }
    }

    /// Open the store of `cfg` for inspection and maintenance (`knit ipam`): a local store
    /// is not created if missing, and the etcd node lock is not taken.
    pub fn open_for_inspection(cfg: &IpamConfig) -> Result<AnyStore> {
        match &cfg.store {
            StoreKind::Local => Ok(AnyStore::Local(LocalStore::open_existing(&cfg.data_dir))),
            StoreKind::Etcd(e) => Ok(AnyStore::Etcd(Box::new(EtcdStore::connect(e, None)?))),
        }
    }
}

macro_rules! any_store {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            AnyStore::Local($s) => $e,
            AnyStore::Etcd($s) => $e,
        }
    };
}

impl Store for AnyStore {
    fn exclusive<R>(&self, f: impl FnOnce() -> Result<R>) -> Result<R> {
        any_store!(self, s => s.exclusive(f))
    }
    fn list_pools(&self) -> Result<Vec<String>> {
        any_store!(self, s => s.list_pools())
    }
    fn get_pool(&self, pool: &str) -> Result<Option<config::RawPool>> {
        any_store!(self, s => s.get_pool(pool))
    }
    fn put_pool(&self, pool: &config::RawPool) -> Result<()> {
        any_store!(self, s => s.put_pool(pool))
    }
    fn list_blocks(&self, pool: &str) -> Result<Vec<store::Versioned<store::BlockRecord>>> {
        any_store!(self, s => s.list_blocks(pool))
    }
    fn put_block(
        &self,
        pool: &str,
        block: &store::BlockRecord,
        expect: Option<store::Version>,
        changed: &[IpAddr],
    ) -> Result<store::Version> {
        any_store!(self, s => s.put_block(pool, block, expect, changed))
    }
    fn delete_block(&self, pool: &str, cidr: &IpNet, expect: store::Version) -> Result<()> {
        any_store!(self, s => s.delete_block(pool, cidr, expect))
    }
    fn check(&self) -> Result<()> {
        any_store!(self, s => s.check())
    }
    fn write_blocks(&self, writes: &[store::BlockWrite<'_>]) -> Result<Vec<Option<store::Version>>> {
        any_store!(self, s => s.write_blocks(writes))
    }
}

impl Ipam<AnyStore> {
    /// Open the store the config names (`store: local` or `etcd`).
    pub fn open(cfg: IpamConfig) -> Result<Self> {
        let store = AnyStore::open(&cfg)?;
        Ok(Ipam { cfg, store })
    }

    /// Open the store of `cfg` for inspection and maintenance (see
    /// [`AnyStore::open_for_inspection`]); only the store settings of `cfg` matter.
    pub fn open_for_inspection(cfg: IpamConfig) -> Result<Self> {
        let store = AnyStore::open_for_inspection(&cfg)?;
        Ok(Ipam { cfg, store })
    }
}

fn jitter_sleep(attempt: u32) {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    // Exponential up to ~25 ms: 24 attempts then span about 0.4 s, enough for 32 processes
    // contending for one shared-pool block on 2 busy cores.
    let base = 50u64 << attempt.min(9);
    let jitter = u64::from(nanos % 1000) * base / 1000;
    std::thread::sleep(Duration::from_micros(base + jitter));
}

impl<S: Store> Ipam<S> {
    /// knit-ipam over any store.
    pub fn with_store(cfg: IpamConfig, store: S) -> Self {
        Ipam { cfg, store }
    }

    pub fn config(&self) -> &IpamConfig {
        &self.cfg
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.cfg.node
    }

    fn load(&self, scope: Scope) -> Result<State> {
        let mut st = State::default();
        match scope {
            Scope::Config => {
                for cfg in &self.cfg.pools {
                    let p = st.add_pool(cfg.clone());
                    let blocks = self.store.list_blocks(&cfg.name)?;
                    // One reservation for all: growing the attachment map block by block
                    // rehashed it about once per block.
                    st.reserve(blocks.iter().map(|b| b.value.allocs.len()).sum());
                    for b in blocks {
                        st.add_block(p, b.value, Some(b.version))?;
                    }
                    // The stored pool record follows the config once its blocks fit it.
                    if self.store.get_pool(&cfg.name)?.as_ref() != Some(&cfg.raw) {
                        self.store.put_pool(&cfg.raw)?;
                    }
                }
            }
            Scope::Stored => {
                for name in self.store.list_pools()? {
                    let Some(raw) = self.store.get_pool(&name)? else {
                        continue;
                    };
                    let cfg = PoolConfig::from_raw(raw, &format!("stored pool {name}"))?;
                    let p = st.add_pool(cfg);
                    for b in self.store.list_blocks(&name)? {
                        st.add_block(p, b.value, Some(b.version))?;
                    }
                }
            }
        }
        Ok(st)
    }

    fn commit(&self, st: &mut State) -> Result<()> {
        let changes = st.take_changes();
        if changes.is_empty() {
            return Ok(());
        }
        let writes: Vec<store::BlockWrite<'_>> = changes
            .iter()
            .map(|c| match c {
                Change::Put { pool, record, expect, changed } => {
                    store::BlockWrite::Put { pool, block: record, expect: *expect, changed }
                }
                Change::Delete { pool, cidr, expect } => store::BlockWrite::Delete { pool, cidr, expect: *expect },
            })
            .collect();
        let versions = self.store.write_blocks(&writes)?;
        for (c, v) in changes.iter().zip(versions) {
            if let (Change::Put { pool, record, .. }, Some(v)) = (c, v) {
                st.set_version(pool, &record.cidr, v);
            }
        }
        Ok(())
    }

    /// Run `f` on a freshly loaded state and commit what it changed; re-run on conflicts.
    fn transact<R>(&self, scope: Scope, mut f: impl FnMut(&mut State) -> Result<R>) -> Result<R> {
        self.store.exclusive(|| {
            let mut last = String::new();
            for attempt in 0..MAX_ATTEMPTS {
                let mut st = self.load(scope)?;
                let r = f(&mut st)?;
                match self.commit(&mut st) {
                    Ok(()) => return Ok(r),
                    Err(Error::Conflict(what)) => {
                        last = what;
                        jitter_sleep(attempt);
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(Error::Busy(format!("{MAX_ATTEMPTS} conflicting attempts, last: {last}")))
        })
    }

    fn result(&self, grants: &[Grant]) -> IpamResult {
        let mut out = IpamResult::default();
        for g in grants {
            let Some(cfg) = self.cfg.pools.get(g.pool) else {
                continue;
            };
            let address = IpNet::new(g.ip, cfg.cidr.prefix_len()).unwrap_or_else(|_| IpNet::from(g.ip));
            out.ips.push(IpConfig { pool: cfg.name.clone(), address, gateway: cfg.gateway });
            for r in &cfg.routes {
                if !out.routes.contains(r) {
                    out.routes.push(r.clone());
                }
            }
        }
        out
    }

    /// Allocate (or return the existing) addresses of an attachment on this node.
    pub fn allocate(&self, req: &AllocRequest) -> Result<IpamResult> {
        if req.container_id.is_empty() {
            return Err(Error::Args("container ID is empty".into()));
        }
        if req.ifname.is_empty() {
            return Err(Error::Args("interface name is empty".into()));
        }
        let node = self.cfg.node.clone();
        let grants = self.transact(Scope::Config, |st| st.allocate(&node, req, None))?;
        Ok(self.result(&grants))
    }

    /// What an attachment holds now (for CHECK), if anything.
    pub fn lookup(&self, container_id: &str, ifname: &str) -> Result<Option<IpamResult>> {
        let st = self.store.exclusive(|| self.load(Scope::Config))?;
        let grants = st.lookup(container_id, ifname);
        Ok((!grants.is_empty()).then(|| self.result(&grants)))
    }

    /// Release an attachment's addresses (idempotent). Returns what was released.
    pub fn release(&self, container_id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
        self.transact(Scope::Stored, |st| Ok(st.release(container_id, ifname)))
    }

    /// Free the fixed IPs of a pod identity. Returns the addresses freed now.
    pub fn release_fixed(&self, pod: &PodRef) -> Result<Vec<IpAddr>> {
        self.transact(Scope::Stored, |st| Ok(st.release_fixed(pod)))
    }

    /// Release every attachment of this node that is not in `valid` (see [`GcMode`]).
    pub fn gc(&self, valid: &[Attachment], mode: GcMode) -> Result<GcReport> {
        let valid: HashSet<Attachment> = valid.iter().cloned().collect();
        let node = self.cfg.node.clone();
        self.transact(Scope::Stored, |st| Ok(st.gc(&node, &valid, mode)))
    }

    /// Cluster-wide sweep (`knit ipam gc --valid FILE`): [`Ipam::gc`] for every node that
    /// holds an allocation in the store, in one operation.
    pub fn gc_cluster(&self, valid: &[Attachment], mode: GcMode) -> Result<GcReport> {
        let valid: HashSet<Attachment> = valid.iter().cloned().collect();
        self.transact(Scope::Stored, |st| {
            let mut nodes = std::collections::BTreeSet::new();
            for ps in &st.pools {
                for b in ps.blocks.values() {
                    for a in b.allocs.values() {
                        nodes.insert(a.node.clone());
                    }
                }
            }
            let mut report = GcReport::default();
            for node in nodes {
                let r = st.gc(&node, &valid, mode);
                report.released.extend(r.released);
                report.unreserved.extend(r.unreserved);
            }
            Ok(report)
        })
    }

    /// The blocks `node` has affinity to (for its blackhole routes and announcements).
    pub fn blocks_of(&self, node: &str) -> Result<Vec<IpNet>> {
        let st = self.store.exclusive(|| self.load(Scope::Stored))?;
        Ok(st.blocks_of(node))
    }

    /// Addresses `node` borrowed from other nodes' blocks.
    pub fn borrowed_of(&self, node: &str) -> Result<Vec<IpAddr>> {
        let st = self.store.exclusive(|| self.load(Scope::Stored))?;
        Ok(st.borrowed_of(node))
    }

    /// Pools, blocks per node, used and free counts.
    pub fn show(&self) -> Result<Summary> {
        let st = self.store.exclusive(|| self.load(Scope::Stored))?;
        Ok(Summary::from_state(&st))
    }

    /// Ok if the store is usable now; otherwise an error with code 50.
    pub fn status(&self) -> Result<()> {
        self.store.check().map_err(|e| match e {
            Error::NotAvailable(_) => e,
            other => Error::NotAvailable(other.to_string()),
        })
    }

    /// The whole stored state (under the store's exclusive section), for inspection and tests.
    pub fn snapshot(&self) -> Result<State> {
        self.store.exclusive(|| self.load(Scope::Stored))
    }
}

fn stored_ipam(data_dir: &Path) -> Result<Ipam<LocalStore>> {
    let store = LocalStore::open_existing(data_dir);
    let cfg = IpamConfig {
        node: String::new(),
        data_dir: data_dir.to_path_buf(),
        store: StoreKind::Local,
        lock_timeout_ms: config::DEFAULT_LOCK_TIMEOUT_MS,
        fsync: false,
        pools: Vec::new(),
    };
    Ok(Ipam::with_store(cfg, store))
}

/// `knit ipam show`: the summary of a local store.
pub fn show(data_dir: &Path) -> Result<Summary> {
    if !data_dir.is_dir() {
        return Ok(Summary::default());
    }
    stored_ipam(data_dir)?.show()
}

/// The blocks `node` owns in a local store.
pub fn blocks_of(data_dir: &Path, node: &str) -> Result<Vec<IpNet>> {
    if !data_dir.is_dir() {
        return Ok(Vec::new());
    }
    stored_ipam(data_dir)?.blocks_of(node)
}

/// Ok if a local store in `data_dir` is usable (writable, lock obtainable), else code 50.
pub fn status(data_dir: &Path) -> Result<()> {
    let store = LocalStore::open_existing(data_dir);
    store.check().map_err(|e| match e {
        Error::NotAvailable(_) => e,
        other => Error::NotAvailable(other.to_string()),
    })
}
