//! A real etcd (Debian `etcd-server`) inside a test's own namespace, on its loopback: nothing
//! outside the namespace can reach it, and its fixed ports can't clash with another test's.
//! Killed and waited for on drop (also when the test panics), and with the namespace's other
//! processes when the [`crate::TestNet`] drops. (No `PR_SET_PDEATHSIG`: it fires when the
//! thread that spawned the child ends, and `Netns::spawn` spawns from a short-lived thread.)

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use knit_host::Netns;

use crate::Scratch;

/// The client URL inside the namespace.
pub const ENDPOINT: &str = "http://127.0.0.1:2379";

/// An etcd running in a namespace.
pub struct Etcd {
    child: Option<Child>,
    /// Its data directory and log (`etcd.log`), removed on drop.
    pub dir: Scratch,
}

impl Etcd {
    /// Starts etcd in `ns` (whose `lo` is up) and waits until it answers `/health`; `None` (after
    /// [`crate::require::skip`]) when etcd is not installed.
    pub fn start_in(ns: &Netns) -> Option<Etcd> {
        let etcd = crate::require::program("etcd", "etcd-server")?;
        let dir = Scratch::new("etcd");
        let log = std::fs::File::create(dir.path.join("etcd.log")).expect("etcd log");
        let mut cmd = Command::new(etcd);
        cmd.arg("--name")
            .arg("knit-test")
            .arg("--data-dir")
            .arg(dir.path.join("data"))
            .args(["--listen-client-urls", ENDPOINT, "--advertise-client-urls", ENDPOINT])
            .args(["--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls"])
            .args(["http://127.0.0.1:2380", "--initial-cluster", "knit-test=http://127.0.0.1:2380"])
            .args(["--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("etcd log"))
            .stderr(log);
        let child = ns.spawn(&mut cmd).expect("spawn etcd");
        let mut e = Etcd { child: Some(child), dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ns.run(healthy).unwrap_or(false) {
            if let Some(Ok(Some(status))) = e.child.as_mut().map(Child::try_wait) {
                panic!("etcd exited ({status}); log: {}", e.log());
            }
            assert!(Instant::now() < deadline, "etcd did not become healthy; log: {}", e.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(e)
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path.join("etcd.log")).unwrap_or_default()
    }
}

/// Whether etcd answers `/health` with true (run inside its namespace).
fn healthy() -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", 2379)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
        return false;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.contains("\"health\":\"true\"") || out.contains("\"health\": \"true\"")
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
