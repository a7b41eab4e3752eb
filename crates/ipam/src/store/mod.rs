//! Persistence of allocations: the [`Store`] trait and its records.
//!
//! # Granularity
//!
//! The unit of storage is the **block record** ([`BlockRecord`]): one CIDR slice of a pool
//! (`blockSize`), its owner node (affinity) and the allocations inside it, exactly Calico's
//! `IPAMBlock`. Every mutation the allocator makes touches one block record at a time:
//!
//! | operation | store calls |
//! |---|---|
//! | claim a block (with its first IP) | `put_block(expect = None)`: create-if-absent |
//! | claim / release an IP in a block | `put_block(expect = Some(version))`: compare-and-swap |
//! | drop an empty owner-less stripe | `delete_block(expect = version)` |
//! | look around | `list_blocks(pool)`, `list_pools()`, `get_pool(pool)` |
//!
//! so an etcd store maps each call to one etcd transaction (`create_revision == 0` for a claim,
//! `mod_revision == version` for an update, one range read per pool for `list_blocks`) and
//! allocation never rewrites a whole pool. When a compare-and-swap fails the store returns
//! [`Error::Conflict`](crate::Error::Conflict); [`crate::Ipam`] then reloads the pool and re-runs
//! the (idempotent) operation, a bounded number of times.
//!
//! [`Store::exclusive`] wraps a whole operation: the local store takes its `flock` there, so its
//! compare-and-swaps can never fail; an optimistic store (etcd, [`mem::MemStore`]) may run the
//! closure directly and rely on the CAS checks alone.
//!
//! [`Store::write_blocks`] commits all the block writes of one operation (a dual-stack
//! allocation touches two blocks): by default one call after the other; the etcd store makes
//! them one transaction, so an operation is written entirely or not at all.
//!
//! The pool record (`get_pool`/`put_pool`) keeps the pool definition as last configured, so that
//! `show`, `gc` and `release` can work on every pool of the store without the network config.

pub mod etcd;
mod lines;
pub mod local;
pub mod mem;

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::config::RawPool;
use crate::error::Result;

/// Version of a stored record (etcd: `mod_revision`; local: a counter in the file).
pub type Version = u64;

/// A record and the version it was read at.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<T> {
    pub value: T,
    pub version: Version,
}

/// One block of a pool: its owner and the addresses taken inside it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockRecord {
    pub cidr: IpNet,
    /// The node with affinity to the block; `None` for the stripes of a non-affinity pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default)]
    pub allocs: Vec<AllocRecord>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// One address taken inside a block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AllocRecord {
    pub ip: IpAddr,
    /// The container holding it; `None` for a fixed IP reserved for `ns`/`pod`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cid: Option<String>,
    #[serde(rename = "if")]
    pub ifname: String,
    /// The node that allocated it (differs from the block owner when borrowed).
    pub node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ns: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// Kept for `ns`/`pod` on release (pool with `fixedIPs`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub fixed: bool,
}

/// One block write of an operation's commit (see [`Store::write_blocks`]).
#[derive(Debug, Clone, Copy)]
pub enum BlockWrite<'a> {
    /// [`Store::put_block`].
    Put { pool: &'a str, block: &'a BlockRecord, expect: Option<Version>, changed: &'a [IpAddr] },
    /// [`Store::delete_block`].
    Delete { pool: &'a str, cidr: &'a IpNet, expect: Version },
}

/// Where allocations live. See the module doc for the granularity.
pub trait Store {
    /// Run one whole operation. The local store holds its lock during `f`; optimistic stores
    /// may just call `f`.
    fn exclusive<R>(&self, f: impl FnOnce() -> Result<R>) -> Result<R>;

    /// Names of the pools that have a pool record.
    fn list_pools(&self) -> Result<Vec<String>>;

    /// The stored definition of a pool.
    fn get_pool(&self, pool: &str) -> Result<Option<RawPool>>;

    /// Store the definition of a pool (last writer wins).
    fn put_pool(&self, pool: &RawPool) -> Result<()>;

    /// Every block record of a pool.
    fn list_blocks(&self, pool: &str) -> Result<Vec<Versioned<BlockRecord>>>;

    /// Create (`expect == None`: must not exist) or replace (`expect == Some(v)`: must be at
    /// version `v`) a block record. Returns the new version, or `Error::Conflict`.
    /// `changed` lists the addresses whose allocation was added, changed or removed relative
    /// to version `expect`: a store that writes deltas (the local journal) writes just those;
    /// one that writes whole records may ignore it.
    fn put_block(
        &self,
        pool: &str,
        block: &BlockRecord,
        expect: Option<Version>,
        changed: &[IpAddr],
    ) -> Result<Version>;

    /// Delete a block record at version `expect` (a missing record is fine).
    fn delete_block(&self, pool: &str, cidr: &IpNet, expect: Version) -> Result<()>;

    /// Whether the store is usable now (writable, lock obtainable).
    fn check(&self) -> Result<()>;

    /// Commit the writes of one operation; returns the new version of each `Put` (`None` for a
    /// `Delete`), in order. The default runs them one by one (a failure leaves the earlier
    /// ones written; the local store is under its lock then); a transactional store writes
    /// all or nothing.
    fn write_blocks(&self, writes: &[BlockWrite<'_>]) -> Result<Vec<Option<Version>>> {
        let mut out = Vec::with_capacity(writes.len());
        for w in writes {
            match *w {
                BlockWrite::Put { pool, block, expect, changed } => {
                    out.push(Some(self.put_block(pool, block, expect, changed)?))
                }
                BlockWrite::Delete { pool, cidr, expect } => {
                    self.delete_block(pool, cidr, expect)?;
                    out.push(None);
                }
            }
        }
        Ok(out)
    }
}

macro_rules! forward_store {
    ($($t:ty),*) => {$(
        impl<T: Store> Store for $t {
            fn exclusive<R>(&self, f: impl FnOnce() -> Result<R>) -> Result<R> {
                (**self).exclusive(f)
            }
            fn list_pools(&self) -> Result<Vec<String>> {
                (**self).list_pools()
            }
            fn get_pool(&self, pool: &str) -> Result<Option<RawPool>> {
                (**self).get_pool(pool)
            }
            fn put_pool(&self, pool: &RawPool) -> Result<()> {
                (**self).put_pool(pool)
            }
            fn list_blocks(&self, pool: &str) -> Result<Vec<Versioned<BlockRecord>>> {
                (**self).list_blocks(pool)
            }
            fn put_block(&self, pool: &str, block: &BlockRecord, expect: Option<Version>, changed: &[IpAddr]) -> Result<Version> {
                (**self).put_block(pool, block, expect, changed)
            }
            fn delete_block(&self, pool: &str, cidr: &IpNet, expect: Version) -> Result<()> {
                (**self).delete_block(pool, cidr, expect)
            }
            fn check(&self) -> Result<()> {
                (**self).check()
            }
            fn write_blocks(&self, writes: &[BlockWrite<'_>]) -> Result<Vec<Option<Version>>> {
                (**self).write_blocks(writes)
            }
        }
    )*};
}

forward_store!(&T, std::sync::Arc<T>);
