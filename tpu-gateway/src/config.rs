//! The gateway's configuration: one TOML file, then `AFTERBURNER_*` environment
//! variables, then command-line flags, each overriding the one before. Unknown keys
//! are errors that name the key. Durations are integers with their unit in the
//! name (`_ms`, `_secs`). `deploy/tpu-gateway.toml` documents every key.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

/// The whole configuration.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Validator identity keypair file (JSON array of 64 numbers); unset: a random,
    /// unstaked identity (logged as a warning).
    pub identity: Option<PathBuf>,
    /// Grace period on SIGTERM/SIGINT to send what is queued.
    pub shutdown_deadline_ms: u64,
    /// On SIGTERM/SIGINT, `/ready` answers 503 this long before the drain starts
    /// (still accepting meanwhile), so load balancers stop routing here first.
    pub shutdown_unready_ms: u64,
    /// How often the `identity` file is looked at for a change (a rewrite or a
    /// symlink swap switches to it); 0: only on SIGHUP or the admin socket.
    pub identity_watch_ms: u64,
    /// The admin socket.
    pub admin: AdminSection,
    /// JSON-RPC / HTTP ingress.
    pub rpc: RpcSection,
    /// Prometheus endpoint.
    pub metrics: MetricsSection,
    /// Where the cluster is.
    pub cluster: ClusterSection,
    /// Leaders to send to / connect to.
    pub fanout: FanoutSection,
    /// Rebroadcasting.
    pub retry: RetrySection,
    /// Bounds.
    pub limits: LimitsSection,
    /// Checks before sending.
    pub validation: ValidationSection,
    /// UDP or AF_XDP.
    pub packet_path: PacketPathSection,
    /// QUIC engine.
    pub engine: EngineSection,
    /// Several gateways sharing one identity.
    pub fleet: FleetSection,
    /// Logging.
    pub log: LogSection,
}

/// `[rpc]`
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RpcSection {
    /// Listen address (default loopback only).
    pub listen: SocketAddr,
    /// Largest request body (agave: 50 KiB).
    pub max_request_bytes: usize,
    /// JSON-RPC methods answered by the cluster RPC (`cluster.rpc_urls`, with
    /// failover), so a client can use the gateway as its only RPC URL. Empty, or no
    /// `cluster.rpc_urls` (static leaders only): off, and they answer -32601.
    pub forward_methods: Vec<String>,
    /// Forwarded calls in flight at most; more are refused (-32005).
    pub forward_concurrency: usize,
    /// Proxy websocket subscriptions to `cluster.websocket_urls` (off without them).
    pub websocket_proxy: bool,
    /// Where the websocket proxy listens (default: `listen` with port + 1, where
    /// `@solana/web3.js` looks; port 0 stays 0).
    pub websocket_listen: Option<SocketAddr>,
    /// Websocket clients at once; more are answered 503.
    pub websocket_max_clients: usize,
    /// Subscriptions per websocket client; more are refused (-32005).
    pub websocket_max_subscriptions: usize,
}

impl RpcSection {
    /// Where the websocket proxy listens.
    pub fn websocket_addr(&self) -> SocketAddr {
        self.websocket_listen.unwrap_or_else(|| {
            let port = match self.listen.port() {
                0 => 0,
                p => p.saturating_add(1),
            };
            SocketAddr::new(self.listen.ip(), port)
        })
    }
}

/// The read methods a sending client needs (blockhash, block height, signature
/// statuses, account and balance reads, fee estimates, simulation): what
/// `rpc.forward_methods` holds by default. Not `getProgramAccounts` (heavy), not
/// `requestAirdrop` (not a read).
pub const DEFAULT_FORWARD_METHODS: [&str; 20] = [
    "getAccountInfo",
    "getBalance",
    "getBlockHeight",
    "getEpochInfo",
    "getFeeForMessage",
    "getGenesisHash",
    "getLatestBlockhash",
    "getMinimumBalanceForRentExemption",
    "getMultipleAccounts",
    "getRecentPrioritizationFees",
    "getSignatureStatuses",
    "getSignaturesForAddress",
    "getSlot",
    "getTokenAccountBalance",
    "getTokenAccountsByOwner",
    "getTransaction",
    "getTransactionCount",
    "getEpochSchedule",
    "isBlockhashValid",
    "simulateTransaction",
];

