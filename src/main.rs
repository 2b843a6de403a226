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
    if let Err(problem) = check_buffers(&config) {
        error!("{problem}");
        return ExitCode::from(2);
    }
    // Half the send buffer for history leaves the other half for the member list in a welcome.
    let mut chat = Chat::new(config.history).with_history_bytes(config.max_send_buffer as usize / 2);
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
/// message must fit in a recipient's send buffer, or every recipient would be dropped as slow.
fn check_buffers(config: &Config) -> Result<(), String> {
    let largest_event = 6 * u64::from(config.max_message_bytes) + 1024;
    if u64::from(config.max_send_buffer) < largest_event {
        return Err(format!(
            "--max-send-buffer ({}) must be at least 6 × --max-message-bytes + 1024 ({largest_event}): \
             a message's text can grow six-fold when escaped as JSON",
            config.max_send_buffer
        ));
    }
    Ok(())
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
