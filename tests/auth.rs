//! Signed tokens end to end: checked before the 101 (401 with the reason in the log and none of
//! the token), the name they carry held for their holder, rooms they limit, and their expiry
//! enforced mid-connection with a refresh in between.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use common::{Client, Server};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use tungstenite::protocol::frame::coding::CloseCode;
use wschat::auth::mint;

const SECRET: &str = "a secret for the tests, 32 bytes or more";

/// A secret file of this test's own (tests run in parallel).
fn secret_file(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("wschat-test-secret-{}-{name}", std::process::id()));
    std::fs::write(&path, format!("{SECRET}\n")).unwrap();
    path
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn token_for(sub: &str, ttl_secs: u64, rooms: Option<&[&str]>) -> String {
    let rooms = rooms.map(|rooms| rooms.iter().map(|room| room.to_string()).collect());
    mint(SECRET.as_bytes(), sub, now_secs() + ttl_secs, rooms).unwrap()
}

fn start(name: &str, extra: &[&str]) -> Server {
    let secret = secret_file(name);
    let mut args = vec!["--auth-secret-file", secret.to_str().unwrap()];
    args.extend_from_slice(extra);
    Server::start(&args)
}

fn status(refusal: &str) -> &str {
    &refusal[..3]
}

#[test]
fn without_a_valid_token_an_upgrade_gets_401_and_the_log_says_why() {
    let mut server = start("required", &[]);
    let refusal = server.refused_upgrade("/").expect("refused");
    assert_eq!(status(&refusal), "401");
    assert!(refusal.to_ascii_lowercase().contains("www-authenticate: bearer"), "{refusal}");
    server.wait_for_log("no token");

    let forged = mint(b"another secret, also 32 bytes long!", "alice", now_secs() + 60, None).unwrap();
    let expired = token_for("alice", 0, None);
    let header = |alg: &str| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#))
    };
    let payload = forged.split('.').nth(1).unwrap().to_owned();
    let unsigned = format!("{}.{payload}.", header("none"));
    let rs256 = format!("{}.{payload}.c2lnbmF0dXJl", header("RS256"));
    let no_exp = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "alice"}),
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap();
    for (token, reason) in [
        (forged.as_str(), "bad signature"),
        (expired.as_str(), "token expired"),
        (unsigned.as_str(), "wrong algorithm"),
        (rs256.as_str(), "wrong algorithm"),
        (no_exp.as_str(), "without exp"),
        ("not-a-token", "malformed"),
    ] {
        let refusal = server.refused_upgrade(&format!("/?token={token}")).expect("refused");
        assert_eq!(status(&refusal), "401", "{reason}: {refusal}");
        let line = server.wait_for_log("upgrade refused");
        assert!(line.contains(reason), "{line}");
        assert!(!line.contains(token), "the token is in the log: {line}");
    }
    // Every refusal is counted for /metrics by its status; plain HTTP needs no token.
    let metrics = server.http(b"GET /metrics HTTP/1.1\r\n\r\n");
    assert!(metrics.contains("wschat_connections_refused_total{reason=\"401\"} 7"), "{metrics}");
    assert!(server.http(b"GET /healthz HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200"));
    assert!(server.http(b"GET / HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200"));
}

#[test]
fn a_token_names_its_member_and_holds_the_name() {
    let mut server = start("names", &["--auth", "optional"]);
    // A guest takes the name first; the signed-in alice takes it back.
    let (mut guest, _) = server.join("/?name=alice");
    let token = token_for("alice", 60, None);
    let (mut alice, welcome) = server.join(&format!("/?name=mallory&token={token}"));
    assert_eq!(welcome["name"], "alice", "the token's name, not the query's");
    let renamed = guest.recv_type("nick");
    assert!(renamed["name"].as_str().unwrap().starts_with("guest-"));
    assert_eq!(guest.recv_type("error")["code"], "name_taken");
    guest.send_json(json!({"type": "nick", "name": "alice"}));
    assert_eq!(guest.recv_type("error")["code"], "name_taken");
    alice.send_json(json!({"type": "nick", "name": "alicia", "id": "n1"}));
    let error = alice.recv_type("error");
    assert_eq!((&error["code"], &error["id"]), (&json!("forbidden"), &json!("n1")));

    // Without a token a client is a guest; a bad token is still refused.
    let (_, welcome) = server.join("/");
    assert!(welcome["name"].as_str().unwrap().starts_with("guest-"));
    assert_eq!(status(&server.refused_upgrade("/?token=garbage").unwrap()), "401");

    // The newest connection with a token for a name wins; the older one is closed with 4002.
    let (_, welcome) = server.join(&format!("/?token={token}"));
    assert_eq!(welcome["name"], "alice");
    assert_eq!(alice.expect_close().code, CloseCode::from(4002));
    let lines = server.drain_log();
    assert!(lines.iter().all(|line| !line.contains(&token)), "a token reached the log");
}

