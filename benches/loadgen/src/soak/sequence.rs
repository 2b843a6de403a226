//! The soak's delivery checks, without I/O: every connection's stream of room sequence numbers
//! (each message event and each of its own acks holds one) must go up by one, and every
//! connection must see the same message at the same seq of a room. Together they say that nothing
//! was lost, duplicated, reordered or misdelivered, and so that each sender's messages reached each
//! member in the order they were sent: the room's sequence is the server's order of processing.
//!
//! Called by `world.rs` for every event; the whole state is plain data, tested below.

use std::collections::{HashMap, VecDeque};

use serde::Serialize;

/// Which message a seq holds: the sending client's serial and its own count of messages.
pub type Fingerprint = (u64, u32);

/// How many of a room's latest seqs keep their fingerprint: a connection more than this far
/// behind a room's newest message is only checked for gaps, not for content.
const REMEMBERED: usize = 1024;

/// Everything the checks count, over every connection.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Tally {
    /// Message events and acks that were the next seq of their stream.
    pub delivered: u64,
    /// Seqs skipped in a stream (and not seen since).
    pub lost: u64,
    /// Seqs seen twice in one stream.
    pub duplicated: u64,
    /// Seqs that arrived after a later one of the same stream.
    pub reordered: u64,
    /// A seq holding another message than the one the room's first witness saw there.
    pub mismatched: u64,
    /// Message events for a room the connection was not in.
    pub wrong_room: u64,
}

impl Tally {
    /// Whether any check failed.
    pub fn clean(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.reordered == 0
            && self.mismatched == 0
            && self.wrong_room == 0
    }
}

/// One connection's view of the room it is in.
#[derive(Debug, Default)]
pub struct Stream {
    /// The room (an index into `Rooms`), from the last `welcome` or `room` event.
    room: Option<u32>,
    /// The seq expected next.
    next: u64,
    /// Seqs skipped so far; normally empty.
    skipped: Vec<u64>,
}

impl Stream {
    pub fn room(&self) -> Option<u32> {
        self.room
    }

    /// The last seq this connection has seen in its room (its welcome's, if nothing since).
    pub fn latest(&self) -> u64 {
        self.next.saturating_sub(1)
    }

    /// A `welcome` or `room` event: the connection is now in `room`, whose latest seq is `seq`.
    pub fn enter(&mut self, room: u32, seq: u64) {
        self.room = Some(room);
        self.next = seq + 1;
        self.skipped.clear();
    }

    /// A message event (or an ack of our own message, `room` then being the stream's own room)
    /// holding `seq` of `room`.
    pub fn receive(&mut self, room: u32, seq: u64, what: Fingerprint, rooms: &mut Rooms, tally: &mut Tally) {
        if self.room != Some(room) {
            tally.wrong_room += 1;
            return;
        }
        if seq >= self.next {
            tally.lost += seq - self.next;
            self.skipped.extend(self.next..seq);
            self.next = seq + 1;
            tally.delivered += 1;
        } else if let Some(at) = self.skipped.iter().position(|&skipped| skipped == seq) {
            self.skipped.swap_remove(at);
            tally.lost -= 1;
            tally.reordered += 1;
        } else {
            tally.duplicated += 1;
            return;
        }
        if !rooms.witness(room, seq, what) {
            tally.mismatched += 1;
        }
    }
}

/// The rooms the soak has seen, with the latest seqs' fingerprints.
#[derive(Debug, Default)]
pub struct Rooms {
    ids: HashMap<String, u32>,
    logs: Vec<RoomLog>,
}

#[derive(Debug, Default)]
struct RoomLog {
    /// The room's epoch: a room dropped and made again starts its seqs over.
    epoch: String,
    /// The seq of `fingerprints[0]`.
    base: u64,
    /// `None` for a seq nobody has reported yet.
    fingerprints: VecDeque<Option<Fingerprint>>,
    /// The highest seq anyone has seen in this epoch.
    newest: u64,
}

impl Rooms {
    /// The index of a room, by name.
    pub fn id(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let id = self.logs.len() as u32;
        self.ids.insert(name.to_owned(), id);
        self.logs.push(RoomLog::default());
        id
    }

    /// Someone entered `room` at `seq` in `epoch`. A new epoch means the room was dropped while
    /// empty and made again, so what was remembered of it is forgotten.
    pub fn entered(&mut self, room: u32, epoch: &str, seq: u64) {
        let log = &mut self.logs[room as usize];
        if log.epoch != epoch {
            *log = RoomLog { epoch: epoch.to_owned(), base: seq + 1, ..RoomLog::default() };
        }
        log.newest = log.newest.max(seq);
    }

