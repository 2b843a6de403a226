//! The chat's wire format: the JSON objects clients send and the events the server sends back.
//!
//! Parsing is zero-copy where it can be (`Cow` borrows from the frame unless a string holds
//! escapes) and sorts every bad frame into one of the protocol's error codes.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::frame::Frame;

/// The longest request `id` a client may choose, in characters.
pub const MAX_ID_CHARS: usize = 64;

/// One frame from a client, understood.
#[derive(Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// `{"type":"message","text":...}`, or any frame that is not a JSON object.
    Message { text: Cow<'a, str> },
    /// `{"type":"dm","to":...,"text":...}`: a direct message to one member, wherever they are.
    Dm { to: Cow<'a, str>, text: Cow<'a, str> },
    /// `{"type":"nick","name":...}`.
    Nick { name: Cow<'a, str> },
    /// `{"type":"join","room":...}`, perhaps resuming (`since`, `epoch`).
    Join { room: Cow<'a, str>, resume: Option<Resume> },
    /// `{"type":"who"}`.
    Who,
    /// `{"type":"ping"}`: the application heartbeat browsers use, since they cannot send ping frames.
    Ping,
    /// `{"type":"auth","token":...}`: a fresh token, answering the server's `refresh`.
    Auth { token: Cow<'a, str> },
}

/// A request understood, with the `id` the client gave it, if any.
#[derive(Debug, PartialEq, Eq)]
pub struct Parsed<'a> {
    pub id: Option<Cow<'a, str>>,
    pub request: Result<Request<'a>, Rejection>,
}

/// A client asking to resume a room where it left off: it has seen every message up to `since`
/// in the room's sequence named `epoch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    /// The last seq the client saw; `None` when what it sent was not a whole number (such a
    /// request is answered as one that cannot be resumed, not with an error).
    pub since: Option<u64>,
    pub epoch: Option<String>,
}

/// The `code` of an `error` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadJson,
    UnknownType,
    MissingField,
    InvalidName,
    NameTaken,
    InvalidRoom,
    InvalidId,
    RateLimited,
    TooLarge,
    NoSuchUser,
    /// The member's token does not allow it (another name, a room outside its `rooms`).
    Forbidden,
    /// A token sent with `auth` was refused.
    Unauthorized,
    /// The node cannot reach the cluster's Redis just now; nothing was done.
    Unavailable,
}

/// Why a frame could not be understood; it goes back to the sender as an `error` event.
#[derive(Debug, PartialEq, Eq)]
pub struct Rejection {
    pub code: ErrorCode,
    pub message: String,
}

impl Rejection {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Rejection { code, message: message.into() }
    }
}

/// Every field any request may carry. Unknown fields are ignored, so clients may add their own.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    room: Option<Cow<'a, str>>,
    #[serde(borrow)]
    to: Option<Cow<'a, str>>,
    #[serde(borrow)]
    token: Option<Cow<'a, str>>,
    /// Any JSON value: a `since` that is not a whole number makes a resume that fails, not a
    /// request that does.
    since: Option<serde_json::Value>,
    /// Likewise: an epoch that is not a string matches no room's epoch.
    epoch: Option<serde_json::Value>,
}

/// Parses one text frame. A frame that does not start with `{` (after leading whitespace) is a
/// chat message whose text is the whole frame, so people on `websocat` can just type; the line
/// ending websocat sends with each line is dropped.
pub fn parse_request(frame: &str) -> Parsed<'_> {
    // JSON's own whitespace only: a frame starting with, say, a no-break space is plain text.
    if !frame.trim_start_matches([' ', '\t', '\n', '\r']).starts_with('{') {
        let line = frame.strip_suffix('\n').map_or(frame, |line| line.strip_suffix('\r').unwrap_or(line));
        return Parsed { id: None, request: Ok(Request::Message { text: Cow::Borrowed(line) }) };
    }
    match serde_json::from_str::<Envelope>(frame) {
        Ok(envelope) => envelope.understand(),
        Err(error) => {
            let rejection = Rejection::new(ErrorCode::BadJson, format!("invalid JSON: {error}"));
            Parsed { id: None, request: Err(rejection) }
        }
    }
}

