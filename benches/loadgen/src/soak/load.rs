//! The soak's schedule, on the load generator's one thread: connecting the members, then every
//! loop turn the actions that are due (a churner speaking, moving or leaving; a slowloris
//! trickling; a flooder's next frame; a bad actor's deadline), the steady sends, the arrivals,
//! one `poll`, and what the events asked for (pauses, closes, removals). Then the wind-down,
//! the drain and the end checks.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

use super::SoakArgs;
use super::actors::{FRAME_KINDS, Kind, Outcome};
use super::now_us;
use super::world::{Limits, Role, World};
use crate::net::{Engine, Options, Target};

/// What a scheduled action does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Action {
    Speak,
    Move,
    Leave(Leave),
    Trickle,
    Flood,
    /// A bad actor must have met its rule by now.
    Deadline,
}

/// How a churner leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Leave {
    /// A close frame, answered by the server's.
    Clean,
    /// A TCP reset (`SO_LINGER` 0).
    Reset,
    /// Half a frame, then a reset.
    HalfFrameReset,
    /// Half a frame, then a FIN.
    HalfFrameFin,
}

/// How long a churner waits for its welcome before it counts as lost.
const WELCOME_LIMIT_SECS: f64 = 10.0;

const LEAVES: [Leave; 4] = [Leave::Clean, Leave::Reset, Leave::HalfFrameReset, Leave::HalfFrameFin];

/// Counts of the churn.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Churn {
    pub arrived: u64,
    pub welcomed: u64,
    pub moved: u64,
    pub left_clean: u64,
    pub left_reset: u64,
    pub left_half_frame_reset: u64,
    pub left_half_frame_fin: u64,
    /// Arrivals skipped because every socket of `--connections` was in use.
    pub deferred: u64,
}

/// A tiny xorshift generator: the soak needs many cheap coin flips, not good randomness.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

pub(super) struct Soak<'a> {
    pub args: &'a SoakArgs,
    pub engine: Engine,
    pub world: World,
    /// Actions by due time: (due in µs, key, the client's serial, what).
    schedule: BinaryHeap<Reverse<(u64, usize, u64, Action)>>,
    rng: Rng,
    /// Keys of the members that stay, by where they talk.
    pub small: Vec<usize>,
    pub big: Vec<usize>,
    pub firehose: usize,
    pub probe: usize,
    pub small_rooms: usize,
    pub churn: Churn,
    /// The most sockets open at once.
    pub peak: usize,
    /// When each socket we dropped without a handshake stops counting against `--connections`:
    /// the server may not have read its reset or FIN yet, and holds its descriptor till then.
    recently_dropped: VecDeque<u64>,
    /// The most sockets open and recently dropped at once.
    pub peak_held: usize,
    next_frame_kind: usize,
    /// Fractions of a send or an arrival carried to the next turn.
    credit: [f64; 9],
}

