//! The snapshot: what trace and doctor know about a set of namespaces, read once through
//! knit-host's read APIs and kept as plain data (so the model is tested without root).

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use knit_host::addr::Address;
use knit_host::inspect::{self, MultipathRoute};
use knit_host::link::LinkInfo;
use knit_host::neigh::Neighbour;
use knit_host::route::Route;
use knit_host::rule::Rule;
use knit_host::{addr, firewall, link, neigh, nft, route, rule, sysctl, Family, Handle, Netns};
use serde::{Deserialize, Serialize};

use crate::inventory::Inventory;
use crate::netfilter::Tables;
use crate::{Error, Result};

/// What a namespace is, when known (from an inventory).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum Role {
    /// A pod, on `node`.
    Pod {
        /// Its node's namespace name (display name).
        node: String,
    },
    /// A node (or a real host's own namespace).
    Node,
    /// A client outside the cluster.
    Client,
    /// The lab's switch and ToR.
    Fabric,
    /// Anything else.
    Other,
}

/// Per-interface IPv4 configuration (`net.ipv4.conf.<if>.*`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IfConf {
    /// `forwarding`.
    pub forwarding: u8,
    /// `rp_filter`.
    pub rp_filter: u8,
    /// `proxy_arp`.
    pub proxy_arp: u8,
    /// `accept_local`.
    pub accept_local: u8,
    /// `src_valid_mark`.
    pub src_valid_mark: u8,
    /// `send_redirects`.
    pub send_redirects: u8,
    /// `arp_ignore`.
    pub arp_ignore: u8,
}

/// One namespace.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NsSnap {
    /// Display name (`node1`, `overlay1`, `host`, or the /run/netns name).
    pub name: String,
    /// Where the namespace is: its name under /run/netns, a namespace file's path, or empty
    /// for the host namespace.
    pub netns: String,
    /// What it is.
    pub role: Role,
    /// Links, by index.
    pub links: Vec<LinkInfo>,
    /// IPv4 addresses.
    pub addrs: Vec<Address>,
    /// IPv4 policy rules, in priority order.
    pub rules: Vec<Rule>,
    /// IPv4 routes of every table (multipath routes appear with no gateway/oif here).
    pub routes: Vec<Route>,
    /// The next hops of multipath routes.
    pub multipath: Vec<MultipathRoute>,
    /// IPv4 neighbours.
    pub neigh: Vec<Neighbour>,
    /// `net.ipv4.conf.{all,default,<if>}`.
    pub conf: BTreeMap<String, IfConf>,
    /// `net.netfilter.nf_conntrack_tcp_be_liberal` (None when conntrack isn't loaded).
    pub tcp_be_liberal: Option<bool>,
    /// iptables-save text per table (nat, filter, mangle, raw).
    pub iptables: BTreeMap<String, String>,
    /// nsid (as this namespace sees it) → display name of that namespace.
    pub nsids: BTreeMap<i32, String>,
    #[serde(skip)]
    parsed: Option<Tables>,
}

impl NsSnap {
    /// An empty namespace (for tests and builders).
    pub fn new(name: &str, role: Role) -> NsSnap {
        NsSnap {
            name: name.to_string(),
            netns: String::new(),
            role,
            links: Vec::new(),
            addrs: Vec::new(),
            rules: default_rules(),
            routes: Vec::new(),
            multipath: Vec::new(),
            neigh: Vec::new(),
            conf: BTreeMap::new(),
            tcp_be_liberal: None,
            iptables: BTreeMap::new(),
            nsids: BTreeMap::new(),
            parsed: None,
        }
    }

    /// The link with index `i`.
    pub fn link(&self, i: u32) -> Option<&LinkInfo> {
        self.links.iter().find(|l| l.index == i)
    }

    /// The link called `name`.
    pub fn link_by_name(&self, name: &str) -> Option<&LinkInfo> {
        self.links.iter().find(|l| l.name == name)
    }

    /// The name of link `i` (`#i` when unknown).
    pub fn ifname(&self, i: u32) -> String {
        self.link(i).map(|l| l.name.clone()).unwrap_or_else(|| format!("#{i}"))
    }

