//! The one place that sorts tungstenite's errors: waiting is not an error, a protocol violation
//! earns a close code, anything else means the connection is gone.

use std::fmt;
use std::io::ErrorKind;

use tungstenite::Error;
use tungstenite::error::ProtocolError;

use super::socket::SendBufferFull;
use crate::handler::CloseCode;

/// What a tungstenite error means for the connection.
#[derive(Debug)]
pub enum Failure {
    /// Not an error: the socket would block; wait for the next readiness event.
    WouldBlock,
    /// A signal interrupted the system call; try again.
    Interrupted,
    /// The close handshake is complete; the socket may be closed.
    Closed,
    /// The connection's queue is over `--max-send-buffer`: its reader is too slow.
    SendBufferFull,
    /// The peer broke RFC 6455; fail the connection with this close code (section 7.1.7).
    Violation(CloseCode, &'static str),
    /// The peer vanished or the socket broke.
    Gone(String),
}

pub fn classify(error: Error) -> Failure {
    match error {
        Error::Io(error) if error.kind() == ErrorKind::WouldBlock => Failure::WouldBlock,
        Error::Io(error) if error.kind() == ErrorKind::Interrupted => Failure::Interrupted,
        Error::Io(error) if error.get_ref().is_some_and(|source| source.is::<SendBufferFull>()) => {
            Failure::SendBufferFull
        }
        Error::ConnectionClosed | Error::AlreadyClosed => Failure::Closed,
        Error::Io(error) => Failure::Gone(error.to_string()),
        Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            Failure::Gone("closed without a close frame".to_owned())
        }
        Error::Protocol(_) | Error::AttackAttempt => {
            Failure::Violation(CloseCode::Protocol, "protocol error")
        }
        Error::Capacity(_) => Failure::Violation(CloseCode::Size, "message too big"),
        Error::Utf8(_) => Failure::Violation(CloseCode::Invalid, "invalid UTF-8 in text"),
        Error::WriteBufferFull(_) => Failure::SendBufferFull,
        other => Failure::Gone(other.to_string()),
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::WouldBlock => formatter.write_str("would block"),
            Failure::Interrupted => formatter.write_str("interrupted"),
            Failure::Closed => formatter.write_str("closed"),
            Failure::SendBufferFull => formatter.write_str("send buffer full"),
            Failure::Violation(code, reason) => write!(formatter, "{reason} (close code {code})"),
            Failure::Gone(reason) => formatter.write_str(reason),
        }
    }
}
