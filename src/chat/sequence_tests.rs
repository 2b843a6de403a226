//! Unit tests of what the chat promises beyond delivery: each room's gap-free sequence and its
//! epoch, resuming after a reconnect, acks and request ids, direct messages, oversized events, and
//! how long and within how much memory rooms are kept.

use serde_json::{Value, json};

use super::tests::{Recorder, START_MS, open, say};
use super::*;

fn texts(events: &Value) -> Vec<&str> {
    events.as_array().unwrap().iter().map(|event| event["text"].as_str().unwrap()).collect()
}

/// Alice in `room`, who has said `count` messages numbered from 1; returns her welcome.
fn room_with_messages(chat: &mut Chat, out: &mut Recorder, room: &str, count: usize) -> Value {
    let welcome = open(chat, out, 1, &format!("/?name=alice&room={room}"));
    for number in 1..=count {
        say(chat, out, 1, &format!("m{number}"));
    }
    welcome
}

#[test]
fn every_message_gets_the_next_seq_of_its_room() {
    let (mut chat, mut out) = (Chat::new(50), Recorder::default());
    open(&mut chat, &mut out, 1, "/?room=a");
    open(&mut chat, &mut out, 2, "/?room=a");
    open(&mut chat, &mut out, 3, "/?room=b");
    open(&mut chat, &mut out, 4, "/?room=b");
    for _ in 0..3 {
        say(&mut chat, &mut out, 1, "in a");
    }
    say(&mut chat, &mut out, 3, "in b");
    let seqs =
        |events: Vec<Value>| events.iter().filter_map(|event| event["seq"].as_u64()).collect::<Vec<_>>();
    assert_eq!(seqs(out.take(2)), [1, 2, 3]);
    assert_eq!(seqs(out.take(4)), [1]);
    let welcome = open(&mut chat, &mut out, 5, "/?room=a");
    assert_eq!(welcome["seq"], 3);
}

