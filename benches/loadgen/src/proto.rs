//! Reading the chat's events on the receiving side, cheaply: the load generator must stay lighter
//! than the server it measures. The common shapes (`{"type":"message",...`, `{"type":"welcome",...`)
//! are recognized by their prefix and the fields we need are found with a substring search; any
//! other shape (another server may order its fields differently) goes through `serde_json`.

use std::sync::LazyLock;

use memchr::memmem;

/// Built once: `memmem::find` would build a searcher on every call.
static TEXT_FIELD: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new(br#""text":""#));

/// What one text frame from the server is, as far as the benchmark cares.
#[derive(Debug, PartialEq, Eq)]
pub enum Kind {
    /// A chat message sent by this load generator: `lg PUBLISHER SEQ SENT_MICROS`.
    Message {
        publisher: u32,
        seq: u32,
        sent_us: u64,
    },
    /// A chat message whose text is not ours.
    ForeignMessage,
    Welcome,
    Joined,
    Left,
    Pong,
    Error(String),
    Other,
}

/// The text of a benchmark message.
pub fn message_text(publisher: usize, seq: u32, sent_us: u64) -> String {
    format!(r#"{{"type":"message","text":"lg {publisher} {seq} {sent_us}"}}"#)
}

pub fn classify(payload: &[u8]) -> Kind {
    const PREFIX: &[u8] = br#"{"type":""#;
    if let Some(rest) = payload.strip_prefix(PREFIX) {
        if rest.starts_with(br#"message""#) {
            return match TEXT_FIELD.find(rest) {
                Some(at) => parse_ours(&rest[at + 8..]),
                None => Kind::ForeignMessage,
            };
        }
        if rest.starts_with(br#"welcome""#) {
            return Kind::Welcome;
        }
        if rest.starts_with(br#"joined""#) {
            return Kind::Joined;
        }
        if rest.starts_with(br#"left""#) {
            return Kind::Left;
        }
        if rest.starts_with(br#"pong""#) {
            return Kind::Pong;
        }
    }
    slow_classify(payload)
}

/// Parses `lg P S T"` (the text of our own messages, up to its closing quote).
fn parse_ours(text: &[u8]) -> Kind {
    let Some(mut rest) = text.strip_prefix(b"lg ") else { return Kind::ForeignMessage };
    let mut numbers = [0u64; 3];
    for (i, number) in numbers.iter_mut().enumerate() {
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 || digits > 19 {
            return Kind::ForeignMessage;
        }
        *number = rest[..digits].iter().fold(0u64, |n, &b| n * 10 + u64::from(b - b'0'));
        let separator = if i < 2 { b' ' } else { b'"' };
        if rest.get(digits) != Some(&separator) {
            return Kind::ForeignMessage;
        }
        rest = &rest[digits + 1..];
    }
    if numbers[0] > u64::from(u32::MAX) || numbers[1] > u64::from(u32::MAX) {
        return Kind::ForeignMessage;
    }
    Kind::Message { publisher: numbers[0] as u32, seq: numbers[1] as u32, sent_us: numbers[2] }
}

fn slow_classify(payload: &[u8]) -> Kind {
    let Ok(serde_json::Value::Object(object)) = serde_json::from_slice::<serde_json::Value>(payload) else {
        return Kind::Other;
    };
    match object.get("type").and_then(|kind| kind.as_str()) {
        Some("message") => match object.get("text").and_then(|text| text.as_str()) {
            Some(text) => parse_ours(format!("{text}\"").as_bytes()),
            None => Kind::ForeignMessage,
        },
        Some("welcome") => Kind::Welcome,
        Some("joined") => Kind::Joined,
        Some("left") => Kind::Left,
        Some("pong") => Kind::Pong,
        Some("error") => {
            Kind::Error(object.get("code").and_then(|code| code.as_str()).unwrap_or("?").to_owned())
        }
        _ => Kind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_messages_are_read_from_wschat_events() {
        let frame = br#"{"type":"message","room":"r","from":{"id":7,"name":"guest-7"},"text":"lg 3 42 123456","ts":1}"#;
        assert_eq!(classify(frame), Kind::Message { publisher: 3, seq: 42, sent_us: 123456 });
    }

    #[test]
    fn other_field_orders_go_through_serde() {
        let frame = br#"{"text":"lg 1 2 3","type":"message"}"#;
        assert_eq!(classify(frame), Kind::Message { publisher: 1, seq: 2, sent_us: 3 });
        assert_eq!(classify(br#"{ "type" : "welcome", "id": 1 }"#), Kind::Welcome);
        assert_eq!(
            classify(br#"{"type":"error","code":"rate_limited","message":"x"}"#),
            Kind::Error("rate_limited".into())
        );
    }

    #[test]
    fn foreign_and_other_frames() {
        assert_eq!(classify(br#"{"type":"message","text":"hello"}"#), Kind::ForeignMessage);
        assert_eq!(classify(br#"{"type":"message","text":"lg 1 2"}"#), Kind::ForeignMessage);
        assert_eq!(classify(br#"{"type":"joined","room":"r","user":{"id":1,"name":"a"}}"#), Kind::Joined);
        assert_eq!(classify(br#"{"type":"pong"}"#), Kind::Pong);
        assert_eq!(classify(b"not json"), Kind::Other);
    }

    #[test]
    fn message_text_round_trips() {
        let frame = message_text(2, 9, 77);
        let event = frame
            .replace(r#"{"type":"message","#, r#"{"type":"message","room":"x","from":{"id":1,"name":"n"},"#);
        assert_eq!(classify(event.as_bytes()), Kind::Message { publisher: 2, seq: 9, sent_us: 77 });
    }
}
