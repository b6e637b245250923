//! `/metrics`: every metric name, written by prometheus-client.
//!
//! The hot path counts in `Metrics`' atomics (fixed arrays per API key,
//! never a lock); a scrape reads them through [`Scrape`], a prometheus-client
//! [`Collector`], family by family. prometheus-client writes OpenMetrics
//! text: a counter's family is named without `_total` on its `# TYPE` line
//! and its samples carry `_total`, so every sample name is the one this
//! proxy has always exported; the exposition ends with `# EOF`.

use std::fmt::{Error, Write as _};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use kafka_protocol::messages::ApiKey;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
    MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::codec::api_name;
use crate::quota::tier::SLOTS;
use crate::quota::{Counters, Entity, Quotas, KINDS};

use super::dedup::FailOpen;
use super::metrics::BUCKETS;
use super::{DedupMetrics, Histogram, Metrics, SharedWindowStats, TopicCounts};

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The whole exposition: the process's metrics, then the quota series.
/// `store_writable`: whether the store still takes writes (read from the
/// store by the caller, not kept in a gauge).
pub fn render(metrics: &Arc<Metrics>, quotas: &Arc<Quotas>, store_writable: bool) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape {
        metrics: metrics.clone(),
        quotas: quotas.clone(),
        store_writable,
    }));
    let mut out = String::with_capacity(16 * 1024);
    prometheus_client::encoding::text::encode(&mut out, &registry)
        .expect("writing to a String does not fail");
    out
}

/// What one scrape reads.
struct Scrape {
    metrics: Arc<Metrics>,
    quotas: Arc<Quotas>,
    store_writable: bool,
}

impl std::fmt::Debug for Scrape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scrape").finish_non_exhaustive()
    }
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), Error> {
        let e = &mut encoder;
        process(&self.metrics, self.store_writable, e)?;
        dedup(&self.metrics.dedup, e)?;
        quotas(&self.quotas, e)
    }
}

// === families ===

/// A label value, escaped as the text format asks (prometheus-client
/// writes label values as given).
#[derive(Debug, Clone, Copy)]
struct V<'a>(&'a str);

impl EncodeLabelValue for V<'_> {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), Error> {
        for c in self.0.chars() {
            match c {
                '\\' => encoder.write_str("\\\\")?,
                '"' => encoder.write_str("\\\"")?,
                '\n' => encoder.write_str("\\n")?,
                c => encoder.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// Opens a counter family; `name` is the sample name, `_total` included.
fn counters<'s>(
    e: &'s mut DescriptorEncoder,
    name: &'s str,
    help: &str,
) -> Result<MetricEncoder<'s>, Error> {
    let family = name
        .strip_suffix("_total")
        .expect("a counter's name ends in _total");
    e.encode_descriptor(family, help, None, MetricType::Counter)
}

fn gauges<'s>(
    e: &'s mut DescriptorEncoder,
    name: &'s str,
    help: &str,
) -> Result<MetricEncoder<'s>, Error> {
    e.encode_descriptor(name, help, None, MetricType::Gauge)
}

/// A counter without labels.
fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> Result<(), Error> {
    ConstCounter::new(v).encode(counters(e, name, help)?)
}

/// A gauge without labels.
fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> Result<(), Error> {
    ConstGauge::new(v).encode(gauges(e, name, help)?)
}

/// A family of one sample, without labels.
#[derive(Debug, Clone, Copy)]
enum One {
    Counter(u64),
    Gauge(i64),
}

/// Families of one sample each: (name, help, value).
fn singles<const N: usize>(
    e: &mut DescriptorEncoder,
    rows: [(&str, &str, One); N],
) -> Result<(), Error> {
    for (name, help, v) in rows {
        match v {
            One::Counter(v) => counter(e, name, help, v)?,
            One::Gauge(v) => gauge(e, name, help, v)?,
        }
    }
    Ok(())
}

