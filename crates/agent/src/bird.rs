//! Route distribution with BIRD 2 (DESIGN.md section 3.3).
//!
//! Two generated configurations:
//! - a **node**: its pod blocks as `blackhole` statics (installed in its own
//!   kernel, announced to everyone), the underlay pod /32s it wires (announced
//!   to the other nodes only, never installed locally: the pod's real route
//!   lives in table 500), the Service CIDR (announced to the ToR only, never
//!   installed); an iBGP mesh to the other nodes with `next hop self`, and an
//!   eBGP session to the ToR. Learned routes land in the kernel as
//!   `<prefix> via <peer node IP> dev eth0 proto bird`.
//! - the **ToR**: eBGP to every node, imports pod blocks and the Service CIDR
//!   (ECMP through `merge paths`), refuses underlay /32s.
//!
//! Underlay /32s carry the well-known `NO_EXPORT` community, whose meaning is
//! exactly the rule here ("stay inside the nodes' AS"); BIRD already never
//! sends such routes over eBGP, and the filters below check it again on both
//! sides so a hand-edited config cannot leak them.
//!
//! [`Bird`] is the runner: it writes a config into a directory and builds the
//! `bird` command for the caller to spawn inside a namespace, and talks to the
//! daemon with `birdc` over its control socket (a Unix socket, so that works
//! from any namespace).

use std::fmt::Write as _;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ipnet::IpNet;

/// `NO_EXPORT` (RFC 1997), put on underlay pod /32s.
pub const NO_EXPORT: (u16, u16) = (65535, 65281);

/// Static protocol holding this node's pod blocks.
pub const PROTO_BLOCKS: &str = "knit_blocks";
/// Static protocol holding the underlay pod /32s this node wires.
pub const PROTO_UNDERLAY: &str = "knit_underlay";
/// Static protocol holding the Service CIDR(s).
pub const PROTO_SERVICES: &str = "knit_services";

/// Errors of config generation and of the runner.
#[derive(Debug, thiserror::Error)]
pub enum BirdError {
    /// The inputs cannot make a valid config.
    #[error("bird config: {0}")]
    Invalid(String),
    /// A file or process operation failed.
    #[error("{op}: {source}")]
    Io {
        /// What was being done.
        op: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// `bird` or `birdc` reported an error.
    #[error("`{program}` failed: {output}")]
    Command {
        /// The command line.
        program: String,
        /// What it printed.
        output: String,
    },
    /// A wait ran out of time.
    #[error("timed out after {after:?} waiting for {what}; last state: {last}")]
    Timeout {
        /// What was waited for.
        what: String,
        /// The bound.
        after: Duration,
        /// The last thing seen.
        last: String,
    },
}

type Result<T> = std::result::Result<T, BirdError>;

fn io_err(op: impl Into<String>) -> impl FnOnce(std::io::Error) -> BirdError {
    let op = op.into();
    move |source| BirdError::Io { op, source }
}

/// BGP timers, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers {
    /// Delay before the first connection attempt (`connect delay time`).
    pub connect_delay: u32,
    /// Delay between connection attempts (`connect retry time`).
    pub connect_retry: u32,
    /// Minimum and maximum wait after an error (`error wait time`).
    pub error_wait: (u32, u32),
    /// Hold time (3 or more).
    pub hold: u32,
    /// Keepalive interval.
    pub keepalive: u32,
}

impl Timers {
    /// Sessions up within a few seconds and failures noticed quickly: for
    /// the lab, where every node is a namespace on one machine.
    pub const FAST: Timers = Timers { connect_delay: 1, connect_retry: 1, error_wait: (1, 3), hold: 6, keepalive: 2 };
    /// Calico's values (`connect delay time 2; connect retry time 5; error wait time 5,30`), BIRD's hold/keepalive.
    pub const CALICO: Timers =
        Timers { connect_delay: 2, connect_retry: 5, error_wait: (5, 30), hold: 240, keepalive: 80 };

    fn render(&self, out: &mut String, indent: &str) {
        let _ = writeln!(out, "{indent}connect delay time {};", self.connect_delay);
        let _ = writeln!(out, "{indent}connect retry time {};", self.connect_retry);
        let _ = writeln!(out, "{indent}error wait time {}, {};", self.error_wait.0, self.error_wait.1);
        let _ = writeln!(out, "{indent}hold time {};", self.hold);
        let _ = writeln!(out, "{indent}keepalive time {};", self.keepalive);
    }

