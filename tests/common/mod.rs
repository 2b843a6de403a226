//! Test harness: runs the real `wschat` binary on port 0 and talks to it over loopback with
//! tungstenite's blocking client. Every wait has a deadline; nothing sleeps for a fixed time.

#![allow(dead_code)] // Each test file uses a different part of the harness.

pub mod redis;
pub mod tls;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::HandshakeError;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, WebSocket};

/// How long any single wait may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// A running server process, killed when dropped.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    /// The server's log lines, as they arrive.
    log: mpsc::Receiver<String>,
}

impl Server {
    /// Starts `wschat --bind 127.0.0.1:0 ARGS...` and waits for the log line naming the port.
    pub fn start(args: &[&str]) -> Server {
        Server::start_binary(env!("CARGO_BIN_EXE_wschat"), args)
    }

    /// Starts the server with these environment variables set (flags from the environment).
    pub fn start_with_env(env: &[(&str, &str)], args: &[&str]) -> Server {
        let mut command = Command::new(env!("CARGO_BIN_EXE_wschat"));
        command.envs(env.iter().copied());
        Server::start_command(command, args)
    }

    pub fn start_binary(binary: &str, args: &[&str]) -> Server {
        Server::start_command(Command::new(binary), args)
    }

    /// Starts the server with its open-files limit (soft and hard) set to `limit`.
    pub fn start_with_file_limit(limit: u32, args: &[&str]) -> Server {
        let mut command = Command::new("sh");
        let script = format!("ulimit -n {limit} && exec \"$0\" \"$@\"");
        command.args(["-c", &script, env!("CARGO_BIN_EXE_wschat")]);
        Server::start_command(command, args)
    }

    fn start_command(mut command: Command, args: &[&str]) -> Server {
        if !args.contains(&"--bind") {
            command.args(["--bind", "127.0.0.1:0"]);
        }
        if !args.contains(&"--log-level") {
            command.args(["--log-level", "debug"]);
        }
        let mut child = command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the server binary");
        let stderr = child.stderr.take().expect("piped stderr");
        let (sender, log) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let mut server = Server { child, addr: "0.0.0.0:0".parse().unwrap(), log };
        let line = server.wait_for_log("listening on");
        let address = line.rsplit("listening on ").next().unwrap().trim();
        server.addr = address.parse().unwrap_or_else(|_| panic!("bad address in {line:?}"));
        server
    }

    /// Waits for a log line containing `needle` and returns it.
    pub fn wait_for_log(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.log.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("no log line containing {needle:?} within {DEADLINE:?}")
                }
                // An unknown flag, for one: the server prints its error and exits.
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("the server exited before a log line containing {needle:?}")
                }
            }
        }
    }

    /// The log lines that have arrived and were not consumed yet.
    pub fn drain_log(&mut self) -> Vec<String> {
        self.log.try_iter().collect()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self, target: &str) -> String {
        format!("ws://{}{}", self.addr, target)
    }

    /// Connects a chat client and returns it with its welcome event.
    pub fn join(&self, target: &str) -> (Client, Value) {
        let mut client = Client::connect(self, target);
        let welcome = client.recv_json();
        assert_eq!(welcome["type"], "welcome", "first event is the welcome: {welcome}");
        (client, welcome)
    }

    /// Connects a chat client, retrying while the server refuses (503 or a closed socket) until
    /// the deadline; for tests where capacity frees up asynchronously.
    pub fn join_until_admitted(&self, target: &str) -> Client {
        let give_up = Instant::now() + DEADLINE;
        loop {
            let stream = TcpStream::connect(self.addr).expect("connect to the server");
            stream.set_read_timeout(Some(DEADLINE)).unwrap();
            if let Ok((socket, _)) = tungstenite::client(self.url(target), stream) {
                let mut client = Client { socket };
                assert_eq!(client.recv_json()["type"], "welcome");
                return client;
            }
            assert!(Instant::now() < give_up, "never admitted within {DEADLINE:?}");
            thread::sleep(Duration::from_millis(20)); // Retrying a refused connection.
        }
    }

    /// Sends a raw HTTP request and returns the whole response (the server closes after it).
    pub fn http(&self, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(self.addr).unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        stream.write_all(request).unwrap();
        let mut response = Vec::new();
        match stream.read_to_end(&mut response) {
            Ok(_) => {}
            Err(error) if error.kind() == ErrorKind::ConnectionReset && !response.is_empty() => {}
            Err(error) => panic!("reading the response: {error}"),
        }
        String::from_utf8_lossy(&response).into_owned()
    }

    /// `GET /stats`, parsed.
    pub fn stats(&self) -> Value {
        let response = self.http(b"GET /stats HTTP/1.1\r\n\r\n");
        let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
        serde_json::from_str(body).unwrap_or_else(|error| panic!("/stats is not JSON ({error}): {response}"))
    }

    /// Sends a WebSocket upgrade for `target` and returns the whole response if it is refused
    /// (anything but 101), or `None` if the upgrade succeeded.
    pub fn refused_upgrade(&self, target: &str) -> Option<String> {
        let stream = TcpStream::connect(self.addr).expect("connect to the server");
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        match tungstenite::client(self.url(target), stream) {
            Ok(_) => None,
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
                let body = response.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default();
                let headers: String = response
                    .headers()
                    .iter()
                    .map(|(name, value)| format!("{name}: {}\r\n", value.to_str().unwrap_or("?")))
                    .collect();
                Some(format!("{}\r\n{headers}\r\n{body}", response.status().as_u16()))
            }
            Err(error) => panic!("the upgrade neither succeeded nor got an HTTP answer: {error}"),
        }
    }

    /// Returns whether the server process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends a signal (`TERM`, `INT`, ...) to the server process.
    pub fn signal(&self, name: &str) {
        let status =
            Command::new("kill").arg(format!("-{name}")).arg(self.pid().to_string()).status().unwrap();
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the server to exit, failing the test past `deadline`.
    pub fn wait_for_exit(&mut self, deadline: Duration) -> std::process::ExitStatus {
        let give_up = Instant::now() + deadline;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < give_up, "the server did not exit within {deadline:?}");
            thread::sleep(Duration::from_millis(10)); // Polling an exit status; there is no event.
        }
    }

    /// The server's CPU time so far (user + system), in clock ticks (10 ms), from /proc.
    pub fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        // The fields after the parenthesized command name; utime and stime are the 14th and 15th.
        let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    }

    /// The server's resident memory, in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status.lines().find(|line| line.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking WebSocket client with read deadlines, over TCP or (`tls::TlsStream`) TLS.
