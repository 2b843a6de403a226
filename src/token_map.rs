//! A map keyed by connection token, stored as a vector indexed by it. Tokens are the reactor's
//! slab keys: small, dense, and reused as soon as a connection is freed, so a vector wastes no
//! room on hashing and holds each value in one slot, where a hash map's spare capacity would cost
//! every connection a share of empty buckets.

use std::ops::Index;

use mio::Token;

pub struct TokenMap<V> {
    slots: Vec<Option<V>>,
    len: usize,
}

impl<V> Default for TokenMap<V> {
    fn default() -> Self {
        TokenMap { slots: Vec::new(), len: 0 }
    }
}

impl<V> TokenMap<V> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, token: &Token) -> Option<&V> {
        self.slots.get(token.0)?.as_ref()
    }

    pub fn get_mut(&mut self, token: &Token) -> Option<&mut V> {
        self.slots.get_mut(token.0)?.as_mut()
    }

    /// Stores `value` for `token`, returning the value it replaces.
    pub fn insert(&mut self, token: Token, value: V) -> Option<V> {
        if token.0 >= self.slots.len() {
            self.slots.resize_with(token.0 + 1, || None);
        }
        let previous = self.slots[token.0].replace(value);
        if previous.is_none() {
            self.len += 1;
        }
        previous
    }

    pub fn remove(&mut self, token: &Token) -> Option<V> {
        let removed = self.slots.get_mut(token.0)?.take();
        if removed.is_some() {
            self.len -= 1;
        }
        removed
    }
}

impl<V> Index<&Token> for TokenMap<V> {
    type Output = V;

    /// # Panics
    /// If `token` has no value: callers index only with a token they know is there.
    fn index(&self, token: &Token) -> &V {
        self.get(token).expect("the token is in the map")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_as_a_map() {
        let mut map = TokenMap::default();
        assert!(map.is_empty());
        assert_eq!(map.insert(Token(5), "five"), None);
        assert_eq!(map.insert(Token(1), "one"), None);
        assert_eq!(map.insert(Token(5), "FIVE"), Some("five"));
        assert_eq!((map.len(), map.get(&Token(5)), map[&Token(1)]), (2, Some(&"FIVE"), "one"));
        assert_eq!(map.get(&Token(2)), None);
        assert_eq!(map.get(&Token(usize::MAX)), None);
        assert_eq!(map.remove(&Token(1)), Some("one"));
        assert_eq!(map.remove(&Token(1)), None);
        assert_eq!(map.remove(&Token(99)), None);
        *map.get_mut(&Token(5)).unwrap() = "cinq";
        assert_eq!(map.get(&Token(5)), Some(&"cinq"));
        assert_eq!(map.len(), 1);
    }
}
