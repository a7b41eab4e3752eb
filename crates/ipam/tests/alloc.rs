//! Allocation behaviour over the local store.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;
use knit_ipam::{AllocRequest, GcMode, Ipam, IpamConfig, PodRef};

fn ipam(dir: &Path, node: &str, pools: &str) -> Ipam {
    let json = format!(r#"{{"type":"knit-ipam","node":"{node}","dataDir":"{}","pools":{pools}}}"#, dir.display());
    Ipam::open(IpamConfig::parse(json.as_bytes()).unwrap()).unwrap()
}

const OVERLAY: &str = r#"[{"name":"overlay","cidr":"10.233.64.0/18","blockSize":26}]"#;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn alloc(i: &Ipam, cid: &str) -> IpAddr {
    i.allocate(&AllocRequest::new(cid, "eth0")).unwrap().ips[0].address.addr()
}

#[test]
fn two_hundred_allocations_use_four_blocks() {
    let d = tempfile::tempdir().unwrap();
    let i = ipam(d.path(), "node1", OVERLAY);
    let mut seen = HashSet::new();
    for n in 0..200 {
        let r = i.allocate(&AllocRequest::new(format!("c{n}"), "eth0")).unwrap();
        assert_eq!(r.ips.len(), 1);
        assert_eq!(r.ips[0].address.prefix_len(), 18);
        assert!(seen.insert(r.ips[0].address.addr()));
    }
    assert_eq!(seen.len(), 200);
    let blocks = i.blocks_of("node1").unwrap();
    assert_eq!(blocks.len(), 200usize.div_ceil(64));
    for b in &blocks {
        assert_eq!(b.prefix_len(), 26);
    }
    for a in &seen {
        assert!(blocks.iter().any(|b| b.contains(a)), "{a} outside node1's blocks");
    }
    // The network address of the pool is never handed out.
    assert!(!seen.contains(&ip("10.233.64.0")));
    assert!(seen.contains(&ip("10.233.64.1")));
    // Block edges inside the pool are ordinary addresses (only the pool's own network and
    // broadcast addresses are special).
    assert!(seen.contains(&ip("10.233.64.63")) && seen.contains(&ip("10.233.64.64")));
    let s = i.show().unwrap();
    assert_eq!(s.pools[0].used, 200);
    assert_eq!(s.pools[0].nodes["node1"].blocks.len(), 4);
    let text = s.to_string();
    assert!(text.contains("10.233.64.0/26") && text.contains("node1"), "{text}");
    let j = serde_json::to_value(&s).unwrap();
    assert_eq!(j["pools"][0]["used"], 200);
    // Free counts from the path-level helper agree.
    let s2 = knit_ipam::show(d.path()).unwrap();
    assert_eq!(s2, s);
    assert_eq!(knit_ipam::blocks_of(d.path(), "node1").unwrap(), blocks);
}

#[test]
fn idempotent_allocate_and_release() {
    let d = tempfile::tempdir().unwrap();
    let i = ipam(d.path(), "node1", OVERLAY);
    let a = alloc(&i, "c1");
    assert_eq!(alloc(&i, "c1"), a);
    // Same container, other interface: another address.
    let b = i.allocate(&AllocRequest::new("c1", "net1")).unwrap().ips[0].address.addr();
    assert_ne!(a, b);
    assert_eq!(i.lookup("c1", "eth0").unwrap().unwrap().ips[0].address.addr(), a);
    assert_eq!(i.release("c1", "eth0").unwrap(), vec![a]);
    assert_eq!(i.release("c1", "eth0").unwrap(), Vec::<IpAddr>::new());
    assert!(i.lookup("c1", "eth0").unwrap().is_none());
    assert_eq!(i.release("never", "eth0").unwrap(), Vec::<IpAddr>::new());
    // The freed address is reused (lowest free first).
    assert_eq!(alloc(&i, "c2"), a);
    // A fresh handle on the same dir sees the same state.
    let i2 = ipam(d.path(), "node1", OVERLAY);
    assert_eq!(alloc(&i2, "c2"), a);
}

