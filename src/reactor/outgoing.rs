//! The bytes waiting to be written to one socket, in the order they were queued: frames shared
//! with the other recipients of a broadcast, and bytes of the connection's own (tungstenite's
//! pongs and close frames, an HTTP response). One gathered write (`sendmsg` with many pieces, like
//! `writev`) writes as many of them as the socket takes.

use std::collections::VecDeque;
use std::io::{self, ErrorKind, IoSlice, Write};

use crate::frame::Frame;

/// The most pieces one gathered write is given (Linux allows 1024). 64 frames of a chat's typical
/// size are already more than one write of a socket's default send buffer.
const MAX_PIECES_PER_WRITE: usize = 64;

/// What a chunk costs in memory beyond its bytes: its slot in the queue, and for a frame its
/// reference-counted allocation. Charged against the send-buffer limit, so that a queue of many
/// tiny frames is bounded in memory, not just in bytes to write.
pub const CHUNK_OVERHEAD: usize = 64;

#[derive(Default)]
pub struct Outgoing {
    chunks: VecDeque<Chunk>,
    /// How much of the front chunk is written already.
    front_written: usize,
    /// Bytes queued and not yet written.
    bytes: usize,
}

enum Chunk {
    /// A frame shared with other connections.
    Shared(Frame),
    /// Bytes of this connection's own.
    Owned(Vec<u8>),
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Shared(frame) => frame.wire(),
            Chunk::Owned(bytes) => bytes,
        }
    }
}

impl Outgoing {
    /// A queue holding one whole response.
    pub fn of(bytes: Vec<u8>) -> Self {
        let mut outgoing = Outgoing::default();
        if !bytes.is_empty() {
            outgoing.bytes = bytes.len();
            outgoing.chunks.push_back(Chunk::Owned(bytes));
        }
        outgoing
    }

    /// Bytes queued and not yet written.
    pub fn len(&self) -> usize {
        self.bytes
    }

    /// What the queue holds against the send-buffer limit: its bytes and `CHUNK_OVERHEAD` per
    /// chunk.
    pub fn cost(&self) -> usize {
        self.bytes + self.chunks.len() * CHUNK_OVERHEAD
    }

    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// Queues a handle to a shared frame.
    pub fn push_frame(&mut self, frame: &Frame) {
        self.bytes += frame.wire().len();
        self.chunks.push_back(Chunk::Shared(frame.clone()));
    }

    /// Queues a copy of `bytes`, appended to the last chunk if that is the connection's own and
    /// not partly written. (A partly written chunk is freed only once all of it is written; one
    /// that kept growing, pong after pong behind a slow reader, would never be.)
    pub fn push_bytes(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.bytes += bytes.len();
        let partly_written = self.chunks.len() == 1 && self.front_written > 0;
        match self.chunks.back_mut() {
            Some(Chunk::Owned(last)) if !partly_written => last.extend_from_slice(bytes),
            _ => self.chunks.push_back(Chunk::Owned(bytes.to_vec())),
        }
    }

    /// Writes until the queue is empty or `sink` would block, and returns how many bytes it
    /// wrote. `WouldBlock` is not an error here: the caller sees what is left with `is_empty`.
    pub fn write_to(&mut self, sink: &mut impl Write) -> io::Result<usize> {
        let mut total = 0;
        while !self.is_empty() {
            let mut pieces = [IoSlice::new(&[]); MAX_PIECES_PER_WRITE];
            let mut count = 0;
            for (index, chunk) in self.chunks.iter().take(MAX_PIECES_PER_WRITE).enumerate() {
                let skip = if index == 0 { self.front_written } else { 0 };
                pieces[index] = IoSlice::new(chunk.bytes().get(skip..).unwrap_or_default());
                count = index + 1;
            }
            match sink.write_vectored(&pieces[..count]) {
                Ok(0) => return Err(io::Error::new(ErrorKind::WriteZero, "the socket took no bytes")),
                Ok(written) => {
                    self.advance(written);
                    total += written;
                }
                Err(error) if error.kind() == ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            }
        }
        if self.is_empty() {
            // Give the queue's memory back: most connections are idle most of the time, and an
            // idle connection should cost as little as possible.
            self.chunks = VecDeque::new();
        }
        Ok(total)
    }

