//! One TCP connection to Redis on the reactor's poll: connected without blocking, written and
//! read until `WouldBlock`, its commands batched per loop iteration. What the replies mean, and
//! what to do when the connection breaks, is the cluster's business.

use std::io::{self, ErrorKind, Read, Write};
use std::net::SocketAddr;

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use super::resp::{Replies, Reply, encode_command};

/// What the Redis layer (`redis.rs`) needs of a connection: [`Link`] is the real one; its unit
/// tests drive a scripted one, so timeouts, failures and reconnects are tested without a Redis.
pub trait Transport {
    /// Starts connecting, without blocking.
    fn connect(&mut self, addr: SocketAddr, registry: &Registry) -> io::Result<()>;
    fn is_connected(&self) -> bool;
    /// Drops the connection and whatever is queued on it.
    fn close(&mut self, registry: &Registry);
    /// Queues a command.
    fn send(&mut self, args: &[&[u8]]) -> io::Result<()>;
    /// The socket is ready: replies that arrived go into `replies`; `Ok(true)` the moment the
    /// connect completes.
    fn on_ready(&mut self, registry: &Registry, replies: &mut Vec<Reply>) -> io::Result<bool>;
    /// Writes what is queued, until done or `WouldBlock`.
    fn flush(&mut self, registry: &Registry) -> io::Result<()>;
}

/// Most bytes of commands a link holds unwritten. Redis reads far faster than one node writes;
/// a link this far behind means Redis is stuck, and the link is given up.
const MAX_UNWRITTEN_BYTES: usize = 64 * 1024 * 1024;

/// How much one read takes from the socket.
const READ_CHUNK: usize = 64 * 1024;

pub struct Link {
    token: Token,
    stream: Option<TcpStream>,
    /// Whether the non-blocking connect has completed.
    connected: bool,
    /// Whether WRITABLE is in the registered interest.
    wants_writable: bool,
    unwritten: Vec<u8>,
    replies: Replies,
}

impl Link {
    pub fn new(token: Token) -> Link {
        Link {
            token,
            stream: None,
            connected: false,
            wants_writable: false,
            unwritten: Vec::new(),
            replies: Replies::default(),
        }
    }

    fn read(&mut self, replies: &mut Vec<Reply>) -> io::Result<()> {
        let Some(stream) = self.stream.as_mut() else { return Ok(()) };
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            match stream.read(&mut chunk) {
                Ok(0) => return Err(io::Error::new(ErrorKind::UnexpectedEof, "Redis closed the connection")),
                Ok(read) => {
                    self.replies.extend(&chunk[..read]).map_err(io::Error::other)?;
                    while let Some(reply) = self.replies.next_reply().map_err(io::Error::other)? {
                        replies.push(reply);
                    }
                }
                Err(error) if error.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
    }
}

impl Transport for Link {
    /// Starts connecting (without blocking); `on_ready` says when it is done.
    fn connect(&mut self, addr: SocketAddr, registry: &Registry) -> io::Result<()> {
        self.close(registry);
        let mut stream = TcpStream::connect(addr)?;
        registry.register(&mut stream, self.token, Interest::READABLE | Interest::WRITABLE)?;
        self.wants_writable = true;
        self.stream = Some(stream);
        Ok(())
    }

    fn is_connected(&self) -> bool {
        self.connected
    }

    /// Drops the connection and everything queued on it.
    fn close(&mut self, registry: &Registry) {
        if let Some(mut stream) = self.stream.take() {
            let _ = registry.deregister(&mut stream);
        }
        self.connected = false;
        self.wants_writable = false;
        self.unwritten.clear();
        self.replies.clear();
    }

    /// Queues a command; `flush` writes it.
    fn send(&mut self, args: &[&[u8]]) -> io::Result<()> {
        if self.unwritten.len() > MAX_UNWRITTEN_BYTES {
            return Err(io::Error::other(format!(
                "Redis has not read {} bytes of commands",
                self.unwritten.len()
            )));
        }
        encode_command(&mut self.unwritten, args);
        Ok(())
    }

    /// The socket is ready: finishes connecting if it was, reads every reply that has arrived
    /// (into `replies`) and writes what it can. `Ok(true)` the moment the connect completes.
    fn on_ready(&mut self, registry: &Registry, replies: &mut Vec<Reply>) -> io::Result<bool> {
        let Some(stream) = self.stream.as_mut() else { return Ok(false) };
        let mut just_connected = false;
        if !self.connected {
            if let Some(error) = stream.take_error()? {
                return Err(error);
            }
            match stream.peer_addr() {
                Ok(_) => {
                    self.connected = true;
                    just_connected = true;
                    // Commands are small and go out in one batch per iteration: no Nagle delay.
                    stream.set_nodelay(true)?;
                }
                Err(error) if error.kind() == ErrorKind::NotConnected => return Ok(false),
                Err(error) => return Err(error),
            }
        }
        self.read(replies)?;
        self.flush(registry)?;
        Ok(just_connected)
    }

    /// Writes queued commands until done or `WouldBlock`, asking for WRITABLE only while some
    /// are left.
    fn flush(&mut self, registry: &Registry) -> io::Result<()> {
        let Some(stream) = self.stream.as_mut() else { return Ok(()) };
        if !self.connected {
            return Ok(());
        }
        let mut written = 0;
        while written < self.unwritten.len() {
            match stream.write(&self.unwritten[written..]) {
                Ok(0) => return Err(io::Error::new(ErrorKind::WriteZero, "Redis took no bytes")),
                Ok(count) => written += count,
                Err(error) if error.kind() == ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        self.unwritten.drain(..written);
        let wants_writable = !self.unwritten.is_empty();
        if wants_writable != self.wants_writable {
            let interest =
                if wants_writable { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
            registry.reregister(stream, self.token, interest)?;
            self.wants_writable = wants_writable;
        }
        Ok(())
    }
}
