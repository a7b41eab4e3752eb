//! ADD probes with real namespaces and packets: a bridge namespace ("switch", holding the
//! gateway address) with a "holder" namespace that already uses an address of the pool and
//! answers ARP for it, and a "pod" namespace whose `eth0` is the interface knit-ipam probes
//! from. The knit-ipam binary runs as a CNI plugin (CNI_NETNS = the pod namespace); the last
//! test goes through Debian's macvlan plugin via `knit cni add`.
//!
//! Needs root and the built binaries (`cargo build --workspace --bins`).

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};
// Upper bounds are loose on purpose: the suite runs on 2 busy cores. A probe takes about 1 s,
// so "under 900 ms" still tells that none ran.
use std::time::{Duration, Instant};

use knit_host::arp::{ArpSocket, Interface, OP_REQUEST};
use knit_host::{guard, link, Handle, Netns};
use knit_ipam::{Ipam, IpamConfig};
use knit_testkit::{bin, ip, result_ip, Cni, Fabric, Scratch, TestNet};
use serde_json::Value;

const HELD: &str = "10.77.0.10";

/// switch (br0, 10.77.0.1/24) + holder (eth0 10.77.0.10/24) + pod (eth0, no address).
struct Lan<'a> {
    tn: &'a TestNet,
    fabric: Fabric<'a>,
    holder: Netns,
    pod: Netns,
    dir: Scratch,
}