    /// Drops the first `count` bytes, which were written.
    fn advance(&mut self, mut count: usize) {
        self.bytes = self.bytes.saturating_sub(count);
        while let Some(front) = self.chunks.front() {
            let left = front.bytes().len() - self.front_written;
            if count < left {
                self.front_written += count;
                return;
            }
            count -= left;
            self.front_written = 0;
            self.chunks.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket that takes at most `room` bytes per call and `budget` bytes in all, then blocks.
    struct Trickle {
        written: Vec<u8>,
        room: usize,
        budget: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            let count = bytes.len().min(self.room).min(self.budget);
            if count == 0 {
                return Err(ErrorKind::WouldBlock.into());
            }
            self.budget -= count;
            self.written.extend_from_slice(&bytes[..count]);
            Ok(count)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn queue_of_mixed_chunks() -> (Outgoing, Vec<u8>) {
        let mut outgoing = Outgoing::default();
        let mut expected = Vec::new();
        for index in 0..200 {
            if index % 3 == 0 {
                let own = vec![index as u8; index % 7 + 1];
                outgoing.push_bytes(&own);
                expected.extend_from_slice(&own);
            } else {
                let frame = Frame::text(&"y".repeat(index));
                outgoing.push_frame(&frame);
                expected.extend_from_slice(frame.wire());
            }
        }
        (outgoing, expected)
    }

    #[test]
    fn partial_writes_resume_where_they_stopped_and_keep_the_order() {
        let (mut outgoing, expected) = queue_of_mixed_chunks();
        assert_eq!(outgoing.len(), expected.len());
        let mut sink = Trickle { written: Vec::new(), room: 7, budget: 0 };
        // Unblock the socket a few bytes at a time, as a slow reader would.
        while !outgoing.is_empty() {
            sink.budget = 13;
            let before = outgoing.len();
            let written = outgoing.write_to(&mut sink).expect("blocking is not an error");
            assert_eq!(written, before.min(13));
            assert_eq!(outgoing.len(), before - written);
        }
        assert_eq!(sink.written, expected);
    }

    #[test]
    fn a_socket_with_room_takes_everything_in_one_call() {
        let (mut outgoing, expected) = queue_of_mixed_chunks();
        let mut sink = Trickle { written: Vec::new(), room: usize::MAX, budget: usize::MAX };
        assert_eq!(outgoing.write_to(&mut sink).ok(), Some(expected.len()));
        assert!(outgoing.is_empty());
        assert_eq!(sink.written, expected);
    }

    #[test]
    fn own_bytes_are_appended_to_the_last_own_chunk() {
        let mut outgoing = Outgoing::of(b"HTTP/1.1 200 OK\r\n".to_vec());
        outgoing.push_bytes(b"\r\n");
        assert_eq!(outgoing.chunks.len(), 1);
        outgoing.push_frame(&Frame::ping());
        outgoing.push_bytes(b"!");
        assert_eq!((outgoing.chunks.len(), outgoing.len()), (3, 19 + 2 + 1));
        assert_eq!(outgoing.cost(), 19 + 2 + 1 + 3 * CHUNK_OVERHEAD);
    }

    #[test]
    fn a_partly_written_chunk_stops_growing() {
        // A reader that takes a little less than it is sent, forever (pongs to a ping flood):
        // what it has read must be freed, not kept at the front of an ever-growing chunk.
        let mut outgoing = Outgoing::default();
        let mut sink = Trickle { written: Vec::new(), room: usize::MAX, budget: 0 };
        for _ in 0..1_000 {
            outgoing.push_bytes(&[0x8A, 0x04, 1, 2, 3, 4]);
            sink.budget = 5;
            outgoing.write_to(&mut sink).expect("blocking is not an error");
        }
        assert_eq!(outgoing.len(), 1_000);
        // What is held beyond the unwritten bytes is the written start of the front chunk, and
        // that chunk stopped growing when its first byte was written: at most the backlog then.
        let held: usize = outgoing.chunks.iter().map(|chunk| chunk.bytes().len()).sum();
        assert!(held <= 2 * outgoing.len() + 6, "{held} bytes held for {} unwritten", outgoing.len());
    }

    #[test]
    fn a_broken_socket_is_an_error() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut outgoing = Outgoing::of(b"bytes".to_vec());
        assert_eq!(outgoing.write_to(&mut Broken).map_err(|error| error.kind()), Err(ErrorKind::BrokenPipe));
        assert_eq!(outgoing.len(), 5);
    }
}
