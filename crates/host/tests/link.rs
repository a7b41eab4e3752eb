//! Links: veth across namespaces, macvlan, bridge, vxlan, attribute changes, delete.

use knit_host::link::{self, MacvlanMode, VethOptions, VxlanOptions};
use knit_host::testing::TestNet;
use knit_host::Mac;

#[test]
fn veth_with_peer_in_other_namespace() {
    let tn = TestNet::new("kh").unwrap();
    let pod = tn.pod("pod").unwrap();
    let h = tn.handle().unwrap();
    let hp = tn.handle_in(&pod).unwrap();
    let mac: Mac = "ee:ee:ee:ee:ee:ee".parse().unwrap();
    let peer_mac: Mac = "02:00:00:00:00:01".parse().unwrap();
    let opts = VethOptions { mtu: Some(1400), mac: Some(mac), peer_mac: Some(peer_mac), up: true };
    let idx = link::create_veth(&h, "cali0123456789a", "eth0", Some(&pod), &opts).unwrap();

    let host_end = link::get_by_index(&h, idx).unwrap().unwrap();
    assert_eq!(host_end.name, "cali0123456789a");
    assert_eq!(host_end.kind.as_deref(), Some("veth"));
    assert_eq!(host_end.mtu, 1400);
    assert_eq!(host_end.mac, Some(mac));
    assert!(host_end.up);
    assert!(host_end.link_netnsid.is_some(), "peer lives in another namespace");

    // The peer is in the pod namespace, not in the host namespace.
    assert!(link::get_by_name(&h, "eth0").unwrap().is_none());
    let peer = link::get_by_name(&hp, "eth0").unwrap().unwrap();
    assert_eq!(peer.kind.as_deref(), Some("veth"));
    assert_eq!(peer.mtu, 1400);
    assert_eq!(peer.mac, Some(peer_mac));
    assert!(peer.up);
    assert_eq!(peer.link, Some(idx));

    // Creating it again: EEXIST.
    let err = link::create_veth(&h, "cali0123456789a", "eth9", Some(&pod), &VethOptions::default()).unwrap_err();
    assert!(err.is_exists(), "{err}");

    // Deleting one end removes both.
    link::delete(&h, idx).unwrap();
    assert!(link::get_by_name(&h, "cali0123456789a").unwrap().is_none());
    assert!(link::get_by_name(&hp, "eth0").unwrap().is_none());
    let err = link::delete(&h, idx).unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert!(!link::delete_by_name(&h, "cali0123456789a").unwrap());
}

#[test]
fn veth_in_same_namespace_and_list() {
    let tn = TestNet::new("kh").unwrap();
    let h = tn.handle().unwrap();
    let a = link::create_veth(&h, "va", "vb", None, &VethOptions::default()).unwrap();
    let b = link::index_of(&h, "vb").unwrap();
    let links = link::list(&h).unwrap();
    let names: Vec<&str> = links.iter().map(|l| l.name.as_str()).collect();
    assert!(names.contains(&"lo") && names.contains(&"va") && names.contains(&"vb"), "{names:?}");
    let va = links.iter().find(|l| l.index == a).unwrap();
    assert_eq!(va.link, Some(b));
    assert!(!va.up);
    assert!(link::get_by_name(&h, "nosuchlink").unwrap().is_none());
    assert!(link::require(&h, "nosuchlink").unwrap_err().is_not_found());
    assert!(link::get_by_name(&h, "this-name-is-far-too-long").is_err());
}

#[test]
fn rename_up_mtu_mac_txqlen() {
    let tn = TestNet::new("kh").unwrap();
    let h = tn.handle().unwrap();
    let idx = link::create_veth(&h, "tmp0", "tmp1", None, &VethOptions::default()).unwrap();
    link::set_name(&h, idx, "renamed0").unwrap();
    link::set_mtu(&h, idx, 9000).unwrap();
    let mac: Mac = "02:11:22:33:44:55".parse().unwrap();
    link::set_mac(&h, idx, mac).unwrap();
    link::set_txqlen(&h, idx, 4321).unwrap();
    link::set_up(&h, idx).unwrap();
    let l = link::get_by_index(&h, idx).unwrap().unwrap();
    assert_eq!(l.name, "renamed0");
    assert_eq!(l.mtu, 9000);
    assert_eq!(l.mac, Some(mac));
    assert_eq!(l.txqlen, 4321);
    assert!(l.up);
    assert!(link::get_by_name(&h, "tmp0").unwrap().is_none());
    link::set_down(&h, idx).unwrap();
    assert!(!link::get_by_index(&h, idx).unwrap().unwrap().up);
}

