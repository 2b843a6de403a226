//! The shape of names and rooms, and the guest names the server hands out.

use super::protocol::{ErrorCode, Rejection};

/// Longest nickname, in characters.
pub const MAX_NAME_CHARS: usize = 32;
/// Longest room name, in characters.
pub const MAX_ROOM_CHARS: usize = 64;

pub fn check_room(room: &str) -> Result<(), Rejection> {
    check_label(room, MAX_ROOM_CHARS, ErrorCode::InvalidRoom, "a room name")
}

/// A name's shape, and that it is not one of the server's guest names. (Whether someone else
/// holds it is the chat's to check.)
pub fn check_name_shape(name: &str) -> Result<(), Rejection> {
    check_label(name, MAX_NAME_CHARS, ErrorCode::InvalidName, "a name")?;
    if is_guest_name(name) {
        return Err(Rejection::new(
            ErrorCode::InvalidName,
            "names like guest-7 are kept for the server to give out",
        ));
    }
    Ok(())
}

/// The shape names and rooms share: 1 to `max_chars` characters, not blank, no control
/// characters. `what` names the thing in the error message.
fn check_label(text: &str, max_chars: usize, code: ErrorCode, what: &str) -> Result<(), Rejection> {
    let length = text.chars().count();
    if length == 0 || length > max_chars || text.trim().is_empty() {
        return Err(Rejection::new(code, format!("{what} has 1 to {max_chars} characters and is not blank")));
    }
    if text.chars().any(char::is_control) {
        return Err(Rejection::new(code, format!("{what} has no control characters")));
    }
    Ok(())
}

pub fn guest_name(id: u64) -> String {
    format!("guest-{id}")
}

/// `guest-` followed by digits: the server's default names, which nobody may pick, so that a
/// default name is always free.
fn is_guest_name(name: &str) -> bool {
    name.strip_prefix("guest-")
        .is_some_and(|digits| !digits.is_empty() && digits.bytes().all(|byte| byte.is_ascii_digit()))
}
