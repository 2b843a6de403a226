//! wss:// on the reactor (`--tls-cert`, `--tls-key`): chat and pages over TLS 1.3 and 1.2 with a
//! certificate made here by rcgen, plain HTTP and garbage on the TLS port, the handshake deadline,
//! a slow TLS reader, reloading on SIGHUP with clients connected, and pairs refused at start-up.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::tls::{Pki, RawTls13, Validity};
use common::{DEADLINE, Server};
use serde_json::json;

fn start(pki: &Pki, name: &str, extra: &[&str]) -> Server {
    let pair = pki.issue(name, Validity::Current);
    let mut args: Vec<String> = pair.flags();
    args.extend(extra.iter().map(|arg| arg.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start(&args)
}

#[test]
fn two_clients_chat_over_wss() {
    let pki = Pki::new();
    let server = start(&pki, "server", &[]);
    let (mut amy, _) = pki.join(&server, "/?name=amy");
    let (mut bob, _) = pki.join(&server, "/?name=bob");
    assert_eq!(amy.recv_type("joined")["user"]["name"], "bob");
    amy.send_json(json!({"type": "message", "text": "over TLS"}));
    assert_eq!(bob.recv_type("message")["text"], "over TLS");
    bob.send_json(json!({"type": "message", "text": "back"}));
    assert_eq!(amy.recv_type("message")["text"], "back");
    bob.assert_nothing_pending();
}

#[test]
fn tls_1_2_and_1_3_are_both_served() {
    let pki = Pki::new();
    let server = start(&pki, "server", &[]);
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let stream = pki.connect_with(&server, pki.client_config(&[version]));
        assert_eq!(stream.conn.protocol_version(), Some(version.version));
        let url = format!("wss://localhost:{}/?name=v", server.addr.port());
        let (socket, _) = tungstenite::client(url, stream).expect("upgrade");
        let mut client = common::Client { socket };
        assert_eq!(client.recv_json()["type"], "welcome");
    }
}

#[test]
fn the_page_and_plain_requests_are_served_over_https() {
    let pki = Pki::new();
    let server = start(&pki, "server", &[]);
    let page = pki.https(&server, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page}");
    assert!(page.contains("location.protocol === 'https:' ? 'wss://'"), "the page picks wss:// itself");
    let health = pki.https(&server, b"GET /healthz HTTP/1.1\r\n\r\n");
    assert!(health.ends_with("\r\n\r\nok\n"), "{health}");
}

/// Reads what the server sends until it closes (or resets), with the deadline.
fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return received,
            Ok(count) => received.extend_from_slice(&chunk[..count]),
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => return received,
            Err(error) => panic!("the server neither answered nor closed: {error}"),
        }
    }
}

