//! One client connection: frames in → pipeline → upstream → pipeline → out, in order.
//!
//! Three loops share the connection, joined so that one failing ends all:
//!
//! ```text
//! client ──frames──▶ read_requests ──(write)──▶ upstream
//!                        │  slot per request       │
//!                        │  (in request order)     │ responses, FIFO
//!                        ▼                         ▼
//! client ◀──frames── write_responses ◀──oneshot── read_responses
//! ```
//!
//! Kafka brokers answer a connection's requests in the order sent, so the
//! in-flight queue is a plain FIFO; each entry carries the correlation id the
//! client used, since upstream sees the proxy's own sequence (which leaves room
//! for a filter to send requests of its own). Local answers take their slot
//! like any other, so responses always leave in request order; Produce with
//! acks=0 takes none (and should a broker answer it anyway, as tansu does, that
//! answer is dropped). Each request's deadline is its own wait plus
//! `upstream.request_timeout`, checked at the head of the queue only.
//!
//! Memory (`limits.rs`): a request's body is read only once the overall
//! budget (`listen.max_in_flight_bytes_total`) has room for it, and given back
//! once it is sent upstream; a response's body is read only once its
//! connection's budget (`listen.max_in_flight_bytes`) has room, and counted
//! in the overall one until it is written to the client. A client that takes
//! none of its responses for `listen.write_timeout` is closed.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::ApiKey;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::codec::{CodecError, FrameReader, RequestHead, REQUEST_CORRELATION_OFFSET};
use crate::error::{Error, Side};
use crate::limits::Admission;
use crate::limits::{Charge, MemoryBudget, StallGuard};
use crate::message;
use crate::pipeline::{ConnState, QuotaCharge, RequestAction, ResponsePlan};
use crate::quota::{Entity, Kind};
use crate::shared::{ConnView, Shared};
use crate::tls::{self, ClientTlsStream};
use crate::upstream::{self, UpstreamStream, MAX_RESPONSE_FRAME};

/// Which listener a client came in on.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// The bootstrap listener: any upstream bootstrap broker will do.
    Bootstrap,
    /// A broker listener: this node and no other.
    Node(i32),
}

/// A response to come, in its place in the order.
struct Slot {
    response: oneshot::Receiver<Reply>,
    api_key: kafka_protocol::messages::ApiKey,
    started: Instant,
}

/// A request sent upstream, in send order.
struct InFlight {
    upstream_correlation_id: i32,
    /// `None` for Produce with acks=0: Kafka never answers it (tansu does
    /// anyway, and that answer is dropped here, never shown to the client).
    awaited: Option<Awaited>,
}

/// What is needed to hand a response back to its client.
struct Awaited {
    client_correlation_id: i32,
    plan: ResponsePlan,
    sent_at: Instant,
    reply: oneshot::Sender<Reply>,
}

/// A response and the memory charged for it (its connection's budget, the
/// overall one), given back once it is written.
struct Reply {
    bytes: Bytes,
    _held: (Charge, Charge),
}

impl Reply {
    /// Made by the proxy itself: small, charged nowhere.
    fn local(bytes: Bytes) -> Reply {
        Reply {
            bytes,
            _held: (Charge::none(), Charge::none()),
        }
    }
}

/// Ids of acks=0 requests a broker might still answer, kept until a later
/// response proves it will not (answers come in order). Bounded, for brokers
/// that never answer and clients that only ever send acks=0.
const MAX_UNANSWERED: usize = 4096;

/// Serves one client until it leaves, fails, or the proxy shuts down. Logs
/// one line on the way out if it ended with an error.
pub async fn serve(
    shared: Arc<Shared>,
    client: TcpStream,
    peer: SocketAddr,
    target: Target,
    _admission: Admission,
) {
    let conn_id = shared.next_conn_id();
    let node_id = match target {
        Target::Bootstrap => -1,
        Target::Node(id) => id,
    };
    let span = tracing::info_span!(
        "conn",
        conn_id,
        client.addr = %peer,
        client_id = tracing::field::Empty,
        principal = tracing::field::Empty,
        node_id
    );
    let metrics = shared.metrics.clone();
    metrics.connections_active.fetch_add(1, Relaxed);
    let view = ConnView {
        client_addr: peer,
        node_id,
        client_id: None,
        principal: None,
        since: std::time::SystemTime::now(),
    };
    shared
        .registry
        .lock()
        .expect("registry lock")
        .insert(conn_id, view);
    async {
        let result = match accept(&shared, conn_id, client).await {
            Ok(client) => run(&shared, conn_id, client, target).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => tracing::debug!("connection closed"),
            Err(e) if is_disconnect(&e) => tracing::debug!(error = %e, "client went away"),
            Err(e @ Error::UpstreamClosed { .. }) => {
                tracing::info!(error = %e, "closing connection")
            }
            Err(e) => {
                metrics.connection_error(e.side());
                match e.side() {
                    Side::Client => {
                        tracing::warn!(side = %e.side(), error = %e, "closing connection")
                    }
                    Side::Upstream => {
                        tracing::warn!(side = %e.side(), error = %e, "closing connection")
                    }
                    Side::Internal => {
                        tracing::error!(side = %e.side(), error = %e, "closing connection")
                    }
                }
            }
        }
    }
    .instrument(span)
    .await;
    shared
        .registry
        .lock()
        .expect("registry lock")
        .remove(&conn_id);
    metrics.connections_active.fetch_sub(1, Relaxed);
}

