//! The chat protocol, end to end: real server process, real sockets, real WebSocket clients.

mod common;

use common::Server;
use serde_json::json;

#[test]
fn welcome_then_joined_and_left_reach_the_room() {
    let server = Server::start(&[]);
    let (mut alice, welcome) = server.join("/?name=alice");
    assert_eq!(welcome["name"], "alice");
    assert_eq!(welcome["room"], "lobby");
    assert_eq!(welcome["users"], json!([{"id": welcome["id"], "name": "alice"}]));
    assert_eq!(welcome["history"], json!([]));

    let (bob, bob_welcome) = server.join("/chat?name=bob");
    assert_eq!(bob_welcome["users"].as_array().unwrap().len(), 2);
    let joined = alice.recv_json();
    assert_eq!(
        joined,
        json!({"type": "joined", "room": "lobby", "user": {"id": bob_welcome["id"], "name": "bob"}})
    );

    drop(bob); // The socket closes without a close frame: a peer that vanishes.
    let left = alice.recv_json();
    assert_eq!(
        left,
        json!({"type": "left", "room": "lobby", "user": {"id": bob_welcome["id"], "name": "bob"}})
    );
}

#[test]
fn a_message_reaches_the_others_in_the_room_and_not_the_sender() {
    let server = Server::start(&[]);
    let (mut alice, welcome) = server.join("/?name=alice");
    let (mut bob, _) = server.join("/?name=bob");
    alice.recv_type("joined");

    alice.send_json(json!({"type": "message", "text": "hi bob"}));
    let message = bob.recv_json();
    assert_eq!(message["type"], "message");
    assert_eq!(message["room"], "lobby");
    assert_eq!(message["from"], json!({"id": welcome["id"], "name": "alice"}));
    assert_eq!(message["text"], "hi bob");
    assert!(message["ts"].as_u64().unwrap() > 1_700_000_000_000, "ts is Unix milliseconds");
    alice.assert_nothing_pending();
}

#[test]
fn plain_text_is_a_message_so_terminal_users_can_type() {
    let server = Server::start(&[]);
    let (mut alice, _) = server.join("/");
    let (mut bob, _) = server.join("/");
    alice.recv_type("joined");
    alice.send_text("hello from a terminal");
    assert_eq!(bob.recv_json()["text"], "hello from a terminal");
}

#[test]
fn rooms_are_separate() {
    let server = Server::start(&[]);
    let (mut alice, _) = server.join("/?name=alice&room=rust");
    let (mut bob, _) = server.join("/?name=bob&room=rust");
    let (mut carol, carol_welcome) = server.join("/?name=carol&room=go");
    assert_eq!(carol_welcome["users"].as_array().unwrap().len(), 1);
    alice.recv_type("joined");

    alice.send_text("rust only");
    carol.send_text("go only");
    assert_eq!(bob.recv_json()["text"], "rust only");
    bob.assert_nothing_pending();
    carol.assert_nothing_pending();
    alice.assert_nothing_pending();
}

#[test]
fn history_greets_newcomers_oldest_first() {
    let server = Server::start(&["--history", "2"]);
    let (mut alice, _) = server.join("/?name=alice");
    let (mut witness, _) = server.join("/?name=witness");
    alice.recv_type("joined");
    for text in ["one", "two", "three"] {
        alice.send_text(text);
    }
    let received: Vec<_> = (0..3).map(|_| witness.recv_type("message")).collect();
    let (_bob, welcome) = server.join("/?name=bob");
    // Each entry is the `message` event exactly as the room's members received it.
    assert_eq!(welcome["history"], json!([received[1], received[2]]));
    assert_eq!(welcome["history"][0]["type"], "message");
    assert_eq!(welcome["history"][0]["text"], "two");
    assert_eq!(welcome["history"][0]["from"]["name"], "alice");
}

