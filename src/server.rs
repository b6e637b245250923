//! Listeners, the connection limit, and graceful shutdown.
//!
//! The bootstrap listener takes any client; one more listener per upstream
//! broker is opened as soon as the broker is known (from the start-up probe,
//! a periodic probe, or any Metadata response passing through), on the port
//! the topology assigned it for good. SIGTERM/SIGINT: stop accepting, let each
//! connection finish what is in flight (bounded by `shutdown.drain_timeout`),
//! flush the store, exit 0.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_util::task::TaskTracker;

use crate::admin;
use crate::config::{Config, ConfigErrors};
use crate::connection::{self, Target};
use crate::error::Error;
use crate::idempotency::Window;
use crate::limits::{Admission, ConnectionLimit, MemoryBudget};
use crate::pipeline::Pipeline;
use crate::quota::Quotas;
use crate::shared::Shared;
use crate::store::Store;
use crate::telemetry::Metrics;
use crate::tls::{ServerTls, UpstreamTlsConnector};
use crate::topology::Topology;
use crate::upkeep::{flush_store, keep_window, refresh_metadata, reload_tls, sample_quotas};

/// A running proxy: its addresses, and the handle that stops it.
pub struct Running {
    pub bootstrap: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    done: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops accepting, drains, flushes the store.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.done.await;
    }
}

