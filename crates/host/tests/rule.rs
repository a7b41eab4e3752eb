//! Policy-routing rules.

use knit_host::route::table;
use knit_host::rule::{self, Rule, RuleAction};
use knit_host::testing::TestNet;
use knit_host::{Family, IpNet};

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

#[test]
fn add_list_delete_rules() {
    let tn = TestNet::new("kh").unwrap();
    let h = tn.handle().unwrap();

    let defaults = rule::list(&h, Family::V4).unwrap();
    let prios: Vec<_> = defaults.iter().map(|r| r.priority).collect();
    assert_eq!(prios, vec![None, Some(32766), Some(32767)], "{defaults:?}");
    assert_eq!(defaults[1].table, table::MAIN);

    let rules = vec![
        Rule::new(Family::V4, 500).priority(1000),
        Rule::from_net(net("10.233.64.5/32"), 101).priority(1001),
        Rule::new(Family::V4, 100).fwmark(0x1, None).priority(1002),
        Rule::new(Family::V4, 100).fwmark(0x10, Some(0xf0)).priority(1003),
        Rule::new(Family::V4, 600).to(net("10.233.0.0/18")).iif("veth0").priority(1004),
        Rule::new(Family::V4, 700).oif("eth0").priority(1005),
        Rule::from_net(net("fd00::5/128"), 101).priority(1001),
    ];
    for r in &rules {
        rule::add(&h, r).unwrap();
    }
    // Adding the same rule again is EEXIST (idempotent callers can ignore it).
    let err = rule::add(&h, &rules[0]).unwrap_err();
    assert!(err.is_exists(), "{err}");

    let v4 = rule::list(&h, Family::V4).unwrap();
    for r in rules.iter().filter(|r| r.family == Family::V4) {
        assert!(v4.contains(r), "missing {r}: {v4:?}");
    }
    let v6 = rule::list(&h, Family::V6).unwrap();
    assert!(v6.contains(&rules[6]), "{v6:?}");

    let out = tn.exec_ok(tn.host(), &["ip", "rule", "show"]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("1000:\tfrom all lookup 500"), "{text}");
    assert!(text.contains("1001:\tfrom 10.233.64.5 lookup 101"), "{text}");
    assert!(text.contains("fwmark 0x10/0xf0 lookup 100"), "{text}");
    // veth0 does not exist here, so ip shows it "[detached]".
    assert!(text.contains("to 10.233.0.0/18 iif veth0"), "{text}");

    // Other actions.
    let bh = Rule { action: RuleAction::Blackhole, table: 0, ..Rule::new(Family::V4, 0).priority(2000) };
    rule::add(&h, &bh).unwrap();
    assert!(rule::list(&h, Family::V4).unwrap().contains(&bh));

    for r in rules.iter().chain([&bh]) {
        rule::del(&h, r).unwrap();
    }
    let err = rule::del(&h, &rules[0]).unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert_eq!(rule::list(&h, Family::V4).unwrap(), defaults);
}
