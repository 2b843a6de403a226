//! Unit tests of the chat rules, through a recording outbox instead of sockets.

use serde_json::{Value, json};

use super::*;
use crate::handler::Frame;

/// The clock the recorder starts at, in Unix milliseconds.
pub const START_MS: u64 = 1_764_100_000_000;

/// Records what the chat sends, per connection, as parsed JSON.
pub struct Recorder {
    pub sent: Vec<(Token, Value)>,
    pub closed: Vec<(Token, CloseCode)>,
    /// The time the chat is told it is.
    pub now_ms: u64,
    /// The largest frame a queue takes.
    pub max_frame_bytes: usize,
    /// Every wake-up the chat asked for.
    pub wakes: Vec<u64>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            sent: Vec::new(),
            closed: Vec::new(),
            now_ms: START_MS,
            max_frame_bytes: 1 << 20,
            wakes: Vec::new(),
        }
    }
}

impl Outbox for Recorder {
    fn send(&mut self, to: Token, frame: &Frame) {
        let text = frame.as_text().expect("the chat only sends text");
        self.sent.push((to, serde_json::from_str(text).expect("the chat only sends JSON")));
    }

    fn close(&mut self, to: Token, code: CloseCode, _reason: &'static str) {
        self.closed.push((to, code));
    }

    fn unix_time_ms(&self) -> u64 {
        self.now_ms
    }

    fn max_frame_bytes(&self) -> usize {
        self.max_frame_bytes
    }

    fn wake_at(&mut self, unix_ms: u64) {
        self.wakes.push(unix_ms);
    }
}

impl Recorder {
    /// Everything sent to `token` since the last call, oldest first.
    pub fn take(&mut self, token: usize) -> Vec<Value> {
        let (mine, others) =
            std::mem::take(&mut self.sent).into_iter().partition(|(to, _)| *to == Token(token));
        self.sent = others;
        mine.into_iter().map(|(_, value)| value).collect()
    }
}

pub fn open(chat: &mut Chat, out: &mut Recorder, token: usize, target: &str) -> Value {
    chat.on_open(Token(token), target, out);
    out.take(token).remove(0)
}

pub fn say(chat: &mut Chat, out: &mut Recorder, token: usize, frame: &str) {
    chat.on_message(Token(token), Message::text(frame), out);
}

/// The epoch a chat seeded with 7 gives the first room it creates.
fn first_epoch() -> String {
    let mut chat = Chat::new(50).with_seed(7);
    open(&mut chat, &mut Recorder::default(), 1, "/")["epoch"].as_str().unwrap().to_owned()
}

#[test]
fn welcome_lists_the_room_and_defaults_to_a_guest_name() {
    let (mut chat, mut out) = (Chat::new(50).with_seed(7), Recorder::default());
    let welcome = open(&mut chat, &mut out, 1, "/");
    assert_eq!(
        welcome,
        json!({"type":"welcome","id":1,"name":"guest-1","room":"lobby","epoch":first_epoch(),"seq":0,
               "users":[{"id":1,"name":"guest-1"}],"history":[]})
    );
    let epoch = welcome["epoch"].as_str().unwrap();
    assert!(epoch.len() == 8 && epoch.bytes().all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit()));
    let welcome = open(&mut chat, &mut out, 2, "/chat?name=al%20ice&room=rust");
    assert_eq!(welcome["name"], "al ice");
    assert_eq!(welcome["room"], "rust");
    assert_eq!(welcome["users"], json!([{"id":2,"name":"al ice"}]));
}

#[test]
fn members_of_the_room_hear_joins_and_leaves() {
    let (mut chat, mut out) = (Chat::new(50), Recorder::default());
    open(&mut chat, &mut out, 1, "/?name=alice");
    let welcome = open(&mut chat, &mut out, 2, "/?name=bob");
    assert_eq!(welcome["users"], json!([{"id":1,"name":"alice"},{"id":2,"name":"bob"}]));
    assert_eq!(out.take(1), vec![json!({"type":"joined","room":"lobby","user":{"id":2,"name":"bob"}})]);
    chat.on_close(Token(2), &mut out);
    assert_eq!(out.take(1), vec![json!({"type":"left","room":"lobby","user":{"id":2,"name":"bob"}})]);
    assert_eq!(chat.member_count(), 1);
}

