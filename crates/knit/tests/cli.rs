//! The operator CLI as documented: `knit cluster set|show --etcd-endpoints URL` against a real
//! etcd, a closed stdout, `knit lab`/`knit bench` running the developer binary, and `knit trace`
//! / `knit doctor` on namespaces an inventory names and where `/proc/1/ns/net` can't be opened.
//! Everything runs in the test's own namespaces.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use knit_testkit::etcd::{Etcd, ENDPOINT};
use knit_testkit::{Scratch, TestNet};
use serde_json::Value;

fn knit() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_knit"))
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `knit ARGS` inside `ns`.
fn knit_in(tn: &TestNet, ns: &knit_host::Netns, args: &[&str]) -> Output {
    let exe = knit();
    let mut argv = vec![exe.to_str().expect("utf-8 path")];
    argv.extend_from_slice(args);
    tn.exec(ns, &argv).expect("run knit")
}

#[test]
fn cluster_set_and_show_parse_and_work_as_documented() {
    let tn = TestNet::new("kcl").expect("testnet");
    let Some(_etcd) = Etcd::start_in(tn.host()) else { return };
    // README and deploy/README.md: the etcd flags come after the subcommand.
    let set = knit_in(
        &tn,
        tn.host(),
        &[
            "cluster",
            "set",
            "--etcd-endpoints",
            ENDPOINT,
            "--overlay-cidr",
            "10.244.0.0/16",
            "--service-cidr",
            "10.96.0.0/12",
        ],
    );
    assert!(set.status.success(), "knit cluster set: {}", text(&set));
    let show = knit_in(&tn, tn.host(), &["cluster", "show", "--etcd-endpoints", ENDPOINT]);
    assert!(show.status.success(), "knit cluster show: {}", text(&show));
    let v: Value = serde_json::from_slice(&show.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&show)));
    assert_eq!(v["config"]["overlayPodCIDR"], serde_json::json!(["10.244.0.0/16"]), "{v}");
    assert_eq!(v["config"]["serviceCIDR"], serde_json::json!(["10.96.0.0/12"]), "{v}");
    assert_eq!(v["nodes"], serde_json::json!([]), "{v}");
    // A later set changes only the lists it names.
    let set =
        knit_in(&tn, tn.host(), &["cluster", "set", "--etcd-endpoints", ENDPOINT, "--hijack-cidr", "192.0.2.0/24"]);
    assert!(set.status.success(), "{}", text(&set));
    let show = knit_in(&tn, tn.host(), &["cluster", "show", "--etcd-endpoints", ENDPOINT]);
    let v: Value = serde_json::from_slice(&show.stdout).expect("json");
    assert_eq!(v["config"]["overlayPodCIDR"], serde_json::json!(["10.244.0.0/16"]), "{v}");
    assert_eq!(v["config"]["hijackCIDR"], serde_json::json!(["192.0.2.0/24"]), "{v}");
    // The endpoints are required, and the error says so.
    let none = knit_in(&tn, tn.host(), &["cluster", "show"]);
    assert!(
        !none.status.success() && String::from_utf8_lossy(&none.stderr).contains("--etcd-endpoints"),
        "{}",
        text(&none)
    );
}

/// Runs `cmd` with its stdout a pipe whose reading end is already closed (`| head -0`).
fn with_closed_stdout(cmd: &mut Command) -> Output {
    let (r, w) = nix::unistd::pipe().expect("pipe");
    drop(r);
    cmd.stdout(Stdio::from(w)).stderr(Stdio::piped()).output().expect("run")
}

/// Quiet on EPIPE: killed by SIGPIPE (a shell shows 141), or exit 0 or 141; no panic text.
fn assert_quiet_epipe(what: &str, out: &Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ok = out.status.signal() == Some(libc::SIGPIPE) || matches!(out.status.code(), Some(0) | Some(141));
    assert!(ok && !stderr.contains("panicked"), "{what} on a closed stdout: {}", text(out));
}

#[test]
fn a_closed_stdout_ends_knit_quietly() {
    let tn = TestNet::new("kpp").expect("testnet");
    let exe = knit();
    let mut cmd = Command::new(&exe);
    cmd.args(["node", "underlay-ips"]);
    let out = tn.host().run(move || with_closed_stdout(&mut cmd)).expect("enter namespace");
    assert_quiet_epipe("knit node underlay-ips", &out);
    // Through the developer binary as well (README: `knit lab status | head -1`).
    let runs = Scratch::new("epipe-labs");
    for lab in ["a", "b"] {
        std::fs::create_dir(runs.path.join(lab)).expect("mkdir");
    }
    let out = with_closed_stdout(Command::new(&exe).args(["lab", "status", "--run-dir"]).arg(&runs.path));
    assert_quiet_epipe("knit lab status", &out);
}

