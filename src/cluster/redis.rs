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

use super::link::{Link, Transport};
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
    /// Both connections were dropped (a `Failed` with what was in flight, if anything was, came
    /// first).
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

pub struct Redis<T, L: Transport = Link> {
    addr: SocketAddr,
    db: u32,
    registry: Option<Registry>,
    commands: L,
    subscriber: L,
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
        Redis::with_transports(addr, db, Link::new(COMMANDS), Link::new(SUBSCRIBER))
    }
}

impl<T, L: Transport> Redis<T, L> {
    /// Connections of another kind than [`Link`] (the tests').
    pub fn with_transports(addr: SocketAddr, db: u32, commands: L, subscriber: L) -> Redis<T, L> {
        Redis {
            addr,
            db,
            registry: None,
            commands,
            subscriber,
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

    /// Commands waiting for their replies.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
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
        if !failed.is_empty() {
            events.push(Event::Failed(failed));
        }
        events.push(Event::Lost);
    }
}

fn bytes_of(reply: Option<Reply>) -> Vec<u8> {
    match reply {
        Some(Reply::BulkString(bytes) | Reply::SimpleString(bytes)) => bytes,
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::io;
    use std::rc::Rc;

    use mio::Poll;

    use super::*;

    /// One side of a scripted connection: what the layer sent, and what "Redis" says next.
    #[derive(Default)]
    struct Wire {
        sent: Vec<Vec<String>>,
        replies: Vec<Reply>,
        connects: usize,
        /// The next `on_ready` fails with this.
        break_next: Option<io::ErrorKind>,
    }

    /// A connection that completes its connect on the first readiness and delivers what the
    /// test put on its wire.
    struct Scripted {
        wire: Rc<RefCell<Wire>>,
        connecting: bool,
        connected: bool,
    }

    impl Transport for Scripted {
        fn connect(&mut self, _addr: SocketAddr, _registry: &Registry) -> io::Result<()> {
            self.wire.borrow_mut().connects += 1;
            (self.connecting, self.connected) = (true, false);
            Ok(())
        }

        fn is_connected(&self) -> bool {
            self.connected
        }

        fn close(&mut self, _registry: &Registry) {
            (self.connecting, self.connected) = (false, false);
        }

        fn send(&mut self, args: &[&[u8]]) -> io::Result<()> {
            let command = args.iter().map(|arg| String::from_utf8_lossy(arg).into_owned()).collect();
            self.wire.borrow_mut().sent.push(command);
            Ok(())
        }

        fn on_ready(&mut self, _registry: &Registry, replies: &mut Vec<Reply>) -> io::Result<bool> {
            let mut wire = self.wire.borrow_mut();
            if let Some(kind) = wire.break_next.take() {
                return Err(io::Error::new(kind, "scripted failure"));
            }
            let just_connected = self.connecting && !self.connected;
            self.connected |= self.connecting;
            replies.append(&mut wire.replies);
            Ok(just_connected)
        }

        fn flush(&mut self, _registry: &Registry) -> io::Result<()> {
            Ok(())
        }
    }

    struct Harness {
        redis: Redis<u32, Scripted>,
        commands: Rc<RefCell<Wire>>,
        subscriber: Rc<RefCell<Wire>>,
        events: Vec<Event<u32>>,
        _poll: Poll,
    }

    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

    impl Harness {
        /// Both connections up and the script loaded, at time 0.
        fn ready() -> Harness {
            let wire = || Rc::new(RefCell::new(Wire::default()));
            let (commands, subscriber) = (wire(), wire());
            let scripted = |wire: &Rc<RefCell<Wire>>| Scripted {
                wire: wire.clone(),
                connecting: false,
                connected: false,
            };
            let mut redis = Redis::with_transports(
                "127.0.0.1:6379".parse().unwrap(),
                0,
                scripted(&commands),
                scripted(&subscriber),
            );
            let poll = Poll::new().unwrap();
            redis.attach(poll.registry().try_clone().unwrap());
            let mut harness = Harness { redis, commands, subscriber, events: Vec::new(), _poll: poll };
            harness.tick(0);
            harness.ready_at(0);
            harness
        }

        fn ready_at(&mut self, now: u64) {
            self.commands.borrow_mut().replies.push(Reply::BulkString(SHA.as_bytes().to_vec()));
            self.redis.on_source(COMMANDS, now, &mut self.events);
            self.redis.on_source(SUBSCRIBER, now, &mut self.events);
            let events = self.take();
            assert!(events.iter().any(|event| matches!(event, Event::CommandsReady)));
            assert!(events.iter().any(|event| matches!(event, Event::SubscriberReady)));
        }

        fn tick(&mut self, now: u64) {
            self.redis.tick(now, &mut self.events);
        }

        fn take(&mut self) -> Vec<Event<u32>> {
            std::mem::take(&mut self.events)
        }
    }

    /// What happened, briefly: the tags of replies and failures, and the connection events.
    fn summary(events: &[Event<u32>]) -> Vec<String> {
        events
            .iter()
            .map(|event| match event {
                Event::CommandsReady => "commands ready".to_owned(),
                Event::SubscriberReady => "subscriber ready".to_owned(),
                Event::Reply(tag, _) => format!("reply {tag}"),
                Event::Subscribed(channel) => format!("subscribed {}", String::from_utf8_lossy(channel)),
                Event::Message(..) => "message".to_owned(),
                Event::Failed(tags) => format!("failed {tags:?}"),
                Event::Lost => "lost".to_owned(),
                Event::SubscriberLost => "subscriber lost".to_owned(),
            })
            .collect()
    }

    #[test]
    fn the_script_is_loaded_first_and_commands_then_go_out_as_evalsha() {
        let mut harness = Harness::ready();
        assert_eq!(harness.commands.borrow().sent[0][..2], ["SCRIPT", "LOAD"]);
        harness.redis.eval(1, &[b"say", b"x"], 5, &mut harness.events);
        assert_eq!(harness.commands.borrow().sent[1], ["EVALSHA", SHA, "0", "say", "x"]);
        harness.commands.borrow_mut().replies.push(Reply::Integer(4));
        harness.redis.on_source(COMMANDS, 6, &mut harness.events);
        assert_eq!(summary(&harness.take()), ["reply 1"]);
    }

    #[test]
    fn a_reply_that_never_comes_fails_its_command_at_the_timeout_and_the_node_retries() {
        let mut harness = Harness::ready();
        harness.redis.set_up();
        harness.redis.eval(7, &[b"say"], 100, &mut harness.events);
        harness.tick(100 + REPLY_TIMEOUT_MS - 1);
        assert!(harness.take().is_empty(), "not yet");
        assert_eq!(harness.redis.next_deadline(), Some(100 + REPLY_TIMEOUT_MS));
        harness.tick(100 + REPLY_TIMEOUT_MS);
        assert_eq!(summary(&harness.take()), ["failed [7]", "lost"]);
        assert!(matches!(harness.redis.health(), Health::Down(reason) if reason.contains("did not answer")));
        assert!(!harness.redis.commands_ready());
        // The first retry comes 50 to 100 ms later, on both connections.
        let retry = harness.redis.next_deadline().unwrap();
        assert!((2150..=2200).contains(&retry), "{retry}");
        harness.tick(retry);
        assert_eq!((harness.commands.borrow().connects, harness.subscriber.borrow().connects), (2, 2));
        harness.ready_at(retry);
        assert!(harness.redis.commands_ready());
    }

    #[test]
    fn a_connection_lost_mid_command_answers_what_came_and_fails_the_rest_in_order() {
        let mut harness = Harness::ready();
        for tag in 1..=3 {
            harness.redis.eval(tag, &[b"say"], 10, &mut harness.events);
        }
        harness.commands.borrow_mut().replies.push(Reply::Integer(1));
        harness.redis.on_source(COMMANDS, 11, &mut harness.events);
        harness.commands.borrow_mut().break_next = Some(io::ErrorKind::ConnectionReset);
        harness.redis.on_source(COMMANDS, 12, &mut harness.events);
        assert_eq!(summary(&harness.take()), ["reply 1", "failed [2, 3]", "lost"]);
        // Nothing is sent on a dropped connection: a command now fails at once.
        harness.redis.eval(4, &[b"say"], 13, &mut harness.events);
        assert_eq!(summary(&harness.take()), ["failed [4]"]);
    }

    #[test]
    fn a_subscriber_that_stops_answering_is_replaced_alone_and_at_once() {
        let mut harness = Harness::ready();
        harness.redis.subscriber_command(&[b"SUBSCRIBE", b"a", b"b"], 0, &mut harness.events);
        harness.subscriber.borrow_mut().replies.push(Reply::Array(vec![
            Reply::BulkString(b"subscribe".to_vec()),
            Reply::BulkString(b"a".to_vec()),
            Reply::Integer(1),
        ]));
        harness.redis.on_source(SUBSCRIBER, 1, &mut harness.events);
        assert_eq!(summary(&harness.take()), ["subscribed a"]);
        // The confirmation for b never comes.
        harness.tick(1 + REPLY_TIMEOUT_MS);
        assert_eq!(summary(&harness.take()), ["subscriber lost"]);
        assert!(harness.redis.commands_ready(), "commands go on");
        assert_eq!(harness.redis.next_deadline(), Some(1 + REPLY_TIMEOUT_MS), "retried at once");
        harness.tick(1 + REPLY_TIMEOUT_MS);
        assert_eq!((harness.commands.borrow().connects, harness.subscriber.borrow().connects), (1, 2));
    }

    #[test]
    fn a_redis_that_forgot_the_script_is_reconnected_to_load_it_again() {
        let mut harness = Harness::ready();
        harness.redis.eval(9, &[b"say"], 1, &mut harness.events);
        harness.commands.borrow_mut().replies.push(Reply::Error("NOSCRIPT No matching script".into()));
        harness.redis.on_source(COMMANDS, 2, &mut harness.events);
        assert_eq!(summary(&harness.take()), ["failed [9]", "lost"]);
    }

    #[test]
    fn the_backoff_doubles_up_to_five_seconds_with_jitter_in_its_upper_half() {
        let mut harness = Harness::ready();
        let mut bound = FIRST_BACKOFF_MS;
        for _ in 0..12 {
            harness.redis.fail("scripted", 0, &mut harness.events);
            let delay = harness.redis.next_deadline().unwrap();
            assert!((bound / 2..=bound).contains(&delay), "{delay} not within {bound}/2..={bound}");
            bound = (bound * 2).min(MAX_BACKOFF_MS);
        }
        assert_eq!(bound, MAX_BACKOFF_MS);
    }
}
