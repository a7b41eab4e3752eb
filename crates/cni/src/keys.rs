//! Unknown configuration keys: a misspelled optional key (`blokSize`, `mut`) would otherwise be
//! ignored without a word. A conflist carries keys meant for other plugins and for the runtime,
//! so an unknown key is never an error: each one gets one warning in the log, naming the closest
//! known key when there is one.

use serde_json::{Map, Value};

/// Keys the CNI spec (1.0/1.1) and common runtimes put into every plugin's configuration. They are
/// known to every plugin, whatever its own fields.
pub const SPEC_KEYS: &[&str] = &[
    "cniVersion",
    "cniVersions",
    "name",
    "type",
    "ipam",
    "dns",
    "prevResult",
    "runtimeConfig",
    "capabilities",
    "args",
    "disableCheck",
    "disableGC",
    "cni.dev/valid-attachments",
    "cni.dev/attachments",
];

/// One unknown key and the closest known key, if any is close enough to be a likely misspelling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownKey {
    pub key: String,
    pub closest: Option<&'static str>,
}

impl std::fmt::Display for UnknownKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.closest {
            Some(c) => write!(f, "unknown key {:?} (did you mean {c:?}?)", self.key),
            None => write!(f, "unknown key {:?}", self.key),
        }
    }
}

/// The keys of `obj` that are neither in `known` nor in [`SPEC_KEYS`], in the object's order.
pub fn unknown_keys(obj: &Map<String, Value>, known: &[&'static str]) -> Vec<UnknownKey> {
    obj.keys()
        .filter(|k| !known.contains(&k.as_str()) && !SPEC_KEYS.contains(&k.as_str()))
        .map(|k| UnknownKey { key: k.clone(), closest: closest(k, known) })
        .collect()
}

/// Logs one warning per unknown key of `obj` (when it is an object); `what` names the object,
/// e.g. `"knit-routed config"` or `"ipam.pools[1]"`.
pub fn warn_unknown(what: &str, obj: &Value, known: &[&'static str]) {
    if let Value::Object(map) = obj {
        for u in unknown_keys(map, known) {
            tracing::warn!("{what}: {u}; it is ignored");
        }
    }
}

/// The known key closest to `key` by case-insensitive edit distance, if within a third of its
/// length (at least 1, at most 3 edits).
fn closest(key: &str, known: &[&'static str]) -> Option<&'static str> {
    let k = key.to_ascii_lowercase();
    let limit = (k.chars().count() / 3).clamp(1, 3);
    known
        .iter()
        .map(|c| (edit_distance(&k, &c.to_ascii_lowercase()), *c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Edit distance with adjacent transpositions counted as one edit (optimal string alignment),
/// over chars: `mut` is one edit from `mtu`.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let w = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * w];
    for i in 0..=a.len() {
        d[i * w] = i;
    }
    for (j, cell) in d.iter_mut().enumerate().take(w) {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[(i - 1) * w + j] + 1).min(d[i * w + j - 1] + 1).min(d[(i - 1) * w + j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[(i - 2) * w + j - 2] + 1);
            }
            d[i * w + j] = v;
        }
    }
    d[a.len() * w + b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const KNOWN: &[&str] = &["blockSize", "mtu", "nodename", "cidr"];

    fn unknown(v: Value) -> Vec<UnknownKey> {
        unknown_keys(v.as_object().unwrap(), KNOWN)
    }

    #[test]
    fn misspellings_name_the_closest_key() {
        let u = unknown(json!({"blokSize": 26, "mut": 1500, "cidr": "10.0.0.0/8"}));
        assert_eq!(
            u,
            vec![
                UnknownKey { key: "blokSize".into(), closest: Some("blockSize") },
                UnknownKey { key: "mut".into(), closest: Some("mtu") },
            ]
        );
        assert_eq!(u[0].to_string(), r#"unknown key "blokSize" (did you mean "blockSize"?)"#);
    }

    #[test]
    fn spec_keys_are_known_and_far_keys_get_no_suggestion() {
        let u = unknown(json!({"cniVersion": "1.1.0", "name": "n", "type": "t", "ipam": {}, "somethingElse": 1}));
        assert_eq!(u, vec![UnknownKey { key: "somethingElse".into(), closest: None }]);
    }

    #[test]
    fn edit_distance_basics() {
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("mtu", "mtu"), 0);
        assert_eq!(edit_distance("mut", "mtu"), 1);
    }
}
