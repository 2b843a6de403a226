//! Hardening over real sockets: slow readers, floods, shutdown signals and running out of file
//! descriptors must not hurt the other clients or the server.

mod common;

use std::collections::HashSet;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::{Client, DEADLINE, RawClient, Server, masked_frame};
use serde_json::json;
use tungstenite::Message;
use tungstenite::protocol::frame::coding::CloseCode;

#[test]
fn a_client_that_never_reads_is_dropped_and_nobody_else_misses_a_message() {
    const MESSAGES: usize = 3_000;
    let mut server = Server::start(&["--log-level", "info"]);
    let (mut publisher, _) = server.join("/?name=publisher");
    let (mut healthy, _) = server.join("/?name=healthy");
    // The lazy client completes its handshake and then never reads another byte.
    let mut lazy = RawClient::connect(&server, "/?name=lazy");
    publisher.recv_type("joined");
    publisher.recv_type("joined");
    healthy.recv_type("joined");
    let rss_before = server.rss_kib();

    let reader = thread::spawn(move || {
        let mut received = 0;
        let mut lazy_left = false;
        while received < MESSAGES || !lazy_left {
            let event = healthy.recv_json();
            match event["type"].as_str() {
                Some("message") => {
                    let text = event["text"].as_str().unwrap();
                    let sequence: usize = text.split(' ').next().unwrap().parse().unwrap();
                    assert_eq!(sequence, received, "messages arrive once each, in order");
                    received += 1;
                }
                Some("left") => {
                    assert_eq!(event["user"]["name"], "lazy");
                    lazy_left = true;
                }
                _ => panic!("unexpected {event}"),
            }
        }
        received
    });
    // A fast stream (about 40 MB/s), but not one 12 MB burst: a reader that takes a burst
    // more slowly than the server reads it needs the burst's size in buffers, and gets no more
    // than its kernel socket buffer and `--max-send-buffer`.
    let padding = "x".repeat(4_000);
    for sequence in 0..MESSAGES {
        publisher.socket.write(Message::text(format!("{sequence} {padding}"))).unwrap();
        if sequence % 50 == 49 {
            publisher.socket.flush().unwrap();
            thread::sleep(Duration::from_millis(5)); // Pacing the publisher's sends.
        }
    }
    publisher.socket.flush().unwrap();
    assert_eq!(reader.join().unwrap(), MESSAGES);

    server.wait_for_log("send buffer full");
    let rss_growth_mib = server.rss_kib().saturating_sub(rss_before) / 1024;
    assert!(rss_growth_mib < 32, "server memory grew by {rss_growth_mib} MiB for a 12 MB stream");
    // The lazy client was reset: reading what its buffers still hold ends in the reset.
    lazy.stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut sink = vec![0u8; 1 << 16];
    loop {
        match lazy.stream.read(&mut sink) {
            Ok(0) => break,
            Ok(_) => {}
            Err(error) if error.kind() == ErrorKind::ConnectionReset => break,
            Err(error) => panic!("the lazy client was not disconnected: {error}"),
        }
    }
    let stats = server.stats();
    assert_eq!(stats["slow_consumers_dropped"], 1);
}

#[test]
fn a_client_that_floods_pings_and_never_reads_the_pongs_is_dropped_as_a_slow_reader() {
    let mut server = Server::start(&["--max-message-bytes", "1000", "--max-send-buffer", "8192"]);
    let mut flooder = RawClient::connect_with_receive_buffer(&server, "/?name=flooder", 4096);
    let (mut witness, _) = server.join("/?name=witness");
    let ping = masked_frame(0x89, &[7; 125]);
    // Each ping earns a 127-byte pong that the flooder never reads. The server must give up on
    // it long before 100,000 of them (12.7 MB); then the writes fail.
    for _ in 0..100_000 {
        if flooder.stream.write_all(&ping).is_err() {
            break;
        }
    }
    server.wait_for_log("send buffer full");
    assert_eq!(witness.recv_type("left")["user"]["name"], "flooder");
    let stats = server.stats();
    assert_eq!(stats["slow_consumers_dropped"], 1);
}