#[test]
fn knit_lab_and_bench_run_the_developer_binary() {
    let runs = Scratch::new("fwd-labs");
    let out = Command::new(knit()).args(["lab", "status", "--run-dir"]).arg(&runs.path).output().expect("run");
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("no labs"), "{}", text(&out));
    let help = Command::new(knit()).args(["bench", "--help"]).output().expect("run");
    assert!(help.status.success() && String::from_utf8_lossy(&help.stdout).contains("cni-add-del"), "{}", text(&help));

    // A node install: `knit` alone, no knit-lab next to it or on PATH.
    let bin_dir = knit().parent().expect("bin dir").to_path_buf();
    let alone = bin_dir.parent().expect("target dir").join(format!("knit-test-alone-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&alone);
    std::fs::create_dir_all(&alone).expect("mkdir");
    let lone = alone.join("knit");
    std::fs::hard_link(knit(), &lone).or_else(|_| std::fs::copy(knit(), &lone).map(|_| ())).expect("link knit");
    let out = Command::new(&lone).args(["lab", "status"]).env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin").output();
    let _ = std::fs::remove_dir_all(&alone);
    let out = out.expect("run");
    assert_eq!(out.status.code(), Some(127), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("knit-lab") && stderr.contains("cargo build --workspace --bins"), "{stderr}");
}

/// A node namespace and a pod behind a veth, 192.0.2.1 ↔ 192.0.2.2, and an inventory naming
/// them (the shape a real node could write).
fn node_with_pod(tn: &TestNet, dir: &Path) -> PathBuf {
    let pod = tn.pod("pod").expect("pod");
    tn.link(tn.host(), "vpod", &pod, "eth0").expect("veth");
    tn.exec_ok(tn.host(), &["ip", "addr", "add", "192.0.2.1/24", "dev", "vpod"]).expect("addr");
    tn.exec_ok(&pod, &["ip", "addr", "add", "192.0.2.2/24", "dev", "eth0"]).expect("addr");
    let names = tn.namespace_names();
    let inv = serde_json::json!({
        "name": "test-node",
        "nodes": [{"name": "node", "netns": names[0], "ip": "192.0.2.1"}],
        "pods": [{"name": "pod", "netns": names[1], "node": "node", "kind": "other", "ips": {"eth0": ["192.0.2.2"]}}],
    });
    let path = dir.join("inventory.json");
    std::fs::write(&path, inv.to_string()).expect("write inventory");
    path
}

#[test]
fn trace_and_doctor_read_what_an_inventory_names() {
    let tn = TestNet::new("kti").expect("testnet");
    let dir = Scratch::new("inventory");
    let inv = node_with_pod(&tn, &dir.path);
    let inv = inv.to_str().expect("utf-8");
    let out = Command::new(knit())
        .args(["trace", "--inventory", inv, "pod", "node", "--proto", "icmp", "--json"])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", text(&out));
    let t: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(t["delivered"], true, "{t}");
    let hops: Vec<&str> =
        t["forward"]["hops"].as_array().expect("hops").iter().filter_map(|h| h["ns"].as_str()).collect();
    assert_eq!(hops, ["pod", "node"], "{t}");
    // The node's forwarding is off in a fresh namespace: doctor says so, for the node only.
    let out = Command::new(knit()).args(["doctor", "--inventory", inv, "--json"]).output().expect("run");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let problems: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(problems[0]["ns"], "node", "{problems}");
    assert_eq!(problems[0]["check"], "forwarding", "{problems}");
    // An unknown lab names the labs there are.
    let runs = Scratch::new("trace-labs");
    std::fs::create_dir(runs.path.join("mylab")).expect("mkdir");
    let out = Command::new(knit())
        .args(["trace", "--lab", "nosuch", "--run-dir"])
        .arg(&runs.path)
        .args(["a", "b"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no lab nosuch (labs here: mylab)"), "{}", text(&out));
}

#[test]
fn trace_and_doctor_fall_back_to_their_own_namespace_in_a_container() {
    let tn = TestNet::new("ktc").expect("testnet");
    let exe = knit();
    let exe = exe.to_str().expect("utf-8 path");
    // A private mount namespace where /proc/1 is an empty directory (so /proc/1/ns/net can't be
    // opened, as in a container) and /run/netns is empty (so only the host namespace is read).
    let script = "mount -t tmpfs knit-test /proc/1 && mount -t tmpfs knit-test /run/netns && exec \"$@\"";
    let run = |args: &[&str]| -> Output {
        let mut argv = vec!["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", exe];
        argv.extend_from_slice(args);
        tn.exec(tn.host(), &argv).expect("run")
    };
    let out = run(&["trace", "host", "127.0.0.1", "--proto", "icmp", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("using this process's namespace"), "{}", text(&out));
    let t: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(t["delivered"], true, "{t}");
    let out = run(&["doctor", "--node", "--json"]);
    // 0 or 1 (problems found), never 2 (could not read).
    assert!(matches!(out.status.code(), Some(0) | Some(1)), "{}", text(&out));
    let problems: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(problems.as_array().is_some_and(|p| p.iter().all(|x| x["ns"] == "host")), "{problems}");
}
