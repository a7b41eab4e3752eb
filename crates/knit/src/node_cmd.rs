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
}

pub fn run(c: NodeCmd) -> ExitCode {
    let res = match c.cmd {
        NodeSub::UnderlayIps { table } => underlay_ips(table),
        NodeSub::Blackholes { ipam_config, node } => blackholes(&ipam_config, node),
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
    let blocks = knit_ipam::blocks_of(&cfg.data_dir, &node).map_err(|e| e.msg())?;
    let h = Handle::new().map_err(|e| e.to_string())?;
    for b in &blocks {
        let r = knit_host::route::Route::blackhole(*b);
        knit_host::route::replace(&h, &r).map_err(|e| format!("blackhole {b}: {e}"))?;
        println!("blackhole {b}");
    }
    Ok(())
}
