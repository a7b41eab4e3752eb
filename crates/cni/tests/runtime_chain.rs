//! The libcni-like runtime driving conflists of test plugins: prevResult chaining, result cache,
//! reverse-order DEL, CHECK, STATUS, GC and version negotiation.

mod common;

use common::Sandbox;
use knit_cni::types::Attachment;
use knit_cni::{code, NetConfList, Runtime, RuntimeArgs};
use serde_json::{json, Map, Value};

fn rt_args(container: &str) -> RuntimeArgs {
    RuntimeArgs {
        container_id: container.into(),
        netns: "/var/run/netns/test".into(),
        ifname: "eth0".into(),
        args: vec![("IgnoreUnknown".into(), "1".into()), ("K8S_POD_NAME".into(), "p".into())],
        capability_args: Map::new(),
    }
}

fn three(sb: &Sandbox, version: &str) -> NetConfList {
    sb.list(
        "chain",
        version,
        vec![
            sb.plugin("first", json!({"ip": "10.1.0.5/24", "gateway": "10.1.0.1", "appendRoute": "10.9.0.0/16"})),
            sb.plugin("second", json!({"appendRoute": "10.8.0.0/16"})),
            sb.plugin("third", json!({"appendRoute": "10.7.0.0/16"})),
        ],
    )
}

fn calls_of<'a>(calls: &'a [Value], command: &str) -> Vec<&'a Value> {
    calls.iter().filter(|c| c["command"] == command).collect()
}

#[test]
fn add_chains_prev_result_through_two_plugins() {
    let sb = Sandbox::new(&["first", "second"]);
    let list = sb.list(
        "two",
        "1.0.0",
        vec![
            sb.plugin("first", json!({"ip": "10.1.0.5/24"})),
            sb.plugin("second", json!({"appendRoute": "0.0.0.0/0"})),
        ],
    );
    let result = sb.runtime().add(&list, &rt_args("ctr-1")).expect("add");
    let calls = sb.calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0]["type"], "first");
    assert!(calls[0]["stdin"].get("prevResult").is_none(), "first plugin gets no prevResult");
    assert_eq!(calls[1]["type"], "second");
    let first_result = {
        let mut r = result.clone();
        r.as_object_mut().expect("obj").remove("routes");
        r
    };
    assert_eq!(calls[1]["stdin"]["prevResult"], first_result);
    assert_eq!(result["routes"], json!([{"dst": "0.0.0.0/0"}]));
    assert_eq!(result["ips"][0]["address"], "10.1.0.5/24");
    // Every plugin got the list's name and version, and the CNI_* values.
    for c in &calls {
        assert_eq!(c["stdin"]["name"], "two");
        assert_eq!(c["stdin"]["cniVersion"], "1.0.0");
        assert_eq!(c["containerID"], "ctr-1");
        assert_eq!(c["netns"], "/var/run/netns/test");
        assert_eq!(c["args"], json!([["IgnoreUnknown", "1"], ["K8S_POD_NAME", "p"]]));
    }
    let cached = sb.runtime().cached_result("two", "ctr-1", "eth0").expect("cache");
    assert_eq!(cached, Some(result));
}

#[test]
fn add_chains_through_three_plugins_and_del_runs_in_reverse_with_cached_result() {
    let sb = Sandbox::new(&["first", "second", "third"]);
    let list = three(&sb, "1.1.0");
    let runtime = sb.runtime();
    let result = runtime.add(&list, &rt_args("ctr-1")).expect("add");
    assert_eq!(result["routes"], json!([{"dst": "10.9.0.0/16"}, {"dst": "10.8.0.0/16"}, {"dst": "10.7.0.0/16"}]));
    let adds = sb.calls();
    assert_eq!(adds[1]["stdin"]["prevResult"]["routes"], json!([{"dst": "10.9.0.0/16"}]));
    assert_eq!(adds[2]["stdin"]["prevResult"]["routes"], json!([{"dst": "10.9.0.0/16"}, {"dst": "10.8.0.0/16"}]));

    runtime.del(&list, &rt_args("ctr-1")).expect("del");
    let calls = sb.calls();
    let dels = calls_of(&calls, "DEL");
    let order: Vec<&Value> = dels.iter().map(|c| &c["type"]).collect();
    assert_eq!(order, ["third", "second", "first"]);
    for d in &dels {
        assert_eq!(d["stdin"]["prevResult"], result, "DEL gets the final cached ADD result");
    }
    assert_eq!(runtime.cached_result("chain", "ctr-1", "eth0").expect("cache"), None);

    // A second DEL succeeds; without a cache the plugins get no prevResult.
    runtime.del(&list, &rt_args("ctr-1")).expect("second del");
    let calls = sb.calls();
    let dels = calls_of(&calls, "DEL");
    assert_eq!(dels.len(), 6);
    assert!(dels[3..].iter().all(|d| d["stdin"].get("prevResult").is_none()));
}

