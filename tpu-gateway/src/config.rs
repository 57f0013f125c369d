//! The gateway's configuration: one TOML file, then `AFTERBURNER_*` environment
//! variables, then command-line flags, each overriding the one before. Unknown keys
//! are errors that name the key. Durations are integers with their unit in the
//! name (`_ms`, `_secs`). `deploy/tpu-gateway.toml` documents every key. Loading
//! is figment's (merging, provenance): an error names the key and the source it
//! came from (the file, the variable, the flag).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{Context, Result, bail};
use figment::{
    Figment,
    providers::{Format as _, Serialized, Toml},
};
use leader_schedule::LeaderPolicy;
use serde::Deserialize;
use solana_sdk::pubkey::Pubkey;
use std::str::FromStr as _;

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
    /// API keys.
    pub auth: AuthSection,
    /// JSON-RPC / HTTP ingress.
    pub rpc: RpcSection,
    /// Prometheus endpoint.
    pub metrics: MetricsSection,
    /// Where the cluster is.
    pub cluster: ClusterSection,
    /// Leaders to send to / connect to.
    pub fanout: FanoutSection,
    /// Which leaders (deny and allow lists) and where (TPU address overrides).
    pub leaders: LeadersSection,
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
    /// Open connections at most, on each listener (JSON-RPC, websocket, metrics);
    /// more are closed as they arrive (`afterburner_http_connections_refused_total`).
    pub max_connections: usize,
    /// Open connections from one client address at most, on each listener (behind
    /// a load balancer every client has its address: raise it there).
    pub max_connections_per_ip: usize,
    /// A request's headers, and a keep-alive connection's next request, must
    /// arrive within this, or the connection is closed (slow or idle clients).
    pub header_read_timeout_ms: u64,
    /// A request's body must arrive within this.
    pub body_read_timeout_ms: u64,
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

/// `[leaders]`: the leader policy. Reloaded with the identity (SIGHUP, and the admin
/// socket's `reloadLeaderPolicy`); needs a tracked schedule (`cluster.rpc_urls`):
/// static leaders have no identities.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LeadersSection {
    /// Leader identities never sent to; their slots are passed over in the fanout
    /// (counted in `afterburner_leader_policy_skips_total{reason="denied"}`).
    pub deny: Vec<String>,
    /// When not empty, only these leader identities are sent to (the deny list
    /// still applies).
    pub allow: Vec<String>,
    /// TPU QUIC addresses by leader identity, winning over gossip (private peering).
    pub tpu_overrides: std::collections::BTreeMap<String, SocketAddr>,
}

impl LeadersSection {
    /// The policy these keys describe.
    ///
    /// # Errors
    /// A value that is not a base58 pubkey, naming the key and the value.
    pub fn policy(&self) -> Result<LeaderPolicy> {
        let parse = |key: &str, text: &str| {
            Pubkey::from_str(text)
                .map_err(|e| anyhow::anyhow!("leaders.{key}: {text:?} is not a pubkey ({e})"))
        };
        Ok(LeaderPolicy {
            deny: self
                .deny
                .iter()
                .map(|t| parse("deny", t))
                .collect::<Result<_>>()?,
            allow: self
                .allow
                .iter()
                .map(|t| parse("allow", t))
                .collect::<Result<_>>()?,
            overrides: self
                .tpu_overrides
                .iter()
                .map(|(t, addr)| Ok((parse("tpu_overrides", t)?, *addr)))
                .collect::<Result<_>>()?,
        })
    }
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
    /// Ended transactions' lifecycle records are kept this long for queries.
    pub keep_ended_secs: u64,
    /// At most this many ended records are kept (the oldest go first).
    pub max_ended: usize,
    /// Largest transaction, in bytes: validation (raw and encoded sizes) and the
    /// engine both enforce it. At most 1232 (agave's `PACKET_DATA_SIZE`) until
    /// SIMD-0296's larger transactions are supported by the agave crates and TPU
    /// servers.
    pub max_transaction_size: usize,
}

/// The largest `limits.max_transaction_size` today: agave 3.1's `PACKET_DATA_SIZE`.
pub const MAX_TRANSACTION_SIZE: usize = solana_packet::PACKET_DATA_SIZE;

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
    /// Once the path is open, keep only the capabilities a running path uses
    /// (none for kernel UDP; CAP_NET_ADMIN and CAP_BPF for AF_XDP) and drop the rest
    /// for good. An engine restart then cannot open AF_XDP again: it falls back to
    /// kernel UDP if `xdp_fallback_to_udp`, else the gateway exits non-zero.
    pub drop_capabilities: bool,
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

