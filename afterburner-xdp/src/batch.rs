//! Packet batches shared by the engine and every packet I/O backend:
//! [`TxBatch`] (datagrams the engine built, packed back to back so that a run of
//! equal-size datagrams to one destination is already a UDP GSO buffer) and
//! [`RxBatch`] (fixed-size slots the backend fills).

use std::net::SocketAddr;

/// Largest datagram we build or accept (an Ethernet MTU's worth of UDP payload).
pub const MAX_DATAGRAM: usize = 1500;

/// One datagram in a [`TxBatch`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxMeta {
    /// Offset of the payload in the batch buffer.
    pub offset: usize,
    /// Payload length.
    pub len: usize,
    /// Destination.
    pub dst: SocketAddr,
}

/// Outgoing datagrams, filled by the engine, drained from the front by a backend.
#[derive(Debug)]
pub struct TxBatch {
    buf: Box<[u8]>,
    used: usize,
    meta: Vec<TxMeta>,
    /// Datagrams before this index were already sent.
    sent: usize,
}

impl TxBatch {
    /// A batch holding up to `packets` datagrams.
    pub fn new(packets: usize) -> Self {
        Self {
            buf: vec![0; packets.max(1) * MAX_DATAGRAM].into_boxed_slice(),
            used: 0,
            meta: Vec::with_capacity(packets.max(1)),
            sent: 0,
        }
    }

    /// Room for one more datagram of up to `max` bytes, or `None` when full.
    pub fn spare(&mut self, max: usize) -> Option<&mut [u8]> {
        if self.meta.len() == self.meta.capacity() || self.buf.len() - self.used < max {
            return None;
        }
        Some(&mut self.buf[self.used..self.used + max])
    }

    /// Records that `len` bytes were written into the last [`Self::spare`] slice.
    pub fn commit(&mut self, len: usize, dst: SocketAddr) {
        self.meta.push(TxMeta {
            offset: self.used,
            len,
            dst,
        });
        self.used += len;
    }

    /// Datagrams not yet sent.
    pub fn pending(&self) -> &[TxMeta] {
        &self.meta[self.sent..]
    }

    /// The payload bytes of a datagram from [`Self::pending`].
    pub fn payload(&self, meta: &TxMeta) -> &[u8] {
        &self.buf[meta.offset..meta.offset + meta.len]
    }

    /// The contiguous bytes of datagrams `pending()[from..to]` (a GSO buffer when equal-size).
    pub fn span(&self, from: usize, to: usize) -> &[u8] {
        let pending = self.pending();
        let start = pending[from].offset;
        let last = pending[to - 1];
        &self.buf[start..last.offset + last.len]
    }

    /// Marks the first `n` pending datagrams as sent; an emptied batch is reset.
    pub fn consume(&mut self, n: usize) {
        self.sent = (self.sent + n).min(self.meta.len());
        if self.sent == self.meta.len() {
            self.clear();
        }
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.sent == self.meta.len()
    }

    /// Whether no further datagram fits.
    pub fn is_full(&self) -> bool {
        self.meta.len() == self.meta.capacity() || self.buf.len() - self.used < MAX_DATAGRAM
    }

    /// Drops every datagram.
    pub fn clear(&mut self) {
        self.meta.clear();
        self.used = 0;
        self.sent = 0;
    }
}

/// One received datagram in an [`RxBatch`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RxMeta {
    /// Payload length.
    pub len: usize,
    /// Sender.
    pub from: SocketAddr,
}

/// Incoming datagrams: `slots` buffers of [`MAX_DATAGRAM`] bytes.
#[derive(Debug)]
pub struct RxBatch {
    buf: Box<[u8]>,
    meta: Vec<RxMeta>,
    slots: usize,
}

impl RxBatch {
    /// A batch of `slots` receive buffers.
    pub fn new(slots: usize) -> Self {
        let slots = slots.max(1);
        Self {
            buf: vec![0; slots * MAX_DATAGRAM].into_boxed_slice(),
            meta: Vec::with_capacity(slots),
            slots,
        }
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.slots
    }

    /// Number of datagrams held.
    pub fn len(&self) -> usize {
        self.meta.len()
    }

    /// Whether no datagram is held.
    pub fn is_empty(&self) -> bool {
        self.meta.is_empty()
    }

    /// All slot buffers, for a backend to fill (slot `i` is `[i*MAX_DATAGRAM..][..MAX_DATAGRAM]`).
    pub fn slots_mut(&mut self) -> &mut [u8] {
        &mut self.buf
    }

    /// Records the datagrams a backend wrote into the first `meta.len()` slots.
    pub fn set_received(&mut self, meta: impl IntoIterator<Item = RxMeta>) {
        self.meta.clear();
        self.meta.extend(meta.into_iter().take(self.slots));
    }

    /// Appends one datagram (copied), returning false when the batch is full or it is too large.
    pub fn push(&mut self, from: SocketAddr, data: &[u8]) -> bool {
        let i = self.meta.len();
        if i == self.slots || data.len() > MAX_DATAGRAM {
            return false;
        }
        self.buf[i * MAX_DATAGRAM..i * MAX_DATAGRAM + data.len()].copy_from_slice(data);
        self.meta.push(RxMeta {
            len: data.len(),
            from,
        });
        true
    }

    /// Empties the batch.
    pub fn clear(&mut self) {
        self.meta.clear();
    }

    /// Visits each datagram mutably (quiche decrypts in place).
    pub fn for_each(&mut self, mut f: impl FnMut(SocketAddr, &mut [u8])) {
        for (i, m) in self.meta.iter().enumerate() {
            f(
                m.from,
                &mut self.buf[i * MAX_DATAGRAM..i * MAX_DATAGRAM + m.len],
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn tx_batch_packs_datagrams_back_to_back() {
        let mut b = TxBatch::new(4);
        for (i, len) in [10usize, 10, 7].into_iter().enumerate() {
            let slot = b.spare(1472).unwrap();
            slot[..len].fill(i as u8);
            b.commit(len, addr(1));
        }
        assert_eq!(b.pending().len(), 3);
        assert_eq!(b.span(0, 3).len(), 27);
        assert_eq!(b.payload(&b.pending()[2]), &[2u8; 7]);
        b.consume(2);
        assert_eq!(b.pending().len(), 1);
        b.consume(1);
        assert!(b.is_empty());
        assert_eq!(b.spare(1472).unwrap().len(), 1472);
    }

    #[test]
    fn tx_batch_refuses_past_capacity() {
        let mut b = TxBatch::new(2);
        for _ in 0..2 {
            b.spare(100).unwrap();
            b.commit(100, addr(1));
        }
        assert!(b.spare(100).is_none());
        assert!(b.is_full());
    }

    #[test]
    fn rx_batch_push_and_visit() {
        let mut b = RxBatch::new(2);
        assert!(b.push(addr(1), b"ab"));
        assert!(b.push(addr(2), b"cde"));
        assert!(!b.push(addr(3), b"f"));
        let mut seen = vec![];
        b.for_each(|from, d| seen.push((from, d.to_vec())));
        assert_eq!(
            seen,
            vec![(addr(1), b"ab".to_vec()), (addr(2), b"cde".to_vec())]
        );
    }
}
