//! Property-based tests of everything a peer's bytes reach before and after the handshake: the
//! HTTP request-head parser, the upgrade check, the chat's frame parser and the chat state machine.
//!
//! The chat-session model and its checking outbox live in `fuzz/chat_model.rs`, shared with the
//! `chat_session` fuzz target. Failures are not persisted to a file: a failing case found here is
//! added below as a plain `#[test]` regression instead.

#[path = "../fuzz/chat_model.rs"]
mod chat_model;

use chat_model::{Ask, EpochAsk, Op, SLOTS, START_MS, Settings, Since, Transcript, with_id};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::Config as ProptestConfig;
use serde_json::{Map, Value, json};
use wschat::chat::protocol::{MAX_ID_CHARS, Parsed, Request, UpgradeQuery, parse_request};
use wschat::chat::{DEFAULT_HISTORY_BYTES, DEFAULT_HISTORY_MEMORY};
use wschat::http::{MAX_HEAD_BYTES, Parse, check_upgrade, parse_head};

/// Cases per property: `default`, tuned to keep the file under 3 s in release on two cores (the
/// chat sessions take most of it); `PROPTEST_CASES=N` overrides it for a deeper run.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|cases| cases.parse().ok()).unwrap_or(default)
}

// ---------------------------------------------------------------------------------------------
// Checks shared by the HTTP properties.

/// Checks that `response` is a whole 4xx response as `wschat::http::response` writes them
/// (status line, `Content-Length` matching the body, `Connection: close`) and returns its status.
fn assert_client_error(response: &[u8]) -> u16 {
    assert!(
        response.starts_with(b"HTTP/1.1 4"),
        "not a 4xx response: {:?}",
        String::from_utf8_lossy(response)
    );
    let text = std::str::from_utf8(response).expect("responses are UTF-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head ends with an empty line");
    let length = head
        .lines()
        .find_map(|line| line.strip_prefix("Content-Length: "))
        .expect("every response has a Content-Length");
    assert_eq!(length.parse::<usize>().expect("a number"), body.len(), "Content-Length is the body's length");
    assert!(head.lines().any(|line| line == "Connection: close"), "every response closes: {head}");
    text[9..12].parse().expect("a three-digit status")
}

/// What `parse_head` made of some bytes, with its invariants checked.
#[derive(Debug, PartialEq)]
enum Head {
    Partial,
    Complete { length: usize, method: String, target: String, origin: Option<String>, websocket: bool },
    Invalid(u16),
}

