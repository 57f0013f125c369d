//! [`EngineStats`]: every counter the engine keeps, in one struct of atomics,
//! declared once with its metric name ([`afterburner_stats::declare_stats!`]).
//!
//! Only the engine thread writes (relaxed stores, no contention); any thread reads a
//! [`EngineStatsSnapshot`]. The gateway exports [`EngineStatsSnapshot::families`].

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::outcome::DropReason;

afterburner_stats::declare_stats! {
    /// Engine counters (monotonic unless documented as a gauge).
    pub struct EngineStats, snapshot EngineStatsSnapshot {
        /// Transactions handed to the engine (each ends as sent or dropped).
        submitted: Counter "afterburner_engine_submitted_total",
        /// Transactions written to a stream with FIN.
        sent: Counter "afterburner_engine_sent_total",
        /// Times a transaction had to wait for stream credit (MAX_STREAMS) before its stream.
        stream_credit_waits: Counter "afterburner_engine_stream_credit_waits_total",
        /// Connection attempts started (including pre-warm).
        connections_opened: Counter "afterburner_engine_connections_opened_total",
        /// Handshakes completed.
        handshakes_completed: Counter "afterburner_engine_handshakes_completed_total",
        /// Handshakes that timed out.
        handshake_timeouts: Counter "afterburner_engine_handshake_timeouts_total",
        /// Handshakes that failed (TLS or transport error).
        handshake_failures: Counter "afterburner_engine_handshake_failures_total",
        /// Connections closed by the peer with an application close code.
        closed_by_peer: Counter "afterburner_engine_closed_by_peer_total",
        /// Connections lost to idle timeout or a transport error after the handshake.
        connections_lost: Counter "afterburner_engine_connections_lost_total",
        /// Connections evicted by the LRU bound.
        evictions: Counter "afterburner_engine_evictions_total",
        /// Connection attempts refused locally because the target was in backoff.
        backoff_refusals: Counter "afterburner_engine_backoff_refusals_total",
        /// Open connections.
        active_connections: Gauge "afterburner_engine_active_connections",
        /// Transactions queued inside connections.
        queued: Gauge "afterburner_engine_queued",
        /// Keep-alive PINGs sent.
        keepalives: Counter "afterburner_engine_keepalives_total",
        /// UDP datagrams sent.
        packets_sent: Counter "afterburner_engine_packets_sent_total",
        /// UDP datagrams received.
        packets_received: Counter "afterburner_engine_packets_received_total",
        /// QUIC packets quiche declared lost (their frames are sent again): the
        /// path's loss, and what recovery had to repeat.
        packets_lost: Counter "afterburner_engine_packets_lost_total",
        /// Of those, packets acknowledged after all (declared lost too early:
        /// reordering beyond the loss threshold).
        packets_spurious_lost: Counter "afterburner_engine_packets_spurious_lost_total",
        /// Bytes sent (UDP payload).
        bytes_sent: Counter "afterburner_engine_sent_bytes_total",
        /// Bytes received (UDP payload).
        bytes_received: Counter "afterburner_engine_received_bytes_total",
        /// Datagrams quiche refused on receive (unknown connection, corrupt, …).
        packets_rejected: Counter "afterburner_engine_packets_rejected_total",
        /// Send system calls (or AF_XDP TX kicks).
        send_calls: Counter "afterburner_engine_send_calls_total",
        /// Receive system calls (or AF_XDP RX polls that found data).
        recv_calls: Counter "afterburner_engine_recv_calls_total",
        /// Send errors other than "would block".
        send_errors: Counter "afterburner_engine_send_errors_total",
        /// Times the socket was full and sending waited.
        send_would_block: Counter "afterburner_engine_send_would_block_total",
    }
    labelled {
        /// Transactions the engine dropped, by reason.
        dropped["reason" in DropReason::LABELS]: Counter "afterburner_engine_dropped_total",
    }
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