/// `[metrics]`
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// Listen address for `/metrics` (default loopback only).
    pub listen: SocketAddr,
}

/// `[cluster]`
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    /// RPC endpoints, in order of preference (failover).
    pub rpc_urls: Vec<String>,
    /// Websocket endpoints (slot updates).
    pub websocket_urls: Vec<String>,
    /// RPC call timeout.
    pub rpc_timeout_ms: u64,
    /// Fixed TPU QUIC addresses: when set, always send to these (no leader tracking).
    pub static_leaders: Vec<SocketAddr>,
    /// Slot duration.
    pub slot_duration_ms: u64,
    /// No slot observed for this long: the schedule is reported stale (a reason
    /// shown, not a refusal).
    pub stale_after_secs: u64,
}

/// `[fanout]`
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FanoutSection {
    /// Leaders each transaction goes to.
    pub send: usize,
    /// Leaders kept connected (pre-warmed).
    pub connect: usize,
}

/// `[retry]`
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetrySection {
    /// Rebroadcast interval.
    pub interval_ms: u64,
    /// Rebroadcasts when the client gives no `maxRetries` (unset: until expiry).
    pub default_max_retries: Option<usize>,
    /// Slots after acceptance a transaction is given up at the latest (normally its
    /// blockhash expires it first: see `blockhash_grace_ms`).
    pub expiry_slots: u64,
    /// A blockhash the cluster RPC calls invalid (`isBlockhashValid`) this long in a
    /// row expires its transactions.
    pub blockhash_grace_ms: u64,
    /// A durable-nonce transaction is given up this long after acceptance.
    pub nonce_max_age_secs: u64,
    /// How often landed status is polled (`getSignatureStatuses`).
    pub status_interval_ms: u64,
}

/// `[limits]`
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Accepted transactions waiting to be sent; beyond it, HTTP 429.
    pub queue: usize,
    /// Transactions tracked for rebroadcast.
    pub max_tracked: usize,
    /// Duplicate window.
    pub dedup_window_secs: u64,
    /// Signatures remembered for duplicates.
    pub dedup_capacity: usize,
}

/// `[validation]`
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ValidationSection {
    /// Verify every signature before sending.
    pub verify_signatures: bool,
    /// `skipPreflight: false`: "forward" (simulate on the first RPC URL) or "refuse".
    pub preflight: PreflightMode,
}

/// What `skipPreflight: false` does.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PreflightMode {
    /// Simulate on the configured RPC.
    Forward,
    /// Refuse with a clear message.
    Refuse,
}

/// `[packet_path]`
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PacketPathSection {
    /// "udp" or "xdp".
    pub kind: PathKind,
    /// Kernel UDP bind address (also the XDP fallback's).
    pub bind: SocketAddr,
    /// AF_XDP interface.
    pub interface: Option<String>,
    /// Our QUIC port on the AF_XDP path (0: any).
    pub xdp_port: u16,
    /// Fall back to kernel UDP when AF_XDP cannot be set up.
    pub xdp_fallback_to_udp: bool,
}

/// Packet path kind.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PathKind {
    /// Kernel UDP.
    Udp,
    /// AF_XDP.
    Xdp,
}

/// `[admin]`: a JSON-RPC on a unix socket, off the public listeners
/// (`getIdentity`, `setIdentity`, `setIdentityFromBytes`, `resetIdentity`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    /// The socket's path (created mode 0600; peers of another user than ours or
    /// root are refused); unset: no admin socket.
    pub socket: Option<PathBuf>,
}

/// `[engine]`
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSection {
    /// Open connections at most (split a shared identity's budget across a fleet).
    pub max_connections: usize,
    /// Busy-poll the packet path.
    pub busy_poll: bool,
    /// Busy-poll this long after the last work before sleeping.
    pub busy_poll_idle_ms: u64,
    /// What to do when the engine thread ends on its own (an I/O error such as a
    /// NIC reset, a panic).
    pub on_failure: OnEngineFailure,
    /// `restart`: at most this many restarts within `restart_window_secs`; one more
    /// failure exits non-zero.
    pub max_restarts: u32,
    /// The window `max_restarts` counts in.
    pub restart_window_secs: u64,
}

