//! Logs and metrics: tracing init, and every metric name in one place.
//!
//! Metrics are plain atomics in fixed arrays indexed by API key, so the hot
//! path never takes a lock or allocates; `/metrics` renders them as Prometheus
//! text. Latency is measured per hop: `hop="client"` is the whole time a
//! request spends with us (frame read to response written), `hop="upstream"`
//! the broker's share of it (request written to response read).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kafka_protocol::messages::ApiKey;

use crate::codec::api_name;
use crate::config::{Log, LogFormat};
use crate::error::Side;
use crate::limits::MemoryBudget;

/// Starts the global tracing subscriber. `RUST_LOG` overrides `log.level`.
pub fn init_tracing(log: &Log) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.level));
    // Colours only for a person at a terminal, never into a log file.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let _ = match log.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
}

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 17] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// Room for every API key Kafka has assigned (92 in Kafka 4.1).
const API_SLOTS: usize = 128;

/// A latency histogram with Prometheus' cumulative buckets.
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    const fn new() -> Self {
        Histogram {
            buckets: [const { AtomicU64::new(0) }; BUCKETS.len() + 1],
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(d.as_micros() as u64, Relaxed);
    }

    fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Relaxed)).sum()
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += self.buckets[i].load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.buckets[BUCKETS.len()].load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_micros.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
    }
}

/// Per-API counters.
struct ApiMetrics {
    requests: AtomicU64,
    request_bytes: AtomicU64,
    response_bytes: AtomicU64,
    client_latency: Histogram,
    upstream_latency: Histogram,
}

impl ApiMetrics {
    const fn new() -> Self {
        ApiMetrics {
            requests: AtomicU64::new(0),
            request_bytes: AtomicU64::new(0),
            response_bytes: AtomicU64::new(0),
            client_latency: Histogram::new(),
            upstream_latency: Histogram::new(),
        }
    }
}

/// Every metric of the process.
pub struct Metrics {
    apis: [ApiMetrics; API_SLOTS],
    pub connections_active: AtomicI64,
    pub connections_total: AtomicU64,
    /// Refused at accept: `listen.max_connections`, `max_connections_per_ip`.
    connections_rejected: [AtomicU64; 2],
    /// Connections closed by an error, by whose fault.
    errors: [AtomicU64; 3],
    /// Responses that would have shown a client an upstream address.
    pub address_leaks: AtomicU64,
    /// 1 while the last probe of upstream succeeded (Metadata answered, or
    /// refused before authentication by a SASL listener).
    pub upstream_up: AtomicI64,
    pub broker_listeners: AtomicI64,
    /// Known brokers whose listener could not be opened (port taken).
    pub broker_listeners_missing: AtomicI64,
    /// 0 once the store refused a write (set when `/metrics` is read).
    pub store_writable: AtomicI64,
    /// Client TLS handshakes that failed or timed out.
    pub tls_handshake_failures: AtomicU64,
    /// TLS file reloads, and reloads that failed (the old files stay in use).
    pub tls_reloads: AtomicU64,
    pub tls_reload_failures: AtomicU64,
    /// `listen.max_in_flight_bytes_total`, set once the server starts.
    pub in_flight: std::sync::OnceLock<Arc<MemoryBudget>>,
    /// Reads held back for memory: [0] a request body waited for the overall
    /// budget, [1] a response waited for its connection's budget.
    memory_waits: [AtomicU64; 2],
    /// Responses waiting now for their connection's budget, all connections.
    pub responses_waiting: Arc<AtomicUsize>,
    /// Clients closed for taking none of their responses (`write_timeout`).
    pub write_timeouts: AtomicU64,
    pub dedup: DedupMetrics,
}

/// Why a record that a rule covers was forwarded unchecked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailOpen {
    /// The batch did not decode (corrupt, unknown codec, too large).
    Undecodable,
    /// Not exactly one record batch v2 (legacy magic, several batches).
    NotOneV2Batch,
    /// The window was still loading after `dedup.load_wait`.
    Loading,
    /// Another request had the key in flight past `dedup.pending_wait`.
    PendingTimeout,
    /// The store could not record an acknowledged batch.
    StoreError,
    /// The request named a topic by id only (Produce v13).
    TopicId,
    /// The broker answered success without a base offset: keys not learned.
    NoOffset,
    /// Fetch: the topic is compacted, so a copy may be the only one left.
    Compacted,
    /// Fetch: the brokers would not describe the topic's cleanup.policy.
    TopicConfig,
    /// An idempotent batch that may resend what an earlier process
    /// forwarded (a producer this process has no memory of): its replays
    /// stay, so the broker never takes a trimmed resend for the next batch.
    SequenceUnknown,
    /// A committed transaction's keys this process could not place in it
    /// (transactions v1 whose partition it did not see added on the
    /// connection the EndTxn came on): not learned.
    TxnUnseen,
    /// A Produce v0-2 (below what kafka-protocol decodes); counts requests.
    OldVersion,
    /// A Produce that did not decode, or that the bounds check refused;
    /// counts requests (their records cannot be read).
    UnreadableRequest,
    /// Produce: replays that could not be given their true offsets as the
    /// partition's base_offset + i (first copies elsewhere, not in order):
    /// forwarded, since clients number every record from the base offset.
    Unnumbered,
}

