//! Wire types: golden round trips of results, config passthrough, error parsing, config
//! decoding errors, versions, CNI_ARGS and name validation.

use knit_cni::types::{from_value_named, to_go_json};
use knit_cni::version::{self, Version};
use knit_cni::{code, parse_cni_args, parse_conf, validate, CniError, CniResult, NetConfList, PluginConf};
use serde_json::{json, Value};

/// Real output of Debian's ptp + host-local (cniVersion 1.0.0), byte for byte.
const PTP_GOLDEN: &str = include_str!("fixtures/ptp-host-local-1.0.0.json");
/// A 1.1.0 result using every field.
const FULL_GOLDEN: &str = include_str!("fixtures/full-1.1.0.json");

#[test]
fn ptp_result_round_trips_byte_for_byte() {
    let result = CniResult::from_slice(PTP_GOLDEN.as_bytes()).expect("parse");
    assert_eq!(result.interfaces.len(), 2);
    assert_eq!(result.interfaces[0].sandbox, "");
    assert_eq!(result.ips[0].interface, Some(1));
    assert_eq!(result.to_json_pretty("1.0.0").expect("print"), PTP_GOLDEN);
}

#[test]
fn full_1_1_result_round_trips_byte_for_byte() {
    let result = CniResult::from_slice(FULL_GOLDEN.as_bytes()).expect("parse");
    assert_eq!(result.to_json_pretty("1.1.0").expect("print"), FULL_GOLDEN);
    let value: Value = serde_json::from_str(FULL_GOLDEN).expect("json");
    assert_eq!(CniResult::from_value(&value).expect("from value"), result);
    assert_eq!(result.routes[0].scope, Some(0), "scope 0 is kept: Go uses *int");
}

#[test]
fn results_convert_down() {
    let result = CniResult::from_slice(FULL_GOLDEN.as_bytes()).expect("parse");
    let v100 = result.to_value("1.0.0").expect("1.0.0");
    assert_eq!(v100["cniVersion"], "1.0.0");
    assert!(v100["interfaces"][1].get("mtu").is_none());
    assert!(v100["interfaces"][1].get("socketPath").is_none());
    assert!(v100["interfaces"][1].get("pciID").is_none());
    assert_eq!(v100["routes"][0], json!({"dst": "0.0.0.0/0", "gw": "169.254.1.1"}));
    let v040 = result.to_value("0.4.0").expect("0.4.0");
    assert_eq!(v040["ips"][0]["version"], "4");
    assert_eq!(v040["ips"][1]["version"], "6");
    // A 0.4.0 result parses (ips[].version is ignored) back to the 1.0 shape.
    let back = CniResult::from_value(&v040).expect("parse 0.4.0");
    assert_eq!(back.to_value("1.0.0").expect("1.0.0"), v100);
    assert_eq!(result.to_value("0.2.0").expect_err("old").code, code::INCOMPATIBLE_VERSION);
}

#[test]
fn empty_fields_are_omitted_like_libcni() {
    let ipam_like = r#"{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.2/24","gateway":"10.0.0.1"}],"dns":{}}"#;
    let r = CniResult::from_slice(ipam_like.as_bytes()).expect("parse");
    let v = r.to_value("1.0.0").expect("value");
    assert_eq!(v, serde_json::from_str::<Value>(ipam_like).expect("json"));
    assert!(v.get("interfaces").is_none() && v.get("routes").is_none());
    let bare = CniResult::default().to_value("1.1.0").expect("bare");
    assert_eq!(bare, json!({"cniVersion": "1.1.0"}));
}

#[test]
fn errors_parse_without_cni_version() {
    let debian = "{\n    \"code\": 999,\n    \"msg\": \"failed to allocate for range 0\"\n}";
    let err: CniError = serde_json::from_str(debian).expect("parse");
    assert_eq!(err.code, 999);
    assert_eq!(err.cni_version, "");
    assert_eq!(err.to_json_pretty(), debian, "absent fields stay absent");
    let full = CniError::new(code::TRY_AGAIN_LATER, "busy").with_details("lock").with_version("1.1.0");
    assert_eq!(
        serde_json::to_value(&full).expect("ser"),
        json!({"cniVersion": "1.1.0", "code": 11, "msg": "busy", "details": "lock"})
    );
    assert!(full.to_string().contains("busy") && full.to_string().contains("11"));
}

