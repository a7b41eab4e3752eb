//! knit-routed with real namespaces and packets: two "nodes" on a bridge, pods from
//! knit-routed, static block routes between the nodes (BGP comes with the lab).

use std::net::{IpAddr, SocketAddr};

use knit_testkit::{ip, ping, result_ip, tcp_echo, tcp_probe, Cni, Fabric, Scratch, TestNet};

fn host_local_conflist(dir: &Scratch, name: &str, subnet: &str, extra: &str) -> std::path::PathBuf {
    let data = dir.path.join(format!("ipam-{name}"));
    dir.write(
        &format!("{name}.conflist"),
        &format!(
            r#"{{"cniVersion":"1.0.0","name":"k8s-pod-network","plugins":[{{"type":"knit-routed","mtu":1480{extra},
                "ipam":{{"type":"host-local","dataDir":"{}","ranges":[[{{"subnet":"{subnet}"}}]]}}}}]}}"#,
            data.display()
        ),
    )
}

fn pod_args(name: &str) -> String {
    format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={name}")
}

#[test]
fn two_nodes_pod_to_pod_by_tcp_and_icmp() {
    let tn = TestNet::new("kr").unwrap();
    let dir = Scratch::new("routed-2n");
    let fabric = Fabric::new(&tn, &["172.16.0.1/16"]);
    let node1 = fabric.node("n1", "172.16.1.2/16", "172.16.0.1");
    let node2 = fabric.node("n2", "172.16.1.3/16", "172.16.0.1");
    // Static block routes, as BIRD would install them.
    ip(&tn, &node1, &["route", "add", "10.233.64.64/26", "via", "172.16.1.3", "dev", "eth0"]);
    ip(&tn, &node2, &["route", "add", "10.233.64.0/26", "via", "172.16.1.2", "dev", "eth0"]);

    let cni1 = Cni::new(&tn, &node1, host_local_conflist(&dir, "n1", "10.233.64.0/26", ""), dir.path.join("s1"));
    let cni2 = Cni::new(&tn, &node2, host_local_conflist(&dir, "n2", "10.233.64.64/26", ""), dir.path.join("s2"));
    let a = tn.pod("a").unwrap();
    let b = tn.pod("b").unwrap();
    let c = tn.pod("c").unwrap();
    let ra = cni1.add(&a, "eth0", "cid-a", &pod_args("a")).unwrap();
    let rb = cni1.add(&b, "eth0", "cid-b", &pod_args("b")).unwrap();
    let rc = cni2.add(&c, "eth0", "cid-c", &pod_args("c")).unwrap();
    let (ipa, ipb, ipc) = (result_ip(&ra), result_ip(&rb), result_ip(&rc));

    // The result lists the host veth and the pod interface; IPs point at the pod interface.
    assert_eq!(ra["interfaces"].as_array().unwrap().len(), 2);
    assert!(ra["interfaces"][0]["name"].as_str().unwrap().starts_with("cali"));
    assert_eq!(ra["interfaces"][0]["mac"], "ee:ee:ee:ee:ee:ee");
    assert_eq!(ra["ips"][0]["interface"], 1);
    assert!(ra["ips"][0]["address"].as_str().unwrap().ends_with("/32"));

    // The seed's routes, in the pod and on the node.
    let routes = ip(&tn, &a, &["route"]);
    assert!(routes.contains("default via 169.254.1.1 dev eth0"), "{routes}");
    assert!(routes.contains("169.254.1.1 dev eth0 scope link"), "{routes}");
    let node_routes = ip(&tn, &node1, &["route"]);
    assert!(node_routes.contains(&format!("{ipa} dev cali")), "{node_routes}");

    for (ns, ip) in [(&a, ipa), (&b, ipb), (&c, ipc)] {
        tcp_echo(ns, SocketAddr::new(ip, 8080));
    }
    // Same node, across nodes, both directions.
    tcp_probe(&a, SocketAddr::new(ipb, 8080)).unwrap();
    tcp_probe(&a, SocketAddr::new(ipc, 8080)).unwrap();
    tcp_probe(&c, SocketAddr::new(ipa, 8080)).unwrap();
    tcp_probe(&c, SocketAddr::new(ipb, 8080)).unwrap();
    assert!(ping(&tn, &a, ipb));
    assert!(ping(&tn, &a, ipc));
    assert!(ping(&tn, &c, ipa));
    // Node to pod.
    tcp_probe(&node2, SocketAddr::new(ipc, 8080)).unwrap();
    tcp_probe(&node1, SocketAddr::new(ipc, 8080)).unwrap();

    // Proxy ARP: the pod sees ee:ee:ee:ee:ee:ee for any destination, in or out of the cluster.
    for dst in [ipb.to_string(), ipc.to_string(), "198.51.100.7".to_string()] {
        let out = tn.exec(&a, &["arping", "-c", "1", "-w", "2", "-I", "eth0", &dst]).unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
        assert!(text.contains("ee:ee:ee:ee:ee:ee"), "arping {dst}: {text}");
    }

    // CHECK passes on a healthy pod and fails once a route is gone.
    assert!(cni1.check(&a, "eth0", "cid-a", &pod_args("a")).ok);
    ip(&tn, &a, &["route", "del", "default"]);
    let chk = cni1.check(&a, "eth0", "cid-a", &pod_args("a"));
    assert!(!chk.ok, "CHECK should notice the missing default route");

    // DEL twice succeeds and leaves no veth and no host route.
    for _ in 0..2 {
        assert!(cni1.del(&a, "eth0", "cid-a", &pod_args("a")).ok);
        assert!(cni1.del(&b, "eth0", "cid-b", &pod_args("b")).ok);
        assert!(cni2.del(&c, "eth0", "cid-c", &pod_args("c")).ok);
    }
    assert!(knit_testkit::links_with_prefix(&node1, "cali").is_empty());
    assert!(knit_testkit::links_with_prefix(&node2, "cali").is_empty());
    let node_routes = ip(&tn, &node1, &["route"]);
    assert!(!node_routes.contains("cali"), "{node_routes}");
    let _: IpAddr = ipa;
}

