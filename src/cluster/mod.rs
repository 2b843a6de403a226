//! Many wschat processes sharing rooms through one Redis (`--redis`): a handler of its own, so the
//! standalone chat stays exactly as it is, with no Redis code on its path. Both share the chat's
//! rules (its protocol, names, rate limit, tokens and events); what differs is where shared state
//! lives.
//!
//! Here every change to shared state (a member entering or leaving, a message, a nickname, a DM)
//! is one call of a Lua script (`ops.lua`), which Redis runs whole: a room's `seq`, its epoch, its
//! members and its history live in Redis, and every room event is published on the room's channel.
//! A node delivers to its local members only what comes back from that channel, so every node
//! sees the order Redis chose. Each node keeps a [`Replica`] of the rooms its members are in, kept
//! current by those events, so `who` and welcomes ask nobody.
//!
//! Redis sits on the reactor's loop like any socket ([`redis`]): nothing waits for it, a Redis that
//! stops answering is noticed by a timeout, and while it is out of reach the node says so: 503 at
//! `/healthz` and on upgrades, `unavailable` errors for requests that need it. Its members stay
//! connected; when Redis is back the node tells it who they are (`assert`), and each room catches
//! up from the stored state.
//!
//! Nodes beat every `--node-timeout` / 5 into a sorted set, and every beat removes the nodes whose
//! time ran out: their members leave, each exactly once, however many nodes notice.

mod link;
mod redis;
mod replica;
pub mod resp;
pub mod wire;

use std::collections::HashMap;
use std::net::SocketAddr;

use log::{debug, error, info, warn};
use mio::{Registry, Token};
use serde_json::value::RawValue;

use crate::auth::Identity;
use crate::chat::messages::fits;
use crate::chat::names::{check_name_shape, check_room, guest_name};
use crate::chat::protocol::{
    ErrorCode, Event, MessageView, Parsed, Rejection, Request, Resume, RoomView, UpgradeQuery, UserView,
    parse_request,
};
use crate::chat::signed::{
    Auth, SIGNED_IN_ELSEWHERE, Signed, SignedMembers, TOKEN_EXPIRED, TokenDeadlines, deadlines_due, refresh,
};
use crate::chat::web::{self, ClusterFigures, Figures};
use crate::chat::{DEFAULT_ROOM, RateLimit, TokenBucket, reject};
use crate::handler::{CloseCode, Frame, Handler, Message, Outbox, Refusal, RequestHead, Stats};
use crate::http;
use redis::{Event as RedisEvent, Health, REPLY_TIMEOUT_MS, Redis};
use replica::{Applied, Replica};
use wire::{NodeEnvelope, Snapshot, node_envelope, room_envelope, snapshot};

/// A placeholder the node writes where Redis puts a number it alone knows (a message's seq, a
/// DM recipient's id): the event is serialized once, split around it, and Redis joins the halves.
/// No real seq or id reaches it (ids stay below 2^53).
const PLACEHOLDER: u64 = u64::MAX;

/// Member ids are a node's tag (21 bits, claimed in Redis) over a local counter (32 bits), so
/// they are unique across the cluster without asking Redis for each one, stay unique if Redis
/// comes back empty, and stay below 2^53 for JavaScript clients.
const TAG_BITS: u32 = 21;
const LOCAL_BITS: u32 = 32;

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
    signed: Option<Signed>,
}

impl SignedMembers for HashMap<Token, Member> {
    fn signed_mut(&mut self, token: Token) -> Option<&mut Signed> {
        self.get_mut(&token)?.signed.as_mut()
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
}

impl Cluster {
    pub fn new(settings: Settings) -> Cluster {
        let mut random = fastrand::Rng::new();
        let tag = random.u64(1..(1 << TAG_BITS));
        let node_channel = settings.node_channel().into_bytes();
        let room_channel_prefix = settings.room_channel_prefix().into_bytes();
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
        let ttl = self.settings.history_ttl_ms.to_string();
        let history = self.settings.history.to_string();
        let mut all: Vec<&[u8]> =
            vec![op.as_bytes(), self.settings.prefix.as_bytes(), self.settings.node.as_bytes()];
        all.extend([ttl.as_bytes(), history.as_bytes()]);
        all.extend_from_slice(args);
        self.redis.eval(pending, &all, self.now_ms, &mut self.events);
    }

    fn epoch_candidate(&mut self) -> String {
        (0..8).map(|_| self.random.alphanumeric().to_ascii_lowercase()).collect()
    }

    /// Handles what Redis said, until it has nothing more to say.
    fn process<O: Outbox>(&mut self, out: &mut O) {
        while !self.events.is_empty() {
            for event in std::mem::take(&mut self.events) {
                self.on_redis_event(event, out);
            }
        }
    }