#[test]
fn a_message_with_an_id_is_acked_with_its_seq_and_ts() {
    let (mut chat, mut out) = (Chat::new(50), Recorder::default());
    open(&mut chat, &mut out, 1, "/?name=alice");
    open(&mut chat, &mut out, 2, "/?name=bob");
    out.take(1);
    say(&mut chat, &mut out, 1, r#"{"type":"message","text":"first"}"#);
    assert!(out.take(1).is_empty(), "without an id the sender hears nothing");
    out.now_ms += 5;
    say(&mut chat, &mut out, 1, r#"{"type":"message","text":"second","id":"c-2"}"#);
    assert_eq!(out.take(1), [json!({"type":"ack","id":"c-2","seq":2,"ts":START_MS + 5})]);
    assert_eq!(out.take(2)[1]["seq"], 2);
}

#[test]
fn errors_echo_the_id_of_the_request_they_answer() {
    let mut chat = Chat::new(50).with_rate_limit(RateLimit { per_second: 1.0 });
    let mut out = Recorder::default();
    open(&mut chat, &mut out, 1, "/?name=alice");
    say(&mut chat, &mut out, 1, r#"{"type":"nick","name":"","id":"n1"}"#);
    say(&mut chat, &mut out, 1, r#"{"type":"join","id":"j1"}"#);
    say(&mut chat, &mut out, 1, r#"{"type":"message","text":"burst","id":"m1"}"#);
    let errors = out.take(1);
    assert_eq!(errors.len(), 3);
    assert_eq!((&errors[0]["code"], &errors[0]["id"]), (&json!("invalid_name"), &json!("n1")));
    assert_eq!((&errors[1]["code"], &errors[1]["id"]), (&json!("missing_field"), &json!("j1")));
    assert_eq!((&errors[2]["code"], &errors[2]["id"]), (&json!("rate_limited"), &json!("m1")));
    say(&mut chat, &mut out, 1, r#"{"type":"nick","name":""}"#);
    assert!(out.take(1)[0].get("id").is_none(), "no id, no echo");
}

#[test]
fn a_dm_reaches_its_recipient_in_any_room_and_is_never_kept() {
    let (mut chat, mut out) = (Chat::new(50), Recorder::default());
    open(&mut chat, &mut out, 1, "/?name=alice&room=a");
    open(&mut chat, &mut out, 2, "/?name=bob&room=b");
    open(&mut chat, &mut out, 3, "/?name=carol&room=b");
    out.take(2);
    say(&mut chat, &mut out, 1, r#"{"type":"dm","to":"bob","text":"psst","id":"d1"}"#);
    let dm = json!({"type":"dm","from":{"id":1,"name":"alice"},"to":{"id":2,"name":"bob"},"text":"psst","ts":START_MS});
    assert_eq!(out.take(2), [dm]);
    assert_eq!(out.take(1), [json!({"type":"ack","id":"d1","ts":START_MS})]);
    assert!(out.take(3).is_empty());
    say(&mut chat, &mut out, 1, r#"{"type":"dm","to":"bob","text":"no id"}"#);
    assert!(out.take(1).is_empty());
    let welcome = open(&mut chat, &mut out, 4, "/?room=b");
    assert_eq!((&welcome["history"], &welcome["seq"]), (&json!([]), &json!(0)));
}

#[test]
fn a_dm_to_nobody_is_an_error() {
    let (mut chat, mut out) = (Chat::new(50), Recorder::default());
    open(&mut chat, &mut out, 1, "/?name=alice");
    say(&mut chat, &mut out, 1, r#"{"type":"dm","to":"zed","text":"hello?","id":"d9"}"#);
    let error = out.take(1).remove(0);
    assert_eq!((&error["code"], &error["id"]), (&json!("no_such_user"), &json!("d9")));
    say(&mut chat, &mut out, 1, r#"{"type":"dm","text":"to whom?"}"#);
    assert_eq!(out.take(1)[0]["code"], "missing_field");
}

#[test]
fn an_event_too_large_for_a_send_buffer_goes_back_to_its_sender_only() {
    let (mut chat, mut out) = (Chat::new(50), Recorder { max_frame_bytes: 300, ..Recorder::default() });
    open(&mut chat, &mut out, 1, "/?name=alice");
    open(&mut chat, &mut out, 2, "/?name=bob");
    out.take(1);
    out.take(2);
    // 100 control characters are 600 bytes of JSON.
    let text = "\u{1}".repeat(100);
    say(&mut chat, &mut out, 1, &json!({"type":"message","text":text,"id":"big"}).to_string());
    let error = out.take(1).remove(0);
    assert_eq!((&error["code"], &error["id"]), (&json!("too_large"), &json!("big")));
    say(&mut chat, &mut out, 1, &json!({"type":"dm","to":"bob","text":text}).to_string());
    assert_eq!(out.take(1)[0]["code"], "too_large");
    assert!(out.take(2).is_empty(), "nobody else notices");
    say(&mut chat, &mut out, 1, "small");
    assert_eq!(out.take(2)[0]["seq"], 1, "a refused message takes no seq");
}

#[test]
fn resuming_with_the_epoch_gives_exactly_what_was_missed() {
    let (mut chat, mut out) = (Chat::new(50), Recorder::default());
    let epoch = room_with_messages(&mut chat, &mut out, "r", 5)["epoch"].as_str().unwrap().to_owned();
    let welcome = open(&mut chat, &mut out, 2, &format!("/?room=r&since=2&epoch={epoch}"));
    assert_eq!(welcome["recovered"], true);
    assert_eq!(texts(&welcome["history"]), ["m3", "m4", "m5"]);
    let welcome = open(&mut chat, &mut out, 3, &format!("/?room=r&since=0&epoch={epoch}"));
    assert_eq!((welcome["recovered"].clone(), texts(&welcome["history"]).len()), (json!(true), 5));
    let welcome = open(&mut chat, &mut out, 4, &format!("/?room=r&since=5&epoch={epoch}"));
    assert_eq!((&welcome["recovered"], &welcome["history"]), (&json!(true), &json!([])));
}

#[test]
fn a_resume_that_cannot_be_vouched_for_gets_the_latest_history_and_recovered_false() {
    let (mut chat, mut out) = (Chat::new(3), Recorder::default());
    let epoch = room_with_messages(&mut chat, &mut out, "r", 5)["epoch"].as_str().unwrap().to_owned();
    let cases = [
        format!("since=1&epoch={epoch}"), // messages 2 and 3 are forgotten
        format!("since=6&epoch={epoch}"), // ahead of the room
        format!("since=abc&epoch={epoch}"),
        format!("since=-1&epoch={epoch}"),
        "since=2&epoch=otherone".to_owned(),
        "since=2".to_owned(),
    ];
    for (index, query) in cases.iter().enumerate() {
        chat.on_open(Token(10 + index), &format!("/?room=r&{query}"), &mut out);
        let events = out.take(10 + index);
        assert_eq!(events.len(), 1, "{query}: a welcome and no error: {events:?}");
        assert_eq!(events[0]["recovered"], false, "{query}");
        assert_eq!(texts(&events[0]["history"]), ["m3", "m4", "m5"], "{query}");
    }
}

#[test]
fn without_since_there_is_no_recovered_field() {
    let (mut chat, mut out) = (Chat::new(50), Recorder::default());
    let welcome = open(&mut chat, &mut out, 1, "/?room=r&epoch=whatever");
    assert!(welcome.get("recovered").is_none());
    say(&mut chat, &mut out, 1, r#"{"type":"join","room":"s"}"#);
    assert!(out.take(1)[0].get("recovered").is_none());
}

#[test]
fn a_room_that_never_had_a_message_resumes_from_zero() {
    let (mut chat, mut out) = (Chat::new(50), Recorder::default());
    let welcome = open(&mut chat, &mut out, 1, "/?room=quiet");
    assert_eq!(welcome["seq"], 0);
    let epoch = welcome["epoch"].as_str().unwrap();
    let welcome = open(&mut chat, &mut out, 2, &format!("/?room=quiet&since=0&epoch={epoch}"));
    assert_eq!((&welcome["recovered"], &welcome["history"]), (&json!(true), &json!([])));
}

#[test]
fn join_can_resume_too() {
    let (mut chat, mut out) = (Chat::new(50), Recorder::default());
    let epoch = room_with_messages(&mut chat, &mut out, "r", 3)["epoch"].as_str().unwrap().to_owned();
    open(&mut chat, &mut out, 2, "/?room=elsewhere");
    say(&mut chat, &mut out, 2, &json!({"type":"join","room":"r","since":1,"epoch":epoch}).to_string());
    let room = out.take(2).remove(0);
    assert_eq!(
        (&room["type"], &room["recovered"], &room["epoch"]),
        (&json!("room"), &json!(true), &json!(epoch))
    );
    assert_eq!(texts(&room["history"]), ["m2", "m3"]);
    say(&mut chat, &mut out, 2, &json!({"type":"join","room":"r","since":"1","epoch":epoch}).to_string());
    let room = out.take(2).remove(0);
    assert_eq!((&room["type"], &room["recovered"]), (&json!("room"), &json!(false)));
}

#[test]
fn the_last_member_can_resume_within_the_ttl_and_not_after() {
    let mut chat = Chat::new(50).with_history_ttl(Duration::from_secs(300));
    let mut out = Recorder::default();
    let epoch = room_with_messages(&mut chat, &mut out, "r", 2)["epoch"].as_str().unwrap().to_owned();
    chat.on_close(Token(1), &mut out);
    assert_eq!((chat.room_count(), chat.rooms_kept_empty()), (0, 1));
    assert_eq!(out.wakes, [START_MS + 300_000]);

    // Back within the TTL: the room, its sequence and its history are still there.
    out.now_ms += 299_000;
    chat.on_timer(&mut out); // an early wake-up drops nothing
    let welcome = open(&mut chat, &mut out, 1, &format!("/?room=r&since=1&epoch={epoch}"));
    assert_eq!((&welcome["recovered"], &welcome["seq"]), (&json!(true), &json!(2)));
    assert_eq!(texts(&welcome["history"]), ["m2"]);
    assert_eq!(chat.rooms_kept_empty(), 0);

    let left_at = out.now_ms;
    chat.on_close(Token(1), &mut out);
    // The wake-up asked for the first time comes, finds the room not due, and asks again.
    out.now_ms = START_MS + 300_000;
    chat.on_timer(&mut out);
    assert_eq!(chat.rooms_kept_empty(), 1);
    let expires = *out.wakes.last().unwrap();
    assert_eq!(expires, left_at + 300_000);
    out.now_ms = expires;
    chat.on_timer(&mut out);
    assert_eq!((chat.rooms_kept_empty(), chat.history_bytes()), (0, 0));
    let welcome = open(&mut chat, &mut out, 1, &format!("/?room=r&since=2&epoch={epoch}"));
    assert_eq!(welcome["recovered"], false);
    assert_ne!(welcome["epoch"], json!(epoch), "a new sequence, a new epoch");
    assert_eq!(welcome["seq"], 0);
}

#[test]
fn past_the_memory_bound_the_room_empty_longest_goes_first() {
    // Each message event is about 100 bytes; 1,000 bytes hold about two rooms' worth of three.
    let mut chat = Chat::new(50).with_history_memory(1_000);
    let mut out = Recorder::default();
    let mut epochs = Vec::new();
    for (token, room) in [(1, "old"), (2, "newer"), (3, "busy")] {
        let welcome = open(&mut chat, &mut out, token, &format!("/?room={room}"));
        epochs.push(welcome["epoch"].as_str().unwrap().to_owned());
        for number in 0..3 {
            say(&mut chat, &mut out, token, &format!("{room} {number}"));
        }
        if room != "busy" {
            out.now_ms += 1;
            chat.on_close(Token(token), &mut out);
        }
    }
    assert!(chat.history_bytes() <= 1_000);
    assert_eq!(chat.rooms_kept_empty(), 1, "`old`, empty longest, made way");
    let welcome = open(&mut chat, &mut out, 4, &format!("/?room=newer&since=0&epoch={}", epochs[1]));
    assert_eq!(welcome["recovered"], true);
    let welcome = open(&mut chat, &mut out, 5, &format!("/?room=old&since=0&epoch={}", epochs[0]));
    assert_eq!(welcome["recovered"], false);
    assert_ne!(welcome["epoch"], json!(epochs[0]));
}

#[test]
fn when_every_room_has_members_the_largest_history_is_halved() {
    let mut chat = Chat::new(50).with_history_memory(2_000);
    let mut out = Recorder::default();
    let welcome = room_with_messages(&mut chat, &mut out, "big", 30);
    open(&mut chat, &mut out, 2, "/?room=small");
    say(&mut chat, &mut out, 2, "only one");
    assert!(chat.history_bytes() <= 2_000);
    let resumed = open(
        &mut chat,
        &mut out,
        3,
        &format!("/?room=big&since=29&epoch={}", welcome["epoch"].as_str().unwrap()),
    );
    assert_eq!(resumed["recovered"], true, "the epoch stays: only older history went");
    assert_eq!(resumed["seq"], 30);
    let small = open(&mut chat, &mut out, 4, "/?room=small");
    assert_eq!(texts(&small["history"]), ["only one"]);
}

#[test]
fn a_zero_ttl_drops_a_room_with_its_last_member() {
    let mut chat = Chat::new(50).with_history_ttl(Duration::ZERO);
    let mut out = Recorder::default();
    room_with_messages(&mut chat, &mut out, "r", 2);
    chat.on_close(Token(1), &mut out);
    assert_eq!((chat.rooms_kept_empty(), chat.history_bytes()), (0, 0));
    assert!(out.wakes.is_empty());
}
