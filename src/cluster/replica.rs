//! A node's copy of a room that has local members: every member across the cluster (so `who`
//! and welcomes need nobody else), the room's epoch, seq and event counter, and which local
//! connections hear its events. It follows the room's channel in order; a gap in the event
//! counter (a subscription that dropped, a node that fell behind) sends it back to Redis for
//! the room's state, and the local members are told what they missed.

use std::collections::{BTreeMap, HashMap};

use log::warn;
use mio::Token;

use super::wire::{RoomEnvelope, RoomEvent, Snapshot, User, message_sender};
use crate::chat::protocol::{Event, UserView};
use crate::handler::{Frame, Outbox};

/// A room's members on every node, in order of arrival.
#[derive(Debug, Clone, Default)]
pub struct Roster {
    /// By arrival order: (id, name).
    by_order: BTreeMap<u64, (u64, String)>,
    /// Arrival order by id.
    orders: HashMap<u64, u64>,
}

impl Roster {
    pub fn insert(&mut self, order: u64, id: u64, name: String) {
        if let Some(old) = self.orders.insert(id, order) {
            self.by_order.remove(&old);
        }
        self.by_order.insert(order, (id, name));
    }

    pub fn remove(&mut self, id: u64) {
        if let Some(order) = self.orders.remove(&id) {
            self.by_order.remove(&order);
        }
    }

    pub fn rename(&mut self, id: u64, name: String) {
        if let Some(entry) = self.orders.get(&id).and_then(|order| self.by_order.get_mut(order)) {
            entry.1 = name;
        }
    }

    pub fn name(&self, id: u64) -> Option<&str> {
        let order = self.orders.get(&id)?;
        self.by_order.get(order).map(|(_, name)| name.as_str())
    }

    pub fn contains(&self, id: u64) -> bool {
        self.orders.contains_key(&id)
    }

    /// (id, name), in order of arrival.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &str)> {
        self.by_order.values().map(|(id, name)| (*id, name.as_str()))
    }

    pub fn views(&self) -> Vec<UserView<'_>> {
        self.iter().map(|(id, name)| UserView { id, name }).collect()
    }
}

#[derive(Default)]
pub struct Replica {
    pub epoch: String,
    pub seq: u64,
    pub ev: u64,
    /// Every member of the room, on any node.
    pub users: Roster,
    /// Local members who hear the room's events, by id.
    pub local: BTreeMap<u64, Token>,
    /// Whether the replica follows the channel: false until a snapshot arrives, and again after
    /// a gap, while the snapshot that mends it is on its way.
    pub live: bool,
    /// Whether Redis confirmed the subscription on the current connection.
    pub subscribed: bool,
    /// Whether a `state` request for this room is in flight.
    pub state_requested: bool,
    /// The number of the latest `state` request: only its reply is taken.
    pub state_serial: u64,
    /// Envelopes that arrived while not live, oldest first.
    buffered: Vec<RoomEnvelope>,
    /// Local members whose entry is done in Redis but whose welcome waits for the replica to
    /// reach their own `joined` event, so they hear exactly what comes after it: (ev, token,
    /// id, the welcome and any errors that follow it).
    pub waiting: Vec<(u64, Token, u64, Vec<Frame>)>,
    /// Local members whose `enter` waits for the subscription (tokens).
    pub to_enter: Vec<Token>,
    /// `enter` requests in flight.
    pub entering: usize,
}

/// What applying an envelope asks of the node.
pub enum Applied {
    Done,
    /// The replica missed something: fetch the room's state.
    NeedsState,
}

impl Replica {
    /// Whether nothing local needs the room any more.
    pub fn is_unused(&self) -> bool {
        self.local.is_empty() && self.waiting.is_empty() && self.to_enter.is_empty() && self.entering == 0
    }

    /// The subscription or the connection was lost: the replica waits for a snapshot.
    pub fn lose_track(&mut self) {
        self.live = false;
        self.subscribed = false;
        self.state_requested = false;
        self.buffered.clear();
    }

    /// The subscription is (re)confirmed: the replica waits for a state read after it.
    pub fn lose_track_until_state(&mut self) {
        self.live = false;
        self.state_requested = false;
        self.buffered.clear();
    }

    /// An envelope from the room's channel.
    pub fn receive<O: Outbox>(&mut self, room: &str, envelope: RoomEnvelope, out: &mut O) -> Applied {
        if !self.live {
            self.buffered.push(envelope);
            return Applied::Done;
        }
        self.apply(room, envelope, out)
    }

