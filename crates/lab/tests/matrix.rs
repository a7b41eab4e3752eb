//! `knit lab matrix` end to end: the real binary builds a lab of namespaces, BIRD, kube-proxy
//! rules and echo servers, probes every cell and removes everything.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use knit_testkit::bin;
use serde_json::Value;

fn small_topology() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/topologies/small.toml")
}

/// A lab name unique to this test run.
fn lab_name(tag: &str) -> String {
    format!("t{}{tag}", std::process::id())
}

fn knit(args: &[&str]) -> Output {
    Command::new(bin("knit")).args(args).output().expect("run knit")
}

/// Runs `knit lab matrix --json --name <name> <extra>` and parses its JSON.
fn matrix(name: &str, extra: &[&str]) -> (Output, Value) {
    let mut args = vec!["lab", "matrix", "--json", "--name", name];
    args.extend_from_slice(extra);
    let out = knit(&args);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "matrix JSON: {e}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out, v)
}

fn failures(v: &Value) -> Vec<String> {
    v["cells"]
        .as_array()
        .expect("cells")
        .iter()
        .filter(|c| c["ok"] == false)
        .map(|c| format!("{} -> {} [{} {}]: {}", c["source"], c["target"], c["proto"], c["placement"], c["detail"]))
        .collect()
}

/// Nothing of lab `name` is left: no namespace, no directory, no BIRD.
fn assert_gone(name: &str) {
    let prefix = format!("knit-{name}-");
    let left: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str().map(String::from))
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "namespaces left: {left:?}");
    assert!(!Path::new("/run/knit/lab").join(name).exists(), "lab directory left");
    let birds = Command::new("pgrep").args(["-f", &format!("/run/knit/lab/{name}/")]).output().expect("pgrep");
    assert!(birds.stdout.is_empty(), "processes left: {}", String::from_utf8_lossy(&birds.stdout));
}

fn assert_all_pass(name: &str, extra: &[&str]) -> Value {
    let (out, v) = matrix(name, extra);
    let f = failures(&v);
    assert!(f.is_empty(), "{} failing cells:\n{}", f.len(), f.join("\n"));
    assert!(out.status.success(), "exit {:?}", out.status);
    assert_eq!(v["failed"], 0);
    assert!(v["passed"].as_u64().unwrap() > 0);
    assert!(v["seconds"].as_f64().is_some());
    assert_gone(name);
    v
}

#[test]
fn default_lab_passes_every_cell_with_legacy_kube_proxy() {
    let v = assert_all_pass(&lab_name("leg"), &["--kube-proxy", "legacy"]);
    // Every seed cell kind is there.
    let cells = v["cells"].as_array().unwrap();
    for placement in ["same-node", "cross-node", "external", "node"] {
        assert!(cells.iter().any(|c| c["placement"] == placement), "no {placement} cell");
    }
    for proto in ["tcp", "udp", "icmp"] {
        assert!(cells.iter().any(|c| c["proto"] == proto), "no {proto} cell");
    }
    assert!(cells.iter().any(|c| c["target"].as_str().unwrap().starts_with("nodeport ")));
    assert!(cells.iter().any(|c| c["target"].as_str().unwrap().starts_with("svc ")));
}

#[test]
fn default_lab_passes_every_cell_with_modern_kube_proxy() {
    assert_all_pass(&lab_name("mod"), &["--kube-proxy", "modern"]);
}

#[test]
fn second_topology_passes_too() {
    let topo = small_topology();
    assert_all_pass(&lab_name("small"), &["--topology", topo.to_str().unwrap()]);
}

#[test]
fn without_underlay_routes_cross_node_overlay_underlay_cells_fail() {
    let name = lab_name("nofix");
    let (out, v) = matrix(&name, &["--kube-proxy", "legacy", "--no-underlay-routes"]);
    assert_eq!(out.status.code(), Some(1), "a failing matrix exits 1");
    let cells = v["cells"].as_array().unwrap();
    let failed = |row: &str, col_prefix: &str, placement: &str| {
        cells.iter().any(|c| {
            c["ok"] == false
                && c["row"] == row
                && c["column"].as_str().unwrap().starts_with(col_prefix)
                && c["placement"] == placement
        })
    };
    // The seeds' failures: overlay → underlay and underlay → overlay, across nodes.
    assert!(failed("overlay pod", "underlay pod", "cross-node"), "overlay → underlay cross-node should fail");
    assert!(
        failed("underlay pod (node subnet)", "overlay pod", "cross-node"),
        "underlay → overlay cross-node should fail"
    );
    // Same-node paths don't need the fix.
    let same_node_direct_fail = cells.iter().any(|c| {
        c["ok"] == false && c["placement"] == "same-node" && !c["target"].as_str().unwrap().starts_with("svc ")
    });
    assert!(!same_node_direct_fail, "same-node pod cells must pass without the fix");
    assert_gone(&name);
}

