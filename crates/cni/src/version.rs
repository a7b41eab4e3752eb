//! CNI spec versions: the supported set and comparison helpers.

use std::cmp::Ordering;

use crate::error::CniError;

/// Every version knit can read and write. We speak 1.0.0 and 1.1.0; the 0.3/0.4 family is
/// accepted (results are down-converted with `ips[].version`).
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The newest spec version implemented.
pub const CURRENT_VERSION: &str = "1.1.0";

/// The version a config without `cniVersion` is taken to have (as libcni's decoder does).
pub const IMPLICIT_VERSION: &str = "0.1.0";

/// A parsed `major.minor.patch` spec version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl Version {
    /// Parses `X.Y.Z` (or `X.Y`, patch 0). Invalid strings are code 1 errors.
    pub fn parse(s: &str) -> Result<Version, CniError> {
        let bad = || CniError::incompatible_version(format!("invalid version {s:?}"));
        let mut parts = s.split('.');
        let mut next = |required: bool| -> Result<u32, CniError> {
            match parts.next() {
                Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => p.parse().map_err(|_| bad()),
                None if !required => Ok(0),
                _ => Err(bad()),
            }
        };
        let major = next(true)?;
        let minor = next(true)?;
        let patch = next(false)?;
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Version { major, minor, patch })
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Compares two version strings.
pub fn compare(a: &str, b: &str) -> Result<Ordering, CniError> {
    Ok(Version::parse(a)?.cmp(&Version::parse(b)?))
}

/// `version >= min`; false when either does not parse.
pub fn at_least(version: &str, min: &str) -> bool {
    matches!(compare(version, min), Ok(Ordering::Greater | Ordering::Equal))
}

/// Whether `version` is in [`SUPPORTED_VERSIONS`].
pub fn is_supported(version: &str) -> bool {
    SUPPORTED_VERSIONS.contains(&version)
}

/// The highest of `candidates` that is also in `supported` (e.g. for a 1.1 `cniVersions` list).
pub fn highest_supported<'a>(candidates: impl IntoIterator<Item = &'a str>, supported: &[&str]) -> Option<String> {
    candidates
        .into_iter()
        .filter(|c| supported.contains(c))
        .filter_map(|c| Version::parse(c).ok().map(|v| (v, c)))
        .max_by_key(|(v, _)| *v)
        .map(|(_, c)| c.to_string())
}

/// The `details` of an incompatible-version error: the config's version and the supported set.
pub fn incompatible(config_version: &str, supported: &[&str]) -> CniError {
    CniError::incompatible_version("incompatible CNI versions")
        .with_details(format!("config is {config_version:?}, plugin supports [{}]", supported.join(" ")))
}
