//! The chat's frame parser on arbitrary text (the input, lossily UTF-8): no panic, and a frame
//! that does not start with `{` (after whitespace) is a message holding the whole frame, less one
//! trailing line ending.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wschat::chat::protocol::{Request, parse_request};

fuzz_target!(|data: &[u8]| {
    let frame = String::from_utf8_lossy(data);
    let result = parse_request(&frame);
    if !frame.trim_start().starts_with('{') {
        let line = frame.strip_suffix('\n').map_or(&*frame, |line| line.strip_suffix('\r').unwrap_or(line));
        assert!(matches!(&result, Ok(Request::Message { text }) if text == line));
    }
    if let Err(rejection) = result {
        assert!(!rejection.message.is_empty());
    }
});
