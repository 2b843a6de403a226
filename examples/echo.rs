//! An echo server on wschat's reactor, for the Autobahn conformance suite: every text and binary
//! message comes back unchanged. It is the chat server's event loop, unchanged, with a
//! three-line handler plugged in and the limits raised for the suite's 16 MiB messages.
//!
//! `cargo run --release --example echo -- --bind 127.0.0.1:9002` (add `--tls-cert PEM --tls-key
//! PEM` for wss://, as `AUTOBAHN_TLS=1 scripts/autobahn.sh` does)

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use mio::Token;
use wschat::handler::{Frame, Handler, Message, Outbox};
use wschat::{Config, Reactor};

/// Echo server on the wschat reactor (for the Autobahn test suite).
#[derive(Parser)]
struct Arguments {
    /// Address to listen on; port 0 picks a free port and the log says which.
    #[arg(long, default_value = "127.0.0.1:9002")]
    bind: SocketAddr,
    /// Log level: off, error, warn, info, debug or trace.
    #[arg(long, default_value = "info")]
    log_level: log::LevelFilter,
    /// Serve wss:// with this certificate chain (PEM), as the chat server's flag does.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of `--tls-cert` (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

struct Echo;

impl Handler for Echo {
    fn on_open<O: Outbox>(&mut self, _connection: Token, _target: &str, _out: &mut O) {}

    fn on_message<O: Outbox>(&mut self, connection: Token, message: Message, out: &mut O) {
        match message {
            Message::Text(text) => out.send(connection, &Frame::text(&text)),
            Message::Binary(payload) => out.send(connection, &Frame::binary(&payload)),
            _ => {}
        }
    }

    fn on_close<O: Outbox>(&mut self, _connection: Token, _out: &mut O) {}
}

fn main() -> ExitCode {
    let arguments = Arguments::parse();
    if let Err(error) = simple_logger::SimpleLogger::new().with_level(arguments.log_level).init() {
        eprintln!("cannot set up logging: {error}");
    }
    let config = Config {
        bind: arguments.bind,
        log_level: arguments.log_level,
        // The suite sends messages of up to 16 MiB and expects them back whole.
        max_message_bytes: 16 << 20,
        max_send_buffer: 64 << 20,
        read_buffer_bytes: 64 << 10,
        // Every echo is a round trip the suite waits for: write at once.
        max_write_delay_ms: 0,
        tls_cert: arguments.tls_cert,
        tls_key: arguments.tls_key,
        ..Config::default()
    };
    match Reactor::bind(&config, Echo).and_then(|mut reactor| reactor.run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            log::error!("echo server stopped: {error}");
            ExitCode::FAILURE
        }
    }
}
