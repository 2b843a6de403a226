//! The baselines speak the protocol subset the benchmark uses, exactly as wschat does: the same
//! checks run against `tokio-chat` (both runtimes), against the Node.js baseline when its
//! packages are installed (`npm ci` in `benches/node-ws`), against the uWebSockets baseline when
//! socketify is importable (the venv `benches/uws-chat/.venv`, or the Python in `UWS_PYTHON`), and,
//! when it has been built, against wschat itself (`../../target/release/wschat`, or `WSCHAT_BIN`).

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use tungstenite::{Message, WebSocket, connect, stream::MaybeTlsStream};

struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// The child is killed and waited for when the `Server` drops.
#[allow(clippy::zombie_processes)]
fn start(program: &str, args: &[&str]) -> Server {
    let mut child = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot start {program}: {error}"));
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "{program} exited before listening");
        if let Some(at) = line.find("listening on ") {
            let addr = line[at + 13..].trim();
            let port = addr.rsplit(':').next().unwrap().parse().unwrap();
            // Keep draining stderr so the server never blocks on a full pipe.
            std::thread::spawn(move || for _ in stderr.lines() {});
            return Server { child, port };
        }
    }
}

type Client = WebSocket<MaybeTlsStream<TcpStream>>;

fn join(port: u16, query: &str) -> Client {
    let (socket, _) = connect(format!("ws://127.0.0.1:{port}/any/path?{query}")).unwrap();
    if let MaybeTlsStream::Plain(stream) = socket.get_ref() {
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    }
    socket
}

fn next(client: &mut Client) -> Value {
    loop {
        match client.read().unwrap() {
            Message::Text(text) => return serde_json::from_str(&text).unwrap(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

fn send(client: &mut Client, value: Value) {
    client.send(Message::text(value.to_string())).unwrap();
}

fn check(port: u16) {
    let mut alice = join(port, "name=alice&room=r%201");
    let welcome = next(&mut alice);
    let alice_id = welcome["id"].as_u64().unwrap();
    let epoch = welcome["epoch"].as_str().unwrap().to_owned();
    assert_eq!(epoch.len(), 8, "{welcome}");
    assert_eq!(
        welcome,
        json!({"type":"welcome","id":alice_id,"name":"alice","room":"r 1","epoch":epoch,"seq":0,
               "users":[{"id":alice_id,"name":"alice"}],"history":[]})
    );
    // The field order is part of what the load generator's fast path reads.
    let mut bob = join(port, "room=r+1");
    let Message::Text(raw) = bob.read().unwrap() else { panic!("welcome is text") };
    assert!(raw.starts_with(r#"{"type":"welcome","id":"#), "{raw}");
    let welcome: Value = serde_json::from_str(&raw).unwrap();
    let bob_id = welcome["id"].as_u64().unwrap();
    let bob_name = format!("guest-{bob_id}");
    assert_eq!(welcome["name"], json!(bob_name));
    assert_eq!(welcome["users"], json!([{"id":alice_id,"name":"alice"},{"id":bob_id,"name":bob_name}]));
    assert_eq!((&welcome["epoch"], &welcome["seq"]), (&json!(epoch), &json!(0)));
    assert_eq!(next(&mut alice), json!({"type":"joined","room":"r 1","user":{"id":bob_id,"name":bob_name}}));

    send(&mut alice, json!({"type":"message","text":"lg 0 1 2"}));
    let Message::Text(raw) = bob.read().unwrap() else { panic!("message is text") };
    assert!(raw.starts_with(r#"{"type":"message","room":"r 1","seq":1,"from":{"id":"#), "{raw}");
    let mut message: Value = serde_json::from_str(&raw).unwrap();
    assert!(message["ts"].as_u64().unwrap() > 1_600_000_000_000);
    message["ts"] = json!(0);
    assert_eq!(
        message,
        json!({"type":"message","room":"r 1","seq":1,"from":{"id":alice_id,"name":"alice"},"text":"lg 0 1 2","ts":0})
    );
    bob.send(Message::text("plain words")).unwrap();
    let reply = next(&mut alice);
    assert_eq!((&reply["text"], &reply["seq"]), (&json!("plain words"), &json!(2)));

    // The sender hears nothing of its own message: the next thing it gets is the pong.
    send(&mut alice, json!({"type":"ping"}));
    assert_eq!(next(&mut alice), json!({"type":"pong"}));
    send(&mut alice, json!({"type":"dance"}));
    assert_eq!(next(&mut alice)["code"], json!("unknown_type"));

    // Bob closes as a well-behaved client does: his close frame, the server's reply, the end of
    // the stream. (The Node baseline hears of a departure only when the socket closes.)
    bob.close(None).unwrap();
    while bob.read().is_ok() {}
    drop(bob);
    assert_eq!(next(&mut alice), json!({"type":"left","room":"r 1","user":{"id":bob_id,"name":bob_name}}));
}

#[test]
fn tokio_chat_current_thread_speaks_the_protocol() {
    let server = start(env!("CARGO_BIN_EXE_tokio-chat"), &["--bind", "127.0.0.1:0"]);
    check(server.port);
}

#[test]
fn tokio_chat_multi_thread_speaks_the_protocol() {
    let server =
        start(env!("CARGO_BIN_EXE_tokio-chat"), &["--bind", "127.0.0.1:0", "--runtime", "multi-thread"]);
    check(server.port);
}

#[test]
fn node_ws_speaks_the_same_protocol_if_installed() {
    let directory = concat!(env!("CARGO_MANIFEST_DIR"), "/../node-ws");
    let node = Command::new("node").arg("--version").output();
    if node.is_err() || !std::path::Path::new(&format!("{directory}/node_modules/ws")).exists() {
        eprintln!("skipped: no node, or no `npm ci` in {directory}");
        return;
    }
    let server = start("node", &[&format!("{directory}/server.mjs"), "--bind", "127.0.0.1:0"]);
    check(server.port);
}

#[test]
fn uws_chat_speaks_the_same_protocol_if_installed() {
    let directory = concat!(env!("CARGO_MANIFEST_DIR"), "/../uws-chat");
    let python = std::env::var("UWS_PYTHON").unwrap_or_else(|_| format!("{directory}/.venv/bin/python"));
    let importable = Command::new(&python).args(["-c", "import socketify"]).stderr(Stdio::null()).status();
    if !importable.is_ok_and(|status| status.success()) {
        eprintln!(
            "skipped: socketify does not import in {python} (pip install -r {directory}/requirements.txt, and libuv1)"
        );
        return;
    }
    let server = start(&python, &[&format!("{directory}/server.py"), "--bind", "127.0.0.1:0"]);
    check(server.port);
}

#[test]
fn wschat_speaks_the_same_protocol_if_built() {
    let path = std::env::var("WSCHAT_BIN")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/release/wschat").to_owned());
    if !std::path::Path::new(&path).exists() {
        eprintln!("skipped: no wschat binary at {path}");
        return;
    }
    let server = start(&path, &["--bind", "127.0.0.1:0", "--history", "0", "--log-level", "info"]);
    check(server.port);
}
