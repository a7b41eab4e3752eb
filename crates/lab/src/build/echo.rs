//! The pods' echo servers: threads of this process (the matrix), or `knit-lab lab serve`
//! processes inside each pod (`knit lab up`, which returns once every one listens).

use std::fs;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{Lab, Serve};
use crate::error::{host, io, LabError, Result};
use crate::serve::EchoServer;

impl Lab {
    pub(crate) fn start_servers(&mut self, serve: &Serve, only_node: Option<&str>) -> Result<()> {
        let port = self.plan.topo.echo_port;
        let pods: Vec<String> = self
            .state
            .pods
            .values()
            .filter(|p| only_node.is_none_or(|o| o == p.node))
            .map(|p| p.name.clone())
            .collect();
        for pod in pods {
            let ns = self.netns(&pod)?;
            match serve {
                Serve::Nothing => {}
                Serve::InProcess => {
                    let server = ns
                        .run(|| EchoServer::bind(&pod, port))
                        .map_err(host(format!("enter pod {pod}")))?
                        .map_err(|e| LabError::Invalid(format!("pod {pod}: echo server on port {port}: {e}")))?;
                    let h = server.spawn().map_err(|e| LabError::Invalid(format!("pod {pod}: echo server: {e}")))?;
                    self.servers.push(h);
                }
                Serve::Processes { exe } => {
                    let log = self.plan.dir.join(format!("serve-{pod}.log"));
                    let out = fs::File::create(&log).map_err(io("create log", &log))?;
                    let err = out.try_clone().map_err(io("create log", &log))?;
                    let mut cmd = Command::new(exe);
                    cmd.args(["lab", "serve", "--pod", &pod, "--port", &port.to_string()])
                        .stdin(Stdio::null())
                        .stdout(out)
                        .stderr(err)
                        .process_group(0);
                    let child = ns.spawn(&mut cmd).map_err(host(format!("pod {pod}: start echo server")))?;
                    self.state.pids.push(child.id());
                    self.children.push(child);
                }
            }
        }
        if matches!(serve, Serve::Processes { .. }) {
            // Wait until every server listens, so `up` returns a usable lab.
            let deadline = Instant::now() + Duration::from_secs(5);
            for p in self.state.pods.values().filter(|p| only_node.is_none_or(|o| o == p.node)) {
                let Some(ip) = p.primary_ip() else { continue };
                let ns = self.netns(&p.name)?;
                let dst = std::net::SocketAddr::new(ip, port);
                loop {
                    let ok =
                        ns.run(|| crate::serve::probe_tcp(dst, Duration::from_millis(200)).is_ok()).unwrap_or(false);
                    if ok {
                        break;
                    }
                    if Instant::now() > deadline {
                        return Err(LabError::Invalid(format!(
                            "pod {}: echo server did not start (see {})",
                            p.name,
                            self.plan.dir.display()
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        Ok(())
    }
}
