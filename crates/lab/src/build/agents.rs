//! Cluster mode's node agents: `knit node run` in every node's namespace, which registers the
//! node in etcd and writes its BIRD configuration and the coordinator's CIDR file.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{Lab, Options};
use crate::error::{host, io, LabError, Result};

impl Lab {
    pub(super) fn start_agents(&mut self, opts: &Options) -> Result<()> {
        let nodes: Vec<String> = self.plan.topo.nodes.iter().map(|n| n.name.clone()).collect();
        for n in &nodes {
            self.start_agent(n, &opts.knit_exe)?;
        }
        Ok(())
    }

    /// Starts node `node`'s agent (`knit node run`) and waits for its CIDR file.
    pub(crate) fn start_agent(&mut self, node: &str, knit_exe: &Path) -> Result<()> {
        let ep = self.plan.etcd.clone().ok_or_else(|| LabError::Invalid("no etcd endpoint".into()))?;
        let topo = self.plan.topo.clone();
        for n in topo.nodes.iter().filter(|n| n.name == node) {
            let gw = topo
                .fabric_gateway_for(n.ip.addr())
                .map(|g| g.addr())
                .ok_or_else(|| LabError::Invalid(format!("node {}: no fabric subnet", n.name)))?;
            let ipam_file = self.plan.dir.join(format!("ipam-{}.json", n.name));
            let conf = self.plan.overlay_conflist(&n.name);
            fs::write(&ipam_file, serde_json::to_vec_pretty(&conf["plugins"][0]["ipam"]).unwrap_or_default())
                .map_err(io("write", &ipam_file))?;
            let bird_dir = self.plan.bird_dir(&n.name);
            fs::create_dir_all(&bird_dir).map_err(io("create BIRD directory", &bird_dir))?;
            let log = self.plan.dir.join(format!("agent-{}.log", n.name));
            let out = fs::File::create(&log).map_err(io("create log", &log))?;
            let err = out.try_clone().map_err(io("create log", &log))?;
            let mut cmd = Command::new(knit_exe);
            cmd.args([
                "node",
                "run",
                "--etcd-endpoints",
                &ep,
                "--node",
                &n.name,
                "--node-ip",
                &n.ip.addr().to_string(),
            ])
            .args(["--as", &topo.node_asn.to_string(), "--tor", &gw.to_string(), "--tor-as", &topo.tor_asn.to_string()])
            .arg("--bird-dir")
            .arg(&bird_dir)
            .arg("--ipam-config")
            .arg(&ipam_file)
            .arg("--cidr-file")
            .arg(self.plan.cidr_file(&n.name))
            .args(["--lease-ttl", "4", "--interval-ms", "200"])
            .env("KNIT_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
            let ns = self.netns(&n.name)?;
            let child = ns.spawn(&mut cmd).map_err(host(format!("{}: start the node agent", n.name)))?;
            self.state.pids.push(child.id());
            self.children.push(child);
        }
        // Pods need the coordinator's CIDR file, which the agents write from etcd.
        let deadline = Instant::now() + Duration::from_secs(15);
        for n in topo.nodes.iter().filter(|n| n.name == node) {
            let f = self.plan.cidr_file(&n.name);
            while !f.exists() {
                if let Some(dead) = self.dead_child() {
                    return Err(LabError::Invalid(format!(
                        "a node agent exited: {dead} (logs in {})",
                        self.plan.dir.display()
                    )));
                }
                if Instant::now() > deadline {
                    return Err(LabError::Invalid(format!(
                        "node agent of {} wrote no {} (log in {})",
                        n.name,
                        f.display(),
                        self.plan.dir.display()
                    )));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }
}
