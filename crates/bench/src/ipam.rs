//! `knit bench ipam`: N (default 1000) allocations and releases through the CNI IPAM protocol,
//! knit-ipam (local store) against host-local, sequential and with 8 concurrent processes; and
//! the in-process allocation core with 1000 addresses in use.
//!
//! - sequential: N ADD processes, knit-ipam and host-local alternating (with the process-start
//!   floor in the same rotation), so the pools fill to N; then N DEL processes likewise;
//! - concurrent: 8 threads each starting one plugin process at a time; the N operations are run
//!   in rounds, knit-ipam and host-local taking turns to go first; every address must be
//!   distinct (zero duplicates);
//! - core: `knit_ipam::State` in memory with 1000 allocations in use, then allocate/release
//!   churn; only the allocations are timed.
//!
//! - etcd store: the sequential and concurrent runs again with knit-ipam on `store: "etcd"` (a
//!   throwaway etcd in the bench namespace, [`crate::etcd`]) against host-local in the same
//!   rotation; skipped with a note when etcd-server is not installed.
//!
//! The plugins run inside a throwaway namespace (they do not touch the network, but nothing of
//! a bench runs in the root namespace).

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use knit_cni::RuntimeArgs;
use knit_host::guard;
use knit_ipam::{AllocRequest, IpamConfig, State};
use serde_json::Value;

use crate::chain::{container_id, pod_args, Chain, PluginDirs};
use crate::report::{Report, Row};
use crate::stats::Samples;
use crate::workspace::Workspace;
use crate::{signals, Error, Options, Result};

/// Concurrent plugin processes.
pub const WORKERS: usize = 8;
/// Allocations in use while the core is timed.
pub const CORE_IN_USE: usize = 1000;
/// Timed core allocations (at least; N × 10 when larger).
const CORE_OPS: usize = 20_000;
/// The DESIGN.md target for the core.
pub const CORE_TARGET_PER_S: f64 = 50_000.0;
/// Pools are /16s.
pub const MAX_N: usize = 60_000;

pub mod rows {
    pub const PROCESS: &str = "floor: start a process (/bin/true)";
    pub const HL_ADD: &str = "host-local ADD";
    pub const KI_ADD: &str = "knit-ipam ADD";
    pub const KI_ADD_NET: &str = "knit-ipam ADD - process start";
    pub const HL_DEL: &str = "host-local DEL";
    pub const KI_DEL: &str = "knit-ipam DEL";
    pub const HL_ADD_C: &str = "host-local ADD, 8 concurrent";
    pub const KI_ADD_C: &str = "knit-ipam ADD, 8 concurrent";
    pub const HL_DEL_C: &str = "host-local DEL, 8 concurrent";
    pub const KI_DEL_C: &str = "knit-ipam DEL, 8 concurrent";
    pub const CORE: &str = "knit-ipam core allocate, 1000 in use (in-process)";
    pub const HL_ADD_E: &str = "host-local ADD (etcd round)";
    pub const KE_ADD: &str = "knit-ipam ADD, etcd store";
    pub const HL_DEL_E: &str = "host-local DEL (etcd round)";
    pub const KE_DEL: &str = "knit-ipam DEL, etcd store";
    pub const HL_ADD_CE: &str = "host-local ADD, 8 concurrent (etcd round)";
    pub const KE_ADD_C: &str = "knit-ipam ADD, 8 concurrent, etcd store";
    pub const HL_DEL_CE: &str = "host-local DEL, 8 concurrent (etcd round)";
    pub const KE_DEL_C: &str = "knit-ipam DEL, 8 concurrent, etcd store";
}

fn knit_etcd_conflist(ws: &Workspace, tag: &str) -> String {
    format!(
        r#"{{"cniVersion":"1.0.0","name":"bench-ipam","plugins":[{{"type":"knit-ipam",
            "ipam":{{"type":"knit-ipam","node":"bench","dataDir":"{}","store":"etcd",
                     "etcdEndpoints":["{}"],"etcdTimeoutMs":10000,
                     "pools":[{{"name":"bench","cidr":"10.243.0.0/16","blockSize":26}}]}}}}]}}"#,
        ws.path(&format!("knit-ipam-{tag}")).display(),
        crate::etcd::ENDPOINT
    )
}

