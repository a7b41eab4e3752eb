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
