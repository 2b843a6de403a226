//! The byte stream under a connection: a TCP stream, or TLS over one. Everything above it (the
//! request head, tungstenite, the output queue) reads and writes plaintext through `Read` and
//! `Write` and never knows which; only the reactor's poll registration reaches the TCP stream.
//!
//! TLS is rustls's unbuffered `ServerConnection`, a state machine without I/O: records go in,
//! plaintext and records to send come out, and this file moves the bytes. It keeps the buffers
//! itself, each freed as soon as it is empty, so an idle TLS connection holds no buffer at all
//! (rustls's buffered API keeps a 4 KiB read buffer for each connection for good: 40 MiB at
//! 10,000 idle connections, twice what the rest of such a connection costs). Output is encrypted
//! as it is written, one record of at most `tls::buffer_limit` bytes ahead of the socket: a
//! broadcast frame stays one shared encoding in every queue, and each recipient encrypts its own
//! copy only when its socket takes it.

use std::error::Error;
use std::fmt;
use std::io::{self, ErrorKind, IoSlice, Read, Write};
use std::net::Shutdown;

use mio::net::TcpStream;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};

/// The first byte of every TLS connection: a handshake record (RFC 8446 section 5.1).
const HANDSHAKE_RECORD: u8 = 0x16;
/// How much room each read from the socket gets: a typical record, and half the largest.
const READ_BYTES: usize = 8 * 1024;
/// The most received bytes held before rustls can use them. A record is at most 16 KiB plus 256
/// (RFC 8446 section 5.2), but rustls joins a handshake message of up to 64 KiB across records
/// in this buffer (its own limit for handshake messages), so that much may wait here.
const MAX_INCOMING_BYTES: usize = 80 * 1024;
/// The most plaintext in one record (RFC 8446 section 5.1).
const MAX_RECORD_PLAINTEXT: usize = 16 * 1024;

pub struct Transport {
    tcp: TcpStream,
    /// The TLS session, if the listener speaks TLS. Boxed: it is over a kilobyte, and a slab slot
    /// should stay small whatever the phase.
    tls: Option<Box<Tls>>,
}

struct Tls {
    session: UnbufferedServerConnection,
    buffers: Buffers,
    /// The most plaintext encrypted ahead of the socket (`tls::buffer_limit`).
    buffer_limit: usize,
    /// Whether the client's first byte was looked at.
    first_byte_seen: bool,
    /// Whether our `close_notify` is queued.
    close_notify_sent: bool,
    /// The client's `close_notify` arrived: its stream has ended cleanly.
    peer_closed: bool,
    /// The TCP stream ended (with or without `close_notify`).
    end_of_stream: bool,
    /// rustls refused the connection; nothing more is read or encrypted.
    failed: bool,
}

/// The bytes on their way through TLS. Each is empty and unallocated when there is nothing in
/// it, which is an idle connection's state.
#[derive(Default)]
struct Buffers {
    /// Records received and not yet taken by rustls: a partial record, between reads.
    incoming: Vec<u8>,
    /// Plaintext decrypted and not yet read, from `plaintext_read` on.
    plaintext: Vec<u8>,
    plaintext_read: usize,
    /// Records made and not yet taken by the socket, from `outgoing_written` on.
    outgoing: Vec<u8>,
    outgoing_written: usize,
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

fn refused(error: rustls::Error) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, TlsFailure::Refused(error))
}

/// Where rustls stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rest {
    /// The handshake needs more from the client.
    NeedInput,
    /// Application data may be sent.
    Traffic,
    /// Both sides have sent `close_notify`.
    Closed,
}