impl<'a> Soak<'a> {
    pub fn new(
        args: &'a SoakArgs,
        target: Target,
        limits: Limits,
        start: Instant,
    ) -> Result<Soak<'a>, String> {
        let mut engine = Engine::new(target, start).map_err(|error| format!("cannot set up: {error}"))?;
        engine.spread_sources(args.sources);
        Ok(Soak {
            args,
            engine,
            world: World::new(limits),
            schedule: BinaryHeap::new(),
            rng: Rng(0x9E37_79B9_7F4A_7C15 ^ u64::from(std::process::id())),
            small: Vec::new(),
            big: Vec::new(),
            firehose: 0,
            probe: 0,
            small_rooms: 0,
            churn: Churn::default(),
            peak: 0,
            recently_dropped: VecDeque::new(),
            peak_held: 0,
            next_frame_kind: 0,
            // The bad actors' slots start nearly full: even a short run meets every kind early.
            credit: [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.9, 0.9, 0.9],
        })
    }

    /// Sockets the server may still hold for us: those open, and those dropped within
    /// `--close-grace`.
    fn held(&mut self) -> usize {
        let now = now_us();
        while self.recently_dropped.front().is_some_and(|&until| until <= now) {
            self.recently_dropped.pop_front();
        }
        self.engine.len() + self.recently_dropped.len()
    }

    /// Whether one more socket fits in `--connections`.
    fn room_for_one(&mut self) -> bool {
        let held = self.held();
        self.peak_held = self.peak_held.max(held);
        held < self.args.connections
    }

    pub fn open(&mut self, room: &str, role: Role, options: Options) -> Option<usize> {
        if !self.room_for_one() {
            return None;
        }
        let request = self.engine.upgrade_request(&format!("/?room={room}"));
        let key = self.engine.open(request.into_bytes(), options).ok()?;
        self.world.add(key, role, now_us());
        self.peak = self.peak.max(self.engine.len());
        Some(key)
    }

    fn at(&mut self, delay_secs: f64, key: usize, action: Action) {
        let Some(serial) = self.world.get(key).map(|client| client.serial) else { return };
        self.schedule.push(Reverse((now_us() + (delay_secs * 1e6) as u64, key, serial, action)));
    }

    /// Turns the engine once and does what the events asked for.
    pub fn turn(&mut self, wait: Duration) -> Result<(), String> {
        self.engine.turn(wait, &mut self.world).map_err(|error| format!("poll: {error}"))?;
        for key in std::mem::take(&mut self.world.welcomed_now) {
            self.welcomed(key);
        }
        for key in std::mem::take(&mut self.world.to_close) {
            self.close(key);
        }
        for key in std::mem::take(&mut self.world.ended) {
            self.engine.remove(key, false);
            self.world.forget(key);
        }
        Ok(())
    }

    pub fn close(&mut self, key: usize) {
        if let Some(client) = self.world.get_mut(key)
            && !std::mem::replace(&mut client.leaving, true)
        {
            self.engine.close(key, 1000, &mut self.world);
        }
    }

    /// A bad actor was welcomed: it misbehaves now.
    fn welcomed(&mut self, key: usize) {
        let Some(role) = self.world.get(key).map(|client| client.role) else { return };
        match role {
            Role::Churner => self.churn.welcomed += 1,
            Role::Member | Role::Bad(Kind::Slowloris) => {}
            Role::Bad(Kind::StoppedReader) => {
                self.engine.pause(key);
                if let Some(client) = self.world.get_mut(key) {
                    client.paused_us = Some(now_us());
                }
                self.at(self.world.limits.heartbeat_secs + 5.0, key, Action::Deadline);
            }
            Role::Bad(Kind::Flooder) => {
                self.at(0.0, key, Action::Flood);
                self.at(self.args.flood_secs + 10.0, key, Action::Deadline);
            }
            Role::Bad(kind) => {
                let offence = kind.offence(self.args.max_message_bytes, [0x5A, 0x17, 0xC3, 0x9E]);
                self.engine.queue_raw(key, &offence);
                self.engine.flush(key, &mut self.world);
                self.at(10.0, key, Action::Deadline);
            }
        }
    }

    /// Does every scheduled action that is due; returns how long until the next one.
    pub fn act_on_due(&mut self) -> Duration {
        loop {
            let now = now_us();
            match self.schedule.peek() {
                Some(&Reverse((due, key, serial, action))) if due <= now => {
                    self.schedule.pop();
                    self.act(key, serial, action);
                }
                Some(&Reverse((due, ..))) => return Duration::from_micros(due - now),
                None => return Duration::from_secs(1),
            }
        }
    }

    /// A random index below `n`.
    pub fn rng_below(&mut self, n: usize) -> usize {
        self.rng.below(n)
    }

    /// The next bad frame kind, in turn.
    pub fn next_frame_kind(&mut self) -> Kind {
        self.next_frame_kind = (self.next_frame_kind + 1) % FRAME_KINDS.len();
        FRAME_KINDS[self.next_frame_kind]
    }

    /// Whether any churner or bad actor is still connected.
    pub fn transients(&self) -> usize {
        self.world.clients.iter().flatten().filter(|client| client.role != Role::Member).count()
    }

    fn act(&mut self, key: usize, serial: u64, action: Action) {
        let Some(client) = self.world.current(key, serial) else { return };
        let welcomed = client.welcomed;
        match action {
            Action::Speak => self.world.say(&mut self.engine, key, 0, now_us()),
            Action::Move if welcomed => {
                let room = self.churn_room(false);
                let join = format!(r#"{{"type":"join","room":"{room}"}}"#);
                self.engine.queue_text(key, join.as_bytes());
                self.engine.flush(key, &mut self.world);
                self.churn.moved += 1;
            }
            Action::Move => {}
            // A churner leaves only once welcomed: one whose welcome is late (the server or this
            // process kept from the cores for a moment) waits for it, up to `WELCOME_LIMIT`.
            Action::Leave(_) if !welcomed => {
                let waited = now_us().saturating_sub(client.opened_us) as f64 / 1e6;
                if waited < WELCOME_LIMIT_SECS {
                    self.at(0.25, key, action);
                } else {
                    let reason = format!("no welcome within {WELCOME_LIMIT_SECS} s");
                    *self.world.healthy_lost.entry(reason).or_default() += 1;
                    self.drop_now(key, true);
                }
            }
            Action::Leave(Leave::Clean) => {
                self.churn.left_clean += 1;
                self.close(key);
            }
            Action::Leave(Leave::Reset) => {
                self.churn.left_reset += 1;
                self.drop_now(key, true);
            }
            Action::Leave(half) => {
                let mut frame = Vec::new();
                crate::net::push_frame(&mut frame, 0x1, &[b'h'; 300], [1, 2, 3, 4]);
                self.engine.queue_raw(key, &frame[..frame.len() / 2]);
                self.engine.flush(key, &mut self.world);
                let reset = half == Leave::HalfFrameReset;
                if reset {
                    self.churn.left_half_frame_reset += 1
                } else {
                    self.churn.left_half_frame_fin += 1
                }
                self.drop_now(key, reset);
            }
            Action::Trickle => {
                self.engine.queue_raw(key, b"X-Slowly: 1\r\n");
                self.engine.flush(key, &mut self.world);
                self.at(1.0, key, Action::Trickle);
            }
            Action::Flood => {
                let total = (self.args.flood_rate * self.args.flood_secs) as u32;
                self.world.say(&mut self.engine, key, 0, now_us());
                let Some(client) = self.world.current(key, serial) else { return };
                if client.sent >= total {
                    client.done_sending = true;
                } else {
                    self.at(1.0 / self.args.flood_rate, key, Action::Flood);
                }
            }
            Action::Deadline => {
                if !client.judged {
                    let outcome = Outcome::Unexpected("not cut off by its deadline".to_owned());
                    self.world.judge(key, outcome, 0.0);
                    self.drop_now(key, true);
                }
            }
        }
    }

    pub fn drop_now(&mut self, key: usize, reset: bool) {
        self.engine.remove(key, reset);
        self.world.forget(key);
        self.recently_dropped.push_back(now_us() + (self.args.close_grace * 1e6) as u64);
    }

    fn churn_room(&mut self, may_be_big: bool) -> String {
        let r = self.rng.unit();
        if may_be_big && r < self.args.churn_big_share {
            "big".to_owned()
        } else if r < 0.25 && self.args.ephemeral_rooms > 0 {
            format!("e-{}", self.rng.below(self.args.ephemeral_rooms))
        } else {
            format!("s-{}", self.rng.below(self.small_rooms))
        }
    }

    pub fn arrive(&mut self) {
        let room = self.churn_room(true);
        let Some(key) = self.open(&room, Role::Churner, Options::default()) else {
            self.churn.deferred += 1;
            return;
        };
        self.churn.arrived += 1;
        let (min, max) = (self.args.churn_min_life, self.args.churn_max_life);
        let life = min + (max - min) * self.rng.unit();
        let leave = LEAVES[self.rng.below(LEAVES.len())];
        self.at(life, key, Action::Leave(leave));
        let (speak, speak_at) = (self.rng.unit(), life * self.rng.unit());
        if speak < 0.5 {
            self.at(speak_at, key, Action::Speak);
        }
        let (move_on, move_at) = (self.rng.unit(), life * self.rng.unit());
        if move_on < 0.3 {
            self.at(move_at, key, Action::Move);
        }
    }

    pub fn launch(&mut self, kind: Kind) {
        match kind {
            Kind::Slowloris => {
                let head = b"GET /?room=bad HTTP/1.1\r\nHost: 127.0.0.1\r\n".to_vec();
                if !self.room_for_one() {
                    return;
                }
                let Ok(key) = self.engine.open(head, Options::default()) else { return };
                self.world.add(key, Role::Bad(kind), now_us());
                self.at(1.0, key, Action::Trickle);
                self.at(self.world.limits.handshake_secs + 3.0, key, Action::Deadline);
            }
            Kind::StoppedReader => {
                self.open(
                    "firehose",
                    Role::Bad(kind),
                    Options { receive_buffer: Some(4096), ..Options::default() },
                );
            }
            Kind::Flooder => {
                self.open("flood", Role::Bad(kind), Options::default());
            }
            frame => {
                self.open("bad", Role::Bad(frame), Options::default());
            }
        }
    }

    /// Spends the credit of `slot` at `rate` per second over `secs`: how many are due now.
    pub fn due(&mut self, slot: usize, rate: f64, secs: f64) -> u32 {
        self.credit[slot] += rate * secs;
        let whole = self.credit[slot].floor();
        self.credit[slot] -= whole;
        whole as u32
    }
}
