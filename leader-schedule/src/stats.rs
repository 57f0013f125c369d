//! [`TrackerStats`]: the tracker's counters, each declared once with its metric name
//! ([`afterburner_stats::declare_stats!`]); the gateway exports
//! [`TrackerStatsSnapshot::families`].

use std::sync::atomic::Ordering::Relaxed;

use crate::{method::Method, policy::Excluded};

/// Where the slot estimate comes from right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotSource {
    /// Nothing observed yet.
    None = 0,
    /// Websocket slot updates.
    Websocket = 1,
    /// `getSlot` polling (websocket down).
    Polling = 2,
}

afterburner_stats::declare_stats! {
    /// Counters and gauges (relaxed atomics; written by the tracker's tasks).
    pub struct TrackerStats, snapshot TrackerStatsSnapshot {
        /// Slot observations accepted.
        slot_observations: Counter "afterburner_leader_slot_observations_total",
        /// Slot observations rejected as implausibly far ahead.
        slot_observations_rejected: Counter "afterburner_leader_slot_observations_rejected_total",
        /// Websocket (re)connections that subscribed successfully.
        websocket_subscriptions: Counter "afterburner_leader_websocket_subscriptions_total",
        /// Leader windows fetched.
        schedule_fetches: Counter "afterburner_leader_schedule_fetches_total",
        /// Cluster node lists fetched.
        cluster_node_fetches: Counter "afterburner_leader_cluster_node_fetches_total",
        /// Distinct leaders in the current window with no known TPU QUIC address.
        leaders_without_address: Gauge "afterburner_leader_without_address",
        /// Where the slot estimate comes from: 0 nothing yet, 1 websocket, 2 getSlot polling.
        slot_source: Gauge "afterburner_leader_slot_source",
    }
    labelled {
        /// Failed RPC calls by method (each endpoint attempt counts).
        rpc_errors["method" in Method::NAMES]: Counter "afterburner_leader_rpc_errors_total",
        /// Leaders the leader policy passed over in fanout answers, by reason (one per
        /// leader per answer: an answer is asked for per transaction, so this grows
        /// with traffic while a denied leader is among the upcoming ones).
        policy_skips["reason" in Excluded::NAMES]: Counter "afterburner_leader_policy_skips_total",
    }
}

impl TrackerStats {
    pub(crate) fn record_rpc_error(&self, method: Method) {
        self.rpc_errors[method.index()].fetch_add(1, Relaxed);
    }

    /// Failed calls of one method.
    pub fn rpc_errors(&self, method: Method) -> u64 {
        self.rpc_errors[method.index()].load(Relaxed)
    }

    /// Leaders passed over for `reason`.
    pub fn policy_skips(&self, reason: Excluded) -> u64 {
        self.policy_skips[reason.index()].load(Relaxed)
    }

    /// The current slot source.
    pub fn slot_source(&self) -> SlotSource {
        match self.slot_source.load(Relaxed) {
            1 => SlotSource::Websocket,
            2 => SlotSource::Polling,
            _ => SlotSource::None,
        }
    }

    pub(crate) fn set_slot_source(&self, s: SlotSource) {
        self.slot_source.store(s as u64, Relaxed);
    }
}
