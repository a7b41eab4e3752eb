//! The knit-coordinator CNI plugin binary.

fn main() {
    knit_cni::skel::run(
        &knit_coordinator::apply::Coordinator,
        "knit-coordinator: underlay and multi-NIC pod coordinator",
    );
}
