//! Neighbour entries.

use std::net::IpAddr;

use knit_host::link::{self, VethOptions};
use knit_host::neigh::{self, NeighState, Neighbour};
use knit_host::testing::TestNet;
use knit_host::{Family, Mac};

#[test]
fn add_replace_list_delete() {
    let tn = TestNet::new("kh").unwrap();
    let h = tn.handle().unwrap();
    let idx = link::create_veth(&h, "n0", "n0p", None, &VethOptions { up: true, ..Default::default() }).unwrap();
    let ip4: IpAddr = "10.0.0.9".parse().unwrap();
    let ip6: IpAddr = "fd00::9".parse().unwrap();
    let mac: Mac = "02:aa:bb:cc:dd:ee".parse().unwrap();
    let mac2: Mac = "02:aa:bb:cc:dd:ff".parse().unwrap();

    neigh::add(&h, &Neighbour::permanent(idx, ip4, mac)).unwrap();
    neigh::add(&h, &Neighbour::permanent(idx, ip6, mac)).unwrap();
    assert!(neigh::add(&h, &Neighbour::permanent(idx, ip4, mac)).unwrap_err().is_exists());

    let list = neigh::list(&h, Some(Family::V4), Some(idx)).unwrap();
    assert_eq!(list, vec![Neighbour::permanent(idx, ip4, mac)]);
    let list6 = neigh::list(&h, Some(Family::V6), Some(idx)).unwrap();
    assert!(list6.contains(&Neighbour::permanent(idx, ip6, mac)), "{list6:?}");

    let reach = Neighbour { index: idx, ip: ip4, lladdr: Some(mac2), state: NeighState::Reachable };
    neigh::replace(&h, &reach).unwrap();
    let got = neigh::list(&h, Some(Family::V4), Some(idx)).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].lladdr, Some(mac2));
    assert_eq!(got[0].state, NeighState::Reachable);

    neigh::del(&h, idx, ip4).unwrap();
    neigh::del(&h, idx, ip6).unwrap();
    assert!(neigh::del(&h, idx, ip4).unwrap_err().is_not_found());
    assert!(neigh::list(&h, Some(Family::V4), Some(idx)).unwrap().is_empty());
}

#[test]
fn one_address_and_one_interface_are_asked_of_the_kernel() {
    let tn = TestNet::new("kh").unwrap();
    let h = tn.handle().unwrap();
    let up = VethOptions { up: true, ..Default::default() };
    let a = link::create_veth(&h, "na0", "na0p", None, &up).unwrap();
    let b = link::create_veth(&h, "nb0", "nb0p", None, &up).unwrap();
    let mac: Mac = "02:aa:bb:cc:dd:01".parse().unwrap();
    // Many entries on one interface, a few on the other.
    for i in 0..300u32 {
        let ip = IpAddr::from([10, 1, (i / 250) as u8, (i % 250) as u8 + 1]);
        neigh::add(&h, &Neighbour::permanent(a, ip, mac)).unwrap();
    }
    let on_b: Vec<IpAddr> = vec!["10.2.0.1".parse().unwrap(), "fd00::2".parse().unwrap()];
    for ip in &on_b {
        neigh::add(&h, &Neighbour::permanent(b, *ip, mac)).unwrap();
    }

    // A dump of one interface holds exactly its entries (of one family when asked).
    let got_b = neigh::list(&h, None, Some(b)).unwrap();
    let mut ips: Vec<IpAddr> = got_b.iter().filter(|n| n.state == NeighState::Permanent).map(|n| n.ip).collect();
    ips.sort();
    assert_eq!(ips, on_b);
    assert!(got_b.iter().all(|n| n.index == b));
    let v4_a = neigh::list(&h, Some(Family::V4), Some(a)).unwrap();
    assert_eq!(v4_a.len(), 300);

    // One address: found on its interface, absent elsewhere and when unknown.
    let ip: IpAddr = "10.1.0.7".parse().unwrap();
    assert_eq!(neigh::get(&h, a, ip).unwrap(), Some(Neighbour::permanent(a, ip, mac)));
    assert_eq!(neigh::get(&h, b, ip).unwrap(), None);
    assert_eq!(neigh::get(&h, a, "10.9.9.9".parse().unwrap()).unwrap(), None);
    let v6: IpAddr = "fd00::2".parse().unwrap();
    assert_eq!(neigh::get(&h, b, v6).unwrap(), Some(Neighbour::permanent(b, v6, mac)));
    neigh::del(&h, b, v6).unwrap();
    assert_eq!(neigh::get(&h, b, v6).unwrap(), None);
}
