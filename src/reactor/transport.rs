//! The byte stream under a connection: a TCP stream, or TLS over one. Everything above it (the
//! request head, tungstenite, the output queue) reads and writes plaintext through `Read` and
//! `Write` and never knows which; only the reactor's poll registration reaches the TCP stream.
//!
//! TLS is rustls's `ServerConnection`, a state machine without I/O, driven here the way its
//! `tlsserver-mio` example does: `read_tls` / `process_new_packets` / `reader` until
//! `WouldBlock`, and `writer` / `write_tls` for output. Output is encrypted as it is written, one
//! record per write at most: a broadcast frame stays one shared encoding in every queue, and each
//! recipient encrypts its own copy only when its socket takes it.

use std::error::Error;
use std::fmt;
use std::io::{self, ErrorKind, IoSlice, Read, Write};
use std::net::Shutdown;

use mio::net::TcpStream;
use rustls::ServerConnection;

/// The first byte of every TLS connection: a handshake record (RFC 8446 section 5.1).
const HANDSHAKE_RECORD: u8 = 0x16;

pub struct Transport {
    tcp: TcpStream,
    /// The TLS session, if the listener speaks TLS. Boxed: it is a kilobyte, and a slab slot
    /// should stay small whatever the phase.
    tls: Option<Box<Tls>>,
}

struct Tls {
    session: ServerConnection,
    /// Whether the client's first byte was looked at.
    first_byte_seen: bool,
    /// Whether our `close_notify` is queued.
    close_notify_sent: bool,
}

/// Why a TLS connection could not go on.
#[derive(Debug)]
pub enum TlsFailure {
    /// The client's first byte is not a TLS handshake record: plain HTTP, or garbage.
    NotTls,
    /// rustls refused what the client sent; its alert is queued for the client.
    Refused(rustls::Error),
}

impl fmt::Display for TlsFailure {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsFailure::NotTls => formatter.write_str("not TLS (plain HTTP on the TLS port?)"),
            TlsFailure::Refused(error) => write!(formatter, "TLS: {error}"),
        }
    }
}

impl Error for TlsFailure {}

/// The `TlsFailure` an I/O error carries, if it carries one.
pub fn tls_failure(error: &io::Error) -> Option<&TlsFailure> {
    error.get_ref().and_then(|source| source.downcast_ref::<TlsFailure>())
}

impl Transport {
    pub fn plain(tcp: TcpStream) -> Self {
        Transport { tcp, tls: None }
    }

    pub fn tls(tcp: TcpStream, session: ServerConnection) -> Self {
        let tls = Tls { session, first_byte_seen: false, close_notify_sent: false };
        Transport { tcp, tls: Some(Box::new(tls)) }
    }

    /// The TCP stream, for the poll's registration and for socket options.
    pub fn tcp_mut(&mut self) -> &mut TcpStream {
        &mut self.tcp
    }

    /// The same socket without TLS, to answer a client that does not speak it in plain text.
    pub fn into_plain(self) -> Transport {
        Transport::plain(self.tcp)
    }

    /// Whether rustls holds records the socket has not taken yet.
    pub fn has_pending_output(&self) -> bool {
        self.tls.as_ref().is_some_and(|tls| tls.session.wants_write())
    }

    /// Writes the records rustls holds until it holds none (`Ok`) or the socket would block.
    pub fn write_records(&mut self) -> io::Result<()> {
        let Some(tls) = &mut self.tls else { return Ok(()) };
        let session = &mut tls.session;
        while session.wants_write() {
            match session.write_tls(&mut self.tcp) {
                Ok(0) => return Err(io::Error::new(ErrorKind::WriteZero, "the socket took no bytes")),
                Ok(_) => {}
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    /// Ends our side: with TLS, a `close_notify` alert first (RFC 8446 section 6.1), so the
    /// client can tell the end from a truncation. `WouldBlock` if the alert has to wait for room;
    /// call again once writable.
    pub fn shutdown_write(&mut self) -> io::Result<()> {
        if let Some(tls) = &mut self.tls
            && !std::mem::replace(&mut tls.close_notify_sent, true)
        {
            // After a fatal alert rustls sends nothing more; this is then a no-op.
            tls.session.send_close_notify();
        }
        self.write_records()?;
        self.tcp.shutdown(Shutdown::Write)
    }

    /// Reads plaintext through TLS: what rustls already decrypted, else more records from the
    /// socket, until there is plaintext, the end, or `WouldBlock`.
    fn read_tls(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        loop {
            let Some(tls) = &mut self.tls else { return Ok(0) };
            let session = &mut tls.session;
            // `Ok(0)` after the client's `close_notify`; `UnexpectedEof` if the TCP stream ended
            // without one; `WouldBlock` if rustls holds no plaintext.
            match session.reader().read(buffer) {
                Err(error) if error.kind() == ErrorKind::WouldBlock => {}
                result => return result,
            }
            if !tls.first_byte_seen {
                tls.first_byte_seen = check_first_byte(&self.tcp)?;
            }
            match session.read_tls(&mut self.tcp) {
                // The end of the stream: rustls notes it, and the reader says how it ended.
                Ok(_) => {}
                Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            }
            if let Err(error) = session.process_new_packets() {
                // rustls queued an alert saying why; it goes out on the way to the close.
                return Err(io::Error::new(ErrorKind::InvalidData, TlsFailure::Refused(error)));
            }
            // The handshake's replies go out as soon as they are made.
            match self.write_records() {
                Err(error) if error.kind() != ErrorKind::WouldBlock => return Err(error),
                _ => {}
            }
        }
    }

    /// Encrypts and writes plaintext. rustls takes more only once it has written all it held,
    /// so what it holds stays under its buffer limit (`tls::send_reserve`); the rest stays in
    /// the caller's queue, counted there. Returns the plaintext bytes taken, which may still be
    /// on their way as records; `WouldBlock` if none were taken.
    fn write_tls(&mut self, pieces: &[IoSlice<'_>]) -> io::Result<usize> {
        self.write_records()?;
        let Some(tls) = &mut self.tls else { return Ok(0) };
        let taken = tls.session.writer().write_vectored(pieces)?;
        match self.write_records() {
            Err(error) if error.kind() != ErrorKind::WouldBlock => return Err(error),
            _ => {}
        }
        let wanted = pieces.iter().any(|piece| !piece.is_empty());
        if taken == 0 && wanted { Err(ErrorKind::WouldBlock.into()) } else { Ok(taken) }
    }
}

/// A client that sends plain HTTP to a TLS port is told so in plain HTTP, instead of an alert it
/// cannot read. One `peek` per connection; returns whether the first byte has come.
fn check_first_byte(tcp: &TcpStream) -> io::Result<bool> {
    let mut first = [0u8; 1];
    match tcp.peek(&mut first)? {
        0 => Ok(false),
        _ if first[0] == HANDSHAKE_RECORD => Ok(true),
        _ => Err(io::Error::new(ErrorKind::InvalidData, TlsFailure::NotTls)),
    }
}

impl Read for Transport {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        if self.tls.is_some() { self.read_tls(buffer) } else { self.tcp.read(buffer) }
    }
}

impl Write for Transport {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(bytes)])
    }

    fn write_vectored(&mut self, pieces: &[IoSlice<'_>]) -> io::Result<usize> {
        if self.tls.is_some() { self.write_tls(pieces) } else { self.tcp.write_vectored(pieces) }
    }

    /// Writes what rustls holds; `WouldBlock` if some of it has to wait.
    fn flush(&mut self) -> io::Result<()> {
        self.write_records()
    }
}
