//! An in-memory optimistic store: no lock, every write is a compare-and-swap on the record's
//! version, like etcd. For tests and as the model of a distributed store.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

use std::net::IpAddr;

use ipnet::IpNet;

use super::{BlockRecord, Store, Version, Versioned};
use crate::config::RawPool;
use crate::error::{Error, Result};

#[derive(Debug, Default)]
struct PoolEntry {
    meta: Option<RawPool>,
    blocks: BTreeMap<IpNet, (BlockRecord, Version)>,
}

/// In-memory store with etcd-like compare-and-swap semantics. Cloning shares nothing; share it
/// between threads by reference or `Arc`.
#[derive(Debug, Default)]
pub struct MemStore {
    inner: Mutex<HashMap<String, PoolEntry>>,
    revision: Mutex<Version>,
    conflicts: Mutex<u64>,
}

impl MemStore {
    pub fn new() -> MemStore {
        MemStore::default()
    }

    fn data(&self) -> MutexGuard<'_, HashMap<String, PoolEntry>> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn next_revision(&self) -> Version {
        let mut r = match self.revision.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        *r += 1;
        *r
    }

    fn conflict(&self, what: String) -> Error {
        let mut c = match self.conflicts.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        *c += 1;
        Error::Conflict(what)
    }

    /// How many compare-and-swap operations failed so far.
    pub fn conflicts(&self) -> u64 {
        match self.conflicts.lock() {
            Ok(g) => *g,
            Err(p) => *p.into_inner(),
        }
    }
}

impl Store for MemStore {
    fn exclusive<R>(&self, f: impl FnOnce() -> Result<R>) -> Result<R> {
        f()
    }

    fn list_pools(&self) -> Result<Vec<String>> {
        let d = self.data();
        let mut v: Vec<String> = d.iter().filter(|(_, e)| e.meta.is_some()).map(|(k, _)| k.clone()).collect();
        v.sort();
        Ok(v)
    }

    fn get_pool(&self, pool: &str) -> Result<Option<RawPool>> {
        Ok(self.data().get(pool).and_then(|e| e.meta.clone()))
    }

    fn put_pool(&self, pool: &RawPool) -> Result<()> {
        self.data().entry(pool.name.clone()).or_default().meta = Some(pool.clone());
        Ok(())
    }

    fn list_blocks(&self, pool: &str) -> Result<Vec<Versioned<BlockRecord>>> {
        Ok(self
            .data()
            .get(pool)
            .map(|e| e.blocks.values().map(|(b, v)| Versioned { value: b.clone(), version: *v }).collect())
            .unwrap_or_default())
    }

    fn put_block(
        &self,
        pool: &str,
        block: &BlockRecord,
        expect: Option<Version>,
        _changed: &[IpAddr],
    ) -> Result<Version> {
        let rev = self.next_revision();
        let mut d = self.data();
        let entry = d.entry(pool.to_string()).or_default();
        let current = entry.blocks.get(&block.cidr).map(|(_, v)| *v);
        if current != expect {
            drop(d);
            return Err(self.conflict(format!(
                "block {} of pool {pool}: expected version {expect:?}, found {current:?}",
                block.cidr
            )));
        }
        entry.blocks.insert(block.cidr, (block.clone(), rev));
        Ok(rev)
    }

    fn delete_block(&self, pool: &str, cidr: &IpNet, expect: Version) -> Result<()> {
        let mut d = self.data();
        let Some(entry) = d.get_mut(pool) else {
            return Ok(());
        };
        match entry.blocks.get(cidr).map(|(_, v)| *v) {
            None => Ok(()),
            Some(v) if v == expect => {
                entry.blocks.remove(cidr);
                Ok(())
            }
            Some(v) => {
                drop(d);
                Err(self.conflict(format!("delete block {cidr} of pool {pool}: expected version {expect}, found {v}")))
            }
        }
    }

    fn check(&self) -> Result<()> {
        Ok(())
    }
}