/// A counter family with one label: (label value, counter) per sample.
fn counters_by<'a>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &'static str,
    rows: impl IntoIterator<Item = (&'a str, &'a AtomicU64)>,
) -> Result<(), Error> {
    let mut f = counters(e, name, help)?;
    for (value, n) in rows {
        let v = n.load(Relaxed);
        sample(&mut f, &[(label, V(value))], ConstCounter::new(v))?;
    }
    Ok(())
}

/// One labelled sample of an open family.
fn sample(
    m: &mut MetricEncoder,
    labels: &impl EncodeLabelSet,
    v: impl EncodeMetric,
) -> Result<(), Error> {
    v.encode(m.encode_family(labels)?)
}

impl Histogram {
    /// (sum in seconds, count, per-bucket counts with +Inf as `f64::MAX`),
    /// the shape prometheus-client's encoder takes.
    fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut buckets: Vec<(f64, u64)> = BUCKETS
            .iter()
            .enumerate()
            .map(|(i, bound)| (*bound, self.buckets[i].load(Relaxed)))
            .collect();
        buckets.push((f64::MAX, self.buckets[BUCKETS.len()].load(Relaxed)));
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = self.sum_micros.load(Relaxed) as f64 / 1e6;
        (sum, count, buckets)
    }
}

// === the process ===

