//! Address arithmetic: addresses as `u128` numbers within one family.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// Address family: knit-host's (variants, `of`, `bits`, `name`).
pub use knit_host::Family;

/// The address as a number.
pub fn to_u128(ip: &IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(*a) as u128,
        IpAddr::V6(a) => u128::from(*a),
    }
}

/// The number as an address of `family` (v4 keeps the low 32 bits).
pub fn from_u128(family: Family, n: u128) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::from(n as u32)),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(n)),
    }
}

/// A prefix of `family` from a number and a length (the length must be valid).
pub fn net_from(family: Family, n: u128, prefix: u8) -> IpNet {
    match family {
        Family::V4 => match Ipv4Net::new(Ipv4Addr::from(n as u32), prefix) {
            Ok(v) => IpNet::V4(v),
            Err(_) => IpNet::V4(Ipv4Net::default()),
        },
        Family::V6 => match Ipv6Net::new(Ipv6Addr::from(n), prefix) {
            Ok(v) => IpNet::V6(v),
            Err(_) => IpNet::V6(Ipv6Net::default()),
        },
    }
}

/// `1 << bits` saturated at `u128::MAX` (for `bits == 128`).
pub fn pow2(bits: u32) -> u128 {
    if bits >= 128 {
        u128::MAX
    } else {
        1u128 << bits
    }
}

/// First and last address of a prefix, as numbers.
pub fn net_bounds(net: &IpNet) -> (u128, u128) {
    let first = to_u128(&net.network());
    let last = to_u128(&net.broadcast());
    (first, last)
}

/// An inclusive range of addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub lo: u128,
    pub hi: u128,
}

/// Sorted, merged, disjoint inclusive ranges with fast membership tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpanSet {
    spans: Vec<Span>,
}

impl SpanSet {
    pub fn from_spans(mut spans: Vec<Span>) -> Self {
        spans.sort_by_key(|s| s.lo);
        let mut out: Vec<Span> = Vec::with_capacity(spans.len());
        for s in spans {
            match out.last_mut() {
                Some(last) if s.lo <= last.hi.saturating_add(1) => {
                    if s.hi > last.hi {
                        last.hi = s.hi;
                    }
                }
                _ => out.push(s),
            }
        }
        SpanSet { spans: out }
    }

    /// The span containing `n`, if any.
    pub fn find(&self, n: u128) -> Option<Span> {
        let i = self.spans.partition_point(|s| s.hi < n);
        match self.spans.get(i) {
            Some(s) if s.lo <= n => Some(*s),
            _ => None,
        }
    }

    pub fn contains(&self, n: u128) -> bool {
        self.find(n).is_some()
    }

    /// How many members lie in `[lo, hi]` (saturating).
    pub fn count_in(&self, lo: u128, hi: u128) -> u128 {
        if lo > hi {
            return 0;
        }
        let mut total: u128 = 0;
        let start = self.spans.partition_point(|s| s.hi < lo);
        for s in &self.spans[start..] {
            if s.lo > hi {
                break;
            }
            let a = s.lo.max(lo);
            let b = s.hi.min(hi);
            total = total.saturating_add(b - a).saturating_add(1);
        }
        total
    }

    pub fn spans(&self) -> &[Span] {
        &self.spans
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spanset_merges_and_counts() {
        let s = SpanSet::from_spans(vec![
            Span { lo: 10, hi: 12 },
            Span { lo: 1, hi: 3 },
            Span { lo: 4, hi: 4 },
            Span { lo: 11, hi: 20 },
        ]);
        assert_eq!(s.spans(), &[Span { lo: 1, hi: 4 }, Span { lo: 10, hi: 20 }]);
        assert!(s.contains(4));
        assert!(!s.contains(5));
        assert_eq!(s.find(15), Some(Span { lo: 10, hi: 20 }));
        assert_eq!(s.count_in(0, 100), 15);
        assert_eq!(s.count_in(3, 10), 3);
        assert_eq!(s.count_in(5, 9), 0);
    }

    #[test]
    fn conversions() {
        let ip: IpAddr = "10.0.0.5".parse().unwrap();
        assert_eq!(from_u128(Family::V4, to_u128(&ip)), ip);
        let ip6: IpAddr = "fd00::5".parse().unwrap();
        assert_eq!(from_u128(Family::V6, to_u128(&ip6)), ip6);
        assert_eq!(pow2(128), u128::MAX);
        let n = net_from(Family::V4, to_u128(&ip), 26);
        assert_eq!(n.to_string(), "10.0.0.5/26");
    }
}
