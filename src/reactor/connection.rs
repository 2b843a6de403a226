//! One accepted socket and the phase of life it is in, from the first byte of its HTTP request to
//! the end of its close handshake. The reactor drives the phases; this file holds their state and
//! the non-blocking I/O each phase does on its own.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::rc::Rc;
use std::time::Instant;

use mio::net::TcpStream;
use tungstenite::WebSocket;
use tungstenite::handshake::MidHandshake;
use tungstenite::handshake::server::{NoCallback, ServerHandshake};

use super::outgoing::Outgoing;
use super::socket::Socket;
use super::stats::Traffic;
use super::transport::{TlsFailure, Transport, tls_failure};
use crate::http::MAX_HEAD_BYTES;
use crate::timer::TimerKey;

/// tungstenite's server handshake over our socket.
pub type HandshakeRole = ServerHandshake<Socket, NoCallback>;
/// The handshake, paused where the socket would have blocked.
pub type PausedHandshake = MidHandshake<HandshakeRole>;

/// One slot of the reactor's slab.
pub struct Connection {
    pub phase: Phase,
    /// The TCP peer's address.
    pub peer: SocketAddr,
    /// Who the client is: the peer, or behind a trusted proxy the address the proxy forwarded
    /// (learned from the request head). The address in the log and under the per-address limit.
    pub client: SocketAddr,
    /// A number no other connection of this process has: slab keys are reused, serials are not,
    /// so a deadline can tell whether it still belongs to the connection in its slot.
    pub serial: u64,
    /// The connection's one pending deadline on the timer wheel: its handshake deadline, its
    /// next heartbeat check, or its close deadline, depending on the phase.
    pub timer: Option<TimerKey>,
    /// When the last frame arrived from the peer. Updated on every frame; the heartbeat timer
    /// reads it lazily when it fires instead of being re-armed on every frame.
    pub last_activity: Instant,
    /// When we pinged the peer, if it has not been heard from since.
    pub ping_sent: Option<Instant>,
    /// Whether the registered interest includes WRITABLE. It does only while output is waiting
    /// for room in the socket's send buffer; otherwise every write would wake the loop for nothing.
    pub wants_writable: bool,
    /// Whether the token is already in this iteration's flush list.
    pub flush_queued: bool,
    /// Whether a failed write already asked for this connection to be ended; further sends to it
    /// are skipped until the reactor gets to it.
    pub ending_queued: bool,
    /// Whether the handler asked to stop reading from it (`Outbox::hold`): its frames wait in
    /// the kernel's receive buffer, and TCP slows the client, until `Outbox::release`.
    pub held: bool,
    /// Whether this connection was admitted as a WebSocket and counts against
    /// `--max-connections` (from the moment its upgrade request is accepted until it is freed).
    pub counted: bool,
}

/// Where a connection is in its life.
pub enum Phase {
    /// Reading the HTTP request head, to route it.
    Request(Box<RequestState>),
    /// tungstenite's handshake could not finish writing its 101 response; resumed when writable.
    Handshake(Box<HandshakeState>),
    /// A WebSocket the handler knows about.
    Open(WebSocket<Socket>),
    /// The close handshake is under way (started by either side); the handler has already been
    /// told the connection left. Data frames that still arrive are discarded.
    Closing(WebSocket<Socket>),
    /// The peer broke the protocol. Our close frame, and whatever was queued before it, is being
    /// flushed; then we hang up without waiting for the peer's close frame (RFC 6455 section
    /// 7.1.7, "Fail the WebSocket Connection").
    Failing(WebSocket<Socket>),
    /// Writing the last bytes the connection will get (an HTTP response, or the rest of a
    /// WebSocket's queue ending with its close frame), then waiting for the peer to hang up.
    Reply(Box<ReplyState>),
    /// Finished. The socket is closed and the slot is freed at the end of this loop iteration; it
    /// is not freed at once so that a later event of the same iteration cannot reach a new
    /// connection that took the slot.
    Done,
}

