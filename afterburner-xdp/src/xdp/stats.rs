//! [`XdpStats`]: the AF_XDP backend's counters, the kernel's socket statistics and the
//! steering program's verdicts, in one struct of atomics (written by the engine
//! thread, read by anyone), each declared once with its metric name
//! ([`afterburner_stats::declare_stats!`]).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use afterburner_common::COUNTER_LABELS;

/// The rings whose invalid descriptors the kernel counts (`invalid_descs` order).
pub const DESC_RINGS: [&str; 2] = ["rx", "tx"];

afterburner_stats::declare_stats! {
    /// AF_XDP counters (monotonic unless documented as a gauge or a flag).
    pub struct XdpStats, snapshot XdpStatsSnapshot {
        /// Frames put on the TX ring.
        tx_frames: Counter "afterburner_xdp_tx_frames_total",
        /// Frames taken off the RX rings.
        rx_frames: Counter "afterburner_xdp_rx_frames_total",
        /// TX kicks (`sendto`) made.
        tx_kicks: Counter "afterburner_xdp_tx_kicks_total",
        /// TX kicks the kernel refused for now (EAGAIN, EBUSY, ENOBUFS).
        tx_kicks_transient: Counter "afterburner_xdp_tx_kicks_transient_total",
        /// Datagrams sent through the kernel UDP socket instead (next hop unresolved, or the route leaves by another interface).
        kernel_tx: Counter "afterburner_xdp_kernel_tx_total",
        /// Datagrams that arrived on the kernel UDP socket (missed the AF_XDP socket).
        kernel_rx: Counter "afterburner_xdp_kernel_rx_total",
        /// Received frames that were not well-formed IPv4/UDP for us.
        rx_malformed: Counter "afterburner_xdp_rx_malformed_total",
        /// Route + neighbour lookups made.
        next_hop_lookups: Counter "afterburner_xdp_next_hop_lookups_total",
        /// Lookups that found no usable neighbour entry (a probe was sent).
        neighbour_misses: Counter "afterburner_xdp_neighbour_misses_total",
        /// Netlink lookups that failed.
        netlink_errors: Counter "afterburner_xdp_netlink_errors_total",
        /// Kernel: packets dropped for other reasons than an invalid descriptor.
        rx_dropped: Counter "afterburner_xdp_rx_dropped_total",
        /// Kernel: packets dropped because the RX ring was full.
        rx_ring_full: Counter "afterburner_xdp_rx_ring_full_total",
        /// Kernel: times the fill ring was empty when a packet arrived.
        fill_ring_empty: Counter "afterburner_xdp_fill_ring_empty_total",
        /// Kernel: times the TX ring was empty when the kernel looked.
        tx_ring_empty: Counter "afterburner_xdp_tx_ring_empty_total",
        /// AF_XDP sockets (one per RX queue).
        queues: Gauge "afterburner_xdp_queues",
        /// 1 when bound zero-copy, 0 in copy mode.
        zero_copy: Gauge "afterburner_xdp_zero_copy",
        /// 1 when the program runs in the driver, 0 in generic (SKB) mode.
        driver_mode: Gauge "afterburner_xdp_driver_mode",
        /// 1 when the UMEM is on huge pages.
        huge_pages: Gauge "afterburner_xdp_huge_pages",
    }
    labelled {
        /// Kernel: invalid descriptors, by ring.
        invalid_descs["ring" in DESC_RINGS]: Counter "afterburner_xdp_invalid_descriptors_total",
        /// The steering program's verdicts.
        program["verdict" in COUNTER_LABELS]: Counter "afterburner_xdp_program_packets_total",
    }
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
