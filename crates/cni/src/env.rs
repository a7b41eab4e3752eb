//! The CNI environment: variable names and the `CNI_ARGS` format (`K=V;K2=V2`).

use std::path::PathBuf;

use crate::error::CniError;

pub const CNI_COMMAND: &str = "CNI_COMMAND";
pub const CNI_CONTAINERID: &str = "CNI_CONTAINERID";
pub const CNI_NETNS: &str = "CNI_NETNS";
pub const CNI_IFNAME: &str = "CNI_IFNAME";
pub const CNI_ARGS: &str = "CNI_ARGS";
pub const CNI_PATH: &str = "CNI_PATH";

/// Every CNI_* variable; a child plugin's environment is cleared of these before the ones it
/// is given are set.
pub const ALL_VARS: &[&str] = &[CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME, CNI_ARGS, CNI_PATH];

/// Parses `CNI_ARGS`: `;`-separated `KEY=VALUE` pairs. Empty segments are skipped; a segment
/// without `=` or with an empty key is a code 4 error.
pub fn parse_cni_args(s: &str) -> Result<Vec<(String, String)>, CniError> {
    s.split(';')
        .filter(|seg| !seg.is_empty())
        .map(|seg| match seg.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(CniError::invalid_env(format!("invalid CNI_ARGS pair {seg:?}"))),
        })
        .collect()
}

/// Formats pairs back into `CNI_ARGS` form.
pub fn format_cni_args(args: &[(String, String)]) -> String {
    args.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(";")
}

/// Splits a `:`-separated path list (`CNI_PATH`), dropping empty entries.
pub fn split_path(s: &str) -> Vec<PathBuf> {
    s.split(':').filter(|p| !p.is_empty()).map(PathBuf::from).collect()
}

/// Joins directories into a `:`-separated `CNI_PATH`.
pub fn join_path(dirs: &[PathBuf]) -> String {
    dirs.iter().map(|d| d.to_string_lossy().into_owned()).collect::<Vec<_>>().join(":")
}
