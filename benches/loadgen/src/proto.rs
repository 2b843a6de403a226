//! Reading the chat's events on the receiving side, cheaply: the load generator must stay lighter
//! than the server it measures, and it reads every frame of every member. The common shapes
//! (`{"type":"message",...`, `{"type":"welcome",...`) are recognized by their prefix; any other
//! shape (another server may order its fields differently) goes through `serde_json`.
//!
//! A message frame is the hot path (millions a second at the ramp's top steps), so `Reader`
//! expects each one to be laid out like the one before: a fan-out sends every member the same
//! bytes, and one message differs from the next only in its numbers' digits. Its `"text":"` field
//! is looked for where the last frame had it (8 bytes compared instead of a substring search), and
//! the text's three numbers (`lg P S T`) are read where the last text had them, each with one
//! 8-byte read (`digits8`), the three independent of each other. Every byte is still checked: the
//! digits, the separators, the closing quote. When the layout differs (another publisher's name,
//! a sequence number one digit longer) a `memmem` search and a number-by-number reading run, and
//! what they find becomes the next guess.

use std::sync::LazyLock;

use memchr::memmem;

const TEXT: &[u8] = br#""text":""#;
const MESSAGE: &[u8] = br#"{"type":"message""#;

/// Built once: `memmem::find` would build a searcher on every call.
static TEXT_FIELD: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new(TEXT));

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

/// Classifies frames, remembering the layout of the last message frame (see the module's
/// comment). One per receiving side; the layout is only a guess, checked on every frame.
#[derive(Debug, Default)]
pub struct Reader {
    /// Offset of `"text":"` in the last message frame (0: none yet; a real one is past `MESSAGE`).
    text_at: usize,
    /// How many digits each of the last text's three numbers had (0: no text of ours yet).
    digits: [usize; 3],
}

impl Reader {
    pub fn classify(&mut self, payload: &[u8]) -> Kind {
        if !payload.starts_with(MESSAGE) {
            return classify_other(payload);
        }
        let at = self.text_at;
        // The guess holds if the 8 bytes there are `"text":"`. (Inside a JSON string a quote is
        // escaped, so these bytes can only be a key, as a search would find them too.)
        let text_at = if at >= MESSAGE.len() && payload.get(at..at + TEXT.len()) == Some(TEXT) {
            at
        } else {
            match TEXT_FIELD.find(&payload[MESSAGE.len()..]) {
                Some(found) => MESSAGE.len() + found,
                None => return Kind::ForeignMessage,
            }
        };
        self.text_at = text_at;
        let text = &payload[text_at + TEXT.len()..];
        if let Some(kind) = self.read_like_last(text) {
            return kind;
        }
        let (kind, digits) = parse_ours(text);
        self.digits = digits;
        kind
    }

    /// Reads `lg P S T"` if its numbers have as many digits as the last text's did (8 at most
    /// each); `None` if anything differs (then the caller reads it number by number).
    #[inline(always)]
    fn read_like_last(&self, text: &[u8]) -> Option<Kind> {
        let [a, b, c] = self.digits;
        if a == 0 || a > 8 || b > 8 || c > 8 {
            return None;
        }
        let (p, s, t) = (3, 3 + a + 1, 3 + a + 1 + b + 1);
        // 8 bytes read at each number's start, and the closing quote: all inside `text` (a real
        // frame goes on with `","ts":...}`).
        if text.len() <= t + 8 {
            return None;
        }
        let (pn, publisher) = digits8(text[p..p + 8].try_into().expect("8 bytes"));
        let (sn, seq) = digits8(text[s..s + 8].try_into().expect("8 bytes"));
        let (tn, sent_us) = digits8(text[t..t + 8].try_into().expect("8 bytes"));
        // Exactly as many digits as expected, each number followed by its separator (which is
        // not a digit, so a longer number cannot pass), and `lg ` before them.
        let fits = (pn, sn, tn) == (a, b, c)
            && text[p + a] == b' '
            && text[s + b] == b' '
            && text[t + c] == b'"'
            && text.starts_with(b"lg ");
        // 8 digits at most: always within u32.
        fits.then_some(Kind::Message { publisher: publisher as u32, seq: seq as u32, sent_us })
    }
}