#[test]
fn up_exec_status_down() {
    let name = lab_name("up");
    let topo = small_topology();
    let out = knit(&["lab", "up", "--name", &name, "--topology", topo.to_str().unwrap()]);
    let cleanup = scopeguard(&name);
    assert!(out.status.success(), "up: {}", String::from_utf8_lossy(&out.stderr));

    let st = knit(&["lab", "status", "--name", &name]);
    let text = String::from_utf8_lossy(&st.stdout);
    assert!(st.status.success() && text.contains("web-a") && text.contains("db-b"), "status: {text}");

    // A pod reaches another pod's echo server (a `knit lab serve` process) across nodes.
    let lab: Value =
        serde_json::from_str(&std::fs::read_to_string(format!("/run/knit/lab/{name}/state.json")).unwrap()).unwrap();
    let web_b = lab["pods"]["web-b"]["ips"]["eth0"][0].as_str().unwrap().to_string();
    let ping = knit(&["lab", "exec", "--name", &name, "web-a", "--", "ping", "-c", "1", "-W", "2", &web_b]);
    assert!(ping.status.success(), "ping from web-a: {}", String::from_utf8_lossy(&ping.stdout));
    // Underlay pod /32s go between nodes, never to the ToR: every BGP route of the fabric is a
    // block or the Service CIDR, while a1 has b2's underlay pod as a host route.
    let tor = knit(&["lab", "exec", "--name", &name, "fabric", "--", "ip", "-4", "route", "show", "proto", "bird"]);
    let tor = String::from_utf8_lossy(&tor.stdout).into_owned();
    assert!(!tor.trim().is_empty(), "the ToR learned nothing");
    for line in tor.lines().filter(|l| !l.starts_with(char::is_whitespace)) {
        assert!(line.split_whitespace().next().unwrap_or("").contains('/'), "the ToR learned a host route: {line}");
    }
    let db_b = lab["pods"]["db-b"]["ips"]["eth0"][0].as_str().unwrap().to_string();
    let a1 = knit(&["lab", "exec", "--name", &name, "a1", "--", "ip", "-4", "route", "show", "proto", "bird"]);
    assert!(
        String::from_utf8_lossy(&a1.stdout).lines().any(|l| l.starts_with(&format!("{db_b} via "))),
        "a1 lacks b2's underlay pod {db_b}"
    );
    // exec passes the command's exit status through.
    let f = knit(&["lab", "exec", "--name", &name, "a1", "--", "false"]);
    assert_eq!(f.status.code(), Some(1));
    let bad = knit(&["lab", "exec", "--name", &name, "nosuch", "--", "true"]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("nosuch"));

    // A second `up` with the same name is refused and leaves the first alone.
    let again = knit(&["lab", "up", "--name", &name, "--topology", topo.to_str().unwrap()]);
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("exists"));
    assert!(Path::new(&format!("/run/knit/lab/{name}/state.json")).exists());

    // trace and doctor read the lab through its inventory.
    let tr = knit(&["trace", "--lab", &name, "web-a", "web-b", "--json"]);
    assert!(
        tr.status.success(),
        "trace: {}{}",
        String::from_utf8_lossy(&tr.stdout),
        String::from_utf8_lossy(&tr.stderr)
    );
    let tr: Value = serde_json::from_slice(&tr.stdout).unwrap();
    assert_eq!(tr["forward"]["delivered_to"], "web-b", "{tr}");
    let doc = knit(&["doctor", "--lab", &name]);
    assert!(doc.status.success(), "doctor: {}", String::from_utf8_lossy(&doc.stdout));

    let down = knit(&["lab", "down", "--name", &name]);
    assert!(down.status.success(), "down: {}", String::from_utf8_lossy(&down.stderr));
    assert_gone(&name);
    // Gone: a second down says there is no such lab.
    let again = knit(&["lab", "down", "--name", &name]);
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains(&format!("no lab {name}")));
    drop(cleanup);
}

