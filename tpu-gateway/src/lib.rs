//! `tpu-gateway`: Afterburner's service. Clients send signed transactions with
//! agave's `sendTransaction` (JSON-RPC) or `POST /v1/transactions`; each is validated
//! as agave's RPC would (size, deserialization, sanitizing, signatures), deduplicated,
//! and sent through the QUIC engine (`afterburner-quic`, over `afterburner-xdp`'s
//! kernel UDP or AF_XDP packet I/O) to
//! the current and upcoming leaders (`leader-schedule`), then rebroadcast until it
//! lands, runs out of retries or expires. Every accepted transaction is accounted
//! for in Prometheus metrics.
//!
//! - [`config`]: TOML + environment + flags (figment).
//! - [`identity`]: the identity presented to leaders and how it changes while
//!   running (file watch, SIGHUP, admin socket).
//! - [`rpc`], [`validate`], [`http`]: the ingress; [`auth`]: API keys (rates,
//!   queue shares, scoped lifecycles); [`listener`]: every listener's connection
//!   caps and read deadlines.
//! - [`privileges`]: capabilities dropped once the packet path is open.
//! - [`upstream`], [`websocket`]: drop-in RPC, the allow-listed read methods
//!   answered by the cluster RPC, and subscriptions proxied to its websocket.
//! - [`leader_book`]: what each leader did with our sends, and who led the slots
//!   ours landed in; [`refusals`]: leaders that refuse our identity's connection
//!   (`too_many`: its budget taken by another sender with the same identity).
//! - [`service`], [`ledger`], [`dedup`], [`leaders`]: the send path (with the
//!   leader policy: deny, allow, address overrides); the ledger
//!   owns every accepted transaction until its one terminal state.
//! - [`metrics`]: everything exported.
#![forbid(unsafe_code)]

pub mod auth;
pub mod config;
pub mod dedup;
pub mod http;
pub mod identity;
pub mod leader_book;
pub mod leaders;
pub mod ledger;
pub mod listener;
pub mod metrics;
pub mod privileges;
pub mod refusals;
pub mod rpc;
pub mod service;
pub mod upstream;
pub mod validate;
pub mod websocket;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use afterburner_quic::{EngineConfig, EngineHandle, Identity};
use afterburner_xdp::{AnyIo, PacketPath, xdp::XdpConfig};
use anyhow::{Context, Result};
use leader_schedule::{Failover, Fanout, LeaderTracker, TrackerConfig, TrackerStats};

use tokio::{sync::watch, task::JoinHandle};

use crate::{
    config::{Config, PathKind, PreflightMode},
    leaders::{LeaderSource, StaticLeaders, TrackedLeaders},
    metrics::Metrics,
    service::{Forwarder, Preflight, Service, ServiceConfig},
};

/// A running gateway.
pub struct Gateway {
    /// Where JSON-RPC listens.
    pub rpc_addr: SocketAddr,
    /// Where `/metrics` listens.
    pub metrics_addr: SocketAddr,
    /// Where the websocket proxy listens, when it runs.
    pub ws_addr: Option<SocketAddr>,
    /// The service (readiness, metrics).
    pub service: Arc<Service>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    forwarder: JoinHandle<()>,
    _tracker: Option<LeaderTracker>,
    deadline: Duration,
    unready: Duration,
    fatal: watch::Receiver<Option<String>>,
    identity_file: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("rpc_addr", &self.rpc_addr)
            .field("metrics_addr", &self.metrics_addr)
            .finish()
    }
}

impl Gateway {
    /// Starts everything on the current tokio runtime (multi-threaded).
    ///
    /// # Errors
    /// Identity, packet path, engine or listener failures, with context.
    pub async fn start(config: Config) -> Result<Self> {
        Self::start_with_latency_samples(config, 0).await
    }

    /// As [`Self::start`], keeping up to `samples` raw request -> wire latencies for
    /// [`Service::take_latency_samples`] (benchmarks).
    ///
    /// # Errors
    /// As [`Self::start`].
    pub async fn start_with_latency_samples(config: Config, samples: usize) -> Result<Self> {
        let io = open_packet_path(&config)?;
        Self::start_with_io(config, io, samples).await
    }

