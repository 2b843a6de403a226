//! A connection's stream (TCP, or TLS over it) as tungstenite sees it. The request head that the
//! reactor already read (to route the request) is replayed first, then reads go to the socket
//! through the loop's [`Inbox`]. Once the WebSocket is open, writes go to the connection's
//! [`Outgoing`] queue, which the reactor's flush writes with one gathered write per loop iteration.

use std::error::Error;
use std::fmt;
use std::io::{self, ErrorKind, Read, Write};
use std::rc::Rc;

use super::inbox::Inbox;
use super::outgoing::{CHUNK_OVERHEAD, Outgoing};
use super::stats::Traffic;
use super::transport::Transport;
use crate::frame::Frame;

/// A non-blocking stream with a replay buffer in front of its read side and a queue in front of
/// its write side.
pub struct Socket {
    stream: Transport,
    /// Bytes read from the socket and not yet given to tungstenite: the request head, which
    /// tungstenite's server handshake parses again, or what was left in the loop's inbox when the
    /// reactor last stopped reading this connection. Empty (and unallocated) once replayed,
    /// which is nearly every connection's state.
    replay: Vec<u8>,
    /// How much of `replay` tungstenite has consumed.
    replayed: usize,
    /// Everything written and not yet taken by the socket: frames queued by the handler (shared
    /// with their other recipients), and tungstenite's own writes (pongs, close frames).
    outgoing: Outgoing,
    /// The most bytes `outgoing` may hold (`--max-send-buffer`). `None` during the handshake:
    /// tungstenite's 101 response is written straight to the stream, so that the handshake
    /// pauses at `MidHandshake` when the socket is full.
    queue_limit: Option<usize>,
    /// The reactor's byte counters.
    traffic: Rc<Traffic>,
    /// The loop's read buffer.
    inbox: Rc<Inbox>,
}

/// Queued bytes past which a queue is written at once rather than at the end of the loop
/// iteration: one iteration can read a long burst from a fast sender, and its readers should not
/// be judged slow just because the flush had not come yet.
const WRITE_EARLY_BYTES: usize = 64 * 1024;

/// A frame did not fit under the connection's send-buffer limit: its reader is too slow. When
/// tungstenite's own write (a pong, a close frame) meets it, it arrives as the source of an
/// `io::Error`, which `failure::classify` recognizes.
#[derive(Debug)]
pub struct SendBufferFull;

impl fmt::Display for SendBufferFull {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("send buffer full")
    }
}

impl Error for SendBufferFull {}

impl Socket {
    pub fn new(stream: Transport, replay: Vec<u8>, traffic: Rc<Traffic>, inbox: Rc<Inbox>) -> Self {
        Socket {
            stream,
            replay,
            replayed: 0,
            outgoing: Outgoing::default(),
            queue_limit: None,
            traffic,
            inbox,
        }
    }

    /// The reactor stops reading this connection for now: what it read and tungstenite has not
    /// taken yet moves from the loop's inbox to this connection's own buffer, to be read first
    /// next time.
    pub fn keep_unread(&mut self) {
        if self.replayed > 0 {
            self.replay.drain(..self.replayed);
            self.replayed = 0;
        }
        self.inbox.take_unread(&mut self.replay);
    }

    /// The handshake is done: from now on writes are queued, up to `limit` bytes.
    pub fn start_queueing(&mut self, limit: usize) {
        self.queue_limit = Some(limit);
    }

    /// Queues a frame the handler (or the heartbeat) built, unless it would take the queue over
    /// its limit.
    pub fn queue_frame(&mut self, frame: &Frame) -> Result<(), SendBufferFull> {
        self.make_room(frame.wire().len())?;
        self.outgoing.push_frame(frame);
        if self.outgoing.len() >= WRITE_EARLY_BYTES {
            // A full socket is no error here, and a broken one is not either: the flush at the
            // end of the iteration meets the same error and ends the connection.
            let _ = self.write_queue();
        }
        Ok(())
    }

    /// Writes the queue to the stream, and with TLS the records made of it; `WouldBlock` if
    /// some of it has to wait for WRITABLE.
    fn write_queue(&mut self) -> io::Result<()> {
        let written = self.outgoing.write_to(&mut self.stream)?;
        self.traffic.add_out(written);
        if !self.outgoing.is_empty() {
            return Err(ErrorKind::WouldBlock.into());
        }
        self.stream.write_records()
    }

    /// Whether one more chunk of `bytes` fits under the limit.
    fn make_room(&self, bytes: usize) -> Result<(), SendBufferFull> {
        match self.queue_limit {
            Some(limit) if self.outgoing.cost() + bytes + CHUNK_OVERHEAD > limit => Err(SendBufferFull),
            _ => Ok(()),
        }
    }

    /// The stream, what is still queued for it, and the byte counters, once tungstenite is done
    /// with them.
    pub fn into_parts(self) -> (Transport, Outgoing, Rc<Traffic>) {
        (self.stream, self.outgoing, self.traffic)
    }

    /// The byte stream under the WebSocket: a TCP stream, or TLS over one.
    pub fn transport(&self) -> &Transport {
        &self.stream
    }

    /// The TCP stream, for (re)registering with the poll.
    pub fn stream_mut(&mut self) -> &mut mio::net::TcpStream {
        self.stream.tcp_mut()
    }
}

impl Read for Socket {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let remaining = self.replay.get(self.replayed..).unwrap_or_default();
        if remaining.is_empty() {
            let fetched = self.inbox.read_from(&mut self.stream, buffer)?;
            self.traffic.add_in(fetched.from_stream);
            return Ok(fetched.copied);
        }
        let count = remaining.len().min(buffer.len());
        buffer[..count].copy_from_slice(&remaining[..count]);
        self.replayed += count;
        if self.replayed == self.replay.len() {
            // Free the head now: an idle connection should cost as little memory as possible.
            self.replay = Vec::new();
            self.replayed = 0;
        }
        Ok(count)
    }
}

impl Write for Socket {
    /// During the handshake, a write to the stream. After it, a write to the queue, which never
    /// blocks: tungstenite's own frames join the handler's in one queue, in order, under one limit.
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        if self.queue_limit.is_none() {
            let count = self.stream.write(bytes)?;
            self.traffic.add_out(count);
            return Ok(count);
        }
        self.make_room(bytes.len()).map_err(io::Error::other)?;
        self.outgoing.push_bytes(bytes);
        Ok(bytes.len())
    }

    /// Writes the queue to the stream; `WouldBlock` if some of it has to wait for WRITABLE.
    fn flush(&mut self) -> io::Result<()> {
        self.write_queue()
    }
}
