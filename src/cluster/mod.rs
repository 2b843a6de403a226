//! Many wschat processes sharing rooms through one Redis (`--redis`): a handler of its own, so the
//! standalone chat stays exactly as it is, with no Redis code on its path. Both share the chat's
//! rules (its protocol, names, rate limit, tokens and events); what differs is where shared state
//! lives.
//!
//! Here every change to shared state (a member entering or leaving, a message, a nickname, a DM)
//! is one call of a Lua script (`ops.lua`), which Redis runs whole: a room's `seq`, its epoch, its
//! members and its history live in Redis, and every room event is published on the room's channel.
//! A node delivers to its local members only what comes back from that channel, so every node
//! sees the order Redis chose. Each node keeps a replica (`replica.rs`) of the rooms its members are in, kept
//! current by those events, so `who` and welcomes ask nobody.
//!
//! Redis sits on the reactor's loop like any socket (`redis.rs`): nothing waits for it, a Redis that
//! stops answering is noticed by a timeout, and while it is out of reach the node says so: 503 at
//! `/healthz` and on upgrades, `unavailable` errors for requests that need it. Its members stay
//! connected; when Redis is back the node tells it who they are (`assert`), and each room catches
//! up from the stored state.
//!
//! Nodes beat every `--node-timeout` / 5 into a sorted set, and every beat removes the nodes whose
//! time ran out: their members leave, each exactly once, however many nodes notice.

mod greeting;
mod link;
mod members;
mod redis;
mod replica;
mod replies;
pub mod resp;
mod sync;
pub mod wire;

use std::collections::HashMap;
use std::net::SocketAddr;

use log::info;
use mio::{Registry, Token};

use crate::chat::protocol::{ErrorCode, Parsed, Rejection, Resume, parse_request};
use crate::chat::signed::{Auth, Signed, SignedMembers, TokenDeadlines};
use crate::chat::web::{self, ClusterFigures, Figures};
use crate::chat::{RateLimit, TokenBucket, reject};
use crate::handler::{CloseCode, Handler, Message, Outbox, Refusal, RequestHead, Stats};
use crate::http;
use redis::{Event as RedisEvent, Health, REPLY_TIMEOUT_MS, Redis};
use replica::Replica;

/// Member ids are a node's tag (21 bits, claimed in Redis) over a local counter (32 bits), so
/// they are unique across the cluster without asking Redis for each one, stay unique if Redis
/// comes back empty, and stay below 2^53 for JavaScript clients.
const TAG_BITS: u32 = 21;
const LOCAL_BITS: u32 = 32;

/// Most of one member's requests waiting for Redis at once: at it, the node stops reading from
/// the member (`Outbox::hold`) until half have been answered, so a client that pipelines faster
/// than Redis answers is slowed down by TCP instead of queuing without bound ahead of the others.
const MAX_REQUESTS_IN_FLIGHT_PER_MEMBER: u32 = 64;
/// Most commands waiting for Redis at once, all members together; past it a request is refused
/// with `unavailable` (a last resort: it takes hundreds of members pipelining at once).
const MAX_COMMANDS_IN_FLIGHT: usize = 16_384;

/// How the cluster is set up.
#[derive(Debug, Clone)]
pub struct Settings {
    pub redis: SocketAddr,
    pub db: u32,
    /// Separates clusters sharing one Redis (`--redis-prefix`).
    pub prefix: String,
    /// This node's name in the cluster (`--node-id`).
    pub node: String,
    /// How long a node that vanished keeps its members (`--node-timeout`).
    pub node_timeout_ms: u64,
    /// Messages each room keeps (`--history`).
    pub history: usize,
    /// Most bytes of history a welcome carries.
    pub history_bytes: usize,
    /// How long a room without members is kept (`--history-ttl`).
    pub history_ttl_ms: u64,
}

impl Settings {
    /// The prefix of every room's channel name.
    fn room_channel_prefix(&self) -> String {
        format!("{}:room:", self.prefix)
    }

    /// How often the node beats: five beats per timeout, so a live node is never mistaken for a
    /// dead one, and a dead one is noticed within the timeout.
    fn beat_interval_ms(&self) -> u64 {
        (self.node_timeout_ms / 5).max(100)
    }