#[test]
fn del_after_the_netns_is_gone_removes_the_host_veth() {
    let tn = TestNet::new("kr").unwrap();
    let dir = Scratch::new("routed-gone");
    let fabric = Fabric::new(&tn, &["172.16.0.1/16"]);
    let node = fabric.node("n1", "172.16.1.2/16", "172.16.0.1");
    let cni = Cni::new(&tn, &node, host_local_conflist(&dir, "n1", "10.233.64.0/26", ""), dir.path.join("s"));
    let pod = tn.pod("gone").unwrap();
    let path = pod.path().unwrap().display().to_string();
    cni.add(&pod, "eth0", "cid-gone", &pod_args("gone")).unwrap();
    // Simulate a netns that vanished without its veth (e.g. held open elsewhere).
    let veth_peer_before = knit_testkit::links_with_prefix(&node, "cali");
    assert_eq!(veth_peer_before.len(), 1);
    drop(pod);
    knit_host::Netns::delete_named(std::path::Path::new(&path).file_name().unwrap().to_str().unwrap()).unwrap();
    let out = cni.call_netns("del", &path, "eth0", "cid-gone", &pod_args("gone"));
    assert!(out.ok, "{:?}", out);
    assert!(knit_testkit::links_with_prefix(&node, "cali").is_empty());
    // The address went back to IPAM: host-local keeps one file per allocated address.
    let lease = dir.path.join("ipam-n1").join("k8s-pod-network").join("10.233.64.2");
    assert!(!lease.exists(), "{} still allocated", lease.display());
}

#[test]
fn bad_input_gives_cni_errors_and_leaves_nothing_behind() {
    let tn = TestNet::new("kr").unwrap();
    let dir = Scratch::new("routed-bad");
    let fabric = Fabric::new(&tn, &["172.16.0.1/16"]);
    let node = fabric.node("n1", "172.16.1.2/16", "172.16.0.1");
    let pod = tn.pod("p").unwrap();

    let cases: Vec<(&str, String, u64)> = vec![
        ("mtu of the wrong type", r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"knit-routed","mtu":"big","ipam":{"type":"host-local","ranges":[[{"subnet":"10.1.0.0/24"}]]}}]}"#.into(), 7),
        ("mtu out of range", r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"knit-routed","mtu":20,"ipam":{"type":"host-local","ranges":[[{"subnet":"10.1.0.0/24"}]]}}]}"#.into(), 7),
        ("no ipam", r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"knit-routed"}]}"#.into(), 7),
        ("unsupported version", r#"{"cniVersion":"9.9.9","name":"n","plugins":[{"type":"knit-routed","ipam":{"type":"host-local"}}]}"#.into(), 1),
    ];
    for (what, conf, code) in cases {
        let cni = Cni::new(&tn, &node, dir.write("bad.conflist", &conf), dir.path.join("s"));
        let out = cni.add(&pod, "eth0", "cid", "");
        assert_eq!(out.err_code(), code, "{what}: {}", out.json);
        assert!(out.json["msg"].as_str().is_some_and(|m| !m.is_empty()), "{what}");
        assert!(knit_testkit::links_with_prefix(&node, "cali").is_empty(), "{what} left a veth");
        assert!(knit_testkit::links_with_prefix(&pod, "eth0").is_empty(), "{what} left eth0");
    }

    // A pool with one address: the second pod fails in IPAM and leaves no interface.
    let conf = host_local_conflist(&dir, "tiny", "10.9.0.0/30", "");
    let cni = Cni::new(&tn, &node, conf, dir.path.join("s2"));
    cni.add(&pod, "eth0", "cid-1", "").unwrap();
    let pod2 = tn.pod("p2").unwrap();
    let out = cni.add(&pod2, "eth0", "cid-2", "");
    assert!(!out.ok);
    assert_eq!(knit_testkit::links_with_prefix(&node, "cali").len(), 1);
    assert!(knit_testkit::links_with_prefix(&pod2, "eth0").is_empty());

    // The interface name is taken in the pod: ADD fails after IPAM and rolls both back.
    ip(&tn, &pod2, &["link", "add", "eth0", "type", "bridge"]);
    cni.del(&pod, "eth0", "cid-1", "").unwrap();
    let out = cni.add(&pod2, "eth0", "cid-3", "");
    assert!(!out.ok, "ADD over an existing eth0 must fail");
    assert!(knit_testkit::links_with_prefix(&node, "cali").is_empty());
    // The address was released: the next ADD gets it.
    let pod3 = tn.pod("p3").unwrap();
    cni.add(&pod3, "eth0", "cid-4", "").unwrap();
}
