//! Accepting connections without letting the listener hurt the loop: over-capacity clients are
//! told 503 at once, and running out of file descriptors neither spins nor stalls the server.

use std::fs::File;
use std::io::{self, ErrorKind};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::{debug, warn};
use mio::Registry;
use mio::net::{TcpListener, TcpStream};
use socket2::{Domain, Protocol, Socket, Type};

use super::connection::refuse;
use super::stats::Tally;
use super::throttle::Throttle;
use crate::http;

/// The listen backlog: connections the kernel completes and queues before we accept them. The
/// standard library (and mio) use 128, which a burst of clients overflows; Linux caps the value at
/// `net.core.somaxconn` (4096 by default).
const LISTEN_BACKLOG: i32 = 4096;

pub struct Acceptor {
    /// `None` once the server stopped accepting (graceful shutdown).
    listener: Option<TcpListener>,
    /// Most sockets held at once: `--max-connections` WebSockets plus room for requests in flight.
    max_sockets: usize,
    /// A descriptor held in reserve (`/dev/null`). When `accept` fails because the process is out
    /// of descriptors, the pending connection stays in the kernel's queue, and an edge-triggered
    /// listener would not report it again; closing this spare frees one descriptor to accept the
    /// connection and close it politely (the libuv trick). Without it the server would either spin
    /// on a listener that stays readable or leave clients hanging.
    spare: Option<File>,
    warnings: Throttle,
    /// Whether sockets turned away here get a plain-text 503. Not on a TLS port: the client
    /// would read it as a broken handshake, and a TLS handshake just to refuse would spend the
    /// CPU that shedding is meant to save; they are closed instead.
    refuse_in_plain_text: bool,
}

impl Acceptor {
    /// Binds a non-blocking listener with a deep backlog. `max_sockets` caps the sockets held;
    /// `send_buffer` (bytes, 0 for the kernel's autotuning) is every accepted socket's SO_SNDBUF;
    /// `reuse_port` lets other processes bind the same address (`SO_REUSEPORT`), the kernel
    /// spreading new connections over them.
    pub fn bind(
        address: SocketAddr,
        max_sockets: usize,
        send_buffer: usize,
        reuse_port: bool,
    ) -> io::Result<Self> {
        let socket = Socket::new(Domain::for_address(address), Type::STREAM, Some(Protocol::TCP))?;
        // A restarted server can bind its port while the old connections sit in TIME_WAIT.
        socket.set_reuse_address(true)?;
        if reuse_port {
            socket.set_reuse_port(true)?;
        }
        if send_buffer > 0 {
            // Accepted sockets inherit the listener's send buffer, and setting it turns off the
            // kernel's autotuning for them, which would otherwise grow the buffer of a client
            // that stops reading to megabytes (`tcp_wmem`), all of it pinned kernel memory.
            socket.set_send_buffer_size(send_buffer)?;
        }
        socket.set_nonblocking(true)?;
        socket.bind(&address.into())?;
        socket.listen(LISTEN_BACKLOG)?;
        let listener = TcpListener::from_std(socket.into());
        let spare = open_spare();
        Ok(Acceptor {
            listener: Some(listener),
            max_sockets,
            spare,
            warnings: Throttle::new(Duration::from_secs(1)),
            refuse_in_plain_text: true,
        })
    }

    /// The listener speaks TLS: sockets turned away here are closed without a response.
    pub fn close_refusals(&mut self) {
        self.refuse_in_plain_text = false;
    }

    /// Turns a socket away with a 503 (plain text only) and counts it.
    fn turn_away(&self, stream: TcpStream, why: &str, refused: &mut Tally) {
        if self.refuse_in_plain_text {
            let _ = refuse(stream, &http::unavailable(why));
        }
        refused.add(503);
    }

    pub fn listener_mut(&mut self) -> Option<&mut TcpListener> {
        self.listener.as_mut()
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match &self.listener {
            Some(listener) => listener.local_addr(),
            None => Err(io::Error::new(ErrorKind::NotConnected, "the listener is closed")),
        }
    }

    /// Stops accepting: the listening socket is closed, so new clients are refused by the kernel.
    pub fn stop(&mut self, registry: &Registry) {
        if let Some(mut listener) = self.listener.take()
            && let Err(error) = registry.deregister(&mut listener)
        {
            debug!("deregistering the listener failed: {error}");
        }
    }

    /// Returns the next connection to keep, or `None` once the listener would block. `held` is
    /// the number of sockets the server holds now. Connections it cannot keep are answered and
    /// closed here, and counted in `refused` by the status they were sent.
    pub fn accept(&mut self, held: usize, refused: &mut Tally) -> Option<(TcpStream, SocketAddr)> {
        loop {
            let listener = self.listener.as_ref()?;
            match listener.accept() {
                Ok((stream, peer)) if held >= self.max_sockets => {
                    self.warn(format_args!("holding {held} sockets, the most allowed; refusing {peer}"));
                    self.turn_away(stream, "too many connections\n", refused);
                }
                Ok((stream, peer)) => {
                    // Chat frames are small and latency matters more than packet count; the
                    // reactor batches writes per iteration itself.
                    if let Err(error) = stream.set_nodelay(true) {
                        debug!("cannot set TCP_NODELAY for {peer}: {error}");
                    }
                    return Some((stream, peer));
                }
                Err(error) if error.kind() == ErrorKind::WouldBlock => return None,
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                // The client gave up before we accepted; nothing to do.
                Err(error)
                    if matches!(error.kind(), ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset) => {}
                Err(error) if is_out_of_descriptors(&error) => {
                    self.warn(format_args!(
                        "accept failed: {error}; refusing new connections until descriptors free up"
                    ));
                    if !self.shed_one(refused) {
                        return None;
                    }
                }
                Err(error) => {
                    // Unknown trouble: stop for this event rather than risk spinning on it.
                    self.warn(format_args!("accept failed: {error}"));
                    return None;
                }
            }
        }
    }

    /// Uses the spare descriptor to accept one pending connection and close it with a 503.
    /// Returns whether it shed one: `false` when the queue is empty (Linux's `accept` reports
    /// `EMFILE` before it looks at the queue, so the error alone does not mean anyone is waiting)
    /// or when there is no spare to use.
    fn shed_one(&mut self, refused: &mut Tally) -> bool {
        let Some(listener) = &self.listener else { return false };
        let Some(spare) = self.spare.take() else { return false };
        drop(spare);
        let shed = match listener.accept() {
            Ok((stream, _)) => {
                self.turn_away(stream, "server out of file descriptors\n", refused);
                true
            }
            Err(_) => false,
        };
        self.spare = open_spare();
        shed
    }

    fn warn(&mut self, message: std::fmt::Arguments) {
        if let Some(suppressed) = self.warnings.allow(Instant::now()) {
            if suppressed > 0 {
                warn!("{message} ({suppressed} similar messages suppressed)");
            } else {
                warn!("{message}");
            }
        }
    }
}

fn open_spare() -> Option<File> {
    File::open("/dev/null").inspect_err(|error| warn!("cannot open a spare descriptor: {error}")).ok()
}

/// `EMFILE` (this process) or `ENFILE` (the whole system) from `accept`. The standard library
/// has no `ErrorKind` for these, so the codes are compared by name.
fn is_out_of_descriptors(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}