fn knit_conflist(ws: &Workspace, tag: &str) -> String {
    format!(
        r#"{{"cniVersion":"1.0.0","name":"bench-ipam","plugins":[{{"type":"knit-ipam",
            "ipam":{{"type":"knit-ipam","node":"bench","dataDir":"{}",
                     "pools":[{{"name":"bench","cidr":"10.241.0.0/16","blockSize":26}}]}}}}]}}"#,
        ws.path(&format!("knit-ipam-{tag}")).display()
    )
}

fn host_local_conflist(ws: &Workspace, tag: &str) -> String {
    format!(
        r#"{{"cniVersion":"1.0.0","name":"bench-ipam","plugins":[{{"type":"host-local",
            "ipam":{{"type":"host-local","dataDir":"{}","ranges":[[{{"subnet":"10.240.0.0/16"}}]]}}}}]}}"#,
        ws.path(&format!("host-local-{tag}")).display()
    )
}

fn rt(i: usize, kind: u8) -> RuntimeArgs {
    let cid = container_id(i, kind);
    RuntimeArgs {
        args: pod_args(&format!("ipam-{kind}-{i}"), &cid),
        container_id: cid,
        // IPAM plugins never open the namespace.
        netns: "/run/netns/knit-bench-unused".into(),
        ifname: "eth0".into(),
        capability_args: Default::default(),
    }
}

/// The first address of an IPAM result.
fn first_ip(v: &Value) -> Option<String> {
    v["ips"][0]["address"].as_str().map(|a| a.split('/').next().unwrap_or(a).to_string())
}

fn plugin_err(what: String) -> impl FnOnce(knit_cni::CniError) -> Error {
    move |err| if signals::interrupted() { Error::Interrupted } else { Error::Plugin { what, err } }
}

/// Measured series of one run.
#[derive(Default)]
struct Series {
    process: Samples,
    /// [knit, host-local]
    add: [Samples; 2],
    del: [Samples; 2],
    add_c: [Samples; 2],
    del_c: [Samples; 2],
    /// Wall time of the concurrent phases, for throughput.
    add_c_wall: [Duration; 2],
    del_c_wall: [Duration; 2],
    dups: [usize; 2],
}

pub fn run(n: usize, dirs: &PluginDirs, opts: &Options) -> Result<Report> {
    if n > MAX_N {
        return Err(Error::Invalid(format!("--n {n}: the ipam suite supports at most {MAX_N} allocations")));
    }
    dirs.require(&["knit-ipam", "host-local"])?;
    let ws = Workspace::new("ipam")?;
    let series = rounds(n, &ws, dirs, knit_conflist, "", opts)?;
    let etcd = match crate::etcd::EtcdServer::start(ws.tn.host(), "ipam")? {
        None => None,
        Some(server) => {
            opts.progress("etcd store");
            // Fresh stores: a new etcd and new host-local directories; the pool is 10.243/16.
            let s = rounds(n, &ws, dirs, knit_etcd_conflist, "e", opts)?;
            drop(server);
            Some(s)
        }
    };
    opts.progress("in-process core");
    let core = core(n)?;
    let mut r = report(n, &series, &core);
    report_etcd(&mut r, n, etcd.as_ref());
    Ok(r)
}

/// The sequential and the concurrent rounds of knit-ipam (its conflist from `knit`) against
/// host-local, inside the bench namespace; `tag` keeps each call's data directories apart.
fn rounds(
    n: usize,
    ws: &Workspace,
    dirs: &PluginDirs,
    knit: fn(&Workspace, &str) -> String,
    tag: &str,
    opts: &Options,
) -> Result<Series> {
    let chains = |phase: &str| -> Result<[Chain; 2]> {
        let t = format!("{tag}{phase}");
        Ok([Chain::new(&knit(ws, &t), dirs)?, Chain::new(&host_local_conflist(ws, &t), dirs)?])
    };
    let (seq, conc) = (chains("seq")?, chains("conc")?);
    ws.tn.run(|| -> Result<Series> {
        if guard::in_root_netns()? {
            return Err(Error::Setup("refusing to run plugins in the root network namespace".into()));
        }
        let mut s = Series::default();
        sequential(n, &seq, &mut s, opts)?;
        concurrent(n, &conc, &mut s, opts)?;
        Ok(s)
    })?
}

