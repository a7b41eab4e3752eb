//! `knit lab` (the `knit-lab` developer binary) where nothing gets built: labs that don't exist,
//! and programs that are missing. Each test uses its own run directory and lab names.

use std::path::Path;
use std::process::{Command, Output};

use knit_testkit::{bin, Scratch};

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn knit_lab(args: &[&str]) -> Output {
    Command::new(bin("knit-lab")).args(args).output().expect("run knit-lab")
}

#[test]
fn every_subcommand_names_the_labs_there_are_when_a_lab_does_not_exist() {
    let runs = Scratch::new("nolab");
    for lab in ["alpha", "beta"] {
        std::fs::create_dir(runs.path.join(lab)).expect("mkdir");
    }
    let run_dir = runs.path.to_str().expect("utf-8");
    let name = format!("nosuch{}", std::process::id());
    let want = format!("no lab {name} (labs here: alpha, beta)");
    let cases: Vec<Vec<&str>> = vec![
        vec!["lab", "status", "--name", &name, "--run-dir", run_dir],
        vec!["lab", "down", "--name", &name, "--run-dir", run_dir],
        vec!["lab", "exec", "--name", &name, "--run-dir", run_dir, "node1", "--", "true"],
        vec!["lab", "add-node", "--name", &name, "--run-dir", run_dir, "n9", "--ip", "192.0.2.9/24"],
        vec!["lab", "remove-node", "--name", &name, "--run-dir", run_dir, "n1"],
        vec!["lab", "matrix", "--lab", &name, "--run-dir", run_dir],
    ];
    for args in cases {
        let out = knit_lab(&args);
        assert!(!out.status.success(), "knit-lab {}: {}", args.join(" "), text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&want), "knit-lab {}: {}", args.join(" "), text(&out));
        assert!(!stderr.contains("No such file"), "knit-lab {}: {}", args.join(" "), text(&out));
    }
    // Through `knit lab`, as documented, and with no labs at all.
    let empty = Scratch::new("nolab-empty");
    let out = Command::new(bin("knit"))
        .args(["lab", "status", "--name", &name, "--run-dir"])
        .arg(&empty.path)
        .output()
        .expect("run knit");
    assert!(!out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("no lab {name} (no labs here")), "{}", text(&out));
}

#[test]
fn up_names_the_missing_programs_and_their_packages_before_building_anything() {
    let runs = Scratch::new("preflight");
    let name = format!("pf{}", std::process::id());
    for datastore in ["local", "etcd"] {
        let out = Command::new(bin("knit-lab"))
            .args(["lab", "up", "--name", &name, "--datastore", datastore, "--run-dir"])
            .arg(&runs.path)
            .env("PATH", "/nonexistent")
            .output()
            .expect("run knit-lab");
        assert!(!out.status.success(), "{}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        for want in
            ["bird (Debian package bird2", "iptables-restore (Debian package iptables", "nft (Debian package nftables"]
        {
            assert!(stderr.contains(want), "{want}: {}", text(&out));
        }
        assert!(stderr.contains("apt-get install"), "{}", text(&out));
        assert_eq!(stderr.contains("etcd (Debian package etcd-server"), datastore == "etcd", "{}", text(&out));
        // Nothing was made.
        assert!(!runs.path.join(&name).exists(), "lab directory made");
        let prefix = format!("knit-{name}-");
        let left: Vec<String> = std::fs::read_dir("/run/netns")
            .map(|rd| rd.flatten().filter_map(|e| e.file_name().to_str().map(String::from)).collect())
            .unwrap_or_default();
        assert!(!left.iter().any(|n| n.starts_with(&prefix)), "namespaces made: {left:?}");
    }
    assert!(!Path::new("/run/knit/lab").join(&name).exists());
}
