//! Percentiles and medians of the samples (pure).

use std::time::Duration;

/// The `p`-th percentile (0 < p ≤ 100) of `samples` by the nearest-rank method: the smallest
/// sample such that at least `p` % of the samples are ≤ it. With 100 samples p99 is the
/// 99th-smallest, p50 the 50th. `None` for no samples.
pub fn percentile<T: Copy + Ord>(samples: &[T], p: f64) -> Option<T> {
    if samples.is_empty() || !(p > 0.0 && p <= 100.0) {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let n = sorted.len();
    // Computed in integers where possible: 0.99 * 100 must be rank 99, not 99.00000000000001.
    let rank = ((p * n as f64 / 100.0) - 1e-9).ceil().max(1.0) as usize;
    sorted.get(rank.min(n) - 1).copied()
}

/// Latency figures of one series.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Latency {
    /// Number of samples.
    pub n: usize,
    /// Median (nearest rank).
    pub p50: Duration,
    /// 99th percentile (nearest rank).
    pub p99: Duration,
    /// Smallest sample.
    pub min: Duration,
    /// Largest sample.
    pub max: Duration,
}

impl Latency {
    /// Summarises `samples`; `None` when there are none.
    pub fn of(samples: &[Duration]) -> Option<Self> {
        Some(Self {
            n: samples.len(),
            p50: percentile(samples, 50.0)?,
            p99: percentile(samples, 99.0)?,
            min: *samples.iter().min()?,
            max: *samples.iter().max()?,
        })
    }
}

/// The median of `samples` (the mean of the middle two for an even count); `None` for none.
pub fn median(samples: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = samples.iter().copied().filter(|x| !x.is_nan()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    Some(if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    })
}

/// `a / b` for durations, as a plain ratio.
pub fn ratio(a: Duration, b: Duration) -> f64 {
    if b.is_zero() {
        f64::INFINITY
    } else {
        a.as_secs_f64() / b.as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u32> = (1..=100).rev().collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&v, 1.0), Some(1));
        // Small series: p99 of 10 samples is the largest; p50 the 5th.
        let v: Vec<u32> = (1..=10).collect();
        assert_eq!(percentile(&v, 99.0), Some(10));
        assert_eq!(percentile(&v, 50.0), Some(5));
        assert_eq!(percentile(&[7u32], 50.0), Some(7));
        assert_eq!(percentile::<u32>(&[], 50.0), None);
        assert_eq!(percentile(&[1u32], 0.0), None);
        assert_eq!(percentile(&[1u32], 101.0), None);
        // 0.99 * 300 = 297 exactly, whatever floating point makes of it.
        let v: Vec<u32> = (1..=300).collect();
        assert_eq!(percentile(&v, 99.0), Some(297));
    }

    #[test]
    fn latency_summary() {
        let ms = |x: u64| Duration::from_millis(x);
        let samples: Vec<Duration> = (1..=100).map(ms).collect();
        let l = Latency::of(&samples).unwrap();
        assert_eq!(
            (l.n, l.p50, l.p99, l.min, l.max),
            (100, ms(50), ms(99), ms(1), ms(100))
        );
        assert!(Latency::of(&[]).is_none());
    }

    #[test]
    fn medians_and_ratios() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[f64::NAN, 5.0]), Some(5.0));
        let r = ratio(Duration::from_millis(1), Duration::from_millis(8));
        assert!((r - 0.125).abs() < 1e-12);
        assert!(ratio(Duration::from_millis(1), Duration::ZERO).is_infinite());
    }
}
