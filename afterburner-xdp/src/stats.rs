//! [`EngineStats`]: every counter the engine keeps, in one struct of atomics.
//!
//! Only the engine thread writes (relaxed stores, no contention); any thread reads a
//! [`EngineStatsSnapshot`]. The gateway exports these to Prometheus.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::outcome::DropReason;

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// Engine counters (monotonic unless documented as a gauge).
        #[derive(Debug, Default)]
        pub struct EngineStats {
            $($(#[$doc])* pub $name: AtomicU64,)*
            /// Dropped transactions by [`DropReason::index`].
            pub dropped: [AtomicU64; DropReason::LABELS.len()],
        }

        /// A point-in-time copy of [`EngineStats`].
        #[derive(Clone, Debug, Default, PartialEq, Eq)]
        pub struct EngineStatsSnapshot {
            $($(#[$doc])* pub $name: u64,)*
            /// Dropped transactions by [`DropReason::index`] (labels in [`DropReason::LABELS`]).
            pub dropped: [u64; DropReason::LABELS.len()],
        }

        impl EngineStats {
            /// Reads every counter.
            pub fn snapshot(&self) -> EngineStatsSnapshot {
                EngineStatsSnapshot {
                    $($name: self.$name.load(Relaxed),)*
                    dropped: std::array::from_fn(|i| self.dropped[i].load(Relaxed)),
                }
            }
        }
    };
}

counters! {
    /// Transactions accepted into the engine (each ends as sent or dropped).
    submitted,
    /// Transactions written to a stream with FIN.
    sent,
    /// Times a transaction had to wait for stream credit (MAX_STREAMS) before its stream.
    stream_credit_waits,
    /// Connection attempts started (including pre-warm).
    connections_opened,
    /// Handshakes completed.
    handshakes_completed,
    /// Handshakes that timed out.
    handshake_timeouts,
    /// Handshakes that failed (TLS or transport error).
    handshake_failures,
    /// Connections closed by the peer with an application close code.
    closed_by_peer,
    /// Connections lost to idle timeout or a transport error after the handshake.
    connections_lost,
    /// Connections evicted by the LRU bound.
    evictions,
    /// Connection attempts refused locally because the target was in backoff.
    backoff_refusals,
    /// Open connections (gauge).
    active_connections,
    /// Transactions queued inside connections (gauge).
    queued,
    /// Keep-alive PINGs sent.
    keepalives,
    /// UDP datagrams sent.
    packets_sent,
    /// UDP datagrams received.
    packets_received,
    /// Bytes sent (UDP payload).
    bytes_sent,
    /// Bytes received (UDP payload).
    bytes_received,
    /// Datagrams quiche refused on receive (unknown connection, corrupt, …).
    packets_rejected,
    /// Send system calls (or AF_XDP TX kicks).
    send_calls,
    /// Receive system calls (or AF_XDP RX polls that found data).
    recv_calls,
    /// Send errors other than "would block".
    send_errors,
    /// Times the socket was full and sending waited.
    send_would_block,
}

impl EngineStats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub(crate) fn set(counter: &AtomicU64, v: u64) {
        counter.store(v, Relaxed);
    }

    pub(crate) fn record_drop(&self, reason: DropReason) {
        self.dropped[reason.index()].fetch_add(1, Relaxed);
    }
}

impl EngineStatsSnapshot {
    /// Total dropped, all reasons.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().sum()
    }

    /// Dropped for one reason.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason.index()]
    }
}
