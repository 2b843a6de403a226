//! The soak's bad actors: what each kind does, the rule of the server's that should cut it off,
//! and the judgement of how it ended. `world.rs` drives them; the judgements are plain functions
//! of what was seen, tested below.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::net::close_code;

/// The kinds of bad actor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Reads its welcome, then stops reading, as a stopped process would, in the firehose room:
    /// the slow-reader rule (`--max-send-buffer`) must reset it before the heartbeat would.
    StoppedReader,
    /// Sends half a request head and trickles a header a second: the handshake deadline must
    /// reset it.
    Slowloris,
    /// Sends far over `--rate-limit`, with ids: every frame over it answered `rate_limited`,
    /// those within it acknowledged, and the room receiving exactly those.
    Flooder,
    /// An unmasked frame: close 1002.
    Unmasked,
    /// A frame with a reserved opcode (3): close 1002.
    ReservedOpcode,
    /// A text frame that is not UTF-8: close 1007.
    InvalidUtf8,
    /// A binary frame: close 1003.
    Binary,
    /// One frame over `--max-message-bytes`: close 1009.
    OversizedFrame,
    /// A message within the size limit whose event cannot fit a send buffer (control characters
    /// grow six-fold as JSON): a `too_large` error, and the connection stays.
    OversizedEvent,
}

/// The kinds that send one bad frame once welcomed, in the order they take turns.
pub const FRAME_KINDS: [Kind; 6] = [
    Kind::Unmasked,
    Kind::ReservedOpcode,
    Kind::InvalidUtf8,
    Kind::Binary,
    Kind::OversizedFrame,
    Kind::OversizedEvent,
];

impl Kind {
    /// The rule that should cut it off, as the report says it.
    pub fn rule(self) -> &'static str {
        match self {
            Kind::StoppedReader => "reset by the slow-reader rule before the heartbeat's deadline",
            Kind::Slowloris => "reset at the handshake deadline",
            Kind::Flooder => "frames over the rate limit refused with rate_limited, the rest delivered",
            Kind::Unmasked | Kind::ReservedOpcode => "close 1002",
            Kind::InvalidUtf8 => "close 1007",
            Kind::Binary => "close 1003",
            Kind::OversizedFrame => "close 1009",
            Kind::OversizedEvent => "too_large error, connection kept",
        }
    }

    /// The close code a frame kind must get, if it is one that is closed.
    pub fn expected_close(self) -> Option<u16> {
        match self {
            Kind::Unmasked | Kind::ReservedOpcode => Some(1002),
            Kind::InvalidUtf8 => Some(1007),
            Kind::Binary => Some(1003),
            Kind::OversizedFrame => Some(1009),
            _ => None,
        }
    }

    /// The bytes a frame kind sends once welcomed (masked with `mask` where a client must mask).
    pub fn offence(self, max_message_bytes: usize, mask: [u8; 4]) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Kind::Unmasked => {
                out.extend_from_slice(&[0x81, 5]);
                out.extend_from_slice(b"hello");
            }
            Kind::ReservedOpcode => crate::net::push_frame(&mut out, 0x3, b"what", mask),
            Kind::InvalidUtf8 => crate::net::push_frame(&mut out, 0x1, &[b'o', 0xC3, 0x28, b'k'], mask),
            Kind::Binary => crate::net::push_frame(&mut out, 0x2, &[1, 2, 3], mask),
            Kind::OversizedFrame => {
                crate::net::push_frame(&mut out, 0x1, &vec![b'x'; max_message_bytes + 1], mask)
            }
            // A frame not starting with `{` is a message whose text is the whole frame; each
            // U+0001 becomes `\u0001` in the event, six bytes.
            Kind::OversizedEvent => {
                crate::net::push_frame(&mut out, 0x1, &vec![1u8; max_message_bytes], mask)
            }
            Kind::StoppedReader | Kind::Slowloris | Kind::Flooder => {}
        }
        out
    }
}

/// How one bad actor ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Cut off (or answered) by the rule that applies to it.
    AsExpected,
    /// Anything else, with what happened.
    Unexpected(String),
}

/// A stopped reader's end: a reset or hang-up (never a close frame: it would wait behind what the
/// reader is not reading) within the heartbeat's reach, `stopped_secs` after it stopped reading.
pub fn judge_stopped(why: &str, stopped_secs: f64, heartbeat_secs: f64) -> Outcome {
    if close_code(why).is_some() {
        return Outcome::Unexpected(format!("a close frame reached a reader that stopped: {why}"));
    }
    if stopped_secs >= heartbeat_secs {
        return Outcome::Unexpected(format!(
            "cut after {stopped_secs:.1} s, when the heartbeat (after {heartbeat_secs} s) could have done it"
        ));
    }
    Outcome::AsExpected
}

/// A slowloris's end: its socket closed `open_secs` after it connected, not before the handshake
/// deadline and soon after it.
pub fn judge_slowloris(why: &str, open_secs: f64, deadline_secs: f64) -> Outcome {
    if why.starts_with("upgrade refused") || close_code(why).is_some() {
        return Outcome::Unexpected(format!("answered instead of cut: {why}"));
    }
    if open_secs < deadline_secs - 0.05 || open_secs > deadline_secs + 2.0 {
        return Outcome::Unexpected(format!("cut after {open_secs:.2} s, deadline {deadline_secs} s: {why}"));
    }
    Outcome::AsExpected
}