    /// The effective configuration of an interface: `all` and the interface's own value
    /// combined as the kernel does (max for rp_filter/arp_ignore, and for forwarding the
    /// interface's own value, or for proxy_arp/accept_local/src_valid_mark either).
    pub fn ifconf(&self, ifname: &str) -> IfConf {
        let all = self.conf.get("all").copied().unwrap_or_default();
        let dev = self.conf.get(ifname).copied().unwrap_or(all);
        IfConf {
            forwarding: dev.forwarding,
            rp_filter: all.rp_filter.max(dev.rp_filter),
            proxy_arp: all.proxy_arp | dev.proxy_arp,
            accept_local: dev.accept_local,
            src_valid_mark: all.src_valid_mark | dev.src_valid_mark,
            send_redirects: all.send_redirects | dev.send_redirects,
            arp_ignore: all.arp_ignore.max(dev.arp_ignore),
        }
    }

    /// Whether `ip` is one of this namespace's addresses.
    pub fn is_local(&self, ip: IpAddr) -> bool {
        self.addrs.iter().any(|a| a.net.addr() == ip)
            || self.routes.iter().any(|r| r.table == 255 && r.kind == route::RouteKind::Local && r.dst.contains(&ip))
    }

    /// The parsed iptables tables.
    pub fn tables(&mut self) -> &Tables {
        if self.parsed.is_none() {
            self.parsed = Some(Tables::parse_all(&self.iptables));
        }
        self.parsed.get_or_insert_with(Tables::default)
    }

    /// Parses the iptables text once (call after changing `iptables`).
    pub fn prepare(&mut self) {
        self.parsed = Some(Tables::parse_all(&self.iptables));
    }

    /// The parsed tables, if [`NsSnap::prepare`] ran.
    pub fn parsed(&self) -> Option<&Tables> {
        self.parsed.as_ref()
    }

    /// Whether the namespace has policy rules besides the kernel's three defaults
    /// (the kernel's "custom rules" flag, which changes source validation).
    pub fn custom_rules(&self) -> bool {
        self.rules.iter().any(|r| !matches!((r.priority.unwrap_or(0), r.table), (0, 255) | (32766, 254) | (32767, 253)))
    }

    /// Interface addresses of `ifindex`.
    pub fn addrs_on(&self, ifindex: u32) -> impl Iterator<Item = &Address> {
        self.addrs.iter().filter(move |a| a.index == ifindex)
    }
}

/// The kernel's default IPv4 rules.
pub fn default_rules() -> Vec<Rule> {
    vec![
        Rule::new(Family::V4, 255).priority(0),
        Rule::new(Family::V4, 254).priority(32766),
        Rule::new(Family::V4, 253).priority(32767),
    ]
}

/// A set of namespaces and, when known, what lives in them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Snapshot {
    /// The namespaces.
    pub namespaces: Vec<NsSnap>,
    /// What is where (pods, nodes, Services), when the snapshot was read from an inventory.
    #[serde(skip)]
    pub inventory: Option<Inventory>,
    /// What the reader had to work around (e.g. the host namespace it could not open), for
    /// the user's stderr.
    #[serde(skip)]
    pub notes: Vec<String>,
}

/// A (namespace, interface) position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Port {
    /// Namespace index in [`Snapshot::namespaces`].
    pub ns: usize,
    /// Interface index.
    pub link: u32,
}

impl Snapshot {
    /// The namespace called `name`.
    pub fn ns_index(&self, name: &str) -> Option<usize> {
        self.namespaces.iter().position(|n| n.name == name)
    }

    /// Parses every namespace's iptables text.
    pub fn prepare(&mut self) {
        for n in &mut self.namespaces {
            n.prepare();
        }
    }

