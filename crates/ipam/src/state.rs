//! The allocation core: pure, in-memory, no I/O.
//!
//! A [`State`] holds pools → blocks → allocations, as loaded from a [`Store`](crate::Store).
//! Operations mutate it and mark the blocks they touched; [`State::take_changes`] hands back the
//! block records to write (with the version each was read at, for compare-and-swap).
//!
//! Data structures: blocks of a pool in a `BTreeMap` by block index; allocations of a block in a
//! `BTreeMap` by offset; a free-address bitmap per block (built lazily, for blocks of at most
//! 2^16 addresses; bigger blocks search gaps in the allocation map); a hash index from
//! (containerID, ifname) to locations, and one from (pool, namespace, name, ifname) to fixed IPs.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

use crate::addr::{self, Family};
use crate::config::PoolConfig;
use crate::error::{Error, Result};
use crate::fxhash::FxHashMap;
use crate::store::{AllocRecord, BlockRecord, Version};

/// A pod identity (`K8S_POD_NAMESPACE` / `K8S_POD_NAME`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

impl PodRef {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        PodRef { namespace: namespace.into(), name: name.into() }
    }
}

impl std::fmt::Display for PodRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One allocation request (a CNI ADD for one interface).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AllocRequest {
    pub container_id: String,
    pub ifname: String,
    pub pod: Option<PodRef>,
    /// Wanted addresses (`IP=` in CNI_ARGS, runtimeConfig `ips`), at most one per family.
    pub requested: Vec<IpAddr>,
}

impl AllocRequest {
    pub fn new(container_id: impl Into<String>, ifname: impl Into<String>) -> Self {
        AllocRequest { container_id: container_id.into(), ifname: ifname.into(), pod: None, requested: Vec::new() }
    }

    pub fn with_pod(mut self, pod: PodRef) -> Self {
        self.pod = Some(pod);
        self
    }

    pub fn with_ip(mut self, ip: IpAddr) -> Self {
        self.requested.push(ip);
        self
    }
}

/// (containerID, ifname): what an allocation is keyed by, and what CNI GC lists as valid.
pub type Attachment = (String, String);

/// An address handed out by [`State::allocate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Index of the pool in the state (the config order for the allocation path).
    pub pool: usize,
    pub ip: IpAddr,
}

/// What [`State::gc`] should free.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GcMode {
    /// Release attachments not in the valid set like a DEL does: fixed IPs stay reserved for
    /// their pod identity. The right mode for CNI GC.
    #[default]
    KeepFixed,
    /// Also free fixed-IP reservations recorded for this node.
    All,
}

/// What a GC freed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GcReport {
    /// Released attachments and their addresses.
    pub released: Vec<(String, String, IpAddr)>,
    /// Freed fixed-IP reservations.
    pub unreserved: Vec<(PodRef, IpAddr)>,
}

/// A block record to write back.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Write `record`; `changed` lists the addresses added, changed or removed since load.
    Put {
        pool: String,
        record: BlockRecord,
        expect: Option<Version>,
        changed: Vec<IpAddr>,
    },
    Delete {
        pool: String,
        cidr: IpNet,
        expect: Version,
    },
}

#[derive(Debug, Clone)]
pub(crate) struct Alloc {
    pub(crate) cid: Option<String>,
    pub(crate) ifname: String,
    pub(crate) node: String,
    pub(crate) pod: Option<PodRef>,
    pub(crate) fixed: bool,
}

/// Blocks up to this many host bits get a free bitmap.
const DENSE_MAX_BITS: u32 = 16;

#[derive(Debug, Clone)]
enum FreeMap {
    Unknown,
    /// One bit per offset, 1 = free and allocatable.
    Dense {
        bits: Vec<u64>,
        count: u64,
    },
    Sparse,
}

#[derive(Debug, Clone)]
pub(crate) struct Block {
    pub(crate) cidr: IpNet,
    pub(crate) base: u128,
    pub(crate) owner: Option<String>,
    pub(crate) allocs: BTreeMap<u128, Alloc>,
    version: Option<Version>,
    /// Offsets changed since load (the block is dirty when non-empty).
    touched: Vec<u128>,
    free: FreeMap,
}

fn set_bits(bits: &mut [u64], a: u64, b: u64, value: bool) {
    // inclusive range a..=b
    let mut i = a;
    while i <= b {
        let w = (i / 64) as usize;
        let bit = i % 64;
        let n = (64 - bit).min(b - i + 1);
        let mask = if n == 64 { u64::MAX } else { ((1u64 << n) - 1) << bit };
        if let Some(word) = bits.get_mut(w) {
            if value {
                *word |= mask;
            } else {
                *word &= !mask;
            }
        }
        i += n;
    }
}