#[test]
fn the_rate_limit_drops_a_flood_and_says_so() {
    let server = Server::start(&["--rate-limit", "10"]);
    let (mut sender, _) = server.join("/?name=sender");
    let (mut receiver, _) = server.join("/?name=receiver");
    sender.recv_type("joined");
    // 200 messages in one write: far over 10 per second.
    for index in 0..200 {
        sender.socket.write(Message::text(format!("flood {index}"))).unwrap();
    }
    sender.socket.flush().unwrap();
    // Every frame is either delivered to the receiver or answered with an error to the sender.
    let short = Some(Duration::from_millis(20));
    sender.socket.get_mut().set_read_timeout(short).unwrap();
    receiver.socket.get_mut().set_read_timeout(short).unwrap();
    let (mut delivered, mut limited) = (0, 0);
    let give_up = Instant::now() + DEADLINE;
    while delivered + limited < 200 {
        assert!(Instant::now() < give_up, "only {delivered} delivered and {limited} refused");
        if let Ok(Message::Text(text)) = sender.socket.read() {
            let event: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(event["code"], "rate_limited", "{event}");
            limited += 1;
        }
        if let Ok(Message::Text(text)) = receiver.socket.read() {
            let event: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(event["type"], "message");
            delivered += 1;
        }
    }
    assert!((18..=25).contains(&delivered), "about 20 (a burst of twice the rate) get through: {delivered}");
}

#[test]
fn sigterm_closes_every_client_with_1001_and_exits_zero() {
    let mut server = Server::start(&[]);
    let mut clients: Vec<Client> = (0..20).map(|index| server.join(&format!("/?name=c{index}")).0).collect();
    clients[19].assert_nothing_pending(); // Every handshake has been handled.
    server.signal("TERM");
    for client in &mut clients {
        let frame = client.expect_close();
        assert_eq!(frame.code, CloseCode::Away);
        // Reading on sends our reply and completes the close handshake.
        while client.socket.read().is_ok() {}
    }
    let status = server.wait_for_exit(DEADLINE);
    assert!(status.success(), "exit status {status}");
    // The listener is closed: nobody new gets in.
    assert!(TcpStream::connect(server.addr).is_err());
}

#[test]
fn a_second_signal_exits_at_once() {
    let mut server = Server::start(&["--shutdown-timeout", "60", "--close-timeout", "60"]);
    // A raw client never answers the close frame, so the graceful shutdown would take a minute.
    let mut raw = RawClient::connect(&server, "/");
    raw.read_frame();
    server.signal("TERM");
    assert_eq!(raw.read_close_code(), 1001);
    server.wait_for_log("shutting down");
    server.signal("INT");
    server.wait_for_exit(DEADLINE);
}

#[test]
fn running_out_of_file_descriptors_neither_spins_nor_stalls() {
    let server = Server::start_with_file_limit(64, &[]);
    let (mut alice, _) = server.join("/?name=alice");
    // 120 connection attempts against a limit of 64 descriptors: some are held, the rest are
    // accepted with the spare descriptor, answered 503 and closed.
    let attempts: Vec<TcpStream> = (0..120).filter_map(|_| TcpStream::connect(server.addr).ok()).collect();
    alice.assert_nothing_pending();
    let before = server.cpu_ticks();
    // While out of descriptors, keep knocking: each attempt is shed, not spun on.
    let window = Instant::now() + Duration::from_secs(2);
    let mut refused = 0;
    while Instant::now() < window {
        let mut knock = TcpStream::connect(server.addr).unwrap();
        knock.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut response = String::new();
        let _ = knock.read_to_string(&mut response);
        assert!(response.is_empty() || response.starts_with("HTTP/1.1 503"), "{response}");
        refused += 1;
        thread::sleep(Duration::from_millis(50)); // Pacing the knocks, not waiting for state.
    }
    let spent = server.cpu_ticks() - before;
    assert!(spent <= 20, "{spent} clock ticks of CPU in 2 s while out of descriptors ({refused} knocks)");
    // Free the held descriptors: the server recovers by itself.
    drop(attempts);
    alice.assert_nothing_pending();
    let mut bob = server.join_until_admitted("/?name=bob");
    alice.recv_type("joined");
    bob.send_json(json!({"type": "message", "text": "back in business"}));
    assert_eq!(alice.recv_type("message")["text"], "back in business");
}

/// The bytes the kernel holds in the send queues of the server's sockets to `peers` (sent and
/// not acknowledged, or not sent yet), from `/proc/net/tcp`, and how many of those sockets exist.
fn kernel_send_queues(server_port: u16, peers: &HashSet<u16>) -> (u64, usize) {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let (mut bytes, mut sockets) = (0, 0);
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let port = |address: &str| u16::from_str_radix(address.rsplit(':').next().unwrap(), 16).unwrap();
        if port(fields[1]) == server_port && peers.contains(&port(fields[2])) {
            sockets += 1;
            bytes += u64::from_str_radix(fields[4].split(':').next().unwrap(), 16).unwrap();
        }
    }
    (bytes, sockets)
}

