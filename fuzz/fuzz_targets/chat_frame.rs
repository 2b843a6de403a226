//! The chat's frame parser on arbitrary text (the input, lossily UTF-8): no panic; a frame that
//! does not start with `{` (after JSON's whitespace) is a message holding the whole frame, less
//! one trailing line ending, and has no id; an id over 64 characters is kept (to be echoed) but
//! makes the request an `invalid_id` error; every rejection says why.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wschat::chat::protocol::{ErrorCode, MAX_ID_CHARS, Parsed, Request, parse_request};

fuzz_target!(|data: &[u8]| {
    let frame = String::from_utf8_lossy(data);
    let Parsed { id, request } = parse_request(&frame);
    if !frame.trim_start_matches([' ', '\t', '\n', '\r']).starts_with('{') {
        let line = frame.strip_suffix('\n').map_or(&*frame, |line| line.strip_suffix('\r').unwrap_or(line));
        assert!(matches!(&request, Ok(Request::Message { text }) if text == line));
        assert!(id.is_none());
    }
    if id.is_some_and(|id| id.chars().count() > MAX_ID_CHARS) {
        assert!(matches!(&request, Err(rejection) if rejection.code == ErrorCode::InvalidId));
    }
    if let Err(rejection) = request {
        assert!(!rejection.message.is_empty());
    }
});
