//! What a chat promises beyond delivery, end to end over real sockets: each room's sequence and
//! epoch, resuming after a reconnect, acks and request ids, direct messages, and rooms kept for
//! their last members after everyone left.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::{DEADLINE, Server};
use serde_json::{Value, json};

fn texts(events: &Value) -> Vec<&str> {
    events.as_array().unwrap().iter().map(|event| event["text"].as_str().unwrap()).collect()
}

#[test]
fn messages_carry_the_room_seq_and_acks_confirm_it() {
    let server = Server::start(&[]);
    let (mut alice, welcome) = server.join("/?name=alice&room=seq");
    assert_eq!(welcome["seq"], 0);
    let epoch = welcome["epoch"].as_str().unwrap().to_owned();
    assert_eq!(epoch.len(), 8);
    let (mut bob, _) = server.join("/?name=bob&room=seq");
    alice.recv_type("joined");

    alice.send_text("no id");
    alice.send_json(json!({"type": "message", "text": "with id", "id": "a-1"}));
    let ack = alice.recv_json();
    assert_eq!((&ack["type"], &ack["id"], &ack["seq"]), (&json!("ack"), &json!("a-1"), &json!(2)));
    let first = bob.recv_type("message");
    let second = bob.recv_type("message");
    assert_eq!((&first["seq"], &second["seq"]), (&json!(1), &json!(2)));
    assert_eq!(ack["ts"], second["ts"]);
    alice.assert_nothing_pending();

    bob.send_json(json!({"type": "nick", "name": "", "id": "n-1"}));
    let error = bob.recv_json();
    assert_eq!((&error["code"], &error["id"]), (&json!("invalid_name"), &json!("n-1")));
    let (_carol, welcome) = server.join("/?name=carol&room=seq");
    assert_eq!((&welcome["seq"], &welcome["epoch"]), (&json!(2), &json!(epoch)));
}

#[test]
fn a_client_that_reconnects_gets_exactly_what_it_missed() {
    let server = Server::start(&[]);
    let (mut talker, _) = server.join("/?name=talker&room=r");
    let (mut phone, welcome) = server.join("/?name=phone&room=r");
    talker.recv_type("joined");
    let epoch = welcome["epoch"].as_str().unwrap().to_owned();
    talker.send_text("seen");
    let seen = phone.recv_type("message")["seq"].as_u64().unwrap();

    drop(phone); // The network goes away.
    talker.recv_type("left");
    for text in ["missed 1", "missed 2", "missed 3"] {
        talker.send_text(text);
    }
    talker.assert_nothing_pending();

    let (mut phone, welcome) = server.join(&format!("/?name=phone&room=r&since={seen}&epoch={epoch}"));
    assert_eq!(welcome["recovered"], true);
    assert_eq!(texts(&welcome["history"]), ["missed 1", "missed 2", "missed 3"]);
    assert_eq!(welcome["history"][0]["type"], "message");
    assert_eq!(welcome["seq"], 4);
    talker.send_text("live again");
    assert_eq!(phone.recv_type("message")["seq"], 5);

    // Nothing missed: an empty history, recovered. Another epoch: the latest history, not recovered.
    let (_, welcome) = server.join(&format!("/?room=r&since=5&epoch={epoch}"));
    assert_eq!((&welcome["recovered"], &welcome["history"]), (&json!(true), &json!([])));
    let (_, welcome) = server.join("/?room=r&since=2&epoch=elsewhere");
    assert_eq!(welcome["recovered"], false);
    assert_eq!(texts(&welcome["history"]).len(), 5);
    let (_, welcome) = server.join(&format!("/?room=r&since=99&epoch={epoch}"));
    assert_eq!(welcome["recovered"], false);
    let (mut client, welcome) = server.join(&format!("/?room=r&since=abc&epoch={epoch}"));
    assert_eq!(welcome["recovered"], false);
    client.assert_nothing_pending(); // No error for a since that is not a number.
    let (_, welcome) = server.join("/?room=r");
    assert!(welcome.get("recovered").is_none());
}

