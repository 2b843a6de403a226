//! The reactor's table of connections and the work queued on them during one loop iteration:
//! frames to flush and connections to end. It is also the [`Outbox`] handlers write to.

use std::collections::HashMap;
use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use log::{debug, warn};
use mio::{Interest, Registry, Token};
use slab::Slab;

use super::connection::{Connection, Phase};
use super::inbox::Inbox;
use super::outgoing::CHUNK_OVERHEAD;
use super::stats::{Stats, Traffic};
use crate::frame::Frame;
use crate::handler::{CloseCode, Outbox};
use crate::timer::{TimerKey, TimerWheel};

/// The wheel's tick. Deadlines here are seconds long; 10 ms is fine-grained enough and lets an
/// idle server sleep until the tick a deadline falls in.
const TIMER_RESOLUTION: Duration = Duration::from_millis(10);
/// The wheel's slot count: 4096 ticks of 10 ms make a lap of 41 s, so the default 30 s
/// heartbeat lands within one lap.
const TIMER_SLOTS: usize = 4096;

/// The token of the handler's own deadline on the timer wheel (`Outbox::wake_at`); no slab key
/// comes near it.
pub const HANDLER_TIMER: Token = Token(usize::MAX - 2);

/// A connection's deadline (or the handler's, with `HANDLER_TIMER`), as stored on the timer wheel.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    pub token: Token,
    /// The serial of the connection that armed it; a slot reused since then has another.
    pub serial: u64,
}