#[test]
fn gc_releases_everything_not_valid_on_this_node() {
    let d = tempfile::tempdir().unwrap();
    let n1 = ipam(d.path(), "node1", OVERLAY);
    let n2 = ipam(d.path(), "node2", OVERLAY);
    for c in ["a", "b", "c"] {
        alloc(&n1, c);
    }
    let other = alloc(&n2, "z");
    let rep = n1.gc(&[("b".into(), "eth0".into())], GcMode::KeepFixed).unwrap();
    let mut released: Vec<String> = rep.released.iter().map(|r| r.0.clone()).collect();
    released.sort();
    assert_eq!(released, vec!["a", "c"]);
    assert!(n1.lookup("b", "eth0").unwrap().is_some());
    assert!(n1.lookup("a", "eth0").unwrap().is_none());
    // node2's allocation is untouched by node1's GC.
    assert_eq!(n2.lookup("z", "eth0").unwrap().unwrap().ips[0].address.addr(), other);
}

#[test]
fn requested_ip() {
    let d = tempfile::tempdir().unwrap();
    let pools = r#"[{"name":"overlay","cidr":"10.233.64.0/18","gateway":"10.233.64.1","excludeIPs":["10.233.64.50"]}]"#;
    let n1 = ipam(d.path(), "node1", pools);
    let n2 = ipam(d.path(), "node2", pools);
    let want = ip("10.233.70.7");
    let r = n1.allocate(&AllocRequest::new("c1", "eth0").with_ip(want)).unwrap();
    assert_eq!(r.ips[0].address.addr(), want);
    // Its block got claimed for node1.
    assert!(n1.blocks_of("node1").unwrap().contains(&"10.233.70.0/26".parse::<IpNet>().unwrap()));
    // Idempotent with the same request.
    assert_eq!(n1.allocate(&AllocRequest::new("c1", "eth0").with_ip(want)).unwrap(), r);
    // In use by someone else.
    let e = n1.allocate(&AllocRequest::new("c2", "eth0").with_ip(want)).unwrap_err();
    assert_eq!(e.cni_code(), 111);
    assert!(e.to_string().contains("in use by container c1"), "{e}");
    // In another node's block.
    let e = n2.allocate(&AllocRequest::new("c3", "eth0").with_ip(ip("10.233.70.9"))).unwrap_err();
    assert_eq!(e.cni_code(), 111);
    assert!(e.to_string().contains("belongs to node node1"), "{e}");
    // Not in any pool.
    let e = n1.allocate(&AllocRequest::new("c4", "eth0").with_ip(ip("192.168.1.1"))).unwrap_err();
    assert_eq!(e.cni_code(), 112);
    assert!(e.to_string().contains("no pool"), "{e}");
    // Gateway, excluded, network address.
    for (bad, why) in [("10.233.64.1", "gateway"), ("10.233.64.50", "excludeIPs"), ("10.233.64.0", "network")] {
        let e = n1.allocate(&AllocRequest::new("c5", "eth0").with_ip(ip(bad))).unwrap_err();
        assert_eq!(e.cni_code(), 111, "{bad}");
        assert!(e.to_string().contains(why), "{e}");
    }
    // Failed requests left nothing behind.
    assert!(n1.lookup("c5", "eth0").unwrap().is_none());
    // CNI_ARGS path.
    let req =
        AllocRequest::from_cni("c6", "eth0", Some("K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;IP=10.233.70.8"), None).unwrap();
    assert_eq!(n1.allocate(&req).unwrap().ips[0].address.addr(), ip("10.233.70.8"));
}

