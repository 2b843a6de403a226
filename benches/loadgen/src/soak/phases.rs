//! The soak from start to end: connect the members that stay, load for `--duration`, wind down,
//! drain, check the slab and the timer wheel against what is alive, close everyone, check again,
//! stop the server. Each phase has a deadline; a phase that runs out says so in the report.

use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::actors::Kind;
use super::load::{Churn, Soak};
use super::server::{self, Sample, Server};
use super::world::{Limits, Role, World};
use super::{SoakArgs, now_us};
use crate::net::{Options, Target};
use crate::procfs;
use crate::stats::Summary;

/// The slab and the wheel, as `/stats` reported them at an end check.
#[derive(Debug, Default, Clone, Serialize)]
pub struct EndCheck {
    pub connections: u64,
    pub expected_connections: u64,
    pub slab_slots: u64,
    pub timer_entries: u64,
    pub handler_timers: u64,
    /// Whether the counts settled where they should before the check's deadline.
    pub settled: bool,
}

/// Everything the run saw, for `verdict.rs`.
pub struct Run {
    pub world: World,
    pub samples: Vec<Sample>,
    pub members: usize,
    pub small_rooms: usize,
    pub connect_secs: f64,
    pub load_start_secs: f64,
    pub load_end_secs: f64,
    pub peak_sockets: usize,
    pub churn: Churn,
    pub drained: bool,
    pub stragglers: usize,
    pub live: EndCheck,
    pub closed: EndCheck,
    pub slow_consumers_dropped: u64,
    pub rss_end_kib: Option<u64>,
    pub server_cpu_secs: Option<f64>,
    pub loadgen_cpu_secs: f64,
    pub probe_minutes: Vec<Summary>,
    pub server_exit: Option<i32>,
    pub server_panicked: bool,
    pub server_warnings: u64,
    pub server_log: String,
}

/// Runs every phase against the started `server`.
pub fn run(
    args: &SoakArgs,
    server: &mut Server,
    samples: Receiver<Sample>,
    start: Instant,
) -> Result<Run, String> {
    let target = Target::parse(&format!("ws://{}/", server.addr), false)?;
    let limits = Limits {
        heartbeat_secs: args.ping_interval + args.ping_timeout,
        handshake_secs: args.handshake_timeout,
        rate_limit: args.rate_limit,
    };
    let mut soak = Soak::new(args, target, limits, start)?;
    let connect_start = Instant::now();
    let members = connect(&mut soak)?;
    let connect_secs = connect_start.elapsed().as_secs_f64();
    if !args.quiet {
        eprintln!(
            "soak: {members} members connected in {connect_secs:.1} s ({} small rooms of {}, one of {}); loading for {} s",
            soak.small_rooms, args.room_size, args.big_room, args.duration
        );
    }

    let load_start = Instant::now();
    let server_cpu_start = procfs::cpu_seconds(server.pid);
    let own_cpu_start = procfs::own_cpu_seconds();
    let mut collected = Vec::new();
    let probe_minutes = load(&mut soak, server, &samples, &mut collected, load_start)?;
    let load_end = Instant::now();
    let server_cpu_secs =
        procfs::cpu_seconds(server.pid).zip(server_cpu_start).map(|(end, start)| end - start);
    let loadgen_cpu_secs = procfs::own_cpu_seconds() - own_cpu_start;

    let stragglers = wind_down(&mut soak)?;
    let drained = drain(&mut soak)?;
    let alive = soak.world.clients.iter().flatten().count() as u64;
    let live = settle(server, alive, Duration::from_secs(20));
    let rss_end_kib = procfs::rss_kib(server.pid);
    let slow_consumers_dropped = server::stats(server.addr)
        .ok()
        .and_then(|stats| stats["slow_consumers_dropped"].as_u64())
        .unwrap_or(0);
    close_everyone(&mut soak)?;
    let closed = settle(server, 0, Duration::from_secs(20));
    collected.extend(samples.try_iter());
    collected.push(Sample::take(server.addr, server.pid, start.elapsed().as_secs_f64()));
    let server_exit = server.terminate(Duration::from_secs(15));
    Ok(Run {
        world: soak.world,
        samples: collected,
        members,
        small_rooms: soak.small_rooms,
        connect_secs,
        load_start_secs: load_start.duration_since(start).as_secs_f64(),
        load_end_secs: load_end.duration_since(start).as_secs_f64(),
        peak_sockets: soak.peak,
        churn: soak.churn,
        drained,
        stragglers,
        live,
        closed,
        slow_consumers_dropped,
        rss_end_kib,
        server_cpu_secs,
        loadgen_cpu_secs,
        probe_minutes,
        server_exit,
        server_panicked: server.panicked(),
        server_warnings: server.warnings(),
        server_log: server.log_path().to_owned(),
    })
}