    fn validate(&self) -> Result<()> {
        if self.hold < 3 || self.keepalive == 0 || self.keepalive >= self.hold {
            return Err(BirdError::Invalid(format!(
                "hold time must be at least 3 s and above keepalive (hold {}, keepalive {})",
                self.hold, self.keepalive
            )));
        }
        if self.connect_retry == 0 || self.error_wait.0 == 0 || self.error_wait.0 > self.error_wait.1 {
            return Err(BirdError::Invalid("connect retry and error wait times must be positive, min ≤ max".into()));
        }
        Ok(())
    }
}

impl Default for Timers {
    fn default() -> Timers {
        Timers::FAST
    }
}

/// A BGP neighbour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// Its address (on a directly connected subnet).
    pub ip: IpAddr,
    /// Its AS.
    pub asn: u32,
}

/// Everything a node's BIRD needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeBgp {
    /// The node IP: router id, session source, and the next hop peers install.
    pub node_ip: Ipv4Addr,
    /// The nodes' AS.
    pub asn: u32,
    /// The other nodes (iBGP mesh).
    pub node_peers: Vec<Ipv4Addr>,
    /// The ToR, if the node peers with one (eBGP).
    pub tor: Option<Peer>,
    /// Overlay pools: routes from other nodes inside them are accepted.
    pub overlay_cidrs: Vec<IpNet>,
    /// Blocks this node owns (blackholed locally, announced to all peers).
    pub blocks: Vec<IpNet>,
    /// Underlay pod /32s this node wires (announced to other nodes only).
    pub underlay_routes: Vec<IpNet>,
    /// Service CIDRs (announced to the ToR only).
    pub service_cidrs: Vec<IpNet>,
    /// BGP timers.
    pub timers: Timers,
}

/// Everything the ToR's BIRD needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TorBgp {
    /// Router id (one of its addresses).
    pub router_id: Ipv4Addr,
    /// The ToR's AS.
    pub asn: u32,
    /// One session per node: the node's IP and AS, and the ToR's own address
    /// on that node's subnet (the bridge may hold several gateways).
    pub nodes: Vec<TorSession>,
    /// Prefixes it accepts, with any more-specific: the overlay pools and the Service CIDRs.
    pub accept: Vec<IpNet>,
    /// BGP timers.
    pub timers: Timers,
}

/// One ToR-to-node session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TorSession {
    /// The ToR's address facing the node.
    pub local_ip: Ipv4Addr,
    /// The node.
    pub node: Peer,
}

/// The BIRD protocol name of the session to `ip` (`peer_172_16_1_3`): stable,
/// unique per neighbour, and a valid BIRD symbol. [`Bird::wait_established`] takes these.
pub fn peer_protocol_name(ip: IpAddr) -> String {
    let s: String = ip.to_string().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    format!("peer_{s}")
}

fn v4_only(what: &str, nets: &[IpNet]) -> Result<()> {
    match nets.iter().find(|n| !n.addr().is_ipv4()) {
        Some(n) => Err(BirdError::Invalid(format!("{what}: {n} is IPv6; only IPv4 channels are generated so far"))),
        None => Ok(()),
    }
}

/// `[ a+, b+ ]`: a prefix set matching the prefixes and everything inside them.
fn prefix_set_plus(nets: &[IpNet]) -> String {
    let items: Vec<String> = nets.iter().map(|n| format!("{}+", n.trunc())).collect();
    format!("[ {} ]", items.join(", "))
}

fn header(out: &mut String, what: &str, router_id: Ipv4Addr) {
    let _ = writeln!(out, "# {what}: generated by knit-agent; edits are overwritten.");
    let _ = writeln!(out, "log stderr {{ info, remote, warning, error, auth, fatal, bug }};");
    let _ = writeln!(out, "router id {router_id};");
    let _ = writeln!(out);
    // The device protocol tracks interfaces and addresses, which direct next hops need.
    let _ = writeln!(out, "protocol device {{\n  scan time 5;\n}}\n");
}

