//! The cluster registry in etcd: every node agent publishes its record (name, IP, AS, blocks,
//! underlay pod IPs) under a lease, so a dead node's record expires; cluster settings (the
//! coordinator's CIDRs) live next to them.
//!
//! Keys (under a prefix, default `/knit`):
//! - `<prefix>/nodes/<name>`: a [`NodeRecord`] as JSON, attached to the node's lease;
//! - `<prefix>/cluster/config`: the [`ClusterConfig`] as JSON, set by `knit cluster set`.
//!
//! etcd-client is async; the agent is a plain loop, so the registry owns a current-thread
//! tokio runtime and blocks on it (no namespace switching happens near it).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, GetOptions, Identity, PutOptions, TlsOptions};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Default key prefix.
pub const DEFAULT_PREFIX: &str = "/knit";

/// Why the registry failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// etcd could not be reached or refused a request.
    #[error("etcd {endpoints}: {msg}")]
    Etcd {
        /// The endpoints.
        endpoints: String,
        /// What failed.
        msg: String,
    },
    /// A record could not be read.
    #[error("etcd key {key}: {msg}")]
    Decode {
        /// The key.
        key: String,
        /// The JSON error.
        msg: String,
    },
    /// A local file (TLS material) could not be read.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, RegistryError>;

/// What a node publishes about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRecord {
    /// Node name.
    pub name: String,
    /// The node IP peers use (BGP session and next hop).
    pub ip: IpAddr,
    /// Its AS.
    pub asn: u32,
    /// The IPAM blocks it owns.
    #[serde(default)]
    pub blocks: Vec<IpNet>,
    /// The underlay pod IPs it wires (coordinator table 500).
    #[serde(default)]
    pub underlay: Vec<IpAddr>,
}

/// Cluster-wide settings (what the coordinator's CIDR file holds).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterConfig {
    /// Overlay pod CIDRs (`overlayPodCIDR`).
    #[serde(rename = "overlayPodCIDR", default)]
    pub overlay_pod_cidr: Vec<IpNet>,
    /// Service CIDRs (`serviceCIDR`).
    #[serde(rename = "serviceCIDR", default)]
    pub service_cidr: Vec<IpNet>,
    /// Extra CIDRs pods reach through their node (`hijackCIDR`).
    #[serde(rename = "hijackCIDR", default)]
    pub hijack_cidr: Vec<IpNet>,
}

/// TLS files for etcd.
#[derive(Debug, Clone, Default)]
pub struct Tls {
    /// CA bundle.
    pub ca: Option<PathBuf>,
    /// Client certificate.
    pub cert: Option<PathBuf>,
    /// Client key.
    pub key: Option<PathBuf>,
}

/// A connection to the registry.
pub struct Registry {
    rt: tokio::runtime::Runtime,
    client: Client,
    endpoints: String,
    prefix: String,
    lease: Option<i64>,
    keeper: Option<(etcd_client::LeaseKeeper, etcd_client::LeaseKeepAliveStream)>,
    timeout: Duration,
}

