//! Real packets: ping across a veth pair between two namespaces.

use knit_host::addr::{self, Address};
use knit_host::route::{self, Route};
use knit_host::testing::TestNet;
use knit_host::{link, Family};

#[test]
fn ping_across_veth() {
    let tn = TestNet::new("kh").unwrap();
    let pod = tn.pod("pod").unwrap();
    let (hi, pi) = tn.link(tn.host(), "veth-h", &pod, "eth0").unwrap();
    let h = tn.handle().unwrap();
    let hp = tn.handle_in(&pod).unwrap();
    addr::add(&h, &Address::new(hi, "10.200.0.1/24".parse().unwrap())).unwrap();
    addr::add(&hp, &Address::new(pi, "10.200.0.2/24".parse().unwrap())).unwrap();
    assert!(link::get_by_index(&h, hi).unwrap().unwrap().up);

    let out = tn.exec(&pod, &["ping", "-c", "1", "-W", "2", "10.200.0.1"]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let out = tn.exec(tn.host(), &["ping", "-c", "1", "-W", "2", "10.200.0.2"]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn ping_calico_style_routed_pod() {
    // Host side without an address, proxy_arp on, pod default via 169.254.1.1.
    let tn = TestNet::new("kh").unwrap();
    let pod = tn.pod("pod").unwrap();
    let (hi, pi) = tn.link(tn.host(), "cali1", &pod, "eth0").unwrap();
    let h = tn.handle().unwrap();
    let hp = tn.handle_in(&pod).unwrap();
    // The node: an uplink with its own address and a default route. proxy_arp
    // answers for 169.254.1.1 because the node routes it out of another device,
    // and only when forwarding is on.
    let up = link::create_veth(&h, "uplink", "uplinkp", None, &link::VethOptions { up: true, ..Default::default() })
        .unwrap();
    addr::add(&h, &Address::new(up, "172.16.1.2/16".parse().unwrap())).unwrap();
    route::add(&h, &Route::default_via("172.16.0.1".parse().unwrap(), Some(up))).unwrap();
    knit_host::sysctl::set_in(tn.host(), "net.ipv4.ip_forward", "1").unwrap();
    knit_host::sysctl::set_in(tn.host(), "net.ipv4.conf.cali1.proxy_arp", "1").unwrap();
    addr::add(&hp, &Address::new(pi, "10.233.64.5/32".parse().unwrap())).unwrap();
    route::add(&hp, &Route::dev("169.254.1.1/32".parse().unwrap(), pi)).unwrap();
    route::add(&hp, &Route::default_via("169.254.1.1".parse().unwrap(), Some(pi))).unwrap();
    route::add(&h, &Route::dev("10.233.64.5/32".parse().unwrap(), hi)).unwrap();
    assert!(route::list(&hp, Family::V4, None).unwrap().iter().any(|r| r.is_default()));

    let out = tn.exec(&pod, &["ping", "-c", "1", "-W", "2", "172.16.1.2"]).unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}
