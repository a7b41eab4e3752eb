//! The knit-routed CNI plugin binary.

fn main() {
    knit_cni::skel::run(&knit_routed::apply::Routed, "knit-routed: Calico-style routed veth pods");
}