/// `[auth]`: API keys for every client-facing surface (JSON-RPC, REST, the
/// lifecycle API and its events, the websocket proxy); `/health` and `/ready`
/// stay open for probes, metrics and the admin socket have their own listeners.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    /// The keys file (TOML, `[[key]]` tables: `name`, `secret`, `tx_per_sec`,
    /// `burst`, `queue_share`); keep it 0600 or in a Kubernetes Secret. Unset: no
    /// keys, every client is let in (bind to loopback, or put a proxy in front).
    pub keys_file: Option<PathBuf>,
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
            auth: AuthSection::default(),
            rpc: RpcSection::default(),
            metrics: MetricsSection::default(),
            cluster: ClusterSection::default(),
            fanout: FanoutSection::default(),
            leaders: LeadersSection::default(),
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
            max_connections: 4096,
            max_connections_per_ip: 256,
            header_read_timeout_ms: 5_000,
            body_read_timeout_ms: 10_000,
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
            keep_ended_secs: 600,
            max_ended: 100_000,
            max_transaction_size: MAX_TRANSACTION_SIZE,
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
            drop_capabilities: true,
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

/// `AFTERBURNER_*` variables that are not configuration keys: the binary's own
/// (`--config`'s) and the local runner's. The loader skips exactly these; every
/// other `AFTERBURNER_*` variable must name a key, so a typo is an error.
pub const NOT_CONFIG_VARIABLES: [&str; 2] = ["AFTERBURNER_CONFIG", "AFTERBURNER_GATEWAY_BIN"];

/// Where a configuration comes from, in order of precedence (later wins): a TOML
/// file or text, then `AFTERBURNER_*` variables, then command-line flags.
#[derive(Debug)]
pub struct Sources {
    figment: Figment,
    providers: Vec<Figment>,
}

impl Sources {
    /// The TOML file at `path` (`None`: no file, all defaults).
    pub fn file(path: Option<&std::path::Path>) -> Result<Self> {
        let figment = match path {
            Some(p) => {
                // Read here (not by figment) so a missing file is an error naming it.
                std::fs::metadata(p)
                    .with_context(|| format!("reading config file {}", p.display()))?;
                Figment::from(Toml::file_exact(p))
            }
            None => Figment::new(),
        };
        Ok(Self {
            providers: vec![figment.clone()],
            figment,
        })
    }

    /// TOML text (tests, benchmarks).
    pub fn text(text: &str) -> Self {
        let figment = Figment::from(Toml::string(text));
        Self {
            providers: vec![figment.clone()],
            figment,
        }
    }

    /// Adds environment variables (`AFTERBURNER_SECTION__KEY=value`, or
    /// `AFTERBURNER_KEY` for top-level keys; values parsed as TOML-like values,
    /// else strings).
    pub fn env(mut self, vars: impl IntoIterator<Item = (String, String)>) -> Self {
        let provider = EnvVars::new(vars);
        self.providers.push(Figment::from(provider.clone()));
        self.figment = self.figment.merge(provider);
        self
    }

    /// Adds one command-line flag's value for `key` (a dotted path).
    pub fn flag<T: serde::Serialize + Clone>(mut self, key: &str, value: T) -> Self {
        let provider = Serialized::default(key, value);
        self.providers.push(Figment::from(provider.clone()));
        self.figment = self.figment.merge(provider);
        self
    }

    /// The configuration, checked: each source alone first (so an unknown key or a
    /// wrong type is reported with the source it came from), then all merged, then
    /// [`Config::validate`].
    ///
    /// # Errors
    /// Unknown keys and wrong types (naming the key and its source), and
    /// [`Config::validate`]'s inconsistencies.
    pub fn extract(self) -> Result<Config> {
        for provider in &self.providers {
            provider
                .extract::<Config>()
                .map_err(|e| anyhow::anyhow!("{}", describe(e)))
                .context("invalid configuration")?;
        }
        let config: Config = self
            .figment
            .extract()
            .map_err(|e| anyhow::anyhow!("{}", describe(e)))
            .context("invalid configuration")?;
        config.validate()?;
        Ok(config)
    }
}

