//! Config validation table: every bad case returns the right code and names the field.

use knit_ipam::IpamConfig;

fn pool(extra: &str) -> String {
    format!(r#"{{"node":"n1","dataDir":"/tmp/x","pools":[{{"name":"p","cidr":"10.233.64.0/18"{extra}}}]}}"#)
}

#[test]
fn good_config() {
    let c = IpamConfig::parse(
        pool(r#","blockSize":26,"rangeStart":"10.233.64.10","rangeEnd":"10.233.64.200","excludeIPs":["10.233.64.20","10.233.65.0/28","10.233.66.1-10.233.66.9"],"gateway":"10.233.64.1","routes":[{"dst":"0.0.0.0/0","gw":"10.233.64.1"}],"fixedIPs":true,"blocks":false,"unknownField":{"x":1}"#)
            .as_bytes(),
    )
    .unwrap();
    let p = &c.pools[0];
    assert_eq!(p.block_size, 26);
    assert!(p.fixed_ips);
    assert!(!p.affinity);
    assert_eq!(p.routes.len(), 1);
    assert_eq!(c.node, "n1");
    // blockSize == prefix is allowed (one block = whole subnet)
    IpamConfig::parse(pool(r#","blockSize":18"#).as_bytes()).unwrap();
    IpamConfig::parse(pool(r#","blockSize":32"#).as_bytes()).unwrap();
    // From a whole netconf, with unknown fields around it.
    let nc = format!(r#"{{"cniVersion":"1.0.0","name":"n","type":"knit-routed","mtu":1500,"ipam":{}}}"#, pool(""));
    IpamConfig::from_netconf(nc.as_bytes()).unwrap();
    // v6
    let c = IpamConfig::parse(br#"{"node":"n","pools":[{"name":"v6","cidr":"fd00:10::/64","gateway":"fd00:10::1"}]}"#)
        .unwrap();
    assert_eq!(c.pools[0].block_size, 122);
}

#[test]
fn bad_configs() {
    // (json, expected code, field substring, message substring)
    let cases: Vec<(String, u32, &str, &str)> = vec![
        ("{not json".into(), 6, "", "JSON"),
        (r#"{"node":"n","pools":[]}"#.into(), 7, "pools", "at least one"),
        (r#"{"node":"n"}"#.into(), 7, "pools", ""),
        (r#"{"node":"n","pools":{"name":"p"}}"#.into(), 7, "pools", "sequence"),
        (r#"[1,2]"#.into(), 7, "ipam", ""),
        (pool(r#","blockSize":"26""#), 7, "pools[0].blockSize", "invalid type"),
        (pool(r#","blockSize":300"#), 7, "pools[0].blockSize", ""),
        (pool(r#","blockSize":16"#), 7, "pools[0].blockSize", "out of range"),
        (pool(r#","blockSize":33"#), 7, "pools[0].blockSize", "out of range"),
        (pool(r#","rangeStart":"10.0.0.1""#), 7, "pools[0].rangeStart", "outside cidr"),
        (pool(r#","rangeEnd":"10.233.200.1""#), 7, "pools[0].rangeEnd", "outside cidr"),
        (pool(r#","rangeStart":"10.233.64.100","rangeEnd":"10.233.64.10""#), 7, "pools[0].rangeEnd", "before"),
        (pool(r#","rangeStart":"fd00::1""#), 7, "pools[0].rangeStart", "IPv6"),
        (pool(r#","rangeStart":"banana""#), 7, "pools[0].rangeStart", "not an IP"),
        (pool(r#","rangeStart":5"#), 7, "pools[0].rangeStart", "invalid type"),
        (pool(r#","gateway":"10.1.1.1""#), 7, "pools[0].gateway", "outside cidr"),
        (pool(r#","excludeIPs":["x"]"#), 7, "pools[0].excludeIPs[0]", ""),
        (pool(r#","excludeIPs":"10.233.64.5""#), 7, "pools[0].excludeIPs", "invalid type"),
        (pool(r#","excludeIPs":["10.233.64.9-10.233.64.5"]"#), 7, "pools[0].excludeIPs[0]", "before"),
        (pool(r#","routes":[{"dst":"nope"}]"#), 7, "pools[0].routes[0].dst", "not a CIDR"),
        (pool(r#","routes":[{"dst":"0.0.0.0/0","gw":"fd00::1"}]"#), 7, "pools[0].routes[0].gw", "families"),
        (pool(r#","routes":[{"gw":"10.0.0.1"}]"#), 7, "pools[0].routes[0]", "dst"),
        (pool(r#","fixedIPs":"yes""#), 7, "pools[0].fixedIPs", "invalid type"),
        (pool(r#","blocks":1"#), 7, "pools[0].blocks", "invalid type"),
        (r#"{"node":"n","pools":[{"name":"p","cidr":"10.233.64.0/33"}]}"#.into(), 7, "pools[0].cidr", "not a CIDR"),
        (r#"{"node":"n","pools":[{"name":"p","cidr":"10.233.64.5/18"}]}"#.into(), 7, "pools[0].cidr", "host bits"),
        (r#"{"node":"n","pools":[{"name":"p","cidr":7}]}"#.into(), 7, "pools[0].cidr", "invalid type"),
        (r#"{"node":"n","pools":[{"cidr":"10.0.0.0/24"}]}"#.into(), 7, "pools[0]", "name"),
        (r#"{"node":"n","pools":[{"name":"a/b","cidr":"10.0.0.0/24"}]}"#.into(), 7, "pools[0].name", ""),
        (r#"{"node":"n","pools":[{"name":"","cidr":"10.0.0.0/24"}]}"#.into(), 7, "pools[0].name", "empty"),
        (
            r#"{"node":"n","pools":[{"name":"a","cidr":"10.0.0.0/24"},{"name":"a","cidr":"10.1.0.0/24"}]}"#.into(),
            7,
            "pools[1].name",
            "duplicate",
        ),
        (
            r#"{"node":"n","pools":[{"name":"a","cidr":"10.0.0.0/16"},{"name":"b","cidr":"10.0.1.0/24"}]}"#.into(),
            7,
            "pools[1].cidr",
            "overlaps",
        ),
        (r#"{"node":"","pools":[{"name":"a","cidr":"10.0.0.0/24"}]}"#.into(), 7, "node", "empty"),
        (r#"{"node":5,"pools":[{"name":"a","cidr":"10.0.0.0/24"}]}"#.into(), 7, "node", "invalid type"),
        (r#"{"node":"n","store":"redis","pools":[{"name":"a","cidr":"10.0.0.0/24"}]}"#.into(), 7, "store", "redis"),
        (r#"{"node":"n","store":"etcd","pools":[{"name":"a","cidr":"10.0.0.0/24"}]}"#.into(), 7, "etcdEndpoints", ""),
        (r#"{"node":"n","dataDir":"","pools":[{"name":"a","cidr":"10.0.0.0/24"}]}"#.into(), 7, "dataDir", ""),
        (
            r#"{"node":"n","lockTimeoutMs":"x","pools":[{"name":"a","cidr":"10.0.0.0/24"}]}"#.into(),
            7,
            "lockTimeoutMs",
            "",
        ),
        (
            r#"{"node":"n","pools":[{"name":"v6","cidr":"fd00::/64","blockSize":26}]}"#.into(),
            7,
            "pools[0].blockSize",
            "out of range",
        ),
    ];
    for (json, code, field, msg) in cases {
        let err = match IpamConfig::parse(json.as_bytes()) {
            Ok(_) => panic!("accepted: {json}"),
            Err(e) => e,
        };
        assert_eq!(err.cni_code(), code, "{json}: {err}");
        if code == 7 {
            let f = err.field().unwrap_or_default();
            assert!(f.contains(field), "{json}: field {f:?} should name {field:?} ({err})");
        }
        assert!(err.to_string().contains(msg), "{json}: {err} should say {msg:?}");
        if !field.is_empty() {
            assert!(err.to_string().contains(field), "{json}: message {err} should name {field}");
        }
    }
}

#[test]
fn netconf_prefixes_field_names() {
    let e = IpamConfig::from_netconf(
        br#"{"cniVersion":"1.0.0","ipam":{"node":"n","pools":[{"name":"p","cidr":"10.0.0.0/24","blockSize":"x"}]}}"#,
    )
    .unwrap_err();
    assert_eq!(e.cni_code(), 7);
    assert_eq!(e.field(), Some("ipam.pools[0].blockSize"));
    let e = IpamConfig::from_netconf(br#"{"cniVersion":"1.0.0"}"#).unwrap_err();
    assert_eq!(e.field(), Some("ipam"));
    assert_eq!(IpamConfig::from_netconf(b"{").unwrap_err().cni_code(), 6);
}
