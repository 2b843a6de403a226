//! A reference model of the chat rules (README, "Protocol": rooms and names, seqs and epochs,
//! resuming, ids and acks, DMs, the errors, rooms kept for `--history-ttl` within
//! `--history-memory`) and a checking `Outbox`, shared by the `chat_session` fuzz target and
//! `tests/parsers_proptest.rs` (included there with `#[path]`), so both drive `wschat::Chat`
//! through the same checks.
//!
//! [`run`] plays a sequence of [`Op`]s on a `Chat` the way the reactor would (on_open once per
//! connection, on_message and on_close only while it is open, `on_close` after any `Outbox::close`,
//! `on_timer` once the time asked for with `Outbox::wake_at` has come) and, after every step,
//! compares what the chat sent with what the model says it must send. Along the way it checks the
//! invariants that hold whatever the rules:
//! - every `send` goes to a connection that is open (opened, and `on_close` not yet called), so a
//!   closed connection never receives anything after its `on_close`;
//! - every message sent is a text frame holding a JSON object with a string `type`, its fields
//!   in the order the protocol shows them; history entries are byte for byte the `message`
//!   events members received;
//! - names are unique among open connections (as the model, kept in step with the events, sees
//!   them), and the chat's member, room, kept-room and history-byte counts match the model's;
//! - while a room is kept without members, a wake-up is pending no later than its expiry.
//!
//! Error events are compared by `code` and `id`; their human-readable `message` must be a string.
//! Epochs are opaque: the model learns each room incarnation's epoch from the first `welcome` or
//! `room` event that shows it, then expects that one for as long as the incarnation lives, and a
//! different one from any earlier incarnation of the same room.
//!
//! Rate limits are off (not modelled).

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::Duration;

use mio::Token;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use wschat::Chat;
use wschat::chat::protocol::{MAX_ID_CHARS, Parsed, Request, Resume, UpgradeQuery, parse_request};
use wschat::handler::{CloseCode, Frame, Handler, Message, Outbox};

/// Connection slots the sessions use; a slot is a token, reused after its connection closes, and
/// a client that remembers what it saw across its connections (see [`Client`]).
pub const SLOTS: usize = 6;

/// What the memory bound charges for each room kept without members, besides its history
/// (`EMPTY_ROOM_COST` in `src/chat/rooms.rs`, an estimate of its bookkeeping).
const KEPT_ROOM_CHARGE: usize = 256;

/// The clock when a session starts, in Unix milliseconds.
pub const START_MS: u64 = 1_764_100_000_000;

/// How the chat under test is set up; the model follows the same settings.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Messages each room's history keeps (`Chat::new`).
    pub history_limit: usize,
    /// Bytes of `message` JSON each room's history may hold (`Chat::with_history_bytes`).
    pub history_bytes: usize,
    /// How long a room is kept after its last member leaves (`Chat::with_history_ttl`).
    pub ttl_ms: u64,
    /// What the outbox says a send buffer holds (`Outbox::max_frame_bytes`): small enough that
    /// sessions meet `too_large`.
    pub max_frame_bytes: usize,
    /// Bytes of history all rooms together may hold (`Chat::with_history_memory`).
    pub history_memory: usize,
    /// Seeds the chat's epochs (`Chat::with_seed`), so that a failing session replays.
    pub seed: u64,
}

impl Default for Settings {
    /// The server's defaults, but for a short TTL and a seed.
    fn default() -> Self {
        Settings {
            history_limit: 50,
            history_bytes: wschat::chat::DEFAULT_HISTORY_BYTES,
            ttl_ms: 100,
            max_frame_bytes: 1 << 20,
            history_memory: wschat::chat::DEFAULT_HISTORY_MEMORY,
            seed: 7,
        }
    }
}

/// One thing that happens to the chat.
#[derive(Debug, Clone)]
pub enum Op {
    /// A WebSocket opened on `slot` with this request-target (ignored if the slot is open).
    Open { slot: usize, target: String },
    /// The client on `slot` connects again asking to resume:
    /// `/?name=NAME&room=ROOM&since=...&epoch=...`, the room being the one it was last in unless
    /// given, `since` and `epoch` made from what it saw there (ignored if the slot is open).
    Reconnect { slot: usize, name: Option<String>, room: Option<String>, ask: Ask },
    /// A text frame from `slot` (ignored if the slot is not open).
    Text { slot: usize, frame: String },
    /// `{"type":"join","room":ROOM,"since":...,"epoch":...,"id":...}` from `slot`, like
    /// `Reconnect` but without leaving the server.
    Rejoin { slot: usize, room: Option<String>, ask: Ask, id: Option<Value> },
    /// `{"type":"dm","to":NAME,"text":TEXT,"id":...}` from `slot`, to the name the client on
    /// `to` has now (or last had, if it is gone).
    DmSlot { slot: usize, to: usize, text: String, id: Option<Value> },
    /// A binary frame from `slot`: the chat must close it with 1003.
    Binary { slot: usize },
    /// The connection on `slot` left (ignored if the slot is not open).
    Close { slot: usize },
    /// This many milliseconds pass (besides the 1 to 3 every step takes); a wake-up that falls
    /// due is delivered.
    Wait { ms: u64 },
}

/// What a client sends to resume a room, in terms of what it saw there.
#[derive(Debug, Clone)]
pub struct Ask {
    pub since: Since,
    pub epoch: EpochAsk,
}

#[derive(Debug, Clone)]
pub enum Since {
    /// No `since`: not a resume at all.
    Absent,
    /// The last seq the client saw in the room (0 if it never was there), moved by this much
    /// and kept at 0 or more: 0 is "nothing missed", below is "missed some", above is "ahead".
    Seen(i64),
    Number(u64),
    /// Not a whole number: a string, -1, 1.5, `true`... (in a query, its text).
    Junk(Value),
}

