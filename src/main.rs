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
    let mut chat = Chat::new(config.history);
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
