//! The server's settings: every command-line flag, its default and its meaning. `main` parses
//! them with clap; tests and the echo example build them in code.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use log::LevelFilter;
use tungstenite::protocol::WebSocketConfig;

use crate::auth::AuthMode;
use crate::proxy::IpNet;

/// wschat: a WebSocket chat server on a single-threaded epoll reactor.
#[derive(Debug, Clone, Parser)]
#[command(name = "wschat", version, about)]
pub struct Config {
    /// Address to listen on. Port 0 picks a free port; the log says which.
    #[arg(long, default_value = "127.0.0.1:9001", value_name = "ADDR:PORT", env = "WSCHAT_BIND")]
    pub bind: SocketAddr,

    /// Chat messages kept per room and shown to members who join it.
    #[arg(long, default_value_t = 50, value_name = "N", env = "WSCHAT_HISTORY")]
    pub history: usize,

    /// Seconds a room's history, sequence and epoch are kept after its last member leaves, so that
    /// members can resume it after a reconnect. 0 drops them with the last member.
    #[arg(long, default_value = "300", value_name = "SECS", value_parser = parse_seconds_or_zero, env = "WSCHAT_HISTORY_TTL")]
    pub history_ttl: Duration,

    /// Most bytes of history kept across all rooms; past it, the rooms empty longest are dropped
    /// first, then the largest histories are shortened.
    #[arg(long, default_value_t = 64 * 1024 * 1024, value_name = "BYTES", env = "WSCHAT_HISTORY_MEMORY")]
    pub history_memory: usize,

    /// Largest message (and frame) a client may send; larger ones close the connection with 1009.
    #[arg(long, default_value_t = 64 * 1024, value_name = "N", value_parser = clap::value_parser!(u32).range(1..), env = "WSCHAT_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: u32,

    /// Most WebSocket connections at once; past it, new clients get HTTP 503.
    #[arg(long, default_value_t = 10_000, value_name = "N", env = "WSCHAT_MAX_CONNECTIONS")]
    pub max_connections: usize,

    /// Most bytes queued for one client that is not reading; past it, the client is disconnected.
    #[arg(long, default_value_t = 1024 * 1024, value_name = "BYTES", value_parser = clap::value_parser!(u32).range(4096..), env = "WSCHAT_MAX_SEND_BUFFER")]
    pub max_send_buffer: u32,

    /// The kernel's send buffer for each client socket (SO_SNDBUF; Linux reserves twice this for
    /// its bookkeeping): what a client that stops reading can hold in kernel memory, on top of
    /// `--max-send-buffer` in the server's. 0 leaves it to the kernel's autotuning (up to 4 MiB a
    /// socket with Linux's defaults).
    #[arg(long, default_value_t = 64 * 1024, value_name = "BYTES", env = "WSCHAT_SOCKET_SEND_BUFFER")]
    pub socket_send_buffer: usize,

    /// Frames per second each client may send (a token bucket holding two seconds' worth);
    /// frames over it are dropped and answered with a `rate_limited` error. 0 turns it off.
    #[arg(long, default_value_t = 0.0, value_name = "MSGS_PER_SEC", value_parser = parse_rate, env = "WSCHAT_RATE_LIMIT")]
    pub rate_limit: f64,

    /// Seconds a connection may stay silent before the server pings it (fractions allowed).
    #[arg(long, default_value = "30", value_name = "SECS", value_parser = parse_seconds, env = "WSCHAT_PING_INTERVAL")]
    pub ping_interval: Duration,

    /// Seconds to wait, after a ping, for anything at all from the client before dropping it.
    #[arg(long, default_value = "10", value_name = "SECS", value_parser = parse_seconds, env = "WSCHAT_PING_TIMEOUT")]
    pub ping_timeout: Duration,

    /// Seconds a new connection has to finish its HTTP request and WebSocket upgrade.
    #[arg(long, default_value = "10", value_name = "SECS", value_parser = parse_seconds, env = "WSCHAT_HANDSHAKE_TIMEOUT")]
    pub handshake_timeout: Duration,

