//! Every room, with its members, its sequence and its history, and how long a room is kept after
//! its last member leaves: for `--history-ttl`, so that the last person in a room can still resume
//! after a reconnect, and within `--history-memory` across all rooms. Time comes in as an argument
//! (Unix milliseconds); the chat asks the reactor to wake it when the next kept room expires.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use mio::Token;

use super::history::{History, HistoryLimit};
use crate::frame::Frame;
use crate::handler::Outbox;

/// An epoch's length: 8 characters of 36 make about 2.8 × 10¹² epochs, plenty for a client to
/// tell one sequence of a room from the next.
const EPOCH_CHARS: usize = 8;

/// What a room kept without members is charged against `--history-memory` besides its history:
/// its table entry, its place in the expiry index and its name twice (for names of up to 32
/// bytes). An estimate, so that thousands of rooms joined once and left cannot grow the server
/// without bound.
const EMPTY_ROOM_COST: usize = 256;

/// How rooms keep their history.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Each room's own bound.
    pub history: HistoryLimit,
    /// How long a room without members is kept, in milliseconds; 0 drops it with its last member.
    pub ttl_ms: u64,
    /// Most bytes all history may take across rooms, rooms kept without members included.
    pub memory: usize,
}

/// One room.
pub struct Room {
    /// The room's name, shared with its key in `Rooms` and with its members' records.
    pub name: Rc<str>,
    /// Members by id; ids grow with arrival, so iteration lists them in order of arrival.
    pub members: BTreeMap<u64, Token>,
    /// Names this room's sequence. A new one is drawn whenever the room is created, so a client
    /// that saw an earlier incarnation (before the room was dropped, or the server restarted)
    /// cannot be told it missed nothing.
    pub epoch: String,
    /// The seq of the room's latest message; 0 before the first.
    pub seq: u64,
    pub history: History,
    /// While the room has no members: its key in `Rooms::empty`.
    emptied: Option<EmptyKey>,
}

/// When a room lost its last member, and a number telling rooms emptied in the same millisecond
/// apart: the order in which kept rooms expire or make way for new history.
type EmptyKey = (u64, u64);

impl Room {
    /// Sends one event to every member but `except`. The event was serialized and framed once;
    /// each recipient's queue gets a handle to the same bytes.
    pub fn broadcast<O: Outbox>(&self, except: Option<u64>, frame: &Frame, out: &mut O) {
        for (&id, &recipient) in &self.members {
            if Some(id) != except {
                out.send(recipient, frame);
            }
        }
    }
}

pub struct Rooms {
    retention: Retention,
    rooms: HashMap<Rc<str>, Room>,
    /// Rooms without members, longest empty first.
    empty: BTreeMap<EmptyKey, Rc<str>>,
    /// Tells apart rooms emptied in the same millisecond.
    next_empty_serial: u64,
    /// History bytes of every room, plus `EMPTY_ROOM_COST` for each room kept without members.
    bytes: usize,
    /// Draws epochs.
    random: fastrand::Rng,
}

impl Rooms {
    pub fn new(retention: Retention, seed: u64) -> Self {
        Rooms {
            retention,
            rooms: HashMap::new(),
            empty: BTreeMap::new(),
            next_empty_serial: 0,
            bytes: 0,
            random: fastrand::Rng::with_seed(seed),
        }
    }

    pub fn retention(&self) -> Retention {
        self.retention
    }

    pub fn set_retention(&mut self, retention: Retention) {
        self.retention = retention;
    }

