//! A WebSocket frame as the server sends it: encoded once, then shared by every connection it
//! is queued on.
//!
//! A server's frames are never masked (RFC 6455 section 5.1), so a broadcast's frame is the same
//! bytes for every recipient. The handler builds it once; each recipient's queue holds a
//! reference-counted handle to it, and the reactor writes it from there with `writev`. One
//! broadcast to 1,000 members costs one encoding and 1,000 counter increments, not 1,000 copies.

use std::fmt;
use std::rc::Rc;

/// RFC 6455 section 5.2 opcodes of the frames the server writes itself.
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const PING: u8 = 0x9;
/// The FIN bit: every frame the server writes is a whole message.
const FIN: u8 = 0x80;

/// One whole, unmasked, encoded frame. Cloning it is a (non-atomic) reference-count increment.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    /// The header followed by the payload: exactly what goes on the wire.
    wire: Rc<[u8]>,
}

impl Frame {
    /// A text message.
    pub fn text(text: &str) -> Frame {
        Frame::encode(TEXT, text.as_bytes())
    }

    /// A binary message.
    pub fn binary(payload: &[u8]) -> Frame {
        Frame::encode(BINARY, payload)
    }

    /// An empty ping, the heartbeat's probe.
    pub fn ping() -> Frame {
        Frame::encode(PING, &[])
    }

    fn encode(opcode: u8, payload: &[u8]) -> Frame {
        let mut wire = Vec::with_capacity(payload.len() + 10);
        wire.push(FIN | opcode);
        // The payload length in the shortest of the three encodings (section 5.2): 7 bits,
        // or 126 and 16 bits, or 127 and 64 bits, in network byte order.
        match payload.len() {
            length @ 0..=125 => wire.push(length as u8),
            length @ 126..=0xFFFF => {
                wire.push(126);
                wire.extend_from_slice(&(length as u16).to_be_bytes());
            }
            length => {
                wire.push(127);
                wire.extend_from_slice(&(length as u64).to_be_bytes());
            }
        }
        wire.extend_from_slice(payload);
        Frame { wire: wire.into() }
    }

    /// The bytes to write: header and payload.
    pub fn wire(&self) -> &[u8] {
        &self.wire
    }

    /// The payload: the header is 2 bytes, plus 2 or 8 for a 16- or 64-bit length.
    pub fn payload(&self) -> &[u8] {
        let header = match self.wire.get(1) {
            Some(126) => 4,
            Some(127) => 10,
            _ => 2,
        };
        self.wire.get(header..).unwrap_or_default()
    }

    /// The payload of a text frame.
    pub fn as_text(&self) -> Option<&str> {
        let opcode = self.wire.first().map(|first| first & 0x0F);
        if opcode == Some(TEXT) { std::str::from_utf8(self.payload()).ok() } else { None }
    }
}

impl fmt::Debug for Frame {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.as_text() {
            Some(text) => write!(formatter, "Frame::text({text:?})"),
            None => write!(formatter, "Frame({} payload bytes)", self.payload().len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{self, Cursor, Read, Write};

    use tungstenite::protocol::{Role, WebSocket, WebSocketConfig};
    use tungstenite::{Bytes, Message};

    use super::*;

    /// A client's end of the wire: reads the given bytes, discards what the client writes (pongs).
    struct Wire(Cursor<Vec<u8>>);

    impl Read for Wire {
        fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
            self.0.read(buffer)
        }
    }

    impl Write for Wire {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Reads `frames`, concatenated, the way a client would: with tungstenite's own decoder.
    fn decode(frames: &[Frame]) -> Vec<Message> {
        let wire: Vec<u8> = frames.iter().flat_map(|frame| frame.wire().to_vec()).collect();
        let config = WebSocketConfig::default().max_message_size(None).max_frame_size(None);
        let mut client = WebSocket::from_raw_socket(Wire(Cursor::new(wire)), Role::Client, Some(config));
        std::iter::from_fn(|| client.read().ok()).collect()
    }

    #[test]
    fn every_length_encoding_decodes_to_the_same_message() {
        // The edges of the 7-, 16- and 64-bit length encodings.
        for length in [0, 1, 125, 126, 127, 65_535, 65_536, 70_000] {
            let text = "x".repeat(length);
            let frame = Frame::text(&text);
            assert_eq!(frame.as_text(), Some(text.as_str()));
            assert_eq!(decode(&[frame]), vec![Message::text(text)], "length {length}");
        }
    }

    #[test]
    fn binary_and_ping_frames_decode_too() {
        let payload = vec![0, 159, 255, 10];
        let frames = [Frame::binary(&payload), Frame::ping()];
        assert_eq!(decode(&frames), vec![Message::Binary(payload.into()), Message::Ping(Bytes::new())]);
        assert_eq!(frames[0].as_text(), None);
        assert_eq!(frames[0].payload(), [0, 159, 255, 10]);
    }

    #[test]
    fn clones_share_the_encoded_bytes() {
        let frame = Frame::text("hello");
        let copy = frame.clone();
        assert!(std::ptr::eq(frame.wire(), copy.wire()));
        assert_eq!(frame.wire(), [0x81, 5, b'h', b'e', b'l', b'l', b'o']);
    }
}
