//! The chat's frame parser on arbitrary text (the input, lossily UTF-8): no panic, and a frame
//! that does not start with `{` (after whitespace) is a message holding the whole frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wschat::chat::protocol::{Request, parse_request};

fuzz_target!(|data: &[u8]| {
    let frame = String::from_utf8_lossy(data);
    let result = parse_request(&frame);
    if !frame.trim_start().starts_with('{') {
        assert!(matches!(&result, Ok(Request::Message { text }) if *text == *frame));
    }
    if let Err(rejection) = result {
        assert!(!rejection.message.is_empty());
    }
});
