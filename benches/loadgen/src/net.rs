//! The client side of the load generator: one thread, one `mio::Poll`, every socket in a slab,
//! a non-blocking HTTP upgrade and a hand-rolled minimal WebSocket client codec (masked frames
//! out; unmasked text, ping, pong, close and continuation frames in). A timerfd gives the
//! open-loop schedule sub-millisecond wake-ups (epoll's own timeout is in whole milliseconds).
//!
//! `wss://` URLs speak TLS through rustls's buffered client (`ClientConnection`), which the
//! engine drives like the server drives its sessions: records in with `read_tls`, plaintext out of
//! `reader`, plaintext in with `writer`, records out with `write_tls`, every loop until
//! `WouldBlock`. The load generator's memory does not matter, so rustls keeps the buffers.
//!
//! The soak also misbehaves on purpose through it: raw bytes (half a request, half a frame, a
//! frame no client may send), a socket that stops reading, a reset instead of a close.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use slab::Slab;
use socket2::{Domain, Protocol, SockRef, Socket, Type};

const TIMER: Token = Token(usize::MAX - 1);
/// One read takes at most this much; a read that returns less has drained the socket.
const SCRATCH: usize = 256 * 1024;
/// Readiness events taken per `epoll_wait`: every member of a 1,000-member fan-out in one call.
const EVENTS: usize = 1024;
/// Largest frame accepted from a server (a welcome to a huge room can be big).
const MAX_FRAME: usize = 64 * 1024 * 1024;

/// Where to connect: `ws://host:port/path?query` or `wss://...`.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub host: String,
    /// Path and query as given, e.g. `/` or `/chat?x=1`.
    pub path: String,
    /// Whether the URL is `wss://`.
    pub secure: bool,
    /// With `wss://`: whom to trust and which name to check (`trust`).
    pub tls: Option<Tls>,
}

/// The client side of TLS: the configuration every connection starts from, and the name the
/// server's certificate must carry.
#[derive(Debug, Clone)]
pub struct Tls {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl Target {
    pub fn parse(url: &str, allow_non_loopback: bool) -> Result<Target, String> {
        let (secure, rest, default_port) = if let Some(rest) = url.strip_prefix("wss://") {
            (true, rest, 443)
        } else if let Some(rest) = url.strip_prefix("ws://") {
            (false, rest, 80)
        } else {
            return Err(format!("`{url}`: only ws:// and wss:// URLs are supported"));
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(at) => (&rest[..at], rest[at..].to_owned()),
            None => (rest, "/".to_owned()),
        };
        let path = if path.starts_with('?') { format!("/{path}") } else { path };
        let with_port = if authority.rsplit_once(':').is_some_and(|(_, port)| port.parse::<u16>().is_ok()) {
            authority.to_owned()
        } else {
            format!("{authority}:{default_port}")
        };
        let addr = with_port
            .to_socket_addrs()
            .map_err(|error| format!("cannot resolve `{authority}`: {error}"))?
            .next()
            .ok_or_else(|| format!("`{authority}` resolves to nothing"))?;
        if !addr.ip().is_loopback() && !allow_non_loopback {
            return Err(format!("{addr} is not a loopback address (use --allow-non-loopback to override)"));
        }
        Ok(Target { addr, host: authority.to_owned(), path, secure, tls: None })
    }

    /// For `wss://`: trusts the certificates in `ca_pem` (only those) and checks the server's
    /// certificate for the URL's host name (an address is checked as an address).
    pub fn trust(&mut self, ca_pem: &Path) -> Result<(), String> {
        let mut roots = RootCertStore::empty();
        for certificate in rustls::pki_types::CertificateDer::pem_file_iter(ca_pem)
            .map_err(|error| format!("{}: {error}", ca_pem.display()))?
        {
            let certificate = certificate.map_err(|error| format!("{}: {error}", ca_pem.display()))?;
            roots.add(certificate).map_err(|error| format!("{}: {error}", ca_pem.display()))?;
        }
        let host = self.host.rsplit_once(':').map_or(self.host.as_str(), |(host, _)| host);
        let name = ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
            .map_err(|error| format!("`{host}` is not a server name: {error}"))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|error| error.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        self.tls = Some(Tls { config: Arc::new(config), name });
        Ok(())
    }