#[test]
fn a_token_with_rooms_keeps_its_member_to_them() {
    let server = start("rooms", &[]);
    let token = token_for("bob", 60, Some(&["rust", "go"]));
    let mut bob = Client::connect(&server, &format!("/?room=lobby&token={token}"));
    let welcome = bob.recv_json();
    assert_eq!(welcome["room"], "rust", "the lobby is not in the token: its first room");
    assert_eq!(bob.recv_json()["code"], "forbidden");
    bob.send_json(json!({"type": "join", "room": "go"}));
    assert_eq!(bob.recv_type("room")["room"], "go");
    bob.send_json(json!({"type": "join", "room": "elsewhere", "id": "j"}));
    let error = bob.recv_json();
    assert_eq!((&error["code"], &error["id"]), (&json!("forbidden"), &json!("j")));
    let none = token_for("carol", 60, Some(&[]));
    assert_eq!(status(&server.refused_upgrade(&format!("/?token={none}")).unwrap()), "403");
}

#[test]
fn a_token_that_runs_out_is_refreshed_or_the_connection_closes_with_4001() {
    let server = start("expiry", &[]);
    // Expires in 1-2 s (whole seconds); the refresh is due halfway there.
    let (mut alice, _) = server.join(&format!("/?token={}", token_for("alice", 2, None)));
    assert_eq!(alice.recv_json(), json!({"type": "refresh"}));
    alice.send_json(json!({"type": "auth", "token": token_for("alice", 3, None), "id": "a1"}));
    assert_eq!(alice.recv_json()["type"], "ack");
    // A fresh token for someone else is refused; the connection stays.
    alice.send_json(json!({"type": "auth", "token": token_for("mallory", 60, None)}));
    assert_eq!(alice.recv_json()["code"], "forbidden");
    alice.send_json(json!({"type": "auth", "token": "garbage"}));
    assert_eq!(alice.recv_json()["code"], "unauthorized");
    // The next refresh goes unanswered: at the new expiry the server closes with 4001.
    assert_eq!(alice.recv_json(), json!({"type": "refresh"}));
    let close = alice.expect_close();
    assert_eq!((close.code, close.reason.as_str()), (CloseCode::from(4001), "token expired"));
}

#[test]
fn wschat_token_prints_a_token_the_server_accepts() {
    let secret = secret_file("subcommand");
    let output = Command::new(env!("CARGO_BIN_EXE_wschat"))
        .args(["token", "--sub", "dora", "--ttl", "60", "--room", "lobby", "--secret-file"])
        .arg(&secret)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let token = String::from_utf8(output.stdout).unwrap();
    let server = Server::start(&["--auth-secret-file", secret.to_str().unwrap()]);
    let (_, welcome) = server.join(&format!("/?token={}", token.trim()));
    assert_eq!((&welcome["name"], &welcome["room"]), (&json!("dora"), &json!("lobby")));
}

#[test]
fn a_short_or_missing_secret_stops_the_server_at_start() {
    let short = std::env::temp_dir().join(format!("wschat-test-short-secret-{}", std::process::id()));
    std::fs::write(&short, "too short").unwrap();
    for path in [short, PathBuf::from("/nonexistent/secret")] {
        let output = Command::new(env!("CARGO_BIN_EXE_wschat"))
            .args(["--bind", "127.0.0.1:0", "--auth-secret-file"])
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{}", String::from_utf8_lossy(&output.stderr));
        assert!(String::from_utf8_lossy(&output.stderr).contains("--auth-secret-file"));
    }
}

#[test]
fn every_flag_can_come_from_the_environment() {
    let server = Server::start_with_env(&[("WSCHAT_MAX_CONNECTIONS", "1"), ("WSCHAT_HISTORY", "0")], &[]);
    let (_first, _) = server.join("/");
    assert_eq!(status(&server.refused_upgrade("/").unwrap()), "503");
    let help = Command::new(env!("CARGO_BIN_EXE_wschat")).arg("--help").output().unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    for variable in
        ["WSCHAT_BIND", "WSCHAT_MAX_CONNECTIONS", "WSCHAT_TRUSTED_PROXY", "WSCHAT_AUTH_SECRET_FILE"]
    {
        assert!(help.contains(variable), "--help does not name {variable}");
    }
}
