//! The `fanout` and `chat` scenarios: one room, some connections that publish at a fixed,
//! open-loop aggregate rate, and every member checking what it receives (latency into an HDR
//! histogram, loss, duplicates and per-sender order). `fanout` has N pure receivers and P
//! publishers; `chat` has C clients that all publish and all receive. The `ramp` mode steps the
//! rate up until p99 passes a bound or a message is lost.
//!
//! Latency is measured from each message's *scheduled* send time (the open-loop schedule), so a
//! load generator or server that falls behind cannot hide its delay (no coordinated omission).
//! The timerfd wakes the sender within tens of microseconds of the schedule; `send_lag` reports
//! how late sends actually were.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::net::{Engine, Handler, Target};
use crate::procfs;
use crate::proto::{Kind, Reader, message_text};
use crate::stats::{Summary, bump};

pub struct RoomSpec {
    /// Members that only receive.
    pub receivers: usize,
    /// Members that publish (and receive what the other publishers send).
    pub publishers: usize,
    pub room: String,
    pub concurrency: usize,
    pub connect_timeout: Duration,
    pub server_pid: Option<u32>,
    /// Further nodes of a cluster serving the same room: receivers are spread round-robin over
    /// the target and these (publishers stay on the target), and each node's CPU is its own.
    pub extra_nodes: Vec<ExtraNode>,
    /// Other processes whose CPU the run records (a cluster's Redis), by label.
    pub others: Vec<(String, u32)>,
}

/// Another node of the cluster under test.
#[derive(Debug, Clone, Copy)]
pub struct ExtraNode {
    pub addr: std::net::SocketAddr,
    pub pid: Option<u32>,
}

/// One node's share of a step, when receivers are spread over several.
#[derive(Debug, Clone, Serialize)]
pub struct NodeReport {
    /// 0 for the target, then the extra nodes in order.
    pub node: usize,
    pub receivers: usize,
    /// Deliveries to this node's members in the CPU window.
    pub cpu_window_deliveries: u64,
    pub cpu_secs: Option<f64>,
    pub cpu_share: Option<f64>,
    pub cpu_us_per_delivery: Option<f64>,
}

/// Another process's share of a step.
#[derive(Debug, Clone, Serialize)]
pub struct OtherReport {
    pub cpu_secs: Option<f64>,
    pub cpu_share: Option<f64>,
    /// Per message sent in the window.
    pub cpu_us_per_message: Option<f64>,
}

/// Everything the receiving side counts. Indexed by the connection's slab key.
struct Tracker {
    n_pubs: usize,
    /// `next_seq[key * n_pubs + publisher]`: the sequence number expected next.
    next_seq: Vec<u32>,
    welcomed: Vec<bool>,
    welcomed_count: usize,
    closed: Vec<bool>,
    closed_count: usize,
    close_reasons: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
    last_membership_us: u64,
    delivered: u64,
    duplicates: u64,
    gaps: u64,
    foreign: u64,
    other: u64,
    /// Messages scheduled in `[window.0, window.1)` microseconds have their latency recorded.
    window: (u64, u64),
    window_deliveries: u64,
    latency: Histogram<u64>,
    /// Reads the frames (and remembers where the text field was).
    reader: Reader,
    /// The node each connection is on (by slab key), and deliveries to each node's members.
    node_of: Vec<usize>,
    delivered_by_node: Vec<u64>,
}

impl Tracker {
    fn new(members: usize, n_pubs: usize) -> Tracker {
        Tracker {
            n_pubs,
            next_seq: vec![0; members * n_pubs],
            welcomed: vec![false; members],
            welcomed_count: 0,
            closed: vec![false; members],
            closed_count: 0,
            close_reasons: BTreeMap::new(),
            errors: BTreeMap::new(),
            last_membership_us: 0,
            delivered: 0,
            duplicates: 0,
            gaps: 0,
            foreign: 0,
            other: 0,
            window: (u64::MAX, u64::MAX),
            window_deliveries: 0,
            latency: Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds"),
            reader: Reader::default(),
            node_of: vec![0; members],
            delivered_by_node: Vec::new(),
        }
    }

