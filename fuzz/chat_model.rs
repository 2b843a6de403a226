//! A reference model of the chat rules (README, "Protocol") and a checking `Outbox`, shared by
//! the `chat_session` fuzz target and `tests/parsers_proptest.rs` (included there with
//! `#[path]`), so both drive `wschat::Chat` through the same checks.
//!
//! [`run`] plays a sequence of [`Op`]s on a `Chat` the way the reactor would (on_open once per
//! connection, on_message and on_close only while it is open, `on_close` after any `Outbox::close`,
//! between handler calls) and, after every step, compares what the chat sent with what the model
//! says it must send. Along the way the outbox checks the invariants that hold whatever the rules:
//! - every `send` goes to a connection that is open (opened, and `on_close` not yet called), so a
//!   closed connection never receives anything after its `on_close`;
//! - every message sent is a text frame holding a JSON object with a string `type`;
//! - names are unique among open connections (as the model, kept in step with the events, sees
//!   them), and the chat's member and room counts match the model's.
//!
//! Error events are compared by `code` only; their human-readable `message` must be a string.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use mio::Token;
use serde_json::{Value, json};
use wschat::Chat;
use wschat::chat::protocol::{Request, parse_request};
use wschat::handler::{CloseCode, Frame, Handler, Message, Outbox};

/// Connection slots the sessions use; a slot is a token, reused after its connection closes.
pub const SLOTS: usize = 6;

/// One thing that happens to the chat.
#[derive(Debug, Clone)]
pub enum Op {
    /// A WebSocket opened on `slot` with this request-target (ignored if the slot is open).
    Open { slot: usize, target: String },
    /// A text frame from `slot` (ignored if the slot is not open).
    Text { slot: usize, frame: String },
    /// A binary frame from `slot`: the chat must close it with 1003.
    Binary { slot: usize },
    /// The connection on `slot` left (ignored if the slot is not open).
    Close { slot: usize },
}

/// The outbox the chat writes to: checks every call, records sends and closes.
struct CheckingOutbox {
    open: HashSet<Token>,
    sent: Vec<(Token, Value)>,
    closes: Vec<(Token, CloseCode)>,
    now: u64,
}

impl Outbox for CheckingOutbox {
    fn send(&mut self, to: Token, frame: &Frame) {
        assert!(self.open.contains(&to), "sent to {to:?}, which is not open: {frame:?}");
        let Some(text) = frame.as_text() else {
            panic!("the chat sent a non-text message to {to:?}: {frame:?}")
        };
        let value: Value = serde_json::from_str(text)
            .unwrap_or_else(|error| panic!("the chat sent invalid JSON to {to:?} ({error}): {text:?}"));
        assert!(
            value.get("type").is_some_and(Value::is_string),
            "the chat sent an object without a string `type` to {to:?}: {text}"
        );
        self.sent.push((to, value));
    }

    fn close(&mut self, to: Token, code: CloseCode, _reason: &'static str) {
        assert!(self.open.contains(&to), "asked to close {to:?}, which is not open");
        self.closes.push((to, code));
    }

    fn unix_time_ms(&self) -> u64 {
        self.now
    }
}

/// One member as the model sees it.
#[derive(Debug, Clone)]
struct Member {
    id: u64,
    name: String,
    room: String,
}

/// The chat as the README describes it.
struct Model {
    history_limit: usize,
    next_id: u64,
    members: BTreeMap<usize, Member>,
    /// Each room's kept `message` events (as history shows them), oldest first.
    history: HashMap<String, VecDeque<Value>>,
    /// What the chat must send in the current step, in order, per slot.
    expected: Vec<(usize, Value)>,
}

