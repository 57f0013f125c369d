//! Afterburner's TPU QUIC engine. It hands signed Solana transactions to leaders'
//! TPU ports over QUIC (ALPN `solana-tpu`), presenting the validator identity as the
//! TLS client certificate, one transaction per unidirectional stream, exactly as
//! agave's TPU server expects. Packet I/O is `afterburner-xdp`'s `PacketIo`.
//!
//! - [`engine`]: the sans-IO connection manager on cloudflare quiche: the connection
//!   table and its LRU eviction, one connection's state machine, the reconnect
//!   backoff policy, the payload buffers.
//! - [`identity`]: the keypair, agave-layout certificate and BoringSSL context.
//! - [`driver`]: the engine thread, fed through a bounded queue.
//! - [`outcome`], [`stats`]: one outcome per submission, and the engine's counters.
//! - [`config`], [`protocol`]: the engine's knobs; the protocol's constants.
#![forbid(unsafe_code)]

pub mod config;
pub mod driver;
pub mod engine;
pub mod identity;
pub mod outcome;
pub mod protocol;
pub mod stats;

pub use config::EngineConfig;
pub use driver::{
    Availability, EngineHandle, EngineSubmitter, OutcomeSink, Submission, SubmitError,
};
pub use engine::{ConnectionInfo, Engine, EngineError};
pub use identity::Identity;
pub use outcome::{DropReason, Outcome, OutcomeKind};
pub use stats::{EngineStats, EngineStatsSnapshot};