    /// The other end of a veth, or a macvlan's parent: `IFLA_LINK` resolved through `link_netnsid`.
    pub fn link_target(&self, p: Port) -> Option<Port> {
        let ns = &self.namespaces[p.ns];
        let l = ns.link(p.link)?;
        let target = l.link?;
        let tns = match l.link_netnsid {
            Some(id) => self.ns_index(ns.nsids.get(&id)?)?,
            None => p.ns,
        };
        self.namespaces[tns].link(target)?;
        Some(Port { ns: tns, link: target })
    }

    /// Macvlan links whose parent is `p`.
    pub fn macvlan_children(&self, p: Port) -> Vec<Port> {
        let mut out = Vec::new();
        for (i, ns) in self.namespaces.iter().enumerate() {
            for l in &ns.links {
                if l.kind.as_deref() == Some("macvlan") {
                    let me = Port { ns: i, link: l.index };
                    if self.link_target(me) == Some(p) {
                        out.push(me);
                    }
                }
            }
        }
        out
    }

    /// `ns/ifname` for people.
    pub fn port_name(&self, p: Port) -> String {
        format!("{}/{}", self.namespaces[p.ns].name, self.namespaces[p.ns].ifname(p.link))
    }

    /// The namespace owning address `ip` (the first one, in snapshot order).
    pub fn owner_of(&self, ip: IpAddr) -> Option<usize> {
        self.namespaces.iter().position(|n| n.addrs.iter().any(|a| a.net.addr() == ip && !a.net.addr().is_loopback()))
    }
}

/// A namespace to read: display name, role, and how to open it.
pub struct Source {
    /// Display name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// /run/netns name or namespace file path (empty = host).
    pub netns_name: String,
    /// The open namespace.
    pub ns: Netns,
}

fn host_err(what: String) -> impl FnOnce(knit_host::Error) -> Error {
    move |e| Error::Host { what, source: e }
}

fn conf_of(ifname: &str) -> IfConf {
    let g = |leaf: &str| -> u8 {
        sysctl::get(&format!("net/ipv4/conf/{ifname}/{leaf}")).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(0)
    };
    IfConf {
        forwarding: g("forwarding"),
        rp_filter: g("rp_filter"),
        proxy_arp: g("proxy_arp"),
        accept_local: g("accept_local"),
        src_valid_mark: g("src_valid_mark"),
        send_redirects: g("send_redirects"),
        arp_ignore: g("arp_ignore"),
    }
}

/// The tables trace reads.
pub const TABLES: [&str; 4] = ["raw", "mangle", "nat", "filter"];

/// Splits `iptables-save` output (all tables) into per-table text.
pub fn split_tables(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut cur: Option<String> = None;
    let mut buf = String::new();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix('*') {
            cur = Some(t.trim().to_string());
            buf.clear();
        }
        if cur.is_some() && !line.starts_with('#') {
            buf.push_str(line);
            buf.push('\n');
        }
        if line.trim() == "COMMIT" {
            if let Some(t) = cur.take() {
                out.insert(t, std::mem::take(&mut buf));
            }
        }
    }
    out
}

/// Reads one namespace: everything but the per-interface sysctls ([`read_conf`]).
pub fn read_ns(src: &Source) -> Result<NsSnap> {
    let what = |w: &str| format!("{}: {w}", src.name);
    // Both sockets from one thread inside the namespace.
    let (h, mut nft) = src.ns.try_run(|| Ok((Handle::new()?, nft::Nft::new()?))).map_err(host_err(what("netlink")))?;
    let mut s = NsSnap::new(&src.name, src.role.clone());
    s.netns = src.netns_name.clone();
    s.links = link::list(&h).map_err(host_err(what("links")))?;
    s.addrs = addr::list(&h, Some(Family::V4), None).map_err(host_err(what("addresses")))?;
    s.rules = rule::list(&h, Family::V4).map_err(host_err(what("rules")))?;
    s.routes = route::list(&h, Family::V4, None).map_err(host_err(what("routes")))?;
    s.multipath = inspect::multipath_routes(&h, Family::V4).map_err(host_err(what("multipath routes")))?;
    s.neigh = neigh::list(&h, Some(Family::V4), None).map_err(host_err(what("neighbours")))?;
    let text = firewall::iptables_save(Some(&src.ns), Family::V4, None).unwrap_or_default();
    s.iptables = split_tables(&text);
    let native = crate::nftables::read(&mut nft).map_err(host_err(what("nftables")))?;
    crate::nftables::merge_into(&mut s.iptables, &native);
    Ok(s)
}

