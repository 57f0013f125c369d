//! [`LeaderWindow`]: the leaders of a run of consecutive slots (from `getSlotLeaders`),
//! and [`fetch_range`]: which range to fetch next, respecting epoch boundaries.

use std::time::Instant;

use solana_sdk::{clock::Slot, epoch_schedule::EpochSchedule, pubkey::Pubkey};

/// agave's RPC serves at most this many leaders per `getSlotLeaders` call.
pub const MAX_GET_SLOT_LEADERS: u64 = 5_000;

/// Leaders for slots `start..start + leaders.len()`.
#[derive(Clone, Debug)]
pub struct LeaderWindow {
    /// First slot covered.
    pub start: Slot,
    /// One leader per slot.
    pub leaders: Vec<Pubkey>,
    /// When it was fetched (for staleness).
    pub fetched_at: Instant,
}

impl LeaderWindow {
    /// The leader of `slot`, if the window covers it.
    pub fn leader_at(&self, slot: Slot) -> Option<Pubkey> {
        let i = slot.checked_sub(self.start)?;
        self.leaders.get(usize::try_from(i).ok()?).copied()
    }

    /// One past the last slot covered.
    pub fn end(&self) -> Slot {
        self.start.saturating_add(self.leaders.len() as u64)
    }

    /// Slots covered from `slot` on (0 when `slot` is outside).
    pub fn remaining_from(&self, slot: Slot) -> u64 {
        if slot < self.start {
            0
        } else {
            self.end().saturating_sub(slot)
        }
    }
}

/// The `(start, limit)` of the next `getSlotLeaders` call, or `None` when `window`
/// still covers at least `refetch_below` slots from `current`.
///
/// The range never goes past the end of the epoch after `current`'s: agave computes a
/// leader schedule one epoch ahead and refuses ranges beyond it.
pub fn fetch_range(
    window: Option<&LeaderWindow>,
    current: Slot,
    schedule: &EpochSchedule,
    lookahead: u64,
    refetch_below: u64,
) -> Option<(Slot, u64)> {
    if window.is_some_and(|w| w.remaining_from(current) >= refetch_below) {
        return None;
    }
    let next_epoch = schedule.get_epoch(current).saturating_add(1);
    let last_known = schedule.get_last_slot_in_epoch(next_epoch);
    let limit = lookahead
        .min(MAX_GET_SLOT_LEADERS)
        .min(last_known.saturating_sub(current).saturating_add(1))
        .max(1);
    Some((current, limit))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(start: Slot, n: usize) -> LeaderWindow {
        LeaderWindow {
            start,
            leaders: (0..n).map(|_| Pubkey::new_unique()).collect(),
            fetched_at: Instant::now(),
        }
    }

    #[test]
    fn leader_lookup_bounds() {
        let w = window(100, 10);
        assert!(w.leader_at(99).is_none());
        assert_eq!(w.leader_at(100), Some(w.leaders[0]));
        assert_eq!(w.leader_at(109), Some(w.leaders[9]));
        assert!(w.leader_at(110).is_none());
        assert_eq!(w.remaining_from(105), 5);
        assert_eq!(w.remaining_from(200), 0);
        assert_eq!(w.remaining_from(50), 0);
    }

    #[test]
    fn refetch_only_when_running_low() {
        let schedule = EpochSchedule::custom(1_000, 1_000, false);
        let w = window(100, 200);
        assert_eq!(fetch_range(Some(&w), 150, &schedule, 200, 100), None);
        assert_eq!(
            fetch_range(Some(&w), 201, &schedule, 200, 100),
            Some((201, 200))
        );
        assert_eq!(
            fetch_range(None, 150, &schedule, 200, 100),
            Some((150, 200))
        );
    }

    #[test]
    fn range_stops_at_the_end_of_the_next_epoch() {
        // Epochs of 32 slots: epoch 3 is slots 96..=127, epoch 4 is 128..=159.
        let schedule = EpochSchedule::custom(32, 32, false);
        assert_eq!(fetch_range(None, 120, &schedule, 200, 100), Some((120, 40)));
        assert_eq!(fetch_range(None, 127, &schedule, 5, 100), Some((127, 5)));
    }

    #[test]
    fn lookahead_is_capped_at_the_rpc_limit() {
        let schedule = EpochSchedule::custom(432_000, 432_000, false);
        assert_eq!(
            fetch_range(None, 0, &schedule, 1_000_000, 10),
            Some((0, MAX_GET_SLOT_LEADERS))
        );
    }
}