impl<'a> Envelope<'a> {
    /// Sorts a well-formed JSON object into a request, or says what is wrong with it. The id is
    /// kept either way, so that an error can echo it; an id that is too long is itself the error
    /// (and is echoed too: the client should be able to tell which request failed).
    fn understand(self) -> Parsed<'a> {
        if self.id.as_ref().is_some_and(|id| id.chars().count() > MAX_ID_CHARS) {
            let message = format!("an id has at most {MAX_ID_CHARS} characters");
            return Parsed { id: self.id, request: Err(Rejection::new(ErrorCode::InvalidId, message)) };
        }
        let missing =
            |field: &str| Rejection::new(ErrorCode::MissingField, format!("missing field `{field}`"));
        let resume = self.since.as_ref().map(|since| Resume {
            since: since.as_u64(),
            epoch: self.epoch.as_ref().and_then(serde_json::Value::as_str).map(str::to_owned),
        });
        let request = match self.kind.as_deref() {
            None => Err(missing("type")),
            Some("message") => self.text.ok_or_else(|| missing("text")).map(|text| Request::Message { text }),
            Some("dm") => match (self.to, self.text) {
                (Some(to), Some(text)) => Ok(Request::Dm { to, text }),
                (None, _) => Err(missing("to")),
                (_, None) => Err(missing("text")),
            },
            Some("nick") => self.name.ok_or_else(|| missing("name")).map(|name| Request::Nick { name }),
            Some("join") => {
                self.room.ok_or_else(|| missing("room")).map(|room| Request::Join { room, resume })
            }
            Some("who") => Ok(Request::Who),
            Some("ping") => Ok(Request::Ping),
            Some("auth") => self.token.ok_or_else(|| missing("token")).map(|token| Request::Auth { token }),
            Some(other) => Err(Rejection::new(
                ErrorCode::UnknownType,
                format!("unknown type `{other}`; expected message, dm, nick, join, who, ping or auth"),
            )),
        };
        Parsed { id: self.id, request }
    }
}

/// What an upgrade request-target asks for in its query: `?name=...&room=...`, and
/// `since=...&epoch=...` to resume the room. Percent-decoded (`+` is a space); the last of a
/// repeated parameter wins.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct UpgradeQuery {
    pub name: Option<String>,
    pub room: Option<String>,
    pub resume: Option<Resume>,
    /// `token=...`: a signed token naming the member.
    pub token: Option<String>,
}

impl UpgradeQuery {
    pub fn parse(target: &str) -> UpgradeQuery {
        let query = target.split_once('?').map_or("", |(_, query)| query);
        let (mut name, mut room, mut since, mut epoch, mut token) = (None, None, None, None, None);
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            match &*key {
                "name" => name = Some(value.into_owned()),
                "room" => room = Some(value.into_owned()),
                "since" => since = Some(value.parse::<u64>().ok()),
                "epoch" => epoch = Some(value.into_owned()),
                "token" => token = Some(value.into_owned()),
                _ => {}
            }
        }
        UpgradeQuery { name, room, resume: since.map(|since| Resume { since, epoch }), token }
    }
}

/// A member as events show it.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct UserView<'a> {
    pub id: u64,
    pub name: &'a str,
}

/// A chat line as `message` events show it (and room history, which holds those events).
#[derive(Debug, Serialize)]
pub struct MessageView<'a> {
    pub room: &'a str,
    /// The message's place in the room's sequence: 1 for the room's first, no gaps.
    pub seq: u64,
    pub from: UserView<'a>,
    pub text: &'a str,
    /// Server time when the message arrived, in Unix milliseconds.
    pub ts: u64,
}

/// What a `welcome` or `room` event says about the room a member is now in.
#[derive(Debug, Serialize)]
pub struct RoomView<'a> {
    pub room: &'a str,
    /// Names the room's sequence; a client resuming with another epoch cannot be vouched for.
    pub epoch: &'a str,
    /// The room's latest seq, 0 before its first message.
    pub seq: u64,
    pub users: Vec<UserView<'a>>,
    /// `message` events exactly as the room's members received them, oldest first.
    pub history: Vec<&'a RawValue>,
    /// Only when the member asked to resume: whether `history` holds exactly what it missed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
}