#[test]
fn fixed_ips_follow_the_pod_identity() {
    let d = tempfile::tempdir().unwrap();
    let pools = r#"[{"name":"underlay","cidr":"172.16.0.0/16","blockSize":16,"blocks":false,"fixedIPs":true,"rangeStart":"172.16.10.1","rangeEnd":"172.16.10.250","gateway":"172.16.0.1"}]"#;
    let n1 = ipam(d.path(), "node1", pools);
    let n2 = ipam(d.path(), "node2", pools);
    let web0 = PodRef::new("default", "web-0");
    let a = n1.allocate(&AllocRequest::new("c1", "eth0").with_pod(web0.clone())).unwrap().ips[0].address.addr();
    assert_eq!(a, ip("172.16.10.1"));
    // An ordinary pod takes the next one.
    let other = alloc(&n1, "x1");
    assert_eq!(other, ip("172.16.10.2"));
    // Pod deleted: the address stays reserved.
    assert_eq!(n1.release("c1", "eth0").unwrap(), vec![a]);
    let s = n1.show().unwrap();
    assert_eq!((s.pools[0].used, s.pools[0].reserved), (1, 1));
    let y = alloc(&n1, "y1");
    assert_ne!(y, a);
    // Re-created with another container ID, on another node (shared pool): same address.
    let again = n2.allocate(&AllocRequest::new("c2", "eth0").with_pod(web0.clone())).unwrap().ips[0].address.addr();
    assert_eq!(again, a);
    // Re-created before the old DEL arrived: the new container takes it over; the late DEL of
    // the old one does not free it.
    let again2 = n2.allocate(&AllocRequest::new("c3", "eth0").with_pod(web0.clone())).unwrap().ips[0].address.addr();
    assert_eq!(again2, a);
    assert!(n2.release("c2", "eth0").unwrap().is_empty());
    assert_eq!(n2.lookup("c3", "eth0").unwrap().unwrap().ips[0].address.addr(), a);
    // GC keeps the reservation in KeepFixed mode…
    n2.gc(&[], GcMode::KeepFixed).unwrap();
    assert_eq!(n2.show().unwrap().pools[0].reserved, 1);
    assert_eq!(n2.allocate(&AllocRequest::new("c4", "eth0").with_pod(web0.clone())).unwrap().ips[0].address.addr(), a);
    n2.release("c4", "eth0").unwrap();
    // …explicit release_fixed frees it.
    assert_eq!(n2.release_fixed(&web0).unwrap(), vec![a]);
    assert_eq!(n2.show().unwrap().pools[0].reserved, 0);
    // And GcMode::All frees reservations of the node too.
    let b = n1.allocate(&AllocRequest::new("d1", "eth0").with_pod(PodRef::new("default", "db-0"))).unwrap().ips[0]
        .address
        .addr();
    n1.release("d1", "eth0").unwrap();
    let rep = n1.gc(&[("x1".into(), "eth0".into()), ("y1".into(), "eth0".into())], GcMode::All).unwrap();
    assert_eq!(rep.unreserved, vec![(PodRef::new("default", "db-0"), b)]);
    // A reserved IP can't be requested by another pod.
    let c = n1.allocate(&AllocRequest::new("e1", "eth0").with_pod(PodRef::new("default", "e-0"))).unwrap().ips[0]
        .address
        .addr();
    n1.release("e1", "eth0").unwrap();
    let err = n1.allocate(&AllocRequest::new("f1", "eth0").with_ip(c)).unwrap_err();
    assert_eq!(err.cni_code(), 111);
    assert!(err.to_string().contains("reservation"), "{err}");
    // But the identity itself can request it.
    let got = n1.allocate(&AllocRequest::new("e2", "eth0").with_pod(PodRef::new("default", "e-0")).with_ip(c)).unwrap();
    assert_eq!(got.ips[0].address.addr(), c);
}

#[test]
fn exhaustion_range_exclude_gateway() {
    let d = tempfile::tempdir().unwrap();
    let pools = r#"[{"name":"small","cidr":"192.168.5.0/24","blockSize":28,"rangeStart":"192.168.5.1","rangeEnd":"192.168.5.20","excludeIPs":["192.168.5.3","192.168.5.10-192.168.5.12"],"gateway":"192.168.5.1","routes":[{"dst":"0.0.0.0/0","gw":"192.168.5.1"}]}]"#;
    let i = ipam(d.path(), "node1", pools);
    let mut got = Vec::new();
    loop {
        match i.allocate(&AllocRequest::new(format!("c{}", got.len()), "eth0")) {
            Ok(r) => {
                assert_eq!(r.ips[0].gateway, Some(ip("192.168.5.1")));
                assert_eq!(r.routes.len(), 1);
                got.push(r.ips[0].address.addr());
            }
            Err(e) => {
                assert_eq!(e.cni_code(), 110);
                assert!(e.to_string().contains("small"), "{e}");
                break;
            }
        }
    }
    // 2..=20 minus 3, 10, 11, 12 = 19 - 4 = 15
    let expect: Vec<IpAddr> =
        (2..=20u8).filter(|n| ![3, 10, 11, 12].contains(n)).map(|n| IpAddr::from([192, 168, 5, n])).collect();
    got.sort();
    assert_eq!(got, expect);
    // Two /28 blocks were claimed: .0/28 and .16/28.
    assert_eq!(i.blocks_of("node1").unwrap().len(), 2);
    let s = i.show().unwrap();
    assert_eq!((s.pools[0].total, s.pools[0].used, s.pools[0].free), (15, 15, 0));
    // CNI JSON
    let r = i.lookup("c0", "eth0").unwrap().unwrap();
    let j = r.to_cni_json(Some("1.1.0"));
    assert_eq!(j["ips"][0]["address"], "192.168.5.2/24");
    assert_eq!(j["ips"][0]["gateway"], "192.168.5.1");
    assert_eq!(j["routes"][0]["dst"], "0.0.0.0/0");
}