#[test]
fn bad_topology_is_refused_naming_the_field_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(small_topology()).unwrap().replace("block_size = 27", "block_size = 40");
    let p = dir.path().join("bad.toml");
    std::fs::write(&p, text).unwrap();
    let name = lab_name("bad");
    let (out, _) = (knit(&["lab", "matrix", "--name", &name, "--topology", p.to_str().unwrap()]), ());
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("block_size"), "{}", String::from_utf8_lossy(&out.stderr));
    assert_gone(&name);
}

/// Removes the lab when the test panics.
struct Guard(String);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = Command::new(bin("knit")).args(["lab", "down", "--name", &self.0]).output();
    }
}
fn scopeguard(name: &str) -> Guard {
    Guard(name.to_string())
}

#[test]
fn ctrl_c_while_building_removes_the_lab() {
    let name = lab_name("int");
    let _guard = scopeguard(&name);
    let mut child = Command::new(bin("knit"))
        .args(["lab", "matrix", "--name", &name])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn knit");
    // Wait until the lab exists, then interrupt it.
    let dir = Path::new("/run/knit/lab").join(&name);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !dir.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGINT)
        .expect("SIGINT");
    let status = child.wait().expect("wait");
    // 130 when interrupted; 0 if the whole matrix beat the signal.
    assert!(matches!(status.code(), Some(130) | Some(0)), "exit {status:?}");
    assert_gone(&name);
}

#[test]
fn four_node_topology_with_mixed_services_passes() {
    let topo = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/topologies/four.toml");
    assert_all_pass(&lab_name("four"), &["--topology", topo.to_str().unwrap(), "--kube-proxy", "modern"]);
}

#[test]
fn cluster_mode_on_etcd_passes_every_cell() {
    let v = assert_all_pass(&lab_name("etcd"), &["--datastore", "etcd"]);
    assert_eq!(v["datastore"], "etcd");
}

#[test]
fn a_killed_node_agent_leaves_the_other_nodes_peers_within_its_lease() {
    let name = lab_name("kill");
    let _guard = scopeguard(&name);
    let out = knit(&["lab", "up", "--name", &name, "--datastore", "etcd"]);
    assert!(out.status.success(), "up: {}", String::from_utf8_lossy(&out.stderr));
    let dir = Path::new("/run/knit/lab").join(&name);
    let conf = |node: &str| std::fs::read_to_string(dir.join("bird").join(node).join("bird.conf")).unwrap_or_default();
    // Every node peers with the two others (peer names carry the IP: peer_172_16_1_4).
    let state: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("state.json")).unwrap()).unwrap();
    let node3_ip = state["topology"]["nodes"][2]["ip"].as_str().unwrap().split('/').next().unwrap().replace('.', "_");
    let peer3 = format!("peer_{node3_ip} ");
    assert!(conf("node1").contains(&peer3), "node1 should peer with node3:\n{}", conf("node1"));

    // A connection from a pod on node1 to a pod on node3, open across the agent's death.
    let overlay3_ip: std::net::IpAddr = state["pods"]["overlay3"]["ips"]["eth0"][0].as_str().unwrap().parse().unwrap();
    let ns3 = knit_host::Netns::open_named(&format!("knit-{name}-overlay3")).unwrap();
    let ns1 = knit_host::Netns::open_named(&format!("knit-{name}-overlay1")).unwrap();
    let listener = ns3.run(|| std::net::TcpListener::bind("0.0.0.0:9999")).unwrap().unwrap();
    std::thread::spawn(move || {
        use std::io::{BufRead, Write};
        if let Ok((conn, _)) = listener.accept() {
            let mut w = conn.try_clone().unwrap();
            for line in std::io::BufReader::new(conn).lines().map_while(Result::ok) {
                let _ = writeln!(w, "{line}");
            }
        }
    });
    let mut conn = ns1.run(|| std::net::TcpStream::connect((overlay3_ip, 9999))).unwrap().unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
    let mut echo = |msg: &str| -> String {
        use std::io::{BufRead, Write};
        writeln!(conn, "{msg}").unwrap();
        let mut r = std::io::BufReader::new(conn.try_clone().unwrap());
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        line.trim().to_string()
    };
    assert_eq!(echo("before"), "before");

    // SIGKILL node3's agent (the process whose command line names it).
    let mut killed = false;
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        if args.iter().any(|a| a == "run")
            && args.windows(2).any(|w| w[0] == "--node" && w[1] == "node3")
            && args.iter().any(|a| a.contains(&format!("/run/knit/lab/{name}/")))
        {
            let pid: i32 = e.file_name().to_str().unwrap().parse().unwrap();
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
            killed = true;
        }
    }
    assert!(killed, "node3's agent not found");
    // The lease TTL in the lab is 4 s; the agents reconcile every 200 ms.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(12);
    while conf("node1").contains(&peer3) || conf("node2").contains(&peer3) {
        assert!(std::time::Instant::now() < deadline, "node3 still a peer after its lease:\n{}", conf("node1"));
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // node3's BIRD still runs and the ToR still routes to it: the open connection carries on.
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(echo("after"), "after");
    // node1 and node2 still peer with each other.
    let node2_ip = state["topology"]["nodes"][1]["ip"].as_str().unwrap().split('/').next().unwrap().replace('.', "_");
    assert!(conf("node1").contains(&format!("peer_{node2_ip} ")));
    assert!(knit(&["lab", "down", "--name", &name]).status.success());
    assert_gone(&name);
}