/// A client that hangs up is not an error worth a warning.
fn is_disconnect(e: &Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e, Error::ClientIo(io) if matches!(io.kind(), ConnectionReset | BrokenPipe | UnexpectedEof))
}

/// A client connection, plaintext or TLS.
enum ClientStream {
    Plain(TcpStream),
    Tls(Box<ClientTlsStream>),
}

/// The TLS handshake, when the listener has TLS, bounded by its timeout.
async fn accept(shared: &Shared, conn_id: u64, client: TcpStream) -> Result<ClientStream, Error> {
    let Some(tls) = &shared.tls else {
        return Ok(ClientStream::Plain(client));
    };
    let limit = tls.settings().handshake_timeout;
    let stream = match tokio::time::timeout(limit, tls.acceptor().accept(client)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            shared.metrics.tls_handshake_failures.fetch_add(1, Relaxed);
            return Err(Error::Tls(format!("handshake failed: {e}")));
        }
        Err(_) => {
            shared.metrics.tls_handshake_failures.fetch_add(1, Relaxed);
            return Err(Error::Tls(format!("no handshake within {limit:?}")));
        }
    };
    if let Some(principal) = tls::peer_principal(&stream) {
        tracing::Span::current().record("principal", principal.as_str());
        tracing::debug!(%principal, "client certificate accepted");
        shared.update_conn(conn_id, |v| v.principal = Some(principal));
    }
    Ok(ClientStream::Tls(Box::new(stream)))
}

async fn run(
    shared: &Arc<Shared>,
    conn_id: u64,
    client: ClientStream,
    target: Target,
) -> Result<(), Error> {
    match client {
        ClientStream::Plain(s) => {
            let (r, w) = s.into_split();
            proxy(shared, conn_id, r, w, target).await
        }
        // tokio's split: a lock per poll, nothing next to a TLS record's cost.
        ClientStream::Tls(s) => {
            let (r, w) = tokio::io::split(*s);
            proxy(shared, conn_id, r, w, target).await
        }
    }
}

async fn proxy<R, W>(
    shared: &Arc<Shared>,
    conn_id: u64,
    client_r: R,
    client_w: W,
    target: Target,
) -> Result<(), Error>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let config = &shared.config;
    let addrs = upstream_addresses(shared, target).await?;
    let (upstream, upstream_addr) = upstream::connect(
        &addrs,
        config.upstream.connect_timeout,
        shared.upstream_tls.as_ref(),
    )
    .await?;
    tracing::debug!(upstream = %upstream_addr, "upstream connected");
    // The TLS client certificate's subject, if the handshake gave one.
    let principal = shared
        .registry
        .lock()
        .expect("registry lock")
        .get(&conn_id)
        .and_then(|v| v.principal.clone());
    let conn = Conn {
        shared,
        conn_id,
        upstream_addr,
        upstream_gone: CancellationToken::new(),
        owed: AtomicUsize::new(0),
        opened: Instant::now(),
        answered_ms: AtomicU64::new(0),
        muted_until: Mutex::new(None),
        principal: Mutex::new(principal),
        principal_changes: AtomicU64::new(0),
    };
    match upstream {
        UpstreamStream::Plain(s) => {
            let (r, w) = s.into_split();
            pipe(&conn, client_r, client_w, r, w).await
        }
        UpstreamStream::Tls(s) => {
            let (r, w) = tokio::io::split(*s);
            pipe(&conn, client_r, client_w, r, w).await
        }
    }
}