#[test]
fn plain_http_and_garbage_on_the_tls_port_get_a_400_and_a_close() {
    let pki = Pki::new();
    let server = start(&pki, "server", &[]);
    for first_bytes in [&b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"[..], b"\x00\x01\x02garbage"] {
        let mut stream = TcpStream::connect(server.addr).unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        stream.write_all(first_bytes).unwrap();
        let response = String::from_utf8_lossy(&read_until_closed(&mut stream)).into_owned();
        assert!(response.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{response}");
        assert!(response.ends_with("use https:// or wss://\n"), "{response}");
    }
}

#[test]
fn a_broken_tls_handshake_gets_an_alert_and_a_close() {
    let pki = Pki::new();
    let server = start(&pki, "server", &[]);
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    // A handshake record holding a ClientHello with nothing in it.
    stream.write_all(&[0x16, 0x03, 0x01, 0x00, 0x04, 0x01, 0x00, 0x00, 0x00]).unwrap();
    let answer = read_until_closed(&mut stream);
    // An alert record (content type 21), two bytes: fatal (2) and its description.
    assert_eq!(answer.first(), Some(&0x15), "{answer:?}");
    assert_eq!(answer.get(5), Some(&2), "a fatal alert: {answer:?}");
    // Once the client hangs up too, its slot is free again: only the asker holds one.
    drop(stream);
    let give_up = Instant::now() + DEADLINE;
    while tls_stats(&pki, &server)["slab_slots"] != 1 {
        assert!(Instant::now() < give_up, "the failed connection's slot was not freed");
        std::thread::sleep(Duration::from_millis(10)); // Polling the counters; there is no event.
    }
}

#[test]
fn a_bad_handshake_message_with_another_behind_it_gets_an_alert_and_the_server_lives() {
    let pki = Pki::new();
    let mut server = start(&pki, "server", &[]);
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    // One handshake record, two messages: an empty ClientHello, then the start of another.
    // rustls refuses the first while still holding the second (this once panicked the server).
    stream.write_all(&[0x16, 0x03, 0x01, 0x00, 0x08, 0x01, 0, 0, 0, 0x01, 0, 0, 0]).unwrap();
    let answer = read_until_closed(&mut stream);
    assert_eq!(answer.first(), Some(&0x15), "an alert record: {answer:?}");
    let health = pki.https(&server, b"GET /healthz HTTP/1.1\r\n\r\n");
    assert!(health.ends_with("\r\n\r\nok\n"), "{health}");
    assert!(server.is_running());
}

#[test]
fn half_a_key_update_from_a_client_does_not_stop_the_server_writing_to_it() {
    let pki = Pki::new();
    let mut server = start(&pki, "server", &[]);
    let upgrade = b"GET /?name=raw HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
                    Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                    Sec-WebSocket-Version: 13\r\n\r\n";
    let mut raw = RawTls13::connect(&pki, &server, upgrade);
    // The first two bytes of a key update (RFC 8446 section 4.6.3) in a record of their own;
    // the rest never comes. The server holds them, and must still be able to write.
    raw.send(rustls::ContentType::Handshake, &[24, 0]);
    // bob's join is broadcast to raw: a write to it (this once panicked the server).
    let (_bob, welcome) = pki.join(&server, "/?name=bob");
    let names: Vec<&str> =
        welcome["users"].as_array().unwrap().iter().filter_map(|user| user["name"].as_str()).collect();
    assert_eq!(names, ["raw", "bob"], "raw is still connected");
    let health = pki.https(&server, b"GET /healthz HTTP/1.1\r\n\r\n");
    assert!(health.ends_with("\r\n\r\nok\n"), "{health}");
    assert!(server.is_running());
}

fn tls_stats(pki: &Pki, server: &Server) -> serde_json::Value {
    let response = pki.https(server, b"GET /stats HTTP/1.1\r\n\r\n");
    serde_json::from_str(response.split_once("\r\n\r\n").unwrap().1).unwrap()
}

#[test]
fn a_handshake_message_larger_than_a_record_is_refused_not_held() {
    let pki = Pki::new();
    // A deadline far beyond the test's: only the size check can end this connection in time.
    let server = start(&pki, "server", &["--handshake-timeout", "60"]);
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    // A ClientHello announcing 48 KiB, sent as full 16 KiB records.
    let mut first = vec![0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00, 0xC0, 0x00];
    first.resize(5 + 0x4000, 0);
    stream.write_all(&first).unwrap();
    let mut next = vec![0x16, 0x03, 0x01, 0x40, 0x00];
    next.resize(5 + 0x4000, 0);
    // The server may hang up while this is on its way.
    let _ = stream.write_all(&next).and_then(|()| stream.write_all(&next));
    let started = Instant::now();
    read_until_closed(&mut stream);
    assert!(started.elapsed() < DEADLINE);
}

#[test]
fn a_silent_socket_on_the_tls_port_is_dropped_at_the_handshake_deadline() {
    let pki = Pki::new();
    let server = start(&pki, "server", &["--handshake-timeout", "0.3"]);
    let mut silent = TcpStream::connect(server.addr).unwrap();
    silent.set_read_timeout(Some(DEADLINE)).unwrap();
    // Half a ClientHello: the record header promises more than comes.
    silent.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).unwrap();
    let started = Instant::now();
    assert!(read_until_closed(&mut silent).is_empty());
    assert!(started.elapsed() < DEADLINE);
}

#[test]
fn a_tls_client_that_never_reads_is_dropped_and_the_other_gets_everything() {
    let pki = Pki::new();
    let mut server = start(&pki, "server", &["--max-send-buffer", "65536", "--socket-send-buffer", "16384"]);
    let (mut sender, _) = pki.join(&server, "/?name=sender");
    let (mut healthy, _) = pki.join(&server, "/?name=healthy");
    // A client with a small receive window that stops reading after its welcome.
    let (_lazy, _) = pki.join_with_receive_buffer(&server, "/?name=lazy", 4096);
    sender.recv_type("joined");
    sender.recv_type("joined");
    healthy.recv_type("joined");
    let text = "x".repeat(2000);
    let mut lazy_left = false;
    for index in 0..400 {
        sender.send_json(json!({"type": "message", "text": format!("{index} {text}")}));
        let message = loop {
            let event = healthy.recv_json();
            match event["type"].as_str() {
                Some("message") => break event,
                Some("left") if event["user"]["name"] == "lazy" => lazy_left = true,
                _ => panic!("unexpected event {event}"),
            }
        };
        assert!(message["text"].as_str().unwrap().starts_with(&format!("{index} ")), "{message}");
    }
    server.wait_for_log("send buffer full, disconnecting a slow reader");
    assert!(lazy_left || healthy.recv_type("left")["user"]["name"] == "lazy");
}

