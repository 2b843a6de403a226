//! A room's history: its latest `message` events, each kept as the very frame its members
//! received, bounded by count (`--history`) and by size, so that the `welcome` or `room` event that
//! carries it always fits in a newcomer's send buffer. It also knows from which seq on it holds
//! every message, which is what a client resuming after a reconnect needs to know.

use std::collections::VecDeque;

use crate::frame::Frame;

/// How much history a room keeps.
#[derive(Debug, Clone, Copy)]
pub struct HistoryLimit {
    /// Most messages kept (0 keeps none).
    pub messages: usize,
    /// Most bytes the kept messages may take as JSON. A history that only counted messages could
    /// be made bigger than a client's send buffer (50 messages of 64 KiB, or fewer full of
    /// characters JSON escapes six-fold), and then nobody could join the room.
    pub bytes: usize,
}

/// A message kept in a room's history.
struct Entry {
    seq: u64,
    /// The `message` event as the room's members received it; its payload is what a welcome
    /// lists. Shared with the recipients' queues, not copied.
    event: Frame,
}

impl Entry {
    fn size(&self) -> usize {
        self.event.payload().len()
    }
}

/// The kept messages, oldest first, and their total size.
pub struct History {
    entries: VecDeque<Entry>,
    bytes: usize,
    /// The lowest seq from which on every message is kept: a client that has seen everything
    /// before it can be given exactly what it missed. Moves up as old messages are forgotten,
    /// and past any message too large to be kept at all.
    complete_from: u64,
}

impl Default for History {
    fn default() -> Self {
        History { entries: VecDeque::new(), bytes: 0, complete_from: 1 }
    }
}

impl History {
    /// Keeps message `seq` (the next in the room's sequence), then forgets the oldest messages
    /// until the history is within `limit`. A message over the whole byte budget is not kept.
    pub fn push(&mut self, seq: u64, event: Frame, limit: HistoryLimit) {
        let entry = Entry { seq, event };
        if limit.messages == 0 || entry.size() > limit.bytes {
            self.complete_from = seq + 1;
            return;
        }
        self.bytes += entry.size();
        self.entries.push_back(entry);
        while self.entries.len() > limit.messages || self.bytes > limit.bytes {
            self.forget_oldest();
        }
    }

    /// Forgets the oldest messages until at most `bytes` are kept.
    pub fn trim_to(&mut self, bytes: usize) {
        while self.bytes > bytes {
            self.forget_oldest();
        }
    }

    fn forget_oldest(&mut self) {
        if let Some(oldest) = self.entries.pop_front() {
            self.bytes -= oldest.size();
            self.complete_from = self.complete_from.max(oldest.seq + 1);
        }
    }

    /// Bytes of JSON kept.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The kept `message` events, oldest first, as JSON text.
    pub fn latest(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().filter_map(|entry| entry.event.as_text())
    }

    /// Every message after `since`, oldest first, if the history still holds all of them;
    /// `latest` is the room's latest seq. `None` when some are forgotten, or when `since` is
    /// ahead of the room (a client from another sequence).
    pub fn after(&self, since: u64, latest: u64) -> Option<impl Iterator<Item = &str>> {
        if since > latest || since.saturating_add(1) < self.complete_from {
            return None;
        }
        let missed = self.entries.iter().skip_while(move |entry| entry.seq <= since);
        Some(missed.filter_map(|entry| entry.event.as_text()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A history entry whose event JSON is `size` bytes.
    fn event(size: usize) -> Frame {
        Frame::text(&"x".repeat(size))
    }

    fn push_sizes(history: &mut History, sizes: &[usize], limit: HistoryLimit) {
        for &size in sizes {
            let seq = history.entries.back().map_or(history.complete_from, |entry| entry.seq + 1);
            history.push(seq, event(size), limit);
        }
    }

    fn seqs(history: &History) -> Vec<u64> {
        history.entries.iter().map(|entry| entry.seq).collect()
    }

    #[test]
    fn the_oldest_messages_go_first_when_the_count_is_reached() {
        let (mut history, limit) = (History::default(), HistoryLimit { messages: 2, bytes: 1000 });
        push_sizes(&mut history, &[10, 10, 10], limit);
        assert_eq!(seqs(&history), [2, 3]);
        assert_eq!(history.complete_from, 2);
    }

    #[test]
    fn the_oldest_messages_go_first_when_the_bytes_are_reached() {
        let (mut history, limit) = (History::default(), HistoryLimit { messages: 50, bytes: 100 });
        push_sizes(&mut history, &[30, 40, 60], limit);
        assert_eq!(seqs(&history), [2, 3]);
        assert_eq!(history.bytes(), 100);
    }

    #[test]
    fn a_message_over_the_whole_budget_is_not_kept_and_breaks_the_run() {
        let (mut history, limit) = (History::default(), HistoryLimit { messages: 50, bytes: 100 });
        history.push(1, event(10), limit);
        history.push(2, event(101), limit);
        history.push(3, event(10), limit);
        assert_eq!(seqs(&history), [1, 3]);
        // Message 2 is lost, so only a client that saw it can be given exactly what it missed.
        assert!(history.after(0, 3).is_none());
        assert!(history.after(1, 3).is_none());
        assert_eq!(history.after(2, 3).map(|missed| missed.count()), Some(1));
    }

    #[test]
    fn after_gives_exactly_the_missed_messages_or_nothing() {
        let (mut history, limit) = (History::default(), HistoryLimit { messages: 3, bytes: 1000 });
        push_sizes(&mut history, &[1, 2, 3, 4, 5], limit);
        assert_eq!(seqs(&history), [3, 4, 5]);
        let sizes = |since| history.after(since, 5).map(|missed| missed.map(str::len).collect::<Vec<_>>());
        assert_eq!(sizes(2), Some(vec![3, 4, 5]));
        assert_eq!(sizes(4), Some(vec![5]));
        assert_eq!(sizes(5), Some(vec![]));
        assert_eq!(sizes(1), None, "message 2 is forgotten");
        assert_eq!(sizes(6), None, "ahead of the room");
        assert_eq!(sizes(u64::MAX), None);
    }

    #[test]
    fn with_no_history_only_a_client_that_missed_nothing_is_recovered() {
        let (mut history, limit) = (History::default(), HistoryLimit { messages: 0, bytes: 100 });
        assert_eq!(history.after(0, 0).map(|missed| missed.count()), Some(0));
        history.push(1, event(1), limit);
        assert!(history.after(0, 1).is_none());
        assert_eq!(history.after(1, 1).map(|missed| missed.count()), Some(0));
    }

    #[test]
    fn trimming_frees_the_oldest_and_moves_the_complete_run() {
        let (mut history, limit) = (History::default(), HistoryLimit { messages: 50, bytes: 1000 });
        push_sizes(&mut history, &[10, 20, 30], limit);
        history.trim_to(35);
        assert_eq!(seqs(&history), [3]);
        assert!(history.after(1, 3).is_none());
        assert!(history.after(2, 3).is_some());
    }
}