/// Parses `bytes` and checks what must hold whatever they are: no panic; `Partial` only below
/// the 16 KiB bound; a complete head of at most 16 KiB that parses the same on its own; every
/// error a whole 4xx response; and, for an upgrade, `check_upgrade` either accepts the head or
/// answers 4xx.
fn check_head(bytes: &[u8]) -> Head {
    match parse_head(bytes) {
        Parse::Partial => {
            assert!(bytes.len() < MAX_HEAD_BYTES, "{} bytes are still partial", bytes.len());
            Head::Partial
        }
        Parse::Invalid(response) => Head::Invalid(assert_client_error(&response)),
        Parse::Complete { head, length } => {
            assert!(0 < length && length <= bytes.len() && length <= MAX_HEAD_BYTES, "length {length}");
            assert!(!head.method.is_empty() && !head.target.is_empty());
            let Parse::Complete { head: again, length: again_length } = parse_head(&bytes[..length]) else {
                panic!("the head alone does not parse");
            };
            assert_eq!(again_length, length);
            assert_eq!(
                (&again.method, &again.target, &again.origin),
                (&head.method, &head.target, &head.origin)
            );
            assert_eq!(again.wants_websocket, head.wants_websocket);
            if head.wants_websocket
                && let Err(response) = check_upgrade(&bytes[..length])
            {
                assert_client_error(&response);
            }
            Head::Complete {
                length,
                method: head.method,
                target: head.target,
                origin: head.origin,
                websocket: head.wants_websocket,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Building valid upgrade requests.

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for group in bytes.chunks(3) {
        let n = group.iter().enumerate().fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= group.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Percent-encodes `bytes` for a query value, each byte literally, as `%XX` (either case) or, for
/// a space, as `+`, as `style` says.
fn percent_encode(bytes: &[u8], style: u8) -> String {
    let mut out = String::new();
    for (i, &byte) in bytes.iter().enumerate() {
        let pick = style.rotate_left(i as u32 % 8) & 3;
        match byte {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' if pick != 0 => {
                out.push(char::from(byte))
            }
            b' ' if pick != 0 => out.push('+'),
            _ if pick == 1 => out.push_str(&format!("%{byte:02x}")),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// `name` in a random mix of upper and lower case.
fn recase(name: &str, seed: u64) -> String {
    name.chars()
        .enumerate()
        .map(|(i, c)| if seed >> (i % 64) & 1 == 1 { c.to_ascii_uppercase() } else { c.to_ascii_lowercase() })
        .collect()
}

/// A valid upgrade request and what it says.
#[derive(Debug, Clone)]
struct Upgrade {
    bytes: Vec<u8>,
    target: String,
    origin: Option<String>,
    /// Where each header line starts, for mutations that work on lines.
    line_starts: Vec<usize>,
}

/// Query values: names and rooms people use, and arbitrary bytes (also invalid UTF-8).
fn query_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        "[a-z]{1,8}".prop_map(String::into_bytes),
        "\\PC{0,12}".prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 0..12),
    ]
}

fn request_target() -> impl Strategy<Value = String> {
    ("/[a-zA-Z0-9._~/-]{0,16}", prop::option::of(query_value()), prop::option::of(query_value()), any::<u8>())
        .prop_map(|(path, name, room, style)| {
            let mut params = Vec::new();
            if let Some(name) = name {
                params.push(format!("name={}", percent_encode(&name, style)));
            }
            if let Some(room) = room {
                params.push(format!("room={}", percent_encode(&room, style.rotate_left(3))));
            }
            if params.is_empty() { path } else { format!("{path}?{}", params.join("&")) }
        })
}

prop_compose! {
    fn valid_upgrade()(
        target in request_target(),
        key in prop::array::uniform16(any::<u8>()),
        origin in prop::option::of("https?://[a-z]{1,10}(\\.[a-z]{2,3})?(:[0-9]{1,5})?"),
        extra in prop::collection::vec(("X-[A-Za-z0-9-]{1,12}", "[!-~]([ -~]{0,30}[!-~])?"), 0..6),
        connection in prop::sample::select(
            vec!["Upgrade", "upgrade", "keep-alive, Upgrade", "Upgrade, HTTP2-Settings"],
        ),
        upgrade in prop::sample::select(vec!["websocket", "WebSocket", "WEBSOCKET"]),
        case_seed in any::<u64>(),
        order_seed in any::<u64>(),
        bare_lf in prop::bool::weighted(0.1),
    ) -> Upgrade {
        let mut headers: Vec<(String, String)> = vec![
            ("Host".into(), "chat.example:9001".into()),
            ("Upgrade".into(), upgrade.into()),
            ("Connection".into(), connection.into()),
            ("Sec-WebSocket-Key".into(), base64(&key)),
            ("Sec-WebSocket-Version".into(), "13".into()),
        ];
        if let Some(origin) = &origin {
            headers.push(("Origin".into(), origin.clone()));
        }
        headers.extend(extra);
        // A deterministic shuffle and re-casing of the header names.
        let mut seed = order_seed;
        for i in (1..headers.len()).rev() {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            headers.swap(i, (seed >> 33) as usize % (i + 1));
        }
        let eol = if bare_lf { "\n" } else { "\r\n" };
        let mut text = format!("GET {target} HTTP/1.1{eol}");
        let mut line_starts = Vec::new();
        for (name, value) in &headers {
            line_starts.push(text.len());
            text.push_str(&format!("{}: {value}{eol}", recase(name, case_seed)));
        }
        text.push_str(eol);
        Upgrade { bytes: text.into_bytes(), target, origin, line_starts }
    }
}

/// Ways to damage a request.
#[derive(Debug, Clone)]
enum Mutation {
    FlipByte(Index, u8),
    Truncate(Index),
    Insert(Index, Vec<u8>),
    Remove(Index, usize),
    DuplicateLine(Index, usize),
    /// A header line of this many bytes (16 KiB and more), inserted before some line.
    HugeHeader(Index, usize),
    /// This many extra header lines (around the 64-header limit).
    ManyHeaders(usize),
    /// Every CRLF becomes LF, or one CRLF disappears.
    StripCr,
    DropLineEnd(Index),
    Lowercase,
    /// Bytes 0x80-0xFF (not UTF-8) in some header's value.
    NonUtf8Value(Index, Vec<u8>),
    /// The request is prefixed by a TLS ClientHello record header.
    TlsPrefix(u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<Index>(), 1..=255u8).prop_map(|(i, x)| Mutation::FlipByte(i, x)),
        2 => any::<Index>().prop_map(Mutation::Truncate),
        3 => (any::<Index>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        2 => (any::<Index>(), 1..8usize).prop_map(|(i, n)| Mutation::Remove(i, n)),
        2 => (any::<Index>(), 1..70usize).prop_map(|(i, n)| Mutation::DuplicateLine(i, n)),
        1 => (any::<Index>(), MAX_HEAD_BYTES - 64..MAX_HEAD_BYTES + 256)
            .prop_map(|(i, n)| Mutation::HugeHeader(i, n)),
        1 => (50..80usize).prop_map(Mutation::ManyHeaders),
        1 => Just(Mutation::StripCr),
        1 => any::<Index>().prop_map(Mutation::DropLineEnd),
        1 => Just(Mutation::Lowercase),
        2 => (any::<Index>(), prop::collection::vec(0x80..=0xFFu8, 1..6))
            .prop_map(|(i, b)| Mutation::NonUtf8Value(i, b)),
        1 => (0..=4u8).prop_map(Mutation::TlsPrefix),
    ]
}

/// The index of the first line starting with `prefix` (ASCII case-insensitively).
fn header_line(lines: &[String], prefix: &str) -> usize {
    lines.iter().position(|line| line.to_ascii_lowercase().starts_with(prefix)).expect("the header is there")
}

fn apply(request: &Upgrade, mutations: &[Mutation]) -> Vec<u8> {
    let mut bytes = request.bytes.clone();
    let line_start = |bytes: &[u8], index: &Index| -> usize {
        // Recompute line starts, since earlier mutations move them.
        let starts: Vec<usize> = std::iter::once(0)
            .chain(bytes.iter().enumerate().filter(|(_, b)| **b == b'\n').map(|(i, _)| i + 1))
            .collect();
        starts[index.index(starts.len())].min(bytes.len())
    };
    for mutation in mutations {
        let len = bytes.len();
        match mutation {
            Mutation::FlipByte(i, x) if len > 0 => bytes[i.index(len)] ^= x,
            Mutation::Truncate(i) => bytes.truncate(i.index(len + 1)),
            Mutation::Insert(i, extra) => {
                let at = i.index(len + 1);
                bytes.splice(at..at, extra.iter().copied());
            }
            Mutation::Remove(i, n) if len > 0 => {
                let at = i.index(len);
                bytes.drain(at..(at + n).min(len));
            }
            Mutation::DuplicateLine(i, times) if !request.line_starts.is_empty() => {
                let start = request.line_starts[i.index(request.line_starts.len())].min(len);
                let end = bytes[start..].iter().position(|&b| b == b'\n').map_or(len, |p| start + p + 1);
                let line = bytes[start..end].to_vec();
                for _ in 0..*times {
                    bytes.splice(end..end, line.iter().copied());
                }
            }
            Mutation::HugeHeader(i, size) => {
                let at = line_start(&bytes, i).max(1).min(bytes.len());
                let line = format!("X-Huge: {}\r\n", "h".repeat(size.saturating_sub(10)));
                bytes.splice(at..at, line.into_bytes());
            }
            Mutation::ManyHeaders(count) => {
                let at = request.line_starts.first().copied().unwrap_or(0).min(len);
                let lines: String = (0..*count).map(|n| format!("X-Filler-{n}: {n}\r\n")).collect();
                bytes.splice(at..at, lines.into_bytes());
            }
            Mutation::StripCr => bytes.retain(|&b| b != b'\r'),
            Mutation::DropLineEnd(i) => {
                let crlfs: Vec<usize> =
                    bytes.windows(2).enumerate().filter(|(_, w)| w == b"\r\n").map(|(p, _)| p).collect();
                if !crlfs.is_empty() {
                    let at = crlfs[i.index(crlfs.len())];
                    bytes.drain(at..at + 2);
                }
            }
            Mutation::Lowercase => bytes.make_ascii_lowercase(),
            Mutation::NonUtf8Value(i, junk) => {
                let start = line_start(&bytes, i);
                if let Some(colon) = bytes[start..].iter().position(|&b| b == b':') {
                    let at = start + colon + 1;
                    bytes.splice(at..at, junk.iter().copied());
                }
            }
            Mutation::TlsPrefix(minor) => {
                bytes.splice(0..0, [0x16, 0x03, *minor, 0x01, 0x00]);
            }
            _ => {}
        }
    }
    bytes
}

// ---------------------------------------------------------------------------------------------
// The HTTP properties.

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(1024), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic_the_head_parser(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        check_head(&bytes);
    }

    #[test]
    fn request_lines_followed_by_random_bytes_never_panic_the_head_parser(
        method in prop::sample::select(vec!["GET", "POST", "get", "OPTIONS", "PRI", "G\u{e9}T"]),
        target in "[ -~]{0,20}",
        version in prop::sample::select(vec!["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.", "http/1.1", ""]),
        rest in prop::collection::vec(
            prop_oneof![any::<u8>(), Just(b'\r'), Just(b'\n'), Just(b':'), Just(b' ')], 0..200),
    ) {
        let mut bytes = format!("{method} {target} {version}\r\n").into_bytes();
        bytes.extend(rest);
        check_head(&bytes);
        let _ = check_upgrade(&bytes).map_err(|response| assert_client_error(&response));
    }

    #[test]
    fn random_bytes_never_panic_the_upgrade_check(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        if let Err(response) = check_upgrade(&bytes) {
            assert_client_error(&response);
        }
    }

    #[test]
    fn every_prefix_of_a_valid_request_is_partial_then_complete(request in valid_upgrade()) {
        let bytes = &request.bytes;
        for end in 0..bytes.len() {
            prop_assert_eq!(check_head(&bytes[..end]), Head::Partial, "prefix of {} bytes", end);
        }
        let head = check_head(bytes);
        let expected = Head::Complete {
            length: bytes.len(),
            method: "GET".into(),
            target: request.target.clone(),
            origin: request.origin.clone(),
            websocket: true,
        };
        prop_assert_eq!(head, expected);
        prop_assert_eq!(check_upgrade(bytes), Ok(()));
    }

    #[test]
    fn bytes_after_a_complete_head_do_not_change_its_parse(
        request in valid_upgrade(),
        tail in prop::collection::vec(any::<u8>(), 1..64),
    ) {
        let mut bytes = request.bytes.clone();
        bytes.extend(&tail);
        let Head::Complete { length, target, .. } = check_head(&bytes) else { panic!("not complete") };
        prop_assert_eq!(length, request.bytes.len());
        prop_assert_eq!(target, request.target);
    }

    #[test]
    fn mutated_upgrade_requests_get_a_head_or_a_4xx_never_a_panic(
        request in valid_upgrade(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        check_head(&apply(&request, &mutations));
    }

    #[test]
    fn tls_client_hellos_get_400(minor in 0..=4u8, rest in prop::collection::vec(any::<u8>(), 0..300)) {
        let mut bytes = vec![0x16, 0x03, minor];
        bytes.extend(rest);
        prop_assert_eq!(check_head(&bytes), Head::Invalid(400));
    }

    #[test]
    fn heads_reaching_16_kib_get_431(
        request in valid_upgrade(),
        filler in MAX_HEAD_BYTES..MAX_HEAD_BYTES + 2048,
        terminated in any::<bool>(),
    ) {
        // A header line so long that the head cannot end within 16 KiB, with or without the
        // rest of the request after it.
        let mut bytes = b"GET / HTTP/1.1\r\nX-Long: ".to_vec();
        bytes.resize(filler, b'a');
        if terminated {
            bytes.extend_from_slice(b"\r\n");
            bytes.extend_from_slice(&request.bytes[request.line_starts[0]..]);
        }
        prop_assert_eq!(check_head(&bytes), Head::Invalid(431));
        // What the reactor passes: never more than 16 KiB.
        prop_assert_eq!(check_head(&bytes[..MAX_HEAD_BYTES]), Head::Invalid(431));
    }

    #[test]
    fn more_than_64_headers_get_431_and_up_to_64_parse(count in 1..100usize) {
        let mut text = String::from("GET / HTTP/1.1\r\n");
        for n in 0..count {
            text.push_str(&format!("X-H{n}: {n}\r\n"));
        }
        text.push_str("\r\n");
        match check_head(text.as_bytes()) {
            Head::Complete { length, .. } => prop_assert!(count <= 64 && length == text.len()),
            Head::Invalid(status) => prop_assert!(count > 64 && status == 431),
            Head::Partial => prop_assert!(false, "partial"),
        }
    }

    #[test]
    fn a_websocket_version_other_than_13_gets_426(
        request in valid_upgrade(),
        version in prop::option::of("[0-9a-z ,.]{0,5}"),
    ) {
        prop_assume!(version.as_deref().is_none_or(|v| v.trim() != "13"));
        let text = String::from_utf8(request.bytes).expect("built as text");
        let mut lines: Vec<String> = text.split_inclusive('\n').map(str::to_owned).collect();
        let index = header_line(&lines, "sec-websocket-version:");
        match &version {
            Some(version) => lines[index] = format!("Sec-WebSocket-Version: {version}\r\n"),
            None => { lines.remove(index); }
        }
        let response = check_upgrade(lines.concat().as_bytes()).expect_err("not version 13");
        prop_assert_eq!(assert_client_error(&response), 426);
        prop_assert!(String::from_utf8_lossy(&response).contains("\r\nSec-WebSocket-Version: 13\r\n"));
    }

    #[test]
    fn a_missing_or_malformed_websocket_key_gets_400(
        request in valid_upgrade(),
        key in prop::option::of(prop_oneof![
            prop::collection::vec(any::<u8>(), 0..40)
                .prop_filter("not 16 bytes", |k| k.len() != 16)
                .prop_map(|k| base64(&k)),
            "[A-Za-z0-9+/]{22}[!-*,-.:-<>-@_-]=",
            "[ -~]{0,30}".prop_filter("not 24 long", |k| k.trim().len() != 24),
        ]),
    ) {
        let text = String::from_utf8(request.bytes).expect("built as text");
        let mut lines: Vec<String> = text.split_inclusive('\n').map(str::to_owned).collect();
        let index = header_line(&lines, "sec-websocket-key:");
        match &key {
            Some(key) => lines[index] = format!("Sec-WebSocket-Key: {key}\r\n"),
            None => { lines.remove(index); }
        }
        let response = check_upgrade(lines.concat().as_bytes()).expect_err("bad key");
        prop_assert_eq!(assert_client_error(&response), 400);
    }
}

// ---------------------------------------------------------------------------------------------
// The frame parser.

/// What `parse_request` made of a frame, owned, with error codes as their wire names.
#[derive(Debug, PartialEq)]
enum Meaning {
    Message(String),
    Dm {
        to: String,
        text: String,
    },
    Nick(String),
    /// The room, and `(since, epoch)` if the request asked to resume.
    Join(String, Option<(Option<u64>, Option<String>)>),
    Who,
    Ping,
    Auth(String),
    Error(String),
}

/// A frame's meaning and the id the parser kept for it (to ack it, or to echo in an error).
fn parsed(frame: &str) -> (Option<String>, Meaning) {
    let Parsed { id, request } = parse_request(frame);
    let meaning = match request {
        Ok(Request::Message { text }) => Meaning::Message(text.into_owned()),
        Ok(Request::Dm { to, text }) => Meaning::Dm { to: to.into_owned(), text: text.into_owned() },
        Ok(Request::Nick { name }) => Meaning::Nick(name.into_owned()),
        Ok(Request::Join { room, resume }) => {
            Meaning::Join(room.into_owned(), resume.map(|resume| (resume.since, resume.epoch)))
        }
        Ok(Request::Who) => Meaning::Who,
        Ok(Request::Ping) => Meaning::Ping,
        Ok(Request::Auth { token }) => Meaning::Auth(token.into_owned()),
        Err(rejection) => {
            let code = serde_json::to_value(rejection.code).expect("codes serialize");
            Meaning::Error(code.as_str().expect("codes are strings").to_owned())
        }
    };
    (id.map(|id| id.into_owned()), meaning)
}

/// Only the meaning, for frames without an id.
fn meaning(frame: &str) -> Meaning {
    parsed(frame).1
}

/// What the README's "Protocol" section says a JSON object frame means.
fn documented_meaning(object: &Map<String, Value>) -> (Option<String>, Meaning) {
    let error = |code: &str| Meaning::Error(code.to_owned());
    // `type`, `id`, `text`, `name`, `room`, `to` and `token` must be strings when present (null counts as
    // absent); anything else makes the whole frame bad JSON, so even its id is not kept.
    let field = |key: &str| match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(()),
    };
    let (Ok(kind), Ok(id), Ok(text), Ok(name), Ok(room), Ok(to), Ok(token)) = (
        field("type"),
        field("id"),
        field("text"),
        field("name"),
        field("room"),
        field("to"),
        field("token"),
    ) else {
        return (None, error("bad_json"));
    };
    // An id that is too long is the error, and is echoed like any other.
    if id.as_ref().is_some_and(|id| id.chars().count() > MAX_ID_CHARS) {
        return (id, error("invalid_id"));
    }
    // Any `since` (but null) asks to resume; one that is not a whole number cannot succeed, and
    // an `epoch` that is not a string matches nothing.
    let resume = match object.get("since") {
        None | Some(Value::Null) => None,
        Some(since) => Some((since.as_u64(), object.get("epoch").and_then(Value::as_str).map(str::to_owned))),
    };
    let required =
        |value: Option<String>, wrap: &dyn Fn(String) -> Meaning| value.map_or(error("missing_field"), wrap);
    let meaning = match kind.as_deref() {
        None => error("missing_field"),
        Some("message") => required(text, &Meaning::Message),
        Some("dm") => match (to, text) {
            (Some(to), Some(text)) => Meaning::Dm { to, text },
            _ => error("missing_field"),
        },
        Some("nick") => required(name, &Meaning::Nick),
        Some("join") => required(room, &|room| Meaning::Join(room, resume.clone())),
        Some("who") => Meaning::Who,
        Some("ping") => Meaning::Ping,
        Some("auth") => required(token, &Meaning::Auth),
        Some(_) => error("unknown_type"),
    };
    (id, meaning)
}

fn interesting_string() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "message", "dm", "nick", "join", "who", "ping", "auth", "Message", "", " ", "type", "\u{0}"
        ])
        .prop_map(String::from),
        any::<String>(),
        "[a-z\"\\\\{}]{0,8}",
    ]
}