#[test]
fn macvlan_on_veth_master() {
    let tn = TestNet::new("kh").unwrap();
    let pod = tn.pod("pod").unwrap();
    let h = tn.handle().unwrap();
    let hp = tn.handle_in(&pod).unwrap();
    // A veth end stands in for the uplink NIC.
    let uplink =
        link::create_veth(&h, "uplink0", "uplink0p", None, &VethOptions { up: true, ..Default::default() }).unwrap();

    let mv = link::create_macvlan(&h, "mv0", uplink, MacvlanMode::Bridge, None).unwrap().unwrap();
    let l = link::get_by_index(&h, mv).unwrap().unwrap();
    assert_eq!(l.kind.as_deref(), Some("macvlan"));
    assert_eq!(l.link, Some(uplink));
    assert_eq!(l.macvlan_mode, Some(MacvlanMode::Bridge));

    // Directly into the pod namespace, with a temporary name, then renamed there.
    let r =
        link::create_macvlan_with(&h, "mvtmp1", uplink, MacvlanMode::Private, Some(&pod), Some(1300), None).unwrap();
    assert!(r.is_none());
    assert!(link::get_by_name(&h, "mvtmp1").unwrap().is_none());
    let in_pod = link::require(&hp, "mvtmp1").unwrap();
    assert_eq!(in_pod.macvlan_mode, Some(MacvlanMode::Private));
    assert_eq!(in_pod.mtu, 1300);
    assert!(in_pod.link_netnsid.is_some());
    link::set_name(&hp, in_pod.index, "net1").unwrap();
    assert_eq!(link::require(&hp, "net1").unwrap().index, in_pod.index);

    link::delete(&h, mv).unwrap();
    assert!(link::get_by_name(&h, "mv0").unwrap().is_none());
}

#[test]
fn bridge_and_master() {
    let tn = TestNet::new("kh").unwrap();
    let h = tn.handle().unwrap();
    let br = link::create_bridge(&h, "br0").unwrap();
    assert_eq!(link::get_by_index(&h, br).unwrap().unwrap().kind.as_deref(), Some("bridge"));
    let port = link::create_veth(&h, "port0", "port0p", None, &VethOptions::default()).unwrap();
    link::set_master(&h, port, Some(br)).unwrap();
    assert_eq!(link::get_by_index(&h, port).unwrap().unwrap().master, Some(br));
    link::set_master(&h, port, None).unwrap();
    assert_eq!(link::get_by_index(&h, port).unwrap().unwrap().master, None);
    link::delete(&h, br).unwrap();
}

#[test]
fn vxlan_device() {
    let tn = TestNet::new("kh").unwrap();
    let h = tn.handle().unwrap();
    let under = link::create_veth(&h, "under0", "under0p", None, &VethOptions::default()).unwrap();
    let opts =
        VxlanOptions { vni: 42, local: Some("192.0.2.1".parse().unwrap()), dev: Some(under), ..Default::default() };
    let vx = link::create_vxlan(&h, "vxlan42", &opts).unwrap();
    let l = link::get_by_index(&h, vx).unwrap().unwrap();
    assert_eq!(l.kind.as_deref(), Some("vxlan"));
    let out = tn.exec_ok(tn.host(), &["ip", "-d", "link", "show", "vxlan42"]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("vxlan id 42"), "{text}");
    assert!(text.contains("dstport 4789"), "{text}");
}

#[test]
fn move_to_other_namespace() {
    let tn = TestNet::new("kh").unwrap();
    let pod = tn.pod("pod").unwrap();
    let h = tn.handle().unwrap();
    let hp = tn.handle_in(&pod).unwrap();
    let a = link::create_veth(&h, "mv-a", "mv-b", None, &VethOptions::default()).unwrap();
    link::move_to_netns(&h, a, &pod).unwrap();
    assert!(link::get_by_name(&h, "mv-a").unwrap().is_none());
    assert!(link::get_by_name(&hp, "mv-a").unwrap().is_some());
    let b = link::index_of(&h, "mv-b").unwrap();
    link::move_to_netns_as(&h, b, &pod, "eth1").unwrap();
    assert!(link::get_by_name(&hp, "eth1").unwrap().is_some());
    assert!(link::get_by_name(&h, "mv-b").unwrap().is_none());
}

#[test]
fn delete_group_takes_only_its_members_at_once() {
    let tn = TestNet::new("kh").unwrap();
    let pod = tn.pod("pod").unwrap();
    let h = tn.handle().unwrap();
    let hp = tn.handle_in(&pod).unwrap();
    let uplink =
        link::create_veth(&h, "uplink0", "uplink0p", None, &VethOptions { up: true, ..Default::default() }).unwrap();
    link::create_macvlan_with(&h, "eth0", uplink, MacvlanMode::Bridge, Some(&pod), None, None).unwrap();
    let host_end =
        link::create_veth(&h, "vethh", "veth0", Some(&pod), &VethOptions { up: true, ..Default::default() }).unwrap();
    link::create_veth(&hp, "keep0", "keep1", None, &VethOptions::default()).unwrap();

    for name in ["eth0", "veth0"] {
        link::set_group(&hp, link::index_of(&hp, name).unwrap(), 0x6b6e6974).unwrap();
    }
    link::delete_group(&hp, 0x6b6e6974).unwrap();
    let left: Vec<String> = link::list(&hp).unwrap().into_iter().map(|l| l.name).collect();
    assert!(left.contains(&"keep0".to_string()) && left.contains(&"keep1".to_string()), "{left:?}");
    assert!(!left.contains(&"eth0".to_string()) && !left.contains(&"veth0".to_string()), "{left:?}");
    // The veth's host end went with its peer; the macvlan's parent stays.
    assert!(link::get_by_index(&h, host_end).unwrap().is_none());
    assert!(link::get_by_index(&h, uplink).unwrap().is_some());
    // Group 0 (every link's default) is refused before anything is sent.
    assert!(link::delete_group(&hp, 0).is_err());
    assert_eq!(link::list(&hp).unwrap().len(), left.len());
}