#[derive(Debug, Clone)]
pub enum EpochAsk {
    /// The epoch the client last saw for the room; none if it never was there.
    Seen,
    Absent,
    /// Any value (in a query, its text): usually an epoch that was never the room's.
    Given(Value),
}

/// A step as the chat gets it, once the ops that refer to what clients saw are made concrete.
#[derive(Debug)]
enum Action {
    Open {
        slot: usize,
        target: String,
    },
    Text {
        slot: usize,
        frame: String,
    },
    Binary {
        slot: usize,
    },
    Close {
        slot: usize,
    },
    /// Only time passes.
    Nothing,
}

// ---------------------------------------------------------------------------------------------
// The outbox the chat writes to.

/// Checks every call and records sends, closes and the pending wake-up.
struct CheckingOutbox {
    open: HashSet<Token>,
    sent: Vec<(Token, Value)>,
    closes: Vec<(Token, CloseCode)>,
    now: u64,
    max_frame_bytes: usize,
    /// The wake-up asked for last, until it is delivered: a new request replaces the old one.
    wake: Option<u64>,
    /// The text of every `message` event sent, by its content: a history entry must be the very
    /// bytes its room's members received.
    message_texts: HashMap<String, String>,
}

/// The order in which the README shows each event's fields, which is the order the server sends
/// them in (clients and the benchmark's exact-frame checks may rely on it); the optional ones may
/// be left out.
fn documented_fields(kind: &str) -> &'static [&'static str] {
    match kind {
        "welcome" => &["type", "id", "name", "room", "epoch", "seq", "users", "history", "recovered"],
        "room" => &["type", "room", "epoch", "seq", "users", "history", "recovered"],
        "message" => &["type", "room", "seq", "from", "text", "ts"],
        "ack" => &["type", "id", "seq", "ts"],
        "dm" => &["type", "from", "to", "text", "ts"],
        "joined" | "left" => &["type", "room", "user"],
        "nick" => &["type", "id", "old", "name"],
        "users" => &["type", "room", "users"],
        "error" => &["type", "code", "message", "id"],
        _ => &["type"],
    }
}

/// A JSON object's top-level fields in the order its text has them, with their raw values.
fn fields_in_order(text: &str) -> Vec<(&str, &RawValue)> {
    let fields: HashMap<&str, &RawValue> =
        serde_json::from_str(text).unwrap_or_else(|error| panic!("not a JSON object ({error}): {text}"));
    let mut fields: Vec<_> = fields.into_iter().collect();
    // The raw values borrow from `text`, so where they start says where their fields are.
    fields.sort_by_key(|(_, raw)| raw.get().as_ptr() as usize - text.as_ptr() as usize);
    fields
}

/// Checks that the fields of an event of type `kind` come in the documented order.
fn check_field_order(kind: &str, fields: &[(&str, &RawValue)], text: &str) {
    let keys: Vec<&str> = fields.iter().map(|(key, _)| *key).collect();
    let documented: Vec<&str> =
        documented_fields(kind).iter().copied().filter(|field| keys.contains(field)).collect();
    assert_eq!(keys, documented, "fields out of the documented order: {text}");
}

impl CheckingOutbox {
    /// Checks the order of the event's fields and, for a snapshot, that each history entry is
    /// byte for byte the `message` event members received (when anyone did).
    fn check_text(&mut self, kind: &str, value: &Value, text: &str) {
        let fields = fields_in_order(text);
        check_field_order(kind, &fields, text);
        if kind == "message" {
            let sent = self.message_texts.entry(value.to_string()).or_insert_with(|| text.to_owned());
            assert_eq!(sent, text, "one message event sent as two texts");
        }
        let history = fields.iter().find(|(key, _)| *key == "history").filter(|_| kind != "message");
        if let Some((_, history)) = history {
            let entries: Vec<&RawValue> = serde_json::from_str(history.get()).expect("a history is a list");
            for entry in entries.iter().map(|entry| entry.get()) {
                check_field_order("message", &fields_in_order(entry), entry);
                let content = serde_json::from_str::<Value>(entry).expect("JSON").to_string();
                if let Some(sent) = self.message_texts.get(&content) {
                    assert_eq!(sent, entry, "a history entry differs from the event members received");
                }
            }
        }
    }
}

impl Outbox for CheckingOutbox {
    fn send(&mut self, to: Token, frame: &Frame) {
        assert!(self.open.contains(&to), "sent to {to:?}, which is not open: {frame:?}");
        let Some(text) = frame.as_text() else {
            panic!("the chat sent a non-text message to {to:?}: {frame:?}")
        };
        let value: Value = serde_json::from_str(text)
            .unwrap_or_else(|error| panic!("the chat sent invalid JSON to {to:?} ({error}): {text:?}"));
        let Some(kind) = value.get("type").and_then(Value::as_str) else {
            panic!("the chat sent an object without a string `type` to {to:?}: {text}")
        };
        self.check_text(kind, &value, text);
        self.sent.push((to, value));
    }

    fn close(&mut self, to: Token, code: CloseCode, _reason: &'static str) {
        assert!(self.open.contains(&to), "asked to close {to:?}, which is not open");
        self.closes.push((to, code));
    }

    fn unix_time_ms(&self) -> u64 {
        self.now
    }

    fn max_frame_bytes(&self) -> usize {
        self.max_frame_bytes
    }

    fn wake_at(&mut self, unix_ms: u64) {
        self.wake = Some(unix_ms);
    }
}

// ---------------------------------------------------------------------------------------------
// The model.

/// One member as the model sees it.
#[derive(Debug, Clone)]
struct Member {
    id: u64,
    name: String,
    room: String,
}

