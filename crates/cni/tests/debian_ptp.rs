//! Differential test against Debian's reference plugins: ptp + host-local (cniVersion 1.0.0)
//! driven by our runtime. The runtime runs on a thread that has entered a throwaway "node"
//! network namespace; the pod is another throwaway namespace. Nothing touches the root netns.
//! Skips (passes with a note) when not root or when /usr/lib/cni/ptp is absent, except under
//! `CI=true`, where that fails (knit_testkit::require).

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use knit_cni::types::to_go_json;
use knit_cni::{CniResult, NetConfList, Runtime, RuntimeArgs};
use serde_json::{json, Value};

const DEBIAN_CNI: &str = "/usr/lib/cni";

/// A named network namespace (`ip netns add`), deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new(role: &str) -> Netns {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let name = format!("kc-{role}-{}-{nanos:x}", std::process::id());
        let ok = Command::new("ip").args(["netns", "add", &name]).status().map(|s| s.success()).unwrap_or(false);
        assert!(ok, "ip netns add {name} failed");
        Netns { name }
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }

    /// Runs `ip <args>` inside this namespace and returns stdout.
    fn ip(&self, args: &[&str]) -> (bool, String) {
        let out =
            Command::new("ip").args(["netns", "exec", &self.name, "ip"]).args(args).output().expect("ip netns exec");
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `f` on a fresh thread that has joined this namespace; the thread then exits, so no
    /// other thread ever changes namespace.
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = self.path();
        std::thread::scope(|s| {
            s.spawn(move || {
                let fd = File::open(&path).expect("open netns");
                nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                f()
            })
            .join()
            .expect("netns thread panicked")
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// A wrapper named `ptp` that runs Debian's ptp and keeps a copy of its exact stdout.
fn capturing_ptp(dir: &Path, capture_dir: &Path) -> PathBuf {
    let script = format!(
        "#!/bin/sh\nout=$({DEBIAN_CNI}/ptp)\nrc=$?\nprintf '%s' \"$out\" > '{}'/\"$CNI_COMMAND\".$$\nprintf '%s' \"$out\"\nexit $rc\n",
        capture_dir.display()
    );
    let path = dir.join("ptp");
    std::fs::write(&path, script).expect("write wrapper");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

fn captured(capture_dir: &Path, command: &str) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(capture_dir)
        .expect("capture dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(&format!("{command}.")))
        .map(|e| std::fs::read_to_string(e.path()).expect("read capture"))
        .collect();
    out.sort();
    out
}

#[test]
fn debian_ptp_host_local_through_runtime() {
    knit_testkit::require!(
        nix::unistd::Uid::effective().is_root() && Path::new(DEBIAN_CNI).join("ptp").exists(),
        "needs root and {DEBIAN_CNI}/ptp (apt-get install containernetworking-plugins)"
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let bin = tmp.path().join("bin");
    let capture = tmp.path().join("capture");
    std::fs::create_dir(&bin).expect("mkdir");
    std::fs::create_dir(&capture).expect("mkdir");
    capturing_ptp(&bin, &capture);

    let node = Netns::new("node");
    let pod = Netns::new("pod");
    let list = NetConfList::from_bytes(
        json!({
            "cniVersion": "1.0.0",
            "name": "kc-ptp",
            "plugins": [{
                "type": "ptp",
                "ipMasq": false,
                "mtu": 1400,
                "ipam": {
                    "type": "host-local",
                    "dataDir": tmp.path().join("ipam"),
                    "ranges": [[{"subnet": "10.77.0.0/24"}]],
                    "routes": [{"dst": "0.0.0.0/0"}]
                }
            }]
        })
        .to_string()
        .as_bytes(),
    )
    .expect("conflist");
    let runtime = Runtime::new(vec![bin.clone(), PathBuf::from(DEBIAN_CNI)], tmp.path().join("state"));
    let args = RuntimeArgs {
        container_id: "kc-ptp-ctr".into(),
        netns: pod.path().display().to_string(),
        ifname: "eth0".into(),
        args: vec![("IgnoreUnknown".into(), "1".into())],
        ..RuntimeArgs::default()
    };

    let result: Value = node.run(|| runtime.add(&list, &args)).expect("ADD");

    // The runtime hands back exactly what ptp printed: same JSON, same bytes when re-printed.
    let printed = captured(&capture, "ADD");
    assert_eq!(printed.len(), 1);
    let printed = &printed[0];
    assert_eq!(result, serde_json::from_str::<Value>(printed).expect("ptp output"));
    assert_eq!(&to_go_json(&result).expect("print"), printed);
    let typed = CniResult::from_value(&result).expect("typed");
    assert_eq!(&typed.to_json_pretty("1.0.0").expect("typed print"), printed, "typed round trip is lossless");
    assert_eq!(runtime.cached_result("kc-ptp", "kc-ptp-ctr", "eth0").expect("cache"), Some(result.clone()));

    // The pod really got the address, the host veth the gateway.
    assert_eq!(typed.ips.len(), 1);
    let pod_ip = typed.ips[0].address.addr().to_string();
    let (ok, addrs) = pod.ip(&["-o", "addr", "show", "dev", "eth0"]);
    assert!(ok && addrs.contains(&pod_ip), "pod eth0 lacks {pod_ip}: {addrs}");
    let host_veth = &typed.interfaces[0].name;
    let (ok, _) = node.ip(&["link", "show", "dev", host_veth]);
    assert!(ok, "host veth {host_veth} missing in the node netns");

    node.run(|| runtime.check(&list, &args)).expect("CHECK");

    node.run(|| runtime.del(&list, &args)).expect("first DEL");
    node.run(|| runtime.del(&list, &args)).expect("second DEL");
    let (ok, _) = pod.ip(&["link", "show", "dev", "eth0"]);
    assert!(!ok, "eth0 must be gone after DEL");
    let (ok, _) = node.ip(&["link", "show", "dev", host_veth]);
    assert!(!ok, "host veth must be gone after DEL");
    assert_eq!(runtime.cached_result("kc-ptp", "kc-ptp-ctr", "eth0").expect("cache"), None);
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path().join("ipam").join("kc-ptp"))
        .map(|rd| rd.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    assert!(
        leftovers.iter().all(|n| n == "lock" || n.starts_with("last_reserved_ip")),
        "IP not released: {leftovers:?}"
    );
}
