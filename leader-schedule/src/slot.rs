//! [`SlotEstimator`]: the current slot, estimated from recent slot observations.
//!
//! As in agave's tpu-client (`RecentLeaderSlots`), the estimate is the highest recent
//! observation that is in line with the median of the last dozen (a validator can
//! announce slots far in the future), so a single bogus or late event cannot move it.
//! When no observation has arrived for a while (websocket and RPC both silent), it
//! advances by itself from the newest one at one slot per `slot_duration`.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use solana_sdk::clock::Slot;

/// Observations kept for the median.
const RECENT: usize = 12;

/// An observation more than this many slots ahead of the estimate is rejected
/// (tpu-client-next's bound).
pub const MAX_SLOTS_AHEAD: u64 = 48;

/// See the module documentation. Cheap to clone (a dozen entries).
#[derive(Clone, Debug)]
pub struct SlotEstimator {
    slot_duration: Duration,
    recent: VecDeque<(Slot, Instant)>,
}

impl SlotEstimator {
    /// An estimator for slots of `slot_duration` (400 ms on today's clusters).
    pub fn new(slot_duration: Duration) -> Self {
        Self {
            slot_duration: slot_duration.max(Duration::from_millis(1)),
            recent: VecDeque::with_capacity(RECENT),
        }
    }

    /// Records that `slot` was current at `at`. Returns false when it was rejected
    /// as implausibly far ahead.
    pub fn observe(&mut self, slot: Slot, at: Instant) -> bool {
        if let Some(estimate) = self.estimate(at)
            && slot > estimate.saturating_add(MAX_SLOTS_AHEAD)
        {
            return false;
        }
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back((slot, at));
        true
    }

    /// The estimated current slot at `now`, if anything was observed.
    pub fn estimate(&self, now: Instant) -> Option<Slot> {
        let newest_at = self.recent.iter().map(|&(_, at)| at).max()?;
        let mut slots: Vec<Slot> = self.recent.iter().map(|&(slot, _)| slot).collect();
        slots.sort_unstable();
        let max_index = slots.len() - 1;
        let median_index = max_index / 2;
        let reasonable = slots[median_index]
            .saturating_add((max_index - median_index) as u64)
            .saturating_add(MAX_SLOTS_AHEAD);
        let base = slots
            .iter()
            .rev()
            .copied()
            .find(|&s| s <= reasonable)
            .unwrap_or(slots[median_index]);
        let silent =
            now.saturating_duration_since(newest_at).as_nanos() / self.slot_duration.as_nanos();
        Some(base.saturating_add(u64::try_from(silent).unwrap_or(u64::MAX)))
    }

    /// When the newest observation was made.
    pub fn last_observed_at(&self) -> Option<Instant> {
        self.recent.back().map(|&(_, at)| at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLOT: Duration = Duration::from_millis(400);

    #[test]
    fn empty_has_no_estimate() {
        assert_eq!(SlotEstimator::new(SLOT).estimate(Instant::now()), None);
    }

    #[test]
    fn extrapolates_between_observations() {
        let t0 = Instant::now();
        let mut e = SlotEstimator::new(SLOT);
        e.observe(100, t0);
        assert_eq!(e.estimate(t0), Some(100));
        assert_eq!(e.estimate(t0 + SLOT * 5), Some(105));
    }

    #[test]
    fn median_ignores_a_lagging_event() {
        let t0 = Instant::now();
        let mut e = SlotEstimator::new(SLOT);
        for i in 0..5 {
            e.observe(100 + i, t0 + SLOT * i as u32);
        }
        // A stale event (from a slow node) for slot 90 arrives now.
        e.observe(90, t0 + SLOT * 4);
        assert_eq!(e.estimate(t0 + SLOT * 4), Some(104));
    }

    #[test]
    fn a_bogus_far_slot_among_recent_ones_is_ignored() {
        let t0 = Instant::now();
        let mut e = SlotEstimator::new(SLOT);
        e.recent.push_back((100, t0));
        e.recent.push_back((101, t0));
        e.recent.push_back((102, t0));
        // Bypassing observe(): as if it had been accepted before the others arrived.
        e.recent.push_back((1_000_000, t0));
        assert_eq!(e.estimate(t0), Some(102));
    }

    #[test]
    fn rejects_far_ahead() {
        let t0 = Instant::now();
        let mut e = SlotEstimator::new(SLOT);
        e.observe(100, t0);
        assert!(!e.observe(100 + MAX_SLOTS_AHEAD + 1, t0));
        assert!(e.observe(100 + MAX_SLOTS_AHEAD, t0));
        assert_eq!(e.recent.len(), 2);
    }

    #[test]
    fn keeps_a_bounded_history() {
        let t0 = Instant::now();
        let mut e = SlotEstimator::new(SLOT);
        for i in 0..100u64 {
            e.observe(i, t0 + SLOT * i as u32);
        }
        assert_eq!(e.recent.len(), RECENT);
        assert_eq!(e.estimate(t0 + SLOT * 99), Some(99));
    }
}
