//! Transactions land: the `tpu-gateway` binary (kernel UDP path, its own process)
//! against a real, in-process agave validator (`solana-test-validator`: real RPC,
//! websocket, leader schedule and TPU QUIC). The gateway tracks the validator as its
//! leader through RPC; nothing is static. One validator for the whole binary (it
//! burns about a core), so the scenarios run as phases of one test, in this order:
//!
//! 1. a gateway started before the validator is alive but not ready while RPC is
//!    down, and ready once the validator is up;
//! 2. through it (an unstaked identity), one transfer sent with solana-client's
//!    `RpcClient` lands (confirmed, balance moved); the gateway sees it landed and
//!    stops rebroadcasting it;
//! 3. preflight forwarded to the validator's RPC: a good transaction passes and
//!    lands, one that cannot pay gets agave's -32002 and is not accepted;
//!    3b. the gateway as a client's only RPC URL: `send_and_confirm_transaction`
//!    and `signatureSubscribe` through it; its lifecycle record names the leader
//!    sent to and the slot's leader, and the event stream tells accepted -> sent
//!    -> landed;
//!    3c. expiry by blockhash (an unknown one expires after its grace window) and
//!    durable nonces (one lands; one with an advanced nonce ends `nonce_advanced`;
//!    one with a current nonce that cannot land keeps being rebroadcast);
//! 4. a second gateway presenting its own identity, staked by the validator
//!    (staked-nodes overrides, as local mode does) takes 1,000 distinct transfers:
//!    all land exactly once (balances add up), nothing dropped, the accounting
//!    invariant holds; landing time p50/p99 (ms and slots) is printed;
//!    4b. the validator's own RPC `sendTransaction` and that gateway send 50
//!    transfers each, interleaved: all 100 land;
//! 5. a third gateway, with a 10-slot expiry window, takes a transaction whose
//!    blockhash the cluster does not know (as an expired one): rebroadcast, then
//!    retired as "expired" after the window, then no more rebroadcasts;
//! 6. SIGTERM: each gateway exits 0.
//!
//! Throughout, a gateway with the default schedule settings has its `/ready`
//! polled every 250 ms for at least three refetch periods (125 s): never 503.
//!
//! The gateway binary comes from the same target directory (`cargo test
//! --workspace` builds it; `AFTERBURNER_GATEWAY_BIN` overrides).
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failure should stop it loudly"
)]

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use afterburner_local::{
    Counts, GatewayProcess, TempDir, gateway_config, http_status, new_keypair_file,
};
use futures_util::StreamExt as _;
use solana_client::{
    client_error::ClientErrorKind, nonblocking::rpc_client::RpcClient,
    rpc_config::RpcSendTransactionConfig, rpc_request::RpcError,
};
use solana_commitment_config::CommitmentConfig;
use solana_sdk::{
    hash::Hash, pubkey::Pubkey, signature::Keypair, signature::Signature, signer::Signer,
    transaction::Transaction,
};
use solana_system_interface::instruction as system_instruction;
use solana_test_validator::TestValidatorGenesis;

/// Below the kernel's ephemeral ports; the validator binds a slice of this range.
const PORT_RANGE: (u16, u16) = (22_000, 22_500);
/// The validator's RPC port (websocket: the next one), outside `PORT_RANGE` so the
/// gateway can be pointed at it before the validator exists.
const RPC_PORT: u16 = 21_980;

const TRANSFERS: usize = 1_000;
const RETRY_INTERVAL_MS: u64 = 500;
/// Short, so that a transaction with a blockhash the cluster never had expires
/// within seconds (its backstop, `retry.expiry_slots` = 150 slots, is a minute).
const BLOCKHASH_GRACE_MS: u64 = 1_000;
const EXPIRY_SLOTS: u64 = 10;
/// How long `/ready` is watched: more than three refetch periods of the default
/// leader window (100 slots of 400 ms each).
const READY_WATCH: Duration = Duration::from_secs(125);