fn process(m: &Metrics, store_writable: bool, e: &mut DescriptorEncoder) -> Result<(), Error> {
    let apis: Vec<(&'static str, &super::metrics::ApiMetrics)> = ApiKey::iter()
        .map(|k| (api_name(k), m.api(k)))
        .filter(|(_, a)| a.requests.load(Relaxed) > 0)
        .collect();
    type PerApi = (
        &'static str,
        &'static str,
        fn(&super::metrics::ApiMetrics) -> u64,
    );
    let per_api: [PerApi; 3] = [
        (
            "idemgate_requests_total",
            "Requests received from clients, by API.",
            |a| a.requests.load(Relaxed),
        ),
        (
            "idemgate_request_bytes_total",
            "Request bytes received from clients, by API.",
            |a| a.request_bytes.load(Relaxed),
        ),
        (
            "idemgate_response_bytes_total",
            "Response bytes sent to clients, by API.",
            |a| a.response_bytes.load(Relaxed),
        ),
    ];
    for (name, help, get) in per_api {
        let mut f = counters(e, name, help)?;
        for (api, a) in &apis {
            sample(&mut f, &[("api", V(api))], ConstCounter::new(get(a)))?;
        }
    }
    let mut f = e.encode_descriptor(
        "idemgate_request_duration_seconds",
        "Request latency per hop: client = whole time in the proxy, upstream = the broker's share.",
        None,
        MetricType::Histogram,
    )?;
    for (api, a) in &apis {
        for (hop, h) in [
            ("client", &a.client_latency),
            ("upstream", &a.upstream_latency),
        ] {
            if h.count() > 0 {
                let (sum, count, buckets) = h.snapshot();
                f.encode_family(&[("api", V(api)), ("hop", V(hop))])?
                    .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
            }
        }
    }

    singles(
        e,
        [
            (
                "idemgate_connections_active",
                "Client connections open now.",
                One::Gauge(m.connections_active.load(Relaxed)),
            ),
            (
                "idemgate_connections_total",
                "Client connections accepted.",
                One::Counter(m.connections_total.load(Relaxed)),
            ),
        ],
    )?;
    counters_by(
        e,
        "idemgate_connections_rejected_total",
        "Client connections refused at accept, by the limit reached.",
        "limit",
        ["total", "per_ip"].into_iter().zip(&m.connections_rejected),
    )?;
    counters_by(
        e,
        "idemgate_connection_errors_total",
        "Connections closed by an error, by whose fault it was.",
        "side",
        ["client", "upstream", "internal"]
            .into_iter()
            .zip(&m.errors),
    )?;
    singles(
        e,
        [
            ("idemgate_address_leaks_total", "Responses that carried an upstream broker address (diagnostics.leak_check).", One::Counter(m.address_leaks.load(Relaxed))),
            ("idemgate_upstream_up", "1 if the last probe of upstream succeeded (ApiVersions and Metadata, or ApiVersions on a SASL-only listener).", One::Gauge(m.upstream_up.load(Relaxed))),
            ("idemgate_broker_listeners", "Per-broker listeners open.", One::Gauge(m.broker_listeners.load(Relaxed))),
            ("idemgate_store_writable", "0 once the store refused a write (disk full, read-only): keys are no longer recorded and replays pass, until idemgate restarts.", One::Gauge(i64::from(store_writable))),
            ("idemgate_broker_listeners_missing", "Known brokers whose listener could not be opened (its port is taken): clients sent there are refused, and /readyz says not ready.", One::Gauge(m.broker_listeners_missing.load(Relaxed))),
            ("idemgate_tls_handshake_failures_total", "Client TLS handshakes that failed or timed out.", One::Counter(m.tls_handshake_failures.load(Relaxed))),
            ("idemgate_tls_reloads_total", "TLS certificate files loaded again after a change.", One::Counter(m.tls_reloads.load(Relaxed))),
            ("idemgate_tls_reload_failures_total", "TLS file changes that could not be loaded (the previous files stay in use).", One::Counter(m.tls_reload_failures.load(Relaxed))),
        ],
    )?;
    if let Some(budget) = m.in_flight.get() {
        singles(
            e,
            [
                ("idemgate_in_flight_bytes", "Bytes held for requests not yet sent and responses not yet written, all connections.", One::Gauge(i64::try_from(budget.used()).unwrap_or(i64::MAX))),
                ("idemgate_in_flight_bytes_limit", "listen.max_in_flight_bytes_total.", One::Gauge(i64::try_from(budget.capacity()).unwrap_or(i64::MAX))),
            ],
        )?;
    }
    counters_by(
        e,
        "idemgate_memory_waits_total",
        "Reads held back for memory: side=client a request body (max_in_flight_bytes_total), side=upstream a response (max_in_flight_bytes).",
        "side",
        ["client", "upstream"].into_iter().zip(&m.memory_waits),
    )?;
    let mut f = gauges(
        e,
        "idemgate_reads_waiting_for_memory",
        "Reads held back right now: side=client request bodies (max_in_flight_bytes_total), side=upstream responses (max_in_flight_bytes). idemgate_memory_waits_total counts a wait when it ends.",
    )?;
    let waiting = [
        m.in_flight.get().map_or(0, |budget| budget.waiting()),
        m.responses_waiting.load(Relaxed),
    ];
    for (side, n) in ["client", "upstream"].iter().zip(waiting) {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        sample(&mut f, &[("side", V(side))], ConstGauge::new(n))?;
    }
    counter(
        e,
        "idemgate_write_timeouts_total",
        "Clients closed for taking no byte of their responses for listen.write_timeout.",
        m.write_timeouts.load(Relaxed),
    )
}

// === dedup ===

fn dedup(d: &DedupMetrics, e: &mut DescriptorEncoder) -> Result<(), Error> {
    let by_direction = [("produce", d.topics()), ("fetch", d.fetch_topics())];
    type Series = (&'static str, &'static str, fn(&TopicCounts) -> u64);
    let series: [Series; 3] = [
        (
            "idemgate_records_total",
            "Records a dedup rule covers: direction=produce in Produce requests, direction=fetch in Fetch responses (connector: the sink's).",
            |c| c.records,
        ),
        (
            "idemgate_duplicates_dropped_total",
            "Duplicates removed: replays before they reach the broker (produce), later copies before they reach a consumer (fetch).",
            |c| c.dropped,
        ),
        (
            "idemgate_duplicates_observed_total",
            "Duplicates forwarded because their rule is in observe mode.",
            |c| c.observed,
        ),
    ];
    for (name, help, get) in series {
        let mut f = counters(e, name, help)?;
        for (direction, topics) in &by_direction {
            for ((connector, topic), c) in topics {
                let labels = [
                    ("connector", V(connector)),
                    ("topic", V(topic)),
                    ("direction", V(direction)),
                ];
                sample(&mut f, &labels, ConstCounter::new(get(c)))?;
            }
        }
    }
    let mut f = counters(
        e,
        "idemgate_dedup_fail_open_total",
        "Records a rule covers that were forwarded unchecked, by reason (never dropped on a guess).",
    )?;
    for (i, reason) in FailOpen::ALL.iter().enumerate() {
        let v = d.fail_open[i].load(Relaxed);
        sample(
            &mut f,
            &[("reason", V(reason.as_str()))],
            ConstCounter::new(v),
        )?;
    }
    let replays = d.replays();
    let mut f = counters(
        e,
        "idemgate_producer_sessions_total",
        "Producer connections per connector; a task restart opens a new one.",
    )?;
    for (connector, r) in &replays {
        sample(
            &mut f,
            &[("connector", V(connector))],
            ConstCounter::new(r.sessions),
        )?;
    }
    let mut f = counters(
        e,
        "idemgate_replay_sessions_total",
        "Producer sessions that replayed records already acknowledged.",
    )?;
    for (connector, r) in &replays {
        let v = r.sessions_with_replays;
        sample(&mut f, &[("connector", V(connector))], ConstCounter::new(v))?;
    }
    counter(
        e,
        "idemgate_transactional_records_total",
        "Records of transactional batches, passed through untouched.",
        d.transactional_records.load(Relaxed),
    )?;
    counters_by(
        e,
        "idemgate_transactions_total",
        "Transactions ended through the proxy, by outcome (expired: forgotten after the \
         longest transaction timeout; unlearned: committed past the bound on keys held for \
         open transactions).",
        "outcome",
        [
            ("committed", &d.txn_committed),
            ("aborted", &d.txn_aborted),
            ("expired", &d.txn_expired),
            ("unlearned", &d.txn_unlearned),
        ],
    )?;
    singles(
        e,
        [
            ("idemgate_transaction_keys_learned_total", "Keys that entered the window when their transaction committed.", One::Counter(d.txn_keys_learned.load(Relaxed))),
            ("idemgate_batches_untagged_too_large_total", "Batches forwarded without the tag header because the tags would have taken them \
         past the broker's default max.message.bytes (still deduplicated).", One::Counter(d.untagged_too_large.load(Relaxed))),
            ("idemgate_pending_waits_total", "Records that waited for the same key in flight in another request (a zombie and its \
         successor); one request waits at most dedup.pending_wait in all.", One::Counter(d.pending_waits.load(Relaxed))),
            ("idemgate_store_flushes_total", "Periodic store flushes completed (every dedup.flush_interval): every key acknowledged \
         before one started is on disk once it is counted.", One::Counter(d.store_flushes.load(Relaxed))),
            ("idemgate_produce_answered_locally_total", "Produce requests answered by the proxy because every record was a replay.", One::Counter(d.answered_locally.load(Relaxed))),
            ("idemgate_window_keys", "Keys in the idempotency window.", One::Gauge(d.window_keys.load(Relaxed))),
            ("idemgate_window_memory_bytes", "Memory held by the window's key maps (estimate).", One::Gauge(d.window_bytes.load(Relaxed))),
            ("idemgate_store_bytes", "Size of the store on disk (sled's estimate).", One::Gauge(d.store_bytes.load(Relaxed))),
            ("idemgate_window_loaded", "1 once the window has been read back from the store after a start.", One::Gauge(d.window_loaded.load(Relaxed))),
        ],
    )?;
    counters_by(
        e,
        "idemgate_dedup_prefix_bets_lost_total",
        "Batches whose replayed prefix was cut on the bet that the broker writes the rest right after \
         the first copies, and it did not, by the answer: retried (a retriable error; the retry goes whole) \
         or minus_one (an idempotent client that numbers from the base, answered -1: its records are numbered from -1).",
        "answer",
        [
            ("retried", &d.prefix_bets_lost_retried),
            ("minus_one", &d.prefix_bets_lost_minus_one),
        ],
    )?;
    shared_window(&d.shared, e)
}

/// `[dedup.shared]`'s series, zeros while it is off (`…_enabled` says
/// which), so dashboards and alerts always find them.
fn shared_window(s: &SharedWindowStats, e: &mut DescriptorEncoder) -> Result<(), Error> {
    singles(
        e,
        [
            ("idemgate_shared_window_enabled", "1 when [dedup.shared] is on: the window is shared through a Kafka topic.", One::Gauge(i64::from(s.enabled.load(Relaxed)))),
            ("idemgate_shared_window_published_total", "Segments (one acknowledged batch's keys) published to the shared window's topic.", One::Counter(s.published.load(Relaxed))),
            ("idemgate_shared_window_publish_failures_total", "Segments never published (the queue was full while the topic was away): their keys stay known to this process only (replays through others pass).", One::Counter(s.publish_failures.load(Relaxed))),
            ("idemgate_shared_window_segments_read_total", "Segments of other processes read from the shared window's topic.", One::Counter(s.segments_read.load(Relaxed))),
            ("idemgate_shared_window_keys_learned_total", "Keys learned from other processes through the shared window's topic.", One::Counter(s.keys_learned.load(Relaxed))),
            ("idemgate_shared_window_lag_milliseconds", "From a peer's broker acknowledgement to this process knowing its keys, for the last segment learned.", One::Gauge(s.lag_ms.load(Relaxed))),
            ("idemgate_shared_window_caught_up", "1 once every partition of the topic was read to the end it had at the start.", One::Gauge(i64::from(s.caught_up.load(Relaxed)))),
            ("idemgate_shared_window_connected", "1 while the topic is reachable.", One::Gauge(i64::from(s.connected.load(Relaxed)))),
            ("idemgate_shared_window_catch_ups_total", "Connections whose first Produce waited until the window's topic was read to where it ended (dedup.shared.catch_up_wait).", One::Counter(s.catch_ups.load(Relaxed))),
            ("idemgate_shared_window_catch_up_timeouts_total", "The same, not caught up within dedup.shared.catch_up_wait (or the topic away): replays it would have caught pass.", One::Counter(s.catch_up_timeouts.load(Relaxed))),
            ("idemgate_shared_window_points_published_total", "Sequence points (an idempotent producer's batch that lost replays) published, so a peer the producer moves to translates its sequence the same.", One::Counter(s.points_published.load(Relaxed))),
            ("idemgate_shared_window_points_unconfirmed_total", "Sequence points not confirmed by the topic within dedup.shared.catch_up_wait: the batch went on; a producer moving to a peer before it learns the point is refused there as out of order (never a loss).", One::Counter(s.points_unconfirmed.load(Relaxed))),
            ("idemgate_shared_window_points_learned_total", "Sequence points of other processes folded into this one's sequence state.", One::Counter(s.points_learned.load(Relaxed))),
        ],
    )
}

// === quotas ===

/// An entity's `connector` and `tenant` labels.
fn labels(en: &Entity) -> [(&'static str, V<'_>); 2] {
    [
        ("connector", V(en.key.label())),
        ("tenant", V(en.key.tenant.as_deref().unwrap_or(""))),
    ]
}

/// A family of one sample per entity; a counter if `name` ends in `_total`.
fn per_entity<M: EncodeMetric>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    all: &[Arc<Entity>],
    value: impl Fn(&Counters) -> M,
) -> Result<(), Error> {
    let mut f = if name.ends_with("_total") {
        counters(e, name, help)?
    } else {
        gauges(e, name, help)?
    };
    for en in all {
        sample(&mut f, &labels(en), value(&en.counters))?;
    }
    Ok(())
}

