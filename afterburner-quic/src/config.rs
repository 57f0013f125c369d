//! [`EngineConfig`]: the QUIC engine's knobs, with defaults taken from what agave's
//! TPU server enforces (see `shared/reference/solana-tpu-protocol.md`).

use std::time::Duration;

/// Engine configuration.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Open connections kept at most; the least recently used one is closed to make room.
    pub max_connections: usize,
    /// Transactions a connection holds while waiting for its handshake or stream credit;
    /// more are dropped with `ConnectionQueueFull`.
    pub max_queued_per_connection: usize,
    /// Bound on the submission channel into the engine thread.
    pub ingress_queue: usize,
    /// A handshake not finished by then is abandoned (agave's server gives up after 2 s).
    pub handshake_timeout: Duration,
    /// QUIC max idle timeout we advertise (the effective one is the smaller of both sides').
    /// Keep-alives keep a live connection open; a dead peer is detected within this time.
    pub idle_timeout: Duration,
    /// Send a PING when nothing ack-eliciting was sent for this long.
    pub keep_alive_interval: Duration,
    /// First reconnect delay after a failed connection; doubles per consecutive failure.
    pub backoff_initial: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// Delay after the server closed us with `disallowed` (rate limited).
    pub backoff_disallowed: Duration,
    /// Delay after `too_many` (we already hold the peer's connection budget).
    pub backoff_too_many: Duration,
    /// Largest transaction sent on a stream; larger ones are dropped as `too_large`
    /// before any stream opens (agave closes the connection for an oversized stream).
    /// 1232 (`PACKET_DATA_SIZE`) until SIMD-0296's larger transactions reach the TPU.
    pub max_transaction_size: usize,
    /// Largest UDP payload we send (1472 fits a 1500-byte MTU; agave advertises 1472).
    pub max_udp_payload: usize,
    /// Initial congestion window in packets (quiche's default is 10). On the paths
    /// between a gateway and its leaders a larger first flight lets a burst leave
    /// within the first round trip.
    pub initial_congestion_window_packets: usize,
    /// HyStart++ (leaves slow start early when the RTT rises; a busy TPU server's
    /// queueing delay looks like that).
    pub hystart: bool,
    /// Busy-poll the packet I/O instead of sleeping when idle.
    pub busy_poll: bool,
    /// With `busy_poll`, sleep after this long without work so an idle engine does not burn a core.
    pub busy_poll_idle: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            // tpu-client-next keeps an LRU of 64 connections.
            max_connections: 64,
            max_queued_per_connection: 1024,
            ingress_queue: 16 * 1024,
            handshake_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(10),
            keep_alive_interval: Duration::from_secs(1),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            backoff_disallowed: Duration::from_secs(5),
            backoff_too_many: Duration::from_secs(2),
            max_transaction_size: crate::protocol::PACKET_DATA_SIZE,
            max_udp_payload: 1472,
            initial_congestion_window_packets: 10,
            hystart: true,
            busy_poll: false,
            busy_poll_idle: Duration::from_millis(5),
        }
    }
}
