//! Prometheus metrics: the gateway's own (registered metrics), and the engine's,
//! AF_XDP and leader-tracker counters exported at scrape time from their atomics
//! (a custom collector, so the hot paths keep their plain atomics). Those are
//! declared once, with their names and help, where they are kept
//! (`afterburner_stats::declare_stats!`); the collector renders every declared
//! family, so none can be collected without being exported.
//!
//! Conventions: one `afterburner_` prefix, counters end in `_total`, durations are
//! `_seconds` histograms, labels take values from fixed sets.

use std::sync::{Arc, Mutex, PoisonError};

use afterburner_quic::{DropReason, EngineStats};
use afterburner_stats::Kind;
use afterburner_xdp::xdp::XdpStats;
use leader_schedule::TrackerStats;
use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    core::{Collector, Desc},
    proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType},
};
use strum::IntoEnumIterator as _;

use crate::rpc::RejectReason;

/// Gateway-level reasons a transaction is dropped (beside the engine's).
pub const GATEWAY_DROP_REASONS: [&str; 1] = ["no_leader"];

/// Why an accepted transaction's first send reached no leader: the engine's reasons,
/// then the gateway's ([`GATEWAY_DROP_REASONS`]).
pub const FIRST_DROP_LABELS: [&str; DropReason::LABELS.len() + GATEWAY_DROP_REASONS.len()] = {
    let mut out = [""; DropReason::LABELS.len() + GATEWAY_DROP_REASONS.len()];
    let mut i = 0;
    while i < DropReason::LABELS.len() {
        out[i] = DropReason::LABELS[i];
        i += 1;
    }
    let mut j = 0;
    while j < GATEWAY_DROP_REASONS.len() {
        out[i + j] = GATEWAY_DROP_REASONS[j];
        j += 1;
    }
    out
};

/// The first-send accounting that must add up: accepted = sent + dropped + in
/// flight. Each transition updates it under one lock and a scrape copies it under
/// the same lock, so no scrape shows a transaction in two states or in none (with
/// separate counters a scrape could land between "in flight -1" and "sent +1").
#[derive(Debug, Default)]
pub struct Accounting(Mutex<AccountingSnapshot>);

/// A consistent copy of [`Accounting`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccountingSnapshot {
    /// Transactions accepted (validated, not a duplicate, queued).
    pub accepted: u64,
    /// Accepted transactions whose first send reached at least one leader.
    pub sent: u64,
    /// Accepted transactions whose first send reached no leader, by reason
    /// ([`FIRST_DROP_LABELS`] order).
    pub dropped: [u64; FIRST_DROP_LABELS.len()],
    /// Accepted transactions whose first send has no outcome yet.
    pub in_flight: u64,
}

impl Accounting {
    fn with(&self, f: impl FnOnce(&mut AccountingSnapshot)) {
        // The counts stay meaningful even if a holder panicked: keep counting.
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// A transaction was accepted: in flight until its first send is done.
    pub fn accept(&self) {
        self.with(|a| {
            a.accepted += 1;
            a.in_flight += 1;
        });
    }

    /// A transaction's first send is done: sent, or dropped for `reason` (one of
    /// [`FIRST_DROP_LABELS`]).
    pub fn first_send_done(&self, result: Result<(), &str>) {
        self.with(|a| {
            a.in_flight = a.in_flight.saturating_sub(1);
            match result {
                Ok(()) => a.sent += 1,
                Err(reason) => {
                    let i = FIRST_DROP_LABELS.iter().position(|l| *l == reason);
                    debug_assert!(i.is_some(), "unknown drop reason {reason}");
                    // An unknown label is a bug; still count the transaction.
                    a.dropped[i.unwrap_or(FIRST_DROP_LABELS.len() - 1)] += 1;
                }
            }
        });
    }

    /// A consistent copy.
    pub fn snapshot(&self) -> AccountingSnapshot {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl AccountingSnapshot {
    /// Dropped, all reasons together.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().sum()
    }

    /// The exported families (names and help as declared here, once).
    fn families(&self) -> Vec<afterburner_stats::Family> {
        use afterburner_stats::Family;
        let one = |name, help, kind, v| Family {
            name,
            help,
            kind,
            series: vec![(None, v)],
            label: None,
        };
        vec![
            one(
                "afterburner_transactions_accepted_total",
                "Transactions accepted",
                Kind::Counter,
                self.accepted,
            ),
            one(
                "afterburner_transactions_sent_total",
                "Accepted transactions whose first send reached at least one leader",
                Kind::Counter,
                self.sent,
            ),
            Family {
                name: "afterburner_transactions_dropped_total",
                help: "Accepted transactions whose first send reached no leader, by reason",
                kind: Kind::Counter,
                series: FIRST_DROP_LABELS
                    .iter()
                    .zip(self.dropped)
                    .map(|(l, v)| (Some(*l), v))
                    .collect(),
                label: Some("reason"),
            },
            one(
                "afterburner_transactions_in_flight",
                "Accepted transactions whose first send has no outcome yet",
                Kind::Gauge,
                self.in_flight,
            ),
        ]
    }
}

/// Exports [`Accounting`] from one snapshot per scrape.
struct AccountingCollector {
    accounting: Arc<Accounting>,
    desc: Desc,
}

impl Collector for AccountingCollector {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.accounting
            .snapshot()
            .families()
            .iter()
            .map(family)
            .collect()
    }
}

/// How tracked transactions leave the retry set.
pub fn retire_states() -> impl Iterator<Item = &'static str> {
    crate::ledger::Terminal::iter().map(crate::ledger::Terminal::label)
}

