//! Afterburner's view of the cluster: the current slot, the upcoming leaders and
//! their TPU QUIC addresses, kept fresh from Solana RPC by background tasks and read
//! without waiting by the gateway on every transaction.
//!
//! - [`slot`]: the slot estimate (median of projected observations).
//! - [`window`]: leader windows from `getSlotLeaders`, fetched across epoch boundaries.
//! - [`addresses`]: TPU QUIC addresses from `getClusterNodes`, with overrides.
//! - [`policy`]: which leaders are sent to (deny and allow lists) and where.
//! - [`fanout`]: the answer: distinct leaders to send to and to pre-warm.
//! - [`method`], [`source`]: the RPC calls, named; behind a trait; `solana-client`
//!   endpoints with failover.
//! - [`tracker`]: the tasks (websocket, polling, refresh) and the lock-free read side.
//! - [`stats`]: the tracker's counters, declared with their metric names.
#![forbid(unsafe_code)]

pub mod addresses;
pub mod fanout;
pub mod method;
pub mod policy;
pub mod slot;
pub mod source;
pub mod stats;
pub mod tracker;
pub mod window;

#[cfg(test)]
mod tests;

pub use fanout::{Fanout, Leader, Leaders, Skipped};
pub use method::Method;
pub use policy::{Excluded, LeaderPolicy};
pub use source::{ClientRpc, Failover, RpcError, RpcSource};
pub use stats::{SlotSource, TrackerStats, TrackerStatsSnapshot};
pub use tracker::{Failing, Health, LeaderTracker, Stale, TrackerConfig, TrackerHandle, Unusable};