/// One incarnation of a room: from its creation until it is dropped.
#[derive(Debug, Default)]
struct Room {
    /// Learned from the first `welcome` or `room` event showing this incarnation.
    epoch: Option<String>,
    /// The seq of its latest message, 0 before the first.
    seq: u64,
    /// The kept messages, oldest first.
    history: VecDeque<Kept>,
    /// While it has no members: when the last one left, and how many rooms were emptied
    /// before (rooms emptied in the same millisecond go in that order).
    emptied: Option<(u64, u64)>,
}

/// A message in a room's history.
#[derive(Debug)]
struct Kept {
    seq: u64,
    /// The `message` event, as members received it.
    event: Value,
    /// Its JSON's length, which the history's byte bounds count.
    size: usize,
}

impl Room {
    fn history_bytes(&self) -> usize {
        self.history.iter().map(|kept| kept.size).sum()
    }

    /// Forgets the oldest messages until at most `bytes` are kept.
    fn trim_to(&mut self, bytes: usize) {
        while self.history_bytes() > bytes {
            self.history.pop_front();
        }
    }

    fn latest(&self) -> Vec<Value> {
        self.history.iter().map(|kept| kept.event.clone()).collect()
    }

    /// Keeps message `seq` if the limits let it, forgetting the oldest to stay within them. A
    /// message bigger than the whole byte budget is not kept.
    fn remember(&mut self, seq: u64, event: Value, size: usize, settings: &Settings) {
        if settings.history_limit == 0 || size > settings.history_bytes {
            return;
        }
        self.history.push_back(Kept { seq, event, size });
        while self.history.len() > settings.history_limit || self.history_bytes() > settings.history_bytes {
            self.history.pop_front();
        }
    }

    /// Every message after `since`, if the history holds all of them: `None` if some are
    /// forgotten or never kept, or if `since` is ahead of the room.
    fn missed_since(&self, since: u64) -> Option<Vec<Value>> {
        if since > self.seq {
            return None;
        }
        let missed: Vec<Value> =
            self.history.iter().filter(|kept| kept.seq > since).map(|kept| kept.event.clone()).collect();
        (missed.len() as u64 == self.seq - since).then_some(missed)
    }

    /// A snapshot's `history` and `recovered`: without a resume, the latest history and no
    /// `recovered`; with one whose epoch is this room's and whose `since` is a whole number for
    /// which nothing is missing, exactly what was missed; otherwise the latest and `false`. A
    /// room whose epoch is not learned yet is new in this step: no client can have its epoch
    /// (but for a 1 in 2.8e12 coincidence of random draws).
    fn history_for(&self, resume: Option<&Resume>) -> (Vec<Value>, Option<bool>) {
        let Some(resume) = resume else { return (self.latest(), None) };
        let same_epoch = self.epoch.is_some() && resume.epoch == self.epoch;
        match resume.since.filter(|_| same_epoch).and_then(|since| self.missed_since(since)) {
            Some(missed) => (missed, Some(true)),
            None => (self.latest(), Some(false)),
        }
    }
}

/// The chat as the README's "Protocol" section describes it.
struct Model {
    settings: Settings,
    next_id: u64,
    members: BTreeMap<usize, Member>,
    rooms: HashMap<String, Room>,
    /// Every epoch each room name has had, to check that a room made anew gets a new one.
    past_epochs: HashMap<String, Vec<String>>,
    /// Rooms emptied so far, to order those emptied in the same millisecond.
    emptyings: u64,
    /// What the chat must send in the current step, in order, per slot.
    expected: Vec<(usize, Value)>,
}

fn user(member: &Member) -> Value {
    json!({"id": member.id, "name": member.name})
}

/// An error event; it echoes the id of the request it answers, if that had one.
fn error_event(code: &str, id: Option<&str>) -> Value {
    let mut event = json!({"type": "error", "code": code});
    if let Some(id) = id {
        event["id"] = json!(id);
    }
    event
}

/// The bytes an event takes on the wire (JSON in a text frame), as `Outbox::max_frame_bytes`
/// counts them. Key order does not change the length.
fn wire_bytes(event: &Value) -> usize {
    Frame::text(&event.to_string()).wire().len()
}