#[test]
fn v4_broadcast_and_tiny_pools() {
    let d = tempfile::tempdir().unwrap();
    let i = ipam(d.path(), "n", r#"[{"name":"t","cidr":"10.9.9.0/30"}]"#);
    let a = alloc(&i, "a");
    let b = alloc(&i, "b");
    assert_eq!((a, b), (ip("10.9.9.1"), ip("10.9.9.2")));
    assert_eq!(i.allocate(&AllocRequest::new("c", "eth0")).unwrap_err().cni_code(), 110);
    // /31: both usable (RFC 3021)
    let i = ipam(d.path(), "n", r#"[{"name":"p31","cidr":"10.9.8.0/31"}]"#);
    assert_eq!(alloc(&i, "a"), ip("10.9.8.0"));
    assert_eq!(alloc(&i, "b"), ip("10.9.8.1"));
}

#[test]
fn nodes_sharing_a_dir_never_share_a_block_and_borrow_when_full() {
    let d = tempfile::tempdir().unwrap();
    // A /24 with /26 blocks: 4 blocks.
    let pools = r#"[{"name":"o","cidr":"10.10.0.0/24","blockSize":26}]"#;
    let nodes: Vec<Ipam> = (1..=3).map(|n| ipam(d.path(), &format!("node{n}"), pools)).collect();
    for round in 0..10 {
        for (k, n) in nodes.iter().enumerate() {
            alloc(n, &format!("n{k}-{round}"));
        }
    }
    let mut all = HashSet::new();
    for (k, n) in nodes.iter().enumerate() {
        let mine = n.blocks_of(&format!("node{}", k + 1)).unwrap();
        assert_eq!(mine.len(), 1);
        assert!(all.insert(mine[0]), "block {} claimed twice", mine[0]);
    }
    // node1 fills its block and the last free one, then borrows from node2's.
    let n1 = &nodes[0];
    let mut taken = HashSet::new();
    // node1's block .0/26 has 63 usable (the pool's network address), .192/26 too (broadcast).
    for c in 0..(63 - 10 + 63) {
        taken.insert(alloc(n1, &format!("fill{c}")));
    }
    assert_eq!(n1.blocks_of("node1").unwrap().len(), 2);
    let borrowed = alloc(n1, "borrow1");
    let owner2 = n1.blocks_of("node2").unwrap()[0];
    let owner3 = n1.blocks_of("node3").unwrap()[0];
    assert!(owner2.contains(&borrowed) || owner3.contains(&borrowed), "{borrowed}");
    assert_eq!(n1.borrowed_of("node1").unwrap(), vec![borrowed]);
    let s = n1.show().unwrap();
    assert!(s.pools[0].blocks.iter().any(|b| b.borrowed == vec![borrowed]));
    assert!(n1.snapshot().unwrap().check_invariants().is_ok());
}

#[test]
fn no_borrow_means_exhausted() {
    let d = tempfile::tempdir().unwrap();
    let pools = r#"[{"name":"o","cidr":"10.10.0.0/25","blockSize":26,"borrow":false}]"#;
    let n1 = ipam(d.path(), "node1", pools);
    let n2 = ipam(d.path(), "node2", pools);
    alloc(&n2, "x");
    // node2 holds .0/26; node1 gets .64/26 whose .127 is the pool's broadcast address.
    for c in 0..63 {
        alloc(&n1, &format!("c{c}"));
    }
    let e = n1.allocate(&AllocRequest::new("more", "eth0")).unwrap_err();
    assert_eq!(e.cni_code(), 110);
    assert!(e.to_string().contains("node1"), "{e}");
}

#[test]
fn shared_pool_and_dual_stack_and_fallback_pool() {
    let d = tempfile::tempdir().unwrap();
    let pools = r#"[
        {"name":"u1","cidr":"172.16.0.0/29","blocks":false,"gateway":"172.16.0.1"},
        {"name":"u2","cidr":"172.17.0.0/24","blocks":false,"gateway":"172.17.0.1"},
        {"name":"v6","cidr":"fd00:16::/120","blocks":false,"gateway":"fd00:16::1","routes":[{"dst":"::/0","gw":"fd00:16::1"}]}]"#;
    let n1 = ipam(d.path(), "node1", pools);
    let n2 = ipam(d.path(), "node2", pools);
    let mut v4 = HashSet::new();
    for c in 0..8 {
        let node = if c % 2 == 0 { &n1 } else { &n2 };
        let r = node.allocate(&AllocRequest::new(format!("c{c}"), "eth0")).unwrap();
        assert_eq!(r.ips.len(), 2, "{r:?}");
        assert!(v4.insert(r.ips[0].address.addr()));
        assert!(r.ips[1].address.addr().is_ipv6());
        assert_eq!(r.ips[1].address.prefix_len(), 120);
    }
    // u1 (/29: 6 usable minus gateway = 5) then u2.
    let u1: Vec<_> = v4.iter().filter(|a| a.to_string().starts_with("172.16.")).collect();
    assert_eq!(u1.len(), 5);
    assert!(n1.blocks_of("node1").unwrap().is_empty());
    // Releasing everything drops the owner-less stripes.
    for c in 0..8 {
        let node = if c % 2 == 0 { &n1 } else { &n2 };
        assert_eq!(node.release(&format!("c{c}"), "eth0").unwrap().len(), 2);
    }
    let s = n1.show().unwrap();
    assert!(s.pools.iter().all(|p| p.blocks.is_empty() && p.used == 0), "{s}");
    // Requested IP in a shared pool: fine from any node.
    let r = n2.allocate(&AllocRequest::new("r", "eth0").with_ip(ip("172.17.0.77"))).unwrap();
    assert_eq!(r.ips[0].address.addr(), ip("172.17.0.77"));
    assert_eq!(r.ips.len(), 2);
}

#[test]
fn status_and_stale_temp_files() {
    let d = tempfile::tempdir().unwrap();
    let i = ipam(d.path(), "node1", OVERLAY);
    i.status().unwrap();
    knit_ipam::status(d.path()).unwrap();
    let a = alloc(&i, "c1");
    // A writer killed between write and rename leaves a temp file: ignored and cleaned.
    let pool_dir = d.path().join("pools/overlay");
    std::fs::write(pool_dir.join(".10.233.64.0_26.blk.tmp"), b"B\t99\t10.233.64.0/26").unwrap();
    assert_eq!(alloc(&i, "c1"), a);
    assert!(!pool_dir.join(".10.233.64.0_26.blk.tmp").exists());
    // A status on an unwritable place fails with 50.
    let e = knit_ipam::status(Path::new("/proc/knit-ipam-nope")).unwrap_err();
    assert_eq!(e.cni_code(), 50);
}

#[test]
fn lock_timeout_is_code_11() {
    let d = tempfile::tempdir().unwrap();
    let json = format!(r#"{{"node":"n","dataDir":"{}","lockTimeoutMs":50,"pools":{OVERLAY}}}"#, d.path().display());
    let i = Ipam::open(IpamConfig::parse(json.as_bytes()).unwrap()).unwrap();
    alloc(&i, "c0");
    // Hold the lock from another descriptor.
    let f = std::fs::File::open(d.path().join("lock")).unwrap();
    use std::os::unix::io::AsRawFd;
    assert_eq!(unsafe { libc_flock(f.as_raw_fd()) }, 0);
    let e = i.allocate(&AllocRequest::new("c1", "eth0")).unwrap_err();
    assert_eq!(e.cni_code(), 11, "{e}");
    assert!(e.to_string().contains("lock"));
    drop(f);
    alloc(&i, "c1");
}

extern "C" {
    #[link_name = "flock"]
    fn libc_flock_raw(fd: i32, op: i32) -> i32;
}

unsafe fn libc_flock(fd: i32) -> i32 {
    const LOCK_EX: i32 = 2;
    unsafe { libc_flock_raw(fd, LOCK_EX) }
}

#[test]
fn changed_block_size_is_refused() {
    let d = tempfile::tempdir().unwrap();
    alloc(&ipam(d.path(), "n", OVERLAY), "c");
    let i = ipam(d.path(), "n", r#"[{"name":"overlay","cidr":"10.233.64.0/18","blockSize":27}]"#);
    let e = i.allocate(&AllocRequest::new("d", "eth0")).unwrap_err();
    assert_eq!(e.cni_code(), 7);
    assert!(e.to_string().contains("blockSize"), "{e}");
    // Release still works from the stored pool definition.
    assert_eq!(i.release("c", "eth0").unwrap().len(), 1);
}