fn static_protocol(out: &mut String, name: &str, routes: &[IpNet], import: Option<&str>) {
    let _ = writeln!(out, "protocol static {name} {{");
    match import {
        Some(f) => {
            let _ = writeln!(out, "  ipv4 {{ import filter {{ {f} }}; }};");
        }
        None => out.push_str("  ipv4;\n"),
    }
    for r in routes {
        let _ = writeln!(out, "  route {} blackhole;", r.trunc());
    }
    out.push_str("}\n\n");
}

/// The BIRD config of a node.
pub fn node_config(cfg: &NodeBgp) -> Result<String> {
    cfg.timers.validate()?;
    v4_only("overlay_cidrs", &cfg.overlay_cidrs)?;
    v4_only("blocks", &cfg.blocks)?;
    v4_only("underlay_routes", &cfg.underlay_routes)?;
    v4_only("service_cidrs", &cfg.service_cidrs)?;
    if let Some(tor) = &cfg.tor {
        if !tor.ip.is_ipv4() {
            return Err(BirdError::Invalid(format!("tor: {} is IPv6", tor.ip)));
        }
        if tor.asn == cfg.asn {
            return Err(BirdError::Invalid("the ToR must be in another AS than the nodes (eBGP)".into()));
        }
    }
    if cfg.node_peers.contains(&cfg.node_ip) {
        return Err(BirdError::Invalid(format!("node_peers contains the node itself ({})", cfg.node_ip)));
    }
    if cfg.overlay_cidrs.is_empty() && !cfg.node_peers.is_empty() {
        return Err(BirdError::Invalid("overlay_cidrs is empty: no block from another node would be accepted".into()));
    }
    let (c1, c2) = NO_EXPORT;
    let mut out = String::new();
    header(&mut out, "knit node BGP", cfg.node_ip);

    out.push_str("# Blocks this node owns: blackholed here (pod /32s are more specific), announced to all peers.\n");
    static_protocol(&mut out, PROTO_BLOCKS, &cfg.blocks, None);
    out.push_str("# Underlay pods wired by this node: announced to the other nodes so both directions of\n");
    out.push_str("# a connection pass this node; never installed here (the pod route is in table 500).\n");
    static_protocol(
        &mut out,
        PROTO_UNDERLAY,
        &cfg.underlay_routes,
        Some(&format!("bgp_community.add(({c1}, {c2})); accept;")),
    );
    out.push_str("# The Service CIDR, announced to the ToR so external clients reach Service IPs; kube-proxy\n");
    out.push_str("# DNATs before routing, so the node itself needs no route for it.\n");
    static_protocol(&mut out, PROTO_SERVICES, &cfg.service_cidrs, None);

    let _ = writeln!(
        out,
        "protocol kernel knit_kernel {{
  ipv4 {{
    import none;
    export filter {{
      if proto = \"{PROTO_BLOCKS}\" then accept;
      if source = RTS_BGP then accept;
      reject;
    }};
  }};
  merge paths on;
}}
"
    );

    if !cfg.overlay_cidrs.is_empty() {
        let _ = writeln!(
            out,
            "filter knit_from_nodes {{
  if net ~ {overlay} then accept;
  if ({c1}, {c2}) ~ bgp_community then accept;
  reject;
}}

filter knit_to_nodes {{
  if proto = \"{PROTO_BLOCKS}\" then accept;
  if proto = \"{PROTO_UNDERLAY}\" then accept;
  reject;
}}
",
            overlay = prefix_set_plus(&cfg.overlay_cidrs)
        );
    }

    for peer in &cfg.node_peers {
        let _ = writeln!(out, "protocol bgp {} {{", peer_protocol_name(IpAddr::V4(*peer)));
        let _ = writeln!(out, "  local {} as {};", cfg.node_ip, cfg.asn);
        let _ = writeln!(out, "  neighbor {peer} as {};", cfg.asn);
        // Nodes share a subnet: next hops are direct, no IGP to resolve them through.
        out.push_str("  direct;\n");
        if peer > &cfg.node_ip {
            // As Calico: only the higher address connects, so the two sides don't race.
            out.push_str("  passive on;\n");
        }
        cfg.timers.render(&mut out, "  ");
        out.push_str("  ipv4 {\n    import filter knit_from_nodes;\n    export filter knit_to_nodes;\n    next hop self;\n    gateway direct;\n  };\n}\n\n");
    }

    if let Some(tor) = &cfg.tor {
        let _ = writeln!(
            out,
            "filter knit_to_tor {{
  if ({c1}, {c2}) ~ bgp_community then reject;
  if proto = \"{PROTO_BLOCKS}\" then accept;
  if proto = \"{PROTO_SERVICES}\" then accept;
  reject;
}}
"
        );
        let _ = writeln!(out, "protocol bgp {} {{", peer_protocol_name(tor.ip));
        let _ = writeln!(out, "  local {} as {};", cfg.node_ip, cfg.asn);
        let _ = writeln!(out, "  neighbor {} as {};", tor.ip, tor.asn);
        cfg.timers.render(&mut out, "  ");
        out.push_str("  ipv4 {\n    import none;\n    export filter knit_to_tor;\n    next hop self;\n  };\n}\n");
    }
    Ok(out)
}

