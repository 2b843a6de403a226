//! A histogram of durations with fixed buckets, in plain integers: the loop times its own
//! iterations and flush rounds with it, once each, and `GET /metrics` reads it at scrape time
//! (`src/metrics.rs`). Observing one duration is a binary search over 14 bounds and two additions.

use std::time::Duration;

/// The buckets' upper bounds, from 5 µs to 100 ms in 1-2.5-5 steps. An iteration that handles
/// one message for a small room takes a few microseconds; a broadcast to 1,000 members, or a
/// flush round that writes to all of them, a few milliseconds (`reactor/pacing.rs`); tens of
/// milliseconds mean clients are waiting. Past 100 ms only the count matters.
pub const BOUNDS: [Duration; 14] = [
    Duration::from_micros(5),
    Duration::from_micros(10),
    Duration::from_micros(25),
    Duration::from_micros(50),
    Duration::from_micros(100),
    Duration::from_micros(250),
    Duration::from_micros(500),
    Duration::from_millis(1),
    Duration::from_micros(2_500),
    Duration::from_millis(5),
    Duration::from_millis(10),
    Duration::from_millis(25),
    Duration::from_millis(50),
    Duration::from_millis(100),
];

/// How many durations fell in each bucket, their sum and their count.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Histogram {
    /// Durations per bucket, not cumulative: `counts[i]` holds those above `BOUNDS[i - 1]` and
    /// at most `BOUNDS[i]`; the last entry holds those above every bound.
    counts: [u64; BOUNDS.len() + 1],
    sum: Duration,
    count: u64,
}

impl Histogram {
    /// Counts one duration in the first bucket whose bound it does not exceed (Prometheus's
    /// buckets are "less than or equal", `le`).
    pub fn observe(&mut self, took: Duration) {
        let bucket = BOUNDS.partition_point(|bound| *bound < took);
        self.counts[bucket] += 1;
        self.sum = self.sum.saturating_add(took);
        self.count += 1;
    }

    /// Each bucket's upper bound with the durations in it (not cumulative), the bucket above
    /// every bound left out: Prometheus's `+Inf` bucket is the total count.
    pub fn buckets(&self) -> impl Iterator<Item = (Duration, u64)> + '_ {
        BOUNDS.iter().copied().zip(self.counts.iter().copied())
    }

    /// The sum of every duration observed.
    pub fn sum(&self) -> Duration {
        self.sum
    }

    /// How many durations were observed.
    pub fn count(&self) -> u64 {
        self.count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MICROSECOND: Duration = Duration::from_micros(1);

    fn bucket_counts(histogram: &Histogram) -> Vec<u64> {
        histogram.buckets().map(|(_, count)| count).collect()
    }

    #[test]
    fn bounds_rise_strictly() {
        assert!(BOUNDS.windows(2).all(|pair| pair[0] < pair[1]));
    }

    #[test]
    fn a_duration_on_a_bound_falls_in_that_bound_s_bucket() {
        let mut histogram = Histogram::default();
        histogram.observe(5 * MICROSECOND);
        histogram.observe(5 * MICROSECOND + Duration::from_nanos(1));
        histogram.observe(Duration::ZERO);
        let counts = bucket_counts(&histogram);
        assert_eq!(counts[0], 2, "zero and exactly 5 µs are both at most 5 µs");
        assert_eq!(counts[1], 1, "just over 5 µs is in the 10 µs bucket");
    }

    #[test]
    fn durations_beyond_every_bound_only_count() {
        let mut histogram = Histogram::default();
        histogram.observe(Duration::from_secs(2));
        histogram.observe(Duration::from_millis(3));
        assert_eq!(bucket_counts(&histogram).iter().sum::<u64>(), 1, "only 3 ms has a finite bucket");
        assert_eq!(histogram.count(), 2);
        assert_eq!(histogram.sum(), Duration::from_millis(2_003));
        let (bound, count) = histogram.buckets().find(|(_, count)| *count > 0).unwrap();
        assert_eq!((bound, count), (Duration::from_millis(5), 1));
    }

    #[test]
    fn every_bucket_is_reported_with_its_bound() {
        let mut histogram = Histogram::default();
        for bound in BOUNDS {
            histogram.observe(bound);
        }
        let buckets: Vec<_> = histogram.buckets().collect();
        assert_eq!(buckets, BOUNDS.iter().map(|bound| (*bound, 1)).collect::<Vec<_>>());
        assert_eq!(histogram.count(), BOUNDS.len() as u64);
    }
}