fn sequential(n: usize, chains: &[Chain; 2], s: &mut Series, opts: &Options) -> Result<()> {
    let mut results: Vec<[Option<Value>; 2]> = Vec::with_capacity(n);
    let mut ips: [HashSet<String>; 2] = [HashSet::new(), HashSet::new()];
    // Rotation of [knit, host-local, floor].
    let order = |i: usize| -> [usize; 3] {
        let mut o = [0, 1, 2];
        o.rotate_left(i % 3);
        o
    };
    for i in 0..n {
        signals::check()?;
        let mut row: [Option<Value>; 2] = [None, None];
        for k in order(i) {
            if k == 2 {
                let t = Instant::now();
                let st = Command::new("/bin/true").stdin(Stdio::null()).status();
                let d = t.elapsed();
                match st {
                    Ok(st) if st.success() => s.process.push(d),
                    Ok(st) => return Err(Error::Setup(format!("/bin/true exited with {st}"))),
                    Err(e) => return Err(Error::Setup(format!("starting /bin/true: {e}"))),
                }
                continue;
            }
            let args = rt(i, k as u8 + 1);
            let t = Instant::now();
            let res = chains[k].add(&args);
            let d = t.elapsed();
            let res = res.map_err(plugin_err(format!("ADD {} #{i}", name(k))))?;
            s.add[k].push(d);
            if let Some(ip) = first_ip(&res) {
                ips[k].insert(ip);
            }
            row[k] = Some(res);
        }
        results.push(row);
        if (i + 1) % (n / 4).max(1) == 0 {
            opts.progress(format!("sequential ADD {}/{n}", i + 1));
        }
    }
    for (k, got) in ips.iter().enumerate() {
        if got.len() != n {
            return Err(Error::Check(format!(
                "{}: {n} sequential ADDs gave {} distinct addresses",
                name(k),
                got.len()
            )));
        }
    }
    for (i, row) in results.iter().enumerate() {
        signals::check()?;
        for k in order(i) {
            if k == 2 {
                continue;
            }
            let args = rt(i, k as u8 + 1);
            let t = Instant::now();
            let res = chains[k].del(&args, row[k].as_ref());
            let d = t.elapsed();
            res.map_err(plugin_err(format!("DEL {} #{i}", name(k))))?;
            s.del[k].push(d);
        }
    }
    opts.progress("sequential DEL done");
    Ok(())
}

fn name(k: usize) -> &'static str {
    if k == 0 {
        "knit-ipam"
    } else {
        "host-local"
    }
}

/// What a concurrent batch measured: per-operation latencies, the wall time, and the results
/// (ADD), each with its operation number.
type BatchOutcome = (Vec<(usize, Duration)>, Duration, Vec<(usize, Value)>);

/// Runs operations `range` of `chain` on [`WORKERS`] threads.
fn batch(
    chain: &Chain,
    k: usize,
    range: std::ops::Range<usize>,
    del: Option<&[Option<Value>]>,
) -> Result<BatchOutcome> {
    let next = AtomicUsize::new(range.start);
    let lat = Mutex::new(Vec::new());
    let out = Mutex::new(Vec::new());
    let failure: Mutex<Option<Error>> = Mutex::new(None);
    let t0 = Instant::now();
    // Threads inherit the spawning thread's network namespace (the bench's node namespace).
    std::thread::scope(|sc| {
        for _ in 0..WORKERS {
            sc.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= range.end || signals::interrupted() {
                    break;
                }
                if failure.lock().map(|f| f.is_some()).unwrap_or(true) {
                    break;
                }
                let args = rt(i, k as u8 + 1);
                let t = Instant::now();
                let res = match del {
                    None => chain.add(&args).map(Some),
                    Some(prev) => chain.del(&args, prev.get(i).and_then(|p| p.as_ref())).map(|_| None),
                };
                let d = t.elapsed();
                match res {
                    Ok(v) => {
                        if let Ok(mut l) = lat.lock() {
                            l.push((i, d));
                        }
                        if let (Some(v), Ok(mut o)) = (v, out.lock()) {
                            o.push((i, v));
                        }
                    }
                    Err(e) => {
                        let verb = if del.is_some() { "DEL" } else { "ADD" };
                        let err = plugin_err(format!("{verb} {} #{i} (concurrent)", name(k)))(e);
                        if let Ok(mut f) = failure.lock() {
                            f.get_or_insert(err);
                        }
                        break;
                    }
                }
            });
        }
    });
    let wall = t0.elapsed();
    signals::check()?;
    if let Some(e) = failure.into_inner().unwrap_or(None) {
        return Err(e);
    }
    let lat = lat.into_inner().unwrap_or_default();
    let out = out.into_inner().unwrap_or_default();
    Ok((lat, wall, out))
}