/// Ids around the 64-character limit, counted in characters, not bytes.
fn long_id() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z]{63,65}", "[\u{e9}\u{1f600}]{63,65}"]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        interesting_string().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((interesting_string(), inner), 0..4)
                .prop_map(|fields| Value::Object(fields.into_iter().collect())),
        ]
    })
}

/// Objects with the fields requests use, each absent, a string or any value, plus extra fields.
fn request_object() -> impl Strategy<Value = Map<String, Value>> {
    let field = || {
        prop::option::of(prop_oneof![
            3 => interesting_string().prop_map(Value::from),
            1 => json_value(),
        ])
    };
    let id = prop::option::of(prop_oneof![
        3 => "[a-z0-9-]{0,8}".prop_map(Value::from),
        1 => long_id().prop_map(Value::from),
        1 => json_value(),
    ]);
    let since = prop::option::of(prop_oneof![
        3 => (0..20u64).prop_map(Value::from),
        1 => json_value(),
    ]);
    let strings = (field(), field(), field(), field(), field(), field());
    (strings, id, since, field(), prop::collection::vec(("[a-z_]{1,6}", json_value()), 0..3)).prop_map(
        |((kind, text, name, room, to, token), id, since, epoch, extra)| {
            let mut object: Map<String, Value> = extra.into_iter().collect();
            let fields = [
                ("type", kind),
                ("text", text),
                ("name", name),
                ("room", room),
                ("to", to),
                ("token", token),
                ("id", id),
                ("since", since),
                ("epoch", epoch),
            ];
            for (key, value) in fields {
                match value {
                    Some(value) => object.insert(key.to_owned(), value),
                    None => object.remove(key),
                };
            }
            object
        },
    )
}