/// figment's errors, one line each (several when a source has several problems).
fn describe(e: figment::Error) -> String {
    e.into_iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

/// `AFTERBURNER_*` variables as a figment provider. figment's own `Env` reads the
/// process environment only; this takes the variables as a list so tests pass their
/// own, and names each key by its variable in errors.
#[derive(Clone, Debug)]
struct EnvVars {
    vars: Vec<(String, String)>,
}

impl EnvVars {
    fn new(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        let vars = vars
            .into_iter()
            .filter(|(k, _)| k.starts_with("AFTERBURNER_"))
            .filter(|(k, _)| !NOT_CONFIG_VARIABLES.contains(&k.as_str()))
            .collect();
        Self { vars }
    }
}

impl figment::Provider for EnvVars {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named("environment variable").interpolater(|_, keys| {
            format!(
                "AFTERBURNER_{}",
                keys.iter()
                    .map(|k| k.to_uppercase())
                    .collect::<Vec<_>>()
                    .join("__")
            )
        })
    }

    fn data(
        &self,
    ) -> std::result::Result<
        figment::value::Map<figment::Profile, figment::value::Dict>,
        figment::Error,
    > {
        let mut dict = figment::value::Dict::new();
        for (key, value) in &self.vars {
            let path = key["AFTERBURNER_".len()..]
                .split("__")
                .map(str::to_lowercase)
                .collect::<Vec<_>>()
                .join(".");
            if path.is_empty() || path.split('.').any(str::is_empty) {
                return Err(figment::Error::from(format!(
                    "{key}: not a configuration key (AFTERBURNER_SECTION__KEY or AFTERBURNER_KEY)"
                )));
            }
            let value: figment::value::Value = value
                .parse()
                .unwrap_or_else(|_| figment::value::Value::from(value.clone()));
            if let Some(nested) = figment::util::nest(&path, value).into_dict() {
                dict = merge_dicts(dict, nested);
            }
        }
        Ok(figment::Profile::Default.collect(dict))
    }
}

/// Merges `b` into `a` (b's values win), descending into nested dictionaries.
fn merge_dicts(mut a: figment::value::Dict, b: figment::value::Dict) -> figment::value::Dict {
    use figment::value::Value;
    for (k, v) in b {
        let merged = match (a.remove(&k), v) {
            (Some(Value::Dict(_, x)), Value::Dict(tag, y)) => Value::Dict(tag, merge_dicts(x, y)),
            (_, v) => v,
        };
        a.insert(k, merged);
    }
    a
}

impl Config {
    /// Parses TOML text, then applies `env` (see [`Sources::env`]).
    ///
    /// # Errors
    /// As [`Sources::extract`].
    pub fn from_toml(text: &str, env: impl IntoIterator<Item = (String, String)>) -> Result<Self> {
        Sources::text(text).env(env).extract()
    }