    /// Seconds to wait for the client's close frame after the server sent its own, and for a
    /// client to read an HTTP response, before dropping the socket.
    #[arg(long, default_value = "5", value_name = "SECS", value_parser = parse_seconds, env = "WSCHAT_CLOSE_TIMEOUT")]
    pub close_timeout: Duration,

    /// Seconds a graceful shutdown (SIGINT, SIGTERM) may take to close every connection.
    #[arg(long, default_value = "5", value_name = "SECS", value_parser = parse_seconds, env = "WSCHAT_SHUTDOWN_TIMEOUT")]
    pub shutdown_timeout: Duration,

    /// Most milliseconds output may be held back so that it goes out with more in one write.
    /// Writing is paced to take at most half the loop's time: after a round of writes that took
    /// 4 ms, the next waits until 8 ms after it began. Cheap rounds are never held back. 0
    /// writes at the end of every loop iteration.
    #[arg(long, default_value_t = 15, value_name = "MS", value_parser = clap::value_parser!(u64).range(0..=1000), env = "WSCHAT_MAX_WRITE_DELAY_MS")]
    pub max_write_delay_ms: u64,

    /// Accept WebSocket upgrades only from this Origin (repeatable), e.g. `https://chat.example`.
    /// Without it every origin is accepted.
    #[arg(long = "origin", value_name = "ORIGIN", env = "WSCHAT_ORIGIN", value_delimiter = ',')]
    pub origins: Vec<String>,

    /// A proxy (CIDR, e.g. `127.0.0.1/32`; repeatable) whose `Forwarded` or `X-Forwarded-For`
    /// header names the client. Only when the TCP peer is inside one is the header read, right to
    /// left, skipping trusted hops; from anyone else it is ignored. None by default.
    #[arg(long = "trusted-proxy", value_name = "CIDR", env = "WSCHAT_TRUSTED_PROXY", value_delimiter = ',', value_parser = parse_cidr)]
    pub trusted_proxies: Vec<IpNet>,

    /// Most WebSocket connections from one client address (behind a trusted proxy, the address
    /// it forwarded); past it, an upgrade gets HTTP 429. 0 turns it off.
    #[arg(long, default_value_t = 0, value_name = "N", env = "WSCHAT_MAX_CONNECTIONS_PER_IP")]
    pub max_connections_per_ip: usize,

    /// Set SO_REUSEPORT on the listener, so several processes on one machine can listen on the
    /// same address and the kernel spreads new connections over them.
    #[arg(long, env = "WSCHAT_REUSE_PORT")]
    pub reuse_port: bool,

    /// Join the cluster of wschat processes that share this Redis (`redis://HOST:PORT[/DB]`):
    /// rooms, names, membership and history live there. Without it, wschat runs alone.
    #[arg(long, value_name = "URL", value_parser = parse_redis_url, env = "WSCHAT_REDIS")]
    pub redis: Option<RedisUrl>,

    /// The prefix of every Redis key and channel, so several clusters can share one Redis.
    #[arg(long, default_value = "wschat", value_name = "PREFIX", value_parser = parse_label, env = "WSCHAT_REDIS_PREFIX")]
    pub redis_prefix: String,

    /// This process's name in the cluster (letters, digits, `.`, `_`, `-`); by default one made
    /// of the host name, the process id and random bits, unique to this run.
    #[arg(long, value_name = "ID", value_parser = parse_label, env = "WSCHAT_NODE_ID")]
    pub node_id: Option<String>,

    /// How long a node that vanished without a word (killed, its machine gone) keeps its
    /// members: after it, the other nodes announce them `left` and free their names.
    #[arg(long, default_value = "15", value_name = "SECS", value_parser = parse_seconds, env = "WSCHAT_NODE_TIMEOUT")]
    pub node_timeout: Duration,

    /// A file holding the secret that signs tokens (JWT, HS256; the whole file, a trailing line
    /// ending dropped). Turns on tokens: clients pass one as `?token=` on the upgrade. A file, not
    /// a flag, so the secret is not in `ps`.
    #[arg(long, value_name = "PATH", env = "WSCHAT_AUTH_SECRET_FILE")]
    pub auth_secret_file: Option<PathBuf>,

