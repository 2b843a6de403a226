//! Rate-limited logging for conditions a peer can trigger over and over (a full connection
//! table, no file descriptors left), so that the log stays readable and cheap to write.

use std::time::{Duration, Instant};

/// Lets one log line through per interval and counts the ones it held back.
pub struct Throttle {
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    pub fn new(interval: Duration) -> Self {
        Throttle { interval, last: None, suppressed: 0 }
    }

    /// `Some(n)` if a line may be logged now, `n` being how many were held back since the last
    /// one; `None` if this one should be held back.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        if self.last.is_some_and(|last| now.duration_since(last) < self.interval) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_a_count_of_the_rest() {
        let start = Instant::now();
        let mut throttle = Throttle::new(Duration::from_secs(1));
        assert_eq!(throttle.allow(start), Some(0));
        assert_eq!(throttle.allow(start + Duration::from_millis(10)), None);
        assert_eq!(throttle.allow(start + Duration::from_millis(20)), None);
        assert_eq!(throttle.allow(start + Duration::from_secs(1)), Some(2));
    }
}
