//! The node's two connections to Redis, on the reactor's loop: one for commands (the cluster
//! script, with EVALSHA), one subscribed to the node's channels (a connection in subscribe mode
//! can do nothing else). Every command is timed: a Redis that stops answering (SIGSTOP, a dead
//! box) is given up after `REPLY_TIMEOUT`, never waited for. A lost connection is retried with
//! exponential backoff and jitter, forever.
//!
//! This layer knows RESP and the connection's life; what the replies mean is the cluster's. Each
//! command carries a `T` (what the cluster must remember to handle its reply), handed back with
//! the reply, or with the failure if the connection is lost first.

use std::collections::VecDeque;
use std::net::SocketAddr;

use log::{debug, info, warn};
use mio::{Registry, Token};

use super::link::Link;
use super::resp::{Reply, text};
use crate::handler::HANDLER_SOURCES;

/// The commands connection's token.
pub const COMMANDS: Token = Token(*HANDLER_SOURCES.start());
/// The subscriber connection's token.
pub const SUBSCRIBER: Token = Token(*HANDLER_SOURCES.start() + 1);

/// How long Redis may take to answer a command (or to accept a connection) before it is
/// presumed gone. Redis answers in microseconds; a second means it is stopped or unreachable.
pub const REPLY_TIMEOUT_MS: u64 = 2_000;
/// The first retry after a failure comes after about this long, doubling up to `MAX_BACKOFF_MS`.
const FIRST_BACKOFF_MS: u64 = 100;
const MAX_BACKOFF_MS: u64 = 5_000;

/// The cluster's script, loaded on every new connection.
pub const SCRIPT: &str = include_str!("ops.lua");

/// What happened on the connections, for the cluster to act on.
pub enum Event<T> {
    /// The commands connection is up and the script loaded: the cluster may `eval`.
    CommandsReady,
    /// The subscriber connection is up: the cluster subscribes to its channels.
    SubscriberReady,
    /// The reply to a command sent with `eval` or `command`.
    Reply(T, Reply),
    /// Redis confirmed a subscription.
    Subscribed(Vec<u8>),
    /// A message on a subscribed channel.
    Message(Vec<u8>, Vec<u8>),
    /// These commands failed: never sent, or in flight when the connection was lost.
    Failed(Vec<T>),
    /// Both connections were dropped (a `Failed` with what was in flight came first).
    Lost,
    /// The subscriber connection alone was dropped (Redis killed it, or it stopped delivering):
    /// it is reconnected at once; whatever it missed, the rooms' stored state has.
    SubscriberLost,
}

/// Where the connections are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Up,
    Down(String),
}

pub struct Redis<T> {
    addr: SocketAddr,
    db: u32,
    registry: Option<Registry>,
    commands: Link,
    subscriber: Link,
    /// Commands sent on the commands connection and not answered yet, oldest first, with when
    /// each was sent. `None` for the connection's own (SELECT, SCRIPT LOAD).
    in_flight: VecDeque<(Option<T>, u64)>,
    /// When the subscriber's oldest unanswered command (SUBSCRIBE, PING) was sent.
    subscriber_waiting_since: Option<u64>,
    subscriber_unanswered: usize,
    /// The script's SHA1, once loaded on this connection.
    sha: Option<String>,
    health: Health,
    /// When the commands connection's attempt began, until it is connected.
    commands_connecting_since: Option<u64>,
    /// When the subscriber's attempt began, until it is connected.
    subscriber_connecting_since: Option<u64>,
    /// When to try both connections again, while down.
    retry_at: Option<u64>,
    failures: u32,
    /// When to try the subscriber again, after it alone was lost.
    subscriber_retry_at: Option<u64>,
    subscriber_failures: u32,
    random: fastrand::Rng,
}