/// Reads the sysctls of `names` (plus `all` and `default`) and tcp_be_liberal into `s`.
pub fn read_conf(src: &Source, s: &mut NsSnap, names: Vec<String>) -> Result<()> {
    let (conf, liberal) = src
        .ns
        .run(move || {
            let mut conf = BTreeMap::new();
            for n in ["all", "default"].iter().map(|x| x.to_string()).chain(names) {
                let c = conf_of(&n);
                conf.insert(n, c);
            }
            let liberal = sysctl::get("net/netfilter/nf_conntrack_tcp_be_liberal").ok().map(|v| v.trim() != "0");
            (conf, liberal)
        })
        .map_err(host_err(format!("{}: sysctls", src.name)))?;
    s.conf = conf;
    s.tcp_be_liberal = liberal;
    Ok(())
}

/// Reads a set of namespaces (in parallel) and resolves their namespace ids.
///
/// Sysctls are read for the interfaces a walk can use: those whose peer (veth, macvlan
/// parent) lives in one of `sources`, and those with no peer elsewhere. A node with a thousand
/// pods, traced between two of them, so reads a few interfaces' settings, not a thousand.
pub fn read(sources: &[Source]) -> Result<Snapshot> {
    let chunk = sources.len().div_ceil(4).max(1);
    let results: Vec<Result<NsSnap>> = std::thread::scope(|sc| {
        let hs: Vec<_> =
            sources.chunks(chunk).map(|c| sc.spawn(move || c.iter().map(read_ns).collect::<Vec<_>>())).collect();
        hs.into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|_| vec![Err(Error::Other("snapshot thread panicked".into()))]))
            .collect()
    });
    let mut namespaces = results.into_iter().collect::<Result<Vec<_>>>()?;
    // nsids: only namespaces with links pointing elsewhere need them.
    for (i, src) in sources.iter().enumerate() {
        let wanted: std::collections::BTreeSet<i32> =
            namespaces[i].links.iter().filter_map(|l| l.link_netnsid).collect();
        if wanted.is_empty() {
            continue;
        }
        let h = Handle::in_netns(&src.ns).map_err(host_err(format!("{}: netlink", src.name)))?;
        for other in sources {
            if let Ok(Some(id)) = inspect::nsid_of(&h, &other.ns) {
                if wanted.contains(&id) {
                    namespaces[i].nsids.insert(id, other.name.clone());
                }
            }
        }
    }
    let conf_results: Vec<Result<()>> = std::thread::scope(|sc| {
        let hs: Vec<_> = sources
            .chunks(chunk)
            .zip(namespaces.chunks_mut(chunk))
            .map(|(srcs, snaps)| {
                sc.spawn(move || {
                    srcs.iter()
                        .zip(snaps.iter_mut())
                        .map(|(src, s)| {
                            let names: Vec<String> = s
                                .links
                                .iter()
                                .filter(|l| l.link_netnsid.is_none_or(|id| s.nsids.contains_key(&id)))
                                .map(|l| l.name.clone())
                                .collect();
                            read_conf(src, s, names)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|_| vec![Err(Error::Other("snapshot thread panicked".into()))]))
            .collect()
    });
    conf_results.into_iter().collect::<Result<Vec<()>>>()?;
    let mut snap = Snapshot { namespaces, inventory: None, notes: Vec::new() };
    snap.prepare();
    Ok(snap)
}

/// Above this many pods, a trace reads only the pods it can visit (see [`read_inventory`]).
pub const ALL_PODS_UP_TO: usize = 64;

/// PID 1's namespace file: the host's namespace, unless a container hides it.
const HOST_NETNS: &str = "/proc/1/ns/net";

/// The host's namespace: PID 1's, or, where `/proc/1/ns/net` cannot be opened (a container
/// without access to PID 1, a sandbox), this process's own, with a note saying so.
pub fn host_netns() -> Result<(Netns, Option<String>)> {
    match Netns::open(HOST_NETNS) {
        Ok(ns) => Ok((ns, None)),
        Err(e) => {
            let ns = Netns::open("/proc/self/ns/net").map_err(host_err("open this process's namespace".into()))?;
            Ok((ns, Some(format!("{e}; using this process's namespace as the host namespace"))))
        }
    }
}

/// Opens an inventory's namespace: empty = the host's, an absolute path = that file, anything
/// else = a name under /run/netns.
fn open_place(name: &str, netns: &str, notes: &mut Vec<String>) -> Result<(Netns, String)> {
    if netns.is_empty() {
        let (ns, note) = host_netns()?;
        notes.extend(note);
        return Ok((ns, String::new()));
    }
    let ns = if netns.starts_with('/') { Netns::open(netns) } else { Netns::open_named(netns) }
        .map_err(host_err(format!("{name}: open namespace {netns}")))?;
    Ok((ns, netns.to_string()))
}

/// The namespaces an inventory names, in the order fabric, nodes, clients, pods (the first
/// namespace holding an address owns it). With `trace = Some((src, dst))` and more than
/// [`ALL_PODS_UP_TO`] pods, only the pods [`Inventory::pods_for`] names: a trace on a node with
/// a thousand pods reads a dozen namespaces, not a thousand.
pub fn inventory_sources(inv: &Inventory, trace: Option<(&str, &str)>, notes: &mut Vec<String>) -> Result<Vec<Source>> {
    let keep = match trace {
        Some((src, dst)) if inv.pods.len() > ALL_PODS_UP_TO => Some(inv.pods_for(src, dst)),
        _ => None,
    };
    let mut parts: Vec<(&str, &str, Role)> = Vec::new();
    parts.extend(inv.fabric.iter().map(|f| (f.name.as_str(), f.netns.as_str(), Role::Fabric)));
    parts.extend(inv.nodes.iter().map(|n| (n.name.as_str(), n.netns.as_str(), Role::Node)));
    parts.extend(inv.clients.iter().map(|c| (c.name.as_str(), c.netns.as_str(), Role::Client)));
    parts.extend(
        inv.pods
            .iter()
            .filter(|p| keep.as_ref().is_none_or(|k| k.contains(&p.name)))
            .map(|p| (p.name.as_str(), p.netns.as_str(), Role::Pod { node: p.node.clone() })),
    );
    let mut out = Vec::new();
    for (name, netns, role) in parts {
        let (ns, netns_name) = open_place(name, netns, notes)?;
        out.push(Source { name: name.to_string(), role, netns_name, ns });
    }
    Ok(out)
}

/// Snapshot of the namespaces an inventory names (all of them, or, with `trace`, those a
/// trace between the two can visit: see [`inventory_sources`]).
pub fn read_inventory(inv: &Inventory, trace: Option<(&str, &str)>) -> Result<Snapshot> {
    let mut notes = Vec::new();
    let sources = inventory_sources(inv, trace, &mut notes)?;
    let mut snap = read(&sources)?;
    snap.inventory = Some(inv.clone());
    snap.notes = notes;
    Ok(snap)
}

/// Snapshot of this machine: the host namespace (as `host`) and every namespace under /run/netns.
pub fn read_node() -> Result<Snapshot> {
    let (host, note) = host_netns()?;
    let mut sources = vec![Source { name: "host".into(), role: Role::Node, netns_name: String::new(), ns: host }];
    for n in Netns::list_named().map_err(host_err("list /run/netns".into()))? {
        if let Ok(ns) = Netns::open_named(&n) {
            sources.push(Source { name: n.clone(), role: Role::Pod { node: "host".into() }, netns_name: n, ns });
        }
    }
    let mut snap = read(&sources)?;
    snap.notes.extend(note);
    Ok(snap)
}

/// Parses `a.b.c.d[/len]`.
pub fn parse_net(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>().ok().or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}
