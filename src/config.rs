//! The server's settings: every command-line flag, its default and its meaning. `main` parses
//! them with clap; tests and the echo example build them in code.

use std::net::SocketAddr;

use clap::Parser;
use log::LevelFilter;
use tungstenite::protocol::WebSocketConfig;

/// wschat: a WebSocket chat server on a single-threaded epoll reactor.
#[derive(Debug, Clone, Parser)]
#[command(name = "wschat", version, about)]
pub struct Config {
    /// Address to listen on. Port 0 picks a free port; the log says which.
    #[arg(long, default_value = "127.0.0.1:9001", value_name = "ADDR:PORT")]
    pub bind: SocketAddr,

    /// Chat messages kept per room and shown to members who join it.
    #[arg(long, default_value_t = 50, value_name = "N")]
    pub history: usize,

    /// Largest message (and frame) a client may send; larger ones close the connection with 1009.
    #[arg(long, default_value_t = 64 * 1024, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_message_bytes: u32,

    /// Most WebSocket connections at once; past it, new clients get HTTP 503.
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    pub max_connections: usize,

    /// Most bytes queued for one client that is not reading; past it, the client is disconnected.
    #[arg(long, default_value_t = 1024 * 1024, value_name = "BYTES", value_parser = clap::value_parser!(u32).range(4096..))]
    pub max_send_buffer: u32,

    /// Accept WebSocket upgrades only from this Origin (repeatable), e.g. `https://chat.example`.
    /// Without it every origin is accepted.
    #[arg(long = "origin", value_name = "ORIGIN")]
    pub origins: Vec<String>,

    /// Log level: off, error, warn, info, debug or trace.
    #[arg(long, default_value = "info", value_name = "LEVEL")]
    pub log_level: LevelFilter,
}

impl Default for Config {
    fn default() -> Self {
        Config::parse_from(["wschat"])
    }
}

impl Config {
    /// tungstenite's per-connection settings, chosen for many mostly idle connections.
    pub fn websocket(&self) -> WebSocketConfig {
        let max_send_buffer = self.max_send_buffer as usize;
        WebSocketConfig::default()
            // Allocated for every connection (tungstenite zero-fills it on reads), so it stays
            // small: the default 128 KiB would be 1.2 GiB at 10,000 idle connections.
            .read_buffer_size(4096)
            // Frames queued in one loop iteration are written together by the reactor's flush at
            // the end of the iteration; tungstenite only writes on its own once this much piles up.
            .write_buffer_size((64 * 1024).min(max_send_buffer / 2))
            // The slow-consumer bound: a write that would queue more fails with WriteBufferFull.
            .max_write_buffer_size(max_send_buffer)
            .max_message_size(Some(self.max_message_bytes as usize))
            .max_frame_size(Some(self.max_message_bytes as usize))
    }
}
