//! Routes: main and table 500, scope link, via, onlink, src, blackhole, default.

use std::net::IpAddr;

use knit_host::addr::{self, Address, FLAG_NODAD};
use knit_host::link::{self, VethOptions};
use knit_host::route::{self, proto, table, Route, RouteKind, RouteQuery};
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
    let routes = vec![
        Route::via(net("10.233.0.0/18"), ip("172.16.1.2"), Some(3)).onlink().table(500).metric(10),
        Route::blackhole(net("10.233.64.0/26")).protocol(proto::BIRD),
        Route::dev(net("fd00::5/128"), 7).src(ip("fd00::1")),
    ];
    let json = serde_json::to_string(&routes).unwrap();
    let back: Vec<Route> = serde_json::from_str(&json).unwrap();
    assert_eq!(back, routes);
    assert!(json.contains("\"blackhole\""), "{json}");
}

#[test]
fn kernel_lookup_matches_ip_route_get() {
    let tn = TestNet::new("kh").unwrap();
    let (h, idx) = setup(&tn);
    route::add(&h, &Route::via(net("192.168.7.0/24"), ip("10.0.0.254"), Some(idx)).table(500)).unwrap();
    let rule = knit_host::rule::Rule::new(Family::V4, 500).priority(1000).fwmark(0x1, None);
    knit_host::rule::add(&h, &rule).unwrap();

    // Without the mark: no route (no default in main).
    let err = route::get(&h, &RouteQuery::to(ip("192.168.7.9"))).unwrap_err();
    assert_eq!(err.errno(), Some(libc::ENETUNREACH), "{err}");
    // With the mark, the fwmark rule sends the lookup to table 500.
    let got = route::get(&h, &RouteQuery { mark: Some(0x1), ..RouteQuery::to(ip("192.168.7.9")) }).unwrap();
    assert_eq!(got.table, 500);
    assert_eq!(got.gateway, Some(ip("10.0.0.254")));
    assert_eq!(got.oif, Some(idx));
    assert_eq!(got.src, Some(ip("10.0.0.1")));
    // A connected destination.
    let got = route::get(&h, &RouteQuery::to(ip("10.0.0.7"))).unwrap();
    assert_eq!((got.table, got.gateway, got.oif), (table::MAIN, None, Some(idx)));
    // fib-match returns the configured route itself.
    let got = route::get(&h, &RouteQuery { fib_match: true, ..RouteQuery::to(ip("10.0.0.7")) }).unwrap();
    assert_eq!(got.dst, net("10.0.0.0/24"));
}
