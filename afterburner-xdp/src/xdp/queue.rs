//! [`XskQueue`]: one AF_XDP socket's rings and UMEM frames, without the socket. It
//! moves frames between the rings and our code; the socket around it only adds the
//! system calls (kicks, statistics). Being sans-IO, the tests drive it with a
//! simulated kernel.
//!
//! Frame ownership is explicit: a frame is on the fill ring (kernel's, empty), on the
//! RX ring (ours, holding a packet until we have copied it out), in `tx_free` (ours),
//! or on the TX/completion rings (kernel's until completed). A received frame goes
//! back to the fill ring only after its consumer returned, never before.

use super::{
    ring::{Consumer, Producer},
    umem::Umem,
};

/// Descriptor type of the RX and TX rings.
pub(crate) type Desc = libc::xdp_desc;

/// Rings and frames of one queue.
#[derive(Debug)]
pub(crate) struct XskQueue {
    umem: Umem,
    fill: Producer<u64>,
    comp: Consumer<u64>,
    rx: Consumer<Desc>,
    tx: Option<Producer<Desc>>,
    tx_free: Vec<u64>,
    /// RX descriptors that pointed outside the UMEM (a kernel bug if ever non-zero).
    pub invalid_rx: u64,
}

impl XskQueue {
    /// Gives frames `[0, rx_frames)` to the kernel on the fill ring and keeps the rest
    /// for transmitting (when there is a TX ring).
    pub(crate) fn new(
        umem: Umem,
        mut fill: Producer<u64>,
        comp: Consumer<u64>,
        rx: Consumer<Desc>,
        tx: Option<Producer<Desc>>,
        rx_frames: u32,
    ) -> Self {
        let fs = u64::from(umem.frame_size());
        let rx_frames = rx_frames.min(umem.frames()).min(fill.free(u32::MAX));
        for i in 0..rx_frames {
            fill.push(u64::from(i) * fs);
        }
        fill.publish();
        let tx_free = if tx.is_some() {
            (rx_frames..umem.frames())
                .map(|i| u64::from(i) * fs)
                .collect()
        } else {
            Vec::new()
        };
        Self {
            umem,
            fill,
            comp,
            rx,
            tx,
            tx_free,
            invalid_rx: 0,
        }
    }

    pub(crate) fn umem(&self) -> &Umem {
        &self.umem
    }

    /// Hands up to `max` received frames to `f`, then returns them to the fill ring.
    /// Returns how many were handled.
    pub(crate) fn recv(&mut self, max: u32, mut f: impl FnMut(&[u8])) -> u32 {
        let n = self.rx.available().min(max);
        if n == 0 {
            return 0;
        }
        for i in 0..n {
            let d = self.rx.peek(i);
            match self.umem.bytes(d.addr, d.len) {
                Some(frame) => f(frame),
                None => self.invalid_rx += 1,
            }
        }
        // Only now, with every frame consumed, do they go back to the kernel. The fill
        // ring has room for every RX frame, so this finds room (refreshing our view of
        // the kernel's consumer index).
        let room = self.fill.free(n);
        debug_assert!(room >= n, "fill ring smaller than the RX frames");
        for i in 0..n {
            let base = self.umem.frame_base(self.rx.peek(i).addr);
            self.fill.push(base);
        }
        self.rx.release(n);
        self.fill.publish();
        n
    }

    /// Moves completed TX frames back to the free list; returns how many.
    pub(crate) fn reclaim(&mut self) -> u32 {
        let n = self.comp.available();
        for i in 0..n {
            let base = self.umem.frame_base(self.comp.peek(i));
            self.tx_free.push(base);
        }
        if n > 0 {
            self.comp.release(n);
        }
        n
    }

    /// Frames that can be queued for transmission now (reclaiming completions when short).
    pub(crate) fn tx_room(&mut self, want: u32) -> u32 {
        let Some(tx) = self.tx.as_mut() else {
            return 0;
        };
        let ring = tx.free(want);
        if (self.tx_free.len() as u32) < want.min(ring) {
            self.reclaim();
        }
        let tx = self.tx.as_mut().map_or(0, |tx| tx.free(want));
        tx.min(self.tx_free.len() as u32)
    }

