//! `cargo run --release -p knit-bench --example coordinator-scale -- [N]`: knit-coordinator's
//! ADD, CHECK and DEL against the number of neighbour entries on the node (issue 16); see
//! `knit_bench::coordinator_scale`. The plugins are taken from the profile directory
//! (`target/release`, built by `scripts/build-release.sh`), then Debian's.

use std::path::PathBuf;

use knit_bench::{coordinator_scale, Options, PluginDirs};

fn main() {
    let n = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(100);
    // target/<profile>/examples/<this> → target/<profile>
    let profile_dir = knit_bench::exe_dir().and_then(|d| d.parent().map(PathBuf::from));
    let dirs = PluginDirs::new(profile_dir.into_iter().chain([PathBuf::from("/usr/lib/cni")]));
    let opts = Options { n: Some(n), plugin_dirs: Some(dirs.clone()), progress: true };
    let _signals = knit_bench::signals::Guard::install();
    match coordinator_scale::run(n, &dirs, &opts) {
        Ok(r) => println!("{}", r.to_table()),
        Err(e) => {
            eprintln!("coordinator-scale: {e}");
            std::process::exit(1);
        }
    }
}