    /// The highest seq anyone has seen in `room`.
    pub fn newest(&self, room: u32) -> u64 {
        self.logs[room as usize].newest
    }

    /// Records that `seq` of `room` holds `what`; false if someone saw another message there.
    fn witness(&mut self, room: u32, seq: u64, what: Fingerprint) -> bool {
        let log = &mut self.logs[room as usize];
        log.newest = log.newest.max(seq);
        if seq < log.base {
            return true; // Forgotten already.
        }
        let at = (seq - log.base) as usize;
        if at >= log.fingerprints.len() {
            log.fingerprints.resize(at + 1, None);
        }
        let slot = &mut log.fingerprints[at];
        let same = slot.is_none_or(|seen| seen == what);
        *slot = Some(what);
        while log.fingerprints.len() > REMEMBERED {
            log.fingerprints.pop_front();
            log.base += 1;
        }
        same
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_in_order_counts_deliveries_only() {
        let (mut rooms, mut tally, mut stream) = (Rooms::default(), Tally::default(), Stream::default());
        let room = rooms.id("r");
        rooms.entered(room, "e1", 4);
        stream.enter(room, 4);
        for seq in 5..10 {
            stream.receive(room, seq, (1, seq as u32), &mut rooms, &mut tally);
        }
        assert_eq!(tally.delivered, 5);
        assert!(tally.clean(), "{tally:?}");
        assert_eq!((stream.latest(), rooms.newest(room)), (9, 9));
    }

    #[test]
    fn gaps_duplicates_late_arrivals_and_other_rooms_are_told_apart() {
        let (mut rooms, mut tally, mut stream) = (Rooms::default(), Tally::default(), Stream::default());
        let (room, other) = (rooms.id("r"), rooms.id("o"));
        rooms.entered(room, "e1", 0);
        stream.enter(room, 0);
        stream.receive(room, 1, (1, 1), &mut rooms, &mut tally);
        stream.receive(room, 4, (1, 4), &mut rooms, &mut tally); // 2 and 3 skipped
        assert_eq!(tally.lost, 2);
        stream.receive(room, 3, (1, 3), &mut rooms, &mut tally); // late, not lost after all
        stream.receive(room, 4, (1, 4), &mut rooms, &mut tally); // twice
        stream.receive(other, 5, (1, 5), &mut rooms, &mut tally);
        assert_eq!((tally.lost, tally.reordered, tally.duplicated, tally.wrong_room), (1, 1, 1, 1));
    }

    #[test]
    fn every_member_must_see_the_same_message_at_a_seq() {
        let (mut rooms, mut tally) = (Rooms::default(), Tally::default());
        let room = rooms.id("r");
        rooms.entered(room, "e1", 0);
        let (mut alice, mut bob) = (Stream::default(), Stream::default());
        alice.enter(room, 0);
        bob.enter(room, 0);
        alice.receive(room, 1, (7, 0), &mut rooms, &mut tally);
        bob.receive(room, 1, (7, 0), &mut rooms, &mut tally);
        assert_eq!(tally.mismatched, 0);
        alice.receive(room, 2, (7, 1), &mut rooms, &mut tally);
        bob.receive(room, 2, (8, 0), &mut rooms, &mut tally);
        assert_eq!(tally.mismatched, 1);
    }

    #[test]
    fn a_new_epoch_forgets_the_old_fingerprints() {
        let (mut rooms, mut tally, mut stream) = (Rooms::default(), Tally::default(), Stream::default());
        let room = rooms.id("r");
        rooms.entered(room, "e1", 0);
        stream.enter(room, 0);
        stream.receive(room, 1, (1, 0), &mut rooms, &mut tally);
        rooms.entered(room, "e2", 0);
        stream.enter(room, 0);
        stream.receive(room, 1, (2, 0), &mut rooms, &mut tally);
        assert!(tally.clean(), "{tally:?}");
        assert_eq!(rooms.newest(room), 1);
    }

    #[test]
    fn only_the_latest_seqs_are_remembered() {
        let (mut rooms, mut tally, mut stream) = (Rooms::default(), Tally::default(), Stream::default());
        let room = rooms.id("r");
        rooms.entered(room, "e1", 0);
        stream.enter(room, 0);
        for seq in 1..=3000 {
            stream.receive(room, seq, (1, seq as u32), &mut rooms, &mut tally);
        }
        assert_eq!(rooms.logs[room as usize].fingerprints.len(), REMEMBERED);
        let mut late = Stream::default();
        late.enter(room, 0);
        late.receive(room, 1, (9, 9), &mut rooms, &mut tally); // forgotten: not checkable
        assert_eq!(tally.mismatched, 0);
    }
}
