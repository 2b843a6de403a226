//! The chat's face for plain HTTP on the WebSocket port: the browser page at `/` and the counters
//! at `/stats`.

use serde::Serialize;

use super::Chat;
use crate::handler::{RequestHead, Stats};
use crate::http;

/// The whole browser client: HTML, CSS and JavaScript in one file, compiled into the binary.
const PAGE: &str = include_str!("../../web/index.html");

/// `GET /stats`: the reactor's counters plus the chat's own.
#[derive(Serialize)]
struct ChatStats<'a> {
    #[serde(flatten)]
    reactor: &'a Stats,
    /// Rooms that have members.
    rooms: usize,
}

/// Answers the `GET` requests the chat knows; `None` leaves the rest to the reactor.
pub fn respond(chat: &Chat, request: &RequestHead, stats: &Stats) -> Option<Vec<u8>> {
    match request.path() {
        "/" => {
            let headers = [("Cache-Control", "no-cache")];
            Some(http::response(200, "OK", "text/html; charset=utf-8", &headers, PAGE.as_bytes()))
        }
        "/stats" => {
            let body = serde_json::to_vec(&ChatStats { reactor: stats, rooms: chat.room_count() })
                // Invariant: the struct holds only integers.
                .expect("stats always serialize");
            Some(http::response(200, "OK", "application/json", &[("Cache-Control", "no-cache")], &body))
        }
        _ => None,
    }
}
