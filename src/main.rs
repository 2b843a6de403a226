//! The `wschat` binary: parse flags, set up logging and the file-descriptor limit, run the chat
//! on the reactor.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use log::{error, info, warn};
use wschat::auth::{self, AuthMode, Verifier};
use wschat::chat::RateLimit;
use wschat::chat::signed::Auth;
use wschat::cluster::{Cluster, Settings};
use wschat::config::RedisUrl;
use wschat::{Chat, Config, Reactor};

/// The command line: the server's flags, or a subcommand.
#[derive(Parser)]
#[command(name = "wschat", version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(flatten)]
    config: Config,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Print a signed token (JWT, HS256) for `--auth-secret-file`, for testing and for backends.
    Token {
        /// The member's name (the `sub` claim).
        #[arg(long)]
        sub: String,
        /// Seconds until the token runs out (the `exp` claim).
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
        /// The file holding the secret, as for `--auth-secret-file`.
        #[arg(long, value_name = "PATH")]
        secret_file: PathBuf,
        /// A room the token allows (repeatable; without it, any room).
        #[arg(long = "room", value_name = "ROOM")]
        rooms: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Token { sub, ttl, secret_file, rooms }) = cli.command {
        return print_token(&sub, ttl, &secret_file, rooms);
    }
    let config = cli.config;
    // simple_logger writes to stderr (the `stderr` feature), leaving stdout free.
    if let Err(error) =
        simple_logger::SimpleLogger::new().with_level(config.log_level).with_utc_timestamps().init()
    {
        eprintln!("cannot set up logging: {error}");
    }
    raise_descriptor_limit();
    warn_about_buffers(&config);
    let auth = match &config.auth_secret_file {
        None => None,
        Some(path) => match read_secret(path).and_then(|secret| Verifier::new(&secret)) {
            Ok(verifier) => {
                let mode = config.auth.unwrap_or(AuthMode::Required);
                info!("tokens are {}", if mode == AuthMode::Required { "required" } else { "optional" });
                Some(Auth { verifier, mode })
            }
            Err(problem) => {
                error!("--auth-secret-file {}: {problem}", path.display());
                return ExitCode::from(2);
            }
        },
    };
    let rate_limit = (config.rate_limit > 0.0).then_some(RateLimit { per_second: config.rate_limit });
    let result = match config.redis {
        None => Reactor::bind(&config, chat(&config, rate_limit, auth)).and_then(|mut reactor| reactor.run()),
        Some(redis) => {
            let cluster = cluster(&config, redis, rate_limit, auth);
            Reactor::bind(&config, cluster).and_then(|mut reactor| reactor.run())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // A certificate or key that cannot serve (`Reactor::bind` says why).
        Err(error) if error.get_ref().is_some_and(|source| source.is::<wschat::tls::Unusable>()) => {
            error!("--tls-cert/--tls-key: {error}");
            ExitCode::from(2)
        }
        Err(error) => {
            error!("wschat stopped: {error} (bind address {})", config.bind);
            ExitCode::FAILURE
        }
    }
}

/// The chat on its own, the default.
fn chat(config: &Config, rate_limit: Option<RateLimit>, auth: Option<Auth>) -> Chat {
    // Half the send buffer for history leaves the other half for the member list in a welcome.
    let mut chat = Chat::new(config.history)
        .with_history_bytes(history_bytes(config))
        .with_history_ttl(config.history_ttl)
        .with_history_memory(config.history_memory);
    if let Some(limit) = rate_limit {
        chat = chat.with_rate_limit(limit);
    }
    if let Some(auth) = auth {
        chat = chat.with_auth(auth.verifier, auth.mode);
    }
    chat
}

/// The chat across the cluster that shares `redis` (`--redis`).
fn cluster(config: &Config, redis: RedisUrl, rate_limit: Option<RateLimit>, auth: Option<Auth>) -> Cluster {
    let node = config.node_id.clone().unwrap_or_else(default_node_id);
    let settings = Settings {
        redis: redis.addr,
        db: redis.db,
        prefix: config.redis_prefix.clone(),
        node,
        node_timeout_ms: u64::try_from(config.node_timeout.as_millis()).unwrap_or(u64::MAX),
        history: config.history,
        history_bytes: history_bytes(config),
        history_ttl_ms: u64::try_from(config.history_ttl.as_millis()).unwrap_or(u64::MAX),
    };
    let mut cluster = Cluster::new(settings);
    if let Some(limit) = rate_limit {
        cluster = cluster.with_rate_limit(limit);
    }
    if let Some(auth) = auth {
        cluster = cluster.with_auth(auth);
    }
    cluster
}

/// Half the send buffer for history leaves the other half for the member list in a welcome.
fn history_bytes(config: &Config) -> usize {
    config.max_send_buffer as usize / 2
}

/// A node id unique to this run: the host's name, the process id and random bits.
fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host: String =
        host.trim().chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').take(40).collect();
    let host = if host.is_empty() { "wschat".to_owned() } else { host };
    format!("{host}-{}-{:04x}", std::process::id(), fastrand::u16(..))
}

/// The secret: the file's bytes, less one trailing line ending (editors and `echo` add one).
fn read_secret(path: &Path) -> Result<Vec<u8>, String> {
    let mut secret = std::fs::read(path).map_err(|error| format!("cannot read it: {error}"))?;
    if secret.ends_with(b"\n") {
        secret.pop();
        if secret.ends_with(b"\r") {
            secret.pop();
        }
    }
    Ok(secret)
}

/// `wschat token`: prints a token to stdout.
fn print_token(sub: &str, ttl: u64, secret_file: &Path, rooms: Vec<String>) -> ExitCode {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs());
    let rooms = (!rooms.is_empty()).then_some(rooms);
    match read_secret(secret_file).and_then(|secret| auth::mint(&secret, sub, now.saturating_add(ttl), rooms))
    {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(problem) => {
            eprintln!("wschat token: {}: {problem}", secret_file.display());
            ExitCode::from(2)
        }
    }
}

/// A chat message's text can grow six-fold as JSON (a control character becomes `\u0001`), and a
/// message's event must fit in a recipient's send buffer. One that does not is refused with a
/// `too_large` error to its sender, so any combination works; say so when it can happen.
fn warn_about_buffers(config: &Config) {
    let largest_event = 6 * u64::from(config.max_message_bytes) + 1024;
    if u64::from(config.max_send_buffer) < largest_event {
        warn!(
            "--max-send-buffer {} holds less than the largest possible message event ({largest_event} bytes: \
             6 × --max-message-bytes {}, as JSON escaping can grow a text six-fold, plus 1 KiB): \
             a message whose event would not fit is refused with a `too_large` error to its sender",
            config.max_send_buffer, config.max_message_bytes
        );
    }
}

/// Every connection is a file descriptor, and the soft limit is often 1024: raise it to the hard
/// limit, which is what caps the connections one process can hold.
fn raise_descriptor_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(soft) => {
            let hard = rlimit::Resource::NOFILE.get().map(|(_, hard)| hard).unwrap_or(soft);
            info!("file descriptor limit: soft {soft}, hard {hard}");
        }
        Err(error) => warn!("cannot raise the file descriptor limit: {error}"),
    }
}
