//! Several wschat processes sharing rooms through a real Redis, end to end over real sockets:
//! one order and one gap-free sequence per room across nodes, names unique across the cluster,
//! members, history, resuming and DMs seen from every node, nodes that stop or die, and Redis
//! itself killed, paused, restarted empty or dropping the nodes' subscriptions.
//!
//! Each test starts its own `redis-server` (scripts/test.sh installs Debian's) on a free loopback
//! port, so tests run in parallel; each also names its cluster with its own `--redis-prefix`.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use common::redis::RedisServer;
use common::{Client, DEADLINE, Server, free_loopback_port};
use serde_json::{Value, json};
use tungstenite::Message;

/// How long a node may take to notice Redis is gone or back: its reconnection backoff grows to
/// about 5 s, and a paused Redis is only noticed when a reply is overdue.
const RECOVERY: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Behaviour across nodes
// ---------------------------------------------------------------------------------------------

#[test]
fn two_senders_on_two_nodes_are_seen_by_everyone_once_in_one_order_with_gap_free_seqs() {
    const EACH: usize = 100;
    let redis = RedisServer::start();
    let a = start_node(&redis, "order", "a", &[]);
    let b = start_node(&redis, "order", "b", &[]);
    let (mut sender_a, sender_a_welcome) = a.join("/?name=sender-a&room=order");
    let (mut reader_a, _) = a.join("/?name=reader-a&room=order");
    let (mut sender_b, sender_b_welcome) = b.join("/?name=sender-b&room=order");
    let (reader_b, _) = b.join("/?name=reader-b&room=order");
    // Everyone has heard of everyone who came after them, wherever they are: the room is whole.
    for (client, later) in [
        (&mut sender_a, &["reader-a", "sender-b", "reader-b"][..]),
        (&mut reader_a, &["sender-b", "reader-b"][..]),
        (&mut sender_b, &["reader-b"][..]),
    ] {
        for name in later {
            assert_eq!(client.recv_type("joined")["user"]["name"], *name);
        }
    }

    let ((heard_on_a, heard_on_b), ((acks_a, heard_by_a), (acks_b, heard_by_b))) = at_once(
        || at_once(|| read_messages(reader_a, 2 * EACH), || read_messages(reader_b, 2 * EACH)),
        || at_once(|| send_and_listen(sender_a, "a", EACH), || send_and_listen(sender_b, "b", EACH)),
    );

    // Every member on every node saw the same events (the very same JSON) in the same order.
    assert_eq!(heard_on_a.events, heard_on_b.events, "reader-a (node a) and reader-b (node b) disagree");
    let seqs: Vec<u64> = heard_on_a.events.iter().map(seq).collect();
    assert_eq!(seqs, (1..=2 * EACH as u64).collect::<Vec<_>>(), "one gap-free sequence for the room");
    for (tag, welcome, acks, heard_by_sender) in
        [("a", &sender_a_welcome, &acks_a, &heard_by_a), ("b", &sender_b_welcome, &acks_b, &heard_by_b)]
    {
        let (own, others): (Vec<&Value>, Vec<&Value>) =
            heard_on_a.events.iter().partition(|event| event["from"]["id"] == welcome["id"]);
        // A sender's messages keep the order it sent them in, each acked with its place.
        let texts: Vec<&str> = own.iter().map(|event| event["text"].as_str().unwrap()).collect();
        assert_eq!(texts, (0..EACH).map(|index| format!("{tag} {index}")).collect::<Vec<_>>());
        for (index, event) in own.iter().enumerate() {
            let ack = &acks[&format!("{tag}-{index}")];
            assert_eq!((&ack["seq"], &ack["ts"]), (&event["seq"], &event["ts"]), "ack of {event}");
        }
        // The sender heard everyone else's messages in the room's order, and none of its own.
        let heard: Vec<&Value> = heard_by_sender.events.iter().collect();
        assert_eq!(heard, others, "what sender-{tag} heard");
    }
    // All four held until the end: a client dropped early would show up as a `left`.
    let mut clients = [heard_on_a.client, heard_on_b.client, heard_by_a.client, heard_by_b.client];
    for client in &mut clients {
        client.assert_nothing_pending();
    }
}

#[test]
fn two_clients_racing_for_a_name_on_two_nodes_one_gets_it_and_the_other_a_guest_name() {
    let redis = RedisServer::start();
    let a = start_node(&redis, "name-race", "a", &[]);
    let b = start_node(&redis, "name-race", "b", &[]);
    let (a_addr, b_addr) = (a.addr, b.addr);
    for round in 0..5 {
        let name = format!("racer{round}");
        // A room for each client, so that the only event after a welcome can be a name_taken error
        // (not, say, the previous round's clients leaving).
        let ((mut on_a, on_a_welcome), (mut on_b, on_b_welcome)) = at_once(
            || join_at(a_addr, &format!("/?name={name}&room=race-a-{round}")),
            || join_at(b_addr, &format!("/?name={name}&room=race-b-{round}")),
        );
        assert_ne!(on_a_welcome["id"], on_b_welcome["id"], "ids are unique across the cluster");
        let winners =
            [&on_a_welcome, &on_b_welcome].iter().filter(|welcome| welcome["name"] == *name).count();
        assert_eq!(winners, 1, "round {round}: exactly one gets {name}: {on_a_welcome} {on_b_welcome}");
        let (winner, loser, loser_welcome) = if on_a_welcome["name"] == *name {
            (&mut on_a, &mut on_b, &on_b_welcome)
        } else {
            (&mut on_b, &mut on_a, &on_a_welcome)
        };
        assert!(is_guest_name(&loser_welcome["name"]), "the other is a guest: {loser_welcome}");
        assert_eq!(loser.recv_json()["code"], "name_taken");
        loser.assert_nothing_pending();
        winner.assert_nothing_pending();
        // The name stays held on both nodes while its holder is connected.
        for (index, node) in [&a, &b].into_iter().enumerate() {
            let (mut third, welcome) = node.join(&format!("/?name={name}&room=race-c-{round}-{index}"));
            assert!(is_guest_name(&welcome["name"]), "{welcome}");
            assert_eq!(third.recv_json()["code"], "name_taken");
        }
    }
}