    /// With a secret: whether every client needs a valid token (`required`, the default) or
    /// clients without one are guests (`optional`). A bad token gets 401 either way.
    #[arg(long, value_name = "MODE", env = "WSCHAT_AUTH", requires = "auth_secret_file")]
    pub auth: Option<AuthMode>,

    /// A PEM file holding the server's certificate chain, the server's own certificate first.
    /// With `--tls-key`, the listener speaks TLS: wss:// (and the page over https://). SIGHUP
    /// reads both files again.
    #[arg(long, value_name = "PEM", env = "WSCHAT_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// A PEM file holding the private key of `--tls-cert` (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "PEM", env = "WSCHAT_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// The input buffer tungstenite allocates up front for every connection, and the most it asks
    /// of the socket per `read` call. Not a flag: 0 allocates nothing until a frame arrives (then
    /// as much as the frame needs), and tungstenite asks for a frame header's worth (14 bytes) at
    /// a time, which the loop's shared inbox answers from memory: a chat frame still takes one
    /// system call. The echo example raises it for the conformance suite's 16 MiB messages.
    #[arg(skip = 0_usize)]
    pub read_buffer_bytes: usize,

    /// Log level: off, error, warn, info, debug or trace.
    #[arg(long, default_value = "info", value_name = "LEVEL", env = "WSCHAT_LOG_LEVEL")]
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
        WebSocketConfig::default()
            // Allocated for every connection, so it stays small: the default 128 KiB would be
            // 1.2 GiB at 10,000 idle connections.
            .read_buffer_size(self.read_buffer_bytes)
            // tungstenite writes its own frames (pongs, close frames) at once, into the reactor's
            // per-connection queue, which holds the handler's frames too and is bounded by
            // `--max-send-buffer`; so tungstenite's buffer never holds more than one frame.
            .write_buffer_size(0)
            .max_write_buffer_size(self.max_send_buffer as usize)
            .max_message_size(Some(self.max_message_bytes as usize))
            .max_frame_size(Some(self.max_message_bytes as usize))
    }
}

/// Parses a rate: a finite number of frames per second, 0 or more.
fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate >= 0.0 => Ok(rate),
        _ => Err(format!("`{text}` is not a rate (a number of messages per second, 0 for none)")),
    }
}

/// Where the cluster's Redis is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedisUrl {
    pub addr: SocketAddr,
    pub db: u32,
}

/// Parses `redis://HOST:PORT[/DB]` (the port defaults to 6379), resolving HOST once, now.
fn parse_redis_url(text: &str) -> Result<RedisUrl, String> {
    let rest =
        text.strip_prefix("redis://").ok_or_else(|| format!("`{text}` does not start with redis://"))?;
    let (host_port, db) = match rest.split_once('/') {
        Some((host_port, "")) => (host_port, 0),
        Some((host_port, db)) => {
            (host_port, db.parse().map_err(|_| format!("`{db}` is not a database number"))?)
        }
        None => (rest, 0),
    };
    if host_port.contains('@') {
        return Err("passwords in the Redis URL are not supported".to_owned());
    }
    let with_port = if host_port.rsplit_once(':').is_some_and(|(_, port)| port.parse::<u16>().is_ok()) {
        host_port.to_owned()
    } else {
        format!("{host_port}:6379")
    };
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&with_port)
        .map_err(|error| format!("cannot resolve `{host_port}`: {error}"))?
        .next()
        .ok_or_else(|| format!("`{host_port}` has no address"))?;
    Ok(RedisUrl { addr, db })
}

/// Parses a name used in Redis keys: 1 to 64 letters, digits, `.`, `_` or `-`.
fn parse_label(text: &str) -> Result<String, String> {
    let fine = |byte: u8| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-');
    if text.is_empty() || text.len() > 64 || !text.bytes().all(fine) {
        return Err(format!("`{text}` must be 1 to 64 letters, digits, `.`, `_` or `-`"));
    }
    Ok(text.to_owned())
}

