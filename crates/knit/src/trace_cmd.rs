//! `knit trace` and `knit doctor`: explain a packet's path, list a node's problems.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use knit_trace::inventory::{self, Inventory, LAB_RUN_DIR};
use knit_trace::{doctor, path, render, snapshot, Proto, Request, Snapshot};

#[derive(Args)]
pub struct TraceCmd {
    /// The lab to trace in (its inventory); without --lab or --inventory, this machine (host
    /// namespace + /run/netns/*).
    #[arg(long, conflicts_with = "inventory")]
    lab: Option<String>,
    /// An inventory file (JSON: what is where, as `knit lab` writes one per lab) naming the
    /// namespaces to read.
    #[arg(long)]
    inventory: Option<PathBuf>,
    /// Where lab directories live.
    #[arg(long, default_value = LAB_RUN_DIR)]
    run_dir: PathBuf,
    /// Source: a pod, node or client name, or an address.
    src: String,
    /// Destination: pod[:port], ip[:port], svc/NAME[:port] (the port defaults to the lab's echo port).
    dst: String,
    /// Protocol: tcp, udp or icmp.
    #[arg(long, default_value = "tcp")]
    proto: Proto,
    /// The Service endpoint to follow (kube-proxy picks one at random); default: the first.
    #[arg(long)]
    endpoint: Option<std::net::IpAddr>,
    /// JSON output.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct DoctorCmd {
    /// Check a running lab's nodes.
    #[arg(long, conflicts_with_all = ["node", "inventory"])]
    lab: Option<String>,
    /// Check the namespaces an inventory file names.
    #[arg(long, conflicts_with = "node")]
    inventory: Option<PathBuf>,
    /// Check this machine (host namespace + /run/netns/*).
    #[arg(long)]
    node: bool,
    /// Where lab directories live.
    #[arg(long, default_value = LAB_RUN_DIR)]
    run_dir: PathBuf,
    /// JSON output.
    #[arg(long)]
    json: bool,
}

/// The inventory `--lab` or `--inventory` names, if any.
fn inventory_of(
    lab: Option<&str>,
    file: Option<&std::path::Path>,
    run_dir: &std::path::Path,
) -> Result<Option<Inventory>, knit_trace::Error> {
    match (lab, file) {
        (Some(l), _) => inventory::load_lab(run_dir, l).map(Some),
        (None, Some(f)) => Inventory::load(f).map(Some),
        (None, None) => Ok(None),
    }
}

/// Reads the snapshot; `trace` narrows a large inventory to what a trace between the two can visit.
fn snap(inv: Option<Inventory>, trace: Option<(&str, &str)>, cmd: &str) -> Result<Snapshot, knit_trace::Error> {
    let s = match inv {
        Some(inv) => snapshot::read_inventory(&inv, trace)?,
        None => snapshot::read_node()?,
    };
    for note in &s.notes {
        eprintln!("knit {cmd}: {note}");
    }
    Ok(s)
}

/// Exit codes: 0 delivered, 1 dropped, 2 usage or read errors.
pub fn run(c: TraceCmd) -> ExitCode {
    let result = (|| -> Result<path::Trace, knit_trace::Error> {
        let inv = inventory_of(c.lab.as_deref(), c.inventory.as_deref(), &c.run_dir)?;
        let s = snap(inv, Some((&c.src, &c.dst)), "trace")?;
        let (src_ns, src_ip) = knit_trace::resolve_source(&s, &c.src)?;
        let (dst, dport) = knit_trace::resolve_destination(&s, &c.dst)?;
        Ok(knit_trace::trace(&s, &Request { src_ns, src_ip, dst, dport, proto: c.proto, endpoint: c.endpoint }))
    })();
    match result {
        Ok(t) => {
            if c.json {
                println!("{}", serde_json::to_string_pretty(&t).unwrap_or_default());
            } else {
                print!("{}", render::trace_text(&t));
            }
            if t.delivered {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("knit trace: {e}");
            ExitCode::from(2)
        }
    }
}

/// Exit codes: 0 no problems, 1 problems, 2 read errors.
pub fn run_doctor(c: DoctorCmd) -> ExitCode {
    let s = match inventory_of(c.lab.as_deref(), c.inventory.as_deref(), &c.run_dir)
        .and_then(|i| snap(i, None, "doctor"))
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("knit doctor: {e}");
            return ExitCode::from(2);
        }
    };
    let problems = doctor::check(&s);
    if c.json {
        println!("{}", serde_json::to_string_pretty(&problems).unwrap_or_default());
    } else if problems.is_empty() {
        println!("no problems found in {} namespaces", s.namespaces.len());
    } else {
        for p in &problems {
            println!("{} [{}]: {}\n  fix: {}", p.ns, p.check, p.detail, p.fix);
        }
    }
    if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
