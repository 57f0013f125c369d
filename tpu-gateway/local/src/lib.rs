//! Afterburner's local mode and end-to-end test support: the `tpu-gateway` binary
//! run as a child process with a generated configuration, pointed at a local agave
//! test validator, and read back through its HTTP endpoints (`/ready`, `/metrics`).
//!
//! The gateway is a separate process, never linked in: quiche's BoringSSL and the
//! OpenSSL the validator links both define the same C symbols, and the validator's
//! dependency tree (rocksdb) must stay out of the production binary anyway.

use std::{
    io::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// The `tpu-gateway` binary: `$AFTERBURNER_GATEWAY_BIN`, else next to the running
/// executable or one directory up (test binaries live in `target/<profile>/deps`).
///
/// # Errors
/// When it is not found, with the command that builds it.
pub fn gateway_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("AFTERBURNER_GATEWAY_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("locating the running executable")?;
    let mut dir = exe.parent();
    for _ in 0..2 {
        let Some(d) = dir else { break };
        let candidate = d.join("tpu-gateway");
        if candidate.is_file() {
            return Ok(candidate);
        }
        dir = d.parent();
    }
    bail!(
        "the tpu-gateway binary is not next to {} (build it: cargo build -p tpu-gateway, \
         or set AFTERBURNER_GATEWAY_BIN)",
        exe.display()
    )
}

/// A running `tpu-gateway`: SIGTERM and a wait on drop.
#[derive(Debug)]
pub struct GatewayProcess {
    child: Option<Child>,
    /// Its JSON-RPC address.
    pub rpc: SocketAddr,
    /// Its Prometheus address.
    pub metrics: SocketAddr,
}

impl GatewayProcess {
    /// Writes `config` (TOML) to `dir/tpu-gateway.toml` and starts the gateway with
    /// it, prefixed by `wrapper` (e.g. `ip netns exec <ns>`); its output goes to
    /// ours. `rpc` and `metrics` must be the config's listen addresses.
    ///
    /// # Errors
    /// The binary cannot be found or started, or exits within its first 200 ms.
    pub fn spawn(
        dir: &Path,
        config: &str,
        rpc: SocketAddr,
        metrics: SocketAddr,
        wrapper: &[&str],
    ) -> Result<Self> {
        let path = dir.join("tpu-gateway.toml");
        std::fs::write(&path, config).with_context(|| format!("writing {}", path.display()))?;
        let bin = gateway_bin()?;
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        cmd.arg("--config").arg(&path).stdin(Stdio::null());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        std::thread::sleep(Duration::from_millis(200));
        if let Some(status) = child.try_wait()? {
            bail!("tpu-gateway exited at once: {status}");
        }
        Ok(Self {
            child: Some(child),
            rpc,
            metrics,
        })
    }

    /// The JSON-RPC URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.rpc)
    }

    /// SIGTERM, then waits up to `timeout` for the exit.
    ///
    /// # Errors
    /// It does not exit in time (it is then killed) or exits unsuccessfully.
    pub fn terminate(mut self, timeout: Duration) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        terminate(&mut child, timeout)
    }
}

fn terminate(child: &mut Child, timeout: Duration) -> Result<()> {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            if status.success() {
                return Ok(());
            }
            bail!("tpu-gateway exited with {status}");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("tpu-gateway did not exit within {timeout:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = terminate(&mut child, Duration::from_secs(10));
        }
    }
}

/// A gateway configuration for a local validator (kernel UDP path unless `extra`
/// says otherwise; `extra` is appended and may add sections).
pub fn gateway_config(
    identity: &Path,
    rpc: SocketAddr,
    websocket: SocketAddr,
    metrics: SocketAddr,
    validator_rpc: &str,
    validator_ws: &str,
    extra: &str,
) -> String {
    format!(
        r#"identity = "{}"
[rpc]
listen = "{rpc}"
websocket_listen = "{websocket}"
[metrics]
listen = "{metrics}"
[cluster]
rpc_urls = ["{validator_rpc}"]
websocket_urls = ["{validator_ws}"]
{extra}
"#,
        identity.display()
    )
}

/// `GET url`: the status code, or `None` when nothing answers.
pub async fn http_status(url: &str) -> Option<u16> {
    reqwest::get(url).await.ok().map(|r| r.status().as_u16())
}

