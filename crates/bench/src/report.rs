//! A suite's results: the JSON of issue 8 (`{"suite":…,"results":[{"name":…,"median_ms":…,
//! "p99_ms":…,"reference":…,"ratio":…}]}`, with a few optional fields more) and a table.

use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{CellAlignment, ContentArrangement, Table};
use serde::Serialize;

use crate::stats::Samples;

/// One measured figure.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Row {
    pub name: String,
    pub median_ms: f64,
    pub p99_ms: f64,
    /// The row this one is compared with (its `name`), if any.
    pub reference: Option<String>,
    /// `median_ms / reference median_ms`.
    pub ratio: Option<f64>,
    /// How many samples the figures come from.
    pub samples: usize,
    /// Operations per second, for throughput rows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ops_per_s: Option<f64>,
    /// The DESIGN.md section 8 target this row is checked against, in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Whether the target is met in this run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub met: Option<bool>,
    /// What the row measures, when the name alone is not enough.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Throughput rows: the median in Gbit/s (their `median_ms`/`p99_ms` hold Gbit/s too).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub median_gbps: Option<f64>,
}

impl Row {
    /// A row with no reference.
    pub fn plain(name: impl Into<String>, s: &Samples) -> Row {
        Row {
            name: name.into(),
            median_ms: round(s.median()),
            p99_ms: round(s.p99()),
            reference: None,
            ratio: None,
            samples: s.len(),
            ops_per_s: None,
            target: None,
            met: None,
            note: None,
            median_gbps: None,
        }
    }

    /// A row compared with `reference` (whose median is `ref_median_ms`); with `max_ratio`,
    /// the target "≤ max_ratio× reference" is checked.
    pub fn versus(
        name: impl Into<String>,
        s: &Samples,
        reference: &str,
        ref_median_ms: f64,
        max_ratio: Option<f64>,
    ) -> Row {
        let ratio = if ref_median_ms > 0.0 { Some(round(s.median() / ref_median_ms)) } else { None };
        let mut row = Row { reference: Some(reference.to_string()), ratio, ..Row::plain(name, s) };
        if let Some(max) = max_ratio {
            row.target = Some(format!("<= {max}x"));
            row.met = ratio.map(|r| r <= max);
        }
        row
    }

    pub fn note(mut self, note: impl Into<String>) -> Row {
        self.note = Some(note.into());
        self
    }

    pub fn ops_per_s(mut self, ops: f64) -> Row {
        self.ops_per_s = Some(ops.round());
        self
    }

    pub fn target(mut self, target: impl Into<String>, met: bool) -> Row {
        self.target = Some(target.into());
        self.met = Some(met);
        self
    }
}

/// Rounds to 4 decimals (sub-microsecond digits of a millisecond are noise).
fn round(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

/// Everything a suite measured.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    pub suite: String,
    pub results: Vec<Row>,
    /// Samples per measured figure (pods, or allocations).
    pub n: usize,
    /// How to read the rows.
    pub notes: Vec<String>,
}

impl Report {
    pub fn new(suite: &str, n: usize) -> Report {
        Report { suite: suite.to_string(), results: Vec::new(), n, notes: Vec::new() }
    }

    /// The row called `name`.
    pub fn row(&self, name: &str) -> Option<&Row> {
        self.results.iter().find(|r| r.name == name)
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    /// The results as a table, then the notes.
    pub fn to_table(&self) -> String {
        let mut t = Table::new();
        t.load_preset(UTF8_FULL_CONDENSED).set_content_arrangement(ContentArrangement::Disabled);
        let with_ops = self.results.iter().any(|r| r.ops_per_s.is_some());
        let mut header = vec!["name", "median ms", "p99 ms"];
        if with_ops {
            header.push("ops/s");
        }
        header.extend(["reference", "ratio", "target", "met"]);
        t.set_header(header);
        for r in &self.results {
            let mut cells = vec![r.name.clone(), ms(r.median_ms), ms(r.p99_ms)];
            if with_ops {
                cells.push(r.ops_per_s.map(|o| format!("{o:.0}")).unwrap_or_default());
            }
            cells.push(r.reference.clone().unwrap_or_default());
            cells.push(r.ratio.map(|x| format!("{x:.2}")).unwrap_or_default());
            cells.push(r.target.clone().unwrap_or_default());
            cells.push(match r.met {
                Some(true) => "yes".into(),
                Some(false) => "NO".into(),
                None => String::new(),
            });
            t.add_row(cells);
        }
        for i in 1..(if with_ops { 4 } else { 3 }) {
            if let Some(c) = t.column_mut(i) {
                c.set_cell_alignment(CellAlignment::Right);
            }
        }
        let mut out = format!("knit bench {} (n = {})\n{t}\n", self.suite, self.n);
        for n in &self.notes {
            out.push_str(&format!("- {n}\n"));
        }
        out
    }
}

fn ms(x: f64) -> String {
    if x.abs() < 0.1 {
        format!("{x:.4}")
    } else {
        format!("{x:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape() {
        let mut a = Samples::new();
        let mut b = Samples::new();
        for i in 0..10 {
            a.push_ms(1.0 + i as f64 * 0.01);
            b.push_ms(4.0 + i as f64 * 0.01);
        }
        let mut rep = Report::new("cni-add-del", 10);
        rep.results.push(Row::plain("ref", &b));
        rep.results.push(Row::versus("knit", &a, "ref", b.median(), Some(0.3)));
        let v = rep.to_json();
        assert_eq!(v["suite"], "cni-add-del");
        assert!(v["results"][0]["reference"].is_null());
        assert!(v["results"][0]["ratio"].is_null());
        assert_eq!(v["results"][1]["reference"], "ref");
        assert!(v["results"][1]["ratio"].as_f64().unwrap() < 0.3);
        assert_eq!(v["results"][1]["met"], true);
        assert!(rep.to_table().contains("knit"));
    }
}
