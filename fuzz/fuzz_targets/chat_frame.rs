//! The chat's frame parser on arbitrary text (the input, lossily UTF-8): no panic; a frame that
//! does not start with `{` (after JSON's whitespace) is a message holding the whole frame, less
//! one trailing line ending, and has no id; a kept id has at most 64 characters; every rejection
//! says why.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wschat::chat::protocol::{MAX_ID_CHARS, Parsed, Request, parse_request};

fuzz_target!(|data: &[u8]| {
    let frame = String::from_utf8_lossy(data);
    let Parsed { id, request } = parse_request(&frame);
    if !frame.trim_start_matches([' ', '\t', '\n', '\r']).starts_with('{') {
        let line = frame.strip_suffix('\n').map_or(&*frame, |line| line.strip_suffix('\r').unwrap_or(line));
        assert!(matches!(&request, Ok(Request::Message { text }) if text == line));
        assert!(id.is_none());
    }
    assert!(id.is_none_or(|id| id.chars().count() <= MAX_ID_CHARS));
    if let Err(rejection) = request {
        assert!(!rejection.message.is_empty());
    }
});
