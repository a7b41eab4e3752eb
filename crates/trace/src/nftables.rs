//! Native nf_tables tables (the coordinator's reply steering, or anyone's) shown to the
//! evaluator as the iptables rules they are equivalent to.
//!
//! `iptables-save` lists only iptables' own tables, so a snapshot also reads every other
//! table over netlink (knit-host's [`nft`] model) and renders each base chain as a custom
//! chain jumped to from the iptables built-in chain at the same hook and priority band. An
//! expression knit's model does not know becomes an unknown match, which the evaluator treats
//! as not matching and `knit trace` can name.

use std::collections::BTreeMap;

use knit_host::nft::{self, Expr, Table, TableFamily};

/// The tables iptables-nft keeps for itself (read through `iptables-save` instead).
const IPTABLES_TABLES: [&str; 5] = ["raw", "mangle", "nat", "filter", "security"];

/// Reads the IPv4-relevant tables of the namespace `n` talks to (family `ip` except iptables'
/// own, and `inet`).
pub fn read(n: &mut nft::Nft) -> knit_host::Result<Vec<Table>> {
    let mut out = Vec::new();
    for fam in [TableFamily::Ip, TableFamily::Inet] {
        for name in n.table_names(fam)? {
            if fam == TableFamily::Ip && IPTABLES_TABLES.contains(&name.as_str()) {
                continue;
            }
            if let Some(t) = n.read_table(fam, &name)? {
                out.push(t);
            }
        }
    }
    Ok(out)
}

/// The iptables table a base chain's hook point belongs to.
fn iptables_table(kind: &str, priority: i32) -> &'static str {
    match (kind, priority) {
        ("nat", _) => "nat",
        ("route", _) => "mangle",
        (_, p) if p <= -300 => "raw",
        (_, p) if p < 0 => "mangle",
        _ => "filter",
    }
}

/// One rule as iptables arguments: its matches, then one `-j` per action (an nft rule with two
/// actions becomes two iptables rules with the same matches).
fn rule_lines(chain: &str, exprs: &[Expr]) -> Vec<String> {
    let mut matches = String::new();
    let mut targets = Vec::new();
    for e in exprs {
        match e {
            Expr::IifName(n) => matches.push_str(&format!(" -i {n}")),
            Expr::OifName(n) => matches.push_str(&format!(" -o {n}")),
            Expr::CtState(bits) => {
                matches.push_str(&format!(" -m conntrack --ctstate {}", nft::ct_state_names(*bits).join(",")))
            }
            Expr::Mark(v) => matches.push_str(&format!(" -m mark --mark {v:#x}")),
            Expr::SetMark(v) => targets.push(format!("MARK --set-xmark {v:#x}/0xffffffff")),
            Expr::SaveMark => targets.push("CONNMARK --save-mark --nfmask 0xffffffff --ctmask 0xffffffff".into()),
            Expr::RestoreMark => targets.push("CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff".into()),
            Expr::Accept => targets.push("ACCEPT".into()),
            Expr::Drop => targets.push("DROP".into()),
            Expr::Other(n) => matches.push_str(&format!(" -m nft-{n}")),
        }
    }
    if targets.is_empty() {
        return vec![format!("-A {chain}{matches}")];
    }
    targets.into_iter().map(|t| format!("-A {chain}{matches} -j {t}")).collect()
}

/// Adds `tables` to per-table `iptables-save` text (as [`crate::snapshot::split_tables`] makes).
pub fn merge_into(texts: &mut BTreeMap<String, String>, tables: &[Table]) {
    let mut extra: BTreeMap<&str, (Vec<String>, Vec<String>)> = BTreeMap::new();
    for t in tables {
        for c in &t.chains {
            let Some(hook) = c.hook else { continue };
            let name = format!("nft:{}:{}:{}", t.family.name(), t.name, c.name);
            let (decl, rules) = extra.entry(iptables_table(&c.kind, c.priority)).or_default();
            decl.push(format!(":{name} - [0:0]"));
            rules.push(format!("-A {} -j {name}", hook.iptables_chain()));
            for r in &c.rules {
                rules.extend(rule_lines(&name, &r.exprs));
            }
        }
    }
    for (table, (decl, rules)) in extra {
        let text = texts.entry(table.to_string()).or_insert_with(|| format!("*{table}\nCOMMIT\n"));
        let body = text.strip_suffix("COMMIT\n").unwrap_or(text).to_string();
        *text = format!("{body}{}\n{}\nCOMMIT\n", decl.join("\n"), rules.join("\n"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netfilter::{eval, CtState, Pkt, Tables};
    use knit_host::nft::{Chain, Hook, NftRule, CT_NEW};

    #[test]
    fn the_coordinators_table_reads_as_its_iptables_rules() {
        let t = Table {
            family: TableFamily::Ip,
            name: "knit-coordinator".into(),
            chains: vec![
                Chain {
                    name: "prerouting".into(),
                    kind: "filter".into(),
                    hook: Some(Hook::Prerouting),
                    priority: -150,
                    rules: vec![
                        NftRule { exprs: vec![Expr::IifName("veth0".into()), Expr::CtState(CT_NEW), Expr::SetMark(1)] },
                        NftRule { exprs: vec![Expr::Mark(1), Expr::SaveMark] },
                    ],
                },
                Chain {
                    name: "output".into(),
                    kind: "route".into(),
                    hook: Some(Hook::Output),
                    priority: -150,
                    rules: vec![NftRule { exprs: vec![Expr::RestoreMark] }],
                },
            ],
        };
        let mut texts = BTreeMap::new();
        texts.insert("nat".to_string(), "*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n".to_string());
        merge_into(&mut texts, &[t]);
        let mangle = &texts["mangle"];
        assert!(mangle.contains("-A PREROUTING -j nft:ip:knit-coordinator:prerouting"), "{mangle}");
        assert!(
            mangle.contains("-A nft:ip:knit-coordinator:prerouting -i veth0 -m conntrack --ctstate NEW -j MARK --set-xmark 0x1/0xffffffff"),
            "{mangle}"
        );
        assert!(mangle.contains("-A nft:ip:knit-coordinator:output -j CONNMARK --restore-mark"), "{mangle}");
        assert!(mangle.ends_with("COMMIT\n"));
        let parsed = Tables::parse_all(&texts);
        let m = parsed.get("mangle").expect("mangle");
        assert_eq!(m.rules("nft:ip:knit-coordinator:prerouting").len(), 2);
        assert_eq!(m.rules("PREROUTING").len(), 1);
        assert_eq!(texts["nat"], "*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n");

        // A new connection from veth0 gets mark and ct mark 0x1; the reply gets the mark back.
        let local = |_| true;
        let mut p = Pkt {
            src: "198.51.100.10".parse().unwrap(),
            dst: "172.16.2.2".parse().unwrap(),
            proto: "tcp",
            sport: 40000,
            dport: 8080,
            iif: Some("veth0"),
            oif: None,
            ct: CtState::New,
            is_local: &local,
        };
        let o = eval(Some(m), "PREROUTING", &p, 0, 0);
        assert_eq!((o[0].mark, o[0].ctmark), (1, 1));
        p.iif = None;
        p.ct = CtState::Established;
        assert_eq!(eval(Some(m), "OUTPUT", &p, 0, 1)[0].mark, 1);
    }

    #[test]
    fn unknown_expressions_never_match() {
        let lines = rule_lines("c", &[Expr::Other("lookup".into()), Expr::Drop]);
        assert_eq!(lines, vec!["-A c -m nft-lookup -j DROP".to_string()]);
    }
}
