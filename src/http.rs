//! The bit of HTTP/1.1 the server speaks before a connection becomes a WebSocket: parse a request
//! head (bounded in size) with `httparse`, tell an upgrade from a plain request, and format whole
//! responses, which are always the last thing said on their connection.

use tungstenite::handshake::machine::TryParse;
use tungstenite::handshake::server::{Request as UpgradeRequest, create_response};

/// The most bytes a request head may take, request line and headers together.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// The content type of plain-text responses.
pub const TEXT: &str = "text/plain; charset=utf-8";
/// The most header lines a request may have.
const MAX_HEADERS: usize = 64;

/// A parsed request head: what routing needs, nothing more.
#[derive(Debug)]
pub struct RequestHead {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    /// The `Origin` header, if any.
    pub origin: Option<String>,
    /// Every `Forwarded` header's value, joined with commas in the order they came (RFC 7239
    /// section 4: several headers are one list).
    pub forwarded: Option<String>,
    /// Likewise for `X-Forwarded-For`.
    pub x_forwarded_for: Option<String>,
    /// Whether the request asks to become a WebSocket (`Upgrade: websocket`).
    pub wants_websocket: bool,
}

impl RequestHead {
    /// The path part of the target, without the query.
    pub fn path(&self) -> &str {
        self.target.split_once('?').map_or(&self.target, |(path, _)| path)
    }
}

/// A request-target fit for the log: the value of a `token` query parameter (a credential) is
/// replaced, the rest kept as sent.
pub fn redacted(target: &str) -> std::borrow::Cow<'_, str> {
    let Some((path, query)) = target.split_once('?') else { return target.into() };
    if !query.split('&').any(|pair| pair.starts_with("token=")) {
        return target.into();
    }
    let pairs: Vec<&str> = query
        .split('&')
        .map(|pair| if pair.starts_with("token=") { "token=[redacted]" } else { pair })
        .collect();
    format!("{path}?{}", pairs.join("&")).into()
}

/// The result of parsing what has arrived so far.
#[derive(Debug)]
pub enum Parse {
    /// The head is not complete yet.
    Partial,
    /// A complete head of `length` bytes.
    Complete { head: RequestHead, length: usize },
    /// Not HTTP, or too big: answer with this response and close.
    Invalid(Vec<u8>),
}

/// Parses a request head from the start of `buffer`.
pub fn parse_head(buffer: &[u8]) -> Parse {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let length = match request.parse(buffer) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) if buffer.len() >= MAX_HEAD_BYTES => {
            return Parse::Invalid(too_large());
        }
        Ok(httparse::Status::Partial) => return Parse::Partial,
        Err(httparse::Error::TooManyHeaders) => return Parse::Invalid(too_large()),
        Err(error) => {
            return Parse::Invalid(plain(400, "Bad Request", &format!("malformed request: {error}\n")));
        }
    };
    if length > MAX_HEAD_BYTES {
        return Parse::Invalid(too_large());
    }
    // `parse` returned Complete, so method, path and version are all present.
    let (Some(method), Some(target)) = (request.method, request.path) else {
        return Parse::Invalid(plain(400, "Bad Request", "malformed request line\n"));
    };
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|header| header.name.eq_ignore_ascii_case(name))
            .map(|header| header.value)
    };
    let wants_websocket = header("upgrade").is_some_and(|value| {
        String::from_utf8_lossy(value).split(',').any(|token| token.trim().eq_ignore_ascii_case("websocket"))
    });
    let origin = header("origin").map(|value| String::from_utf8_lossy(value).into_owned());
    let joined = |name: &str| {
        let values: Vec<_> = request
            .headers
            .iter()
            .filter(|header| header.name.eq_ignore_ascii_case(name))
            .map(|header| String::from_utf8_lossy(header.value))
            .collect();
        (!values.is_empty()).then(|| values.join(","))
    };
    let head = RequestHead {
        method: method.to_owned(),
        target: target.to_owned(),
        origin,
        forwarded: joined("forwarded"),
        x_forwarded_for: joined("x-forwarded-for"),
        wants_websocket,
    };
    Parse::Complete { head, length }
}

/// Checks an upgrade request the way tungstenite's handshake will (method, version, `Connection`,
/// `Sec-WebSocket-Version`, `Sec-WebSocket-Key`), so a request that would fail there gets a
/// proper HTTP error here instead of a silently closed socket.
pub fn check_upgrade(head_bytes: &[u8]) -> Result<(), Vec<u8>> {
    let request = match UpgradeRequest::try_parse(head_bytes) {
        Ok(Some((_, request))) => request,
        Ok(None) => return Err(plain(400, "Bad Request", "incomplete upgrade request\n")),
        Err(error) => return Err(plain(400, "Bad Request", &format!("bad upgrade request: {error}\n"))),
    };
    let version_ok = request.headers().get("sec-websocket-version").is_some_and(|version| version == "13");
    if !version_ok {
        // RFC 6455 section 4.4: answer an unsupported version with the versions we speak.
        return Err(response(
            426,
            "Upgrade Required",
            TEXT,
            &[("Sec-WebSocket-Version", "13")],
            b"this server speaks WebSocket version 13\n",
        ));
    }
    match create_response(&request) {
        Ok(_) => Ok(()),
        Err(error) => Err(plain(400, "Bad Request", &format!("bad upgrade request: {error}\n"))),
    }
}

