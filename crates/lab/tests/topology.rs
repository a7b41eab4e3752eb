//! The topology format: the default lab, a second shape, and validation errors naming their field.

use std::path::Path;

use knit_lab::topology::{ClientSide, Endpoints, PodKind, Topology, TopologyError, TrafficPolicy, DEFAULT_TOML};

fn small() -> Topology {
    Topology::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/topologies/small.toml"))
        .expect("small.toml loads")
}

#[test]
fn default_lab_is_valid_and_complete() {
    let t = Topology::default_lab().expect("default lab");
    assert_eq!(t.nodes.len(), 3);
    for node in &t.nodes {
        let kinds: Vec<PodKind> = t.pods_on(&node.name).map(|p| p.kind).collect();
        assert_eq!(kinds, [PodKind::Overlay, PodKind::Underlay, PodKind::Multinic], "pods on {}", node.name);
    }
    // Underlay pods alternate between the pools, so both subnets are covered.
    let pools: std::collections::HashSet<_> =
        t.pods.iter().filter(|p| p.kind == PodKind::Underlay).filter_map(|p| p.pool.clone()).collect();
    assert_eq!(pools.len(), 2);
    for kind in [PodKind::Overlay, PodKind::Underlay, PodKind::Multinic] {
        let policies: Vec<TrafficPolicy> = t
            .services
            .iter()
            .filter(|s| s.endpoints == Endpoints::Kind(kind))
            .map(|s| s.external_traffic_policy)
            .collect();
        assert!(policies.contains(&TrafficPolicy::Cluster) && policies.contains(&TrafficPolicy::Local), "{kind:?}");
    }
    for s in &t.services {
        assert!(s.node_port.is_some());
        let nodes: std::collections::HashSet<_> = t.service_pods(s).iter().map(|p| p.node.clone()).collect();
        assert_eq!(nodes.len(), 3, "{} has endpoints on every node", s.name);
    }
    let sides: Vec<ClientSide> = t.clients.iter().map(|c| c.side).collect();
    assert!(sides.contains(&ClientSide::External) && sides.contains(&ClientSide::Underlay));
}

#[test]
fn topology_round_trips_through_toml() {
    for t in [Topology::default_lab().expect("default"), small()] {
        let text = t.to_toml().expect("serialize");
        assert_eq!(Topology::from_toml(&text).expect("reparse"), t);
    }
}

#[test]
fn second_topology_has_its_own_shape() {
    let t = small();
    let d = Topology::default_lab().expect("default");
    assert_eq!(t.nodes.len(), 2);
    assert_ne!(t.overlay_cidr, d.overlay_cidr);
    assert_eq!(t.block_size, 27);
    assert_eq!(t.echo_port, 9000);
    let db = t.services.iter().find(|s| s.name == "db").expect("db service");
    let names: Vec<&str> = t.service_pods(db).iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["db-a", "db-b"]);
    let inside = t.clients.iter().find(|c| c.side == ClientSide::Underlay).expect("underlay client");
    assert_eq!(t.fabric_gateway_for(inside.ip.addr()).map(|g| g.addr()), Some(inside.gateway));
}

/// Applies `edit` to the default lab's text and returns the field the error names.
fn field_of(edit: impl Fn(&str) -> String) -> String {
    let text = edit(DEFAULT_TOML);
    match Topology::from_toml(&text) {
        Err(e @ TopologyError::Invalid { .. }) => e.field().unwrap_or_default().to_string(),
        Err(e) => panic!("expected a validation error, got {e}"),
        Ok(_) => panic!("edited topology was accepted"),
    }
}