pub struct Client<S: Read + Write = TcpStream> {
    pub socket: WebSocket<S>,
}

impl Client {
    pub fn connect(server: &Server, target: &str) -> Client {
        let stream = TcpStream::connect(server.addr).expect("connect to the server");
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        stream.set_nodelay(true).unwrap();
        let (socket, response) =
            tungstenite::client(server.url(target), stream).expect("WebSocket handshake");
        assert_eq!(response.status(), 101);
        Client { socket }
    }

    /// Does the WebSocket handshake on a connected stream; an HTTP refusal (a 429, a 503...) is
    /// returned as its status code.
    pub fn upgrade(stream: TcpStream, request: impl IntoClientRequest) -> Result<Client, u16> {
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        stream.set_nodelay(true).unwrap();
        match tungstenite::client(request, stream) {
            Ok((socket, _)) => Ok(Client { socket }),
            Err(HandshakeError::Failure(tungstenite::Error::Http(response))) => {
                Err(response.status().as_u16())
            }
            Err(error) => panic!("WebSocket handshake: {error}"),
        }
    }
}

impl<S: Read + Write> Client<S> {
    pub fn send_text(&mut self, text: &str) {
        self.socket.send(Message::text(text)).expect("send a text frame");
    }

    pub fn send_json(&mut self, value: Value) {
        self.send_text(&value.to_string());
    }

    /// The next text frame as JSON; fails the test if none arrives within the deadline.
    pub fn recv_json(&mut self) -> Value {
        loop {
            match self.socket.read() {
                Ok(Message::Text(text)) => return serde_json::from_str(&text).expect("server sends JSON"),
                Ok(Message::Ping(_) | Message::Pong(_)) => {}
                Ok(other) => panic!("expected a text frame, got {other:?}"),
                Err(error) => panic!("expected a text frame, got error {error}"),
            }
        }
    }

    /// Reads events until one has `type` equal to `kind`, returning it; others are skipped.
    pub fn recv_type(&mut self, kind: &str) -> Value {
        loop {
            let event = self.recv_json();
            if event["type"] == kind {
                return event;
            }
        }
    }

    /// Proves nothing else is queued for this client: an application ping's pong must be the
    /// very next event.
    pub fn assert_nothing_pending(&mut self) {
        self.send_json(serde_json::json!({"type": "ping"}));
        let next = self.recv_json();
        assert_eq!(next["type"], "pong", "unexpected event before the pong: {next}");
    }

    /// Closes with `frame` and reads until the server has answered: the close handshake is over
    /// when tungstenite reports `ConnectionClosed`.
    pub fn close_and_wait(&mut self, frame: Option<CloseFrame>) {
        self.socket.close(frame).unwrap();
        loop {
            match self.socket.read() {
                Ok(_) => {}
                Err(tungstenite::Error::ConnectionClosed) => return,
                Err(error) => panic!("the close handshake should finish cleanly: {error}"),
            }
        }
    }

    /// Waits for the server's close frame and returns it.
    pub fn expect_close(&mut self) -> CloseFrame {
        loop {
            match self.socket.read() {
                Ok(Message::Close(Some(frame))) => return frame,
                Ok(Message::Close(None)) => panic!("close frame without a code"),
                Ok(_) => {}
                Err(error) => panic!("expected a close frame, got error {error}"),
            }
        }
    }
}

/// A raw TCP connection that has done the WebSocket handshake by hand, for sending frames a
/// well-behaved client never would.
pub struct RawClient {
    pub stream: TcpStream,
}

