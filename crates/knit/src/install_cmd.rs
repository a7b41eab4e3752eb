//! `knit install`: put knit's binaries into the node's CNI bin dir and a default overlay conflist
//! into its CNI conf dir. The DaemonSet's init container runs it (deploy/daemonset.yaml).
//!
//! Every file is written atomically (a temp file in the same directory, then `rename`), so
//! containerd never executes a half-copied plugin nor reads a half-written conflist, and a
//! plugin that is running while it is replaced keeps its old inode. A file whose content (and
//! mode) is already right is left alone: a second run changes nothing and says so. Binaries are
//! installed before the conflist, so the runtime sees the network only once its plugins exist.
//!
//! The conflist is CNI 1.1's form (`cniVersions: ["1.0.0", "1.1.0"]`, and `cniVersion` for
//! runtimes before 1.1), so a 1.1 runtime sends GC and STATUS.
//!
//! With `--stage-conflist DIR` the conflist goes to DIR instead of the conf dir: the node agent
//! (`knit node run --conflist DIR/10-knit.conflist`) puts it in place after its first
//! successful reconcile, so the node turns Ready only once it is registered in etcd, BIRD is
//! configured and the coordinator's CIDR file is written (deploy/daemonset.yaml does this).
//!
//! With `--etcd-endpoints` the conflist uses knit-ipam's etcd store. `--etcd-tls-dir DIR` (a
//! mounted Secret with `ca.crt`, `tls.crt`, `tls.key`; empty or missing files are skipped) is
//! copied to `<conf dir>/knit-tls/`, because the plugins run on the host, where the container's
//! Secret mount does not exist; the conflist points there.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use serde_json::{json, Map, Value};

/// The binaries `knit install` copies.
pub const BINARIES: [&str; 4] = ["knit", "knit-routed", "knit-ipam", "knit-coordinator"];
/// The conflist `knit install` writes.
pub const CONFLIST_NAME: &str = "10-knit.conflist";
/// The directory under the conf dir that receives the etcd TLS files.
pub const TLS_DIR_NAME: &str = "knit-tls";
/// The etcd TLS files looked for in `--etcd-tls-dir` (Secret keys), and their conflist fields.
const TLS_FILES: [(&str, &str, u32); 3] =
    [("ca.crt", "etcdCAFile", 0o644), ("tls.crt", "etcdCertFile", 0o644), ("tls.key", "etcdKeyFile", 0o600)];

/// One etcd TLS file to install: its name, content and mode.
type TlsFile = (&'static str, Vec<u8>, u32);

#[derive(Args)]
pub struct InstallCmd {
    /// Where the runtime looks for CNI plugins.
    #[arg(long, default_value = "/opt/cni/bin")]
    cni_bin_dir: PathBuf,
    /// Where the runtime looks for network configurations.
    #[arg(long, default_value = "/etc/cni/net.d")]
    cni_conf_dir: PathBuf,
    /// Where to take the binaries from (default: the directory of this `knit` executable).
    #[arg(long)]
    src_dir: Option<PathBuf>,
    /// Which conflist to write: `overlay` (knit-routed + knit-ipam, as 10-knit.conflist) or
    /// `none`.
    #[arg(long, value_enum, default_value_t = ConflistKind::Overlay)]
    conflist: ConflistKind,
    /// The node agent installs the conflist: write it into this directory instead of
    /// --cni-conf-dir, for `knit node run --conflist DIR/10-knit.conflist`, which puts it into
    /// the conf dir after its first successful reconcile (what makes the node Ready).
    #[arg(long, value_name = "DIR")]
    stage_conflist: Option<PathBuf>,
    /// The node name for knit-routed's `nodename` and knit-ipam's `node` (default: knit-ipam
    /// uses the host name).
    #[arg(long)]
    node: Option<String>,
    /// The overlay pool (kube-proxy's cluster CIDR).
    #[arg(long, default_value = "10.233.64.0/18")]
    overlay_cidr: String,
    /// The per-node block size of the overlay pool.
    #[arg(long, default_value_t = 26)]
    block_size: u8,
    /// Use knit-ipam's etcd store at these endpoints (comma-separated URLs); default: the local
    /// store.
    #[arg(long, value_delimiter = ',')]
    etcd_endpoints: Vec<String>,
    /// A directory with the etcd client TLS files `ca.crt`, `tls.crt`, `tls.key` (e.g. a
    /// mounted Secret); they are copied to `<cni-conf-dir>/knit-tls/`.
    #[arg(long)]
    etcd_tls_dir: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ConflistKind {
    Overlay,
    None,
}

/// What happened to one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Installed,
    Updated,
    ModeFixed,
    Unchanged,
}

impl Outcome {
    fn word(self) -> &'static str {
        match self {
            Outcome::Installed => "installed",
            Outcome::Updated => "updated",
            Outcome::ModeFixed => "mode fixed",
            Outcome::Unchanged => "unchanged",
        }
    }
}

