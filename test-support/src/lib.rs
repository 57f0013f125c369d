//! Test support shared by the workspace's tests, benchmarks and `./x netns`: agave's
//! real TPU QUIC server in-process ([`agave`]), payloads and signed transfers
//! ([`txs`]), the two-namespace veth topology the root-only tests run in
//! ([`netns`]), the gateway's lifecycle event stream read back ([`sse`]), and a
//! scripted several-leader cluster RPC ([`cluster`]).
//!
//! The default feature `agave` brings the agave server and the transaction
//! generators (solana-streamer, solana-sdk); without it only [`netns`] and
//! [`mono_ns`] remain, which is all `xtask` needs.
#![allow(
    clippy::unwrap_used,
    clippy::missing_panics_doc,
    reason = "test support: a failure should stop the test loudly"
)]

#[cfg(feature = "agave")]
pub mod agave;
#[cfg(feature = "agave")]
pub mod cluster;
pub mod impair;
pub mod netns;
pub mod prom;
pub mod relay;
pub mod sse;
#[cfg(feature = "agave")]
pub mod txs;

#[cfg(feature = "agave")]
pub use agave::{AgaveServer, Delivered};
#[cfg(feature = "agave")]
pub use txs::{payload, signed_transfers};

/// CLOCK_MONOTONIC in nanoseconds: comparable across processes (the benchmark's
/// client and server), unlike `Instant`.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes into a live timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