    fn room_channel(&self, room: &str) -> String {
        format!("{}{room}", self.room_channel_prefix())
    }

    fn node_channel(&self) -> String {
        format!("{}:node:{}", self.prefix, self.node)
    }
}

/// What the node must remember about a command to handle its reply.
enum Pending {
    Assert,
    Beat,
    Probe,
    Stop,
    /// A member entering a room (arriving, or moving from another).
    Enter {
        id: u64,
        room: String,
        entry: Entry,
    },
    Leave,
    Say {
        id: u64,
        request: Option<String>,
        ts: u64,
    },
    Dm {
        id: u64,
        request: Option<String>,
        ts: u64,
    },
    Nick {
        id: u64,
        name: String,
        request: Option<String>,
    },
    /// A room's state, for a replica that lost track: the `serial`th asked for (only the latest
    /// is taken: an older one may predate the subscription).
    State {
        room: String,
        serial: u64,
    },
    /// A room's state, for a member who asked to join the room it is in.
    Snapshot {
        id: u64,
        resume: Option<Resume>,
    },
}

impl Pending {
    /// The member whose request this is, for the requests counted against
    /// `MAX_REQUESTS_IN_FLIGHT_PER_MEMBER`.
    fn requester(&self) -> Option<u64> {
        match self {
            Pending::Say { id, .. }
            | Pending::Dm { id, .. }
            | Pending::Nick { id, .. }
            | Pending::Snapshot { id, .. } => Some(*id),
            _ => None,
        }
    }
}

/// What a member's entry into a room answers with.
struct Entry {
    greeting: Greeting,
    resume: Option<Resume>,
    /// Errors to send after the greeting (a name or room that was refused).
    problems: Vec<Rejection>,
    /// The room it leaves, if it moves.
    leaving: Option<String>,
}

#[derive(Clone, Copy)]
enum Greeting {
    Welcome,
    Room,
}

/// A member connected to this node.
struct Member {
    id: u64,
    name: String,
    room: String,
    /// Whether Redis has it in `room`: false while its `enter` waits or is in flight.
    entered: bool,
    /// Its entry, until it is sent.
    entry: Option<Entry>,
    allowance: Option<TokenBucket>,
    signed: Option<Box<Signed>>,
    /// Its requests waiting for Redis.
    in_flight: u32,
    /// Whether the node stopped reading from it until those are answered.
    held: bool,
}

impl SignedMembers for HashMap<Token, Member> {
    fn signed_mut(&mut self, token: Token) -> Option<&mut Signed> {
        self.get_mut(&token)?.signed.as_deref_mut()
    }
}

/// The chat across a cluster: this node's members and its replicas of their rooms.
pub struct Cluster {
    settings: Settings,
    redis: Redis<Pending>,
    rate_limit: Option<RateLimit>,
    auth: Option<Auth>,
    token_deadlines: TokenDeadlines,
    members: HashMap<Token, Member>,
    /// Local members' connections, by member id.
    tokens: HashMap<u64, Token>,
    /// Replicas of the rooms local members are in, or are entering.
    rooms: HashMap<String, Replica>,
    /// The high bits of this node's member ids.
    tag: u64,
    next_local: u64,
    /// Whether Redis has been told, on this connection, who this node's members are.
    asserted: bool,
    /// Whether the node's own channel (DMs, evictions, probes) is subscribed.
    node_subscribed: bool,
    /// Since when the subscription has been down while commands work (Unix ms).
    subscriber_down_since: Option<u64>,
    next_beat_at: u64,
    /// The liveness probe in flight: its number and when it was sent.
    probe: Option<(u64, u64)>,
    probes_sent: u64,
    random: fastrand::Rng,
    rate_limited_frames: u64,
    /// When the reactor was last asked to wake the cluster.
    wake_at: Option<u64>,
    /// A graceful shutdown is under way.
    stopping: bool,
    /// Now, as of the latest call from the reactor (Unix ms).
    now_ms: u64,
    /// What Redis said, to be handled.
    events: Vec<RedisEvent<Pending>>,
    /// The node's own channel, and the prefix of room channels, spelled once.
    node_channel: Vec<u8>,
    room_channel_prefix: Vec<u8>,
    /// The settings every script call passes (`--history-ttl`, `--history`), spelled once rather
    /// than per message.
    ttl_arg: String,
    history_arg: String,
}

