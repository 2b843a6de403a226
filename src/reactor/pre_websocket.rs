//! A connection's life before it is a WebSocket: reading and routing its HTTP request, answering
//! plain requests, and driving tungstenite's handshake, resumed from `MidHandshake` whenever the
//! socket would block.

use log::{debug, info, warn};
use mio::Token;
use tungstenite::WebSocket;
use tungstenite::handshake::HandshakeError;

use super::Reactor;
use super::connection::{Flushed, HandshakeRole, HandshakeState, HeadRead, Phase, ReplyState, RequestState};
use super::connections::Ending;
use super::outgoing::Outgoing;
use super::route::{Route, fallback, route};
use super::socket::Socket;
use crate::handler::Handler;
use crate::http::{self, RequestHead};
use crate::proxy::client_address;

impl<H: Handler> Reactor<H> {
    /// Reads the request head (with TLS, doing the TLS handshake on the way); once complete,
    /// routes it.
    pub(super) fn read_request(&mut self, token: Token) {
        let Some(Phase::Request(request)) = self.connections.slab.get_mut(token.0).map(|c| &mut c.phase)
        else {
            return;
        };
        // The TLS handshake's own records, if the socket could not take them all last time.
        if let Err(error) = request.stream.write_records()
            && error.kind() != std::io::ErrorKind::WouldBlock
        {
            debug!("connection {}: writing the TLS handshake failed: {error}", token.0);
            return self.end(token, Ending::Drop);
        }
        let read = request.read_until_would_block();
        // rustls's wants_write: records the socket has not taken wait for WRITABLE.
        let blocked = request.stream.has_pending_output();
        let route = match read {
            HeadRead::Gone(why) => {
                debug!("connection {}: gone before its request was read: {why}", token.0);
                return self.end(token, Ending::Drop);
            }
            HeadRead::NotTls => {
                debug!("connection {}: not TLS on the TLS port; answering 400 in plain text", token.0);
                return self.refuse_plain_text(token);
            }
            HeadRead::TlsRefused(why) => {
                debug!("connection {}: TLS handshake failed: {why}", token.0);
                // The alert rustls queued is all the client gets.
                return self.reply(token, Vec::new());
            }
            HeadRead::Drained | HeadRead::PeerClosed => {
                let at_capacity = self.connections.websockets >= self.max_connections;
                route(&request.head, &self.origins, at_capacity)
            }
        };
        self.connections.set_writable(token, blocked);
        match (route, read) {
            // A WebSocket client never half-closes, and an incomplete head will not complete.
            (Route::Wait | Route::Upgrade(_), HeadRead::PeerClosed) => self.end(token, Ending::Drop),
            (Route::Wait, _) => {}
            (Route::Upgrade(head), _) => self.admit(token, head),
            (Route::Respond(response), _) => self.refuse(token, response),
            (Route::Get(head), _) => {
                let response = self.handler.respond(&head, &self.stats()).unwrap_or_else(|| fallback(&head));
                self.reply(token, response);
            }
            (Route::AtCapacity, _) => {
                if let Some(suppressed) = self.capacity_warnings.allow(self.connections.now) {
                    warn!(
                        "{} connections, the limit: answering 503 ({suppressed} more since the last warning)",
                        self.max_connections
                    );
                }
                self.refuse(token, http::unavailable("too many connections\n"));
            }
        }
    }

    /// An upgrade that passed routing: learn who the client is (behind a trusted proxy, from the
    /// forwarding headers), apply the per-address limit, let the handler refuse it (a missing or
    /// bad token), and start the handshake.
    fn admit(&mut self, token: Token, head: RequestHead) {
        let Some(connection) = self.connections.slab.get_mut(token.0) else { return };
        let client = client_address(
            connection.peer,
            head.forwarded.as_deref(),
            head.x_forwarded_for.as_deref(),
            &self.trusted_proxies,
        );
        connection.client = client;
        if self.max_connections_per_ip > 0
            && self.connections.per_address(client.ip()) >= self.max_connections_per_ip
        {
            if let Some(suppressed) = self.per_address_warnings.allow(self.connections.now) {
                info!(
                    "connection {} from {client}: {} connections from that address already: answering 429 \
                     ({suppressed} more since the last such line)",
                    token.0, self.max_connections_per_ip
                );
            }
            let response = http::plain(429, "Too Many Requests", "too many connections from your address\n");
            return self.refuse(token, response);
        }
        if let Err(refusal) = self.handler.check_upgrade(&head, self.connections.unix_time_ms) {
            info!("connection {} from {client}: upgrade refused: {}", token.0, refusal.reason);
            return self.refuse(token, refusal.response);
        }
        self.start_handshake(token, head.target);
    }