/// The three loops of a connection, joined.
async fn pipe<R, W, UR, UW>(
    conn: &Conn<'_>,
    client_r: R,
    client_w: W,
    upstream_r: UR,
    upstream_w: UW,
) -> Result<(), Error>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    UR: AsyncRead + Unpin,
    UW: AsyncWrite + Unpin,
{
    let in_flight = conn.shared.config.listen.max_in_flight.get();
    let (slot_tx, slot_rx) = mpsc::channel(in_flight);
    let (in_flight_tx, in_flight_rx) = mpsc::channel(in_flight);
    let requests = read_requests(conn, client_r, upstream_w, slot_tx, in_flight_tx);
    let budget = MemoryBudget::counting_waits_in(
        conn.shared.config.listen.max_in_flight_bytes,
        conn.shared.metrics.responses_waiting.clone(),
    );
    let responses = read_responses(conn, upstream_r, in_flight_rx, budget);
    let writer = write_responses(conn, client_w, slot_rx);
    tokio::try_join!(requests, responses, writer)?;
    Ok(())
}

async fn upstream_addresses(shared: &Shared, target: Target) -> Result<Vec<String>, Error> {
    match target {
        Target::Bootstrap => Ok(shared.config.upstream.bootstrap.clone()),
        Target::Node(id) => {
            if let Some(addr) = shared.topology.upstream_of(id) {
                return Ok(vec![addr]);
            }
            // Ports are only handed out for known nodes, so this means the
            // store forgot; ask upstream once more.
            upstream::probe(
                &shared.config.upstream,
                shared.upstream_tls.as_ref(),
                &shared.topology,
                false,
            )
            .await?;
            shared
                .topology
                .upstream_of(id)
                .map(|a| vec![a])
                .ok_or_else(|| Error::Upstream {
                    addr: shared.config.upstream.bootstrap.join(","),
                    message: format!("no broker with node id {id}"),
                })
        }
    }
}

/// What the loops of one connection share.
struct Conn<'a> {
    shared: &'a Shared,
    conn_id: u64,
    /// The broker this connection talks to, for errors.
    upstream_addr: String,
    /// Set by the response reader when the broker hangs up with nothing in
    /// flight: the request reader stops, the writer sends what it has.
    upstream_gone: CancellationToken,
    /// Responses owed to the client and not yet written: a connection is
    /// idle only when this is 0 (a long poll in flight is not idleness).
    owed: AtomicUsize,
    /// When the connection opened, and milliseconds after that when the
    /// last response was written: idleness counts from the later of the last
    /// request and the last response, as a broker's
    /// `connections.max.idle.ms` counts from any activity. (Counting from
    /// the request alone closed a connection just as a long poll was
    /// answered, under the client's next request.)
    opened: Instant,
    answered_ms: AtomicU64,
    /// Quotas: the next Produce or Fetch read waits until then (KIP-219's
    /// mute). Set by the request reader (Produce bytes, request rate) and
    /// the response reader (Fetch bytes).
    muted_until: Mutex<Option<Instant>>,
    /// Who authenticated: the mTLS subject from the start, or the SASL
    /// principal once the broker accepts it.
    principal: Mutex<Option<String>>,
    /// Bumped when `principal` changes: the request reader re-keys its quota.
    principal_changes: AtomicU64,
}

// === impl Conn ===

impl Conn<'_> {
    /// A response was handed to the client's writer.
    fn answered(&self) {
        let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.answered_ms.store(ms, Relaxed);
    }

    /// Time since the last response (since the connection opened, if none).
    fn since_answered(&self) -> Duration {
        self.opened
            .elapsed()
            .saturating_sub(Duration::from_millis(self.answered_ms.load(Relaxed)))
    }

    /// Mutes the connection for `d` from now (never shortens a mute).
    fn mute(&self, d: Duration) {
        if d.is_zero() {
            return;
        }
        let until = Instant::now() + d;
        let mut muted = self.muted_until.lock().expect("mute lock");
        if muted.is_none_or(|u| u < until) {
            *muted = Some(until);
        }
    }

    fn muted_until(&self) -> Option<Instant> {
        let muted = *self.muted_until.lock().expect("mute lock");
        muted.filter(|u| *u > Instant::now())
    }

    /// Throttle `d` (capped at `quota.max_throttle`) imposed on `entity`:
    /// counted, and the connection muted for it. Returns what was imposed.
    fn throttle(&self, entity: &Entity, d: Duration) -> Duration {
        if d.is_zero() {
            return d;
        }
        let d = d.min(self.shared.quotas.max_throttle());
        self.mute(d);
        entity.throttled(d);
        d
    }
}