/// The longest timeout or interval accepted.
const MAX_SECONDS: f64 = 365.0 * 24.0 * 3600.0;

/// Parses a network in CIDR notation; a bare address is that one address.
fn parse_cidr(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("`{text}` is not an address or a network such as 10.0.0.0/8"))
}

/// Parses a number of seconds that may also be 0.
fn parse_seconds_or_zero(text: &str) -> Result<Duration, String> {
    match text.parse::<f64>() {
        Ok(0.0) => Ok(Duration::ZERO),
        _ => parse_seconds(text),
    }
}

/// Parses a positive number of seconds, fractions allowed (`0.5`, `30`).
fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text.parse().map_err(|_| format!("`{text}` is not a number of seconds"))?;
    // Also refuses NaN, which compares false with everything.
    if seconds.is_nan() || seconds <= 0.0 {
        return Err("must be more than 0 seconds".to_owned());
    }
    // Deadlines are `Instant + Duration`, which must not overflow; a year is plenty.
    if seconds > MAX_SECONDS {
        return Err(format!("must be at most {MAX_SECONDS} seconds (a year)"));
    }
    Duration::try_from_secs_f64(seconds).map_err(|error| format!("`{text}`: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_may_be_fractional_but_must_be_positive() {
        assert_eq!(parse_seconds("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_seconds("30"), Ok(Duration::from_secs(30)));
        for bad in ["0", "-1", "abc", "NaN", "inf", "1e18"] {
            assert!(parse_seconds(bad).is_err(), "{bad} should be refused");
        }
        assert_eq!(parse_cidr("10.0.0.0/8").map(|net| net.to_string()), Ok("10.0.0.0/8".to_owned()));
        assert_eq!(parse_cidr("::1").map(|net| net.to_string()), Ok("::1/128".to_owned()));
        assert!(parse_cidr("10.0.0.0/33").is_err() && parse_cidr("proxy").is_err());
        assert_eq!(parse_seconds_or_zero("0"), Ok(Duration::ZERO));
        assert_eq!(parse_seconds_or_zero("2.5"), Ok(Duration::from_millis(2500)));
        assert!(parse_seconds_or_zero("-1").is_err());
    }

    #[test]
    fn defaults_match_the_documentation() {
        let config = Config::default();
        assert_eq!(config.bind.to_string(), "127.0.0.1:9001");
        assert_eq!((config.history, config.max_message_bytes, config.max_connections), (50, 65536, 10_000));
        assert_eq!(config.ping_interval, Duration::from_secs(30));
        assert_eq!(config.ping_timeout, Duration::from_secs(10));
        assert_eq!(config.handshake_timeout, Duration::from_secs(10));
        assert_eq!(config.close_timeout, Duration::from_secs(5));
        assert_eq!(config.max_write_delay_ms, 15);
        assert_eq!(config.history_ttl, Duration::from_secs(300));
        assert_eq!(config.history_memory, 64 << 20);
        assert_eq!(config.socket_send_buffer, 64 << 10);
        assert_eq!(config.log_level, LevelFilter::Info);
        assert_eq!((config.redis, config.redis_prefix.as_str()), (None, "wschat"));
        assert_eq!(config.node_timeout, Duration::from_secs(15));
    }

    #[test]
    fn redis_urls_name_an_address_and_a_database() {
        let url = parse_redis_url("redis://127.0.0.1:7000/3").unwrap();
        assert_eq!((url.addr.to_string().as_str(), url.db), ("127.0.0.1:7000", 3));
        assert_eq!(parse_redis_url("redis://127.0.0.1").unwrap().addr.port(), 6379);
        assert_eq!(parse_redis_url("redis://127.0.0.1:7000/").unwrap().db, 0);
        for bad in ["127.0.0.1:6379", "redis://127.0.0.1:6379/x", "redis://user:pw@127.0.0.1"] {
            assert!(parse_redis_url(bad).is_err(), "{bad} should be refused");
        }
        assert!(parse_label("node-1.a_b").is_ok());
        assert!(parse_label("").is_err() && parse_label("a b").is_err() && parse_label("a:b").is_err());
    }
}