/// `engine.on_failure`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnEngineFailure {
    /// Reopen the packet path and start a new engine in the same process: tracked
    /// transactions stay and are rebroadcast on the new connections.
    Restart,
    /// Stop accepting, drain what can be accounted, and exit non-zero for
    /// systemd or Kubernetes to restart the process.
    Exit,
}

/// `[fleet]`: gateways that present the same identity share agave's per-identity
/// connection cap; each keeps one connection per leader, so
/// `instances + reserved_connections <= peer_connection_cap` (checked at start).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FleetSection {
    /// Gateways presenting this identity, this one included.
    pub instances: usize,
    /// Connections a leader accepts per identity (agave `max_connections_per_peer`:
    /// 8 in 3.x, 16 with agave PR #8922, 1 in the test validator).
    pub peer_connection_cap: usize,
    /// Connections per leader left to others using the identity (the validator's
    /// own sending: its send-transaction-service and forwarding).
    pub reserved_connections: usize,
}

/// Connections one gateway keeps to each leader.
pub const CONNECTIONS_PER_LEADER: usize = 1;

impl Default for FleetSection {
    fn default() -> Self {
        Self {
            instances: 1,
            peer_connection_cap: 8,
            reserved_connections: 1,
        }
    }
}

/// `[log]`
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// "text" or "json".
    pub format: LogFormat,
    /// A `tracing` filter (`RUST_LOG` overrides).
    pub level: String,
}

/// Log format.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable.
    Text,
    /// One JSON object per line.
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            identity: None,
            shutdown_deadline_ms: 5_000,
            shutdown_unready_ms: 0,
            identity_watch_ms: 1_000,
            admin: AdminSection::default(),
            rpc: RpcSection::default(),
            metrics: MetricsSection::default(),
            cluster: ClusterSection::default(),
            fanout: FanoutSection::default(),
            retry: RetrySection::default(),
            limits: LimitsSection::default(),
            validation: ValidationSection::default(),
            packet_path: PacketPathSection::default(),
            engine: EngineSection::default(),
            fleet: FleetSection::default(),
            log: LogSection::default(),
        }
    }
}

// Field defaults live in each section's `Default`: serde fills a section that is
// present but incomplete from it (a derived, all-zero default once made a
// `[cluster]` section without `slot_duration_ms` spin at 0 ms).
impl Default for ClusterSection {
    fn default() -> Self {
        Self {
            rpc_urls: Vec::new(),
            websocket_urls: Vec::new(),
            rpc_timeout_ms: 5_000,
            static_leaders: Vec::new(),
            slot_duration_ms: 400,
            stale_after_secs: 30,
        }
    }
}

impl Default for RpcSection {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8899)),
            max_request_bytes: 50 * 1024,
            forward_methods: DEFAULT_FORWARD_METHODS.map(String::from).to_vec(),
            forward_concurrency: 64,
            websocket_proxy: true,
            websocket_listen: None,
            websocket_max_clients: 256,
            websocket_max_subscriptions: 100,
        }
    }
}

impl Default for MetricsSection {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
        }
    }
}

impl Default for FanoutSection {
    fn default() -> Self {
        Self {
            send: 2,
            connect: 3,
        }
    }
}

impl Default for RetrySection {
    fn default() -> Self {
        Self {
            interval_ms: 2_000,
            default_max_retries: None,
            expiry_slots: 150,
            blockhash_grace_ms: 10_000,
            nonce_max_age_secs: 300,
            status_interval_ms: 1_000,
        }
    }
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            queue: 10_000,
            max_tracked: 100_000,
            dedup_window_secs: 60,
            dedup_capacity: 200_000,
        }
    }
}

impl Default for ValidationSection {
    fn default() -> Self {
        Self {
            verify_signatures: true,
            preflight: PreflightMode::Forward,
        }
    }
}

impl Default for PacketPathSection {
    fn default() -> Self {
        Self {
            kind: PathKind::Udp,
            bind: SocketAddr::from(([0, 0, 0, 0], 0)),
            interface: None,
            xdp_port: 0,
            xdp_fallback_to_udp: true,
        }
    }
}