#[test]
fn del_without_any_add_succeeds() {
    let sb = Sandbox::new(&["first", "second", "third"]);
    let mut args = rt_args("never-added");
    args.netns.clear();
    sb.runtime().del(&three(&sb, "1.0.0"), &args).expect("del");
    assert_eq!(sb.calls().len(), 3);
}

#[test]
fn add_failure_stops_the_chain_and_propagates_the_error() {
    let sb = Sandbox::new(&["first", "second", "third"]);
    let list = sb.list(
        "failing",
        "1.0.0",
        vec![
            sb.plugin("first", json!({"ip": "10.1.0.5/24"})),
            sb.plugin("second", json!({"fail": "add"})),
            sb.plugin("third", json!({})),
        ],
    );
    let err = sb.runtime().add(&list, &rt_args("ctr-1")).expect_err("must fail");
    assert_eq!(err.code, 100);
    assert!(err.msg.contains("asked to fail ADD"), "{err}");
    assert_eq!(sb.calls().len(), 2, "third plugin must not run");
    assert_eq!(sb.runtime().cached_result("failing", "ctr-1", "eth0").expect("cache"), None);
}

#[test]
fn runtime_config_carries_only_declared_capabilities() {
    let sb = Sandbox::new(&["first"]);
    let list = sb.list(
        "caps",
        "1.0.0",
        vec![sb.plugin(
            "first",
            json!({"capabilities": {"portMappings": true, "mac": false, "ips": true}, "unknownKey": [1, {"a": null}]}),
        )],
    );
    let mut args = rt_args("ctr-1");
    args.capability_args.insert("portMappings".into(), json!([{"hostPort": 8080, "containerPort": 80}]));
    args.capability_args.insert("mac".into(), json!("02:00:00:00:00:09"));
    args.capability_args.insert("bandwidth".into(), json!({"ingressRate": 1}));
    sb.runtime().add(&list, &args).expect("add");
    let calls = sb.calls();
    let stdin = &calls[0]["stdin"];
    assert_eq!(stdin["runtimeConfig"], json!({"portMappings": [{"hostPort": 8080, "containerPort": 80}]}));
    assert!(stdin.get("capabilities").is_none());
    assert_eq!(stdin["unknownKey"], json!([1, {"a": null}]));
    assert_eq!(calls[0]["unknownKeys"], json!(["testLog", "unknownKey"]));
}

#[test]
fn check_uses_the_cached_result() {
    let sb = Sandbox::new(&["first", "second", "third"]);
    let list = three(&sb, "1.0.0");
    let runtime = sb.runtime();
    let err = runtime.check(&list, &rt_args("ctr-1")).expect_err("check before add");
    assert_eq!(err.code, code::UNKNOWN_CONTAINER);
    let result = runtime.add(&list, &rt_args("ctr-1")).expect("add");
    runtime.check(&list, &rt_args("ctr-1")).expect("check");
    let calls = sb.calls();
    let checks = calls_of(&calls, "CHECK");
    assert_eq!(checks.len(), 3);
    assert_eq!(checks.iter().map(|c| c["type"].clone()).collect::<Vec<_>>(), ["first", "second", "third"]);
    assert!(checks.iter().all(|c| c["stdin"]["prevResult"] == result));

    let mut disabled = list.clone();
    disabled.disable_check = true;
    runtime.check(&disabled, &rt_args("ctr-1")).expect("disabled check");
    assert_eq!(calls_of(&sb.calls(), "CHECK").len(), 3, "disableCheck must not call plugins");

    let old = three(&sb, "0.3.1");
    let err = runtime.check(&old, &rt_args("ctr-1")).expect_err("0.3.1 has no CHECK");
    assert_eq!(err.code, code::INCOMPATIBLE_VERSION);
}

