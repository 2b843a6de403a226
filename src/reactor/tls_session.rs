//! One TLS session on the reactor: rustls's unbuffered `ServerConnection` (a state machine
//! without I/O: records in, plaintext and records to send out) and the buffers this file keeps for
//! it, each freed as soon as it is empty. `transport.rs` calls it to read and write; the rest of the
//! reactor never sees it.

use std::io::{self, ErrorKind, Read, Write};

use mio::net::TcpStream;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};

use super::transport::{TlsFailure, refused};

/// The first byte of every TLS connection: a handshake record (RFC 8446 section 5.1).
const HANDSHAKE_RECORD: u8 = 0x16;
/// How much room each read from the socket gets: a typical record, and half the largest.
const READ_BYTES: usize = 8 * 1024;
/// Received bytes past which no more are read until rustls takes some: one whole record, 16 KiB
/// plus 256 and its 5-byte header (RFC 8446 section 5.2), which rustls takes as soon as it is
/// complete. Only a handshake message spanning records would wait longer, joined in this buffer;
/// a client's are a few KiB (a ClientHello with post-quantum key shares is under 2 KiB), so one
/// larger than a record is refused here rather than held, up to rustls's own 64 KiB, for every
/// socket a client opens. With the read's room, a connection holds at most about 24 KiB here.
const MAX_INCOMING_BYTES: usize = 16 * 1024 + 256 + 5;
/// The most plaintext in one record (RFC 8446 section 5.1).
pub(super) const MAX_RECORD_PLAINTEXT: usize = 16 * 1024;

/// A TLS connection's state: the session, its buffers, and how far it has come.
pub(super) struct Tls {
    pub(super) session: UnbufferedServerConnection,
    pub(super) buffers: Buffers,
    /// The most plaintext encrypted ahead of the socket (`tls::buffer_limit`).
    pub(super) buffer_limit: usize,
    /// Whether the client's first byte was looked at.
    pub(super) first_byte_seen: bool,
    /// Whether our `close_notify` is queued.
    pub(super) close_notify_sent: bool,
    /// The client's `close_notify` arrived: its stream has ended cleanly.
    pub(super) peer_closed: bool,
    /// The TCP stream ended (with or without `close_notify`).
    pub(super) end_of_stream: bool,
    /// rustls refused the connection; nothing more is read or encrypted.
    pub(super) failed: bool,
}

/// The bytes on their way through TLS. Each is empty and unallocated when there is nothing in
/// it, which is an idle connection's state.
#[derive(Default)]
pub(super) struct Buffers {
    /// Records received and not yet taken by rustls: a partial record, between reads.
    pub(super) incoming: Vec<u8>,
    /// Plaintext decrypted and not yet read, from `plaintext_read` on.
    pub(super) plaintext: Vec<u8>,
    pub(super) plaintext_read: usize,
    /// Records made and not yet taken by the socket, from `outgoing_written` on.
    pub(super) outgoing: Vec<u8>,
    pub(super) outgoing_written: usize,
}

/// Where rustls stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Rest {
    /// The handshake needs more from the client.
    NeedInput,
    /// Application data may be sent.
    Traffic,
    /// Both sides have sent `close_notify`.
    Closed,
}

impl Tls {
    /// A session that encrypts at most `buffer_limit` bytes ahead of the socket.
    pub(super) fn new(session: UnbufferedServerConnection, buffer_limit: usize) -> Self {
        Tls {
            session,
            buffers: Buffers::default(),
            buffer_limit: buffer_limit.min(MAX_RECORD_PLAINTEXT),
            first_byte_seen: false,
            close_notify_sent: false,
            peer_closed: false,
            end_of_stream: false,
            failed: false,
        }
    }