impl Default for EngineSection {
    fn default() -> Self {
        Self {
            max_connections: 64,
            busy_poll: false,
            busy_poll_idle_ms: 5,
            on_failure: OnEngineFailure::Restart,
            max_restarts: 5,
            restart_window_secs: 600,
        }
    }
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

impl Config {
    /// Parses TOML text, then applies `env` (`AFTERBURNER_SECTION__KEY=value`, or
    /// `AFTERBURNER_KEY` for top-level keys; values parsed as TOML, else strings).
    ///
    /// # Errors
    /// Syntax errors, unknown keys (named), wrong types, and [`Self::validate`].
    pub fn from_toml(text: &str, env: impl IntoIterator<Item = (String, String)>) -> Result<Self> {
        let mut table: toml::Table = text.parse().context("config is not valid TOML")?;
        for (key, value) in env {
            let Some(path) = key.strip_prefix("AFTERBURNER_") else {
                continue;
            };
            let parts: Vec<String> = path.split("__").map(str::to_lowercase).collect();
            let parsed = format!("v = {value}")
                .parse::<toml::Table>()
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or(toml::Value::String(value.clone()));
            let mut cursor = &mut table;
            for section in &parts[..parts.len() - 1] {
                cursor = cursor
                    .entry(section.clone())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                    .as_table_mut()
                    .with_context(|| format!("{key}: {section} is not a section"))?;
            }
            if let Some(last) = parts.last() {
                cursor.insert(last.clone(), parsed);
            }
        }
        let config: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| anyhow::anyhow!("{}", e.message().trim()))
            .context("invalid configuration")?;
        config.validate()?;
        Ok(config)
    }