impl Cluster {
    pub fn new(settings: Settings) -> Cluster {
        let mut random = fastrand::Rng::new();
        let tag = random.u64(1..(1 << TAG_BITS));
        let node_channel = settings.node_channel().into_bytes();
        let room_channel_prefix = settings.room_channel_prefix().into_bytes();
        let settings_args = (settings.history_ttl_ms.to_string(), settings.history.to_string());
        info!("cluster: node {} joins through redis://{}/{}", settings.node, settings.redis, settings.db);
        Cluster {
            redis: Redis::new(settings.redis, settings.db),
            settings,
            rate_limit: None,
            auth: None,
            token_deadlines: TokenDeadlines::default(),
            members: HashMap::new(),
            tokens: HashMap::new(),
            rooms: HashMap::new(),
            tag,
            next_local: 1,
            asserted: false,
            node_subscribed: false,
            subscriber_down_since: None,
            next_beat_at: 0,
            probe: None,
            probes_sent: 0,
            random,
            rate_limited_frames: 0,
            wake_at: None,
            stopping: false,
            now_ms: 0,
            events: Vec::new(),
            node_channel,
            room_channel_prefix,
            ttl_arg: settings_args.0,
            history_arg: settings_args.1,
        }
    }

    pub fn with_rate_limit(mut self, limit: RateLimit) -> Self {
        self.rate_limit = Some(limit);
        self
    }

    pub fn with_auth(mut self, auth: Auth) -> Self {
        self.auth = Some(auth);
        self
    }

    /// Whether requests can be served: Redis answers commands. (A subscription that is down
    /// only delays what this node's members hear: they catch up from the stored state.)
    fn available(&self) -> bool {
        *self.redis.health() == Health::Up
    }

    /// Whether the node is healthy for a load balancer (`/healthz`, upgrades): available, and its
    /// subscription not down for long, so that a node whose members hear nothing is drained.
    fn healthy(&self) -> bool {
        self.available()
            && self
                .subscriber_down_since
                .is_none_or(|since| self.now_ms.saturating_sub(since) < REPLY_TIMEOUT_MS)
    }

    fn unavailable_reason(&self) -> String {
        match self.redis.health() {
            Health::Down(reason) => reason.clone(),
            Health::Up if !self.healthy() => "the subscription to Redis is down".into(),
            Health::Up => "ok".into(),
        }
    }

    /// Calls the script: `op`, the settings every operation needs, then `args`.
    fn eval(&mut self, pending: Pending, op: &str, args: &[&[u8]]) {
        if let Some(member) = self.requester_mut(pending.requester()) {
            member.in_flight += 1;
        }
        let mut all: Vec<&[u8]> = vec![
            op.as_bytes(),
            self.settings.prefix.as_bytes(),
            self.settings.node.as_bytes(),
            self.ttl_arg.as_bytes(),
            self.history_arg.as_bytes(),
        ];
        all.extend_from_slice(args);
        self.redis.eval(pending, &all, self.now_ms, &mut self.events);
    }

    fn requester_mut(&mut self, requester: Option<u64>) -> Option<&mut Member> {
        let token = self.tokens.get(&requester?)?;
        self.members.get_mut(token)
    }

    /// A member's request was answered (or failed): a member held for having too many waiting
    /// is read again once half of them are done.
    fn request_done<O: Outbox>(&mut self, requester: Option<u64>, out: &mut O) {
        let Some(&token) = requester.and_then(|id| self.tokens.get(&id)) else { return };
        let Some(member) = self.members.get_mut(&token) else { return };
        member.in_flight = member.in_flight.saturating_sub(1);
        if member.held && member.in_flight <= MAX_REQUESTS_IN_FLIGHT_PER_MEMBER / 2 {
            member.held = false;
            out.release(token);
        }
    }

    fn epoch_candidate(&mut self) -> String {
        (0..8).map(|_| self.random.alphanumeric().to_ascii_lowercase()).collect()
    }