impl Tls {
    /// Runs rustls over the records received until it rests: decrypted plaintext goes to
    /// `plaintext`, records it makes (handshake messages, alerts, tickets, key updates) to
    /// `outgoing`. Each call of `process_tls_records` says how many received bytes it is done
    /// with; those are discarded before the next.
    fn advance(&mut self) -> Result<Rest, rustls::Error> {
        let buffers = &mut self.buffers;
        loop {
            let UnbufferedStatus { discard, state } = self.session.process_tls_records(&mut buffers.incoming);
            let rest = match state {
                Err(error) => Err(error),
                Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                    let mut result = Ok(None);
                    while let Some(record) = traffic.next_record() {
                        match record {
                            Ok(record) => buffers.plaintext.extend_from_slice(record.payload),
                            Err(error) => result = Err(error),
                        }
                    }
                    result
                }
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    let mut room = 1024;
                    loop {
                        let start = buffers.outgoing.len();
                        buffers.outgoing.resize(start + room, 0);
                        match encode.encode(&mut buffers.outgoing[start..]) {
                            Ok(count) => break buffers.outgoing.truncate(start + count),
                            Err(EncodeError::InsufficientSize(needed)) => {
                                buffers.outgoing.truncate(start);
                                room = needed.required_size;
                            }
                            Err(EncodeError::AlreadyEncoded) => break buffers.outgoing.truncate(start),
                        }
                    }
                    Ok(None)
                }
                // The records are in `outgoing`; the caller writes them.
                Ok(ConnectionState::TransmitTlsData(transmit)) => {
                    transmit.done();
                    Ok(None)
                }
                Ok(ConnectionState::PeerClosed) => {
                    self.peer_closed = true;
                    Ok(None)
                }
                Ok(ConnectionState::ReadEarlyData(mut early)) => {
                    // The configuration accepts no early data; none should come. Dropped if it does.
                    while early.next_record().is_some() {}
                    Ok(None)
                }
                Ok(ConnectionState::WriteTraffic(_)) => Ok(Some(Rest::Traffic)),
                Ok(ConnectionState::Closed) => Ok(Some(Rest::Closed)),
                Ok(_) => Ok(Some(Rest::NeedInput)),
            };
            buffers.incoming.drain(..discard);
            match rest {
                Ok(None) => {}
                Ok(Some(rest)) => return Ok(rest),
                Err(error) => {
                    self.failed = true;
                    return Err(error);
                }
            }
        }
    }

    /// After a failure: rustls made an alert for the client; put it among the records to write.
    fn collect_alert(&mut self) {
        for _ in 0..4 {
            let UnbufferedStatus { state, .. } = self.session.process_tls_records(&mut []);
            match state {
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    let start = self.buffers.outgoing.len();
                    self.buffers.outgoing.resize(start + 64, 0);
                    match encode.encode(&mut self.buffers.outgoing[start..]) {
                        Ok(count) => self.buffers.outgoing.truncate(start + count),
                        Err(_) => self.buffers.outgoing.truncate(start),
                    }
                }
                Ok(ConnectionState::TransmitTlsData(transmit)) => transmit.done(),
                _ => return,
            }
        }
    }

    /// Encrypts `plaintext` as one record onto `outgoing` (or, with `close`, a `close_notify`
    /// instead), once rustls rests in the traffic state: call `advance` first.
    fn encrypt(&mut self, plaintext: &[u8], close: bool) -> io::Result<()> {
        let outgoing = &mut self.buffers.outgoing;
        let UnbufferedStatus { state, .. } = self.session.process_tls_records(&mut []);
        let Ok(ConnectionState::WriteTraffic(mut traffic)) = state else {
            return Err(io::Error::other("TLS cannot send application data now"));
        };
        let mut room = plaintext.len() + 64;
        loop {
            let start = outgoing.len();
            outgoing.resize(start + room, 0);
            let result = if close {
                traffic.queue_close_notify(&mut outgoing[start..])
            } else {
                traffic.encrypt(plaintext, &mut outgoing[start..])
            };
            match result {
                Ok(count) => {
                    outgoing.truncate(start + count);
                    return Ok(());
                }
                Err(EncryptError::InsufficientSize(needed)) => {
                    outgoing.truncate(start);
                    room = needed.required_size;
                }
                Err(error) => {
                    outgoing.truncate(start);
                    return Err(io::Error::other(error.to_string()));
                }
            }
        }
    }

    /// Reads more records from `tcp` and runs rustls over them. `Ok(())` when rustls has
    /// rested; `WouldBlock` when the socket has nothing more.
    fn receive(&mut self, tcp: &mut TcpStream) -> io::Result<()> {
        if !self.first_byte_seen {
            self.first_byte_seen = check_first_byte(tcp)?;
        }
        let incoming = &mut self.buffers.incoming;
        if incoming.len() >= MAX_INCOMING_BYTES {
            return Err(io::Error::new(
                ErrorKind::InvalidData,
                "a TLS record or handshake message too large",
            ));
        }
        let start = incoming.len();
        incoming.resize(start + READ_BYTES, 0);
        match tcp.read(&mut incoming[start..]) {
            Ok(count) => {
                incoming.truncate(start + count);
                self.end_of_stream = count == 0;
            }
            Err(error) => {
                incoming.truncate(start);
                if incoming.is_empty() {
                    // Nothing partial waits: an idle connection holds no read buffer.
                    *incoming = Vec::new();
                }
                return Err(error);
            }
        }
        if let Err(error) = self.advance() {
            self.collect_alert();
            return Err(refused(error));
        }
        Ok(())
    }

    /// Hands out decrypted plaintext, if there is some; frees the buffer once it is all read.
    fn take_plaintext(&mut self, buffer: &mut [u8]) -> usize {
        let buffers = &mut self.buffers;
        let waiting = buffers.plaintext.get(buffers.plaintext_read..).unwrap_or_default();
        let count = waiting.len().min(buffer.len());
        buffer[..count].copy_from_slice(&waiting[..count]);
        buffers.plaintext_read += count;
        if buffers.plaintext_read == buffers.plaintext.len() {
            buffers.plaintext = Vec::new();
            buffers.plaintext_read = 0;
        }
        count
    }
}

