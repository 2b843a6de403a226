//! The chat state machine driven by a session decoded from the input (see
//! `chat_model::ops_from_bytes`: the chat's settings, then opens, resumes, frames, DMs, closes and
//! waits), checked step by step against the reference model in `chat_model.rs` (shared with
//! `tests/parsers_proptest.rs`): no panic, sends only to open connections, only JSON objects with
//! a string `type`, unique names, rooms kept exactly for their TTL, and exactly the events the
//! rules call for.
#![no_main]

#[path = "../chat_model.rs"]
mod chat_model;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (settings, ops) = chat_model::ops_from_bytes(data);
    chat_model::run(settings, &ops);
});
