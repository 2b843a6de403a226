//! The chat's rules as a pure state machine: members, unique names, rooms and their sequences,
//! history and resuming, direct messages, and who hears what. No sockets and no clocks: the
//! reactor feeds it events through the [`Handler`] trait and it answers through an [`Outbox`], so
//! everything here is unit-tested without a network.

mod history;
pub(crate) mod messages;
pub(crate) mod names;
pub mod protocol;
mod rate;
mod rooms;
pub mod signed;
pub(crate) mod web;

use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use mio::Token;

use crate::auth::Identity;
use crate::handler::{CloseCode, Handler, Message, Outbox, Refusal, RequestHead, Stats};
use crate::token_map::TokenMap;
use history::HistoryLimit;
pub use names::{MAX_NAME_CHARS, MAX_ROOM_CHARS};
use names::{check_name_shape, check_room, guest_name};
use protocol::{ErrorCode, Event, Parsed, Rejection, Request, Resume, UpgradeQuery, UserView, parse_request};
pub use rate::RateLimit;
pub(crate) use rate::TokenBucket;
use rooms::{Retention, Rooms};
use signed::{Auth, Signed, TokenDeadlines};
pub use signed::{SIGNED_IN_ELSEWHERE, TOKEN_EXPIRED};

/// The room everyone starts in unless the upgrade URL asks for another.
pub const DEFAULT_ROOM: &str = "lobby";
/// The most bytes of history a room keeps unless told otherwise: a welcome carrying it fits in
/// the default 1 MiB send buffer with room to spare for the member list.
pub const DEFAULT_HISTORY_BYTES: usize = 256 * 1024;
/// How long a room is kept after its last member leaves unless told otherwise (`--history-ttl`).
pub const DEFAULT_HISTORY_TTL: Duration = Duration::from_secs(300);
/// The most history kept across rooms unless told otherwise (`--history-memory`).
pub const DEFAULT_HISTORY_MEMORY: usize = 64 * 1024 * 1024;

/// The whole chat: every member and every room.
pub struct Chat {
    /// How fast a member may send frames, if limited.
    rate_limit: Option<RateLimit>,
    /// Members by connection.
    members: TokenMap<Member>,
    /// Every name in use, server-wide, so a nickname is unique and a DM finds its recipient. The
    /// key is the member's own `name`, not a copy.
    names: HashMap<Rc<str>, Token>,
    /// Rooms by name, with those kept for a while after their last member left.
    rooms: Rooms,
    /// The id the next member gets. Ids are never reused, unlike connection tokens.
    next_id: u64,
    /// When the reactor was last asked to wake the chat (to drop expired rooms, to ask for or
    /// enforce fresh tokens), in Unix ms.
    wake_at: Option<u64>,
    /// Tokens, if the server uses them (`--auth-secret-file`).
    auth: Option<Auth>,
    /// Signed members' refresh and expiry deadlines.
    token_deadlines: TokenDeadlines,
    /// Frames dropped by the rate limit since start-up (`/metrics`).
    rate_limited_frames: u64,
}

/// One connected person.
struct Member {
    id: u64,
    name: Rc<str>,
    /// The room's own name (`Room::name`), shared by its members.
    room: Rc<str>,
    /// The member's allowance under the rate limit, if there is one.
    allowance: Option<TokenBucket>,
    /// The member's token, if it connected with one: its name is the token's, held for it.
    signed: Option<Box<Signed>>,
}

impl Chat {
    /// A chat whose rooms keep their latest `history` messages (within `DEFAULT_HISTORY_BYTES`),
    /// for `DEFAULT_HISTORY_TTL` after their last member leaves, within `DEFAULT_HISTORY_MEMORY`.
    pub fn new(history: usize) -> Self {
        let retention = Retention {
            history: HistoryLimit { messages: history, bytes: DEFAULT_HISTORY_BYTES },
            ttl_ms: DEFAULT_HISTORY_TTL.as_millis() as u64,
            memory: DEFAULT_HISTORY_MEMORY,
        };
        Chat {
            rate_limit: None,
            members: TokenMap::default(),
            names: HashMap::new(),
            // Epochs must differ from one run of the server to the next: seeded at random.
            rooms: Rooms::new(retention, fastrand::u64(..)),
            next_id: 1,
            wake_at: None,
            auth: None,
            token_deadlines: TokenDeadlines::default(),
            rate_limited_frames: 0,
        }
    }