/// rustls may hold one record (16 KiB and its framing) for a connection, and that comes out of
/// `--max-send-buffer`: with 65,536 bytes a TLS client's queue takes 49,088, so an event of about
/// 55,000 bytes is refused with `too_large` over TLS, while the same limit without TLS carries it.
#[test]
fn the_records_rustls_may_hold_come_out_of_the_send_buffer_limit() {
    let limit = ["--max-send-buffer", "65536"];
    let pki = Pki::new();
    let tls = start(&pki, "server", &limit);
    let (mut amy, _) = pki.join(&tls, "/?name=amy");
    let (mut bob, _) = pki.join(&tls, "/?name=bob");
    amy.recv_type("joined");
    amy.send_json(json!({"type": "message", "text": "x".repeat(40_000), "id": "fits"}));
    assert_eq!(bob.recv_type("message")["text"].as_str().map(str::len), Some(40_000));
    amy.send_json(json!({"type": "message", "text": "x".repeat(55_000), "id": "over"}));
    let error = amy.recv_type("error");
    assert_eq!((&error["code"], &error["id"]), (&json!("too_large"), &json!("over")), "{error}");
    bob.assert_nothing_pending();

    let plain = Server::start(&limit);
    let (mut amy, _) = plain.join("/?name=amy");
    let (mut bob, _) = plain.join("/?name=bob");
    amy.recv_type("joined");
    amy.send_json(json!({"type": "message", "text": "x".repeat(55_000), "id": "over"}));
    assert_eq!(bob.recv_type("message")["text"].as_str().map(str::len), Some(55_000));
}

#[test]
fn sighup_reloads_the_certificate_and_keeps_every_connection() {
    let pki = Pki::new();
    let first = pki.issue("first", Validity::Current);
    let args = first.flags();
    let mut server = Server::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let (mut amy, _) = pki.join(&server, "/?name=amy");
    assert_eq!(presented(&pki, &server), first.der);

    // certbot renews in place: the same paths, new contents.
    let second = pki.issue("second", Validity::Current);
    std::fs::copy(&second.cert, &first.cert).unwrap();
    std::fs::copy(&second.key, &first.key).unwrap();
    server.signal("HUP");
    server.wait_for_log("SIGHUP: TLS reloaded");
    assert_eq!(presented(&pki, &server), second.der, "new connections get the new certificate");
    let (mut bob, _) = pki.join(&server, "/?name=bob");
    amy.send_json(json!({"type": "message", "text": "still here"}));
    assert_eq!(bob.recv_type("message")["text"], "still here");

    // A bad pair (the key of another certificate, then an expired one) is refused; the second stays.
    let mismatched = pki.issue_with_wrong_key("mismatched");
    std::fs::copy(&mismatched.cert, &first.cert).unwrap();
    std::fs::copy(&mismatched.key, &first.key).unwrap();
    server.signal("HUP");
    let line = server.wait_for_log("SIGHUP: TLS not reloaded");
    assert!(line.contains("does not match the certificate"), "{line}");
    let expired = pki.issue("expired", Validity::Expired);
    std::fs::copy(&expired.cert, &first.cert).unwrap();
    std::fs::copy(&expired.key, &first.key).unwrap();
    server.signal("HUP");
    let line = server.wait_for_log("SIGHUP: TLS not reloaded");
    assert!(line.contains("expired on 2021-01-01"), "{line}");
    assert_eq!(presented(&pki, &server), second.der, "the pair in use is kept");
    bob.send_json(json!({"type": "message", "text": "through it all"}));
    assert_eq!(amy.recv_type("message")["text"], "through it all");
    assert!(server.is_running());
}

#[test]
fn sighup_without_tls_is_logged_and_ignored() {
    let mut server = Server::start(&[]);
    let (mut amy, _) = server.join("/?name=amy");
    server.signal("HUP");
    server.wait_for_log("SIGHUP: nothing to reload");
    amy.assert_nothing_pending();
    assert!(server.is_running());
}

/// The certificate the server presents to a new connection.
fn presented(pki: &Pki, server: &Server) -> rustls::pki_types::CertificateDer<'static> {
    let stream = pki.connect(server);
    stream.conn.peer_certificates().expect("a certificate")[0].clone()
}

