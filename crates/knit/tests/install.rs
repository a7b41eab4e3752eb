//! `knit install` against throwaway directories: the first run installs, the second changes
//! nothing (same mtimes and inodes), a changed binary is replaced, missing or unwritable
//! directories fail with the path in the message and before anything is written.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BINARIES: [&str; 4] = ["knit", "knit-routed", "knit-ipam", "knit-coordinator"];

fn knit() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_knit"))
}

struct Dirs {
    _tmp: tempfile::TempDir,
    src: PathBuf,
    bin: PathBuf,
    conf: PathBuf,
}

/// A scratch tree with `src/` holding small stand-ins for the four binaries, and empty
/// `bin/` and `conf/`.
fn dirs() -> Dirs {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().to_path_buf();
    let (src, bin, conf) = (root.join("src"), root.join("bin"), root.join("conf"));
    for d in [&src, &bin, &conf] {
        fs::create_dir(d).expect("mkdir");
    }
    for name in BINARIES {
        fs::write(src.join(name), format!("#!/bin/sh\necho {name} v1\n")).expect("write src");
    }
    Dirs { _tmp: tmp, src, bin, conf }
}

fn install(d: &Dirs, extra: &[&str]) -> Output {
    let mut cmd = Command::new(knit());
    cmd.arg("install")
        .arg("--cni-bin-dir")
        .arg(&d.bin)
        .arg("--cni-conf-dir")
        .arg(&d.conf)
        .arg("--src-dir")
        .arg(&d.src)
        .args(extra);
    cmd.output().expect("run knit install")
}

fn ok(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "knit install failed: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn failed(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success(),
        "knit install should have failed\nstdout: {}\nstderr: {stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

/// (mtime in ns, inode) of every regular file under `dir`, by name.
fn stamps(dir: &Path) -> Vec<(String, i128, u64)> {
    let mut v: Vec<(String, i128, u64)> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| {
            let e = e.expect("dirent");
            let m = e.metadata().expect("metadata");
            let ns = i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec());
            (e.file_name().to_string_lossy().to_string(), ns, m.ino())
        })
        .collect();
    v.sort();
    v
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).expect("metadata").permissions().mode() & 0o7777
}

#[test]
fn first_run_installs_second_run_changes_nothing() {
    let d = dirs();
    let out = ok(&install(&d, &["--node", "node1"]));
    for name in BINARIES {
        let dest = d.bin.join(name);
        assert_eq!(fs::read(&dest).expect("installed"), fs::read(d.src.join(name)).expect("src"), "{name}");
        assert_eq!(mode(&dest), 0o755, "{name} mode");
        assert!(out.contains(&format!("installed  {}", dest.display())), "{out}");
    }
    let conflist = d.conf.join("10-knit.conflist");
    let bytes = fs::read(&conflist).expect("conflist written");
    assert_eq!(mode(&conflist), 0o644);
    let list = knit_cni::NetConfList::from_bytes(&bytes).expect("conflist parses");
    assert_eq!(list.plugins.len(), 1);
    assert_eq!(list.plugins[0]["type"], "knit-routed");
    assert_eq!(list.plugins[0]["nodename"], "node1");
    let ipam = list.plugins[0].get("ipam").expect("ipam").clone();
    let cfg = knit_ipam::IpamConfig::from_value(&ipam, "ipam").expect("ipam parses");
    assert_eq!(cfg.node, "node1");
    assert_eq!(cfg.store, knit_ipam::StoreKind::Local);
    assert_eq!(cfg.pools[0].cidr.to_string(), "10.233.64.0/18");
    assert!(out.contains("5 of 5 files changed"), "{out}");

    let before = (stamps(&d.bin), stamps(&d.conf));
    std::thread::sleep(std::time::Duration::from_millis(20));
    let out = ok(&install(&d, &["--node", "node1"]));
    assert!(out.contains("nothing changed"), "{out}");
    assert!(!out.contains("installed") && !out.contains("updated"), "{out}");
    assert_eq!((stamps(&d.bin), stamps(&d.conf)), before, "a second run must not touch any file");
}

