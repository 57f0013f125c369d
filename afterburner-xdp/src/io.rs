//! [`PacketIo`]: how the engine's datagrams reach the wire and come back.
//!
//! A backend moves whole batches: [`TxBatch`] out, [`RxBatch`] in, and exposes a
//! file descriptor the driver can sleep on. The kernel UDP backend
//! ([`crate::udp::UdpIo`]) and the AF_XDP backend implement the same trait, so the
//! engine and its driver do not change with the packet path.

use std::{io, net::SocketAddr, os::fd::BorrowedFd};

use crate::batch::{RxBatch, TxBatch};

/// Counters a backend adds to as it works.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoCounters {
    /// System calls (or ring kicks) made to send.
    pub send_calls: u64,
    /// Times the path was full and sending had to wait.
    pub would_block: u64,
    /// Datagrams dropped because of a send error other than "would block".
    pub send_errors: u64,
}

/// A batch-oriented datagram path.
pub trait PacketIo: Send {
    /// The address our QUIC connections use as their local address.
    fn local_addr(&self) -> SocketAddr;

    /// Sends datagrams from the front of `batch`, consuming each one that left (or
    /// failed for good, counted in `counters.send_errors`). Stops early when the path
    /// is full: what is left stays pending, and [`Self::pollable`] reports writability.
    ///
    /// # Errors
    /// Only errors that make the backend unusable.
    fn send(&mut self, batch: &mut TxBatch, counters: &mut IoCounters) -> io::Result<()>;

    /// Receives whatever is waiting (up to the batch's capacity) without blocking.
    /// Returns the number of datagrams now in `batch`.
    ///
    /// # Errors
    /// Only errors that make the backend unusable.
    fn recv(&mut self, batch: &mut RxBatch) -> io::Result<usize>;

    /// A descriptor that polls readable when datagrams are waiting and writable when
    /// sending can proceed.
    fn pollable(&self) -> BorrowedFd<'_>;
}