    fn grow(&mut self, key: usize) {
        if key >= self.welcomed.len() {
            self.welcomed.resize(key + 1, false);
            self.closed.resize(key + 1, false);
            self.next_seq.resize((key + 1) * self.n_pubs, 0);
            self.node_of.resize(key + 1, 0);
        }
    }

    fn place(&mut self, key: usize, node: usize) {
        self.grow(key);
        self.node_of[key] = node;
        if node >= self.delivered_by_node.len() {
            self.delivered_by_node.resize(node + 1, 0);
        }
    }
}

impl Handler for Tracker {
    fn on_text(&mut self, key: usize, payload: &[u8], now_us: u64) {
        match self.reader.classify(payload) {
            Kind::Message { publisher, seq, sent_us } => {
                let publisher = publisher as usize;
                if publisher >= self.n_pubs || key >= self.welcomed.len() {
                    self.foreign += 1;
                    return;
                }
                let slot = &mut self.next_seq[key * self.n_pubs + publisher];
                if seq < *slot {
                    self.duplicates += 1;
                    return;
                }
                if seq > *slot {
                    self.gaps += u64::from(seq - *slot);
                }
                *slot = seq + 1;
                self.delivered += 1;
                if let Some(count) = self.delivered_by_node.get_mut(self.node_of[key]) {
                    *count += 1;
                }
                if sent_us >= self.window.0 && sent_us < self.window.1 {
                    self.window_deliveries += 1;
                    self.latency.saturating_record(now_us.saturating_sub(sent_us).max(1));
                }
            }
            Kind::Welcome => {
                self.grow(key);
                if !self.welcomed[key] {
                    self.welcomed[key] = true;
                    self.welcomed_count += 1;
                }
            }
            Kind::Joined | Kind::Left => self.last_membership_us = now_us,
            Kind::Error(code) => bump(&mut self.errors, code),
            Kind::ForeignMessage => self.foreign += 1,
            Kind::Pong | Kind::Other => self.other += 1,
        }
    }

    fn on_closed(&mut self, key: usize, why: &str) {
        self.grow(key);
        if !self.closed[key] {
            self.closed[key] = true;
            self.closed_count += 1;
            bump(&mut self.close_reasons, why.chars().take(80).collect());
        }
    }
}

/// What connecting the room's members took.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectReport {
    pub members: usize,
    pub connect_secs: f64,
    pub settle_secs: f64,
}

/// One measured step at one rate.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    /// Offered message rate (messages/s, all publishers together).
    pub rate: f64,
    /// Members that receive each message.
    pub recipients: usize,
    pub offered_deliveries_per_sec: f64,
    pub warmup_secs: f64,
    pub duration_secs: f64,
    /// Messages scheduled in the measured window.
    pub sent: u64,
    /// Deliveries of those messages.
    pub deliveries: u64,
    pub deliveries_per_sec: f64,
    pub latency_ms: Summary,
    pub send_lag_ms: Summary,
    /// Deliveries still missing when the drain ended (including those of dropped members).
    pub lost: u64,
    pub duplicates: u64,
    pub gaps: u64,
    pub disconnects: usize,
    pub errors: BTreeMap<String, u64>,
    pub close_reasons: BTreeMap<String, u64>,
    pub drained: bool,
    pub drain_secs: f64,
    /// Wall time of the CPU window: from the start of the measured window to the end of the drain.
    pub cpu_window_secs: f64,
    /// Every delivery in the CPU window (of any message).
    pub cpu_window_deliveries: u64,
    pub server_cpu_secs: Option<f64>,
    pub server_cpu_share: Option<f64>,
    pub server_cpu_us_per_delivery: Option<f64>,
    pub loadgen_cpu_secs: f64,
    pub loadgen_cpu_share: f64,
    /// The load generator's `read` calls in the CPU window, deliveries per read and CPU per read:
    /// each read costs it about the same (a syscall, and the ACK it sends), so a busy load
    /// generator reads less often and takes more messages per read.
    pub loadgen_reads: u64,
    pub loadgen_deliveries_per_read: f64,
    pub loadgen_us_per_read: f64,
    /// The load generator's CPU per delivery it received in the CPU window, nanoseconds: what
    /// reading, parsing and checking one delivery costs it (kernel included). `None` without
    /// deliveries.
    pub loadgen_cpu_per_delivery_ns: Option<f64>,
    /// CPU used by everything else on the machine during the CPU window, in cores (noise; needs
    /// --server-pid).
    pub other_cpu_share: Option<f64>,
    /// With receivers spread over nodes (`--also-url`): each node's deliveries and CPU. The
    /// target's `server_cpu_us_per_delivery` above is then per delivery of its own members.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeReport>,
    /// `--cpu-pid` processes, by label.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub others: BTreeMap<String, OtherReport>,
    /// Ramp only: whether this step met the bound.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pass: Option<bool>,
}

