//! Counters and timings the reactor keeps for operators (`GET /stats`, `GET /metrics`). Plain
//! integers: the loop is the only writer and the only reader, and `/metrics` turns them into
//! Prometheus metrics at scrape time (`src/metrics.rs`).

use std::cell::Cell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Instant;

use serde::Serialize;

pub use super::histogram::Histogram;

/// The reactor's counters since start-up. `/stats` serializes the fields up to `handler_timers`;
/// the rest are for `/metrics` only.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Stats {
    /// Open WebSocket connections (the handler has seen `on_open` and not yet `on_close`).
    pub connections: usize,
    /// Text and binary messages received from clients.
    pub messages_in: u64,
    /// Messages queued to clients (a broadcast to 100 members counts 100).
    pub messages_out: u64,
    /// Bytes read from WebSocket connections, frame headers included, from the handshake on.
    pub bytes_in: u64,
    /// Bytes written to WebSocket connections, frame headers included, from the handshake on.
    pub bytes_out: u64,
    /// Clients disconnected because their send buffer overflowed.
    pub slow_consumers_dropped: u64,
    /// Seconds since the server started.
    pub uptime_seconds: u64,
    /// Sockets held in the slab, in every phase (the request asking for `/stats` included). With
    /// `timer_entries`, what a soak test compares with the live connections to find leaks.
    pub slab_slots: usize,
    /// Entries on the timer wheel: one deadline per slab slot, plus `handler_timers`.
    pub timer_entries: usize,
    /// The handler's own wake-up on the wheel (`Outbox::wake_at`): 0 or 1.
    pub handler_timers: usize,
    /// When the server started, in Unix milliseconds.
    #[serde(skip)]
    pub start_time_unix_ms: u64,
    /// WebSocket handshakes completed.
    #[serde(skip)]
    pub connections_accepted: u64,
    /// Requests refused before they became WebSockets, by the HTTP status they were answered
    /// with: malformed heads, methods other than `GET`, and upgrades the server would not take
    /// (over capacity, bad origin, bad handshake). A `GET` answered with a page or a 404 is not
    /// a refusal.
    #[serde(skip)]
    pub refused: Tally,
    /// Close frames queued for clients, by close code: those the server starts and its replies
    /// to the clients' own (a reply to a close frame without a code counts as 1005, the code
    /// RFC 6455 section 7.1.5 gives "no status code").
    #[serde(skip)]
    pub close_codes_sent: Tally,
    /// Each loop iteration's work: from `poll` returning to the end of the iteration.
    #[serde(skip)]
    pub loop_iteration: Histogram,
    /// Each flush round's duration (`reactor/pacing.rs`).
    #[serde(skip)]
    pub flush_round: Histogram,
}

/// Counts by a small number: an HTTP status, a close code. Kept sorted, so the exposition lists
/// them in order. Only counted once per connection at most (a refusal, a close), never per
/// message.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Tally(BTreeMap<u16, u64>);

impl Tally {
    pub fn add(&mut self, key: u16) {
        *self.0.entry(key).or_default() += 1;
    }

    /// The count for `key` (0 if never counted).
    pub fn get(&self, key: u16) -> u64 {
        self.0.get(&key).copied().unwrap_or(0)
    }

    /// Every key counted, with its count, in ascending order of key.
    pub fn iter(&self) -> impl Iterator<Item = (u16, u64)> + '_ {
        self.0.iter().map(|(key, count)| (*key, *count))
    }
}

/// Byte counters shared by every WebSocket's socket wrapper: tungstenite reads and writes through
/// the wrapper, so that is the one place that sees every byte.
#[derive(Debug, Default)]
pub struct Traffic {
    pub bytes_in: Cell<u64>,
    pub bytes_out: Cell<u64>,
}

impl Traffic {
    pub fn shared() -> Rc<Traffic> {
        Rc::new(Traffic::default())
    }

    pub fn add_in(&self, count: usize) {
        self.bytes_in.set(self.bytes_in.get() + count as u64);
    }

    pub fn add_out(&self, count: usize) {
        self.bytes_out.set(self.bytes_out.get() + count as u64);
    }
}

/// The stats as of `now`. A copy, taken for each `/stats` or `/metrics` request: a few hundred
/// bytes.
pub fn snapshot(counters: &Stats, traffic: &Traffic, started: Instant, now: Instant) -> Stats {
    Stats {
        bytes_in: traffic.bytes_in.get(),
        bytes_out: traffic.bytes_out.get(),
        uptime_seconds: now.duration_since(started).as_secs(),
        ..counters.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tally_counts_each_key_and_lists_them_in_order() {
        let mut tally = Tally::default();
        for status in [503, 403, 503, 400] {
            tally.add(status);
        }
        assert_eq!(tally.iter().collect::<Vec<_>>(), [(400, 1), (403, 1), (503, 2)]);
        assert_eq!(tally.get(503), 2);
        assert_eq!(tally.get(401), 0);
    }

    #[test]
    fn the_json_of_stats_is_unchanged_by_the_metrics_only_fields() {
        let mut stats = Stats::default();
        stats.refused.add(503);
        stats.connections_accepted = 4;
        let json = serde_json::to_value(&stats).unwrap();
        let keys: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
        let expected = [
            "bytes_in",
            "bytes_out",
            "connections",
            "handler_timers",
            "messages_in",
            "messages_out",
            "slab_slots",
            "slow_consumers_dropped",
            "timer_entries",
            "uptime_seconds",
        ];
        assert_eq!(keys, expected);
    }
}
