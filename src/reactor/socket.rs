//! A connection's TCP stream as tungstenite sees it: the request head that the reactor already
//! read (to route the request) is replayed first, then reads go to the socket.

use std::io::{self, Read, Write};
use std::rc::Rc;

use mio::net::TcpStream;

use super::stats::Traffic;

/// A non-blocking TCP stream with a replay buffer in front of its read side.
pub struct Socket {
    stream: TcpStream,
    /// Bytes read from the socket before the WebSocket handshake started: exactly the request
    /// head, which tungstenite's server handshake parses again. Empty (and unallocated) once
    /// replayed, which is every connection's state after its handshake.
    replay: Vec<u8>,
    /// How much of `replay` tungstenite has consumed.
    replayed: usize,
    /// The reactor's byte counters.
    traffic: Rc<Traffic>,
}

impl Socket {
    pub fn new(stream: TcpStream, replay: Vec<u8>, traffic: Rc<Traffic>) -> Self {
        Socket { stream, replay, replayed: 0, traffic }
    }

    /// The stream alone, once tungstenite is done with it.
    pub fn into_stream(self) -> TcpStream {
        self.stream
    }

    /// The stream, for (re)registering with the poll.
    pub fn stream_mut(&mut self) -> &mut TcpStream {
        &mut self.stream
    }
}

impl Read for Socket {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let remaining = self.replay.get(self.replayed..).unwrap_or_default();
        if remaining.is_empty() {
            let count = self.stream.read(buffer)?;
            self.traffic.add_in(count);
            return Ok(count);
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
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let count = self.stream.write(bytes)?;
        self.traffic.add_out(count);
        Ok(count)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}