impl Block {
    fn new(cidr: IpNet, owner: Option<String>, version: Option<Version>) -> Block {
        Block {
            base: addr::to_u128(&cidr.network()),
            cidr,
            owner,
            allocs: BTreeMap::new(),
            version,
            touched: Vec::new(),
            free: FreeMap::Unknown,
        }
    }

    fn touch(&mut self, off: u128) {
        if !self.touched.contains(&off) {
            self.touched.push(off);
        }
    }

    fn host_bits(&self) -> u32 {
        u32::from(self.cidr.max_prefix_len() - self.cidr.prefix_len())
    }

    fn last(&self) -> u128 {
        self.base + (addr::pow2(self.host_bits()) - 1)
    }

    fn ensure_free(&mut self, cfg: &PoolConfig) {
        if !matches!(self.free, FreeMap::Unknown) {
            return;
        }
        let hb = self.host_bits();
        if hb > DENSE_MAX_BITS {
            self.free = FreeMap::Sparse;
            return;
        }
        let size = 1u64 << hb;
        let mut bits = vec![0u64; size.div_ceil(64) as usize];
        let lo = cfg.lo.max(self.base);
        let hi = cfg.hi.min(self.last());
        if lo <= hi {
            set_bits(&mut bits, (lo - self.base) as u64, (hi - self.base) as u64, true);
            for s in cfg.excluded.spans() {
                let a = s.lo.max(lo);
                let b = s.hi.min(hi);
                if a <= b {
                    set_bits(&mut bits, (a - self.base) as u64, (b - self.base) as u64, false);
                }
            }
        }
        for off in self.allocs.keys() {
            set_bits(&mut bits, *off as u64, *off as u64, false);
        }
        let count = bits.iter().map(|w| u64::from(w.count_ones())).sum();
        self.free = FreeMap::Dense { bits, count };
    }

    /// Free allocatable addresses (None: not counted, big block).
    fn free_count(&mut self, cfg: &PoolConfig) -> Option<u64> {
        self.ensure_free(cfg);
        match &self.free {
            FreeMap::Dense { count, .. } => Some(*count),
            _ => None,
        }
    }

    /// Lowest free allocatable offset.
    fn find_free(&mut self, cfg: &PoolConfig) -> Option<u128> {
        self.ensure_free(cfg);
        match &self.free {
            FreeMap::Dense { bits, count } => {
                if *count == 0 {
                    return None;
                }
                for (i, w) in bits.iter().enumerate() {
                    if *w != 0 {
                        return Some((i as u128) * 64 + u128::from(w.trailing_zeros()));
                    }
                }
                None
            }
            _ => {
                let mut cand = cfg.lo.max(self.base);
                let end = cfg.hi.min(self.last());
                while cand <= end {
                    if let Some(s) = cfg.excluded.find(cand) {
                        if s.hi >= end {
                            return None;
                        }
                        cand = s.hi + 1;
                        continue;
                    }
                    let off = cand - self.base;
                    if self.allocs.contains_key(&off) {
                        if cand == u128::MAX {
                            return None;
                        }
                        cand += 1;
                        continue;
                    }
                    return Some(off);
                }
                None
            }
        }
    }

    fn mark_used(&mut self, off: u128) {
        if let FreeMap::Dense { bits, count } = &mut self.free {
            let w = (off / 64) as usize;
            let m = 1u64 << (off % 64);
            if let Some(word) = bits.get_mut(w) {
                if *word & m != 0 {
                    *word &= !m;
                    *count -= 1;
                }
            }
        }
    }

    fn mark_free(&mut self, off: u128, cfg: &PoolConfig) {
        if let FreeMap::Dense { bits, count } = &mut self.free {
            if !cfg.allocatable_n(self.base + off) {
                return;
            }
            let w = (off / 64) as usize;
            let m = 1u64 << (off % 64);
            if let Some(word) = bits.get_mut(w) {
                if *word & m == 0 {
                    *word |= m;
                    *count += 1;
                }
            }
        }
    }