/// Opens the members that stay, `--concurrency` handshakes at a time, and waits for every
/// welcome. Returns how many.
fn connect(soak: &mut Soak) -> Result<usize, String> {
    let args = soak.args;
    let churners = args.churn_rate * (args.churn_min_life + args.churn_max_life) / 2.0;
    // What churn and the bad actors hold at once, on average, and a little more: members take the
    // rest, and an arrival that would pass `--connections` waits (and is counted as deferred).
    let reserve = args.slowloris + 40 + (churners * 1.05).ceil() as usize + 10;
    let fixed = args.big_room + 5;
    let members = args.connections.saturating_sub(reserve);
    if members < fixed + args.room_size {
        return Err(format!(
            "--connections {} leaves {members} members after {reserve} for churn and bad actors: too few for \
             the big room and one small room",
            args.connections
        ));
    }
    soak.small_rooms = (members - fixed).div_ceil(args.room_size.max(1));
    let mut rooms: Vec<String> =
        ["firehose", "firehose", "flood", "probe", "probe"].map(str::to_owned).to_vec();
    rooms.extend((0..args.big_room).map(|_| "big".to_owned()));
    rooms.extend((0..members - fixed).map(|i| format!("s-{}", i / args.room_size.max(1))));
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut keys = Vec::with_capacity(members);
    let mut welcomed = 0;
    while welcomed < members {
        while keys.len() < members && keys.len() - welcomed < args.concurrency {
            let room = &rooms[keys.len()];
            let key = soak.open(room, Role::Member, Options::default()).ok_or("cannot open a member")?;
            keys.push(key);
        }
        soak.turn(Duration::from_millis(5))?;
        welcomed =
            keys.iter().filter(|&&key| soak.world.get(key).is_some_and(|client| client.welcomed)).count();
        if !soak.world.healthy_lost.is_empty() {
            return Err(format!("members failed to connect: {:?}", soak.world.healthy_lost));
        }
        if Instant::now() > deadline {
            return Err(format!("only {welcomed} of {members} members welcomed within 120 s"));
        }
    }
    soak.firehose = keys[0];
    soak.probe = keys[3];
    soak.world.probe_sender = soak.world.get(keys[3]).map_or(0, |client| client.serial);
    soak.world.probe_receiver = soak.world.get(keys[4]).map_or(0, |client| client.serial);
    soak.big = keys[5..5 + args.big_room].to_vec();
    soak.small = keys[5 + args.big_room..].to_vec();
    Ok(members)
}

/// The load: steady sends, churn and bad actors until `--duration` has passed. Returns the probe's
/// latency, minute by minute.
fn load(
    soak: &mut Soak,
    server: &mut Server,
    samples: &Receiver<Sample>,
    collected: &mut Vec<Sample>,
    load_start: Instant,
) -> Result<Vec<Summary>, String> {
    let args = soak.args;
    let end = load_start + Duration::from_secs_f64(args.duration);
    let mut last = Instant::now();
    let mut minutes = Vec::new();
    let mut minute_end = load_start + Duration::from_secs(60);
    while Instant::now() < end {
        let until_next = soak.act_on_due();
        let now = Instant::now();
        let secs = now.duration_since(last).as_secs_f64();
        last = now;
        let now_us = now_us();
        for _ in 0..soak.due(0, args.small_rate, secs) {
            let at = soak.rng_below(soak.small.len());
            let key = soak.small[at];
            soak.world.say(&mut soak.engine, key, 0, now_us);
        }
        for _ in 0..soak.due(1, args.big_rate, secs) {
            let at = soak.rng_below(soak.big.len());
            let key = soak.big[at];
            soak.world.say(&mut soak.engine, key, 0, now_us);
        }
        for _ in 0..soak.due(2, args.firehose_rate, secs) {
            soak.world.say(&mut soak.engine, soak.firehose, args.firehose_bytes, now_us);
        }
        for _ in 0..soak.due(3, args.probe_rate, secs) {
            soak.world.say(&mut soak.engine, soak.probe, 0, now_us);
        }
        for _ in 0..soak.due(4, args.churn_rate, secs) {
            soak.arrive();
        }
        for _ in 0..soak.due(5, args.slowloris as f64 / args.handshake_timeout, secs) {
            soak.launch(Kind::Slowloris);
        }
        for _ in 0..soak.due(6, 1.0 / args.stopped_every, secs) {
            soak.launch(Kind::StoppedReader);
        }
        for _ in 0..soak.due(7, 1.0 / args.flood_every, secs) {
            soak.launch(Kind::Flooder);
        }
        for _ in 0..soak.due(8, 1.0 / args.bad_frame_every, secs) {
            let kind = soak.next_frame_kind();
            soak.launch(kind);
        }
        soak.turn(until_next.min(Duration::from_millis(5)))?;
        collected.extend(samples.try_iter());
        if Instant::now() >= minute_end {
            minute_end += Duration::from_secs(60);
            minutes.push(Summary::from_micros(&soak.world.probe_minute));
            soak.world.probe_minute.reset();
            if !args.quiet {
                progress(soak, minutes.len(), collected.last(), minutes.last());
            }
        }
        if !server.running() {
            return Err("the server exited during the load".to_owned());
        }
    }
    if !soak.world.probe_minute.is_empty() {
        minutes.push(Summary::from_micros(&soak.world.probe_minute));
    }
    Ok(minutes)
}

