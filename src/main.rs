//! The `wschat` binary: parse flags, set up logging and the file-descriptor limit, run the chat
//! on the reactor.

use std::process::ExitCode;

use clap::Parser;
use log::{error, info, warn};
use wschat::chat::RateLimit;
use wschat::{Chat, Config, Reactor};

fn main() -> ExitCode {
    let config = Config::parse();
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
    let result = Reactor::bind(&config, chat).and_then(|mut reactor| reactor.run());
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            error!("wschat stopped: {error} (bind address {})", config.bind);
            ExitCode::FAILURE
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