    /// As [`Self::start_with_latency_samples`], on a packet path opened already
    /// ([`open_packet_path`]: the binary opens it before its runtime starts, then
    /// drops the capabilities it no longer needs).
    ///
    /// # Errors
    /// As [`Self::start`].
    pub async fn start_with_io(config: Config, io: AnyIo, samples: usize) -> Result<Self> {
        let identity = match &config.identity {
            Some(path) => Identity::from_keypair_file(path)
                .with_context(|| format!("identity keypair {}", path.display()))?,
            None => {
                tracing::warn!("no identity configured: using a random, unstaked identity");
                Identity::random()
            }
        };
        tracing::info!(identity = %identity.pubkey(), "identity");
        let path = packet_path(&config);
        let xdp_stats = io.xdp_stats();

        let metrics = Metrics::new().context("metrics")?;
        let tracker_stats = Arc::new(TrackerStats::default());
        let (leaders, tracker): (Arc<dyn LeaderSource>, Option<LeaderTracker>) =
            if config.cluster.static_leaders.is_empty() {
                let timeout = Duration::from_millis(config.cluster.rpc_timeout_ms);
                let source = Arc::new(Failover::from_urls(
                    &config.cluster.rpc_urls,
                    timeout,
                    tracker_stats.clone(),
                ));
                let tracker_config = TrackerConfig {
                    websocket_urls: config.cluster.websocket_urls.clone(),
                    slot_duration: Duration::from_millis(config.cluster.slot_duration_ms),
                    stale_after: Duration::from_secs(config.cluster.stale_after_secs),
                    policy: config.leaders.policy()?,
                    ..TrackerConfig::default()
                };
                let tracker = LeaderTracker::spawn(tracker_config, source, tracker_stats.clone());
                let handle = tracker.handle();
                (
                    Arc::new(TrackedLeaders {
                        handle,
                        fanout: Fanout {
                            send: config.fanout.send,
                            connect: config.fanout.connect,
                            ..Fanout::default()
                        },
                    }),
                    Some(tracker),
                )
            } else {
                (
                    Arc::new(StaticLeaders(config.cluster.static_leaders.clone())),
                    None,
                )
            };

        let rpc_client = upstream::ClusterRpc::new(
            &config.cluster.rpc_urls,
            Duration::from_millis(config.cluster.rpc_timeout_ms),
        )
        .map(Arc::new);
        let preflight = match (config.validation.preflight, &rpc_client) {
            (PreflightMode::Forward, Some(rpc)) => Preflight::Forward(rpc.clone()),
            _ => Preflight::Refuse,
        };

        let engine_config = EngineConfig {
            max_connections: config.engine.max_connections,
            busy_poll: config.engine.busy_poll,
            busy_poll_idle: Duration::from_millis(config.engine.busy_poll_idle_ms),
            max_transaction_size: config.limits.max_transaction_size,
            ..EngineConfig::default()
        };
        let (outcome_tx, outcomes) = service::outcome_channel();
        let shared_identity: identity::SharedIdentity =
            Arc::new(arc_swap::ArcSwap::from_pointee(identity));
        let identity = shared_identity.load_full();
        let engine = EngineHandle::spawn(
            engine_config.clone(),
            &identity,
            io,
            service::outcome_sink(outcome_tx.clone()),
        )
        .context("starting the QUIC engine")?;
        metrics
            .register_sources(
                engine.stats().clone(),
                xdp_stats,
                tracker.as_ref().map(|_| tracker_stats.clone()),
            )
            .context("metrics")?;
        metrics.engine_up.set(1);
        let gate = match &config.auth.keys_file {
            None => None,
            Some(path) => {
                let keys = auth::keys_from_file(path, config.limits.max_tracked)
                    .map_err(anyhow::Error::msg)?;
                for k in keys.all() {
                    metrics.register_key(&k.name);
                }
                tracing::info!(keys = keys.all().len(), "API keys required");
                Some(auth::Gate {
                    keys: Arc::new(keys),
                    unauthorized: metrics.api_unauthorized.clone(),
                })
            }
        };
        metrics
            .identity_info
            .with_label_values(&[identity.pubkey().to_string().as_str()])
            .set(1);
        // A restart reopens the packet path (AF_XDP falls back to kernel UDP as
        // configured) and counts into the same engine counters.
        let start_engine: service::StartEngine = {
            let stats = engine.stats().clone();
            let metrics = metrics.clone();
            // The identity presented now (it may have been switched since start).
            let identity = shared_identity.clone();
            Box::new(move || {
                let io = AnyIo::open(&path).context("reopening the packet path")?;
                metrics.xdp_source.store(io.xdp_stats());
                EngineHandle::spawn_with_stats(
                    engine_config.clone(),
                    &identity.load(),
                    io,
                    service::outcome_sink(outcome_tx.clone()),
                    stats.clone(),
                )
                .context("starting the QUIC engine")
            })
        };
        let (fatal_tx, fatal) = watch::channel(None);
        let supervisor = service::Supervisor::new(
            start_engine,
            config.engine.on_failure,
            config.engine.max_restarts,
            Duration::from_secs(config.engine.restart_window_secs),
            fatal_tx,
        );
        let service_config = ServiceConfig {
            queue: config.limits.queue,
            max_tracked: config.limits.max_tracked,
            retry_interval: Duration::from_millis(config.retry.interval_ms),
            default_max_retries: config.retry.default_max_retries,
            expiry_slots: config.retry.expiry_slots,
            blockhash_grace: Duration::from_millis(config.retry.blockhash_grace_ms),
            nonce_max_age: Duration::from_secs(config.retry.nonce_max_age_secs),
            slot_duration: Duration::from_millis(config.cluster.slot_duration_ms),
            dedup_window: Duration::from_secs(config.limits.dedup_window_secs),
            dedup_capacity: config.limits.dedup_capacity,
            checks: validate::Checks {
                max_size: config.limits.max_transaction_size,
                verify_signatures: config.validation.verify_signatures,
            },
            status_interval: Duration::from_millis(config.retry.status_interval_ms),
            latency_samples: samples,
            instance: instance_name(),
            identity: Some(identity.pubkey()),
            keep_ended: Duration::from_secs(config.limits.keep_ended_secs),
            max_ended: config.limits.max_ended,
        };
        let (service, intake) = Service::new(
            service_config,
            leaders,
            metrics,
            preflight,
            engine.submitter(),
            shared_identity,
            upstream::Upstream::new(
                rpc_client.clone(),
                &config.rpc.forward_methods,
                config.rpc.forward_concurrency,
            ),
        );
        if tracker.is_some() {
            // The gauges show the configured policy from the start.
            service
                .set_leader_policy(config.leaders.policy()?, "config")
                .map_err(anyhow::Error::msg)?;
        }
        let forwarder = Forwarder::new(intake, outcomes, engine, &service, rpc_client)
            .with_supervisor(supervisor);
        let (stop, stop_rx) = watch::channel(false);
        let deadline = config.shutdown_deadline();
        let forwarder = tokio::spawn(forwarder.run(stop_rx.clone(), deadline));

        let rpc_listener = tokio::net::TcpListener::bind(config.rpc.listen)
            .await
            .with_context(|| format!("binding rpc.listen {}", config.rpc.listen))?;
        let metrics_listener = tokio::net::TcpListener::bind(config.metrics.listen)
            .await
            .with_context(|| format!("binding metrics.listen {}", config.metrics.listen))?;
        let rpc_addr = rpc_listener.local_addr()?;
        let metrics_addr = metrics_listener.local_addr()?;
        let guard = listener::Guard {
            max_connections: config.rpc.max_connections,
            max_connections_per_ip: config.rpc.max_connections_per_ip,
            header_timeout: Duration::from_millis(config.rpc.header_read_timeout_ms),
            body_timeout: Duration::from_millis(config.rpc.body_read_timeout_ms),
        };
        let refused = service.metrics().connections_refused.clone();
        let mut tasks = vec![
            listener::serve(
                "rpc",
                rpc_listener,
                http::router(service.clone(), config.rpc.max_request_bytes, gate.clone()),
                guard,
                refused.clone(),
                stop_rx.clone(),
            ),
            listener::serve(
                "metrics",
                metrics_listener,
                http::metrics_router(service.clone()),
                guard,
                refused.clone(),
                stop_rx.clone(),
            ),
        ];
        let ws_addr = if config.rpc.websocket_proxy && !config.cluster.websocket_urls.is_empty() {
            let addr = config.rpc.websocket_addr();
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding rpc.websocket_listen {addr}"))?;
            let local = listener.local_addr()?;
            let proxy = websocket::WsProxy::new(
                config.cluster.websocket_urls.clone(),
                config.rpc.websocket_max_clients,
                config.rpc.websocket_max_subscriptions,
                service.metrics().clone(),
            );
            tasks.push(listener::serve(
                "websocket",
                listener,
                websocket::router(proxy, gate),
                guard,
                refused,
                stop_rx.clone(),
            ));
            Some(local)
        } else {
            None
        };
        if let (Some(path), true) = (&config.identity, config.identity_watch_ms > 0) {
            tasks.push(tokio::spawn(identity::watch_file(
                service.clone(),
                path.clone(),
                Duration::from_millis(config.identity_watch_ms),
                stop_rx.clone(),
            )));
        }
        if let Some(socket) = &config.admin.socket {
            tasks.push(
                identity::serve_admin(
                    service.clone(),
                    socket,
                    config.identity.clone(),
                    stop_rx.clone(),
                )
                .with_context(|| format!("admin.socket {}", socket.display()))?,
            );
        }
        tracing::info!(%rpc_addr, %metrics_addr, ?ws_addr, "tpu-gateway listening");
        Ok(Self {
            rpc_addr,
            metrics_addr,
            ws_addr,
            service,
            stop,
            tasks,
            forwarder,
            _tracker: tracker,
            deadline,
            unready: Duration::from_millis(config.shutdown_unready_ms),
            fatal,
            identity_file: config.identity.clone(),
        })
    }

