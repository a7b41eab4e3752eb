//! The routed pod's desired state as plain data, computed from the CNI inputs and the IPAM
//! result without touching the kernel. `apply` installs it; tests and `knit trace` read it.
//!
//! The path is the one in seed calico-pod-to-pod-path:
//! - pod: `eth0` holds the pod IP as /32 (/128), `169.254.1.1 dev eth0 scope link`,
//!   `default via 169.254.1.1 dev eth0`; the host veth answers ARP for 169.254.1.1 by proxy ARP
//!   with `ee:ee:ee:ee:ee:ee`;
//! - host: `cali<11 hex>` with no IP, and `<podIP>/32 dev cali<…> scope link`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use knit_cni::{CniError, CniResult};
use knit_host::route::Route;
use knit_host::{Family, Mac, Scope};
use sha1::{Digest, Sha1};

/// The host veth's MAC, as Calico sets it: the pod's neighbour entry for its gateway.
pub const HOST_VETH_MAC: Mac = Mac([0xee; 6]);
/// The pod's IPv4 gateway: not configured anywhere, answered by proxy ARP on the host veth.
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The pod's IPv6 gateway: the host veth's EUI-64 link-local address for `ee:ee:ee:ee:ee:ee`.
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0xecee, 0xeeff, 0xfeee, 0xeeee);
/// Host veth names start with this, as Calico's do, so users' tooling keeps working.
pub const HOST_VETH_PREFIX: &str = "cali";

/// The pod identity that names the host veth: `K8S_POD_NAMESPACE.K8S_POD_NAME` from CNI_ARGS
/// when both are present, else the container ID. A second routed NIC (ifname other than eth0)
/// adds the ifname so that the two host veths differ.
pub fn pod_identity(args: &[(String, String)], container_id: &str, ifname: &str) -> String {
    let get = |k: &str| args.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty());
    let base = match (get("K8S_POD_NAMESPACE"), get("K8S_POD_NAME")) {
        (Some(ns), Some(name)) => format!("{ns}.{name}"),
        _ => container_id.to_string(),
    };
    if ifname == "eth0" {
        base
    } else {
        format!("{base}.{ifname}")
    }
}

/// `cali` + the first 11 hex characters of SHA-1 of the identity (15 characters: IFNAMSIZ-1).
pub fn host_veth_name(identity: &str) -> String {
    let digest = Sha1::digest(identity.as_bytes());
    let mut name = String::with_capacity(15);
    name.push_str(HOST_VETH_PREFIX);
    for b in digest.iter() {
        name.push_str(&format!("{b:02x}"));
        if name.len() >= 15 {
            break;
        }
    }
    name.truncate(15);
    name
}

/// Everything ADD installs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub host_veth: String,
    pub pod_ifname: String,
    pub mtu: Option<u32>,
    /// The pod's addresses, narrowed to /32 and /128.
    pub pod_addrs: Vec<IpNet>,
    /// Pod routes in order (the scope-link gateway route first); `oif` is filled at apply time
    /// with the pod interface's index.
    pub pod_routes: Vec<Route>,
    /// Host routes (`<podIP>/32 dev cali… scope link`); `oif` is filled at apply time.
    pub host_routes: Vec<Route>,
    /// Host sysctls for the host veth, as (key, value) with slash-separated keys.
    pub host_sysctls: Vec<(String, String)>,
    /// Pod sysctls (IPv6 only: no DAD on the /128, which has no neighbours to clash with).
    pub pod_sysctls: Vec<(String, String)>,
}

impl Plan {
    pub fn families(&self) -> Vec<Family> {
        let mut out = Vec::new();
        for a in &self.pod_addrs {
            let f = Family::of_net(a);
            if !out.contains(&f) {
                out.push(f);
            }
        }
        out
    }
}

fn host_prefix(ip: IpAddr) -> IpNet {
    match ip {
        IpAddr::V4(v4) => IpNet::V4(ipnet::Ipv4Net::new(v4, 32).unwrap_or_default()),
        IpAddr::V6(v6) => IpNet::V6(ipnet::Ipv6Net::new(v6, 128).unwrap_or_default()),
    }
}

fn gateway(f: Family) -> IpAddr {
    match f {
        Family::V4 => IpAddr::V4(GATEWAY_V4),
        Family::V6 => IpAddr::V6(GATEWAY_V6),
    }
}

