//! RESP2, the Redis wire format, through the `redis-protocol` crate: commands out as arrays of
//! bulk strings, replies in from whatever bytes have arrived, however the stream was split.

use redis_protocol::resp2::decode::decode;
use redis_protocol::resp2::encode::encode_borrowed;
use redis_protocol::resp2::types::BorrowedFrame;
pub use redis_protocol::resp2::types::OwnedFrame as Reply;

/// The most bytes of replies kept waiting to be parsed: far beyond any reply wschat asks for
/// (a room's history is bounded by `--history`), so only a broken peer reaches it.
pub const MAX_PENDING_REPLY_BYTES: usize = 64 * 1024 * 1024;

/// Appends one command (`args[0]` is its name) to `out`, in RESP2.
pub fn encode_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    let parts: Vec<BorrowedFrame<'_>> = args.iter().map(|arg| BorrowedFrame::BulkString(arg)).collect();
    let frame = BorrowedFrame::Array(&parts);
    let start = out.len();
    out.resize(start + frame.encode_len(false), 0);
    // Invariant: the buffer was just sized to the frame's encoded length.
    let written = encode_borrowed(&mut out[start..], &frame, false).expect("the buffer fits the command");
    out.truncate(start + written);
}

/// Replies as they arrive: bytes go in, whole replies come out.
#[derive(Default)]
pub struct Replies {
    buffer: Vec<u8>,
    /// Where the first unparsed byte is.
    start: usize,
}

/// What ends a connection to Redis on the reading side.
#[derive(Debug)]
pub enum ReplyError {
    /// Bytes that are not RESP2.
    Malformed(String),
    /// A reply larger than `MAX_PENDING_REPLY_BYTES`.
    TooLarge,
}

impl std::fmt::Display for ReplyError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplyError::Malformed(problem) => {
                write!(formatter, "Redis sent bytes that are not RESP2: {problem}")
            }
            ReplyError::TooLarge => {
                write!(formatter, "Redis sent a reply over {MAX_PENDING_REPLY_BYTES} bytes")
            }
        }
    }
}

impl std::error::Error for ReplyError {}

impl Replies {
    /// Takes bytes read from the socket.
    pub fn extend(&mut self, bytes: &[u8]) -> Result<(), ReplyError> {
        if self.start > 0 && self.start == self.buffer.len() {
            self.buffer.clear();
            self.start = 0;
        }
        if self.buffer.len() - self.start + bytes.len() > MAX_PENDING_REPLY_BYTES {
            return Err(ReplyError::TooLarge);
        }
        self.buffer.extend_from_slice(bytes);
        Ok(())
    }

    /// The next whole reply, if all of it has arrived.
    pub fn next_reply(&mut self) -> Result<Option<Reply>, ReplyError> {
        match decode(&self.buffer[self.start..]) {
            Ok(Some((reply, used))) => {
                self.start += used;
                if self.start > self.buffer.len() / 2 {
                    self.buffer.drain(..self.start);
                    self.start = 0;
                }
                Ok(Some(reply))
            }
            Ok(None) => Ok(None),
            Err(error) => Err(ReplyError::Malformed(error.to_string())),
        }
    }

    /// Forgets everything (the connection is gone).
    pub fn clear(&mut self) {
        self.buffer.clear();
        self.start = 0;
    }
}

/// A reply's text, for bulk and simple strings.
pub fn text(reply: &Reply) -> Option<&str> {
    match reply {
        Reply::BulkString(bytes) | Reply::SimpleString(bytes) => std::str::from_utf8(bytes).ok(),
        _ => None,
    }
}

/// A reply's number, for integers and strings holding one.
pub fn integer(reply: &Reply) -> Option<i64> {
    match reply {
        Reply::Integer(value) => Some(*value),
        other => text(other)?.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn replies_of(chunks: &[&[u8]]) -> Result<Vec<Reply>, ReplyError> {
        let mut replies = Replies::default();
        let mut out = Vec::new();
        for chunk in chunks {
            replies.extend(chunk)?;
            while let Some(reply) = replies.next_reply()? {
                out.push(reply);
            }
        }
        Ok(out)
    }

    /// A stream holding every kind of reply, nested arrays and a null among them.
    const STREAM: &[u8] = b"+OK\r\n:42\r\n$5\r\nhello\r\n$-1\r\n-ERR no such thing\r\n\
        *3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$4\r\n{\"a\"\r\n*2\r\n*1\r\n:1\r\n*0\r\n";

    fn expected() -> Vec<Reply> {
        vec![
            Reply::SimpleString(b"OK".to_vec()),
            Reply::Integer(42),
            Reply::BulkString(b"hello".to_vec()),
            Reply::Null,
            Reply::Error("ERR no such thing".into()),
            Reply::Array(vec![
                Reply::BulkString(b"message".to_vec()),
                Reply::BulkString(b"ch".to_vec()),
                Reply::BulkString(b"{\"a\"".to_vec()),
            ]),
            Reply::Array(vec![Reply::Array(vec![Reply::Integer(1)]), Reply::Array(vec![])]),
        ]
    }

    #[test]
    fn a_stream_split_at_every_point_gives_the_same_replies() {
        for split in 0..=STREAM.len() {
            let (first, second) = STREAM.split_at(split);
            assert_eq!(replies_of(&[first, second]).unwrap(), expected(), "split at {split}");
        }
    }

    #[test]
    fn a_stream_fed_a_byte_at_a_time_gives_the_same_replies() {
        let bytes: Vec<&[u8]> = STREAM.chunks(1).collect();
        assert_eq!(replies_of(&bytes).unwrap(), expected());
    }

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        encode_command(&mut out, &[b"SET", b"k", b"a b\r\n"]);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\na b\r\n\r\n");
    }

    #[test]
    fn bytes_that_are_not_resp_are_an_error_not_a_wait() {
        assert!(matches!(replies_of(&[b"hello\r\n"]), Err(ReplyError::Malformed(_))));
    }

    fn reply_strategy() -> impl Strategy<Value = Reply> {
        let leaf = prop_oneof![
            any::<i64>().prop_map(Reply::Integer),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(Reply::BulkString),
            "[a-zA-Z0-9 ]{0,20}".prop_map(|text| Reply::SimpleString(text.into_bytes())),
            "[a-zA-Z0-9 ]{0,20}".prop_map(Reply::Error),
            Just(Reply::Null),
        ];
        leaf.prop_recursive(3, 32, 6, |inner| proptest::collection::vec(inner, 0..6).prop_map(Reply::Array))
    }

    fn encode_reply(reply: &Reply, out: &mut Vec<u8>) {
        let start = out.len();
        out.resize(start + redis_protocol::resp2::types::Resp2Frame::encode_len(reply, false), 0);
        let written = redis_protocol::resp2::encode::encode(&mut out[start..], reply, false).unwrap();
        out.truncate(start + written);
    }

    proptest! {
        /// Any replies, encoded and cut into any pieces, come back whole and in order.
        #[test]
        fn any_replies_survive_any_split(
            replies in proptest::collection::vec(reply_strategy(), 1..8),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let mut stream = Vec::new();
            for reply in &replies {
                encode_reply(reply, &mut stream);
            }
            let mut points: Vec<usize> = cuts.iter().map(|cut| cut.index(stream.len() + 1)).collect();
            points.sort_unstable();
            let mut chunks = Vec::new();
            let mut last = 0;
            for point in points {
                chunks.push(&stream[last..point]);
                last = point;
            }
            chunks.push(&stream[last..]);
            prop_assert_eq!(replies_of(&chunks).unwrap(), replies);
        }
    }
}
