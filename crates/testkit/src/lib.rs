//! Helpers for knit's integration tests. Everything runs inside namespaces made by a
//! [`TestNet`]; nothing here touches the root namespace.
//!
//! - [`bin`]: the workspace's built binaries (`scripts/test.sh` builds them before the tests);
//! - [`Cni`]: runs a conflist through `knit cni` inside a node namespace, as containerd would;
//! - [`tcp_echo`]/[`tcp_probe`], [`udp_echo`]/[`udp_probe`], [`ping`]: real packets;
//! - [`Fabric`]: a switch namespace with a bridge, and node namespaces plugged into it;
//! - [`require`]: skip a test that can't run its real parts, except under `CI=true`, where it fails;
//! - [`etcd`]: a real etcd inside a test's namespace.

pub mod etcd;
pub mod require;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use ipnet::IpNet;
pub use knit_host::testing::TestNet;
use knit_host::{link, Handle, Netns};
use serde_json::Value;

/// The directory holding the workspace's binaries: `$KNIT_BIN_DIR`, else the profile directory
/// the running test binary was built into (`target/<profile>/deps/<test>` → `target/<profile>`).
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("KNIT_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("test binary has a parent").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// A built binary of the workspace; panics with the fix when it is missing.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        p.display()
    );
    p
}

/// CNI_PATH for tests: knit's plugins first, then Debian's reference plugins.
pub fn cni_path() -> String {
    format!("{}:/usr/lib/cni", bin_dir().display())
}

/// A unique scratch directory, removed on drop.
pub struct Scratch {
    pub path: PathBuf,
}

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("knit-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create scratch dir");
        Scratch { path }
    }

    /// Writes a file under the scratch dir and returns its path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.path.join(name);
        std::fs::write(&p, contents).expect("write scratch file");
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Runs `knit cni` for one conflist inside a node namespace.
pub struct Cni<'a> {
    pub tn: &'a TestNet,
    pub node: &'a Netns,
    pub conflist: PathBuf,
    pub state_dir: PathBuf,
}

/// The outcome of one `knit cni` call: exit status and the JSON it printed.
#[derive(Debug)]
pub struct CniOutcome {
    pub ok: bool,
    pub json: Value,
    pub stderr: String,
}

impl CniOutcome {
    /// The result, or a panic showing the CNI error.
    pub fn unwrap(self) -> Value {
        assert!(self.ok, "knit cni failed: {}\nstderr: {}", self.json, self.stderr);
        self.json
    }

    /// The CNI error code, or a panic if the call succeeded.
    pub fn err_code(&self) -> u64 {
        assert!(!self.ok, "expected a CNI error, got {}", self.json);
        self.json["code"].as_u64().expect("error JSON has a code")
    }
}

impl<'a> Cni<'a> {
    pub fn new(tn: &'a TestNet, node: &'a Netns, conflist: PathBuf, state_dir: PathBuf) -> Cni<'a> {
        Cni { tn, node, conflist, state_dir }
    }

    /// `knit cni <verb>` for `pod` with container ID `cid` and CNI_ARGS `args`.
    pub fn call(&self, verb: &str, pod: &Netns, ifname: &str, cid: &str, args: &str) -> CniOutcome {
        let netns = pod.path().map(|p| p.display().to_string()).unwrap_or_default();
        self.call_netns(verb, &netns, ifname, cid, args)
    }

    /// Like [`Cni::call`] with a netns path that may not exist (DEL after the pod is gone).
    pub fn call_netns(&self, verb: &str, netns: &str, ifname: &str, cid: &str, args: &str) -> CniOutcome {
        let knit = bin("knit");
        let conflist = self.conflist.display().to_string();
        let state = self.state_dir.display().to_string();
        let cni_path = cni_path();
        let out = self
            .tn
            .exec(
                self.node,
                &[
                    knit.to_str().expect("utf-8 path"),
                    "cni",
                    verb,
                    "--conflist",
                    &conflist,
                    "--netns",
                    netns,
                    "--ifname",
                    ifname,
                    "--container-id",
                    cid,
                    "--args",
                    args,
                    "--state-dir",
                    &state,
                    "--cni-path",
                    &cni_path,
                ],
            )
            .expect("spawn knit");
        outcome(out)
    }

    pub fn add(&self, pod: &Netns, ifname: &str, cid: &str, args: &str) -> CniOutcome {
        self.call("add", pod, ifname, cid, args)
    }

    pub fn del(&self, pod: &Netns, ifname: &str, cid: &str, args: &str) -> CniOutcome {
        self.call("del", pod, ifname, cid, args)
    }

    pub fn check(&self, pod: &Netns, ifname: &str, cid: &str, args: &str) -> CniOutcome {
        self.call("check", pod, ifname, cid, args)
    }
}

fn outcome(out: Output) -> CniOutcome {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = if stdout.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&stdout).unwrap_or(Value::String(stdout.to_string()))
    };
    CniOutcome { ok: out.status.success(), json, stderr: String::from_utf8_lossy(&out.stderr).into_owned() }
}

/// The first IP address of a CNI result.
pub fn result_ip(result: &Value) -> IpAddr {
    let a = result["ips"][0]["address"].as_str().expect("result has ips[0].address");
    a.parse::<IpNet>().expect("address is a CIDR").addr()
}