#[test]
fn a_changed_binary_is_replaced_atomically() {
    let d = dirs();
    ok(&install(&d, &[]));
    let before = stamps(&d.bin);
    fs::write(d.src.join("knit-ipam"), "#!/bin/sh\necho knit-ipam v2, longer\n").expect("write");
    std::thread::sleep(std::time::Duration::from_millis(20));
    let out = ok(&install(&d, &[]));
    assert!(out.contains(&format!("updated    {}", d.bin.join("knit-ipam").display())), "{out}");
    assert!(out.contains("1 of 5 files changed"), "{out}");
    assert_eq!(fs::read_to_string(d.bin.join("knit-ipam")).expect("read"), "#!/bin/sh\necho knit-ipam v2, longer\n");
    assert_eq!(mode(&d.bin.join("knit-ipam")), 0o755);
    let after = stamps(&d.bin);
    for (b, a) in before.iter().zip(&after) {
        if b.0 == "knit-ipam" {
            // Replaced by rename: a new inode, never rewritten in place (a running plugin
            // keeps its old file).
            assert_ne!(b.2, a.2, "knit-ipam must be a new file");
        } else {
            assert_eq!(b, a, "{} must be untouched", b.0);
        }
    }
    // No temp file left behind.
    let names: Vec<String> = after.iter().map(|s| s.0.clone()).collect();
    assert_eq!(names, {
        let mut v: Vec<String> = BINARIES.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    });

    // A wrong mode alone is fixed without rewriting the file.
    fs::set_permissions(d.bin.join("knit"), fs::Permissions::from_mode(0o700)).expect("chmod");
    let out = ok(&install(&d, &[]));
    assert!(out.contains(&format!("mode fixed {}", d.bin.join("knit").display())), "{out}");
    assert_eq!(mode(&d.bin.join("knit")), 0o755);
}

#[test]
fn conflist_is_restored_and_can_be_skipped() {
    let d = dirs();
    ok(&install(&d, &["--conflist", "none"]));
    assert!(!d.conf.join("10-knit.conflist").exists(), "--conflist none writes no conflist");

    ok(&install(&d, &[]));
    let good = fs::read(d.conf.join("10-knit.conflist")).expect("read");
    fs::write(d.conf.join("10-knit.conflist"), "{\"edited\": true}\n").expect("write");
    let out = ok(&install(&d, &[]));
    assert!(out.contains("updated    ") && out.contains("10-knit.conflist"), "{out}");
    assert_eq!(fs::read(d.conf.join("10-knit.conflist")).expect("read"), good);

    // A bad flag fails before anything is written.
    let e = failed(&install(&d, &["--overlay-cidr", "10.233.64.1/18"]));
    assert!(e.contains("host bits"), "{e}");
}

#[test]
fn the_conflist_is_cni_1_1s_form() {
    let d = dirs();
    ok(&install(&d, &[]));
    let v: serde_json::Value =
        serde_json::from_slice(&fs::read(d.conf.join("10-knit.conflist")).expect("read")).expect("json");
    // A 1.1 runtime picks 1.1.0 from cniVersions and then sends GC and STATUS; older ones read cniVersion.
    assert_eq!(v["cniVersions"], serde_json::json!(["1.0.0", "1.1.0"]), "{v}");
    assert_eq!(v["cniVersion"], "1.0.0", "{v}");
}

#[test]
fn a_staged_conflist_leaves_the_conf_dir_to_the_agent() {
    let d = dirs();
    let stage = d.src.parent().expect("root").join("stage");
    fs::create_dir(&stage).expect("mkdir");
    let out = ok(&install(&d, &["--stage-conflist", stage.to_str().expect("utf-8")]));
    assert!(out.contains(&stage.join("10-knit.conflist").display().to_string()), "{out}");
    assert!(stage.join("10-knit.conflist").exists());
    assert_eq!(fs::read_dir(&d.conf).expect("conf dir").count(), 0, "knit install wrote into the conf dir");
    for b in BINARIES {
        assert!(d.bin.join(b).exists(), "{b} not installed");
    }
    // Staging needs a conflist to stage.
    let e = failed(&install(&d, &["--stage-conflist", stage.to_str().expect("utf-8"), "--conflist", "none"]));
    assert!(e.contains("--stage-conflist"), "{e}");
}