impl<T> Redis<T> {
    pub fn new(addr: SocketAddr, db: u32) -> Redis<T> {
        Redis {
            addr,
            db,
            registry: None,
            commands: Link::new(COMMANDS),
            subscriber: Link::new(SUBSCRIBER),
            in_flight: VecDeque::new(),
            subscriber_waiting_since: None,
            subscriber_unanswered: 0,
            sha: None,
            health: Health::Down("connecting to Redis".into()),
            commands_connecting_since: None,
            subscriber_connecting_since: None,
            retry_at: Some(0),
            failures: 0,
            subscriber_retry_at: None,
            subscriber_failures: 0,
            random: fastrand::Rng::new(),
        }
    }

    /// Takes the reactor's registry; the first connection attempt happens on the first `tick`.
    pub fn attach(&mut self, registry: Registry) {
        self.registry = Some(registry);
    }

    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Whether commands can be sent: connected and the script loaded.
    pub fn commands_ready(&self) -> bool {
        self.sha.is_some()
    }

    pub fn subscriber_ready(&self) -> bool {
        self.subscriber.is_connected()
    }

    /// Whether any command is waiting for its reply.
    pub fn is_busy(&self) -> bool {
        !self.in_flight.is_empty()
    }

    /// Marks the node up (the cluster decides when: connected, asserted, subscribed).
    pub fn set_up(&mut self) {
        if self.health != Health::Up {
            info!("cluster: connected to Redis at {}", self.addr);
        }
        self.health = Health::Up;
        self.failures = 0;
    }

    /// Calls the cluster script: `EVALSHA sha 0 args...`.
    pub fn eval(&mut self, tag: T, args: &[&[u8]], now_ms: u64, events: &mut Vec<Event<T>>) {
        let Some(sha) = self.sha.clone() else {
            return events.push(Event::Failed(vec![tag]));
        };
        let mut command: Vec<&[u8]> = vec![b"EVALSHA", sha.as_bytes(), b"0"];
        command.extend_from_slice(args);
        self.command(tag, &command, now_ms, events);
    }

    /// Sends any command on the commands connection.
    pub fn command(&mut self, tag: T, args: &[&[u8]], now_ms: u64, events: &mut Vec<Event<T>>) {
        if let Err(error) = self.commands.send(args) {
            events.push(Event::Failed(vec![tag]));
            return self.fail(&error.to_string(), now_ms, events);
        }
        self.in_flight.push_back((Some(tag), now_ms));
    }

    /// Sends a command on the subscriber connection (SUBSCRIBE, UNSUBSCRIBE, PING).
    pub fn subscriber_command(&mut self, args: &[&[u8]], now_ms: u64, events: &mut Vec<Event<T>>) {
        if !self.subscriber.is_connected() {
            return;
        }
        if let Err(error) = self.subscriber.send(args) {
            return self.fail_subscriber(&error.to_string(), now_ms, events);
        }
        if args[0] != b"UNSUBSCRIBE" {
            self.subscriber_unanswered += args.len().saturating_sub(1).max(1);
            self.subscriber_waiting_since.get_or_insert(now_ms);
        }
    }

    /// One of the two sockets is ready.
    pub fn on_source(&mut self, source: Token, now_ms: u64, events: &mut Vec<Event<T>>) {
        let Some(registry) = self.registry.as_ref() else { return };
        let mut replies = Vec::new();
        if source == COMMANDS {
            match self.commands.on_ready(registry, &mut replies) {
                Ok(true) => {
                    self.commands_connecting_since = None;
                    self.commands_connected(now_ms, events);
                }
                Ok(false) => {}
                Err(error) => return self.fail(&format!("commands connection: {error}"), now_ms, events),
            }
            for reply in replies {
                self.command_reply(reply, now_ms, events);
            }
        } else if source == SUBSCRIBER {
            match self.subscriber.on_ready(registry, &mut replies) {
                Ok(true) => {
                    self.subscriber_connecting_since = None;
                    self.subscriber_failures = 0;
                    events.push(Event::SubscriberReady);
                }
                Ok(false) => {}
                Err(error) => {
                    return self.fail_subscriber(&format!("subscriber connection: {error}"), now_ms, events);
                }
            }
            for reply in replies {
                self.subscriber_reply(reply, now_ms, events);
            }
        }
    }