impl FailOpen {
    const ALL: [FailOpen; 14] = [
        FailOpen::Undecodable,
        FailOpen::NotOneV2Batch,
        FailOpen::Loading,
        FailOpen::PendingTimeout,
        FailOpen::StoreError,
        FailOpen::TopicId,
        FailOpen::NoOffset,
        FailOpen::Compacted,
        FailOpen::TopicConfig,
        FailOpen::SequenceUnknown,
        FailOpen::TxnUnseen,
        FailOpen::OldVersion,
        FailOpen::UnreadableRequest,
        FailOpen::Unnumbered,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailOpen::Undecodable => "undecodable",
            FailOpen::NotOneV2Batch => "not_one_v2_batch",
            FailOpen::Loading => "loading",
            FailOpen::PendingTimeout => "pending_timeout",
            FailOpen::StoreError => "store_error",
            FailOpen::TopicId => "topic_id",
            FailOpen::NoOffset => "no_offset",
            FailOpen::Compacted => "compacted",
            FailOpen::TopicConfig => "topic_config",
            FailOpen::SequenceUnknown => "sequence_unknown",
            FailOpen::TxnUnseen => "txn_unseen",
            FailOpen::OldVersion => "old_version",
            FailOpen::UnreadableRequest => "unreadable_request",
            FailOpen::Unnumbered => "unnumbered",
        }
    }
}

/// Per (connector, topic) counts on the produce path.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TopicCounts {
    pub records: u64,
    pub dropped: u64,
    pub observed: u64,
}

/// Replays absorbed per connector. A session is one producer connection;
/// after a restart the task's new producer opens a new one.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Replays {
    pub sessions: u64,
    /// Sessions that replayed something (a restart, a rebalance, a zombie).
    pub sessions_with_replays: u64,
    pub records_dropped: u64,
    /// The most records dropped from one session.
    pub largest_replay: u64,
}

/// The dedup filter's metrics.
pub struct DedupMetrics {
    topics: Mutex<BTreeMap<(String, String), TopicCounts>>,
    /// The fetch path's, per (connector or client id, topic).
    fetch_topics: Mutex<BTreeMap<(String, String), TopicCounts>>,
    replays: Mutex<BTreeMap<String, Replays>>,
    fail_open: [AtomicU64; FailOpen::ALL.len()],
    /// Records in transactional batches passed through untouched.
    pub transactional_records: AtomicU64,
    /// Transactions that committed / aborted through the proxy.
    pub txn_committed: AtomicU64,
    pub txn_aborted: AtomicU64,
    /// Open transactions forgotten after the longest transaction timeout.
    pub txn_expired: AtomicU64,
    /// Committed transactions whose keys were not learned (held-keys bound).
    pub txn_unlearned: AtomicU64,
    /// Keys learned from committed transactions.
    pub txn_keys_learned: AtomicU64,
    /// Batches sent without their tags: tagged, they would have passed the
    /// broker's default max.message.bytes.
    pub untagged_too_large: AtomicU64,
    /// Records that waited for another request's pending key.
    pub pending_waits: AtomicU64,
    /// Requests answered by the proxy because every partition was a replay.
    pub answered_locally: AtomicU64,
    pub window_keys: AtomicI64,
    pub window_bytes: AtomicI64,
    pub store_bytes: AtomicI64,
    /// 1 once the window is loaded after a start.
    pub window_loaded: AtomicI64,
    /// Periodic store flushes completed.
    pub store_flushes: AtomicU64,
}