#[test]
fn two_nicks_racing_for_a_name_on_two_nodes_have_one_winner() {
    let redis = RedisServer::start();
    let a = start_node(&redis, "nick-race", "a", &[]);
    let b = start_node(&redis, "nick-race", "b", &[]);
    for round in 0..5 {
        let name = format!("nick{round}");
        // A room for each, so that the only answer to a nick is the sender's own.
        let (on_a, on_a_welcome) = a.join(&format!("/?room=nick-a-{round}"));
        let (on_b, on_b_welcome) = b.join(&format!("/?room=nick-b-{round}"));
        let nick_to = |mut client: Client| {
            client.send_json(json!({"type": "nick", "name": name, "id": "n"}));
            let answer = client.recv_json();
            (client, answer)
        };
        let ((mut on_a, a_answer), (mut on_b, b_answer)) = at_once(|| nick_to(on_a), || nick_to(on_b));
        let renamed = |answer: &Value, welcome: &Value| {
            *answer == json!({"type": "nick", "id": welcome["id"], "old": welcome["name"], "name": name})
        };
        let refused = |answer: &Value| answer["type"] == "error" && answer["code"] == "name_taken";
        let (a_won, b_won) = (renamed(&a_answer, &on_a_welcome), renamed(&b_answer, &on_b_welcome));
        assert!(a_won ^ b_won, "round {round}: exactly one rename: {a_answer} {b_answer}");
        let loser_answer = if a_won { &b_answer } else { &a_answer };
        assert!(refused(loser_answer), "the other is refused: {loser_answer}");
        assert_eq!(loser_answer["id"], "n");
        on_a.assert_nothing_pending();
        on_b.assert_nothing_pending();
    }
}