/// Where JSON's whitespace ends: a frame is a JSON request only if a `{` comes next.
fn starts_like_json(frame: &str) -> bool {
    frame.trim_start_matches([' ', '\t', '\n', '\r']).starts_with('{')
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(1024), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_frames_never_panic_and_non_objects_are_messages(
        frame in prop_oneof![
            any::<String>(),
            "[ \t\n{}\\[\\]\":,a-z0-9\\\\]{0,40}",
            "\\s{0,3}\\{.{0,40}",
            "[\u{a0}\u{2028}\u{feff}]\\{.{0,10}",
        ],
    ) {
        let (id, meaning) = parsed(&frame);
        if !starts_like_json(&frame) {
            // The whole frame, less the one line ending websocat sends with each line.
            let line = frame.strip_suffix('\n').map_or(frame.as_str(), |line| line.strip_suffix('\r').unwrap_or(line));
            prop_assert_eq!((id, meaning), (None, Meaning::Message(line.to_owned())));
        }
    }

    #[test]
    fn json_objects_mean_what_the_readme_says(
        object in request_object(),
        pretty in any::<bool>(),
        before in "[ \t\r\n]{0,3}",
        after in "[ \t\r\n]{0,3}",
    ) {
        let json =
            if pretty { serde_json::to_string_pretty(&object) } else { serde_json::to_string(&object) };
        let frame = format!("{before}{}{after}", json.expect("values serialize"));
        prop_assert_eq!(parsed(&frame), documented_meaning(&object), "frame {}", frame);
    }

    #[test]
    fn any_json_value_is_a_message_unless_it_is_an_object(value in json_value()) {
        let frame = value.to_string();
        match &value {
            Value::Object(object) => prop_assert_eq!(parsed(&frame), documented_meaning(object)),
            _ => prop_assert_eq!(parsed(&frame), (None, Meaning::Message(frame.clone()))),
        }
    }

    #[test]
    fn an_object_followed_by_anything_but_whitespace_is_bad_json(
        object in request_object(),
        tail in "[^ \t\r\n][ -~]{0,5}",
    ) {
        let frame = format!("{}{tail}", Value::Object(object));
        prop_assert_eq!(parsed(&frame), (None, Meaning::Error("bad_json".into())));
    }

    #[test]
    fn strings_round_trip_through_every_request_that_carries_one(text in any::<String>(), id in "\\PC{0,64}") {
        let frame = |value: Value| meaning(&value.to_string());
        prop_assert_eq!(frame(json!({"type": "message", "text": text})), Meaning::Message(text.clone()));
        prop_assert_eq!(
            frame(json!({"type": "dm", "to": text, "text": text})),
            Meaning::Dm { to: text.clone(), text: text.clone() }
        );
        prop_assert_eq!(frame(json!({"name": text, "type": "nick"})), Meaning::Nick(text.clone()));
        prop_assert_eq!(frame(json!({"type": "join", "x": 1, "room": text})), Meaning::Join(text.clone(), None));
        prop_assert_eq!(
            frame(json!({"type": "join", "room": "r", "since": 3, "epoch": text})),
            Meaning::Join("r".into(), Some((Some(3), Some(text.clone()))))
        );
        let (kept, _) = parsed(&json!({"type": "ping", "id": id}).to_string());
        prop_assert_eq!(kept, Some(id.clone()), "ids of up to 64 characters are kept as they are");
    }

    /// The upgrade query, read on its own: what the chat model relies on when it decodes targets
    /// with the server's `UpgradeQuery::parse`.
    #[test]
    fn the_upgrade_query_decodes_name_room_since_and_epoch(
        name in query_value(),
        room in query_value(),
        since in prop_oneof!["[0-9]{1,20}".prop_map(String::into_bytes), query_value()],
        epoch in prop::option::of(query_value()),
        style in any::<u8>(),
    ) {
        let mut target = format!(
            "/chat?room=x&name={}&room={}&since={}",
            percent_encode(&name, style),
            percent_encode(&room, style.rotate_left(2)),
            percent_encode(&since, style.rotate_left(4)),
        );
        if let Some(epoch) = &epoch {
            target += &format!("&epoch={}", percent_encode(epoch, style.rotate_left(6)));
        }
        let lossy = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        let query = UpgradeQuery::parse(&target);
        prop_assert_eq!(query.name, Some(lossy(&name)));
        prop_assert_eq!(query.room, Some(lossy(&room)), "the last `room` wins");
        let resume = query.resume.expect("`since` asks to resume");
        // A whole number as Rust's `u64` parser reads it (so `%2B5`, "+5", is 5); anything else
        // is a resume that cannot succeed, not an error.
        prop_assert_eq!(resume.since, lossy(&since).parse::<u64>().ok());
        prop_assert_eq!(resume.epoch, epoch.as_deref().map(lossy));
    }
}

