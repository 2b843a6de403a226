//! What members say and what replays it: a room message (its seq, its broadcast, its ack, its
//! place in history), a direct message, and the `welcome` / `room` snapshot that carries a room's
//! history, or exactly what a resuming member missed.

use mio::Token;
use serde_json::value::RawValue;

use super::protocol::{ErrorCode, Event, MessageView, Rejection, Resume, RoomView, UserView};
use super::{Chat, Member, reject};
use crate::handler::{Frame, Outbox};

impl Chat {
    /// A chat message: given the room's next seq, sent to every other member of the room, kept
    /// in the room's history, and acknowledged to the sender if it carried an id.
    pub(super) fn say<O: Outbox>(&mut self, token: Token, id: Option<&str>, text: &str, out: &mut O) {
        let Some(member) = self.members.get(&token) else { return };
        let Some(room) = self.rooms.get_mut(&member.room) else { return };
        let (seq, ts) = (room.seq + 1, out.unix_time_ms());
        let from = UserView { id: member.id, name: &member.name };
        let event = Event::Message(MessageView { room: &member.room, seq, from, text, ts }).to_frame();
        if let Err(rejection) = fits(&event, out) {
            return reject(out, token, &rejection, id);
        }
        room.seq = seq;
        room.broadcast(Some(member.id), &event, out);
        if let Some(id) = id {
            out.send(token, &Event::Ack { id, seq: Some(seq), ts }.to_frame());
        }
        self.rooms.remember(&member.room, seq, event);
    }

    /// A direct message: to the member named `to`, wherever they are; never kept.
    pub(super) fn direct<O: Outbox>(
        &mut self,
        token: Token,
        id: Option<&str>,
        to: &str,
        text: &str,
        out: &mut O,
    ) {
        let Some(sender) = self.members.get(&token) else { return };
        let Some(recipient) =
            self.names.get(to).and_then(|token| self.members.get(token).map(|member| (token, member)))
        else {
            let rejection = Rejection::new(ErrorCode::NoSuchUser, format!("nobody is called `{to}`"));
            return reject(out, token, &rejection, id);
        };
        let (recipient_token, recipient) = recipient;
        let ts = out.unix_time_ms();
        let event = Event::Dm {
            from: UserView { id: sender.id, name: &sender.name },
            to: UserView { id: recipient.id, name: &recipient.name },
            text,
            ts,
        }
        .to_frame();
        if let Err(rejection) = fits(&event, out) {
            return reject(out, token, &rejection, id);
        }
        out.send(*recipient_token, &event);
        if let Some(id) = id {
            out.send(token, &Event::Ack { id, seq: None, ts }.to_frame());
        }
    }

    /// Builds a `welcome` or `room` event: the member's room, its sequence, its users and its
    /// history: what the member missed if it asked to resume and that can be vouched for, the
    /// room's latest messages otherwise.
    pub(super) fn room_snapshot(
        &self,
        token: Token,
        resume: Option<&Resume>,
        build: impl for<'a> FnOnce(&'a Member, RoomView<'a>) -> Event<'a>,
    ) -> Frame {
        // Invariant: callers pass a token they have just inserted or looked up in `members`, and
        // `Rooms::enter` has just created or found its room.
        let member = &self.members[&token];
        let room = self.rooms.get(&member.room).expect("a member's room exists");
        let missed = resume.and_then(|resume| {
            let epoch_matches = resume.epoch.as_deref() == Some(room.epoch.as_str());
            let since = resume.since.filter(|_| epoch_matches)?;
            room.history.after(since, room.seq).map(Iterator::collect::<Vec<_>>)
        });
        let recovered = resume.map(|_| missed.is_some());
        let history = missed.unwrap_or_else(|| room.history.latest().collect());
        let view = RoomView {
            room: &member.room,
            epoch: &room.epoch,
            seq: room.seq,
            users: self.users_of(&member.room),
            // Invariant: history holds `message` events this chat serialized, which are JSON.
            history: history
                .into_iter()
                .filter_map(|event| serde_json::from_str::<&RawValue>(event).ok())
                .collect(),
            recovered,
        };
        build(member, view).to_frame()
    }
}

/// An event fits if a recipient's send buffer can hold it when empty. One that could not would
/// get every recipient dropped as a slow reader; its sender is told `too_large` instead.
pub(crate) fn fits<O: Outbox>(event: &Frame, out: &O) -> Result<(), Rejection> {
    let limit = out.max_frame_bytes();
    if event.wire().len() <= limit {
        return Ok(());
    }
    Err(Rejection::new(
        ErrorCode::TooLarge,
        format!(
            "this message would take {} bytes as an event, more than a client's send buffer holds ({limit}); \
             it was not sent",
            event.wire().len()
        ),
    ))
}
