//! Leaders that refuse our identity's connection because its budget is taken: agave
//! allows `max_connections_per_peer` connections per staked identity (1 in the test
//! validator, 8 in agave 3.x, 16 after agave PR #8922) and closes the excess with
//! code 4 (`too_many`). Every sender presenting the same identity shares that budget
//! per leader: the validator's own send-transaction-service and forwarding, and the
//! other gateways of a fleet. Sans-IO: the forwarder feeds it send outcomes with the
//! time and reads which leaders refuse us now.
//!
//! A leader counts as refusing from its `too_many` close until a stream is written
//! to it again, for at most [`REFUSAL_MEMORY`] after the last close: the engine
//! backs off from it meanwhile, and a mark that never expired would refuse clients
//! forever once nothing is sent.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    time::{Duration, Instant},
};

use afterburner_quic::{DropReason, OutcomeKind, protocol::close_code};

/// How long a `too_many` close keeps its leader marked refusing without another.
pub const REFUSAL_MEMORY: Duration = Duration::from_secs(15);

/// One leader's refusal episode.
#[derive(Clone, Copy, Debug)]
struct Refusal {
    last: Instant,
    closes: u64,
}

/// What [`Refusals::on_outcome`] learned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Nothing new.
    None,
    /// `target` started refusing (first `too_many` of an episode: log it once).
    Started,
    /// Another `too_many` close in a running episode.
    Again,
    /// `target` took a stream again: its episode is over.
    Ended,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct Refusals {
    by_target: HashMap<SocketAddr, Refusal>,
}

impl Refusals {
    /// The outcome of one send to `target` at `now`.
    pub fn on_outcome(&mut self, target: SocketAddr, kind: OutcomeKind, now: Instant) -> Change {
        match kind {
            OutcomeKind::Dropped(DropReason::ClosedByPeer(close_code::TOO_MANY)) => {
                let live = self
                    .by_target
                    .get(&target)
                    .is_some_and(|r| now.saturating_duration_since(r.last) < REFUSAL_MEMORY);
                let r = self.by_target.entry(target).or_insert(Refusal {
                    last: now,
                    closes: 0,
                });
                r.last = now;
                r.closes += 1;
                if live { Change::Again } else { Change::Started }
            }
            OutcomeKind::Sent => {
                if self.by_target.remove(&target).is_some() {
                    Change::Ended
                } else {
                    Change::None
                }
            }
            OutcomeKind::Dropped(_) => Change::None,
        }
    }

    /// The leaders refusing us at `now` (forgets expired episodes).
    pub fn refusing(&mut self, now: Instant) -> HashSet<SocketAddr> {
        self.by_target
            .retain(|_, r| now.saturating_duration_since(r.last) < REFUSAL_MEMORY);
        self.by_target.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOO_MANY: OutcomeKind =
        OutcomeKind::Dropped(DropReason::ClosedByPeer(close_code::TOO_MANY));

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn a_too_many_close_marks_its_leader_until_a_send_or_the_memory_runs_out() {
        let mut r = Refusals::default();
        let t0 = Instant::now();
        assert_eq!(r.on_outcome(addr(1), TOO_MANY, t0), Change::Started);
        assert_eq!(r.on_outcome(addr(1), TOO_MANY, t0), Change::Again);
        // Other drops and other leaders do not count.
        let lost = OutcomeKind::Dropped(DropReason::ConnectionLost);
        assert_eq!(r.on_outcome(addr(2), lost, t0), Change::None);
        let disallowed = OutcomeKind::Dropped(DropReason::ClosedByPeer(close_code::DISALLOWED));
        assert_eq!(r.on_outcome(addr(2), disallowed, t0), Change::None);
        assert_eq!(r.refusing(t0), HashSet::from([addr(1)]));
        // A stream written ends the episode.
        assert_eq!(r.on_outcome(addr(1), OutcomeKind::Sent, t0), Change::Ended);
        assert!(r.refusing(t0).is_empty());
        assert_eq!(r.on_outcome(addr(1), OutcomeKind::Sent, t0), Change::None);
        // So does time without another close; a close after that starts anew.
        assert_eq!(r.on_outcome(addr(3), TOO_MANY, t0), Change::Started);
        let later = t0 + REFUSAL_MEMORY;
        assert!(r.refusing(later).is_empty());
        assert_eq!(r.on_outcome(addr(3), TOO_MANY, later), Change::Started);
    }
}