fn concurrent(n: usize, chains: &[Chain; 2], s: &mut Series, opts: &Options) -> Result<()> {
    // Rounds of at least WORKERS × 8 operations, knit-ipam and host-local taking turns first.
    let rounds = (n / (WORKERS * 8)).clamp(1, 8);
    let per = n.div_ceil(rounds);
    let mut results: [Vec<Option<Value>>; 2] = [vec![None; n], vec![None; n]];
    for verb_del in [false, true] {
        for r in 0..rounds {
            let range = (r * per).min(n)..((r + 1) * per).min(n);
            let first = r % 2;
            for k in [first, 1 - first] {
                let prev = if verb_del { Some(results[k].as_slice()) } else { None };
                let (lat, wall, out) = batch(&chains[k], k, range.clone(), prev)?;
                let (series, walls) =
                    if verb_del { (&mut s.del_c, &mut s.del_c_wall) } else { (&mut s.add_c, &mut s.add_c_wall) };
                let mut lat = lat;
                lat.sort_by_key(|(i, _)| *i);
                for (_, d) in lat {
                    series[k].push(d);
                }
                walls[k] += wall;
                for (i, v) in out {
                    if let Some(slot) = results[k].get_mut(i) {
                        *slot = Some(v);
                    }
                }
            }
        }
        if !verb_del {
            for (k, res) in results.iter().enumerate() {
                let ips: Vec<String> = res.iter().filter_map(|v| v.as_ref().and_then(first_ip)).collect();
                let distinct: HashSet<&String> = ips.iter().collect();
                if ips.len() != n {
                    return Err(Error::Check(format!(
                        "{}: {} of {n} concurrent ADDs returned an address",
                        name(k),
                        ips.len()
                    )));
                }
                s.dups[k] = ips.len() - distinct.len();
            }
        }
        opts.progress(format!("concurrent {} done", if verb_del { "DEL" } else { "ADD" }));
    }
    Ok(())
}

