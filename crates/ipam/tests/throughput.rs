//! Throughput, printed (not asserted): the in-process core and the local store per operation.
//! Run with `cargo test -p knit-ipam --release --test throughput -- --nocapture` for real numbers.

use std::time::Instant;

use knit_ipam::{AllocRequest, Ipam, IpamConfig, State};

fn cfg(dir: &str) -> IpamConfig {
    let json = format!(
        r#"{{"node":"node1","dataDir":"{dir}","pools":[{{"name":"overlay","cidr":"10.233.64.0/18","blockSize":26}}]}}"#
    );
    IpamConfig::parse(json.as_bytes()).unwrap()
}

#[test]
fn core_throughput_with_1000_in_use() {
    let c = cfg("/nonexistent");
    let mut st = State::new(c.pools.clone());
    for n in 0..1000 {
        st.allocate("node1", &AllocRequest::new(format!("base{n}"), "eth0"), None).unwrap();
    }
    // Allocate/release churn that keeps 1000 in use, plus a run of fresh allocations.
    let reqs: Vec<AllocRequest> = (0..10_000).map(|n| AllocRequest::new(format!("c{n}"), "eth0")).collect();
    let t = Instant::now();
    for r in &reqs {
        st.allocate("node1", r, None).unwrap();
        st.release(&r.container_id, &r.ifname);
    }
    let churn = t.elapsed();
    let t = Instant::now();
    for r in &reqs {
        st.allocate("node1", r, None).unwrap();
    }
    let fresh = t.elapsed();
    st.check_invariants().unwrap();
    let per_s = |d: std::time::Duration| reqs.len() as f64 / d.as_secs_f64();
    println!(
        "core: {:.0} allocate+release/s with 1000 in use; {:.0} allocations/s from 1000 to 11000 in use",
        per_s(churn),
        per_s(fresh)
    );
    assert_eq!(st.allocated_count(), 11_000);
}

#[test]
fn local_store_per_operation() {
    let d = tempfile::tempdir().unwrap();
    let ipam = Ipam::open(cfg(&d.path().display().to_string())).unwrap();
    let mut in_use = 0;
    for target in [0, 30, 110, 1000] {
        while in_use < target {
            ipam.allocate(&AllocRequest::new(format!("base{in_use}"), "eth0")).unwrap();
            in_use += 1;
        }
        let ops = 300;
        let (mut add, mut del) = (std::time::Duration::ZERO, std::time::Duration::ZERO);
        for n in 0..ops {
            let cid = format!("c{target}-{n}");
            let t = Instant::now();
            ipam.allocate(&AllocRequest::new(&cid, "eth0")).unwrap();
            add += t.elapsed();
            let t = Instant::now();
            ipam.release(&cid, "eth0").unwrap();
            del += t.elapsed();
        }
        println!("local store, {target} in use: allocate {:?}/op, release {:?}/op", add / ops, del / ops);
    }
}