    /// Builds one frame with `build` (which returns its length, or `None` to skip) and
    /// queues it. The caller checked [`Self::tx_room`]. Returns whether a frame was queued.
    pub(crate) fn push_tx(&mut self, build: impl FnOnce(&mut [u8]) -> Option<usize>) -> bool {
        let (Some(tx), Some(&addr)) = (self.tx.as_mut(), self.tx_free.last()) else {
            return false;
        };
        let Some(frame) = self.umem.frame_mut(addr) else {
            return false;
        };
        let Some(len) = build(frame) else {
            return false;
        };
        self.tx_free.pop();
        tx.push(Desc {
            addr,
            len: len as u32,
            options: 0,
        });
        true
    }

    /// Makes queued frames visible to the kernel.
    pub(crate) fn publish_tx(&mut self) {
        if let Some(tx) = self.tx.as_mut() {
            tx.publish();
        }
    }

    /// Frames on the TX ring the kernel has not taken yet.
    pub(crate) fn tx_pending(&mut self) -> u32 {
        self.tx.as_mut().map_or(0, |tx| tx.in_flight())
    }

    /// Whether the kernel wants a kick to process the TX ring.
    pub(crate) fn tx_needs_wakeup(&self) -> bool {
        self.tx.as_ref().is_some_and(|tx| tx.needs_wakeup())
    }

    /// Whether the kernel wants a wake-up to see refilled fill-ring entries.
    pub(crate) fn fill_needs_wakeup(&self) -> bool {
        self.fill.needs_wakeup()
    }

    /// Frames free for transmitting.
    #[cfg(test)]
    pub(crate) fn tx_free(&self) -> usize {
        self.tx_free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xdp::ring::{RingMem, TestRing};

    const FS: u32 = 2048;

    /// The kernel's ends of the four rings, over test memory.
    struct Kernel {
        fill: Consumer<u64>,
        comp: Producer<u64>,
        rx: Producer<Desc>,
        tx: Consumer<Desc>,
        umem: RingMem<u8>,
    }

    struct Rings {
        fill: TestRing<u64>,
        comp: TestRing<u64>,
        rx: TestRing<Desc>,
        tx: TestRing<Desc>,
    }

    fn empty_desc() -> Desc {
        Desc {
            addr: 0,
            len: 0,
            options: 0,
        }
    }

    fn setup(frames: u32, rx_frames: u32) -> (Box<Rings>, XskQueue, Kernel) {
        let size = frames.next_power_of_two();
        let mut rings = Box::new(Rings {
            fill: TestRing::new(size, 0),
            comp: TestRing::new(size, 0),
            rx: TestRing::new(size, empty_desc()),
            tx: TestRing::new(size, empty_desc()),
        });
        let mut umem = Umem::heap(frames, FS);
        let area = umem.frame_mut(0).unwrap().as_mut_ptr();
        // SAFETY: each ring end is driven by exactly one side; `rings` and the UMEM outlive both.
        let (queue, kernel) = unsafe {
            let kernel = Kernel {
                fill: Consumer::new(rings.fill.mem()),
                comp: Producer::new(rings.comp.mem()),
                rx: Producer::new(rings.rx.mem()),
                tx: Consumer::new(rings.tx.mem()),
                umem: RingMem {
                    producer: std::ptr::null(),
                    consumer: std::ptr::null(),
                    flags: std::ptr::null(),
                    descs: area,
                    size: frames * FS,
                },
            };
            let queue = XskQueue::new(
                umem,
                Producer::new(rings.fill.mem()),
                Consumer::new(rings.comp.mem()),
                Consumer::new(rings.rx.mem()),
                Some(Producer::new(rings.tx.mem())),
                rx_frames,
            );
            (queue, kernel)
        };
        (rings, queue, kernel)
    }

    impl Kernel {
        /// Takes fill-ring frames and "receives" one packet into each.
        fn deliver(&mut self, packets: &[Vec<u8>]) -> usize {
            let room = self.rx.free(u32::MAX) as usize;
            let n = (self.fill.available_now() as usize)
                .min(packets.len())
                .min(room);
            for (i, p) in packets.iter().take(n).enumerate() {
                let addr = self.fill.peek(i as u32);
                // SAFETY: the frame is the kernel's (it came off the fill ring).
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        p.as_ptr(),
                        self.umem.descs.add(addr as usize),
                        p.len(),
                    );
                }
                self.rx.push(Desc {
                    addr,
                    len: p.len() as u32,
                    options: 0,
                });
            }
            self.fill.release(n as u32);
            self.rx.publish();
            n
        }