#[test]
fn a_message_reaches_everyone_else_in_the_room_only() {
    let (mut chat, mut out) = (Chat::new(50), Recorder::default());
    open(&mut chat, &mut out, 1, "/?name=alice");
    open(&mut chat, &mut out, 2, "/?name=bob");
    open(&mut chat, &mut out, 3, "/?name=carol&room=elsewhere");
    out.take(1);
    say(&mut chat, &mut out, 1, r#"{"type":"message","text":"hi"}"#);
    let expected = json!({"type":"message","room":"lobby","seq":1,"from":{"id":1,"name":"alice"},"text":"hi","ts":START_MS});
    assert_eq!(out.take(2), vec![expected]);
    assert!(out.take(1).is_empty(), "the sender hears nothing");
    assert!(out.take(3).is_empty(), "other rooms hear nothing");
}

#[test]
fn plain_text_frames_are_messages() {
    let (mut chat, mut out) = (Chat::new(50), Recorder::default());
    open(&mut chat, &mut out, 1, "/");
    open(&mut chat, &mut out, 2, "/");
    say(&mut chat, &mut out, 1, "just typing");
    assert_eq!(out.take(2)[0]["text"], "just typing");
}

#[test]
fn history_keeps_the_last_message_events_oldest_first() {
    let (mut chat, mut out) = (Chat::new(2), Recorder::default());
    open(&mut chat, &mut out, 1, "/");
    open(&mut chat, &mut out, 2, "/");
    for text in ["one", "two", "three"] {
        say(&mut chat, &mut out, 1, text);
    }
    let received: Vec<Value> = out.take(2).into_iter().filter(|event| event["type"] == "message").collect();
    let welcome = open(&mut chat, &mut out, 3, "/");
    // Each entry is the `message` event exactly as the room's members received it.
    assert_eq!(welcome["history"], json!([received[1], received[2]]));
    assert_eq!(welcome["history"][0]["type"], "message");
    assert_eq!(welcome["history"][0]["text"], "two");
    assert_eq!(welcome["seq"], 3);
}

#[test]
fn nick_is_announced_to_the_whole_room_including_the_sender() {
    let (mut chat, mut out) = (Chat::new(50), Recorder::default());
    open(&mut chat, &mut out, 1, "/");
    open(&mut chat, &mut out, 2, "/");
    out.take(1);
    say(&mut chat, &mut out, 1, r#"{"type":"nick","name":"alice"}"#);
    let expected = json!({"type":"nick","id":1,"old":"guest-1","name":"alice"});
    assert_eq!(out.take(1), vec![expected.clone()]);
    assert_eq!(out.take(2), vec![expected]);
}

#[test]
fn taken_and_invalid_names_are_refused() {
    let (mut chat, mut out) = (Chat::new(50), Recorder::default());
    open(&mut chat, &mut out, 1, "/?name=alice");
    open(&mut chat, &mut out, 2, "/");
    let cases = [
        ("alice", "name_taken"),
        ("", "invalid_name"),
        ("   ", "invalid_name"),
        ("a\u{7}b", "invalid_name"),
        ("guest-1", "invalid_name"),
        (&"x".repeat(33), "invalid_name"),
    ];
    for (name, code) in cases {
        say(&mut chat, &mut out, 2, &json!({"type":"nick","name":name}).to_string());
        assert_eq!(out.take(2)[0]["code"], code, "name {name:?}");
    }
    say(&mut chat, &mut out, 2, &json!({"type":"nick","name":"é".repeat(32)}).to_string());
    assert_eq!(out.take(2)[0]["type"], "nick", "32 characters are fine, whatever their bytes");
}

#[test]
fn a_freed_name_can_be_taken_again() {
    let (mut chat, mut out) = (Chat::new(50), Recorder::default());
    open(&mut chat, &mut out, 1, "/?name=alice");
    say(&mut chat, &mut out, 1, r#"{"type":"nick","name":"alicia"}"#);
    let welcome = open(&mut chat, &mut out, 2, "/?name=alice");
    assert_eq!(welcome["name"], "alice");
}

#[test]
fn a_taken_name_in_the_query_falls_back_to_the_default_with_an_error() {
    let (mut chat, mut out) = (Chat::new(50), Recorder::default());
    open(&mut chat, &mut out, 1, "/?name=alice");
    chat.on_open(Token(2), "/?name=alice&room=%00bad", &mut out);
    let events = out.take(2);
    assert_eq!(events[0]["type"], "welcome");
    assert_eq!(events[0]["name"], "guest-2");
    assert_eq!(events[0]["room"], "lobby");
    assert_eq!(events[1]["code"], "name_taken");
    assert_eq!(events[2]["code"], "invalid_room");
}

#[test]
fn join_moves_the_member_between_rooms() {
    let (mut chat, mut out) = (Chat::new(50), Recorder::default());
    open(&mut chat, &mut out, 1, "/?name=alice");
    open(&mut chat, &mut out, 2, "/?name=bob");
    open(&mut chat, &mut out, 3, "/?name=carol&room=rust");
    out.take(1);
    say(&mut chat, &mut out, 3, "before bob");
    say(&mut chat, &mut out, 2, r#"{"type":"join","room":"rust"}"#);
    assert_eq!(out.take(1), vec![json!({"type":"left","room":"lobby","user":{"id":2,"name":"bob"}})]);
    assert_eq!(out.take(3), vec![json!({"type":"joined","room":"rust","user":{"id":2,"name":"bob"}})]);
    let room = out.take(2).remove(0);
    assert_eq!(room["type"], "room");
    assert_eq!(room["users"], json!([{"id":2,"name":"bob"},{"id":3,"name":"carol"}]));
    assert_eq!(room["history"][0]["text"], "before bob");
}

#[test]
fn invalid_rooms_are_refused() {
    let (mut chat, mut out) = (Chat::new(50), Recorder::default());
    open(&mut chat, &mut out, 1, "/");
    for room in [String::new(), "r".repeat(65), "a\nb".to_owned()] {
        say(&mut chat, &mut out, 1, &json!({"type":"join","room":room}).to_string());
        assert_eq!(out.take(1)[0]["code"], "invalid_room");
    }
}

#[test]
fn who_and_ping_answer_the_sender() {
    let (mut chat, mut out) = (Chat::new(50), Recorder::default());
    open(&mut chat, &mut out, 1, "/?name=alice");
    say(&mut chat, &mut out, 1, r#"{"type":"who"}"#);
    say(&mut chat, &mut out, 1, r#"{"type":"ping"}"#);
    assert_eq!(
        out.take(1),
        vec![
            json!({"type":"users","room":"lobby","users":[{"id":1,"name":"alice"}]}),
            json!({"type":"pong"})
        ]
    );
}

#[test]
fn bad_requests_get_an_error_and_keep_the_connection() {
    let (mut chat, mut out) = (Chat::new(50), Recorder::default());
    open(&mut chat, &mut out, 1, "/");
    say(&mut chat, &mut out, 1, "{oops");
    say(&mut chat, &mut out, 1, r#"{"type":"message"}"#);
    say(&mut chat, &mut out, 1, r#"{"type":"shout"}"#);
    say(&mut chat, &mut out, 1, &json!({"type":"message","text":"x","id":"i".repeat(65)}).to_string());
    let codes: Vec<_> = out.take(1).iter().map(|event| event["code"].clone()).collect();
    assert_eq!(
        codes,
        vec![json!("bad_json"), json!("missing_field"), json!("unknown_type"), json!("invalid_id")]
    );
    assert!(out.closed.is_empty());
}

#[test]
fn binary_frames_close_with_1003() {
    let (mut chat, mut out) = (Chat::new(50), Recorder::default());
    open(&mut chat, &mut out, 1, "/");
    chat.on_message(Token(1), Message::binary(vec![1, 2, 3]), &mut out);
    assert_eq!(out.closed, vec![(Token(1), CloseCode::Unsupported)]);
}

#[test]
fn ids_are_not_reused_when_tokens_are() {
    let (mut chat, mut out) = (Chat::new(50), Recorder::default());
    open(&mut chat, &mut out, 1, "/");
    chat.on_close(Token(1), &mut out);
    let welcome = open(&mut chat, &mut out, 1, "/");
    assert_eq!(welcome["id"], 2);
}

#[test]
fn frames_over_the_rate_limit_are_dropped_with_an_error() {
    let mut chat = Chat::new(50).with_rate_limit(RateLimit { per_second: 10.0 });
    let mut out = Recorder::default();
    open(&mut chat, &mut out, 1, "/");
    open(&mut chat, &mut out, 2, "/");
    for index in 0..200 {
        say(&mut chat, &mut out, 1, &format!("message {index}"));
    }
    let delivered = out.take(2).iter().filter(|event| event["type"] == "message").count();
    assert_eq!(delivered, 20, "a burst of twice the rate gets through");
    let errors = out.take(1).into_iter().filter(|event| event["type"] == "error").collect::<Vec<_>>();
    assert_eq!(errors.len(), 180);
    assert!(errors.iter().all(|event| event["code"] == "rate_limited"));
    assert_eq!(chat.rate_limited_frames(), 180, "every dropped frame is counted for /metrics");
}
