//! Afterburner's packet core. It hands signed Solana transactions to leaders' TPU
//! ports over QUIC (ALPN `solana-tpu`), presenting the validator identity as the TLS
//! client certificate, one transaction per unidirectional stream, exactly as agave's
//! TPU server expects.
//!
//! - [`identity`]: the keypair, agave-layout certificate and BoringSSL context.
//! - [`engine`]: the sans-IO connection manager on cloudflare quiche.
//! - [`io`], [`udp`], [`batch`]: the batch-oriented packet I/O trait and its kernel
//!   UDP backend (sendmmsg + UDP GSO).
//! - [`xdp`]: the AF_XDP backend of the same trait (our own frames, the steering
//!   XDP program, UMEM and rings), and [`AnyIo`], the configured choice of the two.
//! - [`driver`]: the engine thread, fed through a bounded queue.
//! - [`outcome`], [`stats`]: one outcome per submission, and every counter.

pub mod batch;
pub mod config;
pub mod driver;
pub mod engine;
pub mod identity;
pub mod io;
pub mod outcome;
pub mod path;
pub mod stats;
pub mod udp;
pub mod xdp;

pub use config::EngineConfig;
pub use driver::{EngineHandle, EngineSubmitter, OutcomeSink, Submission, SubmitError};
pub use engine::{ConnectionInfo, Engine, EngineError};
pub use identity::Identity;
pub use outcome::{DropReason, Outcome, OutcomeKind};
pub use path::{AnyIo, PacketPath, PathError};
pub use stats::{EngineStats, EngineStatsSnapshot};
