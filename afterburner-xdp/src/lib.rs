//! Afterburner's packet I/O: datagrams in and out in batches, through the kernel or
//! around it. The QUIC engine (`afterburner-quic`) sees only the [`io::PacketIo`]
//! trait.
//!
//! - [`batch`], [`io`]: the batch types and the trait.
//! - [`udp`]: the kernel UDP backend (sendmmsg + UDP GSO, recvmmsg).
//! - [`xdp`]: the AF_XDP backend: our own Ethernet/IPv4/UDP frames, UMEM and rings,
//!   next hops from netlink, and the steering XDP program (`afterburner-ebpf`,
//!   checked in prebuilt) that takes only replies to our own ports.
//! - [`path`]: [`AnyIo`], the configured choice of the two, with the fallback rule.

pub mod batch;
pub mod io;
pub mod path;
pub mod udp;
pub mod xdp;

pub use path::{AnyIo, PacketPath, PathError};
