//! Logs and metrics: tracing init here; the registry in `metrics.rs`, the
//! dedup counters in `dedup.rs`, every metric name in `prometheus.rs`.
//!
//! Metrics are plain atomics in fixed arrays indexed by API key, so the hot
//! path never takes a lock or allocates; `/metrics` encodes them with
//! prometheus-client (OpenMetrics text). Latency is measured per hop: `hop="client"` is the whole time a
//! request spends with us (frame read to response written), `hop="upstream"`
//! the broker's share of it (request written to response read).

use crate::config::{Log, LogFormat};

mod dedup;
mod metrics;
pub mod prometheus;

pub use dedup::{DedupMetrics, FailOpen, Replays, SharedWindowStats, TopicCounts};
pub use metrics::{Histogram, Metrics};

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
