//! The chat's rules as a pure state machine: members, unique names, rooms, history and who hears
//! what. No sockets and no clocks: the reactor feeds it events through the [`Handler`] trait and
//! it answers through an [`Outbox`], so everything here is unit-tested without a network.

mod history;
pub mod protocol;
mod rate;
mod web;

use std::collections::{BTreeMap, HashMap};

use mio::Token;

use crate::handler::{CloseCode, Frame, Handler, Message, Outbox, RequestHead, Stats};
use history::{History, HistoryLimit, Line};
use protocol::{ErrorCode, Event, MessageView, Rejection, Request, UserView, parse_request};
pub use rate::RateLimit;
use rate::TokenBucket;

/// The room everyone starts in unless the upgrade URL asks for another.
pub const DEFAULT_ROOM: &str = "lobby";
/// Longest nickname, in characters.
pub const MAX_NAME_CHARS: usize = 32;
/// Longest room name, in characters.
pub const MAX_ROOM_CHARS: usize = 64;
/// The most bytes of history a room keeps unless told otherwise: a welcome carrying it fits in
/// the default 1 MiB send buffer with room to spare for the member list.
pub const DEFAULT_HISTORY_BYTES: usize = 256 * 1024;

/// The whole chat: every member and every room.
pub struct Chat {
    /// How much history each room keeps for newcomers.
    history_limit: HistoryLimit,
    /// How fast a member may send frames, if limited.
    rate_limit: Option<RateLimit>,
    /// Members by connection.
    members: HashMap<Token, Member>,
    /// Every name in use, server-wide, so a nickname is unique.
    names: HashMap<String, Token>,
    /// Rooms by name. A room exists while it has members; its history goes with it.
    rooms: HashMap<String, Room>,
    /// The id the next member gets. Ids are never reused, unlike connection tokens.
    next_id: u64,
}

/// One connected person.
struct Member {
    id: u64,
    name: String,
    room: String,
    /// The member's allowance under the rate limit, if there is one.
    allowance: Option<TokenBucket>,
}

/// One room.
#[derive(Default)]
struct Room {
    /// Members by id; ids grow with arrival, so iteration lists them in order of arrival.
    members: BTreeMap<u64, Token>,
    /// The latest messages, within `history_limit`.
    history: History,
}

impl Room {
    /// Sends one event to every member but `except`. The event was serialized and framed once;
    /// each recipient's queue gets a handle to the same bytes.
    fn broadcast<O: Outbox>(&self, except: Option<u64>, frame: &Frame, out: &mut O) {
        for (&id, &recipient) in &self.members {
            if Some(id) != except {
                out.send(recipient, frame);
            }
        }
    }
}

impl Chat {
    /// A chat whose rooms keep their latest `history` messages (within `DEFAULT_HISTORY_BYTES`).
    pub fn new(history: usize) -> Self {
        Chat {
            history_limit: HistoryLimit { messages: history, bytes: DEFAULT_HISTORY_BYTES },
            rate_limit: None,
            members: HashMap::new(),
            names: HashMap::new(),
            rooms: HashMap::new(),
            next_id: 1,
        }
    }

    /// Caps each room's history at `bytes` of JSON. Keep it well under the clients' send buffer:
    /// a welcome carries the whole history and the member list in one frame.
    pub fn with_history_bytes(mut self, bytes: usize) -> Self {
        self.history_limit.bytes = bytes;
        self
    }

    /// Limits every member to `limit`: frames over it are dropped and answered with a
    /// `rate_limited` error.
    pub fn with_rate_limit(mut self, limit: RateLimit) -> Self {
        self.rate_limit = Some(limit);
        self
    }

    /// Open connections, as the chat counts them.
    pub fn member_count(&self) -> usize {
        self.members.len()
    }

    /// Rooms that currently have members.
    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// A new member arrives, with the name and room its upgrade URL asked for.
    fn join_server<O: Outbox>(&mut self, token: Token, target: &str, out: &mut O) {
        let id = self.next_id;
        self.next_id += 1;
        let mut problems = Vec::new();
        let (wanted_name, wanted_room) = query_name_and_room(target);

        let name = match wanted_name.map(|name| self.check_name(&name, None).map(|()| name)) {
            Some(Ok(name)) => name,
            Some(Err(rejection)) => {
                problems.push(rejection);
                guest_name(id)
            }
            None => guest_name(id),
        };
        let room = match wanted_room.map(|room| check_room(&room).map(|()| room)) {
            Some(Ok(room)) => room,
            Some(Err(rejection)) => {
                problems.push(rejection);
                DEFAULT_ROOM.to_owned()
            }
            None => DEFAULT_ROOM.to_owned(),
        };

        self.names.insert(name.clone(), token);
        let allowance = self.rate_limit.map(|limit| TokenBucket::full(limit, out.unix_time_ms()));
        self.members.insert(token, Member { id, name, room: room.clone(), allowance });
        self.enter_room(token, &room, out);
        let welcome = self.room_snapshot(token, |member, users, history| Event::Welcome {
            id: member.id,
            name: &member.name,
            room: &member.room,
            users,
            history,
        });
        out.send(token, &welcome);
        for problem in problems {
            reject(out, token, &problem);
        }
    }