/// Runs the server with `args` and returns its exit status and log, failing past the deadline.
fn run_to_exit(args: &[String]) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wschat"))
        .args(["--bind", "127.0.0.1:0"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let give_up = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < give_up, "the server kept running with a bad pair");
        std::thread::sleep(Duration::from_millis(10)); // Polling an exit status; there is no event.
    };
    let mut log = String::new();
    child.stderr.take().unwrap().read_to_string(&mut log).unwrap();
    (status, log)
}

#[test]
fn an_expired_certificate_is_refused_at_start_up() {
    let pki = Pki::new();
    let (status, log) = run_to_exit(&pki.issue("old", Validity::Expired).flags());
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(log.contains("the certificate expired on 2021-01-01 00:00:00 UTC"), "{log}");
    assert!(!log.contains("listening on"), "{log}");
}

#[test]
fn a_key_that_does_not_match_the_certificate_is_refused_at_start_up() {
    let pki = Pki::new();
    let (status, log) = run_to_exit(&pki.issue_with_wrong_key("odd").flags());
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(log.contains("does not match the certificate"), "{log}");
}

#[test]
fn a_missing_or_empty_file_is_refused_at_start_up() {
    let pki = Pki::new();
    let pair = pki.issue("gone", Validity::Current);
    std::fs::write(&pair.cert, "not a certificate\n").unwrap();
    let (status, log) = run_to_exit(&pair.flags());
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(log.contains("no CERTIFICATE in it"), "{log}");
    std::fs::remove_file(&pair.key).unwrap();
    let (status, log) = run_to_exit(
        &pki.issue("other", Validity::Current).flags()[..2]
            .iter()
            .cloned()
            .chain(["--tls-key".to_owned(), pair.key.display().to_string()])
            .collect::<Vec<_>>(),
    );
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(log.contains("cannot read the private key"), "{log}");
}

/// Python's own TLS (the `ssl` module, OpenSSL underneath) and the `websockets` package: it
/// checks the certificate against the test CA for `localhost`, joins, and chats with a rustls
/// client both ways. scripts/test.sh installs `websockets` when it is missing.
const PYTHON_CLIENT: &str = r#"
import json, ssl, sys
from websockets.sync.client import connect

context = ssl.create_default_context(cafile=sys.argv[2])
with connect(f"wss://localhost:{sys.argv[1]}/?name=py", ssl=context, open_timeout=10) as socket:
    welcome = json.loads(socket.recv(timeout=10))
    assert welcome["type"] == "welcome", welcome
    print(json.dumps({"version": socket.socket.version(), "users": [u["name"] for u in welcome["users"]]}), flush=True)
    socket.send("hello from python")
    while True:
        event = json.loads(socket.recv(timeout=10))
        if event["type"] == "message":
            print(json.dumps({"text": event["text"]}), flush=True)
            break
"#;

#[test]
fn python_ssl_and_websockets_chat_over_wss() {
    use std::io::BufRead;

    let pki = Pki::new();
    let server = start(&pki, "server", &[]);
    let (mut rust, _) = pki.join(&server, "/?name=rust");
    let ca = pki.dir.join("ca.pem");
    std::fs::write(&ca, pki.ca_pem()).unwrap();
    let mut python = Command::new("python3")
        .args(["-c", PYTHON_CLIENT, &server.addr.port().to_string(), &ca.display().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs (scripts/test.sh installs its websockets package)");
    let mut lines = std::io::BufReader::new(python.stdout.take().unwrap()).lines();
    let first: serde_json::Value = match lines.next() {
        Some(Ok(line)) => serde_json::from_str(&line).unwrap(),
        _ => {
            let mut errors = String::new();
            python.stderr.take().unwrap().read_to_string(&mut errors).unwrap();
            panic!("the Python client did not get its welcome: {errors}");
        }
    };
    assert_eq!(first["users"], json!(["rust", "py"]));
    assert!(first["version"] == "TLSv1.3", "{first}");
    assert_eq!(rust.recv_type("message")["text"], "hello from python");
    rust.send_json(json!({"type": "message", "text": "hello from rust"}));
    let second: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(second["text"], "hello from rust");
    assert!(python.wait().unwrap().success());
    assert_eq!(rust.recv_type("left")["user"]["name"], "py");
}

#[test]
fn a_websocket_closed_over_tls_ends_with_close_notify() {
    let pki = Pki::new();
    let server = start(&pki, "server", &[]);
    let (mut amy, _) = pki.join(&server, "/?name=amy");
    amy.close_and_wait(None);
    // rustls reads a close_notify as the end (0), a TCP close without one as UnexpectedEof.
    let mut rest = Vec::new();
    let ended = amy.socket.get_mut().read_to_end(&mut rest).map_err(|error| error.to_string());
    assert_eq!(ended, Ok(0), "the stream after the close handshake");
}
