//! The plugin's `ipam` object: parsing with serde, then validation into [`IpamConfig`].
//!
//! ```json
//! {"type": "knit-ipam", "node": "node1", "dataDir": "/var/lib/knit/ipam", "store": "local",
//!  "lockTimeoutMs": 10000, "fsync": false,
//!  "pools": [{"name": "overlay", "cidr": "10.233.64.0/18", "blockSize": 26,
//!             "rangeStart": "10.233.64.10", "rangeEnd": "10.233.127.250",
//!             "excludeIPs": ["10.233.64.20", "10.233.65.0/28", "10.233.66.1-10.233.66.9"],
//!             "gateway": "10.233.64.1", "routes": [{"dst": "0.0.0.0/0", "gw": "10.233.64.1"}],
//!             "fixedIPs": false, "blocks": true, "borrow": true}]}
//! ```
//!
//! * `node`: defaults to the host name.
//! * `dataDir`: defaults to [`DEFAULT_DATA_DIR`]. `store`: `local` (default) or `etcd`.
//! * `store: "etcd"`: `etcdEndpoints` (required, URLs like `http://10.0.0.1:2379`; `https://`
//!   with TLS), `etcdCAFile`, `etcdCertFile` + `etcdKeyFile` (PEM; client certificate and key go
//!   together), `etcdTimeoutMs` (default 2000: each etcd request, and connecting, fails after
//!   this; an unreachable etcd makes ADD fail with code 11 within about that time),
//!   `etcdNodeLock` (default true: processes of one node take turns through a `flock` on
//!   `dataDir/etcd.lock`, like Calico's host-wide IPAM lock, so they do not race each other on
//!   their node's block; nodes still only meet in etcd transactions). See [`crate::store::etcd`].
//! * `lockTimeoutMs` (default 10000): bounded wait for the local store's lock (then code 11).
//! * `fsync` (default false): fsync each record and its directory before/after the rename.
//!   Records are always replaced by write-to-temp + rename, which is safe against a killed
//!   process; `fsync` adds durability against power loss at ~0.4 ms per operation.
//! * pool `blockSize`: default 26 (IPv4) / 122 (IPv6); `cidr prefix <= blockSize <= 32/128`.
//! * pool `blocks` (default true): per-node block affinity (Calico style): a node claims whole
//!   blocks and allocates inside them. `false`: no affinity, every node allocates anywhere in the
//!   pool (underlay subnets shared by all nodes, e.g. macvlan). Such a pool is still stored in
//!   `blockSize` slices ("stripes", owner-less) so that no record grows with the whole pool.
//! * pool `borrow` (default true): in an affinity pool with no free block left, a node may take an
//!   address from another node's block; the allocation records the borrowing node.
//! * pool `fixedIPs` (default false): allocations made with a pod identity keep their address for
//!   that identity (and interface name) across release and re-creation.
//! * `detectIPConflict`, `detectGateway` (default false; on the ipam object as a default for
//!   every pool, or on a pool): ARP probes from the pod interface before the address is handed
//!   out, see [`crate::probe`]. IPv4 only: on a pool they are an error for an IPv6 pool, and
//!   `detectGateway` needs the pool's `gateway`; set on the ipam object they skip IPv6 pools
//!   (and pools without a gateway). They are not stored with the pool.
//! * `excludeIPs` entries: an address, a CIDR, or a range `a-b`.
//! * Never allocated: the network address (v4 prefixes up to /30, v6 up to /126), the v4
//!   broadcast address, the gateway, `excludeIPs`, anything outside `rangeStart..=rangeEnd`.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::addr::{self, Family, Span, SpanSet};
use crate::error::{Error, Result};

/// Default `dataDir`.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/knit/ipam";
/// Default `lockTimeoutMs`.
pub const DEFAULT_LOCK_TIMEOUT_MS: u64 = 10_000;
/// Default IPv4 block size.
pub const DEFAULT_BLOCK_SIZE_V4: u8 = 26;
/// Default IPv6 block size.
pub const DEFAULT_BLOCK_SIZE_V6: u8 = 122;