// ---------------------------------------------------------------------------------------------
// The chat state machine.

/// Names chosen to collide, to sit on the length and character limits, and to look like guests.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[ab]",
        1 => "[ab]{2}",
        2 => prop::sample::select(vec![
            "alice", "bob", "guest-1", "guest-2", "guest-", "guest-x", "guest-01", "Guest-1", " ", "",
            "\u{a0}",
            "a\u{7}", "a\nb", "\u{85}", "\u{200b}", "al ice", "\u{e9}t\u{e9}", "\u{fffd}",
        ])
        .prop_map(String::from),
        1 => "[a\u{e9}]{31,33}",
        1 => "\\PC{0,12}",
        1 => ".{0,6}",
    ]
}

fn room() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec!["lobby", "rust", "Rust", " rust", "", " ", "\t", "r\u{0}", "\u{1b}"])
            .prop_map(String::from),
        1 => "[r\u{e9}]{63,65}",
        1 => "\\PC{0,12}",
    ]
}

/// Message texts: short ones, and long or escaped ones around the frame limits `settings` picks
/// (a control character takes 6 bytes of JSON, a quote or backslash 2).
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => ".{0,12}",
        1 => "[\u{1}\u{1f}\"\\\\x\u{e9}]{20,100}",
        1 => "x{100,500}",
    ]
}

/// Request ids: short ones, ones around the 64-character limit, and ones that are not strings
/// (`null` counts as no id, anything else is bad JSON).
fn id() -> impl Strategy<Value = Value> {
    prop_oneof![
        6 => "[a-z0-9-]{1,8}".prop_map(Value::from),
        2 => long_id().prop_map(Value::from),
        1 => prop::sample::select(vec![json!(7), Value::Null, json!(["x"]), json!("")]),
    ]
}

/// `since` and `epoch` for resuming, mostly from what the client saw.
fn resume_ask() -> impl Strategy<Value = Ask> {
    let since = prop_oneof![
        1 => Just(Since::Absent),
        6 => prop_oneof![3 => Just(0), 1 => -3..0i64, 1 => Just(1)].prop_map(Since::Seen),
        1 => prop_oneof![0..3u64, Just(u64::MAX)].prop_map(Since::Number),
        2 => prop::sample::select(vec![
            json!("abc"), json!("4"), json!(-1), json!(1.5), json!(true), json!([1]), json!(""), Value::Null,
        ])
        .prop_map(Since::Junk),
    ];
    let epoch = prop_oneof![
        5 => Just(EpochAsk::Seen),
        1 => Just(EpochAsk::Absent),
        1 => prop::sample::select(vec![json!("zzzzzzzz"), json!(""), json!(7), Value::Null]).prop_map(EpochAsk::Given),
    ];
    (since, epoch).prop_map(|(since, epoch)| Ask { since, epoch })
}

/// A resume's texts in an upgrade query: `since`, and `epoch` if there is one.
type ResumeParams = (String, Option<String>);

/// `/chat?name=NAME&room=ROOM&since=SINCE&epoch=EPOCH`, each parameter there if given,
/// percent-encoded as `style` says.
fn chat_target(
    (name, room, resume, style): (Option<String>, Option<String>, Option<ResumeParams>, u8),
) -> String {
    let mut params = Vec::new();
    if let Some(name) = name {
        params.push(format!("name={}", percent_encode(name.as_bytes(), style)));
    }
    if let Some(room) = room {
        params.push(format!("room={}", percent_encode(room.as_bytes(), !style)));
    }
    if let Some((since, epoch)) = resume {
        params.push(format!("since={}", percent_encode(since.as_bytes(), style)));
        if let Some(epoch) = epoch {
            params.push(format!("epoch={}", percent_encode(epoch.as_bytes(), style)));
        }
    }
    format!("/chat?{}", params.join("&"))
}

fn target() -> impl Strategy<Value = String> {
    let raw = || {
        prop_oneof![name().prop_map(String::into_bytes), room().prop_map(String::into_bytes), query_value()]
    };
    // Resumes the model cannot vouch for: an epoch never drawn, or none.
    let resume = prop::option::of(("[0-9]{1,2}|[ -~]{0,3}", prop::option::of("[a-z0-9]{8}|[ -~]{0,3}")));
    prop_oneof![
        1 => Just("/".to_owned()),
        4 => (prop::option::of(name()), prop::option::of(room()), resume, any::<u8>()).prop_map(chat_target),
        2 => (raw(), raw(), any::<u8>()).prop_map(|(a, b, style)| {
            // Repeated parameters (the last wins), empty pairs, junk escapes.
            format!("/?name={}&&=&name={}&room=%zz%&x", percent_encode(&a, style), percent_encode(&b, style))
        }),
        1 => "[ -~]{0,30}",
    ]
}

fn frame() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => (text(), prop::option::of(id()))
            .prop_map(|(text, id)| with_id(json!({"type": "message", "text": text}), id)),
        2 => "[^{ ].{0,12}",
        1 => "[^{ \t\r\n][\u{1}x\"]{50,300}",
        2 => (name(), text(), prop::option::of(id()))
            .prop_map(|(to, text, id)| with_id(json!({"type": "dm", "to": to, "text": text}), id)),
        3 => (name(), prop::option::of(id()))
            .prop_map(|(name, id)| with_id(json!({"type": "nick", "name": name}), id)),
        3 => (room(), prop::option::of(id()))
            .prop_map(|(room, id)| with_id(json!({"type": "join", "room": room}), id)),
        1 => Just(r#"{"type":"who"}"#.to_owned()),
        1 => Just(r#"{"type":"ping","id":"p"}"#.to_owned()),
        1 => json_value().prop_map(|value| value.to_string()),
        1 => request_object().prop_map(|object| Value::Object(object).to_string()),
        1 => "\\s?\\{.{0,12}",
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let slot = || 0..SLOTS;
    // Mostly `None`: the room the client was last in, as a page resumes it.
    let same_or = |rooms| prop_oneof![2 => Just(None), 1 => prop::option::of(rooms)];
    prop_oneof![
        2 => (slot(), target()).prop_map(|(slot, target)| Op::Open { slot, target }),
        3 => (slot(), prop::option::of(name()), same_or(room()), resume_ask())
            .prop_map(|(slot, name, room, ask)| Op::Reconnect { slot, name, room, ask }),
        8 => (slot(), frame()).prop_map(|(slot, frame)| Op::Text { slot, frame }),
        2 => (slot(), same_or(room()), resume_ask(), prop::option::of(id()))
            .prop_map(|(slot, room, ask, id)| Op::Rejoin { slot, room, ask, id }),
        2 => (slot(), slot(), text(), prop::option::of(id()))
            .prop_map(|(slot, to, text, id)| Op::DmSlot { slot, to, text, id }),
        1 => slot().prop_map(|slot| Op::Binary { slot }),
        2 => slot().prop_map(|slot| Op::Close { slot }),
        2 => prop_oneof![0..5u64, 0..60u64, 900..1100u64].prop_map(|ms| Op::Wait { ms }),
    ]
}

/// The chat's settings: history limits that bite, TTLs that sessions outlive (or 0), frame
/// limits that messages reach, any seed.
fn settings() -> impl Strategy<Value = Settings> {
    (
        prop_oneof![2 => 0..4usize, 1 => Just(50)],
        prop_oneof![1 => Just(DEFAULT_HISTORY_BYTES), 2 => 150..800usize],
        prop_oneof![1 => Just(0u64), 2 => 1..40u64, 2 => Just(1_000u64)],
        prop_oneof![1 => Just(1usize << 20), 3 => 200..600usize],
        prop_oneof![1 => Just(DEFAULT_HISTORY_MEMORY), 1 => 200..1_500usize],
        any::<u64>(),
    )
        .prop_map(|(history_limit, history_bytes, ttl_ms, max_frame_bytes, history_memory, seed)| {
            Settings { history_limit, history_bytes, ttl_ms, max_frame_bytes, history_memory, seed }
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(4096), failure_persistence: None, ..ProptestConfig::default() })]

    /// Random opens, resumes, frames, DMs, closes and waits: the chat sends exactly what the
    /// rules say, only to open connections, only JSON objects with a string `type`; names stay
    /// unique and rooms are kept exactly for the TTL.
    #[test]
    fn chat_sessions_follow_the_rules_and_never_send_to_closed_connections(
        settings in settings(),
        ops in prop::collection::vec(op(), 1..80),
    ) {
        chat_model::run(settings, &ops);
    }

    /// The fuzz target's byte decoding, under the same checks.
    #[test]
    fn chat_sessions_decoded_from_random_bytes_follow_the_rules(
        bytes in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        let (settings, ops) = chat_model::ops_from_bytes(&bytes);
        chat_model::run(settings, &ops);
    }
}

