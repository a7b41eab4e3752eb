//! `knit ipam`: inspect and maintain the knit-ipam store, local or etcd.
//!
//! * `show`: pools, blocks per node, used/free counts.
//! * `release --pod NS/NAME` frees a pod identity's fixed IPs; `release --container-id ID
//!   [--ifname IF]` releases one attachment (like a DEL).
//! * `gc --valid FILE`: cluster-wide sweep: every attachment, on any node, that is not listed in
//!   FILE is released (`--fixed`: fixed-IP reservations of those nodes are freed too).
//!
//! The store: `--config FILE` (a conflist, plugin config or bare `ipam` object: its `store`,
//! `dataDir` and `etcd*` settings), or `--etcd-endpoints URL,..` (with `--etcd-ca-file`,
//! `--etcd-cert-file`, `--etcd-key-file`), else the local store in `--data-dir`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use knit_ipam::{EtcdConfig, GcMode, Ipam, IpamConfig, PodRef, StoreKind};

#[derive(Args)]
pub struct IpamCmd {
    #[command(subcommand)]
    cmd: IpamSub,
}

/// Which store to open.
#[derive(Args, Clone)]
struct StoreArgs {
    /// The knit-ipam dataDir (local store).
    #[arg(long, default_value = knit_ipam::config::DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// Take the store settings from this knit-ipam configuration (conflist, plugin config or
    /// bare ipam object).
    #[arg(long, conflicts_with = "etcd_endpoints")]
    config: Option<PathBuf>,
    /// Use the etcd store at these endpoints (comma-separated URLs).
    #[arg(long, value_delimiter = ',')]
    etcd_endpoints: Vec<String>,
    #[arg(long, requires = "etcd_endpoints")]
    etcd_ca_file: Option<PathBuf>,
    #[arg(long, requires = "etcd_endpoints")]
    etcd_cert_file: Option<PathBuf>,
    #[arg(long, requires = "etcd_endpoints")]
    etcd_key_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum IpamSub {
    /// Print the pools, the blocks per node and used/free counts.
    Show {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        json: bool,
    },
    /// Free the fixed IPs of a pod identity, or release one attachment.
    Release {
        #[command(flatten)]
        store: StoreArgs,
        /// The pod identity NAMESPACE/NAME whose fixed IPs to free.
        #[arg(long, required_unless_present = "container_id", conflicts_with = "container_id")]
        pod: Option<String>,
        /// The container whose attachment to release.
        #[arg(long)]
        container_id: Option<String>,
        #[arg(long, default_value = "eth0", requires = "container_id")]
        ifname: String,
    },
    /// Release every attachment of every node that FILE does not list.
    Gc {
        #[command(flatten)]
        store: StoreArgs,
        /// Valid attachments: a JSON array of {"containerID":..,"ifname":..} (the CNI GC
        /// format), or lines "CONTAINERID IFNAME".
        #[arg(long)]
        valid: PathBuf,
        /// Also free the fixed-IP reservations (no container now) of the swept nodes.
        #[arg(long)]
        fixed: bool,
        #[arg(long)]
        json: bool,
    },
}

fn store_config(a: &StoreArgs) -> Result<IpamConfig, String> {
    if let Some(path) = &a.config {
        return load_config(path);
    }
    let store = if a.etcd_endpoints.is_empty() {
        StoreKind::Local
    } else {
        let mut e = EtcdConfig::new(a.etcd_endpoints.clone());
        e.ca_file = a.etcd_ca_file.clone();
        e.cert_file = a.etcd_cert_file.clone();
        e.key_file = a.etcd_key_file.clone();
        if e.cert_file.is_some() != e.key_file.is_some() {
            return Err("--etcd-cert-file and --etcd-key-file go together".into());
        }
        StoreKind::Etcd(e)
    };
    Ok(IpamConfig {
        node: String::new(),
        data_dir: a.data_dir.clone(),
        store,
        lock_timeout_ms: knit_ipam::config::DEFAULT_LOCK_TIMEOUT_MS,
        fsync: false,
        pools: Vec::new(),
    })
}

fn open(a: &StoreArgs) -> Result<(Ipam, String), String> {
    let cfg = store_config(a)?;
    let what = match &cfg.store {
        StoreKind::Local => cfg.data_dir.display().to_string(),
        StoreKind::Etcd(e) => format!("etcd {}", e.endpoints.join(",")),
    };
    let ipam = Ipam::open_for_inspection(cfg).map_err(|e| e.msg())?;
    Ok((ipam, what))
}

fn parse_valid(path: &Path) -> Result<Vec<(String, String)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if text.trim_start().starts_with('[') {
        #[derive(serde::Deserialize)]
        struct Att {
            #[serde(rename = "containerID")]
            container_id: String,
            ifname: String,
        }
        let v: Vec<Att> = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        return Ok(v.into_iter().map(|a| (a.container_id, a.ifname)).collect());
    }
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace();
        match (parts.next(), parts.next(), parts.next()) {
            (Some(c), Some(i), None) => out.push((c.to_string(), i.to_string())),
            _ => return Err(format!("{}:{}: expected \"CONTAINERID IFNAME\"", path.display(), n + 1)),
        }
    }
    Ok(out)
}

