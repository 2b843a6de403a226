//! `GET /metrics` against the real binary: traffic of every kind the metrics count is driven
//! through real sockets, then the exposition is read by a real parser (the Python
//! `prometheus_client` package's, which `scripts/test.sh` installs; and `promtool check metrics`
//! where it is installed) and every value compared with what was driven.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpStream;
use std::process::{Command, Stdio};

use common::{Client, DEADLINE, Server};
use serde_json::{Value, json};
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;

const ORIGIN: &str = "https://chat.example";

/// Prints every family's type and every sample of the exposition on stdin as JSON, or fails if
/// the parser rejects any of it.
const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
families, samples = {}, {}
for family in text_string_to_metric_families(sys.stdin.read()):
    families[family.name] = family.type
    for sample in family.samples:
        labels = ",".join(f'{key}="{value}"' for key, value in sorted(sample.labels.items()))
        samples[sample.name + ("{" + labels + "}" if labels else "")] = sample.value
print(json.dumps({"families": families, "samples": samples}))
"#;

/// One scrape as the parser read it.
struct Scrape {
    /// Family name to type (`counter`, `gauge`, `histogram`).
    families: HashMap<String, String>,
    /// `name{label="value",...}` to value.
    samples: HashMap<String, f64>,
}

impl Scrape {
    fn value(&self, sample: &str) -> f64 {
        *self.samples.get(sample).unwrap_or_else(|| panic!("no sample {sample} in {:?}", self.samples.keys()))
    }

    /// Samples whose name starts with `prefix`.
    fn matching(&self, prefix: &str) -> Vec<(&str, f64)> {
        let mut found: Vec<_> = self
            .samples
            .iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .map(|(n, v)| (n.as_str(), *v))
            .collect();
        found.sort_by(|a, b| a.0.cmp(b.0));
        found
    }
}

fn get(server: &Server, path: &str) -> String {
    server.http(format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", server.addr).as_bytes())
}

/// Fetches `/metrics`, checks its head, and parses its body with the Python parser.
fn scrape(server: &Server) -> Scrape {
    let response = get(server, "/metrics");
    let (head, body) = response.split_once("\r\n\r\n").expect("a complete response");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"), "{head}");
    let mut python = Command::new("python3")
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs (scripts/test.sh installs its prometheus-client package)");
    python.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let output = python.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "the parser rejected the exposition: {}\n{body}",
        String::from_utf8_lossy(&output.stderr)
    );
    promtool_check(body);
    let parsed: Value = serde_json::from_slice(&output.stdout).unwrap();
    let families = parsed["families"].as_object().unwrap();
    let samples = parsed["samples"].as_object().unwrap();
    Scrape {
        families: families
            .iter()
            .map(|(name, kind)| (name.clone(), kind.as_str().unwrap().to_owned()))
            .collect(),
        samples: samples.iter().map(|(name, value)| (name.clone(), value.as_f64().unwrap())).collect(),
    }
}

/// Where Prometheus's own `promtool` is installed (Debian's `prometheus` package; optional,
/// as the package is large), its `check metrics` must accept the exposition too, lints included.
fn promtool_check(body: &str) {
    let Ok(mut promtool) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        eprintln!("promtool is not installed: `promtool check metrics` skipped");
        return;
    };
    promtool.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let output = promtool.wait_with_output().unwrap();
    let said =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success() && said.trim().is_empty(), "promtool check metrics: {said}\n{body}");
}

/// The status an upgrade from `origin` is answered with; the client, if it got a 101.
fn upgrade(server: &Server, origin: &str, target: &str) -> (u16, Option<Client>) {
    let mut request = server.url(target).into_client_request().unwrap();
    request.headers_mut().insert("Origin", origin.parse().unwrap());
    let stream = TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    match tungstenite::client(request, stream) {
        Ok((socket, response)) => (response.status().as_u16(), Some(Client { socket })),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
            (response.status().as_u16(), None)
        }
        Err(error) => panic!("handshake: {error}"),
    }
}

