//! Sysctls are per namespace.

use knit_host::link::{self, VethOptions};
use knit_host::sysctl;
use knit_host::testing::TestNet;

#[test]
fn per_namespace_isolation() {
    let tn = TestNet::new("kh").unwrap();
    let pod = tn.pod("p").unwrap();
    assert_eq!(sysctl::get_in(tn.host(), "net.ipv4.ip_forward").unwrap(), "0");
    sysctl::set_in(tn.host(), "net.ipv4.ip_forward", "1").unwrap();
    assert_eq!(sysctl::get_in(tn.host(), "net/ipv4/ip_forward").unwrap(), "1");
    assert_eq!(sysctl::get_in(&pod, "net.ipv4.ip_forward").unwrap(), "0");

    // Per-interface keys, including a name with a dot.
    let h = tn.handle().unwrap();
    link::create_veth(&h, "cali.1", "calip", None, &VethOptions::default()).unwrap();
    sysctl::set_in(tn.host(), "net.ipv4.conf.cali.1.proxy_arp", "1").unwrap();
    assert_eq!(sysctl::get_in(tn.host(), "net/ipv4/conf/cali.1/proxy_arp").unwrap(), "1");
    sysctl::set_in(tn.host(), "net/ipv4/conf/cali.1/rp_filter", "2").unwrap();
    assert_eq!(sysctl::get_in(tn.host(), "net.ipv4.conf.cali/1.rp_filter").unwrap(), "2");

    // Missing interface: ENOENT.
    let err = sysctl::set_in(&pod, "net.ipv4.conf.cali.1.proxy_arp", "1").unwrap_err();
    assert!(err.is_not_found(), "{err}");

    // set/get act on the calling thread's namespace.
    let v = tn.run(|| sysctl::get("net.ipv4.ip_forward").unwrap()).unwrap();
    assert_eq!(v, "1");
}
