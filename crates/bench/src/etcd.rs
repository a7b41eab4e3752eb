//! A throwaway etcd (Debian's etcd-server) for `knit bench ipam`'s etcd store rows: started
//! inside the bench's node namespace on 127.0.0.1 (a private loopback, so the standard ports
//! are free), data under /dev/shm when it exists (etcd syncs every commit; on this VM's disk
//! the figures would measure the disk), killed and waited for on drop.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use knit_host::Netns;

use crate::{Error, Result};

/// Debian's etcd binary.
pub const ETCD: &str = "/usr/bin/etcd";
/// The client endpoint inside the namespace.
pub const ENDPOINT: &str = "http://127.0.0.1:2379";

pub struct EtcdServer {
    child: Child,
    dir: PathBuf,
}

impl EtcdServer {
    /// Starts etcd in `ns` and waits until it reports healthy; `Ok(None)` when etcd is not
    /// installed. `tag` names the data directory.
    pub fn start(ns: &Netns, tag: &str) -> Result<Option<EtcdServer>> {
        if !Path::new(ETCD).exists() {
            return Ok(None);
        }
        let root = if Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
        let dir = root.join(format!("knit-bench-etcd-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| Error::Setup(format!("creating {}: {e}", dir.display())))?;
        let log = std::fs::File::create(dir.join("etcd.log")).map_err(|e| Error::Setup(format!("etcd log: {e}")))?;
        let log2 = log.try_clone().map_err(|e| Error::Setup(format!("etcd log: {e}")))?;
        let mut cmd = Command::new(ETCD);
        cmd.args(["--name", "knit-bench", "--data-dir"])
            .arg(dir.join("data"))
            .args(["--listen-client-urls", ENDPOINT, "--advertise-client-urls", ENDPOINT])
            .args([
                "--listen-peer-urls",
                "http://127.0.0.1:2380",
                "--initial-advertise-peer-urls",
                "http://127.0.0.1:2380",
            ])
            .args(["--initial-cluster", "knit-bench=http://127.0.0.1:2380", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        let child = ns.spawn(&mut cmd).map_err(|e| Error::Setup(format!("starting etcd: {e}")))?;
        let mut server = EtcdServer { child, dir };
        server.wait_healthy(ns, Duration::from_secs(20))?;
        Ok(Some(server))
    }

    fn wait_healthy(&mut self, ns: &Netns, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let healthy = ns
                .run(|| -> bool {
                    let Ok(mut s) = TcpStream::connect_timeout(
                        &"127.0.0.1:2379".parse().expect("literal address"),
                        Duration::from_millis(200),
                    ) else {
                        return false;
                    };
                    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                    let mut body = String::new();
                    s.write_all(b"GET /health HTTP/1.0\r\n\r\n").is_ok()
                        && s.read_to_string(&mut body).is_ok()
                        && body.contains("\"health\":\"true\"")
                })
                .map_err(|e| Error::Setup(format!("entering the bench namespace: {e}")))?;
            if healthy {
                return Ok(());
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                return Err(Error::Setup(format!("etcd exited ({st}); log: {}", self.dir.join("etcd.log").display())));
            }
            if Instant::now() > deadline {
                return Err(Error::Setup(format!(
                    "etcd not healthy after {within:?}; log: {}",
                    self.dir.join("etcd.log").display()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
