//! The answer the gateway asks for on every transaction: [`Leaders`], computed by
//! [`upcoming_leaders`] from the leader window, the addresses and the current slot.

use std::net::SocketAddr;

use solana_sdk::{clock::Slot, pubkey::Pubkey};

use crate::{
    addresses::TpuAddresses,
    policy::{Excluded, LeaderPolicy},
    window::LeaderWindow,
};

/// Slots looked at per answer at most (leaders hold 4 consecutive slots each).
const MAX_SCAN_SLOTS: u64 = 256;

/// How many distinct leaders to send to and to keep connections warm for
/// (tpu-client-next's default is send 2, connect 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fanout {
    /// Distinct upcoming leaders (the current one first) to send each transaction to.
    pub send: usize,
    /// Distinct upcoming leaders to hold connections to (includes the `send` ones).
    pub connect: usize,
    /// When the current leader has at most this many slots left (counting the current
    /// one), one more leader is added to the send set: a transaction sent to a leader
    /// in its last slot may arrive too late for it.
    pub extra_when_slots_left: u64,
}

impl Default for Fanout {
    fn default() -> Self {
        Self {
            send: 2,
            connect: 3,
            extra_when_slots_left: 1,
        }
    }
}

/// One upcoming leader: an identity and its consecutive slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leader {
    /// The leader's identity.
    pub identity: Pubkey,
    /// Its TPU QUIC address, `None` when unknown (reported, never silently skipped).
    pub tpu_quic: Option<SocketAddr>,
    /// First slot of its run (at or after the current slot).
    pub first_slot: Slot,
    /// Last slot of its run.
    pub last_slot: Slot,
}

/// The leaders to send to and to pre-warm, for one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Leaders {
    /// The estimated current slot (`None`: not known yet).
    pub slot: Option<Slot>,
    /// Leaders to send to, soonest first.
    pub send: Vec<Leader>,
    /// Leaders to keep connections open to (a superset of `send`), soonest first.
    pub connect: Vec<Leader>,
    /// The schedule or the slot is older than the configured bound.
    pub stale: bool,
    /// Leaders the policy passed over on the way (soonest first).
    pub skipped: Vec<Skipped>,
}

/// A leader the [`LeaderPolicy`] passed over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// The leader's identity.
    pub identity: Pubkey,
    /// Why.
    pub reason: Excluded,
    /// First slot of its run.
    pub first_slot: Slot,
}

/// What [`upcoming_leaders`] finds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Upcoming {
    /// Leaders to send to.
    pub send: Vec<Leader>,
    /// Leaders to keep connected (a superset of `send`).
    pub connect: Vec<Leader>,
    /// Leaders the policy passed over (each once).
    pub skipped: Vec<Skipped>,
}

impl Leaders {
    /// The send set's addresses (leaders without one are left out here; see
    /// [`Self::missing_addresses`]).
    pub fn send_addresses(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.send.iter().filter_map(|l| l.tpu_quic)
    }

    /// Leaders in the connect set whose address is unknown.
    pub fn missing_addresses(&self) -> impl Iterator<Item = &Leader> + '_ {
        self.connect.iter().filter(|l| l.tpu_quic.is_none())
    }
}

