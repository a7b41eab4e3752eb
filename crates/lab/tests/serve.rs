//! The pods' echo server and the probes, over a veth between two namespaces.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use knit_lab::serve::{probe_icmp, probe_tcp, probe_udp, EchoServer, ProbeError};
use knit_testkit::{ip, udp_echo, TestNet};

const T: Duration = Duration::from_secs(1);

/// client (10.1.0.1) --veth-- server (10.1.0.2 on eth0, 10.2.0.2 on lo): the
/// server is multi-homed, and its route back to the client prefers 10.1.0.2.
fn two_address_server(tn: &TestNet) -> (knit_host::Netns, knit_host::Netns) {
    let client = tn.pod("client").expect("client ns");
    let server = tn.pod("server").expect("server ns");
    tn.link(&client, "eth0", &server, "eth0").expect("veth");
    ip(tn, &client, &["addr", "add", "10.1.0.1/24", "dev", "eth0"]);
    ip(tn, &client, &["route", "add", "10.2.0.2/32", "via", "10.1.0.2"]);
    ip(tn, &server, &["addr", "add", "10.1.0.2/24", "dev", "eth0"]);
    ip(tn, &server, &["addr", "add", "10.2.0.2/32", "dev", "lo"]);
    (client, server)
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

#[test]
fn tcp_and_udp_answer_with_the_pod_name_from_the_asked_address() {
    let tn = TestNet::new("ksv").expect("testnet");
    let (client, server) = two_address_server(&tn);
    let echo = server.run(|| EchoServer::bind("pod-a", 7000)).expect("enter ns").expect("bind");
    assert_eq!(echo.pod(), "pod-a");
    let handle = echo.spawn().expect("serve");

    let results = client
        .run(|| {
            [
                probe_tcp(addr("10.1.0.2:7000"), T),
                probe_tcp(addr("10.2.0.2:7000"), T),
                probe_udp(addr("10.1.0.2:7000"), T),
                // The interesting one: without IP_PKTINFO the reply would come from 10.1.0.2.
                probe_udp(addr("10.2.0.2:7000"), T),
            ]
        })
        .expect("enter ns");
    for r in results {
        assert_eq!(r.expect("probe"), "pod-a");
    }
    handle.stop().expect("stop");
    // Stopped: the port is closed again.
    let after = client.run(|| probe_tcp(addr("10.1.0.2:7000"), T)).expect("enter ns");
    assert!(matches!(after, Err(ProbeError::Refused { .. })), "{after:?}");
}

#[test]
fn a_plain_udp_server_answers_from_the_wrong_address() {
    // The control for the test above: testkit's std-socket echo server has no IP_PKTINFO.
    let tn = TestNet::new("ksw").expect("testnet");
    let (client, server) = two_address_server(&tn);
    udp_echo(&server, addr("0.0.0.0:7001"));
    let r = client.run(|| probe_udp(addr("10.2.0.2:7001"), T)).expect("enter ns");
    match r {
        Err(ProbeError::WrongSource { from, .. }) => assert_eq!(from, addr("10.1.0.2:7001")),
        other => panic!("expected a wrong-source reply, got {other:?}"),
    }
}

#[test]
fn failures_are_classified_and_bounded() {
    let tn = TestNet::new("ksf").expect("testnet");
    let (client, server) = two_address_server(&tn);
    let _serving =
        server.run(|| EchoServer::bind("pod-b", 7002)).expect("enter ns").expect("bind").spawn().expect("serve");
    // A drop on the server side: timeouts, each within about the bound.
    ip(&tn, &server, &["route", "add", "blackhole", "10.1.0.1/32"]);
    let started = Instant::now();
    let (tcp, udp, icmp) = client
        .run(|| {
            (
                probe_tcp(addr("10.1.0.2:7002"), T),
                probe_udp(addr("10.1.0.2:7002"), T),
                probe_icmp("10.1.0.2".parse::<IpAddr>().expect("ip"), T),
            )
        })
        .expect("enter ns");
    assert!(started.elapsed() < Duration::from_secs(5), "probes took {:?}", started.elapsed());
    assert!(matches!(tcp, Err(ProbeError::Timeout { .. })), "{tcp:?}");
    assert!(matches!(udp, Err(ProbeError::Timeout { .. })), "{udp:?}");
    assert!(matches!(icmp, Err(ProbeError::NoEcho { .. })), "{icmp:?}");

    ip(&tn, &server, &["route", "del", "blackhole", "10.1.0.1/32"]);
    let (icmp, refused, unreachable) = client
        .run(|| {
            (
                probe_icmp("10.2.0.2".parse::<IpAddr>().expect("ip"), T),
                probe_tcp(addr("10.1.0.2:7999"), T),
                probe_tcp(addr("192.0.2.9:7002"), T),
            )
        })
        .expect("enter ns");
    icmp.expect("ping the second address");
    assert!(matches!(refused, Err(ProbeError::Refused { .. })), "{refused:?}");
    assert!(matches!(unreachable, Err(ProbeError::Unreachable { .. })), "{unreachable:?}");
}
