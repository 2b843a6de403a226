//! `tokio-chat`: the async baseline. The subset of wschat's chat protocol that the benchmark
//! exercises, written the way a tokio developer would: one task per connection, a bounded mpsc
//! channel per client (a full channel drops that client, like wschat's slow-consumer rule), each
//! broadcast serialized once and shared by every recipient (`Utf8Bytes` is a reference-counted
//! `Bytes`), tokio-tungstenite for the WebSocket layer.
//!
//! Implemented: the upgrade on any path with `?name=&room=`, the `welcome` frame (with the full
//! user list, the room's epoch and seq, like wschat, and always an empty history: the baseline
//! keeps none, run wschat with `--history 0`), `joined` and `left`, `message` (JSON or a bare text
//! frame, with the room's next seq) to every other member, `{"type":"ping"}` → `{"type":"pong"}`, `{"type":"who"}`, and the error events for bad
//! JSON, unknown types, missing fields and invalid or taken names and rooms. Not implemented:
//! `nick` and `join` (answered with `unknown_type`), heartbeat pings, plain-HTTP pages, origins.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Flavor {
    CurrentThread,
    MultiThread,
}

/// tokio-chat: the tokio + tokio-tungstenite baseline for wschat's benchmarks.
#[derive(Debug, Parser)]
#[command(name = "tokio-chat", version, about)]
struct Args {
    /// Address to listen on; port 0 picks a free port and the log line names it.
    #[arg(long, default_value = "127.0.0.1:9002")]
    bind: SocketAddr,
    /// tokio runtime flavour.
    #[arg(long, value_enum, default_value = "current-thread")]
    runtime: Flavor,
    /// Worker threads of the multi-thread runtime (default: tokio's, one per usable core).
    #[arg(long)]
    workers: Option<usize>,
    /// Capacity, in messages, of each client's outgoing channel; a client whose channel is full
    /// is dropped as a slow consumer. 8192 messages of ~130 bytes is about wschat's 1 MiB bound.
    #[arg(long, default_value_t = 8192)]
    channel_capacity: usize,
    /// tungstenite's per-connection read buffer (its default, 128 KiB, would cost 1.3 GB at
    /// 10,000 connections; wschat uses 4 KiB).
    #[arg(long, default_value_t = 4096)]
    read_buffer_size: usize,
    /// Largest message or frame a client may send.
    #[arg(long, default_value_t = 65536)]
    max_message_bytes: usize,
    /// Most WebSocket connections at once; past it an upgrade gets HTTP 503.
    #[arg(long, default_value_t = 10_000)]
    max_connections: usize,
    /// Log each connection's end to stderr.
    #[arg(long)]
    verbose: bool,
}

fn main() {
    let args = Args::parse();
    if let Err(error) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("cannot raise the file descriptor limit: {error}");
    }
    let runtime = match args.runtime {
        Flavor::CurrentThread => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        Flavor::MultiThread => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            if let Some(workers) = args.workers {
                builder.worker_threads(workers);
            }
            builder.enable_all().build()
        }
    }
    .expect("cannot build the tokio runtime");
    let workers = match args.runtime {
        Flavor::CurrentThread => 1,
        Flavor::MultiThread => runtime.metrics().num_workers(),
    };
    eprintln!("runtime {:?} with {workers} worker thread(s)", args.runtime);
    if let Err(error) = runtime.block_on(serve(args)) {
        eprintln!("tokio-chat stopped: {error}");
        std::process::exit(1);
    }
}