#[test]
fn join_resumes_a_room_too() {
    let server = Server::start(&[]);
    let (mut talker, welcome) = server.join("/?name=talker&room=r");
    let epoch = welcome["epoch"].as_str().unwrap().to_owned();
    for text in ["1", "2", "3"] {
        talker.send_text(text);
    }
    talker.assert_nothing_pending();
    let (mut visitor, _) = server.join("/?name=visitor&room=elsewhere");
    visitor.send_json(json!({"type": "join", "room": "r", "since": 1, "epoch": epoch}));
    let room = visitor.recv_type("room");
    assert_eq!((&room["recovered"], &room["seq"], &room["epoch"]), (&json!(true), &json!(3), &json!(epoch)));
    assert_eq!(texts(&room["history"]), ["2", "3"]);
}

#[test]
fn a_room_keeps_its_history_for_its_last_member_until_the_ttl_passes() {
    let server = Server::start(&["--history-ttl", "1"]);
    let (mut alone, welcome) = server.join("/?name=alone&room=attic");
    let epoch = welcome["epoch"].as_str().unwrap().to_owned();
    alone.send_text("note to self");
    alone.assert_nothing_pending();
    drop(alone);
    // Once the server has seen the close, the room is kept without members.
    let give_up = Instant::now() + DEADLINE;
    while server.stats()["rooms_without_members"] != 1 {
        assert!(Instant::now() < give_up, "the room was not kept: {}", server.stats());
        thread::sleep(Duration::from_millis(10)); // Polling the counters; there is no event.
    }
    let kept = server.stats();
    assert!(kept["history_bytes"].as_u64().unwrap() > 0, "{kept}");
    let (back, welcome) = server.join(&format!("/?name=alone&room=attic&since=0&epoch={epoch}"));
    assert_eq!(welcome["recovered"], true);
    assert_eq!(texts(&welcome["history"]), ["note to self"]);
    drop(back);

    // A second after the room empties again, the timer wheel has the server drop it.
    while server.stats()["rooms_without_members"] != 0 || server.stats()["history_bytes"] != 0 {
        assert!(Instant::now() < give_up, "the room was never dropped: {}", server.stats());
        thread::sleep(Duration::from_millis(50)); // Polling the counters; there is no event.
    }
    let (_, welcome) = server.join(&format!("/?room=attic&since=1&epoch={epoch}"));
    assert_eq!(welcome["recovered"], false);
    assert_ne!(welcome["epoch"], json!(epoch));
    assert_eq!((&welcome["seq"], &welcome["history"]), (&json!(0), &json!([])));
}

#[test]
fn a_dm_reaches_its_recipient_in_another_room_and_nobody_else() {
    let server = Server::start(&[]);
    let (mut alice, alice_welcome) = server.join("/?name=alice&room=one");
    let (mut bob, bob_welcome) = server.join("/?name=bob&room=two");
    let (mut carol, _) = server.join("/?name=carol&room=two");
    bob.recv_type("joined");

    alice.send_json(json!({"type": "dm", "to": "bob", "text": "psst", "id": "d-1"}));
    let ack = alice.recv_json();
    let dm = bob.recv_json();
    assert_eq!(
        dm,
        json!({"type": "dm", "from": {"id": alice_welcome["id"], "name": "alice"},
               "to": {"id": bob_welcome["id"], "name": "bob"}, "text": "psst", "ts": dm["ts"]})
    );
    assert_eq!(ack, json!({"type": "ack", "id": "d-1", "ts": dm["ts"]}));
    carol.assert_nothing_pending();

    alice.send_json(json!({"type": "dm", "to": "nobody", "text": "hello?", "id": "d-2"}));
    let error = alice.recv_json();
    assert_eq!((&error["code"], &error["id"]), (&json!("no_such_user"), &json!("d-2")));
    let (_, welcome) = server.join("/?room=two");
    assert_eq!(welcome["history"], json!([]), "a DM is never history");
}

#[test]
fn a_restarted_server_cannot_vouch_for_the_old_sequence() {
    let before = Server::start(&[]);
    let (mut alice, welcome) = before.join("/?room=r");
    let epoch = welcome["epoch"].as_str().unwrap().to_owned();
    alice.send_text("before the restart");
    alice.assert_nothing_pending();
    drop((alice, before));
    let after = Server::start(&[]);
    let (_, welcome) = after.join(&format!("/?room=r&since=1&epoch={epoch}"));
    assert_eq!(welcome["recovered"], false);
    assert_ne!(welcome["epoch"], json!(epoch));
}
