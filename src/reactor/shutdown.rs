//! Signals. Graceful shutdown: the first SIGINT or SIGTERM stops the accepting and starts a
//! close handshake with every client; the loop runs on until they are done or time is up. A
//! second signal stops at once. SIGHUP reloads the TLS certificate and key.

use log::{error, info, warn};
use mio::Token;
use signal_hook::consts::SIGHUP;

use super::connection::Phase;
use super::connections::Ending;
use super::{Flow, Reactor};
use crate::handler::{CloseCode, Handler};

impl<H: Handler> Reactor<H> {
    /// SIGINT or SIGTERM: the first starts a graceful shutdown, a second one stops at once.
    /// SIGHUP: the certificate and key are read again.
    pub(super) fn on_signals(&mut self) -> Flow {
        // Drain the pipe (edge-triggered, like every other source).
        let signals: Vec<i32> = self.signals.pending().collect();
        let hangups = signals.iter().filter(|&&signal| signal == SIGHUP).count();
        if hangups > 0 {
            self.reload_tls();
        }
        let count = signals.len() - hangups;
        if count == 0 {
            return Flow::Continue;
        }
        if self.shutdown_deadline.is_some() || count > 1 {
            warn!("second signal: stopping now");
            return Flow::Stop;
        }
        self.begin_shutdown();
        Flow::Continue
    }

    /// Reads the certificate and key again from the same paths, for the connections accepted from
    /// now on (certbot renews them in place). Open connections keep the session they have. A pair
    /// that fails the checks is refused, and the one in use stays.
    fn reload_tls(&mut self) {
        let Some(credentials) = &mut self.tls else {
            return info!("SIGHUP: nothing to reload (no --tls-cert)");
        };
        match credentials.reload(super::unix_time_seconds()) {
            Ok(_) => info!("SIGHUP: TLS reloaded: {}", credentials.describe()),
            Err(problem) => {
                error!("SIGHUP: TLS not reloaded, keeping the certificate in use: {problem}")
            }
        }
    }

    /// Stops accepting, sends every client a close frame with 1001 "going away", and leaves the
    /// loop running until the close handshakes are done or `--shutdown-timeout` has passed.
    fn begin_shutdown(&mut self) {
        info!(
            "shutting down: closing {} connections (at most {:?})",
            self.connections.stats.connections, self.shutdown_timeout
        );
        self.shutdown_deadline = Some(self.connections.now + self.shutdown_timeout);
        self.acceptor.stop(self.poll.registry());
        let tokens: Vec<Token> = self.connections.slab.iter().map(|(key, _)| Token(key)).collect();
        let mut closed = Vec::new();
        for token in tokens {
            let Some(connection) = self.connections.slab.get(token.0) else { continue };
            match connection.phase {
                // Every close frame is queued before any handler call, so the handler's goodbyes
                // (the chat's `left` events) find everyone closing and cost nothing to send.
                Phase::Open(_) => {
                    if self.detach(token, Ending::Close(CloseCode::Away, "server shutting down")) {
                        closed.push(token);
                    }
                }
                Phase::Request(_) | Phase::Handshake(_) => self.end(token, Ending::Drop),
                Phase::Closing(_) | Phase::Failing(_) | Phase::Reply(_) | Phase::Done => {}
            }
        }
        for token in closed {
            self.notify_closed(token);
        }
        self.handler.on_shutdown(&mut self.connections);
        self.settle();
    }

    /// After each iteration of a shutdown: stop once every connection is gone or time is up.
    pub(super) fn shutdown_progress(&mut self) -> Flow {
        let Some(deadline) = self.shutdown_deadline else { return Flow::Continue };
        let remaining = self.connections.slab.len();
        if remaining == 0 && !self.handler.is_busy() {
            info!("shutdown complete");
            return Flow::Stop;
        }
        if self.connections.now >= deadline {
            if remaining == 0 {
                warn!(
                    "shutdown timeout: the handler's last work (its goodbyes to the cluster) did not finish"
                );
                return Flow::Stop;
            }
            warn!("shutdown timeout: dropping {remaining} connections that did not finish closing");
            return Flow::Stop;
        }
        Flow::Continue
    }
}
