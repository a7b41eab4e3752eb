//! The pod's reply-steering rules (underlay first NIC): what the nf_tables table holds.

use knit_host::{nft, Family};

use super::mode::POD_VETH;
use crate::config::REPLY_MARK;

/// The nf_tables table (one per family) that holds the pod's reply-steering rules.
pub const STEERING_TABLE: &str = "knit-coordinator";

/// The pod's reply-steering rules: connections that came in on veth0 (NodePort and
/// node-local traffic) get [`REPLY_MARK`] in conntrack, and their replies get it back as the
/// packet mark, which the pod's fwmark rule routes out of veth0 (without it they would leave
/// on eth0 un-NATed). The iptables equivalent, which `knit trace` shows:
///
/// ```text
/// -A PREROUTING -i veth0 -m conntrack --ctstate NEW -j MARK --set-xmark 0x1/0xffffffff
/// -A PREROUTING -m mark --mark 0x1 -j CONNMARK --save-mark
/// -A OUTPUT -j CONNMARK --restore-mark
/// ```
///
/// Written over nf_tables netlink in one transaction: an `iptables-restore` process cost
/// 1.7 ms of every underlay ADD, the netlink batch about 0.1 ms.
pub fn steering_table(family: Family) -> nft::Table {
    let mangle = -150; // iptables' mangle priority (NF_IP_PRI_MANGLE)
    nft::Table {
        family: family.into(),
        name: STEERING_TABLE.to_string(),
        chains: vec![
            nft::Chain {
                name: "prerouting".into(),
                kind: "filter".into(),
                hook: Some(nft::Hook::Prerouting),
                priority: mangle,
                rules: vec![
                    nft::NftRule {
                        exprs: vec![
                            nft::Expr::IifName(POD_VETH.into()),
                            nft::Expr::CtState(nft::CT_NEW),
                            nft::Expr::SetMark(REPLY_MARK),
                        ],
                    },
                    nft::NftRule { exprs: vec![nft::Expr::Mark(REPLY_MARK), nft::Expr::SaveMark] },
                ],
            },
            nft::Chain {
                // A `route` chain: a mark changed here makes the kernel route the packet again.
                name: "output".into(),
                kind: "route".into(),
                hook: Some(nft::Hook::Output),
                priority: mangle,
                rules: vec![nft::NftRule { exprs: vec![nft::Expr::RestoreMark] }],
            },
        ],
    }
}