/// Reads client frames, runs the request filters, writes upstream. Returns
/// (keeping the upstream writer open until everything is answered) when the
/// client closes or the proxy shuts down.
async fn read_requests<R: AsyncRead + Unpin, UW: AsyncWrite + Unpin>(
    conn: &Conn<'_>,
    client_r: R,
    upstream_w: UW,
    slots: mpsc::Sender<Slot>,
    in_flight: mpsc::Sender<InFlight>,
) -> Result<UW, Error> {
    let Conn {
        shared,
        conn_id,
        upstream_addr,
        upstream_gone,
        ..
    } = conn;
    let (conn_id, upstream_addr) = (*conn_id, upstream_addr.as_str());
    let idle = shared.config.listen.idle_timeout;
    let mut frames = FrameReader::new(client_r, shared.config.listen.max_frame_bytes);
    let mut upstream = BufWriter::with_capacity(64 * 1024, upstream_w);
    let mut shutdown: watch::Receiver<bool> = shared.shutdown.clone();
    let mut state = ConnState::default();
    let mut next_correlation_id: i32 = 0;
    let mut client_id_recorded = false;
    let mut last_request = Instant::now();
    // The quota entity, and the principal it was keyed on (by change count).
    let mut entity: Option<Arc<Entity>> = None;
    let mut keyed_on = 0u64;
    let mut quota_changes = shared.quotas.subscribe();

    loop {
        let (mut frame, charge): (BytesMut, Charge) = tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => break,
            _ = upstream_gone.cancelled() => break,
            next = frames.next(|len| shared.in_flight.charge(len)) => match next {
                Ok(None) => break,
                Ok(Some(read)) => read,
                Err(CodecError::Io(e)) => return Err(Error::ClientIo(e)),
                Err(CodecError::Frame(e)) => return Err(e.into()),
            },
            _ = tokio::time::sleep(QUIET.min(idle)) => {
                shrink_read_buffer(frames.buffer_mut());
                // Idle: no request and no response for idle_timeout, and
                // nothing owed to the client.
                if last_request.elapsed() >= idle
                    && conn.since_answered() >= idle
                    && conn.owed.load(Relaxed) == 0
                {
                    tracing::info!(?idle, "closing an idle connection (listen.idle_timeout)");
                    break;
                }
                continue;
            }
        };
        if charge.waited() {
            shared.metrics.memory_wait(false);
        }
        last_request = Instant::now();
        let started = Instant::now();
        let head = RequestHead::peek(&frame)?;
        if !client_id_recorded {
            let client_id = head.client_id_str();
            tracing::Span::current().record("client_id", client_id.as_str());
            shared.update_conn(conn_id, |v| v.client_id = Some(client_id));
            client_id_recorded = true;
        }
        shared.metrics.request(head.api_key, frame.len() + 4);
        tracing::trace!(api_key = ?head.api_key, version = head.api_version, correlation_id = head.correlation_id, bytes = frame.len(), "request");

        // Quotas: who this is (again once SASL names a principal).
        let changes = conn.principal_changes.load(Relaxed);
        if entity.is_none() || changes != keyed_on {
            let identity = shared.quotas.identify(&head.client_id_str());
            let principal = conn.principal.lock().expect("principal lock").clone();
            entity = Some(shared.quotas.entity(&identity, principal.as_deref()));
            if keyed_on == 0 && changes == 0 {
                state.set_identity(identity);
            }
            keyed_on = changes;
        }
        let entity = entity.clone().expect("set above");
        // A muted connection, or a paused connector, holds its next Produce
        // or Fetch, and reads nothing more meanwhile; other requests
        // (heartbeats, commits, metadata) are never held.
        let kind = match head.api_key {
            ApiKey::Produce => Some(Kind::Produce),
            ApiKey::Fetch => Some(Kind::Fetch),
            _ => None,
        };
        let data = kind.is_some();
        let mut still_paused = false;
        if let Some(kind) = kind {
            // A Produce also waits out a debt larger than one throttle. A
            // Fetch does not: its size is capped to what the bucket holds,
            // and a long hold would hold a kafka-python consumer's
            // heartbeats, which share its fetch connection.
            if entity.is_paused()
                || conn.muted_until().is_some()
                || (kind == Kind::Produce && !entity.owed(kind, Instant::now()).is_zero())
            {
                upstream
                    .flush()
                    .await
                    .map_err(|e| upstream_io(upstream_addr, e))?;
                still_paused = hold(conn, &entity, kind, &mut quota_changes, &mut shutdown).await;
            }
        }
        let mut owed = entity.charge_request();
        match head.api_key {
            ApiKey::Produce => {
                owed = owed.max(entity.charge(Kind::Produce, (frame.len() + 4) as u64));
            }
            ApiKey::Fetch => {
                // What the budget allows now; a paused connector held past
                // quota.max_hold gets the least (one batch, KIP-74).
                let cap = if still_paused {
                    Some(1)
                } else {
                    entity.fetch_allowance()
                };
                if let Some(cap) = cap {
                    message::cap_fetch_max_bytes(
                        &mut frame,
                        head.body_offset,
                        head.api_version,
                        cap,
                    );
                }
            }
            _ => {}
        }
        let throttle = conn.throttle(&entity, owed);

        // The dedup filter may wait on keys an earlier request of this very
        // connection has in flight: that request must have left, not sit in
        // the buffer behind the wait.
        if head.api_key == ApiKey::Produce && !upstream.buffer().is_empty() {
            upstream
                .flush()
                .await
                .map_err(|e| upstream_io(upstream_addr, e))?;
        }
        let action = shared.pipeline.on_request(&mut state, &head, frame).await?;
        let spent = entity.charge_time(started.elapsed());
        let throttle = throttle.max(conn.throttle(&entity, spent));
        match action {
            RequestAction::Answer(bytes) => {
                drop(charge);
                let _ = open_slot(conn, &slots, head.api_key, started)
                    .await?
                    .send(Reply::local(bytes));
            }
            RequestAction::Forward(mut frame, mut plan) => {
                if let Some(plan) = plan.as_mut() {
                    // Fetch bytes are counted (and charged) as they come back.
                    if head.api_key == ApiKey::Fetch || (data && !throttle.is_zero()) {
                        plan.quota = Some(QuotaCharge {
                            entity: entity.clone(),
                            throttle,
                        });
                    }
                }
                let upstream_id = next_correlation_id;
                next_correlation_id = next_correlation_id.wrapping_add(1);
                frame[REQUEST_CORRELATION_OFFSET..REQUEST_CORRELATION_OFFSET + 4]
                    .copy_from_slice(&upstream_id.to_be_bytes());
                let awaited = match plan {
                    Some(plan) => Some(Awaited {
                        client_correlation_id: head.correlation_id,
                        plan,
                        sent_at: Instant::now(),
                        reply: open_slot(conn, &slots, head.api_key, started).await?,
                    }),
                    None => None,
                };
                let entry = InFlight {
                    upstream_correlation_id: upstream_id,
                    awaited,
                };
                if in_flight.send(entry).await.is_err() {
                    // The response reader is gone: the broker closed.
                    return Err(Error::UpstreamClosed {
                        addr: upstream_addr.to_string(),
                    });
                }
                write_frame(&mut upstream, &frame)
                    .await
                    .map_err(|e| upstream_io(upstream_addr, e))?;
                // Sent, or in the 64 KiB the upstream writer keeps.
                drop((frame, charge));
                // Pipelined requests already buffered go out in one write.
                if !whole_frame_buffered(frames.buffer()) {
                    upstream
                        .flush()
                        .await
                        .map_err(|e| upstream_io(upstream_addr, e))?;
                }
            }
        }
    }
    upstream
        .flush()
        .await
        .map_err(|e| upstream_io(upstream_addr, e))?;
    Ok(upstream.into_inner())
}

