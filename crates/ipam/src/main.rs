//! The knit-ipam CNI IPAM plugin: the CNI skeleton around [`knit_ipam::plugin::KnitIpam`].

fn main() {
    knit_cni::skel::run(&knit_ipam::plugin::KnitIpam, "knit-ipam: per-node block IPAM");
}
