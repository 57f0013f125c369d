//! What each leader did with what we sent: sends and their outcomes per leader
//! identity, and for each landed transaction the leader of its slot and whether we
//! had sent to that leader. Owned by the forwarder (sans-IO; time passed in as
//! durations). Bounded: at most [`MAX_LEADERS`] identities are kept (then "other"),
//! and the first [`LABELLED`] get their own metric label (then `other`).

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use afterburner_quic::OutcomeKind;
use serde_json::{Value, json};
use solana_sdk::pubkey::Pubkey;

/// Leader identities kept at most.
pub const MAX_LEADERS: usize = 4096;
/// Leader identities with their own metric label at most.
pub const LABELLED: usize = 32;
/// TPU addresses remembered at most (addresses of leaders we were told about).
const MAX_ADDRESSES: usize = 4 * MAX_LEADERS;

/// One leader's record.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LeaderRecord {
    /// Transactions written to a stream to it.
    pub sent: u64,
    /// Sends to it the engine dropped.
    pub dropped: u64,
    /// Our transactions that landed in its slots.
    pub landed: u64,
    /// Of those, how many we had sent to it.
    pub landed_sent_to: u64,
    /// Sum of acceptance -> seen landed for `landed`, seconds.
    pub landing_seconds: f64,
}

/// The book. See the module documentation.
#[derive(Debug, Default)]
pub struct LeaderBook {
    identity_of: HashMap<SocketAddr, Pubkey>,
    records: HashMap<Pubkey, LeaderRecord>,
    other: LeaderRecord,
    labels: HashMap<Pubkey, String>,
}

impl LeaderBook {
    /// Learns which identity is at which TPU address.
    pub fn learn(&mut self, identities: &[(SocketAddr, Pubkey)]) {
        if self.identity_of.len() + identities.len() > MAX_ADDRESSES {
            self.identity_of.clear();
        }
        self.identity_of.extend(identities.iter().copied());
    }

    /// The identity at `target`, when known.
    pub fn identity_of(&self, target: SocketAddr) -> Option<Pubkey> {
        self.identity_of.get(&target).copied()
    }

    /// The metric label of `leader`: its identity for the first [`LABELLED`], else
    /// `other` (label cardinality).
    pub fn label(&mut self, leader: Option<Pubkey>) -> String {
        let Some(leader) = leader else {
            return "unknown".into();
        };
        if let Some(l) = self.labels.get(&leader) {
            return l.clone();
        }
        if self.labels.len() < LABELLED {
            let l = leader.to_string();
            self.labels.insert(leader, l.clone());
            return l;
        }
        "other".into()
    }

    fn record(&mut self, leader: Pubkey) -> &mut LeaderRecord {
        if self.records.len() >= MAX_LEADERS && !self.records.contains_key(&leader) {
            return &mut self.other;
        }
        self.records.entry(leader).or_default()
    }

    /// The engine's outcome of one send to `target`.
    pub fn on_send(&mut self, target: SocketAddr, outcome: OutcomeKind) {
        let Some(leader) = self.identity_of(target) else {
            return;
        };
        let r = self.record(leader);
        match outcome {
            OutcomeKind::Sent => r.sent += 1,
            OutcomeKind::Dropped(_) => r.dropped += 1,
        }
    }

    /// A transaction landed in a slot led by `leader`, `after` its acceptance;
    /// `sent_to` when one of its sends went to that leader.
    pub fn on_landed(&mut self, leader: Pubkey, sent_to: bool, after: Duration) {
        let r = self.record(leader);
        r.landed += 1;
        r.landed_sent_to += u64::from(sent_to);
        r.landing_seconds += after.as_secs_f64();
    }

    /// One leader's record as JSON (`GET /v1/leaders`).
    pub fn json(&self, leader: &Pubkey) -> Value {
        let r = self.records.get(leader).copied().unwrap_or_default();
        json!({
            "sent": r.sent,
            "dropped": r.dropped,
            "landed": r.landed,
            "landedSentTo": r.landed_sent_to,
            "meanLandingMs": (r.landed > 0).then(|| r.landing_seconds / r.landed as f64 * 1e3),
        })
    }
}

#[cfg(test)]
mod tests {
    use afterburner_quic::DropReason;

    use super::*;

    #[test]
    fn sends_and_landings_are_attributed_by_identity() {
        let mut b = LeaderBook::default();
        let (a, x) = (Pubkey::new_unique(), Pubkey::new_unique());
        let (ta, tx): (SocketAddr, SocketAddr) = (
            "10.0.0.1:8009".parse().unwrap(),
            "10.0.0.2:8009".parse().unwrap(),
        );
        b.learn(&[(ta, a), (tx, x)]);
        b.on_send(ta, OutcomeKind::Sent);
        b.on_send(ta, OutcomeKind::Dropped(DropReason::Backoff));
        b.on_send(tx, OutcomeKind::Sent);
        b.on_send("10.0.0.9:1".parse().unwrap(), OutcomeKind::Sent);
        b.on_landed(a, true, Duration::from_millis(300));
        b.on_landed(a, false, Duration::from_millis(500));
        assert_eq!(
            b.records[&a],
            LeaderRecord {
                sent: 1,
                dropped: 1,
                landed: 2,
                landed_sent_to: 1,
                landing_seconds: 0.8,
            }
        );
        assert_eq!(b.json(&a)["meanLandingMs"], 400.0);
        assert_eq!(b.records[&x].sent, 1);
        assert_eq!(b.records.len(), 2, "an unknown address is not a leader");
    }

    #[test]
    fn labels_and_records_are_bounded() {
        let mut b = LeaderBook::default();
        let labels: Vec<String> = (0..LABELLED + 5)
            .map(|_| b.label(Some(Pubkey::new_unique())))
            .collect();
        assert!(labels[..LABELLED].iter().all(|l| l != "other"));
        assert!(labels[LABELLED..].iter().all(|l| l == "other"));
        assert_eq!(b.label(None), "unknown");
        for _ in 0..MAX_LEADERS + 10 {
            b.on_landed(Pubkey::new_unique(), false, Duration::ZERO);
        }
        assert_eq!(b.records.len(), MAX_LEADERS);
        assert_eq!(b.other.landed, 10);
    }
}