    fn figures(&self) -> Figures {
        Figures {
            rooms: self.rooms.len(),
            rooms_without_members: 0,
            history_bytes: 0,
            rate_limited_frames: self.rate_limited_frames,
            cluster: Some(ClusterFigures {
                node: self.settings.node.clone(),
                available: self.healthy(),
                reason: (!self.healthy()).then(|| self.unavailable_reason()),
            }),
        }
    }
}

impl Handler for Cluster {
    fn attach<O: Outbox>(&mut self, registry: &Registry, out: &mut O) -> std::io::Result<()> {
        self.redis.attach(registry.try_clone()?);
        self.now_ms = out.unix_time_ms();
        self.tick(out);
        self.redis.flush(self.now_ms, &mut self.events);
        self.process(out);
        self.schedule(out);
        Ok(())
    }

    fn check_upgrade(&mut self, request: &RequestHead, unix_ms: u64) -> Result<(), Refusal> {
        self.now_ms = unix_ms;
        if !self.healthy() {
            let reason = format!("cluster unavailable: {}", self.unavailable_reason());
            let response = http::plain(503, "Service Unavailable", &format!("{reason}\n"));
            return Err(Refusal { response, reason });
        }
        self.auth.as_ref().map_or(Ok(()), |auth| auth.check_upgrade(request, unix_ms))
    }

    fn on_open<O: Outbox>(&mut self, connection: Token, target: &str, out: &mut O) {
        self.now_ms = out.unix_time_ms();
        self.arrive(connection, target, out);
        self.process(out);
    }

    fn on_message<O: Outbox>(&mut self, connection: Token, message: Message, out: &mut O) {
        self.now_ms = out.unix_time_ms();
        let Message::Text(text) = message else {
            return out.close(connection, CloseCode::Unsupported, "binary frames are not supported");
        };
        let Parsed { id, request } = parse_request(&text);
        let limit = self.rate_limit;
        let allowance = self.members.get_mut(&connection).and_then(|member| member.allowance.as_mut());
        if let (Some(limit), Some(allowance)) = (limit, allowance)
            && !allowance.try_take(limit, self.now_ms)
        {
            self.rate_limited_frames += 1;
            let rejection = Rejection::new(ErrorCode::RateLimited, "too many messages; this one was dropped");
            return reject(out, connection, &rejection, id.as_deref());
        }
        match request {
            Ok(request) => self.handle(connection, id.as_deref(), request, out),
            Err(rejection) => reject(out, connection, &rejection, id.as_deref()),
        }
        self.process(out);
    }

    fn on_close<O: Outbox>(&mut self, connection: Token, out: &mut O) {
        self.now_ms = out.unix_time_ms();
        self.depart(connection);
        self.process(out);
    }

    fn on_source<O: Outbox>(&mut self, source: Token, out: &mut O) {
        self.now_ms = out.unix_time_ms();
        self.redis.on_source(source, self.now_ms, &mut self.events);
        self.process(out);
    }

    fn on_timer<O: Outbox>(&mut self, out: &mut O) {
        self.now_ms = out.unix_time_ms();
        self.wake_at = None;
        self.tick(out);
    }

    fn end_of_iteration<O: Outbox>(&mut self, out: &mut O) {
        self.now_ms = out.unix_time_ms();
        self.redis.flush(self.now_ms, &mut self.events);
        self.process(out);
        self.schedule(out);
    }

    /// Every member has left (and Redis been told); the node says goodbye.
    fn on_shutdown<O: Outbox>(&mut self, out: &mut O) {
        self.now_ms = out.unix_time_ms();
        self.stopping = true;
        if self.available() {
            self.eval(Pending::Stop, "stop", &[]);
        }
        self.process(out);
    }

    fn is_busy(&self) -> bool {
        self.stopping && self.available() && self.redis.is_busy()
    }

    fn respond(&mut self, request: &RequestHead, stats: &Stats) -> Option<Vec<u8>> {
        if request.path() == "/healthz" {
            return Some(if self.healthy() {
                http::plain(200, "OK", "ok\n")
            } else {
                http::plain(
                    503,
                    "Service Unavailable",
                    &format!("unavailable: {}\n", self.unavailable_reason()),
                )
            });
        }
        web::respond(&self.figures(), request, stats)
    }
}

#[cfg(test)]
mod tests;