#[test]
fn etcd_tls_files_are_copied_next_to_the_conflist() {
    let d = dirs();
    let tls = d.src.parent().expect("root").join("etcd");
    fs::create_dir(&tls).expect("mkdir");
    fs::write(tls.join("ca.crt"), "CA PEM\n").expect("write");
    fs::write(tls.join("tls.crt"), "CERT PEM\n").expect("write");
    fs::write(tls.join("tls.key"), "KEY PEM\n").expect("write");
    let tls_arg = tls.to_string_lossy().to_string();
    let args = ["--etcd-endpoints", "https://10.0.0.11:2379,https://10.0.0.12:2379", "--etcd-tls-dir", &tls_arg];
    let out = ok(&install(&d, &args));
    assert!(out.contains("8 of 8 files changed"), "{out}");
    let tls_dest = d.conf.join("knit-tls");
    assert_eq!(mode(&tls_dest), 0o700);
    assert_eq!(mode(&tls_dest.join("tls.key")), 0o600);
    assert_eq!(fs::read_to_string(tls_dest.join("tls.key")).expect("read"), "KEY PEM\n");

    let bytes = fs::read(d.conf.join("10-knit.conflist")).expect("read");
    let list = knit_cni::NetConfList::from_bytes(&bytes).expect("parses");
    let ipam = list.plugins[0].get("ipam").expect("ipam").clone();
    let cfg = knit_ipam::IpamConfig::from_value(&ipam, "ipam").expect("ipam parses");
    let knit_ipam::StoreKind::Etcd(e) = cfg.store else { panic!("expected the etcd store") };
    assert_eq!(e.endpoints, ["https://10.0.0.11:2379", "https://10.0.0.12:2379"]);
    assert_eq!(e.ca_file, Some(tls_dest.join("ca.crt")));
    assert_eq!(e.cert_file, Some(tls_dest.join("tls.crt")));
    assert_eq!(e.key_file, Some(tls_dest.join("tls.key")));
    assert!(ok(&install(&d, &args)).contains("nothing changed"));

    // A certificate without its key is refused, naming the directory.
    fs::remove_file(tls.join("tls.key")).expect("rm");
    let e = failed(&install(&d, &args));
    assert!(e.contains(&tls_arg) && e.contains("tls.key"), "{e}");
}

#[test]
fn missing_directories_and_files_are_named() {
    let d = dirs();
    let missing = d.bin.join("nope");
    let out = Command::new(knit())
        .arg("install")
        .arg("--cni-bin-dir")
        .arg(&missing)
        .arg("--cni-conf-dir")
        .arg(&d.conf)
        .arg("--src-dir")
        .arg(&d.src)
        .output()
        .expect("run");
    let e = failed(&out);
    assert!(e.contains(&missing.display().to_string()) && e.contains("no such directory"), "{e}");

    let missing_conf = d.conf.join("nope");
    let out = Command::new(knit())
        .arg("install")
        .arg("--cni-bin-dir")
        .arg(&d.bin)
        .arg("--cni-conf-dir")
        .arg(&missing_conf)
        .arg("--src-dir")
        .arg(&d.src)
        .output()
        .expect("run");
    let e = failed(&out);
    assert!(e.contains(&missing_conf.display().to_string()) && e.contains("--cni-conf-dir"), "{e}");
    assert_eq!(fs::read_dir(&d.bin).expect("read_dir").count(), 0, "nothing installed");

    // A file where a directory should be.
    let file = d.conf.join("a-file");
    fs::write(&file, "x").expect("write");
    let out = Command::new(knit())
        .arg("install")
        .arg("--cni-bin-dir")
        .arg(&file)
        .arg("--src-dir")
        .arg(&d.src)
        .arg("--conflist")
        .arg("none")
        .output()
        .expect("run");
    let e = failed(&out);
    assert!(e.contains(&file.display().to_string()) && e.contains("not a directory"), "{e}");

    // A missing source binary: nothing is installed.
    fs::remove_file(d.src.join("knit-coordinator")).expect("rm");
    let e = failed(&install(&d, &[]));
    assert!(e.contains(&d.src.join("knit-coordinator").display().to_string()) && e.contains("missing"), "{e}");
    assert_eq!(fs::read_dir(&d.bin).expect("read_dir").count(), 0, "nothing installed");
    assert!(!d.conf.join("10-knit.conflist").exists());
}

