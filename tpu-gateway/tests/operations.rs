//! The operations kit against the real tools: the systemd unit through
//! `systemd-analyze verify`, the Kubernetes manifests through `kubernetes-validate`
//! (and their embedded config through `tpu-gateway --check`), the alert rules
//! through `promtool check` and `promtool test rules`, and the Grafana dashboard and
//! the rules through a real Prometheus scraping a running gateway under load: every
//! PromQL expression must be accepted by Prometheus' HTTP API and name only metrics
//! the gateway exports (the AF_XDP ones read from a gateway on the XDP path, in a
//! network namespace, when running as root).
//!
//! The tools are installed by `./x` (apt: prometheus, systemd; pip:
//! kubernetes-validate). A missing tool skips its check with a printed reason, and
//! fails the test under `CI=true`.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failure should stop it loudly"
)]

use afterburner_test_support as support;

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use base64::Engine as _;
use serde_json::Value;
use solana_sdk::{signature::Keypair, signer::Signer};
use support::{
    AgaveServer,
    netns::{CLIENT_IF, Topology, in_netns, root_or_skip},
};
use tpu_gateway::{Gateway, config::Config};

const BIN: &str = env!("CARGO_BIN_EXE_tpu-gateway");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let d = std::env::temp_dir().join(format!("tpu-gateway-ops-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        Self(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Whether `tool` is on PATH; if not, says so, and panics under `CI=true`.
fn have(tool: &str, check: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!(
                "{check}: {tool} is not installed and CI=true: refusing to skip (./x installs it)"
            );
        }
        eprintln!("SKIPPED {check}: {tool} is not installed (./x installs it)");
    }
    found
}

/// Runs `cmd`; panics with its output unless it succeeds with nothing on stderr
/// (tools that only warn, like systemd-analyze on an unknown key, still fail).
fn run_clean(mut cmd: Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "{cmd:?} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    stdout
}

#[test]
fn systemd_unit_verifies() {
    if !have("systemd-analyze", "systemd_unit_verifies") {
        return;
    }
    let dir = TempDir::new("systemd");
    let unit = std::fs::read_to_string(repo().join("deploy/systemd/tpu-gateway.service")).unwrap();
    for needed in [
        "AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW CAP_BPF",
        "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW CAP_BPF",
        "LimitMEMLOCK=infinity",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK AF_XDP",
        "SystemCallFilter=@system-service bpf",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "User=afterburner",
        "LoadCredential=identity.json:",
    ] {
        assert!(unit.contains(needed), "the unit lacks {needed}");
    }
    assert!(
        !unit.lines().any(|l| l.starts_with("PrivateUsers=")),
        "PrivateUsers= voids the capabilities on host devices"
    );
    // verify wants the binary to exist: point it at the one just built.
    let path = dir.0.join("tpu-gateway.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/tpu-gateway", BIN)).unwrap();
    let mut cmd = Command::new("systemd-analyze");
    cmd.arg("verify").arg(&path);
    run_clean(cmd);
}

