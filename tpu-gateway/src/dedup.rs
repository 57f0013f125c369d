//! Duplicate suppression: a signature seen within the window is not sent again.
//! Bounded: past `capacity` entries the oldest are forgotten early.

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use solana_sdk::signature::Signature;

/// Signatures seen recently.
#[derive(Debug)]
pub struct Dedup {
    seen: HashMap<Signature, Instant>,
    order: VecDeque<(Signature, Instant)>,
    window: Duration,
    capacity: usize,
}

impl Dedup {
    /// A window of `window`, at most `capacity` signatures.
    pub fn new(window: Duration, capacity: usize) -> Self {
        Self {
            seen: HashMap::new(),
            order: VecDeque::new(),
            window,
            capacity: capacity.max(1),
        }
    }

    /// Records `sig` at `now`; false if it was already seen within the window.
    pub fn insert(&mut self, sig: Signature, now: Instant) -> bool {
        self.expire(now);
        if self.seen.contains_key(&sig) {
            return false;
        }
        while self.seen.len() >= self.capacity {
            let Some((old, at)) = self.order.pop_front() else {
                break;
            };
            if self.seen.get(&old) == Some(&at) {
                self.seen.remove(&old);
            }
        }
        self.seen.insert(sig, now);
        self.order.push_back((sig, now));
        true
    }

    /// Forgets `sig` (its send was refused, so a retry by the client is not a duplicate).
    pub fn remove(&mut self, sig: &Signature) {
        self.seen.remove(sig);
    }

    /// Signatures held.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether none are held.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(sig, at)) = self.order.front() {
            if now.duration_since(at) < self.window {
                break;
            }
            self.order.pop_front();
            if self.seen.get(&sig) == Some(&at) {
                self.seen.remove(&sig);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_within_the_window_only() {
        let mut d = Dedup::new(Duration::from_secs(10), 100);
        let t = Instant::now();
        let s = Signature::from([1u8; 64]);
        assert!(d.insert(s, t));
        assert!(!d.insert(s, t + Duration::from_secs(9)));
        assert!(d.insert(s, t + Duration::from_secs(11)));
        d.remove(&s);
        assert!(d.insert(s, t + Duration::from_secs(12)));
    }

    #[test]
    fn bounded() {
        let mut d = Dedup::new(Duration::from_secs(10), 3);
        let t = Instant::now();
        for i in 0..10u8 {
            assert!(d.insert(Signature::from([i; 64]), t));
        }
        assert_eq!(d.len(), 3);
        assert!(
            d.insert(Signature::from([0u8; 64]), t),
            "the oldest were forgotten"
        );
    }
}
