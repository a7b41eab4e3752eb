//! The suites that drive a lab (`knit-lab`): `matrix` (the default lab's matrix with setup,
//! cells and teardown timed apart) and `datapath` (iperf3 throughput and TCP round trips on the
//! lab's paths, coordinator-tuned macvlan against bare macvlan).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use knit_cni::{NetConfList, Runtime, RuntimeArgs};
use knit_lab::build::CANCEL;
use knit_lab::kubeproxy::Mode;
use knit_lab::topology::{Endpoints, Service, Topology, TrafficPolicy};
use knit_lab::{Datastore, Lab, Serve};

use crate::report::{Report, Row};
use crate::stats::Samples;
use crate::{signals, Error, Options, PluginDirs, Result};

/// iperf3's port on the pods (the echo server has the lab's echo port).
const IPERF_PORT: u16 = 5201;
/// The round trips' echo servers.
const ECHO_PORT: u16 = 5202;
/// Seconds per iperf3 run.
const IPERF_SECONDS: &str = "2";

fn lab_err(e: knit_lab::LabError) -> Error {
    match e {
        knit_lab::LabError::Interrupted => Error::Interrupted,
        e => Error::Setup(e.to_string()),
    }
}

/// Forwards Ctrl-C (seen by the bench's handler) to the lab build, which stops between steps.
fn forward_cancel(stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        if signals::interrupted() {
            CANCEL.store(true, Ordering::SeqCst);
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn options(name: &str, dirs: &PluginDirs, serve: Serve) -> knit_lab::Options {
    knit_lab::Options {
        name: name.to_string(),
        run_dir: Path::new(knit_lab::plan::DEFAULT_RUN_DIR).to_path_buf(),
        kube_proxy: Mode::Legacy,
        underlay_routes: true,
        serve,
        cni_path: dirs.dirs.clone(),
        datastore: Datastore::Local,
        knit_exe: crate::exe_dir().map(|d| d.join("knit")).unwrap_or_else(|| "knit".into()),
    }
}

/// `matrix`: the default lab's matrix, `n` times; setup, cells and teardown timed apart.
pub fn run_matrix(n: usize, dirs: &PluginDirs, opts: &Options) -> Result<Report> {
    let (mut setup, mut cells, mut teardown, mut total) =
        (Samples::new(), Samples::new(), Samples::new(), Samples::new());
    let mut count = 0;
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| -> Result<()> {
        s.spawn(|| forward_cancel(&stop));
        let r = (|| -> Result<()> {
            for i in 0..n {
                signals::check()?;
                opts.progress(format!("matrix run {}/{n}", i + 1));
                let topo = Topology::default_lab().map_err(|e| Error::Setup(e.to_string()))?;
                let t0 = Instant::now();
                let lab =
                    Lab::up(topo, &options(&format!("bm{}-{i}", std::process::id()), dirs, Serve::InProcess), &|_| {})
                        .map_err(lab_err)?;
                let t1 = Instant::now();
                let jobs = knit_lab::matrix::plan_cells(&lab.state);
                let result = knit_lab::matrix::run(&lab, jobs, &|_| {});
                let t2 = Instant::now();
                lab.teardown().map_err(lab_err)?;
                let t3 = Instant::now();
                let result = result.map_err(lab_err)?;
                let failed = result.iter().filter(|c| !c.ok).count();
                if failed > 0 {
                    return Err(Error::Check(format!(
                        "{failed} of {} matrix cells failed (knit lab matrix shows them)",
                        result.len()
                    )));
                }
                count = result.len();
                setup.push(t1 - t0);
                cells.push(t2 - t1);
                teardown.push(t3 - t2);
                total.push(t3 - t0);
            }
            Ok(())
        })();
        stop.store(true, Ordering::SeqCst);
        r
    })?;
    let mut report = Report::new("matrix", n);
    report.results.push(Row::plain("matrix setup (namespaces, CNI, kube-proxy, BGP)", &setup));
    report.results.push(Row::plain(format!("matrix cells ({count} probes)"), &cells));
    report.results.push(Row::plain("matrix teardown", &teardown));
    let mut t = Row::plain("matrix total", &total);
    t.target = Some("< 60000 ms".into());
    t.met = Some(total.median() < 60_000.0);
    report.results.push(t);
    report.notes.push(
        "the default lab (3 nodes, 9 pods, 6 Services, 2 clients), kube-proxy legacy, in-process echo servers".into(),
    );
    Ok(report)
}

/// A bare macvlan pod (no coordinator) on `node`, with a static address.
fn bare_pod(lab: &Lab, dirs: &PluginDirs, node: &str, pod: &str, addr: ipnet::IpNet) -> Result<()> {
    let full = lab.plan.ns(pod);
    knit_host::Netns::create_named(&full)?;
    let conf = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "bare-macvlan",
        "plugins": [{"type": "macvlan", "master": "eth0", "mode": "bridge",
                     "ipam": {"type": "static", "addresses": [{"address": addr.to_string()}]}}],
    });
    let list = NetConfList::from_bytes(conf.to_string().as_bytes())
        .map_err(|e| Error::Plugin { what: "bare macvlan conflist".into(), err: e })?;
    let rt = RuntimeArgs {
        container_id: format!("{}-{pod}", lab.plan.name),
        netns: knit_host::Netns::named_path(&full).to_string_lossy().into_owned(),
        ifname: "eth0".into(),
        args: vec![("IgnoreUnknown".into(), "1".into())],
        capability_args: Default::default(),
    };
    let runtime = Runtime::new(dirs.dirs.clone(), lab.plan.dir.join("cni").join("bare"));
    lab.netns(node)
        .map_err(lab_err)?
        .run(|| runtime.add(&list, &rt))?
        .map_err(|e| Error::Plugin { what: format!("bare macvlan pod {pod}"), err: e })?;
    Ok(())
}

