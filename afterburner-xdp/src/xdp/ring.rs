//! The four AF_XDP rings (fill, completion, RX, TX) as single-producer /
//! single-consumer queues over shared memory.
//!
//! The kernel owns one end of each ring; we own the other. Our side caches the
//! kernel's index and re-reads it (acquire) only when the cache says the ring is
//! empty or full; our own index is published (release) once per batch. The same
//! types drive either end, which lets the tests play the kernel against our code
//! over plain memory.

use std::{
    marker::PhantomData,
    sync::atomic::{AtomicU32, Ordering},
};

/// Where a ring lives: pointers into an mmap'd area (or test memory) that outlives it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RingMem<T> {
    pub producer: *const AtomicU32,
    pub consumer: *const AtomicU32,
    pub flags: *const AtomicU32,
    pub descs: *mut T,
    /// Entries; a power of two.
    pub size: u32,
}

/// Our producing end (fill ring, TX ring).
#[derive(Debug)]
pub(crate) struct Producer<T> {
    mem: RingMem<T>,
    /// Next index we will write.
    head: u32,
    /// Our view of the consumer index.
    cached_consumer: u32,
    _t: PhantomData<T>,
}

/// Our consuming end (completion ring, RX ring).
#[derive(Debug)]
pub(crate) struct Consumer<T> {
    mem: RingMem<T>,
    /// Next index we will read.
    tail: u32,
    /// Our view of the producer index.
    cached_producer: u32,
    _t: PhantomData<T>,
}

// SAFETY: the ring memory is owned by the socket that owns the ring, which moves
// between threads as a whole; only one thread drives a ring end at a time.
unsafe impl<T: Send> Send for Producer<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Send for Consumer<T> {}

impl<T> RingMem<T> {
    fn producer(&self) -> &AtomicU32 {
        // SAFETY: the pointer is valid and aligned for the ring's lifetime (RingMem contract).
        unsafe { &*self.producer }
    }
    fn consumer(&self) -> &AtomicU32 {
        // SAFETY: as above.
        unsafe { &*self.consumer }
    }
    fn flags(&self) -> &AtomicU32 {
        // SAFETY: as above.
        unsafe { &*self.flags }
    }
    fn slot(&self, index: u32) -> *mut T {
        // SAFETY: masked into the descriptor array of `size` entries.
        unsafe { self.descs.add((index & (self.size - 1)) as usize) }
    }
}

impl<T: Copy> Producer<T> {
    /// # Safety
    /// `mem` must point to a live ring of `mem.size` (a power of two) entries that
    /// outlives the returned value, with no other producer.
    pub(crate) unsafe fn new(mem: RingMem<T>) -> Self {
        let head = mem.producer().load(Ordering::Relaxed);
        let cached_consumer = mem.consumer().load(Ordering::Acquire);
        Self {
            mem,
            head,
            cached_consumer,
            _t: PhantomData,
        }
    }

    /// Free entries, re-reading the consumer only when fewer than `want` look free.
    pub(crate) fn free(&mut self, want: u32) -> u32 {
        let free = self.mem.size - self.head.wrapping_sub(self.cached_consumer);
        if free >= want {
            return free;
        }
        self.cached_consumer = self.mem.consumer().load(Ordering::Acquire);
        self.mem.size - self.head.wrapping_sub(self.cached_consumer)
    }

    /// Writes one entry (not visible until [`Self::publish`]). The caller checked
    /// [`Self::free`].
    ///
    /// # Panics
    /// When the ring is full as of the last consumer read: writing would overwrite
    /// an entry the other end (the kernel) may be reading. Checked in every build:
    /// one compare, and the alternative is memory the kernel owns.
    pub(crate) fn push(&mut self, value: T) {
        assert!(
            self.head.wrapping_sub(self.cached_consumer) < self.mem.size,
            "AF_XDP ring push without room: a bug in the caller's free() check"
        );
        // SAFETY: the slot is free (checked just above against the consumer index the
        // caller's `free` read), so the other end is not reading it.
        unsafe { self.mem.slot(self.head).write(value) };
        self.head = self.head.wrapping_add(1);
    }

    /// Makes every pushed entry visible to the other end.
    pub(crate) fn publish(&mut self) {
        self.mem.producer().store(self.head, Ordering::Release);
    }

    /// Entries written but not yet consumed (as of the last consumer read).
    pub(crate) fn in_flight(&mut self) -> u32 {
        self.cached_consumer = self.mem.consumer().load(Ordering::Acquire);
        self.head.wrapping_sub(self.cached_consumer)
    }

    /// Whether the other end asked to be woken (`XDP_RING_NEED_WAKEUP`).
    pub(crate) fn needs_wakeup(&self) -> bool {
        self.mem.flags().load(Ordering::Relaxed) & libc::XDP_RING_NEED_WAKEUP != 0
    }
}

