//! The cluster's side of Redis: what arrives on the subscribed channels (room events into the
//! replicas, DMs and evictions for local members, the node's own probe), subscriptions confirmed
//! or lost, the node telling Redis who its members are after a (re)connect, and the timers that
//! drive beats, probes and Redis's own timeouts.

use log::{debug, warn};

use super::greeting::room_event;
use super::redis::{Event as RedisEvent, REPLY_TIMEOUT_MS};
use super::replica::Applied;
use super::wire::{NodeEnvelope, Snapshot, node_envelope, room_envelope};
use super::{Cluster, Pending};
use crate::chat::names::guest_name;
use crate::chat::protocol::{ErrorCode, Rejection};
use crate::chat::reject;
use crate::chat::signed::{SIGNED_IN_ELSEWHERE, deadlines_due};
use crate::handler::{CloseCode, Frame, Outbox};

impl Cluster {
    /// Handles what Redis said, until it has nothing more to say.
    pub(super) fn process<O: Outbox>(&mut self, out: &mut O) {
        while !self.events.is_empty() {
            for event in std::mem::take(&mut self.events) {
                self.on_redis_event(event, out);
            }
        }
    }

    pub(super) fn on_redis_event<O: Outbox>(&mut self, event: RedisEvent<Pending>, out: &mut O) {
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
    pub(super) fn check_available(&mut self) {
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
    pub(super) fn send_assert(&mut self) {
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
    pub(super) fn beat_score_ms(&self) -> u64 {
        self.settings.node_timeout_ms.saturating_sub(self.settings.beat_interval_ms()).max(1)
    }

    /// The room a channel is for, if it is a room's.
    pub(super) fn room_of_channel<'c>(&self, channel: &'c [u8]) -> Option<&'c str> {
        let room = channel.strip_prefix(self.room_channel_prefix.as_slice())?;
        std::str::from_utf8(room).ok()
    }

    pub(super) fn on_subscribed(&mut self, channel: &[u8]) {
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
    pub(super) fn room_ready(&mut self, room: &str) {
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

    pub(super) fn request_state(&mut self, room: &str) {
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

    pub(super) fn on_channel_message<O: Outbox>(&mut self, channel: &[u8], payload: &[u8], out: &mut O) {
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

    pub(super) fn on_node_envelope<O: Outbox>(&mut self, envelope: NodeEnvelope, out: &mut O) {
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
    pub(super) fn evict<O: Outbox>(&mut self, id: u64, name: &str, out: &mut O) {
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

    /// A room's state, for its replica: taken if the replica lost track (or never had it).
    pub(super) fn adopt<O: Outbox>(&mut self, room: &str, state: Snapshot, out: &mut O) {
        let Some(replica) = self.rooms.get_mut(room) else { return };
        if replica.live {
            return;
        }
        let fresh_epoch = room_event(room, &state, self.settings.history_bytes);
        if let Applied::NeedsState = replica.adopt(room, state, out, fresh_epoch) {
            self.request_state(room);
        }
    }

    /// Both connections are gone. Members stay; those still entering are closed (they may come
    /// back); every replica loses track, and catches up once Redis is back.
    pub(super) fn on_lost<O: Outbox>(&mut self, out: &mut O) {
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
    pub(super) fn on_subscriber_lost<O: Outbox>(&mut self, out: &mut O) {
        self.node_subscribed = false;
        self.subscriber_down_since.get_or_insert(self.now_ms);
        self.probe = None;
        for replica in self.rooms.values_mut() {
            replica.lose_track();
            replica.release_all(out);
        }
    }

    /// Beats, the pub/sub probe, and Redis's own timeouts and retries.
    pub(super) fn tick<O: Outbox>(&mut self, out: &mut O) {
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
    pub(super) fn schedule<O: Outbox>(&mut self, out: &mut O) {
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
}
