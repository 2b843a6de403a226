//! The soak's clients and what each does with the events it receives: members that stay, churners
//! that come and go, and the bad actors of `actors.rs`. Every message event and ack goes through
//! the sequence checks of `sequence.rs`; every unplanned end of a healthy connection is counted as
//! lost. `mod.rs` owns the schedule and the engine; this file reacts.

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};

use hdrhistogram::Histogram;
use serde::Deserialize;

use super::actors::{self, Kind, KindTally, Outcome};
use super::sequence::{Rooms, Stream, Tally};
use crate::net::{Engine, Handler, close_code};

/// Who a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Connected before the load and kept to the end; at the end it must have seen its room's
    /// every seq.
    Member,
    /// Healthy, but comes and goes (and moves between rooms) during the load.
    Churner,
    /// Misbehaves on purpose.
    Bad(Kind),
}

pub struct Client {
    /// Unique over the whole soak (engine keys are reused).
    pub serial: u64,
    pub role: Role,
    pub opened_us: u64,
    pub welcomed: bool,
    pub stream: Stream,
    /// Messages sent and not yet answered: the client's own count and when it went out.
    pub unanswered: VecDeque<(u32, u64)>,
    pub sent: u32,
    /// We started a clean close: the server's close 1000 is expected.
    pub leaving: bool,
    /// When it stopped reading (stopped readers).
    pub paused_us: Option<u64>,
    /// A flooder's answers, and whether it has sent all it will.
    pub acked: u32,
    pub refused: u32,
    pub done_sending: bool,
    /// When it sent its last message.
    pub last_sent_us: u64,
    /// A bad actor already judged (its end then needs no second judgement).
    pub judged: bool,
}

/// The limits the server runs with, which the judgements need.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub heartbeat_secs: f64,
    pub handshake_secs: f64,
    pub rate_limit: f64,
}

pub struct World {
    pub clients: Vec<Option<Client>>,
    pub rooms: Rooms,
    pub tally: Tally,
    pub limits: Limits,
    next_serial: u64,
    /// The probe's two ends, by serial.
    pub probe_sender: u64,
    pub probe_receiver: u64,
    /// Healthy connections that ended without being asked to, by reason.
    pub healthy_lost: BTreeMap<String, u64>,
    /// Error events sent to healthy connections, by code (there should be none).
    pub healthy_errors: BTreeMap<String, u64>,
    /// Acks that did not answer the oldest unanswered message of their sender.
    pub ack_disorder: u64,
    /// Message events whose text is not a soak message.
    pub foreign: u64,
    /// Clean closes answered with the server's close 1000, and those that got something else.
    pub clean_closes: u64,
    pub clean_closes_unanswered: BTreeMap<String, u64>,
    pub bad: BTreeMap<Kind, KindTally>,
    /// Send to ack, every message; send to delivery, every delivery; the probe's alone.
    pub ack_latency: Histogram<u64>,
    pub delivery_latency: Histogram<u64>,
    pub probe_ack: Histogram<u64>,
    pub probe_echo: Histogram<u64>,
    /// The probe's echoes in the current minute (for the per-minute table).
    pub probe_minute: Histogram<u64>,
    /// Work for `mod.rs` after this turn: connections to remove from the engine, to pause, that
    /// were welcomed, and to close cleanly.
    pub ended: Vec<usize>,
    pub welcomed_now: Vec<usize>,
    pub to_close: Vec<usize>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

impl World {
    pub fn new(limits: Limits) -> World {
        World {
            clients: Vec::new(),
            rooms: Rooms::default(),
            tally: Tally::default(),
            limits,
            next_serial: 1,
            probe_sender: 0,
            probe_receiver: 0,
            healthy_lost: BTreeMap::new(),
            healthy_errors: BTreeMap::new(),
            ack_disorder: 0,
            foreign: 0,
            clean_closes: 0,
            clean_closes_unanswered: BTreeMap::new(),
            bad: BTreeMap::new(),
            ack_latency: histogram(),
            delivery_latency: histogram(),
            probe_ack: histogram(),
            probe_echo: histogram(),
            probe_minute: histogram(),
            ended: Vec::new(),
            welcomed_now: Vec::new(),
            to_close: Vec::new(),
        }
    }

    /// Records a connection the engine just opened under `key`; returns its serial.
    pub fn add(&mut self, key: usize, role: Role, now_us: u64) -> u64 {
        let serial = self.next_serial;
        self.next_serial += 1;
        if key >= self.clients.len() {
            self.clients.resize_with(key + 1, || None);
        }
        self.clients[key] = Some(Client {
            serial,
            role,
            opened_us: now_us,
            welcomed: false,
            stream: Stream::default(),
            unanswered: VecDeque::new(),
            sent: 0,
            leaving: false,
            paused_us: None,
            acked: 0,
            refused: 0,
            done_sending: false,
            last_sent_us: 0,
            judged: false,
        });
        if let Role::Bad(kind) = role {
            self.bad.entry(kind).or_default().launched += 1;
        }
        serial
    }