// ---------------------------------------------------------------------------------------------
// Fixed cases: the edges the strategies aim at, kept as plain tests. The sessions run under the
// model's checks too; the assertions say what the edge is.

fn say(slot: usize, frame: &str) -> Op {
    Op::Text { slot, frame: frame.to_owned() }
}

fn ask(since: Since, epoch: EpochAsk) -> Ask {
    Ask { since, epoch }
}

/// The client on `slot` comes back to the room it was last in.
fn reconnect(slot: usize, since: Since, epoch: EpochAsk) -> Op {
    Op::Reconnect { slot, name: None, room: None, ask: ask(since, epoch) }
}

/// Everything `slot` received in the session's last step.
fn last_step_to(transcript: &Transcript, slot: usize) -> Vec<&Value> {
    let last = transcript.last().map_or(0, |(step, _, _)| *step);
    transcript
        .iter()
        .filter(|(step, to, _)| *step == last && *to == slot)
        .map(|(_, _, event)| event)
        .collect()
}

/// The first welcome or room event `slot` received.
fn first_snapshot_to(transcript: &Transcript, slot: usize) -> &Value {
    transcript
        .iter()
        .find(|(_, to, event)| *to == slot && (event["type"] == "welcome" || event["type"] == "room"))
        .map(|(_, _, event)| event)
        .expect("a snapshot")
}

fn texts(snapshot: &Value) -> Vec<&str> {
    snapshot["history"].as_array().expect("a history").iter().map(|m| m["text"].as_str().unwrap()).collect()
}

