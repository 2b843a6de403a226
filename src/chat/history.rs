//! A room's history: its latest messages, bounded by count (`--history`) and by size, so the
//! `welcome` or `room` event that carries it always fits in a newcomer's send buffer.

use std::collections::VecDeque;

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
pub struct Line {
    pub from_id: u64,
    pub from_name: String,
    pub text: String,
    pub ts: u64,
    /// The size of the line's `message` event as JSON: what it adds to a welcome.
    pub size: usize,
}

/// The kept lines, oldest first, and their total size.
#[derive(Default)]
pub struct History {
    lines: VecDeque<Line>,
    bytes: usize,
}

impl History {
    /// Whether a line of `size` bytes would be kept at all: not when history is off, nor when the
    /// line alone is over the byte budget. Callers skip building (and copying) such lines.
    pub fn would_keep(size: usize, limit: HistoryLimit) -> bool {
        limit.messages > 0 && size <= limit.bytes
    }

    /// Keeps `line`, then forgets the oldest lines until the history is within `limit`. A line
    /// that `would_keep` refuses is not kept at all.
    pub fn push(&mut self, line: Line, limit: HistoryLimit) {
        if !History::would_keep(line.size, limit) {
            return;
        }
        self.bytes += line.size;
        self.lines.push_back(line);
        while self.lines.len() > limit.messages || self.bytes > limit.bytes {
            let Some(oldest) = self.lines.pop_front() else { break };
            self.bytes -= oldest.size;
        }
    }

    /// The kept lines, oldest first.
    pub fn lines(&self) -> impl Iterator<Item = &Line> {
        self.lines.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: &str, size: usize) -> Line {
        Line { from_id: 1, from_name: "a".to_owned(), text: text.to_owned(), ts: 0, size }
    }

    fn texts(history: &History) -> Vec<&str> {
        history.lines().map(|line| line.text.as_str()).collect()
    }

    #[test]
    fn the_oldest_lines_go_first_when_the_count_is_reached() {
        let (mut history, limit) = (History::default(), HistoryLimit { messages: 2, bytes: 1000 });
        for text in ["one", "two", "three"] {
            history.push(line(text, 10), limit);
        }
        assert_eq!(texts(&history), ["two", "three"]);
    }

    #[test]
    fn the_oldest_lines_go_first_when_the_bytes_are_reached() {
        let (mut history, limit) = (History::default(), HistoryLimit { messages: 50, bytes: 100 });
        history.push(line("small", 30), limit);
        history.push(line("medium", 40), limit);
        history.push(line("large", 60), limit);
        assert_eq!(texts(&history), ["medium", "large"]);
        assert_eq!(history.bytes, 100);
    }

    #[test]
    fn a_line_over_the_whole_budget_is_not_kept() {
        let (mut history, limit) = (History::default(), HistoryLimit { messages: 50, bytes: 100 });
        history.push(line("kept", 10), limit);
        history.push(line("huge", 101), limit);
        assert_eq!(texts(&history), ["kept"]);
    }

    #[test]
    fn a_zero_count_keeps_nothing() {
        let mut history = History::default();
        history.push(line("gone", 1), HistoryLimit { messages: 0, bytes: 100 });
        assert_eq!(history.lines().count(), 0);
    }
}
