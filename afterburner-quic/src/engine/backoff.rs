//! The reconnect backoff policy, per TPU address. A connection that ended after
//! being healthy for a while may reconnect at once; repeated failures back off
//! exponentially; agave's `disallowed` and `too_many` close codes impose their own
//! delays. This is what keeps a failing leader from a reconnect storm. Sans-IO: the
//! time is an argument.

use std::{
    collections::HashMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use crate::{config::EngineConfig, outcome::DropReason, protocol::close_code};

/// A connection established for this long is healthy: its failure history is forgotten.
const HEALTHY_AFTER: Duration = Duration::from_secs(1);

/// Entries idle this long are forgotten (when the table grows).
const FORGET_AFTER: Duration = Duration::from_secs(600);

#[derive(Debug)]
struct Entry {
    until: Instant,
    failures: u32,
}

/// Backoff state of every address that failed recently.
#[derive(Debug, Default)]
pub(super) struct Backoffs {
    entries: HashMap<SocketAddr, Entry>,
}

impl Backoffs {
    /// Whether connecting to `target` must wait past `now`.
    pub(super) fn blocks(&self, target: SocketAddr, now: Instant) -> bool {
        self.entries.get(&target).is_some_and(|b| b.until > now)
    }

    /// A handshake with `peer` completed at `now`: nothing to wait for any more (the
    /// failure count stays until the connection has proven healthy).
    pub(super) fn on_established(&mut self, peer: SocketAddr, now: Instant) {
        if let Some(b) = self.entries.get_mut(&peer) {
            b.until = now;
        }
    }

    /// A connection to `peer` ended (or never started) at `now`, for `reason`;
    /// `established_since` when its handshake had completed.
    pub(super) fn record_failure(
        &mut self,
        config: &EngineConfig,
        peer: SocketAddr,
        established_since: Option<Instant>,
        reason: Option<DropReason>,
        now: Instant,
    ) {
        let entry = self.entries.entry(peer).or_insert(Entry {
            until: now,
            failures: 0,
        });
        if established_since.is_some_and(|s| now.duration_since(s) >= HEALTHY_AFTER) {
            entry.failures = 0;
        }
        entry.failures = entry.failures.saturating_add(1);
        let delay = match reason {
            Some(DropReason::ClosedByPeer(close_code::DISALLOWED)) => config.backoff_disallowed,
            Some(DropReason::ClosedByPeer(close_code::TOO_MANY)) => config.backoff_too_many,
            // First loss of a connection that was working: reconnect right away.
            _ if established_since.is_some() && entry.failures == 1 => Duration::ZERO,
            _ => {
                let shift = entry.failures.saturating_sub(1).min(16);
                (config.backoff_initial * (1u32 << shift)).min(config.backoff_max)
            }
        };
        entry.until = now + delay;
    }

    /// Forgets long-idle entries once there are more than `max` (bounded memory when
    /// many addresses come and go).
    pub(super) fn prune(&mut self, now: Instant, max: usize) {
        if self.entries.len() > max {
            self.entries
                .retain(|_, b| now.saturating_duration_since(b.until) < FORGET_AFTER);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        "10.0.0.1:8009".parse().unwrap()
    }

    /// The time until `addr` may be connected to again.
    fn wait(b: &Backoffs, now: Instant) -> Duration {
        let mut d = Duration::ZERO;
        while b.blocks(addr(), now + d) {
            d += Duration::from_millis(1);
        }
        d
    }

    #[test]
    fn failed_attempts_double_up_to_the_maximum() {
        let config = EngineConfig::default();
        let mut b = Backoffs::default();
        let now = Instant::now();
        let mut waits = Vec::new();
        for _ in 0..10 {
            b.record_failure(&config, addr(), None, None, now);
            waits.push(wait(&b, now).as_millis());
        }
        assert_eq!(
            waits,
            [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000]
        );
    }

    #[test]
    fn a_healthy_connection_reconnects_at_once_and_forgets_its_failures() {
        let config = EngineConfig::default();
        let mut b = Backoffs::default();
        let now = Instant::now();
        for _ in 0..3 {
            b.record_failure(&config, addr(), None, None, now);
        }
        let later = now + Duration::from_secs(5);
        b.on_established(addr(), later);
        assert!(!b.blocks(addr(), later));
        let lost = later + HEALTHY_AFTER;
        b.record_failure(&config, addr(), Some(later), None, lost);
        assert_eq!(wait(&b, lost), Duration::ZERO, "first loss after health");
        b.record_failure(&config, addr(), None, None, lost);
        assert_eq!(wait(&b, lost).as_millis(), 200, "then exponential again");
    }

    #[test]
    fn close_codes_impose_their_own_delays() {
        let config = EngineConfig::default();
        let now = Instant::now();
        for (code, delay) in [
            (close_code::DISALLOWED, config.backoff_disallowed),
            (close_code::TOO_MANY, config.backoff_too_many),
        ] {
            let mut b = Backoffs::default();
            let since = Some(now - Duration::from_secs(10));
            b.record_failure(
                &config,
                addr(),
                since,
                Some(DropReason::ClosedByPeer(code)),
                now,
            );
            assert_eq!(wait(&b, now), delay, "code {code}");
        }
    }

    #[test]
    fn idle_entries_are_pruned_past_the_bound() {
        let config = EngineConfig::default();
        let mut b = Backoffs::default();
        let now = Instant::now();
        b.record_failure(&config, addr(), None, None, now);
        b.prune(now + FORGET_AFTER * 2, 1);
        assert_eq!(b.entries.len(), 1, "within the bound: kept");
        b.prune(now + FORGET_AFTER * 2, 0);
        assert!(b.entries.is_empty());
    }
}