    /// Caps each room's history at `bytes` of JSON. Keep it well under the clients' send buffer:
    /// a welcome carries the whole history and the member list in one frame.
    pub fn with_history_bytes(mut self, bytes: usize) -> Self {
        self.update_retention(|retention| retention.history.bytes = bytes);
        self
    }

    /// Keeps a room (members gone, history, sequence) for `ttl` after its last member leaves;
    /// zero drops it at once.
    pub fn with_history_ttl(mut self, ttl: Duration) -> Self {
        self.update_retention(|retention| {
            retention.ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)
        });
        self
    }

    /// Caps all history across rooms at `bytes`.
    pub fn with_history_memory(mut self, bytes: usize) -> Self {
        self.update_retention(|retention| retention.memory = bytes);
        self
    }

    /// Draws room epochs from `seed`, so tests can predict them.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.rooms = Rooms::new(self.rooms.retention(), seed);
        self
    }

    /// Limits every member to `limit`: frames over it are dropped and answered with a
    /// `rate_limited` error.
    pub fn with_rate_limit(mut self, limit: RateLimit) -> Self {
        self.rate_limit = Some(limit);
        self
    }

    fn update_retention(&mut self, change: impl FnOnce(&mut Retention)) {
        let mut retention = self.rooms.retention();
        change(&mut retention);
        self.rooms.set_retention(retention);
    }

    /// Open connections, as the chat counts them.
    pub fn member_count(&self) -> usize {
        self.members.len()
    }

    /// Rooms that currently have members.
    pub fn room_count(&self) -> usize {
        self.rooms.occupied()
    }

    /// Rooms kept without members, for someone to resume them.
    pub fn rooms_kept_empty(&self) -> usize {
        self.rooms.kept_empty()
    }

    /// Bytes of history kept across all rooms.
    pub fn history_bytes(&self) -> usize {
        self.rooms.history_bytes()
    }

    /// Frames dropped by the rate limit (each answered with a `rate_limited` error).
    pub fn rate_limited_frames(&self) -> u64 {
        self.rate_limited_frames
    }

    /// The chat's numbers for `/stats` and `/metrics`.
    fn figures(&self) -> web::Figures {
        web::Figures {
            rooms: self.room_count(),
            rooms_without_members: self.rooms_kept_empty(),
            history_bytes: self.history_bytes(),
            rate_limited_frames: self.rate_limited_frames,
            cluster: None,
        }
    }

    /// A new member arrives, with the name and room its upgrade URL (or its token) asked for.
    fn join_server<O: Outbox>(&mut self, token: Token, target: &str, out: &mut O) {
        let now = out.unix_time_ms();
        let query = UpgradeQuery::parse(target);
        let identity = match self.identity_of(&query, now) {
            Ok(identity) => identity,
            // Checked before the 101; only time can have made it fail since.
            Err(_) => return out.close(token, CloseCode::from(TOKEN_EXPIRED), "token expired"),
        };
        let id = self.next_id;
        self.next_id += 1;
        let Arrival { name, room, problems } =
            arrival(query.name, query.room, identity.as_ref(), id, |name| self.check_name(name, None));
        if let Some(identity) = &identity {
            // A token's name wins over the query's, and over whoever holds it.
            self.claim_name(&identity.name, out);
        }
        let name: Rc<str> = name.into();
        self.names.insert(name.clone(), token);
        let allowance = self.rate_limit.map(|limit| TokenBucket::full(limit, now));
        let signed = identity.map(|identity| self.token_deadlines.track(token, identity, now));
        let signed_in = signed.is_some();
        let room = self.rooms.enter(&room).name.clone();
        self.members.insert(token, Member { id, name, room: room.clone(), allowance, signed });
        self.enter_room(token, &room, out);
        let welcome = self.room_snapshot(token, query.resume.as_ref(), |member, room| Event::Welcome {
            id: member.id,
            name: &member.name,
            room,
        });
        out.send(token, &welcome);
        for problem in problems {
            reject(out, token, &problem, None);
        }
        if signed_in {
            // Its token's refresh may be the chat's nearest deadline now.
            self.schedule(out);
        }
    }

    /// A member leaves the server: its room hears `left`, its name becomes free.
    fn leave_server<O: Outbox>(&mut self, token: Token, out: &mut O) {
        if let Some(member) = self.members.remove(&token) {
            // A newer connection signed in with the same name may hold it already.
            if self.names.get(&member.name) == Some(&token) {
                self.names.remove(&member.name);
            }
            if let Some(signed) = &member.signed {
                self.token_deadlines.forget(signed);
            }
            self.leave_room(&member.room, UserView { id: member.id, name: &member.name }, out);
        }
    }

    fn handle<O: Outbox>(&mut self, token: Token, id: Option<&str>, request: Request<'_>, out: &mut O) {
        match request {
            Request::Message { text } => self.say(token, id, &text, out),
            Request::Dm { to, text } => self.direct(token, id, &to, &text, out),
            Request::Nick { name } => {
                match self.check_name(&name, Some(token)).and_then(|()| self.may_rename(token)) {
                    Ok(()) => self.rename(token, name.into_owned(), out),
                    Err(rejection) => reject(out, token, &rejection, id),
                }
            }
            Request::Join { room, resume } => {
                match check_room(&room).and_then(|()| self.may_enter(token, &room)) {
                    Ok(()) => self.switch_room(token, room.into_owned(), resume.as_ref(), out),
                    Err(rejection) => reject(out, token, &rejection, id),
                }
            }
            Request::Auth { token: fresh } => self.refresh_token(token, id, &fresh, out),
            Request::Who => {
                let Some(member) = self.members.get(&token) else { return };
                let users = self.users_of(&member.room);
                out.send(token, &Event::Users { room: &member.room, users }.to_frame());
            }
            Request::Ping => out.send(token, &Event::Pong.to_frame()),
        }
    }

    fn rename<O: Outbox>(&mut self, token: Token, name: String, out: &mut O) {
        let Some(member) = self.members.get_mut(&token) else { return };
        let name: Rc<str> = name.into();
        let old = std::mem::replace(&mut member.name, name.clone());
        self.names.remove(&old);
        self.names.insert(name, token);
        let event = Event::Nick { id: member.id, old: &old, name: &member.name };
        if let Some(room) = self.rooms.get(&member.room) {
            room.broadcast(None, &event.to_frame(), out);
        }
    }

    fn switch_room<O: Outbox>(&mut self, token: Token, room: String, resume: Option<&Resume>, out: &mut O) {
        let Some(member) = self.members.get_mut(&token) else { return };
        if *member.room != *room {
            // The room it goes to is taken back from the rooms kept empty before the old one is
            // left, so the memory bound never drops the room the member is moving into.
            let old = std::mem::replace(&mut member.room, self.rooms.enter(&room).name.clone());
            let (id, name) = (member.id, member.name.clone());
            self.leave_room(&old, UserView { id, name: &name }, out);
            self.enter_room(token, &room, out);
        }
        let snapshot = self.room_snapshot(token, resume, |_, room| Event::Room(room));
        out.send(token, &snapshot);
    }

    /// Adds the member to `room`, which `Rooms::enter` has made or taken back from the rooms kept
    /// empty, and tells the members already there.
    fn enter_room<O: Outbox>(&mut self, token: Token, room: &str, out: &mut O) {
        let Some(member) = self.members.get(&token) else { return };
        let Some(room) = self.rooms.get_mut(room) else { return };
        if !room.members.is_empty() {
            let joined =
                Event::Joined { room: &member.room, user: UserView { id: member.id, name: &member.name } };
            room.broadcast(None, &joined.to_frame(), out);
        }
        room.members.insert(member.id, token);
    }

    /// Removes the member from its room and tells those who stay. A room left empty is kept for
    /// `--history-ttl`, so the chat asks to be woken when it is due to go.
    fn leave_room<O: Outbox>(&mut self, room_name: &str, user: UserView<'_>, out: &mut O) {
        let Some(room) = self.rooms.get_mut(room_name) else { return };
        room.members.remove(&user.id);
        if room.members.is_empty() {
            self.rooms.emptied(room_name, out.unix_time_ms());
            return self.schedule(out);
        }
        room.broadcast(None, &Event::Left { room: room_name, user }.to_frame(), out);
    }

    /// Asks the reactor to wake the chat for its next deadline (a kept room expiring, a token to
    /// refresh or that runs out), unless it already will by then. (A wake-up that finds nothing
    /// due, because the room was taken back or the token refreshed, is harmless.)
    fn schedule<O: Outbox>(&mut self, out: &mut O) {
        let next = match (self.rooms.next_expiry(), self.token_deadlines.first()) {
            (Some(room), Some(token)) => room.min(token),
            (room, token) => match room.or(token) {
                Some(next) => next,
                None => return,
            },
        };
        if self.wake_at.is_none_or(|at| next < at) {
            self.wake_at = Some(next);
            out.wake_at(next);
        }
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

    /// A signed member's name is its token's.
    fn may_rename(&self, token: Token) -> Result<(), Rejection> {
        match self.members.get(&token) {
            Some(Member { signed: Some(_), .. }) => {
                Err(Rejection::new(ErrorCode::Forbidden, "your name comes from your token"))
            }
            _ => Ok(()),
        }
    }

    /// A signed member may enter only the rooms its token names, if it names any.
    fn may_enter(&self, token: Token, room: &str) -> Result<(), Rejection> {
        match self.members.get(&token).and_then(|member| member.signed.as_ref()) {
            Some(signed) if !signed.identity.may_enter(room) => Err(Rejection::new(
                ErrorCode::Forbidden,
                format!("your token does not allow the room `{room}`"),
            )),
            _ => Ok(()),
        }
    }

    /// Checks a wanted nickname: its shape, and that nobody else (`except` the asker) has it.
    fn check_name(&self, name: &str, except: Option<Token>) -> Result<(), Rejection> {
        check_name_shape(name)?;
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
        // Parsed before the rate check, so that even a `rate_limited` error echoes the id.
        let Parsed { id, request } = parse_request(&text);
        if !self.within_rate_limit(connection, out.unix_time_ms()) {
            self.rate_limited_frames += 1;
            let rejection = Rejection::new(ErrorCode::RateLimited, "too many messages; this one was dropped");
            return reject(out, connection, &rejection, id.as_deref());
        }
        match request {
            Ok(request) => self.handle(connection, id.as_deref(), request, out),
            Err(rejection) => reject(out, connection, &rejection, id.as_deref()),
        }
    }

    fn on_close<O: Outbox>(&mut self, connection: Token, out: &mut O) {
        self.leave_server(connection, out);
    }

    /// The wake-up the chat asked for: rooms kept empty past their TTL go, and tokens are asked
    /// for or enforced.
    fn on_timer<O: Outbox>(&mut self, out: &mut O) {
        self.wake_at = None;
        self.rooms.expire(out.unix_time_ms());
        self.token_deadlines_due(out);
        self.schedule(out);
    }

    fn check_upgrade(&mut self, request: &RequestHead, unix_ms: u64) -> Result<(), Refusal> {
        self.check_token(request, unix_ms)
    }

    fn respond(&mut self, request: &RequestHead, stats: &Stats) -> Option<Vec<u8>> {
        web::respond(&self.figures(), request, stats)
    }
}

