//! The byte stream under a connection: a TCP stream, or TLS over one. Everything above it (the
//! request head, tungstenite, the output queue) reads and writes plaintext through `Read` and
//! `Write` and never knows which; only the reactor's poll registration reaches the TCP stream.
//!
//! TLS is rustls's unbuffered `ServerConnection`, a state machine without I/O: records go in,
//! plaintext and records to send come out, and this file moves the bytes (`tls_session.rs` holds
//! the session and its buffers). The buffers are ours, each freed as soon as it is empty, so an
//! idle TLS connection holds no buffer at all
//! (rustls's buffered API keeps a 4 KiB read buffer for each connection for good: 40 MiB at
//! 10,000 idle connections, twice what the rest of such a connection costs). Output is encrypted
//! as it is written, one record of at most `tls::buffer_limit` bytes ahead of the socket: a
//! broadcast frame stays one shared encoding in every queue, and each recipient encrypts its own
//! copy only when its socket takes it.

use std::cell::RefCell;
use std::error::Error;
use std::fmt;
use std::io::{self, ErrorKind, IoSlice, Read, Write};
use std::net::Shutdown;

use mio::net::TcpStream;
use rustls::server::UnbufferedServerConnection;
use socket2::SockRef;

use super::tls_session::{MAX_RECORD_PLAINTEXT, Rest, Tls, unless_would_block, write_records};

thread_local! {
    /// Where `write_tls` joins several small pieces into one record's plaintext (at most
    /// `MAX_RECORD_PLAINTEXT` bytes, reserved once).
    static GATHERED: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(MAX_RECORD_PLAINTEXT));
}

pub struct Transport {
    tcp: TcpStream,
    /// The TLS session, if the listener speaks TLS. Boxed: it is over a kilobyte, and a slab slot
    /// should stay small whatever the phase.
    tls: Option<Box<Tls>>,
}

/// Why a TLS connection could not go on.
#[derive(Debug)]
pub enum TlsFailure {
    /// The client's first byte is not a TLS handshake record: plain HTTP, or garbage.
    NotTls,
    /// rustls refused what the client sent; its alert is queued for the client.
    Refused(rustls::Error),
    /// A record or handshake message larger than this server holds for a client
    /// (`MAX_INCOMING_BYTES`), refused without an alert.
    TooLarge,
}

impl fmt::Display for TlsFailure {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsFailure::NotTls => formatter.write_str("not TLS (plain HTTP on the TLS port?)"),
            TlsFailure::Refused(error) => write!(formatter, "TLS: {error}"),
            TlsFailure::TooLarge => formatter.write_str("TLS: a record or handshake message too large"),
        }
    }
}

impl Error for TlsFailure {}

/// The `TlsFailure` an I/O error carries, if it carries one.
pub fn tls_failure(error: &io::Error) -> Option<&TlsFailure> {
    error.get_ref().and_then(|source| source.downcast_ref::<TlsFailure>())
}

pub(super) fn refused(error: rustls::Error) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, TlsFailure::Refused(error))
}

impl Transport {
    pub fn plain(tcp: TcpStream) -> Self {
        Transport { tcp, tls: None }
    }

    /// A TLS connection that encrypts at most `buffer_limit` bytes ahead of the socket.
    pub fn tls(tcp: TcpStream, session: UnbufferedServerConnection, buffer_limit: usize) -> Self {
        Transport { tcp, tls: Some(Box::new(Tls::new(session, buffer_limit))) }
    }

    /// The TCP stream, for the poll's registration and for socket options.
    pub fn tcp_mut(&mut self) -> &mut TcpStream {
        &mut self.tcp
    }

    /// The same socket without TLS, to answer a client that does not speak it in plain text.
    pub fn into_plain(self) -> Transport {
        Transport::plain(self.tcp)
    }

    /// Whether this is TLS, whose end is a `close_notify` and not only the TCP stream's.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Whether rustls refused the connection: nothing more can be read or sent through it
    /// (only the alert it made, if still waiting).
    pub fn tls_failed(&self) -> bool {
        self.tls.as_ref().is_some_and(|tls| tls.failed)
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
                Err(error) => {
                    // A refusal's alert goes out before the error does: a connection that fails
                    // once open is dropped at once, and its alert would be lost with it. If the
                    // socket cannot take it now, it is lost; the refusal is what matters here.
                    if tls.failed {
                        let _ = write_records(tcp, &mut tls.buffers);
                    }
                    return Err(error);
                }
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
        // One record from as many pieces as fit. One piece is encrypted where it is; several are
        // first copied into one scratch buffer for the whole thread (the reactor's), which keeps
        // its capacity, so a gathered write neither allocates nor zeroes 16 KiB each time.
        let limit = tls.buffer_limit;
        let Some(first) = pieces.iter().find(|piece| !piece.is_empty()) else { return Ok(0) };
        let taken = if first.len() >= limit || pieces.len() == 1 {
            let plaintext = &first[..first.len().min(limit)];
            tls.encrypt(plaintext, false)?;
            plaintext.len()
        } else {
            GATHERED.with_borrow_mut(|gathered| {
                gathered.clear();
                for piece in pieces {
                    let count = piece.len().min(limit - gathered.len());
                    gathered.extend_from_slice(&piece[..count]);
                    if gathered.len() == limit {
                        break;
                    }
                }
                tls.encrypt(gathered, false).map(|()| gathered.len())
            })?
        };
        unless_would_block(write_records(tcp, &mut tls.buffers))?;
        Ok(taken)
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

    /// Plain TCP goes out with `sendmsg`, not `writev`: the same gathered write, without the
    /// file layer `writev` passes through first (`vfs_writev`, `fdget_pos`: about 7% of the
    /// server's CPU in a 1,000-member fanout).
    fn write_vectored(&mut self, pieces: &[IoSlice<'_>]) -> io::Result<usize> {
        if self.tls.is_some() {
            self.write_tls(pieces)
        } else {
            SockRef::from(&self.tcp).send_vectored(pieces)
        }
    }

    /// Writes what rustls holds; `WouldBlock` if some of it has to wait.
    fn flush(&mut self) -> io::Result<()> {
        self.write_records()
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::net::TcpListener;
    use std::sync::Arc;
    use std::time::Duration;

    use mio::{Events, Interest, Poll, Token};
    use rustls::pki_types::{PrivatePkcs8KeyDer, ServerName};
    use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, StreamOwned};

    use super::*;

    /// A server configuration with a fresh certificate for `localhost`, and a client trusting it.
    pub(in crate::reactor) fn configurations() -> (Arc<ServerConfig>, Arc<ClientConfig>) {
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