fn ns_of(lab: &Lab, part: &str) -> Result<knit_host::Netns> {
    let full = lab.plan.ns(part);
    knit_host::Netns::open_named(&full).map_err(Error::from)
}

/// One iperf3 TCP run from `src` to `dst` (a server in `server_ns` when given); Gbit/s.
fn iperf(lab: &Lab, src: &str, servers: &[&str], dst: IpAddr, port: u16) -> Result<f64> {
    let mut children = Vec::new();
    for s in servers {
        let mut cmd = Command::new("iperf3");
        cmd.args(["-s", "-1", "-p", &IPERF_PORT.to_string()]).stdout(Stdio::null()).stderr(Stdio::null());
        children.push(ns_of(lab, s)?.spawn(&mut cmd)?);
    }
    std::thread::sleep(Duration::from_millis(150));
    let mut cmd = Command::new("iperf3");
    cmd.args(["-c", &dst.to_string(), "-p", &port.to_string(), "-t", IPERF_SECONDS, "-J"]);
    let out = ns_of(lab, src)?.output(&mut cmd);
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
    let out = out?;
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| Error::Check(format!("iperf3 {src} → {dst}: {e}")))?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
        .ok_or_else(|| Error::Check(format!("iperf3 {src} → {dst}: {}", v["error"])))
}

/// Round trips through the knit echo server (a new TCP connection each, as the matrix does).
fn round_trips(lab: &Lab, src: &str, dst: SocketAddr, n: usize) -> Result<Samples> {
    let ns = ns_of(lab, src)?;
    ns.run(|| -> Result<Samples> {
        let mut s = Samples::new();
        for _ in 0..n {
            let t = Instant::now();
            knit_lab::serve::probe_tcp(dst, Duration::from_secs(2))
                .map_err(|e| Error::Check(format!("{src} → {dst}: {e}")))?;
            s.push(t.elapsed());
        }
        Ok(s)
    })?
}