impl DedupMetrics {
    const fn new() -> Self {
        DedupMetrics {
            topics: Mutex::new(BTreeMap::new()),
            fetch_topics: Mutex::new(BTreeMap::new()),
            replays: Mutex::new(BTreeMap::new()),
            fail_open: [const { AtomicU64::new(0) }; FailOpen::ALL.len()],
            transactional_records: AtomicU64::new(0),
            txn_committed: AtomicU64::new(0),
            txn_aborted: AtomicU64::new(0),
            txn_expired: AtomicU64::new(0),
            txn_unlearned: AtomicU64::new(0),
            txn_keys_learned: AtomicU64::new(0),
            untagged_too_large: AtomicU64::new(0),
            pending_waits: AtomicU64::new(0),
            answered_locally: AtomicU64::new(0),
            window_keys: AtomicI64::new(0),
            window_bytes: AtomicI64::new(0),
            store_bytes: AtomicI64::new(0),
            window_loaded: AtomicI64::new(0),
            store_flushes: AtomicU64::new(0),
        }
    }

    pub fn add(&self, connector: &str, topic: &str, counts: TopicCounts) {
        let mut map = self.topics.lock().expect("dedup metrics lock");
        let key = (connector.to_string(), topic.to_string());
        let entry = map.entry(key).or_default();
        entry.records += counts.records;
        entry.dropped += counts.dropped;
        entry.observed += counts.observed;
    }

    /// Records a fetch rule covered in one response, per consumer and topic.
    pub fn add_fetch(&self, consumer: &str, topic: &str, counts: TopicCounts) {
        if counts == TopicCounts::default() {
            return;
        }
        let mut map = self.fetch_topics.lock().expect("dedup metrics lock");
        let entry = map
            .entry((consumer.to_string(), topic.to_string()))
            .or_default();
        entry.records += counts.records;
        entry.dropped += counts.dropped;
        entry.observed += counts.observed;
    }

    pub fn fetch_topics(&self) -> BTreeMap<(String, String), TopicCounts> {
        self.fetch_topics
            .lock()
            .expect("dedup metrics lock")
            .clone()
    }

    pub fn fail_open(&self, reason: FailOpen, records: u64) {
        let i = FailOpen::ALL
            .iter()
            .position(|r| *r == reason)
            .expect("listed");
        self.fail_open[i].fetch_add(records, Relaxed);
    }

    /// Records forwarded unchecked for `reason` so far.
    pub fn fail_open_count(&self, reason: FailOpen) -> u64 {
        FailOpen::ALL
            .iter()
            .position(|r| *r == reason)
            .map_or(0, |i| self.fail_open[i].load(Relaxed))
    }

    /// A connection of `connector` produced for the first time.
    pub fn session_started(&self, connector: &str) {
        let mut map = self.replays.lock().expect("dedup metrics lock");
        map.entry(connector.to_string()).or_default().sessions += 1;
    }

    /// `dropped` more replays in a session that had dropped `before`.
    pub fn replayed(&self, connector: &str, before: u64, dropped: u64) {
        let mut map = self.replays.lock().expect("dedup metrics lock");
        let r = map.entry(connector.to_string()).or_default();
        if before == 0 {
            r.sessions_with_replays += 1;
        }
        r.records_dropped += dropped;
        r.largest_replay = r.largest_replay.max(before + dropped);
    }

    pub fn topics(&self) -> BTreeMap<(String, String), TopicCounts> {
        self.topics.lock().expect("dedup metrics lock").clone()
    }

    pub fn replays(&self) -> BTreeMap<String, Replays> {
        self.replays.lock().expect("dedup metrics lock").clone()
    }

