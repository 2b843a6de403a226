//! Accepting connections without letting the listener hurt the loop: over-capacity clients are
//! told 503 at once, and running out of file descriptors neither spins nor stalls the server.

use std::fs::File;
use std::io::{self, ErrorKind};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::{debug, warn};
use mio::net::{TcpListener, TcpStream};

use super::connection::refuse;
use super::throttle::Throttle;
use crate::http;

pub struct Acceptor {
    listener: TcpListener,
    /// Most sockets held at once: `--max-connections` WebSockets plus room for requests in flight.
    max_sockets: usize,
    /// A descriptor held in reserve (`/dev/null`). When `accept` fails because the process is out
    /// of descriptors, the pending connection stays in the kernel's queue, and an edge-triggered
    /// listener would not report it again; closing this spare frees one descriptor to accept the
    /// connection and close it politely (the libuv trick). Without it the server would either spin
    /// on a listener that stays readable or leave clients hanging.
    spare: Option<File>,
    warnings: Throttle,
}

impl Acceptor {
    pub fn new(listener: TcpListener, max_sockets: usize) -> Self {
        let spare = open_spare();
        Acceptor { listener, max_sockets, spare, warnings: Throttle::new(Duration::from_secs(1)) }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Returns the next connection to keep, or `None` once the listener would block. `held` is
    /// the number of sockets the server holds now. Connections it cannot keep are answered and
    /// closed here.
    pub fn accept(&mut self, held: usize) -> Option<(TcpStream, SocketAddr)> {
        loop {
            match self.listener.accept() {
                Ok((stream, peer)) if held >= self.max_sockets => {
                    self.warn(format_args!("holding {held} sockets, the most allowed; refusing {peer}"));
                    let _ =
                        refuse(stream, &http::plain(503, "Service Unavailable", "too many connections\n"));
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
                    if !self.shed_one() {
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
    /// Returns false if there was no spare to use.
    fn shed_one(&mut self) -> bool {
        let Some(spare) = self.spare.take() else { return false };
        drop(spare);
        if let Ok((stream, _)) = self.listener.accept() {
            let _ =
                refuse(stream, &http::plain(503, "Service Unavailable", "server out of file descriptors\n"));
        }
        self.spare = open_spare();
        true
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