pub struct RequestState {
    pub stream: Transport,
    /// Bytes of the request head received so far.
    pub head: Vec<u8>,
}

pub struct HandshakeState {
    pub handshake: PausedHandshake,
    /// The upgrade request's target (path and query), for the handler's `on_open`.
    pub target: String,
}

pub struct ReplyState {
    pub stream: Transport,
    /// What is left to write.
    pub outgoing: Outgoing,
    /// The byte counters, when what is left is a WebSocket's (HTTP responses are not counted).
    pub traffic: Option<Rc<Traffic>>,
}

/// What reading a request head came to.
pub enum HeadRead {
    /// Everything available was read; parse what is there.
    Drained,
    /// The peer closed its side after sending what is there (`shutdown(SHUT_WR)`, as some
    /// command-line clients do): a plain request still deserves its response.
    PeerClosed,
    /// The socket broke, or (`TlsFailure::TooLarge`) the client sent more than is held for it:
    /// why.
    Gone(String),
    /// The client's first byte was not TLS on a TLS port: plain HTTP, most likely.
    NotTls,
    /// The TLS handshake failed; rustls's alert saying why is queued.
    TlsRefused(String),
}

/// What a flush came to.
pub enum Flushed {
    /// Everything queued is written.
    All,
    /// Everything queued is written, and the connection was failing: hang up now.
    HangUp,
    /// The socket's send buffer is full; the rest waits for WRITABLE.
    Blocked,
    /// tungstenite says the close handshake is over; its last frame is queued, perhaps not
    /// written yet.
    Closed,
    /// tungstenite's own frame (a pong) did not fit under the send-buffer limit.
    Overflowed,
    /// The connection has said its last word (close handshake finished, or a reply fully written
    /// and the peer gone): free it.
    Finished,
    /// The connection broke.
    Failed(String),
}

impl Connection {
    pub fn new(stream: Transport, peer: SocketAddr, serial: u64, now: Instant) -> Self {
        let request = RequestState { stream, head: Vec::new() };
        Connection {
            phase: Phase::Request(Box::new(request)),
            peer,
            client: peer,
            serial,
            timer: None,
            last_activity: now,
            ping_sent: None,
            wants_writable: false,
            flush_queued: false,
            ending_queued: false,
            held: false,
            counted: false,
        }
    }

    /// Marks the connection for this iteration's flush; `true` if it was not marked yet, so the
    /// caller adds its token to the flush list exactly once.
    pub fn mark_for_flush(&mut self) -> bool {
        !std::mem::replace(&mut self.flush_queued, true)
    }

    /// The TCP stream, whichever phase holds it (none once `Done`).
    pub fn stream_mut(&mut self) -> Option<&mut TcpStream> {
        match &mut self.phase {
            Phase::Request(request) => Some(request.stream.tcp_mut()),
            Phase::Handshake(handshake) => Some(handshake.handshake.get_mut().get_mut().stream_mut()),
            Phase::Open(websocket) | Phase::Closing(websocket) | Phase::Failing(websocket) => {
                Some(websocket.get_mut().stream_mut())
            }
            Phase::Reply(reply) => Some(reply.stream.tcp_mut()),
            Phase::Done => None,
        }
    }
}

impl RequestState {
    /// Reads until `WouldBlock` (edge-triggered readiness must be drained) or until the head
    /// buffer holds `MAX_HEAD_BYTES`, the most the parser will look at.
    pub fn read_until_would_block(&mut self) -> HeadRead {
        let mut chunk = [0u8; 4096];
        while self.head.len() < MAX_HEAD_BYTES {
            let room = (MAX_HEAD_BYTES - self.head.len()).min(chunk.len());
            match self.stream.read(&mut chunk[..room]) {
                Ok(0) => return HeadRead::PeerClosed,
                Ok(count) => self.head.extend_from_slice(&chunk[..count]),
                Err(error) if error.kind() == ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                Err(error) => {
                    return match tls_failure(&error) {
                        Some(TlsFailure::NotTls) => HeadRead::NotTls,
                        Some(TlsFailure::Refused(why)) => HeadRead::TlsRefused(why.to_string()),
                        Some(TlsFailure::TooLarge) | None => HeadRead::Gone(error.to_string()),
                    };
                }
            }
        }
        HeadRead::Drained
    }
}