/// Holds a Produce or Fetch while its connection is muted, a Produce also
/// while its entity owes a debt (muted again, a throttle at a time: a debt
/// larger than one throttle is carried across holds until repaid), or while
/// its connector is paused; all of it at most `quota.max_hold`, so that no
/// request waits anywhere near the client's request.timeout.ms. Nothing else
/// is read from the client meanwhile. True if the pause outlasted `max_hold`.
async fn hold(
    conn: &Conn<'_>,
    entity: &Entity,
    kind: Kind,
    changes: &mut watch::Receiver<u64>,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    let held_at = Instant::now();
    // Counted while held, however the wait ends (a closed connection drops it).
    struct Held<'a>(&'a std::sync::atomic::AtomicU64);
    impl Drop for Held<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Relaxed);
        }
    }
    entity.counters.held.fetch_add(1, Relaxed);
    let _held = Held(&entity.counters.held);
    hold_until_free(conn, entity, kind, held_at, changes, shutdown).await
}

async fn hold_until_free(
    conn: &Conn<'_>,
    entity: &Entity,
    kind: Kind,
    held_at: Instant,
    changes: &mut watch::Receiver<u64>,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    loop {
        let settings = conn.shared.quotas.settings();
        let max_hold = settings.max_hold;
        let paused = entity.is_paused();
        if kind == Kind::Produce && conn.muted_until().is_none() {
            let now = Instant::now();
            let limits = (settings.max_throttle, max_hold);
            if let Some(piece) = entity.hold_step(kind, now - held_at, limits, now) {
                conn.throttle(entity, piece);
            }
        }
        let mut until = conn.muted_until();
        if paused {
            let end = held_at + max_hold;
            until = Some(until.map_or(end, |u| u.max(end)));
        }
        let Some(until) = until.filter(|u| *u > Instant::now()) else {
            return paused;
        };
        tokio::select! {
            _ = tokio::time::sleep_until(until.into()) => {}
            // A resume, a new quota: look again.
            _ = changes.changed() => {}
            _ = shutdown.wait_for(|stop| *stop) => return false,
            _ = conn.upstream_gone.cancelled() => return false,
        }
    }
}