#[test]
fn nick_is_announced_and_collisions_are_refused() {
    let server = Server::start(&[]);
    let (mut alice, _) = server.join("/?name=alice");
    let (mut bob, bob_welcome) = server.join("/");
    alice.recv_type("joined");

    bob.send_json(json!({"type": "nick", "name": "alice"}));
    let error = bob.recv_json();
    assert_eq!(error["type"], "error");
    assert_eq!(error["code"], "name_taken");

    bob.send_json(json!({"type": "nick", "name": "robert"}));
    let expected =
        json!({"type": "nick", "id": bob_welcome["id"], "old": bob_welcome["name"], "name": "robert"});
    assert_eq!(bob.recv_json(), expected);
    assert_eq!(alice.recv_json(), expected);

    bob.send_json(json!({"type": "nick", "name": "bad\u{1}name"}));
    assert_eq!(bob.recv_json()["code"], "invalid_name");
}

#[test]
fn names_are_unique_across_rooms_and_query_collisions_fall_back() {
    let server = Server::start(&[]);
    let (_alice, _) = server.join("/?name=alice&room=one");
    let (mut other, welcome) = server.join("/?name=alice&room=two");
    assert!(welcome["name"].as_str().unwrap().starts_with("guest-"));
    assert_eq!(welcome["room"], "two");
    let error = other.recv_json();
    assert_eq!(error["code"], "name_taken");
}

#[test]
fn an_invalid_room_in_the_query_falls_back_to_the_lobby() {
    let server = Server::start(&[]);
    let long_room = "r".repeat(65);
    let (mut client, welcome) = server.join(&format!("/?room={long_room}"));
    assert_eq!(welcome["room"], "lobby");
    assert_eq!(client.recv_json()["code"], "invalid_room");
}

#[test]
fn join_moves_a_member_between_rooms() {
    let server = Server::start(&[]);
    let (mut alice, _) = server.join("/?name=alice");
    let (mut bob, bob_welcome) = server.join("/?name=bob");
    let (mut carol, _) = server.join("/?name=carol&room=rust");
    alice.recv_type("joined");
    carol.send_text("before bob came");

    bob.send_json(json!({"type": "join", "room": "rust"}));
    let room = bob.recv_json();
    assert_eq!(room["type"], "room");
    assert_eq!(room["room"], "rust");
    let names: Vec<_> = room["users"].as_array().unwrap().iter().map(|user| user["name"].clone()).collect();
    assert_eq!(names, vec![json!("bob"), json!("carol")]);
    assert_eq!(room["history"][0]["text"], "before bob came");

    let bob_user = json!({"id": bob_welcome["id"], "name": "bob"});
    assert_eq!(alice.recv_json(), json!({"type": "left", "room": "lobby", "user": bob_user}));
    assert_eq!(carol.recv_json(), json!({"type": "joined", "room": "rust", "user": bob_user}));

    bob.send_json(json!({"type": "join", "room": "x\ny"}));
    assert_eq!(bob.recv_json()["code"], "invalid_room");
}

#[test]
fn who_lists_the_room_and_ping_gets_pong() {
    let server = Server::start(&[]);
    let (mut alice, welcome) = server.join("/?name=alice");
    alice.send_json(json!({"type": "who"}));
    assert_eq!(
        alice.recv_json(),
        json!({"type": "users", "room": "lobby", "users": [{"id": welcome["id"], "name": "alice"}]})
    );
    alice.send_json(json!({"type": "ping"}));
    assert_eq!(alice.recv_json(), json!({"type": "pong"}));
}

#[test]
fn bad_requests_get_error_events_and_the_connection_stays() {
    let server = Server::start(&[]);
    let (mut alice, _) = server.join("/");
    for (frame, code) in [
        ("{not json", "bad_json"),
        (r#"{"text": "no type"}"#, "missing_field"),
        (r#"{"type": "message"}"#, "missing_field"),
        (r#"{"type": "teleport"}"#, "unknown_type"),
    ] {
        alice.send_text(frame);
        let error = alice.recv_json();
        assert_eq!(error["type"], "error", "for {frame}");
        assert_eq!(error["code"], code, "for {frame}");
        assert!(error["message"].as_str().is_some_and(|message| !message.is_empty()));
    }
    alice.assert_nothing_pending();
}
