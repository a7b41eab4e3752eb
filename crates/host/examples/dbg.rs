use knit_host::link::{self, VethOptions};
use knit_host::testing::TestNet;
fn main() {
    let tn = TestNet::new("kd").unwrap();
    let pod = tn.pod("pod").unwrap();
    let h = tn.handle().unwrap();
    let idx = link::create_veth(&h, "cali0123456789a", "eth0", Some(&pod), &VethOptions { up: std::env::var("UP").is_ok(), ..Default::default() }).unwrap();
    println!("idx {idx}");
    println!("{:?}", link::get_by_name(&h, "cali0123456789a"));
    println!("{:?}", link::get_by_index(&h, idx));
    println!("{:?}", link::list(&h));
    let o = tn.exec(tn.host(), &["ip", "-d", "link"]).unwrap();
    println!("{}", String::from_utf8_lossy(&o.stdout));
    let o = tn.exec(&pod, &["ip", "-d", "link"]).unwrap();
    println!("{}", String::from_utf8_lossy(&o.stdout));
}