fn print_json(v: &impl serde::Serialize) -> Result<(), String> {
    let s = serde_json::to_string_pretty(v).map_err(|e| e.to_string())?;
    println!("{s}");
    Ok(())
}

fn run_sub(c: IpamSub) -> Result<(), String> {
    match c {
        IpamSub::Show { store, json } => {
            let is_local = store.config.is_none() && store.etcd_endpoints.is_empty();
            let summary = if is_local {
                // A missing dataDir is an empty store, and is not created.
                knit_ipam::show(&store.data_dir).map_err(|e| e.msg())?
            } else {
                open(&store)?.0.show().map_err(|e| e.msg())?
            };
            if json {
                print_json(&summary)?;
            } else if summary.pools.is_empty() {
                let what = match store_config(&store)?.store {
                    StoreKind::Local => store.data_dir.display().to_string(),
                    StoreKind::Etcd(e) => format!("etcd {}", e.endpoints.join(",")),
                };
                println!("no pools in {what}");
            } else {
                print!("{summary}");
            }
        }
        IpamSub::Release { store, pod, container_id, ifname } => {
            let (ipam, what) = open(&store)?;
            let (label, freed) = if let Some(pod) = pod {
                let (ns, name) = pod
                    .split_once('/')
                    .filter(|(a, b)| !a.is_empty() && !b.is_empty())
                    .ok_or_else(|| format!("--pod {pod:?}: expected NAMESPACE/NAME"))?;
                let pod = PodRef::new(ns, name);
                (format!("fixed IPs of {pod}"), ipam.release_fixed(&pod))
            } else {
                let cid = container_id.unwrap_or_default();
                (format!("{cid} {ifname}"), ipam.release(&cid, &ifname))
            };
            let freed = freed.map_err(|e| e.msg())?;
            if freed.is_empty() {
                println!("{label}: nothing to release in {what}");
            } else {
                let list: Vec<String> = freed.iter().map(|ip| ip.to_string()).collect();
                println!("{label}: released {}", list.join(" "));
            }
        }
        IpamSub::Gc { store, valid, fixed, json } => {
            let valid = parse_valid(&valid)?;
            let (ipam, _) = open(&store)?;
            let mode = if fixed { GcMode::All } else { GcMode::KeepFixed };
            let report = ipam.gc_cluster(&valid, mode).map_err(|e| e.msg())?;
            if json {
                print_json(&report)?;
            } else {
                for (cid, ifname, ip) in &report.released {
                    println!("released {ip} ({cid} {ifname})");
                }
                for (pod, ip) in &report.unreserved {
                    println!("unreserved {ip} (fixed IP of {pod})");
                }
                println!("{} released, {} fixed IPs freed", report.released.len(), report.unreserved.len());
            }
        }
    }
    Ok(())
}

pub fn run(c: IpamCmd) -> ExitCode {
    match run_sub(c.cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("knit ipam: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Reads a knit-ipam configuration file (see [`knit_ipam::config::load_file`]).
pub fn load_config(path: &std::path::Path) -> Result<knit_ipam::IpamConfig, String> {
    knit_ipam::config::load_file(path)
}