#[test]
fn well_known_codes() {
    assert_eq!(
        [
            code::INCOMPATIBLE_VERSION,
            code::UNSUPPORTED_FIELD,
            code::UNKNOWN_CONTAINER,
            code::INVALID_ENV,
            code::IO,
            code::DECODE,
            code::INVALID_CONFIG,
            code::INVALID_NETNS,
            code::TRY_AGAIN_LATER,
            code::NOT_AVAILABLE,
            code::NOT_AVAILABLE_DEGRADED,
            code::GENERIC
        ],
        [1, 2, 3, 4, 5, 6, 7, 8, 11, 50, 51, 999]
    );
}

#[test]
fn conflist_round_trips_unknown_keys() {
    let raw = json!({
        "cniVersion": "1.1.0",
        "cniVersions": ["1.0.0", "1.1.0"],
        "name": "k8s-pod-network",
        "disableCheck": true,
        "disableGC": true,
        "loadOnlyInlinedPlugins": true,
        "vendor": {"x": 1},
        "plugins": [{"type": "knit-routed", "mtu": 1450, "ipam": {"type": "knit-ipam", "pool": "default"}}]
    });
    let list = NetConfList::from_bytes(raw.to_string().as_bytes()).expect("parse");
    assert!(list.disable_check && list.disable_gc);
    assert_eq!(list.extra.len(), 2);
    assert_eq!(serde_json::to_value(&list).expect("ser"), raw);
}

