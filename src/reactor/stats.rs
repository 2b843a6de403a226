//! Counters the reactor keeps for operators (`GET /stats`). Plain integers: the loop is the only
//! writer and the only reader.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Instant;

use serde::Serialize;

/// The reactor's counters since start-up.
#[derive(Debug, Default, Serialize)]
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

/// The stats as of `now`.
pub fn snapshot(counters: &Stats, traffic: &Traffic, started: Instant, now: Instant) -> Stats {
    Stats {
        bytes_in: traffic.bytes_in.get(),
        bytes_out: traffic.bytes_out.get(),
        uptime_seconds: now.duration_since(started).as_secs(),
        ..*counters
    }
}