/// The gateway's metrics, as text.
///
/// # Errors
/// The scrape fails.
pub async fn scrape(metrics: SocketAddr) -> Result<String> {
    let text = reqwest::get(format!("http://{metrics}/metrics"))
        .await
        .with_context(|| format!("scraping http://{metrics}/metrics"))?
        .text()
        .await?;
    Ok(text)
}

/// The sum of the series of `name` in a scrape, optionally only those with `label`
/// (`("state", "landed")`).
pub fn sum_series(text: &str, name: &str, label: Option<(&str, &str)>) -> f64 {
    let wanted = label.map(|(k, v)| format!("{k}=\"{v}\""));
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter(|l| l[name.len()..].starts_with([' ', '{']))
        .filter(|l| wanted.as_ref().is_none_or(|w| l.contains(w.as_str())))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The transaction counters, from one scrape.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Counts {
    /// `afterburner_transactions_accepted_total`
    pub accepted: f64,
    /// `afterburner_transactions_sent_total`
    pub sent: f64,
    /// `afterburner_transactions_dropped_total`, all reasons
    pub dropped: f64,
    /// `afterburner_transactions_in_flight`
    pub in_flight: f64,
    /// `afterburner_transactions_retired_total{state="landed"}`
    pub landed: f64,
    /// `afterburner_transactions_retired_total{state="expired"}`
    pub expired: f64,
    /// `afterburner_transactions_tracked`
    pub tracked: f64,
    /// `afterburner_retries_total`
    pub retries: f64,
    /// `afterburner_sends_total`, all outcomes
    pub sends: f64,
}

impl Counts {
    /// Reads them from the gateway.
    ///
    /// # Errors
    /// The scrape fails.
    pub async fn scrape(metrics: SocketAddr) -> Result<Self> {
        let t = scrape(metrics).await?;
        let retired = |state| {
            sum_series(
                &t,
                "afterburner_transactions_retired_total",
                Some(("state", state)),
            )
        };
        Ok(Self {
            accepted: sum_series(&t, "afterburner_transactions_accepted_total", None),
            sent: sum_series(&t, "afterburner_transactions_sent_total", None),
            dropped: sum_series(&t, "afterburner_transactions_dropped_total", None),
            in_flight: sum_series(&t, "afterburner_transactions_in_flight", None),
            landed: retired("landed"),
            expired: retired("expired"),
            tracked: sum_series(&t, "afterburner_transactions_tracked", None),
            retries: sum_series(&t, "afterburner_retries_total", None),
            sends: sum_series(&t, "afterburner_sends_total", None),
        })
    }
}

/// A directory under the system temp dir (named by `tag` and the pid), removed on
/// drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates it.
    ///
    /// # Errors
    /// The directory cannot be created.
    pub fn new(tag: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("afterburner-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes a new keypair to `path`.
///
/// # Errors
/// The file cannot be written.
pub fn new_keypair_file(path: &Path) -> Result<()> {
    solana_sdk::signer::keypair::write_keypair_file(&solana_sdk::signature::Keypair::new(), path)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// The stake a local validator credits the gateway's own identity with, through
/// its staked-nodes overrides (what agave's TPU server uses for stake-weighted QoS):
/// the same as the test validator's own stake (1,000,000 SOL).
pub const GATEWAY_STAKE_LAMPORTS: u64 = 1_000_000 * 1_000_000_000;

/// Gives `identity` stake in the validator `genesis` will start (a staked-nodes
/// override): the gateway then presents its own staked identity and does not share
/// the validator's per-identity connection budget with the validator's own sending
/// (agave's RPC `sendTransaction` path), which a shared identity would lock out.
pub fn stake_gateway(
    genesis: &mut solana_test_validator::TestValidatorGenesis,
    identity: solana_sdk::pubkey::Pubkey,
) {
    let overrides = genesis.staked_nodes_overrides.clone();
    // A poisoned lock here means a panic elsewhere in setup: nothing to stake.
    if let Ok(mut o) = overrides.write() {
        o.insert(identity, GATEWAY_STAKE_LAMPORTS);
    }
}

/// Reads the keypair at `path`, writing a new one there first when none exists.
///
/// # Errors
/// Unreadable or unwritable file.
pub fn keypair_file(path: &Path) -> Result<solana_sdk::signature::Keypair> {
    if !path.exists() {
        new_keypair_file(path)?;
    }
    solana_sdk::signature::read_keypair_file(path)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("reading {}", path.display()))
}

/// Prints and flushes (progress lines read by people and by tests).
pub fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