/// The `ipam` object as written (unknown fields ignored).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RawIpamConfig {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub plugin_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub etcd_endpoints: Vec<String>,
    #[serde(rename = "etcdCertFile", default, skip_serializing_if = "Option::is_none")]
    pub etcd_cert_file: Option<String>,
    #[serde(rename = "etcdKeyFile", default, skip_serializing_if = "Option::is_none")]
    pub etcd_key_file: Option<String>,
    #[serde(rename = "etcdCAFile", alias = "etcdCaFile", default, skip_serializing_if = "Option::is_none")]
    pub etcd_ca_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_node_lock: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fsync: Option<bool>,
    /// Default of the pools' `detectIPConflict` (see [`crate::probe`]).
    #[serde(rename = "detectIPConflict", alias = "detectIpConflict", default, skip_serializing_if = "Option::is_none")]
    pub detect_ip_conflict: Option<bool>,
    /// Default of the pools' `detectGateway` (see [`crate::probe`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detect_gateway: Option<bool>,
    #[serde(default)]
    pub pools: Vec<RawPool>,
}

/// One pool as written. Also the stored pool record (`pool.json`).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RawPool {
    pub name: String,
    pub cidr: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range_start: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range_end: Option<String>,
    #[serde(rename = "excludeIPs", alias = "excludeIps", default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_ips: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RawRoute>,
    #[serde(rename = "fixedIPs", alias = "fixedIps", default)]
    pub fixed_ips: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocks: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub borrow: Option<bool>,
    /// Probe settings (see [`crate::probe`]): per process, never part of the stored pool
    /// record ([`PoolConfig::from_raw`] moves them out of `raw`).
    #[serde(rename = "detectIPConflict", alias = "detectIpConflict", default, skip_serializing_if = "Option::is_none")]
    pub detect_ip_conflict: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detect_gateway: Option<bool>,
}

/// A route as written.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RawRoute {
    pub dst: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
}

/// Which store backs the allocations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKind {
    /// Files under `dataDir`, one lock for all processes of the machine.
    Local,
    /// etcd: block and IP claims are etcd transactions.
    Etcd(EtcdConfig),
}

/// Default `etcdTimeoutMs`.
pub const DEFAULT_ETCD_TIMEOUT_MS: u64 = 2_000;

/// Connection settings of `store: "etcd"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// `etcdEndpoints`, e.g. `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// `etcdCertFile` / `etcdKeyFile`: client certificate and key (PEM).
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// `etcdCAFile`: CA bundle that signed the server certificate (PEM).
    pub ca_file: Option<PathBuf>,
    /// `etcdTimeoutMs`: bound of each request (and of connecting).
    pub timeout_ms: u64,
    /// `etcdNodeLock`: serialise this node's processes through `dataDir/etcd.lock`.
    pub node_lock: bool,
}

impl EtcdConfig {
    /// Plain settings for `endpoints` (no TLS, default timeout, node lock on).
    pub fn new(endpoints: Vec<String>) -> EtcdConfig {
        EtcdConfig {
            endpoints,
            cert_file: None,
            key_file: None,
            ca_file: None,
            timeout_ms: DEFAULT_ETCD_TIMEOUT_MS,
            node_lock: true,
        }
    }
}

/// A route handed out with an address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Route {
    pub dst: IpNet,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

/// A validated `ipam` config.
#[derive(Debug, Clone)]
pub struct IpamConfig {
    pub node: String,
    pub data_dir: PathBuf,
    pub store: StoreKind,
    pub lock_timeout_ms: u64,
    pub fsync: bool,
    pub pools: Vec<PoolConfig>,
}