    /// A member leaves the server: its room hears `left`, its name becomes free.
    fn leave_server<O: Outbox>(&mut self, token: Token, out: &mut O) {
        if let Some(member) = self.members.remove(&token) {
            self.names.remove(&member.name);
            self.leave_room(&member.room, UserView { id: member.id, name: &member.name }, out);
        }
    }

    fn handle<O: Outbox>(&mut self, token: Token, request: Request<'_>, out: &mut O) {
        match request {
            Request::Message { text } => self.say(token, &text, out),
            Request::Nick { name } => match self.check_name(&name, Some(token)) {
                Ok(()) => self.rename(token, name.into_owned(), out),
                Err(rejection) => reject(out, token, &rejection),
            },
            Request::Join { room } => match check_room(&room) {
                Ok(()) => self.switch_room(token, room.into_owned(), out),
                Err(rejection) => reject(out, token, &rejection),
            },
            Request::Who => {
                let Some(member) = self.members.get(&token) else { return };
                let users = self.users_of(&member.room);
                out.send(token, &Event::Users { room: &member.room, users }.to_frame());
            }
            Request::Ping => out.send(token, &Event::Pong.to_frame()),
        }
    }

    /// A chat message: kept in the room's history and sent to every other member of the room.
    fn say<O: Outbox>(&mut self, token: Token, text: &str, out: &mut O) {
        let Some(member) = self.members.get(&token) else { return };
        let Some(room) = self.rooms.get_mut(&member.room) else { return };
        let ts = out.unix_time_ms();
        let view = MessageView {
            room: &member.room,
            from: UserView { id: member.id, name: &member.name },
            text,
            ts,
        };
        let frame = Event::Message(view).to_frame();
        let size = frame.payload().len();
        room.broadcast(Some(member.id), &frame, out);
        // Copy the line only if the history will keep it (with `--history 0` it never does).
        if History::would_keep(size, self.history_limit) {
            let line =
                Line { from_id: member.id, from_name: member.name.clone(), text: text.to_owned(), ts, size };
            room.history.push(line, self.history_limit);
        }
    }

    fn rename<O: Outbox>(&mut self, token: Token, name: String, out: &mut O) {
        let Some(member) = self.members.get_mut(&token) else { return };
        let old = std::mem::replace(&mut member.name, name.clone());
        self.names.remove(&old);
        self.names.insert(name, token);
        let event = Event::Nick { id: member.id, old: &old, name: &member.name };
        if let Some(room) = self.rooms.get(&member.room) {
            room.broadcast(None, &event.to_frame(), out);
        }
    }

    fn switch_room<O: Outbox>(&mut self, token: Token, room: String, out: &mut O) {
        let Some(member) = self.members.get_mut(&token) else { return };
        if member.room != room {
            let old = std::mem::replace(&mut member.room, room.clone());
            let (id, name) = (member.id, member.name.clone());
            self.leave_room(&old, UserView { id, name: &name }, out);
            self.enter_room(token, &room, out);
        }
        let snapshot = self.room_snapshot(token, |member, users, history| Event::Room {
            room: &member.room,
            users,
            history,
        });
        out.send(token, &snapshot);
    }

    /// Adds the member to `room` (creating it) and tells the members already there.
    fn enter_room<O: Outbox>(&mut self, token: Token, room: &str, out: &mut O) {
        let Some(member) = self.members.get(&token) else { return };
        let room = self.rooms.entry(room.to_owned()).or_default();
        if !room.members.is_empty() {
            let joined =
                Event::Joined { room: &member.room, user: UserView { id: member.id, name: &member.name } };
            room.broadcast(None, &joined.to_frame(), out);
        }
        room.members.insert(member.id, token);
    }

    /// Removes the member from its room, tells those who stay, and drops the room once empty.
    fn leave_room<O: Outbox>(&mut self, room_name: &str, user: UserView<'_>, out: &mut O) {
        let Some(room) = self.rooms.get_mut(room_name) else { return };
        room.members.remove(&user.id);
        if room.members.is_empty() {
            self.rooms.remove(room_name);
            return;
        }
        room.broadcast(None, &Event::Left { room: room_name, user }.to_frame(), out);
    }

