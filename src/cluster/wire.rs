//! What the cluster script publishes and returns, read back into Rust: the envelopes on the
//! room and node channels, and a room's state as one snapshot.

use serde::Deserialize;
use serde_json::value::RawValue;

use super::replica::Roster;
use super::resp::{Reply, integer, text};
use crate::frame::Frame;

/// A member as the envelopes name it.
#[derive(Debug, Clone, Deserialize)]
pub struct User {
    pub id: u64,
    pub name: String,
}

/// Every field any envelope has; `kind` says which are there. (One flat struct, because
/// serde's `flatten` cannot carry a borrowed `RawValue`.)
#[derive(Deserialize)]
struct Fields {
    kind: String,
    #[serde(default)]
    ev: u64,
    #[serde(default)]
    epoch: String,
    from: Option<u64>,
    seq: Option<u64>,
    event: Option<Box<RawValue>>,
    user: Option<User>,
    id: Option<u64>,
    old: Option<String>,
    name: Option<String>,
    to: Option<u64>,
    n: Option<u64>,
    order: Option<u64>,
}

/// An event of a room, as every node subscribed to the room receives it.
#[derive(Debug)]
pub struct RoomEnvelope {
    /// The room's event counter: one more for each event, so a node sees what it missed.
    pub ev: u64,
    pub epoch: String,
    pub event: RoomEvent,
}

#[derive(Debug)]
pub enum RoomEvent {
    /// A chat message; `event` is the `message` event as members receive it, framed once.
    Message {
        from: u64,
        seq: u64,
        event: Frame,
    },
    /// `order` counts the room's arrivals: member lists follow it.
    Joined {
        order: u64,
        user: User,
    },
    Left(User),
    Nick {
        id: u64,
        old: String,
        name: String,
    },
}

/// Something for this node alone.
#[derive(Debug)]
pub enum NodeEnvelope {
    /// A direct message for local member `to`.
    Dm { to: u64, event: String },
    /// A signed member elsewhere took `name`: local member `id` loses it.
    Evict { id: u64, name: String },
    /// The node's own liveness probe, back through pub/sub.
    Probe(u64),
}

pub fn room_envelope(payload: &[u8]) -> Option<RoomEnvelope> {
    let fields: Fields = serde_json::from_slice(payload).ok()?;
    let event = match fields.kind.as_str() {
        "message" => RoomEvent::Message {
            from: fields.from?,
            seq: fields.seq?,
            event: Frame::text(fields.event?.get()),
        },
        "joined" => RoomEvent::Joined { order: fields.order?, user: fields.user? },
        "left" => RoomEvent::Left(fields.user?),
        "nick" => RoomEvent::Nick { id: fields.id?, old: fields.old?, name: fields.name? },
        _ => return None,
    };
    Some(RoomEnvelope { ev: fields.ev, epoch: fields.epoch, event })
}

pub fn node_envelope(payload: &[u8]) -> Option<NodeEnvelope> {
    let fields: Fields = serde_json::from_slice(payload).ok()?;
    match fields.kind.as_str() {
        "dm" => Some(NodeEnvelope::Dm { to: fields.to?, event: fields.event?.get().to_owned() }),
        "evict" => Some(NodeEnvelope::Evict { id: fields.id?, name: fields.name? }),
        "probe" => Some(NodeEnvelope::Probe(fields.n?)),
        _ => None,
    }
}

/// A room as Redis holds it, read at one instant.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub epoch: String,
    pub seq: u64,
    pub ev: u64,
    pub users: Roster,
    /// The latest messages, oldest first: (seq, `message` event).
    pub history: Vec<(u64, String)>,
}

/// `state(room)` of the script:
/// `[epoch, seq, ev, [id, "ORDER NAME", ...], [[entry id, [field, event]], ...]]`.
pub fn snapshot(reply: &Reply) -> Option<Snapshot> {
    let Reply::Array(parts) = reply else { return None };
    let [epoch, seq, ev, Reply::Array(members), Reply::Array(entries)] = parts.as_slice() else {
        return None;
    };
    let mut users = Roster::default();
    for pair in members.chunks(2) {
        if let [id, value] = pair {
            let (order, name) = text(value)?.split_once(' ')?;
            users.insert(order.parse().ok()?, integer(id)?.try_into().ok()?, name.to_owned());
        }
    }
    let mut history = Vec::with_capacity(entries.len());
    // XREVRANGE lists the newest first.
    for entry in entries.iter().rev() {
        let Reply::Array(entry) = entry else { return None };
        let [id, Reply::Array(fields)] = entry.as_slice() else { return None };
        let seq = text(id)?.split('-').next()?.parse().ok()?;
        let event = fields.get(1).and_then(text)?;
        history.push((seq, event.to_owned()));
    }
    Some(Snapshot {
        epoch: text(epoch)?.to_owned(),
        seq: integer(seq)?.try_into().ok()?,
        ev: integer(ev)?.try_into().ok()?,
        users,
        history,
    })
}

/// The sender of a stored `message` event (its `from.id`), for catching a node up.
pub fn message_sender(event: &str) -> Option<u64> {
    #[derive(Deserialize)]
    struct From {
        id: u64,
    }
    #[derive(Deserialize)]
    struct Message {
        from: From,
    }
    serde_json::from_str::<Message>(event).ok().map(|message| message.from.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_read_back() {
        let message =
            br#"{"ev":3,"epoch":"abc","kind":"message","from":7,"seq":2,"event":{"type":"message","seq":2}}"#;
        let envelope = room_envelope(message).unwrap();
        assert_eq!(envelope.ev, 3);
        assert!(
            matches!(envelope.event, RoomEvent::Message { from: 7, seq: 2, ref event } if event.as_text() == Some(r#"{"type":"message","seq":2}"#))
        );
        let nick = br#"{"ev":4,"epoch":"abc","kind":"nick","id":7,"old":"a","name":"b"}"#;
        assert!(matches!(room_envelope(nick).unwrap().event, RoomEvent::Nick { id: 7, .. }));
        assert!(room_envelope(b"{}").is_none());
        assert!(matches!(node_envelope(br#"{"kind":"probe","n":5}"#), Some(NodeEnvelope::Probe(5))));
    }

    #[test]
    fn a_snapshot_reads_back_oldest_first() {
        let bulk = |text: &str| Reply::BulkString(text.as_bytes().to_vec());
        let entry = |seq: &str, event: &str| {
            Reply::Array(vec![bulk(seq), Reply::Array(vec![bulk("e"), bulk(event)])])
        };
        let reply = Reply::Array(vec![
            bulk("epoch1"),
            Reply::Integer(5),
            Reply::Integer(9),
            Reply::Array(vec![bulk("12"), bulk("2 alice"), bulk("13"), bulk("1 bob")]),
            Reply::Array(vec![entry("5-0", "five"), entry("4-0", "four")]),
        ]);
        let snapshot = snapshot(&reply).unwrap();
        assert_eq!((snapshot.seq, snapshot.ev, snapshot.epoch.as_str()), (5, 9, "epoch1"));
        let users: Vec<(u64, &str)> = snapshot.users.iter().collect();
        assert_eq!(users, vec![(13, "bob"), (12, "alice")], "in order of arrival");
        assert_eq!(snapshot.history, vec![(4, "four".to_owned()), (5, "five".to_owned())]);
    }
}