    pub fn get(&self, key: usize) -> Option<&Client> {
        self.clients.get(key).and_then(Option::as_ref)
    }

    pub fn get_mut(&mut self, key: usize) -> Option<&mut Client> {
        self.clients.get_mut(key).and_then(Option::as_mut)
    }

    /// The client at `key` if it is still the one with `serial`.
    pub fn current(&mut self, key: usize, serial: u64) -> Option<&mut Client> {
        self.get_mut(key).filter(|client| client.serial == serial)
    }

    /// Forgets the client at `key` (after the engine let go of it).
    pub fn forget(&mut self, key: usize) {
        if let Some(slot) = self.clients.get_mut(key) {
            *slot = None;
        }
    }

    /// Sends a chat message with an id from the client at `key`, its text padded to `pad` bytes.
    pub fn say(&mut self, engine: &mut Engine, key: usize, pad: usize, now_us: u64) {
        let Some(client) = self.get_mut(key).filter(|client| client.welcomed && !client.leaving) else {
            return;
        };
        let count = client.sent;
        client.sent += 1;
        client.unanswered.push_back((count, now_us));
        client.last_sent_us = now_us;
        let mut text = format!("sk {} {count} {now_us}", client.serial);
        if text.len() < pad {
            text.push(' ');
            text.extend(std::iter::repeat_n('x', pad - text.len()));
        }
        let frame = format!(r#"{{"type":"message","id":"m{count}","text":"{text}"}}"#);
        engine.queue_text(key, frame.as_bytes());
        engine.flush(key, self);
    }

    /// Judges a bad actor once, and asks for a clean close of one that stays open.
    pub fn judge(&mut self, key: usize, outcome: Outcome, secs: f64) {
        let Some(client) = self.get_mut(key) else { return };
        let Role::Bad(kind) = client.role else { return };
        if std::mem::replace(&mut client.judged, true) {
            return;
        }
        self.bad.entry(kind).or_default().record(outcome, secs);
    }

    /// A flooder that has every answer is judged and leaves.
    fn flooder_settled(&mut self, key: usize) {
        let Some(client) = self.get(key) else { return };
        if !client.done_sending || !client.unanswered.is_empty() || client.judged {
            return;
        }
        // Its bucket was filled at its welcome, after the connect; its last frame was read a
        // little after it was sent (the 50 ms allow for that).
        let secs = client.last_sent_us.saturating_sub(client.opened_us) as f64 / 1e6 + 0.05;
        let outcome =
            actors::judge_flooder(client.sent, client.acked, client.refused, secs, self.limits.rate_limit);
        self.judge(key, outcome, 0.0);
        self.to_close.push(key);
    }

    fn answered(&mut self, key: usize, id: Option<&str>, now_us: u64) -> Option<u32> {
        let client = self.get_mut(key)?;
        let count: u32 = id?.strip_prefix('m')?.parse().ok()?;
        match client.unanswered.front() {
            Some(&(oldest, sent_us)) if oldest == count => {
                client.unanswered.pop_front();
                let latency = now_us.saturating_sub(sent_us).max(1);
                let probe = client.serial == self.probe_sender;
                self.ack_latency.saturating_record(latency);
                if probe {
                    self.probe_ack.saturating_record(latency);
                }
                Some(count)
            }
            _ => {
                self.ack_disorder += 1;
                None
            }
        }
    }
}

/// The fields of a server event the soak reads.
#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    room: Option<Cow<'a, str>>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default, borrow)]
    epoch: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    id: Option<Id<'a>>,
    #[serde(default, borrow)]
    code: Option<Cow<'a, str>>,
}

/// A request's id echoed in an ack or an error is a string; a welcome's `id` is the member's
/// number.
#[derive(Deserialize)]
#[serde(untagged)]
enum Id<'a> {
    Text(#[serde(borrow)] Cow<'a, str>),
    #[allow(dead_code)]
    Number(u64),
}

impl Id<'_> {
    fn text(&self) -> Option<&str> {
        match self {
            Id::Text(text) => Some(text),
            Id::Number(_) => None,
        }
    }
}

/// `sk SERIAL COUNT SENT_US [padding]`: who sent it, its count, when.
fn parse_text(text: &str) -> Option<(u64, u32, u64)> {
    let mut words = text.strip_prefix("sk ")?.split(' ');
    Some((words.next()?.parse().ok()?, words.next()?.parse().ok()?, words.next()?.parse().ok()?))
}

