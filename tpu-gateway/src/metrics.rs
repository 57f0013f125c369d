//! Prometheus metrics: the gateway's own (registered metrics), and the engine's,
//! AF_XDP and leader-tracker counters exported at scrape time from their atomics
//! (a custom collector, so the hot paths keep their plain atomics). Those are
//! declared once, with their names and help, where they are kept
//! (`afterburner_stats::declare_stats!`); the collector renders every declared
//! family, so none can be collected without being exported.
//!
//! Conventions: one `afterburner_` prefix, counters end in `_total`, durations are
//! `_seconds` histograms, labels take values from fixed sets.

use std::sync::Arc;

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

/// How tracked transactions leave the retry set.
pub const RETIRE_STATES: [&str; 4] = ["landed", "expired", "retries_exhausted", "shutdown"];

/// Every metric the gateway registers itself.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    /// JSON-RPC calls by method and result code ("ok" or the error code).
    pub rpc_requests: IntCounterVec,
    /// Transactions accepted (validated, not a duplicate, queued).
    pub accepted: IntCounter,
    /// Duplicates answered without a second send.
    pub duplicates: IntCounter,
    /// Transactions refused, by reason ([`RejectReason`]).
    pub rejected: IntCounterVec,
    /// Accepted transactions whose first send reached at least one leader.
    pub sent: IntCounter,
    /// Accepted transactions whose first send reached no leader, by reason.
    pub dropped: IntCounterVec,
    /// Accepted transactions whose first send has no outcome yet.
    pub in_flight: IntGauge,
    /// Per-leader send attempts by outcome ("sent" or a drop reason).
    pub sends: IntCounterVec,
    /// Rebroadcasts.
    pub retries: IntCounter,
    /// Tracked transactions leaving the retry set, by state ([`RETIRE_STATES`]).
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
}

impl Metrics {
    /// Transactions dropped, all reasons together.
    pub fn dropped_total(&self) -> u64 {
        self.dropped
            .collect()
            .iter()
            .flat_map(|f| {
                f.get_metric()
                    .iter()
                    .map(|m| m.get_counter().get_value() as u64)
            })
            .sum()
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
            accepted: counter(
                "afterburner_transactions_accepted_total",
                "Transactions accepted",
            )?,
            duplicates: counter(
                "afterburner_transactions_duplicate_total",
                "Duplicates answered without a second send",
            )?,
            rejected: counter_vec(
                "afterburner_transactions_rejected_total",
                "Transactions refused, by reason",
                &["reason"],
            )?,
            sent: counter(
                "afterburner_transactions_sent_total",
                "Accepted transactions whose first send reached at least one leader",
            )?,
            dropped: counter_vec(
                "afterburner_transactions_dropped_total",
                "Accepted transactions whose first send reached no leader, by reason",
                &["reason"],
            )?,
            in_flight: IntGauge::new(
                "afterburner_transactions_in_flight",
                "Accepted transactions whose first send has no outcome yet",
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
            registry,
        };
        let build = IntGaugeVec::new(
            Opts::new("afterburner_build_info", "Build information"),
            &["version"],
        )?;
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        for c in [
            Box::new(m.rpc_requests.clone()) as Box<dyn Collector>,
            Box::new(m.accepted.clone()),
            Box::new(m.duplicates.clone()),
            Box::new(m.rejected.clone()),
            Box::new(m.sent.clone()),
            Box::new(m.dropped.clone()),
            Box::new(m.in_flight.clone()),
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
            Box::new(build),
        ] {
            m.registry.register(c)?;
        }
        // Every label value exists from the start, so rates work from the first scrape.
        for r in RejectReason::iter() {
            m.rejected.with_label_values(&[r.label()]);
        }
        for r in DropReason::LABELS.iter().chain(GATEWAY_DROP_REASONS.iter()) {
            m.dropped.with_label_values(&[r]);
            m.sends.with_label_values(&[r]);
        }
        m.sends.with_label_values(&["sent"]);
        for s in RETIRE_STATES {
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
        self.registry.register(Box::new(SourcesCollector {
            engine,
            xdp,
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
    xdp: Option<Arc<XdpStats>>,
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
        if let Some(x) = &self.xdp {
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
