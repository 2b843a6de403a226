//! The reactor's promises, over real sockets: close codes for protocol violations, the close
//! handshake, peers that vanish, half-sent requests, many clients, limits and plain HTTP.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};

use common::{Client, DEADLINE, RawClient, Server};
use serde_json::json;
use tungstenite::Message;
use tungstenite::protocol::frame::coding::CloseCode;

const TEXT: u8 = 0x81;
const BINARY: u8 = 0x82;

#[test]
fn binary_frames_close_with_1003() {
    let server = Server::start(&[]);
    let (mut alice, _) = server.join("/");
    alice.socket.send(Message::binary(vec![1, 2, 3])).unwrap();
    assert_eq!(alice.expect_close().code, CloseCode::Unsupported);
}

#[test]
fn invalid_utf8_closes_with_1007() {
    let server = Server::start(&[]);
    let mut raw = RawClient::connect(&server, "/");
    assert_eq!(raw.read_frame().0, 0x1, "welcome first");
    raw.send_frame(TEXT, &[0x68, 0x69, 0xff, 0xfe]);
    assert_eq!(raw.read_close_code(), 1007);
}

#[test]
fn oversized_messages_close_with_1009() {
    let server = Server::start(&["--max-message-bytes", "1000"]);
    let mut raw = RawClient::connect(&server, "/");
    raw.read_frame();
    raw.send_frame(TEXT, "a".repeat(999).as_bytes()); // Under the limit: fine.
    raw.send_frame(TEXT, "a".repeat(1001).as_bytes());
    assert_eq!(raw.read_close_code(), 1009);
}

#[test]
fn oversized_fragmented_messages_close_with_1009() {
    let server = Server::start(&["--max-message-bytes", "1000"]);
    let mut raw = RawClient::connect(&server, "/");
    raw.read_frame();
    raw.send_frame(0x01, "a".repeat(600).as_bytes()); // Text, not final.
    raw.send_frame(0x80, "a".repeat(600).as_bytes()); // Continuation, final.
    assert_eq!(raw.read_close_code(), 1009);
}

#[test]
fn protocol_errors_close_with_1002() {
    let server = Server::start(&[]);
    for bad_frame in [
        vec![0x83, 0x80, 1, 2, 3, 4], // Reserved opcode 3.
        vec![0xC1, 0x80, 1, 2, 3, 4], // RSV1 set without an extension.
        vec![0x81, 0x02, b'h', b'i'], // Unmasked client frame.
        vec![0x80, 0x80, 1, 2, 3, 4], // Continuation with nothing to continue.
    ] {
        let mut raw = RawClient::connect(&server, "/");
        raw.read_frame();
        raw.stream.write_all(&bad_frame).unwrap();
        assert_eq!(raw.read_close_code(), 1002, "for frame {bad_frame:?}");
    }
}

