//! What a lab runs besides knit's own code, checked before anything is built: a missing `bird`
//! or `etcd` would otherwise be found mid-build, after namespaces exist, with no word of the
//! package that has it.

use std::path::{Path, PathBuf};

use super::{Datastore, Options, Serve};
use crate::error::{LabError, Result};
use crate::topology::Topology;

/// Something the lab executes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// A program found on `PATH`, and the Debian package that installs it.
    Program {
        /// Its name.
        name: &'static str,
        /// The Debian package.
        package: &'static str,
    },
    /// A CNI plugin, looked up in the lab's CNI path.
    Plugin {
        /// Its name.
        name: &'static str,
        /// The directories searched.
        dirs: Vec<PathBuf>,
        /// The Debian package, for the reference plugins; `None` for knit's own.
        package: Option<&'static str>,
    },
    /// A knit binary at a known path (the node agent, the echo server).
    Binary {
        /// Its path.
        path: PathBuf,
    },
}

/// What building the lab described by `opts` and `topo` executes.
pub fn needs(opts: &Options, topo: &Topology) -> Vec<Need> {
    let program = |name, package| Need::Program { name, package };
    // BIRD (and birdc for reloads) on every node and the ToR; kube-proxy's rules through
    // iptables-restore, and trace reads them back with iptables-save; nft for the nf_tables
    // side; ping for the matrix's ICMP cells.
    let mut out = vec![
        program("bird", "bird2"),
        program("birdc", "bird2"),
        program("iptables-restore", "iptables"),
        program("iptables-save", "iptables"),
        program("nft", "nftables"),
        program("ping", "iputils-ping"),
    ];
    if opts.datastore == Datastore::Etcd {
        out.push(program("etcd", "etcd-server"));
        out.push(Need::Binary { path: opts.knit_exe.clone() });
    }
    let plugin = |name, package| Need::Plugin { name, dirs: opts.cni_path.clone(), package };
    out.push(plugin("knit-routed", None));
    out.push(plugin("knit-ipam", None));
    if topo.pods.iter().any(|p| p.kind.has_macvlan()) {
        out.push(plugin("macvlan", Some("containernetworking-plugins")));
        out.push(plugin("knit-coordinator", None));
    }
    if let Serve::Processes { exe } = &opts.serve {
        out.push(Need::Binary { path: exe.clone() });
    }
    out
}

/// `name` on `PATH`, as `Command::new(name)` finds it.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Checks every need; the error names each missing one and what installs it.
pub fn check(needs: &[Need]) -> Result<()> {
    let mut missing = Vec::new();
    let mut packages: Vec<&str> = Vec::new();
    let mut build = false;
    for n in needs {
        match n {
            Need::Program { name, package } => {
                if find_program(name).is_none() {
                    missing.push(format!("{name} (Debian package {package}; not on PATH)"));
                    packages.push(package);
                }
            }
            Need::Plugin { name, dirs, package } => {
                if !dirs.iter().any(|d| is_executable(&d.join(name))) {
                    let searched = dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(":");
                    match package {
                        Some(p) => {
                            missing.push(format!("CNI plugin {name} (Debian package {p}; not in {searched})"));
                            packages.push(p);
                        }
                        None => {
                            missing.push(format!("CNI plugin {name} (not in {searched})"));
                            build = true;
                        }
                    }
                }
            }
            Need::Binary { path } => {
                if !is_executable(path) {
                    missing.push(format!("{}", path.display()));
                    build = true;
                }
            }
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    packages.sort();
    packages.dedup();
    let mut fix = Vec::new();
    if !packages.is_empty() {
        fix.push(format!("apt-get install {}", packages.join(" ")));
    }
    if build {
        fix.push("build knit's binaries next to knit-lab (cargo build --workspace --bins)".to_string());
    }
    Err(LabError::Missing { missing, fix: fix.join("; ") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_program_names_its_package() {
        let needs = vec![
            Need::Program { name: "knit-no-such-program-a", package: "bird2" },
            Need::Program { name: "knit-no-such-program-b", package: "etcd-server" },
            Need::Plugin { name: "knit-routed", dirs: vec![PathBuf::from("/nonexistent")], package: None },
            Need::Program { name: "sh", package: "dash" },
        ];
        let e = check(&needs).unwrap_err().to_string();
        assert!(e.contains("knit-no-such-program-a (Debian package bird2"), "{e}");
        assert!(e.contains("apt-get install bird2 etcd-server"), "{e}");
        assert!(e.contains("cargo build --workspace --bins"), "{e}");
        assert!(!e.contains("dash"), "{e}");
        check(&needs[3..]).unwrap();
    }
}
