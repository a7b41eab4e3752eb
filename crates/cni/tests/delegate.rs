//! IPAM delegation and plugin execution, with the test plugin playing the IPAM plugin.

mod common;

use std::path::PathBuf;

use common::Sandbox;
use knit_cni::delegate::{exec_plugin, find_plugin, ipam_add, ipam_add_guarded, ipam_check, ipam_del, IpamGuard};
use knit_cni::skel::{CmdArgs, Command};
use knit_cni::{code, parse_conf};
use serde_json::{json, Value};

fn cmd_args(sb: &Sandbox, command: Command, conf: Value) -> CmdArgs {
    let stdin = conf.to_string().into_bytes();
    CmdArgs {
        command,
        container_id: "ctr-9".into(),
        netns: "/var/run/netns/x".into(),
        ifname: "net1".into(),
        args: vec![("K8S_POD_NAME".into(), "p".into())],
        path: vec![PathBuf::from("/nonexistent-dir"), sb.bin()],
        conf: parse_conf(&stdin).expect("conf"),
        stdin,
    }
}

fn main_conf(sb: &Sandbox, ipam_extra: Value) -> Value {
    let mut ipam = json!({"type": "fake-ipam", "pool": "p1"});
    if let (Value::Object(i), Value::Object(e)) = (&mut ipam, ipam_extra) {
        i.extend(e);
    }
    json!({
        "cniVersion": "1.1.0", "name": "net", "type": "knit-routed", "mtu": 1450,
        "ip": "10.5.0.7/24", "gateway": "10.5.0.1", "testLog": sb.log(), "ipam": ipam
    })
}

#[test]
fn ipam_add_runs_the_ipam_type_with_full_config_and_same_env() {
    let sb = Sandbox::new(&["fake-ipam"]);
    let conf = main_conf(&sb, json!({}));
    let args = cmd_args(&sb, Command::Add, conf.clone());
    let result = ipam_add(&args).expect("ipam add");
    assert_eq!(result.ips[0].address.to_string(), "10.5.0.7/24");
    let calls = sb.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["command"], "ADD");
    assert_eq!(calls[0]["stdin"], conf, "the complete config is delegated");
    assert_eq!(calls[0]["containerID"], "ctr-9");
    assert_eq!(calls[0]["ifname"], "net1");
    assert_eq!(calls[0]["netns"], "/var/run/netns/x");
    assert_eq!(calls[0]["args"], json!([["K8S_POD_NAME", "p"]]));

    let err = ipam_check(&cmd_args(&sb, Command::Check, conf.clone())).expect_err("CHECK needs prevResult");
    assert!(err.msg.contains("prevResult"), "{err}");
    let mut with_prev = conf.clone();
    with_prev["prevResult"] = json!({"cniVersion": "1.1.0"});
    ipam_check(&cmd_args(&sb, Command::Check, with_prev)).expect("check");
    ipam_del(&cmd_args(&sb, Command::Del, conf)).expect("del");
    assert_eq!(sb.calls().last().expect("call")["command"], "DEL");
}

#[test]
fn ipam_errors_propagate_with_code_and_message() {
    let sb = Sandbox::new(&["fake-ipam"]);
    let mut conf = main_conf(&sb, json!({}));
    conf["fail"] = json!("add");
    let err = ipam_add(&cmd_args(&sb, Command::Add, conf)).expect_err("fails");
    assert_eq!(err.code, 100);
    assert!(err.msg.contains("asked to fail ADD"), "{err}");
    assert!(err.details.contains("knit-routed"), "{err:?}");
}

#[test]
fn missing_ipam_plugin_is_code_5_naming_type_and_dirs() {
    let sb = Sandbox::new(&[]);
    let err = ipam_add(&cmd_args(&sb, Command::Add, main_conf(&sb, json!({})))).expect_err("missing");
    assert_eq!(err.code, code::IO);
    assert!(err.msg.contains("fake-ipam"), "{err}");
    assert!(err.msg.contains("/nonexistent-dir") && err.msg.contains(&sb.bin().display().to_string()), "{err}");

    let err =
        ipam_add(&cmd_args(&sb, Command::Add, main_conf(&sb, json!({"type": "../../bin/sh"})))).expect_err("slash");
    assert_eq!(err.code, code::INVALID_CONFIG);
    let err = find_plugin("a/b", &[sb.bin()]).expect_err("slash");
    assert_eq!(err.code, code::INVALID_CONFIG);

    let mut no_ipam = main_conf(&sb, json!({}));
    no_ipam.as_object_mut().expect("obj").remove("ipam");
    let err = ipam_add(&cmd_args(&sb, Command::Add, no_ipam)).expect_err("no ipam");
    assert_eq!(err.code, code::INVALID_CONFIG);
}

#[test]
fn guard_releases_unless_disarmed() {
    let sb = Sandbox::new(&["fake-ipam"]);
    let args = cmd_args(&sb, Command::Add, main_conf(&sb, json!({})));
    {
        let (_result, _guard) = ipam_add_guarded(&args).expect("add");
        // dropped on an error path
    }
    let commands: Vec<Value> = sb.calls().iter().map(|c| c["command"].clone()).collect();
    assert_eq!(commands, ["ADD", "DEL"]);
    let (_result, guard) = ipam_add_guarded(&args).expect("add");
    guard.disarm();
    let commands: Vec<Value> = sb.calls().iter().map(|c| c["command"].clone()).collect();
    assert_eq!(commands, ["ADD", "DEL", "ADD"]);
    drop(IpamGuard::new(&args));
    assert_eq!(sb.calls().len(), 4);
}

#[test]
fn exec_plugin_outcomes() {
    let sb = Sandbox::new(&["p"]);
    let plugin = sb.bin().join("p");
    let vars = vec![("CNI_PATH".to_string(), "/x".to_string())];
    // VERSION output is returned as JSON.
    let out = exec_plugin(&plugin, "VERSION", &vars, br#"{"cniVersion":"1.0.0"}"#).expect("version");
    assert_eq!(out.expect("some")["cniVersion"], "1.1.0");
    // Success without output is None.
    let conf = br#"{"cniVersion":"1.1.0","name":"n","type":"p"}"#;
    assert_eq!(exec_plugin(&plugin, "STATUS", &vars, conf).expect("status"), None);
    // A plugin error comes back with its code.
    let err = exec_plugin(&plugin, "STATUS", &[], conf).expect_err("no CNI_PATH");
    assert_eq!(err.code, code::INVALID_ENV);
    // A failing program that prints no CNI error is code 999.
    let err = exec_plugin(std::path::Path::new("/bin/false"), "ADD", &vars, b"{}").expect_err("false");
    assert_eq!(err.code, code::GENERIC);
    // A program that cannot be executed is code 5.
    let err = exec_plugin(&sb.bin().join("nope"), "ADD", &vars, b"{}").expect_err("nope");
    assert_eq!(err.code, code::IO);
    // Output that is not JSON is code 6.
    let script = sb.bin().join("not-json");
    std::fs::write(&script, "#!/bin/sh\necho hello\n").expect("write script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let err = exec_plugin(&script, "ADD", &vars, b"").expect_err("not json");
    assert_eq!(err.code, code::DECODE);
}