/// Starts a TCP echo server in `ns` on `addr` (the socket is made inside the namespace, then
/// served from an ordinary thread). It runs until the process ends.
pub fn tcp_echo(ns: &Netns, addr: SocketAddr) {
    let listener = ns.run(move || TcpListener::bind(addr)).expect("enter ns").expect("bind tcp echo");
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut c) = conn else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 || c.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
}

/// Connects from `ns` to `dst`, sends a line and expects it echoed within 2 s.
pub fn tcp_probe(ns: &Netns, dst: SocketAddr) -> Result<(), String> {
    let conn = ns
        .run(move || TcpStream::connect_timeout(&dst, Duration::from_secs(2)))
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("connect {dst}: {e}"))?;
    echo_check(conn, dst)
}

fn echo_check(mut c: TcpStream, dst: SocketAddr) -> Result<(), String> {
    c.set_read_timeout(Some(Duration::from_secs(2))).map_err(|e| e.to_string())?;
    c.write_all(b"knit\n").map_err(|e| format!("send to {dst}: {e}"))?;
    let mut buf = [0u8; 5];
    c.read_exact(&mut buf).map_err(|e| format!("read from {dst}: {e}"))?;
    if &buf == b"knit\n" {
        Ok(())
    } else {
        Err(format!("{dst} echoed {buf:?}"))
    }
}

/// Starts a UDP echo server in `ns` on `addr`.
pub fn udp_echo(ns: &Netns, addr: SocketAddr) {
    let sock = ns.run(move || UdpSocket::bind(addr)).expect("enter ns").expect("bind udp echo");
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, peer)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(&buf[..n], peer);
        }
    });
}

/// Sends a datagram from `ns` to `dst` and expects it back from `dst` within 2 s.
pub fn udp_probe(ns: &Netns, dst: SocketAddr) -> Result<(), String> {
    let any: SocketAddr = if dst.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("literal");
    let sock = ns.run(move || UdpSocket::bind(any)).map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(2))).map_err(|e| e.to_string())?;
    sock.send_to(b"knit", dst).map_err(|e| format!("send to {dst}: {e}"))?;
    let mut buf = [0u8; 16];
    let (n, from) = sock.recv_from(&mut buf).map_err(|e| format!("no reply from {dst}: {e}"))?;
    if from != dst || &buf[..n] != b"knit" {
        return Err(format!("reply from {from}, not {dst}"));
    }
    Ok(())
}

/// One ICMP echo from `ns` to `ip` (1 s timeout).
pub fn ping(tn: &TestNet, ns: &Netns, ip: IpAddr) -> bool {
    let ip = ip.to_string();
    tn.exec(ns, &["ping", "-c", "1", "-W", "1", &ip]).map(|o| o.status.success()).unwrap_or(false)
}

/// Runs `ip ARGS…` in `ns` and panics on failure (test set-up only).
pub fn ip(tn: &TestNet, ns: &Netns, args: &[&str]) -> String {
    let mut argv = vec!["ip"];
    argv.extend_from_slice(args);
    let out = tn.exec_ok(ns, &argv).unwrap_or_else(|e| panic!("ip {}: {e}", args.join(" ")));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A switch namespace with a bridge `br0` holding the gateway addresses, and node namespaces
/// plugged into it through veth pairs (`eth0` in the node). Nodes get a default route via the
/// first gateway: Calico-style proxy ARP only answers for destinations the node can route.
pub struct Fabric<'a> {
    pub tn: &'a TestNet,
    pub ns: Netns,
    ports: std::cell::Cell<u32>,
}

impl<'a> Fabric<'a> {
    /// `gateways` are CIDRs put on the bridge, e.g. `172.16.0.1/16`.
    pub fn new(tn: &'a TestNet, gateways: &[&str]) -> Fabric<'a> {
        let ns = tn.pod("fabric").expect("fabric ns");
        ip(tn, &ns, &["link", "add", "br0", "type", "bridge"]);
        for g in gateways {
            ip(tn, &ns, &["addr", "add", g, "dev", "br0"]);
        }
        ip(tn, &ns, &["link", "set", "br0", "up"]);
        tn.exec_ok(&ns, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]).expect("fabric forwarding");
        Fabric { tn, ns, ports: std::cell::Cell::new(0) }
    }

    /// Creates a node namespace `name` with `eth0` at `addr` (CIDR) and a default route via `gw`.
    pub fn node(&self, name: &str, addr: &str, gw: &str) -> Netns {
        let node = self.tn.pod(name).expect("node ns");
        let n = self.ports.get();
        self.ports.set(n + 1);
        let port = format!("p{n}");
        self.tn.link(&self.ns, &port, &node, "eth0").expect("node uplink");
        ip(self.tn, &self.ns, &["link", "set", &port, "master", "br0"]);
        ip(self.tn, &node, &["addr", "add", addr, "dev", "eth0"]);
        ip(self.tn, &node, &["route", "add", "default", "via", gw]);
        self.tn.exec_ok(&node, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]).expect("node forwarding");
        node
    }
}

/// The links of a namespace whose names start with `prefix`.
pub fn links_with_prefix(ns: &Netns, prefix: &str) -> Vec<String> {
    let h = Handle::in_netns(ns).expect("netlink");
    link::list(&h).expect("list links").into_iter().map(|l| l.name).filter(|n| n.starts_with(prefix)).collect()
}

/// True when `path` exists (a netns path, a state file).
pub fn exists(path: &Path) -> bool {
    path.exists()
}
