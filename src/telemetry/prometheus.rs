//! Prometheus text exposition.

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;

use kafka_protocol::messages::ApiKey;

use crate::codec::api_name;
use crate::quota::{Counters, Entity, Quotas, KINDS};

use super::dedup::FailOpen;
use super::metrics::{ApiMetrics, BUCKETS};
use super::{DedupMetrics, Histogram, Metrics, TopicCounts};

impl Histogram {
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

impl DedupMetrics {
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

/// The quota series of `/metrics`.
pub(crate) fn quotas(q: &Quotas, out: &mut String) {
    let all = q.sorted();
    let labels = |e: &Entity| {
        format!(
            "connector=\"{}\",tenant=\"{}\"",
            escape(e.key.label()),
            escape(e.key.tenant.as_deref().unwrap_or(""))
        )
    };
    let _ = writeln!(out, "# HELP idemgate_client_bytes_total Bytes per connector and tenant: produce requests and fetch responses.\n# TYPE idemgate_client_bytes_total counter");
    for e in &all {
        let l = labels(e);
        let c = &e.counters;
        let _ = writeln!(
            out,
            "idemgate_client_bytes_total{{{l},direction=\"produce\"}} {}",
            c.produce_bytes.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "idemgate_client_bytes_total{{{l},direction=\"fetch\"}} {}",
            c.fetch_bytes.load(Relaxed)
        );
    }
    // One counter per entity: (name, help, value).
    type Counter = (&'static str, &'static str, fn(&Counters) -> f64);
    let counters: [Counter; 3] = [
        (
            "idemgate_client_requests_total",
            "Requests per connector and tenant.",
            |c| c.requests.load(Relaxed) as f64,
        ),
        (
            "idemgate_throttle_seconds_total",
            "Throttle imposed by quotas (each connection muted this long).",
            |c| c.throttle_micros.load(Relaxed) as f64 / 1e6,
        ),
        (
            "idemgate_throttled_responses_total",
            "Throttles imposed: on a response, or once more on a held request while a debt is owed.",
            |c| c.throttled.load(Relaxed) as f64,
        ),
    ];
    for (name, help, value) in counters {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for e in &all {
            let _ = writeln!(out, "{name}{{{}}} {}", labels(e), value(&e.counters));
        }
    }
    let _ = writeln!(out, "# HELP idemgate_requests_held Produce or Fetch requests held now (muted, owing or paused), per connector and tenant.\n# TYPE idemgate_requests_held gauge");
    for e in &all {
        let held = e.counters.held.load(Relaxed);
        let _ = writeln!(out, "idemgate_requests_held{{{}}} {held}", labels(e));
    }
    let _ = writeln!(out, "# HELP idemgate_quota_limit The limit in force, per second (bytes, requests, or microseconds of proxy time for request_percentage).\n# TYPE idemgate_quota_limit gauge");
    for e in &all {
        for kind in KINDS {
            if let Some(l) = e.limits()[kind as usize] {
                let _ = writeln!(
                    out,
                    "idemgate_quota_limit{{{},kind=\"{}\"}} {}",
                    labels(e),
                    if l.time_based {
                        "request_time_micros"
                    } else {
                        kind.as_str()
                    },
                    l.rate
                );
            }
        }
    }
    let _ = writeln!(out, "# HELP idemgate_connector_paused 1 while the connector is paused (admin API).\n# TYPE idemgate_connector_paused gauge");
    for e in &all {
        let _ = writeln!(
            out,
            "idemgate_connector_paused{{{}}} {}",
            labels(e),
            u8::from(e.is_paused())
        );
    }
    let _ = writeln!(
        out,
        "# HELP idemgate_quota_reloads_total Quota changes put in force (SIGHUP, admin API).\n# TYPE idemgate_quota_reloads_total counter\nidemgate_quota_reloads_total {}",
        q.reloads.load(Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP idemgate_quota_reload_failures_total Quota changes refused (the previous ones stay).\n# TYPE idemgate_quota_reload_failures_total counter\nidemgate_quota_reload_failures_total {}",
        q.reload_failures.load(Relaxed)
    );
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
    use std::time::Duration;

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

    #[test]
    fn quota_series_carry_connector_and_tenant() {
        let q = crate::quota::resumed_alice();
        let mut text = String::new();
        super::quotas(&q, &mut text);
        assert!(
            text.contains("idemgate_connector_paused{connector=\"x\",tenant=\"alice\"} 0"),
            "{text}"
        );
    }
}