/// A validated pool.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub name: String,
    pub cidr: IpNet,
    pub block_size: u8,
    pub range_start: Option<IpAddr>,
    pub range_end: Option<IpAddr>,
    pub gateway: Option<IpAddr>,
    pub routes: Vec<Route>,
    pub fixed_ips: bool,
    /// Per-node block affinity (`blocks`, default true).
    pub affinity: bool,
    /// Borrow from other nodes' blocks when no free block is left (`borrow`, default true).
    pub borrow: bool,
    /// ARP-probe each address before handing it out (`detectIPConflict`, IPv4 pools only).
    pub detect_ip_conflict: bool,
    /// ARP the gateway from the pod interface; no answer fails the ADD (`detectGateway`).
    pub detect_gateway: bool,
    /// The pool as written (stored as the pool record).
    pub raw: RawPool,
    pub(crate) family: Family,
    /// First and last allocatable address (range and network/broadcast applied).
    pub(crate) lo: u128,
    pub(crate) hi: u128,
    /// Never allocated: gateway and excludeIPs.
    pub(crate) excluded: SpanSet,
}

impl PoolConfig {
    /// Family of the pool.
    pub fn family(&self) -> Family {
        self.family
    }

    /// Whether `ip` may ever be handed out by this pool.
    pub fn allocatable(&self, ip: &IpAddr) -> bool {
        Family::of(ip) == self.family && self.allocatable_n(addr::to_u128(ip))
    }

    pub(crate) fn allocatable_n(&self, n: u128) -> bool {
        n >= self.lo && n <= self.hi && !self.excluded.contains(n)
    }

    /// Why `ip` (inside the cidr) is never allocated, if it is not.
    pub fn why_not_allocatable(&self, ip: &IpAddr) -> Option<String> {
        let n = addr::to_u128(ip);
        let (first, last) = addr::net_bounds(&self.cidr);
        if n < first || n > last {
            return Some(format!("{ip} is outside pool {} ({})", self.name, self.cidr));
        }
        if Some(*ip) == self.gateway {
            return Some(format!("{ip} is the gateway of pool {}", self.name));
        }
        let prefix = self.cidr.prefix_len();
        let v4 = self.family == Family::V4;
        if n == first && ((v4 && prefix <= 30) || (!v4 && prefix <= 126)) {
            return Some(format!("{ip} is the network address of pool {}", self.name));
        }
        if n == last && v4 && prefix <= 30 {
            return Some(format!("{ip} is the broadcast address of pool {}", self.name));
        }
        if self.excluded.contains(n) {
            return Some(format!("{ip} is in excludeIPs of pool {}", self.name));
        }
        if n < self.lo || n > self.hi {
            return Some(format!(
                "{ip} is outside the range {}-{} of pool {}",
                addr::from_u128(self.family, self.lo),
                addr::from_u128(self.family, self.hi),
                self.name
            ));
        }
        None
    }

    /// Number of addresses in the pool that may be handed out.
    pub fn allocatable_count(&self) -> u128 {
        self.allocatable_count_in(self.lo, self.hi)
    }

    pub(crate) fn allocatable_count_in(&self, lo: u128, hi: u128) -> u128 {
        let lo = lo.max(self.lo);
        let hi = hi.min(self.hi);
        if lo > hi {
            return 0;
        }
        let span = (hi - lo).saturating_add(1);
        span.saturating_sub(self.excluded.count_in(lo, hi))
    }