/// Every metric the gateway registers itself.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    /// The AF_XDP socket's counters, when there is one (replaced when a restarted
    /// engine reopens the packet path).
    pub xdp_source: Arc<arc_swap::ArcSwapOption<XdpStats>>,
    /// JSON-RPC calls by method and result code ("ok" or the error code).
    pub rpc_requests: IntCounterVec,
    /// Calls answered by the cluster RPC, by method (from the allow-list) and result.
    pub forwarded: IntCounterVec,
    /// The websocket proxy: connections, messages each way, refusals by reason.
    pub websocket: IntCounterVec,
    /// Websocket clients connected now.
    pub websocket_clients: IntGauge,
    /// Sends by leader (its identity for the first 32 seen, then `other`;
    /// `unknown`: static leaders) and result (`sent`, `dropped`).
    pub leader_sends: IntCounterVec,
    /// Landed transactions by the leader of their slot, and whether we had sent to
    /// that leader (`yes`, `no`).
    pub leader_landed: IntCounterVec,
    /// accepted = sent + dropped + in flight, updated and exported as one.
    pub accounting: Arc<Accounting>,
    /// Duplicates answered without a second send.
    pub duplicates: IntCounter,
    /// Transactions refused, by reason ([`RejectReason`]).
    pub rejected: IntCounterVec,
    /// Per-leader send attempts by outcome ("sent" or a drop reason).
    pub sends: IntCounterVec,
    /// Rebroadcasts.
    pub retries: IntCounter,
    /// Tracked transactions leaving the retry set, by state ([`retire_states`]).
    pub retired: IntCounterVec,
    /// Transactions tracked for rebroadcast (gauge).
    pub tracked: IntGauge,
    /// Transactions waiting in the send queue (gauge).
    pub queue_depth: IntGauge,
    /// Request received → handed to the engine (seconds).
    pub accept_to_engine: Histogram,
    /// Request read → the transaction's first frame handed to the packet path (seconds).
    pub request_to_wire: Histogram,
    /// Accepted → seen landed (seconds).
    pub landing: Histogram,
    /// 1 when ready.
    pub ready: IntGauge,
    /// The tracker's current slot (set at scrape time).
    pub current_slot: IntGauge,
    /// Seconds since the leader schedule was fetched (set at scrape time).
    pub schedule_age: prometheus::Gauge,
    /// 1 while the schedule is stale: refreshes failing or slots silent (set at
    /// scrape time).
    pub schedule_stale: IntGauge,
    /// 1 while the engine thread runs.
    pub engine_up: IntGauge,
    /// `too_many` closes (code 4) by leader: the identity's connections at that
    /// leader are taken by another sender with the same identity.
    pub leader_refusals: IntCounterVec,
    /// Leaders refusing our identity's connection now (`too_many`).
    pub leaders_refusing: IntGauge,
    /// 1 for the identity presented now, by public key.
    pub identity_info: IntGaugeVec,
    /// Identity switches, by what asked (`file`, `sighup`, `admin`).
    pub identity_switches: IntCounterVec,
    /// Refused identity changes (not a keypair, unreadable, the engine did not
    /// take it), by what asked.
    pub identity_errors: IntCounterVec,
    /// Engine threads that ended on their own (an I/O error, a panic), by what the
    /// gateway did about it.
    pub engine_failures: IntCounterVec,
    /// Entries of the leader policy in force, by list (`deny`, `allow`, `overrides`).
    pub leader_policy_entries: IntGaugeVec,
    /// Connections closed on arrival by a listener's caps, by listener and reason
    /// (`total`, `per_ip`).
    pub connections_refused: IntCounterVec,
    /// Transactions by API key (its configured name) and result (`accepted`,
    /// `rate_limited`, `share_full`).
    pub api_key_transactions: IntCounterVec,
    /// Requests refused for their API key, by reason (`missing`, `unknown`).
    pub api_unauthorized: IntCounterVec,
}