        /// Frames the kernel may write into right now (on the fill ring, not yet taken).
        fn fill_frames(&mut self) -> Vec<u64> {
            (0..self.fill.available_now())
                .map(|i| self.fill.peek(i))
                .collect()
        }

        /// Transmits everything on the TX ring, returning the frames' bytes.
        fn transmit(&mut self) -> Vec<Vec<u8>> {
            let n = self.tx.available().min(self.comp.free(u32::MAX));
            let mut out = vec![];
            for i in 0..n {
                let d = self.tx.peek(i);
                // SAFETY: the frame is on the TX ring, i.e. handed to the kernel.
                out.push(unsafe {
                    std::slice::from_raw_parts(self.umem.descs.add(d.addr as usize), d.len as usize)
                        .to_vec()
                });
                self.comp.push(d.addr);
            }
            self.tx.release(n);
            self.comp.publish();
            out
        }
    }

    #[test]
    fn received_frames_return_to_the_fill_ring_only_after_they_are_read() {
        let (_rings, mut q, mut k) = setup(16, 8);
        let packets: Vec<Vec<u8>> = (0..8u8).map(|i| vec![i; 100 + i as usize]).collect();
        assert_eq!(k.deliver(&packets), 8);
        assert!(k.fill_frames().is_empty());
        let mut seen = vec![];
        let mut kernel_view = vec![];
        q.recv(64, |frame| {
            seen.push(frame.to_vec());
            // While we read this frame, the kernel must not be able to reuse it.
            kernel_view.push(k.fill_frames());
        });
        assert_eq!(seen, packets);
        assert!(kernel_view.iter().all(|v| v.is_empty()), "{kernel_view:?}");
        assert_eq!(
            k.fill_frames().len(),
            8,
            "all frames back after the consumer returned"
        );
    }

    #[test]
    fn recv_respects_max_and_keeps_the_rest_for_later() {
        let (_rings, mut q, mut k) = setup(16, 8);
        let packets: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 10]).collect();
        k.deliver(&packets);
        let mut seen = vec![];
        assert_eq!(q.recv(3, |f| seen.push(f[0])), 3);
        assert_eq!(k.fill_frames().len(), 6);
        assert_eq!(q.recv(3, |f| seen.push(f[0])), 2);
        assert_eq!(seen, [0, 1, 2, 3, 4]);
        // Frames cycle: the same 8 frames carry many more packets.
        for round in 0..10u8 {
            let batch: Vec<Vec<u8>> = (0..8).map(|i| vec![round, i]).collect();
            assert_eq!(k.deliver(&batch), 8);
            let mut got = vec![];
            q.recv(64, |f| got.push(f.to_vec()));
            assert_eq!(got, batch);
        }
    }

    #[test]
    fn transmit_frames_are_reused_only_after_completion() {
        let (_rings, mut q, mut k) = setup(16, 8);
        assert_eq!(q.tx_free(), 8);
        assert_eq!(q.tx_room(64), 8);
        for i in 0..8u8 {
            assert!(q.push_tx(|f| {
                f[..3].copy_from_slice(&[i, i, i]);
                Some(3)
            }));
        }
        assert_eq!(q.tx_room(1), 0, "no frame free until the kernel completes");
        assert!(!q.push_tx(|_| Some(1)));
        assert_eq!(
            k.transmit(),
            Vec::<Vec<u8>>::new(),
            "nothing before publish"
        );
        q.publish_tx();
        assert_eq!(q.tx_pending(), 8);
        let sent = k.transmit();
        assert_eq!(sent, (0..8u8).map(|i| vec![i; 3]).collect::<Vec<_>>());
        assert_eq!(q.tx_room(8), 8, "completions reclaimed");
        assert!(!q.push_tx(|_| None), "a build that declines queues nothing");
        assert_eq!(q.tx_room(8), 8);
    }
}