/// The kernel's TCP memory, all sockets of the machine, in pages (`/proc/net/sockstat`).
fn kernel_tcp_pages() -> u64 {
    let sockstat = std::fs::read_to_string("/proc/net/sockstat").unwrap();
    let line = sockstat.lines().find(|line| line.starts_with("TCP:")).unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    let at = fields.iter().position(|field| *field == "mem").unwrap();
    fields[at + 1].parse().unwrap()
}

#[test]
fn readers_that_never_read_are_reset_at_once_and_pin_little_kernel_memory() {
    const LAZY: usize = 200;
    const MESSAGES: usize = 400;
    /// The default `--socket-send-buffer`; Linux reserves twice it per socket.
    const SOCKET_SEND_BUFFER: u64 = 64 * 1024;
    let mut server = Server::start(&["--max-send-buffer", "262144", "--log-level", "info"]);
    let (mut publisher, _) = server.join("/?name=publisher&room=stream");
    let (mut healthy, _) = server.join("/?name=healthy&room=stream");
    publisher.recv_type("joined");
    let lazy: Vec<RawClient> = (0..LAZY)
        .map(|index| {
            RawClient::connect_with_receive_buffer(&server, &format!("/?name=lazy{index}&room=stream"), 4096)
        })
        .collect();
    let lazy_ports: HashSet<u16> =
        lazy.iter().map(|client| client.stream.local_addr().unwrap().port()).collect();
    for _ in 0..LAZY {
        publisher.recv_type("joined");
    }
    let pages_before = kernel_tcp_pages();

    // Sample the kernel's send queues for the lazy readers while the stream runs.
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (sampling, ports, port) = (Arc::clone(&sampling), lazy_ports.clone(), server.addr.port());
        thread::spawn(move || {
            let (mut most_bytes, mut most_pages) = (0, 0);
            while sampling.load(Ordering::Relaxed) {
                most_bytes = most_bytes.max(kernel_send_queues(port, &ports).0);
                most_pages = most_pages.max(kernel_tcp_pages());
                thread::sleep(Duration::from_millis(5)); // The sampling period.
            }
            (most_bytes, most_pages)
        })
    };
    let reader = thread::spawn(move || {
        let (mut received, mut cut_off) = (0, 0);
        while received < MESSAGES || cut_off < LAZY {
            let event = healthy.recv_json();
            match event["type"].as_str() {
                Some("message") => {
                    let text = event["text"].as_str().unwrap();
                    assert_eq!(
                        text.split(' ').next(),
                        Some(received.to_string().as_str()),
                        "in order, once each"
                    );
                    received += 1;
                }
                Some("left") => {
                    assert!(event["user"]["name"].as_str().unwrap().starts_with("lazy"));
                    cut_off += 1;
                }
                Some("joined") => {}
                _ => panic!("unexpected {event}"),
            }
        }
        (received, Instant::now())
    });
    let padding = "x".repeat(4_000);
    for sequence in 0..MESSAGES {
        publisher.send_text(&format!("{sequence} {padding}"));
        thread::sleep(Duration::from_millis(2)); // A steady stream, not one burst.
    }
    let (received, last_cut_off) = reader.join().unwrap();
    assert_eq!(received, MESSAGES);

    // Every lazy reader's socket is gone from the server within a second of the last cut-off.
    let mut remaining = kernel_send_queues(server.addr.port(), &lazy_ports).1;
    while remaining > 0 {
        assert!(
            last_cut_off.elapsed() < Duration::from_secs(1),
            "{remaining} sockets still held after a second"
        );
        thread::sleep(Duration::from_millis(10)); // Polling the kernel's table; there is no event.
        remaining = kernel_send_queues(server.addr.port(), &lazy_ports).1;
    }
    sampling.store(false, Ordering::Relaxed);
    let (most_bytes, most_pages) = sampler.join().unwrap();
    let bound = LAZY as u64 * 2 * SOCKET_SEND_BUFFER;
    eprintln!(
        "{LAZY} lazy readers: at most {most_bytes} bytes in their kernel send queues (bound {bound}); \
         machine TCP memory {pages_before} pages before, at most {most_pages} during"
    );
    assert!(most_bytes <= bound, "{most_bytes} bytes in the kernel for {LAZY} lazy readers, over {bound}");
    assert_eq!(server.stats()["slow_consumers_dropped"], LAZY);
    server.wait_for_log("send buffer full");
    drop(lazy);
}
