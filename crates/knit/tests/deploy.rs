//! deploy/ checked with knit's own parsers: every example conflist through the runtime's
//! conflist parser and each plugin's config parser, the Multus NetworkAttachmentDefinitions'
//! configs identical to those conflists, the overlay example identical to what `knit install`
//! writes, and every `knit` flag the DaemonSet passes known to the CLI. (The YAML itself is
//! validated against the Kubernetes schema by scripts/validate-manifests.sh.)

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use knit_coordinator::config::{Conf, Mode};
use knit_ipam::{IpamConfig, StoreKind};
use serde_json::{json, Value};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

fn knit() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_knit"))
}

const TLS_DIR: &str = "/etc/cni/net.d/knit-tls";

/// What one example conflist holds, once parsed.
struct Parsed {
    list: knit_cni::NetConfList,
    types: Vec<String>,
    ipam: Vec<IpamConfig>,
    coordinator: Option<Conf>,
}

/// Parses `bytes` as the runtime does, then hands each plugin its config as the runtime would
/// (`cniVersion` and `name` injected) and parses it with that plugin's own parser.
fn parse_conflist(what: &str, bytes: &[u8], cidr_file: &Path) -> Parsed {
    let list = knit_cni::NetConfList::from_bytes(bytes).unwrap_or_else(|e| panic!("{what}: {e}"));
    list.negotiated_version(knit_cni::SUPPORTED_VERSIONS).unwrap_or_else(|e| panic!("{what}: {e}"));
    let mut parsed = Parsed { list: list.clone(), types: Vec::new(), ipam: Vec::new(), coordinator: None };
    for (i, p) in list.plugins.iter().enumerate() {
        let what = format!("{what}: plugins[{i}]");
        let mut conf = p.clone();
        conf.insert("cniVersion".into(), json!(list.cni_version));
        conf.insert("name".into(), json!(list.name));
        let ty = p.get("type").and_then(Value::as_str).unwrap_or_default().to_string();
        match ty.as_str() {
            "knit-routed" => {
                let bytes = serde_json::to_vec(&conf).expect("json");
                knit_routed::config::RoutedConf::parse(&bytes).unwrap_or_else(|e| panic!("{what}: {e}"));
            }
            "knit-coordinator" => {
                // The CIDRs come from the agent's file on a node; point at a test one.
                conf.insert("cidrFile".into(), json!(cidr_file));
                let bytes = serde_json::to_vec(&conf).expect("json");
                parsed.coordinator = Some(Conf::parse(&bytes).unwrap_or_else(|e| panic!("{what}: {e}")));
            }
            "macvlan" => {
                // Debian's plugin: check the fields it requires.
                assert!(p.get("master").and_then(Value::as_str).is_some_and(|m| !m.is_empty()), "{what}: master");
                let mode = p.get("mode").and_then(Value::as_str).unwrap_or("bridge");
                assert!(["bridge", "private", "vepa", "passthru"].contains(&mode), "{what}: mode {mode}");
            }
            other => panic!("{what}: unexpected plugin type {other:?}"),
        }
        if let Some(ipam) = p.get("ipam") {
            assert_eq!(ipam.get("type").and_then(Value::as_str), Some("knit-ipam"), "{what}: ipam.type");
            let cfg = IpamConfig::from_value(ipam, "ipam").unwrap_or_else(|e| panic!("{what}: {}", e.msg()));
            match &cfg.store {
                StoreKind::Etcd(e) => {
                    assert!(!e.endpoints.is_empty(), "{what}: etcdEndpoints");
                    assert_eq!(e.ca_file, Some(Path::new(TLS_DIR).join("ca.crt")), "{what}: etcdCAFile");
                    assert_eq!(e.cert_file, Some(Path::new(TLS_DIR).join("tls.crt")), "{what}: etcdCertFile");
                    assert_eq!(e.key_file, Some(Path::new(TLS_DIR).join("tls.key")), "{what}: etcdKeyFile");
                }
                StoreKind::Local => panic!("{what}: the cluster examples use store \"etcd\""),
            }
            parsed.ipam.push(cfg);
        }
        parsed.types.push(ty);
    }
    parsed
}

