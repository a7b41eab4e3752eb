//! Random allocate / release / gc sequences keep the invariants (through the whole stack, over
//! the optimistic in-memory store: every operation reloads the stored block records).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use knit_ipam::{AllocRequest, GcMode, Ipam, IpamConfig, MemStore, PodRef};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Alloc { node: usize, cid: usize, pod: Option<usize>, req: Option<u8> },
    Release { node: usize, cid: usize },
    ReleaseFixed { pod: usize },
    Gc { node: usize, keep_mask: u32, all: bool },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..3usize, 0..40usize, proptest::option::of(0..6usize), proptest::option::weighted(0.2, 0..64u8))
            .prop_map(|(node, cid, pod, req)| Op::Alloc { node, cid, pod, req }),
        3 => (0..3usize, 0..40usize).prop_map(|(node, cid)| Op::Release { node, cid }),
        1 => (0..6usize).prop_map(|pod| Op::ReleaseFixed { pod }),
        1 => (0..3usize, any::<u32>(), any::<bool>()).prop_map(|(node, keep_mask, all)| Op::Gc { node, keep_mask, all }),
    ]
}

fn cfg(node: usize) -> IpamConfig {
    let json = format!(
        r#"{{"node":"node{node}","dataDir":"/nonexistent","pools":[
        {{"name":"o","cidr":"10.0.0.0/26","blockSize":28,"excludeIPs":["10.0.0.5"]}},
        {{"name":"u","cidr":"fd00::/123","blockSize":125,"blocks":false,"fixedIPs":true,"gateway":"fd00::1"}}]}}"#
    );
    IpamConfig::parse(json.as_bytes()).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold(ops in proptest::collection::vec(op(), 1..60)) {
        let store = MemStore::new();
        let nodes: Vec<Ipam<&MemStore>> = (0..3).map(|n| Ipam::with_store(cfg(n), &store)).collect();
        // Model: attachment → (node, addresses).
        // Model: attachment → (address, node that allocated it).
        let mut model: HashMap<String, Vec<(IpAddr, usize)>> = HashMap::new();
        // Address → pod identity of the attachment holding it.
        let mut ip_pod: HashMap<IpAddr, Option<String>> = HashMap::new();
        for op in ops {
            match op {
                Op::Alloc { node, cid, pod, req } => {
                    let cid = format!("c{cid}");
                    let mut r = AllocRequest::new(&cid, "eth0");
                    if let Some(p) = pod {
                        r = r.with_pod(PodRef::new("ns", format!("p{p}")));
                    }
                    if let Some(x) = req {
                        r = r.with_ip(IpAddr::from([10, 0, 0, x]));
                    }
                    match nodes[node].allocate(&r) {
                        Ok(res) => {
                            let ips = res.addrs();
                            let had: Vec<IpAddr> = model.get(&cid).map(|v| v.iter().map(|x| x.0).collect()).unwrap_or_default();
                            // Idempotent: the same attachment keeps its addresses.
                            for ip in &had {
                                prop_assert!(ips.contains(ip), "{cid} lost {ip}");
                            }
                            let me = pod.map(|p| format!("p{p}"));
                            for (other, oips) in model.iter_mut() {
                                if *other == cid {
                                    continue;
                                }
                                for ip in &ips {
                                    if oips.iter().any(|x| x.0 == *ip) {
                                        // Only a fixed IP moves: the same pod identity
                                        // re-created with a new container takes it over.
                                        prop_assert!(
                                            ip.is_ipv6() && me.is_some() && ip_pod.get(ip) == Some(&me),
                                            "{ip} given to {cid} and {other}"
                                        );
                                        oips.retain(|x| x.0 != *ip);
                                    }
                                }
                            }
                            model.retain(|_, v| !v.is_empty());
                            let entry = model.entry(cid).or_default();
                            for ip in ips.iter().filter(|i| !had.contains(i)) {
                                ip_pod.insert(*ip, me.clone());
                                entry.push((*ip, node));
                            }
                        }
                        Err(e) => prop_assert!(
                            [110, 111, 112].contains(&e.cni_code()),
                            "unexpected error {e}"
                        ),
                    }
                }
                Op::Release { node, cid } => {
                    let cid = format!("c{cid}");
                    let released = nodes[node].release(&cid, "eth0").unwrap();
                    let want: HashSet<IpAddr> = model.remove(&cid).unwrap_or_default().into_iter().map(|x| x.0).collect();
                    let got: HashSet<_> = released.into_iter().collect();
                    prop_assert_eq!(got, want);
                }
                Op::ReleaseFixed { pod } => {
                    nodes[0].release_fixed(&PodRef::new("ns", format!("p{pod}"))).unwrap();
                }
                Op::Gc { node, keep_mask, all } => {
                    let valid: Vec<(String, String)> = (0..32)
                        .filter(|i| keep_mask & (1 << i) != 0)
                        .map(|i| (format!("c{i}"), "eth0".to_string()))
                        .collect();
                    let mode = if all { GcMode::All } else { GcMode::KeepFixed };
                    nodes[node].gc(&valid, mode).unwrap();
                    model.retain(|cid, v| !v.iter().any(|x| x.1 == node) || valid.iter().any(|v| &v.0 == cid));
                }
            }
            let st = nodes[0].snapshot().unwrap();
            if let Err(e) = st.check_invariants() {
                prop_assert!(false, "invariant: {e}");
            }
            // The store agrees with the model.
            for (cid, ips) in &model {
                let got: HashSet<IpAddr> = st.lookup(cid, "eth0").into_iter().map(|g| g.ip).collect();
                let want: HashSet<IpAddr> = ips.iter().map(|x| x.0).collect();
                prop_assert_eq!(got, want, "{}", cid);
            }
            prop_assert_eq!(st.allocated_count(), model.values().map(|m| m.len()).sum::<usize>());
            // Affinity: each node's addresses in the affinity pool lie in its own blocks, or were
            // borrowed (listed by borrowed_of).
            for n in 0..3 {
                let name = format!("node{n}");
                let blocks = st.blocks_of(&name);
                let borrowed = st.borrowed_of(&name);
                for (cid, ips) in &model {
                    for (ip, _) in ips.iter().filter(|x| x.0.is_ipv4() && x.1 == n) {
                        prop_assert!(
                            blocks.iter().any(|b| b.contains(ip)) || borrowed.contains(ip),
                            "{} of {} on {} outside its blocks", ip, cid, name
                        );
                    }
                }
            }
        }
    }
}
