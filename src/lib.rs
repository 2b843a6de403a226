//! wschat: a WebSocket chat server on a hand-written, single-threaded epoll reactor (mio), with
//! tungstenite doing the WebSocket handshake and framing. No async runtime.
//!
//! # Map of the crate
//! - [`reactor`]: the event loop. Accepts sockets, routes HTTP requests, drives handshakes and
//!   frames without blocking, batches writes, and hands complete messages to a handler.
//!   - `reactor/accept.rs`: the listener, the 503 for clients over capacity, the spare
//!     descriptor for `EMFILE`.
//!   - `reactor/connection.rs`: one socket's phases (request, handshake, open, closing, reply).
//!   - `reactor/connections.rs`: the slab of connections and the per-iteration work lists; the
//!     [`handler::Outbox`] handlers write to.
//!   - `reactor/pre_websocket.rs`: a connection's request, its routing, its HTTP response or its
//!     handshake (resumed from tungstenite's `MidHandshake`).
//!   - `reactor/deadlines.rs`: handshake, heartbeat and close deadlines.
//!   - `reactor/shutdown.rs`: SIGINT and SIGTERM, and the graceful shutdown they start; SIGHUP,
//!     which reloads the TLS certificate.
//!   - `reactor/route.rs`: what a complete request head becomes.
//!   - `reactor/failure.rs`: the one place tungstenite errors are sorted.
//!   - `reactor/socket.rs`: the stream with the request head replayed in front and the output
//!     queue behind, counting bytes.
//!   - `reactor/transport.rs`: the stream under it, TCP or TLS over TCP, plaintext in and out;
//!     `reactor/tls_session.rs`: rustls's unbuffered session and the buffers kept for it.
//!   - `reactor/outgoing.rs`: a connection's output queue (shared frames, own bytes), written
//!     with `writev`.
//!   - `reactor/pacing.rs`: when the loop writes: flush rounds paced by their cost.
//!   - `reactor/stats.rs`: the counters behind `/stats` and `/metrics`; `reactor/histogram.rs`:
//!     the fixed-bucket histograms the loop times its iterations and flush rounds with;
//!     `reactor/throttle.rs`: rate-limited logs.
//! - [`handler`]: the seam between reactor and application ([`handler::Handler`],
//!   [`handler::Outbox`]).
//! - [`frame`]: a WebSocket frame encoded once and shared by every connection it is sent to.
//! - [`chat`]: the chat rules as a pure state machine (rooms, names, sequences, history and
//!   resume, DMs, routing), its JSON wire format in [`chat::protocol`], its rooms kept for a while
//!   after their last member left, its bounded history, its rate limiter and its page.
//! - [`cluster`]: many processes sharing rooms through Redis (`--redis`): a handler of its own
//!   that shares the chat's rules.
//!   - `cluster/members.rs`: members arriving, leaving and asking; each request one script call.
//!   - `cluster/ops.lua`: the script, one atomic operation per change to shared state.
//!   - `cluster/replies.rs`: the answers to those calls; `cluster/sync.rs`: what arrives on the
//!     subscribed channels, (re)connects, beats and probes.
//!   - `cluster/replica.rs`: a node's copy of each of its members' rooms, kept by the room's
//!     events, mended from a snapshot after a gap; `cluster/greeting.rs`: welcomes from Redis's
//!     state.
//!   - `cluster/redis.rs`: the two Redis connections on the loop, timed and retried;
//!     `cluster/link.rs`: one non-blocking connection; `cluster/resp.rs`: RESP2 via
//!     `redis-protocol`; `cluster/wire.rs`: envelopes and room states read back.
//! - [`http`]: request-head parsing and responses for the pre-WebSocket stage.
//! - [`proxy`]: the client's address behind a trusted proxy (`Forwarded`, `X-Forwarded-For`).
//! - [`auth`]: signed tokens (JWT, HS256): checking them against a secret, and making them.
//! - [`metrics`]: `GET /metrics`, the reactor's counters and timings (and the handler's own
//!   numbers) in the Prometheus text format, built per scrape with `prometheus-client`.
//! - [`config`]: every command-line flag and the tungstenite settings derived from them.
//! - [`tls`]: `--tls-cert` and `--tls-key`: the PEM files read and checked (chain, dates, key),
//!   and the rustls configuration (ring) each new TLS connection starts from.
//! - [`timer`]: the hashed timing wheel that holds every deadline (handshakes, heartbeats,
//!   close handshakes, the handler's own wake-up) and tells `poll` how long it may sleep.
//!
//! # One loop iteration
//! 1. `poll` sleeps until some socket is ready or the nearest deadline on the timer wheel comes.
//! 2. For each event: the listener accepts until `WouldBlock`; a connection reads until
//!    `WouldBlock`. A complete message goes to the handler, which answers through the outbox:
//!    each answer is serialized and framed once, and a handle to it is queued (not written) on
//!    every recipient.
//! 3. Deadlines that have come fire: slow handshakes and unanswered close frames are dropped,
//!    silent connections are pinged, and connections silent after a ping are dropped.
//! 4. Every connection with queued output is flushed once: one `writev` carries all the frames
//!    queued for it. A full socket keeps its bytes and waits for WRITABLE. When the last round of
//!    writes was expensive, the round waits for a later iteration (`reactor/pacing.rs`).
//! 5. Connections that finished are freed. Slots are only freed here, so a token seen in step 2
//!    can never belong to a connection that arrived during the same iteration.

pub mod auth;
pub mod chat;
pub mod cluster;
pub mod config;
pub mod frame;
pub mod handler;
pub mod http;
pub mod metrics;
pub mod proxy;
pub mod reactor;
pub mod timer;
pub mod tls;
pub mod token_map;

pub use chat::Chat;
pub use config::Config;
pub use reactor::Reactor;
