//! The cluster's own rules, without Redis: a replica following its room's events (duplicates
//! dropped, a gap noticed, a snapshot telling members what they missed), the welcome's history
//! and resume, and the event halves Redis joins.

use mio::Token;
use serde_json::{Value, json};

use super::greeting::{PLACEHOLDER, greeting, split_at_placeholder};
use super::replica::{Applied, Replica, Roster};
use super::wire::{RoomEnvelope, RoomEvent, Snapshot, User};
use super::*;
use crate::chat::protocol::{Event, MessageView, Resume, UserView};
use crate::chat::tests::Recorder;
use crate::handler::Frame;

fn message(seq: u64, from: u64) -> String {
    json!({"type": "message", "room": "r", "seq": seq, "from": {"id": from, "name": "x"}, "text": "t", "ts": 1})
        .to_string()
}

fn envelope(ev: u64, event: RoomEvent) -> RoomEnvelope {
    RoomEnvelope { ev, epoch: "e1".into(), event }
}

fn said(ev: u64, seq: u64, from: u64) -> RoomEnvelope {
    envelope(ev, RoomEvent::Message { from, seq, event: Frame::text(&message(seq, from)) })
}

fn roster(users: &[(u64, &str)]) -> Roster {
    let mut roster = Roster::default();
    for (order, (id, name)) in users.iter().enumerate() {
        roster.insert(order as u64 + 1, *id, (*name).to_owned());
    }
    roster
}

fn snapshot(epoch: &str, seq: u64, ev: u64, users: &[(u64, &str)], history: &[u64]) -> Snapshot {
    Snapshot {
        epoch: epoch.into(),
        seq,
        ev,
        users: roster(users),
        history: history.iter().map(|&seq| (seq, message(seq, 1))).collect(),
    }
}

/// A live replica of room `r` at (seq 2, ev 5) with local members 1 (token 1) and 2 (token 2).
fn live() -> (Replica, Recorder) {
    let mut replica = Replica::default();
    let mut out = Recorder::default();
    replica.local.insert(1, Token(1));
    replica.local.insert(2, Token(2));
    let fresh = Frame::text("{}");
    assert!(matches!(
        replica.adopt("r", snapshot("e1", 2, 5, &[(1, "a"), (2, "b")], &[1, 2]), &mut out, fresh),
        Applied::Done
    ));
    (replica, out)
}

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().map(|event| event["type"].as_str().unwrap()).collect()
}

#[test]
fn a_replica_delivers_each_event_once_and_never_to_its_subject() {
    let (mut replica, mut out) = live();
    assert!(out.sent.is_empty(), "a first snapshot tells nobody anything");
    replica.receive("r", said(6, 3, 1), &mut out);
    replica.receive("r", said(6, 3, 1), &mut out); // Pub/sub delivered it twice.
    replica.receive("r", said(5, 2, 1), &mut out); // Older than the snapshot.
    assert_eq!(out.take(1), Vec::<Value>::new(), "never the sender");
    assert_eq!(out.take(2).iter().map(|event| event["seq"].as_u64().unwrap()).collect::<Vec<_>>(), vec![3]);
    let joined = RoomEvent::Joined { order: 3, user: User { id: 9, name: "nine".into() } };
    replica.receive("r", envelope(7, joined), &mut out);
    assert_eq!(types(&out.take(1)), ["joined"]);
    assert_eq!(replica.users.views().iter().map(|user| user.id).collect::<Vec<_>>(), vec![1, 2, 9]);
    replica.receive(
        "r",
        envelope(8, RoomEvent::Nick { id: 9, old: "nine".into(), name: "ix".into() }),
        &mut out,
    );
    assert_eq!(replica.users.name(9), Some("ix"));
    replica.receive("r", envelope(9, RoomEvent::Left(User { id: 9, name: "ix".into() })), &mut out);
    assert!(!replica.users.contains(9));
    assert_eq!(types(&out.take(2)), ["joined", "nick", "left"]);
}

#[test]
fn a_gap_holds_events_back_until_a_snapshot_tells_members_what_they_missed() {
    let (mut replica, mut out) = live();
    // ev 6 and 7 (seq 3, and bob leaving) were missed; ev 8 (seq 4) arrives.
    assert!(matches!(replica.receive("r", said(8, 4, 1), &mut out), Applied::NeedsState));
    assert!(!replica.live);
    assert!(matches!(replica.receive("r", said(9, 5, 1), &mut out), Applied::Done), "held while not live");
    assert!(out.sent.is_empty());
    // The state as Redis has it at ev 8: bob gone, carol in, messages up to seq 4.
    let state = snapshot("e1", 4, 8, &[(1, "a"), (3, "c")], &[1, 2, 3, 4]);
    assert!(matches!(replica.adopt("r", state, &mut out, Frame::text("{}")), Applied::Done));
    let seqs = |events: &[Value]| -> Vec<u64> {
        events
            .iter()
            .filter(|event| event["type"] == "message")
            .map(|event| event["seq"].as_u64().unwrap())
            .collect()
    };
    let to_two = out.take(2);
    assert_eq!(seqs(&to_two), vec![3, 4, 5], "missed, then held, once each and in order");
    assert_eq!(types(&to_two).iter().filter(|kind| **kind == "joined").count(), 1, "carol");
    // Member 2 is the one who left, as far as Redis knows; member 1 hears it.
    let to_one = out.take(1);
    assert!(to_one.iter().any(|event| event["type"] == "left" && event["user"]["id"] == 2));
    assert_eq!(seqs(&to_one), Vec::<u64>::new(), "member 1 sent every message: it hears none");
    assert_eq!((replica.seq, replica.ev), (5, 9));
}