#[test]
fn frames_queued_before_a_violation_are_delivered_before_the_close() {
    let server = Server::start(&[]);
    let mut raw = RawClient::connect(&server, "/");
    raw.read_frame();
    // Two requests and a violation in one write: both answers must precede the close frame.
    let mut bytes = common::masked_frame(TEXT, br#"{"type":"ping"}"#);
    bytes.extend(common::masked_frame(TEXT, br#"{"type":"who"}"#));
    bytes.extend(common::masked_frame(BINARY, b"\x00"));
    raw.stream.write_all(&bytes).unwrap();
    assert_eq!(raw.read_frame(), (0x1, br#"{"type":"pong"}"#.to_vec()));
    assert_eq!(raw.read_frame().0, 0x1);
    assert_eq!(raw.read_close_code(), 1003);
}

#[test]
fn ping_frames_get_a_pong_with_the_same_payload() {
    let server = Server::start(&[]);
    let mut raw = RawClient::connect(&server, "/");
    raw.read_frame();
    raw.send_frame(0x89, b"are you there");
    assert_eq!(raw.read_frame(), (0xA, b"are you there".to_vec()));
}

#[test]
fn a_client_close_completes_the_handshake_and_the_room_hears_left() {
    let server = Server::start(&[]);
    let (mut alice, _) = server.join("/?name=alice");
    let (mut bob, _) = server.join("/?name=bob");
    alice.recv_type("joined");
    // The server answers our close frame, then closes the TCP connection.
    bob.close_and_wait(None);
    let left = alice.recv_json();
    assert_eq!(left["type"], "left");
    assert_eq!(left["user"]["name"], "bob");
}

#[test]
fn output_queued_when_the_close_handshake_finishes_is_still_delivered() {
    // 64 messages of 1 MB are more than the kernel's buffers hold for a client that is not
    // reading, so most of them are still in the server's queue when the close handshake ends.
    let server = Server::start(&[
        "--history",
        "0",
        "--max-message-bytes",
        "1100000",
        "--max-send-buffer",
        "100000000",
    ]);
    let mut lazy = RawClient::connect(&server, "/?name=lazy");
    let (mut talker, _) = server.join("/?name=talker");
    let text = "a".repeat(1_000_000);
    for _ in 0..64 {
        talker.send_text(&text);
    }
    // The pong comes after the server has handled every message, so all 64 are queued for lazy.
    talker.send_json(json!({"type": "ping"}));
    talker.recv_type("pong");
    // Lazy, still not reading, starts the close handshake; the server's reply joins the queue.
    lazy.send_frame(0x88, &1000u16.to_be_bytes());
    let mut messages = 0;
    loop {
        let (opcode, payload) = lazy.read_frame();
        match opcode {
            0x1 if payload.starts_with(br#"{"type":"message""#) => messages += 1,
            0x1 => {}
            0x8 => break,
            other => panic!("unexpected opcode {other}"),
        }
    }
    assert_eq!(messages, 64, "every message queued before the close frame arrives");
    let mut rest = [0u8; 16];
    assert_eq!(lazy.stream.read(&mut rest).unwrap(), 0, "the server hangs up after its close frame");
}

#[test]
fn a_client_vanishing_mid_frame_disturbs_nobody() {
    let server = Server::start(&[]);
    let (mut alice, _) = server.join("/?name=alice");
    let mut raw = RawClient::connect(&server, "/?name=ghost");
    raw.read_frame();
    alice.recv_type("joined");
    // Half a frame: the header promises 100 bytes, 10 arrive, then the socket closes.
    let frame = common::masked_frame(TEXT, &[b'x'; 100]);
    raw.stream.write_all(&frame[..16]).unwrap();
    raw.stream.shutdown(Shutdown::Both).unwrap();
    drop(raw);
    let left = alice.recv_json();
    assert_eq!(left["type"], "left");
    assert_eq!(left["user"]["name"], "ghost");
    // Still serving.
    let (mut carol, _) = server.join("/?name=carol");
    alice.recv_type("joined");
    carol.send_text("still here");
    assert_eq!(alice.recv_json()["text"], "still here");
}

#[test]
fn a_half_sent_upgrade_request_does_not_block_others() {
    let server = Server::start(&[]);
    let mut slow = TcpStream::connect(server.addr).unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n").unwrap();
    let (mut alice, _) = server.join("/?name=alice");
    let (mut bob, _) = server.join("/?name=bob");
    alice.recv_type("joined");
    bob.send_text("the loop is not blocked");
    assert_eq!(alice.recv_json()["text"], "the loop is not blocked");
    // The slow request can still finish.
    slow.write_all(b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        .unwrap();
    slow.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut response = [0u8; 12];
    slow.read_exact(&mut response).unwrap();
    assert_eq!(&response, b"HTTP/1.1 101");
}

#[test]
fn two_hundred_clients_each_get_every_broadcast_once_and_in_order() {
    const CLIENTS: usize = 200;
    const SENDERS: usize = 4;
    const MESSAGES: usize = 25;
    let server = Server::start(&[]);
    let mut clients: Vec<(Client, u64)> = (0..CLIENTS)
        .map(|index| {
            let (client, welcome) = server.join(&format!("/?name=client{index}"));
            (client, welcome["id"].as_u64().unwrap())
        })
        .collect();
    // Interleave the senders' messages.
    for sequence in 0..MESSAGES {
        for (sender, _) in clients.iter_mut().take(SENDERS) {
            sender.send_text(&sequence.to_string());
        }
    }
    let sender_ids: Vec<u64> = clients.iter().take(SENDERS).map(|(_, id)| *id).collect();
    for (index, (client, own_id)) in clients.iter_mut().enumerate() {
        let expected_total = if index < SENDERS { (SENDERS - 1) * MESSAGES } else { SENDERS * MESSAGES };
        let mut next_from: HashMap<u64, usize> = HashMap::new();
        for _ in 0..expected_total {
            let message = client.recv_type("message");
            let from = message["from"]["id"].as_u64().unwrap();
            assert_ne!(from, *own_id, "client {index} received its own message");
            assert!(sender_ids.contains(&from));
            let sequence: usize = message["text"].as_str().unwrap().parse().unwrap();
            let expected = next_from.entry(from).or_default();
            assert_eq!(sequence, *expected, "client {index}: message from {from} out of order or duplicated");
            *expected += 1;
        }
        // Exactly once: nothing else but join notices is waiting.
        client.send_json(json!({"type": "ping"}));
        loop {
            let event = client.recv_json();
            match event["type"].as_str() {
                Some("pong") => break,
                Some("joined") => {}
                _ => panic!("client {index}: unexpected extra event {event}"),
            }
        }
    }
}

#[test]
fn clients_over_the_connection_limit_get_503() {
    let server = Server::start(&["--max-connections", "2"]);
    let (_alice, _) = server.join("/");
    let (_bob, _) = server.join("/");
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        server.addr
    );
    let response = server.http(request.as_bytes());
    assert!(response.starts_with("HTTP/1.1 503"), "{response}");
    assert!(response.contains("Connection: close"));
    drop(_bob);
    // A slot frees up once bob is gone; the server keeps serving within the limit.
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let stream = TcpStream::connect(server.addr).unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        match tungstenite::client(server.url("/"), stream) {
            Ok(_) => break,
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
                assert_eq!(response.status(), 503);
            }
            Err(error) => panic!("unexpected handshake failure: {error}"),
        }
        assert!(std::time::Instant::now() < deadline, "the freed slot was never reused");
    }
}

#[test]
fn plain_http_requests_get_whole_responses() {
    let server = Server::start(&[]);
    let health = server.http(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(health.starts_with("HTTP/1.1 200 OK\r\n"), "{health}");
    assert!(health.contains("Content-Length: 3\r\n") && health.ends_with("\r\n\r\nok\n"));
    assert!(server.http(b"GET /nowhere HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
    assert!(server.http(b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").starts_with("HTTP/1.1 405"));
    assert!(
        server
            .http(b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03garbage\r\n\r\n")
            .starts_with("HTTP/1.1 400")
    );
    assert!(server.http(b"GET /\r\n\r\n").starts_with("HTTP/1.1 400"), "a request line without a version");
    let huge = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(70 * 1024));
    assert!(server.http(huge.as_bytes()).starts_with("HTTP/1.1 431"));
    let old_version = format!(
        "GET / HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",
        server.addr
    );
    let response = server.http(old_version.as_bytes());
    assert!(
        response.starts_with("HTTP/1.1 426") && response.contains("Sec-WebSocket-Version: 13"),
        "{response}"
    );
    // And after all that, chat still works.
    let (mut alice, _) = server.join("/");
    alice.assert_nothing_pending();
}

#[test]
fn a_request_followed_by_a_half_close_still_gets_its_response() {
    let server = Server::start(&[]);
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
}

#[test]
fn the_log_names_the_bound_port_and_connections_at_debug() {
    let mut server = Server::start(&[]);
    assert_ne!(server.addr.port(), 0);
    let (_alice, _) = server.join("/");
    server.wait_for_log("opened a WebSocket");
    assert!(server.is_running());
}

#[test]
fn an_ordinary_send_buffer_starts_and_only_an_event_too_large_for_it_is_refused() {
    // 256 KiB with the default 64 KiB messages: a message of 50,000 control characters becomes a
    // 300 KB event, which no recipient's queue could ever hold.
    let server = Server::start(&["--max-send-buffer", "262144"]);
    let (mut alice, _) = server.join("/?name=alice");
    let (mut bob, _) = server.join("/?name=bob");
    alice.recv_type("joined");
    // Sent as plain text: the same text in a JSON request would be escaped past the frame limit.
    alice.send_text(&"\u{1}".repeat(50_000));
    let error = alice.recv_json();
    assert_eq!((&error["type"], &error["code"]), (&json!("error"), &json!("too_large")));
    bob.assert_nothing_pending();
    // A message of the largest size in plain text still goes through, and nobody was dropped.
    alice.send_text(&"a".repeat(65_000));
    assert_eq!(bob.recv_type("message")["text"].as_str().map(str::len), Some(65_000));
    let stats = server.stats();
    assert_eq!((&stats["slow_consumers_dropped"], &stats["connections"]), (&json!(0), &json!(2)));
}

#[test]
fn a_send_buffer_smaller_than_the_largest_message_starts_too() {
    let server = Server::start(&["--max-send-buffer", "65536", "--max-message-bytes", "1048576"]);
    let (mut alice, _) = server.join("/?name=alice");
    let (mut bob, _) = server.join("/?name=bob");
    alice.recv_type("joined");
    alice.send_text(&"b".repeat(70_000));
    assert_eq!(alice.recv_json()["code"], "too_large");
    alice.send_text(&"c".repeat(60_000));
    assert_eq!(bob.recv_type("message")["text"].as_str().map(str::len), Some(60_000));
    bob.assert_nothing_pending();
}

#[test]
fn two_servers_with_reuse_port_share_one_address_and_both_accept() {
    let mut first = Server::start(&["--reuse-port"]);
    let address = first.addr.to_string();
    let mut second = Server::start(&["--reuse-port", "--bind", &address]);
    assert_eq!(second.addr, first.addr);
    // The kernel spreads connections by a hash of the client's address and port: 40 connections
    // all landing on one of two listeners would happen once in 2^39 runs.
    let clients: Vec<_> = (0..40).map(|_| first.join("/").0).collect();
    // Each server logs the upgrades it took; the lines reach the test a little after the welcomes.
    let mut opened = [0, 0];
    let give_up = std::time::Instant::now() + DEADLINE;
    while opened[0] + opened[1] < 40 {
        assert!(std::time::Instant::now() < give_up, "only {opened:?} upgrades logged");
        for (count, server) in opened.iter_mut().zip([&mut first, &mut second]) {
            *count += server.drain_log().iter().filter(|line| line.contains("opened a WebSocket")).count();
        }
        std::thread::sleep(std::time::Duration::from_millis(5)); // Polling the log readers.
    }
    assert_eq!(opened[0] + opened[1], 40, "{opened:?}");
    assert!(opened[0] > 0 && opened[1] > 0, "one listener took every connection: {opened:?}");
    drop(clients);
}
