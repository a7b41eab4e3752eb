//! Cluster mode's etcd: one etcd in the fabric namespace, and the cluster's CIDRs set in it
//! (what `knit cluster set` does).

use std::fs;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::Lab;
use crate::error::{host, io, LabError, Result};

impl Lab {
    pub(super) fn start_etcd(&mut self) -> Result<()> {
        let ep = self.plan.etcd.clone().ok_or_else(|| LabError::Invalid("no etcd endpoint".into()))?;
        let data = self.plan.dir.join("etcd");
        let log = self.plan.dir.join("etcd.log");
        let out = fs::File::create(&log).map_err(io("create log", &log))?;
        let err = out.try_clone().map_err(io("create log", &log))?;
        let mut cmd = Command::new("etcd");
        cmd.args(["--name", "knit-lab", "--data-dir"])
            .arg(&data)
            .args(["--listen-client-urls", &ep, "--advertise-client-urls", &ep])
            .args([
                "--listen-peer-urls",
                "http://127.0.0.1:2380",
                "--initial-advertise-peer-urls",
                "http://127.0.0.1:2380",
            ])
            .args(["--initial-cluster", "knit-lab=http://127.0.0.1:2380", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let fabric = self.netns(crate::topology::FABRIC_NAME)?.try_clone().map_err(host("fabric namespace"))?;
        let child = fabric.spawn(&mut cmd).map_err(host("fabric: start etcd"))?;
        self.state.pids.push(child.id());
        self.children.push(child);
        // Set the cluster's CIDRs (what `knit cluster set` does), from inside the fabric.
        let cluster = knit_agent::registry::ClusterConfig {
            overlay_pod_cidr: vec![self.plan.topo.overlay_cidr],
            service_cidr: vec![self.plan.topo.service_cidr],
            hijack_cidr: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let r = fabric
                .run(|| -> std::result::Result<(), String> {
                    let mut reg = knit_agent::registry::Registry::connect(
                        std::slice::from_ref(&ep),
                        &Default::default(),
                        knit_agent::registry::DEFAULT_PREFIX,
                        Duration::from_secs(2),
                    )
                    .map_err(|e| e.to_string())?;
                    reg.set_cluster_config(&cluster).map_err(|e| e.to_string())
                })
                .map_err(host("enter fabric"))?;
            match r {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    return Err(LabError::Invalid(format!(
                        "etcd at {ep} did not come up: {e} (log: {})",
                        log.display()
                    )))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
            if let Some(dead) = self.dead_child() {
                return Err(LabError::Invalid(format!("etcd exited: {dead} (log: {})", log.display())));
            }
        }
    }
}