/// (expected field, edit of the default topology text).
type Case = (&'static str, Box<dyn Fn(&str) -> String>);

#[test]
fn validation_errors_name_the_field() {
    let cases: Vec<Case> = vec![
        ("nodes[1].ip", Box::new(|t: &str| t.replace("172.16.1.3/16", "10.9.9.9/16"))),
        ("nodes[1].ip", Box::new(|t: &str| t.replace("172.16.1.3/16", "172.16.1.3/24"))),
        ("nodes[2].ip", Box::new(|t: &str| t.replace("172.16.1.4/16", "172.16.1.2/16"))),
        ("nodes[0].name", Box::new(|t: &str| t.replacen("name = \"node1\"", "name = \"a-very-long-node\"", 1))),
        ("nodes[0].name", Box::new(|t: &str| t.replacen("name = \"node1\"", "name = \"Node_1\"", 1))),
        ("pods[0].node", Box::new(|t: &str| t.replacen("node = \"node1\"", "node = \"node9\"", 1))),
        ("pods[1].pool", Box::new(|t: &str| t.replacen("pool = \"underlay16\"\n", "", 1))),
        ("pods[1].pool", Box::new(|t: &str| t.replacen("pool = \"underlay16\"", "pool = \"nope\"", 1))),
        ("services[0].cluster_ip", Box::new(|t: &str| t.replace("10.233.0.10", "10.1.0.10"))),
        ("services[1].cluster_ip", Box::new(|t: &str| t.replace("10.233.0.11", "10.233.0.10"))),
        ("services[1].node_port", Box::new(|t: &str| t.replace("30081", "30080"))),
        ("services[0].node_port", Box::new(|t: &str| t.replace("30080", "8080"))),
        ("services[0].target_port", Box::new(|t: &str| t.replacen("target_port = 8080", "target_port = 81", 1))),
        (
            "services[0].endpoints",
            Box::new(|t: &str| t.replacen("endpoints = \"overlay\"", "endpoints = [\"ghost\"]", 1)),
        ),
        ("clients[0].ip", Box::new(|t: &str| t.replace("198.51.100.10/24", "172.16.9.9/16"))),
        (
            "clients[1].gateway",
            Box::new(|t: &str| t.replace("gateway = \"172.16.0.1\"\nside", "gateway = \"172.17.0.1\"\nside")),
        ),
        ("clients[1].ip", Box::new(|t: &str| t.replace("172.16.1.100/16", "172.16.2.7/16"))),
        (
            "service_cidr",
            Box::new(|t: &str| t.replace("service_cidr = \"10.233.0.0/18\"", "service_cidr = \"10.233.64.0/20\"")),
        ),
        ("overlay_cidr", Box::new(|t: &str| t.replace("10.233.64.0/18", "10.233.64.1/18"))),
        ("block_size", Box::new(|t: &str| t.replace("block_size = 26", "block_size = 19"))),
        ("block_size", Box::new(|t: &str| t.replace("block_size = 26", "block_size = 18"))),
        ("tor_asn", Box::new(|t: &str| t.replace("tor_asn = 64513", "tor_asn = 64512"))),
        (
            "underlay_pools[1].gateway",
            Box::new(|t: &str| t.replace("gateway = \"172.17.0.1\"\nrange", "gateway = \"172.16.0.1\"\nrange")),
        ),
        (
            "underlay_pools[0].range_end",
            Box::new(|t: &str| t.replace("172.16.2.254", "172.16.1.254").replace("172.16.2.1\"", "172.16.2.9\"")),
        ),
        (
            "nodes",
            Box::new(|t: &str| {
                let start = t.find("[[nodes]]").expect("nodes");
                let end = t.find("# Macvlan pods").expect("pools comment");
                format!("{}{}", &t[..start], &t[end..])
            }),
        ),
    ];
    for (want, edit) in cases {
        assert_eq!(field_of(edit), want);
    }
}

#[test]
fn unknown_fields_and_bad_values_are_parse_errors() {
    let text = DEFAULT_TOML.replacen("block_size = 26", "block_size = 26\nblock_sise = 26", 1);
    let err = Topology::from_toml(&text).expect_err("unknown field");
    assert!(matches!(err, TopologyError::Parse(ref m) if m.contains("block_sise")), "{err}");
    let text = DEFAULT_TOML.replacen("kind = \"overlay\"", "kind = \"bridge\"", 1);
    assert!(matches!(Topology::from_toml(&text), Err(TopologyError::Parse(_))));
}