    fn on_redis_event<O: Outbox>(&mut self, event: RedisEvent<Pending>, out: &mut O) {
        match event {
            RedisEvent::CommandsReady => self.send_assert(),
            RedisEvent::SubscriberReady => {
                let mut channels = vec![self.settings.node_channel()];
                channels.extend(self.rooms.keys().map(|room| self.settings.room_channel(room)));
                let mut command: Vec<&[u8]> = vec![b"SUBSCRIBE"];
                command.extend(channels.iter().map(String::as_bytes));
                self.redis.subscriber_command(&command, self.now_ms, &mut self.events);
            }
            RedisEvent::Subscribed(channel) => self.on_subscribed(&channel),
            RedisEvent::Message(channel, payload) => self.on_channel_message(&channel, &payload, out),
            RedisEvent::Reply(pending, reply) => self.on_reply(pending, reply, out),
            RedisEvent::Failed(failed) => {
                for pending in failed {
                    self.on_failed(pending, out);
                }
            }
            RedisEvent::Lost => self.on_lost(out),
            RedisEvent::SubscriberLost => self.on_subscriber_lost(out),
        }
        self.check_available();
    }

    /// The node is up once Redis knows its members and its channel is subscribed.
    fn check_available(&mut self) {
        if !self.available()
            && self.redis.commands_ready()
            && self.redis.subscriber_ready()
            && self.asserted
            && self.node_subscribed
        {
            self.redis.set_up();
        }
    }

    /// Tells Redis who this node's members are: after a reconnect it may have forgotten them (it
    /// restarted empty), or removed them (this node was presumed dead).
    fn send_assert(&mut self) {
        let members: Vec<serde_json::Value> = self
            .members
            .values()
            .filter(|member| member.entered)
            .map(|member| {
                serde_json::json!({
                    "id": member.id.to_string(),
                    "name": member.name,
                    "room": member.room,
                    "signed": if member.signed.is_some() { "1" } else { "0" },
                    "guest": guest_name(member.id),
                })
            })
            .collect();
        // Invariant: a list of string maps always serializes.
        let members = serde_json::to_string(&members).expect("members serialize");
        let tag = self.tag.to_string();
        let timeout = self.beat_score_ms().to_string();
        let epoch = self.epoch_candidate();
        self.eval(
            Pending::Assert,
            "assert",
            &[tag.as_bytes(), timeout.as_bytes(), members.as_bytes(), epoch.as_bytes()],
        );
    }

    /// How long after a beat the node is presumed dead: its timeout, less one beat interval, so
    /// that the others, beating that often, notice within the timeout.
    fn beat_score_ms(&self) -> u64 {
        self.settings.node_timeout_ms.saturating_sub(self.settings.beat_interval_ms()).max(1)
    }