async fn serve(args: Args) -> std::io::Result<()> {
    // A deep accept queue, as wschat has: a burst of connects must not overflow it (an overflow
    // drops the handshake and the client retries a second later). tokio's `bind` uses 1024.
    let socket = if args.bind.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(args.bind)?;
    let listener = socket.listen(4096)?;
    eprintln!("listening on {}", listener.local_addr()?);
    let config = WebSocketConfig::default()
        .read_buffer_size(args.read_buffer_size)
        .max_message_size(Some(args.max_message_bytes))
        .max_frame_size(Some(args.max_message_bytes));
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        open: AtomicUsize::new(0),
        max_connections: args.max_connections,
        channel_capacity: args.channel_capacity,
        config,
        verbose: args.verbose,
    });
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let shared = shared.clone();
                tokio::spawn(async move {
                    if let Err(error) = connection(stream, &shared).await
                        && shared.verbose
                    {
                        eprintln!("connection ended: {error}");
                    }
                });
            }
            // EMFILE and friends: back off instead of spinning on the listener.
            Err(error) => {
                eprintln!("accept failed: {error}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

struct Shared {
    state: Mutex<State>,
    /// Open WebSocket connections, for `--max-connections`.
    open: AtomicUsize,
    max_connections: usize,
    channel_capacity: usize,
    config: WebSocketConfig,
    verbose: bool,
}

#[derive(Default)]
struct State {
    next_id: u64,
    names: HashSet<Arc<str>>,
    rooms: std::collections::HashMap<Arc<str>, Room>,
}

struct Room {
    /// Members by id; ids grow with arrival, so iteration is in order of arrival.
    members: BTreeMap<u64, Member>,
    /// Names the room's sequence, as wschat's `epoch` does (8 characters, drawn at creation).
    epoch: String,
    /// The seq of the room's latest message, as in wschat.
    seq: u64,
}

impl Default for Room {
    fn default() -> Self {
        use std::hash::{BuildHasher, Hasher};
        // A random 32 bits from the standard library's per-map hash keys: no other crate needed.
        let random = std::collections::hash_map::RandomState::new().build_hasher().finish();
        Room { members: BTreeMap::new(), epoch: format!("{:08x}", random as u32), seq: 0 }
    }
}

struct Member {
    name: Arc<str>,
    tx: mpsc::Sender<Message>,
}

/// Who a connection is once it has joined.
struct Me {
    id: u64,
    name: Arc<str>,
    room: Arc<str>,
}

#[derive(Serialize, Clone, Copy)]
struct UserView<'a> {
    id: u64,
    name: &'a str,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Event<'a> {
    Welcome {
        id: u64,
        name: &'a str,
        room: &'a str,
        epoch: &'a str,
        seq: u64,
        users: Vec<UserView<'a>>,
        history: [(); 0],
    },
    Joined {
        room: &'a str,
        user: UserView<'a>,
    },
    Left {
        room: &'a str,
        user: UserView<'a>,
    },
    Message {
        room: &'a str,
        seq: u64,
        from: UserView<'a>,
        text: &'a str,
        ts: u64,
    },
    Users {
        room: &'a str,
        users: Vec<UserView<'a>>,
    },
    Pong,
    Error {
        code: &'a str,
        message: &'a str,
    },
}

impl Event<'_> {
    fn to_message(&self) -> Message {
        Message::Text(Utf8Bytes::from(serde_json::to_string(self).expect("events serialize")))
    }
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    text: Option<std::borrow::Cow<'a, str>>,
}

/// Releases the connection's slot under `--max-connections` however the task ends.
struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn connection(
    stream: TcpStream,
    shared: &Shared,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    stream.set_nodelay(true)?;
    let mut query = String::new();
    let over_capacity = shared.open.fetch_add(1, Ordering::Relaxed) >= shared.max_connections;
    let _slot = Slot(&shared.open);
    // The callback's signature is tokio-tungstenite's.
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
        if over_capacity {
            let mut refusal = ErrorResponse::new(Some("too many connections".into()));
            *refusal.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            return Err(refusal);
        }
        query = request.uri().query().unwrap_or("").to_owned();
        Ok(response)
    };
    let ws = tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(shared.config)).await?;
    let (mut sink, mut incoming) = ws.split();

    let (asked_name, asked_room) = parse_query(&query);
    let (tx, mut rx) = mpsc::channel(shared.channel_capacity);
    let (me, welcome, complaints) = join(shared, asked_name, asked_room, tx);
    let result = async {
        sink.feed(welcome).await?;
        for complaint in complaints {
            sink.feed(complaint).await?;
        }
        sink.flush().await?;
        loop {
            tokio::select! {
                frame = incoming.next() => match frame {
                    Some(Ok(Message::Text(text))) => {
                        if let Some(reply) = on_text(shared, &me, &text) {
                            sink.send(reply).await?;
                        }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        let close = CloseFrame { code: CloseCode::Unsupported, reason: "binary frames are not supported".into() };
                        sink.send(Message::Close(Some(close))).await?;
                        break;
                    }
                    // tungstenite answers pings and completes the closing handshake itself.
                    Some(Ok(_)) => {}
                    Some(Err(error)) => return Err(error.into()),
                    None => break,
                },
                out = rx.recv() => match out {
                    Some(message) => {
                        // Everything already queued goes out in one write.
                        sink.feed(message).await?;
                        while let Ok(message) = rx.try_recv() {
                            sink.feed(message).await?;
                        }
                        sink.flush().await?;
                    }
                    // Our sender was removed: we were dropped as a slow consumer.
                    None => {
                        let close = CloseFrame { code: CloseCode::Policy, reason: "too slow".into() };
                        sink.send(Message::Close(Some(close))).await?;
                        break;
                    }
                },
            }
        }
        Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
    }
    .await;
    leave(shared, &me);
    result
}

