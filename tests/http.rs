//! Plain HTTP on the WebSocket port: the chat page, health, stats and the origin check.

mod common;

use std::net::TcpStream;

use common::{DEADLINE, Server};
use serde_json::Value;

/// Splits a raw response into its head and body.
fn split(response: &str) -> (&str, &str) {
    response.split_once("\r\n\r\n").expect("a complete response")
}

fn get(server: &Server, path: &str) -> String {
    server.http(format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", server.addr).as_bytes())
}

fn upgrade_status(server: &Server, origin: Option<&str>) -> u16 {
    let mut request = tungstenite::client::IntoClientRequest::into_client_request(server.url("/")).unwrap();
    if let Some(origin) = origin {
        request.headers_mut().insert("Origin", origin.parse().unwrap());
    }
    let stream = TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    match tungstenite::client(request, stream) {
        Ok((_, response)) => response.status().as_u16(),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
            response.status().as_u16()
        }
        Err(error) => panic!("handshake: {error}"),
    }
}

#[test]
fn the_root_serves_the_chat_page() {
    let server = Server::start(&[]);
    let response = get(&server, "/");
    let (head, body) = split(&response);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("Content-Type: text/html; charset=utf-8\r\n"));
    assert!(head.contains(&format!("Content-Length: {}\r\n", body.len())));
    assert!(head.contains("Connection: close\r\n"));
    assert!(body.contains("<!doctype html>") || body.contains("<!DOCTYPE html>"));
    assert!(body.contains("new WebSocket("), "the page connects back over WebSocket");
}

#[test]
fn healthz_answers_ok_and_unknown_paths_404() {
    let server = Server::start(&[]);
    let response = get(&server, "/healthz");
    assert_eq!(split(&response).1, "ok\n");
    assert!(get(&server, "/favicon.ico").starts_with("HTTP/1.1 404 Not Found\r\n"));
    let delete = server.http(b"DELETE / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(delete.starts_with("HTTP/1.1 405") && delete.contains("Allow: GET\r\n"), "{delete}");
    assert!(server.http(b"hello\r\n\r\n").starts_with("HTTP/1.1 400"));
}

#[test]
fn stats_count_connections_rooms_and_traffic() {
    let server = Server::start(&[]);
    let (mut alice, _) = server.join("/?name=alice");
    let (mut bob, _) = server.join("/?name=bob");
    let (_carol, _) = server.join("/?name=carol&room=other");
    alice.recv_type("joined");
    alice.send_text("one");
    alice.send_text("two");
    bob.recv_type("message");
    bob.recv_type("message");

    let response = get(&server, "/stats");
    let (head, body) = split(&response);
    assert!(head.contains("Content-Type: application/json\r\n"), "{head}");
    let stats: Value = serde_json::from_str(body).unwrap();
    assert_eq!(stats["connections"], 3, "the HTTP request asking is not counted: {stats}");
    assert_eq!(stats["rooms"], 2);
    assert_eq!(stats["messages_in"], 2);
    // Three welcomes, one `joined` for alice (bob) and two messages for bob.
    assert_eq!(stats["messages_out"], 6);
    assert!(stats["bytes_in"].as_u64().unwrap() > 0);
    assert!(stats["bytes_out"].as_u64().unwrap() > stats["bytes_in"].as_u64().unwrap());
    assert_eq!(stats["slow_consumers_dropped"], 0);
    assert!(stats["uptime_seconds"].is_u64());
}

/// The slab and the timer wheel hold exactly what is alive: one slot and one deadline per socket,
/// plus the chat's own wake-up, and nothing once the sockets are gone (what the soak checks).
#[test]
fn stats_count_slab_slots_and_timer_entries_and_both_shrink_back() {
    use std::io::Write;
    use std::time::Instant;

    let server = Server::start(&[]);
    let (_alice, _) = server.join("/?name=alice");
    let (bob, _) = server.join("/?name=bob&room=other");
    // A request head sent in part: a slot and a handshake deadline, but not a connection.
    let mut half = TcpStream::connect(server.addr).unwrap();
    half.write_all(b"GET /?name=slow HTTP/1.1\r\nHost: x\r\n").unwrap();

    let stats = server.stats();
    assert_eq!(stats["connections"], 2, "{stats}");
    assert_eq!(stats["slab_slots"], 4, "two WebSockets, the half request, the request asking: {stats}");
    assert_eq!(stats["handler_timers"], 0, "no room is kept empty yet: {stats}");
    assert_eq!(stats["timer_entries"], 4, "{stats}");

    drop(bob);
    drop(half);
    let give_up = Instant::now() + DEADLINE;
    let stats = loop {
        let stats = server.stats();
        if stats["connections"] == 1 && stats["slab_slots"] == 2 {
            break stats;
        }
        assert!(Instant::now() < give_up, "bob's and the half request's slots were not freed: {stats}");
        std::thread::sleep(std::time::Duration::from_millis(10)); // Polling the counters; there is no event.
    };
    assert_eq!(stats["rooms_without_members"], 1, "bob's room is kept for --history-ttl: {stats}");
    assert_eq!(stats["handler_timers"], 1, "the chat asked to be woken when it expires: {stats}");
    assert_eq!(stats["timer_entries"], 3, "alice's, the asker's and the chat's: {stats}");
}

#[test]
fn without_origin_flags_every_origin_is_accepted() {
    let server = Server::start(&[]);
    assert_eq!(upgrade_status(&server, None), 101);
    assert_eq!(upgrade_status(&server, Some("https://evil.example")), 101);
}

#[test]
fn origin_flags_restrict_upgrades_to_the_listed_origins() {
    let server = Server::start(&["--origin", "https://chat.example", "--origin", "http://127.0.0.1:9001"]);
    assert_eq!(upgrade_status(&server, Some("https://chat.example")), 101);
    assert_eq!(upgrade_status(&server, Some("http://127.0.0.1:9001")), 101);
    assert_eq!(upgrade_status(&server, Some("https://evil.example")), 403);
    assert_eq!(upgrade_status(&server, None), 403, "a missing Origin is not on the list");
    // Plain pages are not affected.
    assert!(get(&server, "/healthz").starts_with("HTTP/1.1 200"));
}