/// The BIRD config of the ToR.
pub fn tor_config(cfg: &TorBgp) -> Result<String> {
    cfg.timers.validate()?;
    v4_only("accept", &cfg.accept)?;
    if cfg.accept.is_empty() {
        return Err(BirdError::Invalid("accept is empty: the ToR would learn nothing".into()));
    }
    if let Some(s) = cfg.nodes.iter().find(|s| s.node.asn == cfg.asn || !s.node.ip.is_ipv4()) {
        return Err(BirdError::Invalid(format!("node {}: must be IPv4 and in another AS than the ToR", s.node.ip)));
    }
    let (c1, c2) = NO_EXPORT;
    let mut out = String::new();
    header(&mut out, "knit ToR BGP", cfg.router_id);
    let _ = writeln!(
        out,
        "# Several nodes announce the Service CIDR: merge paths makes one ECMP kernel route.
protocol kernel knit_kernel {{
  ipv4 {{
    import none;
    export filter {{
      if source = RTS_BGP then accept;
      reject;
    }};
  }};
  merge paths on;
}}

# Pod blocks and Service CIDRs only; underlay pod /32s stay between the nodes.
filter knit_from_nodes {{
  if ({c1}, {c2}) ~ bgp_community then reject;
  if net ~ {accept} then accept;
  reject;
}}
",
        accept = prefix_set_plus(&cfg.accept)
    );
    for s in &cfg.nodes {
        let _ = writeln!(out, "protocol bgp {} {{", peer_protocol_name(s.node.ip));
        let _ = writeln!(out, "  local {} as {};", s.local_ip, cfg.asn);
        let _ = writeln!(out, "  neighbor {} as {};", s.node.ip, s.node.asn);
        cfg.timers.render(&mut out, "  ");
        out.push_str("  ipv4 {\n    import filter knit_from_nodes;\n    export none;\n  };\n}\n\n");
    }
    Ok(out)
}

/// State of one BIRD protocol, from `birdc show protocols`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolStatus {
    /// Protocol name.
    pub name: String,
    /// Protocol type (`BGP`, `Static`, ...).
    pub proto: String,
    /// Table (`---` for BGP in BIRD 2).
    pub table: String,
    /// `up`, `down`, `start`, ...
    pub state: String,
    /// Since + info columns (for BGP: `Established`, `Active`, `Connect`, ... and errors).
    pub info: String,
}

impl ProtocolStatus {
    /// A BGP session in state Established.
    pub fn is_established(&self) -> bool {
        self.proto == "BGP" && self.state == "up" && self.info.split_whitespace().any(|w| w == "Established")
    }
}

/// Parses `birdc show protocols` output.
pub fn parse_protocols(text: &str) -> Vec<ProtocolStatus> {
    let mut out = Vec::new();
    let mut in_table = false;
    for line in text.lines() {
        if !in_table {
            in_table = line.starts_with("Name ");
            continue;
        }
        let mut words = line.split_whitespace();
        let (Some(name), Some(proto), Some(table), Some(state)) =
            (words.next(), words.next(), words.next(), words.next())
        else {
            continue;
        };
        let info = words.collect::<Vec<_>>().join(" ");
        out.push(ProtocolStatus {
            name: name.into(),
            proto: proto.into(),
            table: table.into(),
            state: state.into(),
            info,
        });
    }
    out
}

