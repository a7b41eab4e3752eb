//! Finding and removing a lab by its name alone: the namespaces named `knit-<lab>-…`, the
//! processes living in them (found by scanning /proc), and the lab's directory.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use knit_host::Netns;
use nix::sys::signal::Signal;

use crate::error::{host, io, Result};
use crate::plan;

/// Namespaces of lab `name` that exist now.
pub fn existing_namespaces(name: &str) -> Result<Vec<String>> {
    let prefix = plan::ns_prefix(name);
    Ok(Netns::list_named().map_err(host("list namespaces"))?.into_iter().filter(|n| n.starts_with(&prefix)).collect())
}

/// What a teardown removed.
#[derive(Debug, Default, Clone)]
pub struct Teardown {
    /// Namespaces deleted.
    pub namespaces: Vec<String>,
    /// Processes killed.
    pub processes: Vec<u32>,
}

/// Removes lab `name`: kills every process in its namespaces, deletes them and its directory.
/// Idempotent: a lab that is (partly) gone is removed as far as it exists.
pub fn down(name: &str, run_dir: &Path) -> Result<Teardown> {
    plan::validate_name(name)?;
    let names = existing_namespaces(name)?;
    let processes = remove_namespaces(&names, &[(Signal::SIGKILL, Duration::from_secs(5))])?;
    let dir = run_dir.join(name);
    if dir.exists() {
        fs::remove_dir_all(&dir).map_err(io("remove lab directory", &dir))?;
    }
    Ok(Teardown { namespaces: names, processes })
}

/// Deletes `names` (namespaces of a lab) after the processes living in them: each signal of
/// `signals` in turn, waiting up to its time for them to exit. Processes keep a namespace,
/// and so its links, alive after its name is gone (BIRD, echo servers, `knit lab exec`
/// shells). Returns the pids signalled.
pub(crate) fn remove_namespaces(names: &[String], signals: &[(Signal, Duration)]) -> Result<Vec<u32>> {
    let mut inodes = BTreeSet::new();
    for n in names {
        if let Ok(ns) = Netns::open_named(n) {
            if let Ok(i) = ns.inode() {
                inodes.insert(i);
            }
        }
    }
    let me = std::process::id();
    let victims: Vec<u32> = processes_in(&inodes).into_iter().filter(|p| *p != me).collect();
    let alive = |v: &[u32]| v.iter().any(|p| Path::new(&format!("/proc/{p}")).exists() && !is_zombie(*p));
    for (sig, wait) in signals {
        for pid in &victims {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid as i32), *sig);
        }
        let deadline = Instant::now() + *wait;
        while alive(&victims) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    for n in names {
        Netns::delete_named(n).map_err(host(format!("delete namespace {n}")))?;
    }
    Ok(victims)
}

fn is_zombie(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')))
        .unwrap_or(true)
}

/// Pids of processes whose network namespace is one of `inodes`.
fn processes_in(inodes: &BTreeSet<u64>) -> Vec<u32> {
    let mut out = Vec::new();
    if inodes.is_empty() {
        return out;
    }
    let Ok(rd) = fs::read_dir("/proc") else { return out };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(target) = fs::read_link(e.path().join("ns/net")) else { continue };
        // "net:[4026532123]"
        let ino = target
            .to_str()
            .and_then(|s| s.strip_prefix("net:["))
            .and_then(|s| s.strip_suffix(']'))
            .and_then(|s| s.parse::<u64>().ok());
        if ino.is_some_and(|i| inodes.contains(&i)) {
            out.push(pid);
        }
    }
    out
}

/// Labs with a directory under `run_dir` (a lab's namespaces can't be told apart from a
/// namespace name alone: lab names may hold '-').
pub fn list(run_dir: &Path) -> Result<Vec<String>> {
    let mut names = BTreeSet::new();
    if let Ok(rd) = fs::read_dir(run_dir) {
        for e in rd.flatten() {
            if let Some(n) = e.file_name().to_str() {
                names.insert(n.to_string());
            }
        }
    }
    Ok(names.into_iter().collect())
}
