//! Routing of a complete HTTP request head: a valid upgrade becomes a WebSocket handshake, every
//! other request gets a whole response and is closed.

use crate::http::{self, Parse};

/// What to do with a connection's request.
pub enum Route {
    /// The head is not complete yet.
    Wait,
    /// Start the WebSocket handshake; `target` is the request's path and query.
    Upgrade { target: String },
    /// Answer with this response and close.
    Respond(Vec<u8>),
    /// A valid upgrade, but the server already holds `--max-connections` WebSockets.
    AtCapacity,
}

/// Routes the request whose head starts `received`. `at_capacity` says whether the server
/// already holds `--max-connections` WebSockets.
pub fn route(received: &[u8], at_capacity: bool) -> Route {
    let (head, length) = match http::parse_head(received) {
        Parse::Partial => return Route::Wait,
        Parse::Invalid(response) => return Route::Respond(response),
        Parse::Complete { head, length } => (head, length),
    };
    if !head.wants_websocket {
        return Route::Respond(match (head.method.as_str(), head.path()) {
            ("GET", "/healthz") => http::plain(200, "OK", "ok\n"),
            ("GET", _) => {
                http::plain(404, "Not Found", "not found; WebSocket clients may connect on any path\n")
            }
            _ => http::response(
                405,
                "Method Not Allowed",
                "text/plain; charset=utf-8",
                &[("Allow", "GET")],
                b"method not allowed\n",
            ),
        });
    }
    if length < received.len() {
        // RFC 6455 section 4.1: a client waits for the 101 before it sends frames.
        return Route::Respond(http::plain(400, "Bad Request", "data sent before the handshake completed\n"));
    }
    if let Err(response) = http::check_upgrade(received) {
        return Route::Respond(response);
    }
    if at_capacity {
        return Route::AtCapacity;
    }
    Route::Upgrade { target: head.target }
}
