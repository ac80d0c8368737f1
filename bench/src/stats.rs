//! Small statistics and formatting helpers shared by the arms: percentiles,
//! rates, ratios and the pass/miss verdict of a target.

use serde::Serialize;

/// The `p`-th percentile (0–100) of `values` by the nearest-rank method:
/// the smallest value with at least `p`% of the values at or below it.
/// `None` for no values. `values` need not be sorted.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let p = p.clamp(0.0, 100.0);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// p50, p99 and max of `values`, for latencies.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Spread {
    /// Samples.
    pub n: usize,
    /// Median.
    pub p50: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
    /// Largest.
    pub max: Option<f64>,
}

impl Spread {
    /// The spread of `values`.
    pub fn of(values: &[f64]) -> Spread {
        Spread { n: values.len(), p50: percentile(values, 50.0), p99: percentile(values, 99.0), max: percentile(values, 100.0) }
    }
}

/// Items per second; 0 for an empty interval.
pub fn rate(items: f64, secs: f64) -> f64 {
    if secs > 0.0 {
        items / secs
    } else {
        0.0
    }
}

/// Bytes per second as MiB/s.
pub fn mib_per_s(bytes: f64, secs: f64) -> f64 {
    rate(bytes, secs) / (1024.0 * 1024.0)
}

/// `a / b`, or `None` when `b` is zero or either is missing.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 && a.is_finite() && b.is_finite() => Some(a / b),
        _ => None,
    }
}

/// A ratio for people: `0.87×`, `52×`, `1.9×`; `n/a` when unknown.
pub fn format_ratio(r: Option<f64>) -> String {
    match r {
        None => "n/a".into(),
        Some(r) if r >= 10.0 => format!("{r:.0}×"),
        Some(r) if r >= 0.1 => format!("{r:.2}×"),
        Some(r) => format!("{r:.3}×"),
    }
}

/// A count or rate for people: thousands separated, no decimals above 100.
pub fn format_number(x: f64) -> String {
    if !x.is_finite() {
        return "n/a".into();
    }
    if x.abs() < 100.0 && x.fract() != 0.0 {
        return format!("{x:.1}");
    }
    let n = x.round() as i64;
    let digits = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        out.insert(0, '-');
    }
    out
}

/// Which way a target points.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Goal {
    /// The measured value must be at least the threshold.
    AtLeast,
    /// The measured value must be at most the threshold.
    AtMost,
}

/// One target of the issue, with what was measured and the verdict.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Target {
    /// What is compared, e.g. "`ingest` events/s".
    pub name: String,
    /// The measured value (a ratio or an absolute figure, see `unit`).
    pub measured: Option<f64>,
    /// The threshold.
    pub threshold: f64,
    /// Which way the threshold points.
    pub goal: Goal,
    /// `×` for ratios, or a unit such as `events/s`, `ms`, `MiB`.
    pub unit: String,
    /// `pass`, `miss`, or `not measured`.
    pub verdict: &'static str,
    /// How the value was obtained.
    pub detail: String,
}

impl Target {
    /// A target with its verdict.
    pub fn new(name: &str, measured: Option<f64>, goal: Goal, threshold: f64, unit: &str, detail: String) -> Target {
        let verdict = match measured {
            None => "not measured",
            Some(m) if m.is_nan() => "not measured",
            Some(m) => {
                let ok = match goal {
                    Goal::AtLeast => m >= threshold,
                    Goal::AtMost => m <= threshold,
                };
                if ok {
                    "pass"
                } else {
                    "miss"
                }
            }
        };
        Target { name: name.into(), measured, threshold, goal, unit: unit.into(), verdict, detail }
    }

    /// `0.87× (≥ 0.85×)` or `312 MiB (≤ 300 MiB)`.
    pub fn describe(&self) -> String {
        let op = match self.goal {
            Goal::AtLeast => "≥",
            Goal::AtMost => "≤",
        };
        let show = |v: f64| {
            if self.unit == "×" {
                format_ratio(Some(v))
            } else {
                format!("{} {}", format_number(v), self.unit)
            }
        };
        match self.measured {
            Some(m) => format!("{} ({op} {})", show(m), show(self.threshold)),
            None => format!("n/a ({op} {})", show(self.threshold)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        // Unsorted input, and a small sample: p99 of 3 values is the largest.
        assert_eq!(percentile(&[3.0, 1.0, 2.0], 50.0), Some(2.0));
        assert_eq!(percentile(&[3.0, 1.0, 2.0], 99.0), Some(3.0));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[f64::NAN], 50.0), None);
        let s = Spread::of(&[10.0, 20.0]);
        assert_eq!((s.n, s.p50, s.p99, s.max), (2, Some(10.0), Some(20.0), Some(20.0)));
    }

    #[test]
    fn ratios_and_numbers_format_for_people() {
        assert_eq!(format_ratio(ratio(Some(87.0), Some(100.0))), "0.87×");
        assert_eq!(format_ratio(Some(52.4)), "52×");
        assert_eq!(format_ratio(Some(1.94)), "1.94×");
        assert_eq!(format_ratio(Some(0.0123)), "0.012×");
        assert_eq!(format_ratio(ratio(Some(1.0), Some(0.0))), "n/a");
        assert_eq!(format_ratio(ratio(None, Some(1.0))), "n/a");
        assert_eq!(format_number(1234567.4), "1,234,567");
        assert_eq!(format_number(-1234.0), "-1,234");
        assert_eq!(format_number(999.0), "999");
        assert_eq!(format_number(12.34), "12.3");
        assert_eq!(format_number(0.0), "0");
        assert_eq!(format_number(20.0), "20");
        assert_eq!(rate(10.0, 0.0), 0.0);
        assert_eq!(mib_per_s(2.0 * 1024.0 * 1024.0, 2.0), 1.0);
    }

    #[test]
    fn targets_judge_both_directions() {
        let t = Target::new("wasm/native", Some(0.9), Goal::AtLeast, 0.85, "×", String::new());
        assert_eq!(t.verdict, "pass");
        assert_eq!(t.describe(), "0.90× (≥ 0.85×)");
        let t = Target::new("rss", Some(312.0), Goal::AtMost, 300.0, "MiB", String::new());
        assert_eq!(t.verdict, "miss");
        assert_eq!(t.describe(), "312 MiB (≤ 300 MiB)");
        assert_eq!(Target::new("x", None, Goal::AtMost, 1.0, "ms", String::new()).verdict, "not measured");
    }
}
