//! The runtimes' binaries, and what a test does without them: print why and skip, except under
//! `CI=true`, where a test that cannot run its real parts fails (a CI run must never pass by
//! skipping; `.ci/run` installs every package named here).

use std::path::PathBuf;

/// A binary a test needs and the Debian package that installs it.
#[derive(Debug, Clone, Copy)]
pub struct Tool {
    pub bin: &'static str,
    pub package: &'static str,
}

/// podman with its CNI backend, run by runc (Debian's crun refuses hybrid cgroup hierarchies).
pub const PODMAN: &[Tool] = &[
    Tool { bin: "podman", package: "podman" },
    Tool { bin: "conmon", package: "conmon" },
    Tool { bin: "runc", package: "runc" },
    Tool { bin: "unshare", package: "util-linux" },
    Tool { bin: "nsenter", package: "util-linux" },
];

/// containerd, its runc shim and `ctr`.
pub const CONTAINERD: &[Tool] = &[
    Tool { bin: "containerd", package: "containerd" },
    Tool { bin: "containerd-shim-runc-v2", package: "containerd" },
    Tool { bin: "ctr", package: "containerd" },
    Tool { bin: "runc", package: "runc" },
    Tool { bin: "unshare", package: "util-linux" },
    Tool { bin: "nsenter", package: "util-linux" },
];

/// Where `bin` is: on `PATH`, or in the sbin directories a non-login root shell may lack.
pub fn which(bin: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

/// The tools of `needs` that are missing, as "bin (Debian package pkg)".
pub fn missing(needs: &[Tool]) -> Vec<String> {
    needs
        .iter()
        .filter(|t| which(t.bin).is_none())
        .map(|t| format!("{} (Debian package {})", t.bin, t.package))
        .collect()
}

/// True under `CI=true`, where skipping is a failure (the workspace's one rule,
/// `knit_testkit::require`).
pub fn in_ci() -> bool {
    knit_testkit::require::in_ci()
}

/// Whether `test` can run: `problems` (missing tools, a dynamic busybox, ...) empty. Otherwise
/// it prints why and returns false, so the test skips; under `CI=true` it panics instead
/// (`knit_testkit::require::skip`).
#[track_caller]
pub fn can_run(test: &str, problems: &[String]) -> bool {
    if problems.is_empty() {
        return true;
    }
    knit_testkit::require::skip(&format!("{test}: {}", problems.join("; ")));
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tools_name_their_package() {
        let needs = [Tool { bin: "sh", package: "dash" }, Tool { bin: "knit-no-such-tool", package: "knit-pkg" }];
        assert_eq!(missing(&needs), vec!["knit-no-such-tool (Debian package knit-pkg)".to_string()]);
        assert!(can_run("nothing missing", &[]));
    }
}