    /// Parse and validate one pool (`field` names it in errors, e.g. `pools[0]`).
    pub fn from_raw(mut raw: RawPool, field: &str) -> Result<PoolConfig> {
        let f = |name: &str| format!("{field}.{name}");
        // Probe settings are not pool state: keep them out of the stored record.
        let detect_ip_conflict = raw.detect_ip_conflict.take();
        let detect_gateway = raw.detect_gateway.take();
        if raw.name.is_empty() {
            return Err(Error::config(f("name"), "must not be empty"));
        }
        if raw.name.starts_with('.')
            || !raw.name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(Error::config(
                f("name"),
                format!("{:?}: only letters, digits, '-', '_' and '.' (not first) are allowed", raw.name),
            ));
        }
        let cidr: IpNet = raw
            .cidr
            .trim()
            .parse()
            .map_err(|_| Error::config(f("cidr"), format!("{:?} is not a CIDR (like 10.233.64.0/18)", raw.cidr)))?;
        if cidr.addr() != cidr.network() {
            return Err(Error::config(
                f("cidr"),
                format!("{} has host bits set (did you mean {}?)", cidr, cidr.trunc()),
            ));
        }
        let family = Family::of_net(&cidr);
        let bits = family.bits();
        let block_size = raw.block_size.unwrap_or(match family {
            Family::V4 => DEFAULT_BLOCK_SIZE_V4.max(cidr.prefix_len()),
            Family::V6 => DEFAULT_BLOCK_SIZE_V6.max(cidr.prefix_len()),
        });
        if block_size < cidr.prefix_len() || block_size > bits {
            return Err(Error::config(
                f("blockSize"),
                format!(
                    "{block_size} out of range: must be between the pool prefix length {} and {bits}",
                    cidr.prefix_len()
                ),
            ));
        }
        if bits - block_size > 64 {
            return Err(Error::config(
                f("blockSize"),
                format!("{block_size} is too small: a block may hold at most 2^64 addresses"),
            ));
        }
        let parse_ip = |name: &str, s: &str| -> Result<IpAddr> {
            let ip: IpAddr =
                s.trim().parse().map_err(|_| Error::config(f(name), format!("{s:?} is not an IP address")))?;
            if Family::of(&ip) != family {
                return Err(Error::config(
                    f(name),
                    format!("{ip} is {} but cidr {cidr} is {}", Family::of(&ip).name(), family.name()),
                ));
            }
            Ok(ip)
        };
        let (first, last) = addr::net_bounds(&cidr);
        let in_cidr = |name: &str, ip: IpAddr| -> Result<IpAddr> {
            if !cidr.contains(&ip) {
                return Err(Error::config(f(name), format!("{ip} is outside cidr {cidr}")));
            }
            Ok(ip)
        };
        let range_start = match &raw.range_start {
            Some(s) => Some(in_cidr("rangeStart", parse_ip("rangeStart", s)?)?),
            None => None,
        };
        let range_end = match &raw.range_end {
            Some(s) => Some(in_cidr("rangeEnd", parse_ip("rangeEnd", s)?)?),
            None => None,
        };
        if let (Some(s), Some(e)) = (range_start, range_end) {
            if addr::to_u128(&s) > addr::to_u128(&e) {
                return Err(Error::config(f("rangeEnd"), format!("{e} is before rangeStart {s}")));
            }
        }
        let gateway = match &raw.gateway {
            Some(s) => Some(in_cidr("gateway", parse_ip("gateway", s)?)?),
            None => None,
        };
        // Network and broadcast addresses, like host-local: v4 up to /30, v6 up to /126 keep
        // the network address out; v4 also the broadcast address.
        let prefix = cidr.prefix_len();
        let skip_network = match family {
            Family::V4 => prefix <= 30,
            Family::V6 => prefix <= 126,
        };
        let skip_broadcast = family == Family::V4 && prefix <= 30;
        let mut lo = if skip_network { first + 1 } else { first };
        let mut hi = if skip_broadcast { last - 1 } else { last };
        if let Some(s) = range_start {
            lo = lo.max(addr::to_u128(&s));
        }
        if let Some(e) = range_end {
            hi = hi.min(addr::to_u128(&e));
        }
        let mut spans = Vec::new();
        if let Some(g) = gateway {
            let n = addr::to_u128(&g);
            spans.push(Span { lo: n, hi: n });
        }
        for (i, e) in raw.exclude_ips.iter().enumerate() {
            let name = format!("excludeIPs[{i}]");
            let e = e.trim();
            let span = if let Some((a, b)) = e.split_once('-') {
                let a = addr::to_u128(&parse_ip(&name, a)?);
                let b = addr::to_u128(&parse_ip(&name, b)?);
                if a > b {
                    return Err(Error::config(f(&name), format!("{e:?}: range end is before its start")));
                }
                Span { lo: a, hi: b }
            } else if e.contains('/') {
                let n: IpNet =
                    e.parse().map_err(|_| Error::config(f(&name), format!("{e:?} is not an IP, CIDR or a-b range")))?;
                if Family::of_net(&n) != family {
                    return Err(Error::config(f(&name), format!("{e} is not {}", family.name())));
                }
                let (a, b) = addr::net_bounds(&n.trunc());
                Span { lo: a, hi: b }
            } else {
                let n = addr::to_u128(&parse_ip(&name, e)?);
                Span { lo: n, hi: n }
            };
            spans.push(span);
        }
        let mut routes = Vec::new();
        for (i, r) in raw.routes.iter().enumerate() {
            let name = format!("routes[{i}]");
            let dst: IpNet = r
                .dst
                .trim()
                .parse()
                .map_err(|_| Error::config(format!("{field}.{name}.dst"), format!("{:?} is not a CIDR", r.dst)))?;
            let gw =
                match &r.gw {
                    Some(g) => Some(g.trim().parse::<IpAddr>().map_err(|_| {
                        Error::config(format!("{field}.{name}.gw"), format!("{g:?} is not an IP address"))
                    })?),
                    None => None,
                };
            if let Some(g) = gw {
                if Family::of(&g) != Family::of_net(&dst) {
                    return Err(Error::config(
                        format!("{field}.{name}.gw"),
                        format!("{g} and dst {dst} are of different families"),
                    ));
                }
            }
            routes.push(Route { dst: dst.trunc(), gw });
        }
        let mut pool = PoolConfig {
            name: raw.name.clone(),
            cidr,
            block_size,
            range_start,
            range_end,
            gateway,
            routes,
            fixed_ips: raw.fixed_ips,
            affinity: raw.blocks.unwrap_or(true),
            borrow: raw.borrow.unwrap_or(true),
            detect_ip_conflict: false,
            detect_gateway: false,
            family,
            lo,
            hi,
            excluded: SpanSet::from_spans(spans),
            raw,
        };
        pool.set_probes(detect_ip_conflict, detect_gateway, field)?;
        Ok(pool)
    }

    /// Apply the pool's own `detectIPConflict` / `detectGateway` (`None`: off). Probes use ARP,
    /// so they are IPv4 only, and the gateway probe needs a `gateway`; `field` names the pool.
    fn set_probes(&mut self, conflict: Option<bool>, gateway: Option<bool>, field: &str) -> Result<()> {
        let f = |name: &str| format!("{field}.{name}");
        let conflict = conflict.unwrap_or(false);
        let gateway = gateway.unwrap_or(false);
        if self.family != Family::V4 && (conflict || gateway) {
            let which = if conflict { "detectIPConflict" } else { "detectGateway" };
            return Err(Error::config(
                f(which),
                format!("probes use ARP and are IPv4 only; pool {} is {}", self.name, self.cidr),
            ));
        }
        if gateway && self.gateway.is_none() {
            return Err(Error::config(f("detectGateway"), format!("needs a gateway: set {field}.gateway")));
        }
        self.detect_ip_conflict = conflict;
        self.detect_gateway = gateway;
        Ok(())
    }

    /// Apply the ipam-level `detectIPConflict` / `detectGateway` to the settings this pool left
    /// unset: IPv6 pools are not probed, and pools without a gateway get no gateway probe.
    fn inherit_probes(&mut self, conflict: Option<bool>, gateway: Option<bool>) {
        let v4 = self.family == Family::V4;
        if let Some(c) = conflict {
            self.detect_ip_conflict = c && v4;
        }
        if let Some(g) = gateway {
            self.detect_gateway = g && v4 && self.gateway.is_some();
        }
    }
}

