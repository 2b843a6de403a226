//! The event loop: one thread, one `mio::Poll`, every socket in one slab. It accepts connections,
//! routes their HTTP requests, drives tungstenite's handshakes and frames without ever blocking,
//! keeps every deadline on one timer wheel, and hands complete messages to a [`Handler`].
//!
//! Every socket is registered edge-triggered, so each readiness event is drained until
//! `WouldBlock` (mio's "Draining readiness" rule), and any event may be spurious, so every
//! handler of one tolerates finding nothing to do ("Spurious events").

mod accept;
mod connection;
mod connections;
mod deadlines;
mod failure;
mod histogram;
mod inbox;
mod outgoing;
mod pacing;
mod pre_websocket;
mod route;
mod shutdown;
mod socket;
mod stats;
mod throttle;
mod tls_session;
mod transport;

use std::io::{self, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{debug, info, warn};
use mio::{Events, Interest, Poll, Token};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use tungstenite::Message;
use tungstenite::protocol::{CloseFrame, WebSocketConfig};

use crate::config::Config;
use crate::handler::{HANDLER_SOURCES, Handler};
use crate::proxy::IpNet;
use crate::tls::{self, Credentials};
use accept::Acceptor;
use connection::{Connection, Flushed, Phase, ReplyState};
use connections::{Connections, Ending};
use deadlines::Timeouts;
use failure::{Failure, classify};
use pacing::FlushPacing;
use throttle::Throttle;
use transport::Transport;

pub use stats::{Histogram, Stats, Tally};

/// The listener's token. Connection tokens are slab keys, which count up from 0, so the
/// listener and the signal pipe take the other end of the range.
const LISTENER: Token = Token(usize::MAX);
/// The token of the self-pipe that signal-hook writes to when SIGINT, SIGTERM or SIGHUP arrives.
const SIGNALS: Token = Token(usize::MAX - 1);

/// How many readiness events one `poll` call may return.
const EVENTS_PER_POLL: usize = 1024;

/// Whether the loop goes on.
enum Flow {
    Continue,
    Stop,
}

/// A server: the poll, the listener, the connections and the application.
pub struct Reactor<H> {
    poll: Poll,
    acceptor: Acceptor,
    /// SIGINT, SIGTERM and SIGHUP, delivered through a pipe registered in the same poll, so a
    /// signal is just another event.
    signals: Signals,
    /// The listener's certificate and key (`--tls-cert`, `--tls-key`), reloaded on SIGHUP; `None`
    /// for plain ws://.
    tls: Option<Credentials>,
    /// The most bytes rustls may hold encrypted for one connection (`tls::buffer_limit`).
    tls_buffer_limit: usize,
    /// When a graceful shutdown must be over, once one has begun.
    shutdown_deadline: Option<Instant>,
    shutdown_timeout: Duration,
    /// When the next flush round may begin.
    pacing: FlushPacing,
    handler: H,
    connections: Connections,
    websocket_config: WebSocketConfig,
    timeouts: Timeouts,
    max_connections: usize,
    /// Allowed `Origin` values for upgrades (`--origin`); empty allows all.
    origins: Vec<String>,
    /// When the server started, for `uptime_seconds`.
    started: Instant,
    /// Keeps "connection limit reached" from flooding the log.
    capacity_warnings: Throttle,
    /// Proxies whose forwarding headers are believed (`--trusted-proxy`).
    trusted_proxies: Vec<IpNet>,
    /// Most WebSocket connections from one client address (`--max-connections-per-ip`; 0: no
    /// limit).
    max_connections_per_ip: usize,
    /// Keeps "too many connections from one address" from flooding the log.
    per_address_warnings: Throttle,
}

impl<H: Handler> Reactor<H> {
    /// Binds the listener and prepares the loop. Errors here are fatal to the server; a TLS
    /// certificate or key that cannot serve is an error whose source is a [`tls::Unusable`].
    pub fn bind(config: &Config, handler: H) -> io::Result<Self> {
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => {
                let credentials = Credentials::new(cert.clone(), key.clone(), unix_time_seconds())
                    .map_err(|problem| io::Error::other(tls::Unusable(problem)))?;
                info!("TLS: serving wss:// with {}", credentials.describe());
                Some(credentials)
            }
            _ => None,
        };
        let poll = Poll::new()?;
        // Room beyond `--max-connections` for sockets still sending their request, so that
        // clients over the limit can be told 503 rather than left hanging.
        let max_sockets = config.max_connections.saturating_add(256);
        let mut acceptor =
            Acceptor::bind(config.bind, max_sockets, config.socket_send_buffer, config.reuse_port)?;
        if tls.is_some() {
            acceptor.close_refusals();
        }
        if let Some(listener) = acceptor.listener_mut() {
            poll.registry().register(listener, LISTENER, Interest::READABLE)?;
        }
        // SIGHUP reloads the certificate (`systemctl reload`); without TLS it is logged and
        // ignored, rather than ending the process as it would by default.
        let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])?;
        poll.registry().register(&mut signals, SIGNALS, Interest::READABLE)?;
        let started = Instant::now();
        let send_buffer_limit = config.max_send_buffer as usize;
        let mut connections = Connections::new(poll.registry().try_clone()?, started, send_buffer_limit);
        if tls.is_some() {
            connections.tls_reserve = tls::send_reserve(send_buffer_limit);
        }
        connections.stats.start_time_unix_ms = unix_time_ms();
        Ok(Reactor {
            poll,
            acceptor,
            signals,
            tls,
            tls_buffer_limit: tls::buffer_limit(send_buffer_limit),
            shutdown_deadline: None,
            shutdown_timeout: config.shutdown_timeout,
            pacing: FlushPacing::new(Duration::from_millis(config.max_write_delay_ms), started),
            handler,
            connections,
            websocket_config: config.websocket(),
            timeouts: Timeouts::from(config),
            max_connections: config.max_connections,
            origins: config.origins.clone(),
            started,
            capacity_warnings: Throttle::new(Duration::from_secs(1)),
            trusted_proxies: config.trusted_proxies.clone(),
            max_connections_per_ip: config.max_connections_per_ip,
            per_address_warnings: Throttle::new(Duration::from_secs(1)),
        })
    }

    /// The address the listener is bound to (useful after binding port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.acceptor.local_addr()
    }

    pub fn handler(&self) -> &H {
        &self.handler
    }

    /// The counters as of now, with the sizes of the slab and the timer wheel.
    pub fn stats(&self) -> Stats {
        let connections = &self.connections;
        Stats {
            slab_slots: connections.slab.len(),
            timer_entries: connections.timers.len(),
            handler_timers: usize::from(connections.handler_timer.is_some()),
            ..stats::snapshot(&connections.stats, &connections.traffic, self.started, Instant::now())
        }
    }

    /// Runs the loop until a graceful shutdown completes (`Ok`) or an unrecoverable error.
    pub fn run(&mut self) -> io::Result<()> {
        info!("listening on {}", self.local_addr()?);
        // The handler may read the clock (through the outbox) as it attaches.
        self.connections.now = Instant::now();
        self.connections.unix_time_ms = unix_time_ms();
        self.handler.attach(self.poll.registry(), &mut self.connections)?;
        let mut events = Events::with_capacity(EVENTS_PER_POLL);
        loop {
            if let Flow::Stop = self.turn(&mut events)? {
                return Ok(());
            }
        }
    }

    /// One iteration of the loop:
    /// 1. sleep in `poll` until a socket is ready or the nearest deadline comes (no deadline:
    ///    sleep until a socket is ready, so an idle server burns no CPU);
    /// 2. handle each event: accept, read, hand messages to the handler, which queues output;
    /// 3. fire the deadlines that are due (I/O first, then timers, as redis's `ae.c` does: a
    ///    frame that arrived just in time still counts);
    /// 4. flush every connection that has output, once, unless the last flush round was so
    ///    expensive that this one waits (see `pacing.rs`);
    /// 5. free the slots of connections that finished.
    fn turn(&mut self, events: &mut Events) -> io::Result<Flow> {
        let now = Instant::now();
        let mut timeout = self.connections.timers.next_timeout(now);
        let flush_round = (!self.connections.to_flush.is_empty()).then_some(self.pacing.next_round());
        for deadline in [self.shutdown_deadline, flush_round].into_iter().flatten() {
            let left = deadline.saturating_duration_since(now);
            timeout = Some(timeout.map_or(left, |timeout| timeout.min(left)));
        }
        if let Err(error) = self.poll.poll(events, timeout) {
            return if error.kind() == io::ErrorKind::Interrupted { Ok(Flow::Continue) } else { Err(error) };
        }
        let woke = Instant::now();
        self.connections.now = woke;
        self.connections.unix_time_ms = unix_time_ms();
        for event in events.iter() {
            match event.token() {
                LISTENER => self.accept_until_would_block(),
                SIGNALS => {
                    if let Flow::Stop = self.on_signals() {
                        return Ok(Flow::Stop);
                    }
                }
                token if HANDLER_SOURCES.contains(&token.0) => {
                    self.handler.on_source(token, &mut self.connections);
                    self.settle();
                }
                token => self.ready(token),
            }
        }
        self.fire_deadlines();
        // Connections released this iteration are read now, and what the handler made of their
        // frames goes out with the rest of the iteration's work.
        loop {
            while let Some(token) = self.connections.to_release.pop() {
                self.read_until_would_block(token);
                self.connections.queue_flush(token);
            }
            self.handler.end_of_iteration(&mut self.connections);
            self.settle();
            if self.connections.to_release.is_empty() {
                break;
            }
        }
        if self.pacing.is_due(self.connections.now) && !self.connections.to_flush.is_empty() {
            let started = Instant::now();
            self.flush_queued();
            let ended = Instant::now();
            self.pacing.record(started, ended);
            self.connections.stats.flush_round.observe(ended.saturating_duration_since(started));
        }
        self.connections.reap();
        let flow = self.shutdown_progress();
        // The loop times itself: one clock read and one histogram entry per iteration, the sleep
        // in `poll` left out.
        self.connections.stats.loop_iteration.observe(woke.elapsed());
        Ok(flow)
    }

    fn accept_until_would_block(&mut self) {
        while let Some((stream, peer)) =
            self.acceptor.accept(self.connections.slab.len(), &mut self.connections.stats.refused)
        {
            let now = self.connections.now;
            let serial = self.connections.next_serial();
            let entry = self.connections.slab.vacant_entry();
            let token = Token(entry.key());
            let transport = match &self.tls {
                None => Transport::plain(stream),
                Some(credentials) => match credentials.session() {
                    Ok(session) => Transport::tls(stream, session, self.tls_buffer_limit),
                    Err(error) => {
                        warn!("cannot start TLS for a connection from {peer}: {error}");
                        continue;
                    }
                },
            };
            let mut connection = Connection::new(transport, peer, serial, now);
            let Some(stream) = connection.stream_mut() else { continue };
            if let Err(error) = self.poll.registry().register(stream, token, Interest::READABLE) {
                warn!("cannot register a connection from {peer}: {error}");
                continue;
            }
            entry.insert(connection);
            // Slowloris defence: the request and the upgrade must be done by this deadline.
            self.connections.arm(token, now + self.timeouts.handshake);
            debug!("connection {} from {peer} accepted", token.0);
        }
    }

    /// Handles a readiness event for a connection, whatever phase it is in. The event may be
    /// spurious; each phase's handler finds out by hitting `WouldBlock`.
    fn ready(&mut self, token: Token) {
        // The slot may have been freed by an earlier event of this iteration: then it is `Done`
        // (slots are only freed after all events are handled), or, from an earlier iteration,
        // already gone.
        let Some(connection) = self.connections.slab.get_mut(token.0) else { return };
        match &connection.phase {
            Phase::Request(_) => self.read_request(token),
            Phase::Handshake(_) => self.resume_handshake(token),
            Phase::Open(_) | Phase::Closing(_) => {
                // A held connection's frames wait in the kernel until the handler releases it.
                if !connection.held {
                    self.read_until_would_block(token);
                }
                // The event may also mean the socket is writable again.
                self.connections.queue_flush(token);
            }
            // A failing connection reads nothing more; once its close frame is out, it hangs up.
            Phase::Failing(_) => self.connections.queue_flush(token),
            Phase::Reply(_) => self.discard_reply_input(token),
            Phase::Done => {}
        }
    }

    /// Reads frames until `WouldBlock` (or until the handler holds the connection), handing each
    /// complete message to the handler; then keeps what is left in the loop's inbox, if anything,
    /// with the connection, so that the next connection read starts with an empty inbox.
    fn read_until_would_block(&mut self, token: Token) {
        self.read_frames(token);
        let websocket =
            self.connections.slab.get_mut(token.0).and_then(|connection| match &mut connection.phase {
                Phase::Open(websocket) | Phase::Closing(websocket) => Some(websocket),
                _ => None,
            });
        match websocket {
            Some(websocket) => websocket.get_mut().keep_unread(),
            // Ended while being read: nothing it sent is read any more.
            None => self.connections.inbox.discard(),
        }
    }

    /// The loop of `read_until_would_block`.
    fn read_frames(&mut self, token: Token) {
        loop {
            let Some(connection) = self.connections.slab.get_mut(token.0) else { return };
            if connection.held {
                return;
            }
            let open = matches!(connection.phase, Phase::Open(_));
            let (Phase::Open(websocket) | Phase::Closing(websocket)) = &mut connection.phase else { return };
            let read = websocket.read();
            if read.is_ok() {
                connection.last_activity = self.connections.now;
            }
            match read {
                Ok(message @ (Message::Text(_) | Message::Binary(_))) => {
                    if open {
                        self.connections.stats.messages_in += 1;
                        self.handler.on_message(token, message, &mut self.connections);
                        self.settle();
                    }
                }
                // tungstenite queued the pong; the flush at the end of the iteration sends it.
                Ok(Message::Ping(_)) => self.connections.queue_flush(token),
                Ok(Message::Pong(_) | Message::Frame(_)) => {}
                // tungstenite queued the reply to the peer's close frame (the frame it returns
                // here, its code echoed, or 1002 for a code no one may send); the next read
                // flushes it and reports the handshake complete. A close that answers ours gets
                // no reply.
                Ok(Message::Close(frame)) => {
                    if open {
                        // RFC 6455 section 7.1.5: no status code in the frame reads as 1005.
                        let code = frame.map_or(1005, |frame| u16::from(frame.code));
                        self.connections.stats.close_codes_sent.add(code);
                    }
                    self.end(token, Ending::PeerClosed)
                }
                Err(error) => match classify(error) {
                    Failure::WouldBlock => return,
                    Failure::Interrupted => {}
                    Failure::Closed => return self.finish(token),
                    // tungstenite's pong did not fit in the queue.
                    Failure::SendBufferFull => {
                        self.connections.condemn_slow_reader(token);
                        return self.settle();
                    }
                    Failure::Violation(code, reason) if open => {
                        debug!("connection {}: {reason}; closing with {code}", token.0);
                        return self.end(token, Ending::Fail(code, reason));
                    }
                    failure => {
                        debug!("connection {}: {failure}", token.0);
                        return self.end(token, Ending::Drop);
                    }
                },
            }
        }
    }

    /// Ends a connection as `ending` says, and tells the handler if it knew the connection.
    fn end(&mut self, token: Token, ending: Ending) {
        if self.detach(token, ending) {
            self.notify_closed(token);
        }
    }

    /// Takes a connection out of the open state as `ending` says. Returns whether it was open,
    /// in which case the handler must be told with `notify_closed`.
    fn detach(&mut self, token: Token, ending: Ending) -> bool {
        let Some(connection) = self.connections.slab.get_mut(token.0) else { return false };
        let was_open = matches!(connection.phase, Phase::Open(_));
        match ending {
            Ending::Close(code, reason) | Ending::Fail(code, reason) if was_open => {
                let Phase::Open(mut websocket) = std::mem::replace(&mut connection.phase, Phase::Done) else {
                    return false;
                };
                let frame = CloseFrame { code, reason: reason.into() };
                let queued = match websocket.close(Some(frame)) {
                    Ok(()) => true,
                    Err(error) => matches!(classify(error), Failure::WouldBlock),
                };
                let failing = matches!(ending, Ending::Fail(..));
                connection.phase =
                    if failing { Phase::Failing(websocket) } else { Phase::Closing(websocket) };
                if queued {
                    self.connections.stats.close_codes_sent.add(u16::from(code));
                    self.connections.queue_flush(token);
                    self.connections.arm(token, self.connections.now + self.timeouts.close);
                } else {
                    // No room even for the close frame (a slow reader's full buffer): just drop.
                    self.connections.release(token);
                }
            }
            Ending::PeerClosed if was_open => {
                let Phase::Open(websocket) = std::mem::replace(&mut connection.phase, Phase::Done) else {
                    return false;
                };
                connection.phase = Phase::Closing(websocket);
                self.connections.queue_flush(token);
                self.connections.arm(token, self.connections.now + self.timeouts.close);
            }
            Ending::Close(..) | Ending::Fail(..) | Ending::PeerClosed => {}
            Ending::Drop => self.connections.release(token),
            Ending::Abort => self.connections.abort(token),
        }
        was_open
    }

    /// Tells the handler a connection it knew has left.
    fn notify_closed(&mut self, token: Token) {
        self.connections.stats.connections -= 1;
        self.handler.on_close(token, &mut self.connections);
        self.settle();
    }

    /// Ends every connection that a handler call or a failed write asked to end. Ending one may
    /// end others (a `left` broadcast can overflow a slow reader), so this runs until quiet.
    fn settle(&mut self) {
        while let Some((token, ending)) = self.connections.to_end.pop() {
            self.end(token, ending);
        }
    }

    /// Step 4 of the loop: one flush per connection with queued output. A connection whose socket
    /// is full keeps its bytes and waits for WRITABLE; once drained it goes back to READABLE only.
    fn flush_queued(&mut self) {
        // Flushing can end connections, and ending one queues output for others (their room
        // hears `left`), so the list may grow while it is walked.
        let mut index = 0;
        while let Some(&token) = self.connections.to_flush.get(index) {
            index += 1;
            let Some(connection) = self.connections.slab.get_mut(token.0) else { continue };
            connection.flush_queued = false;
            let failing = matches!(connection.phase, Phase::Failing(_));
            let flushed = match &mut connection.phase {
                Phase::Open(websocket) | Phase::Closing(websocket) | Phase::Failing(websocket) => {
                    match websocket.flush() {
                        Ok(()) if failing => Flushed::HangUp,
                        Ok(()) => Flushed::All,
                        Err(error) => match classify(error) {
                            Failure::WouldBlock => Flushed::Blocked,
                            Failure::Closed => Flushed::Closed,
                            Failure::SendBufferFull => Flushed::Overflowed,
                            failure => Flushed::Failed(failure.to_string()),
                        },
                    }
                }
                Phase::Reply(reply) if !reply.is_written() => reply.write_until_would_block(),
                Phase::Reply(_) => Flushed::All,
                _ => continue,
            };
            match flushed {
                Flushed::All => self.connections.set_writable(token, false),
                Flushed::Blocked => self.connections.set_writable(token, true),
                Flushed::HangUp => self.hang_up(token),
                Flushed::Closed => self.finish(token),
                Flushed::Overflowed => self.connections.condemn_slow_reader(token),
                Flushed::Finished => self.end(token, Ending::Drop),
                Flushed::Failed(reason) => {
                    debug!("connection {}: flush failed: {reason}", token.0);
                    self.end(token, Ending::Drop);
                }
            }
            self.settle();
        }
        self.connections.to_flush.clear();
    }

    /// tungstenite says the close handshake is over. That means its last frame (the reply to
    /// the peer's close frame) is queued, not that it is written: write it, then close the
    /// socket; if the socket is full, the rest goes out before we hang up. TLS always hangs up:
    /// its end is a `close_notify` (RFC 8446 section 6.1), without which the client sees a
    /// truncation, and which a close with unread input could lose to a reset.
    fn finish(&mut self, token: Token) {
        let Some(connection) = self.connections.slab.get_mut(token.0) else { return };
        let flushed = match &mut connection.phase {
            Phase::Closing(websocket) | Phase::Failing(websocket) => {
                let socket = websocket.get_mut();
                if socket.transport().is_tls() {
                    return self.hang_up(token);
                }
                socket.flush()
            }
            _ => Ok(()),
        };
        match flushed {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => self.hang_up(token),
            // Written, or the socket broke: close it either way.
            _ => self.end(token, Ending::Drop),
        }
    }

    /// The connection has nothing more to say, and its last frame is queued: write what is left,
    /// half-close our side (so the frame is not lost to a reset), and wait, at most the close
    /// timeout, for the peer to hang up too.
    fn hang_up(&mut self, token: Token) {
        let Some(connection) = self.connections.slab.get_mut(token.0) else { return };
        let websocket = match std::mem::replace(&mut connection.phase, Phase::Done) {
            Phase::Closing(websocket) | Phase::Failing(websocket) => websocket,
            other => {
                connection.phase = other;
                return;
            }
        };
        let (stream, outgoing, traffic) = websocket.into_inner().into_parts();
        let mut reply = ReplyState { stream, outgoing, traffic: Some(traffic) };
        let flushed = reply.write_until_would_block();
        connection.phase = Phase::Reply(Box::new(reply));
        match flushed {
            Flushed::Finished | Flushed::Failed(_) => self.end(token, Ending::Drop),
            Flushed::Blocked => self.connections.set_writable(token, true),
            Flushed::All | Flushed::HangUp | Flushed::Closed | Flushed::Overflowed => {
                self.connections.set_writable(token, false)
            }
        }
    }
}

fn unix_time_seconds() -> i64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX)
}

fn unix_time_ms() -> u64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
}