/// One BIRD instance's files: `bird.conf`, the control socket `bird.ctl`, `bird.pid`, `bird.log`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bird {
    dir: PathBuf,
}

impl Bird {
    /// An instance living in `dir` (created by [`Bird::write_config`]). Keep the
    /// path short: the control socket path must fit in 108 bytes.
    pub fn new(dir: impl Into<PathBuf>) -> Bird {
        Bird { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The config file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("bird.conf")
    }

    /// The control socket.
    pub fn socket_path(&self) -> PathBuf {
        self.dir.join("bird.ctl")
    }

    /// The pid file.
    pub fn pid_path(&self) -> PathBuf {
        self.dir.join("bird.pid")
    }

    /// Where the daemon's stderr (its log) goes.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("bird.log")
    }

    /// Writes the config (atomically: a running BIRD may re-read it at any time).
    pub fn write_config(&self, text: &str) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(io_err(format!("create {}", self.dir.display())))?;
        let tmp = self.dir.join("bird.conf.tmp");
        std::fs::write(&tmp, text).map_err(io_err(format!("write {}", tmp.display())))?;
        std::fs::rename(&tmp, self.config_path()).map_err(io_err(format!("rename to {}", self.config_path().display())))
    }

    /// Parses the config with `bird -p` without starting anything.
    pub fn check_config(&self) -> Result<()> {
        let mut cmd = Command::new("bird");
        cmd.arg("-p").arg("-c").arg(self.config_path());
        run(&mut cmd).map(|_| ())
    }

    /// `bird -f -c <conf> -s <socket> -P <pidfile>`, stderr into [`Bird::log_path`].
    /// Foreground (`-f`), so the spawned child *is* the daemon and killing it
    /// stops BIRD. The caller spawns it inside the namespace (`Netns::spawn`).
    pub fn command(&self) -> Result<Command> {
        std::fs::create_dir_all(&self.dir).map_err(io_err(format!("create {}", self.dir.display())))?;
        let log = File::create(self.log_path()).map_err(io_err(format!("create {}", self.log_path().display())))?;
        let mut cmd = Command::new("bird");
        cmd.arg("-f")
            .arg("-c")
            .arg(self.config_path())
            .arg("-s")
            .arg(self.socket_path())
            .arg("-P")
            .arg(self.pid_path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        Ok(cmd)
    }

    /// Runs `birdc -s <socket> <args...>` and returns its output.
    pub fn birdc(&self, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new("birdc");
        cmd.arg("-s").arg(self.socket_path()).args(args);
        run(&mut cmd)
    }

    /// Makes the daemon re-read its config (`birdc configure`).
    pub fn configure(&self) -> Result<()> {
        let out = self.birdc(&["configure"])?;
        if out.contains("Reconfigured") || out.contains("Reconfiguration in progress") {
            Ok(())
        } else {
            Err(BirdError::Command { program: "birdc configure".into(), output: out })
        }
    }

    /// `birdc show protocols`, parsed.
    pub fn show_protocols(&self) -> Result<Vec<ProtocolStatus>> {
        Ok(parse_protocols(&self.birdc(&["show", "protocols"])?))
    }

    /// Waits until the named BGP sessions (all BGP sessions when `names` is
    /// empty) are Established, polling every 200 ms for at most `timeout`.
    pub fn wait_established(&self, names: &[String], timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.show_protocols() {
                Ok(ps) => {
                    let bgp: Vec<&ProtocolStatus> = ps
                        .iter()
                        .filter(|p| p.proto == "BGP" && (names.is_empty() || names.contains(&p.name)))
                        .collect();
                    let all_there = names.is_empty() || names.iter().all(|n| bgp.iter().any(|p| &p.name == n));
                    if all_there && !bgp.is_empty() && bgp.iter().all(|p| p.is_established()) {
                        return Ok(());
                    }
                    bgp.iter().map(|p| format!("{} {} {}", p.name, p.state, p.info)).collect::<Vec<_>>().join("; ")
                }
                // Not up yet (no socket): keep waiting.
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(BirdError::Timeout {
                    what: format!("BGP sessions of {}", self.dir.display()),
                    after: timeout,
                    last,
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Runs a command to completion; non-zero exit is an error carrying its output.
fn run(cmd: &mut Command) -> Result<String> {
    let program = format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ")
    );
    let out = cmd.env("LC_ALL", "C").output().map_err(io_err(format!("run {program}")))?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() {
        Ok(text)
    } else {
        Err(BirdError::Command { program, output: text.trim().to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("cidr")
    }

    fn node() -> NodeBgp {
        NodeBgp {
            node_ip: "10.0.0.2".parse().expect("ip"),
            asn: 64512,
            node_peers: vec!["10.0.0.3".parse().expect("ip"), "10.0.0.1".parse().expect("ip")],
            tor: Some(Peer { ip: "10.0.0.254".parse().expect("ip"), asn: 64513 }),
            overlay_cidrs: vec![net("10.244.0.0/16")],
            blocks: vec![net("10.244.1.0/26")],
            underlay_routes: vec![net("10.0.0.50/32")],
            service_cidrs: vec![net("10.96.0.0/16")],
            timers: Timers::FAST,
        }
    }

    fn tor() -> TorBgp {
        TorBgp {
            router_id: "10.0.0.254".parse().expect("ip"),
            asn: 64513,
            nodes: vec![TorSession {
                local_ip: "10.0.0.254".parse().expect("ip"),
                node: Peer { ip: "10.0.0.2".parse().expect("ip"), asn: 64512 },
            }],
            accept: vec![net("10.244.0.0/16"), net("10.96.0.0/16")],
            timers: Timers::FAST,
        }
    }

    #[test]
    fn node_config_shape() {
        let c = node_config(&node()).expect("config");
        assert!(c.contains("router id 10.0.0.2;"));
        assert!(c.contains("protocol static knit_blocks {\n  ipv4;\n  route 10.244.1.0/26 blackhole;\n}"));
        assert!(c.contains("route 10.0.0.50/32 blackhole;"));
        assert!(c.contains("bgp_community.add((65535, 65281));"));
        assert!(c.contains("route 10.96.0.0/16 blackhole;"));
        // Only the higher peer initiates.
        let higher = c.split("protocol bgp peer_10_0_0_3 {").nth(1).expect("peer .3");
        assert!(higher.split("}\n").next().expect("body").contains("passive on;"));
        let lower = c.split("protocol bgp peer_10_0_0_1 {").nth(1).expect("peer .1");
        assert!(!lower.split("  };\n}").next().expect("body").contains("passive on;"));
        assert!(c.contains("neighbor 10.0.0.254 as 64513;"));
        assert!(c.contains("if net ~ [ 10.244.0.0/16+ ] then accept;"));
    }

    #[test]
    fn rejects_bad_inputs() {
        let mut n = node();
        n.tor = Some(Peer { ip: "10.0.0.254".parse().expect("ip"), asn: 64512 });
        assert!(node_config(&n).is_err());
        let mut n = node();
        n.blocks.push(net("fd00::/64"));
        assert!(node_config(&n).is_err());
        let mut n = node();
        n.timers.hold = 2;
        assert!(node_config(&n).is_err());
        let mut t = tor();
        t.accept.clear();
        assert!(tor_config(&t).is_err());
    }

    #[test]
    fn bird_parses_generated_configs() {
        // `bird -p` only parses: no namespace or privileges involved.
        let dir = std::env::temp_dir().join(format!("knit-bird-parse-{}", std::process::id()));
        for (i, text) in [node_config(&node()).expect("node"), tor_config(&tor()).expect("tor")].iter().enumerate() {
            let b = Bird::new(dir.join(i.to_string()));
            b.write_config(text).expect("write");
            if let Err(e) = b.check_config() {
                panic!("bird rejected config:\n{text}\n{e}");
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn parses_show_protocols() {
        let text = "BIRD 2.0.12 ready.
Name       Proto      Table      State  Since         Info
device1    Device     ---        up     10:00:00.123
knit_blocks Static     master4    up     10:00:00.123
peer_10_0_0_3 BGP        ---        up     10:00:01.456  Established
peer_10_0_0_1 BGP        ---        start  10:00:00.123  Active        Socket: Connection refused
";
        let ps = parse_protocols(text);
        assert_eq!(ps.len(), 4);
        assert!(ps[2].is_established());
        assert!(!ps[3].is_established());
        assert_eq!(ps[3].state, "start");
        assert!(ps[3].info.contains("Connection refused"));
    }
}
