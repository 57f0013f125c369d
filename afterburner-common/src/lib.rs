//! What Afterburner's XDP program (`afterburner-ebpf`) and its loader
//! (`afterburner-xdp`'s `xdp::program`) must agree on: the program and map names, the
//! `PORTS` key layout, and the verdict counters' slots and labels. Both sides use
//! these definitions, so they cannot drift apart; `no_std` and without
//! dependencies, so the eBPF target builds it.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

/// The XDP program's name (its function's symbol in the object).
pub const PROGRAM_NAME: &str = "afterburner_xdp";

/// Map of AF_XDP sockets by RX queue index.
pub const XSKS_MAP: &str = "XSKS";
/// Map of our sockets, keyed by [`port_key`]; the value is unused.
pub const PORTS_MAP: &str = "PORTS";
/// Per-CPU verdict counters, indexed by [`Counter`].
pub const COUNTERS_MAP: &str = "COUNTERS";
/// Every map the object must hold.
pub const MAP_NAMES: [&str; 3] = [XSKS_MAP, PORTS_MAP, COUNTERS_MAP];

/// Capacity of the `XSKS` map (RX queues).
pub const MAX_QUEUES: u32 = 256;
/// Capacity of the `PORTS` map (our sockets).
pub const MAX_PORTS: u32 = 256;
/// Slots in the `COUNTERS` array (at least [`Counter::COUNT`]; spare room).
pub const COUNTER_SLOTS: u32 = 8;

/// The `PORTS` key of an IPv4 address and UDP port, both in host byte order:
/// `(address << 16) | port`.
#[inline(always)]
pub const fn port_key(addr: u32, port: u16) -> u64 {
    ((addr as u64) << 16) | port as u64
}

/// The program's verdicts, each counted in its `COUNTERS` slot (the discriminant).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Counter {
    /// Ours, and handed to the AF_XDP socket of its queue.
    Redirected = 0,
    /// Not IPv4 (or VLAN-tagged): passed.
    PassNotIpv4 = 1,
    /// IPv4 with options, or a fragment: passed for the kernel to handle.
    PassIpOptionsOrFragment = 2,
    /// Not UDP: passed.
    PassNotUdp = 3,
    /// UDP, but not to one of our sockets: passed.
    PassNotOurs = 4,
    /// Ours, but no AF_XDP socket bound on the queue: passed (our kernel socket gets it).
    PassNoSocket = 5,
    /// Too short to parse: passed.
    PassTruncated = 6,
}

impl Counter {
    /// How many verdicts there are.
    pub const COUNT: usize = 7;
    /// Every verdict, in slot order.
    pub const ALL: [Counter; Self::COUNT] = [
        Self::Redirected,
        Self::PassNotIpv4,
        Self::PassIpOptionsOrFragment,
        Self::PassNotUdp,
        Self::PassNotOurs,
        Self::PassNoSocket,
        Self::PassTruncated,
    ];

    /// The slot in `COUNTERS`.
    #[inline(always)]
    pub const fn slot(self) -> u32 {
        self as u32
    }

    /// The metric label (`verdict="…"`).
    pub const fn label(self) -> &'static str {
        match self {
            Self::Redirected => "redirected",
            Self::PassNotIpv4 => "pass_not_ipv4",
            Self::PassIpOptionsOrFragment => "pass_ip_options_or_fragment",
            Self::PassNotUdp => "pass_not_udp",
            Self::PassNotOurs => "pass_not_ours",
            Self::PassNoSocket => "pass_no_socket",
            Self::PassTruncated => "pass_truncated",
        }
    }
}

/// The labels of [`Counter::ALL`], in slot order.
pub const COUNTER_LABELS: [&str; Counter::COUNT] = {
    let mut out = [""; Counter::COUNT];
    let mut i = 0;
    while i < Counter::COUNT {
        out[i] = Counter::ALL[i].label();
        i += 1;
    }
    out
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_dense_and_fit_the_array() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(c.slot() as usize, i);
        }
        assert!(Counter::COUNT as u32 <= COUNTER_SLOTS);
    }

    #[test]
    fn port_key_layout() {
        assert_eq!(port_key(0x0a0b_0002, 0x1f49), 0x0a0b_0002_1f49);
    }
}
