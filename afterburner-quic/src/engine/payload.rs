//! The payloads the engine carries: a transaction waiting for its stream, and the
//! buffer type that lets quiche keep a shared view of it instead of a copy.

use std::sync::Arc;

use crate::outcome::DropReason;

/// A transaction waiting for its stream.
pub(super) struct Pending {
    pub(super) id: u64,
    pub(super) payload: Arc<[u8]>,
}

/// Lets quiche keep our transaction buffers instead of copying each one
/// (`stream_send_zc`): a stream's data is a shared view of the submitted payload.
#[derive(Clone, Debug, Default)]
pub(super) struct PayloadFactory;

/// A shared view `start..end` of a submitted payload.
#[derive(Clone, Debug)]
pub(super) struct PayloadBuf {
    data: Arc<[u8]>,
    start: usize,
    end: usize,
}

impl PayloadBuf {
    /// The part of `payload` from `from` on.
    pub(super) fn rest(payload: &Arc<[u8]>, from: usize) -> Self {
        Self {
            data: payload.clone(),
            start: from.min(payload.len()),
            end: payload.len(),
        }
    }

    /// Bytes in view.
    pub(super) fn len(&self) -> usize {
        self.end - self.start
    }
}

impl AsRef<[u8]> for PayloadBuf {
    fn as_ref(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }
}

impl quiche::BufSplit for PayloadBuf {
    fn split_at(&mut self, at: usize) -> Self {
        let mid = (self.start + at).min(self.end);
        let tail = Self {
            data: self.data.clone(),
            start: mid,
            end: self.end,
        };
        self.end = mid;
        tail
    }
}

impl quiche::BufFactory for PayloadFactory {
    type Buf = PayloadBuf;

    fn buf_from_slice(buf: &[u8]) -> PayloadBuf {
        PayloadBuf {
            data: buf.into(),
            start: 0,
            end: buf.len(),
        }
    }
}

/// Why a payload can never be sent, if it cannot (checked before any stream opens:
/// agave closes the whole connection with `invalid_stream` for either). `max` is
/// `EngineConfig::max_transaction_size`.
pub fn check_payload(payload: &[u8], max: usize) -> Option<DropReason> {
    if payload.is_empty() {
        Some(DropReason::Empty)
    } else if payload.len() > max {
        Some(DropReason::TooLarge)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use quiche::BufSplit as _;

    use super::*;
    use crate::protocol::PACKET_DATA_SIZE;

    #[test]
    fn split_views_share_the_payload() {
        let payload: Arc<[u8]> = (0u8..10).collect::<Vec<_>>().into();
        let mut head = PayloadBuf::rest(&payload, 2);
        assert_eq!(head.len(), 8);
        let tail = head.split_at(3);
        assert_eq!(head.as_ref(), &[2, 3, 4]);
        assert_eq!(tail.as_ref(), &[5, 6, 7, 8, 9]);
        assert_eq!(PayloadBuf::rest(&payload, 99).len(), 0);
    }

    #[test]
    fn empty_and_oversized_payloads_are_refused() {
        assert_eq!(
            check_payload(&[], PACKET_DATA_SIZE),
            Some(DropReason::Empty)
        );
        assert_eq!(
            check_payload(&vec![0; PACKET_DATA_SIZE + 1], PACKET_DATA_SIZE),
            Some(DropReason::TooLarge)
        );
        assert_eq!(
            check_payload(&vec![0; PACKET_DATA_SIZE], PACKET_DATA_SIZE),
            None
        );
        assert_eq!(check_payload(&[0; 101], 100), Some(DropReason::TooLarge));
    }
}
