//! The metrics registry: atomics in fixed arrays, indexed by API key.

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::messages::ApiKey;

use crate::error::Side;
use crate::limits::MemoryBudget;

use super::DedupMetrics;

/// Upper bounds of the latency buckets, in seconds.
pub(super) const BUCKETS: [f64; 17] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// Room for every API key Kafka has assigned (92 in Kafka 4.1).
const API_SLOTS: usize = 128;

/// A latency histogram with Prometheus' cumulative buckets.
///
/// Not prometheus-client's `Histogram`: that one takes a write lock on
/// every observation, and `Family` a read lock and a hash lookup per
/// sample; these are observed twice per request, so they stay atomics in
/// fixed arrays and prometheus-client only encodes them
/// (`telemetry/prometheus.rs`).
pub struct Histogram {
    pub(super) buckets: [AtomicU64; BUCKETS.len() + 1],
    pub(super) sum_micros: AtomicU64,
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

    pub(super) fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Relaxed)).sum()
    }
}

/// Per-API counters.
pub(super) struct ApiMetrics {
    pub(super) requests: AtomicU64,
    pub(super) request_bytes: AtomicU64,
    pub(super) response_bytes: AtomicU64,
    pub(super) client_latency: Histogram,
    pub(super) upstream_latency: Histogram,
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
    pub(super) apis: [ApiMetrics; API_SLOTS],
    pub connections_active: AtomicI64,
    pub connections_total: AtomicU64,
    /// Refused at accept: `listen.max_connections`, `max_connections_per_ip`.
    pub(super) connections_rejected: [AtomicU64; 2],
    /// Connections closed by an error, by whose fault.
    pub(super) errors: [AtomicU64; 3],
    /// Responses that would have shown a client an upstream address.
    pub address_leaks: AtomicU64,
    /// 1 while the last probe of upstream succeeded (Metadata answered, or
    /// refused before authentication by a SASL listener).
    pub upstream_up: AtomicI64,
    pub broker_listeners: AtomicI64,
    /// Known brokers whose listener could not be opened (port taken).
    pub broker_listeners_missing: AtomicI64,
    /// Client TLS handshakes that failed or timed out.
    pub tls_handshake_failures: AtomicU64,
    /// TLS file reloads, and reloads that failed (the old files stay in use).
    pub tls_reloads: AtomicU64,
    pub tls_reload_failures: AtomicU64,
    /// `listen.max_in_flight_bytes_total`, set once the server starts.
    pub in_flight: std::sync::OnceLock<Arc<MemoryBudget>>,
    /// Reads held back for memory: [0] a request body waited for the overall
    /// budget, [1] a response waited for its connection's budget.
    pub(super) memory_waits: [AtomicU64; 2],
    /// Responses waiting now for their connection's budget, all connections.
    pub responses_waiting: Arc<AtomicUsize>,
    /// Clients closed for taking none of their responses (`write_timeout`).
    pub write_timeouts: AtomicU64,
    pub dedup: DedupMetrics,
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

    pub(super) fn api(&self, key: ApiKey) -> &ApiMetrics {
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

    pub fn connection_rejected(&self, limit: crate::limits::ConnectionLimit) {
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