    fn commands_connected(&mut self, now_ms: u64, events: &mut Vec<Event<T>>) {
        debug!("cluster: commands connection to {} open", self.addr);
        let db = self.db.to_string();
        let mut sent = self.db == 0 || self.commands.send(&[b"SELECT", db.as_bytes()]).is_ok();
        if self.db != 0 {
            self.in_flight.push_back((None, now_ms));
        }
        sent = sent && self.commands.send(&[b"SCRIPT", b"LOAD", SCRIPT.as_bytes()]).is_ok();
        self.in_flight.push_back((None, now_ms));
        if !sent {
            self.fail("cannot queue the script", now_ms, events);
        }
    }

    fn command_reply(&mut self, reply: Reply, now_ms: u64, events: &mut Vec<Event<T>>) {
        let Some((tag, _)) = self.in_flight.pop_front() else {
            return self.fail("Redis sent a reply nobody asked for", now_ms, events);
        };
        match (tag, reply) {
            // The script cache was flushed under us: reconnecting loads it again.
            (Some(tag), Reply::Error(error)) if error.starts_with("NOSCRIPT") => {
                events.push(Event::Failed(vec![tag]));
                self.fail("Redis forgot the cluster script", now_ms, events);
            }
            (Some(tag), reply) => events.push(Event::Reply(tag, reply)),
            (None, Reply::Error(error)) => {
                self.fail(&format!("Redis refused to set up: {error}"), now_ms, events)
            }
            (None, reply) => {
                if let Some(sha) = text(&reply).filter(|sha| sha.len() == 40) {
                    self.sha = Some(sha.to_owned());
                    events.push(Event::CommandsReady);
                }
            }
        }
    }

    fn subscriber_reply(&mut self, reply: Reply, now_ms: u64, events: &mut Vec<Event<T>>) {
        let Reply::Array(mut parts) = reply else {
            if let Reply::Error(error) = reply {
                self.fail_subscriber(&format!("subscriber connection: {error}"), now_ms, events);
            }
            return;
        };
        let kind = parts.first().and_then(text).unwrap_or_default().to_owned();
        match kind.as_str() {
            "message" if parts.len() == 3 => {
                let payload = bytes_of(parts.pop());
                let channel = bytes_of(parts.pop());
                events.push(Event::Message(channel, payload));
            }
            "subscribe" | "pong" => {
                self.subscriber_unanswered = self.subscriber_unanswered.saturating_sub(1);
                self.subscriber_waiting_since = (self.subscriber_unanswered > 0).then_some(now_ms);
                if kind == "subscribe" && parts.len() >= 2 {
                    events.push(Event::Subscribed(bytes_of(Some(parts.swap_remove(1)))));
                }
            }
            _ => {}
        }
    }

    /// Writes what the iteration queued.
    pub fn flush(&mut self, now_ms: u64, events: &mut Vec<Event<T>>) {
        let Some(registry) = self.registry.as_ref() else { return };
        let result = self.commands.flush(registry).and_then(|()| self.subscriber.flush(registry));
        if let Err(error) = result {
            self.fail(&format!("cannot write to Redis: {error}"), now_ms, events);
        }
    }

    /// Timeouts and retries, at `now_ms`.
    pub fn tick(&mut self, now_ms: u64, events: &mut Vec<Event<T>>) {
        if self.retry_at.is_some_and(|at| at <= now_ms) {
            return self.reconnect(now_ms, events);
        }
        if self.subscriber_retry_at.is_some_and(|at| at <= now_ms) {
            self.subscriber_retry_at = None;
            self.subscriber_connecting_since = Some(now_ms);
            let Some(registry) = self.registry.as_ref() else { return };
            if let Err(error) = self.subscriber.connect(self.addr, registry) {
                return self.fail_subscriber(&format!("cannot connect: {error}"), now_ms, events);
            }
        }
        let late =
            |since: Option<u64>| since.is_some_and(|since| now_ms.saturating_sub(since) >= REPLY_TIMEOUT_MS);
        if late(self.commands_connecting_since) || late(self.in_flight.front().map(|&(_, sent)| sent)) {
            return self.fail(&format!("Redis did not answer within {REPLY_TIMEOUT_MS} ms"), now_ms, events);
        }
        if late(self.subscriber_connecting_since) || late(self.subscriber_waiting_since) {
            let reason = format!("the subscriber connection got no answer within {REPLY_TIMEOUT_MS} ms");
            self.fail_subscriber(&reason, now_ms, events);
        }
    }