/// Classifies one frame with no hint (for callers that see few messages).
pub fn classify(payload: &[u8]) -> Kind {
    Reader::default().classify(payload)
}

/// Any frame but a message frame of the usual shape.
fn classify_other(payload: &[u8]) -> Kind {
    const PREFIX: &[u8] = br#"{"type":""#;
    if let Some(rest) = payload.strip_prefix(PREFIX) {
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

/// Parses `lg P S T"` (the text of our own messages, up to its closing quote), number by
/// number. Also returns how many digits each number had (zeros if the text is not ours).
fn parse_ours(text: &[u8]) -> (Kind, [usize; 3]) {
    let foreign = (Kind::ForeignMessage, [0; 3]);
    let Some(rest) = text.strip_prefix(b"lg ") else { return foreign };
    let Some((publisher, after_publisher)) = number(rest, b' ') else { return foreign };
    let Some((seq, after_seq)) = number(after_publisher, b' ') else { return foreign };
    let Some((sent_us, after_sent)) = number(after_seq, b'"') else { return foreign };
    let digits = [
        rest.len() - after_publisher.len() - 1,
        after_publisher.len() - after_seq.len() - 1,
        after_seq.len() - after_sent.len() - 1,
    ];
    match (u32::try_from(publisher), u32::try_from(seq)) {
        (Ok(publisher), Ok(seq)) => (Kind::Message { publisher, seq, sent_us }, digits),
        _ => foreign,
    }
}

/// Reads 1 to 19 decimal digits followed by `separator`; returns the number and what follows the
/// separator. With 16 bytes to look at (always, in a real frame: `","ts":...}` follows the text)
/// the digits are read 8 at a time (`digits8`); else, or for 16 digits or more, one at a time.
#[inline(always)]
fn number(text: &[u8], separator: u8) -> Option<(u64, &[u8])> {
    if let Some(chunk) = text.first_chunk::<16>() {
        let (count, value) = digits8(chunk[..8].try_into().expect("8 bytes"));
        if count < 8 {
            return (count > 0 && chunk[count] == separator).then(|| (value, &text[count + 1..]));
        }
        let (more, low) = digits8(chunk[8..].try_into().expect("8 bytes"));
        if more < 8 {
            const POWERS: [u64; 8] = [1, 10, 100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000];
            return (chunk[8 + more] == separator).then(|| (value * POWERS[more] + low, &text[9 + more..]));
        }
    }
    number_slowly(text, separator)
}

/// `number`, a digit at a time: at most 19 digits, so no overflow.
fn number_slowly(text: &[u8], separator: u8) -> Option<(u64, &[u8])> {
    let mut value = 0u64;
    for (i, &byte) in text.iter().enumerate() {
        let digit = byte.wrapping_sub(b'0');
        if digit < 10 && i < 19 {
            value = value * 10 + u64::from(digit);
        } else if i > 0 && byte == separator {
            return Some((value, &text[i + 1..]));
        } else {
            // Not a digit nor the separator, no digits, or a 20th digit.
            return None;
        }
    }
    // Ran out of bytes.
    None
}

/// The ASCII decimal digits at the start of 8 bytes, read at once (SWAR: the bytes as one
/// little-endian u64, the first byte lowest): how many there are (0 to 8), and their value.
#[inline(always)]
fn digits8(bytes: [u8; 8]) -> (usize, u64) {
    const ZEROS: u64 = 0x3030_3030_3030_3030; // b'0' in every byte
    const TOPS: u64 = 0x8080_8080_8080_8080;
    let x = u64::from_le_bytes(bytes);
    // A byte's top bit ends up set if it is not a digit: below '0' (subtracting '0' borrows into
    // it), above '9' (adding 0x46 carries into it: 0x3A + 0x46 = 0x80), or not ASCII (`| x`).
    // Borrows and carries only move upward and only start at a non-digit, so the lowest flagged
    // byte is exactly the first non-digit.
    let flags = (x.wrapping_sub(ZEROS) | x.wrapping_add(0x4646_4646_4646_4646) | x) & TOPS;
    let count = (flags.trailing_zeros() / 8) as usize; // 8 when every byte is a digit
    if count == 0 {
        return (0, 0);
    }
    // The digits' values, moved to the top bytes (what follows them shifted out, zeros, that is
    // leading zero digits, shifted in below), then combined pairwise: 8 digits -> 4 numbers of
    // two digits -> 2 of four -> 1 of eight (the classic trick, as in simdjson).
    let mut v = (x.wrapping_sub(ZEROS)) << (8 * (8 - count));
    v = v.wrapping_mul(10).wrapping_add(v >> 8);
    const LOW_OF_PAIRS: u64 = 0x0000_00FF_0000_00FF;
    v = (v & LOW_OF_PAIRS)
        .wrapping_mul(100 + (1_000_000 << 32))
        .wrapping_add(((v >> 16) & LOW_OF_PAIRS).wrapping_mul(1 + (10_000 << 32)))
        >> 32;
    (count, v)
}

fn slow_classify(payload: &[u8]) -> Kind {
    let Ok(serde_json::Value::Object(object)) = serde_json::from_slice::<serde_json::Value>(payload) else {
        return Kind::Other;
    };
    match object.get("type").and_then(|kind| kind.as_str()) {
        Some("message") => match object.get("text").and_then(|text| text.as_str()) {
            Some(text) => parse_ours(format!("{text}\"").as_bytes()).0,
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
    fn the_hint_follows_the_text_field() {
        let mut reader = Reader::default();
        let short =
            br#"{"type":"message","room":"r","seq":9,"from":{"id":7,"name":"a"},"text":"lg 0 9 5","ts":1}"#;
        let long =
            br#"{"type":"message","room":"r","seq":10,"from":{"id":7,"name":"a"},"text":"lg 0 10 6","ts":1}"#;
        for _ in 0..2 {
            assert_eq!(reader.classify(short), Kind::Message { publisher: 0, seq: 9, sent_us: 5 });
            assert_eq!(reader.classify(long), Kind::Message { publisher: 0, seq: 10, sent_us: 6 });
        }
        // A hint past the end of a shorter frame, or pointing elsewhere, falls back to the search.
        assert_eq!(
            reader.classify(br#"{"type":"message","text":"lg 1 2 3"}"#),
            Kind::Message { publisher: 1, seq: 2, sent_us: 3 }
        );
        // The layout of the last one, but not our text.
        let broken: [&[u8]; 4] = [
            br#"{"type":"message","room":"r","seq":10,"from":{"id":7,"name":"a"},"text":"lg 0 10x6","ts":1}"#,
            br#"{"type":"message","room":"r","seq":10,"from":{"id":7,"name":"a"},"text":"lg 0 10 6 ","ts":1}"#,
            br#"{"type":"message","room":"r","seq":10,"from":{"id":7,"name":"a"},"text":"lg 0 1000","ts":1}"#,
            br#"{"type":"message","room":"r","seq":10,"from":{"id":7,"name":"a"},"text":"lx 0 10 6","ts":1}"#,
        ];
        for frame in broken {
            assert_eq!(reader.classify(long), Kind::Message { publisher: 0, seq: 10, sent_us: 6 });
            assert_eq!(reader.classify(frame), Kind::ForeignMessage, "{}", String::from_utf8_lossy(frame));
        }
        assert_eq!(reader.classify(br#"{"type":"message","x":1}"#), Kind::ForeignMessage);
        assert_eq!(reader.classify(br#"{"type":"message","text":"hello"}"#), Kind::ForeignMessage);
    }

    #[test]
    fn a_reader_with_a_guess_reads_as_one_without() {
        // Frames that mostly keep the layout of the one before (as a fan-out's do), with numbers
        // of changing lengths, and now and then a broken one: a primed `Reader` must say exactly
        // what a fresh one says.
        let mut rng = 0x0DDB_1A5E_5BAD_5EEDu64;
        let mut next = move |below: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % below
        };
        let mut reader = Reader::default();
        let mut seq = 0u64;
        for _ in 0..50_000 {
            seq += 1 + next(3) * next(40);
            let publisher = next(12);
            let sent = [7, 1234, 9_999_999, 10_000_000, 99_999_999, 123_456_789][next(6) as usize] + next(5);
            let mut text = format!("lg {publisher} {seq} {sent}").into_bytes();
            match next(40) {
                0 | 1 => {
                    let at = 3 + next(text.len() as u64 - 3) as usize;
                    text[at] = if at.is_multiple_of(2) { b'x' } else { b' ' };
                }
                2 => text.insert(3, b'0'),
                3 => text.truncate(text.len() - 1),
                4 => text.push(b' '),
                _ => {}
            }
            let name = ["a", "guest-10", "guest-1001"][next(3) as usize];
            let mut frame = format!(
                r#"{{"type":"message","room":"r","seq":{seq},"from":{{"id":1,"name":"{name}"}},"text":""#
            )
            .into_bytes();
            frame.extend_from_slice(&text);
            frame.extend_from_slice(if next(50) == 0 { b"\"}" } else { br#"","ts":1764000000000}"# });
            assert_eq!(reader.classify(&frame), classify(&frame), "{}", String::from_utf8_lossy(&frame));
        }
    }

    #[test]
    fn numbers_are_checked() {
        let text = |t: &str| classify(format!(r#"{{"type":"message","text":"{t}"}}"#).as_bytes());
        assert_eq!(text("lg 0 0 0"), Kind::Message { publisher: 0, seq: 0, sent_us: 0 });
        assert_eq!(
            text("lg 4294967295 1 18446744073709551"),
            Kind::Message { publisher: u32::MAX, seq: 1, sent_us: 18_446_744_073_709_551 }
        );
        assert_eq!(text("lg 4294967296 1 2"), Kind::ForeignMessage);
        assert_eq!(text("lg 1 2 99999999999999999999"), Kind::ForeignMessage);
        assert_eq!(
            text("lg 1 2 9999999999999999999"),
            Kind::Message { publisher: 1, seq: 2, sent_us: 9_999_999_999_999_999_999 }
        );
        assert_eq!(text("lg  1 2 3"), Kind::ForeignMessage);
        assert_eq!(text("lg 1 2 3 4"), Kind::ForeignMessage);
        assert_eq!(text("lg 1 x 3"), Kind::ForeignMessage);
        assert_eq!(text("lg 1 2 "), Kind::ForeignMessage);
    }

    #[test]
    fn numbers_read_eight_digits_at_a_time_as_one_at_a_time() {
        // Every length from 0 to 20 digits, leading zeros, every separator position, with and
        // without 16 bytes to look at, against the digit-at-a-time reading.
        let mut rng = 0x1234_5678_9ABC_DEF1u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for _ in 0..20_000 {
            let len = (next() % 21) as usize;
            let mut text: Vec<u8> = (0..len).map(|_| b'0' + (next() % 10) as u8).collect();
            let tail: &[u8] = match next() % 5 {
                0 => b" 12 5\",\"ts\":1}",
                1 => b"\",\"ts\":1764000000000}",
                2 => b"x",
                3 => b"",
                _ => b"\x80\xff/:",
            };
            text.extend_from_slice(tail);
            for separator in [b' ', b'"'] {
                assert_eq!(
                    number(&text, separator),
                    number_slowly(&text, separator),
                    "{:?}",
                    String::from_utf8_lossy(&text)
                );
            }
        }
        assert_eq!(digits8(*b"12345678"), (8, 12_345_678));
        assert_eq!(digits8(*b"00000001"), (8, 1));
        assert_eq!(digits8(*b"907 abcd"), (3, 907));
        assert_eq!(digits8(*b"/9999999"), (0, 0));
        assert_eq!(digits8(*b"9:999999"), (1, 9));
        assert_eq!(
            number(b"1234567890123 rest of the frame", b' '),
            Some((1_234_567_890_123, &b"rest of the frame"[..]))
        );
    }

    #[test]
    fn message_text_round_trips() {
        let frame = message_text(2, 9, 77);
        let event = frame
            .replace(r#"{"type":"message","#, r#"{"type":"message","room":"x","from":{"id":1,"name":"n"},"#);
        assert_eq!(classify(event.as_bytes()), Kind::Message { publisher: 2, seq: 9, sent_us: 77 });
    }
}
