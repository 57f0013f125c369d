//! Prometheus metrics: the gateway's own (registered metrics), and the engine's,
//! AF_XDP and leader-tracker counters exported at scrape time from their atomics
//! (a custom collector, so the hot paths keep their plain atomics).
//!
//! Conventions: one `afterburner_` prefix, counters end in `_total`, durations are
//! `_seconds` histograms, labels take values from fixed sets.

use std::sync::Arc;

use afterburner_xdp::{
    DropReason, EngineStats,
    xdp::{COUNTER_LABELS, XdpStats},
};
use leader_schedule::{Method, TrackerStats};
use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    core::{Collector, Desc},
    proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType},
};

/// Why a transaction was refused at the door (validation outcome labels).
pub const REJECT_REASONS: [&str; 10] = [
    "invalid_params",
    "encoding",
    "too_large",
    "undeserializable",
    "sanitize",
    "bad_signature",
    "preflight",
    "min_context_slot",
    "queue_full",
    "not_ready",
];

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
    /// Transactions refused, by reason ([`REJECT_REASONS`]).
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
        for r in REJECT_REASONS {
            m.rejected.with_label_values(&[r]);
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

fn family(
    name: &str,
    help: &str,
    kind: MetricType,
    samples: Vec<(Vec<(&str, String)>, f64)>,
) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_string());
    f.set_help(help.to_string());
    f.set_field_type(kind);
    for (labels, v) in samples {
        let mut m = Metric::default();
        let pairs: Vec<LabelPair> = labels
            .into_iter()
            .map(|(k, val)| {
                let mut p = LabelPair::default();
                p.set_name(k.to_string());
                p.set_value(val);
                p
            })
            .collect();
        m.set_label(pairs);
        match kind {
            MetricType::COUNTER => {
                let mut c = Counter::default();
                c.set_value(v);
                m.set_counter(c);
            }
            _ => {
                let mut g = Gauge::default();
                g.set_value(v);
                m.set_gauge(g);
            }
        }
        f.mut_metric().push(m);
    }
    f
}

fn one(name: &str, help: &str, kind: MetricType, v: u64) -> MetricFamily {
    family(name, help, kind, vec![(vec![], v as f64)])
}

