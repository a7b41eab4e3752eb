//! One test suite, run against both stores: the local file store and a real etcd
//! (`/usr/bin/etcd` on 127.0.0.1, random ports, temp data dir; see `etcd_support`).
//!
//! Each `fn case(b: &Backend)` below runs twice: `local::case` and `etcd::case` (the macro at
//! the end). Nodes share one store: the local backend gives every node the same dataDir; the
//! etcd backend gives each node its own dataDir (for its node lock) and the same etcd.
//! After every case the store is checked: state invariants, and for etcd that the handle keys
//! are exactly the (containerID, ifname) → address pairs of the block records.

mod etcd_support;

use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;

use etcd_support::Etcd;
use knit_ipam::store::Store;
use knit_ipam::{AllocRequest, AnyStore, GcMode, Ipam, IpamConfig, PodRef};

enum Kind {
    Local,
    Etcd(Etcd),
}

struct Backend {
    kind: Kind,
    dir: tempfile::TempDir,
}

const OVERLAY: &str = r#"[{"name":"overlay","cidr":"10.233.64.0/18","blockSize":26}]"#;
const DUAL: &str = r#"[{"name":"overlay","cidr":"10.233.64.0/18","blockSize":26},
    {"name":"overlay6","cidr":"fd00:10::/112","blockSize":122}]"#;
const FIXED: &str = r#"[{"name":"sts","cidr":"10.50.0.0/24","blockSize":28,"fixedIPs":true}]"#;
const TINY: &str = r#"[{"name":"tiny","cidr":"10.9.0.0/29","blockSize":30}]"#;

impl Backend {
    fn local() -> Backend {
        Backend { kind: Kind::Local, dir: tempfile::tempdir().unwrap() }
    }

    fn etcd() -> Backend {
        Backend { kind: Kind::Etcd(Etcd::start()), dir: tempfile::tempdir().unwrap() }
    }