/// How a connection is to end.
#[derive(Debug, Clone, Copy)]
pub enum Ending {
    /// We start the close handshake with this code (RFC 6455 section 7.4.1) and wait for the
    /// peer's close frame.
    Close(CloseCode, &'static str),
    /// The peer started the close handshake; tungstenite has queued our reply.
    PeerClosed,
    /// The peer broke the protocol: we send a close frame with this code after whatever is
    /// queued, then hang up without waiting for the peer's reply (RFC 6455 section 7.1.7).
    Fail(CloseCode, &'static str),
    /// The socket is closed at once: the peer vanished, broke the protocol beyond repair, or
    /// finished its close handshake.
    Drop,
    /// The socket is reset at once (an abortive close, `SO_LINGER` 0): for a peer that is not
    /// reading, or not answering. A plain close would leave the kernel holding the socket and
    /// everything still queued on it, retrying for minutes to deliver bytes nobody reads.
    Abort,
}

pub struct Connections {
    /// Every socket the server holds. The slab key is the connection's `mio::Token`.
    pub slab: Slab<Connection>,
    registry: Registry,
    /// Connections with output queued this iteration, flushed once at its end, so that one
    /// `write` carries every frame queued for a connection in that iteration.
    pub to_flush: Vec<Token>,
    /// Connections to end, with how; the reactor works through them between handler calls (a
    /// handler never ends a connection in the middle of its own call).
    pub to_end: Vec<(Token, Ending)>,
    /// Connections that are `Done`, whose slots are freed at the end of the iteration.
    pub finished: Vec<Token>,
    /// Held connections the handler released this iteration: they are read again before its
    /// end (edge-triggered readiness will not say again that their data is waiting).
    pub to_release: Vec<Token>,
    /// Connections counted against `--max-connections`.
    pub websockets: usize,
    /// The same, per client address, for `--max-connections-per-ip` (addresses with none are
    /// removed, so the table holds only addresses that are connected).
    per_address: HashMap<IpAddr, usize>,
    /// This iteration's wall-clock time, for handlers.
    pub unix_time_ms: u64,
    /// This iteration's monotonic time, read once by the loop after `poll` returns.
    pub now: Instant,
    /// Every connection's pending deadline, and the handler's.
    pub timers: TimerWheel<Deadline>,
    /// The handler's pending wake-up, if it asked for one.
    pub handler_timer: Option<TimerKey>,
    /// The most bytes queued for one connection (`--max-send-buffer`).
    pub send_buffer_limit: usize,
    /// The part of it a TLS connection keeps for the records rustls holds (`tls::send_reserve`);
    /// 0 without TLS.
    pub tls_reserve: usize,
    /// The serial the next accepted connection gets.
    next_serial: u64,
    /// Counters for `GET /stats` (the byte counts live in `traffic`).
    pub stats: Stats,
    /// Byte counters, shared with every WebSocket's socket wrapper.
    pub traffic: Rc<Traffic>,
    /// The loop's read buffer, shared likewise.
    pub inbox: Rc<Inbox>,
}

impl Connections {
    pub fn new(registry: Registry, now: Instant, send_buffer_limit: usize) -> Self {
        Connections {
            slab: Slab::new(),
            registry,
            to_flush: Vec::new(),
            to_end: Vec::new(),
            finished: Vec::new(),
            to_release: Vec::new(),
            websockets: 0,
            per_address: HashMap::new(),
            unix_time_ms: 0,
            now,
            timers: TimerWheel::new(TIMER_RESOLUTION, TIMER_SLOTS, now),
            handler_timer: None,
            send_buffer_limit,
            tls_reserve: 0,
            next_serial: 0,
            stats: Stats::default(),
            traffic: Traffic::shared(),
            inbox: Rc::new(Inbox::new()),
        }
    }

    /// The most a connection's output queue may hold: `--max-send-buffer`, less what rustls may
    /// hold for it with TLS.
    pub fn queue_limit(&self) -> usize {
        self.send_buffer_limit.saturating_sub(self.tls_reserve)
    }

    /// The serial for a new connection.
    pub fn next_serial(&mut self) -> u64 {
        self.next_serial += 1;
        self.next_serial
    }

    /// Sets the connection's one deadline, replacing the one it had.
    pub fn arm(&mut self, token: Token, at: Instant) {
        let Some(connection) = self.slab.get_mut(token.0) else { return };
        if let Some(key) = connection.timer.take() {
            self.timers.cancel(key);
        }
        connection.timer = Some(self.timers.insert(at, Deadline { token, serial: connection.serial }));
    }

    /// WebSocket connections from `address` now (admitted upgrades, until they are freed).
    pub fn per_address(&self, address: IpAddr) -> usize {
        self.per_address.get(&address).copied().unwrap_or(0)
    }

    /// Counts one more connection from `address`.
    pub fn count_address(&mut self, address: IpAddr) {
        *self.per_address.entry(address).or_default() += 1;
    }

    /// Puts the connection on this iteration's flush list, once.
    pub fn queue_flush(&mut self, token: Token) {
        if let Some(connection) = self.slab.get_mut(token.0)
            && connection.mark_for_flush()
        {
            self.to_flush.push(token);
        }
    }

    /// Adds or removes WRITABLE from the connection's interest, if that changes anything.
    pub fn set_writable(&mut self, token: Token, writable: bool) {
        let Some(connection) = self.slab.get_mut(token.0) else { return };
        if connection.wants_writable == writable {
            return;
        }
        let interest = if writable { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
        let Some(stream) = connection.stream_mut() else { return };
        match self.registry.reregister(stream, token, interest) {
            Ok(()) => connection.wants_writable = writable,
            Err(error) => {
                warn!("connection {}: cannot change its poll interest: {error}", token.0);
                self.to_end.push((token, Ending::Drop));
            }
        }
    }

    /// Closes the socket now and marks the slot `Done`; the slot itself is freed by `reap`.
    /// Releasing twice is harmless: `reap` frees a slot once however often it is listed.
    pub fn release(&mut self, token: Token) {
        let Some(connection) = self.slab.get_mut(token.0) else { return };
        if let Some(stream) = connection.stream_mut() {
            // Closing the descriptor would remove it from the epoll set anyway; deregistering
            // first says so explicitly.
            if let Err(error) = self.registry.deregister(stream) {
                debug!("connection {}: deregister failed: {error}", token.0);
            }
            debug!("connection {} from {} closed", token.0, connection.client);
        }
        if connection.counted {
            connection.counted = false;
            self.websockets -= 1;
            let client = connection.client.ip();
            if let Some(count) = self.per_address.get_mut(&client) {
                *count -= 1;
                if *count == 0 {
                    self.per_address.remove(&client);
                }
            }
        }
        if let Some(key) = connection.timer.take() {
            self.timers.cancel(key);
        }
        connection.phase = Phase::Done;
        self.finished.push(token);
    }

    /// A reader too slow for `--max-send-buffer`: counted, logged, and reset between handler
    /// calls. Frames sent to it in the meantime are skipped. No close frame: it would wait behind
    /// everything the reader is not reading, and so would the kernel memory it pins.
    pub fn condemn_slow_reader(&mut self, token: Token) {
        let Some(connection) = self.slab.get_mut(token.0) else { return };
        if std::mem::replace(&mut connection.ending_queued, true) {
            return;
        }
        warn!(
            "connection {} from {}: send buffer full, disconnecting a slow reader",
            token.0, connection.client
        );
        self.stats.slow_consumers_dropped += 1;
        self.to_end.push((token, Ending::Abort));
    }

    /// Like `release`, but resets the connection instead of closing it: the kernel frees the
    /// socket and whatever is queued on it at once, instead of keeping it (and its send queue)
    /// after we let go, waiting for a peer that does not read.
    pub fn abort(&mut self, token: Token) {
        let Some(stream) = self.slab.get_mut(token.0).and_then(Connection::stream_mut) else { return };
        if let Err(error) = socket2::SockRef::from(&*stream).set_linger(Some(Duration::ZERO)) {
            debug!("connection {}: cannot set SO_LINGER for a reset: {error}", token.0);
        }
        self.release(token);
    }

    /// Frees the slots of connections that finished during this iteration.
    pub fn reap(&mut self) {
        for token in self.finished.drain(..) {
            self.slab.try_remove(token.0);
        }
    }
}

impl Outbox for Connections {
    fn send(&mut self, to: Token, frame: &Frame) {
        let Some(connection) = self.slab.get_mut(to.0) else { return };
        let Phase::Open(websocket) = &mut connection.phase else { return };
        if connection.ending_queued {
            return;
        }
        if websocket.get_mut().queue_frame(frame).is_err() {
            return self.condemn_slow_reader(to);
        }
        self.stats.messages_out += 1;
        // `queue_flush` without a second slab lookup: this runs once per recipient of a broadcast.
        if connection.mark_for_flush() {
            self.to_flush.push(to);
        }
    }

    fn close(&mut self, to: Token, code: CloseCode, reason: &'static str) {
        self.to_end.push((to, Ending::Close(code, reason)));
    }

    fn unix_time_ms(&self) -> u64 {
        self.unix_time_ms
    }

    fn max_frame_bytes(&self) -> usize {
        // What `Socket::queue_frame` accepts into an empty queue.
        self.queue_limit().saturating_sub(CHUNK_OVERHEAD)
    }

    fn hold(&mut self, to: Token) {
        if let Some(connection) = self.slab.get_mut(to.0) {
            connection.held = true;
        }
    }

    fn release(&mut self, to: Token) {
        if let Some(connection) = self.slab.get_mut(to.0).filter(|connection| connection.held) {
            connection.held = false;
            self.to_release.push(to);
        }
    }

    fn wake_at(&mut self, unix_ms: u64) {
        if let Some(key) = self.handler_timer.take() {
            self.timers.cancel(key);
        }
        let at = self.now + Duration::from_millis(unix_ms.saturating_sub(self.unix_time_ms));
        self.handler_timer = Some(self.timers.insert(at, Deadline { token: HANDLER_TIMER, serial: 0 }));
    }
}
