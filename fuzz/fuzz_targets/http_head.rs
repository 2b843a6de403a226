//! The request-head parser on arbitrary bytes, and the upgrade check on every complete head:
//! neither may panic, and every error is a whole 4xx response.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wschat::http::{MAX_HEAD_BYTES, Parse, check_upgrade, parse_head};

fn assert_client_error(response: &[u8]) {
    assert!(response.starts_with(b"HTTP/1.1 4"), "not a 4xx: {:?}", String::from_utf8_lossy(response));
}

fuzz_target!(|data: &[u8]| {
    // The reactor never passes more than MAX_HEAD_BYTES; look a little past it anyway.
    let data = &data[..data.len().min(MAX_HEAD_BYTES + 1024)];
    match parse_head(data) {
        Parse::Partial => assert!(data.len() < MAX_HEAD_BYTES),
        Parse::Invalid(response) => assert_client_error(&response),
        Parse::Complete { head, length } => {
            assert!(0 < length && length <= data.len() && length <= MAX_HEAD_BYTES);
            assert!(!head.method.is_empty() && !head.target.is_empty());
            let _ = head.path();
            match check_upgrade(&data[..length]) {
                Ok(()) => assert!(head.wants_websocket && head.method == "GET", "accepted: {head:?}"),
                Err(response) => assert_client_error(&response),
            }
        }
    }
    // The upgrade check on bytes the head parser may not have accepted.
    if let Err(response) = check_upgrade(data) {
        assert_client_error(&response);
    }
});