/// `datapath`: iperf3 throughput (`n` runs per path) and echo round trips on the lab's paths.
pub fn run_datapath(n: usize, dirs: &PluginDirs, opts: &Options) -> Result<Report> {
    let mut topo = Topology::default_lab().map_err(|e| Error::Setup(e.to_string()))?;
    // The pods' port is iperf3's here (no echo servers: the round trips use their own).
    topo.echo_port = IPERF_PORT;
    for svc in &mut topo.services {
        svc.target_port = IPERF_PORT;
    }
    // An iperf3 Service with one overlay endpoint on another node, for underlay → ClusterIP
    // (iperf3's control and data connections must reach the same server).
    let cluster_ip = topo.service_cidr.hosts().nth(250).ok_or_else(|| Error::Setup("service CIDR too small".into()))?;
    topo.services.push(Service {
        name: "bench-iperf".into(),
        endpoints: Endpoints::Pods(vec!["overlay2".into()]),
        cluster_ip,
        port: IPERF_PORT,
        target_port: IPERF_PORT,
        node_port: None,
        external_traffic_policy: TrafficPolicy::Cluster,
    });
    // Two underlay pods in one subnet on different nodes, and bare macvlan pods beside them.
    let u = |name: &str| topo.pods.iter().find(|p| p.name == name).cloned();
    let (Some(ua), Some(ub)) = (u("underlay1"), u("underlay3")) else {
        return Err(Error::Setup("the default lab has no underlay1/underlay3".into()));
    };
    let pool =
        topo.pool(ua.pool.as_deref().unwrap_or_default()).cloned().ok_or_else(|| Error::Setup("no pool".into()))?;
    let last = match pool.range_end {
        IpAddr::V4(a) => u32::from(a),
        IpAddr::V6(_) => return Err(Error::Setup("IPv4 pools only".into())),
    };
    let bare_a = ipnet::IpNet::new(IpAddr::V4((last + 1).into()), pool.cidr.prefix_len())
        .map_err(|e| Error::Setup(e.to_string()))?;
    let bare_b = ipnet::IpNet::new(IpAddr::V4((last + 2).into()), pool.cidr.prefix_len())
        .map_err(|e| Error::Setup(e.to_string()))?;

    let stop = AtomicBool::new(false);
    let name = format!("bd{}", std::process::id());
    let report = std::thread::scope(|s| -> Result<Report> {
        s.spawn(|| forward_cancel(&stop));
        let r = (|| -> Result<Report> {
            opts.progress("datapath: building the default lab");
            let lab = Lab::up(topo.clone(), &options(&name, dirs, Serve::Nothing), &|_| {}).map_err(lab_err)?;
            bare_pod(&lab, dirs, &ua.node, "bare-a", bare_a)?;
            bare_pod(&lab, dirs, &ub.node, "bare-b", bare_b)?;
            let ip = |pod: &str| {
                lab.state
                    .pods
                    .get(pod)
                    .and_then(|p| p.primary_ip())
                    .ok_or_else(|| Error::Setup(format!("no pod {pod}")))
            };
            let (ub_ip, o1, o2) = (ip("underlay3")?, ip("overlay1")?, ip("overlay2")?);
            let paths: Vec<(&str, &str, Vec<&str>, IpAddr, u16)> = vec![
                ("bare macvlan → bare macvlan (reference)", "bare-a", vec!["bare-b"], bare_b.addr(), IPERF_PORT),
                ("underlay → underlay (macvlan + coordinator)", "underlay1", vec!["underlay3"], ub_ip, IPERF_PORT),
                ("overlay → overlay across nodes", "overlay1", vec!["overlay2"], o2, IPERF_PORT),
                (
                    "underlay → ClusterIP (overlay endpoint on another node)",
                    "underlay1",
                    vec!["overlay2"],
                    cluster_ip,
                    IPERF_PORT,
                ),
            ];
            let mut tput: Vec<Samples> = paths.iter().map(|_| Samples::new()).collect();
            // Alternate the paths run by run, so the machine's noise hits them alike.
            for i in 0..n {
                for (k, (label, src, servers, dst, port)) in paths.iter().enumerate() {
                    signals::check()?;
                    opts.progress(format!("datapath run {}/{n}: {label}", i + 1));
                    let g = iperf(&lab, src, servers, *dst, *port)?;
                    // Samples hold milliseconds; throughput rows carry Gbit/s in the same slot.
                    tput[k].push_ms(g);
                }
            }
            // Echo servers for the round trips, on a port of their own.
            let port = ECHO_PORT;
            let mut servers = Vec::new();
            for pod in ["underlay3", "overlay2", "overlay1"] {
                let server = ns_of(&lab, pod)?
                    .run(|| knit_lab::serve::EchoServer::bind(pod, port))?
                    .map_err(|e| Error::Setup(format!("echo server in {pod}: {e}")))?;
                servers.push(server.spawn().map_err(|e| Error::Setup(format!("echo server in {pod}: {e}")))?);
            }
            // The bare pods run no echo server: round trips are timed on the lab's own pods.
            let rtt_bare = round_trips(&lab, "underlay1", SocketAddr::new(ub_ip, port), 200)?;
            let rtt_overlay = round_trips(&lab, "overlay1", SocketAddr::new(o2, port), 200)?;
            let rtt_ul_ol = round_trips(&lab, "underlay1", SocketAddr::new(o1, port), 200)?;
            let mut report = Report::new("datapath", n);
            let ref_g = tput[0].median();
            for (k, (label, ..)) in paths.iter().enumerate() {
                let mut row = Row::plain(format!("{label} [Gbit/s]"), &tput[k]);
                row.note = Some("throughput: median_ms/p99_ms hold Gbit/s for this row".into());
                row.median_gbps = Some(row.median_ms);
                if k > 0 {
                    row.reference = Some(paths[0].0.to_string());
                    row.ratio = Some((tput[k].median() / ref_g * 100.0).round() / 100.0);
                }
                if k == 1 {
                    row.target = Some(">= 0.95x bare macvlan".into());
                    row.met = row.ratio.map(|r| r >= 0.95);
                }
                report.results.push(row);
            }
            report
                .results
                .push(Row::plain("echo round trip: underlay → underlay across nodes (connect + echo)", &rtt_bare));
            report.results.push(Row::plain("echo round trip: overlay → overlay across nodes", &rtt_overlay));
            report.results.push(Row::plain("echo round trip: underlay → overlay on its node", &rtt_ul_ol));
            report.notes.push(format!("iperf3 TCP, {IPERF_SECONDS} s per run, paths alternated run by run; throughput rows give Gbit/s in the median/p99 columns"));
            drop(servers);
            lab.teardown().map_err(lab_err)?;
            Ok(report)
        })();
        stop.store(true, Ordering::SeqCst);
        r
    })?;
    Ok(report)
}