/// Takes the next place in the response order; the response goes into the
/// returned sender whenever it is ready.
async fn open_slot(
    conn: &Conn<'_>,
    slots: &mpsc::Sender<Slot>,
    api_key: kafka_protocol::messages::ApiKey,
    started: Instant,
) -> Result<oneshot::Sender<Reply>, Error> {
    let (tx, rx) = oneshot::channel();
    let slot = Slot {
        response: rx,
        api_key,
        started,
    };
    slots
        .send(slot)
        .await
        .map_err(|_| Error::Internal("response writer stopped".into()))?;
    conn.owed.fetch_add(1, Relaxed);
    Ok(tx)
}

fn upstream_io(addr: &str, source: std::io::Error) -> Error {
    Error::UpstreamIo {
        addr: addr.to_string(),
        source,
    }
}

fn whole_frame_buffered(buf: &BytesMut) -> bool {
    match buf.get(..4) {
        Some(head) => {
            let len = i32::from_be_bytes(head.try_into().expect("4 bytes"));
            len >= 0 && buf.len() >= 4 + len as usize
        }
        None => false,
    }
}

/// After this long without a frame, a connection's read buffer gives back
/// what its largest frame made it grow to.
const QUIET: std::time::Duration = std::time::Duration::from_secs(1);

/// What a quiet connection's read buffer may keep (its frames' allocation
/// stays with the buffer after they are consumed: one 50 MiB Fetch would
/// otherwise stay resident for as long as the connection lives).
const READ_BUFFER_KEPT: usize = 64 * 1024;

/// Its capacity does not show the allocation it holds (a consumed frame's
/// memory comes back to it on the next reserve), so a quiet buffer always
/// moves to a fresh small one: at most once a second, at most 64 KiB copied.
fn shrink_read_buffer(buf: &mut BytesMut) {
    if buf.len() <= READ_BUFFER_KEPT {
        let mut small = BytesMut::with_capacity(8 * 1024);
        small.extend_from_slice(buf);
        *buf = small;
    }
}

