//! Tests that cannot run their real parts (a program or package missing, no network for an
//! index, no privilege for a mount) must not pass silently in CI.
//!
//! Under `CI=true` (or `CI=1`; `.ci/run` exports it) such a test fails, naming what is missing;
//! elsewhere it prints `SKIP <test>: <why>` on stderr and returns, so a developer without, say,
//! etcd can still run the rest of the suite.
//!
//! ```no_run
//! # fn t() {
//! let Some(etcd) = knit_testkit::require::program("etcd", "etcd-server") else { return };
//! knit_testkit::require!(std::path::Path::new("/usr/lib/cni/ptp").exists(), "no /usr/lib/cni/ptp (containernetworking-plugins)");
//! # let _ = etcd; }
//! ```

use std::path::PathBuf;

/// Whether this is a CI run (`CI` is `true` or `1`), where nothing may be skipped.
pub fn in_ci() -> bool {
    matches!(std::env::var("CI").as_deref().map(str::trim), Ok("true") | Ok("1") | Ok("TRUE") | Ok("True"))
}

/// The running test's name (libtest names the test's thread after it).
fn test_name() -> String {
    std::thread::current().name().unwrap_or("test").to_string()
}

/// Reports that the calling test cannot run: under CI it panics with `why`; otherwise it prints
/// the reason and returns (the caller then returns, and the test passes as a skip).
#[track_caller]
pub fn skip(why: &str) {
    if in_ci() {
        panic!("{}: cannot run its real parts under CI=true: {why}", test_name());
    }
    eprintln!("SKIP {}: {why} (under CI=true this fails)", test_name());
}

/// `name` on PATH; when it is missing, [`skip`]s naming the Debian `package` and returns None.
#[track_caller]
pub fn program(name: &str, package: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path).map(|d| d.join(name)).find(|p| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    });
    if found.is_none() {
        skip(&format!("{name} is not installed (apt-get install {package})"));
    }
    found
}

/// `require!(condition, "why {}", x)`: unless `condition` holds, [`skip`] with the message and
/// return from the calling test (under CI the skip is a failure).
#[macro_export]
macro_rules! require {
    ($cond:expr, $($why:tt)+) => {
        if !$cond {
            $crate::require::skip(&format!($($why)+));
            return;
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn present_programs_are_found() {
        assert!(program("sh", "dash").is_some());
    }
}