    fn config(&self, node: &str, pools: &str) -> IpamConfig {
        let json = match &self.kind {
            Kind::Local => format!(r#"{{"node":"{node}","dataDir":"{}","pools":{pools}}}"#, self.dir.path().display()),
            Kind::Etcd(e) => format!(
                r#"{{"node":"{node}","dataDir":"{}","store":"etcd","etcdEndpoints":["{}"],"pools":{pools}}}"#,
                self.dir.path().join(node).display(),
                e.endpoint()
            ),
        };
        IpamConfig::parse(json.as_bytes()).unwrap()
    }

    fn ipam(&self, node: &str, pools: &str) -> Ipam {
        Ipam::open(self.config(node, pools)).unwrap()
    }

    /// Invariants of the whole store; for etcd, handles == allocations with a container.
    fn verify(&self) {
        let ipam = self.ipam("checker", OVERLAY);
        ipam.snapshot().unwrap().check_invariants().unwrap();
        let AnyStore::Etcd(store) = ipam.store() else {
            return;
        };
        let mut want = BTreeSet::new();
        for pool in store.list_pools().unwrap() {
            for b in store.list_blocks(&pool).unwrap() {
                for a in &b.value.allocs {
                    if let Some(cid) = &a.cid {
                        let fam = if a.ip.is_ipv4() { "v4" } else { "v6" };
                        want.insert((format!("{cid}/{}/{fam}", a.ifname), a.ip));
                    }
                }
            }
        }
        let got: BTreeSet<(String, IpAddr)> = store
            .handles()
            .unwrap()
            .into_iter()
            .map(|(k, v)| {
                let v: serde_json::Value = serde_json::from_str(&v).unwrap();
                (k, v["ip"].as_str().unwrap().parse().unwrap())
            })
            .collect();
        assert_eq!(got, want, "etcd handle keys differ from the block records");
    }
}

fn alloc(i: &Ipam, cid: &str) -> IpAddr {
    i.allocate(&AllocRequest::new(cid, "eth0")).unwrap().ips[0].address.addr()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn allocate_readd_release_del(b: &Backend) {
    let i = b.ipam("node1", OVERLAY);
    let a = alloc(&i, "c1");
    assert_eq!(alloc(&i, "c1"), a, "re-ADD returns the same address");
    let c2 = alloc(&i, "c2");
    assert_ne!(a, c2);
    assert!(i.lookup("c1", "eth0").unwrap().is_some());
    assert_eq!(i.release("c1", "eth0").unwrap(), vec![a]);
    assert_eq!(i.release("c1", "eth0").unwrap(), Vec::<IpAddr>::new(), "DEL is idempotent");
    assert!(i.lookup("c1", "eth0").unwrap().is_none());
    // Another interface of one container is another attachment.
    let e1 = i.allocate(&AllocRequest::new("c2", "net1")).unwrap().ips[0].address.addr();
    assert_ne!(e1, c2);
    let s = i.show().unwrap();
    assert_eq!(s.pools[0].used, 2);
    b.verify();
    i.release("c2", "eth0").unwrap();
    i.release("c2", "net1").unwrap();
    assert_eq!(i.show().unwrap().pools[0].used, 0);
    b.verify();
}

fn dual_stack(b: &Backend) {
    let i = b.ipam("node1", DUAL);
    let r = i.allocate(&AllocRequest::new("c1", "eth0")).unwrap();
    assert_eq!(r.ips.len(), 2);
    assert!(r.ips[0].address.addr().is_ipv4() && r.ips[1].address.addr().is_ipv6());
    let again = i.allocate(&AllocRequest::new("c1", "eth0")).unwrap();
    assert_eq!(r.addrs(), again.addrs());
    b.verify();
    assert_eq!(i.release("c1", "eth0").unwrap().len(), 2);
    b.verify();
}

fn gc_keeps_valid_attachments(b: &Backend) {
    let n1 = b.ipam("node1", OVERLAY);
    let n2 = b.ipam("node2", OVERLAY);
    let ips: Vec<IpAddr> = (1..=4).map(|k| alloc(&n1, &format!("c{k}"))).collect();
    let d1 = alloc(&n2, "d1");
    let valid = vec![("c1".to_string(), "eth0".to_string()), ("c3".to_string(), "eth0".to_string())];
    let rep = n1.gc(&valid, GcMode::KeepFixed).unwrap();
    let mut released: Vec<_> = rep.released.iter().map(|r| (r.0.clone(), r.2)).collect();
    released.sort();
    assert_eq!(released, vec![("c2".to_string(), ips[1]), ("c4".to_string(), ips[3])]);
    assert!(n1.lookup("c1", "eth0").unwrap().is_some());
    assert!(n1.lookup("c2", "eth0").unwrap().is_none());
    // Another node's attachments are not this node's GC's business.
    assert_eq!(n2.lookup("d1", "eth0").unwrap().unwrap().addrs(), vec![d1]);
    b.verify();
}

fn requested_ip(b: &Backend) {
    let n1 = b.ipam("node1", OVERLAY);
    let n2 = b.ipam("node2", OVERLAY);
    let r = n1.allocate(&AllocRequest::new("c1", "eth0").with_ip(ip("10.233.64.9"))).unwrap();
    assert_eq!(r.addrs(), vec![ip("10.233.64.9")]);
    let e = n1.allocate(&AllocRequest::new("c2", "eth0").with_ip(ip("10.233.64.9"))).unwrap_err();
    assert_eq!(e.cni_code(), 111, "{e}");
    let e = n1.allocate(&AllocRequest::new("c3", "eth0").with_ip(ip("192.168.1.1"))).unwrap_err();
    assert_eq!(e.cni_code(), 112, "{e}");
    // node1 owns 10.233.64.0/26 now: node2 cannot take an address there on request.
    let e = n2.allocate(&AllocRequest::new("d1", "eth0").with_ip(ip("10.233.64.10"))).unwrap_err();
    assert_eq!(e.cni_code(), 111, "{e}");
    // An unclaimed block is claimed by the request.
    let r = n2.allocate(&AllocRequest::new("d1", "eth0").with_ip(ip("10.233.70.5"))).unwrap();
    assert_eq!(r.addrs(), vec![ip("10.233.70.5")]);
    assert!(n2.blocks_of("node2").unwrap().contains(&"10.233.70.0/26".parse().unwrap()));
    b.verify();
}

fn pool_exhaustion(b: &Backend) {
    let i = b.ipam("node1", TINY);
    let mut seen = HashSet::new();
    for k in 0..6 {
        assert!(seen.insert(alloc(&i, &format!("c{k}"))));
    }
    let e = i.allocate(&AllocRequest::new("c6", "eth0")).unwrap_err();
    assert_eq!(e.cni_code(), 110, "{e}");
    // Another node cannot get one either (borrowing finds nothing free).
    let e = b.ipam("node2", TINY).allocate(&AllocRequest::new("d0", "eth0")).unwrap_err();
    assert_eq!(e.cni_code(), 110, "{e}");
    let freed = i.release("c3", "eth0").unwrap();
    assert_eq!(alloc(&i, "c7"), freed[0]);
    b.verify();
}

fn two_nodes_never_share_a_block(b: &Backend) {
    let n1 = b.ipam("node1", OVERLAY);
    let n2 = b.ipam("node2", OVERLAY);
    let mut all = HashSet::new();
    let mut mine = (Vec::new(), Vec::new());
    for k in 0..100 {
        mine.0.push(alloc(&n1, &format!("a{k}")));
        mine.1.push(alloc(&n2, &format!("b{k}")));
    }
    for a in mine.0.iter().chain(&mine.1) {
        assert!(all.insert(*a), "duplicate {a}");
    }
    let b1 = n1.blocks_of("node1").unwrap();
    let b2 = n1.blocks_of("node2").unwrap();
    assert_eq!(b1.len(), 2);
    assert_eq!(b2.len(), 2);
    assert!(b1.iter().all(|x| !b2.contains(x)));
    assert!(mine.0.iter().all(|a| b1.iter().any(|n| n.contains(a))));
    assert!(mine.1.iter().all(|a| b2.iter().any(|n| n.contains(a))));
    b.verify();
}

fn fixed_ips_follow_the_pod(b: &Backend) {
    let n1 = b.ipam("node1", FIXED);
    let n2 = b.ipam("node2", FIXED);
    let pod = PodRef::new("db", "db-0");
    let req = |cid: &str| AllocRequest::new(cid, "eth0").with_pod(pod.clone());
    let a = n1.allocate(&req("c1")).unwrap().addrs()[0];
    let other = n1.allocate(&AllocRequest::new("x1", "eth0").with_pod(PodRef::new("db", "db-1"))).unwrap().addrs()[0];
    assert_ne!(a, other);
    n1.release("c1", "eth0").unwrap();
    assert_eq!(n1.show().unwrap().pools[0].reserved, 1);
    // Not handed to anyone else while reserved.
    let c = n1.allocate(&AllocRequest::new("y1", "eth0")).unwrap().addrs()[0];
    assert_ne!(c, a);
    // Another container ID on another node gets it back.
    assert_eq!(n2.allocate(&req("c2")).unwrap().addrs()[0], a);
    n2.release("c2", "eth0").unwrap();
    // CNI GC keeps the reservation; release_fixed frees it.
    n2.gc(&[], GcMode::KeepFixed).unwrap();
    assert_eq!(n2.show().unwrap().pools[0].reserved, 1);
    assert_eq!(n2.release_fixed(&pod).unwrap(), vec![a]);
    assert_eq!(n2.show().unwrap().pools[0].reserved, 0);
    // GcMode::All frees the reservations of the node.
    let pod1 = PodRef::new("db", "db-1");
    n1.release("x1", "eth0").unwrap();
    assert_eq!(n1.show().unwrap().pools[0].reserved, 1);
    let rep = n1.gc(&[("y1".into(), "eth0".into())], GcMode::All).unwrap();
    assert_eq!(rep.unreserved, vec![(pod1, other)]);
    assert_eq!(n1.show().unwrap().pools[0].reserved, 0);
    b.verify();
}

fn status_and_show(b: &Backend) {
    let i = b.ipam("node1", DUAL);
    i.status().unwrap();
    alloc(&i, "c1");
    let s = i.show().unwrap();
    let names: Vec<&str> = s.pools.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, vec!["overlay", "overlay6"]);
    assert_eq!(s.pools[0].nodes["node1"].used, 1);
    // Inspection handles (no config pools needed) see the same.
    let mut cfg = b.config("cli", OVERLAY);
    cfg.pools.clear();
    let insp = Ipam::open_for_inspection(cfg).unwrap();
    assert_eq!(insp.show().unwrap(), s);
    b.verify();
}

macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        mod local {
            $(#[test] fn $case() { super::$case(&super::Backend::local()) })*
        }
        mod etcd {
            $(#[test] fn $case() { super::$case(&super::Backend::etcd()) })*
        }
    };
}

suite!(
    allocate_readd_release_del,
    dual_stack,
    gc_keeps_valid_attachments,
    requested_ip,
    pool_exhaustion,
    two_nodes_never_share_a_block,
    fixed_ips_follow_the_pod,
    status_and_show,
);
