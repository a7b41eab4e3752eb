//! Black-box conformance of the plugin skeleton: the test plugin binary is run with CNI_*
//! variables and a config on stdin, and its exit code and stdout are checked.

mod common;

use common::{add_env, run_plugin, testplugin, with, without, Sandbox};
use knit_cni::code;
use serde_json::{json, Value};

const CONF_1_0: &str =
    r#"{"cniVersion":"1.0.0","name":"net1","type":"knit-testplugin","ip":"10.1.0.5/24","gateway":"10.1.0.1"}"#;

fn conf(version: &str) -> String {
    json!({"cniVersion": version, "name": "net1", "type": "knit-testplugin", "ip": "10.1.0.5/24"}).to_string()
}

#[test]
fn version_lists_supported_versions() {
    let out = run_plugin(&testplugin(), &[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"1.1.0"}"#);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        out.json(),
        json!({"cniVersion": "1.1.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]})
    );
}

#[test]
fn no_command_prints_about_to_stderr() {
    let out = run_plugin(&testplugin(), &[], "");
    assert_eq!(out.code, 0);
    assert!(out.stdout.is_empty(), "stdout must stay clean: {:?}", out.stdout);
    assert!(out.stderr.contains("knit-testplugin"), "{:?}", out.stderr);
    assert!(out.stderr.contains("1.1.0"));
}

#[test]
fn add_prints_result_in_config_version() {
    let out = run_plugin(&testplugin(), &add_env("/nonexistent"), CONF_1_0);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        out.json(),
        json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0", "mac": "02:42:00:00:00:01", "sandbox": "/var/run/netns/none"}],
            "ips": [{"interface": 0, "address": "10.1.0.5/24", "gateway": "10.1.0.1"}],
            "dns": {}
        })
    );
    // Printed like Go's skel: four-space indentation, no trailing newline.
    assert!(out.stdout.starts_with("{\n    \"cniVersion\": \"1.0.0\",\n"), "{}", out.stdout);
    assert!(out.stdout.ends_with('}'));
}

#[test]
fn add_result_down_converted_for_0_4_0() {
    let out = run_plugin(&testplugin(), &add_env("/x"), &conf("0.4.0"));
    assert_eq!(out.code, 0, "{out:?}");
    let v = out.json();
    assert_eq!(v["cniVersion"], "0.4.0");
    assert_eq!(v["ips"][0]["version"], "4");
    assert_eq!(v["ips"][0]["address"], "10.1.0.5/24");
}

#[test]
fn missing_env_vars_are_all_named() {
    let env = without(add_env("/x"), &["CNI_CONTAINERID", "CNI_NETNS", "CNI_PATH"]);
    let err = run_plugin(&testplugin(), &env, CONF_1_0).error();
    assert_eq!(err.code, code::INVALID_ENV);
    for var in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_PATH"] {
        assert!(err.msg.contains(var), "{var} not named in {:?}", err.msg);
    }
    assert!(!err.msg.contains("CNI_IFNAME"), "{:?}", err.msg);
    // Empty counts as missing.
    let err = run_plugin(&testplugin(), &with(add_env("/x"), "CNI_IFNAME", ""), CONF_1_0).error();
    assert_eq!(err.code, code::INVALID_ENV);
    assert!(err.msg.contains("CNI_IFNAME"), "{:?}", err.msg);
}

#[test]
fn del_does_not_need_netns_and_gc_needs_only_path() {
    let del = without(with(add_env("/x"), "CNI_COMMAND", "DEL"), &["CNI_NETNS"]);
    let out = run_plugin(&testplugin(), &del, CONF_1_0);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.is_empty());

    let gc = [("CNI_COMMAND", "GC"), ("CNI_PATH", "/x")];
    let out = run_plugin(&testplugin(), &gc, &conf("1.1.0"));
    assert_eq!(out.code, 0, "{out:?}");
    let err = run_plugin(&testplugin(), &[("CNI_COMMAND", "GC")], &conf("1.1.0")).error();
    assert_eq!(err.code, code::INVALID_ENV);
    assert!(err.msg.contains("CNI_PATH"));
}

#[test]
fn unknown_command_is_code_4() {
    let err = run_plugin(&testplugin(), &with(add_env("/x"), "CNI_COMMAND", "FROB"), CONF_1_0).error();
    assert_eq!(err.code, code::INVALID_ENV);
    assert!(err.msg.contains("FROB"), "{:?}", err.msg);
}

#[test]
fn bad_container_id_is_code_4() {
    for id in ["-leading-dash", "has space", "semi;colon", "slash/x", ".dot"] {
        let err = run_plugin(&testplugin(), &with(add_env("/x"), "CNI_CONTAINERID", id), CONF_1_0).error();
        assert_eq!(err.code, code::INVALID_ENV, "container id {id:?}");
    }
    let ok = run_plugin(&testplugin(), &with(add_env("/x"), "CNI_CONTAINERID", "a_b.c-D9"), CONF_1_0);
    assert_eq!(ok.code, 0, "{ok:?}");
}

#[test]
fn bad_ifname_is_code_4() {
    for name in [".", "..", "a/b", "a:b", "a b", "tab\tx", "sixteen-chars-xx"] {
        let err = run_plugin(&testplugin(), &with(add_env("/x"), "CNI_IFNAME", name), CONF_1_0).error();
        assert_eq!(err.code, code::INVALID_ENV, "ifname {name:?}");
    }
    let ok = run_plugin(&testplugin(), &with(add_env("/x"), "CNI_IFNAME", "fifteen-chars-x"), CONF_1_0);
    assert_eq!(ok.code, 0, "{ok:?}");
}