pub struct Session {
    engine: Engine,
    spec: RoomSpec,
    request_target: String,
    tracker: Tracker,
    /// Slab keys of the publishers, by publisher number.
    pub_keys: Vec<usize>,
    /// Messages each publisher has sent (= its next sequence number).
    sent: Vec<u32>,
    /// Deliveries expected so far: each message goes to every member but its publisher.
    expected: u64,
}

impl Session {
    pub fn new(target: &Target, spec: RoomSpec, start: Instant) -> Result<Session, String> {
        let engine = Engine::new(target.clone(), start).map_err(|error| format!("cannot set up: {error}"))?;
        let room: String = form_urlencoded::byte_serialize(spec.room.as_bytes()).collect();
        let request_target = target.with_query(&format!("room={room}"));
        let members = spec.receivers + spec.publishers;
        Ok(Session {
            engine,
            tracker: Tracker::new(members, spec.publishers),
            pub_keys: Vec::new(),
            sent: vec![0; spec.publishers],
            expected: 0,
            request_target,
            spec,
        })
    }

    fn members(&self) -> usize {
        self.spec.receivers + self.spec.publishers
    }

    fn node_count(&self) -> usize {
        1 + self.spec.extra_nodes.len()
    }

    /// Every pid whose CPU a step records: the target's, the extra nodes', the others'.
    fn cpu_marks(&self) -> Vec<Option<f64>> {
        let pids = std::iter::once(self.spec.server_pid)
            .chain(self.spec.extra_nodes.iter().map(|node| node.pid))
            .chain(self.spec.others.iter().map(|(_, pid)| Some(*pid)));
        pids.map(|pid| pid.and_then(procfs::cpu_seconds)).collect()
    }

