//! Sample statistics: durations in, milliseconds out.

use std::time::Duration;

/// A set of timing samples, kept in the order they were taken (paired rows rely on it).
#[derive(Debug, Clone, Default)]
pub struct Samples {
    ms: Vec<f64>,
}

impl Samples {
    pub fn new() -> Samples {
        Samples::default()
    }

    pub fn push(&mut self, d: Duration) {
        self.ms.push(d.as_secs_f64() * 1000.0);
    }

    pub fn push_ms(&mut self, ms: f64) {
        self.ms.push(ms);
    }

    pub fn len(&self) -> usize {
        self.ms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ms.is_empty()
    }

    /// The samples in milliseconds, in the order taken.
    pub fn as_ms(&self) -> &[f64] {
        &self.ms
    }

    /// The sum of all samples, in milliseconds.
    pub fn total_ms(&self) -> f64 {
        self.ms.iter().sum()
    }

    pub fn median(&self) -> f64 {
        quantile(&self.ms, 0.5)
    }

    pub fn p99(&self) -> f64 {
        quantile(&self.ms, 0.99)
    }

    /// Sample-by-sample `self - other` (paired by position; the shorter length wins).
    pub fn minus(&self, other: &Samples) -> Samples {
        Samples { ms: self.ms.iter().zip(&other.ms).map(|(a, b)| a - b).collect() }
    }

    /// Sample-by-sample `self + other` (paired by position; the shorter length wins).
    pub fn plus(&self, other: &Samples) -> Samples {
        Samples { ms: self.ms.iter().zip(&other.ms).map(|(a, b)| a + b).collect() }
    }
}

/// The `q` quantile (0..=1) by linear interpolation between closest ranks; 0 when empty.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let frac = pos - lo as f64;
    v[lo] + (v[hi] - v[lo]) * frac
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_p99() {
        let mut s = Samples::new();
        for i in 1..=100 {
            s.push_ms(i as f64);
        }
        assert!((s.median() - 50.5).abs() < 1e-9);
        assert!((s.p99() - 99.01).abs() < 1e-9);
        assert_eq!(quantile(&[], 0.5), 0.0);
        assert_eq!(quantile(&[3.0], 0.99), 3.0);
    }

    #[test]
    fn paired_difference() {
        let mut a = Samples::new();
        let mut b = Samples::new();
        for (x, y) in [(10.0, 4.0), (12.0, 5.0), (11.0, 6.0)] {
            a.push_ms(x);
            b.push_ms(y);
        }
        assert_eq!(a.minus(&b).as_ms(), &[6.0, 7.0, 5.0]);
        assert_eq!(a.plus(&b).as_ms(), &[14.0, 17.0, 17.0]);
    }
}