fn is_guest_name(name: &str) -> bool {
    name.strip_prefix("guest-")
        .is_some_and(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
}

/// 1 to 32 characters, not blank, no control characters, not `guest-<digits>`.
fn name_shape_ok(name: &str) -> bool {
    let length = name.chars().count();
    (1..=32).contains(&length)
        && !name.trim().is_empty()
        && !name.chars().any(char::is_control)
        && !is_guest_name(name)
}

/// 1 to 64 characters, not blank, no control characters.
fn room_ok(room: &str) -> bool {
    let length = room.chars().count();
    (1..=64).contains(&length) && !room.trim().is_empty() && !room.chars().any(char::is_control)
}

/// An epoch as the protocol has it: 8 lower-case letters and digits.
fn epoch_shape_ok(epoch: &str) -> bool {
    epoch.len() == 8 && epoch.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

impl Model {
    fn new(settings: Settings) -> Self {
        Model {
            settings,
            next_id: 1,
            members: BTreeMap::new(),
            rooms: HashMap::new(),
            past_epochs: HashMap::new(),
            emptyings: 0,
            expected: Vec::new(),
        }
    }

    /// The members of `room`, in order of arrival (ids grow with arrival).
    fn in_room(&self, room: &str) -> Vec<(usize, Member)> {
        let mut members: Vec<_> =
            self.members.iter().filter(|(_, m)| m.room == room).map(|(&slot, m)| (slot, m.clone())).collect();
        members.sort_by_key(|(_, m)| m.id);
        members
    }

    fn users(&self, room: &str) -> Value {
        Value::Array(self.in_room(room).iter().map(|(_, m)| user(m)).collect())
    }

    fn occupied_rooms(&self) -> usize {
        self.rooms.values().filter(|room| room.emptied.is_none()).count()
    }

    fn kept_empty(&self) -> usize {
        self.rooms.len() - self.occupied_rooms()
    }

    fn history_bytes(&self) -> usize {
        self.rooms.values().map(Room::history_bytes).sum()
    }

    /// When the room kept empty longest is due to go.
    fn next_expiry(&self) -> Option<u64> {
        let ttl = self.settings.ttl_ms;
        self.rooms.values().filter_map(|room| room.emptied).map(|(at, _)| at.saturating_add(ttl)).min()
    }

    /// Past the memory bound (history, plus a charge for each room kept empty): the rooms empty
    /// longest go first, history, epoch and all; then, while every room left has members, the
    /// largest history loses its older half (of two as large, the first room by name's).
    fn enforce_memory(&mut self) {
        let used = |model: &Model| model.history_bytes() + KEPT_ROOM_CHARGE * model.kept_empty();
        while used(self) > self.settings.history_memory {
            let longest_empty =
                self.rooms.iter().filter_map(|(name, room)| Some((room.emptied?, name))).min();
            if let Some((_, name)) = longest_empty {
                let name = name.clone();
                self.rooms.remove(&name);
                continue;
            }
            let largest =
                self.rooms.iter_mut().min_by_key(|(name, room)| (Reverse(room.history_bytes()), *name));
            let Some((_, room)) = largest.filter(|(_, room)| room.history_bytes() > 0) else { break };
            room.trim_to(room.history_bytes() / 2);
        }
    }

    fn expect(&mut self, slot: usize, event: Value) {
        self.expected.push((slot, event));
    }

    fn reject(&mut self, slot: usize, code: &str, id: Option<&str>) {
        self.expect(slot, error_event(code, id));
    }

    /// `None` if `name` may be taken by `asker`, else the error code.
    fn name_problem(&self, name: &str, asker: Option<usize>) -> Option<&'static str> {
        if !name_shape_ok(name) {
            return Some("invalid_name");
        }
        let holder = self.members.iter().find(|(_, m)| m.name == name).map(|(&slot, _)| slot);
        match holder {
            Some(holder) if Some(holder) != asker => Some("name_taken"),
            _ => None,
        }
    }

    /// `slot` (already recorded in `room`) enters it: the room is made if it is not kept, taken
    /// back if it is, and those already there hear `joined`.
    fn enter(&mut self, slot: usize, room: &str) {
        self.rooms.entry(room.to_owned()).or_default().emptied = None;
        let member = self.members[&slot].clone();
        for (other, _) in self.in_room(room) {
            if other != slot {
                self.expect(other, json!({"type": "joined", "room": room, "user": user(&member)}));
            }
        }
    }

    /// `member` (already moved out of `room` or removed) leaves `room`: those who stay hear
    /// `left`; a room left empty is kept for the TTL, or dropped at once with a TTL of 0.
    fn leave(&mut self, member: &Member, room: &str, now: u64) {
        let stay = self.in_room(room);
        if stay.is_empty() {
            if self.settings.ttl_ms == 0 {
                self.rooms.remove(room);
            } else if let Some(kept) = self.rooms.get_mut(room) {
                kept.emptied = Some((now, self.emptyings));
                self.emptyings += 1;
                self.enforce_memory();
            }
        }
        for (other, _) in stay {
            self.expect(other, json!({"type": "left", "room": room, "user": user(member)}));
        }
    }

    /// The `welcome` (`kind`) or `room` event for `slot`, in the room it is now in. An epoch the
    /// model has not learned yet is `null`, filled in by [`Model::learn_epochs`].
    fn snapshot(&self, kind: &str, slot: usize, resume: Option<&Resume>) -> Value {
        let member = &self.members[&slot];
        let room = &self.rooms[&member.room];
        let (history, recovered) = room.history_for(resume);
        let mut event = json!({
            "type": kind, "room": member.room, "epoch": room.epoch, "seq": room.seq,
            "users": self.users(&member.room), "history": history,
        });
        if kind == "welcome" {
            event["id"] = json!(member.id);
            event["name"] = json!(member.name);
        }
        if let Some(recovered) = recovered {
            event["recovered"] = json!(recovered);
        }
        event
    }

    fn open(&mut self, slot: usize, target: &str) {
        let id = self.next_id;
        self.next_id += 1;
        // The decoding (percent escapes, `+`, the last of a repeated parameter winning) is
        // form_urlencoded's, so the model uses the server's own query reader, which
        // `the_upgrade_query_decodes_name_room_since_and_epoch` (tests/parsers_proptest.rs)
        // checks on its own.
        let query = UpgradeQuery::parse(target);
        let mut problems = Vec::new();
        let name = match query.name {
            Some(name) => match self.name_problem(&name, None) {
                None => name,
                Some(code) => {
                    problems.push(code);
                    format!("guest-{id}")
                }
            },
            None => format!("guest-{id}"),
        };
        let room = match query.room {
            Some(room) if room_ok(&room) => room,
            Some(_) => {
                problems.push("invalid_room");
                "lobby".to_owned()
            }
            None => "lobby".to_owned(),
        };
        self.members.insert(slot, Member { id, name, room: room.clone() });
        self.enter(slot, &room);
        let welcome = self.snapshot("welcome", slot, query.resume.as_ref());
        self.expect(slot, welcome);
        for code in problems {
            self.reject(slot, code, None);
        }
    }

    fn close(&mut self, slot: usize, now: u64) {
        if let Some(member) = self.members.remove(&slot) {
            self.leave(&member, &member.room.clone(), now);
        }
    }

    /// The wake-up the chat asked for has come: rooms kept past their TTL are dropped.
    fn timer(&mut self, now: u64) {
        let ttl = self.settings.ttl_ms;
        self.rooms.retain(|_, room| room.emptied.is_none_or(|(at, _)| at.saturating_add(ttl) > now));
    }

    fn text(&mut self, slot: usize, frame: &str, now: u64) {
        let Parsed { id, request } = parse_request(frame);
        let id = id.as_deref();
        let request = match request {
            Ok(request) => request,
            Err(rejection) => {
                let code = serde_json::to_value(rejection.code).expect("error codes serialize");
                return self.reject(slot, code.as_str().expect("codes are strings"), id);
            }
        };
        let member = self.members[&slot].clone();
        match request {
            Request::Message { text } => self.say(slot, &member, &text, id, now),
            Request::Dm { to, text } => self.direct(slot, &member, &to, &text, id, now),
            Request::Nick { name } => match self.name_problem(&name, Some(slot)) {
                Some(code) => self.reject(slot, code, id),
                None => {
                    let event = json!({"type": "nick", "id": member.id, "old": member.name, "name": name});
                    self.members.get_mut(&slot).expect("open").name = name.into_owned();
                    for (other, _) in self.in_room(&member.room) {
                        self.expect(other, event.clone());
                    }
                }
            },
            Request::Join { room, resume } => {
                if !room_ok(&room) {
                    return self.reject(slot, "invalid_room", id);
                }
                if room != member.room {
                    // The room it goes to is taken back first, so leaving the old one never
                    // makes the memory bound drop it.
                    self.members.get_mut(&slot).expect("open").room = room.to_string();
                    self.enter(slot, &room);
                    self.leave(&member, &member.room, now);
                }
                let event = self.snapshot("room", slot, resume.as_ref());
                self.expect(slot, event);
            }
            Request::Who => {
                let event = json!({"type": "users", "room": member.room, "users": self.users(&member.room)});
                self.expect(slot, event);
            }
            Request::Ping => self.expect(slot, json!({"type": "pong"})),
            // The modelled chat has no token secret.
            Request::Auth { .. } => self.reject(slot, "unauthorized", id),
        }
    }

    /// A chat message takes the room's next seq and goes to everyone else in the room and into
    /// its history; the sender hears only an ack, if it gave an id. One too large for a send
    /// buffer is refused: the sender hears `too_large`, nobody else anything, no seq is taken.
    fn say(&mut self, slot: usize, member: &Member, text: &str, id: Option<&str>, now: u64) {
        let seq = self.rooms[&member.room].seq + 1;
        let event = json!({
            "type": "message", "room": member.room, "seq": seq, "from": user(member), "text": text, "ts": now,
        });
        if wire_bytes(&event) > self.settings.max_frame_bytes {
            return self.reject(slot, "too_large", id);
        }
        for (other, _) in self.in_room(&member.room) {
            if other != slot {
                self.expect(other, event.clone());
            }
        }
        if let Some(id) = id {
            self.expect(slot, json!({"type": "ack", "id": id, "seq": seq, "ts": now}));
        }
        let size = event.to_string().len();
        let settings = self.settings;
        let room = self.rooms.get_mut(&member.room).expect("a member's room exists");
        room.seq = seq;
        room.remember(seq, event, size, &settings);
        self.enforce_memory();
    }

    /// A direct message goes to the member named `to`, whatever room either is in (to the sender
    /// itself if it names itself), and is never kept; the sender hears an ack without a seq if it
    /// gave an id. Nobody by that name: `no_such_user`; too large: `too_large`, in that order.
    fn direct(&mut self, slot: usize, member: &Member, to: &str, text: &str, id: Option<&str>, now: u64) {
        let Some((&recipient_slot, recipient)) = self.members.iter().find(|(_, m)| m.name == to) else {
            return self.reject(slot, "no_such_user", id);
        };
        let event =
            json!({"type": "dm", "from": user(member), "to": user(recipient), "text": text, "ts": now});
        if wire_bytes(&event) > self.settings.max_frame_bytes {
            return self.reject(slot, "too_large", id);
        }
        self.expect(recipient_slot, event);
        if let Some(id) = id {
            self.expect(slot, json!({"type": "ack", "id": id, "ts": now}));
        }
    }

    /// Fills in the epochs of the snapshots that showed a room incarnation for the first time,
    /// from what the chat sent (`actual`, per slot in order), after checking each is an epoch
    /// and not one an earlier incarnation of the room had.
    fn learn_epochs(&mut self, actual: &[Vec<Value>], context: &str) {
        let mut position = [0; SLOTS];
        for (slot, want) in &mut self.expected {
            let index = position[*slot];
            position[*slot] += 1;
            let is_snapshot = want["type"] == "welcome" || want["type"] == "room";
            if !is_snapshot || !want["epoch"].is_null() {
                continue;
            }
            let Some(got) = actual[*slot].get(index).filter(|got| got["type"] == want["type"]) else {
                continue; // the comparison reports it
            };
            let room_name = want["room"].as_str().expect("rooms are strings").to_owned();
            let epoch = got["epoch"]
                .as_str()
                .unwrap_or_else(|| panic!("{context}: an epoch that is no string: {got}"));
            assert!(epoch_shape_ok(epoch), "{context}: an epoch not of 8 [a-z0-9]: {got}");
            let past = self.past_epochs.entry(room_name.clone()).or_default();
            assert!(
                !past.iter().any(|old| old == epoch),
                "{context}: room {room_name:?} made anew has an epoch it had before ({epoch}): {got}"
            );
            past.push(epoch.to_owned());
            want["epoch"] = json!(epoch);
            if let Some(room) = self.rooms.get_mut(&room_name) {
                room.epoch = Some(epoch.to_owned());
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What each client remembers, to resume and to address DMs.

/// What the client on a slot remembers across its connections, as the browser page does: its
/// own id and name, the room it was last in and, per room, the epoch and last seq it saw.
#[derive(Debug, Default, Clone)]
struct Client {
    id: Option<u64>,
    name: Option<String>,
    room: Option<String>,
    seen: HashMap<String, (String, u64)>,
}

impl Client {
    fn hear(&mut self, event: &Value) {
        let text = |key: &str| event[key].as_str().map(str::to_owned);
        match event["type"].as_str() {
            Some("welcome" | "room") => {
                if event["type"] == "welcome" {
                    (self.id, self.name) = (event["id"].as_u64(), text("name"));
                }
                let (Some(room), Some(epoch), Some(seq)) =
                    (text("room"), text("epoch"), event["seq"].as_u64())
                else {
                    return;
                };
                self.seen.insert(room.clone(), (epoch, seq));
                self.room = Some(room);
            }
            Some("message") => self.saw_seq(text("room"), event["seq"].as_u64()),
            // Acks carry the seq of the client's own message, in the room it is in.
            Some("ack") => self.saw_seq(self.room.clone(), event["seq"].as_u64()),
            Some("nick") if event["id"].as_u64() == self.id => self.name = text("name"),
            _ => {}
        }
    }

    fn saw_seq(&mut self, room: Option<String>, seq: Option<u64>) {
        if let (Some(seen), Some(seq)) = (room.and_then(|room| self.seen.get_mut(&room)), seq) {
            seen.1 = seq;
        }
    }

    /// `since` and `epoch` as JSON values (`None`: left out) for resuming `room`.
    fn resume_values(&self, room: &str, ask: &Ask) -> (Option<Value>, Option<Value>) {
        let seen = self.seen.get(room);
        let since = match &ask.since {
            Since::Absent => None,
            Since::Seen(offset) => {
                let last = seen.map_or(0, |(_, seq)| *seq);
                Some(json!(last.saturating_add_signed(*offset)))
            }
            Since::Number(number) => Some(json!(number)),
            Since::Junk(value) => Some(value.clone()),
        };
        let epoch = match &ask.epoch {
            EpochAsk::Seen => seen.map(|(epoch, _)| json!(epoch)),
            EpochAsk::Absent => None,
            EpochAsk::Given(value) => Some(value.clone()),
        };
        (since, epoch)
    }
}

/// A JSON value as a query parameter's text: strings as they are, anything else as JSON.
fn query_text(value: &Value) -> String {
    value.as_str().map_or_else(|| value.to_string(), str::to_owned)
}

/// A request's JSON text, with `"id"` set if there is one.
pub fn with_id(mut request: Value, id: Option<Value>) -> String {
    if let Some(id) = id {
        request["id"] = id;
    }
    request.to_string()
}

fn encode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// Makes `op` concrete from what the clients remember and who is open; `None` if the op does
/// not apply (a message from a slot that is not open, an open on one that is).
fn resolve(op: &Op, clients: &[Client], model: &Model, open: &HashSet<Token>) -> Option<Action> {
    let is_open = |slot: usize| open.contains(&Token(slot));
    let room_of = |slot: usize, room: &Option<String>| {
        room.clone().or_else(|| clients[slot].room.clone()).unwrap_or_else(|| "lobby".to_owned())
    };
    Some(match op {
        Op::Open { slot, target } => {
            (!is_open(*slot)).then_some(())?;
            Action::Open { slot: *slot, target: target.clone() }
        }
        Op::Reconnect { slot, name, room, ask } => {
            (!is_open(*slot)).then_some(())?;
            let room = room_of(*slot, room);
            let (since, epoch) = clients[*slot].resume_values(&room, ask);
            let mut target = format!("/chat?room={}", encode(&room));
            if let Some(name) = name {
                target += &format!("&name={}", encode(name));
            }
            for (key, value) in [("since", since), ("epoch", epoch)] {
                if let Some(value) = value {
                    target += &format!("&{key}={}", encode(&query_text(&value)));
                }
            }
            Action::Open { slot: *slot, target }
        }
        Op::Text { slot, frame } => {
            is_open(*slot).then_some(())?;
            Action::Text { slot: *slot, frame: frame.clone() }
        }
        Op::Rejoin { slot, room, ask, id } => {
            is_open(*slot).then_some(())?;
            let room = room_of(*slot, room);
            let mut request = json!({"type": "join", "room": room});
            let (since, epoch) = clients[*slot].resume_values(&room, ask);
            for (key, value) in [("since", since), ("epoch", epoch)] {
                if let Some(value) = value {
                    request[key] = value;
                }
            }
            Action::Text { slot: *slot, frame: with_id(request, id.clone()) }
        }
        Op::DmSlot { slot, to, text, id } => {
            is_open(*slot).then_some(())?;
            let to = to % SLOTS;
            let name = match model.members.get(&to) {
                Some(member) => member.name.clone(),
                None => clients[to].name.clone().unwrap_or_else(|| format!("guest-{}", to + 1)),
            };
            let request = json!({"type": "dm", "to": name, "text": text});
            Action::Text { slot: *slot, frame: with_id(request, id.clone()) }
        }
        Op::Binary { slot } => {
            is_open(*slot).then_some(())?;
            Action::Binary { slot: *slot }
        }
        Op::Close { slot } => {
            is_open(*slot).then_some(())?;
            Action::Close { slot: *slot }
        }
        Op::Wait { .. } => Action::Nothing,
    })
}

// ---------------------------------------------------------------------------------------------
// Playing a session.

/// Error events compare by code and id: checks that `message` is a string, then drops it.
fn normalize(mut value: Value) -> Value {
    if value["type"] == "error" {
        let object = value.as_object_mut().expect("checked by the outbox");
        let message = object.remove("message");
        assert!(
            message.as_ref().is_some_and(Value::is_string),
            "an error event without a string message: {value}"
        );
    }
    value
}

/// What each step of a session delivered: `(step, slot, event)`, errors without their message.
pub type Transcript = Vec<(usize, usize, Value)>;

/// Plays `ops` on a fresh `Chat` set up as `settings` say, checking every step; panics on the
/// first difference from the model or broken invariant. Returns everything the chat sent.
pub fn run(settings: Settings, ops: &[Op]) -> Transcript {
    let mut chat = Chat::new(settings.history_limit)
        .with_history_bytes(settings.history_bytes)
        .with_history_ttl(Duration::from_millis(settings.ttl_ms))
        .with_history_memory(settings.history_memory)
        .with_seed(settings.seed);
    let mut model = Model::new(settings);
    let mut out = CheckingOutbox {
        open: HashSet::new(),
        sent: Vec::new(),
        closes: Vec::new(),
        now: START_MS,
        max_frame_bytes: settings.max_frame_bytes,
        wake: None,
        message_texts: HashMap::new(),
    };
    let mut clients = vec![Client::default(); SLOTS];
    let mut transcript = Transcript::new();
    for (step, op) in ops.iter().enumerate() {
        // Time passes; the reactor runs due timers in every loop iteration.
        out.now += 1 + step as u64 % 3;
        if let Op::Wait { ms } = *op {
            out.now += ms;
        }
        if out.wake.is_some_and(|at| at <= out.now) {
            out.wake = None;
            model.timer(out.now);
            chat.on_timer(&mut out);
        }

        let action = resolve(op, &clients, &model, &out.open).unwrap_or(Action::Nothing);
        let context = format!("step {step}: {op:?}, sent as {action:?}");
        let mut expected_closes = Vec::new();
        match action {
            Action::Open { slot, ref target } => {
                out.open.insert(Token(slot));
                model.open(slot, target);
                chat.on_open(Token(slot), target, &mut out);
            }
            Action::Text { slot, ref frame } => {
                model.text(slot, frame, out.now);
                chat.on_message(Token(slot), Message::text(frame.as_str()), &mut out);
            }
            Action::Binary { slot } => {
                expected_closes.push((Token(slot), CloseCode::Unsupported));
                chat.on_message(Token(slot), Message::binary(vec![1, 2, 3]), &mut out);
            }
            Action::Close { slot } => {
                out.open.remove(&Token(slot));
                model.close(slot, out.now);
                chat.on_close(Token(slot), &mut out);
            }
            Action::Nothing => {}
        }
        // The reactor closes what the handler asked it to between handler calls, and tells the
        // handler with `on_close`.
        let closes = std::mem::take(&mut out.closes);
        assert_eq!(closes, expected_closes, "{context}: closes differ");
        for (token, _) in closes {
            if out.open.remove(&token) {
                model.close(token.0, out.now);
                chat.on_close(token, &mut out);
            }
        }
        assert!(out.closes.is_empty(), "{context}: on_close asked for a close");

        let received = received(&mut out);
        compare(&context, &mut model, &received);
        for (slot, events) in received.into_iter().enumerate() {
            for event in events {
                clients[slot].hear(&event);
                transcript.push((step, slot, event));
            }
        }
        check_invariants(&context, &chat, &model, &out);
    }
    transcript
}

/// What each slot received in this step, in order.
fn received(out: &mut CheckingOutbox) -> Vec<Vec<Value>> {
    let mut received = vec![Vec::new(); SLOTS];
    for (to, event) in std::mem::take(&mut out.sent) {
        received[to.0].push(normalize(event));
    }
    received
}

/// Compares what the chat sent in this step with what the model expects, slot by slot.
fn compare(context: &str, model: &mut Model, actual: &[Vec<Value>]) {
    model.learn_epochs(actual, context);
    let expected = std::mem::take(&mut model.expected);
    for (slot, got) in actual.iter().enumerate() {
        let want: Vec<&Value> = expected.iter().filter(|(to, _)| *to == slot).map(|(_, v)| v).collect();
        let got: Vec<&Value> = got.iter().collect();
        assert_eq!(got, want, "{context}: slot {slot} got other events than the rules say");
    }
}

fn check_invariants(context: &str, chat: &Chat, model: &Model, out: &CheckingOutbox) {
    let names: HashSet<&str> = model.members.values().map(|m| m.name.as_str()).collect();
    assert_eq!(names.len(), model.members.len(), "{context}: names are not unique: {:?}", model.members);
    assert_eq!(chat.member_count(), model.members.len(), "{context}: member count");
    assert_eq!(chat.room_count(), model.occupied_rooms(), "{context}: rooms with members");
    assert_eq!(chat.rooms_kept_empty(), model.kept_empty(), "{context}: rooms kept empty");
    assert_eq!(chat.history_bytes(), model.history_bytes(), "{context}: history bytes");
    if let Some(expiry) = model.next_expiry() {
        assert!(
            out.wake.is_some_and(|at| at <= expiry),
            "{context}: a room kept empty expires at {expiry}, but the wake-up asked for is {:?}",
            out.wake
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Fuzzer input.

/// Decodes fuzzer bytes into a session. Four bytes pick the settings (history limit and TTL;
/// frame and history byte limits; the memory bound; the seed), then each operation is one byte (`kind = b & 15`,
/// `slot = (b >> 4) % SLOTS`) followed by its payload bytes, turned into templates so that short
/// inputs reach every request.
pub fn ops_from_bytes(data: &[u8]) -> (Settings, Vec<Op>) {
    let mut bytes = data.iter().copied();
    let mut header = [0; 4];
    for byte in &mut header {
        *byte = bytes.next().unwrap_or(0);
    }
    let [first, second, third, seed] = header;
    let settings = Settings {
        history_limit: [0, 1, 3, 50][usize::from(first % 4)],
        ttl_ms: [0, 5, 50, 1_000][usize::from(first >> 2) % 4],
        max_frame_bytes: [1 << 20, 250, 400, 600][usize::from(second % 4)],
        history_bytes: [wschat::chat::DEFAULT_HISTORY_BYTES, 200, 400, 800][usize::from(second >> 2) % 4],
        history_memory: [wschat::chat::DEFAULT_HISTORY_MEMORY, 600, 1_500, 4_000][usize::from(third % 4)],
        seed: u64::from(seed),
    };
    let mut ops = Vec::new();
    while let Some(byte) = bytes.next() {
        let slot = usize::from(byte >> 4) % SLOTS;
        ops.push(decode_op(byte & 15, slot, &mut bytes));
    }
    (settings, ops)
}

/// A length byte (mod 48), then that many bytes, lossily UTF-8.
fn chunk(bytes: &mut impl Iterator<Item = u8>) -> String {
    let length = usize::from(bytes.next().unwrap_or(0) % 48);
    let raw: Vec<u8> = bytes.take(length).collect();
    String::from_utf8_lossy(&raw).into_owned()
}

/// The room to resume: the one the client was last in if the next byte is even, else a chunk.
fn room_from(bytes: &mut impl Iterator<Item = u8>) -> Option<String> {
    (bytes.next().unwrap_or(0) % 2 == 1).then(|| chunk(bytes))
}

/// An id from one byte: none, short, exactly 64 characters, 65 (too long), or not a string.
fn id_from(byte: u8) -> Option<Value> {
    match byte % 8 {
        0 | 1 => None,
        2 | 3 => Some(json!(format!("c{byte}"))),
        4 => Some(json!("\u{e9}".repeat(MAX_ID_CHARS))),
        5 => Some(json!("x".repeat(MAX_ID_CHARS + 1))),
        6 => Some(json!(byte)),
        _ => Some(Value::Null),
    }
}

/// A resume from one byte: which `since` (low 3 bits) and which epoch (next 2).
fn ask_from(byte: u8) -> Ask {
    let since = match byte & 7 {
        0 => Since::Seen(0),
        1 => Since::Seen(-1),
        2 => Since::Seen(-3),
        3 => Since::Seen(1),
        4 => Since::Number(0),
        5 => Since::Junk(json!("abc")),
        6 => Since::Junk(json!(-1)),
        _ => Since::Absent,
    };
    let epoch = match (byte >> 3) & 3 {
        0 | 1 => EpochAsk::Seen,
        2 => EpochAsk::Absent,
        _ => EpochAsk::Given(json!("zzzzzzzz")),
    };
    Ask { since, epoch }
}

fn decode_op(kind: u8, slot: usize, bytes: &mut impl Iterator<Item = u8>) -> Op {
    let text = |slot: usize, frame: Value| Op::Text { slot, frame: frame.to_string() };
    match kind {
        0 => Op::Open { slot, target: chunk(bytes) },
        1 => {
            let (name, room) = (chunk(bytes), chunk(bytes));
            Op::Open { slot, target: format!("/?name={}&room={}", encode(&name), encode(&room)) }
        }
        2 => Op::Text { slot, frame: chunk(bytes) },
        3 => text(slot, json!({"type": "nick", "name": chunk(bytes)})),
        4 => text(slot, json!({"type": "join", "room": chunk(bytes)})),
        5 => match bytes.next().unwrap_or(0) % 4 {
            0 => text(slot, json!({"type": "message", "text": chunk(bytes)})),
            1 => Op::Text { slot, frame: r#"{"type":"who"}"#.to_owned() },
            2 => Op::Text { slot, frame: r#"{"type":"ping"}"#.to_owned() },
            _ => text(slot, json!({"type": chunk(bytes)})),
        },
        6 => Op::Binary { slot },
        7 => Op::Close { slot },
        8 => {
            let ask = ask_from(bytes.next().unwrap_or(0));
            Op::Reconnect { slot, name: None, room: room_from(bytes), ask }
        }
        9 => {
            let choice = bytes.next().unwrap_or(0);
            Op::Rejoin { slot, room: room_from(bytes), ask: ask_from(choice), id: id_from(choice >> 5) }
        }
        10 => {
            let choice = bytes.next().unwrap_or(0);
            Op::DmSlot { slot, to: usize::from(choice) % SLOTS, text: chunk(bytes), id: id_from(choice >> 3) }
        }
        11 => {
            let id = id_from(bytes.next().unwrap_or(0));
            let to = chunk(bytes);
            Op::Text { slot, frame: with_id(json!({"type": "dm", "to": to, "text": chunk(bytes)}), id) }
        }
        12 => {
            let amount = u64::from(bytes.next().unwrap_or(0));
            let ms = match amount >> 6 {
                0 => amount & 63,
                1 => (amount & 63) * 10,
                2 => (amount & 63) * 100,
                _ => 1_000 + (amount & 63),
            };
            Op::Wait { ms }
        }
        13 => {
            let id = id_from(bytes.next().unwrap_or(0));
            Op::Text { slot, frame: with_id(json!({"type": "message", "text": chunk(bytes)}), id) }
        }
        14 => {
            // Large or escaped texts around the frame limit: a character JSON escapes six-fold,
            // two-fold, or not at all, repeated.
            let choice = bytes.next().unwrap_or(0);
            let character = ["\u{1}", "\"", "x", "\u{e9}"][usize::from(choice % 4)];
            let text = character.repeat(usize::from(choice >> 2) * 4);
            let id = id_from(bytes.next().unwrap_or(0));
            Op::Text { slot, frame: with_id(json!({"type": "message", "text": text}), id) }
        }
        _ => Op::Text { slot, frame: format!("plain {}", chunk(bytes)) },
    }
}