impl Handler for World {
    fn on_text(&mut self, key: usize, payload: &[u8], now_us: u64) {
        let Ok(event) = serde_json::from_slice::<Incoming>(payload) else { return };
        let Some(role) = self.get(key).map(|client| client.role) else { return };
        match event.kind.as_ref() {
            "welcome" | "room" => {
                let (Some(room), Some(seq)) = (event.room, event.seq) else { return };
                let room = self.rooms.id(&room);
                self.rooms.entered(room, event.epoch.as_deref().unwrap_or(""), seq);
                let Some(client) = self.get_mut(key) else { return };
                client.stream.enter(room, seq);
                if event.kind == "welcome" && !client.welcomed {
                    client.welcomed = true;
                    self.welcomed_now.push(key);
                }
            }
            "message" => {
                let (Some(room), Some(seq)) = (event.room, event.seq) else { return };
                let Some((sender, count, sent_us)) = event.text.as_deref().and_then(parse_text) else {
                    self.foreign += 1;
                    return;
                };
                let room = self.rooms.id(&room);
                let latency = now_us.saturating_sub(sent_us).max(1);
                self.delivery_latency.saturating_record(latency);
                let Some(client) = self.clients.get_mut(key).and_then(Option::as_mut) else { return };
                if client.serial == self.probe_receiver && sender == self.probe_sender {
                    self.probe_echo.saturating_record(latency);
                    self.probe_minute.saturating_record(latency);
                }
                client.stream.receive(room, seq, (sender, count), &mut self.rooms, &mut self.tally);
            }
            "ack" => {
                let Some(count) = self.answered(key, event.id.as_ref().and_then(Id::text), now_us) else {
                    return;
                };
                let Some(client) = self.clients.get_mut(key).and_then(Option::as_mut) else { return };
                client.acked += 1;
                if let (Some(seq), Some(room)) = (event.seq, client.stream.room()) {
                    let what = (client.serial, count);
                    client.stream.receive(room, seq, what, &mut self.rooms, &mut self.tally);
                }
                if role == Role::Bad(Kind::Flooder) {
                    self.flooder_settled(key);
                }
            }
            "error" => {
                let code = event.code.as_deref().unwrap_or("?").to_owned();
                match role {
                    Role::Bad(Kind::Flooder) if code == "rate_limited" => {
                        if self.answered(key, event.id.as_ref().and_then(Id::text), now_us).is_some()
                            && let Some(client) = self.get_mut(key)
                        {
                            client.refused += 1;
                        }
                        self.flooder_settled(key);
                    }
                    Role::Bad(Kind::OversizedEvent) => {
                        let outcome = if code == "too_large" {
                            Outcome::AsExpected
                        } else {
                            Outcome::Unexpected(format!("error {code}"))
                        };
                        self.judge(key, outcome, 0.0);
                        self.to_close.push(key);
                    }
                    Role::Bad(_) => {}
                    Role::Member | Role::Churner => *self.healthy_errors.entry(code).or_default() += 1,
                }
            }
            _ => {}
        }
    }

    fn on_closed(&mut self, key: usize, why: &str) {
        self.ended.push(key);
        let Some(client) = self.get(key) else { return };
        let (role, leaving) = (client.role, client.leaving);
        let now_us = crate::soak::now_us();
        match role {
            Role::Member | Role::Churner if leaving => {
                if close_code(why) == Some(1000) {
                    self.clean_closes += 1;
                } else {
                    *self.clean_closes_unanswered.entry(why.chars().take(80).collect()).or_default() += 1;
                }
            }
            Role::Member | Role::Churner => {
                let what = if client.welcomed { "" } else { "before its welcome: " };
                *self
                    .healthy_lost
                    .entry(format!("{what}{}", why.chars().take(80).collect::<String>()))
                    .or_default() += 1;
            }
            Role::Bad(kind) => {
                let limits = self.limits;
                let secs = |since: u64| now_us.saturating_sub(since) as f64 / 1e6;
                let outcome = match kind {
                    Kind::StoppedReader => match client.paused_us {
                        Some(paused) => actors::judge_stopped(why, secs(paused), limits.heartbeat_secs),
                        None => Outcome::Unexpected(format!("ended before it stopped: {why}")),
                    },
                    Kind::Slowloris => {
                        actors::judge_slowloris(why, secs(client.opened_us), limits.handshake_secs)
                    }
                    Kind::Flooder | Kind::OversizedEvent if leaving && close_code(why) == Some(1000) => {
                        Outcome::AsExpected
                    }
                    Kind::Flooder | Kind::OversizedEvent => {
                        Outcome::Unexpected(why.chars().take(80).collect())
                    }
                    frame => actors::judge_frame(frame, why),
                };
                let since = client.paused_us.unwrap_or(client.opened_us);
                self.judge(key, outcome, secs(since));
            }
        }
    }
}