#[test]
fn bad_json_is_code_6() {
    let err = run_plugin(&testplugin(), &add_env("/x"), r#"{"cniVersion": "1.0.0", "name": "#).error();
    assert_eq!(err.code, code::DECODE);
    assert_eq!(err.cni_version, "1.1.0", "errors carry a cniVersion even when the config is unreadable");
}

#[test]
fn bad_config_is_code_7_naming_the_field() {
    let stdin = r#"{"cniVersion":"1.0.0","name":"net1","type":"t","ipam":"not-an-object"}"#;
    let err = run_plugin(&testplugin(), &add_env("/x"), stdin).error();
    assert_eq!(err.code, code::INVALID_CONFIG);
    assert!(err.msg.contains("\"ipam\""), "{:?}", err.msg);
    assert_eq!(err.cni_version, "1.0.0");

    let bad_name = r#"{"cniVersion":"1.0.0","name":"bad name","type":"t"}"#;
    let err = run_plugin(&testplugin(), &add_env("/x"), bad_name).error();
    assert_eq!(err.code, code::INVALID_CONFIG);
    let no_name = r#"{"cniVersion":"1.0.0","type":"t"}"#;
    let err = run_plugin(&testplugin(), &add_env("/x"), no_name).error();
    assert_eq!(err.code, code::INVALID_CONFIG);
    assert!(err.msg.contains("network name"), "{:?}", err.msg);
    // The plugin's own validation of its fields.
    let bad_ip = r#"{"cniVersion":"1.0.0","name":"n","type":"t","ip":"10.0.0.300/24"}"#;
    let err = run_plugin(&testplugin(), &add_env("/x"), bad_ip).error();
    assert_eq!(err.code, code::INVALID_CONFIG);
}

#[test]
fn unsupported_version_is_code_1_with_details() {
    for v in ["0.2.0", "2.0.0", "banana"] {
        let err = run_plugin(&testplugin(), &add_env("/x"), &conf(v)).error();
        assert_eq!(err.code, code::INCOMPATIBLE_VERSION, "version {v}");
        for supported in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
            assert!(err.details.contains(supported), "{:?}", err.details);
        }
    }
    // No cniVersion at all is the implicit 0.1.0, which is not supported.
    let err = run_plugin(&testplugin(), &add_env("/x"), r#"{"name":"n","type":"t"}"#).error();
    assert_eq!(err.code, code::INCOMPATIBLE_VERSION);
}

#[test]
fn status_and_gc_need_1_1_0() {
    for verb in ["STATUS", "GC"] {
        let env = [("CNI_COMMAND", verb), ("CNI_PATH", "/x")];
        let err = run_plugin(&testplugin(), &env, &conf("1.0.0")).error();
        assert_eq!(err.code, code::INCOMPATIBLE_VERSION, "{verb}");
        let ok = run_plugin(&testplugin(), &env, &conf("1.1.0"));
        assert_eq!(ok.code, 0, "{verb}: {ok:?}");
    }
    // CHECK needs 0.4.0.
    let check = with(add_env("/x"), "CNI_COMMAND", "CHECK");
    let err = run_plugin(&testplugin(), &check, &conf("0.3.1")).error();
    assert_eq!(err.code, code::INCOMPATIBLE_VERSION);
}

#[test]
fn plugin_errors_pass_through_with_their_code() {
    let stdin = r#"{"cniVersion":"1.1.0","name":"n","type":"t","fail":"add"}"#;
    let err = run_plugin(&testplugin(), &add_env("/x"), stdin).error();
    assert_eq!(err.code, 100);
    assert!(err.msg.contains("asked to fail ADD"), "{:?}", err.msg);
    assert_eq!(err.cni_version, "1.1.0");
}

#[test]
fn bad_cni_args_is_code_4() {
    let env = with(add_env("/x"), "CNI_ARGS", "IgnoreUnknown=1;novalue");
    let err = run_plugin(&testplugin(), &env, CONF_1_0).error();
    assert_eq!(err.code, code::INVALID_ENV);
}

#[test]
fn unknown_keys_reach_the_plugin_unchanged() {
    let sb = Sandbox::new(&[]);
    let log = sb.log();
    let stdin = json!({
        "cniVersion": "1.0.0", "name": "n", "type": "t",
        "someVendorKey": {"nested": [1, 2.5, "x", null, true], "deep": {"k": -7}},
        "cni.dev/extension": "yes",
        "ipam": {"type": "none", "unknownInIpam": [1]},
        "args": {"cni": {"ips": ["10.0.0.1"]}}
    });
    let env = with(add_env("/x"), "KNIT_TESTPLUGIN_LOG", log.to_str().expect("utf8"));
    let env = with(env, "CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=p");
    let out = run_plugin(&testplugin(), &env, &stdin.to_string());
    assert_eq!(out.code, 0, "{out:?}");
    let calls = sb.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["stdin"], stdin);
    assert_eq!(calls[0]["unknownKeys"], json!(["someVendorKey", "cni.dev/extension"]));
    assert_eq!(calls[0]["args"], json!([["IgnoreUnknown", "1"], ["K8S_POD_NAME", "p"]]));

    // And the parsed PluginConf serialises back to the same object.
    let conf: knit_cni::PluginConf = knit_cni::parse_conf(stdin.to_string().as_bytes()).expect("parse");
    assert_eq!(serde_json::to_value(&conf).expect("ser"), stdin);
    assert_eq!(conf.ipam.as_ref().map(|i| i.plugin_type.as_str()), Some("none"));
    let _: Value = calls[0]["stdin"].clone();
}