/// Alice opens room `r` on slot 0, says m1, m2 and m3 (with ids, so her client knows their
/// seqs) and leaves.
fn alice_says_three_and_leaves() -> Vec<Op> {
    vec![
        Op::Open { slot: 0, target: "/?name=alice&room=r".into() },
        say(0, r#"{"type":"message","text":"m1","id":"1"}"#),
        say(0, r#"{"type":"message","text":"m2","id":"2"}"#),
        say(0, r#"{"type":"message","text":"m3","id":"3"}"#),
        Op::Close { slot: 0 },
    ]
}

#[test]
fn the_model_agrees_on_a_known_session() {
    chat_model::run(
        Settings { history_limit: 2, ..Settings::default() },
        &[
            Op::Open { slot: 0, target: "/?name=alice".into() },
            Op::Open { slot: 1, target: "/?name=alice&room=r%C3%A9".into() },
            say(1, r#"{"type":"join","room":"lobby"}"#),
            say(1, r#"{"type":"nick","name":"alice","id":"n"}"#),
            say(0, "hello"),
            say(0, "again"),
            say(0, "third"),
            Op::Open { slot: 2, target: "/?name=guest-3".into() },
            Op::Binary { slot: 1 },
            Op::Open { slot: 1, target: "/?name=bob".into() },
            say(1, r#"{"type":"nick","name":"alice"}"#),
            Op::Close { slot: 0 },
            say(1, r#"{"type":"nick","name":"alice"}"#),
            say(2, r#"{"type":"who"}"#),
            say(2, r#"{"type":"ping","text":null}"#),
        ],
    );
}

#[test]
fn acks_ids_dms_and_too_large_on_a_known_session() {
    let transcript = chat_model::run(
        Settings { max_frame_bytes: 300, ..Settings::default() },
        &[
            Op::Open { slot: 0, target: "/?name=alice&room=a".into() },
            Op::Open { slot: 1, target: "/?name=bob&room=b".into() },
            say(0, r#"{"type":"message","text":"hi","id":"m1"}"#),
            say(0, r#"{"type":"dm","to":"bob","text":"psst","id":"d1"}"#),
            say(0, r#"{"type":"dm","to":"zed","text":"?","id":"d2"}"#),
            say(0, &format!(r#"{{"type":"message","text":"{}","id":"big"}}"#, "\\u0001".repeat(40))),
            say(0, &format!(r#"{{"type":"ping","id":"{}"}}"#, "x".repeat(65))),
            say(0, r#"{"type":"ping","id":7}"#),
            say(0, "plain"),
            Op::DmSlot { slot: 1, to: 0, text: "back".into(), id: None },
        ],
    );
    let to = |slot: usize| -> Vec<&Value> {
        transcript.iter().filter(|(_, to, _)| *to == slot).map(|(_, _, event)| event).collect()
    };
    let alice: Vec<(&Value, &Value)> =
        to(0)[1..].iter().map(|event| (&event["type"], &event["id"])).collect();
    let null = Value::Null;
    assert_eq!(
        alice,
        [
            (&json!("ack"), &json!("m1")),
            (&json!("ack"), &json!("d1")),
            (&json!("error"), &json!("d2")),
            (&json!("error"), &json!("big")),
            (&json!("error"), &json!("x".repeat(65))),
            (&json!("error"), &null),
            (&json!("dm"), &null),
        ]
    );
    assert_eq!(to(0)[1]["seq"], 1);
    assert_eq!(to(0)[4]["code"], "too_large");
    assert_eq!(to(0)[5]["code"], "invalid_id");
    assert_eq!(
        to(1).iter().map(|event| &event["type"]).collect::<Vec<_>>(),
        [&json!("welcome"), &json!("dm")]
    );
}

#[test]
fn a_resume_from_0_with_the_right_epoch_gets_every_message_and_the_same_epoch() {
    let mut ops = alice_says_three_and_leaves();
    ops.push(reconnect(0, Since::Number(0), EpochAsk::Seen));
    let transcript = chat_model::run(Settings::default(), &ops);
    let welcome = last_step_to(&transcript, 0)[0];
    assert_eq!((&welcome["recovered"], &welcome["seq"]), (&json!(true), &json!(3)));
    assert_eq!(texts(welcome), ["m1", "m2", "m3"]);
    assert_eq!(welcome["epoch"], first_snapshot_to(&transcript, 0)["epoch"], "the room was kept");
    assert_eq!(welcome["history"][0]["seq"], 1);
}

#[test]
fn a_resume_from_the_latest_seq_gets_nothing_and_is_recovered() {
    let mut ops = alice_says_three_and_leaves();
    ops.push(reconnect(0, Since::Seen(0), EpochAsk::Seen));
    let transcript = chat_model::run(Settings::default(), &ops);
    let welcome = last_step_to(&transcript, 0)[0];
    assert_eq!((&welcome["recovered"], &welcome["history"]), (&json!(true), &json!([])));

    // The same through a join, from another room.
    let mut ops = alice_says_three_and_leaves();
    ops.extend([
        reconnect(0, Since::Absent, EpochAsk::Absent),
        say(0, r#"{"type":"join","room":"elsewhere"}"#),
    ]);
    ops.push(Op::Rejoin {
        slot: 0,
        room: Some("r".into()),
        ask: ask(Since::Seen(0), EpochAsk::Seen),
        id: None,
    });
    let transcript = chat_model::run(Settings::default(), &ops);
    let room = last_step_to(&transcript, 0)[0];
    assert_eq!(
        (&room["type"], &room["recovered"], &room["history"]),
        (&json!("room"), &json!(true), &json!([]))
    );
}

#[test]
fn a_resume_ahead_of_the_room_is_not_recovered() {
    let mut ops = alice_says_three_and_leaves();
    ops.push(reconnect(0, Since::Seen(1), EpochAsk::Seen));
    let transcript = chat_model::run(Settings::default(), &ops);
    let welcome = last_step_to(&transcript, 0)[0];
    assert_eq!(welcome["recovered"], false);
    assert_eq!(texts(welcome), ["m1", "m2", "m3"], "the latest history instead");
}

#[test]
fn a_since_that_is_not_a_whole_number_is_not_recovered_and_not_an_error() {
    for junk in [json!("abc"), json!(-1), json!(1.5), json!("")] {
        let mut ops = alice_says_three_and_leaves();
        ops.push(reconnect(0, Since::Junk(junk.clone()), EpochAsk::Seen));
        let transcript = chat_model::run(Settings::default(), &ops);
        let events = last_step_to(&transcript, 0);
        assert_eq!(events.len(), 1, "since={junk} in the query: a welcome and nothing else");
        assert_eq!(events[0]["recovered"], false, "since={junk} in the query");

        ops.push(Op::Rejoin {
            slot: 0,
            room: None,
            ask: ask(Since::Junk(junk.clone()), EpochAsk::Seen),
            id: None,
        });
        let transcript = chat_model::run(Settings::default(), &ops);
        let events = last_step_to(&transcript, 0);
        assert_eq!(events.len(), 1, "since={junk} in a join: a room event and nothing else");
        assert_eq!(events[0]["recovered"], false, "since={junk} in a join");
    }
    // In a join, a number in a string is no number.
    let mut ops = alice_says_three_and_leaves();
    ops.push(reconnect(0, Since::Absent, EpochAsk::Absent));
    ops.push(Op::Rejoin { slot: 0, room: None, ask: ask(Since::Junk(json!("3")), EpochAsk::Seen), id: None });
    let transcript = chat_model::run(Settings::default(), &ops);
    assert_eq!(last_step_to(&transcript, 0)[0]["recovered"], false);
}

#[test]
fn a_room_that_never_had_a_message_resumes_from_0() {
    let ops = [
        Op::Open { slot: 0, target: "/?room=quiet".into() },
        Op::Close { slot: 0 },
        reconnect(0, Since::Seen(0), EpochAsk::Seen),
    ];
    let transcript = chat_model::run(Settings::default(), &ops);
    let welcome = last_step_to(&transcript, 0)[0];
    assert_eq!(
        (&welcome["recovered"], &welcome["seq"], &welcome["history"]),
        (&json!(true), &json!(0), &json!([]))
    );
}

#[test]
fn a_resume_after_the_room_expired_is_not_recovered_and_has_a_new_epoch() {
    let settings = Settings { ttl_ms: 100, ..Settings::default() };
    let mut ops = alice_says_three_and_leaves();
    // Within the TTL the room is still there; the wake-up after it drops the room.
    ops.extend([Op::Wait { ms: 90 }, Op::Wait { ms: 20 }, reconnect(0, Since::Seen(0), EpochAsk::Seen)]);
    let transcript = chat_model::run(settings, &ops);
    let welcome = last_step_to(&transcript, 0)[0];
    assert_eq!(
        (&welcome["recovered"], &welcome["seq"], &welcome["history"]),
        (&json!(false), &json!(0), &json!([]))
    );
    assert_ne!(welcome["epoch"], first_snapshot_to(&transcript, 0)["epoch"]);
}

#[test]
fn a_zero_ttl_drops_the_room_with_its_last_member() {
    let mut ops = alice_says_three_and_leaves();
    ops.push(reconnect(0, Since::Seen(0), EpochAsk::Seen));
    let transcript = chat_model::run(Settings { ttl_ms: 0, ..Settings::default() }, &ops);
    assert_eq!(last_step_to(&transcript, 0)[0]["recovered"], false);
}

#[test]
fn a_message_exactly_as_large_as_the_history_budget_is_kept_and_one_byte_more_is_not() {
    // Alice's message events in room `r`, less their text: the timestamp has 13 digits.
    let empty =
        json!({"type":"message","room":"r","seq":1,"from":{"id":1,"name":"alice"},"text":"","ts":START_MS});
    let settings = Settings { history_bytes: empty.to_string().len() + 10, ..Settings::default() };
    for (text, kept) in [("x".repeat(10), true), ("x".repeat(11), false)] {
        let ops = [
            Op::Open { slot: 0, target: "/?name=alice&room=r".into() },
            say(0, &text),
            Op::Open { slot: 1, target: "/?room=r".into() },
        ];
        let transcript = chat_model::run(settings, &ops);
        assert_eq!(texts(last_step_to(&transcript, 1)[0]).len(), usize::from(kept), "{} bytes", text.len());
    }
}

#[test]
fn past_the_memory_bound_the_room_empty_longest_goes_first_then_the_largest_history_is_halved() {
    // Each message event takes about 100 bytes, each room kept empty is charged 256.
    let settings = Settings { history_memory: 1_000, ttl_ms: 60_000, ..Settings::default() };
    let mut ops = Vec::new();
    for (slot, room) in [(0, "old"), (1, "newer"), (2, "busy")] {
        ops.push(Op::Open { slot, target: format!("/?room={room}") });
        ops.extend((0..3).map(|number| say(slot, &format!("{room} {number}"))));
        if room != "busy" {
            ops.push(Op::Close { slot });
        }
    }
    ops.extend([
        reconnect(0, Since::Number(0), EpochAsk::Seen),
        reconnect(1, Since::Number(0), EpochAsk::Seen),
    ]);
    // Then `busy` alone outgrows the bound: its older half goes, its epoch stays.
    ops.extend((3..12).map(|number| say(2, &format!("busy {number}"))));
    ops.push(Op::Rejoin { slot: 2, room: None, ask: ask(Since::Number(11), EpochAsk::Seen), id: None });
    ops.push(Op::Rejoin { slot: 2, room: None, ask: ask(Since::Number(0), EpochAsk::Seen), id: None });
    let transcript = chat_model::run(settings, &ops);
    let snapshots: Vec<&Value> = transcript
        .iter()
        .filter(|(_, _, event)| event.get("recovered").is_some())
        .map(|(_, _, event)| event)
        .collect();
    let outcome: Vec<(&Value, &Value)> =
        snapshots.iter().map(|event| (&event["room"], &event["recovered"])).collect();
    assert_eq!(
        outcome,
        [
            (&json!("old"), &json!(false)),
            (&json!("newer"), &json!(true)),
            (&json!("busy"), &json!(true)),
            (&json!("busy"), &json!(false)),
        ]
    );
    assert!(texts(snapshots[3]).len() < 12, "the older half of busy's history is gone");
}

#[test]
fn moving_into_a_room_kept_empty_takes_it_back_before_the_old_room_is_kept() {
    // `a` (one message, about 85 bytes, plus 256) and `x` (256) are kept empty within 700 bytes;
    // a third room kept empty would not fit. Moving from `b` back into `a` must not cost `a`,
    // though it has been empty longest: `b` is kept only once `a` is taken back.
    let settings = Settings { history_memory: 700, ttl_ms: 60_000, ..Settings::default() };
    let ops = [
        Op::Open { slot: 0, target: "/?name=al&room=a".into() },
        say(0, r#"{"type":"message","text":"m1","id":"1"}"#),
        Op::Rejoin { slot: 0, room: Some("b".into()), ask: ask(Since::Absent, EpochAsk::Absent), id: None },
        Op::Open { slot: 1, target: "/?name=xi&room=x".into() },
        Op::Close { slot: 1 },
        Op::Rejoin { slot: 0, room: Some("a".into()), ask: ask(Since::Number(0), EpochAsk::Seen), id: None },
        reconnect(1, Since::Number(0), EpochAsk::Seen),
    ];
    let transcript = chat_model::run(settings, &ops);
    let back_in_a = transcript.iter().find(|(step, to, _)| *step == 5 && *to == 0).map(|(_, _, event)| event);
    let back_in_a = back_in_a.expect("a room event");
    assert_eq!((&back_in_a["room"], &back_in_a["recovered"]), (&json!("a"), &json!(true)));
    assert_eq!(texts(back_in_a), ["m1"]);
    let back_in_x = last_step_to(&transcript, 1)[0];
    assert_eq!((&back_in_x["room"], &back_in_x["recovered"]), (&json!("x"), &json!(true)), "`x` stayed kept");
}

#[test]
fn of_two_histories_as_large_the_first_room_by_name_loses_its_older_half() {
    // Two rooms alike but for their names, each with two messages of 94 bytes: 376 bytes, one
    // over the bound once the second room has its second message.
    let settings = Settings { history_memory: 4 * 94 - 1, ..Settings::default() };
    let ops = [
        Op::Open { slot: 0, target: "/?name=x&room=b".into() },
        Op::Open { slot: 1, target: "/?name=y&room=a".into() },
        say(0, "m"),
        say(1, "m"),
        say(0, "n"),
        say(1, "n"),
        Op::Open { slot: 2, target: "/?room=a".into() },
        Op::Open { slot: 3, target: "/?room=b".into() },
    ];
    let transcript = chat_model::run(settings, &ops);
    let welcome_to =
        |slot| transcript.iter().find(|(_, to, _)| *to == slot).map(|(_, _, event)| event).unwrap();
    assert_eq!((texts(welcome_to(2)), texts(welcome_to(3))), (vec!["n"], vec!["m", "n"]));
}

#[test]
fn a_head_of_exactly_16_kib_is_complete_and_one_byte_more_is_431() {
    let mut head = b"GET / HTTP/1.1\r\nX-Pad: ".to_vec();
    head.resize(MAX_HEAD_BYTES - 4, b'p');
    head.extend_from_slice(b"\r\n\r\n");
    assert_eq!(head.len(), MAX_HEAD_BYTES);
    assert!(matches!(check_head(&head), Head::Complete { length: MAX_HEAD_BYTES, .. }));
    head.insert(20, b'p');
    assert_eq!(check_head(&head), Head::Invalid(431));
    assert_eq!(check_head(&head[..MAX_HEAD_BYTES]), Head::Invalid(431));
}

#[test]
fn duplicate_request_fields_are_bad_json() {
    let bad_json = (None, Meaning::Error("bad_json".into()));
    assert_eq!(parsed(r#"{"type":"who","type":"ping"}"#), bad_json);
    assert_eq!(parsed(r#"{"type":"nick","name":"a","name":"b"}"#), bad_json);
    assert_eq!(parsed(r#"{"type":"join","room":"r","since":1,"since":2}"#), bad_json);
}

/// The default `--max-send-buffer`.
const DEFAULT_MAX_SEND_BUFFER: usize = 1024 * 1024;

/// Records the size of every frame the chat sends, per connection.
#[derive(Default)]
struct SizeRecorder {
    sizes: Vec<(usize, usize)>,
}

impl wschat::handler::Outbox for SizeRecorder {
    fn send(&mut self, to: mio::Token, frame: &wschat::handler::Frame) {
        self.sizes.push((to.0, frame.wire().len()));
    }

    fn close(&mut self, _to: mio::Token, _code: wschat::handler::CloseCode, _reason: &'static str) {}

    fn unix_time_ms(&self) -> u64 {
        0
    }

    fn max_frame_bytes(&self) -> usize {
        DEFAULT_MAX_SEND_BUFFER
    }

    fn wake_at(&mut self, _unix_ms: u64) {}
}

/// Regression (found by reading, reproduced against the server): the welcome carries the whole
/// room history in one frame, and a JSON-escaped control character takes 6 bytes, so three
/// 60 000-byte messages of `\u{1}` (or 17 plain 64 KiB ones) made every later newcomer's welcome
/// over 1 MiB, the default `--max-send-buffer`, and the newcomer was closed with 1008 "send
/// buffer full" before it saw anything. Fixed by bounding each room's history in bytes
/// (`DEFAULT_HISTORY_BYTES`).
#[test]
fn a_welcome_fits_in_the_default_send_buffer_whatever_the_history() {
    use wschat::handler::{Handler, Message};
    let (mut chat, mut out) = (wschat::Chat::new(50), SizeRecorder::default());
    chat.on_open(mio::Token(0), "/?name=mallory&room=poison", &mut out);
    for size in [60_000, 40_000, 30_000, 20_000] {
        for _ in 0..3 {
            chat.on_message(mio::Token(0), Message::text("\u{1}".repeat(size)), &mut out);
        }
    }
    for _ in 0..17 {
        chat.on_message(mio::Token(0), Message::text("x".repeat(64 * 1024)), &mut out);
    }
    out.sizes.clear();
    chat.on_open(mio::Token(1), "/?name=bob&room=poison", &mut out);
    let welcome = out.sizes.iter().find(|(to, _)| *to == 1).expect("a welcome").1;
    assert!(welcome <= DEFAULT_MAX_SEND_BUFFER, "the welcome takes {welcome} bytes");
}
