//! The local store's text format: tab-separated lines, cheap to parse and to append.
//!
//! Fields are escaped (`%` → `%25`, tab → `%09`, newline → `%0A`, carriage return → `%0D`);
//! an empty field means "none".
//!
//! Snapshot (`<net>_<len>.blk`, replaced by rename only):
//! ```text
//! B <version> <cidr> <owner>
//! S <ip> <containerID> <ifname> <node> <namespace> <pod> <flags>     one per allocation
//! E
//! ```
//! Journal (`<net>_<len>.log`, appended), one entry per block change, written with one `write`:
//! ```text
//! O <owner>
//! S <ip> ...            set (add or replace) an allocation
//! D <ip>                delete an allocation
//! C <version>           commit: the entry counts only with this line
//! ```
//! or the tombstone `G <version>` (block deleted). `flags` is `f` for a fixed IP.

use std::borrow::Cow;
use std::net::IpAddr;

use ipnet::IpNet;

use super::{AllocRecord, BlockRecord, Version};

fn escape_into(out: &mut Vec<u8>, s: &str) {
    for &b in s.as_bytes() {
        match b {
            b'%' => out.extend_from_slice(b"%25"),
            b'\t' => out.extend_from_slice(b"%09"),
            b'\n' => out.extend_from_slice(b"%0A"),
            b'\r' => out.extend_from_slice(b"%0D"),
            _ => out.push(b),
        }
    }
}

fn unescape(s: &str) -> Cow<'_, str> {
    if !s.as_bytes().contains(&b'%') {
        return Cow::Borrowed(s);
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(v) = hex {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

fn opt(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| unescape(s).into_owned())
}

fn push_alloc(out: &mut Vec<u8>, a: &AllocRecord) {
    out.extend_from_slice(b"S\t");
    out.extend_from_slice(a.ip.to_string().as_bytes());
    for f in [a.cid.as_deref(), Some(a.ifname.as_str()), Some(a.node.as_str()), a.ns.as_deref(), a.pod.as_deref()] {
        out.push(b'\t');
        escape_into(out, f.unwrap_or(""));
    }
    out.push(b'\t');
    if a.fixed {
        out.push(b'f');
    }
    out.push(b'\n');
}

/// Tab-separated fields (a plain byte scan: fields are short).
struct Fields<'a> {
    rest: Option<&'a str>,
}

impl<'a> Iterator for Fields<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let s = self.rest?;
        match s.as_bytes().iter().position(|&b| b == b'\t') {
            Some(i) => {
                // A tab is ASCII, so both slices are on char boundaries.
                self.rest = s.get(i + 1..);
                s.get(..i)
            }
            None => {
                self.rest = None;
                Some(s)
            }
        }
    }
}

fn fields(s: &str) -> Fields<'_> {
    Fields { rest: Some(s) }
}

/// Parse the fields after `S\t`.
fn parse_alloc(rest: &str) -> Option<AllocRecord> {
    let mut it = fields(rest);
    let ip: IpAddr = it.next()?.parse().ok()?;
    let cid = opt(it.next()?);
    let ifname = unescape(it.next()?).into_owned();
    let node = unescape(it.next()?).into_owned();
    let ns = opt(it.next()?);
    let pod = opt(it.next()?);
    let fixed = it.next()? == "f";
    Some(AllocRecord { ip, cid, ifname, node, ns, pod, fixed })
}

/// A whole snapshot.
pub(crate) fn encode_snapshot(version: Version, block: &BlockRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + block.allocs.len() * 128);
    out.extend_from_slice(format!("B\t{version}\t{}\t", block.cidr).as_bytes());
    escape_into(&mut out, block.owner.as_deref().unwrap_or(""));
    out.push(b'\n');
    for a in &block.allocs {
        push_alloc(&mut out, a);
    }
    out.extend_from_slice(b"E\n");
    out
}

/// Parse a snapshot; `Err` describes what is wrong.
pub(crate) fn decode_snapshot(data: &[u8]) -> Result<(Version, BlockRecord), String> {
    let text = std::str::from_utf8(data).map_err(|e| e.to_string())?;
    let mut lines = text.split('\n');
    let head = lines.next().unwrap_or("");
    let mut h = fields(head);
    if h.next() != Some("B") {
        return Err("no B header line".into());
    }
    let version: Version = h.next().and_then(|v| v.parse().ok()).ok_or("bad version")?;
    let cidr: IpNet = h.next().and_then(|v| v.parse().ok()).ok_or("bad cidr")?;
    let owner = opt(h.next().ok_or("no owner field")?);
    let mut allocs = Vec::new();
    let mut ended = false;
    for (n, line) in lines.enumerate() {
        if let Some(rest) = line.strip_prefix("S\t") {
            allocs.push(parse_alloc(rest).ok_or_else(|| format!("bad allocation on line {}", n + 2))?);
        } else if line == "E" {
            ended = true;
            break;
        } else {
            return Err(format!("unexpected line {}", n + 2));
        }
    }
    if !ended {
        return Err("no E end line".into());
    }
    allocs.sort_by_key(|a| a.ip);
    Ok((version, BlockRecord { cidr, owner, allocs }))
}

/// One journal entry: set `set`, delete `del`, owner becomes `owner`, version `version`.
pub(crate) fn encode_entry(version: Version, owner: Option<&str>, set: &[&AllocRecord], del: &[IpAddr]) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + set.len() * 128 + del.len() * 24);
    out.extend_from_slice(b"O\t");
    escape_into(&mut out, owner.unwrap_or(""));
    out.push(b'\n');
    for a in set {
        push_alloc(&mut out, a);
    }
    for ip in del {
        out.extend_from_slice(format!("D\t{ip}\n").as_bytes());
    }
    out.extend_from_slice(format!("C\t{version}\n").as_bytes());
    out
}