    /// Reads `path` (or defaults when `None`) and applies the process environment.
    ///
    /// # Errors
    /// As [`Sources::extract`], and an unreadable file (named).
    pub fn load(path: Option<&std::path::Path>) -> Result<Self> {
        Sources::file(path)?.env(std::env::vars()).extract()
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
        if !self.leaders.policy()?.is_open() && !self.cluster.static_leaders.is_empty() {
            bail!(
                "leaders.deny, leaders.allow and leaders.tpu_overrides need a tracked schedule \
                 (cluster.rpc_urls): cluster.static_leaders have no identities to match"
            );
        }
        if self.fanout.send == 0 {
            bail!("fanout.send must be at least 1");
        }
        for (key, v) in [
            ("cluster.slot_duration_ms", self.cluster.slot_duration_ms),
            ("cluster.rpc_timeout_ms", self.cluster.rpc_timeout_ms),
            ("cluster.stale_after_secs", self.cluster.stale_after_secs),
            ("retry.interval_ms", self.retry.interval_ms),
            (
                "rpc.header_read_timeout_ms",
                self.rpc.header_read_timeout_ms,
            ),
            ("rpc.body_read_timeout_ms", self.rpc.body_read_timeout_ms),
            (
                "rpc.max_connections and rpc.max_connections_per_ip",
                self.rpc
                    .max_connections
                    .min(self.rpc.max_connections_per_ip) as u64,
            ),
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
        let size = self.limits.max_transaction_size;
        if size > MAX_TRANSACTION_SIZE {
            bail!(
                "limits.max_transaction_size = {size}: at most {MAX_TRANSACTION_SIZE} for now. \
                 Larger (SIMD-0296, up to 4096-byte v1) transactions need agave crates and TPU \
                 servers that accept them; the 3.1 crates this gateway is built on and today's \
                 TPU servers stop at {MAX_TRANSACTION_SIZE} bytes (PACKET_DATA_SIZE), and close \
                 the connection on a larger stream"
            );
        }
        if size == 0 {
            bail!("limits.max_transaction_size must be at least 1");
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

    /// Each error names the key and where it came from.
    #[test]
    fn errors_name_the_key_and_its_source() {
        let e = Config::from_toml(base(), [("AFTERBURNER_FANOUT__SEND".into(), "many".into())])
            .unwrap_err();
        let e = format!("{e:#}");
        assert!(e.contains("AFTERBURNER_FANOUT__SEND"), "{e}");
        assert!(e.contains("environment variable"), "{e}");
        let e =
            Config::from_toml(&format!("{}[fanout]\nsend = \"many\"\n", base()), []).unwrap_err();
        let e = format!("{e:#}");
        assert!(e.contains("fanout.send") && e.contains("TOML"), "{e}");

        let dir = std::env::temp_dir().join(format!("afterburner-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("gateway.toml");
        std::fs::write(&file, format!("{}[rpc]\nlisten = 5\n", base())).unwrap();
        let e = Sources::file(Some(&file)).unwrap().extract().unwrap_err();
        let e = format!("{e:#}");
        assert!(
            e.contains("rpc.listen") && e.contains(&file.display().to_string()),
            "{e}"
        );
        let e = Sources::file(Some(&dir.join("missing.toml"))).unwrap_err();
        assert!(format!("{e:#}").contains("missing.toml"), "{e:#}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The binary's own variables are not keys: `AFTERBURNER_CONFIG` once failed as
    /// "unknown field" (main.rs's test keeps this list complete).
    #[test]
    fn the_binarys_own_variables_are_skipped() {
        let env = NOT_CONFIG_VARIABLES.map(|k| (k.to_string(), "/etc/x.toml".to_string()));
        assert_eq!(
            Config::from_toml(base(), env).unwrap(),
            Config::from_toml(base(), []).unwrap()
        );
    }

    /// File < environment < flags.
    #[test]
    fn flags_override_the_environment_which_overrides_the_file() {
        let file = format!(
            "{}[rpc]\nlisten = \"127.0.0.1:1000\"\n[fanout]\nsend = 3\n",
            base()
        );
        let env = [(
            "AFTERBURNER_RPC__LISTEN".to_string(),
            "127.0.0.1:2000".to_string(),
        )];
        let c = Sources::text(&file).env(env.clone()).extract().unwrap();
        assert_eq!(c.rpc.listen.port(), 2000);
        assert_eq!(c.fanout.send, 3);
        let flag: SocketAddr = "127.0.0.1:3000".parse().unwrap();
        let c = Sources::text(&file)
            .env(env)
            .flag("rpc.listen", flag)
            .extract()
            .unwrap();
        assert_eq!(c.rpc.listen, flag);
        assert_eq!(c.fanout.send, 3);
    }

    /// SIMD-0296 is one reviewed change away: until then, larger is refused at
    /// startup with the reason.
    #[test]
    fn transactions_larger_than_agave_takes_are_refused_with_the_reason() {
        let c = Config::from_toml(base(), []).unwrap();
        assert_eq!(c.limits.max_transaction_size, 1232);
        let text = format!("{}[limits]\nmax_transaction_size = 4096\n", base());
        let e = format!("{:#}", Config::from_toml(&text, []).unwrap_err());
        assert!(e.contains("limits.max_transaction_size = 4096"), "{e}");
        assert!(e.contains("SIMD-0296") && e.contains("1232"), "{e}");
        let text = format!("{}[limits]\nmax_transaction_size = 1000\n", base());
        assert_eq!(
            Config::from_toml(&text, [])
                .unwrap()
                .limits
                .max_transaction_size,
            1000
        );
    }

    #[test]
    fn the_leader_policy_is_parsed_and_checked() {
        let (a, b) = (Pubkey::new_unique(), Pubkey::new_unique());
        let text = format!(
            "{}[leaders]\ndeny = [\"{a}\"]\nallow = [\"{b}\"]\ntpu_overrides = {{ \"{b}\" = \"10.1.1.1:8009\" }}\n",
            base()
        );
        let p = Config::from_toml(&text, [])
            .unwrap()
            .leaders
            .policy()
            .unwrap();
        assert!(p.deny.contains(&a) && p.allow.contains(&b));
        assert_eq!(p.overrides[&b], "10.1.1.1:8009".parse().unwrap());
        let bad = format!("{}[leaders]\ndeny = [\"nope\"]\n", base());
        let e = format!("{:#}", Config::from_toml(&bad, []).unwrap_err());
        assert!(e.contains("leaders.deny") && e.contains("nope"), "{e}");
        let static_ = format!(
            "[cluster]\nstatic_leaders = [\"127.0.0.1:1\"]\n[validation]\npreflight = \"refuse\"\n[leaders]\ndeny = [\"{a}\"]\n"
        );
        let e = format!("{:#}", Config::from_toml(&static_, []).unwrap_err());
        assert!(e.contains("static_leaders"), "{e}");
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
