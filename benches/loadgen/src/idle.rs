//! The `idle` scenario: open N connections with bounded concurrency, wait for every welcome, and
//! report the connection rate, the connect-to-welcome latency and the server's resident memory
//! per connection (its RSS delta over N, from `/proc/PID/status`).
//!
//! Connections are spread over rooms of `room_size` members (`idle-0`, `idle-1`, ...): a single
//! room of 10,000 would make every arrival a broadcast to everyone already there (50 million
//! `joined` events) and every welcome a list of up to 10,000 users, which measures broadcasting,
//! not idle connections.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::net::{Engine, Handler, Target};
use crate::procfs;
use crate::proto::{Kind, classify};
use crate::stats::{Summary, bump};

pub struct IdleSpec {
    pub connections: usize,
    pub concurrency: usize,
    pub room_size: usize,
    pub connect_timeout: Duration,
    /// How long to hold the connections, quiet, before reading the server's memory.
    pub hold: Duration,
    pub server_pid: Option<u32>,
    /// Other processes to measure alike, as LABEL=PID (`--cpu-pid`): a proxy in front.
    pub others: Vec<(String, u32)>,
}

/// Another process's CPU while connecting and memory after, measured like the server's.
#[derive(Debug, Clone, Serialize)]
pub struct OtherIdleReport {
    pub cpu_secs: Option<f64>,
    pub cpu_us_per_connection: Option<f64>,
    pub rss_per_connection_bytes: Option<f64>,
}

struct Tracker {
    started_us: Vec<u64>,
    welcomed: Vec<bool>,
    welcomed_count: usize,
    closed_count: usize,
    close_reasons: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
    last_event_us: u64,
    last_welcome_us: u64,
    latency: Histogram<u64>,
}

impl Handler for Tracker {
    fn on_text(&mut self, key: usize, payload: &[u8], now_us: u64) {
        self.last_event_us = now_us;
        match classify(payload) {
            Kind::Welcome if !self.welcomed[key] => {
                self.welcomed[key] = true;
                self.welcomed_count += 1;
                self.last_welcome_us = now_us;
                self.latency.saturating_record(now_us.saturating_sub(self.started_us[key]).max(1));
            }
            Kind::Error(code) => bump(&mut self.errors, code),
            _ => {}
        }
    }