    /// The room a channel is for, if it is a room's.
    fn room_of_channel<'c>(&self, channel: &'c [u8]) -> Option<&'c str> {
        let room = channel.strip_prefix(self.room_channel_prefix.as_slice())?;
        std::str::from_utf8(room).ok()
    }

    fn on_subscribed(&mut self, channel: &[u8]) {
        if channel == self.node_channel {
            self.node_subscribed = true;
            self.subscriber_down_since = None;
            return;
        }
        let Some(room) = self.room_of_channel(channel).map(str::to_owned) else { return };
        if let Some(replica) = self.rooms.get_mut(&room) {
            // Whatever the replica knew may predate the subscription: it starts over from a
            // state read after it.
            replica.subscribed = true;
            replica.lose_track_until_state();
        }
        self.room_ready(&room);
    }

    /// Once a room is subscribed and Redis knows this node's members: members waiting to enter
    /// it go in, and a replica that lost track asks for the room's state.
    fn room_ready(&mut self, room: &str) {
        let Some(replica) = self.rooms.get_mut(room) else { return };
        if !replica.subscribed || !self.asserted {
            return;
        }
        let to_enter = std::mem::take(&mut replica.to_enter);
        let needs_state = to_enter.is_empty() && !replica.live && !replica.state_requested;
        for token in to_enter {
            self.send_enter(token);
        }
        if needs_state {
            self.request_state(room);
        }
    }

    fn request_state(&mut self, room: &str) {
        let Some(replica) = self.rooms.get_mut(room) else { return };
        if replica.state_requested {
            return;
        }
        replica.state_requested = true;
        replica.state_serial += 1;
        let serial = replica.state_serial;
        let epoch = self.epoch_candidate();
        self.eval(
            Pending::State { room: room.to_owned(), serial },
            "state",
            &[room.as_bytes(), epoch.as_bytes()],
        );
    }

    fn on_channel_message<O: Outbox>(&mut self, channel: &[u8], payload: &[u8], out: &mut O) {
        if channel == self.node_channel {
            return match node_envelope(payload) {
                Some(envelope) => self.on_node_envelope(envelope, out),
                None => warn!("cluster: unreadable message on the node channel"),
            };
        }
        let Some(room) = self.room_of_channel(channel) else { return };
        let Some(envelope) = room_envelope(payload) else {
            return warn!("cluster: unreadable message on the channel of room {room}");
        };
        let Some(replica) = self.rooms.get_mut(room) else { return };
        if let Applied::NeedsState = replica.receive(room, envelope, out) {
            debug!("cluster: room {room}: missed events; fetching its state");
            let room = room.to_owned();
            self.request_state(&room);
        }
    }

    fn on_node_envelope<O: Outbox>(&mut self, envelope: NodeEnvelope, out: &mut O) {
        match envelope {
            NodeEnvelope::Probe(number) => {
                if self.probe.is_some_and(|(sent, _)| sent == number) {
                    self.probe = None;
                }
            }
            NodeEnvelope::Dm { to, event } => {
                if let Some(&token) = self.tokens.get(&to) {
                    out.send(token, &Frame::text(&event));
                }
            }
            NodeEnvelope::Evict { id, name } => self.evict(id, &name, out),
        }
    }

    /// A signed member on some node took `name` from local member `id`: a signed holder is
    /// closed (the newest connection wins), a guest becomes a guest again.
    fn evict<O: Outbox>(&mut self, id: u64, name: &str, out: &mut O) {
        let Some(&token) = self.tokens.get(&id) else { return };
        let Some(member) = self.members.get(&token) else { return };
        if member.name != name {
            return;
        }
        if member.signed.is_some() {
            return out.close(token, CloseCode::from(SIGNED_IN_ELSEWHERE), "signed in from elsewhere");
        }
        let guest = guest_name(id);
        let message = format!("the name `{name}` belongs to a signed-in member; you are a guest again");
        reject(out, token, &Rejection::new(ErrorCode::NameTaken, message), None);
        self.send_nick(token, guest, None);
    }

    fn on_reply<O: Outbox>(&mut self, pending: Pending, reply: resp::Reply, out: &mut O) {
        if let resp::Reply::Error(problem) = &reply {
            error!("cluster: Redis refused an operation: {problem}");
            return self.on_failed(pending, out);
        }
        match pending {
            Pending::Assert => self.on_asserted(&reply, out),
            Pending::Beat => {
                if let resp::Reply::Array(reaped) = &reply {
                    for node in reaped.iter().filter_map(resp::text) {
                        info!("cluster: node {node} stopped beating; its members have left");
                    }
                }
            }
            Pending::Probe | Pending::Stop | Pending::Leave => {}
            Pending::Enter { id, room, entry } => self.on_entered(id, &room, entry, &reply, out),
            Pending::Say { id, request, ts } => {
                let Some(&token) = self.tokens.get(&id) else { return };
                match first_integer(&reply).filter(|&seq| seq > 0) {
                    Some(seq) => {
                        if let Some(request) = request.as_deref() {
                            let seq = Some(seq as u64);
                            out.send(token, &Event::Ack { id: request, seq, ts }.to_frame());
                        }
                    }
                    None => unavailable(out, token, request.as_deref()),
                }
            }
            Pending::Dm { id, request, ts } => {
                let Some(&token) = self.tokens.get(&id) else { return };
                match resp::integer(&reply) {
                    Some(0) | None => {
                        let rejection = Rejection::new(ErrorCode::NoSuchUser, "nobody has that name");
                        reject(out, token, &rejection, request.as_deref());
                    }
                    Some(_) => {
                        if let Some(request) = request.as_deref() {
                            out.send(token, &Event::Ack { id: request, seq: None, ts }.to_frame());
                        }
                    }
                }
            }
            Pending::Nick { id, name, request } => {
                let Some(&token) = self.tokens.get(&id) else { return };
                if resp::integer(&reply) == Some(1) {
                    if let Some(member) = self.members.get_mut(&token) {
                        member.name = name;
                    }
                } else {
                    let rejection =
                        Rejection::new(ErrorCode::NameTaken, format!("the name `{name}` is taken"));
                    reject(out, token, &rejection, request.as_deref());
                }
            }
            Pending::State { room, serial } => {
                if self.rooms.get(&room).is_none_or(|replica| replica.state_serial != serial) {
                    return;
                }
                let Some(snapshot) = snapshot(&reply) else {
                    return self.redis.fail(
                        "Redis sent a room state wschat cannot read",
                        self.now_ms,
                        &mut self.events,
                    );
                };
                self.adopt(&room, snapshot, out);
            }
            Pending::Snapshot { id, resume } => {
                let Some(&token) = self.tokens.get(&id) else { return };
                let (Some(snapshot), Some(member)) = (snapshot(&reply), self.members.get(&token)) else {
                    return;
                };
                let greeting =
                    greeting(Greeting::Room, member, &snapshot, resume.as_ref(), self.settings.history_bytes);
                out.send(token, &greeting);
            }
        }
    }

    /// Redis agrees with the node again. Members whose name someone else took while Redis was out
    /// of reach are guests now, and told so.
    fn on_asserted<O: Outbox>(&mut self, reply: &resp::Reply, out: &mut O) {
        let resp::Reply::Array(parts) = reply else { return };
        if parts.first().and_then(resp::integer) != Some(1) {
            if self.members.is_empty() {
                self.tag = self.random.u64(1..(1 << TAG_BITS));
                warn!("cluster: another node holds this node's id tag; drew another");
                return self.send_assert();
            }
            error!(
                "cluster: another node holds this node's id tag, and this node has members with it; retrying"
            );
            return self.redis.fail("id tag taken", self.now_ms, &mut self.events);
        }
        for pair in parts[1..].chunks(2) {
            let [id, guest] = pair else { continue };
            let (Some(id), Some(guest)) = (resp::integer(id), resp::text(guest)) else { continue };
            let Some(&token) = self.tokens.get(&(id as u64)) else { continue };
            let Some(member) = self.members.get_mut(&token) else { continue };
            warn!(
                "cluster: the name {} was taken while Redis was out of reach; member {id} is now {guest}",
                member.name
            );
            let old = std::mem::replace(&mut member.name, guest.to_owned());
            let message = format!(
                "while this server could not reach the cluster, someone took the name `{old}`; you are `{guest}`"
            );
            reject(out, token, &Rejection::new(ErrorCode::NameTaken, message), None);
        }
        self.asserted = true;
        self.next_beat_at = self.now_ms + self.settings.beat_interval_ms();
        let rooms: Vec<String> = self.rooms.keys().cloned().collect();
        for room in rooms {
            self.room_ready(&room);
        }
    }

    /// A member's entry is done in Redis. It is welcomed once the replica has reached its own
    /// `joined` event, so that it hears exactly the events after its welcome.
    fn on_entered<O: Outbox>(
        &mut self,
        id: u64,
        room: &str,
        mut entry: Entry,
        reply: &resp::Reply,
        out: &mut O,
    ) {
        if let Some(replica) = self.rooms.get_mut(room) {
            replica.entering = replica.entering.saturating_sub(1);
        }
        let parts = match reply {
            resp::Reply::Array(parts) if parts.len() == 4 => parts,
            _ => {
                return self.redis.fail(
                    "Redis sent an entry wschat cannot read",
                    self.now_ms,
                    &mut self.events,
                );
            }
        };
        let (taken, name, ev, state) =
            (resp::integer(&parts[0]), resp::text(&parts[1]), resp::integer(&parts[2]), snapshot(&parts[3]));
        let (Some(taken), Some(name), Some(ev), Some(state)) = (taken, name, ev, state) else {
            return self.redis.fail("Redis sent an entry wschat cannot read", self.now_ms, &mut self.events);
        };
        let member =
            self.tokens.get(&id).and_then(|token| self.members.get_mut(token).map(|member| (*token, member)));
        let Some((token, member)) = member.filter(|(_, member)| member.room == room) else {
            // It left (or moved on) while entering: it leaves Redis's copy of the room too.
            self.eval(Pending::Leave, "leave", &[id.to_string().as_bytes(), room.as_bytes()]);
            return self.drop_if_unused(room);
        };
        if taken == 1 {
            let message = format!("the name `{}` is taken", member.name);
            entry.problems.push(Rejection::new(ErrorCode::NameTaken, message));
        }
        member.name = name.to_owned();
        member.entered = true;
        let mut frames = vec![greeting(
            entry.greeting,
            member,
            &state,
            entry.resume.as_ref(),
            self.settings.history_bytes,
        )];
        frames.extend(entry.problems.iter().map(|problem| {
            Event::Error { code: problem.code, message: &problem.message, id: None }.to_frame()
        }));
        self.adopt(room, state, out);
        let Some(replica) = self.rooms.get_mut(room) else { return };
        replica.waiting.push((ev as u64, token, id, frames));
        replica.release_waiting(out);
    }

    /// A room's state, for its replica: taken if the replica lost track (or never had it).
    fn adopt<O: Outbox>(&mut self, room: &str, state: Snapshot, out: &mut O) {
        let Some(replica) = self.rooms.get_mut(room) else { return };
        if replica.live {
            return;
        }
        let fresh_epoch = room_event(room, &state, self.settings.history_bytes);
        if let Applied::NeedsState = replica.adopt(room, state, out, fresh_epoch) {
            self.request_state(room);
        }
    }

    /// A command that failed (never sent, lost with the connection, or refused): its member is
    /// told, or, if it was entering, closed: it may try again later.
    fn on_failed<O: Outbox>(&mut self, pending: Pending, out: &mut O) {
        match pending {
            Pending::Say { id, request, .. }
            | Pending::Dm { id, request, .. }
            | Pending::Nick { id, request, .. } => {
                if let Some(&token) = self.tokens.get(&id) {
                    unavailable(out, token, request.as_deref());
                }
            }
            Pending::Enter { id, room, .. } => {
                if let Some(replica) = self.rooms.get_mut(&room) {
                    replica.entering = replica.entering.saturating_sub(1);
                }
                if let Some(&token) = self.tokens.get(&id) {
                    out.close(token, CloseCode::Again, "the cluster is unavailable; try again");
                }
            }
            Pending::Snapshot { id, .. } => {
                if let Some(&token) = self.tokens.get(&id) {
                    unavailable(out, token, None);
                }
            }
            Pending::State { room, serial } => {
                if let Some(replica) =
                    self.rooms.get_mut(&room).filter(|replica| replica.state_serial == serial)
                {
                    replica.state_requested = false;
                }
            }
            Pending::Assert | Pending::Beat | Pending::Probe | Pending::Stop | Pending::Leave => {}
        }
    }

    /// Both connections are gone. Members stay; those still entering are closed (they may come
    /// back); every replica loses track, and catches up once Redis is back.
    fn on_lost<O: Outbox>(&mut self, out: &mut O) {
        self.asserted = false;
        self.node_subscribed = false;
        self.subscriber_down_since = None;
        self.probe = None;
        for replica in self.rooms.values_mut() {
            replica.lose_track();
            replica.release_all(out);
            for token in std::mem::take(&mut replica.to_enter) {
                out.close(token, CloseCode::Again, "the cluster is unavailable; try again");
            }
        }
    }

    /// The subscription alone dropped: commands go on, and every replica catches up from the
    /// room's stored state once it is back.
    fn on_subscriber_lost<O: Outbox>(&mut self, out: &mut O) {
        self.node_subscribed = false;
        self.subscriber_down_since.get_or_insert(self.now_ms);
        self.probe = None;
        for replica in self.rooms.values_mut() {
            replica.lose_track();
            replica.release_all(out);
        }
    }

    /// Sends a member's entry, which waited for its room's subscription.
    fn send_enter(&mut self, token: Token) {
        let Some(member) = self.members.get_mut(&token) else { return };
        let Some(entry) = member.entry.take() else { return };
        let (id, name, room) = (member.id, member.name.clone(), member.room.clone());
        let signed = if member.signed.is_some() { "1" } else { "0" };
        if let Some(replica) = self.rooms.get_mut(&room) {
            replica.entering += 1;
        }
        let leaving = entry.leaving.clone().unwrap_or_default();
        let epoch = self.epoch_candidate();
        let (id_text, guest) = (id.to_string(), guest_name(id));
        let args: [&[u8]; 7] = [
            id_text.as_bytes(),
            name.as_bytes(),
            room.as_bytes(),
            signed.as_bytes(),
            guest.as_bytes(),
            epoch.as_bytes(),
            leaving.as_bytes(),
        ];
        self.eval(Pending::Enter { id, room: room.clone(), entry }, "enter", &args);
    }

    /// A member is to enter its room: at once if the room is subscribed, else once it is.
    fn enter(&mut self, token: Token) {
        let Some(member) = self.members.get(&token) else { return };
        let room = member.room.clone();
        let is_new = !self.rooms.contains_key(&room);
        let replica = self.rooms.entry(room.clone()).or_default();
        replica.to_enter.push(token);
        if is_new {
            let channel = self.settings.room_channel(&room);
            self.redis.subscriber_command(&[b"SUBSCRIBE", channel.as_bytes()], self.now_ms, &mut self.events);
        }
        self.room_ready(&room);
    }

    /// Forgets a room no local member needs, and stops following it.
    fn drop_if_unused(&mut self, room: &str) {
        if self.rooms.get(room).is_some_and(Replica::is_unused) {
            self.rooms.remove(room);
            let channel = self.settings.room_channel(room);
            self.redis.subscriber_command(
                &[b"UNSUBSCRIBE", channel.as_bytes()],
                self.now_ms,
                &mut self.events,
            );
        }
    }

    fn send_nick(&mut self, token: Token, name: String, request: Option<String>) {
        let Some(member) = self.members.get(&token) else { return };
        let (id, room, old) = (member.id, member.room.clone(), member.name.clone());
        let id_text = id.to_string();
        let args: [&[u8]; 4] = [id_text.as_bytes(), room.as_bytes(), old.as_bytes(), name.as_bytes()];
        self.eval(Pending::Nick { id, name: name.clone(), request }, "nick", &args);
    }

    /// A new member: its name and room as its upgrade URL (or its token) asks, checked here;
    /// whether the name is free, Redis decides.
    fn arrive<O: Outbox>(&mut self, token: Token, target: &str, out: &mut O) {
        if !self.available() {
            return out.close(token, CloseCode::Again, "the cluster is unavailable; try again");
        }
        let query = UpgradeQuery::parse(target);
        let identity = match self.auth.as_ref().map_or(Ok(None), |auth| auth.identity_of(&query, self.now_ms))
        {
            Ok(identity) => identity,
            Err(_) => return out.close(token, CloseCode::from(TOKEN_EXPIRED), "token expired"),
        };
        let id = (self.tag << LOCAL_BITS) | (self.next_local & ((1 << LOCAL_BITS) - 1));
        self.next_local += 1;
        let mut problems = Vec::new();
        let name = match (&identity, query.name) {
            (Some(identity), _) => identity.name.clone(),
            (None, Some(name)) => match check_name_shape(&name) {
                Ok(()) => name,
                Err(rejection) => {
                    problems.push(rejection);
                    guest_name(id)
                }
            },
            (None, None) => guest_name(id),
        };
        let room = match query.room.map(|room| check_room(&room).map(|()| room)) {
            Some(Ok(room)) => room,
            Some(Err(rejection)) => {
                problems.push(rejection);
                DEFAULT_ROOM.to_owned()
            }
            None => DEFAULT_ROOM.to_owned(),
        };
        let room = match &identity {
            Some(identity) => crate::chat::Chat::allowed_room(identity, room, &mut problems),
            None => room,
        };
        let allowance = self.rate_limit.map(|limit| TokenBucket::full(limit, self.now_ms));
        let signed =
            identity.map(|identity: Identity| self.token_deadlines.track(token, identity, self.now_ms));
        let entry = Entry { greeting: Greeting::Welcome, resume: query.resume, problems, leaving: None };
        let member = Member { id, name, room, entered: false, entry: Some(entry), allowance, signed };
        self.members.insert(token, member);
        self.tokens.insert(id, token);
        self.enter(token);
    }

    /// A member leaves: Redis is told (if it knew of it), its room stops sending to it.
    fn depart(&mut self, token: Token) {
        let Some(member) = self.members.remove(&token) else { return };
        self.tokens.remove(&member.id);
        if let Some(signed) = &member.signed {
            self.token_deadlines.forget(signed);
        }
        if let Some(replica) = self.rooms.get_mut(&member.room) {
            replica.local.remove(&member.id);
            replica.waiting.retain(|waiting| waiting.1 != token);
            replica.to_enter.retain(|&waiting| waiting != token);
        }
        // Entered: Redis has it. Entering: the entry's reply finds it gone and sends the leave.
        // While Redis is out of reach, the next `assert` leaves it out.
        if member.entered && self.available() {
            let id = member.id.to_string();
            self.eval(Pending::Leave, "leave", &[id.as_bytes(), member.room.as_bytes()]);
        }
        self.drop_if_unused(&member.room);
    }

    fn handle<O: Outbox>(
        &mut self,
        token: Token,
        request_id: Option<&str>,
        request: Request<'_>,
        out: &mut O,
    ) {
        if let Request::Ping = request {
            return out.send(token, &Event::Pong.to_frame());
        }
        if let Request::Auth { token: fresh } = &request {
            let Some(member) = self.members.get_mut(&token) else { return };
            refresh(
                self.auth.as_ref(),
                &mut self.token_deadlines,
                &mut member.signed,
                token,
                request_id,
                fresh,
                out,
            );
            return;
        }
        let Some(member) = self.members.get(&token) else { return };
        if !self.available() || !member.entered {
            return unavailable(out, token, request_id);
        }
        let request_id_owned = request_id.map(str::to_owned);
        match request {
            Request::Message { text } => {
                let ts = self.now_ms;
                let from = UserView { id: member.id, name: &member.name };
                let event = Event::Message(MessageView {
                    room: &member.room,
                    seq: PLACEHOLDER,
                    from,
                    text: &text,
                    ts,
                });
                let event = event.to_frame();
                if let Err(rejection) = fits(&event, out) {
                    return reject(out, token, &rejection, request_id);
                }
                let Some((head, tail)) = split_at_placeholder(&event, "\"seq\":") else { return };
                let (id, room) = (member.id, member.room.clone());
                let (id_text, budget) = (id.to_string(), self.settings.history_bytes.to_string());
                let args: [&[u8]; 5] = [
                    id_text.as_bytes(),
                    room.as_bytes(),
                    head.as_bytes(),
                    tail.as_bytes(),
                    budget.as_bytes(),
                ];
                self.eval(Pending::Say { id, request: request_id_owned, ts }, "say", &args);
            }
            Request::Dm { to, text } => {
                let ts = self.now_ms;
                let event = Event::Dm {
                    from: UserView { id: member.id, name: &member.name },
                    to: UserView { id: PLACEHOLDER, name: &to },
                    text: &text,
                    ts,
                }
                .to_frame();
                if let Err(rejection) = fits(&event, out) {
                    return reject(out, token, &rejection, request_id);
                }
                let Some((head, tail)) = split_at_placeholder(&event, "\"to\":{\"id\":") else { return };
                let id = member.id;
                let args: [&[u8]; 3] = [to.as_bytes(), head.as_bytes(), tail.as_bytes()];
                self.eval(Pending::Dm { id, request: request_id_owned, ts }, "dm", &args);
            }
            Request::Nick { name } => {
                let check = check_name_shape(&name).and_then(|()| match member.signed {
                    Some(_) => Err(Rejection::new(ErrorCode::Forbidden, "your name comes from your token")),
                    None => Ok(()),
                });
                match check {
                    Ok(()) => self.send_nick(token, name.into_owned(), request_id_owned),
                    Err(rejection) => reject(out, token, &rejection, request_id),
                }
            }
            Request::Join { room, resume } => {
                let allowed = match &member.signed {
                    Some(signed) if !signed.identity.may_enter(&room) => Err(Rejection::new(
                        ErrorCode::Forbidden,
                        format!("your token does not allow the room `{room}`"),
                    )),
                    _ => Ok(()),
                };
                if let Err(rejection) = check_room(&room).and(allowed) {
                    return reject(out, token, &rejection, request_id);
                }
                if room == member.room {
                    let id = member.id;
                    let epoch = self.epoch_candidate();
                    return self.eval(
                        Pending::Snapshot { id, resume },
                        "state",
                        &[room.as_bytes(), epoch.as_bytes()],
                    );
                }
                self.move_to(token, room.into_owned(), resume);
            }
            Request::Who => {
                let Some(replica) = self.rooms.get(&member.room) else { return };
                out.send(
                    token,
                    &Event::Users { room: &member.room, users: replica.users.views() }.to_frame(),
                );
            }
            Request::Ping | Request::Auth { .. } => {}
        }
    }

    /// A member moves to another room: it stops hearing the old one now, and Redis moves it (the
    /// old room hears `left`, the new one `joined`) once the new room is subscribed.
    fn move_to(&mut self, token: Token, room: String, resume: Option<Resume>) {
        let Some(member) = self.members.get_mut(&token) else { return };
        let old = std::mem::replace(&mut member.room, room);
        member.entered = false;
        member.entry = Some(Entry {
            greeting: Greeting::Room,
            resume,
            problems: Vec::new(),
            leaving: Some(old.clone()),
        });
        let id = member.id;
        if let Some(replica) = self.rooms.get_mut(&old) {
            replica.local.remove(&id);
        }
        self.drop_if_unused(&old);
        self.enter(token);
    }

    /// Beats, the pub/sub probe, and Redis's own timeouts and retries.
    fn tick<O: Outbox>(&mut self, out: &mut O) {
        self.redis.tick(self.now_ms, &mut self.events);
        if self.probe.is_some_and(|(_, sent)| self.now_ms.saturating_sub(sent) >= REPLY_TIMEOUT_MS) {
            // Commands are answered but the subscription delivers nothing (centrifugo #1189).
            self.redis.fail_subscriber("the probe did not come back", self.now_ms, &mut self.events);
        }
        if self.available() && self.now_ms >= self.next_beat_at && !self.stopping {
            self.next_beat_at = self.now_ms + self.settings.beat_interval_ms();
            let score = self.beat_score_ms().to_string();
            self.eval(Pending::Beat, "beat", &[score.as_bytes()]);
            if self.probe.is_none() && self.node_subscribed {
                self.probes_sent += 1;
                let probe = format!("{{\"kind\":\"probe\",\"n\":{}}}", self.probes_sent);
                let channel = self.settings.node_channel();
                self.redis.command(
                    Pending::Probe,
                    &[b"PUBLISH", channel.as_bytes(), probe.as_bytes()],
                    self.now_ms,
                    &mut self.events,
                );
                self.probe = Some((self.probes_sent, self.now_ms));
            }
        }
        deadlines_due(&mut self.token_deadlines, &mut self.members, out);
        self.process(out);
    }

    /// Asks the reactor to wake the cluster at its next deadline, unless it already will by then.
    /// (Most deadlines only move later, as replies come: a wake-up that finds nothing due is
    /// harmless, and re-arming the timer for every command would not be.)
    fn schedule<O: Outbox>(&mut self, out: &mut O) {
        let beat = (self.available() && !self.stopping).then_some(self.next_beat_at);
        let probe = self.probe.map(|(_, sent)| sent + REPLY_TIMEOUT_MS);
        // Woken when a subscription down that long makes /healthz say so.
        let unhealthy =
            self.subscriber_down_since.map(|since| since + REPLY_TIMEOUT_MS).filter(|&at| at > self.now_ms);
        let next = [self.redis.next_deadline(), beat, probe, unhealthy, self.token_deadlines.first()]
            .into_iter()
            .flatten()
            .min();
        if let Some(next) = next
            && self.wake_at.is_none_or(|at| next < at)
        {
            self.wake_at = Some(next);
            out.wake_at(next);
        }
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

/// The `welcome` or `room` event for `member` entering a room in the state `snapshot`: exactly
/// what it missed if it asked to resume and that can be vouched for, the latest history within
/// `history_bytes` otherwise.
fn greeting(
    kind: Greeting,
    member: &Member,
    snapshot: &Snapshot,
    resume: Option<&Resume>,
    history_bytes: usize,
) -> Frame {
    let window = latest_within(&snapshot.history, history_bytes);
    let complete_from = window.first().map_or(snapshot.seq + 1, |(seq, _)| *seq);
    let missed = resume.and_then(|resume| {
        let since = resume.since.filter(|_| resume.epoch.as_deref() == Some(snapshot.epoch.as_str()))?;
        (since <= snapshot.seq && since + 1 >= complete_from)
            .then(|| window.iter().filter(|(seq, _)| *seq > since).collect::<Vec<_>>())
    });
    let recovered = resume.map(|_| missed.is_some());
    let history = missed.unwrap_or_else(|| window.iter().collect());
    let view = room_view(&member.room, snapshot, &history, recovered);
    match kind {
        Greeting::Welcome => Event::Welcome { id: member.id, name: &member.name, room: view }.to_frame(),
        Greeting::Room => Event::Room(view).to_frame(),
    }
}

/// The `room` event every local member gets when Redis forgot the room (a new epoch): its state
/// now, `recovered:false`.
fn room_event(room: &str, snapshot: &Snapshot, history_bytes: usize) -> Frame {
    let window = latest_within(&snapshot.history, history_bytes);
    let history: Vec<&(u64, String)> = window.iter().collect();
    Event::Room(room_view(room, snapshot, &history, Some(false))).to_frame()
}

fn room_view<'a>(
    room: &'a str,
    snapshot: &'a Snapshot,
    history: &[&'a (u64, String)],
    recovered: Option<bool>,
) -> RoomView<'a> {
    RoomView {
        room,
        epoch: &snapshot.epoch,
        seq: snapshot.seq,
        users: snapshot.users.views(),
        // Invariant: history holds `message` events a node serialized, which are JSON.
        history: history
            .iter()
            .filter_map(|(_, event)| serde_json::from_str::<&RawValue>(event).ok())
            .collect(),
        recovered,
    }
}

