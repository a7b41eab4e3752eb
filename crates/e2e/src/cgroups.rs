//! Cgroup directories the runtimes make and do not always remove: podman's cgroupfs manager
//! keeps the `--cgroup-parent` and conmon's cgroup in it; runc's `/<id>` of a task that was never
//! deleted.

use std::path::{Path, PathBuf};

/// The directories under `d`.
pub fn subdirs(d: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(d)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir()).collect())
        .unwrap_or_default()
}

/// `path` (absolute within a hierarchy, as `--cgroup-parent` takes it) in every mounted cgroup
/// hierarchy where it exists.
pub fn dirs(path: &str) -> Vec<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found = Vec::new();
    for line in mountinfo.lines() {
        // id parent major:minor root mount-point options ... - fstype source super-options
        let Some((left, right)) = line.split_once(" - ") else { continue };
        let fstype = right.split_whitespace().next().unwrap_or_default();
        if fstype != "cgroup" && fstype != "cgroup2" {
            continue;
        }
        let Some(mount_point) = left.split_whitespace().nth(4) else { continue };
        let d = Path::new(mount_point).join(path.trim_start_matches('/'));
        if d.is_dir() {
            found.push(d);
        }
    }
    found
}

/// Removes a cgroup directory tree, deepest first (a cgroup goes with rmdir, its files with it);
/// one that still holds a process stays.
pub fn remove(d: &Path) {
    for sub in subdirs(d) {
        remove(&sub);
    }
    let _ = std::fs::remove_dir(d);
}
