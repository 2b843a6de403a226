//! What happens when a connection's deadline comes: a handshake that took too long, a close
//! handshake the peer never finished, or a heartbeat check. Every connection has exactly one
//! deadline on the timer wheel at a time; which one depends on its phase.

use std::time::Duration;

use log::debug;
use mio::Token;

use super::Reactor;
use super::connection::Phase;
use super::connections::{Ending, HANDLER_TIMER};
use crate::config::Config;
use crate::frame::Frame;
use crate::handler::Handler;

/// The deadlines' lengths, from the command line.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Silence after which an open connection is pinged (`--ping-interval`).
    pub ping_interval: Duration,
    /// Silence after a ping after which the connection is dropped (`--ping-timeout`).
    pub ping_timeout: Duration,
    /// Time from accept to a completed upgrade (`--handshake-timeout`).
    pub handshake: Duration,
    /// Time for the peer to answer our close frame, or to read an HTTP response and hang up
    /// (`--close-timeout`).
    pub close: Duration,
}

impl From<&Config> for Timeouts {
    fn from(config: &Config) -> Self {
        Timeouts {
            ping_interval: config.ping_interval,
            ping_timeout: config.ping_timeout,
            handshake: config.handshake_timeout,
            close: config.close_timeout,
        }
    }
}

impl<H: Handler> Reactor<H> {
    /// Step 3 of the loop: acts on every deadline that has come.
    pub(super) fn fire_deadlines(&mut self) {
        let mut fired = Vec::new();
        self.connections.timers.expire(self.connections.now, &mut fired);
        for deadline in fired {
            if deadline.token == HANDLER_TIMER {
                self.connections.handler_timer = None;
                self.handler.on_timer(&mut self.connections);
                self.settle();
                continue;
            }
            let Some(connection) = self.connections.slab.get_mut(deadline.token.0) else { continue };
            // A connection cancels its deadline when it is released, so this should not happen;
            // the serial check makes sure a deadline never acts on a newcomer in a reused slot.
            if connection.serial != deadline.serial {
                continue;
            }
            connection.timer = None;
            let token = deadline.token;
            match connection.phase {
                Phase::Request(_) | Phase::Handshake(_) => {
                    debug!(
                        "connection {}: no WebSocket upgrade within {:?}; dropping",
                        token.0, self.timeouts.handshake
                    );
                    self.end(token, Ending::Abort);
                }
                Phase::Closing(_) | Phase::Failing(_) | Phase::Reply(_) => {
                    debug!(
                        "connection {}: not closed by the peer within {:?}; dropping",
                        token.0, self.timeouts.close
                    );
                    // Perhaps it is not reading: reset, so the kernel lets go of what is queued.
                    self.end(token, Ending::Abort);
                }
                Phase::Open(_) => self.check_heartbeat(token),
                Phase::Done => {}
            }
        }
    }

    /// The heartbeat, checked lazily: incoming frames only note the time they arrived, and this
    /// runs when the connection's deadline comes. A connection that keeps talking is never pinged;
    /// its deadline just moves to a full interval after its last frame.
    fn check_heartbeat(&mut self, token: Token) {
        let now = self.connections.now;
        let Some(connection) = self.connections.slab.get_mut(token.0) else { return };
        let Phase::Open(websocket) = &mut connection.phase else { return };
        if let Some(sent) = connection.ping_sent
            && connection.last_activity < sent
        {
            debug!(
                "connection {}: nothing heard within {:?} of a ping; dropping",
                token.0, self.timeouts.ping_timeout
            );
            return self.end(token, Ending::Abort);
        }
        let silent_until = connection.last_activity + self.timeouts.ping_interval;
        if now < silent_until {
            // Heard from since the deadline was set: check again a full interval after that.
            connection.ping_sent = None;
            return self.connections.arm(token, silent_until);
        }
        connection.ping_sent = Some(now);
        if websocket.get_mut().queue_frame(&Frame::ping()).is_err() {
            self.connections.condemn_slow_reader(token);
            return self.settle();
        }
        self.connections.queue_flush(token);
        self.connections.arm(token, now + self.timeouts.ping_timeout);
    }
}