/// `?name=&room=`, percent-decoded, `+` as a space.
fn parse_query(query: &str) -> (Option<String>, Option<String>) {
    let (mut name, mut room) = (None, None);
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match &*key {
            "name" => name = Some(value.into_owned()),
            "room" => room = Some(value.into_owned()),
            _ => {}
        }
    }
    (name, room)
}

fn valid_text(text: &str, max_chars: usize) -> bool {
    let chars = text.chars().count();
    (1..=max_chars).contains(&chars) && !text.trim().is_empty() && !text.chars().any(char::is_control)
}

fn is_guest_name(name: &str) -> bool {
    name.strip_prefix("guest-")
        .is_some_and(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
}

fn error_event(code: &str, message: &str) -> Message {
    Event::Error { code, message }.to_message()
}

/// Adds the member to the state and its room, tells the room, and returns the welcome.
fn join(
    shared: &Shared,
    asked_name: Option<String>,
    asked_room: Option<String>,
    tx: mpsc::Sender<Message>,
) -> (Me, Message, Vec<Message>) {
    let mut complaints = Vec::new();
    let mut guard = shared.state.lock().unwrap();
    let state = &mut *guard;
    state.next_id += 1;
    let id = state.next_id;
    let name: Arc<str> = match asked_name {
        Some(name) if !valid_text(&name, 32) || is_guest_name(&name) => {
            complaints
                .push(error_event("invalid_name", "a name has 1 to 32 characters and no control characters"));
            format!("guest-{id}").into()
        }
        Some(name) if state.names.contains(name.as_str()) => {
            complaints.push(error_event("name_taken", "that name is taken"));
            format!("guest-{id}").into()
        }
        Some(name) => name.into(),
        None => format!("guest-{id}").into(),
    };
    let room_name: Arc<str> = match asked_room {
        Some(room) if !valid_text(&room, 64) => {
            complaints
                .push(error_event("invalid_room", "a room has 1 to 64 characters and no control characters"));
            "lobby".into()
        }
        Some(room) => room.into(),
        None => "lobby".into(),
    };
    state.names.insert(name.clone());
    let room_key = match state.rooms.get_key_value(&room_name) {
        Some((key, _)) => key.clone(),
        None => room_name.clone(),
    };
    let room = state.rooms.entry(room_key.clone()).or_default();
    let user = UserView { id, name: &name };
    let dropped = broadcast(room, None, &room_key, Event::Joined { room: &room_key, user }.to_message());
    for slow in dropped {
        remove_member(state, &room_key, slow);
    }
    let room = state.rooms.entry(room_key.clone()).or_default();
    room.members.insert(id, Member { name: name.clone(), tx });
    let users = room.members.iter().map(|(&id, member)| UserView { id, name: &member.name }).collect();
    let welcome = Event::Welcome {
        id,
        name: &name,
        room: &room_key,
        epoch: &room.epoch,
        seq: room.seq,
        users,
        history: [],
    }
    .to_message();
    drop(guard);
    (Me { id, name, room: room_key }, welcome, complaints)
}

/// Removes the member (if still there) and tells the room.
fn leave(shared: &Shared, me: &Me) {
    let mut state = shared.state.lock().unwrap();
    remove_member(&mut state, &me.room, me.id);
}

fn remove_member(state: &mut State, room_name: &Arc<str>, id: u64) {
    let Some(room) = state.rooms.get_mut(room_name) else { return };
    let Some(member) = room.members.remove(&id) else { return };
    state.names.remove(&member.name);
    if room.members.is_empty() {
        state.rooms.remove(room_name);
        return;
    }
    let left = Event::Left { room: room_name, user: UserView { id, name: &member.name } }.to_message();
    let dropped = broadcast(room, None, room_name, left);
    for id in dropped {
        remove_member(state, room_name, id);
    }
}

/// Queues one serialized event for every member but `except`, without waiting: a member whose
/// channel is full is a slow consumer and is returned for removal (its task then drains what is
/// queued, sends close 1008 and ends).
#[must_use]
fn broadcast(room: &Room, except: Option<u64>, _room_name: &str, message: Message) -> Vec<u64> {
    let mut dropped = Vec::new();
    for (&id, member) in &room.members {
        if Some(id) == except {
            continue;
        }
        if let Err(mpsc::error::TrySendError::Full(_)) = member.tx.try_send(message.clone()) {
            dropped.push(id);
        }
    }
    dropped
}

/// Handles one text frame; returns the reply to the sender, if any.
fn on_text(shared: &Shared, me: &Me, frame: &str) -> Option<Message> {
    let text = if frame.trim_start().starts_with('{') {
        let envelope: Envelope = match serde_json::from_str(frame) {
            Ok(envelope) => envelope,
            Err(error) => return Some(error_event("bad_json", &format!("invalid JSON: {error}"))),
        };
        match envelope.kind.as_deref() {
            None => return Some(error_event("missing_field", "missing field `type`")),
            Some("message") => match envelope.text {
                Some(text) => text,
                None => return Some(error_event("missing_field", "missing field `text`")),
            },
            Some("ping") => return Some(Event::Pong.to_message()),
            Some("who") => {
                let state = shared.state.lock().unwrap();
                let room = state.rooms.get(&me.room)?;
                let users =
                    room.members.iter().map(|(&id, member)| UserView { id, name: &member.name }).collect();
                return Some(Event::Users { room: &me.room, users }.to_message());
            }
            Some(other) => {
                return Some(error_event(
                    "unknown_type",
                    &format!("unknown type `{other}`; expected message, who or ping"),
                ));
            }
        }
    } else {
        std::borrow::Cow::Borrowed(frame)
    };
    let ts = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_millis() as u64);
    let mut state = shared.state.lock().unwrap();
    let room = state.rooms.get_mut(&me.room)?;
    // The seq is taken and the event queued under one lock, so members see seqs in order.
    room.seq += 1;
    let from = UserView { id: me.id, name: &me.name };
    let message = Event::Message { room: &me.room, seq: room.seq, from, text: &text, ts }.to_message();
    let dropped = broadcast(room, Some(me.id), &me.room, message);
    for id in dropped {
        remove_member(&mut state, &me.room, id);
    }
    None
}
