//! iptables-restore / iptables-save / nft inside a namespace, never in the root one.

use std::process::Command;

use knit_host::firewall;
use knit_host::testing::TestNet;
use knit_host::Family;

fn root_ruleset(prog: &str) -> String {
    // Read-only look at the host's rules, to prove they stay untouched.
    let out = Command::new(prog).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            // Packet counters change with host traffic; compare rules only.
            if l.starts_with(':') {
                l.split(' ').take(2).collect::<Vec<_>>().join(" ")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn iptables_restore_and_save_in_namespace() {
    let tn = TestNet::new("kh").unwrap();
    let before = root_ruleset("iptables-save");
    let rules = "*nat\n\
:KNIT-TEST - [0:0]\n\
-A KNIT-TEST -d 10.233.0.10/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.233.64.5:8080\n\
-A PREROUTING -j KNIT-TEST\n\
COMMIT\n";
    firewall::iptables_restore(Some(tn.host()), Family::V4, rules, true).unwrap();
    let saved = firewall::iptables_save(Some(tn.host()), Family::V4, Some("nat")).unwrap();
    assert!(saved.contains(":KNIT-TEST - [0:0]"), "{saved}");
    assert!(saved.contains("--to-destination 10.233.64.5:8080"), "{saved}");
    assert!(saved.contains("-A PREROUTING -j KNIT-TEST"), "{saved}");

    // Another namespace sees nothing of it.
    let pod = tn.pod("p").unwrap();
    let other = firewall::iptables_save(Some(&pod), Family::V4, Some("nat")).unwrap();
    assert!(!other.contains("KNIT-TEST"), "{other}");

    // Bad input: the error carries iptables-restore's stderr.
    let err =
        firewall::iptables_restore(Some(tn.host()), Family::V4, "*nat\n-A NOPE -j ACCEPT\nCOMMIT\n", true).unwrap_err();
    assert!(err.to_string().contains("iptables-restore"), "{err}");
    // Shell metacharacters are just text to iptables-restore.
    assert!(firewall::iptables_restore(Some(tn.host()), Family::V4, "$(touch /tmp/knit-pwned)\n", true).is_err());
    assert!(!std::path::Path::new("/tmp/knit-pwned").exists());

    // IPv6 as well.
    firewall::iptables_restore(Some(tn.host()), Family::V6, "*filter\n:KNIT6 - [0:0]\nCOMMIT\n", true).unwrap();
    let saved6 = firewall::iptables_save(Some(tn.host()), Family::V6, None).unwrap();
    assert!(saved6.contains(":KNIT6"), "{saved6}");

    assert_eq!(root_ruleset("iptables-save"), before, "root namespace rules changed");
}

#[test]
fn nft_in_namespace() {
    let tn = TestNet::new("kh").unwrap();
    let script = "table inet knittest {\n chain c {\n  type filter hook forward priority 0; policy accept;\n  ct state invalid counter drop\n }\n}\n";
    firewall::nft_apply(Some(tn.host()), script).unwrap();
    let listed = firewall::nft_list(Some(tn.host())).unwrap();
    assert!(listed.contains("table inet knittest"), "{listed}");
    let pod = tn.pod("p").unwrap();
    assert!(!firewall::nft_list(Some(&pod)).unwrap().contains("knittest"));
    assert!(firewall::nft_apply(Some(tn.host()), "table nonsense {").is_err());
}

#[test]
fn no_namespace_is_refused_under_the_guard() {
    let _tn = TestNet::new("kh").unwrap();
    if knit_host::guard::in_root_netns().unwrap() {
        let err = firewall::iptables_restore(None, Family::V4, "*nat\nCOMMIT\n", true).unwrap_err();
        assert!(matches!(err, knit_host::Error::RootNamespace { .. }), "{err}");
    }
}