/// A gateway process named `name` (its files in `dir/name`), listening on `port`
/// (JSON-RPC) and `port + 1` (metrics), presenting `identity` (a new, unstaked key
/// when `None`), with `extra` configuration.
fn start_gateway(
    dir: &TempDir,
    name: &str,
    port: u16,
    identity: Option<PathBuf>,
    extra: &str,
) -> GatewayProcess {
    let dir = dir.0.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let identity = identity.unwrap_or_else(|| {
        let p = dir.join("identity.json");
        new_keypair_file(&p).unwrap();
        p
    });
    let rpc = SocketAddr::from(([127, 0, 0, 1], port));
    let metrics = SocketAddr::from(([127, 0, 0, 1], port + 1));
    let extra = format!(
        "[limits]\nqueue = 4096\n[packet_path]\nbind = \"127.0.0.1:0\"\n[log]\nlevel = \"warn\"\n{extra}"
    );
    let config = gateway_config(
        &identity,
        rpc,
        websocket_of(port),
        metrics,
        &format!("http://127.0.0.1:{RPC_PORT}"),
        &format!("ws://127.0.0.1:{}", RPC_PORT + 1),
        &extra,
    );
    GatewayProcess::spawn(&dir, &config, rpc, metrics, &[]).unwrap()
}

async fn wait_ready(gateway: &GatewayProcess, timeout: Duration) {
    let url = format!("{}/ready", gateway.url());
    wait_until("a gateway to become ready", timeout, || {
        let url = url.clone();
        async move { http_status(&url).await == Some(200) }
    })
    .await;
}

/// The dropped series with their reasons, for failure messages.
async fn drops(metrics: SocketAddr) -> String {
    afterburner_local::scrape(metrics)
        .await
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("afterburner_transactions_dropped_total{") && !l.ends_with(" 0"))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn counts(metrics: SocketAddr) -> Counts {
    Counts::scrape(metrics).await.unwrap()
}

/// `accepted = sent + dropped` once nothing is in flight (waits up to 10 s for that).
async fn assert_accounted(metrics: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut c = counts(metrics).await;
    while c.in_flight > 0.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        c = counts(metrics).await;
    }
    assert_eq!(c.in_flight, 0.0, "{c:?}");
    assert_eq!(c.accepted, c.sent + c.dropped, "{c:?}");
}