/// Binds every listener and starts serving. Returns once listening.
pub async fn start(config: Config) -> Result<Running, Error> {
    let config = Arc::new(config);
    let store = Arc::new(Store::open_with(
        &config.store.dir,
        config.dedup.flush_interval,
        config.dedup.store_cache,
    )?);
    let window = Arc::new(Window::new(
        store.clone(),
        config.dedup.window,
        config.dedup.max_keys,
    ));
    let topology = Arc::new(Topology::load(
        config.listen.broker_ports.clone(),
        store.clone(),
    )?);
    let metrics = Arc::new(Metrics::new());
    // Unknown until the first probe, so that its outcome is logged either way.
    metrics.upstream_up.store(-1, Relaxed);
    let (stop, shutdown) = watch::channel(false);
    let load_tls = |settings: &Option<crate::config::ListenTls>| match settings {
        Some(settings) => ServerTls::load(settings)
            .map(|t| Some(Arc::new(t)))
            .map_err(|problems| ConfigErrors(problems).into_error()),
        None => Ok(None),
    };
    let tls = load_tls(&config.listen.tls)?;
    let admin_tls = load_tls(&config.admin.tls)?;
    let upstream_tls = match &config.upstream.tls {
        Some(settings) => Some(
            UpstreamTlsConnector::load(settings)
                .map_err(|problems| ConfigErrors(problems).into_error())?,
        ),
        None => None,
    };
    let topic_configs = Arc::new(crate::topic_config::TopicConfigs::new(
        config.upstream.clone(),
        upstream_tls.clone(),
    ));
    let pipeline = Pipeline::new(config.clone(), topology.clone(), metrics.clone())
        .with_window(window.clone(), topic_configs);
    let in_flight = MemoryBudget::new(config.listen.max_in_flight_bytes_total);
    let _ = metrics.in_flight.set(in_flight.clone());
    let quotas = Arc::new(Quotas::new(config.quota.clone(), config.quotas.clone()));
    let shared = Arc::new(Shared {
        in_flight,
        quotas,
        connections: Arc::new(Semaphore::new(config.listen.max_connections.get())),
        per_ip: Arc::new(Mutex::new(HashMap::new())),
        config: config.clone(),
        metrics,
        topology,
        pipeline,
        store,
        window,
        tls,
        admin_tls,
        upstream_tls,
        shutdown,
        tracker: TaskTracker::new(),
        next_conn_id: AtomicU64::new(1),
        registry: Mutex::new(BTreeMap::new()),
        last_refusal_log: AtomicU64::new(u64::MAX),
        started: std::time::Instant::now(),
    });

    let bootstrap = bind(config.listen.bootstrap, "listen.bootstrap").await?;
    let bootstrap_addr = bootstrap
        .local_addr()
        .map_err(|e| Error::Internal(e.to_string()))?;
    let admin_listener = match config.admin.listen {
        Some(addr) => Some(bind(addr, "admin.listen").await?),
        None => None,
    };
    let admin_addr = admin_listener.as_ref().and_then(|l| l.local_addr().ok());

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(accept_loop(shared.clone(), bootstrap, Target::Bootstrap));
    // Outside the task set: the admin listener keeps answering during the
    // drain (/readyz says 503 "shutting down") and ends with the process.
    let admin_task = admin_listener.map(|l| tokio::spawn(admin::serve(l, shared.clone())));
    tasks.spawn(broker_listeners(shared.clone()));
    tasks.spawn(refresh_metadata(shared.clone()));
    tasks.spawn(keep_window(shared.clone()));
    // Outside the task set too: it publishes what the drain acknowledges,
    // then what is still queued, and stops last (`log_stop`).
    let (log_stop, log_stopped) = watch::channel(false);
    let mut log_task = None;
    if let (Some(settings), true) = (&config.dedup.shared, config.dedup.enabled()) {
        let setup = crate::idempotency::shared::Setup {
            settings: settings.clone(),
            window_len: config.dedup.window,
            upstream: config.upstream.clone(),
            tls: shared.upstream_tls.clone(),
            window: shared.window.clone(),
            sequences: shared.pipeline.sequences(),
            transactions: shared.pipeline.transactions(),
            metrics: shared.metrics.clone(),
        };
        log_task = Some(tokio::spawn(crate::idempotency::shared::start(
            setup,
            log_stopped,
        )));
    }
    if let Some(settings) = &config.quota.shared {
        let setup = crate::quota::topic::Setup {
            settings: settings.clone(),
            upstream: config.upstream.clone(),
            tls: shared.upstream_tls.clone(),
            quotas: shared.quotas.clone(),
        };
        tasks.spawn(crate::quota::topic::run(setup, shared.shutdown.clone()));
    }
    tasks.spawn(flush_store(shared.clone()));
    tasks.spawn(sample_quotas(shared.clone()));
    for tls in [shared.tls.clone(), shared.admin_tls.clone()]
        .into_iter()
        .flatten()
    {
        tasks.spawn(reload_tls(shared.clone(), tls));
    }
    if let Some(addr) = admin_addr {
        let admin = &config.admin;
        if !admin.is_loopback() && admin.token.is_none() {
            tracing::warn!(%addr, "admin.listen is not loopback and no admin token is set: calls that change state are refused (set $IDEMGATE_ADMIN_TOKEN)");
        }
        if !admin.is_loopback() && admin.tls.is_none() && admin.token.is_some() {
            tracing::warn!(%addr, "the admin token crosses the network in clear text: set [admin.tls]");
        }
    }
    tracing::info!(bootstrap = %bootstrap_addr, admin = ?admin_addr, upstream = ?config.upstream.bootstrap, "idemgate listening");
    // What each dedup rule will do (the same notes `idemgate check` prints).
    for n in &config.dedup.notes {
        tracing::warn!(rule = %n.path, note = %n.message, "dedup rule");
    }

    let done_shared = shared.clone();
    let done = tokio::spawn(async move {
        let mut shutdown = done_shared.shutdown.clone();
        let _ = shutdown.wait_for(|s| *s).await;
        tracing::info!("shutting down: no new connections, draining in-flight requests");
        tasks.abort_all();
        // Until each has ended: an aborted task still holds the store until
        // it is dropped, and an embedding process may open the store again
        // right after shutdown returns.
        while tasks.join_next().await.is_some() {}
        done_shared.tracker.close();
        let drain = done_shared.config.shutdown.drain_timeout;
        if tokio::time::timeout(drain, done_shared.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open = done_shared.tracker.len(),
                ?drain,
                "drain timed out; closing the rest"
            );
        }
        if let Some(task) = log_task {
            // Segments the drain queued reach the peers: their replays
            // through another process are then dropped there too.
            let _ = log_stop.send(true);
            let bound = done_shared.config.upstream.request_timeout + Duration::from_secs(1);
            let mut task = task;
            if tokio::time::timeout(bound, &mut task).await.is_err() {
                tracing::warn!(
                    ?bound,
                    "shared window: segments still queued were not published"
                );
                task.abort();
                let _ = task.await;
            }
        }
        match done_shared.store.flush().await {
            Ok(()) => tracing::info!("store flushed; bye"),
            Err(e) => tracing::error!(error = %e, "store flush failed on shutdown"),
        }
        // Last: the admin listener, and with it its hold on the store (an
        // embedding process can then open the same store again).
        if let Some(task) = admin_task {
            task.abort();
            let _ = task.await;
        }
    });

    Ok(Running {
        bootstrap: bootstrap_addr,
        admin: admin_addr,
        shared,
        stop,
        done,
    })
}

