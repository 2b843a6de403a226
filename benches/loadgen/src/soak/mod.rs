//! `loadgen soak`: one server process held near its file limit for a long time while everything
//! that can go wrong at once does: churn (clean closes, resets, half-sent frames, members moving
//! between rooms), steady chatter in many small rooms and one of 1,000, a short heartbeat, and bad
//! actors of every kind. Every delivery is checked (`sequence.rs`), every bad actor judged
//! (`actors.rs`), the server's memory, CPU, slab and timer wheel watched (`server.rs`), and the
//! verdict given (`verdict.rs`). The load generator starts the server itself, so it knows the
//! limits the server runs with.
//!
//! The run: connect the members that stay; load for `--duration`; wind down (no new arrivals,
//! churners leave, bad actors finish); drain (every member has seen its room's last seq, every
//! message its ack); check the slab and the wheel against what is alive; close everyone, check
//! again; SIGTERM, which must end the server with status 0.

mod actors;
mod load;
mod phases;
mod sequence;
mod server;
mod verdict;
mod world;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use clap::Args;

/// The soak's clock, shared with the engine (whose microseconds count from the same instant).
static START: OnceLock<Instant> = OnceLock::new();

/// Microseconds since the soak started.
pub fn now_us() -> u64 {
    START.get().map_or(0, |start| start.elapsed().as_micros() as u64)
}

#[derive(Args, Clone)]
pub struct SoakArgs {
    /// The wschat binary to start (on 127.0.0.1, port 0) and soak.
    #[arg(long)]
    pub server: String,
    /// More flags for the server (repeatable), after the soak's own.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    pub server_args: Vec<String>,
    /// Seconds of load (connecting before and draining after take a little more).
    #[arg(long, default_value_t = 600.0)]
    pub duration: f64,
    /// The most sockets open at once, every kind together: members that stay take what churn and
    /// the bad actors do not. 19,900 fits the server's 20,000-file limit with room for its own.
    #[arg(long, default_value_t = 19_900)]
    pub connections: usize,
    /// Members of the one big room.
    #[arg(long, default_value_t = 1000)]
    pub big_room: usize,
    /// Members per small room.
    #[arg(long, default_value_t = 10)]
    pub room_size: usize,
    /// Messages per second across the small rooms (each from a random member).
    #[arg(long, default_value_t = 500.0)]
    pub small_rate: f64,
    /// Messages per second in the big room.
    #[arg(long, default_value_t = 4.0)]
    pub big_rate: f64,
    /// New churning connections per second (as many leave).
    #[arg(long, default_value_t = 300.0)]
    pub churn_rate: f64,
    /// Shortest and longest life of a churning connection, seconds.
    #[arg(long, default_value_t = 1.0)]
    pub churn_min_life: f64,
    #[arg(long, default_value_t = 6.0)]
    pub churn_max_life: f64,
    /// Share of churners that go to the big room (each costs it a `joined` and a `left` to all).
    #[arg(long, default_value_t = 0.01)]
    pub churn_big_share: f64,
    /// Rooms churners make and leave empty (dropped after `--history-ttl`, made again later).
    #[arg(long, default_value_t = 200)]
    pub ephemeral_rooms: usize,
    /// Half-sent requests held open at once.
    #[arg(long, default_value_t = 200)]
    pub slowloris: usize,
    /// Seconds between two clients that stop reading.
    #[arg(long, default_value_t = 3.0)]
    pub stopped_every: f64,
    /// Seconds between two flooders; each sends `--flood-rate` for `--flood-secs`.
    #[arg(long, default_value_t = 10.0)]
    pub flood_every: f64,
    #[arg(long, default_value_t = 150.0)]
    pub flood_rate: f64,
    #[arg(long, default_value_t = 2.0)]
    pub flood_secs: f64,
    /// Seconds between two clients sending a bad frame (the kinds take turns).
    #[arg(long, default_value_t = 0.5)]
    pub bad_frame_every: f64,
    /// Probe messages per second (the probe's round trips are the latency figures).
    #[arg(long, default_value_t = 10.0)]
    pub probe_rate: f64,
    /// Firehose messages per second and their size: what fills the buffers of clients that stop.
    #[arg(long, default_value_t = 10.0)]
    pub firehose_rate: f64,
    #[arg(long, default_value_t = 16_384)]
    pub firehose_bytes: usize,
    /// Server flags the checks depend on.
    #[arg(long, default_value_t = 2.0)]
    pub ping_interval: f64,
    #[arg(long, default_value_t = 10.0)]
    pub ping_timeout: f64,
    #[arg(long, default_value_t = 5.0)]
    pub handshake_timeout: f64,
    #[arg(long, default_value_t = 20.0)]
    pub rate_limit: f64,
    #[arg(long, default_value_t = 262_144)]
    pub max_send_buffer: usize,
    #[arg(long, default_value_t = 65_536)]
    pub max_message_bytes: usize,
    #[arg(long, default_value_t = 30)]
    pub history_ttl: u64,
    /// Seconds between two samples of the server's memory, CPU and `/stats`.
    #[arg(long, default_value_t = 10.0)]
    pub sample_every: f64,
    /// RSS may grow over the last half of the load by this fraction of its value at the half-way
    /// mark, or by `--rss-tolerance-mib`, whichever is more.
    #[arg(long, default_value_t = 0.05)]
    pub rss_tolerance: f64,
    #[arg(long, default_value_t = 4.0)]
    pub rss_tolerance_mib: f64,
    /// Where to write the server's log, the JSON report and the RSS plot.
    #[arg(long, default_value = "/tmp/wschat-soak")]
    pub out_dir: String,
    /// Also draw the RSS plot here (e.g. docs/soak-rss.svg).
    #[arg(long)]
    pub svg: Option<String>,
    /// Loopback source addresses to spread the clients over (127.0.0.1 and up).
    #[arg(long, default_value_t = 8)]
    pub sources: u8,
    /// Most handshakes in flight while connecting the members.
    #[arg(long, default_value_t = 200)]
    pub concurrency: usize,
    /// No per-minute lines on stderr.
    #[arg(long)]
    pub quiet: bool,
}

