//! Afterburner's XDP program. It shares a NIC with a validator, so it takes as little
//! as possible: an IPv4/UDP packet (no IP options, not a fragment, no VLAN tag) whose
//! destination address and port are one of *our* QUIC client sockets (the `PORTS`
//! map, filled by userspace) goes to the AF_XDP socket of its RX queue (`XSKS`);
//! everything else gets `XDP_PASS` and continues into the kernel untouched. When no
//! AF_XDP socket is bound on the queue the packet is passed too, and our kernel UDP
//! socket bound to the same port receives it.
//!
//! Every verdict is counted in `COUNTERS` (per CPU) so operators can see what the
//! program did. Map names, the `PORTS` key layout and the counter slots come from
//! `afterburner-common`, which the loader in `afterburner-xdp` uses too.

#![no_std]
#![no_main]

use afterburner_common::{COUNTER_SLOTS, Counter, MAX_PORTS, MAX_QUEUES, port_key};
use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{HashMap, PerCpuArray, XskMap},
    programs::XdpContext,
};

// The map names are `afterburner_common::{XSKS_MAP, PORTS_MAP, COUNTERS_MAP}` (the
// loader's test checks the object for them).

/// AF_XDP sockets by RX queue index.
#[map]
static XSKS: XskMap = XskMap::with_max_entries(MAX_QUEUES, 0);

/// Our sockets: key [`port_key`]; value unused.
#[map]
static PORTS: HashMap<u64, u8> = HashMap::with_max_entries(MAX_PORTS, 0);

/// Verdict counters, indexed by [`Counter::slot`].
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

const ETH_HDR_LEN: usize = 14;
const ETH_P_IPV4: [u8; 2] = [0x08, 0x00];
const IPV4_HDR_LEN: usize = 20;
const IPPROTO_UDP: u8 = 17;

#[xdp]
pub fn afterburner_xdp(ctx: XdpContext) -> u32 {
    let (verdict, counter) = classify(&ctx);
    count(counter);
    verdict
}

#[inline(always)]
fn classify(ctx: &XdpContext) -> (u32, Counter) {
    let pass = xdp_action::XDP_PASS;
    // Ethernet + IPv4 without options + the UDP ports: 38 bytes, bounds-checked once.
    let Some(hdr) = bytes::<{ ETH_HDR_LEN + IPV4_HDR_LEN + 4 }>(ctx, 0) else {
        return (pass, Counter::PassTruncated);
    };
    // A VLAN tag (0x8100/0x88a8) or any other ethertype is not ours to parse.
    if [hdr[12], hdr[13]] != ETH_P_IPV4 {
        return (pass, Counter::PassNotIpv4);
    }
    let ip = &hdr[ETH_HDR_LEN..];
    // Version 4, IHL 5: options are left to the kernel.
    if ip[0] != 0x45 {
        return (pass, Counter::PassIpOptionsOrFragment);
    }
    // More-fragments flag or a fragment offset: the kernel reassembles.
    if u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 {
        return (pass, Counter::PassIpOptionsOrFragment);
    }
    if ip[9] != IPPROTO_UDP {
        return (pass, Counter::PassNotUdp);
    }
    let daddr = u32::from_be_bytes([ip[16], ip[17], ip[18], ip[19]]);
    let dport = u16::from_be_bytes([ip[22], ip[23]]);
    let key = port_key(daddr, dport);
    // SAFETY: a lookup in a map this program owns; the value is not dereferenced.
    if unsafe { PORTS.get(&key) }.is_none() {
        return (pass, Counter::PassNotOurs);
    }
    // SAFETY: reading the context the kernel handed us.
    let queue = unsafe { (*ctx.ctx).rx_queue_index };
    // With XDP_PASS in the flags the kernel passes the packet when no socket is bound
    // on this queue; checking first only tells the two cases apart in the counters.
    if XSKS.get(queue).is_none() {
        return (pass, Counter::PassNoSocket);
    }
    match XSKS.redirect(queue, xdp_action::XDP_PASS as u64) {
        Ok(action) => (action, Counter::Redirected),
        Err(_) => (pass, Counter::PassNoSocket),
    }
}

/// The first `N` bytes at `offset`, if the packet has them.
#[inline(always)]
fn bytes<const N: usize>(ctx: &XdpContext, offset: usize) -> Option<[u8; N]> {
    let start = ctx.data() + offset;
    if start + N > ctx.data_end() {
        return None;
    }
    // SAFETY: `start..start + N` lies inside the packet (checked just above, in the
    // form the verifier tracks).
    Some(unsafe { core::ptr::read_unaligned(start as *const [u8; N]) })
}

#[inline(always)]
fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter.slot()) {
        // SAFETY: a per-CPU slot; nothing else writes it while this program runs here.
        unsafe { *slot += 1 };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