    fn record(&self, family: Family) -> BlockRecord {
        BlockRecord {
            cidr: self.cidr,
            owner: self.owner.clone(),
            allocs: self
                .allocs
                .iter()
                .map(|(off, a)| AllocRecord {
                    ip: addr::from_u128(family, self.base + off),
                    cid: a.cid.clone(),
                    ifname: a.ifname.clone(),
                    node: a.node.clone(),
                    ns: a.pod.as_ref().map(|p| p.namespace.clone()),
                    pod: a.pod.as_ref().map(|p| p.name.clone()),
                    fixed: a.fixed,
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct PoolState {
    pub(crate) cfg: PoolConfig,
    /// Host bits of a block.
    hb: u32,
    /// First address of the pool.
    base: u128,
    pub(crate) blocks: BTreeMap<u128, Block>,
    deleted: Vec<(IpNet, Version)>,
}

impl PoolState {
    fn block_index(&self, n: u128) -> u128 {
        (n - self.base) >> self.hb
    }

    fn block_cidr(&self, idx: u128) -> IpNet {
        let start = self.base + (idx << self.hb);
        addr::net_from(self.cfg.family, start, self.cfg.block_size)
    }

    /// The first unclaimed block with at least one allocatable address.
    fn free_block_index(&self) -> Option<u128> {
        let cfg = &self.cfg;
        if cfg.lo > cfg.hi {
            return None;
        }
        let mut idx = self.block_index(cfg.lo);
        let last = self.block_index(cfg.hi);
        while idx <= last {
            if self.blocks.contains_key(&idx) {
                idx += 1;
                continue;
            }
            let start = self.base + (idx << self.hb);
            let end = start + (addr::pow2(self.hb) - 1);
            if cfg.allocatable_count_in(start, end) > 0 {
                return Some(idx);
            }
            // Everything allocatable-by-range here is excluded: jump past the exclusion.
            let a = start.max(cfg.lo);
            match cfg.excluded.find(a) {
                Some(s) if s.hi < cfg.hi => idx = self.block_index(s.hi + 1).max(idx + 1),
                _ => return None,
            }
        }
        None
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Loc {
    pool: usize,
    block: u128,
    off: u128,
}

type FixedKey = (usize, String, String, String);

/// Pools, blocks and allocations in memory. See the module doc.
#[derive(Debug, Clone, Default)]
pub struct State {
    pub(crate) pools: Vec<PoolState>,
    handles: FxHashMap<Attachment, Vec<Loc>>,
    fixed: FxHashMap<FixedKey, Loc>,
}

fn corrupt(pool: &str, msg: String) -> Error {
    Error::Corrupt { path: format!("pool {pool}").into(), msg }
}

impl State {
    /// An empty state over `pools` (no blocks yet).
    pub fn new(pools: Vec<PoolConfig>) -> State {
        let mut st = State::default();
        for cfg in pools {
            st.add_pool(cfg);
        }
        st
    }

    /// Makes room for `allocs` more attachments (before adding blocks that hold them).
    pub fn reserve(&mut self, allocs: usize) {
        self.handles.reserve(allocs);
    }

    /// Add a pool; returns its index.
    pub fn add_pool(&mut self, cfg: PoolConfig) -> usize {
        let hb = u32::from(cfg.family.bits() - cfg.block_size);
        let base = addr::to_u128(&cfg.cidr.network());
        self.pools.push(PoolState { cfg, hb, base, blocks: BTreeMap::new(), deleted: Vec::new() });
        self.pools.len() - 1
    }

    /// The pool configs, in index order.
    pub fn pool_configs(&self) -> impl Iterator<Item = &PoolConfig> {
        self.pools.iter().map(|p| &p.cfg)
    }

    /// Add a stored block record to pool `pool`. Fails if it does not fit the pool's geometry.
    pub fn add_block(&mut self, pool: usize, rec: BlockRecord, version: Option<Version>) -> Result<()> {
        let Some(ps) = self.pools.get_mut(pool) else {
            return Err(corrupt("?", format!("no pool index {pool}")));
        };
        let cfg = &ps.cfg;
        if rec.cidr.prefix_len() != cfg.block_size
            || !cfg.cidr.contains(&rec.cidr)
            || rec.cidr.addr() != rec.cidr.network()
        {
            return Err(Error::config(
                format!("pool {:?}", cfg.name),
                format!(
                    "the store holds block {} which does not fit cidr {} with blockSize {}; \
                     release its addresses or use a new pool name",
                    rec.cidr, cfg.cidr, cfg.block_size
                ),
            ));
        }
        let idx = ps.block_index(addr::to_u128(&rec.cidr.network()));
        if ps.blocks.contains_key(&idx) {
            return Err(corrupt(&cfg.name, format!("block {} stored twice", rec.cidr)));
        }
        let mut block = Block::new(rec.cidr, rec.owner, version);
        // Records arrive sorted by address (both store formats keep them so): the block's map
        // is built in one pass from the sorted list rather than by an insert per address.
        let mut sorted: Vec<(u128, Alloc)> = Vec::with_capacity(rec.allocs.len());
        let mut max_off: Option<u128> = None;
        for a in rec.allocs {
            if !rec.cidr.contains(&a.ip) {
                return Err(corrupt(&cfg.name, format!("{} recorded in block {}", a.ip, rec.cidr)));
            }
            let off = addr::to_u128(&a.ip) - block.base;
            // Only an address at or below the highest so far can repeat one (never, in order).
            if max_off.is_some_and(|m| m >= off) {
                let dup = sorted.iter().any(|(o, _)| *o == off);
                if dup {
                    return Err(corrupt(&cfg.name, format!("{} recorded twice in block {}", a.ip, rec.cidr)));
                }
            }
            max_off = Some(max_off.map_or(off, |m| m.max(off)));
            let pod = match (a.ns, a.pod) {
                (Some(ns), Some(name)) => Some(PodRef { namespace: ns, name }),
                _ => None,
            };
            let loc = Loc { pool, block: idx, off };
            if let Some(cid) = &a.cid {
                self.handles.entry((cid.clone(), a.ifname.clone())).or_default().push(loc);
            }
            if a.fixed {
                if let Some(p) = &pod {
                    self.fixed.insert((pool, p.namespace.clone(), p.name.clone(), a.ifname.clone()), loc);
                }
            }
            sorted.push((off, Alloc { cid: a.cid, ifname: a.ifname, node: a.node, pod, fixed: a.fixed }));
        }
        // `from_iter` sorts (stably, so an already sorted list costs one pass) and bulk-builds.
        block.allocs = sorted.into_iter().collect();
        ps.blocks.insert(idx, block);
        Ok(())
    }

    /// Block records changed since load (or the last call), with the version each was read at.
    pub fn take_changes(&mut self) -> Vec<Change> {
        let mut out = Vec::new();
        for ps in &mut self.pools {
            for (cidr, v) in ps.deleted.drain(..) {
                out.push(Change::Delete { pool: ps.cfg.name.clone(), cidr, expect: v });
            }
            for b in ps.blocks.values_mut() {
                if !b.touched.is_empty() {
                    let mut changed: Vec<IpAddr> =
                        b.touched.drain(..).map(|off| addr::from_u128(ps.cfg.family, b.base + off)).collect();
                    changed.sort();
                    out.push(Change::Put {
                        pool: ps.cfg.name.clone(),
                        record: b.record(ps.cfg.family),
                        expect: b.version,
                        changed,
                    });
                }
            }
        }
        out
    }

    /// Record the version a block now has in the store (after a successful put).
    pub fn set_version(&mut self, pool: &str, cidr: &IpNet, version: Version) {
        if let Some(ps) = self.pools.iter_mut().find(|p| p.cfg.name == pool) {
            let idx = ps.block_index(addr::to_u128(&cidr.network()));
            if let Some(b) = ps.blocks.get_mut(&idx) {
                b.version = Some(version);
            }
        }
    }

    fn ip_at(&self, loc: Loc) -> IpAddr {
        let ps = &self.pools[loc.pool];
        addr::from_u128(ps.cfg.family, ps.base + (loc.block << ps.hb) + loc.off)
    }

    fn alloc_at(&self, loc: Loc) -> Option<&Alloc> {
        self.pools.get(loc.pool)?.blocks.get(&loc.block)?.allocs.get(&loc.off)
    }

    /// Addresses held by an attachment.
    pub fn lookup(&self, container_id: &str, ifname: &str) -> Vec<Grant> {
        match self.handles.get(&(container_id.to_string(), ifname.to_string())) {
            Some(locs) => locs.iter().map(|l| Grant { pool: l.pool, ip: self.ip_at(*l) }).collect(),
            None => Vec::new(),
        }
    }

    /// Insert an allocation at `loc` (the slot must be free).
    fn insert(&mut self, loc: Loc, node: &str, req: &AllocRequest) {
        let fixed = self.pools[loc.pool].cfg.fixed_ips && req.pod.is_some();
        let ps = &mut self.pools[loc.pool];
        let Some(block) = ps.blocks.get_mut(&loc.block) else {
            return;
        };
        block.allocs.insert(
            loc.off,
            Alloc {
                cid: Some(req.container_id.clone()),
                ifname: req.ifname.clone(),
                node: node.to_string(),
                pod: req.pod.clone(),
                fixed,
            },
        );
        block.mark_used(loc.off);
        block.touch(loc.off);
        self.handles.entry((req.container_id.clone(), req.ifname.clone())).or_default().push(loc);
        if fixed {
            if let Some(p) = &req.pod {
                self.fixed.insert((loc.pool, p.namespace.clone(), p.name.clone(), req.ifname.clone()), loc);
            }
        }
    }

    /// Hand an existing slot (fixed reservation or takeover) to `req`.
    fn rebind(&mut self, loc: Loc, node: &str, req: &AllocRequest) {
        let key = (req.container_id.clone(), req.ifname.clone());
        let old = self.alloc_at(loc).and_then(|a| a.cid.clone().map(|c| (c, a.ifname.clone())));
        if let Some(old_key) = old {
            if old_key != key {
                if let Some(v) = self.handles.get_mut(&old_key) {
                    v.retain(|l| *l != loc);
                    if v.is_empty() {
                        self.handles.remove(&old_key);
                    }
                }
            }
        }
        let Some(block) = self.pools[loc.pool].blocks.get_mut(&loc.block) else {
            return;
        };
        if let Some(a) = block.allocs.get_mut(&loc.off) {
            a.cid = Some(req.container_id.clone());
            a.node = node.to_string();
            a.ifname = req.ifname.clone();
        }
        block.touch(loc.off);
        let v = self.handles.entry(key).or_default();
        if !v.contains(&loc) {
            v.push(loc);
        }
    }

    /// Remove the allocation at `loc` entirely.
    fn remove(&mut self, loc: Loc) -> Option<Alloc> {
        let ps = &mut self.pools[loc.pool];
        let block = ps.blocks.get_mut(&loc.block)?;
        let a = block.allocs.remove(&loc.off)?;
        block.mark_free(loc.off, &ps.cfg);
        block.touch(loc.off);
        if block.allocs.is_empty() && block.owner.is_none() {
            // An owner-less stripe with nothing in it: drop the record.
            if let Some(b) = ps.blocks.remove(&loc.block) {
                if let Some(v) = b.version {
                    ps.deleted.push((b.cidr, v));
                }
            }
        }
        if let Some(cid) = &a.cid {
            let key = (cid.clone(), a.ifname.clone());
            if let Some(v) = self.handles.get_mut(&key) {
                v.retain(|l| *l != loc);
                if v.is_empty() {
                    self.handles.remove(&key);
                }
            }
        }
        if a.fixed {
            if let Some(p) = &a.pod {
                let fk = (loc.pool, p.namespace.clone(), p.name.clone(), a.ifname.clone());
                if self.fixed.get(&fk) == Some(&loc) {
                    self.fixed.remove(&fk);
                }
            }
        }
        Some(a)
    }

    /// Allocate one address per family of the pools (or return what the attachment already
    /// holds). `pools` restricts the candidate pools (indices, in preference order); `None`
    /// means all pools in index order.
    pub fn allocate(&mut self, node: &str, req: &AllocRequest, pools: Option<&[usize]>) -> Result<Vec<Grant>> {
        let all: Vec<usize>;
        let pools = match pools {
            Some(p) => p,
            None => {
                all = (0..self.pools.len()).collect();
                &all
            }
        };
        let key = (req.container_id.clone(), req.ifname.clone());
        let mut out: Vec<Grant> = match self.handles.get(&key) {
            Some(locs) => locs.iter().map(|l| Grant { pool: l.pool, ip: self.ip_at(*l) }).collect(),
            None => Vec::new(),
        };
        let mut done: HashSet<Family> = out.iter().map(|g| Family::of(&g.ip)).collect();

        for ip in &req.requested {
            if out.iter().any(|g| g.ip == *ip) {
                continue;
            }
            let fam = Family::of(ip);
            if done.contains(&fam) {
                let have: Vec<String> =
                    out.iter().filter(|g| Family::of(&g.ip) == fam).map(|g| g.ip.to_string()).collect();
                return Err(Error::IpUnavailable(format!(
                    "container {} ifname {} already holds {}; cannot also take requested IP {ip}",
                    req.container_id,
                    req.ifname,
                    have.join(", ")
                )));
            }
            let grant = self.allocate_requested(node, req, *ip, pools)?;
            out.push(grant);
            done.insert(fam);
        }

        let mut families: Vec<Family> = Vec::new();
        for &p in pools {
            if let Some(ps) = self.pools.get(p) {
                if !families.contains(&ps.cfg.family) {
                    families.push(ps.cfg.family);
                }
            }
        }
        for fam in families {
            if done.contains(&fam) {
                continue;
            }
            let candidates: Vec<usize> =
                pools.iter().copied().filter(|&p| self.pools.get(p).is_some_and(|ps| ps.cfg.family == fam)).collect();
            let mut got = None;
            for &p in &candidates {
                if let Some(loc) = self.allocate_in_pool(p, node, req) {
                    got = Some(Grant { pool: p, ip: self.ip_at(loc) });
                    break;
                }
            }
            match got {
                Some(g) => {
                    out.push(g);
                    done.insert(fam);
                }
                None => {
                    let names: Vec<String> = candidates
                        .iter()
                        .map(|&p| format!("{} ({})", self.pools[p].cfg.name, self.pools[p].cfg.cidr))
                        .collect();
                    return Err(Error::Exhausted(format!(
                        "no free {} address for node {node} in pool {}",
                        fam.name(),
                        names.join(", ")
                    )));
                }
            }
        }
        Ok(out)
    }

    fn describe(a: &Alloc) -> String {
        let who = match &a.cid {
            Some(c) => format!("container {} ifname {}", c, a.ifname),
            None => "a fixed-IP reservation".to_string(),
        };
        match &a.pod {
            Some(p) => format!("{who} (pod {p}, node {})", a.node),
            None => format!("{who} (node {})", a.node),
        }
    }

    fn allocate_requested(&mut self, node: &str, req: &AllocRequest, ip: IpAddr, pools: &[usize]) -> Result<Grant> {
        let Some(&p) = pools.iter().find(|&&p| self.pools.get(p).is_some_and(|ps| ps.cfg.cidr.contains(&ip))) else {
            let names: Vec<String> = pools
                .iter()
                .filter_map(|&p| self.pools.get(p))
                .map(|ps| format!("{} ({})", ps.cfg.name, ps.cfg.cidr))
                .collect();
            return Err(Error::NotInPool(format!(
                "requested IP {ip} is in no pool of this network (pools: {})",
                names.join(", ")
            )));
        };
        let ps = &self.pools[p];
        if let Some(why) = ps.cfg.why_not_allocatable(&ip) {
            return Err(Error::IpUnavailable(format!("requested IP {ip} cannot be allocated: {why}")));
        }
        let n = addr::to_u128(&ip);
        let idx = ps.block_index(n);
        let off = n - (ps.base + (idx << ps.hb));
        let loc = Loc { pool: p, block: idx, off };
        if let Some(b) = ps.blocks.get(&idx) {
            if ps.cfg.affinity {
                if let Some(owner) = &b.owner {
                    if owner != node {
                        return Err(Error::IpUnavailable(format!(
                            "requested IP {ip} is in block {} of pool {} which belongs to node {owner}; \
                             this node ({node}) can only take requested IPs from its own or unclaimed blocks",
                            b.cidr, ps.cfg.name
                        )));
                    }
                }
            }
            if let Some(a) = b.allocs.get(&off) {
                let same_identity =
                    a.cid.is_none() && a.fixed && a.ifname == req.ifname && a.pod.is_some() && a.pod == req.pod;
                if same_identity {
                    self.rebind(loc, node, req);
                    return Ok(Grant { pool: p, ip });
                }
                return Err(Error::IpUnavailable(format!("requested IP {ip} is in use by {}", Self::describe(a))));
            }
        }
        // A fixed identity moving to a requested IP gives up its old reservation.
        if self.pools[p].cfg.fixed_ips {
            if let Some(pod) = &req.pod {
                let fk = (p, pod.namespace.clone(), pod.name.clone(), req.ifname.clone());
                if let Some(old) = self.fixed.get(&fk).copied() {
                    if self.alloc_at(old).is_some_and(|a| a.cid.is_none()) {
                        self.remove(old);
                    }
                }
            }
        }
        let ps = &mut self.pools[p];
        if !ps.blocks.contains_key(&idx) {
            let owner = ps.cfg.affinity.then(|| node.to_string());
            let cidr = ps.block_cidr(idx);
            ps.blocks.insert(idx, Block::new(cidr, owner, None));
        }
        self.insert(loc, node, req);
        Ok(Grant { pool: p, ip })
    }

    fn take_in_block(&mut self, p: usize, idx: u128, node: &str, req: &AllocRequest) -> Option<Loc> {
        let ps = &mut self.pools[p];
        let cfg = &ps.cfg;
        let block = ps.blocks.get_mut(&idx)?;
        let off = block.find_free(cfg)?;
        let loc = Loc { pool: p, block: idx, off };
        self.insert(loc, node, req);
        Some(loc)
    }

    fn allocate_in_pool(&mut self, p: usize, node: &str, req: &AllocRequest) -> Option<Loc> {
        // Fixed IP already known for this identity?
        if self.pools[p].cfg.fixed_ips {
            if let Some(pod) = &req.pod {
                let fk = (p, pod.namespace.clone(), pod.name.clone(), req.ifname.clone());
                if let Some(loc) = self.fixed.get(&fk).copied() {
                    if self.alloc_at(loc).is_some() {
                        self.rebind(loc, node, req);
                        return Some(loc);
                    }
                }
            }
        }
        let affinity = self.pools[p].cfg.affinity;
        // Blocks this node may use without claiming: its own (affinity) or any stripe.
        let mut usable: Option<u128> = None;
        {
            let ps = &mut self.pools[p];
            let cfg = &ps.cfg;
            for (idx, b) in ps.blocks.iter_mut() {
                let mine = if affinity { b.owner.as_deref() == Some(node) } else { true };
                if !mine {
                    continue;
                }
                let has = match b.free_count(cfg) {
                    Some(c) => c > 0,
                    None => b.find_free(cfg).is_some(),
                };
                if has {
                    usable = Some(*idx);
                    break;
                }
            }
        }
        if let Some(idx) = usable {
            if let Some(loc) = self.take_in_block(p, idx, node, req) {
                return Some(loc);
            }
        }
        // Claim a new block.
        if let Some(idx) = self.pools[p].free_block_index() {
            let ps = &mut self.pools[p];
            let cidr = ps.block_cidr(idx);
            let owner = affinity.then(|| node.to_string());
            ps.blocks.insert(idx, Block::new(cidr, owner, None));
            if let Some(loc) = self.take_in_block(p, idx, node, req) {
                return Some(loc);
            }
        }
        // Borrow from another node's block.
        if affinity && self.pools[p].cfg.borrow {
            let mut found = None;
            {
                let ps = &mut self.pools[p];
                let cfg = &ps.cfg;
                for (idx, b) in ps.blocks.iter_mut() {
                    if b.owner.as_deref() == Some(node) {
                        continue;
                    }
                    if b.find_free(cfg).is_some() {
                        found = Some(*idx);
                        break;
                    }
                }
            }
            if let Some(idx) = found {
                return self.take_in_block(p, idx, node, req);
            }
        }
        None
    }

    /// Release what an attachment holds (idempotent). Fixed IPs stay reserved for their pod.
    pub fn release(&mut self, container_id: &str, ifname: &str) -> Vec<IpAddr> {
        let key = (container_id.to_string(), ifname.to_string());
        let Some(locs) = self.handles.remove(&key) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for loc in locs {
            let ip = self.ip_at(loc);
            let keep = self.alloc_at(loc).is_some_and(|a| a.fixed && a.pod.is_some());
            if keep {
                let Some(block) = self.pools[loc.pool].blocks.get_mut(&loc.block) else {
                    continue;
                };
                if let Some(a) = block.allocs.get_mut(&loc.off) {
                    a.cid = None;
                }
                block.touch(loc.off);
            } else {
                self.remove(loc);
            }
            out.push(ip);
        }
        out
    }

    /// Drop the fixed IPs of a pod identity: reservations are freed, live allocations become
    /// ordinary ones (freed by their DEL). Returns the addresses freed now.
    pub fn release_fixed(&mut self, pod: &PodRef) -> Vec<IpAddr> {
        let keys: Vec<FixedKey> =
            self.fixed.keys().filter(|k| k.1 == pod.namespace && k.2 == pod.name).cloned().collect();
        let mut out = Vec::new();
        for k in keys {
            let Some(loc) = self.fixed.remove(&k) else {
                continue;
            };
            let reserved = self.alloc_at(loc).is_some_and(|a| a.cid.is_none());
            if reserved {
                out.push(self.ip_at(loc));
                self.remove(loc);
            } else if let Some(block) = self.pools[loc.pool].blocks.get_mut(&loc.block) {
                if let Some(a) = block.allocs.get_mut(&loc.off) {
                    a.fixed = false;
                }
                block.touch(loc.off);
            }
        }
        out
    }

    /// Release every attachment of `node` not in `valid`; see [`GcMode`].
    pub fn gc(&mut self, node: &str, valid: &HashSet<Attachment>, mode: GcMode) -> GcReport {
        let mut report = GcReport::default();
        let stale: Vec<Attachment> = self
            .handles
            .iter()
            .filter(|(k, locs)| {
                !valid.contains(*k) && locs.iter().any(|l| self.alloc_at(*l).is_some_and(|a| a.node == node))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            for ip in self.release(&k.0, &k.1) {
                report.released.push((k.0.clone(), k.1.clone(), ip));
            }
        }
        if mode == GcMode::All {
            let mut reserved = Vec::new();
            for (p, ps) in self.pools.iter().enumerate() {
                for (idx, b) in &ps.blocks {
                    for (off, a) in &b.allocs {
                        if a.cid.is_none() && a.node == node {
                            reserved.push((Loc { pool: p, block: *idx, off: *off }, a.pod.clone()));
                        }
                    }
                }
            }
            for (loc, pod) in reserved {
                let ip = self.ip_at(loc);
                self.remove(loc);
                if let Some(pod) = pod {
                    report.unreserved.push((pod, ip));
                }
            }
        }
        report
    }

    /// Blocks with affinity to `node`, in address order.
    pub fn blocks_of(&self, node: &str) -> Vec<IpNet> {
        let mut out = Vec::new();
        for ps in &self.pools {
            for b in ps.blocks.values() {
                if b.owner.as_deref() == Some(node) {
                    out.push(b.cidr);
                }
            }
        }
        out
    }

    /// Addresses `node` took from other nodes' blocks (they need a /32 or /128 route).
    pub fn borrowed_of(&self, node: &str) -> Vec<IpAddr> {
        let mut out = Vec::new();
        for ps in &self.pools {
            if !ps.cfg.affinity {
                continue;
            }
            for b in ps.blocks.values() {
                if b.owner.as_deref() == Some(node) {
                    continue;
                }
                for (off, a) in &b.allocs {
                    if a.node == node && a.cid.is_some() {
                        out.push(addr::from_u128(ps.cfg.family, b.base + off));
                    }
                }
            }
        }
        out
    }

    /// Number of live allocations (not counting reservations).
    pub fn allocated_count(&self) -> usize {
        self.handles.values().map(|v| v.len()).sum()
    }

    /// Check the invariants; returns a description of the first violation.
    ///
    /// * every allocation is allocatable in its pool and inside its block;
    /// * in affinity pools every live allocation sits in a block owned by its node, or is a
    ///   borrow (its node owns no block with a free address... at the time it was made);
    /// * the attachment index and the blocks agree, and no attachment holds two addresses of
    ///   one family.
    pub fn check_invariants(&self) -> std::result::Result<(), String> {
        let mut seen: HashMap<&Attachment, usize> = HashMap::new();
        for (p, ps) in self.pools.iter().enumerate() {
            for (idx, b) in &ps.blocks {
                if ps.block_cidr(*idx) != b.cidr {
                    return Err(format!("block index {idx} holds {}", b.cidr));
                }
                if ps.cfg.affinity != b.owner.is_some() {
                    return Err(format!("block {} owner {:?} in pool affinity={}", b.cidr, b.owner, ps.cfg.affinity));
                }
                if !ps.cfg.affinity && b.allocs.is_empty() {
                    return Err(format!("empty stripe {} kept", b.cidr));
                }
                for (off, a) in &b.allocs {
                    let n = b.base + off;
                    if !ps.cfg.allocatable_n(n) || n > b.last() {
                        return Err(format!("{} not allocatable", addr::from_u128(ps.cfg.family, n)));
                    }
                    if let Some(cid) = &a.cid {
                        let k = (cid.clone(), a.ifname.clone());
                        let loc = Loc { pool: p, block: *idx, off: *off };
                        match self.handles.get(&k) {
                            Some(v) if v.contains(&loc) => {}
                            _ => return Err(format!("{k:?} missing from the index")),
                        }
                        if let Some((k2, _)) = self.handles.get_key_value(&k) {
                            *seen.entry(k2).or_default() += 1;
                        }
                        if ps.cfg.affinity && b.owner.as_deref() != Some(a.node.as_str()) && !ps.cfg.borrow {
                            return Err(format!("{k:?} in block {} of {:?} without borrow", b.cidr, b.owner));
                        }
                    }
                }
            }
        }
        for (k, locs) in &self.handles {
            if seen.get(k).copied().unwrap_or(0) != locs.len() {
                return Err(format!("index entry {k:?} points at missing allocations"));
            }
            let mut fams = HashSet::new();
            for l in locs {
                if !fams.insert(self.pools[l.pool].cfg.family) {
                    return Err(format!("{k:?} holds two addresses of one family"));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{AllocRecord, BlockRecord};

    fn rec(ips: &[&str]) -> BlockRecord {
        BlockRecord {
            cidr: "10.0.0.0/26".parse().unwrap(),
            owner: Some("n1".into()),
            allocs: ips
                .iter()
                .map(|ip| AllocRecord {
                    ip: ip.parse().unwrap(),
                    cid: Some(format!("c{ip}")),
                    ifname: "eth0".into(),
                    node: "n1".into(),
                    ns: None,
                    pod: None,
                    fixed: false,
                })
                .collect(),
        }
    }

    fn state() -> State {
        let cfg = crate::IpamConfig::parse(
            br#"{"node":"n1","dataDir":"/nonexistent","pools":[{"name":"p","cidr":"10.0.0.0/24","blockSize":26}]}"#,
        )
        .unwrap();
        State::new(cfg.pools.clone())
    }

    #[test]
    fn add_block_takes_any_order_and_refuses_repeats() {
        let mut st = state();
        st.add_block(0, rec(&["10.0.0.5", "10.0.0.3", "10.0.0.9"]), Some(1)).unwrap();
        assert_eq!(st.allocated_count(), 3);
        assert_eq!(st.lookup("c10.0.0.3", "eth0").len(), 1);
        st.check_invariants().unwrap();
        // The next allocation skips all three, whatever order they were stored in.
        let g = st.allocate("n1", &AllocRequest::new("new", "eth0"), None).unwrap();
        assert!(!["10.0.0.3", "10.0.0.5", "10.0.0.9"].contains(&g[0].ip.to_string().as_str()), "{g:?}");
        for ips in [
            &["10.0.0.5", "10.0.0.5"][..],
            &["10.0.0.5", "10.0.0.3", "10.0.0.5"],
            &["10.0.0.3", "10.0.0.9", "10.0.0.3"],
        ] {
            let err = state().add_block(0, rec(ips), Some(1)).unwrap_err();
            assert!(err.to_string().contains("recorded twice"), "{ips:?}: {err}");
        }
    }
}
