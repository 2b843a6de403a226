//! Routing of a complete HTTP request head: a valid upgrade becomes a WebSocket handshake, a plain
//! `GET` goes to the handler, anything else gets an error response and is closed.

use crate::http::{self, Parse, RequestHead};

/// What to do with a connection's request.
pub enum Route {
    /// The head is not complete yet.
    Wait,
    /// A valid upgrade: start the WebSocket handshake, if the per-address limit and the handler
    /// let it through.
    Upgrade(RequestHead),
    /// A plain `GET`, for the handler (or the reactor's fallback) to answer.
    Get(RequestHead),
    /// A valid upgrade, but the server already holds `--max-connections` WebSockets.
    AtCapacity,
    /// Answer with this response and close.
    Respond(Vec<u8>),
}

/// Routes the request whose head starts `received`. `origins` are the allowed `Origin` values
/// (empty: all); `at_capacity` says whether the server already holds `--max-connections`
/// WebSockets.
pub fn route(received: &[u8], origins: &[String], at_capacity: bool) -> Route {
    let (head, length) = match http::parse_head(received) {
        Parse::Partial => return Route::Wait,
        Parse::Invalid(response) => return Route::Respond(response),
        Parse::Complete { head, length } => (head, length),
    };
    if !head.wants_websocket {
        if head.method != "GET" {
            let body = b"method not allowed\n";
            let allow = [("Allow", "GET")];
            return Route::Respond(http::response(405, "Method Not Allowed", http::TEXT, &allow, body));
        }
        return Route::Get(head);
    }
    if length < received.len() {
        // RFC 6455 section 4.1: a client waits for the 101 before it sends frames.
        return Route::Respond(http::plain(400, "Bad Request", "data sent before the handshake completed\n"));
    }
    if let Err(response) = http::check_upgrade(received) {
        return Route::Respond(response);
    }
    // Browsers send the page's origin with every WebSocket upgrade; without this check any web
    // page could open a chat connection in its visitor's name (cross-site WebSocket hijacking).
    let allowed = |origin: &str| origins.iter().any(|allowed| allowed.eq_ignore_ascii_case(origin));
    if !origins.is_empty() && !head.origin.as_deref().is_some_and(allowed) {
        return Route::Respond(http::plain(403, "Forbidden", "origin not allowed\n"));
    }
    if at_capacity {
        return Route::AtCapacity;
    }
    Route::Upgrade(head)
}

/// The reactor's answer to a `GET` the handler did not take.
pub fn fallback(head: &RequestHead) -> Vec<u8> {
    match head.path() {
        "/healthz" => http::plain(200, "OK", "ok\n"),
        _ => http::plain(404, "Not Found", "not found\n"),
    }
}
