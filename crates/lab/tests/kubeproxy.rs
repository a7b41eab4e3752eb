//! kube-proxy rules in a real namespace: iptables-restore accepts them, and a
//! ClusterIP and a NodePort really DNAT to a pod.

use std::net::SocketAddr;
use std::time::Duration;

use knit_host::firewall::{iptables_restore, iptables_save};
use knit_host::Family;
use knit_lab::kubeproxy::{generate, lab_service_ports, Endpoint, Mode, NodeConfig, Protocol, ServicePort};
use knit_lab::serve::{probe_udp, EchoServer};
use knit_lab::topology::{Topology, TrafficPolicy};
use knit_testkit::{ip, tcp_echo, tcp_probe, TestNet};

const CLUSTER_CIDR: &str = "10.200.0.0/16";

fn node_config(node: &str, mode: Mode, tcp_be_liberal: bool) -> NodeConfig {
    NodeConfig { node: node.into(), cluster_cidr: CLUSTER_CIDR.parse().expect("cidr"), mode, tcp_be_liberal }
}

#[test]
fn default_lab_rules_load_in_both_modes() {
    let topo = Topology::default_lab().expect("default lab");
    // Fake pod IPs: one per pod, from the overlay pool, so every Service has endpoints on every node.
    let mut ports = Vec::new();
    for svc in &topo.services {
        let eps: Vec<_> = topo
            .service_pods(svc)
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let ip = match topo.overlay_cidr.hosts().nth(i + 1) {
                    Some(ip) => ip,
                    None => panic!("overlay CIDR too small"),
                };
                (ip, p.node.clone())
            })
            .collect();
        ports.extend(lab_service_ports("default", svc, &eps));
    }
    let tn = TestNet::new("kpl").expect("testnet");
    for (mode, liberal, drops) in [(Mode::Legacy, true, true), (Mode::Modern, true, false), (Mode::Modern, false, true)]
    {
        let cfg = NodeConfig {
            node: topo.nodes[0].name.clone(),
            cluster_cidr: topo.overlay_cidr,
            mode,
            tcp_be_liberal: liberal,
        };
        let rules = generate(&cfg, &ports);
        iptables_restore(Some(tn.host()), Family::V4, &rules.restore_text(), false)
            .expect("iptables-restore accepts the rules");
        let saved = iptables_save(Some(tn.host()), Family::V4, None).expect("iptables-save");
        assert_eq!(saved.contains("--ctstate INVALID -j DROP"), drops, "{mode:?} liberal={liberal}");
        // A full reload replaces the tables instead of stacking the jump rules.
        let jumps = saved.lines().filter(|l| l.starts_with("-A PREROUTING") && l.contains("KUBE-SERVICES")).count();
        assert_eq!(jumps, 1);
        for p in &ports {
            assert!(saved.contains(&format!(":{} ", p.svc_chain())), "{} missing", p.svc_chain());
        }
        // Local-policy Services have local endpoints on node1, so they get an SVL chain.
        let local = ports.iter().find(|p| p.external_traffic_policy == TrafficPolicy::Local).expect("a Local service");
        assert!(saved.contains(&format!(":{} ", local.svl_chain())));
    }
}

/// client ns --veth-- node ns (kube-proxy rules) --veth-- server ns.
#[test]
fn cluster_ip_and_node_port_dnat_to_the_pod() {
    let tn = TestNet::new("kpd").expect("testnet");
    let node = tn.host();
    let client = tn.pod("client").expect("client ns");
    let server = tn.pod("server").expect("server ns");
    tn.link(node, "toclient", &client, "eth0").expect("client link");
    tn.link(node, "toserver", &server, "eth0").expect("server link");
    ip(&tn, node, &["addr", "add", "192.0.2.1/24", "dev", "toclient"]);
    ip(&tn, node, &["addr", "add", "10.200.1.1/24", "dev", "toserver"]);
    ip(&tn, &client, &["addr", "add", "192.0.2.2/24", "dev", "eth0"]);
    ip(&tn, &client, &["route", "add", "default", "via", "192.0.2.1"]);
    ip(&tn, &server, &["addr", "add", "10.200.1.2/24", "dev", "eth0"]);
    ip(&tn, &server, &["route", "add", "default", "via", "10.200.1.1"]);
    tn.exec_ok(node, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]).expect("forwarding");

    let pod_ip = "10.200.1.2".parse().expect("ip");
    tcp_echo(&server, SocketAddr::new(pod_ip, 8080));
    // testkit's TCP echo holds 8080; knit's own echo server answers UDP on 8081.
    let udp_server = server.run(|| EchoServer::bind("server-pod", 8081)).expect("enter ns").expect("bind echo");
    let _serving = udp_server.spawn().expect("serve");

    let ports: Vec<ServicePort> = [Protocol::Tcp, Protocol::Udp]
        .into_iter()
        .map(|protocol| ServicePort {
            namespace: "default".into(),
            name: "echo".into(),
            port_name: protocol.as_str().into(),
            protocol,
            cluster_ip: "10.96.0.10".parse().expect("ip"),
            port: 80,
            node_port: Some(30080),
            external_traffic_policy: TrafficPolicy::Cluster,
            endpoints: vec![Endpoint {
                ip: pod_ip,
                port: if protocol == Protocol::Tcp { 8080 } else { 8081 },
                node: "node-a".into(),
            }],
        })
        .collect();
    let rules = generate(&node_config("node-a", Mode::Legacy, false), &ports);
    iptables_restore(Some(node), Family::V4, &rules.restore_text(), false).expect("load rules");

    let cluster_ip: SocketAddr = "10.96.0.10:80".parse().expect("addr");
    tcp_probe(&client, cluster_ip).expect("TCP via ClusterIP");
    tcp_probe(&client, "192.0.2.1:30080".parse().expect("addr")).expect("TCP via NodePort");
    let who =
        client.run(|| probe_udp(cluster_ip, Duration::from_secs(1))).expect("enter ns").expect("UDP via ClusterIP");
    assert_eq!(who, "server-pod");

    // The node's own DNAT rules did the work: both (TCP and UDP) counted packets.
    let saved = tn.exec_ok(node, &["iptables-save", "-c", "-t", "nat"]).expect("iptables-save");
    let text = String::from_utf8_lossy(&saved.stdout);
    let dnat_hits = text
        .lines()
        .filter(|l| l.contains("-j DNAT --to-destination 10.200.1.2:808"))
        .filter(|l| !l.starts_with("[0:"))
        .count();
    assert_eq!(dnat_hits, 2, "both TCP and UDP DNAT rules counted packets:\n{text}");
}