/// Everything the server sends. Serialized once per event, however many members receive it.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Event<'a> {
    Welcome {
        id: u64,
        name: &'a str,
        #[serde(flatten)]
        room: RoomView<'a>,
    },
    Joined {
        room: &'a str,
        user: UserView<'a>,
    },
    Left {
        room: &'a str,
        user: UserView<'a>,
    },
    Message(MessageView<'a>),
    Dm {
        from: UserView<'a>,
        to: UserView<'a>,
        text: &'a str,
        ts: u64,
    },
    /// The answer to a request that carried an `id`: a message has its seq, a DM was delivered.
    Ack {
        id: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
        ts: u64,
    },
    Nick {
        id: u64,
        old: &'a str,
        name: &'a str,
    },
    Room(RoomView<'a>),
    Users {
        room: &'a str,
        users: Vec<UserView<'a>>,
    },
    Pong,
    /// The member's token runs out soon: send a fresh one (`auth`) or be closed with 4001.
    Refresh,
    Error {
        code: ErrorCode,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
    },
}

impl Event<'_> {
    /// The event as JSON text.
    pub fn to_json(&self) -> String {
        // Invariant: every field is a string, a number, already valid JSON (history entries) or a
        // list of those; serde_json only fails on maps with non-string keys or on failing custom
        // `Serialize` impls, neither of which exists here.
        serde_json::to_string(self).expect("chat events always serialize")
    }

    /// The event as a text frame, ready to be sent to any number of members.
    pub fn to_frame(&self) -> Frame {
        Frame::text(&self.to_json())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code_of(frame: &str) -> ErrorCode {
        parse_request(frame).request.expect_err("frame should be rejected").code
    }

    fn request_of(frame: &str) -> Request<'_> {
        parse_request(frame).request.expect("frame should be understood")
    }

    #[test]
    fn plain_text_is_a_message() {
        assert_eq!(request_of("hello there"), Request::Message { text: "hello there".into() });
        assert_eq!(request_of(""), Request::Message { text: "".into() });
        assert_eq!(request_of("typed\n"), Request::Message { text: "typed".into() });
        assert_eq!(request_of("typed\r\n"), Request::Message { text: "typed".into() });
        assert_eq!(request_of("two\n\n"), Request::Message { text: "two\n".into() });
    }

    #[test]
    fn json_requests_parse() {
        assert_eq!(request_of(r#" {"type":"message","text":"hi"}"#), Request::Message { text: "hi".into() });
        assert_eq!(request_of(r#"{"type":"nick","name":"alice"}"#), Request::Nick { name: "alice".into() });
        assert_eq!(
            request_of(r#"{"type":"join","room":"rust"}"#),
            Request::Join { room: "rust".into(), resume: None }
        );
        assert_eq!(request_of(r#"{"type":"who","extra":[1,2]}"#), Request::Who);
        assert_eq!(request_of(r#"{"type":"ping"}"#), Request::Ping);
        assert_eq!(
            request_of(r#"{"type":"dm","to":"bob","text":"hi"}"#),
            Request::Dm { to: "bob".into(), text: "hi".into() }
        );
    }

    #[test]
    fn ids_are_kept_even_when_the_request_is_rejected() {
        let parsed = parse_request(r#"{"type":"message","text":"hi","id":"a1"}"#);
        assert_eq!(
            (parsed.id.as_deref(), parsed.request),
            (Some("a1"), Ok(Request::Message { text: "hi".into() }))
        );
        let parsed = parse_request(r#"{"type":"nick","id":"n"}"#);
        assert_eq!(parsed.id.as_deref(), Some("n"));
        assert_eq!(parsed.request.map_err(|rejection| rejection.code), Err(ErrorCode::MissingField));
        assert_eq!(
            parse_request(&format!(r#"{{"type":"ping","id":"{}"}}"#, "é".repeat(64))).id.map(|id| id.len()),
            Some(128)
        );
        let frame = format!(r#"{{"type":"ping","id":"{}"}}"#, "x".repeat(65));
        let too_long = parse_request(&frame);
        assert_eq!(too_long.id.as_deref().map(str::len), Some(65), "echoed all the same");
        assert_eq!(too_long.request.map_err(|rejection| rejection.code), Err(ErrorCode::InvalidId));
        assert_eq!(code_of(r#"{"type":"ping","id":7}"#), ErrorCode::BadJson);
    }

    #[test]
    fn since_and_epoch_ask_to_resume_whatever_their_shape() {
        let resume = |frame| match request_of(frame) {
            Request::Join { resume, .. } => resume,
            other => panic!("not a join: {other:?}"),
        };
        let asked = |since, epoch: Option<&str>| Some(Resume { since, epoch: epoch.map(str::to_owned) });
        assert_eq!(resume(r#"{"type":"join","room":"r","since":4,"epoch":"e"}"#), asked(Some(4), Some("e")));
        assert_eq!(resume(r#"{"type":"join","room":"r","since":"4","epoch":"e"}"#), asked(None, Some("e")));
        assert_eq!(resume(r#"{"type":"join","room":"r","since":-1,"epoch":7}"#), asked(None, None));
        assert_eq!(resume(r#"{"type":"join","room":"r","since":1.5}"#), asked(None, None));
        assert_eq!(resume(r#"{"type":"join","room":"r","epoch":"e"}"#), None);
    }

    #[test]
    fn the_upgrade_query_names_the_member_the_room_and_the_resume() {
        let query = UpgradeQuery::parse("/chat?name=al+ice&room=r%23&since=12&epoch=abc&x=1");
        assert_eq!(query.name.as_deref(), Some("al ice"));
        assert_eq!(query.room.as_deref(), Some("r#"));
        assert_eq!(query.resume, Some(Resume { since: Some(12), epoch: Some("abc".to_owned()) }));
        assert_eq!(UpgradeQuery::parse("/?since=zz").resume, Some(Resume { since: None, epoch: None }));
        assert_eq!(UpgradeQuery::parse("/"), UpgradeQuery::default());
    }

    #[test]
    fn escaped_strings_are_decoded() {
        assert_eq!(
            request_of(r#"{"type":"message","text":"a\"b\u00e9"}"#),
            Request::Message { text: "a\"bé".into() }
        );
    }

    #[test]
    fn bad_frames_get_the_right_error_code() {
        assert_eq!(code_of("{not json"), ErrorCode::BadJson);
        assert_eq!(code_of(r#"{"type":5}"#), ErrorCode::BadJson);
        assert_eq!(code_of(r#"{"type":"message","text":7}"#), ErrorCode::BadJson);
        assert_eq!(code_of(r#"{"text":"hi"}"#), ErrorCode::MissingField);
        assert_eq!(code_of(r#"{"type":"message"}"#), ErrorCode::MissingField);
        assert_eq!(code_of(r#"{"type":"nick"}"#), ErrorCode::MissingField);
        assert_eq!(code_of(r#"{"type":"join"}"#), ErrorCode::MissingField);
        assert_eq!(code_of(r#"{"type":"dance"}"#), ErrorCode::UnknownType);
    }

    #[test]
    fn events_serialize_with_a_type_tag() {
        let user = UserView { id: 7, name: "alice" };
        let message = Event::Message(MessageView { room: "lobby", seq: 3, from: user, text: "hi", ts: 1 });
        assert_eq!(
            message.to_json(),
            r#"{"type":"message","room":"lobby","seq":3,"from":{"id":7,"name":"alice"},"text":"hi","ts":1}"#
        );
        let history = [serde_json::from_str::<&RawValue>(r#"{"type":"message","text":"x"}"#).unwrap()];
        let room = RoomView {
            room: "r",
            epoch: "e",
            seq: 9,
            users: vec![user],
            history: history.to_vec(),
            recovered: Some(true),
        };
        assert_eq!(
            Event::Welcome { id: 7, name: "alice", room }.to_json(),
            r#"{"type":"welcome","id":7,"name":"alice","room":"r","epoch":"e","seq":9,"users":[{"id":7,"name":"alice"}],"history":[{"type":"message","text":"x"}],"recovered":true}"#
        );
        assert_eq!(Event::Ack { id: "a", seq: None, ts: 2 }.to_json(), r#"{"type":"ack","id":"a","ts":2}"#);
        assert_eq!(Event::Pong.to_json(), r#"{"type":"pong"}"#);
        let error = Event::Error { code: ErrorCode::NameTaken, message: "taken", id: None };
        assert_eq!(error.to_json(), r#"{"type":"error","code":"name_taken","message":"taken"}"#);
        let error = Event::Error { code: ErrorCode::TooLarge, message: "big", id: Some("m1") };
        assert_eq!(error.to_json(), r#"{"type":"error","code":"too_large","message":"big","id":"m1"}"#);
    }
}