fn cidr_file(dir: &Path) -> PathBuf {
    let p = dir.join("coordinator.json");
    fs::write(&p, r#"{"overlayPodCIDR":["10.233.64.0/18"],"serviceCIDR":["10.233.0.0/18"]}"#).expect("write");
    p
}

fn read(p: &Path) -> Vec<u8> {
    fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn example_conflists_parse_with_the_plugins_own_parsers() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cidrs = cidr_file(tmp.path());
    let dir = deploy().join("conflists");
    let mut names: Vec<String> = fs::read_dir(&dir)
        .expect("deploy/conflists")
        .map(|e| e.expect("dirent").file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["10-knit.conflist", "multinic-net1.conflist", "underlay.conflist"]);
    for name in &names {
        parse_conflist(name, &read(&dir.join(name)), &cidrs);
    }

    let overlay = parse_conflist("overlay", &read(&dir.join("10-knit.conflist")), &cidrs);
    assert_eq!(overlay.types, ["knit-routed"]);
    assert!(overlay.ipam[0].pools.iter().all(|p| p.affinity), "overlay pools use per-node blocks");

    let underlay = parse_conflist("underlay", &read(&dir.join("underlay.conflist")), &cidrs);
    assert_eq!(underlay.types, ["macvlan", "knit-coordinator"]);
    assert!(underlay.ipam[0].pools.iter().all(|p| !p.affinity), "underlay pools: blocks false");
    let c = underlay.coordinator.expect("coordinator");
    assert_eq!(c.mode, Mode::Underlay);
    assert_eq!(c.overlay_pod_cidr[0].to_string(), "10.233.64.0/18", "CIDRs from the agent's file");

    let net1 = parse_conflist("net1", &read(&dir.join("multinic-net1.conflist")), &cidrs);
    assert_eq!(net1.types, ["macvlan", "knit-coordinator"]);
    assert_eq!(net1.coordinator.expect("coordinator").mode, Mode::Auto);
    // net1 is the underlay network with mode auto (and its own name).
    let mut a = serde_json::to_value(&underlay.list).expect("json");
    let mut b = serde_json::to_value(&net1.list).expect("json");
    for v in [&mut a, &mut b] {
        v["name"] = json!("");
        v["plugins"][1]["mode"] = json!("");
    }
    assert_eq!(a, b, "multinic-net1.conflist = underlay.conflist with mode auto");
}

/// The JSON under `config: |` in a NetworkAttachmentDefinition (a YAML block scalar).
fn nad_config(text: &str) -> String {
    let mut lines = text.lines().skip_while(|l| l.trim() != "config: |");
    let head = lines.next().expect("a `config: |` block");
    let key_indent = head.len() - head.trim_start().len();
    let mut out = String::new();
    let mut indent = None;
    for l in lines {
        if l.trim().is_empty() {
            out.push('\n');
            continue;
        }
        let i = l.len() - l.trim_start().len();
        if i <= key_indent {
            break;
        }
        let ind = *indent.get_or_insert(i);
        out.push_str(&l[ind.min(i)..]);
        out.push('\n');
    }
    out
}

#[test]
fn network_attachment_definitions_carry_the_example_conflists() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cidrs = cidr_file(tmp.path());
    for (nad, conflist, name) in [
        ("underlay-nad.yaml", "underlay.conflist", "knit-underlay"),
        ("net1-nad.yaml", "multinic-net1.conflist", "knit-net1"),
    ] {
        let text = String::from_utf8(read(&deploy().join("multus").join(nad))).expect("utf-8");
        assert!(text.contains("kind: NetworkAttachmentDefinition"), "{nad}");
        assert!(text.contains("apiVersion: k8s.cni.cncf.io/v1"), "{nad}");
        assert!(text.contains(&format!("  name: {name}\n")), "{nad}: metadata.name {name}");
        let config = nad_config(&text);
        let parsed = parse_conflist(nad, config.as_bytes(), &cidrs);
        assert_eq!(parsed.list.name, name, "{nad}: the network is named like the NAD");
        let from_nad: Value = serde_json::from_str(&config).expect("json");
        let example: Value = serde_json::from_slice(&read(&deploy().join("conflists").join(conflist))).expect("json");
        assert_eq!(from_nad, example, "{nad} must carry deploy/conflists/{conflist}");
    }
    let pods = String::from_utf8(read(&deploy().join("multus/pods.yaml"))).expect("utf-8");
    assert!(pods.contains("v1.multus-cni.io/default-network: kube-system/knit-underlay"));
    assert!(pods.contains("k8s.v1.cni.cncf.io/networks:") && pods.contains(r#""name": "knit-net1""#));
}

#[test]
fn overlay_example_is_what_knit_install_writes() {
    let example: Value = serde_json::from_slice(&read(&deploy().join("conflists/10-knit.conflist"))).expect("json");
    let endpoints: Vec<&str> = example["plugins"][0]["ipam"]["etcdEndpoints"]
        .as_array()
        .expect("etcdEndpoints")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let tmp = tempfile::tempdir().expect("tempdir");
    let (src, bin, conf, tls) =
        (tmp.path().join("src"), tmp.path().join("bin"), tmp.path().join("conf"), tmp.path().join("tls"));
    for d in [&src, &bin, &conf, &tls] {
        fs::create_dir(d).expect("mkdir");
    }
    for b in ["knit", "knit-routed", "knit-ipam", "knit-coordinator"] {
        fs::write(src.join(b), "#!/bin/sh\n").expect("write");
    }
    for f in ["ca.crt", "tls.crt", "tls.key"] {
        fs::write(tls.join(f), "PEM\n").expect("write");
    }
    let stage = tmp.path().join("stage");
    fs::create_dir(&stage).expect("mkdir");
    // The DaemonSet's init container, minus --node (the example leaves it to the host name):
    // the conflist is staged for the agent, the conf dir gets only the TLS files.
    let out = Command::new(knit())
        .arg("install")
        .arg("--cni-bin-dir")
        .arg(&bin)
        .arg("--cni-conf-dir")
        .arg(&conf)
        .arg("--stage-conflist")
        .arg(&stage)
        .arg("--src-dir")
        .arg(&src)
        .arg(format!("--etcd-endpoints={}", endpoints.join(",")))
        .arg("--etcd-tls-dir")
        .arg(&tls)
        .output()
        .expect("run knit install");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!conf.join("10-knit.conflist").exists(), "the agent, not knit install, puts the conflist in place");
    let written = fs::read_to_string(stage.join("10-knit.conflist")).expect("read");
    let written = written.replace(&conf.display().to_string(), "/etc/cni/net.d");
    let written: Value = serde_json::from_str(&written).expect("json");
    assert_eq!(written, example, "deploy/conflists/10-knit.conflist must be what `knit install` writes");
}

/// The items of every `command:` list in a manifest (plain YAML block sequences).
fn commands(yaml: &str) -> Vec<Vec<String>> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if l.trim() != "command:" {
            continue;
        }
        let mut items = Vec::new();
        for l in &lines[i + 1..] {
            let t = l.trim();
            if t.starts_with('#') {
                continue;
            }
            match t.strip_prefix("- ") {
                Some(item) => items.push(item.trim().to_string()),
                None => break,
            }
        }
        out.push(items);
    }
    out
}