#[test]
fn member_ids_are_unique_across_the_cluster() {
    const EACH: usize = 15;
    let redis = RedisServer::start();
    // Default node ids, as deploy/wschat@.service's identical instances have.
    let a = start_node(&redis, "ids", "", &[]);
    let b = start_node(&redis, "ids", "", &[]);
    let (a_addr, b_addr) = (a.addr, b.addr);
    // Each client in a room of its own: only the ids matter here, not N² joined events.
    let connect_many = |addr: SocketAddr, node: &str| -> Vec<(Client, Value)> {
        (0..EACH).map(|index| join_at(addr, &format!("/?room=ids-{node}-{index}"))).collect()
    };
    let (on_a, on_b) = at_once(|| connect_many(a_addr, "a"), || connect_many(b_addr, "b"));
    let welcomes: Vec<&Value> = on_a.iter().chain(&on_b).map(|(_, welcome)| welcome).collect();
    let ids: HashSet<String> = welcomes.iter().map(|welcome| welcome["id"].to_string()).collect();
    let names: HashSet<&str> = welcomes.iter().map(|welcome| welcome["name"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 2 * EACH, "ids handed out at once on two nodes: {welcomes:?}");
    assert_eq!(names.len(), 2 * EACH, "guest names too: {names:?}");
}

#[test]
fn members_joins_leaves_nicks_and_who_span_the_nodes() {
    let redis = RedisServer::start();
    let a = start_node(&redis, "members", "a", &[]);
    let b = start_node(&redis, "members", "b", &[]);
    let (mut alice, alice_welcome) = a.join("/?name=alice&room=r");
    let alice_user = user(&alice_welcome);
    let (mut bob, bob_welcome) = b.join("/?name=bob&room=r");
    let bob_user = user(&bob_welcome);
    assert_eq!(bob_welcome["users"], json!([alice_user, bob_user]), "members of both nodes, in order");
    assert_eq!(alice.recv_json(), json!({"type": "joined", "room": "r", "user": bob_user}));

    let (mut carol, carol_welcome) = a.join("/?name=carol&room=r");
    let carol_user = user(&carol_welcome);
    assert_eq!(carol_welcome["users"], json!([alice_user, bob_user, carol_user]));
    let joined = json!({"type": "joined", "room": "r", "user": carol_user});
    assert_eq!((alice.recv_json(), bob.recv_json()), (joined.clone(), joined));
    for client in [&mut alice, &mut bob, &mut carol] {
        client.send_json(json!({"type": "who"}));
        let users = json!({"type": "users", "room": "r", "users": [alice_user, bob_user, carol_user]});
        assert_eq!(client.recv_json(), users);
    }

    // A rename on node b reaches the room on node a, and its sender.
    bob.send_json(json!({"type": "nick", "name": "robert"}));
    let nick = json!({"type": "nick", "id": bob_user["id"], "old": "bob", "name": "robert"});
    assert_eq!((bob.recv_json(), alice.recv_json(), carol.recv_json()), (nick.clone(), nick.clone(), nick));
    let robert_user = json!({"id": bob_user["id"], "name": "robert"});

    // Carol moves to a room of her own; dave, on node b, follows her there.
    carol.send_json(json!({"type": "join", "room": "elsewhere"}));
    let room = carol.recv_type("room");
    assert_eq!((&room["room"], &room["users"]), (&json!("elsewhere"), &json!([carol_user])));
    let left = json!({"type": "left", "room": "r", "user": carol_user});
    assert_eq!((alice.recv_json(), bob.recv_json()), (left.clone(), left));
    let (mut dave, dave_welcome) = b.join("/?name=dave&room=lobby");
    let dave_user = user(&dave_welcome);
    dave.send_json(json!({"type": "join", "room": "elsewhere"}));
    let room = dave.recv_type("room");
    assert_eq!(room["users"], json!([carol_user, dave_user]), "room.users spans the nodes");
    assert_eq!(carol.recv_json(), json!({"type": "joined", "room": "elsewhere", "user": dave_user}));

    // Robert's socket goes away on node b; alice, on node a, hears it under his current name.
    drop(bob);
    assert_eq!(alice.recv_json(), json!({"type": "left", "room": "r", "user": robert_user}));
    alice.send_json(json!({"type": "who"}));
    assert_eq!(alice.recv_json(), json!({"type": "users", "room": "r", "users": [alice_user]}));
    for client in [&mut alice, &mut carol, &mut dave] {
        client.assert_nothing_pending();
    }
}

#[test]
fn history_and_resuming_are_shared_across_nodes() {
    let redis = RedisServer::start();
    let a = start_node(&redis, "history", "a", &[]);
    let b = start_node(&redis, "history", "b", &[]);
    let (mut alice, alice_welcome) = a.join("/?name=alice&room=h");
    let epoch = alice_welcome["epoch"].as_str().unwrap().to_owned();
    let (mut witness, _) = a.join("/?name=witness&room=h");
    alice.recv_type("joined");
    for (index, text) in ["one", "two", "three"].into_iter().enumerate() {
        alice.send_json(json!({"type": "message", "text": text, "id": format!("h-{index}")}));
        assert_eq!(alice.recv_type("ack")["seq"], index + 1);
    }
    let seen: Vec<Value> = (0..3).map(|_| witness.recv_type("message")).collect();

    // A newcomer on node b gets node a's messages, exactly as node a's members received them.
    let (mut newcomer, welcome) = b.join("/?name=newcomer&room=h");
    assert_eq!((&welcome["epoch"], &welcome["seq"]), (&json!(epoch), &json!(3)));
    assert_eq!(welcome["history"], json!(seen));
    // Resuming on node b from what was seen on node a: exactly the messages after `since`.
    let resume = |since: u64| b.join(&format!("/?room=h&since={since}&epoch={epoch}")).1;
    let resumed = resume(1);
    assert_eq!((&resumed["recovered"], &resumed["history"]), (&json!(true), &json!(seen[1..])));
    let resumed = resume(3);
    assert_eq!((&resumed["recovered"], &resumed["history"]), (&json!(true), &json!([])));
    let (_, elsewhere) = b.join("/?room=h&since=1&epoch=elsewhere");
    assert_eq!((&elsewhere["recovered"], &elsewhere["epoch"]), (&json!(false), &json!(epoch)));
    // And with `join`, from another room on node b.
    let (mut visitor, _) = b.join("/?name=visitor&room=other");
    visitor.send_json(json!({"type": "join", "room": "h", "since": 2, "epoch": epoch}));
    let room = visitor.recv_type("room");
    assert_eq!((&room["recovered"], &room["history"]), (&json!(true), &json!(seen[2..])));

    // The sequence goes on from node b.
    newcomer.send_json(json!({"type": "message", "text": "four", "id": "h-3"}));
    assert_eq!(newcomer.recv_type("ack")["seq"], 4);
    let four = witness.recv_type("message");
    assert_eq!((&four["seq"], &four["text"]), (&json!(4), &json!("four")));
}

#[test]
fn a_dm_reaches_its_recipient_on_another_node_and_an_unknown_name_is_no_such_user() {
    let redis = RedisServer::start();
    let a = start_node(&redis, "dm", "a", &[]);
    let b = start_node(&redis, "dm", "b", &[]);
    let (mut alice, alice_welcome) = a.join("/?name=alice&room=one");
    let (mut bob, bob_welcome) = b.join("/?name=bob&room=two");
    let (mut carol, _) = b.join("/?name=carol&room=two");
    let (mut watcher, _) = a.join("/?name=watcher&room=two");
    bob.recv_type("joined");
    bob.recv_type("joined");
    carol.recv_type("joined");

    alice.send_json(json!({"type": "dm", "to": "bob", "text": "psst", "id": "d-1"}));
    let ack = alice.recv_json();
    let dm = bob.recv_json();
    let expected = json!({"type": "dm", "from": user(&alice_welcome), "to": user(&bob_welcome),
                          "text": "psst", "ts": dm["ts"]});
    assert_eq!(dm, expected);
    assert_eq!(ack, json!({"type": "ack", "id": "d-1", "ts": dm["ts"]}));
    bob.send_json(json!({"type": "dm", "to": "alice", "text": "hi back"}));
    let reply = alice.recv_json();
    assert_eq!(
        (&reply["type"], &reply["from"], &reply["text"]),
        (&json!("dm"), &user(&bob_welcome), &json!("hi back"))
    );
    bob.assert_nothing_pending();

    alice.send_json(json!({"type": "dm", "to": "nobody", "text": "hello?", "id": "d-2"}));
    let error = alice.recv_json();
    assert_eq!((&error["code"], &error["id"]), (&json!("no_such_user"), &json!("d-2")));
    // Once bob has left (as his room on node a hears), nobody holds his name anywhere.
    drop(bob);
    assert_eq!(watcher.recv_type("left")["user"], user(&bob_welcome));
    alice.send_json(json!({"type": "dm", "to": "bob", "text": "still there?", "id": "d-3"}));
    let error = alice.recv_json();
    assert_eq!((&error["code"], &error["id"]), (&json!("no_such_user"), &json!("d-3")));
    carol.recv_type("left");
    carol.assert_nothing_pending();
    watcher.assert_nothing_pending();
}

#[test]
fn a_node_stopped_with_sigterm_announces_its_members_left_at_once() {
    let redis = RedisServer::start();
    let mut a = start_node(&redis, "sigterm", "a", &["--node-timeout", "30"]);
    let b = start_node(&redis, "sigterm", "b", &["--node-timeout", "30"]);
    let (mut watcher, _) = b.join("/?name=watcher&room=r");
    let (mut leaving, left_users) = members_on(&a, &["stan", "kyle"], &mut [&mut watcher]);

    a.signal("TERM");
    let signalled = Instant::now();
    for client in &mut leaving {
        client.expect_close();
        while client.socket.read().is_ok() {} // Completes the close handshake.
    }
    assert!(a.wait_for_exit(DEADLINE).success(), "a graceful stop exits 0");
    // Well before the 30 s --node-timeout: the node said goodbye for its members.
    let by = signalled + Duration::from_secs(5);
    let heard: HashSet<String> =
        (0..2).map(|_| recv_type_by(&mut watcher, "left", by)["user"].to_string()).collect();
    assert_eq!(heard, left_users, "one left for each of node a's members");
    // Proving that no second `left` follows needs a quiet while, not an event.
    thread::sleep(Duration::from_secs(1));
    watcher.assert_nothing_pending();
    let (_, welcome) = b.join("/?name=stan&room=r");
    assert_eq!(welcome["name"], "stan", "the name is free again");
}

#[test]
fn a_killed_node_s_members_are_announced_left_once_within_the_node_timeout_and_their_names_freed() {
    let redis = RedisServer::start();
    let timeout = ["--node-timeout", "2"];
    let a = start_node(&redis, "sigkill", "a", &timeout);
    let b = start_node(&redis, "sigkill", "b", &timeout);
    let c = start_node(&redis, "sigkill", "c", &timeout);
    // A watcher on each surviving node: both nodes may notice the death; each left is said once.
    let (mut watcher_b, _) = b.join("/?name=watcher-b&room=r");
    let (mut watcher_c, _) = c.join("/?name=watcher-c&room=r");
    assert_eq!(watcher_b.recv_type("joined")["user"]["name"], "watcher-c");
    let (_doomed, doomed_users) = members_on(&a, &["kenny", "kyle"], &mut [&mut watcher_b, &mut watcher_c]);

    a.signal("KILL");
    // --node-timeout 2, and 3 s for noticing it and passing it on.
    let by = Instant::now() + Duration::from_secs(2 + 3);
    for watcher in [&mut watcher_b, &mut watcher_c] {
        let heard: HashSet<String> =
            (0..2).map(|_| recv_type_by(watcher, "left", by)["user"].to_string()).collect();
        assert_eq!(heard, doomed_users, "one left for each of the killed node's members");
    }
    // Proving that no second `left` follows needs a quiet while, not an event.
    thread::sleep(Duration::from_secs(1));
    watcher_b.assert_nothing_pending();
    watcher_c.assert_nothing_pending();
    let (_, welcome) = b.join("/?name=kenny&room=r");
    assert_eq!(welcome["name"], "kenny", "the killed node's names are free again");
    let (_, welcome) = c.join("/?name=kyle&room=r");
    assert_eq!(welcome["name"], "kyle", "the killed node's names are free again");
}

#[test]
fn two_nodes_on_one_port_with_reuse_port_both_accept_and_relay() {
    const CLIENTS: usize = 40;
    let redis = RedisServer::start();
    let bind = format!("127.0.0.1:{}", free_loopback_port());
    let shared = ["--reuse-port", "--bind", bind.as_str()];
    // Default node ids, as deploy/wschat@.service's identical instances have. Alone on the port,
    // node a answers its own /healthz; node b's readiness shows in its upgrades.
    let mut a = start_node(&redis, "reuse-port", "", &shared);
    let mut b = start_node_unready(&redis.url(), "reuse-port", "", &shared);
    assert_eq!((a.addr, b.addr), (bind.parse().unwrap(), bind.parse().unwrap()));
    a.drain_log();
    b.drain_log();
    // Node b may not be ready yet, and its refusals (503) are retried.
    let clients: Vec<Client> =
        (0..CLIENTS).map(|index| a.join_until_admitted(&format!("/?room=spread-{index}"))).collect();
    let mut on = HashMap::<char, Vec<Client>>::new();
    let (mut a_log, mut b_log) = (Vec::new(), Vec::new());
    let give_up = Instant::now() + DEADLINE;
    for (index, client) in clients.into_iter().enumerate() {
        // The node that logged this client's upgrade (its port, its own room) accepted it; a
        // refused attempt is logged as accepted but never as opened.
        let local = client.socket.get_ref().local_addr().unwrap();
        let opened = format!("from {local} opened a WebSocket at /?room=spread-{index}");
        let node = loop {
            a_log.extend(a.drain_log());
            b_log.extend(b.drain_log());
            let logged = |log: &Vec<String>| log.iter().any(|line| line.contains(&opened));
            match (logged(&a_log), logged(&b_log)) {
                (true, false) => break 'a',
                (false, true) => break 'b',
                (true, true) => panic!("both nodes logged {opened:?}"),
                (false, false) => {}
            }
            assert!(Instant::now() < give_up, "no node logged {opened:?}");
            thread::sleep(Duration::from_millis(10)); // Polling the logs; they arrive on their own.
        };
        on.entry(node).or_default().push(client);
    }
    let counts = (on.get(&'a').map_or(0, Vec::len), on.get(&'b').map_or(0, Vec::len));
    assert!(counts.0 > 0 && counts.1 > 0, "the kernel spread {CLIENTS} connections as {counts:?}");

    // One client from each node meets in one room.
    let mut x = on.get_mut(&'a').unwrap().pop().unwrap();
    let mut y = on.get_mut(&'b').unwrap().pop().unwrap();
    x.send_json(json!({"type": "join", "room": "both"}));
    x.recv_type("room");
    y.send_json(json!({"type": "join", "room": "both"}));
    assert_eq!(y.recv_type("room")["users"].as_array().unwrap().len(), 2);
    x.recv_type("joined");
    x.send_text("from node a");
    assert_eq!(y.recv_type("message")["text"], "from node a");
    y.send_text("from node b");
    assert_eq!(x.recv_type("message")["text"], "from node b");
}

#[test]
fn clusters_with_different_prefixes_on_one_redis_do_not_mix() {
    let redis = RedisServer::start();
    let a = start_node(&redis, "prefix-one", "a", &[]);
    let c = start_node(&redis, "prefix-one", "c", &[]);
    let b = start_node(&redis, "prefix-two", "b", &[]);
    let (mut alice, alice_welcome) = a.join("/?name=alice&room=lobby");
    let (mut bob, bob_welcome) = c.join("/?name=bob&room=lobby");
    assert_eq!(bob_welcome["users"], json!([user(&alice_welcome), user(&bob_welcome)]));
    let (mut other_alice, other_welcome) = b.join("/?name=alice&room=lobby");
    assert_eq!(other_welcome["name"], "alice", "another cluster's names are its own");
    assert_eq!(other_welcome["users"], json!([user(&other_welcome)]));
    alice.recv_type("joined");
    alice.send_json(json!({"type": "message", "text": "prefix one only", "id": "p-1"}));
    alice.recv_type("ack");
    assert_eq!(bob.recv_type("message")["text"], "prefix one only");
    other_alice.assert_nothing_pending();
    alice.assert_nothing_pending();
}

// ---------------------------------------------------------------------------------------------
// Faults
// ---------------------------------------------------------------------------------------------

#[test]
fn a_node_started_before_redis_is_unavailable_until_redis_answers() {
    let port = free_loopback_port();
    let node = start_node_unready(&format!("redis://127.0.0.1:{port}"), "late-redis", "a", &[]);
    let (status, body) = healthz(&node);
    assert!(status == 503 && body.starts_with("unavailable"), "/healthz without Redis: {status} {body:?}");
    assert_refused_with_503(&node);

    let _redis = RedisServer::start_on(port);
    assert_eq!(wait_for_health(&node, 200, RECOVERY).trim_end(), "ok");
    let (mut client, welcome) = node.join("/?name=late&room=r");
    assert_eq!(welcome["name"], "late");
    client.assert_nothing_pending();
}

#[test]
fn redis_killed_then_restarted_empty_means_unavailable_then_new_epochs() {
    let mut redis = RedisServer::start();
    let a = start_node(&redis, "redis-kill", "a", &[]);
    let b = start_node(&redis, "redis-kill", "b", &[]);
    let (mut alice, alice_welcome) = a.join("/?name=alice&room=f");
    let (mut bob, bob_welcome) = b.join("/?name=bob&room=f");
    alice.recv_type("joined");
    let old_epoch = alice_welcome["epoch"].as_str().unwrap().to_owned();

    for index in 0..5 {
        alice.send_json(json!({"type": "message", "text": format!("m{index}"), "id": format!("f-{index}")}));
        assert_eq!(alice.recv_json()["type"], "ack");
        assert_eq!(bob.recv_type("message")["text"], format!("m{index}"));
    }

    // Redis dies between two of alice's messages. She keeps sending, and every message gets an
    // answer: an ack while node a has not noticed yet, then `unavailable`.
    redis.kill("KILL");
    for index in 5.. {
        assert!(index < 1_000, "node a still acks messages with Redis dead");
        let id = format!("f-{index}");
        alice.send_json(json!({"type": "message", "text": format!("m{index}"), "id": id}));
        let answer = recv_json_by(&mut alice, Instant::now() + RECOVERY);
        if answer["type"] != "ack" {
            assert_unavailable(&answer, Some(&id));
            break;
        }
    }
    for node in [&a, &b] {
        let body = wait_for_health(node, 503, RECOVERY);
        assert!(body.starts_with("unavailable"), "{body:?}");
        assert_refused_with_503(node);
    }
    for request in [
        json!({"type": "message", "text": "into the void", "id": "r-1"}),
        json!({"type": "dm", "to": "bob", "text": "psst", "id": "r-2"}),
        json!({"type": "nick", "name": "alicia", "id": "r-3"}),
        json!({"type": "join", "room": "other", "id": "r-4"}),
        json!({"type": "who", "id": "r-5"}),
    ] {
        alice.send_json(request.clone());
        assert_unavailable(&alice.recv_json(), request["id"].as_str());
    }
    bob.send_json(json!({"type": "message", "text": "no id"}));
    // (Past any message node a acked in the instant before it noticed.)
    assert_unavailable(&bob.recv_type("error"), None);
    // Still connected: pings need no cluster.
    alice.assert_nothing_pending();
    bob.assert_nothing_pending();

    redis.restart(); // Empty: nothing was saved.
    for node in [&a, &b] {
        assert_eq!(wait_for_health(node, 200, RECOVERY).trim_end(), "ok");
    }
    // The room's sequence starts again, so every member is told of the new epoch.
    let alice_room = recv_type_by(&mut alice, "room", Instant::now() + RECOVERY);
    let bob_room = recv_type_by(&mut bob, "room", Instant::now() + RECOVERY);
    let new_epoch = alice_room["epoch"].as_str().unwrap().to_owned();
    assert_eq!((&alice_room["room"], &bob_room["room"]), (&json!("f"), &json!("f")));
    assert_ne!(new_epoch, old_epoch, "a Redis that came back empty cannot vouch for the old sequence");
    assert_eq!(bob_room["epoch"], json!(new_epoch), "one epoch for the room on both nodes");

    // Messages flow across the nodes again, in the new sequence, to the members the nodes re-announced.
    alice.send_json(json!({"type": "message", "text": "back", "id": "b-1"}));
    assert_eq!(alice.recv_type("ack")["seq"], 1);
    let back = loop {
        let message = bob.recv_type("message");
        if message["text"] == "back" {
            break message;
        }
    };
    assert_eq!((&back["seq"], &back["text"]), (&json!(1), &json!("back")));
    alice.send_json(json!({"type": "who"}));
    let mut users: Vec<Value> = alice.recv_type("users")["users"].as_array().unwrap().clone();
    users.sort_by_key(|user| user["id"].as_u64());
    // Ids carry each node's random tag: compare in id order.
    let mut expected = [user(&alice_welcome), user(&bob_welcome)];
    expected.sort_by_key(|user| user["id"].as_u64());
    assert_eq!(users, expected);
    // A resume with the old epoch is not honoured; names held before the outage still are.
    let (_, resumed) = b.join(&format!("/?room=f&since=1&epoch={old_epoch}"));
    assert_eq!((&resumed["recovered"], &resumed["epoch"]), (&json!(false), &json!(new_epoch)));
    let (mut impostor, welcome) = b.join("/?name=alice&room=g");
    assert!(is_guest_name(&welcome["name"]), "alice is still connected: {welcome}");
    assert_eq!(impostor.recv_json()["code"], "name_taken");
}

#[test]
fn redis_paused_with_sigstop_then_continued_loses_and_repeats_nothing() {
    let redis = RedisServer::start();
    let a = start_node(&redis, "redis-stop", "a", &[]);
    let b = start_node(&redis, "redis-stop", "b", &[]);
    let (mut alice, alice_welcome) = a.join("/?name=alice&room=p");
    let epoch = alice_welcome["epoch"].as_str().unwrap().to_owned();
    let (mut bob, _) = b.join("/?name=bob&room=p");
    alice.recv_type("joined");
    for index in 1..=5 {
        alice.send_json(
            json!({"type": "message", "text": format!("before {index}"), "id": format!("s-{index}")}),
        );
        assert_eq!(alice.recv_type("ack")["seq"], index);
    }
    let mut heard: Vec<Value> = (0..5).map(|_| bob.recv_type("message")).collect();

    redis.kill("STOP");
    // Sent into the pause: it may be acked once Redis wakes, or refused as unavailable; it is
    // answered once, and delivered once if acked.
    alice.send_json(json!({"type": "message", "text": "during", "id": "during"}));
    for node in [&a, &b] {
        wait_for_health(node, 503, RECOVERY);
    }
    redis.kill("CONT");
    for node in [&a, &b] {
        assert_eq!(wait_for_health(node, 200, RECOVERY).trim_end(), "ok");
    }
    let answer = recv_json_by(&mut alice, Instant::now() + RECOVERY);
    let during_acked = match answer["type"].as_str() {
        Some("ack") => true,
        Some("error") => {
            assert_unavailable(&answer, Some("during"));
            false
        }
        _ => panic!("the message sent into the pause got {answer}"),
    };

    alice.send_json(json!({"type": "message", "text": "after", "id": "after"}));
    // The very next answer: "during" was answered once.
    let after = recv_json_by(&mut alice, Instant::now() + RECOVERY);
    assert_eq!((&after["type"], &after["id"]), (&json!("ack"), &json!("after")), "{after}");
    let after_seq = seq(&after);
    let by = Instant::now() + RECOVERY;
    loop {
        let event = recv_json_by(&mut bob, by);
        assert_ne!(event["type"], "room", "the epoch stays: {event}");
        if event["type"] == "message" {
            heard.push(event.clone());
            if event["text"] == "after" {
                break;
            }
        }
    }
    let seqs: Vec<u64> = heard.iter().map(seq).collect();
    assert_eq!(seqs, (1..=after_seq).collect::<Vec<_>>(), "bob heard each message once, in order");
    let texts: Vec<&str> = heard.iter().map(|event| event["text"].as_str().unwrap()).collect();
    let during_heard = texts.iter().filter(|text| **text == "during").count();
    assert!(during_heard <= 1 && (during_heard == 1 || !during_acked), "{texts:?}");
    assert_eq!(texts.len(), 6 + during_heard, "{texts:?}");

    // Node b's store agrees: the same epoch, the whole sequence resumable from 0.
    let (_, resumed) = b.join(&format!("/?room=p&since=0&epoch={epoch}"));
    assert_eq!((&resumed["recovered"], &resumed["epoch"]), (&json!(true), &json!(epoch)));
    assert_eq!(resumed["history"], json!(heard));
    // The resuming client's arrival, and nothing else.
    assert_eq!(bob.recv_json()["type"], "joined");
    bob.assert_nothing_pending();
}

#[test]
fn subscriptions_killed_by_redis_mid_stream_lose_and_repeat_nothing() {
    const COUNT: usize = 300;
    const WINDOW: usize = 8;
    let redis = RedisServer::start();
    let a = start_node(&redis, "pubsub-kill", "a", &["--history", "1000"]);
    let b = start_node(&redis, "pubsub-kill", "b", &["--history", "1000"]);
    let (mut sender, _) = a.join("/?name=sender&room=s");
    let (mut reader_a, _) = a.join("/?name=reader-a&room=s");
    let (reader_b, _) = b.join("/?name=reader-b&room=s");
    sender.recv_type("joined");
    sender.recv_type("joined");
    reader_a.recv_type("joined");

    let read_all = |reader: Client| {
        let by = Instant::now() + RECOVERY;
        let mut reader = reader;
        let events: Vec<Value> = (0..COUNT).map(|_| recv_type_by(&mut reader, "message", by)).collect();
        (reader, events)
    };
    let mut stream = || {
        // Up to WINDOW messages unacknowledged at a time.
        let (mut sent, mut acked) = (0, 0);
        while acked < COUNT {
            while sent < COUNT && sent - acked < WINDOW {
                sender.send_json(
                    json!({"type": "message", "text": format!("m {sent}"), "id": format!("m-{sent}")}),
                );
                sent += 1;
            }
            let ack = recv_type_by(&mut sender, "ack", Instant::now() + RECOVERY);
            assert_eq!((&ack["id"], &ack["seq"]), (&json!(format!("m-{acked}")), &json!(acked + 1)));
            acked += 1;
            if acked == COUNT / 3 {
                let killed = redis.command(&["CLIENT", "KILL", "TYPE", "pubsub"]);
                let killed: u64 = killed
                    .trim_start_matches(':')
                    .trim_end()
                    .parse()
                    .unwrap_or_else(|_| panic!("CLIENT KILL answered {killed:?}"));
                assert!(killed >= 1, "the nodes' subscriptions were killed ({killed})");
            }
        }
    };
    let ((reader_a, on_a), (reader_b, on_b)) = thread::scope(|scope| {
        let readers = scope.spawn(|| at_once(|| read_all(reader_a), || read_all(reader_b)));
        stream();
        readers.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    });
    for (node, events) in [("a", &on_a), ("b", &on_b)] {
        let seqs: Vec<u64> = events.iter().map(seq).collect();
        assert_eq!(seqs, (1..=COUNT as u64).collect::<Vec<_>>(), "the reader on node {node}");
        let texts: Vec<String> =
            events.iter().map(|event| event["text"].as_str().unwrap().to_owned()).collect();
        assert_eq!(texts, (0..COUNT).map(|index| format!("m {index}")).collect::<Vec<_>>());
    }
    let mut clients = [reader_a, reader_b, sender];
    for client in &mut clients {
        client.assert_nothing_pending();
    }
}

#[test]
fn a_node_whose_subscription_is_refused_still_serves_but_reports_unhealthy_until_it_is_back() {
    let redis = RedisServer::start();
    let a = start_node(&redis, "sub-refused", "a", &[]);
    let b = start_node(&redis, "sub-refused", "b", &[]);
    let (mut alice, _) = a.join("/?name=alice&room=q");
    let (mut bob, _) = b.join("/?name=bob&room=q");
    alice.recv_type("joined");
    let stats = a.stats();
    assert_eq!((&stats["cluster"]["node"], &stats["cluster"]["available"]), (&json!("a"), &json!(true)));

    // Redis now refuses SUBSCRIBE (and only that): the kill drops the nodes' subscriptions and
    // they cannot come back.
    assert_eq!(redis.command(&["ACL", "SETUSER", "default", "-subscribe"]).trim_end(), "+OK");
    let killed = redis.command(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    assert!(killed.trim_start_matches(':').trim_end().parse::<u64>().unwrap_or(0) >= 1, "{killed}");
    let body = wait_for_health(&a, 503, RECOVERY);
    assert!(body.starts_with("unavailable: the subscription"), "{body:?}");
    assert_refused_with_503(&a);
    assert_eq!(a.stats()["cluster"]["available"], json!(false));
    // Requests are still served: they need commands, not the subscription.
    alice.send_json(json!({"type": "message", "text": "while deaf", "id": "deaf"}));
    assert_eq!(alice.recv_type("ack")["seq"], 1);

    assert_eq!(redis.command(&["ACL", "SETUSER", "default", "+subscribe"]).trim_end(), "+OK");
    assert_eq!(wait_for_health(&a, 200, RECOVERY).trim_end(), "ok");
    assert_eq!(wait_for_health(&b, 200, RECOVERY).trim_end(), "ok");
    // What bob's node missed while deaf, it caught up from the stream, once.
    let heard = recv_type_by(&mut bob, "message", Instant::now() + RECOVERY);
    assert_eq!((&heard["seq"], &heard["text"]), (&json!(1), &json!("while deaf")));
    bob.send_json(json!({"type": "message", "text": "heard again", "id": "again"}));
    assert_eq!(bob.recv_type("ack")["seq"], 2);
    assert_eq!(recv_type_by(&mut alice, "message", Instant::now() + RECOVERY)["text"], "heard again");
    bob.assert_nothing_pending();
}

#[test]
fn history_in_redis_keeps_the_latest_messages_within_count_and_bytes_and_goes_with_the_ttl() {
    let redis = RedisServer::start();
    // --max-send-buffer 16384: a welcome carries at most 8,192 bytes of history.
    let flags = ["--history", "5", "--history-ttl", "1", "--max-send-buffer", "16384"];
    let a = start_node(&redis, "kept", "a", &flags);
    let integer = |reply: String| reply.trim_start_matches(':').trim_end().parse::<i64>().unwrap();
    let (mut alice, welcome) = a.join("/?name=alice&room=k");
    let epoch = welcome["epoch"].as_str().unwrap().to_owned();
    for index in 0..8 {
        alice.send_json(
            json!({"type": "message", "text": format!("short {index}"), "id": format!("s{index}")}),
        );
        alice.recv_type("ack");
    }
    assert_eq!(integer(redis.command(&["XLEN", "kept:history:k"])), 5, "--history messages");
    let long = "x".repeat(3000);
    for index in 0..4 {
        alice.send_json(json!({"type": "message", "text": long, "id": format!("l{index}")}));
        alice.recv_type("ack");
    }
    assert_eq!(
        integer(redis.command(&["XLEN", "kept:history:k"])),
        2,
        "two 3 KB events fit in 8 KB, three do not"
    );
    let (newcomer, welcome) = a.join("/?room=k");
    let seqs: Vec<u64> = welcome["history"].as_array().unwrap().iter().map(seq).collect();
    assert_eq!(seqs, vec![11, 12]);

    // The last member leaves: the room is kept for --history-ttl (1 s), then Redis forgets it.
    drop((newcomer, alice));
    let give_up = Instant::now() + RECOVERY;
    while integer(redis.command(&["EXISTS", "kept:meta:k", "kept:history:k"])) > 0 {
        assert!(Instant::now() < give_up, "the room outlived --history-ttl");
        thread::sleep(Duration::from_millis(50)); // Polling Redis: expiry sends no event.
    }
    let (_, back) = a.join(&format!("/?room=k&since=12&epoch={epoch}"));
    assert_eq!((&back["recovered"], &back["seq"]), (&json!(false), &json!(0)));
    assert_ne!(back["epoch"], json!(epoch), "a forgotten room comes back with a new epoch");
}

#[test]
fn a_member_pipelining_faster_than_redis_answers_is_slowed_down_and_loses_nothing() {
    let redis = RedisServer::start();
    let mut a = start_node(&redis, "pipeline", "a", &[]);
    let (mut alice, _) = a.join("/?name=alice&room=p");
    let (mut bob, _) = a.join("/?name=bob&room=p");
    alice.recv_type("joined");
    // Redis stops answering (for well under the 2 s reply timeout): after 64 of alice's 100
    // messages the node stops reading from her, and the rest wait in the kernel's buffers.
    redis.kill("STOP");
    for index in 0..100 {
        alice.send_json(json!({"type": "message", "text": format!("m {index}"), "id": format!("m{index}")}));
    }
    a.wait_for_log("64 requests wait for Redis");
    redis.kill("CONT");
    for index in 0..100 {
        let ack = alice.recv_json();
        assert_eq!(
            (&ack["type"], &ack["id"], &ack["seq"]),
            (&json!("ack"), &json!(format!("m{index}")), &json!(index + 1)),
            "every message acked once, in order"
        );
        assert_eq!(bob.recv_type("message")["text"], format!("m {index}"));
    }
    alice.assert_nothing_pending();
}

#[test]
fn a_node_presumed_dead_comes_back_with_its_members_and_a_name_taken_meanwhile_is_given_up() {
    let redis = RedisServer::start();
    let timeout = ["--node-timeout", "2"];
    let a = start_node(&redis, "comeback", "a", &timeout);
    let b = start_node(&redis, "comeback", "b", &timeout);
    let (mut alice, alice_welcome) = a.join("/?name=alice&room=r");
    let alice_id = alice_welcome["id"].clone();
    let (mut bob, _) = b.join("/?name=bob&room=r");
    alice.recv_type("joined");
    // Node a stops (as a paused VM would) for longer than its timeout: b announces alice gone.
    a.signal("STOP");
    let left = recv_type_by(&mut bob, "left", Instant::now() + Duration::from_secs(2 + 3));
    assert_eq!(left["user"]["id"], alice_id);
    let (_carol, carol_welcome) = b.join("/?name=alice&room=elsewhere");
    assert_eq!(carol_welcome["name"], "alice", "the presumed-dead node's names are free");
    a.signal("CONT");
    // Node a notices on its next beat, tells Redis its members again: alice's name is carol's now.
    let error = recv_type_by(&mut alice, "error", Instant::now() + RECOVERY);
    assert_eq!(error["code"], "name_taken", "{error}");
    let rejoined = recv_type_by(&mut bob, "joined", Instant::now() + RECOVERY);
    assert_eq!(rejoined["user"]["id"], alice_id);
    let guest = rejoined["user"]["name"].clone();
    assert!(is_guest_name(&guest), "{rejoined}");
    alice.send_json(json!({"type": "message", "text": "still here", "id": "back"}));
    assert!(alice.recv_type("ack")["seq"].as_u64().is_some());
    let heard = recv_type_by(&mut bob, "message", Instant::now() + RECOVERY);
    assert_eq!((&heard["from"]["id"], &heard["from"]["name"]), (&alice_id, &guest));
}

#[test]
fn history_outlives_every_wschat_process() {
    let redis = RedisServer::start();
    let mut a = start_node(&redis, "outlive", "a", &[]);
    let (mut alice, welcome) = a.join("/?name=alice&room=h");
    let epoch = welcome["epoch"].as_str().unwrap().to_owned();
    for index in 1..=3 {
        alice.send_json(
            json!({"type": "message", "text": format!("kept {index}"), "id": format!("k{index}")}),
        );
        alice.recv_type("ack");
    }
    a.signal("TERM");
    assert!(a.wait_for_exit(DEADLINE).success());
    // Every process is gone; a new one resumes from Redis, within --history-ttl.
    let b = start_node(&redis, "outlive", "b", &[]);
    let (_, resumed) = b.join(&format!("/?room=h&since=1&epoch={epoch}"));
    assert_eq!(
        (&resumed["recovered"], &resumed["epoch"], &resumed["seq"]),
        (&json!(true), &json!(epoch), &json!(3))
    );
    let texts: Vec<&str> =
        resumed["history"].as_array().unwrap().iter().map(|event| event["text"].as_str().unwrap()).collect();
    assert_eq!(texts, ["kept 2", "kept 3"]);
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Starts a node of the cluster `prefix` on `redis` and waits until its /healthz says it is ready.
fn start_node(redis: &RedisServer, prefix: &str, id: &str, extra: &[&str]) -> Server {
    let node = start_node_unready(&redis.url(), prefix, id, extra);
    assert_eq!(wait_for_health(&node, 200, RECOVERY).trim_end(), "ok");
    node
}

/// Starts a node without waiting for it to reach Redis. An empty `id` leaves the node its default.
fn start_node_unready(redis_url: &str, prefix: &str, id: &str, extra: &[&str]) -> Server {
    let mut args = vec!["--redis", redis_url, "--redis-prefix", prefix];
    if !id.is_empty() {
        args.extend(["--node-id", id]);
    }
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// `GET /healthz`: the status and the body.
fn healthz(node: &Server) -> (u16, String) {
    let response = node.http(b"GET /healthz HTTP/1.1\r\n\r\n");
    let status = response.split_whitespace().nth(1).and_then(|status| status.parse().ok());
    let status = status.unwrap_or_else(|| panic!("/healthz answered {response:?}"));
    (status, response.split_once("\r\n\r\n").map_or("", |(_, body)| body).to_owned())
}

/// Waits until /healthz answers `status`, and returns its body.
fn wait_for_health(node: &Server, status: u16, within: Duration) -> String {
    let give_up = Instant::now() + within;
    loop {
        let (now, body) = healthz(node);
        if now == status {
            return body;
        }
        assert!(Instant::now() < give_up, "/healthz still answers {now} {body:?} after {within:?}");
        thread::sleep(Duration::from_millis(50)); // Polling a page: no event tells a client of the link.
    }
}

fn assert_refused_with_503(node: &Server) {
    let refusal = node.refused_upgrade("/?name=refused").expect("an upgrade while unavailable is refused");
    assert!(refusal.starts_with("503"), "{refusal}");
}

fn assert_unavailable(event: &Value, id: Option<&str>) {
    assert_eq!((&event["type"], &event["code"]), (&json!("error"), &json!("unavailable")), "{event}");
    assert!(event["message"].as_str().is_some_and(|message| !message.is_empty()), "{event}");
    assert_eq!(event.get("id"), id.map(|id| json!(id)).as_ref(), "the request's id is echoed: {event}");
}

/// Connects to a node by address (a `Server` cannot be shared between threads) and returns the
/// client with its welcome.
fn join_at(addr: SocketAddr, target: &str) -> (Client, Value) {
    let stream = std::net::TcpStream::connect(addr).expect("connect to the node");
    let mut client = Client::upgrade(stream, format!("ws://{addr}{target}"))
        .unwrap_or_else(|status| panic!("HTTP {status}"));
    let welcome = client.recv_json();
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    (client, welcome)
}

/// Joins `names` to room `r` of `node`, checks that each watcher hears each one join, and returns
/// the clients with their users (`{"id","name"}` as JSON text).
fn members_on(node: &Server, names: &[&str], watchers: &mut [&mut Client]) -> (Vec<Client>, HashSet<String>) {
    let mut clients = Vec::new();
    let mut users = HashSet::new();
    for name in names {
        let (client, welcome) = node.join(&format!("/?name={name}&room=r"));
        for watcher in watchers.iter_mut() {
            assert_eq!(watcher.recv_type("joined")["user"], user(&welcome));
        }
        clients.push(client);
        users.insert(user(&welcome).to_string());
    }
    (clients, users)
}

/// Runs both at the same moment, each on its own thread, and returns both results.
fn at_once<A: Send, B: Send>(first: impl FnOnce() -> A + Send, second: impl FnOnce() -> B + Send) -> (A, B) {
    let barrier = Barrier::new(2);
    thread::scope(|scope| {
        let other = scope.spawn(|| {
            barrier.wait();
            second()
        });
        barrier.wait();
        let mine = first();
        (mine, other.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
    })
}

/// What a client heard, and the client, to check later that nothing more came.
struct Heard {
    client: Client,
    events: Vec<Value>,
}

/// Reads `count` message events (skipping other kinds).
fn read_messages(mut client: Client, count: usize) -> Heard {
    let events = (0..count).map(|_| client.recv_type("message")).collect();
    Heard { client, events }
}

/// Sends `count` messages with ids `TAG-INDEX` and texts `TAG INDEX` at once, then reads until
/// every one is acked and as many messages from others have arrived; returns the acks by id.
fn send_and_listen(mut client: Client, tag: &str, count: usize) -> (HashMap<String, Value>, Heard) {
    for index in 0..count {
        client.send_json(
            json!({"type": "message", "text": format!("{tag} {index}"), "id": format!("{tag}-{index}")}),
        );
    }
    let (mut acks, mut events) = (HashMap::new(), Vec::new());
    while acks.len() < count || events.len() < count {
        let event = client.recv_json();
        match event["type"].as_str() {
            Some("ack") => {
                assert!(acks.insert(event["id"].as_str().unwrap().to_owned(), event.clone()).is_none())
            }
            Some("message") => events.push(event),
            _ => panic!("sender-{tag} got {event}"),
        }
    }
    (acks, Heard { client, events })
}

/// The next event, waiting until `by` at most.
fn recv_json_by(client: &mut Client, by: Instant) -> Value {
    loop {
        let left = by.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        client.socket.get_ref().set_read_timeout(Some(left)).unwrap();
        match client.socket.read() {
            Ok(Message::Text(text)) => {
                client.socket.get_ref().set_read_timeout(Some(DEADLINE)).unwrap();
                return serde_json::from_str(&text).expect("the server sends JSON");
            }
            Ok(Message::Ping(_) | Message::Pong(_)) => {}
            Ok(other) => panic!("expected a text frame, got {other:?}"),
            Err(error) => panic!("no event by the deadline: {error}"),
        }
    }
}

/// Reads events until one of type `kind`, waiting until `by` at most.
fn recv_type_by(client: &mut Client, kind: &str, by: Instant) -> Value {
    loop {
        let event = recv_json_by(client, by);
        if event["type"] == kind {
            return event;
        }
    }
}

fn user(welcome: &Value) -> Value {
    json!({"id": welcome["id"], "name": welcome["name"]})
}

fn seq(event: &Value) -> u64 {
    event["seq"].as_u64().unwrap_or_else(|| panic!("no seq in {event}"))
}

fn is_guest_name(name: &Value) -> bool {
    name.as_str()
        .and_then(|name| name.strip_prefix("guest-"))
        .is_some_and(|digits| !digits.is_empty() && digits.bytes().all(|byte| byte.is_ascii_digit()))
}