fn serde_field(prefix: &str, path: &serde_path_to_error::Path) -> String {
    let p = path.to_string();
    match (prefix.is_empty(), p == ".") {
        (true, true) => "ipam".to_string(),
        (true, false) => p,
        (false, true) => prefix.to_string(),
        (false, false) => format!("{prefix}.{p}"),
    }
}

impl IpamConfig {
    /// Parse the `ipam` object from JSON text.
    pub fn parse(json: &[u8]) -> Result<IpamConfig> {
        let v: Value = serde_json::from_slice(json).map_err(|e| Error::Syntax(e.to_string()))?;
        Self::from_value(&v, "")
    }

    /// Parse a whole network config (plugin stdin) and validate its `ipam` object.
    pub fn from_netconf(json: &[u8]) -> Result<IpamConfig> {
        let v: Value = serde_json::from_slice(json).map_err(|e| Error::Syntax(e.to_string()))?;
        match v.get("ipam") {
            Some(ipam) => Self::from_value(ipam, "ipam"),
            None => Err(Error::config("ipam", "missing")),
        }
    }

    /// Validate an already parsed `ipam` value; `prefix` is prepended to field names.
    pub fn from_value(v: &Value, prefix: &str) -> Result<IpamConfig> {
        if !v.is_object() {
            let field = if prefix.is_empty() { "ipam" } else { prefix };
            return Err(Error::config(field, format!("expected a JSON object, got {v}")));
        }
        let raw: RawIpamConfig = serde_path_to_error::deserialize(v).map_err(|e| {
            let field = serde_field(prefix, e.path());
            Error::config(field, e.inner().to_string())
        })?;
        Self::from_raw(raw, prefix)
    }

