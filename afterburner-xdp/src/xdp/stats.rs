//! [`XdpStats`]: the AF_XDP backend's counters, the kernel's socket statistics and the
//! steering program's verdicts, in one struct of atomics (written by the engine
//! thread, read by anyone).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::program::COUNTER_LABELS;

macro_rules! xdp_counters {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// AF_XDP counters (monotonic unless documented as a gauge or a flag).
        #[derive(Debug, Default)]
        pub struct XdpStats {
            $($(#[$doc])* pub $name: AtomicU64,)*
            /// The steering program's verdicts, in [`COUNTER_LABELS`] order.
            pub program: [AtomicU64; COUNTER_LABELS.len()],
        }

        /// A point-in-time copy of [`XdpStats`].
        #[derive(Clone, Debug, Default, PartialEq, Eq)]
        pub struct XdpStatsSnapshot {
            $($(#[$doc])* pub $name: u64,)*
            /// The steering program's verdicts, in [`COUNTER_LABELS`] order.
            pub program: [u64; COUNTER_LABELS.len()],
        }

        impl XdpStats {
            /// Reads every counter.
            pub fn snapshot(&self) -> XdpStatsSnapshot {
                XdpStatsSnapshot {
                    $($name: self.$name.load(Relaxed),)*
                    program: std::array::from_fn(|i| self.program[i].load(Relaxed)),
                }
            }
        }
    };
}

xdp_counters! {
    /// Frames put on the TX ring.
    tx_frames,
    /// Frames taken off the RX rings.
    rx_frames,
    /// TX kicks (`sendto`) made.
    tx_kicks,
    /// Kicks the kernel refused for now (EAGAIN, EBUSY, ENOBUFS).
    tx_kicks_transient,
    /// Datagrams sent through the kernel UDP socket instead (next hop unresolved, or
    /// the route leaves by another interface).
    kernel_tx,
    /// Datagrams that arrived on the kernel UDP socket (missed the AF_XDP socket).
    kernel_rx,
    /// Received frames that were not well-formed IPv4/UDP for us.
    rx_malformed,
    /// Route + neighbour lookups made.
    next_hop_lookups,
    /// Lookups that found no usable neighbour entry (a probe was sent).
    neighbour_misses,
    /// Netlink lookups that failed.
    netlink_errors,
    /// Kernel: packets dropped for other reasons than an invalid descriptor.
    rx_dropped,
    /// Kernel: invalid RX descriptors.
    rx_invalid_descs,
    /// Kernel: invalid TX descriptors.
    tx_invalid_descs,
    /// Kernel: packets dropped because the RX ring was full.
    rx_ring_full,
    /// Kernel: times the fill ring was empty when a packet arrived.
    fill_ring_empty,
    /// Kernel: times the TX ring was empty when the kernel looked.
    tx_ring_empty,
    /// AF_XDP sockets (one per RX queue), gauge.
    queues,
    /// 1 when bound zero-copy, 0 in copy mode.
    zero_copy,
    /// 1 when the program runs in the driver, 0 in generic (SKB) mode.
    driver_mode,
    /// 1 when the UMEM is on huge pages.
    huge_pages,
}

impl XdpStats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        if n > 0 {
            counter.fetch_add(n, Relaxed);
        }
    }

    pub(crate) fn set(counter: &AtomicU64, v: u64) {
        counter.store(v, Relaxed);
    }
}