    /// Reads `path` (or defaults when `None`) and applies the process environment.
    ///
    /// # Errors
    /// As [`Self::from_toml`], and an unreadable file (named).
    pub fn load(path: Option<&std::path::Path>) -> Result<Self> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p)
                .with_context(|| format!("reading config file {}", p.display()))?,
            None => String::new(),
        };
        Self::from_toml(&text, std::env::vars())
    }

    /// Checks what types cannot: consistency between sections.
    ///
    /// # Errors
    /// The first inconsistency, naming the keys.
    pub fn validate(&self) -> Result<()> {
        if self.cluster.static_leaders.is_empty() && self.cluster.rpc_urls.is_empty() {
            bail!(
                "cluster.rpc_urls is empty and cluster.static_leaders is not set: nowhere to learn leaders from"
            );
        }
        if self.packet_path.kind == PathKind::Xdp && self.packet_path.interface.is_none() {
            bail!("packet_path.kind = \"xdp\" needs packet_path.interface");
        }
        if self.fanout.send == 0 {
            bail!("fanout.send must be at least 1");
        }
        for (key, v) in [
            ("cluster.slot_duration_ms", self.cluster.slot_duration_ms),
            ("cluster.rpc_timeout_ms", self.cluster.rpc_timeout_ms),
            ("cluster.stale_after_secs", self.cluster.stale_after_secs),
            ("retry.interval_ms", self.retry.interval_ms),
            ("retry.status_interval_ms", self.retry.status_interval_ms),
            ("retry.nonce_max_age_secs", self.retry.nonce_max_age_secs),
            (
                "engine.restart_window_secs",
                self.engine.restart_window_secs,
            ),
        ] {
            if v == 0 {
                bail!("{key} must be at least 1");
            }
        }
        let f = &self.fleet;
        let needed = f.instances * CONNECTIONS_PER_LEADER + f.reserved_connections;
        if f.instances == 0 || needed > f.peer_connection_cap {
            bail!(
                "fleet: {} instances x {CONNECTIONS_PER_LEADER} connection per leader + {} reserved = {needed} \
                 connections per leader for this identity, over fleet.peer_connection_cap = {} \
                 (leaders refuse the excess): run fewer instances per identity",
                f.instances,
                f.reserved_connections,
                f.peer_connection_cap
            );
        }
        if !self.rpc.forward_methods.is_empty() && self.rpc.forward_concurrency == 0 {
            bail!("rpc.forward_concurrency must be at least 1");
        }
        if self.limits.queue == 0 || self.limits.max_tracked == 0 {
            bail!("limits.queue and limits.max_tracked must be at least 1");
        }
        if self.validation.preflight == PreflightMode::Forward && self.cluster.rpc_urls.is_empty() {
            bail!(
                "validation.preflight = \"forward\" needs cluster.rpc_urls (or set it to \"refuse\")"
            );
        }
        Ok(())
    }

    /// Shutdown grace.
    pub fn shutdown_deadline(&self) -> Duration {
        Duration::from_millis(self.shutdown_deadline_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> &'static str {
        "[cluster]\nrpc_urls = [\"http://127.0.0.1:8899\"]\n"
    }

    /// A section that is present keeps the defaults of the keys it leaves out.
    #[test]
    fn partial_sections_keep_the_other_defaults() {
        let c = Config::from_toml(base(), []).unwrap();
        let expected = Config {
            cluster: ClusterSection {
                rpc_urls: vec!["http://127.0.0.1:8899".into()],
                ..ClusterSection::default()
            },
            ..Config::default()
        };
        assert_eq!(c, expected);
        assert_eq!(c.cluster.slot_duration_ms, 400);
        assert_eq!(c.cluster.rpc_timeout_ms, 5_000);
        assert_eq!(c.cluster.stale_after_secs, 30);
        let every_section_empty = "[cluster]\nrpc_urls = [\"http://127.0.0.1:8899\"]\n\
            [rpc]\n[metrics]\n[fanout]\n[retry]\n[limits]\n[validation]\n[packet_path]\n[engine]\n[log]\n";
        assert_eq!(
            Config::from_toml(every_section_empty, []).unwrap(),
            expected
        );
    }

    #[test]
    fn zero_durations_are_refused_by_name() {
        let text = format!("{}slot_duration_ms = 0\n", base());
        let e = Config::from_toml(&text, []).unwrap_err();
        assert!(e.to_string().contains("cluster.slot_duration_ms"), "{e}");
        let text = format!("{}[retry]\ninterval_ms = 0\n", base());
        let e = Config::from_toml(&text, []).unwrap_err();
        assert!(e.to_string().contains("retry.interval_ms"), "{e}");
    }

    #[test]
    fn a_fleet_must_fit_the_per_identity_connection_cap() {
        let ok = format!("{}[fleet]\ninstances = 7\n", base());
        assert_eq!(Config::from_toml(&ok, []).unwrap().fleet.instances, 7);
        let over = format!("{}[fleet]\ninstances = 8\n", base());
        let e = Config::from_toml(&over, []).unwrap_err().to_string();
        assert!(
            e.contains("8 instances x 1 connection per leader + 1 reserved = 9"),
            "{e}"
        );
    }

    #[test]
    fn defaults_bind_loopback() {
        let c = Config::from_toml(base(), []).unwrap();
        assert!(c.rpc.listen.ip().is_loopback());
        assert!(c.metrics.listen.ip().is_loopback());
        assert_eq!(
            c.fanout,
            FanoutSection {
                send: 2,
                connect: 3
            }
        );
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = Config::from_toml(&format!("{}colour = 1\n", base()), []).unwrap_err();
        assert!(format!("{e:#}").contains("colour"), "{e:#}");
        let e = Config::from_toml(&format!("{}[retry]\nintervl_ms = 5\n", base()), []).unwrap_err();
        assert!(format!("{e:#}").contains("intervl_ms"), "{e:#}");
    }

    #[test]
    fn environment_overrides_the_file() {
        let env = [
            (
                "AFTERBURNER_RPC__LISTEN".to_string(),
                "127.0.0.1:9000".to_string(),
            ),
            ("AFTERBURNER_FANOUT__SEND".to_string(), "4".to_string()),
            ("AFTERBURNER_LOG__FORMAT".to_string(), "json".to_string()),
            ("OTHER".to_string(), "x".to_string()),
        ];
        let c = Config::from_toml(base(), env).unwrap();
        assert_eq!(c.rpc.listen.port(), 9000);
        assert_eq!(c.fanout.send, 4);
        assert_eq!(c.log.format, LogFormat::Json);
        let e =
            Config::from_toml(base(), [("AFTERBURNER_RPC__LISTN".into(), "x".into())]).unwrap_err();
        assert!(format!("{e:#}").contains("listn"), "{e:#}");
    }

    #[test]
    fn inconsistencies_are_named() {
        let e = Config::from_toml("", []).unwrap_err();
        assert!(format!("{e:#}").contains("cluster.rpc_urls"), "{e:#}");
        let e = Config::from_toml(&format!("{}[packet_path]\nkind = \"xdp\"\n", base()), [])
            .unwrap_err();
        assert!(format!("{e:#}").contains("packet_path.interface"), "{e:#}");
    }
}