    /// Runs rustls over the records received until it rests: decrypted plaintext goes to
    /// `plaintext`, records it makes (handshake messages, alerts, tickets, key updates) to
    /// `outgoing`. Each call of `process_tls_records` says how many received bytes it is done
    /// with; those are discarded before the next.
    pub(super) fn advance(&mut self) -> Result<Rest, rustls::Error> {
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
    /// rustls hands out what it queued before it looks at its failed state again, so one more
    /// `advance` collects the alert (`EncodeTlsData`, `TransmitTlsData`) and then meets the
    /// error again, or rests. It runs over the real received bytes like every call: rustls's
    /// deframer may still hold positions into them (a second handshake message in the record
    /// that failed), and an empty slice in their place made it index out of bounds and panic.
    pub(super) fn collect_alert(&mut self) {
        let _ = self.advance();
    }

    /// Encrypts `plaintext` as one record onto `outgoing` (or, with `close`, a `close_notify`
    /// instead), once rustls rests in the traffic state: call `advance` first.
    pub(super) fn encrypt(&mut self, plaintext: &[u8], close: bool) -> io::Result<()> {
        let Tls { session, buffers, .. } = self;
        // The received bytes go in even though none are new: after the handshake, a handshake
        // message the client began in one record and has not finished (a key update) stays in
        // `incoming`, and rustls reads from where it left off in it on every call. (With an
        // empty slice in their place, rustls 0.23 indexed past its end and panicked.)
        let (discard, result) = {
            let UnbufferedStatus { discard, state } = session.process_tls_records(&mut buffers.incoming);
            let result = match state {
                Ok(ConnectionState::WriteTraffic(mut traffic)) => {
                    encrypt_onto(&mut buffers.outgoing, plaintext.len() + 64, |room| {
                        if close {
                            traffic.queue_close_notify(room)
                        } else {
                            traffic.encrypt(plaintext, room)
                        }
                    })
                }
                _ => Err(io::Error::other("TLS cannot send application data now")),
            };
            (discard, result)
        };
        buffers.incoming.drain(..discard);
        result
    }

    /// Reads more records from `tcp` and runs rustls over them. `Ok(())` when rustls has
    /// rested; `WouldBlock` when the socket has nothing more.
    pub(super) fn receive(&mut self, tcp: &mut TcpStream) -> io::Result<()> {
        if !self.first_byte_seen {
            self.first_byte_seen = check_first_byte(tcp)?;
        }
        let incoming = &mut self.buffers.incoming;
        if incoming.len() >= MAX_INCOMING_BYTES {
            return Err(io::Error::new(ErrorKind::InvalidData, TlsFailure::TooLarge));
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
    pub(super) fn take_plaintext(&mut self, buffer: &mut [u8]) -> usize {
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
pub(super) fn write_records(tcp: &mut TcpStream, buffers: &mut Buffers) -> io::Result<()> {
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

/// Appends what `encrypt` makes to `outgoing`, giving it `room` bytes first and as many as
/// rustls asks for if that was too few.
fn encrypt_onto(
    outgoing: &mut Vec<u8>,
    mut room: usize,
    mut encrypt: impl FnMut(&mut [u8]) -> Result<usize, EncryptError>,
) -> io::Result<()> {
    loop {
        let start = outgoing.len();
        outgoing.resize(start + room, 0);
        match encrypt(&mut outgoing[start..]) {
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

/// `Ok` for `WouldBlock`: for writes that may wait for WRITABLE.
pub(super) fn unless_would_block(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(error) if error.kind() == ErrorKind::WouldBlock => Ok(()),
        other => other,
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

#[cfg(test)]
mod tests {
    use rustls::crypto::cipher::{MessageEncrypter, OutboundChunks, OutboundPlainMessage};
    use rustls::pki_types::ServerName;
    use rustls::{
        ClientConnection, ConnectionTrafficSecrets, ContentType, ProtocolVersion, SupportedCipherSuite,
    };

    use super::super::transport::tests::configurations;
    use super::*;

    /// A TLS 1.3 key update (RFC 8446 section 4.6.3): handshake type 24, a one-byte body,
    /// `update_not_requested`.
    const KEY_UPDATE: [u8; 5] = [24, 0, 0, 1, 0];

    /// A server session and an in-memory rustls client, handshaken: the client's records handed
    /// to the server one byte at a time, with an `advance` after each, the server's to the
    /// client whole. The client can give up its secrets (`RawClient`).
    fn handshaken() -> (Tls, ClientConnection) {
        let (server_config, client_config) = configurations();
        let mut client_config = (*client_config).clone();
        client_config.enable_secret_extraction = true;
        let name = ServerName::try_from("localhost").unwrap();
        let mut client = ClientConnection::new(client_config.into(), name).unwrap();
        let mut tls = Tls::new(UnbufferedServerConnection::new(server_config).unwrap(), 1024);
        for _ in 0..10 {
            let mut records = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut records).unwrap();
            }
            for byte in records {
                tls.buffers.incoming.push(byte);
                tls.advance().unwrap();
            }
            let replies = std::mem::take(&mut tls.buffers.outgoing);
            let mut replies = &replies[..];
            while !replies.is_empty() {
                client.read_tls(&mut replies).unwrap();
                client.process_new_packets().unwrap();
            }
            if !client.is_handshaking() && !client.wants_write() && tls.advance() == Ok(Rest::Traffic) {
                return (tls, client);
            }
        }
        panic!("the handshake did not finish");
    }

    /// The client's records from here on, made outside rustls with its traffic secret: rustls's
    /// client never splits a handshake message across records, which a peer may.
    struct RawClient {
        encrypter: Box<dyn MessageEncrypter>,
        sequence: u64,
    }

    impl RawClient {
        fn take_over(client: ClientConnection) -> RawClient {
            let Some(SupportedCipherSuite::Tls13(suite)) = client.negotiated_cipher_suite() else {
                panic!("not TLS 1.3");
            };
            let (sequence, secrets) = client.dangerous_extract_secrets().unwrap().tx;
            let (key, iv) = match secrets {
                ConnectionTrafficSecrets::Aes128Gcm { key, iv }
                | ConnectionTrafficSecrets::Aes256Gcm { key, iv }
                | ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (key, iv),
                _ => panic!("an AEAD this test does not know"),
            };
            RawClient { encrypter: suite.aead_alg.encrypter(key, iv), sequence }
        }

        /// One encrypted record of `typ` holding `payload`.
        fn record(&mut self, typ: ContentType, payload: &[u8]) -> Vec<u8> {
            let payload = OutboundChunks::Single(payload);
            let message = OutboundPlainMessage { typ, version: ProtocolVersion::TLSv1_2, payload };
            let record = self.encrypter.encrypt(message, self.sequence).unwrap();
            self.sequence += 1;
            record.encode()
        }
    }

    #[test]
    fn a_bad_handshake_message_with_another_behind_it_gets_an_alert_not_a_panic() {
        let (server_config, _) = configurations();
        let mut tls = Tls::new(UnbufferedServerConnection::new(server_config).unwrap(), 1024);
        // One handshake record, two messages: an empty ClientHello (refused), then one that
        // rustls's deframer holds as positions into `incoming` when the first fails.
        tls.buffers.incoming.extend_from_slice(&[0x16, 3, 1, 0, 8, 1, 0, 0, 0, 1, 0, 0, 0]);
        assert!(tls.advance().is_err());
        tls.collect_alert();
        let alert = &tls.buffers.outgoing;
        assert_eq!(alert.first(), Some(&0x15), "an alert record: {alert:?}");
        assert_eq!(alert.get(5), Some(&2), "a fatal alert: {alert:?}");
    }

    /// A handshaken session that has received the first `bytes` of a key update in a record of
    /// their own, and the client that sent them.
    fn with_a_key_update_begun(bytes: usize) -> (Tls, RawClient) {
        let (mut tls, client) = handshaken();
        let mut raw = RawClient::take_over(client);
        tls.buffers.incoming.extend(raw.record(ContentType::Handshake, &KEY_UPDATE[..bytes]));
        assert_eq!(tls.advance(), Ok(Rest::Traffic));
        (tls, raw)
    }

    #[test]
    fn half_a_key_update_does_not_stop_the_server_writing() {
        let (mut tls, mut raw) = with_a_key_update_begun(2);
        // The beginning of the message waits in `incoming`; writing must not disturb it.
        tls.encrypt(b"a heartbeat", false).unwrap();
        tls.encrypt(b"a broadcast", false).unwrap();
        tls.buffers.incoming.extend(raw.record(ContentType::Handshake, &KEY_UPDATE[2..]));
        assert_eq!(tls.advance(), Ok(Rest::Traffic));
        assert!(tls.buffers.incoming.is_empty(), "the key update was taken whole");
        tls.encrypt(b"after the update", false).unwrap();
    }

    #[test]
    fn half_a_key_update_does_not_stop_the_close_notify() {
        let (mut tls, _) = with_a_key_update_begun(1);
        // What `shutdown_write` does once the close handshake is over.
        tls.encrypt(&[], true).unwrap();
        assert!(!tls.buffers.outgoing.is_empty(), "the close_notify is queued");
    }
}