/// The tombstone entry.
pub(crate) fn encode_tombstone(version: Version) -> Vec<u8> {
    format!("G\t{version}\n").into_bytes()
}

/// What replaying a journal did.
#[derive(Debug, Default)]
pub(crate) struct Replay {
    /// Bytes of complete entries; anything after is a torn tail.
    pub good_len: usize,
    /// Complete entries seen (applied or not).
    pub entries: usize,
    /// The journal ends deleted (tombstone last among applied entries).
    pub gone: bool,
    /// At least one entry was applied.
    pub applied: bool,
}

enum Op<'a> {
    /// The owner field as written (escaped): every entry repeats it, so it becomes a `String`
    /// only when it differs from the current owner.
    Owner(&'a str),
    Set(AllocRecord),
    Del(IpAddr),
}

/// Apply the journal's complete entries with a version above `*version` to `record`
/// (whose allocations are sorted by address, and stay so).
pub(crate) fn replay(data: &[u8], version: &mut Version, record: &mut BlockRecord) -> Replay {
    let mut r = Replay::default();
    let mut pending: Vec<Op> = Vec::new();
    let mut pos = 0usize;
    while pos < data.len() {
        let Some(nl) = data[pos..].iter().position(|&b| b == b'\n') else {
            break;
        };
        let Ok(line) = std::str::from_utf8(&data[pos..pos + nl]) else {
            break;
        };
        let next = pos + nl + 1;
        let (tag, rest) = line.split_once('\t').unwrap_or((line, ""));
        match tag {
            "O" => pending.push(Op::Owner(rest)),
            "S" => match parse_alloc(rest) {
                Some(a) => pending.push(Op::Set(a)),
                None => break,
            },
            "D" => match rest.parse::<IpAddr>() {
                Ok(ip) => pending.push(Op::Del(ip)),
                Err(_) => break,
            },
            "C" | "G" => {
                let Ok(v) = rest.parse::<Version>() else {
                    break;
                };
                r.entries += 1;
                r.good_len = next;
                if v > *version {
                    *version = v;
                    r.applied = true;
                    r.gone = tag == "G";
                    if !r.gone {
                        for op in pending.drain(..) {
                            let allocs = &mut record.allocs;
                            match op {
                                Op::Owner(raw) => {
                                    let o = unescape(raw);
                                    let new = (!o.is_empty()).then_some(o);
                                    if record.owner.as_deref() != new.as_deref() {
                                        record.owner = new.map(Cow::into_owned);
                                    }
                                }
                                Op::Set(a) => match allocs.binary_search_by(|x| x.ip.cmp(&a.ip)) {
                                    Ok(i) => allocs[i] = a,
                                    Err(i) => allocs.insert(i, a),
                                },
                                Op::Del(ip) => {
                                    if let Ok(i) = allocs.binary_search_by(|x| x.ip.cmp(&ip)) {
                                        allocs.remove(i);
                                    }
                                }
                            }
                        }
                    }
                }
                pending.clear();
            }
            _ => break,
        }
        pos = next;
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(ip: &str, cid: &str) -> AllocRecord {
        AllocRecord {
            ip: ip.parse().unwrap(),
            cid: Some(cid.into()),
            ifname: "eth0".into(),
            node: "n\t1%".into(),
            ns: Some("default".into()),
            pod: Some("web-0".into()),
            fixed: true,
        }
    }

    #[test]
    fn snapshot_round_trip() {
        let mut r = BlockRecord {
            cidr: "10.0.0.0/26".parse().unwrap(),
            owner: Some("node\n1".into()),
            allocs: vec![a("10.0.0.1", "c1")],
        };
        r.allocs.push(AllocRecord { cid: None, ns: None, pod: None, fixed: false, ..a("10.0.0.2", "x") });
        let enc = encode_snapshot(7, &r);
        assert_eq!(decode_snapshot(&enc).unwrap(), (7, r.clone()));
        assert!(decode_snapshot(&enc[..enc.len() - 2]).is_err());
        assert_eq!(unescape("a%25b%09c%0A"), "a%b\tc\n");
        assert_eq!(unescape("100%"), "100%");
    }

    #[test]
    fn replay_applies_complete_entries_only() {
        let x = a("10.0.0.1", "c1");
        let y = a("10.0.0.2", "c2");
        let mut log = encode_entry(2, Some("n1"), &[&x], &[]);
        log.extend(encode_entry(3, Some("n1"), &[&y], &["10.0.0.1".parse().unwrap()]));
        let good = log.len();
        let torn = encode_entry(4, Some("n1"), &[&x], &[]);
        log.extend_from_slice(&torn[..torn.len() - 3]);
        let mut v = 1;
        let mut rec = BlockRecord { cidr: "10.0.0.0/26".parse().unwrap(), owner: None, allocs: vec![] };
        let r = replay(&log, &mut v, &mut rec);
        assert_eq!((v, r.good_len, r.entries, r.gone), (3, good, 2, false));
        assert_eq!(rec.allocs, vec![y.clone()]);
        assert_eq!(rec.owner.as_deref(), Some("n1"));
        // Entries at or below the snapshot version are skipped.
        let mut v = 3;
        let mut rec2 = BlockRecord { cidr: rec.cidr, owner: None, allocs: vec![] };
        let r = replay(&log, &mut v, &mut rec2);
        assert!(!r.applied);
        assert!(rec2.allocs.is_empty());
        // Tombstone.
        let mut log2 = log[..good].to_vec();
        log2.extend(encode_tombstone(4));
        let mut v = 0;
        let r = replay(&log2, &mut v, &mut rec2);
        assert!(r.gone);
    }
}