impl Metrics {
    /// Creates every label of `key`, so its rates work from the first scrape.
    pub fn register_key(&self, key: &str) {
        for result in ["accepted", "rate_limited", "share_full"] {
            self.api_key_transactions.with_label_values(&[key, result]);
        }
    }

    /// Registers everything, plus `afterburner_build_info`.
    ///
    /// # Errors
    /// Registration errors (duplicate names: a bug).
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| IntCounter::new(name, help);
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels)
        };
        let m = Self {
            rpc_requests: counter_vec(
                "afterburner_rpc_requests_total",
                "JSON-RPC calls by method and result",
                &["method", "result"],
            )?,
            forwarded: counter_vec(
                "afterburner_rpc_forwarded_total",
                "JSON-RPC calls answered by the cluster RPC, by method and result",
                &["method", "result"],
            )?,
            websocket: counter_vec(
                "afterburner_websocket_events_total",
                "Websocket proxy: connections, messages to_upstream/to_client, refusals by reason",
                &["event"],
            )?,
            leader_sends: counter_vec(
                "afterburner_leader_sends_total",
                "Sends by leader identity (first 32, then other) and result",
                &["leader", "result"],
            )?,
            leader_landed: counter_vec(
                "afterburner_leader_landed_total",
                "Landed transactions by the leader of their slot, and whether we sent to it",
                &["leader", "sent_to"],
            )?,
            websocket_clients: IntGauge::new(
                "afterburner_websocket_clients",
                "Websocket proxy clients connected now",
            )?,
            accounting: Arc::default(),
            duplicates: counter(
                "afterburner_transactions_duplicate_total",
                "Duplicates answered without a second send",
            )?,
            rejected: counter_vec(
                "afterburner_transactions_rejected_total",
                "Transactions refused, by reason",
                &["reason"],
            )?,
            sends: counter_vec(
                "afterburner_sends_total",
                "Per-leader send attempts by outcome",
                &["outcome"],
            )?,
            retries: counter("afterburner_retries_total", "Rebroadcasts")?,
            retired: counter_vec(
                "afterburner_transactions_retired_total",
                "Tracked transactions leaving the retry set, by state",
                &["state"],
            )?,
            tracked: IntGauge::new(
                "afterburner_transactions_tracked",
                "Transactions tracked for rebroadcast",
            )?,
            queue_depth: IntGauge::new(
                "afterburner_send_queue_depth",
                "Transactions waiting in the send queue",
            )?,
            accept_to_engine: Histogram::with_opts(
                HistogramOpts::new(
                    "afterburner_accept_to_engine_seconds",
                    "From request received to handed to the engine",
                )
                .buckets(prometheus::exponential_buckets(1e-6, 2.0, 20)?),
            )?,
            request_to_wire: Histogram::with_opts(
                HistogramOpts::new(
                    "afterburner_request_to_wire_seconds",
                    "From request read to the transaction's first frame handed to the packet path",
                )
                .buckets(prometheus::exponential_buckets(1e-6, 1.25, 64)?),
            )?,
            landing: Histogram::with_opts(
                HistogramOpts::new(
                    "afterburner_landing_seconds",
                    "From accepted to seen landed",
                )
                .buckets(prometheus::exponential_buckets(0.05, 2.0, 12)?),
            )?,
            ready: IntGauge::new("afterburner_ready", "1 when ready to send")?,
            current_slot: IntGauge::new("afterburner_current_slot", "The estimated current slot")?,
            schedule_age: prometheus::Gauge::new(
                "afterburner_leader_schedule_age_seconds",
                "Seconds since the leader schedule was last fetched (+Inf before the first; 0 with static leaders)",
            )?,
            schedule_stale: IntGauge::new(
                "afterburner_leader_schedule_stale",
                "1 while the leader schedule is stale: its last refreshes failed or no slot was observed for cluster.stale_after_secs (a reason shown, not a refusal)",
            )?,
            engine_up: IntGauge::new(
                "afterburner_engine_up",
                "1 while the QUIC engine thread runs",
            )?,
            leader_refusals: counter_vec(
                "afterburner_leader_refusals_total",
                "Connections a leader closed with code 4 (too_many): its connections for our identity are taken by another sender presenting it",
                &["leader"],
            )?,
            identity_info: IntGaugeVec::new(
                Opts::new(
                    "afterburner_identity_info",
                    "1 for the identity (public key) presented to leaders now",
                ),
                &["pubkey"],
            )?,
            identity_switches: counter_vec(
                "afterburner_identity_switches_total",
                "Identity switches while running, by what asked: file (the watched keypair file changed), sighup, admin (the admin socket)",
                &["source"],
            )?,
            identity_errors: counter_vec(
                "afterburner_identity_errors_total",
                "Refused identity changes (not a keypair, unreadable, the engine did not take it); the old identity stays",
                &["source"],
            )?,
            leader_policy_entries: IntGaugeVec::new(
                Opts::new(
                    "afterburner_leader_policy_entries",
                    "Entries of the leader policy in force, by list: deny (never sent to), allow (only these, when not empty), overrides (TPU addresses by identity)",
                ),
                &["list"],
            )?,
            connections_refused: counter_vec(
                "afterburner_http_connections_refused_total",
                "Connections closed on arrival because a listener's cap was reached, by listener (rpc, websocket, metrics) and reason (total: rpc.max_connections; per_ip: rpc.max_connections_per_ip)",
                &["listener", "reason"],
            )?,
            api_key_transactions: counter_vec(
                "afterburner_api_key_transactions_total",
                "Transactions by API key (the key's configured name, never its secret) and result: accepted, rate_limited (over its tx_per_sec/burst), share_full (its queue_share of the ledger is taken)",
                &["key", "result"],
            )?,
            api_unauthorized: counter_vec(
                "afterburner_api_unauthorized_total",
                "Requests answered 401 because their API key was missing or unknown",
                &["reason"],
            )?,
            leaders_refusing: IntGauge::new(
                "afterburner_leaders_refusing",
                "Leaders refusing our identity's connection now (too_many within the last 15 s, nothing written to them since)",
            )?,
            engine_failures: counter_vec(
                "afterburner_engine_failures_total",
                "QUIC engine threads that ended on their own (I/O error, panic), by action: restarted, restart_failed, exit",
                &["action"],
            )?,
            registry,
            xdp_source: Arc::default(),
        };
        let build = IntGaugeVec::new(
            Opts::new("afterburner_build_info", "Build information"),
            &["version"],
        )?;
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        for c in [
            Box::new(m.rpc_requests.clone()) as Box<dyn Collector>,
            Box::new(m.forwarded.clone()),
            Box::new(m.websocket.clone()),
            Box::new(m.websocket_clients.clone()),
            Box::new(m.leader_sends.clone()),
            Box::new(m.leader_landed.clone()),
            Box::new(AccountingCollector {
                accounting: m.accounting.clone(),
                desc: Desc::new(
                    "afterburner_transactions_accepted_total".into(),
                    "the first-send accounting".into(),
                    vec![],
                    Default::default(),
                )?,
            }),
            Box::new(m.duplicates.clone()),
            Box::new(m.rejected.clone()),
            Box::new(m.sends.clone()),
            Box::new(m.retries.clone()),
            Box::new(m.retired.clone()),
            Box::new(m.tracked.clone()),
            Box::new(m.queue_depth.clone()),
            Box::new(m.accept_to_engine.clone()),
            Box::new(m.request_to_wire.clone()),
            Box::new(m.landing.clone()),
            Box::new(m.ready.clone()),
            Box::new(m.current_slot.clone()),
            Box::new(m.schedule_age.clone()),
            Box::new(m.schedule_stale.clone()),
            Box::new(m.engine_up.clone()),
            Box::new(m.leader_refusals.clone()),
            Box::new(m.leaders_refusing.clone()),
            Box::new(m.identity_info.clone()),
            Box::new(m.identity_switches.clone()),
            Box::new(m.identity_errors.clone()),
            Box::new(m.engine_failures.clone()),
            Box::new(m.leader_policy_entries.clone()),
            Box::new(m.connections_refused.clone()),
            Box::new(m.api_key_transactions.clone()),
            Box::new(m.api_unauthorized.clone()),
            Box::new(build),
        ] {
            m.registry.register(c)?;
        }
        // Every label value exists from the start, so rates work from the first scrape.
        for r in RejectReason::iter() {
            m.rejected.with_label_values(&[r.label()]);
        }
        for r in FIRST_DROP_LABELS {
            m.sends.with_label_values(&[r]);
        }
        for reason in ["missing", "unknown"] {
            m.api_unauthorized.with_label_values(&[reason]);
        }
        for list in ["deny", "allow", "overrides"] {
            m.leader_policy_entries.with_label_values(&[list]).set(0);
        }
        for a in ["restarted", "restart_failed", "exit"] {
            m.engine_failures.with_label_values(&[a]);
        }
        // Leaders get their own label as they are seen; the overflow one exists
        // from the start, so the family is exported (and rates work) before the
        // first refusal.
        m.leader_refusals.with_label_values(&["other"]);
        for s in crate::identity::Source::iter() {
            m.identity_switches.with_label_values(&[s.label()]);
            m.identity_errors.with_label_values(&[s.label()]);
        }
        m.sends.with_label_values(&["sent"]);
        for s in retire_states() {
            m.retired.with_label_values(&[s]);
        }
        Ok(m)
    }

    /// Adds the engine, AF_XDP and tracker counters to the registry.
    ///
    /// # Errors
    /// Registration errors.
    pub fn register_sources(
        &self,
        engine: Arc<EngineStats>,
        xdp: Option<Arc<XdpStats>>,
        tracker: Option<Arc<TrackerStats>>,
    ) -> prometheus::Result<()> {
        self.xdp_source.store(xdp);
        self.registry.register(Box::new(SourcesCollector {
            engine,
            xdp: self.xdp_source.clone(),
            tracker,
            desc: Desc::new(
                "afterburner_engine_submitted_total".into(),
                "engine, AF_XDP and tracker counters".into(),
                vec![],
                Default::default(),
            )?,
        }))
    }
}