    /// Opens every member (receivers first, then publishers) with bounded concurrency, waits
    /// for every welcome, then for the room's joined events to die down.
    pub fn connect(&mut self) -> Result<ConnectReport, String> {
        self.engine.close_all();
        let members = self.members();
        self.tracker = Tracker::new(members, self.spec.publishers);
        self.pub_keys.clear();
        self.sent = vec![0; self.spec.publishers];
        self.expected = 0;
        let started = Instant::now();
        let deadline = started + self.spec.connect_timeout;
        let mut launched = 0;
        while self.tracker.welcomed_count + self.tracker.closed_count < members {
            while launched < members
                && launched.saturating_sub(self.tracker.welcomed_count + self.tracker.closed_count)
                    < self.spec.concurrency
            {
                // Receivers go round-robin over the nodes; publishers stay on the target.
                let node = if launched < self.spec.receivers { launched % self.node_count() } else { 0 };
                let addr = node.checked_sub(1).map(|extra| self.spec.extra_nodes[extra].addr);
                let key = self
                    .engine
                    .connect_to(addr, &self.request_target)
                    .map_err(|error| format!("connect: {error}"))?;
                self.tracker.place(key, node);
                if launched >= self.spec.receivers {
                    self.pub_keys.push(key);
                }
                launched += 1;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "only {} of {members} members welcomed after {:?}",
                    self.tracker.welcomed_count, self.spec.connect_timeout
                ));
            }
            self.turn(Duration::from_millis(10))?;
        }
        if self.tracker.closed_count > 0 {
            return Err(format!(
                "{} of {members} connections failed: {:?}",
                self.tracker.closed_count, self.tracker.close_reasons
            ));
        }
        let connect_secs = started.elapsed().as_secs_f64();
        // Let the joined events fan out: wait for 300 ms without one (at most 60 s).
        let settle_start = Instant::now();
        let quiet = Duration::from_millis(300).as_micros() as u64;
        while settle_start.elapsed() < Duration::from_secs(60) {
            self.turn(Duration::from_millis(20))?;
            let now_us = self.engine.micros(Instant::now());
            if now_us.saturating_sub(self.tracker.last_membership_us) >= quiet {
                break;
            }
        }
        if self.tracker.closed_count > 0 {
            return Err(format!("members dropped while settling: {:?}", self.tracker.close_reasons));
        }
        Ok(ConnectReport { members, connect_secs, settle_secs: settle_start.elapsed().as_secs_f64() })
    }

    fn turn(&mut self, max_wait: Duration) -> Result<bool, String> {
        self.engine.turn(max_wait, &mut self.tracker).map_err(|error| format!("poll: {error}"))
    }

    /// Sends the `k`-th message of the schedule.
    fn send(&mut self, publisher: usize, scheduled_us: u64) {
        let key = self.pub_keys[publisher];
        let seq = self.sent[publisher];
        self.sent[publisher] += 1;
        self.expected += (self.members() - 1) as u64;
        let text = message_text(publisher, seq, scheduled_us);
        self.engine.queue_text(key, text.as_bytes());
        self.engine.flush(key, &mut self.tracker);
    }

    /// Deliveries missing so far (members that left count for everything they missed).
    fn missing(&self) -> u64 {
        let n_pubs = self.spec.publishers;
        let mut missing = self.tracker.gaps;
        for (key, welcomed) in self.tracker.welcomed.iter().enumerate() {
            if !welcomed {
                continue;
            }
            for (publisher, &sent) in self.sent.iter().enumerate() {
                if self.pub_keys[publisher] != key {
                    missing +=
                        u64::from(sent.saturating_sub(self.tracker.next_seq[key * n_pubs + publisher]));
                }
            }
        }
        missing
    }

    fn drained(&self) -> bool {
        self.tracker.delivered + self.tracker.gaps >= self.expected
    }

    pub fn healthy(&self) -> bool {
        self.tracker.closed_count == 0 && self.drained()
    }

    /// Waits up to `limit` for every message in flight to arrive.
    pub fn drain(&mut self, limit: Duration) -> Result<bool, String> {
        let deadline = Instant::now() + limit;
        while !self.drained() && self.tracker.closed_count == 0 {
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            self.turn((deadline - now).min(Duration::from_millis(10)))?;
        }
        Ok(self.drained())
    }

    /// Publishes at `rate` messages/s for `warmup` (not measured) then `duration` (measured),
    /// then waits up to `drain_limit` for the messages in flight.
    pub fn step(
        &mut self,
        rate: f64,
        warmup: Duration,
        duration: Duration,
        drain_limit: Duration,
    ) -> Result<StepReport, String> {
        let publishers = self.spec.publishers;
        let t0 = Instant::now() + Duration::from_millis(1);
        let measure_start = t0 + warmup;
        let send_end = measure_start + duration;
        let due = |k: u64| t0 + Duration::from_secs_f64(k as f64 / rate);
        self.tracker.window = (self.engine.micros(measure_start), self.engine.micros(send_end));
        self.tracker.latency.reset();
        self.tracker.window_deliveries = 0;
        let mut lag = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds");
        let missing_before = self.missing();
        let duplicates_before = self.tracker.duplicates;
        let gaps_before = self.tracker.gaps;
        let closed_before = self.tracker.closed_count;
        let errors_before = self.tracker.errors.clone();
        // When the window opened: wall time, server CPU, own CPU, deliveries, machine CPU.
        #[allow(clippy::type_complexity)]
        let mut start_marks: Option<(Instant, Option<f64>, f64, u64, Option<f64>)> = None;
        let mut cpu_start: Vec<Option<f64>> = Vec::new();
        let mut by_node_start: Vec<u64> = Vec::new();
        let mut sent_in_window = 0u64;
        let mut reads_start = 0u64;
        let mut k = 0u64;
        loop {
            let now = Instant::now();
            if start_marks.is_none() && now >= measure_start {
                let server = self.spec.server_pid.and_then(procfs::cpu_seconds);
                let machine = procfs::machine_busy_seconds();
                start_marks = Some((now, server, procfs::own_cpu_seconds(), self.tracker.delivered, machine));
                reads_start = self.engine.reads;
                cpu_start = self.cpu_marks();
                by_node_start = self.tracker.delivered_by_node.clone();
            }
            // Every message that is due goes out now, late or not.
            loop {
                let at = due(k);
                if at > now || at >= send_end {
                    break;
                }
                let scheduled_us = self.engine.micros(at);
                self.send((k % publishers as u64) as usize, scheduled_us);
                if at >= measure_start {
                    sent_in_window += 1;
                    lag.saturating_record(now.saturating_duration_since(at).as_micros() as u64 + 1);
                }
                k += 1;
            }
            let next = due(k);
            if next >= send_end && now >= send_end {
                break;
            }
            let wake = if start_marks.is_none() { next.min(measure_start) } else { next.min(send_end) };
            self.engine.arm_timer(wake);
            let wait = wake.saturating_duration_since(now) + Duration::from_millis(2);
            self.turn(wait)?;
        }
        let drain_started = Instant::now();
        let drained = self.drain(drain_limit)?;
        let end = Instant::now();
        let (mark_at, server_start, own_start, delivered_start, machine_start) =
            start_marks.expect("the window was reached");
        let server_end = self.spec.server_pid.and_then(procfs::cpu_seconds);
        let machine_end = procfs::machine_busy_seconds();
        let cpu_end = self.cpu_marks();
        let own_cpu = procfs::own_cpu_seconds() - own_start;
        let window_secs = end.duration_since(mark_at).as_secs_f64();
        let cpu_window_deliveries = self.tracker.delivered - delivered_start;
        let reads = self.engine.reads - reads_start;
        let server_cpu = match (server_start, server_end) {
            (Some(start), Some(end)) => Some(end - start),
            _ => None,
        };
        let recipients = self.members() - 1;
        let mut errors = self.tracker.errors.clone();
        for (code, count) in &errors_before {
            if let Some(now) = errors.get_mut(code) {
                *now -= count;
            }
        }
        errors.retain(|_, count| *count > 0);
        let used = |index: usize| match (cpu_start.get(index).copied().flatten(), cpu_end[index]) {
            (Some(start), Some(end)) => Some(end - start),
            _ => None,
        };
        let nodes: Vec<NodeReport> = if self.spec.extra_nodes.is_empty() {
            Vec::new()
        } else {
            (0..self.node_count())
                .map(|node| {
                    let deliveries = self.tracker.delivered_by_node.get(node).copied().unwrap_or(0)
                        - by_node_start.get(node).copied().unwrap_or(0);
                    let cpu = used(node);
                    NodeReport {
                        node,
                        receivers: (0..self.spec.receivers).filter(|i| i % self.node_count() == node).count(),
                        cpu_window_deliveries: deliveries,
                        cpu_secs: cpu,
                        cpu_share: cpu.map(|cpu| cpu / window_secs),
                        cpu_us_per_delivery: cpu
                            .filter(|_| deliveries > 0)
                            .map(|cpu| cpu * 1e6 / deliveries as f64),
                    }
                })
                .collect()
        };
        let others: BTreeMap<String, OtherReport> = self
            .spec
            .others
            .iter()
            .enumerate()
            .map(|(index, (label, _))| {
                let cpu = used(self.node_count() + index);
                let report = OtherReport {
                    cpu_secs: cpu,
                    cpu_share: cpu.map(|cpu| cpu / window_secs),
                    cpu_us_per_message: cpu
                        .filter(|_| sent_in_window > 0)
                        .map(|cpu| cpu * 1e6 / sent_in_window as f64),
                };
                (label.clone(), report)
            })
            .collect();
        // With nodes, the target's cost is per delivery of its own members.
        let server_deliveries =
            nodes.first().map_or(cpu_window_deliveries, |node| node.cpu_window_deliveries);
        let everything_else = nodes.iter().skip(1).filter_map(|node| node.cpu_secs).sum::<f64>()
            + others.values().filter_map(|other| other.cpu_secs).sum::<f64>();
        Ok(StepReport {
            rate,
            recipients,
            offered_deliveries_per_sec: rate * recipients as f64,
            warmup_secs: warmup.as_secs_f64(),
            duration_secs: duration.as_secs_f64(),
            sent: sent_in_window,
            deliveries: self.tracker.window_deliveries,
            deliveries_per_sec: self.tracker.window_deliveries as f64 / duration.as_secs_f64(),
            latency_ms: Summary::from_micros(&self.tracker.latency),
            send_lag_ms: Summary::from_micros(&lag),
            lost: self.missing().saturating_sub(missing_before),
            duplicates: self.tracker.duplicates - duplicates_before,
            gaps: self.tracker.gaps - gaps_before,
            disconnects: self.tracker.closed_count - closed_before,
            errors,
            close_reasons: self.tracker.close_reasons.clone(),
            drained,
            drain_secs: end.duration_since(drain_started).as_secs_f64(),
            cpu_window_secs: window_secs,
            cpu_window_deliveries,
            server_cpu_secs: server_cpu,
            server_cpu_share: server_cpu.map(|cpu| cpu / window_secs),
            server_cpu_us_per_delivery: server_cpu
                .filter(|_| server_deliveries > 0)
                .map(|cpu| cpu * 1e6 / server_deliveries as f64),
            loadgen_cpu_secs: own_cpu,
            loadgen_cpu_share: own_cpu / window_secs,
            loadgen_reads: reads,
            loadgen_deliveries_per_read: cpu_window_deliveries as f64 / reads.max(1) as f64,
            loadgen_us_per_read: own_cpu * 1e6 / reads.max(1) as f64,
            loadgen_cpu_per_delivery_ns: (cpu_window_deliveries > 0)
                .then(|| own_cpu * 1e9 / cpu_window_deliveries as f64),
            other_cpu_share: match (server_cpu, machine_start, machine_end) {
                (Some(server), Some(start), Some(end)) => {
                    Some(((end - start) - server - own_cpu - everything_else).max(0.0) / window_secs)
                }
                _ => None,
            },
            pass: None,
            nodes,
            others,
        })
    }

    pub fn close(&mut self) {
        self.engine.close_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(publisher: usize, seq: u32, sent_us: u64) -> Vec<u8> {
        format!(r#"{{"type":"message","room":"r","from":{{"id":1,"name":"p"}},"text":"lg {publisher} {seq} {sent_us}","ts":1}}"#)
            .into_bytes()
    }

    #[test]
    fn counts_deliveries_gaps_duplicates_and_window_latency() {
        let mut tracker = Tracker::new(3, 2);
        tracker.window = (100, 200);
        tracker.on_text(0, &event(0, 0, 50), 60);
        tracker.on_text(0, &event(0, 1, 150), 160);
        tracker.on_text(0, &event(0, 1, 150), 170); // duplicate
        tracker.on_text(0, &event(0, 4, 190), 200); // 2 and 3 skipped
        tracker.on_text(1, &event(1, 0, 120), 125);
        tracker.on_text(1, &event(7, 0, 120), 125); // no such publisher
        tracker.on_text(2, br#"{"type":"joined","room":"r","user":{"id":3,"name":"x"}}"#, 300);
        assert_eq!(tracker.delivered, 4);
        assert_eq!(tracker.duplicates, 1);
        assert_eq!(tracker.gaps, 2);
        assert_eq!(tracker.foreign, 1);
        assert_eq!(tracker.window_deliveries, 3);
        assert_eq!(tracker.latency.len(), 3);
        assert_eq!(tracker.latency.max(), 10);
        assert_eq!(tracker.last_membership_us, 300);
        assert_eq!(tracker.next_seq[0], 5);
        assert_eq!(tracker.next_seq[2 + 1], 1);
    }

    #[test]
    fn welcomes_and_closes_are_counted_once() {
        let mut tracker = Tracker::new(1, 1);
        let welcome = br#"{"type":"welcome","id":1,"name":"guest-1","room":"r","users":[],"history":[]}"#;
        tracker.on_text(0, welcome, 1);
        tracker.on_text(0, welcome, 2);
        tracker.on_closed(4, "reset");
        tracker.on_closed(4, "reset");
        assert_eq!(tracker.welcomed_count, 1);
        assert_eq!(tracker.closed_count, 1);
        assert_eq!(tracker.welcomed.len(), 5);
    }
}
