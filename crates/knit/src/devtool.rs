//! `knit lab …` and `knit bench …`: the lab and the benchmarks are developer tools, kept out of
//! the binary every node runs. They live in `knit-lab`, which this module executes in place of
//! `knit` (same arguments, stdin/stdout/stderr, signals and exit status).

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

/// The developer binary's name.
pub const DEVTOOL: &str = "knit-lab";

/// Exit status when `knit-lab` can't be found or run (a shell's "command not found").
const NOT_FOUND: u8 = 127;

/// `knit-lab` next to this executable (where the build puts it), else on PATH.
fn find() -> (Option<PathBuf>, Vec<PathBuf>) {
    let mut searched = Vec::new();
    if let Some(dir) = std::env::current_exe().ok().and_then(|e| e.parent().map(PathBuf::from)) {
        let p = dir.join(DEVTOOL);
        if p.is_file() {
            return (Some(p), searched);
        }
        searched.push(dir);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(DEVTOOL);
            if p.is_file() {
                return (Some(p), searched);
            }
            searched.push(dir);
        }
    }
    (None, searched)
}

/// Replaces this process with `knit-lab <sub> <args>`; returns only when that fails.
pub fn run(sub: &str, args: &[OsString]) -> ExitCode {
    let (found, searched) = find();
    let Some(path) = found else {
        let dirs: Vec<String> = searched.iter().map(|d| d.display().to_string()).collect();
        eprintln!(
            "knit {sub}: `knit {sub}` runs the developer binary {DEVTOOL}, which is not installed (not in {}). \
             It is not part of a node install; build it with `cargo build --workspace --bins` or \
             scripts/build-release.sh, and keep it next to knit.",
            dirs.join(":")
        );
        return ExitCode::from(NOT_FOUND);
    };
    let err = Command::new(&path).arg(sub).args(args).exec();
    eprintln!("knit {sub}: cannot run {}: {err}", path.display());
    ExitCode::from(NOT_FOUND)
}