fn error_event(code: &str) -> Value {
    json!({"type": "error", "code": code})
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

/// The `name` and `room` query parameters, percent-decoded: the decoding is form_urlencoded's, so
/// the model uses the server's own helper rather than a copy of it; the rules are what it models.
pub use wschat::chat::query_name_and_room as decode_target;

impl Model {
    fn new(history_limit: usize) -> Self {
        Model {
            history_limit,
            next_id: 1,
            members: BTreeMap::new(),
            history: HashMap::new(),
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
        Value::Array(self.in_room(room).iter().map(|(_, m)| json!({"id": m.id, "name": m.name})).collect())
    }

    fn history_of(&self, room: &str) -> Value {
        Value::Array(self.history.get(room).map(|h| h.iter().cloned().collect()).unwrap_or_default())
    }

    fn expect(&mut self, slot: usize, event: Value) {
        self.expected.push((slot, event));
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

    fn enter(&mut self, slot: usize, room: &str) {
        let member = self.members[&slot].clone();
        for (other, _) in self.in_room(room) {
            if other != slot {
                self.expect(
                    other,
                    json!({"type": "joined", "room": room, "user": {"id": member.id, "name": member.name}}),
                );
            }
        }
    }

    /// `member` (already moved out of `room` or removed) leaves `room`.
    fn leave(&mut self, member: &Member, room: &str) {
        let stay = self.in_room(room);
        if stay.is_empty() {
            self.history.remove(room);
        }
        for (other, _) in stay {
            self.expect(
                other,
                json!({"type": "left", "room": room, "user": {"id": member.id, "name": member.name}}),
            );
        }
    }

    fn open(&mut self, slot: usize, target: &str) {
        let id = self.next_id;
        self.next_id += 1;
        let (wanted_name, wanted_room) = decode_target(target);
        let mut problems = Vec::new();
        let name = match wanted_name {
            Some(name) => match self.name_problem(&name, None) {
                None => name,
                Some(code) => {
                    problems.push(code);
                    format!("guest-{id}")
                }
            },
            None => format!("guest-{id}"),
        };
        let room = match wanted_room {
            Some(room) if room_ok(&room) => room,
            Some(_) => {
                problems.push("invalid_room");
                "lobby".to_owned()
            }
            None => "lobby".to_owned(),
        };
        self.members.insert(slot, Member { id, name: name.clone(), room: room.clone() });
        self.enter(slot, &room);
        let welcome = json!({
            "type": "welcome", "id": id, "name": name, "room": room,
            "users": self.users(&room), "history": self.history_of(&room),
        });
        self.expect(slot, welcome);
        for code in problems {
            self.expect(slot, error_event(code));
        }
    }

    fn close(&mut self, slot: usize) {
        if let Some(member) = self.members.remove(&slot) {
            self.leave(&member, &member.room.clone());
        }
    }

    fn text(&mut self, slot: usize, frame: &str, now: u64) {
        let member = self.members[&slot].clone();
        let request = match parse_request(frame) {
            Ok(request) => request,
            Err(rejection) => {
                let code = serde_json::to_value(rejection.code).expect("error codes serialize");
                return self.expect(slot, json!({"type": "error", "code": code}));
            }
        };
        match request {
            Request::Message { text } => {
                let view = json!({
                    "room": member.room,
                    "from": {"id": member.id, "name": member.name},
                    "text": text,
                    "ts": now,
                });
                for (other, _) in self.in_room(&member.room) {
                    if other != slot {
                        let mut event = view.clone();
                        event["type"] = json!("message");
                        self.expect(other, event);
                    }
                }
                if self.history_limit > 0 {
                    let history = self.history.entry(member.room.clone()).or_default();
                    if history.len() == self.history_limit {
                        history.pop_front();
                    }
                    history.push_back(view);
                }
            }
            Request::Nick { name } => match self.name_problem(&name, Some(slot)) {
                Some(code) => self.expect(slot, error_event(code)),
                None => {
                    let event = json!({"type": "nick", "id": member.id, "old": member.name, "name": name});
                    self.members.get_mut(&slot).expect("open").name = name.into_owned();
                    for (other, _) in self.in_room(&member.room) {
                        self.expect(other, event.clone());
                    }
                }
            },
            Request::Join { room } => {
                if !room_ok(&room) {
                    return self.expect(slot, error_event("invalid_room"));
                }
                if room != member.room {
                    self.members.get_mut(&slot).expect("open").room = room.to_string();
                    self.leave(&member, &member.room);
                    self.enter(slot, &room);
                }
                let (users, history) = (self.users(&room), self.history_of(&room));
                let event = json!({"type": "room", "room": room, "users": users, "history": history});
                self.expect(slot, event);
            }
            Request::Who => {
                let event = json!({"type": "users", "room": member.room, "users": self.users(&member.room)});
                self.expect(slot, event);
            }
            Request::Ping => self.expect(slot, json!({"type": "pong"})),
        }
    }
}

/// Error events compare by code: checks that `message` is a string, then drops it.
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

/// Plays `ops` on a fresh `Chat` with `history_limit`, checking every step; panics on the first
/// difference from the model or broken invariant.
pub fn run(history_limit: usize, ops: &[Op]) {
    let mut chat = Chat::new(history_limit);
    let mut model = Model::new(history_limit);
    let mut out =
        CheckingOutbox { open: HashSet::new(), sent: Vec::new(), closes: Vec::new(), now: 1_764_100_000_000 };
    for (step, op) in ops.iter().enumerate() {
        out.now += 1 + step as u64 % 3;
        let mut expected_closes = Vec::new();
        match *op {
            Op::Open { slot, ref target } => {
                if out.open.contains(&Token(slot)) {
                    continue;
                }
                out.open.insert(Token(slot));
                model.open(slot, target);
                chat.on_open(Token(slot), target, &mut out);
            }
            Op::Text { slot, ref frame } => {
                if !out.open.contains(&Token(slot)) {
                    continue;
                }
                model.text(slot, frame, out.now);
                chat.on_message(Token(slot), Message::text(frame.as_str()), &mut out);
            }
            Op::Binary { slot } => {
                if !out.open.contains(&Token(slot)) {
                    continue;
                }
                expected_closes.push((Token(slot), CloseCode::Unsupported));
                chat.on_message(Token(slot), Message::binary(vec![1, 2, 3]), &mut out);
            }
            Op::Close { slot } => {
                if !out.open.remove(&Token(slot)) {
                    continue;
                }
                model.close(slot);
                chat.on_close(Token(slot), &mut out);
            }
        }
        // The reactor closes what the handler asked it to between handler calls, and tells the
        // handler with `on_close`.
        let closes = std::mem::take(&mut out.closes);
        assert_eq!(closes, expected_closes, "step {step}: closes differ for {op:?}");
        for (token, _) in closes {
            if out.open.remove(&token) {
                model.close(token.0);
                chat.on_close(token, &mut out);
            }
        }
        assert!(out.closes.is_empty(), "step {step}: on_close asked for a close");
        compare(step, op, &mut model, &mut out);

        let names: HashSet<&str> = model.members.values().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names.len(),
            model.members.len(),
            "step {step}: names are not unique: {:?}",
            model.members
        );
        assert_eq!(chat.member_count(), model.members.len(), "step {step}: member count");
        let rooms: HashSet<&str> = model.members.values().map(|m| m.room.as_str()).collect();
        assert_eq!(chat.room_count(), rooms.len(), "step {step}: room count");
    }
}

fn compare(step: usize, op: &Op, model: &mut Model, out: &mut CheckingOutbox) {
    let actual = std::mem::take(&mut out.sent);
    let expected = std::mem::take(&mut model.expected);
    for slot in 0..SLOTS {
        let got: Vec<Value> =
            actual.iter().filter(|(to, _)| to.0 == slot).map(|(_, v)| normalize(v.clone())).collect();
        let want: Vec<&Value> = expected.iter().filter(|(to, _)| *to == slot).map(|(_, v)| v).collect();
        let got: Vec<&Value> = got.iter().collect();
        assert_eq!(got, want, "step {step}: slot {slot} got other events than the rules say, after {op:?}");
    }
}

/// Decodes fuzzer bytes into a session: the first byte picks the history limit, then each
/// operation is one byte (`kind = b & 7`, `slot = (b >> 3) % SLOTS`) followed by its
/// length-prefixed payloads, turned into templates so short inputs reach every request.
pub fn ops_from_bytes(data: &[u8]) -> (usize, Vec<Op>) {
    /// A length byte (mod 48), then that many bytes, lossily UTF-8.
    fn chunk(bytes: &mut impl Iterator<Item = u8>) -> String {
        let length = usize::from(bytes.next().unwrap_or(0) % 48);
        let raw: Vec<u8> = bytes.take(length).collect();
        String::from_utf8_lossy(&raw).into_owned()
    }
    let mut bytes = data.iter().copied();
    let history_limit = usize::from(bytes.next().unwrap_or(0) % 4);
    let mut ops = Vec::new();
    while let Some(byte) = bytes.next() {
        let slot = usize::from(byte >> 3) % SLOTS;
        let op = match byte & 7 {
            0 => Op::Open { slot, target: chunk(&mut bytes) },
            1 => {
                let name = chunk(&mut bytes);
                let room = chunk(&mut bytes);
                let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
                Op::Open { slot, target: format!("/?name={}&room={}", encode(&name), encode(&room)) }
            }
            2 => Op::Text { slot, frame: chunk(&mut bytes) },
            3 => Op::Text { slot, frame: json!({"type": "nick", "name": chunk(&mut bytes)}).to_string() },
            4 => Op::Text { slot, frame: json!({"type": "join", "room": chunk(&mut bytes)}).to_string() },
            5 => {
                let kind = bytes.next().unwrap_or(0);
                let frame = match kind % 4 {
                    0 => json!({"type": "message", "text": chunk(&mut bytes)}).to_string(),
                    1 => r#"{"type":"who"}"#.to_owned(),
                    2 => r#"{"type":"ping"}"#.to_owned(),
                    _ => json!({"type": chunk(&mut bytes)}).to_string(),
                };
                Op::Text { slot, frame }
            }
            6 => Op::Binary { slot },
            _ => Op::Close { slot },
        };
        ops.push(op);
    }
    (history_limit, ops)
}
