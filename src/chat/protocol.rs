//! The chat's wire format: the JSON objects clients send and the events the server sends back.
//!
//! Parsing is zero-copy where it can be (`Cow` borrows from the frame unless a string holds
//! escapes) and sorts every bad frame into one of the protocol's error codes.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::frame::Frame;

/// One frame from a client, understood.
#[derive(Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// `{"type":"message","text":...}`, or any frame that is not a JSON object.
    Message { text: Cow<'a, str> },
    /// `{"type":"nick","name":...}`.
    Nick { name: Cow<'a, str> },
    /// `{"type":"join","room":...}`.
    Join { room: Cow<'a, str> },
    /// `{"type":"who"}`.
    Who,
    /// `{"type":"ping"}`: the application heartbeat browsers use, since they cannot send ping frames.
    Ping,
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
    RateLimited,
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
    text: Option<Cow<'a, str>>,
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    room: Option<Cow<'a, str>>,
}

/// Parses one text frame. A frame that does not start with `{` (after leading whitespace) is a
/// chat message whose text is the whole frame, so people on `websocat` can just type; the line
/// ending websocat sends with each line is dropped.
pub fn parse_request(frame: &str) -> Result<Request<'_>, Rejection> {
    // JSON's own whitespace only: a frame starting with, say, a no-break space is plain text.
    if !frame.trim_start_matches([' ', '\t', '\n', '\r']).starts_with('{') {
        let line = frame.strip_suffix('\n').map_or(frame, |line| line.strip_suffix('\r').unwrap_or(line));
        return Ok(Request::Message { text: Cow::Borrowed(line) });
    }
    let envelope: Envelope = serde_json::from_str(frame)
        .map_err(|error| Rejection::new(ErrorCode::BadJson, format!("invalid JSON: {error}")))?;
    let missing = |field: &str| Rejection::new(ErrorCode::MissingField, format!("missing field `{field}`"));
    let kind = envelope.kind.ok_or_else(|| missing("type"))?;
    match &*kind {
        "message" => Ok(Request::Message { text: envelope.text.ok_or_else(|| missing("text"))? }),
        "nick" => Ok(Request::Nick { name: envelope.name.ok_or_else(|| missing("name"))? }),
        "join" => Ok(Request::Join { room: envelope.room.ok_or_else(|| missing("room"))? }),
        "who" => Ok(Request::Who),
        "ping" => Ok(Request::Ping),
        other => Err(Rejection::new(
            ErrorCode::UnknownType,
            format!("unknown type `{other}`; expected message, nick, join, who or ping"),
        )),
    }
}

/// A member as events show it.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct UserView<'a> {
    pub id: u64,
    pub name: &'a str,
}

/// A chat line as `message` events and room history show it.
#[derive(Debug, Serialize)]
pub struct MessageView<'a> {
    pub room: &'a str,
    pub from: UserView<'a>,
    pub text: &'a str,
    /// Server time when the message arrived, in Unix milliseconds.
    pub ts: u64,
}

/// Everything the server sends. Serialized once per event, however many members receive it.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Event<'a> {
    Welcome { id: u64, name: &'a str, room: &'a str, users: Vec<UserView<'a>>, history: Vec<MessageView<'a>> },
    Joined { room: &'a str, user: UserView<'a> },
    Left { room: &'a str, user: UserView<'a> },
    Message(MessageView<'a>),
    Nick { id: u64, old: &'a str, name: &'a str },
    Room { room: &'a str, users: Vec<UserView<'a>>, history: Vec<MessageView<'a>> },
    Users { room: &'a str, users: Vec<UserView<'a>> },
    Pong,
    Error { code: ErrorCode, message: &'a str },
}

impl Event<'_> {
    /// The event as JSON text.
    pub fn to_json(&self) -> String {
        // Invariant: every field is a string, a number or a list of those; serde_json only fails
        // on maps with non-string keys or on failing custom `Serialize` impls, neither of which
        // exists here.
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
        parse_request(frame).expect_err("frame should be rejected").code
    }

    #[test]
    fn plain_text_is_a_message() {
        assert_eq!(parse_request("hello there").unwrap(), Request::Message { text: "hello there".into() });
        assert_eq!(parse_request("").unwrap(), Request::Message { text: "".into() });
        assert_eq!(parse_request("typed\n").unwrap(), Request::Message { text: "typed".into() });
        assert_eq!(parse_request("typed\r\n").unwrap(), Request::Message { text: "typed".into() });
        assert_eq!(parse_request("two\n\n").unwrap(), Request::Message { text: "two\n".into() });
    }

    #[test]
    fn json_requests_parse() {
        assert_eq!(
            parse_request(r#" {"type":"message","text":"hi"}"#).unwrap(),
            Request::Message { text: "hi".into() }
        );
        assert_eq!(
            parse_request(r#"{"type":"nick","name":"alice"}"#).unwrap(),
            Request::Nick { name: "alice".into() }
        );
        assert_eq!(
            parse_request(r#"{"type":"join","room":"rust"}"#).unwrap(),
            Request::Join { room: "rust".into() }
        );
        assert_eq!(parse_request(r#"{"type":"who","extra":[1,2]}"#).unwrap(), Request::Who);
        assert_eq!(parse_request(r#"{"type":"ping"}"#).unwrap(), Request::Ping);
    }

    #[test]
    fn escaped_strings_are_decoded() {
        assert_eq!(
            parse_request(r#"{"type":"message","text":"a\"b\u00e9"}"#).unwrap(),
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
        let message = Event::Message(MessageView { room: "lobby", from: user, text: "hi", ts: 1 });
        assert_eq!(
            message.to_json(),
            r#"{"type":"message","room":"lobby","from":{"id":7,"name":"alice"},"text":"hi","ts":1}"#
        );
        assert_eq!(Event::Pong.to_json(), r#"{"type":"pong"}"#);
        let error = Event::Error { code: ErrorCode::NameTaken, message: "taken" };
        assert_eq!(error.to_json(), r#"{"type":"error","code":"name_taken","message":"taken"}"#);
    }
}