/// A complete response with a body. Every response closes its connection.
pub fn response(
    status: u16,
    reason: &str,
    content_type: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut bytes = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    )
    .into_bytes();
    for (name, value) in headers {
        bytes.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    bytes.extend_from_slice(b"\r\n");
    bytes.extend_from_slice(body);
    bytes
}

/// The status code of a response made by [`response`] (`HTTP/1.1 NNN ...`); `None` for bytes
/// that do not start like one.
pub fn status_of(response: &[u8]) -> Option<u16> {
    let digits = response.strip_prefix(b"HTTP/1.1 ")?.get(..3)?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// A plain-text response.
pub fn plain(status: u16, reason: &str, body: &str) -> Vec<u8> {
    response(status, reason, TEXT, &[], body.as_bytes())
}

/// The 401 an upgrade without a valid token gets (RFC 9110 section 15.5.2: with a challenge).
pub fn unauthorized(why: &str) -> Vec<u8> {
    let challenge = [("WWW-Authenticate", "Bearer realm=\"wschat\"")];
    response(401, "Unauthorized", TEXT, &challenge, format!("{why}\n").as_bytes())
}

/// The 503 a client gets when the server is full, whether at `--max-connections` or at its
/// socket or descriptor limit; `why` goes in the body.
pub fn unavailable(why: &str) -> Vec<u8> {
    plain(503, "Service Unavailable", why)
}

fn too_large() -> Vec<u8> {
    plain(431, "Request Header Fields Too Large", "request head too large\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPGRADE: &str = "GET /chat?name=a HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nOrigin: http://x\r\n\r\n";

    fn status_of(response: &[u8]) -> &str {
        std::str::from_utf8(&response[9..12]).unwrap()
    }

    #[test]
    fn an_upgrade_request_parses_and_checks_out() {
        let Parse::Complete { head, length } = parse_head(UPGRADE.as_bytes()) else { panic!("not complete") };
        assert_eq!(length, UPGRADE.len());
        assert!(head.wants_websocket);
        assert_eq!(head.path(), "/chat");
        assert_eq!(head.origin.as_deref(), Some("http://x"));
        assert_eq!((head.forwarded, head.x_forwarded_for), (None, None));
        assert!(check_upgrade(UPGRADE.as_bytes()).is_ok());
    }

    #[test]
    fn tokens_never_reach_the_log() {
        assert_eq!(redacted("/chat?name=a&token=eyJ.x.y&room=r"), "/chat?name=a&token=[redacted]&room=r");
        assert_eq!(redacted("/?token=abc"), "/?token=[redacted]");
        assert_eq!(redacted("/?tokens=1"), "/?tokens=1");
        assert_eq!(redacted("/plain"), "/plain");
    }

    #[test]
    fn repeated_forwarding_headers_are_one_list() {
        let request = "GET / HTTP/1.1\r\nX-Forwarded-For: 1.1.1.1\r\nx-forwarded-for: 2.2.2.2, 3.3.3.3\r\n\
            Forwarded: for=4.4.4.4\r\n\r\n";
        let Parse::Complete { head, .. } = parse_head(request.as_bytes()) else { panic!("not complete") };
        assert_eq!(head.x_forwarded_for.as_deref(), Some("1.1.1.1,2.2.2.2, 3.3.3.3"));
        assert_eq!(head.forwarded.as_deref(), Some("for=4.4.4.4"));
    }

    #[test]
    fn a_partial_head_waits() {
        assert!(matches!(parse_head(&UPGRADE.as_bytes()[..30]), Parse::Partial));
    }

    #[test]
    fn garbage_gets_400_and_huge_heads_431() {
        let Parse::Invalid(response) = parse_head(b"\x16\x03\x01\x02\x00garbage\r\n\r\n") else { panic!() };
        assert_eq!(status_of(&response), "400");
        let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_HEAD_BYTES));
        let Parse::Invalid(response) = parse_head(huge.as_bytes()) else { panic!() };
        assert_eq!(status_of(&response), "431");
    }

    #[test]
    fn wrong_version_gets_426_and_missing_key_400() {
        let old = UPGRADE.replace("Version: 13", "Version: 8");
        assert_eq!(status_of(&check_upgrade(old.as_bytes()).unwrap_err()), "426");
        let keyless = UPGRADE.replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "");
        assert_eq!(status_of(&check_upgrade(keyless.as_bytes()).unwrap_err()), "400");
    }

    #[test]
    fn the_status_of_a_response_is_read_back() {
        assert_eq!(super::status_of(&unavailable("full\n")), Some(503));
        assert_eq!(super::status_of(&too_large()), Some(431));
        assert_eq!(super::status_of(b"HTTP/1.1 4"), None);
        assert_eq!(super::status_of(b"garbage"), None);
    }

    #[test]
    fn responses_carry_length_and_close() {
        let text = String::from_utf8(plain(404, "Not Found", "nope\n")).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(text.contains("Content-Length: 5\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        assert!(text.ends_with("\r\n\r\nnope\n"));
    }
}
