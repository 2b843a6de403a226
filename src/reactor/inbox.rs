//! One read buffer for the whole loop. The loop reads one connection at a time, so the bytes a
//! `read` system call brings in need a home only while that connection is being read: the
//! kernel's receive buffer holds everything else. A buffer per connection would cost every idle
//! connection its size; this one costs the process [`INBOX_BYTES`] once.
//!
//! tungstenite keeps its own input buffer per connection, sized to the frame it is assembling,
//! and asks for a few bytes at a time (a frame header's worth); the inbox answers those from
//! memory, so a chat frame still takes one system call. What the reactor has not taken when it
//! stops reading a connection (it was held, or it ended) is kept with that connection
//! ([`super::socket::Socket::keep_unread`]): a rare partial read gets its own buffer.

use std::cell::RefCell;
use std::io::{self, Read};

/// Bytes one `read` system call may bring in: a burst of chat frames, or a good share of a large
/// message.
pub const INBOX_BYTES: usize = 16 * 1024;

/// The loop's read buffer, shared by every connection's [`super::socket::Socket`].
pub struct Inbox(RefCell<Filled>);

struct Filled {
    bytes: Box<[u8]>,
    /// Where the unread bytes start.
    start: usize,
    /// Where they end.
    end: usize,
}

impl Inbox {
    pub fn new() -> Self {
        Inbox(RefCell::new(Filled { bytes: vec![0; INBOX_BYTES].into_boxed_slice(), start: 0, end: 0 }))
    }

    /// Copies unread bytes into `out`, first reading from `stream` if there are none. `Ok(0)`
    /// is the end of the stream (or an empty `out`), as with any `Read`.
    pub fn read_from(&self, stream: &mut impl Read, out: &mut [u8]) -> io::Result<Fetched> {
        let mut filled = self.0.borrow_mut();
        let mut fresh = 0;
        if filled.start == filled.end && !out.is_empty() {
            fresh = stream.read(&mut filled.bytes)?;
            (filled.start, filled.end) = (0, fresh);
        }
        let count = out.len().min(filled.end - filled.start);
        out[..count].copy_from_slice(&filled.bytes[filled.start..filled.start + count]);
        filled.start += count;
        Ok(Fetched { copied: count, from_stream: fresh })
    }

    /// Moves the unread bytes, if any, to the end of `keep`: the connection they came from
    /// stops being read for now.
    pub fn take_unread(&self, keep: &mut Vec<u8>) {
        let mut filled = self.0.borrow_mut();
        keep.extend_from_slice(&filled.bytes[filled.start..filled.end]);
        (filled.start, filled.end) = (0, 0);
    }

    /// Forgets the unread bytes: the connection they came from is gone.
    pub fn discard(&self) {
        let mut filled = self.0.borrow_mut();
        (filled.start, filled.end) = (0, 0);
    }

    /// Whether bytes are waiting for the connection being read.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        let filled = self.0.borrow();
        filled.start == filled.end
    }
}

/// What one [`Inbox::read_from`] did.
#[derive(Debug)]
pub struct Fetched {
    /// Bytes copied out.
    pub copied: usize,
    /// Bytes the call read from the stream (for the byte counters).
    pub from_stream: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream that hands out its chunks one per `read`, then blocks.
    struct Chunks(Vec<Vec<u8>>);

    impl Read for Chunks {
        fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let chunk = self.0.remove(0);
            buffer[..chunk.len()].copy_from_slice(&chunk);
            Ok(chunk.len())
        }
    }

    #[test]
    fn small_reads_are_served_from_one_system_call() {
        let inbox = Inbox::new();
        let mut stream = Chunks(vec![b"hello world".to_vec(), b"!".to_vec()]);
        let mut out = [0; 4];
        let first = inbox.read_from(&mut stream, &mut out).unwrap();
        assert_eq!((first.copied, first.from_stream, &out), (4, 11, b"hell"));
        let second = inbox.read_from(&mut stream, &mut out).unwrap();
        assert_eq!((second.copied, second.from_stream, &out), (4, 0, b"o wo"));
        let mut keep = b"<".to_vec();
        inbox.take_unread(&mut keep);
        assert_eq!(keep, b"<rld");
        assert!(inbox.is_empty());
        let third = inbox.read_from(&mut stream, &mut out).unwrap();
        assert_eq!((third.copied, third.from_stream, &out[..1]), (1, 1, &b"!"[..]));
        assert_eq!(inbox.read_from(&mut stream, &mut out).unwrap_err().kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn discarded_bytes_never_reach_the_next_reader() {
        let inbox = Inbox::new();
        let mut first = Chunks(vec![b"abc".to_vec()]);
        let mut out = [0; 1];
        inbox.read_from(&mut first, &mut out).unwrap();
        inbox.discard();
        let mut second = Chunks(vec![b"xyz".to_vec()]);
        inbox.read_from(&mut second, &mut out).unwrap();
        assert_eq!(&out, b"x");
    }
}