#[test]
fn a_new_epoch_gives_every_local_member_the_fresh_room_event() {
    let (mut replica, mut out) = live();
    replica.lose_track();
    let fresh = Frame::text(r#"{"type":"room","epoch":"e2"}"#);
    replica.adopt("r", snapshot("e2", 0, 2, &[(1, "a"), (2, "b")], &[]), &mut out, fresh);
    for token in [1, 2] {
        assert_eq!(out.take(token), vec![json!({"type": "room", "epoch": "e2"})]);
    }
    assert_eq!((replica.epoch.as_str(), replica.seq), ("e2", 0));
}

#[test]
fn an_entering_member_is_welcomed_once_the_replica_reaches_its_own_joined() {
    let (mut replica, mut out) = live();
    replica.waiting.push((7, Token(3), 3, vec![Frame::text(r#"{"type":"welcome"}"#)]));
    replica.release_waiting(&mut out);
    assert!(out.take(3).is_empty(), "its joined (ev 7) has not arrived");
    replica.receive("r", said(6, 3, 1), &mut out);
    assert!(out.take(3).is_empty(), "a message before its welcome is in its history, not sent");
    let joined = RoomEvent::Joined { order: 3, user: User { id: 3, name: "c".into() } };
    replica.receive("r", envelope(7, joined), &mut out);
    assert_eq!(out.take(3), vec![json!({"type": "welcome"})], "not its own joined");
    replica.receive("r", said(8, 4, 1), &mut out);
    assert_eq!(out.take(3)[0]["seq"], 4);
}

fn member(room: &str) -> Member {
    Member {
        id: 7,
        name: "alice".into(),
        room: room.into(),
        entered: true,
        entry: None,
        allowance: None,
        signed: None,
        in_flight: 0,
        held: false,
    }
}

fn welcome(snapshot: &Snapshot, resume: Option<Resume>, history_bytes: usize) -> Value {
    let frame = greeting(Greeting::Welcome, &member("r"), snapshot, resume.as_ref(), history_bytes);
    serde_json::from_str(frame.as_text().unwrap()).unwrap()
}

#[test]
fn a_welcome_resumes_exactly_what_was_missed_or_says_it_cannot() {
    let state = snapshot("e1", 5, 9, &[(7, "alice")], &[3, 4, 5]);
    let resume = |since: Option<u64>, epoch: &str| Some(Resume { since, epoch: Some(epoch.into()) });
    let history_seqs = |welcome: &Value| -> Vec<u64> {
        welcome["history"].as_array().unwrap().iter().map(|event| event["seq"].as_u64().unwrap()).collect()
    };
    let plain = welcome(&state, None, 1 << 20);
    assert_eq!((history_seqs(&plain), plain.get("recovered")), (vec![3, 4, 5], None));
    let cases = [
        (resume(Some(3), "e1"), true, vec![4, 5]),
        (resume(Some(2), "e1"), true, vec![3, 4, 5]),
        (resume(Some(5), "e1"), true, vec![]),
        (resume(Some(1), "e1"), false, vec![3, 4, 5]), // Seq 2 is forgotten.
        (resume(Some(6), "e1"), false, vec![3, 4, 5]), // Ahead of the room.
        (resume(Some(3), "e0"), false, vec![3, 4, 5]), // Another epoch.
        (resume(None, "e1"), false, vec![3, 4, 5]),    // Not a whole number.
    ];
    for (resume, recovered, seqs) in cases {
        let greeting = welcome(&state, resume, 1 << 20);
        assert_eq!((greeting["recovered"].as_bool(), history_seqs(&greeting)), (Some(recovered), seqs));
    }
    // Within the byte budget only the newest fit, and what is older cannot be vouched for.
    let one = message(5, 1).len();
    let small = welcome(&state, resume(Some(3), "e1"), one);
    assert_eq!((small["recovered"].as_bool(), history_seqs(&small)), (Some(false), vec![5]));
}

#[test]
fn an_event_is_cut_around_its_placeholder_and_joins_back_whole() {
    let from = UserView { id: 7, name: "a\"seq\":1" };
    let event = Event::Message(MessageView { room: "r", seq: PLACEHOLDER, from, text: "\"seq\":", ts: 5 });
    let (head, tail) = split_at_placeholder(&event.to_frame(), "\"seq\":").unwrap();
    let joined: Value = serde_json::from_str(&format!("{head}42{tail}")).unwrap();
    assert_eq!(
        (&joined["seq"], &joined["text"], &joined["from"]["name"]),
        (&json!(42), &json!("\"seq\":"), &json!("a\"seq\":1"))
    );
}
