//! Redis's answers to the node's commands: each `Pending` request finished (an entry welcomed,
//! a message acknowledged, a nickname taken or refused), or failed, in which case its member is
//! told `unavailable` (or, if it was entering, closed to try again).

use log::{error, info, warn};

use super::greeting::{first_integer, greeting, unavailable};
use super::wire::snapshot;
use super::{Cluster, Entry, Greeting, Pending, TAG_BITS, resp};
use crate::chat::protocol::{ErrorCode, Event, Rejection};
use crate::chat::reject;
use crate::handler::{CloseCode, Outbox};

impl Cluster {
    pub(super) fn on_reply<O: Outbox>(&mut self, pending: Pending, reply: resp::Reply, out: &mut O) {
        self.request_done(pending.requester(), out);
        if let resp::Reply::Error(problem) = &reply {
            error!("cluster: Redis refused an operation: {problem}");
            return self.on_failed(pending, out);
        }
        match pending {
            Pending::Assert => self.on_asserted(&reply, out),
            Pending::Beat => {
                let resp::Reply::Array(parts) = &reply else { return };
                if let Some(resp::Reply::Array(reaped)) = parts.get(1) {
                    for node in reaped.iter().filter_map(resp::text) {
                        info!("cluster: node {node} stopped beating; its members have left");
                    }
                }
                if parts.first().and_then(resp::integer) == Some(1) && self.asserted {
                    // This node was presumed dead (stopped, or cut off, for longer than its
                    // timeout): the others announced its members gone. It tells Redis again who
                    // they are; a name taken meanwhile makes its holder here a guest.
                    warn!(
                        "cluster: this node was presumed dead and its members removed; announcing them again"
                    );
                    self.send_assert();
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
    pub(super) fn on_asserted<O: Outbox>(&mut self, reply: &resp::Reply, out: &mut O) {
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
    pub(super) fn on_entered<O: Outbox>(
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

    /// A command that failed (never sent, lost with the connection, or refused): its member is
    /// told, or, if it was entering, closed: it may try again later.
    pub(super) fn on_failed<O: Outbox>(&mut self, pending: Pending, out: &mut O) {
        self.request_done(pending.requester(), out);
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
}