/// Reads upstream responses in order, checks each against the request it
/// answers, runs the response filters, and hands it to its slot.
async fn read_responses<UR: AsyncRead + Unpin>(
    conn: &Conn<'_>,
    upstream_r: UR,
    mut in_flight: mpsc::Receiver<InFlight>,
    budget: Arc<MemoryBudget>,
) -> Result<(), Error> {
    let Conn {
        shared,
        upstream_addr: addr,
        upstream_gone,
        ..
    } = conn;
    let mut frames = FrameReader::new(upstream_r, MAX_RESPONSE_FRAME);
    let fail = |message: String| Error::Upstream {
        addr: addr.clone(),
        message,
    };
    let in_flight_gone = || fail("closed the connection with requests in flight".into());
    let mut unanswered: VecDeque<i32> = VecDeque::new();
    loop {
        // Between responses, keep reading upstream too: a broker that closes
        // the connection (restart, idle timeout) closes the client's with it,
        // as it would have without the proxy, and answers to acks=0 produces
        // (tansu sends them) never pile up in the socket. `biased`: an entry
        // is queued before its request is written, so a response that is
        // already here always finds its entry first.
        let entry = tokio::select! {
            biased;
            entry = in_flight.recv() => entry,
            _ = tokio::time::sleep(QUIET) => {
                shrink_read_buffer(frames.buffer_mut());
                continue;
            }
            len = frames.next_len() => {
                let Some(len) = len.map_err(|e| fail(e.to_string()))? else {
                    tracing::info!(upstream = %addr, "upstream closed the connection; closing the client's");
                    upstream_gone.cancel();
                    return Ok(());
                };
                // Nothing is awaited: an answer to an acks=0 produce, read
                // and dropped.
                let frame = frames.body(len).await.map_err(|e| fail(e.to_string()))?;
                let id = correlation_id_of(&frame).map_err(&fail)?;
                if !forget_unanswered(&mut unanswered, id) {
                    return Err(fail(format!("sent a response (correlation id {id}) nobody asked for")));
                }
                continue;
            }
        };
        let Some(entry) = entry else { return Ok(()) };
        let Some(mut awaited) = entry.awaited else {
            if unanswered.len() == MAX_UNANSWERED {
                unanswered.pop_front();
            }
            unanswered.push_back(entry.upstream_correlation_id);
            continue;
        };
        let api = awaited.plan.api_key;
        let mut deadline = tokio::time::Instant::from_std(awaited.sent_at + awaited.plan.wait);
        let too_late = || {
            fail(format!(
                "no response to {api:?} v{} within {:?}",
                awaited.plan.api_version, awaited.plan.wait
            ))
        };
        let (mut frame, held) = loop {
            let len = match tokio::time::timeout_at(deadline, frames.next_len()).await {
                Err(_) => return Err(too_late()),
                Ok(len) => len
                    .map_err(|e| fail(e.to_string()))?
                    .ok_or_else(in_flight_gone)?,
            };
            // Waiting for the client to take earlier responses is not the
            // broker's time: the deadline moves by as much.
            let asked = tokio::time::Instant::now();
            let mine = budget.charge(len + 4).await;
            if mine.waited() {
                shared.metrics.memory_wait(true);
                deadline += asked.elapsed();
            }
            let held = (mine, shared.in_flight.force(len + 4));
            let frame = match tokio::time::timeout_at(deadline, frames.body(len)).await {
                Err(_) => return Err(too_late()),
                Ok(frame) => frame.map_err(|e| fail(e.to_string()))?,
            };
            let id = correlation_id_of(&frame).map_err(&fail)?;
            if id == entry.upstream_correlation_id {
                // Answers are in order: earlier acks=0 requests got none.
                unanswered.clear();
                break (frame, held);
            }
            if !forget_unanswered(&mut unanswered, id) {
                return Err(fail(format!(
                    "answered correlation id {id} when {} was due",
                    entry.upstream_correlation_id
                )));
            }
        };
        frame[..4].copy_from_slice(&awaited.client_correlation_id.to_be_bytes());
        shared
            .metrics
            .upstream_latency(api, awaited.sent_at.elapsed());
        let mut response = shared
            .pipeline
            .on_response(&mut awaited.plan, frame.freeze())
            .await?;
        if let Some(quota) = &awaited.plan.quota {
            let mut throttle = quota.throttle;
            if api == ApiKey::Fetch {
                let owed = quota
                    .entity
                    .charge(Kind::Fetch, (response.len() + 4) as u64);
                throttle = throttle.max(conn.throttle(&quota.entity, owed));
            }
            if !throttle.is_zero() {
                let ms = i32::try_from(throttle.as_millis()).unwrap_or(i32::MAX);
                match message::raise_throttle_time(api, awaited.plan.api_version, &response, ms) {
                    Ok(Some(changed)) => response = changed,
                    Ok(None) => {}
                    // The client is muted all the same; only the hint is lost.
                    Err(e) => tracing::debug!(error = %e, "throttle_time_ms not rewritten"),
                }
            }
        }
        if let Some(principal) = &awaited.plan.authenticates {
            if shared.pipeline.authenticated(&awaited.plan, &response) {
                *conn.principal.lock().expect("principal lock") = Some(principal.clone());
                conn.principal_changes.fetch_add(1, Relaxed);
                tracing::Span::current().record("principal", principal.as_str());
                tracing::info!(%principal, "SASL authentication accepted by the broker");
                shared.update_conn(conn.conn_id, |v| v.principal = Some(principal.clone()));
            }
        }
        // The writer may be gone if the client left; nothing more to do then.
        let _ = awaited.reply.send(Reply {
            bytes: response,
            _held: held,
        });
    }
}

fn correlation_id_of(frame: &[u8]) -> Result<i32, String> {
    match frame.get(..4) {
        Some(head) => Ok(i32::from_be_bytes(head.try_into().expect("4 bytes"))),
        None => Err(format!(
            "{}-byte response frame has no correlation id",
            frame.len()
        )),
    }
}

