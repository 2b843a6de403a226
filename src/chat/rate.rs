//! Per-member rate limiting: a token bucket that refills at the configured rate and holds at most
//! twice that, so a member may burst briefly but not sustain more than the rate.

/// The limit every member's bucket follows (`--rate-limit`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Frames per second a member may send, sustained.
    pub per_second: f64,
}

impl RateLimit {
    /// The bucket's size: a burst of two seconds' worth.
    fn capacity(self) -> f64 {
        2.0 * self.per_second
    }
}

/// One member's allowance.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    /// Frames the member may still send right now.
    tokens: f64,
    /// When `tokens` was last brought up to date, in Unix milliseconds.
    updated_ms: u64,
}

impl TokenBucket {
    /// A full bucket: a new member may burst at once.
    pub fn full(limit: RateLimit, now_ms: u64) -> Self {
        TokenBucket { tokens: limit.capacity(), updated_ms: now_ms }
    }

    /// Takes one token if there is one, after adding what accrued since the last call.
    pub fn try_take(&mut self, limit: RateLimit, now_ms: u64) -> bool {
        // A clock that steps back adds nothing rather than underflowing.
        let elapsed_ms = now_ms.saturating_sub(self.updated_ms);
        self.updated_ms = self.updated_ms.max(now_ms);
        self.tokens = (self.tokens + elapsed_ms as f64 * limit.per_second / 1000.0).min(limit.capacity());
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEN: RateLimit = RateLimit { per_second: 10.0 };

    #[test]
    fn a_full_bucket_allows_a_burst_of_twice_the_rate() {
        let mut bucket = TokenBucket::full(TEN, 0);
        let allowed = (0..100).filter(|_| bucket.try_take(TEN, 0)).count();
        assert_eq!(allowed, 20);
    }

    #[test]
    fn the_bucket_refills_at_the_rate_and_no_further() {
        let mut bucket = TokenBucket::full(TEN, 0);
        while bucket.try_take(TEN, 0) {}
        assert!(!bucket.try_take(TEN, 50), "half a token after 50 ms");
        assert!(bucket.try_take(TEN, 100), "one token after 100 ms");
        let allowed = (0..100).filter(|_| bucket.try_take(TEN, 60_000)).count();
        assert_eq!(allowed, 20, "a minute of silence refills only up to the burst");
    }

    #[test]
    fn a_clock_stepping_back_grants_nothing() {
        let mut bucket = TokenBucket::full(TEN, 1_000);
        while bucket.try_take(TEN, 1_000) {}
        assert!(!bucket.try_take(TEN, 0));
        assert!(!bucket.try_take(TEN, 1_050));
        assert!(bucket.try_take(TEN, 1_100));
    }
}