    /// Validate a raw config.
    pub fn from_raw(raw: RawIpamConfig, prefix: &str) -> Result<IpamConfig> {
        let f = |name: &str| {
            if prefix.is_empty() {
                name.to_string()
            } else {
                format!("{prefix}.{name}")
            }
        };
        let node = match raw.node {
            Some(n) if n.trim().is_empty() => return Err(Error::config(f("node"), "must not be empty")),
            Some(n) => n.trim().to_string(),
            None => hostname().ok_or_else(|| Error::config(f("node"), "not set and the host name is unknown"))?,
        };
        let data_dir = match raw.data_dir {
            Some(d) if d.is_empty() => return Err(Error::config(f("dataDir"), "must not be empty")),
            Some(d) => PathBuf::from(d),
            None => PathBuf::from(DEFAULT_DATA_DIR),
        };
        let store = match raw.store.as_deref() {
            None | Some("local") | Some("") => StoreKind::Local,
            Some("etcd") => {
                if raw.etcd_endpoints.is_empty() {
                    return Err(Error::config(f("etcdEndpoints"), "required with store \"etcd\""));
                }
                for (i, e) in raw.etcd_endpoints.iter().enumerate() {
                    let ok = (e.starts_with("http://") || e.starts_with("https://")) && e.len() > "https://".len();
                    if !ok {
                        return Err(Error::config(
                            f(&format!("etcdEndpoints[{i}]")),
                            format!("{e:?}: expected a URL like http://127.0.0.1:2379"),
                        ));
                    }
                }
                if raw.etcd_cert_file.is_some() != raw.etcd_key_file.is_some() {
                    let missing = if raw.etcd_cert_file.is_some() { "etcdKeyFile" } else { "etcdCertFile" };
                    return Err(Error::config(f(missing), "etcdCertFile and etcdKeyFile go together"));
                }
                let path = |name: &str, v: &Option<String>| -> Result<Option<PathBuf>> {
                    match v.as_deref() {
                        Some("") => Err(Error::config(f(name), "must not be empty")),
                        Some(p) => Ok(Some(PathBuf::from(p))),
                        None => Ok(None),
                    }
                };
                let timeout_ms = raw.etcd_timeout_ms.unwrap_or(DEFAULT_ETCD_TIMEOUT_MS);
                if timeout_ms == 0 {
                    return Err(Error::config(f("etcdTimeoutMs"), "must be above 0"));
                }
                StoreKind::Etcd(EtcdConfig {
                    endpoints: raw.etcd_endpoints.clone(),
                    cert_file: path("etcdCertFile", &raw.etcd_cert_file)?,
                    key_file: path("etcdKeyFile", &raw.etcd_key_file)?,
                    ca_file: path("etcdCAFile", &raw.etcd_ca_file)?,
                    timeout_ms,
                    node_lock: raw.etcd_node_lock.unwrap_or(true),
                })
            }
            Some(other) => return Err(Error::config(f("store"), format!("{other:?}: expected \"local\" or \"etcd\""))),
        };
        if raw.pools.is_empty() {
            return Err(Error::config(f("pools"), "at least one pool is required"));
        }
        let mut pools: Vec<PoolConfig> = Vec::with_capacity(raw.pools.len());
        let mut names = HashSet::new();
        for (i, p) in raw.pools.into_iter().enumerate() {
            let field = f(&format!("pools[{i}]"));
            // Pool-level probe settings win over the ipam-level ones.
            let inherit = (
                raw.detect_ip_conflict.filter(|_| p.detect_ip_conflict.is_none()),
                raw.detect_gateway.filter(|_| p.detect_gateway.is_none()),
            );
            let mut pool = PoolConfig::from_raw(p, &field)?;
            pool.inherit_probes(inherit.0, inherit.1);
            if !names.insert(pool.name.clone()) {
                return Err(Error::config(format!("{field}.name"), format!("duplicate pool name {:?}", pool.name)));
            }
            if let Some(other) =
                pools.iter().find(|o| o.cidr.contains(&pool.cidr.network()) || pool.cidr.contains(&o.cidr.network()))
            {
                return Err(Error::config(
                    format!("{field}.cidr"),
                    format!("{} overlaps pool {:?} ({})", pool.cidr, other.name, other.cidr),
                ));
            }
            pools.push(pool);
        }
        Ok(IpamConfig {
            node,
            data_dir,
            store,
            lock_timeout_ms: raw.lock_timeout_ms.unwrap_or(DEFAULT_LOCK_TIMEOUT_MS),
            fsync: raw.fsync.unwrap_or(false),
            pools,
        })
    }

