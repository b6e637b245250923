//! What every connection and the admin API share: the config, the store,
//! the window, the quotas, the registry of open connections, readiness, and
//! the SIGHUP reload.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use tokio::sync::{watch, Semaphore};
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::idempotency::Window;
use crate::limits::MemoryBudget;
use crate::pipeline::Pipeline;
use crate::quota::Quotas;
use crate::store::Store;
use crate::telemetry::Metrics;
use crate::tls::{ServerTls, UpstreamTlsConnector};
use crate::topology::Topology;

/// What every connection shares.
pub struct Shared {
    pub config: Arc<Config>,
    pub metrics: Arc<Metrics>,
    pub topology: Arc<Topology>,
    pub pipeline: Pipeline,
    pub store: Arc<Store>,
    /// The idempotency window (loaded in the background after a start).
    pub window: Arc<Window>,
    /// `[listen.tls]`: the client-side TLS configuration, reloadable.
    pub tls: Option<Arc<ServerTls>>,
    /// `[admin.tls]`: HTTPS for the admin listener, reloadable.
    pub admin_tls: Option<Arc<ServerTls>>,
    /// `[upstream.tls]`: TLS to the brokers.
    pub upstream_tls: Option<UpstreamTlsConnector>,
    /// Becomes `true` once: stop reading requests, finish what is in flight.
    pub shutdown: watch::Receiver<bool>,
    /// `listen.max_in_flight_bytes_total`: every connection's request bodies
    /// and unwritten responses.
    pub in_flight: Arc<MemoryBudget>,
    /// `[quota]` and `[[quotas]]` as in force now (SIGHUP and the admin API
    /// change them), and every client's buckets and counters.
    pub quotas: Arc<Quotas>,
    /// Permits for `listen.max_connections`.
    pub(crate) connections: Arc<Semaphore>,
    /// Open connections per client IP, for `listen.max_connections_per_ip`.
    pub(crate) per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
    pub(crate) tracker: TaskTracker,
    pub(crate) next_conn_id: AtomicU64,
    /// Open client connections, for `/connections`.
    pub registry: Mutex<BTreeMap<u64, ConnView>>,
    /// Last time a refused connection was logged (seconds since start), so
    /// a connection flood gives one line a second, not one per connection.
    pub(crate) last_refusal_log: AtomicU64,
    pub(crate) started: std::time::Instant,
}

/// What `/connections` shows of one open client connection.
#[derive(Debug, Clone)]
pub struct ConnView {
    pub client_addr: SocketAddr,
    /// -1 for the bootstrap listener.
    pub node_id: i32,
    pub client_id: Option<String>,
    /// The TLS client certificate's subject, when the client sent one.
    pub principal: Option<String>,
    pub since: std::time::SystemTime,
}

impl Shared {
    /// Applies `update` to connection `conn_id`'s entry in the registry.
    pub fn update_conn(&self, conn_id: u64, update: impl FnOnce(&mut ConnView)) {
        if let Some(view) = self
            .registry
            .lock()
            .expect("registry lock")
            .get_mut(&conn_id)
        {
            update(view);
        }
    }

    pub fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Relaxed)
    }

    /// Ready when the store answers, the last upstream probe succeeded and (with
    /// dedup rules) the window is loaded.
    pub fn readiness(&self) -> Result<(), Vec<&'static str>> {
        let mut not = Vec::new();
        if !self.store.is_healthy() {
            not.push("store not readable");
        }
        if self.metrics.upstream_up.load(Relaxed) != 1 {
            not.push("upstream not reachable");
        }
        if self.metrics.broker_listeners_missing.load(Relaxed) > 0 {
            not.push("a broker listener's port is taken");
        }
        if self.config.dedup.enabled() && !self.window.is_loaded() {
            not.push("idempotency window not loaded");
        }
        if self.shared_window_catching_up() {
            not.push("shared window catching up with its topic");
        }
        if *self.shutdown.borrow() {
            not.push("shutting down");
        }
        if not.is_empty() {
            Ok(())
        } else {
            Err(not)
        }
    }
}

impl Shared {
    /// `[dedup.shared]`: the first catch-up with the topic is not done and
    /// `dedup.load_wait` has not passed since the start (after it, the
    /// proxy serves with what it knows: [`degraded`](Self::degraded)).
    fn shared_window_catching_up(&self) -> bool {
        let s = &self.metrics.dedup.shared;
        s.enabled.load(Relaxed)
            && !s.caught_up.load(Relaxed)
            && self.started.elapsed() < self.config.dedup.load_wait
    }

    /// Ready, but missing something a replay check needs.
    pub fn degraded(&self) -> Vec<String> {
        let mut why = Vec::new();
        if let Some(e) = self.store.write_failure() {
            why.push(format!(
                "the store refuses writes ({e}); records pass unrecorded until idemgate restarts"
            ));
        }
        let s = &self.metrics.dedup.shared;
        if s.enabled.load(Relaxed) && !s.connected.load(Relaxed) {
            why.push("the shared window's topic is unreachable; replays through other processes pass until it is back".into());
        } else if s.enabled.load(Relaxed) && !s.caught_up.load(Relaxed) {
            why.push(
                "the shared window is still reading its topic; replays it does not know yet pass"
                    .into(),
            );
        }
        if let Some(quota) = self.quotas.tier.degraded() {
            why.push(quota.into());
        }
        why
    }
}

impl Shared {
    /// A config file read again (SIGHUP): its `[quota]` and `[[quotas]]` are
    /// put in force for every open connection; any other section that
    /// changed is logged as needing a restart and left as it is.
    pub fn reload(&self, new: &Config) {
        let old = &self.config;
        let sections = [
            ("listen", old.listen != new.listen),
            ("upstream", old.upstream != new.upstream),
            ("admin", old.admin != new.admin),
            ("store", old.store != new.store),
            ("shutdown", old.shutdown != new.shutdown),
            ("log", old.log != new.log),
            ("diagnostics", old.diagnostics != new.diagnostics),
            ("dedup", old.dedup != new.dedup),
        ];
        for (section, changed) in sections {
            if changed {
                tracing::warn!(section, "[{section}] changed in the file: not reloaded, takes effect at the next restart");
            }
        }
        let settings_changed = self.quotas.settings() != new.quota;
        let changes = self
            .quotas
            .apply(Some(new.quota.clone()), new.quotas.clone());
        self.metrics_reload();
        for c in &changes {
            tracing::info!(change = %c, "quota changed (SIGHUP)");
        }
        tracing::info!(
            rules = new.quotas.len(),
            entities_changed = changes.len(),
            settings_changed,
            "quotas reloaded from the config file (SIGHUP)"
        );
    }

    fn metrics_reload(&self) {
        self.quotas.reloads.fetch_add(1, Relaxed);
    }
}