/// Exports counters kept as atomics elsewhere, read at scrape time.
struct SourcesCollector {
    engine: Arc<EngineStats>,
    xdp: Arc<arc_swap::ArcSwapOption<XdpStats>>,
    tracker: Option<Arc<TrackerStats>>,
    desc: Desc,
}

/// A Prometheus family from a declared one ([`afterburner_stats::Family`]).
fn family(f: &afterburner_stats::Family) -> MetricFamily {
    let mut out = MetricFamily::default();
    out.set_name(f.name.to_string());
    out.set_help(f.help.to_string());
    let kind = match f.kind {
        Kind::Counter => MetricType::COUNTER,
        Kind::Gauge => MetricType::GAUGE,
    };
    out.set_field_type(kind);
    for &(value_label, v) in &f.series {
        let mut m = Metric::default();
        if let (Some(name), Some(value)) = (f.label, value_label) {
            let mut p = LabelPair::default();
            p.set_name(name.to_string());
            p.set_value(value.to_string());
            m.set_label(vec![p]);
        }
        match f.kind {
            Kind::Counter => {
                let mut c = Counter::default();
                c.set_value(v as f64);
                m.set_counter(c);
            }
            Kind::Gauge => {
                let mut g = Gauge::default();
                g.set_value(v as f64);
                m.set_gauge(g);
            }
        }
        out.mut_metric().push(m);
    }
    out
}