/// The quota series: one sample per entity (connector and tenant).
fn quotas(q: &Quotas, e: &mut DescriptorEncoder) -> Result<(), Error> {
    let all = q.sorted();
    let mut f = counters(
        e,
        "idemgate_client_bytes_total",
        "Bytes per connector and tenant: produce requests and fetch responses.",
    )?;
    for en in &all {
        let [connector, tenant] = labels(en);
        let c = &en.counters;
        for (direction, v) in [
            ("produce", c.produce_bytes.load(Relaxed)),
            ("fetch", c.fetch_bytes.load(Relaxed)),
        ] {
            let l = [connector, tenant, ("direction", V(direction))];
            sample(&mut f, &l, ConstCounter::new(v))?;
        }
    }
    per_entity(
        e,
        "idemgate_client_requests_total",
        "Requests per connector and tenant.",
        &all,
        |c| ConstCounter::new(c.requests.load(Relaxed)),
    )?;
    per_entity(
        e,
        "idemgate_throttle_seconds_total",
        "Throttle imposed by quotas (each connection muted this long).",
        &all,
        |c| ConstCounter::new(c.throttle_micros.load(Relaxed) as f64 / 1e6),
    )?;
    per_entity(
        e,
        "idemgate_throttled_responses_total",
        "Throttles imposed: on a response, or once more on a held request while a debt is owed.",
        &all,
        |c| ConstCounter::new(c.throttled.load(Relaxed)),
    )?;
    per_entity(
        e,
        "idemgate_requests_held",
        "Produce or Fetch requests held now (muted, owing or paused), per connector and tenant.",
        &all,
        |c| ConstGauge::new(i64::try_from(c.held.load(Relaxed)).unwrap_or(i64::MAX)),
    )?;
    let mut f = gauges(
        e,
        "idemgate_quota_limit",
        "The limit in force, per second (bytes, requests, or microseconds of proxy time for request_percentage).",
    )?;
    for en in &all {
        let [connector, tenant] = labels(en);
        for kind in KINDS {
            if let Some(l) = en.limits()[kind as usize] {
                let kind = if l.time_based {
                    "request_time_micros"
                } else {
                    kind.as_str()
                };
                let l2 = [connector, tenant, ("kind", V(kind))];
                sample(&mut f, &l2, ConstGauge::new(l.rate))?;
            }
        }
    }
    let mut f = gauges(
        e,
        "idemgate_connector_paused",
        "1 while the connector is paused (admin API).",
    )?;
    for en in &all {
        let v = i64::from(en.is_paused());
        sample(&mut f, &labels(en), ConstGauge::new(v))?;
    }
    tier(q, &all, e)?;
    singles(
        e,
        [
            (
                "idemgate_quota_reloads_total",
                "Quota changes put in force (SIGHUP, admin API).",
                One::Counter(q.reloads.load(Relaxed)),
            ),
            (
                "idemgate_quota_reload_failures_total",
                "Quota changes refused (the previous ones stay).",
                One::Counter(q.reload_failures.load(Relaxed)),
            ),
        ],
    )
}