/// The newest messages whose events fit in `bytes`, oldest first.
fn latest_within(history: &[(u64, String)], bytes: usize) -> &[(u64, String)] {
    let mut total = 0;
    let mut start = history.len();
    while start > 0 && total + history[start - 1].1.len() <= bytes {
        total += history[start - 1].1.len();
        start -= 1;
    }
    &history[start..]
}

/// An event's JSON cut around the placeholder that follows `key`: the halves Redis joins with
/// the number it alone knows.
fn split_at_placeholder(event: &Frame, key: &str) -> Option<(String, String)> {
    let json = event.as_text()?;
    let marker = format!("{key}{PLACEHOLDER}");
    let at = json.find(&marker)?;
    let head_end = at + key.len();
    Some((json[..head_end].to_owned(), json[head_end + PLACEHOLDER.to_string().len()..].to_owned()))
}

fn first_integer(reply: &resp::Reply) -> Option<i64> {
    match reply {
        resp::Reply::Array(parts) => parts.first().and_then(resp::integer),
        other => resp::integer(other),
    }
}

fn unavailable<O: Outbox>(out: &mut O, token: Token, request: Option<&str>) {
    let rejection =
        Rejection::new(ErrorCode::Unavailable, "the cluster is unavailable just now; nothing was done");
    reject(out, token, &rejection, request);
}

#[cfg(test)]
mod tests;
