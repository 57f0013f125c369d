//! Where transactions go: the leader tracker's fanout (RPC mode), or a fixed list of
//! TPU addresses (static mode: a private cluster, a test, or sending only to one's
//! own validator).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use leader_schedule::{Fanout, LeaderPolicy, TrackerHandle};
use solana_sdk::pubkey::Pubkey;

/// The addresses to send to now and to keep connections warm for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Targets {
    /// Send to these.
    pub send: Vec<SocketAddr>,
    /// Keep connections open to these (upcoming leaders).
    pub connect: Vec<SocketAddr>,
    /// The current slot, when known.
    pub slot: Option<u64>,
    /// The identities of the leaders above, by TPU address (empty: static leaders).
    pub identities: Vec<(SocketAddr, Pubkey)>,
}

/// A source of [`Targets`].
pub trait LeaderSource: Send + Sync + 'static {
    /// The current targets (cheap; called per transaction).
    fn targets(&self) -> Targets;
    /// `Ok` when the answer can be used to send (the schedule covers the current
    /// slot and the slots ahead the fanout needs), else why not.
    fn ready(&self) -> Result<(), String>;
    /// Why the answer is stale, if it is: the last refreshes failed, or slots went
    /// silent. Shown and exported, not a refusal.
    fn stale(&self) -> Option<String> {
        None
    }
    /// The current slot, when known.
    fn current_slot(&self) -> Option<u64>;
    /// How old the leader schedule is (`None`: none yet; static leaders: zero).
    fn schedule_age(&self) -> Option<Duration>;
    /// The leader of `slot`, when known.
    fn leader_at(&self, slot: u64) -> Option<Pubkey>;
    /// The leader policy in force (`None`: static leaders, which have none).
    fn policy(&self) -> Option<Arc<LeaderPolicy>> {
        None
    }
    /// Replaces the leader policy.
    ///
    /// # Errors
    /// Static leaders: no identities to apply it to.
    fn set_policy(&self, policy: LeaderPolicy) -> Result<(), String> {
        if policy.is_open() {
            return Ok(());
        }
        Err("static leaders have no identities: a leader policy needs cluster.rpc_urls".into())
    }
}

/// A fixed list of TPU QUIC addresses.
#[derive(Clone, Debug)]
pub struct StaticLeaders(pub Vec<SocketAddr>);

impl LeaderSource for StaticLeaders {
    fn targets(&self) -> Targets {
        Targets {
            send: self.0.clone(),
            connect: self.0.clone(),
            slot: None,
            identities: Vec::new(),
        }
    }
    fn ready(&self) -> Result<(), String> {
        if self.0.is_empty() {
            Err("no static leaders configured".into())
        } else {
            Ok(())
        }
    }
    fn current_slot(&self) -> Option<u64> {
        None
    }
    fn schedule_age(&self) -> Option<Duration> {
        Some(Duration::ZERO)
    }
    fn leader_at(&self, _: u64) -> Option<Pubkey> {
        None
    }
}

/// The leader tracker with a fanout.
#[derive(Debug)]
pub struct TrackedLeaders {
    /// The tracker.
    pub handle: TrackerHandle,
    /// How many leaders to send to and to connect to.
    pub fanout: Fanout,
}

impl TrackedLeaders {
    /// Slots ahead of the current one the schedule must cover: each leader of the
    /// send set holds 4 consecutive slots.
    fn needed_slots(&self) -> u64 {
        4 * self.fanout.send.max(1) as u64
    }
}

impl LeaderSource for TrackedLeaders {
    fn targets(&self) -> Targets {
        let l = self.handle.leaders(self.fanout);
        Targets {
            send: l.send_addresses().collect(),
            connect: l.connect.iter().filter_map(|x| x.tpu_quic).collect(),
            slot: l.slot,
            identities: l
                .send
                .iter()
                .chain(&l.connect)
                .filter_map(|x| Some((x.tpu_quic?, x.identity)))
                .collect(),
        }
    }
    fn ready(&self) -> Result<(), String> {
        match self.handle.health(self.needed_slots()).unusable {
            None => Ok(()),
            Some(why) => Err(why.to_string()),
        }
    }
    fn stale(&self) -> Option<String> {
        self.handle
            .health(self.needed_slots())
            .stale
            .map(|why| why.to_string())
    }
    fn current_slot(&self) -> Option<u64> {
        self.handle.current_slot()
    }
    fn schedule_age(&self) -> Option<Duration> {
        self.handle.schedule_age()
    }
    fn leader_at(&self, slot: u64) -> Option<Pubkey> {
        self.handle.leader_at(slot)
    }
    fn policy(&self) -> Option<Arc<LeaderPolicy>> {
        Some(self.handle.policy())
    }
    fn set_policy(&self, policy: LeaderPolicy) -> Result<(), String> {
        self.handle.set_policy(policy);
        Ok(())
    }
}