/// Core allocations timed with [`CORE_IN_USE`] in use; returns the allocation latencies.
fn core(n: usize) -> Result<Samples> {
    let cfg = IpamConfig::parse(br#"{"node":"bench","dataDir":"/nonexistent","pools":[{"name":"bench","cidr":"10.242.0.0/16","blockSize":26}]}"#)
        .map_err(|e| Error::Setup(format!("core config: {e}")))?;
    let mut st = State::new(cfg.pools.clone());
    for i in 0..CORE_IN_USE {
        st.allocate("bench", &AllocRequest::new(format!("base{i}"), "eth0"), None)
            .map_err(|e| Error::Setup(format!("core pre-fill: {e}")))?;
    }
    let ops = CORE_OPS.max(n * 10);
    let reqs: Vec<AllocRequest> = (0..ops).map(|i| AllocRequest::new(format!("churn{i}"), "eth0")).collect();
    let mut s = Samples::new();
    for (i, r) in reqs.iter().enumerate() {
        if i % 4096 == 0 {
            signals::check()?;
        }
        let t = Instant::now();
        let res = st.allocate("bench", r, None);
        let d = t.elapsed();
        res.map_err(|e| Error::Check(format!("core allocate: {e}")))?;
        s.push(d);
        st.release(&r.container_id, &r.ifname);
    }
    Ok(s)
}

fn report(n: usize, s: &Series, core: &Samples) -> Report {
    use rows::*;
    let mut r = Report::new("ipam", n);
    r.results.push(Row::plain(PROCESS, &s.process));
    r.results.push(Row::plain(HL_ADD, &s.add[1]));
    r.results.push(Row::versus(KI_ADD, &s.add[0], HL_ADD, s.add[1].median(), Some(0.2)));
    r.results.push(
        Row::plain(KI_ADD_NET, &s.add[0].minus(&s.process)).note("paired with the process start of the same round"),
    );
    r.results.push(Row::plain(HL_DEL, &s.del[1]));
    r.results.push(Row::versus(KI_DEL, &s.del[0], HL_DEL, s.del[1].median(), None));

    let per_s = |count: usize, wall: Duration| if wall.is_zero() { 0.0 } else { count as f64 / wall.as_secs_f64() };
    r.results.push(
        Row::plain(HL_ADD_C, &s.add_c[1])
            .ops_per_s(per_s(n, s.add_c_wall[1]))
            .note(format!("{} duplicate addresses", s.dups[1])),
    );
    r.results.push(
        Row::versus(KI_ADD_C, &s.add_c[0], HL_ADD_C, s.add_c[1].median(), None)
            .ops_per_s(per_s(n, s.add_c_wall[0]))
            .target("0 duplicates", s.dups[0] == 0)
            .note(format!("{} duplicate addresses", s.dups[0])),
    );
    r.results.push(Row::plain(HL_DEL_C, &s.del_c[1]).ops_per_s(per_s(n, s.del_c_wall[1])));
    r.results.push(
        Row::versus(KI_DEL_C, &s.del_c[0], HL_DEL_C, s.del_c[1].median(), None).ops_per_s(per_s(n, s.del_c_wall[0])),
    );

    let core_per_s = if core.total_ms() > 0.0 { core.len() as f64 * 1000.0 / core.total_ms() } else { 0.0 };
    r.results.push(
        Row::plain(CORE, core)
            .ops_per_s(core_per_s)
            .target(format!(">= {CORE_TARGET_PER_S:.0}/s"), core_per_s >= CORE_TARGET_PER_S)
            .note("allocations only; each is released (untimed) to keep 1000 in use"),
    );
    r.notes.push(format!(
        "sequential: {n} ADD processes per plugin (knit-ipam, host-local and the process floor rotating), then {n} DELs"
    ));
    r.notes.push(format!(
        "concurrent: {WORKERS} threads, each starting one plugin process at a time, {n} ADDs then {n} DELs per plugin, \
         in rounds that alternate which plugin goes first; ops/s = operations / wall time"
    ));
    r.notes.push(
        "knit-ipam uses its local store (files under one flock, fsync off, its default); host-local its disk store"
            .into(),
    );
    r
}

fn report_etcd(r: &mut Report, n: usize, s: Option<&Series>) {
    use rows::*;
    let Some(s) = s else {
        r.notes.push(format!(
            "etcd store rows skipped: {} is not installed (apt-get install etcd-server)",
            crate::etcd::ETCD
        ));
        return;
    };
    let per_s = |count: usize, wall: Duration| if wall.is_zero() { 0.0 } else { count as f64 / wall.as_secs_f64() };
    r.results.push(Row::plain(HL_ADD_E, &s.add[1]));
    r.results.push(Row::versus(KE_ADD, &s.add[0], HL_ADD_E, s.add[1].median(), None));
    r.results.push(Row::plain(HL_DEL_E, &s.del[1]));
    r.results.push(Row::versus(KE_DEL, &s.del[0], HL_DEL_E, s.del[1].median(), None));
    r.results.push(Row::plain(HL_ADD_CE, &s.add_c[1]).ops_per_s(per_s(n, s.add_c_wall[1])));
    r.results.push(
        Row::versus(KE_ADD_C, &s.add_c[0], HL_ADD_CE, s.add_c[1].median(), None)
            .ops_per_s(per_s(n, s.add_c_wall[0]))
            .target("0 duplicates", s.dups[0] == 0)
            .note(format!("{} duplicate addresses", s.dups[0])),
    );
    r.results.push(Row::plain(HL_DEL_CE, &s.del_c[1]).ops_per_s(per_s(n, s.del_c_wall[1])));
    r.results.push(
        Row::versus(KE_DEL_C, &s.del_c[0], HL_DEL_CE, s.del_c[1].median(), None).ops_per_s(per_s(n, s.del_c_wall[0])),
    );
    r.notes.push(
        "etcd store: one etcd (Debian etcd-server) in the bench namespace, data on /dev/shm; each knit-ipam process \
         connects over gRPC and commits with compare-and-swap transactions; host-local runs beside it in the same rotation"
            .into(),
    );
}
