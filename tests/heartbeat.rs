//! Heartbeats and deadlines over real sockets: silent peers are pinged and dropped, talking peers
//! are left alone, slow handshakes and unfinished close handshakes are cut off, and an idle server
//! sleeps.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use common::{DEADLINE, RawClient, Server};
use tungstenite::Message;

/// Reads until the peer closes the connection; returns when it did.
fn wait_for_hang_up(stream: &mut TcpStream) -> Instant {
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut sink = [0u8; 1024];
    loop {
        match stream.read(&mut sink) {
            Ok(0) => return Instant::now(),
            Ok(_) => {}
            Err(error) if error.kind() == ErrorKind::ConnectionReset => return Instant::now(),
            Err(error) => panic!("the server did not hang up within {DEADLINE:?}: {error}"),
        }
    }
}

#[test]
fn silent_client_is_pinged_then_dropped_and_its_room_hears_left() {
    let server = Server::start(&["--ping-interval", "0.3", "--ping-timeout", "0.3"]);
    let (mut alice, _) = server.join("/?name=alice");
    let mut silent = RawClient::connect(&server, "/?name=silent");
    let connected = Instant::now();
    silent.read_frame(); // welcome
    alice.recv_type("joined");
    // Alice keeps reading (and so answering her own pings) while the silent client is timed out.
    let witness = thread::spawn(move || alice.recv_type("left"));

    // The raw client never answers: the server pings once, then gives up.
    let (opcode, _) = silent.read_frame();
    assert_eq!(opcode, 0x9, "a ping after the interval");
    let dropped = wait_for_hang_up(&mut silent.stream);
    let elapsed = dropped - connected;
    assert!(elapsed >= Duration::from_millis(600), "dropped before interval + timeout: {elapsed:?}");
    // Due at 0.6 s plus a 10 ms tick; the bound is loose so a loaded machine does not fail it.
    assert!(elapsed < Duration::from_secs(3), "dropped late: {elapsed:?}");

    let left = witness.join().unwrap();
    assert_eq!(left["user"]["name"], "silent");
}

#[test]
fn a_client_that_answers_pings_stays_connected_across_many_rounds() {
    let server = Server::start(&["--ping-interval", "0.1", "--ping-timeout", "0.2"]);
    let (mut bob, _) = server.join("/?name=bob");
    // tungstenite answers each ping while reading; count ten of them.
    let mut pings = 0;
    while pings < 10 {
        match bob.socket.read().expect("bob stays connected") {
            Message::Ping(_) => pings += 1,
            other => panic!("unexpected {other:?}"),
        }
        bob.socket.flush().unwrap(); // Send the pong now.
    }
    bob.assert_nothing_pending(); // Still connected: the application ping gets its pong.
}

#[test]
fn a_client_that_keeps_talking_is_never_pinged() {
    let server = Server::start(&["--ping-interval", "0.5", "--ping-timeout", "5"]);
    let mut talker = RawClient::connect(&server, "/");
    talker.read_frame(); // welcome
    // Talk every 100 ms for 1.5 s: three ping intervals, none of them silent.
    for _ in 0..15 {
        talker.send_frame(0x81, br#"{"type":"ping"}"#);
        let (opcode, payload) = talker.read_frame();
        assert_eq!((opcode, payload.as_slice()), (0x1, &br#"{"type":"pong"}"#[..]), "a ping frame came");
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_half_sent_upgrade_is_dropped_after_the_handshake_timeout() {
    let server = Server::start(&["--handshake-timeout", "0.3"]);
    let mut slow = TcpStream::connect(server.addr).unwrap();
    let started = Instant::now();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n").unwrap();
    let dropped = wait_for_hang_up(&mut slow);
    assert!(dropped - started >= Duration::from_millis(300), "dropped early: {:?}", dropped - started);
    // A connection that sends nothing at all is dropped too.
    let mut mute = TcpStream::connect(server.addr).unwrap();
    wait_for_hang_up(&mut mute);
}

#[test]
fn a_peer_that_never_answers_our_close_frame_is_dropped() {
    let server = Server::start(&["--close-timeout", "0.3"]);
    let mut raw = RawClient::connect(&server, "/");
    raw.read_frame();
    let sent = Instant::now();
    raw.send_frame(0x82, b"binary is refused"); // The server closes with 1003 and waits.
    assert_eq!(raw.read_close_code(), 1003);
    let dropped = wait_for_hang_up(&mut raw.stream);
    assert!(dropped - sent >= Duration::from_millis(300), "dropped early: {:?}", dropped - sent);
}

#[test]
fn two_hundred_idle_connections_cost_almost_no_cpu() {
    let server = Server::start(&["--ping-interval", "30"]);
    let clients: Vec<_> = (0..200).map(|_| RawClient::connect(&server, "/")).collect();
    let mut clients: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            client.read_frame();
            client
        })
        .collect();
    // Let the join notices settle: the last client hears nothing else; the first may still be
    // reading `joined` events, which is the clients' business, not the server's.
    let last = clients.last_mut().unwrap();
    last.send_frame(0x81, br#"{"type":"ping"}"#);
    assert_eq!(last.read_frame().1, br#"{"type":"pong"}"#);

    let before = server.cpu_ticks();
    thread::sleep(Duration::from_secs(3)); // The measurement window, not a wait for state.
    let spent = server.cpu_ticks() - before;
    // Clock ticks are 10 ms; an idle loop asleep in epoll_wait spends none.
    assert!(spent <= 2, "an idle server used {spent} clock ticks of CPU in 3 s");
}