impl Registry {
    /// Connects (bounded by `timeout`).
    pub fn connect(endpoints: &[String], tls: &Tls, prefix: &str, timeout: Duration) -> Result<Registry> {
        let eps = endpoints.join(",");
        let err = |msg: String| RegistryError::Etcd { endpoints: eps.clone(), msg };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| err(format!("tokio runtime: {e}")))?;
        let mut opts = ConnectOptions::new().with_connect_timeout(timeout).with_timeout(timeout);
        if tls.ca.is_some() || tls.cert.is_some() {
            let read = |p: &PathBuf| {
                std::fs::read(p).map_err(|source| RegistryError::File { path: p.display().to_string(), source })
            };
            let mut t = TlsOptions::new();
            if let Some(ca) = &tls.ca {
                t = t.ca_certificate(Certificate::from_pem(read(ca)?));
            }
            if let (Some(c), Some(k)) = (&tls.cert, &tls.key) {
                t = t.identity(Identity::from_pem(read(c)?, read(k)?));
            }
            opts = opts.with_tls(t);
        }
        let list = endpoints.to_vec();
        let client = rt
            .block_on(async { tokio::time::timeout(timeout, Client::connect(list, Some(opts))).await })
            .map_err(|_| err(format!("no connection within {timeout:?}")))?
            .map_err(|e| err(e.to_string()))?;
        Ok(Registry {
            rt,
            client,
            endpoints: eps,
            prefix: prefix.trim_end_matches('/').to_string(),
            lease: None,
            keeper: None,
            timeout,
        })
    }

    fn err(&self, what: &str, e: impl std::fmt::Display) -> RegistryError {
        RegistryError::Etcd { endpoints: self.endpoints.clone(), msg: format!("{what}: {e}") }
    }

    fn node_key(&self, name: &str) -> String {
        format!("{}/nodes/{name}", self.prefix)
    }

    fn config_key(&self) -> String {
        format!("{}/cluster/config", self.prefix)
    }

    /// Grants the node's lease (`ttl` seconds) and opens its keep-alive stream.
    pub fn grant(&mut self, ttl: i64) -> Result<i64> {
        let t = self.timeout;
        let client = &mut self.client;
        let r = self.rt.block_on(async {
            let lease = tokio::time::timeout(t, client.lease_grant(ttl, None))
                .await
                .map_err(|_| "timed out".to_string())?
                .map_err(|e| e.to_string())?;
            let id = lease.id();
            let ka = tokio::time::timeout(t, client.lease_keep_alive(id))
                .await
                .map_err(|_| "timed out".to_string())?
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((id, ka))
        });
        let (id, ka) = r.map_err(|e| self.err("lease grant", e))?;
        self.lease = Some(id);
        self.keeper = Some(ka);
        Ok(id)
    }

    /// Refreshes the lease. An error means the lease may be gone: call [`Registry::grant`] again
    /// and republish.
    pub fn keep_alive(&mut self) -> Result<()> {
        let t = self.timeout;
        let Some((keeper, stream)) = self.keeper.as_mut() else {
            return Err(RegistryError::Etcd { endpoints: self.endpoints.clone(), msg: "no lease".into() });
        };
        let r = self.rt.block_on(async {
            tokio::time::timeout(t, keeper.keep_alive())
                .await
                .map_err(|_| "timed out".to_string())?
                .map_err(|e| e.to_string())?;
            let msg = tokio::time::timeout(t, stream.message())
                .await
                .map_err(|_| "timed out".to_string())?
                .map_err(|e| e.to_string())?;
            match msg {
                Some(m) if m.ttl() > 0 => Ok(()),
                _ => Err("lease expired".to_string()),
            }
        });
        r.map_err(|e| {
            self.keeper = None;
            self.lease = None;
            self.err("lease keep-alive", e)
        })
    }

    /// Publishes this node's record under its lease.
    pub fn put_node(&mut self, rec: &NodeRecord) -> Result<()> {
        let key = self.node_key(&rec.name);
        let value =
            serde_json::to_string(rec).map_err(|e| RegistryError::Decode { key: key.clone(), msg: e.to_string() })?;
        let opts = self.lease.map(|l| PutOptions::new().with_lease(l));
        let t = self.timeout;
        let client = &mut self.client;
        let r = self.rt.block_on(async { tokio::time::timeout(t, client.put(key, value, opts)).await });
        match r {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(self.err("put node", e)),
            Err(_) => Err(self.err("put node", "timed out")),
        }
    }

    /// Every node's record.
    pub fn nodes(&mut self) -> Result<Vec<NodeRecord>> {
        let prefix = format!("{}/nodes/", self.prefix);
        let t = self.timeout;
        let client = &mut self.client;
        let r = self.rt.block_on(async {
            tokio::time::timeout(t, client.get(prefix, Some(GetOptions::new().with_prefix()))).await
        });
        let resp = match r {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => return Err(self.err("list nodes", e)),
            Err(_) => return Err(self.err("list nodes", "timed out")),
        };
        let mut out = Vec::new();
        for kv in resp.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let rec: NodeRecord =
                serde_json::from_slice(kv.value()).map_err(|e| RegistryError::Decode { key, msg: e.to_string() })?;
            out.push(rec);
        }
        Ok(out)
    }

    /// Removes this node's record now (clean shutdown) by revoking its lease.
    pub fn revoke(&mut self) -> Result<()> {
        let Some(id) = self.lease.take() else { return Ok(()) };
        self.keeper = None;
        let t = self.timeout;
        let client = &mut self.client;
        let r = self.rt.block_on(async { tokio::time::timeout(t, client.lease_revoke(id)).await });
        match r {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(self.err("lease revoke", e)),
            Err(_) => Err(self.err("lease revoke", "timed out")),
        }
    }

    /// The cluster settings, if set.
    pub fn cluster_config(&mut self) -> Result<Option<ClusterConfig>> {
        let key = self.config_key();
        let t = self.timeout;
        let client = &mut self.client;
        let r = self.rt.block_on(async { tokio::time::timeout(t, client.get(key.clone(), None)).await });
        let resp = match r {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => return Err(self.err("get cluster config", e)),
            Err(_) => return Err(self.err("get cluster config", "timed out")),
        };
        match resp.kvs().first() {
            None => Ok(None),
            Some(kv) => serde_json::from_slice(kv.value())
                .map(Some)
                .map_err(|e| RegistryError::Decode { key, msg: e.to_string() }),
        }
    }

    /// Sets the cluster settings.
    pub fn set_cluster_config(&mut self, c: &ClusterConfig) -> Result<()> {
        let key = self.config_key();
        let value =
            serde_json::to_string(c).map_err(|e| RegistryError::Decode { key: key.clone(), msg: e.to_string() })?;
        let t = self.timeout;
        let client = &mut self.client;
        let r = self.rt.block_on(async { tokio::time::timeout(t, client.put(key, value, None)).await });
        match r {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(self.err("set cluster config", e)),
            Err(_) => Err(self.err("set cluster config", "timed out")),
        }
    }
}
