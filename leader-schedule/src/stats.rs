//! [`TrackerStats`]: the tracker's counters, for the gateway to export.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::source::Method;

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

/// Counters and gauges (relaxed atomics; written by the tracker's tasks).
#[derive(Debug, Default)]
pub struct TrackerStats {
    /// Failed RPC calls by [`Method`] (each endpoint attempt counts).
    pub rpc_errors: [AtomicU64; Method::ALL.len()],
    /// Slot observations accepted.
    pub slot_observations: AtomicU64,
    /// Slot observations rejected as implausibly far ahead.
    pub slot_observations_rejected: AtomicU64,
    /// Websocket (re)connections that subscribed successfully.
    pub websocket_subscriptions: AtomicU64,
    /// Leader windows fetched.
    pub schedule_fetches: AtomicU64,
    /// Cluster node lists fetched.
    pub cluster_node_fetches: AtomicU64,
    /// Gauge: distinct leaders in the current window with no known TPU QUIC address.
    pub leaders_without_address: AtomicU64,
    /// Gauge: [`SlotSource`] as a number.
    pub slot_source: AtomicU64,
}

impl TrackerStats {
    pub(crate) fn record_rpc_error(&self, method: Method) {
        self.rpc_errors[method.index()].fetch_add(1, Relaxed);
    }

    /// Failed calls of one method.
    pub fn rpc_errors(&self, method: Method) -> u64 {
        self.rpc_errors[method.index()].load(Relaxed)
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
