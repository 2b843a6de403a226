//! The member's side: a connection arriving, leaving and asking for things. Each request is
//! checked by the chat's own rules here, then becomes one call of the cluster script; the answer
//! comes back through `replies.rs` and the room's channel.

use log::debug;
use mio::Token;

use super::greeting::{PLACEHOLDER, split_at_placeholder, unavailable};
use super::replica::Replica;
use super::{
    Cluster, Entry, Greeting, LOCAL_BITS, MAX_COMMANDS_IN_FLIGHT, MAX_REQUESTS_IN_FLIGHT_PER_MEMBER, Member,
    Pending,
};
use crate::auth::Identity;
use crate::chat::messages::fits;
use crate::chat::names::{check_name_shape, check_room, guest_name};
use crate::chat::protocol::{
    ErrorCode, Event, MessageView, Rejection, Request, Resume, UpgradeQuery, UserView,
};
use crate::chat::signed::{TOKEN_EXPIRED, refresh};
use crate::chat::{Arrival, TokenBucket, arrival, reject};
use crate::handler::{CloseCode, Outbox};

impl Cluster {
    /// Sends a member's entry, which waited for its room's subscription.
    pub(super) fn send_enter(&mut self, token: Token) {
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
    pub(super) fn enter(&mut self, token: Token) {
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
    pub(super) fn drop_if_unused(&mut self, room: &str) {
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

    pub(super) fn send_nick(&mut self, token: Token, name: String, request: Option<String>) {
        let Some(member) = self.members.get(&token) else { return };
        let (id, room, old) = (member.id, member.room.clone(), member.name.clone());
        let id_text = id.to_string();
        let args: [&[u8]; 4] = [id_text.as_bytes(), room.as_bytes(), old.as_bytes(), name.as_bytes()];
        self.eval(Pending::Nick { id, name: name.clone(), request }, "nick", &args);
    }

    /// A new member: its name and room as its upgrade URL (or its token) asks, checked here;
    /// whether the name is free, Redis decides.
    pub(super) fn arrive<O: Outbox>(&mut self, token: Token, target: &str, out: &mut O) {
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
        let Arrival { name, room, problems } =
            arrival(query.name, query.room, identity.as_ref(), id, check_name_shape);
        let allowance = self.rate_limit.map(|limit| TokenBucket::full(limit, self.now_ms));
        let signed =
            identity.map(|identity: Identity| self.token_deadlines.track(token, identity, self.now_ms));
        let entry = Entry { greeting: Greeting::Welcome, resume: query.resume, problems, leaving: None };
        let member = Member {
            id,
            name,
            room,
            entered: false,
            entry: Some(entry),
            allowance,
            signed,
            in_flight: 0,
            held: false,
        };
        self.members.insert(token, member);
        self.tokens.insert(id, token);
        self.enter(token);
    }

    /// A member leaves: Redis is told (if it knew of it), its room stops sending to it.
    pub(super) fn depart(&mut self, token: Token) {
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

    pub(super) fn handle<O: Outbox>(
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
        if member.in_flight >= MAX_REQUESTS_IN_FLIGHT_PER_MEMBER
            || self.redis.in_flight() >= MAX_COMMANDS_IN_FLIGHT
        {
            let rejection = Rejection::new(
                ErrorCode::Unavailable,
                "too many requests are waiting for the cluster; this one was dropped: slow down",
            );
            return reject(out, token, &rejection, request_id);
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
        if let Some(member) = self.members.get_mut(&token)
            && member.in_flight >= MAX_REQUESTS_IN_FLIGHT_PER_MEMBER
            && !member.held
        {
            member.held = true;
            debug!(
                "connection {}: {MAX_REQUESTS_IN_FLIGHT_PER_MEMBER} requests wait for Redis; not reading from it \
                 until half are answered",
                token.0
            );
            out.hold(token);
        }
    }

    /// A member moves to another room: it stops hearing the old one now, and Redis moves it (the
    /// old room hears `left`, the new one `joined`) once the new room is subscribed.
    pub(super) fn move_to(&mut self, token: Token, room: String, resume: Option<Resume>) {
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
}
