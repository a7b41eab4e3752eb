//! `knit ipam show`: what the embedded store holds, per pool, block and node.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

#[derive(Args)]
pub struct IpamCmd {
    #[command(subcommand)]
    cmd: IpamSub,
}

#[derive(Subcommand)]
enum IpamSub {
    /// Print the pools, the blocks per node and used/free counts.
    Show {
        /// The knit-ipam dataDir.
        #[arg(long, default_value = "/var/lib/knit/ipam")]
        data_dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(c: IpamCmd) -> ExitCode {
    match c.cmd {
        IpamSub::Show { data_dir, json } => match knit_ipam::show(&data_dir) {
            Ok(summary) => {
                if json {
                    match serde_json::to_string_pretty(&summary) {
                        Ok(s) => println!("{s}"),
                        Err(e) => {
                            eprintln!("knit ipam show: {e}");
                            return ExitCode::FAILURE;
                        }
                    }
                } else if summary.pools.is_empty() {
                    println!("no pools in {}", data_dir.display());
                } else {
                    print!("{summary}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("knit ipam show: {}", e.msg());
                ExitCode::FAILURE
            }
        },
    }
}

/// Reads a knit-ipam configuration from a file holding a bare `ipam` object, a plugin
/// configuration with an `ipam` key, or a conflist (the first plugin whose ipam is knit-ipam).
pub fn load_config(path: &std::path::Path) -> Result<knit_ipam::IpamConfig, String> {
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
    knit_ipam::IpamConfig::from_value(&ipam, "ipam").map_err(|e| e.msg())
}
