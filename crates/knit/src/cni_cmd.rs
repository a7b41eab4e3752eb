//! `knit cni add|del|check|status|gc`: a libcni-like runtime on the command line. Plugins run
//! in the namespace `knit` was started in, exactly as containerd runs them.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use knit_cni::{Attachment, CniError, NetConfList, Runtime, RuntimeArgs};

#[derive(Clone, Copy, ValueEnum)]
enum Verb {
    Add,
    Del,
    Check,
    Status,
    Gc,
}

#[derive(Args)]
pub struct CniCmd {
    #[arg(value_enum)]
    verb: Verb,
    /// The network configuration list (JSON).
    #[arg(long)]
    conflist: PathBuf,
    /// The pod's network namespace (`/run/netns/NAME` or `/proc/PID/ns/net`); needed by add,
    /// check and del (del accepts a namespace that is already gone).
    #[arg(long)]
    netns: Option<String>,
    #[arg(long, default_value = "eth0")]
    ifname: String,
    /// Defaults to the netns file name (`/run/netns/pod1` → `pod1`).
    #[arg(long)]
    container_id: Option<String>,
    /// CNI_ARGS, e.g. 'K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0'.
    #[arg(long, default_value = "")]
    args: String,
    /// Capability arguments as a JSON object, e.g. '{"ips":["10.0.0.5/24"]}'.
    #[arg(long)]
    capability_args: Option<String>,
    /// Plugin directories, colon-separated; else $CNI_PATH, else /opt/cni/bin:/usr/lib/cni.
    #[arg(long)]
    cni_path: Option<String>,
    /// Where ADD results are cached for DEL and CHECK.
    #[arg(long, default_value = "/var/lib/knit/cni")]
    state_dir: PathBuf,
    /// GC: an attachment to keep, as CONTAINERID/IFNAME (repeat); everything else is collected.
    #[arg(long = "valid")]
    valid: Vec<String>,
}

fn container_id_from(netns: &str) -> String {
    Path::new(netns).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

fn runtime_args(c: &CniCmd) -> Result<RuntimeArgs, CniError> {
    let netns = c.netns.clone().unwrap_or_default();
    let container_id = match &c.container_id {
        Some(id) => id.clone(),
        None if !netns.is_empty() => container_id_from(&netns),
        None => return Err(CniError::invalid_env("--container-id or --netns is required")),
    };
    let capability_args = match &c.capability_args {
        None => Default::default(),
        Some(s) => match serde_json::from_str::<serde_json::Value>(s) {
            Ok(serde_json::Value::Object(m)) => m,
            Ok(_) => return Err(CniError::decode("--capability-args must be a JSON object")),
            Err(e) => return Err(CniError::decode(format!("--capability-args: {e}"))),
        },
    };
    Ok(RuntimeArgs {
        container_id,
        netns,
        ifname: c.ifname.clone(),
        args: knit_cni::parse_cni_args(&c.args)?,
        capability_args,
    })
}

fn parse_valid(v: &[String]) -> Result<Vec<Attachment>, CniError> {
    v.iter()
        .map(|s| match s.rsplit_once('/') {
            Some((cid, ifname)) if !cid.is_empty() && !ifname.is_empty() => {
                Ok(Attachment { container_id: cid.to_string(), ifname: ifname.to_string() })
            }
            _ => Err(CniError::invalid_env(format!("--valid {s:?}: expected CONTAINERID/IFNAME"))),
        })
        .collect()
}

fn execute(c: &CniCmd) -> Result<Option<serde_json::Value>, CniError> {
    let bytes = std::fs::read(&c.conflist).map_err(|e| CniError::io(format!("reading {}", c.conflist.display()), e))?;
    let list = NetConfList::from_bytes(&bytes)?;
    let cni_path = match &c.cni_path {
        Some(p) => knit_cni::env::split_path(p),
        None => Runtime::default_cni_path(),
    };
    let rt = Runtime::new(cni_path, &c.state_dir);
    match c.verb {
        Verb::Add => {
            let args = runtime_args(c)?;
            if args.netns.is_empty() {
                return Err(CniError::invalid_env("add needs --netns"));
            }
            rt.add(&list, &args).map(Some)
        }
        Verb::Del => rt.del(&list, &runtime_args(c)?).map(|_| None),
        Verb::Check => rt.check(&list, &runtime_args(c)?).map(|_| None),
        Verb::Status => rt.status(&list).map(|_| None),
        Verb::Gc => rt.gc(&list, &parse_valid(&c.valid)?).map(|_| None),
    }
}

pub fn run(c: CniCmd) -> ExitCode {
    match execute(&c) {
        Ok(Some(result)) => {
            println!("{}", serde_json::to_string_pretty(&result).unwrap_or_else(|_| result.to_string()));
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            // The same error JSON a plugin prints, so scripts handle both alike.
            println!("{}", e.to_json_pretty());
            ExitCode::FAILURE
        }
    }
}