    fn render(&self, out: &mut String) {
        let by_direction = [("produce", self.topics()), ("fetch", self.fetch_topics())];
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
            counter_header(out, name, help);
            for (direction, topics) in &by_direction {
                for ((connector, topic), c) in topics {
                    let _ = writeln!(
                        out,
                        "{name}{{connector=\"{}\",topic=\"{}\",direction=\"{direction}\"}} {}",
                        escape(connector),
                        escape(topic),
                        get(c)
                    );
                }
            }
        }
        counter_header(
            out,
            "idemgate_dedup_fail_open_total",
            "Records a rule covers that were forwarded unchecked, by reason (never dropped on a guess).",
        );
        for (i, reason) in FailOpen::ALL.iter().enumerate() {
            let _ = writeln!(
                out,
                "idemgate_dedup_fail_open_total{{reason=\"{}\"}} {}",
                reason.as_str(),
                self.fail_open[i].load(Relaxed)
            );
        }
        let replays = self.replays();
        counter_header(
            out,
            "idemgate_producer_sessions_total",
            "Producer connections per connector; a task restart opens a new one.",
        );
        for (connector, r) in &replays {
            let _ = writeln!(
                out,
                "idemgate_producer_sessions_total{{connector=\"{}\"}} {}",
                escape(connector),
                r.sessions
            );
        }
        counter_header(
            out,
            "idemgate_replay_sessions_total",
            "Producer sessions that replayed records already acknowledged.",
        );
        for (connector, r) in &replays {
            let _ = writeln!(
                out,
                "idemgate_replay_sessions_total{{connector=\"{}\"}} {}",
                escape(connector),
                r.sessions_with_replays
            );
        }
        counter(
            out,
            "idemgate_transactional_records_total",
            "Records of transactional batches, passed through untouched.",
            self.transactional_records.load(Relaxed),
        );
        counter_header(
            out,
            "idemgate_transactions_total",
            "Transactions ended through the proxy, by outcome (expired: forgotten after the \
             longest transaction timeout; unlearned: committed past the bound on keys held for \
             open transactions).",
        );
        for (outcome, n) in [
            ("committed", &self.txn_committed),
            ("aborted", &self.txn_aborted),
            ("expired", &self.txn_expired),
            ("unlearned", &self.txn_unlearned),
        ] {
            let _ = writeln!(
                out,
                "idemgate_transactions_total{{outcome=\"{outcome}\"}} {}",
                n.load(Relaxed)
            );
        }
        counter(
            out,
            "idemgate_transaction_keys_learned_total",
            "Keys that entered the window when their transaction committed.",
            self.txn_keys_learned.load(Relaxed),
        );
        counter(
            out,
            "idemgate_batches_untagged_too_large_total",
            "Batches forwarded without the tag header because the tags would have taken them \
             past the broker's default max.message.bytes (still deduplicated).",
            self.untagged_too_large.load(Relaxed),
        );
        counter(
            out,
            "idemgate_pending_waits_total",
            "Records that waited for the same key in flight in another request (a zombie and its \
             successor); one request waits at most dedup.pending_wait in all.",
            self.pending_waits.load(Relaxed),
        );
        counter(
            out,
            "idemgate_store_flushes_total",
            "Periodic store flushes completed (every dedup.flush_interval): every key acknowledged \
             before one started is on disk once it is counted.",
            self.store_flushes.load(Relaxed),
        );
        counter(
            out,
            "idemgate_produce_answered_locally_total",
            "Produce requests answered by the proxy because every record was a replay.",
            self.answered_locally.load(Relaxed),
        );
        gauge(
            out,
            "idemgate_window_keys",
            "Keys in the idempotency window.",
            self.window_keys.load(Relaxed),
        );
        gauge(
            out,
            "idemgate_window_memory_bytes",
            "Memory held by the window's key maps (estimate).",
            self.window_bytes.load(Relaxed),
        );
        gauge(
            out,
            "idemgate_store_bytes",
            "Size of the store on disk (sled's estimate).",
            self.store_bytes.load(Relaxed),
        );
        gauge(
            out,
            "idemgate_window_loaded",
            "1 once the window has been read back from the store after a start.",
            self.window_loaded.load(Relaxed),
        );
    }
}