#[test]
fn status_walks_plugins_only_for_1_1_0() {
    let sb = Sandbox::new(&["first", "second", "third"]);
    let runtime = sb.runtime();
    let err = runtime.status(&three(&sb, "1.0.0")).expect_err("1.0.0 has no STATUS");
    assert_eq!(err.code, code::INCOMPATIBLE_VERSION);
    assert!(sb.calls().is_empty());
    runtime.status(&three(&sb, "1.1.0")).expect("status");
    let calls = sb.calls();
    assert_eq!(calls.len(), 3);
    assert!(calls.iter().all(|c| c["command"] == "STATUS" && c["stdin"].get("prevResult").is_none()));

    let failing = sb.list("st", "1.1.0", vec![sb.plugin("first", json!({"fail": "status"}))]);
    assert_eq!(runtime.status(&failing).expect_err("fails").code, 100);
}

#[test]
fn gc_dels_stale_attachments_and_sends_valid_ones() {
    let sb = Sandbox::new(&["first", "second", "third"]);
    let list = three(&sb, "1.1.0");
    let runtime = sb.runtime();
    runtime.add(&list, &rt_args("keep-me")).expect("add 1");
    runtime.add(&list, &rt_args("stale")).expect("add 2");
    // Another network's cache entries are not touched.
    let other = sb.list("other", "1.1.0", vec![sb.plugin("first", json!({}))]);
    runtime.add(&other, &rt_args("stale")).expect("add other");

    let valid = vec![Attachment { container_id: "keep-me".into(), ifname: "eth0".into() }];
    runtime.gc(&list, &valid).expect("gc");

    let calls = sb.calls();
    let dels = calls_of(&calls, "DEL");
    assert_eq!(dels.len(), 3);
    assert!(dels.iter().all(|d| d["containerID"] == "stale"));
    let gcs = calls_of(&calls, "GC");
    assert_eq!(gcs.len(), 3);
    let expected = json!([{"containerID": "keep-me", "ifname": "eth0"}]);
    for g in &gcs {
        assert_eq!(g["stdin"]["cni.dev/valid-attachments"], expected);
        assert_eq!(g["stdin"]["cni.dev/attachments"], expected);
        assert_eq!(g["stdin"]["cniVersion"], "1.1.0");
    }
    assert!(runtime.cached_result("chain", "keep-me", "eth0").expect("c").is_some());
    assert!(runtime.cached_result("chain", "stale", "eth0").expect("c").is_none());
    assert!(runtime.cached_result("other", "stale", "eth0").expect("c").is_some());
    let left: Vec<String> =
        runtime.cached_attachments("chain").expect("list").into_iter().map(|e| e.container_id).collect();
    assert_eq!(left, ["keep-me"]);
}

#[test]
fn gc_needs_1_1_0_and_respects_disable_gc() {
    let sb = Sandbox::new(&["first", "second", "third"]);
    let runtime = sb.runtime();
    let err = runtime.gc(&three(&sb, "1.0.0"), &[]).expect_err("1.0.0 has no GC");
    assert_eq!(err.code, code::INCOMPATIBLE_VERSION);
    let mut list = three(&sb, "1.1.0");
    list.disable_gc = true;
    runtime.gc(&list, &[]).expect("disabled gc");
    assert!(sb.calls().is_empty());
}

#[test]
fn gc_continues_past_plugin_errors() {
    let sb = Sandbox::new(&["first", "second"]);
    let list =
        sb.list("gcerr", "1.1.0", vec![sb.plugin("first", json!({"fail": "gc"})), sb.plugin("second", json!({}))]);
    let err = sb.runtime().gc(&list, &[]).expect_err("first fails");
    assert_eq!(err.code, 100);
    assert_eq!(calls_of(&sb.calls(), "GC").len(), 2, "GC goes on after an error");
}