async fn wait_until<F: std::future::Future<Output = bool>>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> F,
) {
    let deadline = Instant::now() + timeout;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn transfer(payer: &Keypair, to: &Pubkey, lamports: u64, blockhash: Hash) -> Transaction {
    let ix = system_instruction::transfer(&payer.pubkey(), to, lamports);
    Transaction::new_signed_with_payer(&[ix], Some(&payer.pubkey()), &[payer], blockhash)
}

fn skip_preflight() -> RpcSendTransactionConfig {
    RpcSendTransactionConfig {
        skip_preflight: true,
        ..Default::default()
    }
}

/// Those of `sigs` the validator reports confirmed: when we saw it, and its slot.
async fn confirmed_among(
    validator: &RpcClient,
    sigs: &[Signature],
) -> Vec<(Signature, (Instant, u64))> {
    let mut out = Vec::new();
    for chunk in sigs.chunks(256) {
        let statuses = validator.get_signature_statuses(chunk).await.unwrap().value;
        let now = Instant::now();
        for (sig, status) in chunk.iter().zip(statuses) {
            if let Some(s) = status
                && s.satisfies_commitment(CommitmentConfig::confirmed())
            {
                assert!(s.err.is_none(), "{sig} failed on chain: {:?}", s.err);
                out.push((*sig, (now, s.slot)));
            }
        }
    }
    out
}

/// Polls the validator until every signature is confirmed (or `timeout`).
async fn wait_confirmed(
    validator: &RpcClient,
    sigs: &[Signature],
    timeout: Duration,
) -> HashMap<Signature, (Instant, u64)> {
    let deadline = Instant::now() + timeout;
    let mut seen = HashMap::new();
    while seen.len() < sigs.len() && Instant::now() < deadline {
        let pending: Vec<Signature> = sigs
            .iter()
            .filter(|s| !seen.contains_key(*s))
            .copied()
            .collect();
        seen.extend(confirmed_among(validator, &pending).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    seen
}

/// Reads a `GET /v1/transactions/events` stream until its `ended` event (30 s at
/// most between events); returns the events in order.
async fn events_until_ended(mut events: reqwest::Response) -> Vec<serde_json::Value> {
    let mut text = String::new();
    let mut seen: Vec<serde_json::Value> = Vec::new();
    while !seen.iter().any(|e| e["event"] == "ended") {
        let chunk = tokio::time::timeout(Duration::from_secs(30), events.chunk())
            .await
            .expect("an event within 30 s")
            .unwrap()
            .expect("the stream stays open");
        text.push_str(&String::from_utf8_lossy(&chunk));
        seen.extend(afterburner_test_support::sse::take_events(&mut text));
    }
    seen
}

/// Polls `GET /v1/transactions/{sig}` until its state is `state` (30 s at most).
async fn wait_for_lifecycle(gw_url: &str, sig: &Signature, state: &str) -> serde_json::Value {
    let url = format!("{gw_url}/v1/transactions/{sig}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let body = reqwest::get(&url).await.unwrap().bytes().await.unwrap();
        let record: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        if record["state"] == state {
            return record;
        }
        assert!(Instant::now() < deadline, "{state} not reached: {record}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The websocket proxy of the gateway on `port` (`port + 1` is its metrics).
fn websocket_of(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port + 2))
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_land_on_a_real_validator() {
    let dir = TempDir::new("e2e").unwrap();

    // Phase 1: the gateway first, RPC down: alive, but not ready.
    let retry = format!(
        "[retry]\ninterval_ms = {RETRY_INTERVAL_MS}\nstatus_interval_ms = 200\n\
         blockhash_grace_ms = {BLOCKHASH_GRACE_MS}\n\
         [validation]\npreflight = \"forward\"\n"
    );
    let first = start_gateway(&dir, "first", 21_970, None, &retry);
    let m = first.metrics;
    let gw_url = first.url();
    wait_until("the gateway to listen", Duration::from_secs(30), || {
        let url = format!("{gw_url}/health");
        async move { http_status(&url).await == Some(200) }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        http_status(&format!("{gw_url}/ready")).await,
        Some(503),
        "ready without a validator"
    );

    let started = Instant::now();
    let ledger = dir.0.join("ledger");
    // The staked gateway's own identity, staked by the validator (as local mode
    // does): the validator's own sending keeps its connection budget.
    let own_identity = dir.0.join("gateway-identity.json");
    let own = afterburner_local::keypair_file(&own_identity)
        .unwrap()
        .pubkey();
    let mut genesis = TestValidatorGenesis::default();
    genesis
        .ledger_path(&ledger)
        .port_range(PORT_RANGE)
        .rpc_port(RPC_PORT);
    afterburner_local::stake_gateway(&mut genesis, own);
    let (validator, payer) = genesis.start_async().await;
    assert_eq!(validator.rpc_url(), format!("http://127.0.0.1:{RPC_PORT}"));
    wait_ready(&first, Duration::from_secs(60)).await;
    println!(
        "gateway ready {:.1} s after the validator was started",
        started.elapsed().as_secs_f64()
    );
    let chain = validator.get_async_rpc_client();
    let via_gateway = RpcClient::new(gw_url.clone());

    // Readiness does not flap: a gateway with the default schedule settings is
    // polled every 250 ms for the rest of the run, at least three refetch periods
    // (a 200-slot window refetched below 100 slots: about 40 s at 400 ms slots).
    let watch = start_gateway(&dir, "ready-watch", 21_986, None, "");
    wait_ready(&watch, Duration::from_secs(30)).await;
    let watch_started = Instant::now();
    let watch_url = format!("{}/ready", watch.url());
    let watcher = tokio::spawn(async move {
        let mut polls = 0u64;
        let mut failures: Vec<(f64, u16, String)> = Vec::new();
        loop {
            let at = watch_started.elapsed().as_secs_f64();
            match reqwest::get(&watch_url).await {
                Ok(r) => {
                    let status = r.status().as_u16();
                    if status != 200 {
                        failures.push((at, status, r.text().await.unwrap_or_default()));
                    }
                }
                Err(e) => failures.push((at, 0, e.to_string())),
            }
            polls += 1;
            if watch_started.elapsed() >= READY_WATCH {
                return (polls, failures);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });

    // Phase 2: one transfer, through solana-client's RpcClient pointed at us.
    let to = Pubkey::new_unique();
    let blockhash = chain.get_latest_blockhash().await.unwrap();
    let tx = transfer(&payer, &to, 5_000_000, blockhash);
    let sig = via_gateway
        .send_transaction_with_config(&tx, skip_preflight())
        .await
        .unwrap();
    assert_eq!(sig, tx.signatures[0]);
    let seen = wait_confirmed(&chain, &[sig], Duration::from_secs(30)).await;
    assert!(seen.contains_key(&sig), "the transfer did not land");
    assert_eq!(chain.get_balance(&to).await.unwrap(), 5_000_000);
    wait_until(
        "the gateway to see it landed",
        Duration::from_secs(10),
        || async move { counts(m).await.landed >= 1.0 },
    )
    .await;
    let c = counts(m).await;
    assert_eq!(c.tracked, 0.0, "landed: no longer tracked");
    tokio::time::sleep(Duration::from_millis(RETRY_INTERVAL_MS * 4)).await;
    assert_eq!(counts(m).await.sends, c.sends, "rebroadcast after landing");

    // Phase 3: preflight forwarded to the validator's own RPC (the client asks for
    // finalized preflight: a finalized blockhash, so the simulation knows it).
    let (blockhash, _) = chain
        .get_latest_blockhash_with_commitment(CommitmentConfig::finalized())
        .await
        .unwrap();
    let good = transfer(&payer, &to, 1_000_000, blockhash);
    let sig = via_gateway.send_transaction(&good).await.unwrap();
    let poor = Keypair::new();
    let bad = transfer(&poor, &to, 1_000_000, blockhash);
    let accepted_before = counts(m).await.accepted;
    let err = via_gateway.send_transaction(&bad).await.unwrap_err();
    match err.kind() {
        ClientErrorKind::RpcError(RpcError::RpcResponseError { code, message, .. }) => {
            assert_eq!(*code, -32002, "{message}");
            assert!(
                message.starts_with("Transaction simulation failed: "),
                "{message}"
            );
        }
        other => panic!("expected agave's preflight failure, got {other:?}"),
    }
    assert_eq!(
        counts(m).await.accepted,
        accepted_before,
        "a failed preflight is not accepted"
    );
    let seen = wait_confirmed(&chain, &[sig], Duration::from_secs(30)).await;
    assert!(
        seen.contains_key(&sig),
        "the preflighted transfer did not land"
    );
    assert_eq!(chain.get_balance(&to).await.unwrap(), 6_000_000);

    // Phase 3b: the gateway as the only RPC URL (drop-in RPC): solana-client's
    // send_and_confirm_transaction asks it for a blockhash, sends with preflight, and
    // polls statuses and blockhash validity, all through the gateway.
    let blockhash = via_gateway.get_latest_blockhash().await.unwrap();
    // A different amount: with the same blockhash as phase 3's it would be the same
    // transaction.
    let dropin = transfer(&payer, &to, 2_000_000, blockhash);
    // ... and its websocket: signatureSubscribe through the gateway's proxy.
    let pubsub = solana_client::nonblocking::pubsub_client::PubsubClient::new(&format!(
        "ws://{}",
        websocket_of(21_970)
    ))
    .await
    .expect("the gateway's websocket proxy");
    // ... and the gateway's own lifecycle event stream, for this transaction.
    let events = reqwest::get(format!(
        "{gw_url}/v1/transactions/events?signature={}",
        dropin.signatures[0]
    ))
    .await
    .unwrap();
    assert_eq!(events.status(), 200);
    let (mut notifications, _unsubscribe) = pubsub
        .signature_subscribe(
            &dropin.signatures[0],
            Some(solana_client::rpc_config::RpcSignatureSubscribeConfig {
                commitment: Some(CommitmentConfig::confirmed()),
                enable_received_notification: Some(false),
            }),
        )
        .await
        .expect("signatureSubscribe through the gateway");
    let sig = tokio::time::timeout(
        Duration::from_secs(60),
        via_gateway.send_and_confirm_transaction(&dropin),
    )
    .await
    .expect("confirmed within 60 s")
    .unwrap();
    assert_eq!(sig, dropin.signatures[0]);
    assert_eq!(via_gateway.get_balance(&to).await.unwrap(), 8_000_000);
    let notified = tokio::time::timeout(Duration::from_secs(30), notifications.next())
        .await
        .expect("notified within 30 s")
        .expect("a notification");
    println!(
        "signatureSubscribe through the gateway: notified in slot {}",
        notified.context.slot
    );
    // Its lifecycle, from the gateway that accepted it: sent to the validator (the
    // leader, named), then landed in a slot the validator led.
    let validator_identity =
        solana_sdk::signature::read_keypair_file(ledger.join("validator-keypair.json"))
            .unwrap()
            .pubkey();
    let lifecycle: serde_json::Value = wait_for_lifecycle(&gw_url, &sig, "landed").await;
    assert_eq!(lifecycle["firstSend"]["result"], "sent", "{lifecycle}");
    let landed_slot = lifecycle["landed"]["slot"]
        .as_u64()
        .expect("a landing slot");
    assert_eq!(
        lifecycle["landed"]["leader"],
        validator_identity.to_string(),
        "{lifecycle}"
    );
    assert_eq!(lifecycle["landed"]["sentToLeader"], true, "{lifecycle}");
    let first_send = &lifecycle["sends"][0];
    assert_eq!(
        first_send["leader"],
        validator_identity.to_string(),
        "{lifecycle}"
    );
    assert_eq!(first_send["outcome"], "sent", "{lifecycle}");
    println!("lifecycle through the gateway: {lifecycle}");
    // The event stream told it live: accepted -> sent -> landed.
    let seen = events_until_ended(events).await;
    let kinds: Vec<&str> = seen.iter().filter_map(|e| e["event"].as_str()).collect();
    assert_eq!(kinds.first(), Some(&"accepted"), "{seen:?}");
    assert!(
        seen.iter()
            .any(|e| e["event"] == "send" && e["outcome"] == "sent"),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|e| e["event"] == "first_send" && e["result"] == "sent"),
        "{seen:?}"
    );
    let ended = seen.last().unwrap();
    assert_eq!(ended["state"], "landed", "{seen:?}");
    assert_eq!(ended["slot"], landed_slot, "{seen:?}");
    // Who led the slots ours landed in: the validator, which we had sent to.
    let body = reqwest::get(format!("{gw_url}/v1/leaders"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let leaders: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let leader = &leaders["leaders"][0];
    assert_eq!(
        leader["identity"],
        validator_identity.to_string(),
        "{leaders}"
    );
    assert_eq!(leader["connection"]["established"], true, "{leaders}");
    assert!(
        leader["record"]["landed"].as_u64().unwrap() >= 3,
        "{leaders}"
    );
    assert_eq!(
        leader["record"]["landed"], leader["record"]["landedSentTo"],
        "we had sent each one to the slot's leader: {leaders}"
    );

    // Phase 3c: expiry follows the blockhash. One the cluster never had expires once
    // the cluster calls it invalid for the grace window (seconds, not the 150-slot
    // backstop). A durable-nonce transaction does not expire with its "blockhash"
    // (the nonce): a valid one lands; one signed with a nonce that has since
    // advanced is given up as `nonce_advanced`; one whose nonce is current but that
    // cannot land (its fee payer has no account) is still rebroadcast after the
    // grace window, not expired.
    let unknown = transfer(&payer, &to, 1, Hash::new_unique());
    let unknown_sig = via_gateway
        .send_transaction_with_config(&unknown, skip_preflight())
        .await
        .unwrap();
    let nonce = Keypair::new();
    let rent = chain
        // A nonce account's size (`solana_nonce::state::State::size()`).
        .get_minimum_balance_for_rent_exemption(80)
        .await
        .unwrap();
    let create = system_instruction::create_nonce_account(
        &payer.pubkey(),
        &nonce.pubkey(),
        &payer.pubkey(),
        rent,
    );
    // At the commitment the client's preflight asks for (finalized).
    let blockhash = via_gateway.get_latest_blockhash().await.unwrap();
    let create = Transaction::new_signed_with_payer(
        &create,
        Some(&payer.pubkey()),
        &[&payer, &nonce],
        blockhash,
    );
    // Through the gateway, as a client with it as its only RPC URL would.
    via_gateway
        .send_and_confirm_transaction(&create)
        .await
        .unwrap();
    let nonce_now = || async {
        let account = solana_client::nonce_utils::nonblocking::get_account_with_commitment(
            &chain,
            &nonce.pubkey(),
            CommitmentConfig::confirmed(),
        )
        .await
        .unwrap();
        solana_client::nonce_utils::data_from_account(&account)
            .unwrap()
            .blockhash()
    };
    let nonced = |fee_payer: &Keypair, lamports: u64, value: Hash| {
        let ixs = [
            system_instruction::advance_nonce_account(&nonce.pubkey(), &payer.pubkey()),
            system_instruction::transfer(&payer.pubkey(), &to, lamports),
        ];
        Transaction::new_signed_with_payer(
            &ixs,
            Some(&fee_payer.pubkey()),
            &[fee_payer, &payer],
            value,
        )
    };
    let first_nonce = nonce_now().await;
    let good = nonced(&payer, 2, first_nonce);
    let good_sig = via_gateway
        .send_transaction_with_config(&good, skip_preflight())
        .await
        .unwrap();
    wait_for_lifecycle(&gw_url, &good_sig, "landed").await;
    let second_nonce = nonce_now().await;
    assert_ne!(first_nonce, second_nonce, "the landed transfer advanced it");
    // The old nonce again (another amount: another transaction): it can never land.
    let late = nonced(&payer, 3, first_nonce);
    let late_sig = via_gateway
        .send_transaction_with_config(&late, skip_preflight())
        .await
        .unwrap();
    let unfunded = Keypair::new();
    let stuck = nonced(&unfunded, 4, second_nonce);
    let stuck_sig = via_gateway
        .send_transaction_with_config(&stuck, skip_preflight())
        .await
        .unwrap();
    let stuck_sent = Instant::now();
    let expired = wait_for_lifecycle(&gw_url, &unknown_sig, "expired").await;
    let after_ms = expired["endedAfterMs"].as_f64().unwrap();
    assert!(
        after_ms < 15_000.0,
        "expired by its blockhash, not the backstop: {expired}"
    );
    println!("a blockhash the cluster never had: expired after {after_ms:.0} ms");
    let advanced = wait_for_lifecycle(&gw_url, &late_sig, "nonce_advanced").await;
    println!(
        "a transfer with an advanced nonce: given up after {:.0} ms",
        advanced["endedAfterMs"].as_f64().unwrap()
    );
    // Well past the grace window (and several status polls) for the stuck one.
    tokio::time::sleep_until((stuck_sent + Duration::from_millis(3 * BLOCKHASH_GRACE_MS)).into())
        .await;
    let stuck_state = wait_for_lifecycle(&gw_url, &stuck_sig, "in_flight").await;
    assert!(
        stuck_state["sends"].as_array().unwrap().len() > 1,
        "still rebroadcast: {stuck_state}"
    );
    assert_eq!(nonce_now().await, second_nonce, "nothing advanced it");

    // All but the stuck nonce transfer retired (it is rebroadcast until its own
    // limit; the shutdown below ends it).
    wait_until(
        "the first gateway to retire all but one",
        Duration::from_secs(10),
        || async move { counts(m).await.tracked == 1.0 },
    )
    .await;
    assert_accounted(m).await;
    // Phases 2, 3 and 3b, the nonce account's creation and the nonce transfer.
    assert_eq!(counts(m).await.landed, 5.0);
    first.terminate(Duration::from_secs(10)).unwrap();

    // Phase 4: 1,000 distinct transfers to one recipient, 8 senders at a time,
    // through a gateway with its own staked identity and the default retry policy.
    let staked = start_gateway(
        &dir,
        "staked",
        21_972,
        Some(own_identity.clone()),
        "[retry]\nstatus_interval_ms = 200\n",
    );
    wait_ready(&staked, Duration::from_secs(30)).await;
    let m = staked.metrics;
    let gw_url = staked.url();
    let to = Pubkey::new_unique();
    let payer = Arc::new(payer);
    let balance_before = chain.get_balance(&payer.pubkey()).await.unwrap();
    let blockhash = chain.get_latest_blockhash().await.unwrap();
    let txs: Vec<Transaction> = (0..TRANSFERS as u64)
        .map(|i| transfer(&payer, &to, 1_000_000 + i, blockhash))
        .collect();
    let expected: u64 = (0..TRANSFERS as u64).map(|i| 1_000_000 + i).sum();
    // Confirmations are polled while the transfers are still being posted, so
    // each one's landing time is its own.
    let posted: Arc<std::sync::Mutex<Vec<Signature>>> = Arc::default();
    let poller = {
        let posted = posted.clone();
        let chain = validator.get_async_rpc_client();
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(150);
            let mut seen: HashMap<Signature, (Instant, u64)> = HashMap::new();
            while seen.len() < TRANSFERS && Instant::now() < deadline {
                let pending: Vec<Signature> = posted
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|s| !seen.contains_key(*s))
                    .copied()
                    .collect();
                seen.extend(confirmed_among(&chain, &pending).await);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            seen
        })
    };
    let mut sent: Vec<(Signature, Instant, u64)> = Vec::with_capacity(TRANSFERS);
    let t0 = Instant::now();
    for chunk in txs.chunks(8) {
        let slot = chain.get_slot().await.unwrap();
        let mut set = tokio::task::JoinSet::new();
        for tx in chunk {
            let client = RpcClient::new(gw_url.clone());
            let tx = tx.clone();
            set.spawn(async move {
                let at = Instant::now();
                let sig = client
                    .send_transaction_with_config(&tx, skip_preflight())
                    .await
                    .unwrap();
                assert_eq!(sig, tx.signatures[0]);
                (sig, at)
            });
        }
        while let Some(r) = set.join_next().await {
            let (sig, at) = r.unwrap();
            posted.lock().unwrap().push(sig);
            sent.push((sig, at, slot));
        }
    }
    let posting = t0.elapsed();
    let seen = poller.await.unwrap();
    assert_eq!(
        seen.len(),
        TRANSFERS,
        "{} of {TRANSFERS} landed; {:?}; dropped: {}",
        seen.len(),
        counts(m).await,
        drops(m).await
    );
    assert_eq!(
        chain.get_balance(&to).await.unwrap(),
        expected,
        "the recipient got each transfer exactly once"
    );
    let fees = 5_000 * TRANSFERS as u64;
    assert_eq!(
        chain.get_balance(&payer.pubkey()).await.unwrap(),
        balance_before - expected - fees,
        "the payer paid each transfer and fee exactly once"
    );
    let mut ms: Vec<f64> = sent
        .iter()
        .map(|(sig, at, _)| seen[sig].0.duration_since(*at).as_secs_f64() * 1e3)
        .collect();
    let mut slots: Vec<f64> = sent
        .iter()
        .map(|(sig, _, slot)| seen[sig].1.saturating_sub(*slot) as f64)
        .collect();
    ms.sort_by(f64::total_cmp);
    slots.sort_by(f64::total_cmp);
    println!(
        "{TRANSFERS} transfers posted in {:.2} s; confirmed (polled every 50 ms) after: \
         p50 {:.0} ms / {} slots, p99 {:.0} ms / {} slots, max {:.0} ms",
        posting.as_secs_f64(),
        percentile(&ms, 0.5),
        percentile(&slots, 0.5),
        percentile(&ms, 0.99),
        percentile(&slots, 0.99),
        ms[ms.len() - 1],
    );
    wait_until(
        "the gateway to retire all as landed",
        Duration::from_secs(20),
        || async move { counts(m).await.tracked == 0.0 },
    )
    .await;
    let c = counts(m).await;
    println!("staked gateway after the 1,000: {c:?}");
    assert_eq!(c.landed, TRANSFERS as f64, "{c:?}");
    assert_eq!(c.dropped, 0.0, "{c:?}; {}", drops(m).await);
    assert_accounted(m).await;

    // Phase 4b: one validator, two senders at once (issue 15). The validator's own
    // RPC `sendTransaction` (its send-transaction-service, presenting the
    // validator's identity) and the gateway (its own staked identity) each take 50
    // transfers, interleaved: all 100 land. With one shared identity, whichever
    // connected first held agave's one connection per identity.
    let blockhash = chain.get_latest_blockhash().await.unwrap();
    let via_staked = RpcClient::new(gw_url.clone());
    let mut both: Vec<(Signature, &str, Instant)> = Vec::with_capacity(100);
    for i in 0..50u64 {
        let a = transfer(&payer, &to, 2_000_000 + i, blockhash);
        let b = transfer(&payer, &to, 3_000_000 + i, blockhash);
        let (ra, rb) = tokio::join!(
            chain.send_transaction_with_config(&a, skip_preflight()),
            via_staked.send_transaction_with_config(&b, skip_preflight()),
        );
        let now = Instant::now();
        both.push((ra.unwrap(), "validator RPC", now));
        both.push((rb.unwrap(), "gateway", now));
    }
    let sigs: Vec<Signature> = both.iter().map(|(s, ..)| *s).collect();
    let seen = wait_confirmed(&chain, &sigs, Duration::from_secs(60)).await;
    for who in ["validator RPC", "gateway"] {
        let mut ms: Vec<f64> = both
            .iter()
            .filter(|(_, w, _)| *w == who)
            .filter_map(|(sig, _, at)| {
                Some(seen.get(sig)?.0.duration_since(*at).as_secs_f64() * 1e3)
            })
            .collect();
        ms.sort_by(f64::total_cmp);
        println!(
            "concurrent senders, {who}: {} of 50 confirmed, p50 {:.0} ms, max {:.0} ms",
            ms.len(),
            if ms.is_empty() {
                f64::NAN
            } else {
                percentile(&ms, 0.5)
            },
            ms.last().copied().unwrap_or(f64::NAN)
        );
    }
    assert_eq!(
        seen.len(),
        100,
        "both senders land: {} of 100; gateway drops: {}",
        seen.len(),
        drops(m).await
    );
    staked.terminate(Duration::from_secs(10)).unwrap();

    // Phase 5: a blockhash the cluster does not know, as if long expired.
    let short = start_gateway(
        &dir,
        "short-expiry",
        21_974,
        None,
        &format!("[retry]\ninterval_ms = {RETRY_INTERVAL_MS}\nexpiry_slots = {EXPIRY_SLOTS}\n"),
    );
    wait_ready(&short, Duration::from_secs(30)).await;
    let m = short.metrics;
    let stale = transfer(&payer, &to, 1, Hash::new_unique());
    let sig = RpcClient::new(short.url())
        .send_transaction_with_config(&stale, skip_preflight())
        .await
        .unwrap();
    let accepted_at = Instant::now();
    let slot_at = chain.get_slot().await.unwrap();
    wait_until(
        "the stale transaction to be retired as expired",
        Duration::from_secs(60),
        || async move { counts(m).await.expired == 1.0 },
    )
    .await;
    let expired_after = accepted_at.elapsed();
    let slots_after = chain.get_slot().await.unwrap().saturating_sub(slot_at);
    let c = counts(m).await;
    println!(
        "unknown blockhash retired as expired after {:.1} s, {slots_after} slots (window \
         {EXPIRY_SLOTS}), {} rebroadcasts",
        expired_after.as_secs_f64(),
        c.retries
    );
    assert!(
        slots_after + 1 >= EXPIRY_SLOTS,
        "retired {slots_after} slots after acceptance, before its {EXPIRY_SLOTS}-slot window"
    );
    assert!(c.retries >= 1.0, "never rebroadcast: {c:?}");
    tokio::time::sleep(Duration::from_millis(RETRY_INTERVAL_MS * 4)).await;
    assert_eq!(
        counts(m).await.retries,
        c.retries,
        "rebroadcast after expiry"
    );
    assert!(
        chain.get_signature_statuses(&[sig]).await.unwrap().value[0].is_none(),
        "an unknown blockhash landed"
    );
    assert_eq!(c.tracked, 0.0, "{c:?}");
    assert_accounted(m).await;

    // The readiness watch: never 503 through its three refetch periods.
    let (polls, failures) = watcher.await.unwrap();
    assert!(
        failures.is_empty(),
        "/ready failed {} of {polls} polls: {failures:?}",
        failures.len()
    );
    println!(
        "/ready polled {polls} times over {:.0} s (default schedule settings): never 503",
        READY_WATCH.as_secs_f64()
    );

    // Phase 6 (the others were stopped above): SIGTERM, exit 0.
    watch.terminate(Duration::from_secs(10)).unwrap();
    short.terminate(Duration::from_secs(10)).unwrap();
    drop(validator);
}