impl ReplyState {
    /// Writes what is left; once all of it is out, shuts down our side so the peer sees the end
    /// of the response.
    pub fn write_until_would_block(&mut self) -> Flushed {
        match self.outgoing.write_to(&mut self.stream) {
            Ok(written) => self.traffic.iter().for_each(|traffic| traffic.add_out(written)),
            Err(error) => return Flushed::Failed(error.to_string()),
        }
        if !self.outgoing.is_empty() {
            return Flushed::Blocked;
        }
        // Half-close rather than close: closing a socket with unread input makes the kernel send
        // a reset, which can destroy the response before the peer reads it. The peer closes its
        // side once it has read the response (`Connection: close`), and `discard_input` sees that
        // (now, if the peer closed already: that end-of-file will not raise another event).
        // With TLS, a `close_notify` goes first, and it too may have to wait for room.
        match self.stream.shutdown_write() {
            Ok(()) => self.discard_input(),
            Err(error) if error.kind() == ErrorKind::WouldBlock => Flushed::Blocked,
            Err(error) if error.kind() == ErrorKind::NotConnected => Flushed::Finished,
            Err(error) => Flushed::Failed(error.to_string()),
        }
    }

    /// Whether everything is out, TLS records included.
    pub fn is_written(&self) -> bool {
        self.outgoing.is_empty() && !self.stream.has_pending_output()
    }

    /// Reads and drops whatever the peer still sends after its request, until `WouldBlock`.
    /// Returns `Finished` once the peer has closed its side and everything is written (a peer
    /// that half-closes may still be reading).
    pub fn discard_input(&mut self) -> Flushed {
        let mut sink = [0u8; 4096];
        loop {
            match self.stream.read(&mut sink) {
                Ok(0) if self.is_written() => return Flushed::Finished,
                // Once the rest is written, `write_until_would_block` reads this end again.
                Ok(0) => return Flushed::All,
                Ok(_) => continue,
                Err(error) if error.kind() == ErrorKind::WouldBlock => return Flushed::All,
                Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                // After a refused TLS handshake nothing can be read, and nothing more is owed
                // than rustls's alert: once that is written, the connection is done.
                Err(_) if self.stream.tls_failed() && self.is_written() => return Flushed::Finished,
                Err(_) if self.stream.tls_failed() => return Flushed::All,
                // A TLS peer that closes without its close_notify after ours: a truncation of
                // nothing, since everything it sends here is dropped.
                Err(error) if error.kind() == ErrorKind::UnexpectedEof && self.is_written() => {
                    return Flushed::Finished;
                }
                Err(error) => return Flushed::Failed(error.to_string()),
            }
        }
    }
}

/// Writes a canned response to a socket the server will not keep (over capacity or out of file
/// descriptors), without waiting: a fresh socket's send buffer has room for it, and if not, the
/// client just sees the connection close.
pub fn refuse(mut stream: TcpStream, response: &[u8]) -> io::Result<()> {
    stream.write_all(response)?;
    stream.shutdown(Shutdown::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_stays_small() {
        // Every connection's slab slot has this size whatever its phase (the request, handshake
        // and reply states are boxed), and the README quotes it: 10,000 idle connections hold
        // 10,000 slots. Measured: 528 bytes on x86-64 since the stream may carry TLS (a pointer
        // to the boxed session); the bound leaves 16 bytes of room before the README is wrong.
        let size = std::mem::size_of::<Connection>();
        assert!(size <= 544, "a slot is {size} bytes");
    }
}