    pub fn get(&self, name: &str) -> Option<&Room> {
        self.rooms.get(name)
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut Room> {
        self.rooms.get_mut(name)
    }

    /// Rooms that have members.
    pub fn occupied(&self) -> usize {
        self.rooms.len() - self.empty.len()
    }

    /// Rooms kept without members.
    pub fn kept_empty(&self) -> usize {
        self.empty.len()
    }

    /// Bytes of history kept across rooms.
    pub fn history_bytes(&self) -> usize {
        self.bytes - self.empty.len() * EMPTY_ROOM_COST
    }

    /// The room a member is entering, created with a fresh epoch if it is not kept.
    pub fn enter(&mut self, name: &str) -> &mut Room {
        if !self.rooms.contains_key(name) {
            let epoch = (0..EPOCH_CHARS).map(|_| self.random.alphanumeric().to_ascii_lowercase()).collect();
            let name: Rc<str> = name.into();
            let room = Room {
                name: name.clone(),
                members: BTreeMap::new(),
                epoch,
                seq: 0,
                history: History::default(),
                emptied: None,
            };
            self.rooms.insert(name, room);
        }
        // Invariant: inserted just above if it was missing.
        let room = self.rooms.get_mut(name).expect("the room exists");
        if let Some(key) = room.emptied.take() {
            self.empty.remove(&key);
            self.bytes -= EMPTY_ROOM_COST;
        }
        room
    }

    /// A room's last member has left at `now_ms`: the room is kept for the TTL, or dropped now.
    pub fn emptied(&mut self, name: &str, now_ms: u64) {
        let Some(room) = self.rooms.get_mut(name) else { return };
        if !room.members.is_empty() || room.emptied.is_some() {
            return;
        }
        if self.retention.ttl_ms == 0 {
            return self.drop_room(name);
        }
        let key = (now_ms, self.next_empty_serial);
        self.next_empty_serial += 1;
        room.emptied = Some(key);
        self.empty.insert(key, room.name.clone());
        self.bytes += EMPTY_ROOM_COST;
        self.enforce_memory();
    }

    /// Keeps message `seq` of room `name` in its history, within the room's own bound and then
    /// within the memory bound across rooms.
    pub fn remember(&mut self, name: &str, seq: u64, event: Frame) {
        let Some(room) = self.rooms.get_mut(name) else { return };
        let before = room.history.bytes();
        room.history.push(seq, event, self.retention.history);
        self.bytes = self.bytes + room.history.bytes() - before;
        self.enforce_memory();
    }

    /// When the room that has been empty longest is due to go, in Unix milliseconds.
    pub fn next_expiry(&self) -> Option<u64> {
        let (&(emptied_at, _), _) = self.empty.first_key_value()?;
        Some(emptied_at.saturating_add(self.retention.ttl_ms))
    }

    /// Drops the rooms whose TTL has passed at `now_ms`.
    pub fn expire(&mut self, now_ms: u64) {
        while self.next_expiry().is_some_and(|expires_at| expires_at <= now_ms) {
            let Some(name) = self.empty_longest() else { break };
            self.drop_room(&name);
        }
    }

    /// The room that has been empty longest, if any room is kept empty.
    fn empty_longest(&self) -> Option<Rc<str>> {
        self.empty.values().next().cloned()
    }

    /// Past `--history-memory`: first the rooms that have been empty longest go, history, epoch
    /// and all; if every room left has members, the room with the most history loses its older
    /// half (its epoch stays: its sequence is still whole, only less of it can be resumed).
    fn enforce_memory(&mut self) {
        while self.bytes > self.retention.memory {
            if let Some(name) = self.empty_longest() {
                self.drop_room(&name);
                continue;
            }
            // A scan of every room, but a rare one: it frees half of the largest history, so the
            // next is due only once that much more history has been written.
            // Ties go to the first name, so the choice never depends on the table's order.
            let largest = self.rooms.iter_mut().max_by(|(name, room), (other_name, other)| {
                room.history.bytes().cmp(&other.history.bytes()).then_with(|| other_name.cmp(name))
            });
            let Some((_, largest)) = largest else { break };
            let before = largest.history.bytes();
            if before == 0 {
                break;
            }
            largest.history.trim_to(before / 2);
            self.bytes -= before - largest.history.bytes();
        }
    }

    fn drop_room(&mut self, name: &str) {
        if let Some(room) = self.rooms.remove(name) {
            self.bytes -= room.history.bytes();
            if let Some(key) = room.emptied {
                self.empty.remove(&key);
                self.bytes -= EMPTY_ROOM_COST;
            }
        }
    }
}