    fn apply<O: Outbox>(&mut self, room: &str, envelope: RoomEnvelope, out: &mut O) -> Applied {
        if envelope.epoch == self.epoch && envelope.ev <= self.ev {
            // Already applied (a snapshot covered it).
            return Applied::Done;
        }
        if envelope.epoch != self.epoch || envelope.ev != self.ev + 1 {
            self.live = false;
            self.buffered.push(envelope);
            return Applied::NeedsState;
        }
        self.ev = envelope.ev;
        match envelope.event {
            RoomEvent::Message { from, seq, event } => {
                self.seq = seq;
                self.broadcast(Some(from), &event, out);
            }
            RoomEvent::Joined { order, user: User { id, name } } => {
                let frame = Event::Joined { room, user: UserView { id, name: &name } }.to_frame();
                self.broadcast(Some(id), &frame, out);
                self.users.insert(order, id, name);
            }
            RoomEvent::Left(User { id, name }) => {
                self.users.remove(id);
                let frame = Event::Left { room, user: UserView { id, name: &name } }.to_frame();
                self.broadcast(Some(id), &frame, out);
            }
            RoomEvent::Nick { id, old, name } => {
                let frame = Event::Nick { id, old: &old, name: &name }.to_frame();
                self.broadcast(None, &frame, out);
                self.users.rename(id, name);
            }
        }
        self.release_waiting(out);
        Applied::Done
    }

    /// A snapshot of the room: a replica that is not live takes it, tells its local members what
    /// changed since it lost track (messages missed, members come and gone, or a new epoch),
    /// then replays what arrived meanwhile. `fresh_epoch` is the `room` event local members get
    /// if the epoch changed under them.
    pub fn adopt<O: Outbox>(
        &mut self,
        room: &str,
        snapshot: Snapshot,
        out: &mut O,
        fresh_epoch: Frame,
    ) -> Applied {
        if self.live {
            return Applied::Done;
        }
        let caught_up_before = !self.epoch.is_empty();
        let same_epoch = snapshot.epoch == self.epoch;
        let old_users = std::mem::take(&mut self.users);
        self.users = snapshot.users;
        if caught_up_before && same_epoch {
            self.catch_up(room, &snapshot.history, old_users, out);
        }
        self.epoch = snapshot.epoch;
        self.seq = snapshot.seq;
        self.ev = snapshot.ev;
        self.live = true;
        self.state_requested = false;
        if caught_up_before && !same_epoch {
            // Redis forgot the room (restarted empty, say): the old sequence is gone, and every
            // local member is told the room's new epoch.
            for &token in self.local.values() {
                out.send(token, &fresh_epoch);
            }
        }
        for envelope in std::mem::take(&mut self.buffered) {
            if let Applied::NeedsState = self.apply(room, envelope, out) {
                return Applied::NeedsState;
            }
        }
        self.release_waiting(out);
        Applied::Done
    }

    /// Tells the local members what the snapshot shows they missed.
    fn catch_up<O: Outbox>(&mut self, room: &str, history: &[(u64, String)], old_users: Roster, out: &mut O) {
        let missed: Vec<&(u64, String)> = history.iter().filter(|(seq, _)| *seq > self.seq).collect();
        if let Some((first, _)) = missed.first()
            && *first > self.seq + 1
        {
            warn!(
                "cluster: room {room}: messages {} to {} were forgotten before this node caught up",
                self.seq + 1,
                first - 1
            );
        }
        for (_, event) in missed {
            let sender = message_sender(event);
            self.broadcast(sender, &Frame::text(event), out);
        }
        for (id, name) in old_users.iter() {
            match self.users.name(id) {
                None => {
                    let frame = Event::Left { room, user: UserView { id, name } }.to_frame();
                    self.broadcast(Some(id), &frame, out);
                }
                Some(now) if now != name => {
                    let frame = Event::Nick { id, old: name, name: now }.to_frame();
                    self.broadcast(None, &frame, out);
                }
                Some(_) => {}
            }
        }
        for (id, name) in self.users.iter() {
            if !old_users.contains(id) && !self.local.contains_key(&id) {
                let frame = Event::Joined { room, user: UserView { id, name } }.to_frame();
                self.broadcast(Some(id), &frame, out);
            }
        }
    }

    /// Welcomes the members whose own `joined` the replica has now reached.
    pub fn release_waiting<O: Outbox>(&mut self, out: &mut O) {
        if self.waiting.is_empty() {
            return;
        }
        let ev = self.ev;
        let (ready, still): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.waiting).into_iter().partition(|w| w.0 <= ev);
        self.waiting = still;
        for (_, token, id, frames) in ready {
            for frame in &frames {
                out.send(token, frame);
            }
            self.local.insert(id, token);
        }
    }

    /// Every waiting member is welcomed now (the connection to Redis is gone, so the events they
    /// wait for may never come; what they missed is caught up once it is back).
    pub fn release_all<O: Outbox>(&mut self, out: &mut O) {
        for (_, token, id, frames) in std::mem::take(&mut self.waiting) {
            for frame in &frames {
                out.send(token, frame);
            }
            self.local.insert(id, token);
        }
    }

    pub fn broadcast<O: Outbox>(&self, except: Option<u64>, frame: &Frame, out: &mut O) {
        for (&id, &token) in &self.local {
            if Some(id) != except {
                out.send(token, frame);
            }
        }
    }
}