/// Computes the plan from the CNI inputs and the IPAM result.
pub fn plan(identity: &str, ifname: &str, mtu: Option<u32>, ipam: &CniResult) -> Result<Plan, CniError> {
    if ipam.ips.is_empty() {
        return Err(CniError::generic("IPAM returned no IP address"));
    }
    let host_veth = host_veth_name(identity);
    let pod_addrs: Vec<IpNet> = ipam.ips.iter().map(|ip| host_prefix(ip.address.addr())).collect();
    let mut families: Vec<Family> = Vec::new();
    for a in &pod_addrs {
        let f = Family::of_net(a);
        if !families.contains(&f) {
            families.push(f);
        }
    }

    let mut pod_routes = Vec::new();
    for &f in &families {
        let gw = gateway(f);
        if f == Family::V4 {
            // The gateway is on-link: the pod ARPs for it and the host veth answers by proxy ARP.
            pod_routes.push(Route::new(host_prefix(gw)).scope(Scope::Link));
        }
        // IPAM routes (e.g. host-local's `routes`) keep their destinations but always point at
        // the proxy-answered gateway: there is no other next hop on a /32 veth.
        let dsts: Vec<IpNet> = ipam.routes.iter().map(|r| r.dst).filter(|d| Family::of_net(d) == f).collect();
        let dsts = if dsts.is_empty() { vec![f.any()] } else { dsts };
        for dst in dsts {
            pod_routes.push(Route::via(dst, gw, None));
        }
    }

    let host_routes = pod_addrs.iter().map(|a| Route::new(*a).scope(Scope::Link)).collect();

    let mut host_sysctls = Vec::new();
    let v4 = families.contains(&Family::V4);
    let v6 = families.contains(&Family::V6);
    if v4 {
        for (k, v) in [("route_localnet", "1"), ("proxy_arp", "1"), ("forwarding", "1")] {
            host_sysctls.push((format!("net/ipv4/conf/{host_veth}/{k}"), v.to_string()));
        }
        host_sysctls.push((format!("net/ipv4/neigh/{host_veth}/proxy_delay"), "0".to_string()));
    }
    if v6 {
        for (k, v) in [("accept_dad", "0"), ("disable_ipv6", "0"), ("proxy_ndp", "1"), ("forwarding", "1")] {
            host_sysctls.push((format!("net/ipv6/conf/{host_veth}/{k}"), v.to_string()));
        }
    }
    // accept_ra is per family in the kernel only for v6; the host veth must never take a
    // router advertisement from a pod.
    host_sysctls.push((format!("net/ipv6/conf/{host_veth}/accept_ra"), "0".to_string()));

    let mut pod_sysctls = Vec::new();
    if v6 {
        pod_sysctls.push((format!("net/ipv6/conf/{ifname}/accept_dad"), "0".to_string()));
        pod_sysctls.push((format!("net/ipv6/conf/{ifname}/disable_ipv6"), "0".to_string()));
    }

    Ok(Plan {
        host_veth,
        pod_ifname: ifname.to_string(),
        mtu,
        pod_addrs,
        pod_routes,
        host_routes,
        host_sysctls,
        pod_sysctls,
    })
}

