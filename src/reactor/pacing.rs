//! When the loop writes. Each flush round writes every connection with queued output, one
//! gathered write each, and on loopback a write costs about as much whether it carries one frame or
//! ten. So when rounds are expensive, the loop holds output back and lets it pile up for the
//! next round: a round may begin only once twice the last round's duration has passed since the
//! last round began, so writing takes at most about half the loop's time, and never later than
//! `--max-write-delay-ms` after it.
//!
//! Cheap rounds (a reply, a broadcast to a small room) go out at once. A broadcast to 1,000
//! members takes 4 to 9 ms of writes on the project's VM, depending on the hour; at 1,000
//! broadcasts a second, writing each at once would keep the core busy writing one or two frames
//! per write, while paced rounds carry about eight to fifteen.

use std::time::{Duration, Instant};

/// How a round's duration spaces the next: writing takes at most `1 / SPACING` of the time.
const SPACING: u32 = 2;

#[derive(Debug)]
pub struct FlushPacing {
    /// The most a round may be held back (`--max-write-delay-ms`); zero writes every iteration.
    max_delay: Duration,
    /// When the next round may begin.
    next_round: Instant,
}

impl FlushPacing {
    pub fn new(max_delay: Duration, now: Instant) -> Self {
        FlushPacing { max_delay, next_round: now }
    }

    /// When the next round may begin; the loop sleeps no longer than this while output waits.
    pub fn next_round(&self) -> Instant {
        self.next_round
    }

    /// Whether a round may begin at `now`.
    pub fn is_due(&self, now: Instant) -> bool {
        now >= self.next_round
    }

    /// A round began at `started` and ended at `ended`.
    pub fn record(&mut self, started: Instant, ended: Instant) {
        let took = ended.saturating_duration_since(started);
        self.next_round = started + (took * SPACING).min(self.max_delay);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_cheap_round_leaves_the_next_due_at_once() {
        let start = Instant::now();
        let mut pacing = FlushPacing::new(10 * MS, start);
        assert!(pacing.is_due(start));
        pacing.record(start, start + Duration::from_micros(50));
        assert!(pacing.is_due(start + Duration::from_micros(100)));
        assert!(!pacing.is_due(start + Duration::from_micros(99)));
    }

    #[test]
    fn an_expensive_round_spaces_the_next_by_its_own_duration() {
        let start = Instant::now();
        let mut pacing = FlushPacing::new(10 * MS, start);
        pacing.record(start, start + 4 * MS);
        assert_eq!(pacing.next_round(), start + 8 * MS);
        assert!(!pacing.is_due(start + 7 * MS));
        assert!(pacing.is_due(start + 8 * MS));
    }

    #[test]
    fn output_is_never_held_longer_than_the_maximum_delay() {
        let start = Instant::now();
        let mut pacing = FlushPacing::new(10 * MS, start);
        // A round longer than the maximum delay: the next one may begin as soon as it ends.
        pacing.record(start, start + 30 * MS);
        assert!(pacing.is_due(start + 30 * MS));
        pacing.record(start, start + 7 * MS);
        assert_eq!(pacing.next_round(), start + 10 * MS);
    }

    #[test]
    fn no_maximum_delay_means_no_pacing() {
        let start = Instant::now();
        let mut pacing = FlushPacing::new(Duration::ZERO, start);
        pacing.record(start, start + 30 * MS);
        assert!(pacing.is_due(start + 30 * MS));
        assert!(pacing.is_due(start));
    }
}
