//! [`LeaderPolicy`]: which leaders we send to (a deny list, an allow list) and where
//! (TPU QUIC address overrides by identity, for private peering). The tracker holds
//! one and the gateway swaps it at runtime (reloaded with its identity), so it is a
//! plain value read on every fanout answer.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
};

use solana_sdk::pubkey::Pubkey;

/// Which leaders get our transactions, and at which address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaderPolicy {
    /// Never sent to; their slots are passed over in the fanout.
    pub deny: HashSet<Pubkey>,
    /// When not empty, only these are sent to (the deny list still applies).
    pub allow: HashSet<Pubkey>,
    /// TPU QUIC addresses that win over gossip's.
    pub overrides: HashMap<Pubkey, SocketAddr>,
}

/// Why the policy passes over a leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Excluded {
    /// On the deny list.
    Denied,
    /// An allow list is set and the leader is not on it.
    NotAllowed,
}

impl Excluded {
    /// Metric label values, in [`Self::index`] order.
    pub const NAMES: [&'static str; 2] = ["denied", "not_allowed"];

    /// The metric label.
    pub fn name(self) -> &'static str {
        Self::NAMES[self.index()]
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl LeaderPolicy {
    /// Whether (and why) `leader` is passed over.
    pub fn excludes(&self, leader: &Pubkey) -> Option<Excluded> {
        if self.deny.contains(leader) {
            Some(Excluded::Denied)
        } else if !self.allow.is_empty() && !self.allow.contains(leader) {
            Some(Excluded::NotAllowed)
        } else {
            None
        }
    }

    /// Whether the policy sends to every leader at its gossip address.
    pub fn is_open(&self) -> bool {
        self.deny.is_empty() && self.allow.is_empty() && self.overrides.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deny_wins_over_allow() {
        let (a, b, c) = (
            Pubkey::new_unique(),
            Pubkey::new_unique(),
            Pubkey::new_unique(),
        );
        let open = LeaderPolicy::default();
        assert!(open.is_open());
        assert_eq!(open.excludes(&a), None);
        let p = LeaderPolicy {
            deny: HashSet::from([a]),
            allow: HashSet::from([a, b]),
            overrides: HashMap::new(),
        };
        assert_eq!(p.excludes(&a), Some(Excluded::Denied));
        assert_eq!(p.excludes(&b), None);
        assert_eq!(p.excludes(&c), Some(Excluded::NotAllowed));
        assert_eq!(Excluded::NotAllowed.name(), "not_allowed");
    }
}
