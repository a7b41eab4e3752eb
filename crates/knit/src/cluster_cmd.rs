//! `knit cluster …`: cluster-wide settings kept in etcd, which every node agent turns into
//! the coordinator's CIDR file.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use ipnet::IpNet;
use knit_agent::registry::{ClusterConfig, Registry, Tls, DEFAULT_PREFIX};

#[derive(Args)]
pub struct ClusterCmd {
    #[command(subcommand)]
    cmd: ClusterSub,
}

/// How to reach etcd: each subcommand takes these after its name, as
/// `knit cluster set --etcd-endpoints URL …` (README, deploy/README.md).
#[derive(Args)]
struct Etcd {
    /// etcd endpoints, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    etcd_endpoints: Vec<String>,
    /// CA that signed the etcd server's certificate (PEM).
    #[arg(long)]
    etcd_ca_file: Option<std::path::PathBuf>,
    /// Client certificate (PEM), with --etcd-key-file.
    #[arg(long)]
    etcd_cert_file: Option<std::path::PathBuf>,
    /// Client key (PEM).
    #[arg(long)]
    etcd_key_file: Option<std::path::PathBuf>,
    /// Registry key prefix in etcd.
    #[arg(long, default_value = DEFAULT_PREFIX)]
    prefix: String,
}

#[derive(Subcommand)]
enum ClusterSub {
    /// Set the cluster's CIDRs (each flag replaces that list; absent flags keep theirs).
    Set {
        #[command(flatten)]
        etcd: Etcd,
        #[arg(long, value_delimiter = ',')]
        overlay_cidr: Option<Vec<IpNet>>,
        #[arg(long, value_delimiter = ',')]
        service_cidr: Option<Vec<IpNet>>,
        #[arg(long, value_delimiter = ',')]
        hijack_cidr: Option<Vec<IpNet>>,
    },
    /// Print the cluster settings and the registered nodes as JSON.
    Show {
        #[command(flatten)]
        etcd: Etcd,
    },
}

pub fn run(c: ClusterCmd) -> ExitCode {
    match run_inner(c) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("knit cluster: {e}");
            ExitCode::FAILURE
        }
    }
}

fn connect(e: Etcd) -> Result<Registry, String> {
    let tls = Tls { ca: e.etcd_ca_file, cert: e.etcd_cert_file, key: e.etcd_key_file };
    Registry::connect(&e.etcd_endpoints, &tls, &e.prefix, Duration::from_secs(5)).map_err(|e| e.to_string())
}

fn run_inner(c: ClusterCmd) -> Result<(), String> {
    match c.cmd {
        ClusterSub::Set { etcd, overlay_cidr, service_cidr, hijack_cidr } => {
            let mut reg = connect(etcd)?;
            let mut cfg: ClusterConfig = reg.cluster_config().map_err(|e| e.to_string())?.unwrap_or_default();
            if let Some(v) = overlay_cidr {
                cfg.overlay_pod_cidr = v.into_iter().map(|n| n.trunc()).collect();
            }
            if let Some(v) = service_cidr {
                cfg.service_cidr = v.into_iter().map(|n| n.trunc()).collect();
            }
            if let Some(v) = hijack_cidr {
                cfg.hijack_cidr = v.into_iter().map(|n| n.trunc()).collect();
            }
            reg.set_cluster_config(&cfg).map_err(|e| e.to_string())?;
            println!("{}", serde_json::to_string(&cfg).map_err(|e| e.to_string())?);
        }
        ClusterSub::Show { etcd } => {
            let mut reg = connect(etcd)?;
            let cfg = reg.cluster_config().map_err(|e| e.to_string())?;
            let nodes = reg.nodes().map_err(|e| e.to_string())?;
            println!("{}", serde_json::json!({"config": cfg, "nodes": nodes}));
        }
    }
    Ok(())
}