    /// When `tick` has something to do next.
    pub fn next_deadline(&self) -> Option<u64> {
        let timeouts = [
            self.commands_connecting_since,
            self.in_flight.front().map(|&(_, sent)| sent),
            self.subscriber_connecting_since,
            self.subscriber_waiting_since,
        ];
        let timeouts = timeouts.into_iter().flatten().map(|since| since + REPLY_TIMEOUT_MS);
        timeouts.chain([self.retry_at, self.subscriber_retry_at].into_iter().flatten()).min()
    }

    fn reconnect(&mut self, now_ms: u64, events: &mut Vec<Event<T>>) {
        self.retry_at = None;
        let Some(registry) = self.registry.as_ref() else { return };
        let result = self
            .commands
            .connect(self.addr, registry)
            .and_then(|()| self.subscriber.connect(self.addr, registry));
        self.commands_connecting_since = Some(now_ms);
        self.subscriber_connecting_since = Some(now_ms);
        if let Err(error) = result {
            self.fail(&format!("cannot connect to Redis at {}: {error}", self.addr), now_ms, events);
        }
    }

    /// A backoff after `failures` failures in a row: exponential, with jitter over its upper
    /// half, so that nodes that lost Redis together do not all come back in the same millisecond.
    fn backoff(&mut self, failures: u32) -> u64 {
        let backoff = (FIRST_BACKOFF_MS << failures.min(10)).min(MAX_BACKOFF_MS);
        backoff / 2 + self.random.u64(0..=backoff / 2)
    }

    /// Gives the subscriber connection up and tries it again soon; commands go on.
    pub fn fail_subscriber(&mut self, reason: &str, now_ms: u64, events: &mut Vec<Event<T>>) {
        if let Some(registry) = self.registry.as_ref() {
            self.subscriber.close(registry);
        }
        self.subscriber_waiting_since = None;
        self.subscriber_unanswered = 0;
        self.subscriber_connecting_since = None;
        let delay = if self.subscriber_failures == 0 { 0 } else { self.backoff(self.subscriber_failures) };
        self.subscriber_failures = self.subscriber_failures.saturating_add(1);
        self.subscriber_retry_at = Some(now_ms + delay);
        warn!("cluster: subscription lost: {reason}; resubscribing in {delay} ms");
        events.push(Event::SubscriberLost);
    }

    /// Gives both connections up, fails every command in flight, and retries after a backoff.
    pub fn fail(&mut self, reason: &str, now_ms: u64, events: &mut Vec<Event<T>>) {
        if let Some(registry) = self.registry.as_ref() {
            self.commands.close(registry);
            self.subscriber.close(registry);
        }
        let failed: Vec<T> = self.in_flight.drain(..).filter_map(|(tag, _)| tag).collect();
        self.sha = None;
        self.subscriber_waiting_since = None;
        self.subscriber_unanswered = 0;
        self.commands_connecting_since = None;
        self.subscriber_connecting_since = None;
        self.subscriber_retry_at = None;
        let delay = self.backoff(self.failures);
        self.failures = self.failures.saturating_add(1);
        self.retry_at = Some(now_ms + delay);
        let reason = reason.to_owned();
        if self.health == Health::Up {
            warn!("cluster: unavailable: {reason}; retrying in {delay} ms");
        } else {
            debug!("cluster: still unavailable: {reason}; retrying in {delay} ms");
        }
        self.health = Health::Down(reason);
        events.push(Event::Failed(failed));
        events.push(Event::Lost);
    }
}

fn bytes_of(reply: Option<Reply>) -> Vec<u8> {
    match reply {
        Some(Reply::BulkString(bytes) | Reply::SimpleString(bytes)) => bytes,
        _ => Vec::new(),
    }
}