#[test]
fn plugin_conf_round_trips_and_exposes_prev_result() {
    let raw = json!({
        "cniVersion": "1.0.0",
        "name": "net",
        "type": "knit-coordinator",
        "capabilities": {"portMappings": true},
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.0.0.0/24"}]]},
        "dns": {"nameservers": ["10.96.0.10"]},
        "runtimeConfig": {"mac": "02:00:00:00:00:01"},
        "args": {"cni": {"ips": ["10.0.0.9"]}},
        "prevResult": serde_json::from_str::<Value>(PTP_GOLDEN).expect("json"),
        "mode": "auto",
        "hostRuleTable": 500
    });
    let conf: PluginConf = parse_conf(raw.to_string().as_bytes()).expect("parse");
    assert_eq!(conf.ipam_type().expect("ipam"), "host-local");
    assert_eq!(conf.extra.keys().collect::<Vec<_>>(), ["mode", "hostRuleTable"]);
    let prev = conf.prev_result().expect("prev").expect("some");
    assert_eq!(prev.interfaces[1].name, "eth0");
    assert_eq!(serde_json::to_value(&conf).expect("ser"), raw);
    let no_ipam: PluginConf = parse_conf(br#"{"name":"n","type":"t"}"#).expect("parse");
    assert_eq!(no_ipam.ipam_type().expect_err("none").code, code::INVALID_CONFIG);
    assert_eq!(no_ipam.version(), "0.1.0");
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct MyConf {
    name: String,
    #[serde(default)]
    mtu: u32,
    #[serde(default)]
    host_rule_table: Option<u32>,
    #[serde(flatten)]
    rest: serde_json::Map<String, Value>,
}

#[test]
fn parse_conf_maps_errors_to_codes_and_names_fields() {
    let err = parse_conf::<MyConf>(b"{\"name\": ").expect_err("syntax");
    assert_eq!(err.code, code::DECODE);
    let err = parse_conf::<MyConf>(br#"{"name":"n","mtu":"big"}"#).expect_err("type");
    assert_eq!(err.code, code::INVALID_CONFIG);
    assert!(err.msg.contains("\"mtu\""), "{}", err.msg);
    let err = parse_conf::<MyConf>(br#"{"name":"n","hostRuleTable":-1}"#).expect_err("range");
    assert!(err.msg.contains("\"hostRuleTable\""), "{}", err.msg);
    let err = parse_conf::<MyConf>(br#"{"mtu":1}"#).expect_err("missing");
    assert_eq!(err.code, code::INVALID_CONFIG);
    assert!(err.msg.contains("name"), "{}", err.msg);
    let err = parse_conf::<MyConf>(b"[1,2]").expect_err("shape");
    assert_eq!(err.code, code::INVALID_CONFIG);
    let ok: MyConf = from_value_named(&json!({"name": "n", "x": 1})).expect("ok");
    assert_eq!(ok.rest.len(), 1);
}

#[test]
fn go_json_uses_four_space_indent() {
    assert_eq!(
        to_go_json(&json!({"a": [1], "b": {}})).expect("json"),
        "{\n    \"a\": [\n        1\n    ],\n    \"b\": {}\n}"
    );
}

#[test]
fn version_helpers() {
    assert_eq!(Version::parse("1.1.0").expect("v"), Version { major: 1, minor: 1, patch: 0 });
    assert_eq!(Version::parse("0.4").expect("v"), Version { major: 0, minor: 4, patch: 0 });
    for bad in ["", "1", "a.b.c", "1.0.0.0", "1..0", "-1.0.0"] {
        assert_eq!(Version::parse(bad).expect_err(bad).code, code::INCOMPATIBLE_VERSION);
    }
    assert_eq!(version::compare("0.10.0", "0.4.0").expect("cmp"), std::cmp::Ordering::Greater);
    assert!(version::at_least("1.1.0", "1.1.0"));
    assert!(version::at_least("1.0.0", "0.4.0"));
    assert!(!version::at_least("1.0.0", "1.1.0"));
    assert!(!version::at_least("junk", "0.1.0"));
    assert!(version::is_supported("0.4.0") && !version::is_supported("0.2.0"));
    assert_eq!(
        version::highest_supported(["0.3.1", "1.1.0", "1.0.0", "2.0.0"], version::SUPPORTED_VERSIONS),
        Some("1.1.0".to_string())
    );
    assert_eq!(version::highest_supported(["2.0.0"], version::SUPPORTED_VERSIONS), None);
    assert_eq!(knit_cni::CURRENT_VERSION, "1.1.0");
}

#[test]
fn cni_args_parse_and_format() {
    let args = parse_cni_args("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;;IP=10.0.0.5/24;EMPTY=").expect("parse");
    assert_eq!(
        args,
        [("IgnoreUnknown", "1"), ("K8S_POD_NAMESPACE", "default"), ("IP", "10.0.0.5/24"), ("EMPTY", "")]
            .map(|(k, v)| (k.to_string(), v.to_string()))
    );
    assert_eq!(
        knit_cni::env::format_cni_args(&args),
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;IP=10.0.0.5/24;EMPTY="
    );
    assert_eq!(parse_cni_args("").expect("empty"), vec![]);
    assert_eq!(parse_cni_args("novalue").expect_err("bad").code, code::INVALID_ENV);
    assert_eq!(parse_cni_args("=v").expect_err("bad").code, code::INVALID_ENV);
}

#[test]
fn name_validation() {
    assert_eq!(validate::container_id("").expect_err("empty").code, code::UNKNOWN_CONTAINER);
    assert_eq!(validate::container_id("_x").expect_err("bad").code, code::INVALID_ENV);
    validate::container_id("0123abc_def.ghi-jkl").expect("ok");
    assert_eq!(validate::network_name("").expect_err("empty").code, code::INVALID_CONFIG);
    assert_eq!(validate::network_name("a b").expect_err("bad").code, code::INVALID_CONFIG);
    validate::network_name("k8s-pod-network").expect("ok");
    for bad in ["", ".", "..", "a/b", "a:b", "a\nb", "0123456789abcdef"] {
        assert_eq!(validate::ifname(bad).expect_err(bad).code, code::INVALID_ENV, "{bad:?}");
    }
    validate::ifname("0123456789abcde").expect("15 bytes");
}
