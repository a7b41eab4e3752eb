//! Addresses, IPv4 and IPv6.

use knit_host::addr::{self, Address, FLAG_NODAD};
use knit_host::link::{self, VethOptions};
use knit_host::testing::TestNet;
use knit_host::{Family, IpNet, Scope};

#[test]
fn add_list_replace_delete() {
    let tn = TestNet::new("kh").unwrap();
    let h = tn.handle().unwrap();
    let idx = link::create_veth(&h, "a0", "a0p", None, &VethOptions { up: true, ..Default::default() }).unwrap();

    let v4: IpNet = "10.1.2.3/24".parse().unwrap();
    let v6: IpNet = "fd00:1::3/64".parse().unwrap();
    addr::add(&h, &Address::new(idx, v4)).unwrap();
    addr::add(&h, &Address::new(idx, v6).with_flags(FLAG_NODAD)).unwrap();
    let link_scope: IpNet = "169.254.9.9/32".parse().unwrap();
    addr::add(&h, &Address::new(idx, link_scope).with_scope(Scope::Link)).unwrap();

    let err = addr::add(&h, &Address::new(idx, v4)).unwrap_err();
    assert!(err.is_exists(), "{err}");
    addr::replace(&h, &Address::new(idx, v4)).unwrap();

    let v4s = addr::list(&h, Some(Family::V4), Some(idx)).unwrap();
    assert!(v4s.iter().any(|a| a.net == v4 && a.scope == Scope::Universe), "{v4s:?}");
    assert!(v4s.iter().any(|a| a.net == link_scope && a.scope == Scope::Link), "{v4s:?}");
    let v6s = addr::list(&h, Some(Family::V6), Some(idx)).unwrap();
    let a6 = v6s.iter().find(|a| a.net == v6).expect("v6 address listed");
    assert!(a6.flags & FLAG_NODAD != 0);
    // No other interface's addresses leak in.
    assert!(addr::list(&h, None, Some(idx)).unwrap().iter().all(|a| a.index == idx));
    // lo's 127.0.0.1 shows up in an unfiltered listing.
    assert!(addr::list(&h, None, None).unwrap().iter().any(|a| a.net == "127.0.0.1/8".parse::<IpNet>().unwrap()));

    addr::del(&h, &Address::new(idx, v4)).unwrap();
    addr::del(&h, &Address::new(idx, v6)).unwrap();
    let err = addr::del(&h, &Address::new(idx, v4)).unwrap_err();
    assert!(err.is_not_found(), "{err}");
    let left = addr::list(&h, None, Some(idx)).unwrap();
    assert!(!left.iter().any(|a| a.net == v4 || a.net == v6), "{left:?}");
}
