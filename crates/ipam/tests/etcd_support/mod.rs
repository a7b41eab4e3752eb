//! A real etcd (Debian etcd-server, `/usr/bin/etcd`) for tests: 127.0.0.1, random free ports,
//! a temporary data dir (on /dev/shm when present: etcd fsyncs every commit), killed and waited
//! for on drop, also when the test panics; `PR_SET_PDEATHSIG` kills it if the test process dies.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ETCD: &str = "/usr/bin/etcd";

pub struct Etcd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pub client_port: u16,
    pub peer_port: u16,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn temp_root() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

impl Etcd {
    /// Start an etcd and wait until it answers `/health`.
    pub fn start() -> Etcd {
        assert!(
            Path::new(ETCD).exists(),
            "{ETCD} is missing: apt-get install etcd-server (the etcd store tests need a real etcd)"
        );
        for _ in 0..5 {
            let mut e = Etcd {
                child: None,
                dir: tempfile::Builder::new().prefix("knit-etcd-").tempdir_in(temp_root()).unwrap(),
                client_port: free_port(),
                peer_port: free_port(),
            };
            if e.client_port == e.peer_port {
                continue;
            }
            e.spawn();
            if e.wait_ready(Duration::from_secs(15)) {
                return e;
            }
            e.kill();
        }
        panic!("etcd did not start (see the etcd.log of the last attempt)");
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn spawn(&mut self) {
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("etcd.log")).unwrap();
        let mut cmd = Command::new(ETCD);
        cmd.args(["--name", "knit-test"])
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("knit-test={peer}")])
            .args(["--initial-cluster-state", "new"])
            .args(["--logger", "zap", "--log-outputs", "stderr", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // SAFETY: prctl is async-signal-safe; no allocation happens in the child before exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        self.child = Some(cmd.spawn().expect("spawn etcd"));
    }

    /// Whether `/health` says true within `limit`.
    pub fn wait_ready(&mut self, limit: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(_)) = c.try_wait() {
                    return false;
                }
            }
            if self.healthy() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn healthy(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.client_port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
            return false;
        }
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.contains("\"health\":\"true\"") || out.contains("\"health\": \"true\"")
    }

    /// SIGKILL and reap (idempotent).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again on the same ports and data.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
        assert!(self.wait_ready(Duration::from_secs(15)), "etcd did not restart");
    }

    pub fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}
