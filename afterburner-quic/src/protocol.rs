//! What the Solana TPU protocol fixes, in one place: the ALPN, agave's connection
//! close codes, and the largest transaction (see
//! `shared/reference/solana-tpu-protocol.md`).

/// Largest transaction a TPU accepts on one stream (agave's `PACKET_DATA_SIZE`,
/// 1280 - 40 - 8 = 1232 bytes, from the agave crate that defines it).
pub use solana_packet::PACKET_DATA_SIZE;

/// ALPN of the Solana TPU (agave `ALPN_TPU_PROTOCOL_ID`).
pub const ALPN_TPU: &[u8] = b"solana-tpu";

/// Application close codes agave's server uses (`solana-streamer` `quic.rs`).
pub mod close_code {
    /// Connection table entry dropped (evicted, or the server shut down).
    pub const DROPPED: u64 = 1;
    /// Connection disallowed (rate limit, unstaked table full).
    pub const DISALLOWED: u64 = 2;
    /// Too many concurrent streams (3.1).
    pub const EXCEED_MAX_STREAM_COUNT: u64 = 3;
    /// Too many connections from this peer.
    pub const TOO_MANY: u64 = 4;
    /// A stream broke the framing rules (empty or over 1232 bytes).
    pub const INVALID_STREAM: u64 = 5;
}
