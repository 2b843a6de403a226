//! The `welcome` and `room` events a cluster node builds from a room's state in Redis (the
//! history a welcome carries, and exactly what a resuming member missed), and the halves of an
//! event Redis joins around the number only it knows.

use mio::Token;
use serde_json::value::RawValue;

use super::wire::Snapshot;
use super::{Greeting, Member, resp};
use crate::chat::protocol::{ErrorCode, Event, Rejection, Resume, RoomView};
use crate::chat::reject;
use crate::handler::{Frame, Outbox};

/// A placeholder the node writes where Redis puts a number it alone knows (a message's seq, a
/// DM recipient's id): the event is serialized once, split around it, and Redis joins the halves.
/// No real seq or id reaches it (ids stay below 2^53).
pub(super) const PLACEHOLDER: u64 = u64::MAX;

/// The `welcome` or `room` event for `member` entering a room in the state `snapshot`: exactly
/// what it missed if it asked to resume and that can be vouched for, the latest history within
/// `history_bytes` otherwise.
pub(super) fn greeting(
    kind: Greeting,
    member: &Member,
    snapshot: &Snapshot,
    resume: Option<&Resume>,
    history_bytes: usize,
) -> Frame {
    let window = latest_within(&snapshot.history, history_bytes);
    let complete_from = window.first().map_or(snapshot.seq + 1, |(seq, _)| *seq);
    let missed = resume.and_then(|resume| {
        let since = resume.since.filter(|_| resume.epoch.as_deref() == Some(snapshot.epoch.as_str()))?;
        (since <= snapshot.seq && since + 1 >= complete_from)
            .then(|| window.iter().filter(|(seq, _)| *seq > since).collect::<Vec<_>>())
    });
    let recovered = resume.map(|_| missed.is_some());
    let history = missed.unwrap_or_else(|| window.iter().collect());
    let view = room_view(&member.room, snapshot, &history, recovered);
    match kind {
        Greeting::Welcome => Event::Welcome { id: member.id, name: &member.name, room: view }.to_frame(),
        Greeting::Room => Event::Room(view).to_frame(),
    }
}

/// The `room` event every local member gets when Redis forgot the room (a new epoch): its state
/// now, `recovered:false`.
pub(super) fn room_event(room: &str, snapshot: &Snapshot, history_bytes: usize) -> Frame {
    let window = latest_within(&snapshot.history, history_bytes);
    let history: Vec<&(u64, String)> = window.iter().collect();
    Event::Room(room_view(room, snapshot, &history, Some(false))).to_frame()
}

pub(super) fn room_view<'a>(
    room: &'a str,
    snapshot: &'a Snapshot,
    history: &[&'a (u64, String)],
    recovered: Option<bool>,
) -> RoomView<'a> {
    RoomView {
        room,
        epoch: &snapshot.epoch,
        seq: snapshot.seq,
        users: snapshot.users.views(),
        // Invariant: history holds `message` events a node serialized, which are JSON.
        history: history
            .iter()
            .filter_map(|(_, event)| serde_json::from_str::<&RawValue>(event).ok())
            .collect(),
        recovered,
    }
}

/// The newest messages whose events fit in `bytes`, oldest first.
pub(super) fn latest_within(history: &[(u64, String)], bytes: usize) -> &[(u64, String)] {
    let mut total = 0;
    let mut start = history.len();
    while start > 0 && total + history[start - 1].1.len() <= bytes {
        total += history[start - 1].1.len();
        start -= 1;
    }
    &history[start..]
}

/// An event's JSON cut around the placeholder that follows `key`: the halves Redis joins with
/// the number it alone knows.
pub(super) fn split_at_placeholder(event: &Frame, key: &str) -> Option<(String, String)> {
    let json = event.as_text()?;
    let marker = format!("{key}{PLACEHOLDER}");
    let at = json.find(&marker)?;
    let head_end = at + key.len();
    Some((json[..head_end].to_owned(), json[head_end + PLACEHOLDER.to_string().len()..].to_owned()))
}

pub(super) fn first_integer(reply: &resp::Reply) -> Option<i64> {
    match reply {
        resp::Reply::Array(parts) => parts.first().and_then(resp::integer),
        other => resp::integer(other),
    }
}

pub(super) fn unavailable<O: Outbox>(out: &mut O, token: Token, request: Option<&str>) {
    let rejection =
        Rejection::new(ErrorCode::Unavailable, "the cluster is unavailable just now; nothing was done");
    reject(out, token, &rejection, request);
}