impl<T: Copy> Consumer<T> {
    /// # Safety
    /// As [`Producer::new`], with no other consumer.
    pub(crate) unsafe fn new(mem: RingMem<T>) -> Self {
        let tail = mem.consumer().load(Ordering::Relaxed);
        Self {
            mem,
            tail,
            cached_producer: tail,
            _t: PhantomData,
        }
    }

    /// Entries ready to read, re-reading the producer when the cache is empty.
    pub(crate) fn available(&mut self) -> u32 {
        let n = self.cached_producer.wrapping_sub(self.tail);
        if n > 0 {
            return n;
        }
        self.cached_producer = self.mem.producer().load(Ordering::Acquire);
        self.cached_producer.wrapping_sub(self.tail)
    }

    /// Entries ready, always re-reading the producer (tests: a fresh view).
    #[cfg(test)]
    pub(crate) fn available_now(&mut self) -> u32 {
        self.cached_producer = self.mem.producer().load(Ordering::Acquire);
        self.cached_producer.wrapping_sub(self.tail)
    }

    /// Reads entry `i` past the next; the caller checked [`Self::available`]. Its
    /// slot stays ours until [`Self::release`].
    ///
    /// # Panics
    /// When entry `i` was not published (as of the last producer read): it may be
    /// being written by the other end. Checked in every build, as [`Producer::push`].
    pub(crate) fn peek(&mut self, i: u32) -> T {
        assert!(
            i < self.cached_producer.wrapping_sub(self.tail),
            "AF_XDP ring peek past the published entries: a bug in the caller's available() check"
        );
        // SAFETY: the entry was published by the producer (checked just above) and not
        // yet released by us.
        unsafe { self.mem.slot(self.tail.wrapping_add(i)).read() }
    }

    /// Hands `n` read entries back to the producer.
    pub(crate) fn release(&mut self, n: u32) {
        self.tail = self.tail.wrapping_add(n);
        self.mem.consumer().store(self.tail, Ordering::Release);
    }
}

/// Test memory laid out like a kernel ring: the tests play the kernel's end.
#[cfg(test)]
pub(crate) struct TestRing<T> {
    pub indices: Box<[AtomicU32; 3]>,
    pub descs: Box<[T]>,
}

#[cfg(test)]
impl<T: Copy> TestRing<T> {
    pub(crate) fn new(size: u32, empty: T) -> Self {
        Self {
            indices: Box::new([AtomicU32::new(0), AtomicU32::new(0), AtomicU32::new(0)]),
            descs: vec![empty; size as usize].into_boxed_slice(),
        }
    }

    pub(crate) fn mem(&mut self) -> RingMem<T> {
        RingMem {
            producer: &self.indices[0],
            consumer: &self.indices[1],
            flags: &self.indices[2],
            descs: self.descs.as_mut_ptr(),
            size: self.descs.len() as u32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_cross_in_order_and_the_ring_fills_up() {
        let mut ring = TestRing::<u64>::new(8, 0);
        // SAFETY: `ring` outlives both ends; one producer, one consumer.
        let (mut p, mut c) = unsafe { (Producer::new(ring.mem()), Consumer::new(ring.mem())) };
        assert_eq!(p.free(1), 8);
        for i in 0..8 {
            p.push(i);
        }
        assert_eq!(p.free(1), 0);
        assert_eq!(c.available(), 0, "nothing visible before publish");
        p.publish();
        assert_eq!(c.available(), 8);
        assert_eq!((0..3).map(|i| c.peek(i)).collect::<Vec<_>>(), [0, 1, 2]);
        c.release(3);
        assert_eq!(p.free(3), 3);
        for i in 8..11 {
            p.push(i);
        }
        p.publish();
        assert_eq!(c.available(), 5, "cached producer index until drained");
        c.release(5);
        assert_eq!(c.available(), 3);
        assert_eq!((0..3).map(|i| c.peek(i)).collect::<Vec<_>>(), [8, 9, 10]);
        c.release(3);
        assert_eq!(p.in_flight(), 0);
    }

    #[test]
    fn indices_wrap_around_u32() {
        let mut ring = TestRing::<u64>::new(4, 0);
        let start = u32::MAX - 2;
        for i in &ring.indices[..2] {
            i.store(start, Ordering::Relaxed);
        }
        // SAFETY: as above.
        let (mut p, mut c) = unsafe { (Producer::new(ring.mem()), Consumer::new(ring.mem())) };
        for round in 0..5u64 {
            assert_eq!(p.free(4), 4);
            for i in 0..4 {
                p.push(round * 10 + i);
            }
            p.publish();
            assert_eq!(c.available(), 4);
            assert_eq!(c.peek(3), round * 10 + 3);
            c.release(4);
        }
    }

    #[test]
    fn needs_wakeup_reads_the_flag() {
        let mut ring = TestRing::<u64>::new(4, 0);
        // SAFETY: as above.
        let p = unsafe { Producer::new(ring.mem()) };
        assert!(!p.needs_wakeup());
        ring.indices[2].store(libc::XDP_RING_NEED_WAKEUP, Ordering::Relaxed);
        assert!(p.needs_wakeup());
    }
}
