//! The `wschat` binary: parse flags, set up logging and the file-descriptor limit, run the chat
//! on the reactor.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use log::{error, info, warn};
use wschat::auth::{self, AuthMode, Verifier};
use wschat::chat::RateLimit;
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
    // Half the send buffer for history leaves the other half for the member list in a welcome.
    let mut chat = Chat::new(config.history)
        .with_history_bytes(config.max_send_buffer as usize / 2)
        .with_history_ttl(config.history_ttl)
        .with_history_memory(config.history_memory);
    if config.rate_limit > 0.0 {
        chat = chat.with_rate_limit(RateLimit { per_second: config.rate_limit });
    }
    if let Some(path) = &config.auth_secret_file {
        let verifier = match read_secret(path).and_then(|secret| Verifier::new(&secret)) {
            Ok(verifier) => verifier,
            Err(problem) => {
                error!("--auth-secret-file {}: {problem}", path.display());
                return ExitCode::from(2);
            }
        };
        let mode = config.auth.unwrap_or(AuthMode::Required);
        info!("tokens are {}", if mode == AuthMode::Required { "required" } else { "optional" });
        chat = chat.with_auth(verifier, mode);
    }
    let result = Reactor::bind(&config, chat).and_then(|mut reactor| reactor.run());
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            error!("wschat stopped: {error} (bind address {})", config.bind);
            ExitCode::FAILURE
        }
    }
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
