//! `knit cluster …`: cluster-wide settings kept in etcd, which every node agent turns into
//! the coordinator's CIDR file.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use ipnet::IpNet;
use knit_agent::registry::{ClusterConfig, Registry, Tls, DEFAULT_PREFIX};

#[derive(Args)]
pub struct ClusterCmd {
    /// etcd endpoints, comma-separated.
    #[arg(long, value_delimiter = ',', required = true, global = true)]
    etcd_endpoints: Vec<String>,
    #[arg(long, global = true)]
    etcd_ca_file: Option<std::path::PathBuf>,
    #[arg(long, global = true)]
    etcd_cert_file: Option<std::path::PathBuf>,
    #[arg(long, global = true)]
    etcd_key_file: Option<std::path::PathBuf>,
    #[arg(long, default_value = DEFAULT_PREFIX, global = true)]
    prefix: String,
    #[command(subcommand)]
    cmd: ClusterSub,
}

#[derive(Subcommand)]
enum ClusterSub {
    /// Set the cluster's CIDRs (each flag replaces that list; absent flags keep theirs).
    Set {
        #[arg(long, value_delimiter = ',')]
        overlay_cidr: Option<Vec<IpNet>>,
        #[arg(long, value_delimiter = ',')]
        service_cidr: Option<Vec<IpNet>>,
        #[arg(long, value_delimiter = ',')]
        hijack_cidr: Option<Vec<IpNet>>,
    },
    /// Print the cluster settings and the registered nodes as JSON.
    Show,
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

fn run_inner(c: ClusterCmd) -> Result<(), String> {
    let tls = Tls { ca: c.etcd_ca_file, cert: c.etcd_cert_file, key: c.etcd_key_file };
    let mut reg =
        Registry::connect(&c.etcd_endpoints, &tls, &c.prefix, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    match c.cmd {
        ClusterSub::Set { overlay_cidr, service_cidr, hijack_cidr } => {
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
        ClusterSub::Show => {
            let cfg = reg.cluster_config().map_err(|e| e.to_string())?;
            let nodes = reg.nodes().map_err(|e| e.to_string())?;
            println!("{}", serde_json::json!({"config": cfg, "nodes": nodes}));
        }
    }
    Ok(())
}