    fn on_closed(&mut self, _key: usize, why: &str) {
        self.closed_count += 1;
        bump(&mut self.close_reasons, why.chars().take(80).collect());
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct IdleReport {
    pub connections: usize,
    pub room_size: usize,
    pub concurrency: usize,
    pub established: usize,
    pub failed: usize,
    pub close_reasons: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
    /// From the first connect to the last welcome.
    pub connect_secs: f64,
    pub connections_per_sec: f64,
    pub welcome_latency_ms: Summary,
    pub server_rss_before_kib: Option<u64>,
    pub server_rss_after_kib: Option<u64>,
    pub server_rss_per_connection_bytes: Option<f64>,
    /// Server CPU while connecting, and per connection.
    pub server_cpu_secs: Option<f64>,
    pub server_cpu_us_per_connection: Option<f64>,
    /// Server CPU share while the connections sat idle (the hold).
    pub server_idle_cpu_share: Option<f64>,
    pub loadgen_cpu_secs: f64,
    pub loadgen_cpu_share: f64,
    /// CPU used by everything else on the machine while connecting, in cores (noise).
    pub other_cpu_share: Option<f64>,
    /// The processes given with `--cpu-pid`, by label.
    pub others: BTreeMap<String, OtherIdleReport>,
}

pub fn run(target: &Target, spec: &IdleSpec, start: Instant) -> Result<IdleReport, String> {
    let mut engine = Engine::new(target.clone(), start).map_err(|error| format!("cannot set up: {error}"))?;
    let n = spec.connections;
    let mut tracker = Tracker {
        started_us: vec![0; n],
        welcomed: vec![false; n],
        welcomed_count: 0,
        closed_count: 0,
        close_reasons: BTreeMap::new(),
        errors: BTreeMap::new(),
        last_event_us: 0,
        last_welcome_us: 0,
        latency: Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds"),
    };
    let pid = spec.server_pid;
    let rss_before = pid.and_then(procfs::rss_kib);
    let server_cpu_before = pid.and_then(procfs::cpu_seconds);
    let others_before: Vec<(Option<u64>, Option<f64>)> =
        spec.others.iter().map(|(_, pid)| (procfs::rss_kib(*pid), procfs::cpu_seconds(*pid))).collect();
    let own_cpu_before = procfs::own_cpu_seconds();
    let machine_before = procfs::machine_busy_seconds();
    let started = Instant::now();
    let deadline = started + spec.connect_timeout;
    let mut launched = 0;
    let mut connect_failures = 0;
    while tracker.welcomed_count + tracker.closed_count + connect_failures < n {
        while launched < n
            && launched.saturating_sub(tracker.welcomed_count + tracker.closed_count + connect_failures)
                < spec.concurrency
        {
            let room = launched / spec.room_size.max(1);
            let request_target = target.with_query(&format!("room=idle-{room}"));
            let now_us = engine.micros(Instant::now());
            match engine.connect(&request_target) {
                Ok(key) => {
                    if key >= tracker.started_us.len() {
                        tracker.started_us.resize(key + 1, 0);
                        tracker.welcomed.resize(key + 1, false);
                    }
                    tracker.started_us[key] = now_us;
                }
                Err(error) => {
                    connect_failures += 1;
                    bump(&mut tracker.close_reasons, format!("connect: {error}"));
                }
            }
            launched += 1;
        }
        if Instant::now() > deadline {
            break;
        }
        engine.turn(Duration::from_millis(10), &mut tracker).map_err(|error| format!("poll: {error}"))?;
    }
    let connect_end = start + Duration::from_micros(tracker.last_welcome_us.max(engine.micros(started)));
    let connect_secs = connect_end.saturating_duration_since(started).as_secs_f64();
    let server_cpu_connected = pid.and_then(procfs::cpu_seconds);
    let others_cpu_connected: Vec<Option<f64>> =
        spec.others.iter().map(|(_, pid)| procfs::cpu_seconds(*pid)).collect();
    let own_cpu = procfs::own_cpu_seconds() - own_cpu_before;
    let own_wall = started.elapsed().as_secs_f64();
    let machine_connected = procfs::machine_busy_seconds();

    // Hold: let the joined events finish, then sit quiet and read the memory.
    let hold_start = Instant::now();
    while hold_start.elapsed() < spec.hold {
        engine.turn(Duration::from_millis(50), &mut tracker).map_err(|error| format!("poll: {error}"))?;
    }
    let server_cpu_held = pid.and_then(procfs::cpu_seconds);
    let hold_secs = hold_start.elapsed().as_secs_f64();
    let rss_after = pid.and_then(procfs::rss_kib);
    let established = engine.upgraded.min(tracker.welcomed_count);
    let welcomed = tracker.welcomed_count.max(1) as f64;
    let others: BTreeMap<String, OtherIdleReport> = spec
        .others
        .iter()
        .zip(others_before.iter().zip(&others_cpu_connected))
        .map(|((label, pid), ((rss_before, cpu_before), cpu_after))| {
            let cpu = cpu_before.zip(*cpu_after).map(|(before, after)| after - before);
            let rss = rss_before.zip(procfs::rss_kib(*pid)).filter(|_| established > 0);
            let report = OtherIdleReport {
                cpu_secs: cpu,
                cpu_us_per_connection: cpu.map(|cpu| cpu * 1e6 / welcomed),
                rss_per_connection_bytes: rss
                    .map(|(before, after)| (after as f64 - before as f64) * 1024.0 / established as f64),
            };
            (label.clone(), report)
        })
        .collect();
    engine.close_all();

    let server_cpu = match (server_cpu_before, server_cpu_connected) {
        (Some(before), Some(after)) => Some(after - before),
        _ => None,
    };
    let rss_per_connection = match (rss_before, rss_after) {
        (Some(before), Some(after)) if established > 0 => {
            Some((after as f64 - before as f64) * 1024.0 / established as f64)
        }
        _ => None,
    };
    Ok(IdleReport {
        connections: n,
        room_size: spec.room_size,
        concurrency: spec.concurrency,
        established,
        failed: n - tracker.welcomed_count,
        close_reasons: tracker.close_reasons,
        errors: tracker.errors,
        connect_secs,
        connections_per_sec: tracker.welcomed_count as f64 / connect_secs.max(1e-9),
        welcome_latency_ms: Summary::from_micros(&tracker.latency),
        server_rss_before_kib: rss_before,
        server_rss_after_kib: rss_after,
        server_rss_per_connection_bytes: rss_per_connection,
        server_cpu_secs: server_cpu,
        server_cpu_us_per_connection: server_cpu.map(|cpu| cpu * 1e6 / tracker.welcomed_count.max(1) as f64),
        server_idle_cpu_share: match (server_cpu_connected, server_cpu_held) {
            (Some(before), Some(after)) => Some((after - before) / hold_secs),
            _ => None,
        },
        loadgen_cpu_secs: own_cpu,
        loadgen_cpu_share: own_cpu / own_wall.max(1e-9),
        other_cpu_share: match (server_cpu, machine_before, machine_connected) {
            (Some(server), Some(before), Some(after)) => {
                let others_cpu = others.values().filter_map(|other| other.cpu_secs).sum::<f64>();
                Some(((after - before) - server - others_cpu - own_cpu).max(0.0) / own_wall.max(1e-9))
            }
            _ => None,
        },
        others,
    })
}
