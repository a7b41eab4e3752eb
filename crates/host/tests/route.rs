//! Routes: main and table 500, scope link, via, onlink, src, blackhole, default.

use std::net::IpAddr;

use knit_host::addr::{self, Address, FLAG_NODAD};
use knit_host::link::{self, VethOptions};
use knit_host::route::{self, proto, table, Route, RouteKind};
use knit_host::testing::TestNet;
use knit_host::{Family, Handle, IpNet, Scope};

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A namespace with an up veth carrying 10.0.0.1/24 and fd00::1/64.
fn setup(tn: &TestNet) -> (Handle, u32) {
    let h = tn.handle().unwrap();
    let idx = link::create_veth(&h, "r0", "r0p", None, &VethOptions { up: true, ..Default::default() }).unwrap();
    addr::add(&h, &Address::new(idx, net("10.0.0.1/24"))).unwrap();
    addr::add(&h, &Address::new(idx, net("fd00::1/64")).with_flags(FLAG_NODAD)).unwrap();
    (h, idx)
}

fn find(h: &Handle, fam: Family, t: u32, dst: &str) -> Option<Route> {
    route::list(h, fam, Some(t)).unwrap().into_iter().find(|r| r.dst == net(dst))
}

#[test]
fn link_scope_and_via_in_main() {
    let tn = TestNet::new("kh").unwrap();
    let (h, idx) = setup(&tn);

    let r1 = Route::dev(net("169.254.1.1/32"), idx);
    route::add(&h, &r1).unwrap();
    let r2 = Route::via(net("192.168.50.0/24"), ip("10.0.0.254"), Some(idx)).src(ip("10.0.0.1"));
    route::add(&h, &r2).unwrap();

    let got = find(&h, Family::V4, table::MAIN, "169.254.1.1/32").unwrap();
    assert_eq!(got, r1);
    let got = find(&h, Family::V4, table::MAIN, "192.168.50.0/24").unwrap();
    assert_eq!(got, r2);
    // The kernel's connected route is there too.
    let conn = find(&h, Family::V4, table::MAIN, "10.0.0.0/24").unwrap();
    assert_eq!(conn.protocol, proto::KERNEL);
    assert_eq!(conn.scope, Scope::Link);

    let err = route::add(&h, &r1).unwrap_err();
    assert!(err.is_exists(), "{err}");
    assert_eq!(err.errno(), Some(libc::EEXIST));

    route::del(&h, &r2).unwrap();
    assert!(find(&h, Family::V4, table::MAIN, "192.168.50.0/24").is_none());
    let err = route::del(&h, &r2).unwrap_err();
    assert!(err.is_not_found(), "{err}");
    route::del_dst(&h, net("169.254.1.1/32"), table::MAIN).unwrap();
    assert!(find(&h, Family::V4, table::MAIN, "169.254.1.1/32").is_none());
}

#[test]
fn default_routes_and_replace() {
    let tn = TestNet::new("kh").unwrap();
    let (h, idx) = setup(&tn);
    // Calico pod style: link-scope gateway first, then default via it.
    route::add(&h, &Route::dev(net("169.254.1.1/32"), idx)).unwrap();
    let def = Route::default_via(ip("169.254.1.1"), Some(idx));
    route::add(&h, &def).unwrap();
    let got = find(&h, Family::V4, table::MAIN, "0.0.0.0/0").unwrap();
    assert!(got.is_default());
    assert_eq!(got, def);
    assert!(route::add(&h, &def).unwrap_err().is_exists());

    // Replace moves the default to another gateway.
    let def2 = Route::default_via(ip("10.0.0.254"), Some(idx));
    route::replace(&h, &def2).unwrap();
    let got = find(&h, Family::V4, table::MAIN, "0.0.0.0/0").unwrap();
    assert_eq!(got.gateway, Some(ip("10.0.0.254")));

    // IPv6 default.
    let def6 = Route::default_via(ip("fd00::fe"), Some(idx));
    route::add(&h, &def6).unwrap();
    let got6 = find(&h, Family::V6, table::MAIN, "::/0").unwrap();
    assert_eq!(got6.gateway, Some(ip("fd00::fe")));
    assert_eq!(got6.oif, Some(idx));
    route::del(&h, &got6).unwrap();
    assert!(find(&h, Family::V6, table::MAIN, "::/0").is_none());
}

#[test]
fn table_500_onlink_blackhole() {
    let tn = TestNet::new("kh").unwrap();
    let (h, idx) = setup(&tn);

    let pod = Route::dev(net("10.233.64.5/32"), idx).table(500);
    route::add(&h, &pod).unwrap();
    // A gateway outside any connected prefix needs onlink.
    let onlink = Route::via(net("10.233.0.0/18"), ip("172.16.1.2"), Some(idx)).onlink().table(500);
    route::add(&h, &onlink).unwrap();
    let bh = Route::blackhole(net("10.233.64.0/26"));
    route::add(&h, &bh).unwrap();
    let v6 = Route::dev(net("fd00:233::5/128"), idx).table(500);
    route::add(&h, &v6).unwrap();

    let t500 = route::list(&h, Family::V4, Some(500)).unwrap();
    assert_eq!(t500.len(), 2, "{t500:?}");
    assert!(t500.contains(&pod));
    assert!(t500.contains(&onlink));
    assert!(t500.iter().all(|r| r.table == 500));
    // Table 500 routes are not in main.
    assert!(find(&h, Family::V4, table::MAIN, "10.233.64.5/32").is_none());

    let got = find(&h, Family::V4, table::MAIN, "10.233.64.0/26").unwrap();
    assert_eq!(got.kind, RouteKind::Blackhole);
    assert_eq!(got, bh);

    let got6 = find(&h, Family::V6, 500, "fd00:233::5/128").unwrap();
    assert_eq!(got6.oif, Some(idx));
    assert_eq!(got6.table, 500);

    // Without onlink the kernel refuses the unreachable gateway.
    let bad = Route::via(net("10.99.0.0/16"), ip("172.16.1.2"), Some(idx));
    assert!(route::add(&h, &bad).is_err());
    // Host bits set are rejected before reaching the kernel.
    assert!(route::add(&h, &Route::blackhole(net("10.1.1.1/24"))).is_err());

    // An unfiltered list spans every table, including local (255).
    let all = route::list(&h, Family::V4, None).unwrap();
    assert!(all.iter().any(|r| r.table == 500));
    assert!(all.iter().any(|r| r.table == table::LOCAL && r.kind == RouteKind::Local));

    for r in [&pod, &onlink, &bh] {
        route::del(&h, r).unwrap();
    }
    route::del(&h, &v6).unwrap();
    assert!(route::list(&h, Family::V4, Some(500)).unwrap().is_empty());
    assert!(route::list(&h, Family::V6, Some(500)).unwrap().is_empty());
}

#[test]
fn route_model_serde_roundtrip() {
    let r = Route::via(net("10.233.0.0/18"), ip("172.16.1.2"), Some(3)).onlink().table(500).metric(10);
    let s = serde_json_like(&r);
    assert!(s.contains("10.233.0.0/18"));
}

// Debug-format check without pulling serde_json into this crate's dev-dependencies.
fn serde_json_like(r: &Route) -> String {
    format!("{r} {r:?}")
}