#[test]
fn unwritable_directory_is_named_and_nothing_is_written() {
    let d = dirs();
    let args = |conf: &Path| -> Vec<String> {
        vec![
            knit().display().to_string(),
            "install".into(),
            "--cni-bin-dir".into(),
            d.bin.display().to_string(),
            "--cni-conf-dir".into(),
            conf.display().to_string(),
            "--src-dir".into(),
            d.src.display().to_string(),
        ]
    };
    let out = if nix_is_root() {
        // Root writes through any mode bits: make the conf dir a read-only mount, in a private
        // mount namespace that dies with the command.
        let script = "mount -t tmpfs -o ro knit-test \"$1\" && shift && exec \"$@\"";
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "sh", "-c", script, "sh"]).arg(&d.conf).args(args(&d.conf));
        let out = cmd.output().expect("run unshare");
        if !out.status.success() && !String::from_utf8_lossy(&out.stderr).contains("knit install:") {
            knit_testkit::require::skip(&format!(
                "cannot make a read-only mount here: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
            return;
        }
        out
    } else {
        fs::set_permissions(&d.conf, fs::Permissions::from_mode(0o555)).expect("chmod");
        let a = args(&d.conf);
        Command::new(&a[0]).args(&a[1..]).output().expect("run")
    };
    let e = failed(&out);
    assert!(e.contains(&d.conf.display().to_string()) && e.contains("not writable"), "{e}");
    // Checked before anything was copied: no half-installed node.
    assert_eq!(fs::read_dir(&d.bin).expect("read_dir").count(), 0, "nothing installed");
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn default_source_is_the_directory_of_knit() {
    // The real binaries, from the directory `knit` runs from (cargo's target dir).
    let src_dir = knit().parent().expect("parent").to_path_buf();
    for name in BINARIES {
        knit_testkit::bin(name);
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = Command::new(knit())
        .args(["install", "--conflist", "none", "--cni-bin-dir"])
        .arg(tmp.path())
        .output()
        .expect("run");
    ok(&out);
    for name in BINARIES {
        let (a, b) = (src_dir.join(name), tmp.path().join(name));
        assert_eq!(fs::metadata(&a).expect("src").len(), fs::metadata(&b).expect("dest").len(), "{name}");
        assert!(same(&a, &b), "{name} differs from its source");
        assert_eq!(mode(&b), 0o755);
    }
    // The installed knit runs.
    let v = Command::new(tmp.path().join("knit")).arg("--version").output().expect("run installed knit");
    assert!(v.status.success());
}

fn same(a: &Path, b: &Path) -> bool {
    use std::io::Read;
    let (mut fa, mut fb) = (fs::File::open(a).expect("open"), fs::File::open(b).expect("open"));
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = fa.read(&mut ba).expect("read");
        let mut m = 0;
        while m < n {
            let k = fb.read(&mut bb[m..n]).expect("read");
            if k == 0 {
                return false;
            }
            m += k;
        }
        if ba[..n] != bb[..n] {
            return false;
        }
        if n == 0 {
            return fb.read(&mut bb).expect("read") == 0;
        }
    }
}
