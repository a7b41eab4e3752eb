//! `knit node …`: node-agent helpers that run on (or inside) a node's namespace.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use knit_host::Handle;

#[derive(Args)]
pub struct NodeCmd {
    #[command(subcommand)]
    cmd: NodeSub,
}

#[derive(Subcommand)]
enum NodeSub {
    /// List the underlay pod IPs this node wires (its coordinator table-500 routes), as JSON.
    /// Other nodes route these as `/32 via <this node's IP>`.
    UnderlayIps {
        /// The coordinator's hostRuleTable.
        #[arg(long, default_value_t = knit_coordinator::config::DEFAULT_HOST_RULE_TABLE)]
        table: u32,
    },
    /// Install `blackhole <block>` routes for the knit-ipam blocks this node owns (idempotent),
    /// so traffic to unused addresses of a local block dies here instead of looping.
    Blackholes {
        /// A file with the knit-ipam configuration (an ipam object, a plugin config or a
        /// conflist).
        #[arg(long)]
        ipam_config: std::path::PathBuf,
        /// The node name; defaults to the config's `node`, then the hostname.
        #[arg(long)]
        node: Option<String>,
    },
    /// The long-running node agent (cluster mode): registers the node in etcd under a lease,
    /// keeps BIRD's peers in step with the other nodes, publishes this node's blocks and
    /// underlay pod IPs, writes the coordinator's CIDR file, and after its first successful
    /// round installs the node's conflist (--conflist). Stops cleanly on SIGTERM/SIGINT.
    Run(Box<RunArgs>),
}

#[derive(Args)]
pub struct RunArgs {
    /// Where cluster state lives (only etcd).
    #[arg(long, default_value = "etcd", value_parser = ["etcd"])]
    datastore: String,
    /// etcd endpoints, comma-separated (`http://10.0.0.1:2379,...`).
    #[arg(long, value_delimiter = ',', required = true)]
    etcd_endpoints: Vec<String>,
    #[arg(long)]
    etcd_ca_file: Option<std::path::PathBuf>,
    #[arg(long)]
    etcd_cert_file: Option<std::path::PathBuf>,
    #[arg(long)]
    etcd_key_file: Option<std::path::PathBuf>,
    /// Registry key prefix in etcd.
    #[arg(long, default_value = knit_agent::registry::DEFAULT_PREFIX)]
    prefix: String,
    /// Node name (default: the hostname).
    #[arg(long)]
    node: Option<String>,
    /// The node IP peers use (IPv4).
    #[arg(long)]
    node_ip: std::net::Ipv4Addr,
    /// The nodes' AS.
    #[arg(long = "as", default_value_t = 64512)]
    asn: u32,
    /// A ToR to peer with (eBGP): its IP.
    #[arg(long)]
    tor: Option<std::net::IpAddr>,
    /// The ToR's AS.
    #[arg(long, default_value_t = 64513)]
    tor_as: u32,
    /// BIRD's directory (bird.conf, bird.ctl).
    #[arg(long, default_value = "/var/run/knit")]
    bird_dir: std::path::PathBuf,
    /// knit-ipam configuration (ipam object, plugin config or conflist) to read this node's blocks.
    #[arg(long)]
    ipam_config: Option<std::path::PathBuf>,
    /// The coordinator's CIDR file to write.
    #[arg(long, default_value = knit_coordinator::config::DEFAULT_CIDR_FILE)]
    cidr_file: std::path::PathBuf,
    /// The node's conflist (as `knit install --stage-conflist DIR` stages it, DIR/10-knit.conflist)
    /// to put into --cni-conf-dir after the first successful reconcile: the node turns Ready
    /// only once it is registered, BIRD is configured and the CIDR file is written.
    #[arg(long)]
    conflist: Option<std::path::PathBuf>,
    /// The runtime's CNI conf dir, where --conflist goes.
    #[arg(long, default_value = "/etc/cni/net.d")]
    cni_conf_dir: std::path::PathBuf,
    /// Lease TTL (seconds): a dead node leaves the others' peers within this.
    #[arg(long, default_value_t = 10)]
    lease_ttl: i64,
    /// Reconcile period (milliseconds).
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
}

pub fn run(c: NodeCmd) -> ExitCode {
    let res = match c.cmd {
        NodeSub::UnderlayIps { table } => underlay_ips(table),
        NodeSub::Blackholes { ipam_config, node } => blackholes(&ipam_config, node),
        NodeSub::Run(a) => run_agent(*a),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("knit node: {e}");
            ExitCode::FAILURE
        }
    }
}

fn underlay_ips(table: u32) -> Result<(), String> {
    let h = Handle::new().map_err(|e| e.to_string())?;
    let ips = knit_coordinator::underlay::list(&h, table).map_err(|e| e.to_string())?;
    println!("{}", serde_json::to_string_pretty(&ips).map_err(|e| e.to_string())?);
    Ok(())
}

fn blackholes(config: &std::path::Path, node: Option<String>) -> Result<(), String> {
    let cfg = crate::ipam_cmd::load_config(config)?;
    let node = node.unwrap_or_else(|| cfg.node.clone());
    // The store the config names (local files or etcd), opened for reading only.
    let ipam = knit_ipam::Ipam::open_for_inspection(cfg).map_err(|e| e.msg())?;
    let blocks = ipam.blocks_of(&node).map_err(|e| e.msg())?;
    let h = Handle::new().map_err(|e| e.to_string())?;
    for b in &blocks {
        let r = knit_host::route::Route::blackhole(*b);
        knit_host::route::replace(&h, &r).map_err(|e| format!("blackhole {b}: {e}"))?;
        println!("blackhole {b}");
    }
    Ok(())
}

fn run_agent(a: RunArgs) -> Result<(), String> {
    let node = match a.node {
        Some(n) => n,
        None => knit_ipam::config::hostname().ok_or("no --node and no hostname")?,
    };
    crate::signals::catch()?;
    let cfg = knit_agent::node::AgentConfig {
        node,
        node_ip: a.node_ip,
        asn: a.asn,
        tor: a.tor.map(|ip| knit_agent::bird::Peer { ip, asn: a.tor_as }),
        endpoints: a.etcd_endpoints,
        tls: knit_agent::registry::Tls { ca: a.etcd_ca_file, cert: a.etcd_cert_file, key: a.etcd_key_file },
        prefix: a.prefix,
        bird_dir: a.bird_dir,
        ipam_config: a.ipam_config,
        cidr_file: a.cidr_file,
        conflist: a.conflist.map(|source| knit_agent::node::ConflistInstall { source, conf_dir: a.cni_conf_dir }),
        host_rule_table: knit_coordinator::config::DEFAULT_HOST_RULE_TABLE,
        lease_ttl: a.lease_ttl.max(2),
        interval: std::time::Duration::from_millis(a.interval_ms.max(50)),
    };
    knit_agent::node::run(&cfg, &crate::signals::TERMINATE)
}