/// A flooder's tally once every frame it sent has its answer: some refused, and as many accepted
/// as the token bucket allows: its full burst of two seconds' worth at least, and no more than
/// that plus the rate over the `secs` from its connect to its last frame.
pub fn judge_flooder(sent: u32, acked: u32, refused: u32, secs: f64, rate_limit: f64) -> Outcome {
    let burst = (2.0 * rate_limit).floor() as u32;
    let allowed = (rate_limit * (secs + 2.0)).ceil() as u32;
    if acked + refused != sent {
        return Outcome::Unexpected(format!("{sent} sent, {acked} acked, {refused} refused"));
    }
    if refused == 0 || acked > allowed || acked < burst.min(sent) {
        return Outcome::Unexpected(format!("{acked} of {sent} accepted, {burst} to {allowed} allowed"));
    }
    Outcome::AsExpected
}

/// A frame kind's end: the close code it must get, or for `OversizedEvent` the `too_large` error.
pub fn judge_frame(kind: Kind, why: &str) -> Outcome {
    match (kind.expected_close(), close_code(why)) {
        (Some(expected), Some(code)) if code == expected => Outcome::AsExpected,
        _ => Outcome::Unexpected(why.chars().take(80).collect()),
    }
}

/// Per kind: how many ran, how many ended as the rule says, and what the others met.
#[derive(Debug, Default, Clone, Serialize)]
pub struct KindTally {
    pub launched: u64,
    pub cut_as_expected: u64,
    pub unexpected: u64,
    pub still_running: u64,
    pub unexpected_reasons: BTreeMap<String, u64>,
    /// The longest time it took to be cut off (stopped readers: from the stop; slowloris: from
    /// the connect).
    pub slowest_cut_secs: f64,
}

impl KindTally {
    pub fn record(&mut self, outcome: Outcome, secs: f64) {
        match outcome {
            Outcome::AsExpected => {
                self.cut_as_expected += 1;
                self.slowest_cut_secs = self.slowest_cut_secs.max(secs);
            }
            Outcome::Unexpected(reason) => {
                self.unexpected += 1;
                *self.unexpected_reasons.entry(reason).or_default() += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stopped_reader_must_be_reset_before_the_heartbeat_could_drop_it() {
        let reset = "read: Connection reset by peer (os error 104)";
        assert_eq!(judge_stopped(reset, 2.5, 12.0), Outcome::AsExpected);
        assert!(matches!(judge_stopped(reset, 12.5, 12.0), Outcome::Unexpected(_)));
        assert!(matches!(judge_stopped("server sent close 1000 ", 1.0, 12.0), Outcome::Unexpected(_)));
    }

    #[test]
    fn a_slowloris_must_be_cut_at_the_handshake_deadline() {
        let reset = "read: Connection reset by peer (os error 104)";
        assert_eq!(judge_slowloris(reset, 5.02, 5.0), Outcome::AsExpected);
        assert!(matches!(judge_slowloris(reset, 3.0, 5.0), Outcome::Unexpected(_)));
        assert!(matches!(judge_slowloris(reset, 9.0, 5.0), Outcome::Unexpected(_)));
        assert!(matches!(judge_slowloris("upgrade refused: HTTP/1.1 400", 5.0, 5.0), Outcome::Unexpected(_)));
    }

    #[test]
    fn a_flooder_gets_the_burst_and_the_rate_and_no_more() {
        // 20/s for 2.1 s, after a full bucket of 40: 82 at most, 40 at least.
        assert_eq!(judge_flooder(300, 82, 218, 2.1, 20.0), Outcome::AsExpected);
        assert_eq!(judge_flooder(300, 40, 260, 2.1, 20.0), Outcome::AsExpected);
        assert!(matches!(judge_flooder(300, 83, 217, 2.1, 20.0), Outcome::Unexpected(_)));
        assert!(matches!(judge_flooder(300, 39, 261, 2.1, 20.0), Outcome::Unexpected(_)));
        assert!(matches!(judge_flooder(300, 80, 200, 2.1, 20.0), Outcome::Unexpected(_)));
        assert!(matches!(judge_flooder(30, 30, 0, 2.1, 20.0), Outcome::Unexpected(_)));
    }

    #[test]
    fn frame_kinds_expect_their_close_codes() {
        assert_eq!(judge_frame(Kind::InvalidUtf8, "server sent close 1007 bad"), Outcome::AsExpected);
        assert!(matches!(judge_frame(Kind::InvalidUtf8, "server sent close 1002 x"), Outcome::Unexpected(_)));
        assert!(matches!(judge_frame(Kind::Binary, "read: reset"), Outcome::Unexpected(_)));
    }

    #[test]
    fn offences_are_the_frames_they_say() {
        let mask = [0; 4];
        assert_eq!(Kind::Unmasked.offence(10, mask)[0..2], [0x81, 5]);
        assert_eq!(Kind::ReservedOpcode.offence(10, mask)[0], 0x83);
        let big = Kind::OversizedFrame.offence(65536, mask);
        assert_eq!(big.len(), 65537 + 2 + 8 + 4);
        assert_eq!(Kind::OversizedEvent.offence(65536, mask).len(), 65536 + 2 + 8 + 4);
    }
}