    /// Answers a request the server will not serve (not HTTP, not a `GET`, an upgrade it does
    /// not take) with `response`, counted by its status for `/metrics`.
    fn refuse(&mut self, token: Token, response: Vec<u8>) {
        if let Some(status) = http::status_of(&response) {
            self.connections.stats.refused.add(status);
        }
        self.reply(token, response);
    }

    /// Hands the request head, replayed, to tungstenite's server handshake.
    fn start_handshake(&mut self, token: Token, target: String) {
        let Some(connection) = self.connections.slab.get_mut(token.0) else { return };
        let Phase::Request(request) = std::mem::replace(&mut connection.phase, Phase::Done) else { return };
        connection.counted = true;
        self.connections.websockets += 1;
        let client = connection.client.ip();
        self.connections.count_address(client);
        let socket = Socket::new(
            request.stream,
            request.head,
            self.connections.traffic.clone(),
            self.connections.inbox.clone(),
        );
        let result = tungstenite::accept_with_config(socket, Some(self.websocket_config));
        self.continue_handshake(token, target, result);
    }

    pub(super) fn resume_handshake(&mut self, token: Token) {
        let Some(connection) = self.connections.slab.get_mut(token.0) else { return };
        let Phase::Handshake(paused) = std::mem::replace(&mut connection.phase, Phase::Done) else { return };
        let HandshakeState { handshake, target } = *paused;
        self.continue_handshake(token, target, handshake.handshake());
    }

    fn continue_handshake(
        &mut self,
        token: Token,
        target: String,
        result: Result<WebSocket<Socket>, HandshakeError<HandshakeRole>>,
    ) {
        let queue_limit = self.connections.queue_limit();
        let Some(connection) = self.connections.slab.get_mut(token.0) else { return };
        match result {
            Ok(mut websocket) => {
                websocket.get_mut().start_queueing(queue_limit);
                let client = connection.client;
                connection.phase = Phase::Open(websocket);
                connection.last_activity = self.connections.now;
                self.connections.set_writable(token, false);
                // With TLS the 101 may still be records rustls holds; the flush writes them.
                self.connections.queue_flush(token);
                self.connections.arm(token, self.connections.now + self.timeouts.ping_interval);
                debug!(
                    "connection {} from {client} opened a WebSocket at {}",
                    token.0,
                    http::redacted(&target)
                );
                self.connections.stats.connections += 1;
                self.connections.stats.connections_accepted += 1;
                self.handler.on_open(token, &target, &mut self.connections);
                self.settle();
            }
            Err(HandshakeError::Interrupted(handshake)) => {
                // Only the 101 response can be left to write: the head was complete before the
                // handshake started. Wait until the socket takes more.
                connection.phase = Phase::Handshake(Box::new(HandshakeState { handshake, target }));
                self.connections.set_writable(token, true);
            }
            Err(HandshakeError::Failure(error)) => {
                // tungstenite dropped the socket with the failed handshake; only the slot is left.
                debug!("connection {}: handshake failed: {error}", token.0);
                self.connections.release(token);
            }
        }
    }

    /// A client that sent plain HTTP (or garbage) to the TLS port: a 400 in plain text, which a
    /// browser or curl shows, then the close.
    fn refuse_plain_text(&mut self, token: Token) {
        let Some(connection) = self.connections.slab.get_mut(token.0) else { return };
        let Phase::Request(request) = std::mem::replace(&mut connection.phase, Phase::Done) else { return };
        let RequestState { stream, head } = *request;
        connection.phase = Phase::Request(Box::new(RequestState { stream: stream.into_plain(), head }));
        let body = "this port speaks TLS: use https:// or wss://\n";
        self.refuse(token, http::plain(400, "Bad Request", body));
    }

    /// Switches the connection to answering a plain HTTP request with `response`.
    fn reply(&mut self, token: Token, response: Vec<u8>) {
        let Some(connection) = self.connections.slab.get_mut(token.0) else { return };
        let Phase::Request(request) = std::mem::replace(&mut connection.phase, Phase::Done) else { return };
        let reply = ReplyState { stream: request.stream, outgoing: Outgoing::of(response), traffic: None };
        connection.phase = Phase::Reply(Box::new(reply));
        self.connections.queue_flush(token);
        // A client that does not read its response, or never hangs up, is dropped at this deadline.
        self.connections.arm(token, self.connections.now + self.timeouts.close);
    }

    pub(super) fn discard_reply_input(&mut self, token: Token) {
        let Some(Phase::Reply(reply)) = self.connections.slab.get_mut(token.0).map(|c| &mut c.phase) else {
            return;
        };
        match reply.discard_input() {
            // The event may also mean the socket is writable again.
            Flushed::All | Flushed::Blocked | Flushed::HangUp | Flushed::Closed | Flushed::Overflowed => {
                self.connections.queue_flush(token)
            }
            Flushed::Finished | Flushed::Failed(_) => self.end(token, Ending::Drop),
        }
    }
}
