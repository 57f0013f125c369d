//! The engine against agave's own TPU QUIC server (`solana-streamer` 3.1), started in
//! this process: over kernel UDP on loopback ([`udp`]) and, as root, over AF_XDP
//! between network namespaces ([`xdp`]). No mocks: the server, its QoS and its
//! stream rules are agave's. One test binary, so the shared [`client`] is compiled
//! once and every part of it is used.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failure should stop it loudly"
)]

mod client;
mod impaired;
mod udp;
mod xdp;