impl<'a> Lan<'a> {
    fn new(tn: &'a TestNet) -> Lan<'a> {
        let fabric = Fabric::new(tn, &["10.77.0.1/24"]);
        let holder = tn.pod("holder").expect("holder ns");
        let pod = tn.pod("pod").expect("pod ns");
        for (port, ns) in [("ph", &holder), ("pp", &pod)] {
            tn.link(&fabric.ns, port, ns, "eth0").expect("veth");
            ip(tn, &fabric.ns, &["link", "set", port, "master", "br0"]);
        }
        ip(tn, &holder, &["addr", "add", &format!("{HELD}/24"), "dev", "eth0"]);
        Lan { tn, fabric, holder, pod, dir: Scratch::new("ipam-probe") }
    }

    /// The ipam object: a 4-address pool whose next free address is the holder's.
    fn ipam(&self, extra: &str) -> String {
        format!(
            r#"{{"type":"knit-ipam","node":"n1","dataDir":"{}","pools":[{{"name":"lan","cidr":"10.77.0.0/24","rangeStart":"10.77.0.10","rangeEnd":"10.77.0.13","gateway":"10.77.0.1","blocks":false{extra}}}]}}"#,
            self.dir.path.join("ipam").display()
        )
    }

    fn netconf(&self, extra: &str) -> String {
        format!(r#"{{"cniVersion":"1.0.0","name":"lan","type":"none","ipam":{}}}"#, self.ipam(extra))
    }

    fn store(&self) -> Ipam {
        let cfg = IpamConfig::parse(self.ipam("").as_bytes()).expect("config");
        Ipam::open(cfg).expect("open store")
    }

    /// Runs the knit-ipam binary for `cid` with CNI_NETNS = the pod. Returns (ok, JSON, time).
    fn plugin(&self, verb: &str, cid: &str, extra: &str) -> (bool, Value, Duration) {
        let netns = self.pod.path().expect("named pod ns").display().to_string();
        let (gk, gv) = guard::child_env().expect("guard env");
        let mut cmd = Command::new(bin("knit-ipam"));
        cmd.env_clear()
            .env("CNI_COMMAND", verb)
            .env("CNI_CONTAINERID", cid)
            .env("CNI_NETNS", &netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/usr/lib/cni")
            .env(gk, gv)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let start = Instant::now();
        let mut child = self.tn.host().spawn(&mut cmd).expect("spawn knit-ipam");
        child.stdin.take().expect("stdin").write_all(self.netconf(extra).as_bytes()).expect("write netconf");
        let out = child.wait_with_output().expect("wait knit-ipam");
        let took = start.elapsed();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let json = serde_json::from_str(&stdout)
            .unwrap_or(Value::String(format!("{stdout} / stderr: {}", String::from_utf8_lossy(&out.stderr))));
        (out.status.success(), json, took)
    }

    fn add(&self, cid: &str, extra: &str) -> (IpAddr, Duration) {
        let (ok, json, took) = self.plugin("ADD", cid, extra);
        assert!(ok, "ADD {cid} failed: {json}");
        (result_ip(&json), took)
    }

    fn pod_link_up(&self) -> bool {
        let h = Handle::in_netns(&self.pod).expect("netlink");
        link::require(&h, "eth0").expect("pod eth0").up
    }
}

fn v4(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

#[test]
fn conflict_probe_skips_and_marks_the_used_address() {
    let tn = TestNet::new("kprb").expect("testnet");
    let lan = Lan::new(&tn);
    let probe = r#","detectIPConflict":true"#;

    let (got, took) = lan.add("c1", probe);
    assert_eq!(got, v4("10.77.0.11"), "the holder's {HELD} is skipped");
    // One quick conflict answer, then a full probe (3 tries, 1 s) of the free address.
    eprintln!("ADD with one conflict took {took:?}");
    assert!(took >= Duration::from_millis(900) && took < Duration::from_millis(3000), "{took:?}");

    // The conflicting address stays marked: an ADD without probes does not get it either.
    let store = lan.store();
    let marker = store.lookup("conflict:10.77.0.10", "eth0").expect("lookup");
    assert_eq!(marker.map(|r| r.ips[0].address.addr()), Some(v4(HELD)), "conflict marker");
    let (got, took) = lan.add("c2", "");
    assert_eq!(got, v4("10.77.0.12"));
    assert!(took < Duration::from_millis(900), "no probe without the option: {took:?}");

    // `knit ipam release --container-id conflict:10.77.0.10` frees it again.
    assert_eq!(store.release("conflict:10.77.0.10", "eth0").expect("release"), vec![v4(HELD)]);
    let (got, _) = lan.add("c3", "");
    assert_eq!(got, v4(HELD), "released marker: the address is handed out again");

    // DEL of c1 and a fresh probing ADD: 10.77.0.10 (c3) and .12 (c2) are taken, .11 is
    // free and nobody answers for it.
    let (ok, json, _) = lan.plugin("DEL", "c1", probe);
    assert!(ok, "DEL: {json}");
    let (got, _) = lan.add("c4", probe);
    assert_eq!(got, v4("10.77.0.11"));
}

#[test]
fn without_the_option_the_used_address_is_handed_out() {
    let tn = TestNet::new("kprb").expect("testnet");
    let lan = Lan::new(&tn);
    let (got, took) = lan.add("c1", "");
    assert_eq!(got, v4(HELD));
    assert!(took < Duration::from_millis(900), "{took:?}");
}

#[test]
fn probe_of_a_free_address_takes_at_most_a_second() {
    let tn = TestNet::new("kprb").expect("testnet");
    let lan = Lan::new(&tn);
    ip(&tn, &lan.holder, &["addr", "del", &format!("{HELD}/24"), "dev", "eth0"]);
    let (got, took) = lan.add("c1", r#","detectIPConflict":true"#);
    assert_eq!(got, v4(HELD));
    eprintln!("ADD with a free-address probe took {took:?}");
    assert!(took >= Duration::from_millis(950), "3 tries over 1 s: {took:?}");
    assert!(took < Duration::from_millis(3000), "{took:?}");
}

#[test]
fn gateway_probe() {
    let tn = TestNet::new("kprb").expect("testnet");
    let lan = Lan::new(&tn);
    // The switch answers for 10.77.0.1: ADD succeeds quickly.
    let (got, took) = lan.add("c1", r#","detectGateway":true"#);
    assert_eq!(got, v4(HELD));
    assert!(took < Duration::from_millis(900), "answered gateway: {took:?}");

    // Nobody answers for the gateway: code 11 within about a second, nothing left allocated.
    ip(&tn, &lan.fabric.ns, &["addr", "del", "10.77.0.1/24", "dev", "br0"]);
    let (ok, json, took) = lan.plugin("ADD", "c2", r#","detectGateway":true"#);
    assert!(!ok, "ADD must fail: {json}");
    assert_eq!(json["code"], 11, "{json}");
    let msg = json["msg"].as_str().unwrap_or_default();
    assert!(msg.contains("gateway 10.77.0.1") && msg.contains("did not answer"), "{msg}");
    eprintln!("failing gateway probe took {took:?}");
    assert!(took < Duration::from_millis(3000), "{took:?}");
    assert!(lan.store().lookup("c2", "eth0").expect("lookup").is_none(), "c2 released");
}

#[test]
fn link_state_is_restored() {
    let tn = TestNet::new("kprb").expect("testnet");
    let lan = Lan::new(&tn);
    let probe = r#","detectIPConflict":true"#;
    ip(&tn, &lan.pod, &["link", "set", "eth0", "down"]);
    assert!(!lan.pod_link_up());
    // The probe brings eth0 up to send, finds the conflict, and puts eth0 back down.
    let (got, _) = lan.add("c1", probe);
    assert_eq!(got, v4("10.77.0.11"));
    assert!(!lan.pod_link_up(), "eth0 was down before the ADD and must be down after");
    // An interface that was up stays up.
    ip(&tn, &lan.pod, &["link", "set", "eth0", "up"]);
    let (got, _) = lan.add("c2", probe);
    assert_eq!(got, v4("10.77.0.12"));
    assert!(lan.pod_link_up());
}

#[test]
fn missing_interface_is_not_probed() {
    let tn = TestNet::new("kprb").expect("testnet");
    let lan = Lan::new(&tn);
    ip(&tn, &lan.pod, &["link", "del", "eth0"]);
    let (got, took) = lan.add("c1", r#","detectIPConflict":true,"detectGateway":true"#);
    assert_eq!(got, v4(HELD), "no interface yet (routed veth): no probe");
    assert!(took < Duration::from_millis(900), "{took:?}");
}

#[test]
fn gratuitous_arp_is_sent() {
    let tn = TestNet::new("kprb").expect("testnet");
    let lan = Lan::new(&tn);
    let iface = Interface::open(&lan.holder, "eth0").expect("open").expect("holder eth0");
    let sock = ArpSocket::open(&lan.holder, &iface).expect("holder ARP socket");
    let pod_mac = Interface::open(&lan.pod, "eth0").expect("open").expect("pod eth0").mac().expect("mac");
    let want = Ipv4Addr::new(10, 77, 0, 11);
    std::thread::scope(|s| {
        let listener = s.spawn(|| {
            let deadline = Instant::now() + Duration::from_secs(6);
            let mut probes = 0;
            let mut announced = None;
            while let Some(p) = sock.recv(deadline).expect("recv") {
                if p.sender_mac != pod_mac || p.op != OP_REQUEST {
                    continue;
                }
                if p.sender_ip.is_unspecified() {
                    probes += 1;
                } else if p.sender_ip == p.target_ip {
                    announced = Some(p.sender_ip);
                    break;
                }
            }
            (probes, announced)
        });
        let (got, _) = lan.add("c1", r#","detectIPConflict":true"#);
        assert_eq!(got, IpAddr::V4(want));
        let (probes, announced) = listener.join().expect("listener");
        // .10: answered at the first probe; .11: 3 probes.
        assert!(probes >= 4, "probes seen by the holder: {probes}");
        assert_eq!(announced, Some(want), "gratuitous ARP for the new address");
    });
}

/// Debian's macvlan creates eth0 in the pod (down) and then calls knit-ipam: the conflict
/// probe runs from the macvlan's own MAC through the node's uplink.
#[test]
fn macvlan_end_to_end_skips_the_conflict() {
    let tn = TestNet::new("kprb").expect("testnet");
    let fabric = Fabric::new(&tn, &["10.88.0.1/24"]);
    let node = fabric.node("node", "10.88.0.2/24", "10.88.0.1");
    let _holder = fabric.node("holder", "10.88.0.10/24", "10.88.0.1");
    let pod = tn.pod("pod").expect("pod ns");
    let dir = Scratch::new("ipam-probe-macvlan");
    let ipam = format!(
        r#"{{"type":"knit-ipam","node":"n1","dataDir":"{}","detectIPConflict":true,"detectGateway":true,"pools":[{{"name":"underlay","cidr":"10.88.0.0/24","rangeStart":"10.88.0.10","rangeEnd":"10.88.0.20","gateway":"10.88.0.1","blocks":false}}]}}"#,
        dir.path.join("ipam").display()
    );
    let conflist = dir.write(
        "underlay.conflist",
        &format!(
            r#"{{"cniVersion":"1.0.0","name":"underlay","plugins":[{{"type":"macvlan","master":"eth0","mode":"bridge","ipam":{ipam}}}]}}"#
        ),
    );
    let cni = Cni::new(&tn, &node, conflist, dir.path.join("state"));
    let start = Instant::now();
    let res = cni.add(&pod, "eth0", "m1", "").unwrap();
    eprintln!("macvlan ADD with probes took {:?}", start.elapsed());
    assert_eq!(result_ip(&res), v4("10.88.0.11"), "{res}");
    assert!(knit_testkit::ping(&tn, &pod, v4("10.88.0.10")), "the pod reaches the holder");
    let cfg = IpamConfig::parse(ipam.as_bytes()).expect("config");
    let store = Ipam::open(cfg).expect("store");
    assert!(store.lookup("conflict:10.88.0.10", "eth0").expect("lookup").is_some(), "marked");
    assert!(cni.del(&pod, "eth0", "m1", "").ok);
    assert!(store.lookup("m1", "eth0").expect("lookup").is_none());
}
