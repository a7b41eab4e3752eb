//! nf_tables over netlink, in test namespaces: what knit writes is what `nft` lists and what
//! knit reads back, a rewrite is atomic, a delete is idempotent, and the rules act on packets.

use knit_host::nft::{Chain, Expr, Hook, Nft, NftRule, Table, TableFamily, CT_NEW};
use knit_host::testing::TestNet;
use knit_host::{addr, link, IpNet, Netns};

fn steering(name: &str) -> Table {
    Table {
        family: TableFamily::Ip,
        name: name.into(),
        chains: vec![
            Chain {
                name: "prerouting".into(),
                kind: "filter".into(),
                hook: Some(Hook::Prerouting),
                priority: -150,
                rules: vec![
                    NftRule { exprs: vec![Expr::IifName("veth0".into()), Expr::CtState(CT_NEW), Expr::SetMark(1)] },
                    NftRule { exprs: vec![Expr::Mark(1), Expr::SaveMark] },
                ],
            },
            Chain {
                name: "output".into(),
                kind: "route".into(),
                hook: Some(Hook::Output),
                priority: -150,
                rules: vec![NftRule { exprs: vec![Expr::RestoreMark] }],
            },
        ],
    }
}

fn nft_list(tn: &TestNet, ns: &Netns) -> String {
    let out = tn.exec(ns, &["nft", "list", "ruleset"]).unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn write_list_read_rewrite_delete() {
    let tn = TestNet::new("knft").unwrap();
    let ns = tn.host();
    let mut nft = Nft::in_netns(ns).unwrap();
    let t = steering("knit-test");
    nft.apply(&t).unwrap();

    let listed = nft_list(&tn, ns);
    assert!(listed.contains("type filter hook prerouting priority mangle; policy accept;"), "{listed}");
    assert!(listed.contains("type route hook output priority mangle; policy accept;"), "{listed}");
    assert!(listed.contains("iifname \"veth0\" ct state new meta mark set 0x00000001"), "{listed}");
    assert!(listed.contains("meta mark 0x00000001 ct mark set meta mark"), "{listed}");
    assert!(listed.contains("meta mark set ct mark"), "{listed}");
    assert_eq!(nft.read_table(TableFamily::Ip, "knit-test").unwrap().as_ref(), Some(&t));
    assert_eq!(nft.table_names(TableFamily::Ip).unwrap(), vec!["knit-test".to_string()]);

    // A second write leaves one copy of every rule.
    nft.apply(&t).unwrap();
    assert_eq!(nft_list(&tn, ns), listed);

    // A batch the kernel refuses changes nothing and names the table.
    let mut bad = t.clone();
    bad.chains[1].rules.clear();
    bad.chains.push(Chain {
        name: "bogus".into(),
        kind: "no-such-type".into(),
        hook: Some(Hook::Input),
        priority: 0,
        rules: Vec::new(),
    });
    let err = nft.apply(&bad).unwrap_err();
    assert!(err.to_string().contains("knit-test"), "{err}");
    assert_eq!(nft_list(&tn, ns), listed);

    // Rules nft wrote and knit does not model are reported by name.
    tn.exec_ok(ns, &["nft", "add rule ip knit-test output counter"]).unwrap();
    let read = nft.read_table(TableFamily::Ip, "knit-test").unwrap().unwrap();
    assert_eq!(read.chains[1].rules.last().unwrap().exprs, vec![Expr::Other("counter".into())]);

    nft.delete_table(TableFamily::Ip, "knit-test").unwrap();
    nft.delete_table(TableFamily::Ip, "knit-test").unwrap();
    assert_eq!(nft.read_table(TableFamily::Ip, "knit-test").unwrap(), None);
    assert!(!nft_list(&tn, ns).contains("knit-test"));

    // Other namespaces never saw it.
    let other = tn.pod("o").unwrap();
    assert!(!nft_list(&tn, &other).contains("knit-test"));
}

#[test]
fn rules_act_on_packets() {
    let tn = TestNet::new("knftp").unwrap();
    let a = tn.pod("a").unwrap();
    let b = tn.pod("b").unwrap();
    tn.link(&a, "eth0", &b, "eth0").unwrap();
    for (ns, ip) in [(&a, "192.0.2.1/24"), (&b, "192.0.2.2/24")] {
        let h = tn.handle_in(ns).unwrap();
        let index = link::index_of(&h, "eth0").unwrap();
        addr::add(&h, &addr::Address::new(index, ip.parse::<IpNet>().unwrap())).unwrap();
    }
    let ping = || tn.exec(&a, &["ping", "-c1", "-W1", "192.0.2.2"]).unwrap().status.success();
    assert!(ping());

    let mut nft = Nft::in_netns(&b).unwrap();
    let drop = Table {
        family: TableFamily::Ip,
        name: "knit-drop".into(),
        chains: vec![Chain {
            name: "input".into(),
            kind: "filter".into(),
            hook: Some(Hook::Input),
            priority: 0,
            rules: vec![NftRule { exprs: vec![Expr::IifName("eth0".into()), Expr::Drop] }],
        }],
    };
    nft.apply(&drop).unwrap();
    assert!(!ping(), "the drop rule did not drop");
    nft.delete_table(TableFamily::Ip, "knit-drop").unwrap();
    assert!(ping());
}