/// `[quota.shared]`'s series (zeros while it is off:
/// `idemgate_quota_shared_enabled` says which).
fn tier(q: &Quotas, all: &[Arc<Entity>], e: &mut DescriptorEncoder) -> Result<(), Error> {
    let t = &q.tier;
    let mut f = gauges(
        e,
        "idemgate_quota_tier_rate",
        "Usage per second across the tier ([quota.shared]): this process's over its last report plus every live peer's, per connector, tenant and kind.",
    )?;
    for (key, rates) in t.rates(std::time::Instant::now()) {
        for (slot, rate) in SLOTS.iter().zip(rates) {
            let l = [
                ("connector", V(key.label())),
                ("tenant", V(key.tenant.as_deref().unwrap_or(""))),
                ("kind", V(slot)),
            ];
            sample(&mut f, &l, ConstGauge::new(rate))?;
        }
    }
    let mut f = counters(
        e,
        "idemgate_quota_peer_usage_total",
        "Units other processes of the tier reported per connector, tenant and kind, charged to this process's quota buckets.",
    )?;
    for en in all {
        let [connector, tenant] = labels(en);
        for (slot, n) in SLOTS.iter().zip(&en.counters.peer) {
            let l = [connector, tenant, ("kind", V(slot))];
            sample(&mut f, &l, ConstCounter::new(n.load(Relaxed)))?;
        }
    }
    let peers = i64::try_from(t.peers(std::time::Instant::now())).unwrap_or(i64::MAX);
    singles(
        e,
        [
            ("idemgate_quota_shared_enabled", "1 when [quota.shared] is on: quotas hold for the tier, through a Kafka topic.", One::Gauge(i64::from(t.enabled))),
            ("idemgate_quota_shared_connected", "1 while the quota topic is reachable (0: quotas hold per process).", One::Gauge(i64::from(t.connected.load(Relaxed)))),
            ("idemgate_quota_shared_caught_up", "1 once the quota topic was read to the end it had at the start (the tier's pauses are in force).", One::Gauge(i64::from(t.caught_up.load(Relaxed)))),
            ("idemgate_quota_shared_peers", "Other processes whose last usage report is younger than quota.shared.peer_expiry.", One::Gauge(peers)),
            ("idemgate_quota_shared_published_total", "Usage reports and pause records published to the quota topic.", One::Counter(t.published.load(Relaxed))),
            ("idemgate_quota_shared_publish_failures_total", "Publishes to the quota topic that failed (the topic away): a usage report lost, or pauses sent again later.", One::Counter(t.publish_failures.load(Relaxed))),
            ("idemgate_quota_shared_reports_read_total", "Peers' usage reports read and charged.", One::Counter(t.reports_read.load(Relaxed))),
            ("idemgate_quota_shared_reports_stale_total", "Peers' usage reports read older than quota.shared.peer_expiry, not charged.", One::Counter(t.reports_stale.load(Relaxed))),
        ],
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::Config;

    fn scrape(m: Metrics, q: Quotas) -> String {
        render(&Arc::new(m), &Arc::new(q), true)
    }

    fn no_quotas() -> Quotas {
        Quotas::new(Config::parse("").unwrap().quota, vec![])
    }

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::new();
        m.request(ApiKey::Produce, 100);
        m.response(ApiKey::Produce, 40, Duration::from_micros(700));
        m.upstream_latency(ApiKey::Produce, Duration::from_micros(500));
        let text = scrape(m, no_quotas());
        assert!(
            text.contains("idemgate_requests_total{api=\"Produce\"} 1"),
            "{text}"
        );
        assert!(text.contains("idemgate_request_bytes_total{api=\"Produce\"} 100"));
        // prometheus-client puts `le` first.
        assert!(text.contains("idemgate_request_duration_seconds_bucket{le=\"0.001\",api=\"Produce\",hop=\"client\"} 1"));
        assert!(text.contains("idemgate_request_duration_seconds_bucket{le=\"0.0005\",api=\"Produce\",hop=\"upstream\"} 1"));
        assert!(text
            .contains("idemgate_request_duration_seconds_count{api=\"Produce\",hop=\"client\"} 1"));
        assert!(
            !text.contains("api=\"Fetch\""),
            "APIs never seen are left out"
        );
        // OpenMetrics: the counter family without `_total`, the samples with.
        assert!(
            text.contains("# TYPE idemgate_requests counter\n"),
            "{text}"
        );
        assert!(text.contains("idemgate_store_writable 1\n"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::new();
        m.dedup.session_started("a\"b\\c\nd");
        let text = scrape(m, no_quotas());
        assert!(
            text.contains("idemgate_producer_sessions_total{connector=\"a\\\"b\\\\c\\nd\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn quota_series_carry_connector_and_tenant() {
        let text = scrape(Metrics::new(), crate::quota::resumed_alice());
        assert!(
            text.contains("idemgate_connector_paused{connector=\"x\",tenant=\"alice\"} 0"),
            "{text}"
        );
    }
}