    /// The pool called `name`.
    pub fn pool(&self, name: &str) -> Option<&PoolConfig> {
        self.pools.iter().find(|p| p.name == name)
    }
}

/// The host name (from the kernel), if known.
pub fn hostname() -> Option<String> {
    if let Ok(s) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let s = s.trim();
        if !s.is_empty() {
            return Some(s.to_string());
        }
    }
    let mut buf = [0u8; 256];
    // SAFETY: buf is valid for buf.len() bytes; gethostname NUL-terminates on success
    // (we also bound the read by the buffer length).
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let s = String::from_utf8_lossy(&buf[..end]).trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// Reads a knit-ipam configuration from a file holding a bare `ipam` object, a plugin
/// configuration with an `ipam` key, or a conflist (the first plugin whose ipam is knit-ipam).
pub fn load_file(path: &std::path::Path) -> std::result::Result<IpamConfig, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    let ipam = if let Some(plugins) = v.get("plugins").and_then(|p| p.as_array()) {
        plugins
            .iter()
            .filter_map(|p| p.get("ipam"))
            .find(|i| i.get("type").and_then(|t| t.as_str()) == Some("knit-ipam"))
            .cloned()
            .ok_or_else(|| format!("{}: no plugin with a knit-ipam ipam section", path.display()))?
    } else if let Some(i) = v.get("ipam") {
        i.clone()
    } else {
        v
    };
    IpamConfig::from_value(&ipam, "ipam").map_err(|e| e.msg())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c = IpamConfig::parse(
            br#"{"node":"n1","pools":[{"name":"p","cidr":"10.0.0.0/24"},{"name":"v6","cidr":"fd00::/64"}]}"#,
        )
        .unwrap();
        assert_eq!(c.pools[0].block_size, 26);
        assert_eq!(c.pools[1].block_size, 122);
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert!(c.pools[0].affinity);
        let p = &c.pools[0];
        assert!(!p.allocatable(&"10.0.0.0".parse().unwrap()));
        assert!(!p.allocatable(&"10.0.0.255".parse().unwrap()));
        assert!(p.allocatable(&"10.0.0.1".parse().unwrap()));
        assert_eq!(p.allocatable_count(), 254);
        // A /28 pool keeps its own prefix as the default block size floor.
        let c = IpamConfig::parse(br#"{"node":"n1","pools":[{"name":"p","cidr":"10.0.0.0/28"}]}"#).unwrap();
        assert_eq!(c.pools[0].block_size, 28);
    }

    #[test]
    fn etcd_settings() {
        let pools = r#""pools":[{"name":"p","cidr":"10.0.0.0/24"}]"#;
        let parse =
            |extra: &str| IpamConfig::parse(format!(r#"{{"node":"n","store":"etcd",{extra}{pools}}}"#).as_bytes());
        let c = parse(r#""etcdEndpoints":["https://e1:2379","https://e2:2379"],"etcdCAFile":"/ca.pem","etcdCertFile":"/c.pem","etcdKeyFile":"/k.pem","etcdTimeoutMs":500,"etcdNodeLock":false,"#).unwrap();
        let StoreKind::Etcd(e) = c.store else { panic!("not etcd") };
        assert_eq!(e.endpoints.len(), 2);
        assert_eq!(e.ca_file, Some(PathBuf::from("/ca.pem")));
        assert_eq!((e.timeout_ms, e.node_lock), (500, false));
        let c = parse(r#""etcdEndpoints":["http://127.0.0.1:2379"],"#).unwrap();
        assert_eq!(c.store, StoreKind::Etcd(EtcdConfig::new(vec!["http://127.0.0.1:2379".into()])));
        for (extra, field) in [
            (r#""#, "etcdEndpoints"),
            (r#""etcdEndpoints":["127.0.0.1:2379"],"#, "etcdEndpoints[0]"),
            (r#""etcdEndpoints":["http://e:2379"],"etcdCertFile":"/c.pem","#, "etcdKeyFile"),
            (r#""etcdEndpoints":["http://e:2379"],"etcdTimeoutMs":0,"#, "etcdTimeoutMs"),
        ] {
            let e = parse(extra).unwrap_err();
            assert_eq!(e.field(), Some(field), "{extra}: {e}");
            assert_eq!(e.cni_code(), 7);
        }
    }

    #[test]
    fn probe_settings() {
        let c = IpamConfig::parse(
            br#"{"node":"n","detectIPConflict":true,"detectGateway":true,"pools":[
                {"name":"a","cidr":"10.0.0.0/24","gateway":"10.0.0.1"},
                {"name":"b","cidr":"10.0.1.0/24","detectIPConflict":false},
                {"name":"v6","cidr":"fd00::/64","gateway":"fd00::1"}]}"#,
        )
        .unwrap();
        let flags: Vec<(bool, bool)> = c.pools.iter().map(|p| (p.detect_ip_conflict, p.detect_gateway)).collect();
        // b: pool-level false wins, and no gateway means no gateway probe; v6: not probed.
        assert_eq!(flags, vec![(true, true), (false, false), (false, false)]);
        // Not part of the stored pool record.
        assert_eq!(c.pools[1].raw.detect_ip_conflict, None);
        let c =
            IpamConfig::parse(br#"{"node":"n","pools":[{"name":"a","cidr":"10.0.0.0/24","detectIPConflict":true}]}"#)
                .unwrap();
        assert!(c.pools[0].detect_ip_conflict && !c.pools[0].detect_gateway);
        for (json, field) in [
            (
                r#"{"node":"n","pools":[{"name":"a","cidr":"10.0.0.0/24","detectGateway":true}]}"#,
                "pools[0].detectGateway",
            ),
            (
                r#"{"node":"n","pools":[{"name":"a","cidr":"fd00::/64","detectIPConflict":true}]}"#,
                "pools[0].detectIPConflict",
            ),
            (
                r#"{"node":"n","detectIPConflict":"yes","pools":[{"name":"a","cidr":"10.0.0.0/24"}]}"#,
                "detectIPConflict",
            ),
            (r#"{"node":"n","pools":[{"name":"a","cidr":"10.0.0.0/24","detectGateway":1}]}"#, "pools[0].detectGateway"),
        ] {
            let e = IpamConfig::parse(json.as_bytes()).unwrap_err();
            assert_eq!(e.field(), Some(field), "{json}: {e}");
            assert_eq!(e.cni_code(), 7);
        }
    }

    #[test]
    fn hostname_default() {
        let c = IpamConfig::parse(br#"{"pools":[{"name":"p","cidr":"10.0.0.0/24"}]}"#).unwrap();
        assert!(!c.node.is_empty());
    }
}
