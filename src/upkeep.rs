//! The periodic loops beside the data path: the window's load, sweep and
//! gauges, the store flush, quota sampling, TLS reload and the upstream
//! Metadata probe.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use crate::shared::Shared;
use crate::tls::ServerTls;
use crate::upstream;

/// Loads the window from the store, then evicts expired and surplus keys
/// every second and keeps its gauges current.
pub(crate) async fn keep_window(shared: Arc<Shared>) {
    let window = shared.window.clone();
    let loaded = tokio::task::spawn_blocking(move || window.load()).await;
    let dedup = &shared.metrics.dedup;
    match loaded {
        Ok(Ok(report)) => {
            dedup.window_loaded.store(1, Relaxed);
            tracing::info!(
                keys = report.keys,
                segments = report.segments,
                expired = report.expired,
                took = ?report.took,
                "idempotency window loaded"
            );
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "idempotency window could not be loaded: dedup topics pass through unchecked");
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, "idempotency window load panicked: dedup topics pass through unchecked");
            return;
        }
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let window = shared.window.clone();
        let swept = tokio::task::spawn_blocking(move || window.sweep()).await;
        match swept {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::debug!(evicted = n, "window keys evicted"),
            Ok(Err(e)) => tracing::warn!(error = %e, "window sweep failed"),
            Err(e) => tracing::warn!(error = %e, "window sweep panicked"),
        }
        dedup.window_keys.store(shared.window.len() as i64, Relaxed);
        dedup
            .window_bytes
            .store(shared.window.memory_bytes() as i64, Relaxed);
        dedup
            .store_bytes
            .store(shared.store.size_on_disk() as i64, Relaxed);
    }
}

/// Flushes the store every `dedup.flush_interval` (sled's own timer does
/// too) and counts each flush, so "every key acknowledged before this flush
/// is on disk" is an event (`idemgate_store_flushes_total`), not a guess.
pub(crate) async fn flush_store(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(shared.config.dedup.flush_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match shared.window.flush().await {
            Ok(()) => {
                shared.metrics.dedup.store_flushes.fetch_add(1, Relaxed);
            }
            Err(e) => tracing::debug!(error = %e, "periodic store flush failed"),
        }
    }
}

/// Samples every quota entity's byte counters once a second, for the rates
/// `/quotas` shows.
pub(crate) async fn sample_quotas(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        shared.quotas.sample();
    }
}

/// Loads changed TLS files every `reload_interval` (`listen.tls`, `admin.tls`).
pub(crate) async fn reload_tls(shared: Arc<Shared>, tls: Arc<ServerTls>) {
    loop {
        tokio::time::sleep(tls.settings().reload_interval).await;
        match tls.reload_if_changed() {
            Ok(true) => {
                shared.metrics.tls_reloads.fetch_add(1, Relaxed);
                tracing::info!(cert = %tls.settings().cert.display(), "TLS files reloaded for new connections");
            }
            Ok(false) => {}
            Err(problems) => {
                shared.metrics.tls_reload_failures.fetch_add(1, Relaxed);
                for p in problems {
                    tracing::error!(key = %p.path, error = %p.message, "TLS files changed but cannot be loaded; keeping the previous ones");
                }
            }
        }
    }
}

/// Probes upstream Metadata now and every `upstream.metadata_refresh`.
pub(crate) async fn refresh_metadata(shared: Arc<Shared>) {
    loop {
        // Fetch rules need topic ids (Fetch v13+ names topics by id): the
        // probe learns them all, so that a client continuing its fetch
        // session after a proxy restart is filtered before its next Metadata.
        let all_topics = shared.config.dedup.fetch_enabled();
        match upstream::probe(
            &shared.config.upstream,
            shared.upstream_tls.as_ref(),
            &shared.topology,
            all_topics,
        )
        .await
        {
            Ok(probed) => {
                if let (true, upstream::Probed::Brokers(metadata)) = (all_topics, &probed) {
                    shared.topology.learn_names_from(metadata);
                }
                if shared.metrics.upstream_up.swap(1, Relaxed) != 1 {
                    match probed {
                        upstream::Probed::Brokers(metadata) => {
                            tracing::info!(brokers = metadata.brokers.len(), "upstream reachable")
                        }
                        upstream::Probed::NeedsAuthentication => tracing::info!(
                            "upstream reachable; it answers Metadata only after authentication \
                             (SASL listener), so its brokers are learned from clients' Metadata"
                        ),
                    }
                }
            }
            Err(e) => {
                if shared.metrics.upstream_up.swap(0, Relaxed) != 0 {
                    tracing::warn!(error = %e, "upstream metadata probe failed");
                }
            }
        }
        let period = if shared.metrics.upstream_up.load(Relaxed) == 1 {
            shared.config.upstream.metadata_refresh
        } else {
            // Not ready yet: look again soon.
            Duration::from_millis(500).min(shared.config.upstream.metadata_refresh)
        };
        tokio::time::sleep(period).await;
    }
}