/// Label values: backslash, quote and newline escaped.
pub(crate) fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    pub fn new() -> Self {
        Metrics {
            apis: [const { ApiMetrics::new() }; API_SLOTS],
            connections_active: AtomicI64::new(0),
            connections_total: AtomicU64::new(0),
            connections_rejected: [const { AtomicU64::new(0) }; 2],
            errors: [const { AtomicU64::new(0) }; 3],
            address_leaks: AtomicU64::new(0),
            upstream_up: AtomicI64::new(0),
            broker_listeners: AtomicI64::new(0),
            broker_listeners_missing: AtomicI64::new(0),
            store_writable: AtomicI64::new(1),
            tls_handshake_failures: AtomicU64::new(0),
            tls_reloads: AtomicU64::new(0),
            tls_reload_failures: AtomicU64::new(0),
            in_flight: std::sync::OnceLock::new(),
            memory_waits: [const { AtomicU64::new(0) }; 2],
            responses_waiting: Arc::default(),
            write_timeouts: AtomicU64::new(0),
            dedup: DedupMetrics::new(),
        }
    }

    fn api(&self, key: ApiKey) -> &ApiMetrics {
        &self.apis[(key as usize).min(API_SLOTS - 1)]
    }

    pub fn request(&self, key: ApiKey, bytes: usize) {
        let m = self.api(key);
        m.requests.fetch_add(1, Relaxed);
        m.request_bytes.fetch_add(bytes as u64, Relaxed);
    }

    pub fn response(&self, key: ApiKey, bytes: usize, total: Duration) {
        let m = self.api(key);
        m.response_bytes.fetch_add(bytes as u64, Relaxed);
        m.client_latency.observe(total);
    }

    pub fn upstream_latency(&self, key: ApiKey, d: Duration) {
        self.api(key).upstream_latency.observe(d);
    }

    pub fn connection_rejected(&self, limit: crate::server::Limit) {
        self.connections_rejected[limit as usize].fetch_add(1, Relaxed);
    }

    pub fn connection_error(&self, side: Side) {
        let i = match side {
            Side::Client => 0,
            Side::Upstream => 1,
            Side::Internal => 2,
        };
        self.errors[i].fetch_add(1, Relaxed);
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        let apis: Vec<(ApiKey, &ApiMetrics)> = ApiKey::iter()
            .map(|k| (k, self.api(k)))
            .filter(|(_, m)| m.requests.load(Relaxed) > 0)
            .collect();

        counter_header(
            &mut out,
            "idemgate_requests_total",
            "Requests received from clients, by API.",
        );
        for (k, m) in &apis {
            let _ = writeln!(
                out,
                "idemgate_requests_total{{api=\"{}\"}} {}",
                api_name(*k),
                m.requests.load(Relaxed)
            );
        }
        counter_header(
            &mut out,
            "idemgate_request_bytes_total",
            "Request bytes received from clients, by API.",
        );
        for (k, m) in &apis {
            let v = m.request_bytes.load(Relaxed);
            let _ = writeln!(
                out,
                "idemgate_request_bytes_total{{api=\"{}\"}} {v}",
                api_name(*k)
            );
        }
        counter_header(
            &mut out,
            "idemgate_response_bytes_total",
            "Response bytes sent to clients, by API.",
        );
        for (k, m) in &apis {
            let v = m.response_bytes.load(Relaxed);
            let _ = writeln!(
                out,
                "idemgate_response_bytes_total{{api=\"{}\"}} {v}",
                api_name(*k)
            );
        }
        let name = "idemgate_request_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Request latency per hop: client = whole time in the proxy, upstream = the broker's share.\n# TYPE {name} histogram"
        );
        for (k, m) in &apis {
            if m.client_latency.count() > 0 {
                m.client_latency.render(
                    &mut out,
                    name,
                    &format!("api=\"{}\",hop=\"client\"", api_name(*k)),
                );
            }
            if m.upstream_latency.count() > 0 {
                m.upstream_latency.render(
                    &mut out,
                    name,
                    &format!("api=\"{}\",hop=\"upstream\"", api_name(*k)),
                );
            }
        }

        gauge(
            &mut out,
            "idemgate_connections_active",
            "Client connections open now.",
            self.connections_active.load(Relaxed),
        );
        counter(
            &mut out,
            "idemgate_connections_total",
            "Client connections accepted.",
            self.connections_total.load(Relaxed),
        );
        counter_header(
            &mut out,
            "idemgate_connections_rejected_total",
            "Client connections refused at accept, by the limit reached.",
        );
        for (i, limit) in ["total", "per_ip"].iter().enumerate() {
            let v = self.connections_rejected[i].load(Relaxed);
            let _ = writeln!(
                out,
                "idemgate_connections_rejected_total{{limit=\"{limit}\"}} {v}"
            );
        }
        counter_header(
            &mut out,
            "idemgate_connection_errors_total",
            "Connections closed by an error, by whose fault it was.",
        );
        for (i, side) in ["client", "upstream", "internal"].iter().enumerate() {
            let _ = writeln!(
                out,
                "idemgate_connection_errors_total{{side=\"{side}\"}} {}",
                self.errors[i].load(Relaxed)
            );
        }
        counter(
            &mut out,
            "idemgate_address_leaks_total",
            "Responses that carried an upstream broker address (diagnostics.leak_check).",
            self.address_leaks.load(Relaxed),
        );
        gauge(
            &mut out,
            "idemgate_upstream_up",
            "1 if the last probe of upstream succeeded (ApiVersions and Metadata, or ApiVersions on a SASL-only listener).",
            self.upstream_up.load(Relaxed),
        );
        gauge(
            &mut out,
            "idemgate_broker_listeners",
            "Per-broker listeners open.",
            self.broker_listeners.load(Relaxed),
        );
        gauge(
            &mut out,
            "idemgate_store_writable",
            "0 once the store refused a write (disk full, read-only): keys are no longer recorded and replays pass, until idemgate restarts.",
            self.store_writable.load(Relaxed),
        );
        gauge(
            &mut out,
            "idemgate_broker_listeners_missing",
            "Known brokers whose listener could not be opened (its port is taken): clients sent there are refused, and /readyz says not ready.",
            self.broker_listeners_missing.load(Relaxed),
        );
        counter(
            &mut out,
            "idemgate_tls_handshake_failures_total",
            "Client TLS handshakes that failed or timed out.",
            self.tls_handshake_failures.load(Relaxed),
        );
        counter(
            &mut out,
            "idemgate_tls_reloads_total",
            "TLS certificate files loaded again after a change.",
            self.tls_reloads.load(Relaxed),
        );
        counter(
            &mut out,
            "idemgate_tls_reload_failures_total",
            "TLS file changes that could not be loaded (the previous files stay in use).",
            self.tls_reload_failures.load(Relaxed),
        );
        if let Some(budget) = self.in_flight.get() {
            gauge(
                &mut out,
                "idemgate_in_flight_bytes",
                "Bytes held for requests not yet sent and responses not yet written, all connections.",
                i64::try_from(budget.used()).unwrap_or(i64::MAX),
            );
            gauge(
                &mut out,
                "idemgate_in_flight_bytes_limit",
                "listen.max_in_flight_bytes_total.",
                i64::try_from(budget.capacity()).unwrap_or(i64::MAX),
            );
        }
        counter_header(
            &mut out,
            "idemgate_memory_waits_total",
            "Reads held back for memory: side=client a request body (max_in_flight_bytes_total), side=upstream a response (max_in_flight_bytes).",
        );
        for (i, side) in ["client", "upstream"].iter().enumerate() {
            let _ = writeln!(
                out,
                "idemgate_memory_waits_total{{side=\"{side}\"}} {}",
                self.memory_waits[i].load(Relaxed)
            );
        }
        gauge_header(
            &mut out,
            "idemgate_reads_waiting_for_memory",
            "Reads held back right now: side=client request bodies (max_in_flight_bytes_total), side=upstream responses (max_in_flight_bytes). idemgate_memory_waits_total counts a wait when it ends.",
        );
        let waiting = [
            self.in_flight.get().map_or(0, |budget| budget.waiting()),
            self.responses_waiting.load(Relaxed),
        ];
        for (side, n) in ["client", "upstream"].iter().zip(waiting) {
            let _ = writeln!(
                out,
                "idemgate_reads_waiting_for_memory{{side=\"{side}\"}} {n}"
            );
        }
        counter(
            &mut out,
            "idemgate_write_timeouts_total",
            "Clients closed for taking no byte of their responses for listen.write_timeout.",
            self.write_timeouts.load(Relaxed),
        );
        self.dedup.render(&mut out);
        out
    }
}