    /// The request target with extra query parameters appended.
    pub fn with_query(&self, extra: &str) -> String {
        if extra.is_empty() {
            self.path.clone()
        } else if self.path.contains('?') {
            format!("{}&{extra}", self.path)
        } else {
            format!("{}?{extra}", self.path)
        }
    }
}

/// What the engine reports to the scenario.
pub trait Handler {
    /// A text message (a complete one, reassembled if fragmented). `now_us` is microseconds since
    /// the engine's start, taken once per `read` call.
    fn on_text(&mut self, key: usize, payload: &[u8], now_us: u64);
    /// The connection is over: refused, reset, closed by the server, or failed.
    fn on_closed(&mut self, key: usize, why: &str);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The upgrade request is queued (or partly written); waiting for the 101.
    Upgrading,
    Open,
    Closed,
}

struct Conn {
    stream: TcpStream,
    /// The TLS session, for `wss://`.
    tls: Option<Box<ClientConnection>>,
    phase: Phase,
    /// Bytes read but not yet parsed (a partial frame or response head).
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    wpos: usize,
    mask: [u8; 4],
    /// The message being reassembled from fragments, if any.
    fragments: Option<Vec<u8>>,
    /// Reading has stopped, as in a stopped process: only a reset or a hang-up is noticed.
    paused: bool,
    /// We sent a close frame: the server's close frame is its reply and gets none.
    close_sent: bool,
}

/// How to open a socket: from which loopback address, with what receive buffer.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// SO_RCVBUF, for a client that should fill up soon once it stops reading.
    pub receive_buffer: Option<usize>,
    /// Another server than the target's (another node of a cluster), same request.
    pub addr: Option<SocketAddr>,
}

pub struct Engine {
    poll: Poll,
    events: Events,
    conns: Slab<Conn>,
    target: Target,
    scratch: Box<[u8]>,
    /// The events of one `turn`, copied out of `events` (kept to reuse its allocation).
    ready: Vec<(Token, bool, bool, bool)>,
    timer: OwnedFd,
    /// When the timer is armed to fire, if it has not fired yet: arming it again for the same
    /// instant (every turn of a step's loop between two sends) is skipped, a syscall saved.
    armed: Option<Instant>,
    start: Instant,
    rng: u64,
    /// Connections that have received the 101.
    pub upgraded: usize,
    /// Counters: `read` calls that returned data, and `poll` calls.
    pub reads: u64,
    pub polls: u64,
    /// Loopback source addresses to spread connections over (127.0.0.1 up to 127.0.0.N), so that
    /// churn never runs out of ephemeral ports; 0 or 1 lets the kernel pick as usual.
    sources: u8,
    next_source: u8,
}

impl Engine {
    pub fn new(target: Target, start: Instant) -> io::Result<Engine> {
        let poll = Poll::new()?;
        // SAFETY: plain syscall; the result is checked before use.
        let fd =
            unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nothing else.
        let timer = unsafe { OwnedFd::from_raw_fd(fd) };
        poll.registry().register(&mut SourceFd(&timer.as_raw_fd()), TIMER, Interest::READABLE)?;
        let seed = start.elapsed().as_nanos() as u64 ^ 0x9E37_79B9_7F4A_7C15 ^ u64::from(std::process::id());
        Ok(Engine {
            poll,
            events: Events::with_capacity(EVENTS),
            conns: Slab::new(),
            target,
            scratch: vec![0u8; SCRATCH].into_boxed_slice(),
            ready: Vec::with_capacity(EVENTS),
            timer,
            armed: None,
            start,
            rng: seed | 1,
            upgraded: 0,
            reads: 0,
            polls: 0,
            sources: 0,
            next_source: 0,
        })
    }

