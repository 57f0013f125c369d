//! What happened to each transaction handed to the engine: [`Outcome`].
//!
//! Every (transaction, target) submission ends in exactly one outcome: written to a
//! stream with FIN, or dropped with a [`DropReason`]. The gateway builds its
//! `accepted = sent + dropped{reason}` accounting on this.

use std::net::SocketAddr;

/// Why a transaction was not written to a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// Empty payload: agave closes the connection with `invalid_stream` for it.
    Empty,
    /// Larger than `PACKET_DATA_SIZE` (1232 bytes): agave closes the connection for it.
    TooLarge,
    /// The engine's ingress queue was full (returned to the submitter, never queued).
    EngineQueueFull,
    /// The target connection's queue (waiting for stream credit or handshake) was full.
    ConnectionQueueFull,
    /// The target is in backoff after failures or a close code that asks for it.
    Backoff,
    /// The handshake did not complete within the handshake timeout.
    HandshakeTimeout,
    /// The TLS/QUIC handshake failed.
    HandshakeFailed,
    /// The server closed the connection with this application close code.
    ClosedByPeer(u64),
    /// The connection closed for a transport reason (idle timeout, transport error).
    ConnectionLost,
    /// The connection was evicted to make room for another (LRU bound).
    Evicted,
    /// The engine shut down before the transaction could be written.
    Shutdown,
    /// A local QUIC error while writing the stream (a bug if it ever shows).
    LocalError,
    /// The engine thread ended on its own (an I/O error, a panic) before the
    /// transaction was written; reported by its owner, which learns of the end.
    EngineFailed,
}

impl DropReason {
    /// Stable label for metrics (small fixed set; close codes above 5 fold into one):
    /// [`Self::LABELS`] at [`Self::index`], the one list of labels.
    pub fn label(self) -> &'static str {
        Self::LABELS[self.index()]
    }

    /// Index into [`crate::stats::EngineStats`]' per-reason counters.
    pub(crate) fn index(self) -> usize {
        match self {
            Self::Empty => 0,
            Self::TooLarge => 1,
            Self::EngineQueueFull => 2,
            Self::ConnectionQueueFull => 3,
            Self::Backoff => 4,
            Self::HandshakeTimeout => 5,
            Self::HandshakeFailed => 6,
            Self::ClosedByPeer(code) => 7 + code.min(6) as usize,
            Self::ConnectionLost => 14,
            Self::Evicted => 15,
            Self::Shutdown => 16,
            Self::LocalError => 17,
            Self::EngineFailed => 18,
        }
    }

    /// Every label, in [`Self::index`] order.
    pub const LABELS: [&'static str; 19] = [
        "empty",
        "too_large",
        "engine_queue_full",
        "connection_queue_full",
        "backoff",
        "handshake_timeout",
        "handshake_failed",
        "closed_by_peer",
        "closed_dropped",
        "closed_disallowed",
        "closed_exceed_max_stream_count",
        "closed_too_many",
        "closed_invalid_stream",
        "closed_other",
        "connection_lost",
        "evicted",
        "shutdown",
        "local_error",
        "engine_failed",
    ];
}

/// The result of one submission.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutcomeKind {
    /// Written in full to its own unidirectional stream, FIN set.
    Sent,
    /// Not written.
    Dropped(DropReason),
}

/// One submission's fate, reported exactly once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The caller's id for the transaction.
    pub id: u64,
    /// The TPU address it was meant for.
    pub target: SocketAddr,
    /// Sent or dropped.
    pub kind: OutcomeKind,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_match_indices() {
        let all = [
            DropReason::Empty,
            DropReason::TooLarge,
            DropReason::EngineQueueFull,
            DropReason::ConnectionQueueFull,
            DropReason::Backoff,
            DropReason::HandshakeTimeout,
            DropReason::HandshakeFailed,
            DropReason::ClosedByPeer(0),
            DropReason::ClosedByPeer(1),
            DropReason::ClosedByPeer(2),
            DropReason::ClosedByPeer(3),
            DropReason::ClosedByPeer(4),
            DropReason::ClosedByPeer(5),
            DropReason::ClosedByPeer(77),
            DropReason::ConnectionLost,
            DropReason::Evicted,
            DropReason::Shutdown,
            DropReason::LocalError,
            DropReason::EngineFailed,
        ];
        for (i, r) in all.iter().enumerate() {
            assert_eq!(r.index(), i, "{r:?}");
        }
        // Close codes map to agave's names; unknown ones fold into one label.
        assert_eq!(DropReason::ClosedByPeer(4).label(), "closed_too_many");
        assert_eq!(DropReason::ClosedByPeer(77).label(), "closed_other");
        assert_eq!(DropReason::ClosedByPeer(u64::MAX).label(), "closed_other");
        let unique: std::collections::HashSet<_> = DropReason::LABELS.iter().collect();
        assert_eq!(
            unique.len(),
            DropReason::LABELS.len(),
            "labels are distinct"
        );
    }
}