fn join(server: &Server, target: &str) -> Client {
    let (status, client) = upgrade(server, ORIGIN, target);
    assert_eq!(status, 101);
    let mut client = client.unwrap();
    assert_eq!(client.recv_json()["type"], "welcome");
    client
}

#[test]
fn metrics_parse_and_count_what_was_driven() {
    let mut server = Server::start(&[
        "--origin",
        ORIGIN,
        "--max-connections",
        "2",
        // One token, refilled every two seconds: of three frames sent at once, two are dropped.
        "--rate-limit",
        "0.5",
        "--max-message-bytes",
        "1024",
    ]);
    let mut alice = join(&server, "/?name=alice");
    let mut bob = join(&server, "/?name=bob");
    assert_eq!(alice.recv_json()["type"], "joined");

    // Three messages at once; each is acknowledged or refused by its id, so alice knows which.
    for id in ["m1", "m2", "m3"] {
        alice.send_json(json!({"type": "message", "id": id, "text": id}));
    }
    let replies: Vec<Value> = (0..3).map(|_| alice.recv_json()).collect();
    let acked = replies.iter().filter(|reply| reply["type"] == "ack").count();
    let limited = replies.iter().filter(|reply| reply["code"] == "rate_limited").count();
    assert_eq!(acked + limited, 3, "{replies:?}");
    assert!(acked >= 1 && limited >= 1, "the burst is one frame: {replies:?}");
    for _ in 0..acked {
        assert_eq!(bob.recv_json()["type"], "message");
    }

    // Refusals: a bad origin, one upgrade over capacity, something that is not HTTP. Pages
    // (a 200 and a 404) are not refusals.
    assert_eq!(upgrade(&server, "https://evil.example", "/").0, 403);
    assert_eq!(upgrade(&server, ORIGIN, "/").0, 503);
    assert!(server.http(b"hello\r\n\r\n").starts_with("HTTP/1.1 400"));
    assert!(get(&server, "/nowhere").starts_with("HTTP/1.1 404"));
    assert!(get(&server, "/healthz").starts_with("HTTP/1.1 200"));

    // Bob sends a message over --max-message-bytes and is closed with 1009; alice hears him go.
    bob.send_text(&"x".repeat(2000));
    assert_eq!(u16::from(bob.expect_close().code), 1009);
    assert_eq!(alice.recv_type("left")["user"]["name"], "bob");

    let first = scrape(&server);
    let stats: Value =
        serde_json::from_str(get(&server, "/stats").split_once("\r\n\r\n").unwrap().1).unwrap();
    for (family, kind) in [
        ("wschat_connections_open", "gauge"),
        ("wschat_connections_accepted", "counter"),
        ("wschat_connections_refused", "counter"),
        ("wschat_messages_received", "counter"),
        ("wschat_messages_sent", "counter"),
        ("wschat_received_bytes", "counter"),
        ("wschat_sent_bytes", "counter"),
        ("wschat_slow_readers_dropped", "counter"),
        ("wschat_rate_limited_frames", "counter"),
        ("wschat_close_codes_sent", "counter"),
        ("wschat_rooms", "gauge"),
        ("wschat_rooms_without_members", "gauge"),
        ("wschat_history_bytes", "gauge"),
        ("wschat_loop_iteration_seconds", "histogram"),
        ("wschat_flush_round_seconds", "histogram"),
        ("wschat_uptime_seconds", "gauge"),
        ("wschat_start_time_seconds", "gauge"),
    ] {
        assert_eq!(
            first.families.get(family).map(String::as_str),
            Some(kind),
            "{family}: {:?}",
            first.families
        );
    }
    assert_eq!(first.value("wschat_connections_open"), 1.0);
    assert_eq!(first.value("wschat_connections_accepted_total"), 2.0);
    assert_eq!(
        first.matching("wschat_connections_refused_total"),
        [
            ("wschat_connections_refused_total{reason=\"400\"}", 1.0),
            ("wschat_connections_refused_total{reason=\"403\"}", 1.0),
            ("wschat_connections_refused_total{reason=\"503\"}", 1.0),
        ]
    );
    // The frames over the rate limit were received too; bob's oversized one never was.
    assert_eq!(first.value("wschat_messages_received_total"), 3.0);
    // Two welcomes, one `joined`, a message to bob and an ack to alice for each acked, an error
    // for each limited, one `left`.
    assert_eq!(first.value("wschat_messages_sent_total"), (4 + 2 * acked + limited) as f64);
    assert_eq!(first.value("wschat_rate_limited_frames_total"), limited as f64);
    assert_eq!(first.value("wschat_slow_readers_dropped_total"), 0.0);
    assert_eq!(first.value("wschat_received_bytes_total"), stats["bytes_in"].as_f64().unwrap());
    assert_eq!(first.value("wschat_sent_bytes_total"), stats["bytes_out"].as_f64().unwrap());
    // Apart from bob's oversized frame (2,008 bytes on the wire, read wholly or in part before he
    // was refused: the server reads what the kernel has, then tungstenite judges the frame), the
    // server sent more than it received: two welcomes with member lists against a few requests.
    let bobs_frame = 2008.0;
    assert!(first.value("wschat_sent_bytes_total") + bobs_frame > first.value("wschat_received_bytes_total"));
    assert_eq!(
        first.matching("wschat_close_codes_sent_total"),
        [("wschat_close_codes_sent_total{code=\"1009\"}", 1.0)]
    );
    assert_eq!(first.value("wschat_rooms"), 1.0);
    assert_eq!(first.value("wschat_rooms_without_members"), 0.0);
    assert_eq!(first.value("wschat_history_bytes"), stats["history_bytes"].as_f64().unwrap());
    assert!(first.value("wschat_history_bytes") > 0.0, "alice's acked messages are kept");
    for histogram in ["wschat_loop_iteration_seconds", "wschat_flush_round_seconds"] {
        let count = first.value(&format!("{histogram}_count"));
        assert!(count >= 1.0, "{histogram} observed nothing");
        assert_eq!(first.value(&format!("{histogram}_bucket{{le=\"+Inf\"}}")), count);
        assert!(first.value(&format!("{histogram}_sum")) > 0.0);
        let buckets = first.matching(&format!("{histogram}_bucket"));
        assert_eq!(buckets.len(), 15, "{buckets:?}");
    }
    let unix_now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let started = first.value("wschat_start_time_seconds");
    assert!(started <= unix_now && started > unix_now - 60.0, "started at {started}, now {unix_now}");

    // Alice closes with 1000; the server's reply echoes it, and she is no longer open.
    alice.close_and_wait(Some(CloseFrame { code: CloseCode::Normal, reason: "".into() }));
    let second = scrape(&server);
    assert_eq!(second.value("wschat_connections_open"), 0.0);
    assert_eq!(
        second.matching("wschat_close_codes_sent_total"),
        [
            ("wschat_close_codes_sent_total{code=\"1000\"}", 1.0),
            ("wschat_close_codes_sent_total{code=\"1009\"}", 1.0)
        ]
    );
    assert_eq!(second.value("wschat_rooms"), 0.0);
    assert_eq!(second.value("wschat_rooms_without_members"), 1.0);
    assert!(
        second.value("wschat_loop_iteration_seconds_count")
            > first.value("wschat_loop_iteration_seconds_count")
    );
    // Since the first scrape: alice's close frame in (2 bytes of header, 4 of mask, 2 of code),
    // the reply out (2 and 2). Scrapes are plain GETs, neither refused nor WebSocket traffic.
    let grew = |sample: &str| second.value(sample) - first.value(sample);
    assert_eq!(grew("wschat_received_bytes_total"), 8.0);
    assert_eq!(grew("wschat_sent_bytes_total"), 4.0);
    assert_eq!(
        second.matching("wschat_connections_refused_total"),
        first.matching("wschat_connections_refused_total")
    );
    assert!(server.is_running());
}