/// Writes `buffers.outgoing` to `tcp` until all of it is out (`Ok`) or the socket would block.
fn write_records(tcp: &mut TcpStream, buffers: &mut Buffers) -> io::Result<()> {
    while buffers.outgoing_written < buffers.outgoing.len() {
        match tcp.write(&buffers.outgoing[buffers.outgoing_written..]) {
            Ok(0) => return Err(io::Error::new(ErrorKind::WriteZero, "the socket took no bytes")),
            Ok(count) => buffers.outgoing_written += count,
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    // All written: give the memory back.
    buffers.outgoing = Vec::new();
    buffers.outgoing_written = 0;
    Ok(())
}

/// `Ok` for `WouldBlock`: for writes that may wait for WRITABLE.
fn unless_would_block(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(error) if error.kind() == ErrorKind::WouldBlock => Ok(()),
        other => other,
    }
}

impl Transport {
    pub fn plain(tcp: TcpStream) -> Self {
        Transport { tcp, tls: None }
    }

    /// A TLS connection that encrypts at most `buffer_limit` bytes ahead of the socket.
    pub fn tls(tcp: TcpStream, session: UnbufferedServerConnection, buffer_limit: usize) -> Self {
        let tls = Tls {
            session,
            buffers: Buffers::default(),
            buffer_limit: buffer_limit.min(MAX_RECORD_PLAINTEXT),
            first_byte_seen: false,
            close_notify_sent: false,
            peer_closed: false,
            end_of_stream: false,
            failed: false,
        };
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

    /// Whether records wait for the socket to take them (rustls's "wants write").
    pub fn has_pending_output(&self) -> bool {
        self.tls.as_ref().is_some_and(|tls| tls.buffers.outgoing_written < tls.buffers.outgoing.len())
    }

    /// Writes the records made so far until none is left (`Ok`) or the socket would block.
    pub fn write_records(&mut self) -> io::Result<()> {
        match &mut self.tls {
            Some(tls) => write_records(&mut self.tcp, &mut tls.buffers),
            None => Ok(()),
        }
    }

    /// Ends our side: with TLS, a `close_notify` alert first (RFC 8446 section 6.1), so the
    /// client can tell the end from a truncation. `WouldBlock` if the alert has to wait for room;
    /// call again once writable.
    pub fn shutdown_write(&mut self) -> io::Result<()> {
        if let Some(tls) = &mut self.tls
            && !tls.failed
            && !std::mem::replace(&mut tls.close_notify_sent, true)
            // Before the handshake is done there is nothing to close cleanly.
            && tls.advance() == Ok(Rest::Traffic)
        {
            tls.encrypt(&[], true)?;
        }
        self.write_records()?;
        self.tcp.shutdown(Shutdown::Write)
    }

    /// Reads plaintext through TLS: what is decrypted already, else more records from the
    /// socket, until there is plaintext, the end, or `WouldBlock`.
    fn read_tls(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let Transport { tcp, tls: Some(tls) } = self else { return Ok(0) };
        loop {
            let count = tls.take_plaintext(buffer);
            if count > 0 || buffer.is_empty() {
                return Ok(count);
            }
            if tls.failed {
                return Err(io::Error::new(ErrorKind::InvalidData, "the TLS session failed"));
            }
            // A clean end after the client's close_notify; a truncation without one.
            if tls.peer_closed {
                return Ok(0);
            }
            if tls.end_of_stream {
                let truncated = "the TCP stream ended without close_notify";
                return Err(io::Error::new(ErrorKind::UnexpectedEof, truncated));
            }
            match tls.receive(tcp) {
                Ok(()) => {}
                Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            }
            // The handshake's replies go out as soon as they are made.
            unless_would_block(write_records(tcp, &mut tls.buffers))?;
        }
    }

    /// Encrypts and writes plaintext. Only once every record made before is written does it
    /// encrypt more, at most `buffer_limit` bytes as one record, so the records waiting stay
    /// under `tls::send_reserve`; the rest stays in the caller's queue, counted there. Returns
    /// the plaintext bytes taken, which may still be on their way as records; `WouldBlock` if
    /// none were taken.
    fn write_tls(&mut self, pieces: &[IoSlice<'_>]) -> io::Result<usize> {
        let Transport { tcp, tls: Some(tls) } = self else { return Ok(0) };
        write_records(tcp, &mut tls.buffers)?;
        if tls.failed {
            return Err(io::Error::new(ErrorKind::InvalidData, "the TLS session failed"));
        }
        match tls.advance() {
            Ok(Rest::Traffic) => {}
            // Application data waits for the handshake.
            Ok(Rest::NeedInput) => return Err(ErrorKind::WouldBlock.into()),
            Ok(Rest::Closed) => return Err(ErrorKind::BrokenPipe.into()),
            Err(error) => return Err(refused(error)),
        }
        // One record from as many pieces as fit: gathered on the stack unless one piece will do.
        let limit = tls.buffer_limit;
        let mut gathered = [0u8; MAX_RECORD_PLAINTEXT];
        let plaintext: &[u8] = match pieces.iter().find(|piece| !piece.is_empty()) {
            None => return Ok(0),
            Some(first) if first.len() >= limit || pieces.len() == 1 => &first[..first.len().min(limit)],
            Some(_) => {
                let mut length = 0;
                for piece in pieces {
                    let count = piece.len().min(limit - length);
                    gathered[length..length + count].copy_from_slice(&piece[..count]);
                    length += count;
                    if length == limit {
                        break;
                    }
                }
                &gathered[..length]
            }
        };
        tls.encrypt(plaintext, false)?;
        unless_would_block(write_records(tcp, &mut tls.buffers))?;
        Ok(plaintext.len())
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

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::sync::Arc;
    use std::time::Duration;

    use mio::{Events, Interest, Poll, Token};
    use rustls::pki_types::{PrivatePkcs8KeyDer, ServerName};
    use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, StreamOwned};

    use super::*;

    /// A server configuration with a fresh certificate for `localhost`, and a client trusting it.
    fn configurations() -> (Arc<ServerConfig>, Arc<ClientConfig>) {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let certificate = certified.cert.der().clone();
        let key = PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![certificate.clone()], key.into())
            .unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(certificate).unwrap();
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server), Arc::new(client))
    }

    /// Reads from `transport` until `wanted` bytes came, waiting on `poll` for readiness.
    fn read_exactly(transport: &mut Transport, poll: &mut Poll, wanted: usize) -> Vec<u8> {
        let mut received = Vec::new();
        let mut events = Events::with_capacity(4);
        while received.len() < wanted {
            let mut chunk = [0u8; 7]; // Small reads: plaintext is handed out across calls.
            match transport.read(&mut chunk) {
                Ok(0) => panic!("the stream ended after {received:?}"),
                Ok(count) => received.extend_from_slice(&chunk[..count]),
                Err(error) if error.kind() == ErrorKind::WouldBlock => {
                    poll.poll(&mut events, Some(Duration::from_secs(10))).unwrap();
                    assert!(!events.is_empty(), "nothing arrived within 10 s");
                }
                Err(error) => panic!("read: {error}"),
            }
        }
        received
    }

    #[test]
    fn an_idle_tls_connection_holds_no_buffers() {
        let (server_config, client_config) = configurations();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let client = std::thread::spawn(move || {
            let tcp = std::net::TcpStream::connect(address).unwrap();
            tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let name = ServerName::try_from("localhost").unwrap();
            let mut stream = StreamOwned::new(ClientConnection::new(client_config, name).unwrap(), tcp);
            stream.write_all(b"hello over TLS").unwrap();
            let mut reply = [0u8; 11];
            stream.read_exact(&mut reply).unwrap();
            assert_eq!(&reply, b"hello again");
            stream // Kept open: the server side is then idle, not closed.
        });
        let (tcp, _) = listener.accept().unwrap();
        tcp.set_nonblocking(true).unwrap();
        let mut tcp = mio::net::TcpStream::from_std(tcp);
        let mut poll = Poll::new().unwrap();
        poll.registry().register(&mut tcp, Token(0), Interest::READABLE).unwrap();
        let session = UnbufferedServerConnection::new(server_config).unwrap();
        let mut transport = Transport::tls(tcp, session, 1024);

        assert_eq!(read_exactly(&mut transport, &mut poll, 14), b"hello over TLS");
        // Drained, as the reactor drains every readable socket.
        let would_block = transport.read(&mut [0u8; 16]).map_err(|error| error.kind());
        assert_eq!(would_block, Err(ErrorKind::WouldBlock));
        // Two pieces, one record; then the socket takes it all.
        let taken = transport.write_vectored(&[IoSlice::new(b"hello"), IoSlice::new(b" again")]).unwrap();
        assert_eq!(taken, 11);
        transport.flush().unwrap();
        let _open = client.join().unwrap();

        let tls = transport.tls.as_ref().unwrap();
        let buffers = &tls.buffers;
        let held = [buffers.incoming.capacity(), buffers.plaintext.capacity(), buffers.outgoing.capacity()];
        assert_eq!(held, [0, 0, 0], "incoming, plaintext and outgoing bytes held while idle");
        assert!(!transport.has_pending_output());
    }
}