#[test]
fn version_negotiation_picks_highest_supported() {
    let sb = Sandbox::new(&["first"]);
    let raw = json!({
        "cniVersion": "1.0.0",
        "cniVersions": ["0.4.0", "1.1.0", "1.0.0", "9.9.9"],
        "name": "nego",
        "plugins": [sb.plugin("first", json!({"cniVersion": "0.3.0"}))]
    });
    let list = NetConfList::from_bytes(raw.to_string().as_bytes()).expect("list");
    assert_eq!(list.negotiated_version(Runtime::supported_versions()).expect("v"), "1.1.0");
    let result = sb.runtime().add(&list, &rt_args("ctr-1")).expect("add");
    assert_eq!(result["cniVersion"], "1.1.0");
    assert_eq!(sb.calls()[0]["stdin"]["cniVersion"], "1.1.0", "the list's version overrides the plugin's");
    // A 1.0-only runtime picks 1.0.0 from the same list.
    assert_eq!(list.negotiated_version(&["0.4.0", "1.0.0"]).expect("v"), "1.0.0");

    let none = json!({"cniVersions": ["9.9.9"], "name": "nego", "plugins": [{"type": "first"}]});
    let list = NetConfList::from_bytes(none.to_string().as_bytes()).expect("list");
    let err = sb.runtime().add(&list, &rt_args("ctr-1")).expect_err("no common version");
    assert_eq!(err.code, code::INCOMPATIBLE_VERSION);
    assert!(err.details.contains("1.1.0"), "{err:?}");

    let old = sb.list("old", "0.2.0", vec![sb.plugin("first", json!({}))]);
    assert_eq!(sb.runtime().add(&old, &rt_args("c")).expect_err("old").code, code::INCOMPATIBLE_VERSION);
    // The 0.4.0 family is accepted, and its results are passed along as printed.
    let v040 = sb.list("v040", "0.4.0", vec![sb.plugin("first", json!({"ip": "10.0.0.2/8"}))]);
    let r = sb.runtime().add(&v040, &rt_args("c")).expect("0.4.0 add");
    assert_eq!(r["ips"][0]["version"], "4");
}

#[test]
fn missing_or_bad_plugin_types() {
    let sb = Sandbox::new(&[]);
    let list = sb.list("missing", "1.0.0", vec![json!({"type": "nonexistent-plugin"})]);
    let err = sb.runtime().add(&list, &rt_args("c")).expect_err("missing");
    assert_eq!(err.code, code::IO);
    assert!(err.msg.contains("nonexistent-plugin"), "{err}");
    assert!(err.msg.contains(&sb.bin().display().to_string()), "{err}");

    let list = sb.list("slash", "1.0.0", vec![json!({"type": "../bin/sh"})]);
    let err = sb.runtime().add(&list, &rt_args("c")).expect_err("slash");
    assert_eq!(err.code, code::INVALID_CONFIG);
}

#[test]
fn runtime_validates_attachment_names() {
    let sb = Sandbox::new(&["first"]);
    let list = sb.list("names", "1.0.0", vec![sb.plugin("first", json!({}))]);
    let runtime = sb.runtime();
    assert_eq!(runtime.add(&list, &rt_args("bad id")).expect_err("id").code, code::INVALID_ENV);
    let mut args = rt_args("c");
    args.ifname = "way-too-long-ifname".into();
    assert_eq!(runtime.add(&list, &args).expect_err("ifname").code, code::INVALID_ENV);
    assert!(sb.calls().is_empty());
    let err = NetConfList::from_bytes(br#"{"cniVersion":"1.0.0","name":"bad/name","plugins":[{"type":"x"}]}"#)
        .expect_err("name");
    assert_eq!(err.code, code::INVALID_CONFIG);
    let err = NetConfList::from_bytes(br#"{"cniVersion":"1.0.0","name":"n","plugins":[]}"#).expect_err("empty");
    assert_eq!(err.code, code::INVALID_CONFIG);
}

#[test]
fn default_cni_path_fallback() {
    use std::path::PathBuf;
    let default = vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")];
    assert_eq!(Runtime::cni_path_from(None), default);
    assert_eq!(Runtime::cni_path_from(Some("")), default);
    assert_eq!(Runtime::cni_path_from(Some("/a::/b")), vec![PathBuf::from("/a"), PathBuf::from("/b")]);
    assert!(!Runtime::default_cni_path().is_empty());
}