#[test]
fn kubernetes_manifests_validate_and_their_config_checks() {
    let k8s = repo().join("deploy/k8s");
    // The embedded configuration is a valid gateway configuration.
    let configmap = std::fs::read_to_string(k8s.join("configmap.yaml")).unwrap();
    let toml: String = configmap
        .lines()
        .skip_while(|l| !l.contains("tpu-gateway.toml: |"))
        .skip(1)
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    assert!(toml.contains("[fleet]"), "no config in the ConfigMap");
    let dir = TempDir::new("k8s");
    // The keys file comes from a Secret: the example's keys, with real-length
    // secrets, stand in for it.
    let secret = std::fs::read_to_string(k8s.join("api-keys-secret.example.yaml")).unwrap();
    let keys: String = secret
        .lines()
        .skip_while(|l| !l.contains("api-keys.toml: |"))
        .skip(1)
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    assert!(keys.contains("[[key]]"), "no keys in the example Secret");
    let keys_path = dir.0.join("api-keys.toml");
    std::fs::write(&keys_path, keys).unwrap();
    let toml = toml.replace(
        "/etc/afterburner/keys/api-keys.toml",
        &keys_path.display().to_string(),
    );
    let cfg = dir.0.join("tpu-gateway.toml");
    std::fs::write(&cfg, &toml).unwrap();
    let id = dir.0.join("id.json");
    solana_sdk::signer::keypair::write_keypair_file(&Keypair::new(), &id).unwrap();
    let mut check = Command::new(BIN);
    check
        .arg("--config")
        .arg(&cfg)
        .arg("--identity")
        .arg(&id)
        .arg("--check");
    assert_eq!(run_clean(check).trim(), "configuration ok");
    // replicas = fleet.instances (the per-identity connection arithmetic).
    let deployment = std::fs::read_to_string(k8s.join("deployment.yaml")).unwrap();
    let replicas = deployment
        .lines()
        .find_map(|l| l.trim().strip_prefix("replicas: "))
        .unwrap();
    assert!(
        toml.contains(&format!("instances = {replicas}\n")),
        "replicas {replicas} != fleet.instances"
    );

    if !have("kubernetes-validate", "kubernetes_manifests_validate") {
        return;
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(&k8s)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "yaml")
                && p.file_name().is_some_and(|n| n != "kustomization.yaml")
        })
        .collect();
    files.sort();
    assert!(files.len() >= 5, "{files:?}");
    let mut cmd = Command::new("kubernetes-validate");
    cmd.args(["--strict", "--quiet", "-k", "1.30.0"])
        .args(&files);
    run_clean(cmd);
    // Every file named by the kustomization exists.
    let kustomization = std::fs::read_to_string(k8s.join("kustomization.yaml")).unwrap();
    for f in kustomization
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- "))
    {
        assert!(k8s.join(f).is_file(), "kustomization names a missing {f}");
    }
}

#[test]
fn alert_rules_check_and_pass_their_unit_tests() {
    if !have("promtool", "alert_rules_check_and_pass_their_unit_tests") {
        return;
    }
    let dir = repo().join("deploy/prometheus");
    for args in [
        vec!["check", "rules", "afterburner-rules.yml"],
        vec!["test", "rules", "afterburner-rules.test.yml"],
        vec!["check", "config", "prometheus.yml"],
    ] {
        let mut cmd = Command::new("promtool");
        cmd.current_dir(&dir).args(&args);
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Every PromQL expression of the dashboard (Grafana variables replaced by what
/// they expand to) and of the rules.
fn expressions() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo().join("dashboards/afterburner-gateway.json")).unwrap();
    let dash: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(dash["uid"], "afterburner-gateway", "the uid is fixed");
    let vars = dash["templating"]["list"].as_array().unwrap();
    assert!(
        vars.iter()
            .any(|v| v["type"] == "datasource" && v["name"] == "datasource"),
        "a datasource template variable"
    );
    assert!(dash.get("__inputs").is_none(), "import-only __inputs");
    let mut out = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(
            p["datasource"]["uid"], "${datasource}",
            "{}: datasource",
            p["title"]
        );
        for t in p["targets"].as_array().unwrap() {
            let e = t["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "1m")
                .replace("$instance", ".+");
            out.push((format!("panel {:?}", p["title"].as_str().unwrap()), e));
        }
    }
    let rules =
        std::fs::read_to_string(repo().join("deploy/prometheus/afterburner-rules.yml")).unwrap();
    // The rules file's expressions: `expr: <one line>` or `expr: |` + an indented block.
    let lines: Vec<&str> = rules.lines().collect();
    let mut alert = String::new();
    for (i, l) in lines.iter().enumerate() {
        if let Some(a) = l.trim().strip_prefix("- alert: ") {
            alert = a.to_string();
        }
        if let Some(e) = l.trim().strip_prefix("expr: ") {
            let expr = if e == "|" {
                let indent = l.len() - l.trim_start().len();
                lines[i + 1..]
                    .iter()
                    .take_while(|x| x.len() - x.trim_start().len() > indent)
                    .map(|x| x.trim())
                    .collect::<Vec<_>>()
                    .join(" ")
            } else {
                e.to_string()
            };
            out.push((format!("rule {alert}"), expr));
        }
    }
    out
}

/// Metric names in a PromQL expression (ours, and `up`).
fn names_in(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
        if word(bytes[i]) && (i == 0 || !word(bytes[i - 1])) {
            let start = i;
            while i < bytes.len() && word(bytes[i]) {
                i += 1;
            }
            let w = &expr[start..i];
            if w.starts_with("afterburner_") || (w == "up" && expr[i..].starts_with('{')) {
                names.insert(w.to_string());
            }
        } else {
            i += 1;
        }
    }
    names
}

