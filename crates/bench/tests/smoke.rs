//! `knit-lab bench` (what `knit bench` runs) as a user runs it: the JSON shape of the suites, their rows, the "not yet
//! available" suites, and the clean-up of the run's namespaces. No timing thresholds: timings
//! belong to BENCHMARKS.md, not to tests.

use std::process::Command;

use knit_bench::{cni, ipam};
use knit_testkit::bin;
use serde_json::Value;

/// Runs `knit-lab bench ARGS…`; returns (success, stdout as JSON or Null, stderr, pid).
fn knit_bench(args: &[&str]) -> (bool, Value, String, u32) {
    let mut cmd = Command::new(bin("knit-lab"));
    cmd.arg("bench").args(args);
    let child =
        cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().expect("spawn knit");
    let pid = child.id();
    let out = child.wait_with_output().expect("wait for knit");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (out.status.success(), json, String::from_utf8_lossy(&out.stderr).into_owned(), pid)
}

/// The shape: `{"suite":…,"results":[{"name":…,"median_ms":…,"p99_ms":…,"reference":…,"ratio":…}]}`.
fn check_shape(v: &Value, suite: &str) -> Vec<String> {
    assert_eq!(v["suite"], suite, "{v}");
    let results = v["results"].as_array().unwrap_or_else(|| panic!("results is not an array: {v}"));
    assert!(!results.is_empty());
    let names: Vec<String> = results.iter().map(|r| r["name"].as_str().expect("name").to_string()).collect();
    for r in results {
        let name = &r["name"];
        // "X - floor" rows are paired differences: with a handful of samples, noise can make
        // them negative.
        let difference = name.as_str().is_some_and(|n| n.contains(" - "));
        assert!(
            r["median_ms"].as_f64().is_some_and(|x| x.is_finite() && (difference || x >= 0.0)),
            "{name}: median_ms"
        );
        assert!(r["p99_ms"].as_f64().is_some_and(|x| x.is_finite() && (difference || x >= 0.0)), "{name}: p99_ms");
        let obj = r.as_object().expect("result object");
        assert!(
            obj.contains_key("reference") && obj.contains_key("ratio"),
            "{name}: reference and ratio are always present"
        );
        match &r["reference"] {
            Value::Null => assert!(r["ratio"].is_null(), "{name}: a ratio needs a reference"),
            Value::String(reference) => {
                assert!(names.contains(reference), "{name}: reference {reference:?} is not a row");
                // A difference row's reference can come out at or below zero: no ratio then.
                let ok = r["ratio"].as_f64().is_some_and(|x| x.is_finite() && (difference || x > 0.0))
                    || (difference && r["ratio"].is_null());
                assert!(ok, "{name}: ratio {}", r["ratio"]);
            }
            other => panic!("{name}: reference {other}"),
        }
        if let Some(met) = r.get("met") {
            assert!(met.is_boolean() && r["target"].is_string(), "{name}: met comes with its target");
        }
    }
    names
}

/// The run's namespaces (`knit-bench-<pid hex>-…`) are gone when knit exits.
fn assert_no_namespaces_left(pid: u32) {
    let prefix = format!("knit-bench-{pid:x}-");
    let left: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    let ours: Vec<&String> = left.iter().filter(|n| n.starts_with(&prefix)).collect();
    assert!(ours.is_empty(), "namespaces left behind: {ours:?}");
}

#[test]
fn cni_add_del_json_shape() {
    let (ok, v, stderr, pid) = knit_bench(&["cni-add-del", "--n", "5", "--json", "--quiet"]);
    assert!(ok, "knit bench cni-add-del failed: {stderr}");
    assert_eq!(v["n"], 5);
    let names = check_shape(&v, "cni-add-del");
    for row in [
        cni::rows::PROCESS,
        cni::rows::VETH_DEL,
        cni::rows::PTP_ADD,
        cni::rows::ROUTED_ADD,
        cni::rows::PTP_DEL,
        cni::rows::ROUTED_DEL,
        cni::rows::ROUTED_DEL_NET,
        cni::rows::MACVLAN_ADD,
        cni::rows::COORD_ADD,
        cni::rows::MACVLAN_DEL,
        cni::rows::COORD_DEL,
    ] {
        assert!(names.iter().any(|n| n == row), "row {row:?} missing from {names:?}");
    }
    let routed = v["results"].as_array().unwrap().iter().find(|r| r["name"] == cni::rows::ROUTED_ADD).unwrap();
    assert_eq!(routed["reference"], cni::rows::PTP_ADD);
    assert_eq!(routed["samples"], 5);
    assert_no_namespaces_left(pid);
}

#[test]
fn ipam_json_shape() {
    let (ok, v, stderr, pid) = knit_bench(&["ipam", "--n", "16", "--json", "--quiet"]);
    assert!(ok, "knit bench ipam failed: {stderr}");
    let names = check_shape(&v, "ipam");
    for row in [ipam::rows::HL_ADD, ipam::rows::KI_ADD, ipam::rows::KI_ADD_C, ipam::rows::CORE] {
        assert!(names.iter().any(|n| n == row), "row {row:?} missing from {names:?}");
    }
    let conc = v["results"].as_array().unwrap().iter().find(|r| r["name"] == ipam::rows::KI_ADD_C).unwrap();
    assert_eq!(conc["met"], true, "8 concurrent knit-ipam processes gave duplicate addresses: {conc}");
    assert!(conc["ops_per_s"].as_f64().is_some_and(|x| x > 0.0));
    // The etcd store rounds (etcd-server is one of the packages the tests need).
    let etcd = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == ipam::rows::KE_ADD_C)
        .unwrap_or_else(|| panic!("no etcd rows in {names:?}"));
    assert_eq!(etcd["met"], true, "8 concurrent knit-ipam processes on etcd gave duplicate addresses: {etcd}");
    assert!(names.iter().any(|n| n == ipam::rows::KE_ADD), "{names:?}");
    assert_no_namespaces_left(pid);
    let leftovers: Vec<_> = std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!("knit-bench-etcd-{pid}-")))
                .collect()
        })
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "etcd data left behind: {leftovers:?}");
}

#[test]
fn matrix_suite_times_setup_cells_and_teardown() {
    let out =
        Command::new(bin("knit-lab")).args(["bench", "matrix", "--n", "1", "--json"]).output().expect("run knit-lab");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let names = check_shape(&v, "matrix");
    for prefix in ["matrix setup", "matrix cells", "matrix teardown", "matrix total"] {
        assert!(names.iter().any(|n| n.starts_with(prefix)), "row {prefix:?} missing from {names:?}");
    }
}

#[test]
fn bad_options_are_refused() {
    let out = Command::new(bin("knit-lab")).args(["bench", "cni-add-del", "--n", "0"]).output().expect("run knit-lab");
    assert!(!out.status.success(), "--n 0 is refused");
}