/// Drops the answer to an acks=0 request (and every earlier one, which can no
/// longer come). False if `id` was not one of them.
fn forget_unanswered(unanswered: &mut VecDeque<i32>, id: i32) -> bool {
    match unanswered.iter().position(|u| *u == id) {
        Some(at) => {
            unanswered.drain(..=at);
            tracing::trace!(
                correlation_id = id,
                "dropped the broker's answer to an acks=0 produce"
            );
            true
        }
        None => false,
    }
}

/// Writes responses to the client in request order, flushing whenever the
/// next one is not ready yet.
async fn write_responses<W: AsyncWrite + Unpin>(
    conn: &Conn<'_>,
    client_w: W,
    mut slots: mpsc::Receiver<Slot>,
) -> Result<(), Error> {
    let stalled = StallGuard::new(client_w, conn.shared.config.listen.write_timeout);
    let mut out = BufWriter::with_capacity(64 * 1024, stalled);
    let result = write_in_order(conn, &mut out, &mut slots).await;
    if let Err(Error::ClientIo(e)) = &result {
        if e.kind() == std::io::ErrorKind::TimedOut {
            conn.shared.metrics.write_timeouts.fetch_add(1, Relaxed);
        }
    }
    result
}

async fn write_in_order<W: AsyncWrite + Unpin>(
    conn: &Conn<'_>,
    out: &mut BufWriter<W>,
    slots: &mut mpsc::Receiver<Slot>,
) -> Result<(), Error> {
    loop {
        let slot = match slots.try_recv() {
            Ok(slot) => slot,
            Err(_) => {
                out.flush().await.map_err(Error::ClientIo)?;
                match slots.recv().await {
                    Some(slot) => slot,
                    None => break,
                }
            }
        };
        let mut response = slot.response;
        let reply = match response.try_recv() {
            Ok(reply) => reply,
            Err(oneshot::error::TryRecvError::Empty) => {
                out.flush().await.map_err(Error::ClientIo)?;
                match response.await {
                    Ok(reply) => reply,
                    // The response reader failed and reports why.
                    Err(_) => return Ok(()),
                }
            }
            Err(oneshot::error::TryRecvError::Closed) => return Ok(()),
        };
        write_frame(out, &reply.bytes)
            .await
            .map_err(Error::ClientIo)?;
        conn.answered();
        conn.owed.fetch_sub(1, Relaxed);
        conn.shared
            .metrics
            .response(slot.api_key, reply.bytes.len() + 4, slot.started.elapsed());
        // In the writer's buffer or on the wire: the memory is given back.
        drop(reply);
    }
    out.flush().await.map_err(Error::ClientIo)?;
    Ok(())
}

async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, body: &[u8]) -> std::io::Result<()> {
    let len = i32::try_from(body.len()).map_err(|_| std::io::Error::other("frame over 2 GiB"))?;
    w.write_all(&len.to_be_bytes()).await?;
    w.write_all(body).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quiet_read_buffer_gives_back_its_largest_frame() {
        let mut buf = BytesMut::with_capacity(4 << 20);
        buf.extend_from_slice(&[7; 4 << 20]);
        let frame = buf.split_to((4 << 20) - 10);
        drop(frame);
        // The consumed frame's 4 MiB come back to the buffer.
        buf.reserve(1);
        assert!(buf.capacity() >= (4 << 20) - 10, "{}", buf.capacity());
        shrink_read_buffer(&mut buf);
        assert_eq!(&buf[..], &[7; 10], "the start of the next frame is kept");
        assert!(buf.capacity() <= READ_BUFFER_KEPT, "{}", buf.capacity());
        // A big frame still arriving is left alone.
        let mut arriving = BytesMut::with_capacity(4 << 20);
        arriving.extend_from_slice(&[1; 1 << 20]);
        shrink_read_buffer(&mut arriving);
        assert_eq!(arriving.len(), 1 << 20);
    }

    #[test]
    fn whole_frame_detection() {
        assert!(!whole_frame_buffered(&BytesMut::from(&[0u8, 0, 0][..])));
        assert!(!whole_frame_buffered(&BytesMut::from(
            &[0u8, 0, 0, 2, 1][..]
        )));
        assert!(whole_frame_buffered(&BytesMut::from(
            &[0u8, 0, 0, 2, 1, 2][..]
        )));
        assert!(!whole_frame_buffered(&BytesMut::from(
            &[0xffu8, 0xff, 0xff, 0xff][..]
        )));
    }
}
