//! What pods could leave behind on a node: links, routes, rules, permanent neighbours and
//! nf_tables in the node's namespace; processes; knit-ipam allocations.

use std::path::Path;
use std::process::Command;

use knit_host::testing::TestNet;
use knit_host::{link, Handle, Netns, NsId};
use serde_json::Value;

/// The node namespace's network state, as text lines that compare across a pod's life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeState {
    /// `name kind` of every link.
    pub links: Vec<String>,
    /// Routes of every table, both families.
    pub routes: Vec<String>,
    /// Policy rules, both families, except the coordinator's shared `lookup <hostRuleTable>` rule.
    pub rules: Vec<String>,
    /// Permanent neighbour entries.
    pub neighbours: Vec<String>,
    /// `nft list ruleset`.
    pub nft: Vec<String>,
}

fn lines(tn: &TestNet, ns: &Netns, argv: &[&str]) -> Result<Vec<String>, String> {
    let out = tn.exec_ok(ns, argv).map_err(|e| format!("{}: {e}", argv.join(" ")))?;
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .collect();
    v.sort();
    Ok(v)
}

impl NodeState {
    /// Reads `ns`. The coordinator's rule `pref 1000 lookup <host_rule_table>` is left out: it is
    /// shared by every underlay pod of the node and stays by design (DESIGN.md section 4), so
    /// it is not something a removed pod leaves behind.
    pub fn read(tn: &TestNet, ns: &Netns, host_rule_table: u32) -> Result<NodeState, String> {
        let h = Handle::in_netns(ns).map_err(|e| e.to_string())?;
        let mut links: Vec<String> = link::list(&h)
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|l| format!("{} {}", l.name, l.kind.unwrap_or_default()))
            .collect();
        links.sort();
        let mut routes = lines(tn, ns, &["ip", "-4", "route", "show", "table", "all"])?;
        // Routes of IPv6 link-local addresses come and go with their links (compared above), and
        // the kernel adds them only once duplicate address detection is done, at any time.
        routes.extend(
            lines(tn, ns, &["ip", "-6", "route", "show", "table", "all"])?
                .into_iter()
                .filter(|r| !r.starts_with("fe80::") && !r.starts_with("local fe80::")),
        );
        let shared = format!("from all lookup {host_rule_table}");
        let mut rules = lines(tn, ns, &["ip", "-4", "rule"])?;
        rules.extend(lines(tn, ns, &["ip", "-6", "rule"])?);
        rules.retain(|r| !r.ends_with(&shared));
        let mut neighbours = lines(tn, ns, &["ip", "-4", "neigh", "show", "nud", "permanent"])?;
        neighbours.extend(lines(tn, ns, &["ip", "-6", "neigh", "show", "nud", "permanent"])?);
        let nft = lines(tn, ns, &["nft", "list", "ruleset"])?;
        Ok(NodeState { links, routes, rules, neighbours, nft })
    }

    /// What differs from `before`: `+ line` is new, `- line` is gone. Empty when equal.
    pub fn diff(&self, before: &NodeState) -> String {
        let mut out = String::new();
        let parts = [
            ("link", &before.links, &self.links),
            ("route", &before.routes, &self.routes),
            ("rule", &before.rules, &self.rules),
            ("neighbour", &before.neighbours, &self.neighbours),
            ("nft", &before.nft, &self.nft),
        ];
        for (what, old, new) in parts {
            for l in new.iter().filter(|l| !old.contains(l)) {
                out.push_str(&format!("+ {what}: {l}\n"));
            }
            for l in old.iter().filter(|l| !new.contains(l)) {
                out.push_str(&format!("- {what}: {l}\n"));
            }
        }
        out
    }
}

/// Which namespace of a process to compare.
#[derive(Debug, Clone, Copy)]
pub enum NsKind {
    Net,
    Mnt,
}

/// The processes (other than this one) whose `kind` namespace is `id`, as `pid command`.
pub fn processes_in(kind: NsKind, id: NsId) -> Vec<String> {
    let me = std::process::id();
    let file = match kind {
        NsKind::Net => "ns/net",
        NsKind::Mnt => "ns/mnt",
    };
    let mut found = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else { return found };
    for e in rd.filter_map(|e| e.ok()) {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if pid == me || NsId::of_path(&e.path().join(file)).ok() != Some(id) {
            continue;
        }
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        found.push(format!("{pid} {}", comm.trim()));
    }
    found
}

/// One pool of a knit-ipam store: how many addresses are allocated and reserved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolUse {
    pub name: String,
    pub used: u64,
    pub reserved: u64,
}

/// The pools of the knit-ipam local store in `data_dir` (`knit ipam show --json`, run in `ns`).
pub fn ipam_pools(ns: &Netns, data_dir: &Path) -> Result<Vec<PoolUse>, String> {
    let mut cmd = Command::new(knit_testkit::bin("knit"));
    cmd.args(["ipam", "show", "--json", "--data-dir"]).arg(data_dir);
    let out = crate::ok_in(ns, &mut cmd)?;
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| format!("knit ipam show --json: {e}"))?;
    let pools = v["pools"].as_array().ok_or_else(|| format!("knit ipam show --json printed no pools: {v}"))?;
    pools
        .iter()
        .map(|p| {
            Ok(PoolUse {
                name: p["name"].as_str().ok_or_else(|| format!("a pool without a name: {p}"))?.to_string(),
                used: p["used"].as_u64().ok_or_else(|| format!("a pool without a used count: {p}"))?,
                reserved: p["reserved"].as_u64().unwrap_or(0),
            })
        })
        .collect()
}

/// The pools that still hold an allocation or a reservation.
pub fn ipam_in_use(ns: &Netns, data_dir: &Path) -> Result<Vec<PoolUse>, String> {
    Ok(ipam_pools(ns, data_dir)?.into_iter().filter(|p| p.used != 0 || p.reserved != 0).collect())
}
