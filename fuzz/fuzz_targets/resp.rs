//! Redis's replies, from arbitrary bytes: the RESP2 reader gives the same replies however the
//! stream is split (or fails either way), never panics, and what the cluster reads out of them
//! (room states, envelopes) never panics either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wschat::cluster::resp::{Replies, Reply};
use wschat::cluster::wire::{node_envelope, room_envelope, snapshot};

/// Every reply in `chunks`, or `None` if the stream is not RESP2 (or a reply is too large).
fn replies_of(chunks: &[&[u8]]) -> Option<Vec<Reply>> {
    let mut replies = Replies::default();
    let mut out = Vec::new();
    for chunk in chunks {
        replies.extend(chunk).ok()?;
        while let Some(reply) = replies.next_reply().ok()? {
            out.push(reply);
        }
    }
    Some(out)
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, stream)) = data.split_first() else { return };
    let at = usize::from(split) * stream.len() / 255;
    let whole = replies_of(&[stream]);
    let (first, second) = stream.split_at(at);
    let split = replies_of(&[first, second]);
    match (&whole, &split) {
        (Some(whole), Some(split)) => assert_eq!(whole, split),
        // A malformed stream may be noticed only once its bad byte arrives; both must fail.
        (None, None) => {}
        _ => panic!("split at {at}: {whole:?} vs {split:?}"),
    }
    for reply in whole.iter().flatten() {
        let _ = snapshot(reply);
        if let Reply::BulkString(payload) = reply {
            let _ = room_envelope(payload);
            let _ = node_envelope(payload);
        }
    }
});