impl SourcesCollector {
    /// Every declared family of the sources this gateway has, with current values.
    fn families(&self) -> Vec<afterburner_stats::Family> {
        let mut out = self.engine.snapshot().families();
        if let Some(x) = self.xdp.load().as_deref() {
            out.extend(x.snapshot().families());
        }
        if let Some(t) = &self.tracker {
            out.extend(t.snapshot().families());
        }
        out
    }
}

impl Collector for SourcesCollector {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.families().iter().map(family).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, time::Duration};

    use prometheus::Encoder as _;

    use super::*;

    /// `# TYPE` of every family in the text a scrape returns, and its series count.
    fn scrape(m: &Metrics) -> HashMap<String, (String, usize)> {
        let mut text = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&m.registry.gather(), &mut text)
            .expect("encode");
        let text = String::from_utf8(text).expect("utf-8");
        let mut out: HashMap<String, (String, usize)> = HashMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut w = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (w.next(), w.next()) {
                    out.insert(name.into(), (kind.into(), 0));
                }
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap_or_default();
                if let Some(f) = out.get_mut(name) {
                    f.1 += 1;
                }
            }
        }
        out
    }

    /// Every counter declared in the engine, the AF_XDP backend and the tracker is in
    /// a scrape, with its kind and every label value; among them the 13 that were once
    /// collected but never exported.
    #[test]
    fn every_declared_counter_is_exported() {
        let m = Metrics::new().expect("metrics");
        let engine = Arc::new(EngineStats::default());
        let xdp = Arc::new(XdpStats::default());
        let tracker = Arc::new(TrackerStats::default());
        m.register_sources(engine.clone(), Some(xdp.clone()), Some(tracker.clone()))
            .expect("register");
        let scraped = scrape(&m);
        let declared = engine
            .snapshot()
            .families()
            .into_iter()
            .chain(xdp.snapshot().families())
            .chain(tracker.snapshot().families())
            .chain(m.accounting.snapshot().families());
        let mut names = 0;
        for f in declared {
            let Some((kind, series)) = scraped.get(f.name) else {
                panic!("{} is declared but not exported", f.name);
            };
            let want = match f.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
            };
            assert_eq!(kind, want, "{}", f.name);
            assert_eq!(
                *series,
                f.series.len(),
                "{}: one series per label value",
                f.name
            );
            names += 1;
        }
        let declared_names = EngineStats::METRIC_NAMES.len()
            + XdpStats::METRIC_NAMES.len()
            + TrackerStats::METRIC_NAMES.len()
            + 4;
        assert_eq!(names, declared_names);
        for once_missing in [
            "afterburner_engine_keepalives_total",
            "afterburner_engine_packets_rejected_total",
            "afterburner_engine_send_calls_total",
            "afterburner_engine_recv_calls_total",
            "afterburner_engine_send_would_block_total",
            "afterburner_xdp_tx_kicks_transient_total",
            "afterburner_xdp_next_hop_lookups_total",
            "afterburner_xdp_netlink_errors_total",
            "afterburner_xdp_queues",
            "afterburner_xdp_huge_pages",
            "afterburner_leader_slot_observations_rejected_total",
            "afterburner_leader_websocket_subscriptions_total",
            "afterburner_leader_slot_source",
        ] {
            assert!(scraped.contains_key(once_missing), "{once_missing}");
        }
    }

    /// Scrapes taken while transactions are accepted and finish never see
    /// accepted != sent + dropped + in flight.
    #[test]
    fn accounting_adds_up_in_every_scrape() {
        let m = Metrics::new().expect("metrics");
        let a = m.accounting.clone();
        let writer = std::thread::spawn(move || {
            for i in 0..200_000u32 {
                a.accept();
                a.first_send_done(if i % 3 == 0 { Err("no_leader") } else { Ok(()) });
            }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut scrapes = 0;
        while !writer.is_finished() && std::time::Instant::now() < deadline {
            let families = m.registry.gather();
            let sum = |name: &str| -> f64 {
                families
                    .iter()
                    .filter(|f| f.name() == name)
                    .flat_map(|f| f.get_metric())
                    .map(|s| s.get_counter().get_value() + s.get_gauge().get_value())
                    .sum()
            };
            let accepted = sum("afterburner_transactions_accepted_total");
            let parts = sum("afterburner_transactions_sent_total")
                + sum("afterburner_transactions_dropped_total")
                + sum("afterburner_transactions_in_flight");
            assert_eq!(accepted, parts, "scrape {scrapes}");
            scrapes += 1;
        }
        writer.join().expect("writer");
        let end = m.accounting.snapshot();
        assert_eq!(end.accepted, 200_000);
        assert_eq!(end.sent + end.dropped_total() + end.in_flight, end.accepted);
        assert!(scrapes > 0);
    }
}