    /// Spreads new connections over `count` loopback source addresses, 127.0.0.1 and up. Each has
    /// its own range of ephemeral ports: 20,000 connections plus a churn of hundreds a second
    /// (whose closes leave ports in TIME_WAIT for a minute) would use up the one range of one.
    pub fn spread_sources(&mut self, count: u8) {
        self.sources = count;
    }

    pub fn micros(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.start).as_micros() as u64
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Starts a connection whose upgrade asks for `request_target` (path and query). Returns its
    /// key; failures are reported later through `Handler::on_closed`, or here if `connect` itself
    /// fails at once.
    pub fn connect(&mut self, request_target: &str) -> io::Result<usize> {
        self.connect_to(None, request_target)
    }

    /// `connect`, to `addr` (another node of the same cluster) if given.
    pub fn connect_to(&mut self, addr: Option<SocketAddr>, request_target: &str) -> io::Result<usize> {
        let request = self.upgrade_request(request_target);
        self.open(request.into_bytes(), Options { addr, ..Options::default() })
    }

    /// The HTTP upgrade request for `request_target`, with a fresh key.
    pub fn upgrade_request(&mut self, request_target: &str) -> String {
        let mut key_bytes = [0u8; 16];
        key_bytes[..8].copy_from_slice(&self.next_random().to_le_bytes());
        key_bytes[8..].copy_from_slice(&self.next_random().to_le_bytes());
        format!(
            "GET {request_target} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n\r\n",
            self.target.host,
            base64(&key_bytes)
        )
    }

    /// Starts a connection that sends `first` (an upgrade request, or part of one) and then waits
    /// for a 101, like `connect`.
    pub fn open(&mut self, first: Vec<u8>, options: Options) -> io::Result<usize> {
        let mut stream = self.new_stream(options)?;
        let tls = match &self.target.tls {
            Some(tls) => {
                let mut session =
                    ClientConnection::new(tls.config.clone(), tls.name.clone()).map_err(io::Error::other)?;
                // The upgrade request waits in rustls until the handshake is done; no limit.
                session.set_buffer_limit(None);
                Some(Box::new(session))
            }
            None => None,
        };
        let mask = (self.next_random() as u32).to_le_bytes();
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        self.poll.registry().register(&mut stream, Token(key), Interest::READABLE | Interest::WRITABLE)?;
        entry.insert(Conn {
            stream,
            tls,
            phase: Phase::Upgrading,
            rbuf: Vec::new(),
            wbuf: first,
            wpos: 0,
            mask,
            fragments: None,
            paused: false,
            close_sent: false,
        });
        // The connect is usually complete at once on loopback; if not, the write waits for
        // WRITABLE.
        Ok(key)
    }