/// What a new member gets of what it asked for on its upgrade URL (or what its token says).
pub(crate) struct Arrival {
    pub name: String,
    pub room: String,
    /// What was refused, to be sent after the welcome.
    pub problems: Vec<Rejection>,
}

/// The name and room of new member `id`: its token's name, else the query's if `check_name`
/// allows it, else a guest name; the query's room if it is a valid one (and, for a signed member,
/// one its token allows), else the lobby (or the token's first room). Both the standalone chat and
/// the cluster take their members in through here; only `check_name` differs (the cluster checks
/// the shape here and who holds the name in Redis).
pub(crate) fn arrival(
    name: Option<String>,
    room: Option<String>,
    identity: Option<&Identity>,
    id: u64,
    check_name: impl FnOnce(&str) -> Result<(), Rejection>,
) -> Arrival {
    let mut problems = Vec::new();
    let name = match (identity, name) {
        (Some(identity), _) => identity.name.clone(),
        (None, Some(name)) => match check_name(&name) {
            Ok(()) => name,
            Err(rejection) => {
                problems.push(rejection);
                guest_name(id)
            }
        },
        (None, None) => guest_name(id),
    };
    let room = match room.map(|room| check_room(&room).map(|()| room)) {
        Some(Ok(room)) => room,
        Some(Err(rejection)) => {
            problems.push(rejection);
            DEFAULT_ROOM.to_owned()
        }
        None => DEFAULT_ROOM.to_owned(),
    };
    let room = match identity {
        Some(identity) => Chat::allowed_room(identity, room, &mut problems),
        None => room,
    };
    Arrival { name, room, problems }
}

/// Sends `rejection` as an `error` event, echoing the id of the request it answers.
pub(crate) fn reject<O: Outbox>(out: &mut O, to: Token, rejection: &Rejection, id: Option<&str>) {
    let event = Event::Error { code: rejection.code, message: &rejection.message, id };
    out.send(to, &event.to_frame());
}

#[cfg(test)]
mod sequence_tests;
#[cfg(test)]
pub(crate) mod tests;