/// The CNI result: the host veth and the pod interface, each IP pointing at the pod interface
/// (index 1), the pod routes, and IPAM's DNS.
pub fn result(plan: &Plan, ipam: &CniResult, pod_mac: Option<Mac>, netns: &str, version: &str) -> CniResult {
    let mut res = CniResult { cni_version: version.to_string(), dns: ipam.dns.clone(), ..CniResult::default() };
    res.interfaces.push(knit_cni::Interface {
        name: plan.host_veth.clone(),
        mac: HOST_VETH_MAC.to_string(),
        ..Default::default()
    });
    res.interfaces.push(knit_cni::Interface {
        name: plan.pod_ifname.clone(),
        mac: pod_mac.map(|m| m.to_string()).unwrap_or_default(),
        mtu: plan.mtu,
        sandbox: netns.to_string(),
        ..Default::default()
    });
    for a in &plan.pod_addrs {
        res.ips.push(knit_cni::IpConfig { interface: Some(1), address: *a, gateway: Some(gateway(Family::of_net(a))) });
    }
    for r in &plan.pod_routes {
        if let Some(gw) = r.gateway {
            res.routes.push(knit_cni::Route::new(r.dst, Some(gw)));
        }
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(kv: &[(&str, &str)]) -> Vec<(String, String)> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn ipam(ips: &[&str], routes: &[&str]) -> CniResult {
        CniResult {
            ips: ips
                .iter()
                .map(|a| knit_cni::IpConfig { interface: None, address: a.parse().unwrap(), gateway: None })
                .collect(),
            routes: routes.iter().map(|d| knit_cni::Route::new(d.parse().unwrap(), None)).collect(),
            ..CniResult::default()
        }
    }

    #[test]
    fn veth_name_is_calico_compatible() {
        // Calico: "cali" + sha1("<namespace>.<pod>")[:11].
        let id = pod_identity(&args(&[("K8S_POD_NAMESPACE", "default"), ("K8S_POD_NAME", "web-0")]), "cid", "eth0");
        assert_eq!(id, "default.web-0");
        let name = host_veth_name(&id);
        assert_eq!(name.len(), 15);
        assert!(name.starts_with("cali"));
        let hex: String = Sha1::digest(b"default.web-0").iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(&name[4..], &hex[..11]);
    }

    #[test]
    fn identity_falls_back_to_container_id() {
        assert_eq!(pod_identity(&args(&[("K8S_POD_NAME", "x")]), "abc", "eth0"), "abc");
        assert_eq!(pod_identity(&[], "abc", "net2"), "abc.net2");
    }

    #[test]
    fn v4_plan_matches_the_seed() {
        let p = plan("abc", "eth0", Some(1480), &ipam(&["10.233.64.5/26"], &[])).unwrap();
        assert_eq!(p.pod_addrs, vec!["10.233.64.5/32".parse::<IpNet>().unwrap()]);
        let shown: Vec<String> = p.pod_routes.iter().map(|r| r.to_string()).collect();
        assert_eq!(p.pod_routes.len(), 2, "{shown:?}");
        assert_eq!(p.pod_routes[0].dst, "169.254.1.1/32".parse::<IpNet>().unwrap());
        assert_eq!(p.pod_routes[0].scope, Scope::Link);
        assert_eq!(p.pod_routes[1].dst, "0.0.0.0/0".parse::<IpNet>().unwrap());
        assert_eq!(p.pod_routes[1].gateway, Some(IpAddr::V4(GATEWAY_V4)));
        assert_eq!(p.host_routes[0].dst, "10.233.64.5/32".parse::<IpNet>().unwrap());
        assert_eq!(p.host_routes[0].scope, Scope::Link);
        assert!(p.host_sysctls.iter().any(|(k, v)| k.ends_with("/proxy_arp") && v == "1"));
        assert!(p.host_sysctls.iter().any(|(k, v)| k.ends_with("/proxy_delay") && v == "0"));
    }

    #[test]
    fn ipam_routes_point_at_the_proxy_gateway() {
        let p = plan("abc", "eth0", None, &ipam(&["10.1.0.5/24"], &["10.0.0.0/8", "192.0.2.0/24"])).unwrap();
        let dsts: Vec<String> = p.pod_routes.iter().map(|r| r.dst.to_string()).collect();
        assert_eq!(dsts, ["169.254.1.1/32", "10.0.0.0/8", "192.0.2.0/24"]);
        assert!(p.pod_routes[1..].iter().all(|r| r.gateway == Some(IpAddr::V4(GATEWAY_V4))));
    }

    #[test]
    fn dual_stack_plan() {
        let p = plan("abc", "eth0", None, &ipam(&["10.1.0.5/24", "fd00::5/64"], &[])).unwrap();
        assert_eq!(p.families(), vec![Family::V4, Family::V6]);
        assert!(p.pod_routes.iter().any(|r| r.gateway == Some(IpAddr::V6(GATEWAY_V6))));
        assert_eq!(p.pod_addrs[1].prefix_len(), 128);
        assert!(p.pod_sysctls.iter().any(|(k, _)| k == "net/ipv6/conf/eth0/accept_dad"));
    }

    #[test]
    fn empty_ipam_result_is_an_error() {
        assert!(plan("abc", "eth0", None, &CniResult::default()).is_err());
    }

    #[test]
    fn result_lists_both_interfaces() {
        let p = plan("abc", "eth0", None, &ipam(&["10.1.0.5/24"], &[])).unwrap();
        let r = result(&p, &CniResult::default(), None, "/run/netns/x", "1.0.0");
        assert_eq!(r.interfaces.len(), 2);
        assert_eq!(r.interfaces[0].mac, "ee:ee:ee:ee:ee:ee");
        assert_eq!(r.interfaces[1].sandbox, "/run/netns/x");
        assert_eq!(r.ips[0].interface, Some(1));
    }
}