impl SoakArgs {
    /// The flags the server is started with.
    fn server_flags(&self) -> Vec<String> {
        let mut flags: Vec<String> = [
            ("--bind", "127.0.0.1:0".to_owned()),
            ("--log-level", "info".to_owned()),
            ("--max-connections", self.connections.to_string()),
            ("--ping-interval", self.ping_interval.to_string()),
            ("--ping-timeout", self.ping_timeout.to_string()),
            ("--handshake-timeout", self.handshake_timeout.to_string()),
            ("--rate-limit", self.rate_limit.to_string()),
            ("--max-send-buffer", self.max_send_buffer.to_string()),
            ("--max-message-bytes", self.max_message_bytes.to_string()),
            ("--history-ttl", self.history_ttl.to_string()),
        ]
        .into_iter()
        .flat_map(|(flag, value)| [flag.to_owned(), value])
        .collect();
        flags.extend(self.server_args.iter().cloned());
        flags
    }
}

/// Runs the soak; `Err` if it could not run or any check failed (the report says which).
pub fn run(args: &SoakArgs, start: Instant) -> Result<(), String> {
    START.set(start).map_err(|_| "the soak runs once per process".to_owned())?;
    std::fs::create_dir_all(&args.out_dir).map_err(|error| format!("{}: {error}", args.out_dir))?;
    let own_limit = rlimit::Resource::NOFILE.get().map_or(0, |(soft, _)| soft);
    if own_limit < args.connections as u64 + 32 {
        return Err(format!(
            "{} connections need an open-files limit of at least {}; this process has {own_limit}",
            args.connections,
            args.connections + 32
        ));
    }
    let log = format!("{}/server.log", args.out_dir);
    let mut server = server::Server::start(&args.server, &args.server_flags(), &log)?;
    let samples = server::watch(server.addr, server.pid, Duration::from_secs_f64(args.sample_every), start);
    let run = phases::run(args, &mut server, samples, start)?;
    let report = verdict::Report::build(args, run);
    report.write(args)?;
    if report.passed() { Ok(()) } else { Err(format!("the soak failed: {}", report.failures().join("; "))) }
}
