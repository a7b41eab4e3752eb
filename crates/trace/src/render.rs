//! Text output in the seeds' style: one block per hop (namespace, in-interface, rule, table,
//! route, out-interface, NAT), then the verdict and the fix.

use std::fmt::Write as _;

use crate::path::{Drop, PathTrace, Trace};

fn path(out: &mut String, title: &str, p: &PathTrace) {
    let _ = writeln!(out, "{title}:");
    for h in &p.hops {
        let iif = h.iif.as_deref().map(|i| format!(" in {i}")).unwrap_or_default();
        let _ = writeln!(out, "  {:>2}. {}{iif} [{}]  {}", h.n, h.ns, h.action, h.packet);
        for n in &h.nat {
            let _ = writeln!(out, "        nat:   {n}");
        }
        if let Some(r) = &h.rule {
            let _ = writeln!(out, "        rule:  {r}");
        }
        if let Some(r) = &h.route {
            let _ = writeln!(out, "        route: {r}");
        }
        if let Some(o) = &h.oif {
            if h.action != "deliver" {
                let _ = writeln!(out, "        out:   {o}");
            }
        }
        if let Some(v) = &h.via {
            let _ = writeln!(out, "        via:   {v}");
        }
        for n in &h.notes {
            let _ = writeln!(out, "        note:  {n}");
        }
    }
    match (&p.delivered_to, &p.drop) {
        (_, Some(d)) => {
            let _ = writeln!(out, "  ✗ dropped at hop {} ({})", d.hop, d.ns);
        }
        (Some(ns), None) => {
            let _ = writeln!(out, "  ✓ delivered to {ns}");
        }
        _ => {}
    }
}

fn drop_text(d: &Drop) -> String {
    let mut s = format!("DROPPED at {} hop {} ({}): {}", d.path, d.hop, d.ns, d.reason);
    if let Some(r) = &d.rule {
        s.push_str(&format!("\n  rule: {r}"));
    }
    if let Some(f) = &d.fix {
        s.push_str(&format!("\n  fix:  {f}"));
    }
    s
}

/// The whole trace as text.
pub fn trace_text(t: &Trace) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "trace {} → {} ({})", t.source, t.destination, t.proto.as_str());
    if !t.endpoints.is_empty() {
        let eps: Vec<String> = t.endpoints.iter().map(|e| e.to_string()).collect();
        let _ = writeln!(
            out,
            "kube-proxy endpoints: {} (following {})",
            eps.join(", "),
            t.endpoint.map(|e| e.to_string()).unwrap_or_default()
        );
    }
    path(&mut out, "forward", &t.forward);
    if let Some(r) = &t.reply {
        path(&mut out, "reply", r);
    }
    match &t.drop {
        Some(d) => {
            let _ = writeln!(out, "verdict: {}", drop_text(d));
        }
        None if t.delivered => {
            let _ = writeln!(out, "verdict: delivered (request and reply)");
        }
        None => {
            let _ = writeln!(out, "verdict: not delivered");
        }
    }
    out
}