/// `knit lab matrix --lab NAME --json` against a running lab.
fn matrix_on(name: &str) -> Value {
    let out = knit(&["lab", "matrix", "--lab", name, "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("matrix JSON: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    let f = failures(&v);
    assert!(f.is_empty() && out.status.success(), "{} failing cells:\n{}", f.len(), f.join("\n"));
    v
}

#[test]
fn nodes_join_and_leave_a_cluster_mode_lab() {
    let name = lab_name("mem");
    let _guard = scopeguard(&name);
    let out = knit(&["lab", "up", "--name", &name, "--datastore", "etcd"]);
    assert!(out.status.success(), "up: {}", String::from_utf8_lossy(&out.stderr));
    let before = matrix_on(&name)["cells"].as_array().unwrap().len();

    // A fourth node joins with one pod of each kind: its agent finds the others in etcd.
    let add = knit(&[
        "lab",
        "add-node",
        "--name",
        &name,
        "node4",
        "--ip",
        "172.16.1.5/16",
        "--pod",
        "o4:overlay",
        "--pod",
        "u4:underlay:underlay17",
        "--pod",
        "m4:multinic:underlay16",
    ]);
    assert!(add.status.success(), "add-node: {}", String::from_utf8_lossy(&add.stderr));
    let v = matrix_on(&name);
    let cells = v["cells"].as_array().unwrap();
    assert!(cells.len() > before);
    // The new pods are reached from every other node's pods, and reach them.
    for pod in ["o4", "u4", "m4"] {
        assert!(cells.iter().any(|c| c["target"].as_str().unwrap().starts_with(&format!("{pod}/"))
            && c["source"] == "overlay1"
            && c["ok"] == true));
        assert!(cells.iter().any(|c| c["source"] == pod && c["placement"] == "cross-node" && c["ok"] == true));
    }

    // node2 leaves: its routes are withdrawn everywhere (remove-node waits for that) and the
    // remaining cells all pass.
    let rm = knit(&["lab", "remove-node", "--name", &name, "node2"]);
    assert!(rm.status.success(), "remove-node: {}", String::from_utf8_lossy(&rm.stderr));
    assert!(!Path::new(&format!("/run/netns/knit-{name}-node2")).exists());
    assert!(!Path::new(&format!("/run/netns/knit-{name}-overlay2")).exists());
    let v = matrix_on(&name);
    assert!(v["cells"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["source"] != "overlay2" && !c["target"].as_str().unwrap().starts_with("overlay2/")));

    assert!(knit(&["lab", "down", "--name", &name]).status.success());
    assert_gone(&name);
}

#[test]
fn add_node_needs_cluster_mode() {
    let name = lab_name("nomem");
    let _guard = scopeguard(&name);
    let topo = small_topology();
    assert!(knit(&["lab", "up", "--name", &name, "--topology", topo.to_str().unwrap()]).status.success());
    let add = knit(&["lab", "add-node", "--name", &name, "c3", "--ip", "192.168.50.13/24"]);
    assert!(!add.status.success());
    assert!(String::from_utf8_lossy(&add.stderr).contains("cluster mode"), "{}", String::from_utf8_lossy(&add.stderr));
    assert!(knit(&["lab", "down", "--name", &name]).status.success());
    assert_gone(&name);
}