fn progress(soak: &Soak, minute: usize, sample: Option<&Sample>, probe: Option<&Summary>) {
    let lost: u64 = soak.world.healthy_lost.values().sum();
    eprintln!(
        "soak: minute {minute}: {} sockets, server RSS {} KiB, slab {} timers {}; probe p99 {:.2} ms; \
         delivered {}, lost {}, healthy lost {lost}",
        soak.engine.len(),
        sample.and_then(|s| s.rss_kib).map_or("?".to_owned(), |v| v.to_string()),
        sample.and_then(|s| s.slab_slots).map_or("?".to_owned(), |v| v.to_string()),
        sample.and_then(|s| s.timer_entries).map_or("?".to_owned(), |v| v.to_string()),
        probe.map_or(0.0, |p| p.p99),
        soak.world.tally.delivered,
        soak.world.tally.lost,
    );
}

/// No more arrivals or steady sends: churners leave on their schedule and bad actors meet their
/// rules (or their deadlines). Only the firehose goes on while a stopped reader is left, since it
/// is what fills their buffers. Returns how many were still there when its own deadline came.
fn wind_down(soak: &mut Soak) -> Result<usize, String> {
    let args = soak.args;
    let limit = args.churn_max_life.max(args.flood_secs) + args.ping_interval + args.ping_timeout + 10.0;
    let deadline = Instant::now() + Duration::from_secs_f64(limit);
    let mut last = Instant::now();
    while soak.transients() > 0 && Instant::now() < deadline {
        let until_next = soak.act_on_due();
        let secs = last.elapsed().as_secs_f64();
        last = Instant::now();
        let stopped =
            soak.world.clients.iter().flatten().any(|client| client.role == Role::Bad(Kind::StoppedReader));
        for _ in 0..soak.due(2, args.firehose_rate, secs) {
            if stopped {
                soak.world.say(&mut soak.engine, soak.firehose, args.firehose_bytes, now_us());
            }
        }
        soak.turn(until_next.min(Duration::from_millis(10)))?;
    }
    let left = soak.transients();
    for key in 0..soak.world.clients.len() {
        if soak.world.get(key).is_some_and(|client| client.role != Role::Member) {
            if let Some(Role::Bad(_)) = soak.world.get(key).map(|client| client.role) {
                soak.world.judge(
                    key,
                    super::actors::Outcome::Unexpected("still open at the end".into()),
                    0.0,
                );
            }
            soak.drop_now(key, true);
        }
    }
    Ok(left)
}

/// Waits until every message has its ack and every member has seen its room's newest seq.
fn drain(soak: &mut Soak) -> Result<bool, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let world = &soak.world;
        let pending = world.clients.iter().flatten().any(|client| {
            !client.unanswered.is_empty()
                || client.stream.room().is_some_and(|room| client.stream.latest() < world.rooms.newest(room))
        });
        if !pending {
            return Ok(true);
        }
        if Instant::now() > deadline {
            return Ok(false);
        }
        soak.turn(Duration::from_millis(10))?;
    }
}

/// Closes every member cleanly and waits for the server's answers.
fn close_everyone(soak: &mut Soak) -> Result<(), String> {
    for key in 0..soak.world.clients.len() {
        if soak.world.get(key).is_some() {
            soak.close(key);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while soak.world.clients.iter().flatten().next().is_some() && Instant::now() < deadline {
        soak.turn(Duration::from_millis(10))?;
    }
    Ok(())
}

/// Polls `/stats` until the server holds `connections` WebSockets and nothing else but the
/// request asking (one slot each, one deadline each, plus the chat's own), or `limit` passes.
fn settle(server: &Server, connections: u64, limit: Duration) -> EndCheck {
    let deadline = Instant::now() + limit;
    loop {
        let stats = server::stats(server.addr).unwrap_or_default();
        let field = |name: &str| stats[name].as_u64().unwrap_or(u64::MAX);
        let check = EndCheck {
            connections: field("connections"),
            expected_connections: connections,
            slab_slots: field("slab_slots"),
            timer_entries: field("timer_entries"),
            handler_timers: field("handler_timers"),
            settled: false,
        };
        let settled = check.connections == connections
            && check.slab_slots == connections + 1
            && check.timer_entries == check.slab_slots + check.handler_timers;
        if settled || Instant::now() > deadline {
            return EndCheck { settled, ..check };
        }
        std::thread::sleep(Duration::from_millis(100)); // Polling the counters; there is no event.
    }
}