async fn bind(addr: SocketAddr, key: &str) -> Result<TcpListener, Error> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Internal(format!("{key}: cannot listen on {addr}: {e}")))
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, target: Target) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and the like: back off, keep serving.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let admission = match admit(&shared, peer.ip()) {
            Ok(admission) => admission,
            Err(limit) => {
                shared.metrics.connection_rejected(limit);
                let now = shared.started.elapsed().as_secs();
                if shared.last_refusal_log.swap(now, Relaxed) != now {
                    tracing::warn!(client.addr = %peer, limit = limit.key(), "connection refused: limit reached");
                }
                drop(stream);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        shared.metrics.connections_total.fetch_add(1, Relaxed);
        shared.tracker.spawn(connection::serve(
            shared.clone(),
            stream,
            peer,
            target,
            admission,
        ));
    }
}

/// Takes a place under `listen.max_connections` and `max_connections_per_ip`.
fn admit(shared: &Shared, ip: IpAddr) -> Result<Admission, ConnectionLimit> {
    let permit = shared
        .connections
        .clone()
        .try_acquire_owned()
        .map_err(|_| ConnectionLimit::Total)?;
    let mut per_ip = shared.per_ip.lock().expect("per-ip lock");
    let n = per_ip.entry(ip).or_insert(0);
    if *n >= shared.config.listen.max_connections_per_ip.get() {
        return Err(ConnectionLimit::PerIp);
    }
    *n += 1;
    Ok(Admission {
        _permit: permit,
        ip,
        per_ip: shared.per_ip.clone(),
    })
}

/// Opens a listener for every node the topology knows, as nodes appear. A
/// port that cannot be bound (another process holds it) is tried again every
/// second, and until then `/readyz` says not ready: a client the proxy
/// sends to that broker would be refused.
async fn broker_listeners(shared: Arc<Shared>) {
    let mut changed = shared.topology.subscribe();
    let mut bound: HashSet<i32> = HashSet::new();
    loop {
        let mut missing = 0;
        for node in shared.topology.nodes() {
            if bound.contains(&node.node_id) {
                continue;
            }
            let addr = SocketAddr::new(shared.config.listen.bootstrap.ip(), node.port);
            match TcpListener::bind(addr).await {
                Ok(listener) => {
                    tracing::info!(node_id = node.node_id, %addr, upstream = %node.upstream, "broker listener open");
                    bound.insert(node.node_id);
                    shared.metrics.broker_listeners.fetch_add(1, Relaxed);
                    tokio::spawn(accept_loop(
                        shared.clone(),
                        listener,
                        Target::Node(node.node_id),
                    ));
                }
                Err(e) => {
                    missing += 1;
                    tracing::error!(
                        node_id = node.node_id, %addr, error = %e,
                        "cannot open broker listener; clients sent to this broker are refused until it opens (retried every second)"
                    )
                }
            }
        }
        shared
            .metrics
            .broker_listeners_missing
            .store(missing, Relaxed);
        let wait = if missing > 0 {
            Duration::from_secs(1).min(shared.config.upstream.metadata_refresh)
        } else {
            shared.config.upstream.metadata_refresh
        };
        tokio::select! {
            r = changed.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
