//! The chat state machine driven by a sequence of opens, frames and closes decoded from the
//! input (see `chat_model::ops_from_bytes`), checked step by step against the reference model in
//! `chat_model.rs` (shared with `tests/parsers_proptest.rs`): no panic, sends only to open
//! connections, only JSON objects with a string `type`, unique names, and exactly the events the
//! README's rules call for.
#![no_main]

#[path = "../chat_model.rs"]
mod chat_model;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (history_limit, ops) = chat_model::ops_from_bytes(data);
    chat_model::run(history_limit, &ops);
});
