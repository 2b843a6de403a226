//! The seam between the reactor and an application: the reactor moves bytes and calls a
//! [`Handler`]; the handler decides what to say and says it through an [`Outbox`].
//!
//! The chat ([`crate::chat::Chat`]) and the conformance echo server (`examples/echo.rs`) are two
//! handlers on the same reactor.

use std::io;
use std::ops::RangeInclusive;

use mio::{Registry, Token};

pub use crate::frame::Frame;
pub use crate::http::RequestHead;
pub use crate::reactor::Stats;
pub use tungstenite::Message;
pub use tungstenite::protocol::frame::coding::CloseCode;

/// Where a handler's output goes. The reactor implements it over its connections; unit tests
/// implement it over a `Vec`.
pub trait Outbox {
    /// Queues a frame for one connection. It is written at the end of the loop iteration,
    /// batched with everything else queued for that connection. A broadcast builds its frame
    /// once and sends the same frame to every recipient: each queue holds a handle to the same
    /// bytes. Sending to a connection that is closing or gone does nothing: the handler already
    /// heard of it through `on_close`.
    fn send(&mut self, to: Token, frame: &Frame);

    /// Starts the close handshake with `code`. The handler's `on_close` follows for that
    /// connection, within the same loop iteration.
    fn close(&mut self, to: Token, code: CloseCode, reason: &'static str);

    /// Wall-clock time of this loop iteration, in Unix milliseconds. Handlers never read the
    /// clock themselves, so they stay deterministic under test.
    fn unix_time_ms(&self) -> u64;

    /// The largest frame a connection's output queue can hold when it is empty
    /// (`--max-send-buffer`, less the queue's bookkeeping). A frame larger than this could never
    /// be sent to anyone: every recipient would be dropped as a slow reader.
    fn max_frame_bytes(&self) -> usize;

    /// Stops reading from `connection` until `release`: its frames wait in the kernel's buffer,
    /// and TCP slows the client down. For a handler that cannot keep up with one client (the
    /// cluster, while that client's requests wait for Redis). Writing and heartbeats go on.
    fn hold(&mut self, _connection: Token) {}

    /// Reads from a held connection again (within this loop iteration).
    fn release(&mut self, _connection: Token) {}

    /// Asks for one `Handler::on_timer` call at `unix_ms` (or soon after: the timer wheel's tick
    /// is 10 ms), replacing any earlier request. The deadline lives on the reactor's timer wheel,
    /// like every other.
    fn wake_at(&mut self, unix_ms: u64);
}

/// Tokens a handler may give its own sockets (the cluster's Redis connections). Connection tokens
/// are slab keys, counting up from 0, and the reactor's own sources take the top three.
pub const HANDLER_SOURCES: RangeInclusive<usize> = (usize::MAX - 66)..=(usize::MAX - 3);

/// Why a handler will not let an upgrade through: the whole HTTP response to send instead (a 401,
/// say) and the reason, for the log.
#[derive(Debug)]
pub struct Refusal {
    pub response: Vec<u8>,
    pub reason: String,
}

/// An application on the reactor. Every call happens on the reactor's one thread.
pub trait Handler {
    /// An upgrade request passed the reactor's own checks (shape, origin, capacity, per-address
    /// limit) and is about to be answered with 101. Refuse it here (for example with a 401 for a
    /// missing token) and the client gets the refusal's response instead. `unix_ms` is now.
    fn check_upgrade(&mut self, _request: &RequestHead, _unix_ms: u64) -> Result<(), Refusal> {
        Ok(())
    }

    /// A WebSocket handshake completed. `target` is the request-target of the upgrade request
    /// (path and query, e.g. `/chat?name=alice`).
    fn on_open<O: Outbox>(&mut self, connection: Token, target: &str, out: &mut O);

    /// A complete text or binary message arrived. Control frames never reach the handler: the
    /// reactor answers pings and drives the close handshake itself.
    fn on_message<O: Outbox>(&mut self, connection: Token, message: Message, out: &mut O);

    /// The connection left, for whatever reason: its close frame, ours, a protocol error, a reset.
    /// Called exactly once for every connection that got `on_open`; the token may be reused by a
    /// new connection afterwards.
    fn on_close<O: Outbox>(&mut self, connection: Token, out: &mut O);

    /// The time asked for with `Outbox::wake_at` has come.
    fn on_timer<O: Outbox>(&mut self, _out: &mut O) {}

    /// Called once before the loop starts: a handler with sockets of its own (the cluster's Redis
    /// connections) registers them with `registry`, with tokens from [`HANDLER_SOURCES`].
    fn attach<O: Outbox>(&mut self, _registry: &Registry, _out: &mut O) -> io::Result<()> {
        Ok(())
    }

    /// One of the handler's own sockets is ready (edge-triggered, like every other source).
    fn on_source<O: Outbox>(&mut self, _source: Token, _out: &mut O) {}

    /// The end of a loop iteration, before the reactor flushes the connections: a handler
    /// writes what it queued on its own sockets, so one iteration's requests go out as one batch.
    fn end_of_iteration<O: Outbox>(&mut self, _out: &mut O) {}

    /// A graceful shutdown began: every connection has been closed, and `on_close` called for
    /// each, before this.
    fn on_shutdown<O: Outbox>(&mut self, _out: &mut O) {}

    /// Whether the handler still has work in flight that a graceful shutdown should wait for
    /// (within `--shutdown-timeout`): the cluster's goodbyes to Redis.
    fn is_busy(&self) -> bool {
        false
    }

    /// A plain HTTP `GET` (not an upgrade) arrived. Return a whole response (see
    /// [`crate::http::response`]) to answer it, or `None` to let the reactor answer: `200 ok` at
    /// `/healthz`, 404 elsewhere. `stats` are the reactor's counters as of now.
    fn respond(&mut self, _request: &RequestHead, _stats: &Stats) -> Option<Vec<u8>> {
        None
    }
}