    /// Builds a `welcome` or `room` event: the member's room, its users and its history.
    fn room_snapshot(
        &self,
        token: Token,
        build: impl for<'a> FnOnce(&'a Member, Vec<UserView<'a>>, Vec<MessageView<'a>>) -> Event<'a>,
    ) -> Frame {
        // Invariant: callers pass a token they have just inserted or looked up in `members`.
        let member = &self.members[&token];
        let history = self.rooms.get(&member.room).map(|room| {
            room.history
                .lines()
                .map(|line| MessageView {
                    room: &member.room,
                    from: UserView { id: line.from_id, name: &line.from_name },
                    text: &line.text,
                    ts: line.ts,
                })
                .collect()
        });
        build(member, self.users_of(&member.room), history.unwrap_or_default()).to_frame()
    }

    fn users_of(&self, room: &str) -> Vec<UserView<'_>> {
        let Some(room) = self.rooms.get(room) else { return Vec::new() };
        room.members
            .values()
            .filter_map(|token| self.members.get(token))
            .map(|member| UserView { id: member.id, name: &member.name })
            .collect()
    }

    /// Whether the member may send a frame now; every frame counts, whatever it asks.
    fn within_rate_limit(&mut self, token: Token, now_ms: u64) -> bool {
        let limit = self.rate_limit;
        match (limit, self.members.get_mut(&token).and_then(|member| member.allowance.as_mut())) {
            (Some(limit), Some(allowance)) => allowance.try_take(limit, now_ms),
            _ => true,
        }
    }

    /// Checks a wanted nickname: its shape, and that nobody else (`except` the asker) has it.
    fn check_name(&self, name: &str, except: Option<Token>) -> Result<(), Rejection> {
        check_label(name, MAX_NAME_CHARS, ErrorCode::InvalidName, "a name")?;
        if is_guest_name(name) {
            return Err(Rejection::new(
                ErrorCode::InvalidName,
                "names like guest-7 are kept for the server to give out",
            ));
        }
        match self.names.get(name) {
            Some(&holder) if Some(holder) != except => {
                Err(Rejection::new(ErrorCode::NameTaken, format!("the name `{name}` is taken")))
            }
            _ => Ok(()),
        }
    }
}

impl Handler for Chat {
    fn on_open<O: Outbox>(&mut self, connection: Token, target: &str, out: &mut O) {
        self.join_server(connection, target, out);
    }

    fn on_message<O: Outbox>(&mut self, connection: Token, message: Message, out: &mut O) {
        let Message::Text(text) = message else {
            out.close(connection, CloseCode::Unsupported, "binary frames are not supported");
            return;
        };
        if !self.within_rate_limit(connection, out.unix_time_ms()) {
            let rejection = Rejection::new(ErrorCode::RateLimited, "too many messages; this one was dropped");
            return reject(out, connection, &rejection);
        }
        match parse_request(&text) {
            Ok(request) => self.handle(connection, request, out),
            Err(rejection) => reject(out, connection, &rejection),
        }
    }

    fn on_close<O: Outbox>(&mut self, connection: Token, out: &mut O) {
        self.leave_server(connection, out);
    }

    fn respond(&mut self, request: &RequestHead, stats: &Stats) -> Option<Vec<u8>> {
        web::respond(self, request, stats)
    }
}

fn reject<O: Outbox>(out: &mut O, to: Token, rejection: &Rejection) {
    let event = Event::Error { code: rejection.code, message: &rejection.message };
    out.send(to, &event.to_frame());
}

fn check_room(room: &str) -> Result<(), Rejection> {
    check_label(room, MAX_ROOM_CHARS, ErrorCode::InvalidRoom, "a room name")
}

/// The shape names and rooms share: 1 to `max_chars` characters, not blank, no control
/// characters. `what` names the thing in the error message.
fn check_label(text: &str, max_chars: usize, code: ErrorCode, what: &str) -> Result<(), Rejection> {
    let length = text.chars().count();
    if length == 0 || length > max_chars || text.trim().is_empty() {
        return Err(Rejection::new(code, format!("{what} has 1 to {max_chars} characters and is not blank")));
    }
    if text.chars().any(char::is_control) {
        return Err(Rejection::new(code, format!("{what} has no control characters")));
    }
    Ok(())
}

fn guest_name(id: u64) -> String {
    format!("guest-{id}")
}

/// `guest-` followed by digits: the server's default names, which nobody may pick, so that a
/// default name is always free.
fn is_guest_name(name: &str) -> bool {
    name.strip_prefix("guest-")
        .is_some_and(|digits| !digits.is_empty() && digits.bytes().all(|byte| byte.is_ascii_digit()))
}

/// The `name` and `room` query parameters of an upgrade request-target, percent-decoded (`+` is a
/// space; the last of a repeated parameter wins).
pub fn query_name_and_room(target: &str) -> (Option<String>, Option<String>) {
    let query = target.split_once('?').map_or("", |(_, query)| query);
    let (mut name, mut room) = (None, None);
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match &*key {
            "name" => name = Some(value.into_owned()),
            "room" => room = Some(value.into_owned()),
            _ => {}
        }
    }
    (name, room)
}

#[cfg(test)]
mod tests;