pub fn run(c: InstallCmd) -> ExitCode {
    match install(&c) {
        Ok(results) => {
            for (path, outcome) in &results {
                println!("{:<10} {}", outcome.word(), path.display());
            }
            let changed = results.iter().filter(|(_, o)| *o != Outcome::Unchanged).count();
            if changed == 0 {
                println!("knit install: nothing changed ({} files already up to date)", results.len());
            } else {
                println!("knit install: {changed} of {} files changed", results.len());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("knit install: {e}");
            ExitCode::FAILURE
        }
    }
}

fn install(c: &InstallCmd) -> Result<Vec<(PathBuf, Outcome)>, String> {
    let src_dir = match &c.src_dir {
        Some(d) => d.clone(),
        None => {
            let exe = std::env::current_exe()
                .map_err(|e| format!("cannot find the knit executable: {e} (pass --src-dir)"))?;
            exe.parent()
                .map(Path::to_path_buf)
                .ok_or_else(|| format!("{} has no parent directory (pass --src-dir)", exe.display()))?
        }
    };
    check_dir("--src-dir", &src_dir, false)?;
    check_dir("--cni-bin-dir", &c.cni_bin_dir, true)?;
    if c.conflist != ConflistKind::None {
        // The TLS files go to the conf dir even when the conflist is staged elsewhere.
        check_dir("--cni-conf-dir", &c.cni_conf_dir, true)?;
        if let Some(dir) = &c.stage_conflist {
            check_dir("--stage-conflist", dir, true)?;
        }
    } else if c.stage_conflist.is_some() {
        return Err("--stage-conflist stages the conflist; it can't go with --conflist none".into());
    }
    // Every source must be there before anything is copied: no half-installed node.
    let mut sources = Vec::new();
    for name in BINARIES {
        let src = src_dir.join(name);
        match fs::metadata(&src) {
            Ok(m) if m.is_file() => sources.push((name, src)),
            Ok(_) => return Err(format!("{} is not a regular file", src.display())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(format!(
                    "{} is missing (--src-dir {}; build with `cargo build --release --workspace --bins`)",
                    src.display(),
                    src_dir.display()
                ))
            }
            Err(e) => return Err(format!("{}: {e}", src.display())),
        }
    }
    // The conflist is built (and validated) before anything is written, so that a bad flag
    // leaves the node untouched.
    let tls = match (&c.etcd_tls_dir, c.conflist) {
        (Some(dir), ConflistKind::Overlay) => read_tls_dir(dir)?,
        _ => Vec::new(),
    };
    let conflist = match c.conflist {
        ConflistKind::Overlay => Some(overlay_conflist(c, &tls)?),
        ConflistKind::None => None,
    };

    let mut results = Vec::new();
    for (name, src) in &sources {
        let dest = c.cni_bin_dir.join(name);
        let outcome = install_binary(src, &dest)?;
        results.push((dest, outcome));
    }
    if let Some(bytes) = conflist {
        if !tls.is_empty() {
            let dir = c.cni_conf_dir.join(TLS_DIR_NAME);
            ensure_dir(&dir, 0o700)?;
            for (file, content, mode) in &tls {
                let dest = dir.join(file);
                let outcome = install_bytes(content, &dest, *mode)?;
                results.push((dest, outcome));
            }
        }
        let dest = c.stage_conflist.as_ref().unwrap_or(&c.cni_conf_dir).join(CONFLIST_NAME);
        let outcome = install_bytes(&bytes, &dest, 0o644)?;
        results.push((dest, outcome));
    }
    Ok(results)
}

/// `path` must be an existing directory (and writable when `write`).
fn check_dir(flag: &str, path: &Path, write: bool) -> Result<(), String> {
    match fs::metadata(path) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(format!("{flag} {}: not a directory", path.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(format!(
                "{flag} {}: no such directory (create it, or mount the host's directory there)",
                path.display()
            ))
        }
        Err(e) => return Err(format!("{flag} {}: {e}", path.display())),
    }
    if write {
        use nix::unistd::{access, AccessFlags};
        access(path, AccessFlags::W_OK | AccessFlags::X_OK)
            .map_err(|e| format!("{flag} {}: not writable: {}", path.display(), io::Error::from(e)))?;
    }
    Ok(())
}

fn ensure_dir(path: &Path, mode: u32) -> Result<(), String> {
    match fs::metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(format!("{}: exists and is not a directory", path.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir(path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
            fs::set_permissions(path, Permissions::from_mode(mode))
                .map_err(|e| format!("cannot chmod {}: {e}", path.display()))
        }
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// The TLS files present (non-empty) in `dir`: (file name, content, mode).
fn read_tls_dir(dir: &Path) -> Result<Vec<TlsFile>, String> {
    check_dir("--etcd-tls-dir", dir, false)?;
    let mut out = Vec::new();
    for (file, _, mode) in TLS_FILES {
        let p = dir.join(file);
        match fs::read(&p) {
            Ok(b) if b.iter().all(u8::is_ascii_whitespace) => {}
            Ok(b) => out.push((file, b, mode)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{}: {e}", p.display())),
        }
    }
    let has = |f: &str| out.iter().any(|(n, _, _)| *n == f);
    if has("tls.crt") != has("tls.key") {
        return Err(format!("--etcd-tls-dir {}: tls.crt and tls.key go together", dir.display()));
    }
    Ok(out)
}

/// The overlay conflist: knit-routed + knit-ipam, validated with knit-ipam's own parser.
fn overlay_conflist(c: &InstallCmd, tls: &[TlsFile]) -> Result<Vec<u8>, String> {
    let mut ipam = Map::new();
    ipam.insert("type".into(), json!("knit-ipam"));
    if let Some(n) = &c.node {
        ipam.insert("node".into(), json!(n));
    }
    let endpoints: Vec<&String> = c.etcd_endpoints.iter().filter(|e| !e.trim().is_empty()).collect();
    if !endpoints.is_empty() {
        ipam.insert("store".into(), json!("etcd"));
        ipam.insert("etcdEndpoints".into(), json!(endpoints));
        // Absolute: the plugins run with containerd's working directory, not ours.
        let conf_dir = std::path::absolute(&c.cni_conf_dir)
            .map_err(|e| format!("--cni-conf-dir {}: {e}", c.cni_conf_dir.display()))?;
        let tls_dir = conf_dir.join(TLS_DIR_NAME);
        for (file, field, _) in TLS_FILES {
            if tls.iter().any(|(f, _, _)| *f == file) {
                ipam.insert(field.into(), json!(tls_dir.join(file).to_string_lossy()));
            }
        }
    } else if c.etcd_tls_dir.is_some() {
        return Err("--etcd-tls-dir needs --etcd-endpoints".into());
    }
    ipam.insert("pools".into(), json!([{"name": "overlay", "cidr": c.overlay_cidr, "blockSize": c.block_size}]));
    let ipam = Value::Object(ipam);
    knit_ipam::IpamConfig::from_value(&ipam, "ipam").map_err(|e| format!("overlay conflist: {}", e.msg()))?;

    let mut routed = Map::new();
    routed.insert("type".into(), json!("knit-routed"));
    if let Some(n) = &c.node {
        routed.insert("nodename".into(), json!(n));
    }
    routed.insert("ipam".into(), ipam);
    // cniVersions (CNI 1.1): a 1.1 runtime picks 1.1.0 and then sends GC and STATUS; cniVersion
    // is what runtimes before 1.1 read.
    let list = json!({
        "cniVersion": "1.0.0",
        "cniVersions": ["1.0.0", "1.1.0"],
        "name": "knit",
        "plugins": [Value::Object(routed)],
    });
    let mut bytes = serde_json::to_vec_pretty(&list).map_err(|e| format!("overlay conflist: {e}"))?;
    bytes.push(b'\n');
    knit_cni::NetConfList::from_bytes(&bytes).map_err(|e| format!("overlay conflist: {}", e.msg))?;
    Ok(bytes)
}

/// Copies `src` to `dest` (mode 0755) unless `dest` already has the same content.
fn install_binary(src: &Path, dest: &Path) -> Result<Outcome, String> {
    let existing = fs::metadata(dest).ok();
    if let Some(m) = &existing {
        if m.is_file()
            && same_content(src, dest)
                .map_err(|e| format!("cannot compare {} with {}: {e}", src.display(), dest.display()))?
        {
            return fix_mode(dest, m, 0o755);
        }
    }
    let mut from = File::open(src).map_err(|e| format!("cannot read {}: {e}", src.display()))?;
    write_atomic(dest, 0o755, |f| io::copy(&mut from, f).map(|_| ())).map_err(|e| {
        if e.contains(&src.display().to_string()) {
            e
        } else {
            format!("{e} (copying {})", src.display())
        }
    })?;
    Ok(if existing.is_some() { Outcome::Updated } else { Outcome::Installed })
}

/// Writes `content` to `dest` with `mode` unless it already holds exactly that.
fn install_bytes(content: &[u8], dest: &Path, mode: u32) -> Result<Outcome, String> {
    let existing = fs::metadata(dest).ok();
    if let Some(m) = &existing {
        if m.is_file() && m.len() == content.len() as u64 {
            let old = fs::read(dest).map_err(|e| format!("cannot read {}: {e}", dest.display()))?;
            if old == content {
                return fix_mode(dest, m, mode);
            }
        }
    }
    write_atomic(dest, mode, |f| f.write_all(content))?;
    Ok(if existing.is_some() { Outcome::Updated } else { Outcome::Installed })
}

fn fix_mode(dest: &Path, m: &fs::Metadata, mode: u32) -> Result<Outcome, String> {
    if m.permissions().mode() & 0o7777 == mode {
        return Ok(Outcome::Unchanged);
    }
    fs::set_permissions(dest, Permissions::from_mode(mode))
        .map_err(|e| format!("cannot chmod {}: {e}", dest.display()))?;
    Ok(Outcome::ModeFixed)
}

/// Whether two files hold the same bytes (sizes first, then chunk by chunk).
fn same_content(a: &Path, b: &Path) -> io::Result<bool> {
    let (mut fa, mut fb) = (File::open(a)?, File::open(b)?);
    if fa.metadata()?.len() != fb.metadata()?.len() {
        return Ok(false);
    }
    let mut ba = vec![0u8; 1 << 16];
    let mut bb = vec![0u8; 1 << 16];
    loop {
        let n = read_full(&mut fa, &mut ba)?;
        let m = read_full(&mut fb, &mut bb)?;
        if n != m || ba[..n] != bb[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Writes `dest` through a temp file in the same directory (never a name the runtime reads:
/// a leading dot and no `.conf`/`.conflist`/`.json` suffix), fsyncs it, sets `mode`, renames.
fn write_atomic(dest: &Path, mode: u32, fill: impl FnOnce(&mut File) -> io::Result<()>) -> Result<(), String> {
    let dir = dest.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = dest.file_name().ok_or_else(|| format!("{}: not a file path", dest.display()))?.to_string_lossy();
    let tmp = dir.join(format!(".{name}.knit-install-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
    let res = fill(&mut f).and_then(|_| f.set_permissions(Permissions::from_mode(mode))).and_then(|_| f.sync_all());
    drop(f);
    if let Err(e) = res {
        let _ = fs::remove_file(&tmp);
        return Err(format!("cannot write {}: {e}", tmp.display()));
    }
    if let Err(e) = fs::rename(&tmp, dest) {
        let _ = fs::remove_file(&tmp);
        return Err(format!("cannot rename {} to {}: {e}", tmp.display(), dest.display()));
    }
    // Make the rename itself durable; failing to is not worth failing the install for.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