/// The metric names in a scrape (histogram series folded into their family name).
fn exported(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .flat_map(|n| {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| n.strip_suffix(s))
                .unwrap_or(n);
            [n.to_string(), family.to_string()]
        })
        .collect()
}

/// A gateway's `/metrics` text.
async fn scrape(metrics: SocketAddr) -> String {
    reqwest::get(format!("http://{metrics}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn query(prom: &str, path: &str, expr: &str) -> Value {
    let r = reqwest::Client::new()
        .post(format!("{prom}{path}"))
        .form(&[("query", expr)])
        .send()
        .await
        .unwrap();
    let body = r.bytes().await.unwrap();
    serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("{expr}: {e}: {}", String::from_utf8_lossy(&body)))
}

/// Waits until Prometheus answers `/-/ready`.
async fn wait_prometheus_ready(prom: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if reqwest::get(format!("{prom}/-/ready"))
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus not ready within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The AF_XDP metric names, read from a gateway on the XDP path in a namespace.
fn xdp_gateway_names() -> BTreeSet<String> {
    let topo = Topology::create(1).unwrap();
    let names = in_netns(&topo.client_ns, || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let text = format!(
                "[rpc]\nlisten = \"127.0.0.1:0\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
                 [cluster]\nstatic_leaders = [\"{}:8009\"]\n[validation]\npreflight = \"refuse\"\n\
                 [packet_path]\nkind = \"xdp\"\ninterface = \"{CLIENT_IF}\"\nxdp_fallback_to_udp = false\n",
                support::netns::SERVER_IP
            );
            let gateway = Gateway::start(Config::from_toml(&text, []).unwrap())
                .await
                .unwrap();
            let scrape = scrape(gateway.metrics_addr).await;
            gateway.shutdown().await;
            exported(&scrape)
        })
    });
    drop(topo);
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_evaluates_every_dashboard_and_rule_expression() {
    if !have(
        "prometheus",
        "a_real_prometheus_evaluates_every_dashboard_and_rule_expression",
    ) {
        return;
    }
    let dir = TempDir::new("prom");
    // A gateway under a small load: agave's TPU server as its (static) leader.
    let identity = Keypair::new();
    let id = dir.0.join("id.json");
    solana_sdk::signer::keypair::write_keypair_file(&identity, &id).unwrap();
    let server = AgaveServer::start(
        "127.0.0.1:0".parse().unwrap(),
        &[(identity.pubkey(), 1_000_000)],
    );
    let text = format!(
        "identity = \"{}\"\n[rpc]\nlisten = \"127.0.0.1:0\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
         [cluster]\nstatic_leaders = [\"{}\"]\n[validation]\npreflight = \"refuse\"\n\
         [packet_path]\nbind = \"127.0.0.1:0\"\n[retry]\ndefault_max_retries = 1\ninterval_ms = 100\n",
        id.display(),
        server.addr
    );
    let gateway = Gateway::start(Config::from_toml(&text, []).unwrap())
        .await
        .unwrap();
    let metrics: SocketAddr = gateway.metrics_addr;

    let port = free_port();
    let prom = format!("http://127.0.0.1:{port}");
    let rules = repo().join("deploy/prometheus/afterburner-rules.yml");
    let config = dir.0.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: tpu-gateway\n    static_configs:\n      - targets: [\"{metrics}\"]\n",
            rules.display()
        ),
    )
    .unwrap();
    let _prometheus = Prometheus(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.0.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    wait_prometheus_ready(&prom).await;

    // Load: signed transfers through JSON-RPC, plus a few refusals.
    let payer = Keypair::new();
    let client = reqwest::Client::new();
    let url = format!("http://{}/", gateway.rpc_addr);
    let started = Instant::now();
    let mut up = false;
    for (i, wire) in support::signed_transfers(&payer, 60)
        .into_iter()
        .enumerate()
    {
        let body = serde_json::json!({"jsonrpc": "2.0", "id": i, "method": "sendTransaction",
            "params": [base64::prelude::BASE64_STANDARD.encode(&wire),
                       {"encoding": "base64", "skipPreflight": true}]});
        client
            .post(&url)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        if i % 10 == 0 {
            client.post(&url).body("{").send().await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if !up {
            let r = query(&prom, "/api/v1/query", "up{job=\"tpu-gateway\"} == 1").await;
            up = r["data"]["result"]
                .as_array()
                .is_some_and(|a| !a.is_empty());
        }
    }
    while !up {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "Prometheus never scraped the gateway"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        let r = query(&prom, "/api/v1/query", "up{job=\"tpu-gateway\"} == 1").await;
        up = r["data"]["result"]
            .as_array()
            .is_some_and(|a| !a.is_empty());
    }
    // Two more scrapes, so rates have two samples after the load.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut known = exported(&scrape(metrics).await);
    known.insert("up".into());
    // The leader tracker's metrics, from a gateway that tracks (its RPC is down here:
    // the names are what matters).
    let tracking = Gateway::start(
        Config::from_toml(
            "[rpc]\nlisten = \"127.0.0.1:0\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
             [cluster]\nrpc_urls = [\"http://127.0.0.1:1\"]\n[packet_path]\nbind = \"127.0.0.1:0\"\n",
            [],
        )
        .unwrap(),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let tracking_scrape = scrape(tracking.metrics_addr).await;
    tracking.shutdown().await;
    known.extend(exported(&tracking_scrape));
    let xdp_checked = if support::netns::is_root() {
        known.extend(
            tokio::task::spawn_blocking(xdp_gateway_names)
                .await
                .unwrap(),
        );
        true
    } else {
        root_or_skip(
            "AF_XDP metric names in a_real_prometheus_evaluates_every_dashboard_and_rule_expression",
        )
    };

    let exprs = expressions();
    assert!(exprs.len() > 40, "{} expressions", exprs.len());
    let mut with_data = 0;
    for (origin, expr) in &exprs {
        let r = query(&prom, "/api/v1/query", expr).await;
        assert_eq!(r["status"], "success", "{origin}: {expr}: {r}");
        if r["data"]["result"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
        {
            with_data += 1;
        }
        for name in names_in(expr) {
            if !xdp_checked && name.starts_with("afterburner_xdp_") {
                continue;
            }
            assert!(
                known.contains(&name),
                "{origin}: {name} is not exported by the gateway"
            );
        }
    }
    // The load shows: accepted, refusals by code, sends, request -> wire.
    for expr in [
        "sum(afterburner_transactions_accepted_total) >= 60",
        "sum(afterburner_rpc_requests_total{result=\"-32700\"}) >= 6",
        "sum(afterburner_transactions_sent_total) >= 60",
        "sum(rate(afterburner_request_to_wire_seconds_count[1m])) > 0",
    ] {
        let r = query(&prom, "/api/v1/query", expr).await;
        assert!(
            r["data"]["result"]
                .as_array()
                .is_some_and(|a| !a.is_empty()),
            "{expr}: {r}"
        );
    }
    // The rules are loaded and evaluate without errors.
    let r: Value = serde_json::from_slice(
        &reqwest::get(format!("{prom}/api/v1/rules"))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    let rules: Vec<&Value> = r["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    // Every rule in the file, loaded.
    let in_file = std::fs::read_to_string(repo().join("deploy/prometheus/afterburner-rules.yml"))
        .unwrap()
        .lines()
        .filter(|l| l.trim_start().starts_with("- alert:"))
        .count();
    assert!(in_file >= 9, "{in_file} alerts in the file");
    assert_eq!(rules.len(), in_file, "{r}");
    for rule in &rules {
        assert_eq!(rule["health"], "ok", "{rule}");
    }
    println!(
        "{} expressions ({with_data} with data) evaluated by Prometheus; {} rules healthy; \
         AF_XDP names checked: {xdp_checked}",
        exprs.len(),
        rules.len()
    );
    gateway.shutdown().await;
}