    fn new_stream(&mut self, options: Options) -> io::Result<TcpStream> {
        let addr = options.addr.unwrap_or(self.target.addr);
        if self.sources <= 1 && options.receive_buffer.is_none() {
            let stream = TcpStream::connect(addr)?;
            stream.set_nodelay(true)?;
            return Ok(stream);
        }
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_nonblocking(true)?;
        socket.set_tcp_nodelay(true)?;
        if let Some(bytes) = options.receive_buffer {
            socket.set_recv_buffer_size(bytes)?;
        }
        if self.sources > 1 && addr.is_ipv4() {
            // IP_BIND_ADDRESS_NO_PORT: the port is picked at connect, where the kernel checks the
            // whole address pair, rather than at bind, where it would keep ports to itself.
            let on: libc::c_int = 1;
            // SAFETY: a valid socket and an int-sized option value.
            unsafe {
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&socket),
                    libc::IPPROTO_IP,
                    libc::IP_BIND_ADDRESS_NO_PORT,
                    (&on as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            self.next_source = self.next_source % self.sources + 1;
            let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, self.next_source));
            socket.bind(&SocketAddr::new(source, 0).into())?;
        }
        match socket.connect(&addr.into()) {
            Ok(()) => {}
            Err(error) if error.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(error) => return Err(error),
        }
        Ok(TcpStream::from_std(socket.into()))
    }

    /// Queues a masked text frame; call `flush` (or let the loop do it on WRITABLE) to send.
    pub fn queue_text(&mut self, key: usize, payload: &[u8]) {
        if let Some(conn) = self.conns.get_mut(key)
            && conn.phase == Phase::Open
        {
            let mask = conn.mask;
            push_frame(&mut conn.wbuf, 0x1, payload, mask);
        }
    }

    /// Queues bytes as they are, in any phase: half a request head, half a frame, a frame no
    /// client may send. Call `flush` to send.
    pub fn queue_raw(&mut self, key: usize, bytes: &[u8]) {
        if let Some(conn) = self.conns.get_mut(key)
            && conn.phase != Phase::Closed
        {
            conn.wbuf.extend_from_slice(bytes);
        }
    }

    /// Starts the close handshake: a close frame with `code`; the server's close frame that
    /// answers it ends the connection (`Handler::on_closed` says "server sent close ...").
    pub fn close(&mut self, key: usize, code: u16, handler: &mut impl Handler) {
        if let Some(conn) = self.conns.get_mut(key)
            && conn.phase == Phase::Open
        {
            let mask = conn.mask;
            push_frame(&mut conn.wbuf, 0x8, &code.to_be_bytes(), mask);
            conn.close_sent = true;
        }
        self.flush(key, handler);
    }

    /// Stops reading from the connection, as a stopped process would: its receive buffer fills,
    /// then the server's send buffer. Only a reset or a hang-up is still noticed.
    pub fn pause(&mut self, key: usize) {
        if let Some(conn) = self.conns.get_mut(key) {
            conn.paused = true;
        }
    }

    /// Forgets the connection and closes its socket: with a reset (`SO_LINGER` 0, an abortive
    /// close) if `reset`, else with a plain FIN. No `Handler::on_closed` follows.
    pub fn remove(&mut self, key: usize, reset: bool) {
        let Some(mut conn) = self.conns.try_remove(key) else { return };
        if conn.phase == Phase::Open {
            self.upgraded -= 1;
        }
        if reset {
            let _ = SockRef::from(&conn.stream).set_linger(Some(Duration::ZERO));
        }
        let _ = self.poll.registry().deregister(&mut conn.stream);
    }

    /// Connections in the slab, open or not yet removed.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// Writes what is queued for `key` as far as the socket takes it.
    pub fn flush(&mut self, key: usize, handler: &mut impl Handler) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        if let Err(error) = flush_conn(conn) {
            self.fail(key, &format!("write: {error}"), handler);
        }
    }

    /// Closes and forgets every connection (a plain TCP close: this is teardown).
    pub fn close_all(&mut self) {
        for mut conn in self.conns.drain() {
            let _ = self.poll.registry().deregister(&mut conn.stream);
        }
        self.upgraded = 0;
    }

    /// Arms the timer to fire at `at` (at once if it is past).
    pub fn arm_timer(&mut self, at: Instant) {
        if self.armed == Some(at) {
            return;
        }
        self.armed = Some(at);
        let wait = at.saturating_duration_since(Instant::now()).max(Duration::from_nanos(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
            it_value: libc::timespec {
                tv_sec: wait.as_secs() as libc::time_t,
                tv_nsec: wait.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: `timer` is a valid timerfd and `spec` a valid itimerspec.
        unsafe { libc::timerfd_settime(self.timer.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
    }

    /// Waits for readiness (at most `max_wait`) and handles every event. Returns whether the
    /// timer fired.
    pub fn turn(&mut self, max_wait: Duration, handler: &mut impl Handler) -> io::Result<bool> {
        self.polls += 1;
        match self.poll.poll(&mut self.events, Some(max_wait)) {
            Ok(()) => {}
            Err(error) if error.kind() == ErrorKind::Interrupted => return Ok(false),
            Err(error) => return Err(error),
        }
        let mut timer_fired = false;
        // Collected first: handling an event may touch other connections.
        let mut ready = std::mem::take(&mut self.ready);
        ready.clear();
        ready.extend(self.events.iter().map(|event| {
            let broken = event.is_read_closed() || event.is_error();
            (event.token(), event.is_readable() || broken, event.is_writable(), broken)
        }));
        for &(token, readable, writable, broken) in &ready {
            if token == TIMER {
                let mut ticks = [0u8; 8];
                // SAFETY: reading 8 bytes into an 8-byte buffer from our timerfd.
                unsafe { libc::read(self.timer.as_raw_fd(), ticks.as_mut_ptr().cast(), 8) };
                timer_fired = true;
                self.armed = None;
                continue;
            }
            let key = token.0;
            if let Some(conn) = self.conns.get_mut(key)
                && conn.paused
            {
                if broken && conn.phase != Phase::Closed {
                    let why = match conn.stream.take_error() {
                        Ok(Some(error)) => format!("read: {error}"),
                        _ => "server closed the TCP connection".to_owned(),
                    };
                    self.fail(key, &why, handler);
                }
                continue;
            }
            if writable
                && let Some(conn) = self.conns.get_mut(key)
                && conn.phase != Phase::Closed
                && let Err(error) = flush_conn(conn)
            {
                self.fail(key, &format!("write: {error}"), handler);
                continue;
            }
            if readable {
                self.read_ready(key, handler);
            }
        }
        self.ready = ready;
        Ok(timer_fired)
    }

    fn fail(&mut self, key: usize, why: &str, handler: &mut impl Handler) {
        if let Some(conn) = self.conns.get_mut(key)
            && conn.phase != Phase::Closed
        {
            if conn.phase == Phase::Open {
                self.upgraded -= 1;
            }
            conn.phase = Phase::Closed;
            let _ = self.poll.registry().deregister(&mut conn.stream);
            let _ = conn.stream.shutdown(std::net::Shutdown::Both);
            conn.rbuf = Vec::new();
            conn.wbuf = Vec::new();
            handler.on_closed(key, why);
        }
    }

    fn read_ready(&mut self, key: usize, handler: &mut impl Handler) {
        loop {
            let Some(conn) = self.conns.get_mut(key) else { return };
            if conn.phase == Phase::Closed {
                return;
            }
            let n = match conn_read(conn, &mut self.scratch) {
                Ok(0) => return self.fail(key, "server closed the TCP connection", handler),
                Ok(n) => n,
                Err(error) if error.kind() == ErrorKind::WouldBlock => return,
                Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                Err(error) => return self.fail(key, &format!("read: {error}"), handler),
            };
            self.reads += 1;
            let now_us = self.start.elapsed().as_micros() as u64;
            let was_upgrading = conn.phase == Phase::Upgrading;
            let outcome = if conn.rbuf.is_empty() {
                let data = &self.scratch[..n];
                let result = process(conn, key, data, now_us, handler);
                if let Ok(consumed) = result {
                    conn.rbuf.extend_from_slice(&data[consumed..]);
                }
                result
            } else {
                let mut buffered = std::mem::take(&mut conn.rbuf);
                buffered.extend_from_slice(&self.scratch[..n]);
                let result = process(conn, key, &buffered, now_us, handler);
                if let Ok(consumed) = result {
                    buffered.drain(..consumed);
                    conn.rbuf = buffered;
                }
                result
            };
            if let Err(why) = outcome {
                if was_upgrading && conn.phase == Phase::Open {
                    self.upgraded += 1;
                }
                return self.fail(key, &why, handler);
            }
            match conn.phase {
                Phase::Open => {
                    if was_upgrading {
                        self.upgraded += 1;
                    }
                    // Pongs (and anything else) queued while parsing.
                    if conn.wbuf.len() > conn.wpos
                        && let Err(error) = flush_conn(conn)
                    {
                        return self.fail(key, &format!("write: {error}"), handler);
                    }
                }
                Phase::Closed => {
                    // A close frame arrived; `process` already told the handler.
                    if !was_upgrading {
                        self.upgraded -= 1;
                    }
                    let _ = self.poll.registry().deregister(&mut conn.stream);
                    return;
                }
                Phase::Upgrading => {}
            }
            // A short read drained the socket: with edge-triggered epoll, data arriving after
            // this read raises a new event, so the extra read that would return EAGAIN is saved.
            // (Not through TLS: a short read of plaintext says nothing about the socket.)
            if n < self.scratch.len() && conn.tls.is_none() {
                return;
            }
        }
    }
}

/// Parses what `data` holds for this connection: the response head while upgrading, then
/// frames. Returns how many bytes were consumed.
fn process(
    conn: &mut Conn,
    key: usize,
    data: &[u8],
    now_us: u64,
    handler: &mut impl Handler,
) -> Result<usize, String> {
    let mut at = 0;
    if conn.phase == Phase::Upgrading {
        let Some(end) = memchr::memmem::find(data, b"\r\n\r\n") else {
            if data.len() > 64 * 1024 {
                return Err("response head too long".into());
            }
            return Ok(0);
        };
        let head = &data[..end];
        let status_ok = head.starts_with(b"HTTP/1.1 101") || head.starts_with(b"HTTP/1.0 101");
        if !status_ok {
            let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
            return Err(format!("upgrade refused: {}", String::from_utf8_lossy(line)));
        }
        conn.phase = Phase::Open;
        at = end + 4;
    }
    while conn.phase == Phase::Open {
        let rest = &data[at..];
        if rest.len() < 2 {
            break;
        }
        let (b0, b1) = (rest[0], rest[1]);
        if b1 & 0x80 != 0 {
            return Err("masked frame from the server".into());
        }
        let (len, header) = match b1 & 0x7F {
            126 => {
                if rest.len() < 4 {
                    break;
                }
                (u16::from_be_bytes([rest[2], rest[3]]) as usize, 4)
            }
            127 => {
                if rest.len() < 10 {
                    break;
                }
                (u64::from_be_bytes(rest[2..10].try_into().unwrap()) as usize, 10)
            }
            small => (small as usize, 2),
        };
        if len > MAX_FRAME {
            return Err(format!("frame of {len} bytes"));
        }
        if rest.len() < header + len {
            break;
        }
        let payload = &rest[header..header + len];
        at += header + len;
        let fin = b0 & 0x80 != 0;
        match b0 & 0x0F {
            0x1 | 0x2 => {
                if fin {
                    handler.on_text(key, payload, now_us);
                } else {
                    conn.fragments = Some(payload.to_vec());
                }
            }
            0x0 => {
                let Some(mut message) = conn.fragments.take() else {
                    return Err("continuation without a start".into());
                };
                message.extend_from_slice(payload);
                if fin {
                    handler.on_text(key, &message, now_us);
                } else {
                    conn.fragments = Some(message);
                }
            }
            0x8 => {
                let code =
                    if payload.len() >= 2 { u16::from_be_bytes([payload[0], payload[1]]) } else { 1005 };
                let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or_default()).into_owned();
                if !conn.close_sent {
                    let mask = conn.mask;
                    push_frame(&mut conn.wbuf, 0x8, &payload[..payload.len().min(2)], mask);
                    let _ = flush_conn(conn);
                }
                conn.phase = Phase::Closed;
                let _ = conn.stream.shutdown(std::net::Shutdown::Both);
                handler.on_closed(key, &format!("server sent close {code} {reason}"));
                return Ok(at);
            }
            0x9 => {
                let mask = conn.mask;
                push_frame(&mut conn.wbuf, 0xA, payload, mask);
            }
            0xA => {}
            other => return Err(format!("unknown opcode {other}")),
        }
    }
    Ok(at)
}

/// Reads plaintext: from the socket, or through TLS (records in until there is plaintext, the
/// end, or `WouldBlock`; the handshake's own records are written on the way).
fn conn_read(conn: &mut Conn, buffer: &mut [u8]) -> io::Result<usize> {
    let Some(tls) = &mut conn.tls else { return conn.stream.read(buffer) };
    loop {
        // `Ok(0)` after the server's close_notify, `UnexpectedEof` after a bare TCP close.
        match tls.reader().read(buffer) {
            Err(error) if error.kind() == ErrorKind::WouldBlock => {}
            result => return result,
        }
        match tls.read_tls(&mut conn.stream) {
            Ok(_) => {}
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        }
        tls.process_new_packets().map_err(|error| io::Error::new(ErrorKind::InvalidData, error))?;
        match write_records(tls, &mut conn.stream) {
            Err(error) if error.kind() != ErrorKind::WouldBlock => return Err(error),
            _ => {}
        }
    }
}

/// Writes the records rustls holds until none is left or the socket would block.
fn write_records(tls: &mut ClientConnection, stream: &mut TcpStream) -> io::Result<()> {
    while tls.wants_write() {
        match tls.write_tls(stream) {
            Ok(_) => {}
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// Writes plaintext: to the socket, or into rustls (which takes it all) and its records on.
fn conn_write(
    stream: &mut TcpStream,
    tls: &mut Option<Box<ClientConnection>>,
    bytes: &[u8],
) -> io::Result<usize> {
    let Some(tls) = tls else { return stream.write(bytes) };
    let taken = tls.writer().write(bytes)?;
    match write_records(tls, stream) {
        Err(error) if error.kind() != ErrorKind::WouldBlock => Err(error),
        _ => Ok(taken),
    }
}

fn flush_conn(conn: &mut Conn) -> io::Result<()> {
    if let Some(tls) = &mut conn.tls {
        match write_records(tls, &mut conn.stream) {
            Ok(()) => {}
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::NotConnected) => {}
            Err(error) => return Err(error),
        }
    }
    while conn.wpos < conn.wbuf.len() {
        match conn_write(&mut conn.stream, &mut conn.tls, &conn.wbuf[conn.wpos..]) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => conn.wpos += n,
            // Includes a connect still in progress.
            Err(error) if error.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(error) if error.kind() == ErrorKind::NotConnected => return Ok(()),
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    conn.wbuf.clear();
    conn.wpos = 0;
    Ok(())
}

/// The close code in an `on_closed` reason that reports the server's close frame.
pub fn close_code(why: &str) -> Option<u16> {
    why.strip_prefix("server sent close ")?.split(' ').next()?.parse().ok()
}

/// Appends one masked client frame.
pub fn push_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    for (i, byte) in out[start..].iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_rfc_example() {
        assert_eq!(base64(b"the sample nonce"), "dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
    }

    #[test]
    fn frames_are_masked() {
        let mut out = Vec::new();
        push_frame(&mut out, 1, b"hi", [1, 2, 3, 4]);
        assert_eq!(out, vec![0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2]);
    }

    #[test]
    fn close_codes_are_read_back_from_the_reason() {
        assert_eq!(close_code("server sent close 1009 message too big"), Some(1009));
        assert_eq!(close_code("server sent close 1000 "), Some(1000));
        assert_eq!(close_code("read: Connection reset by peer (os error 104)"), None);
    }

    #[test]
    fn urls_parse() {
        let target = Target::parse("ws://127.0.0.1:9001/?name=x", false).unwrap();
        assert_eq!(target.addr.port(), 9001);
        assert_eq!(target.with_query("room=r"), "/?name=x&room=r");
        let target = Target::parse("ws://localhost:9001", false).unwrap();
        assert_eq!(target.with_query("room=r"), "/?room=r");
        assert!(Target::parse("ws://10.0.0.1:80/", false).is_err());
        let target = Target::parse("wss://127.0.0.1/", false).unwrap();
        assert!(target.secure && target.addr.port() == 443);
        assert!(Target::parse("http://127.0.0.1/", false).is_err());
    }
}