/// Distinct leaders from `slot` on, consecutive slots of one leader merged; leaders
/// the `policy` excludes are passed over (their slots count as gaps) and reported.
pub fn upcoming_leaders(
    window: &LeaderWindow,
    addresses: &TpuAddresses,
    policy: &LeaderPolicy,
    slot: Slot,
    fanout: Fanout,
) -> Upcoming {
    let want_connect = fanout.connect.max(fanout.send + 1);
    let mut runs: Vec<Leader> = Vec::with_capacity(want_connect);
    let mut skipped: Vec<Skipped> = Vec::new();
    let mut s = slot;
    // Bounded: the hot path never walks a whole 5,000-slot window.
    let scan_end = slot.saturating_add(MAX_SCAN_SLOTS);
    while runs.len() < want_connect && s < scan_end {
        let Some(identity) = window.leader_at(s) else {
            break;
        };
        if let Some(reason) = policy.excludes(&identity) {
            if !skipped.iter().any(|k| k.identity == identity) {
                skipped.push(Skipped {
                    identity,
                    reason,
                    first_slot: s,
                });
            }
            s += 1;
            continue;
        }
        let continues = runs
            .last()
            .is_some_and(|last| last.identity == identity && last.last_slot + 1 == s);
        if continues {
            if let Some(last) = runs.last_mut() {
                last.last_slot = s;
            }
        } else if !runs.iter().any(|l| l.identity == identity) {
            // Distinct leaders only: a later run of one already listed is skipped.
            runs.push(Leader {
                identity,
                tpu_quic: policy
                    .overrides
                    .get(&identity)
                    .copied()
                    .or_else(|| addresses.get(&identity)),
                first_slot: s,
                last_slot: s,
            });
        }
        s += 1;
    }
    // The last run found may continue past where we stopped looking: extend it.
    if let Some(last) = runs.last_mut() {
        while last.last_slot < scan_end
            && window.leader_at(last.last_slot + 1) == Some(last.identity)
        {
            last.last_slot += 1;
        }
    }
    let mut send_n = fanout.send.min(runs.len());
    if let Some(current) = runs.first()
        && current.first_slot == slot
        && current.last_slot - slot < fanout.extra_when_slots_left
    {
        send_n = (send_n + 1).min(runs.len());
    }
    let connect_n = fanout.connect.max(send_n).min(runs.len());
    Upcoming {
        send: runs[..send_n].to_vec(),
        connect: runs[..connect_n].to_vec(),
        skipped,
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, time::Instant};

    use super::*;

    /// Four leaders A B C D rotating every 4 slots from slot 100 (A: 100-103, B: 104-107, …).
    fn setup() -> (LeaderWindow, TpuAddresses, [Pubkey; 4]) {
        let ids = [
            Pubkey::new_unique(),
            Pubkey::new_unique(),
            Pubkey::new_unique(),
            Pubkey::new_unique(),
        ];
        let leaders = (0..40).map(|i| ids[(i / 4) % 4]).collect();
        let window = LeaderWindow {
            start: 100,
            leaders,
            fetched_at: Instant::now(),
        };
        let overrides: HashMap<Pubkey, SocketAddr> = ids[..3]
            .iter()
            .enumerate()
            .map(|(i, id)| (*id, SocketAddr::from(([10, 0, 0, i as u8 + 1], 8009))))
            .collect();
        (window, TpuAddresses::from_gossip(overrides), ids)
    }

    #[test]
    fn consecutive_slots_merge_into_one_leader() {
        let (w, a, ids) = setup();
        let Upcoming { send, connect, .. } =
            upcoming_leaders(&w, &a, &LeaderPolicy::default(), 100, Fanout::default());
        assert_eq!(
            send.iter().map(|l| l.identity).collect::<Vec<_>>(),
            vec![ids[0], ids[1]]
        );
        assert_eq!(send[0].first_slot, 100);
        assert_eq!(send[0].last_slot, 103);
        assert_eq!(send[1].first_slot, 104);
        assert_eq!(send[1].last_slot, 107);
        assert_eq!(connect.len(), 3);
        assert_eq!(connect[2].identity, ids[2]);
    }

    #[test]
    fn rotation_moves_the_window() {
        let (w, a, ids) = setup();
        let Upcoming { send, .. } =
            upcoming_leaders(&w, &a, &LeaderPolicy::default(), 105, Fanout::default());
        assert_eq!(send[0].identity, ids[1]);
        assert_eq!(send[0].first_slot, 105);
        assert_eq!(send[1].identity, ids[2]);
    }

    #[test]
    fn extra_leader_on_the_current_leaders_last_slot() {
        let (w, a, ids) = setup();
        let Upcoming { send, .. } =
            upcoming_leaders(&w, &a, &LeaderPolicy::default(), 103, Fanout::default());
        assert_eq!(
            send.iter().map(|l| l.identity).collect::<Vec<_>>(),
            vec![ids[0], ids[1], ids[2]]
        );
        let Upcoming { send, .. } =
            upcoming_leaders(&w, &a, &LeaderPolicy::default(), 102, Fanout::default());
        assert_eq!(send.len(), 2);
    }

    #[test]
    fn missing_address_is_reported_not_skipped() {
        let (w, a, ids) = setup();
        let fanout = Fanout {
            send: 4,
            connect: 4,
            extra_when_slots_left: 0,
        };
        let Upcoming { send, connect, .. } =
            upcoming_leaders(&w, &a, &LeaderPolicy::default(), 100, fanout);
        assert_eq!(send.len(), 4);
        assert_eq!(send[3].identity, ids[3]);
        assert_eq!(send[3].tpu_quic, None);
        let leaders = Leaders {
            slot: Some(100),
            send,
            connect,
            stale: false,
            skipped: Vec::new(),
        };
        assert_eq!(leaders.send_addresses().count(), 3);
        assert_eq!(
            leaders
                .missing_addresses()
                .map(|l| l.identity)
                .collect::<Vec<_>>(),
            vec![ids[3]]
        );
    }

    #[test]
    fn a_leader_twice_in_the_lookahead_is_counted_once() {
        let ids = [Pubkey::new_unique(), Pubkey::new_unique()];
        // A A B B A A B B …
        let w = LeaderWindow {
            start: 0,
            leaders: (0..16).map(|i| ids[(i / 2) % 2]).collect(),
            fetched_at: Instant::now(),
        };
        let fanout = Fanout {
            send: 3,
            connect: 3,
            extra_when_slots_left: 0,
        };
        let Upcoming { send, .. } = upcoming_leaders(
            &w,
            &TpuAddresses::default(),
            &LeaderPolicy::default(),
            0,
            fanout,
        );
        assert_eq!(
            send.iter().map(|l| l.identity).collect::<Vec<_>>(),
            vec![ids[0], ids[1]]
        );
    }

    /// A denied leader's slots are passed over (the next leaders move up), an allow
    /// list keeps only its leaders, and an override replaces gossip's address.
    #[test]
    fn the_policy_passes_over_leaders_and_overrides_addresses() {
        let (w, a, ids) = setup();
        let private: SocketAddr = "192.168.9.9:9009".parse().unwrap();
        let policy = LeaderPolicy {
            deny: [ids[1]].into(),
            allow: Default::default(),
            overrides: [(ids[2], private)].into(),
        };
        let up = upcoming_leaders(&w, &a, &policy, 100, Fanout::default());
        assert_eq!(
            up.send.iter().map(|l| l.identity).collect::<Vec<_>>(),
            vec![ids[0], ids[2]]
        );
        assert_eq!(up.send[1].tpu_quic, Some(private));
        assert!(up.connect.iter().all(|l| l.identity != ids[1]));
        assert_eq!(
            up.skipped,
            vec![Skipped {
                identity: ids[1],
                reason: Excluded::Denied,
                first_slot: 104
            }]
        );
        let allow = LeaderPolicy {
            allow: [ids[3]].into(),
            ..LeaderPolicy::default()
        };
        let up = upcoming_leaders(&w, &a, &allow, 100, Fanout::default());
        assert_eq!(
            up.send.iter().map(|l| l.identity).collect::<Vec<_>>(),
            vec![ids[3]],
            "only the allowed leader, wherever it is in the window"
        );
        assert_eq!(up.send[0].first_slot, 112);
        assert_eq!(up.skipped.len(), 3);
        assert!(up.skipped.iter().all(|k| k.reason == Excluded::NotAllowed));
    }

    #[test]
    fn outside_the_window_gives_nothing() {
        let (w, a, _) = setup();
        let Upcoming { send, connect, .. } =
            upcoming_leaders(&w, &a, &LeaderPolicy::default(), 1_000, Fanout::default());
        assert!(send.is_empty() && connect.is_empty());
    }
}