    /// Re-reads the configuration's leader policy (SIGHUP, with the identity).
    ///
    /// # Errors
    /// As [`Service::reload_leader_policy`].
    pub fn reload_leader_policy(&self) -> Result<(), String> {
        self.service.reload_leader_policy("sighup").map(|_| ())
    }

    /// Re-reads the configured identity file and switches to it (SIGHUP). Returns
    /// the identity now presented.
    ///
    /// # Errors
    /// No identity file configured, not a keypair (the old identity stays), or the
    /// switch failed.
    pub async fn reload_identity(&self) -> Result<String, String> {
        let Some(path) = &self.identity_file else {
            return Err("no identity file is configured".into());
        };
        let result = identity::reload(&self.service, path, identity::Source::Sighup).await;
        if result.is_err() {
            self.service.count_identity_error(identity::Source::Sighup);
        }
        result
    }

    /// Resolves when the gateway cannot go on (`engine.on_failure = "exit"`, or
    /// restarts exhausted), with why: the binary then shuts down and exits non-zero.
    pub async fn failed(&mut self) -> String {
        loop {
            if let Some(why) = self.fatal.borrow_and_update().clone() {
                return why;
            }
            if self.fatal.changed().await.is_err() {
                // The forwarder is gone without a word: nothing will ever come.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Stops accepting, sends what is queued within the shutdown deadline, stops
    /// the engine (detaching XDP) and the listeners. `/ready` answers 503 first,
    /// for `shutdown_unready_ms`, while sends are still accepted.
    pub async fn shutdown(self) {
        if !self.unready.is_zero() {
            self.service.mark_unready();
            tracing::info!(
                for_ms = self.unready.as_millis(),
                "not ready; draining after"
            );
            tokio::time::sleep(self.unready).await;
        }
        self.service.stop_accepting();
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(self.deadline + Duration::from_secs(2), self.forwarder).await;
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
        }
        let a = self.service.metrics().accounting.snapshot();
        tracing::info!(
            accepted = a.accepted,
            sent = a.sent,
            dropped = a.dropped_total(),
            in_flight = a.in_flight,
            "final accounting"
        );
    }
}

/// Serves `router` on `listener` until `stop` turns true (graceful: requests in
/// progress finish).
/// The packet path `config` asks for.
pub fn packet_path(config: &Config) -> PacketPath {
    match config.packet_path.kind {
        PathKind::Udp => PacketPath::Udp(config.packet_path.bind),
        PathKind::Xdp => PacketPath::Xdp {
            config: XdpConfig {
                port: config.packet_path.xdp_port,
                ..XdpConfig::new(config.packet_path.interface.clone().unwrap_or_default())
            },
            fallback: config
                .packet_path
                .xdp_fallback_to_udp
                .then_some(config.packet_path.bind),
        },
    }
}

/// Opens the packet path `config` asks for (AF_XDP falling back to kernel UDP as
/// configured).
///
/// # Errors
/// Nothing could be opened (the error names why).
pub fn open_packet_path(config: &Config) -> Result<AnyIo> {
    AnyIo::open(&packet_path(config)).context("opening the packet path")
}

/// This instance's name: the host's (a pod's name in Kubernetes), else
/// `afterburner`.
fn instance_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "afterburner".into())
}

/// Installs the `tracing` subscriber the configuration asks for (`[log]`); `RUST_LOG`
/// overrides the level. Colours only on a terminal: journald and log files get
/// plain text.
pub fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    match config.log.format {
        config::LogFormat::Json => builder.json().init(),
        config::LogFormat::Text => builder.init(),
    }
}
