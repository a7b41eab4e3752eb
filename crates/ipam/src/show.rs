//! `knit ipam show`: pools, blocks per node, used and free counts.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

use crate::addr;
use crate::state::State;

/// Everything in a store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub pools: Vec<PoolSummary>,
}

/// One pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolSummary {
    pub name: String,
    pub cidr: IpNet,
    pub block_size: u8,
    /// Per-node block affinity (`blocks`).
    pub affinity: bool,
    pub fixed_ips: bool,
    /// Addresses that may ever be handed out.
    pub total: u128,
    /// Held by containers.
    pub used: u128,
    /// Fixed IPs reserved for a pod identity, no container now.
    pub reserved: u128,
    pub free: u128,
    pub blocks: Vec<BlockSummary>,
    /// Per node: blocks owned and addresses used (by allocating node).
    pub nodes: BTreeMap<String, NodeSummary>,
}

/// One block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlockSummary {
    pub cidr: IpNet,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    pub used: u128,
    pub reserved: u128,
    pub free: u128,
    /// Addresses in this block allocated by other nodes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub borrowed: Vec<IpAddr>,
}

/// One node within a pool.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NodeSummary {
    pub blocks: Vec<IpNet>,
    pub used: u128,
}

impl Summary {
    pub(crate) fn from_state(st: &State) -> Summary {
        let mut pools = Vec::new();
        for ps in &st.pools {
            let cfg = &ps.cfg;
            let mut blocks = Vec::new();
            let mut nodes: BTreeMap<String, NodeSummary> = BTreeMap::new();
            let (mut used, mut reserved) = (0u128, 0u128);
            for b in ps.blocks.values() {
                let (first, last) = addr::net_bounds(&b.cidr);
                let cap = cfg.allocatable_count_in(first, last);
                let mut bu = 0u128;
                let mut br = 0u128;
                let mut borrowed = Vec::new();
                for (off, a) in &b.allocs {
                    if a.cid.is_some() {
                        bu += 1;
                        nodes.entry(a.node.clone()).or_default().used += 1;
                        if cfg.affinity && b.owner.as_deref() != Some(a.node.as_str()) {
                            borrowed.push(addr::from_u128(cfg.family, b.base + off));
                        }
                    } else {
                        br += 1;
                    }
                }
                if let Some(o) = &b.owner {
                    nodes.entry(o.clone()).or_default().blocks.push(b.cidr);
                }
                used += bu;
                reserved += br;
                blocks.push(BlockSummary {
                    cidr: b.cidr,
                    owner: b.owner.clone(),
                    used: bu,
                    reserved: br,
                    free: cap.saturating_sub(bu + br),
                    borrowed,
                });
            }
            let total = cfg.allocatable_count();
            pools.push(PoolSummary {
                name: cfg.name.clone(),
                cidr: cfg.cidr,
                block_size: cfg.block_size,
                affinity: cfg.affinity,
                fixed_ips: cfg.fixed_ips,
                total,
                used,
                reserved,
                free: total.saturating_sub(used + reserved),
                blocks,
                nodes,
            });
        }
        Summary { pools }
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.pools.is_empty() {
            return writeln!(f, "no pools");
        }
        for (i, p) in self.pools.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl fmt::Display for PoolSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "pool {} {} blockSize /{} {}{}: {} used, {} reserved, {} free of {}",
            self.name,
            self.cidr,
            self.block_size,
            if self.affinity { "per-node blocks" } else { "shared" },
            if self.fixed_ips { ", fixed IPs" } else { "" },
            self.used,
            self.reserved,
            self.free,
            self.total
        )?;
        if self.blocks.is_empty() {
            return Ok(());
        }
        let w = self.blocks.iter().map(|b| b.cidr.to_string().len()).max().unwrap_or(5).max(5);
        let ow = self.blocks.iter().map(|b| b.owner.as_deref().unwrap_or("-").len()).max().unwrap_or(5).max(5);
        writeln!(f, "  {:<w$}  {:<ow$}  {:>6}  {:>8}  {:>6}  BORROWED", "BLOCK", "OWNER", "USED", "RESERVED", "FREE")?;
        for b in &self.blocks {
            let borrowed: Vec<String> = b.borrowed.iter().map(|i| i.to_string()).collect();
            writeln!(
                f,
                "  {:<w$}  {:<ow$}  {:>6}  {:>8}  {:>6}  {}",
                b.cidr.to_string(),
                b.owner.as_deref().unwrap_or("-"),
                b.used,
                b.reserved,
                b.free,
                if borrowed.is_empty() { "-".to_string() } else { borrowed.join(",") }
            )?;
        }
        for (node, n) in &self.nodes {
            let blocks: Vec<String> = n.blocks.iter().map(|b| b.to_string()).collect();
            writeln!(
                f,
                "  node {node}: {} used, blocks {}",
                n.used,
                if blocks.is_empty() { "-".to_string() } else { blocks.join(" ") }
            )?;
        }
        Ok(())
    }
}