impl Collector for SourcesCollector {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        use MetricType::{COUNTER, GAUGE};
        let e = self.engine.snapshot();
        let mut out = vec![
            one(
                "afterburner_engine_submitted_total",
                "Transactions handed to the engine",
                COUNTER,
                e.submitted,
            ),
            one(
                "afterburner_engine_sent_total",
                "Transactions written to a stream",
                COUNTER,
                e.sent,
            ),
            one(
                "afterburner_engine_stream_credit_waits_total",
                "Waits for stream credit",
                COUNTER,
                e.stream_credit_waits,
            ),
            one(
                "afterburner_engine_connections_opened_total",
                "Connection attempts",
                COUNTER,
                e.connections_opened,
            ),
            one(
                "afterburner_engine_handshakes_completed_total",
                "Handshakes completed",
                COUNTER,
                e.handshakes_completed,
            ),
            one(
                "afterburner_engine_handshake_timeouts_total",
                "Handshakes timed out",
                COUNTER,
                e.handshake_timeouts,
            ),
            one(
                "afterburner_engine_handshake_failures_total",
                "Handshakes failed",
                COUNTER,
                e.handshake_failures,
            ),
            one(
                "afterburner_engine_closed_by_peer_total",
                "Connections closed by the peer",
                COUNTER,
                e.closed_by_peer,
            ),
            one(
                "afterburner_engine_connections_lost_total",
                "Connections lost",
                COUNTER,
                e.connections_lost,
            ),
            one(
                "afterburner_engine_evictions_total",
                "Connections evicted (LRU)",
                COUNTER,
                e.evictions,
            ),
            one(
                "afterburner_engine_backoff_refusals_total",
                "Attempts refused by backoff",
                COUNTER,
                e.backoff_refusals,
            ),
            one(
                "afterburner_engine_active_connections",
                "Open connections",
                GAUGE,
                e.active_connections,
            ),
            one(
                "afterburner_engine_queued",
                "Transactions queued in connections",
                GAUGE,
                e.queued,
            ),
            one(
                "afterburner_engine_packets_sent_total",
                "Datagrams sent",
                COUNTER,
                e.packets_sent,
            ),
            one(
                "afterburner_engine_packets_received_total",
                "Datagrams received",
                COUNTER,
                e.packets_received,
            ),
            one(
                "afterburner_engine_sent_bytes_total",
                "UDP payload bytes sent",
                COUNTER,
                e.bytes_sent,
            ),
            one(
                "afterburner_engine_received_bytes_total",
                "UDP payload bytes received",
                COUNTER,
                e.bytes_received,
            ),
            one(
                "afterburner_engine_send_errors_total",
                "Send errors",
                COUNTER,
                e.send_errors,
            ),
            family(
                "afterburner_engine_dropped_total",
                "Engine drops by reason",
                COUNTER,
                DropReason::LABELS
                    .iter()
                    .enumerate()
                    .map(|(i, l)| (vec![("reason", (*l).to_string())], e.dropped[i] as f64))
                    .collect(),
            ),
        ];
        if let Some(x) = &self.xdp {
            let s = x.snapshot();
            out.extend([
                one(
                    "afterburner_xdp_tx_frames_total",
                    "Frames put on the TX ring",
                    COUNTER,
                    s.tx_frames,
                ),
                one(
                    "afterburner_xdp_rx_frames_total",
                    "Frames taken off the RX rings",
                    COUNTER,
                    s.rx_frames,
                ),
                one(
                    "afterburner_xdp_tx_kicks_total",
                    "TX kicks",
                    COUNTER,
                    s.tx_kicks,
                ),
                one(
                    "afterburner_xdp_kernel_tx_total",
                    "Datagrams sent through the kernel socket",
                    COUNTER,
                    s.kernel_tx,
                ),
                one(
                    "afterburner_xdp_kernel_rx_total",
                    "Datagrams received on the kernel socket",
                    COUNTER,
                    s.kernel_rx,
                ),
                one(
                    "afterburner_xdp_rx_malformed_total",
                    "Malformed frames received",
                    COUNTER,
                    s.rx_malformed,
                ),
                one(
                    "afterburner_xdp_neighbour_misses_total",
                    "Next hops not yet resolved",
                    COUNTER,
                    s.neighbour_misses,
                ),
                one(
                    "afterburner_xdp_rx_dropped_total",
                    "Kernel: RX drops",
                    COUNTER,
                    s.rx_dropped,
                ),
                one(
                    "afterburner_xdp_rx_ring_full_total",
                    "Kernel: RX ring full",
                    COUNTER,
                    s.rx_ring_full,
                ),
                one(
                    "afterburner_xdp_fill_ring_empty_total",
                    "Kernel: fill ring empty",
                    COUNTER,
                    s.fill_ring_empty,
                ),
                one(
                    "afterburner_xdp_tx_ring_empty_total",
                    "Kernel: TX ring empty",
                    COUNTER,
                    s.tx_ring_empty,
                ),
                one(
                    "afterburner_xdp_invalid_descriptors_total",
                    "Kernel: invalid RX and TX descriptors",
                    COUNTER,
                    s.rx_invalid_descs + s.tx_invalid_descs,
                ),
                one(
                    "afterburner_xdp_zero_copy",
                    "1 when zero-copy",
                    GAUGE,
                    s.zero_copy,
                ),
                one(
                    "afterburner_xdp_driver_mode",
                    "1 when the program runs in the driver",
                    GAUGE,
                    s.driver_mode,
                ),
                family(
                    "afterburner_xdp_program_packets_total",
                    "XDP program verdicts",
                    COUNTER,
                    COUNTER_LABELS
                        .iter()
                        .enumerate()
                        .map(|(i, l)| (vec![("verdict", (*l).to_string())], s.program[i] as f64))
                        .collect(),
                ),
            ]);
        }
        if let Some(t) = &self.tracker {
            use std::sync::atomic::Ordering::Relaxed;
            out.extend([
                family(
                    "afterburner_leader_rpc_errors_total",
                    "Leader tracker RPC errors by method",
                    COUNTER,
                    Method::ALL
                        .iter()
                        .map(|m| {
                            (
                                vec![("method", m.name().to_string())],
                                t.rpc_errors(*m) as f64,
                            )
                        })
                        .collect(),
                ),
                one(
                    "afterburner_leader_slot_observations_total",
                    "Slot observations",
                    COUNTER,
                    t.slot_observations.load(Relaxed),
                ),
                one(
                    "afterburner_leader_schedule_fetches_total",
                    "Leader schedule fetches",
                    COUNTER,
                    t.schedule_fetches.load(Relaxed),
                ),
                one(
                    "afterburner_leader_cluster_node_fetches_total",
                    "Cluster node fetches",
                    COUNTER,
                    t.cluster_node_fetches.load(Relaxed),
                ),
                one(
                    "afterburner_leader_without_address",
                    "Upcoming leaders with no known TPU address",
                    GAUGE,
                    t.leaders_without_address.load(Relaxed),
                ),
            ]);
        }
        out
    }
}