impl Metrics {
    /// A read held back for memory; `upstream`: a response, else a request.
    pub fn memory_wait(&self, upstream: bool) {
        self.memory_waits[usize::from(upstream)].fetch_add(1, Relaxed);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn counter_header(out: &mut String, name: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
}

fn counter(out: &mut String, name: &str, help: &str, v: u64) {
    counter_header(out, name, help);
    let _ = writeln!(out, "{name} {v}");
}

fn gauge_header(out: &mut String, name: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
}

fn gauge(out: &mut String, name: &str, help: &str, v: i64) {
    gauge_header(out, name, help);
    let _ = writeln!(out, "{name} {v}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::new();
        m.request(ApiKey::Produce, 100);
        m.response(ApiKey::Produce, 40, Duration::from_micros(700));
        m.upstream_latency(ApiKey::Produce, Duration::from_micros(500));
        let text = m.render();
        assert!(
            text.contains("idemgate_requests_total{api=\"Produce\"} 1"),
            "{text}"
        );
        assert!(text.contains("idemgate_request_bytes_total{api=\"Produce\"} 100"));
        assert!(text.contains("idemgate_request_duration_seconds_bucket{api=\"Produce\",hop=\"client\",le=\"0.001\"} 1"));
        assert!(text.contains("idemgate_request_duration_seconds_bucket{api=\"Produce\",hop=\"upstream\",le=\"0.0005\"} 1"));
        assert!(text
            .contains("idemgate_request_duration_seconds_count{api=\"Produce\",hop=\"client\"} 1"));
        assert!(
            !text.contains("api=\"Fetch\""),
            "APIs never seen are left out"
        );
    }
}