impl RawClient {
    pub fn connect(server: &Server, target: &str) -> RawClient {
        RawClient::upgrade(TcpStream::connect(server.addr).unwrap(), server, target)
    }

    /// Connects with a small receive buffer (set before the connection exists, so that the
    /// window stays small): a client that does not read then fills the server's queue quickly.
    pub fn connect_with_receive_buffer(server: &Server, target: &str, bytes: usize) -> RawClient {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.set_recv_buffer_size(bytes).unwrap();
        socket.connect(&server.addr.into()).unwrap();
        RawClient::upgrade(socket.into(), server, target)
    }

    fn upgrade(mut stream: TcpStream, server: &Server, target: &str) -> RawClient {
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        let request = format!(
            "GET {target} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            server.addr
        );
        stream.write_all(request.as_bytes()).unwrap();
        // Read the 101 response head byte by byte so no frame bytes are swallowed.
        let mut head = Vec::new();
        let mut byte = [0u8];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).expect("read the handshake response");
            head.push(byte[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
        RawClient { stream }
    }

    /// Sends one masked frame (clients must mask) with the given first byte (FIN, RSV, opcode).
    pub fn send_frame(&mut self, first_byte: u8, payload: &[u8]) {
        self.stream.write_all(&masked_frame(first_byte, payload)).unwrap();
    }

    /// Reads one server frame (unmasked) and returns (opcode, payload).
    pub fn read_frame(&mut self) -> (u8, Vec<u8>) {
        let mut header = [0u8; 2];
        self.stream.read_exact(&mut header).expect("read a frame header");
        let length = match header[1] & 0x7f {
            126 => {
                let mut extended = [0u8; 2];
                self.stream.read_exact(&mut extended).unwrap();
                u16::from_be_bytes(extended) as usize
            }
            127 => {
                let mut extended = [0u8; 8];
                self.stream.read_exact(&mut extended).unwrap();
                u64::from_be_bytes(extended) as usize
            }
            short => short as usize,
        };
        let mut payload = vec![0u8; length];
        self.stream.read_exact(&mut payload).unwrap();
        (header[0] & 0x0f, payload)
    }

    /// Reads frames until a close frame, returning its code.
    pub fn read_close_code(&mut self) -> u16 {
        loop {
            let (opcode, payload) = self.read_frame();
            if opcode == 0x8 {
                assert!(payload.len() >= 2, "close frame without a code");
                return u16::from_be_bytes([payload[0], payload[1]]);
            }
        }
    }
}

/// Encodes a masked client frame.
pub fn masked_frame(first_byte: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut frame = vec![first_byte];
    match payload.len() {
        length @ 0..=125 => frame.push(0x80 | length as u8),
        length @ 126..=0xffff => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(length as u16).to_be_bytes());
        }
        length => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(length as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(index, byte)| byte ^ mask[index % 4]));
    frame
}

/// Connects to `to` from the loopback address `source` (all of 127.0.0.0/8 is this machine), so
/// that a server or a proxy sees a client other than 127.0.0.1.
pub fn connect_from(source: IpAddr, to: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::new(source, 0).into()).expect("bind the client's source address");
    socket.connect(&to.into()).expect("connect");
    socket.into()
}

/// A free loopback port for a program that cannot bind port 0 and report it (nginx, Caddy). It is
/// taken below the kernel's ephemeral range (Linux's default starts at 32768), where bind(0),
/// which every other test and server uses, never picks: so between this check and the program's
/// own bind, only a program on a fixed port could take it. Each call tries further ports, so two
/// proxies of one test binary never get the same one.
pub fn free_loopback_port() -> u16 {
    static TRIED: AtomicUsize = AtomicUsize::new(0);
    // A start that differs between test binaries running at once.
    let start = std::process::id() as usize * 7919;
    for _ in 0..1000 {
        let port = 20_000 + (start + TRIED.fetch_add(1, Ordering::Relaxed)) % 12_000;
        if TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return port as u16;
        }
    }
    panic!("no free port between 20000 and 32000 on 127.0.0.1");
}

/// Waits until something accepts connections on `addr`, failing the test past the deadline.
pub fn wait_until_accepting(addr: SocketAddr) {
    let give_up = Instant::now() + DEADLINE;
    while TcpStream::connect_timeout(&addr, DEADLINE).is_err() {
        assert!(Instant::now() < give_up, "nothing accepts on {addr} within {DEADLINE:?}");
        thread::sleep(Duration::from_millis(10)); // Polling a port; there is no event to wait for.
    }
}

/// A fresh directory under the system's temporary directory, removed with everything in it when
/// dropped.
pub struct ScratchDir {
    pub path: PathBuf,
}

impl ScratchDir {
    pub fn new(name: &str) -> ScratchDir {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let serial = COUNT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("wschat-{name}-{}-{serial}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path); // Left over from a killed run with the same pid.
        std::fs::create_dir_all(&path).unwrap();
        ScratchDir { path }
    }

    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