#[test]
fn daemonset_passes_only_flags_knit_knows() {
    let yaml = String::from_utf8(read(&deploy().join("daemonset.yaml"))).expect("utf-8");
    let knit_cmds: Vec<Vec<String>> =
        commands(&yaml).into_iter().filter(|c| c.first().map(String::as_str) == Some("knit")).collect();
    assert_eq!(knit_cmds.len(), 2, "the init container's `knit install` and the agent's `knit node run`");
    for cmd in &knit_cmds {
        let sub: Vec<&str> = cmd[1..].iter().map(String::as_str).take_while(|a| !a.starts_with('-')).collect();
        let help = Command::new(knit()).args(&sub).arg("--help").output().expect("run knit --help");
        assert!(help.status.success(), "knit {} --help: {}", sub.join(" "), String::from_utf8_lossy(&help.stderr));
        let help = String::from_utf8_lossy(&help.stdout);
        for flag in cmd.iter().filter(|a| a.starts_with("--")) {
            let flag = flag.split('=').next().unwrap_or(flag);
            assert!(
                help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
                "deploy/daemonset.yaml passes {flag} to `knit {}`, which does not know it",
                sub.join(" ")
            );
        }
    }
    // The Secret the DaemonSet reads is the example's.
    let secret = String::from_utf8(read(&deploy().join("etcd-secret.yaml"))).expect("utf-8");
    assert!(secret.contains("  name: knit-etcd\n") && yaml.contains("secretName: knit-etcd"));
    for key in ["endpoints:", "ca.crt:", "tls.crt:", "tls.key:"] {
        assert!(secret.contains(&format!("  {key}")), "etcd-secret.yaml: {key}");
    }
}
