//! One client connection: transport only. Frames in, each through the
//! filter stack (`pipeline.rs`) to upstream, responses out in request order.
//!
//! Three loops share the connection, joined so that one failing ends all
//! (one task; `wakes.rs` takes their wakes of each other at once):
//!
//! ```text
//! client ──frames──▶ read_requests ──stack──▶ upstream (upstream.rs: correlation ids, in-flight queue)
//!                        │  slot per request            │
//!                        │  (in request order)          │ responses, FIFO
//!                        ▼                              ▼
//! client ◀──frames── write_responses ◀──response filters── read_responses (upstream.rs)
//! ```
//!
//! Requests go through the stack one at a time; each call ends with its
//! request sent (or answered locally) and leaves the response to come in the
//! next slot. The writer takes the slots in order and runs each response's
//! filters as it comes; Produce with acks=0 takes no slot.
//!
//! Memory (`limits.rs`): a request's body is read only once the overall
//! budget (`listen.max_in_flight_bytes_total`) has room for it, and given back
//! once it is sent upstream; a response's body is read only once its
//! connection's budget (`listen.max_in_flight_bytes`) has room, and counted
//! in the overall one until it is written to the client. A client that takes
//! none of its responses for `listen.write_timeout` is closed.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures::future::{self, BoxFuture};
use futures::FutureExt;
use kafka_protocol::messages::ApiKey;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::codec::{CodecError, FrameReader, Head};
use crate::error::{Error, Side};
use crate::filter::quota::Gate;
use crate::filter::sasl::{Binding, Principal};
use crate::filter::{Exchange, Pending};
use crate::limits::Admission;
use crate::limits::{Charge, MemoryBudget, StallGuard};
use crate::pipeline::{self, ConnState, Exchanges};
use crate::shared::{ConnView, Shared};
use crate::tls::{self, ClientTlsStream};
use crate::upstream::{
    self, shrink_read_buffer, write_frame, Exchanger, Reply, UpstreamStream, QUIET,
};
use crate::wakes::InlineWakes;

/// Which listener a client came in on.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target {
    /// The bootstrap listener: any upstream bootstrap broker will do.
    Bootstrap,
    /// A broker listener: this node and no other.
    Node(i32),
}

/// A response to come, in its place in the order.
struct Slot<'a> {
    response: BoxFuture<'a, Result<Option<Reply>, Error>>,
    /// `None` for an API passed raw (`codec::RAW_APIS`): no per-API metrics.
    api_key: Option<ApiKey>,
    started: Instant,
}

/// Serves one client until it leaves, fails, or the proxy shuts down. Logs
/// one line on the way out if it ended with an error.
pub(crate) async fn serve(
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
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
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
        upstream_gone: CancellationToken::new(),
        owed: AtomicUsize::new(0),
        opened: Instant::now(),
        answered_ms: AtomicU64::new(0),
    };
    let principal = Principal::new(principal);
    match upstream {
        UpstreamStream::Plain(s) => {
            let (r, w) = s.into_split();
            pipe(&conn, &principal, upstream_addr, client_r, client_w, r, w).await
        }
        UpstreamStream::Tls(s) => {
            let (r, w) = tokio::io::split(*s);
            pipe(&conn, &principal, upstream_addr, client_r, client_w, r, w).await
        }
    }
}

/// The three loops of a connection, joined.
async fn pipe<R, W, UR, UW>(
    conn: &Conn<'_>,
    principal: &Principal,
    upstream_addr: String,
    client_r: R,
    client_w: W,
    upstream_r: UR,
    upstream_w: UW,
) -> Result<(), Error>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
    UR: AsyncRead + Unpin,
    UW: AsyncWrite + Unpin + Send,
{
    let shared = conn.shared;
    let in_flight = shared.config.listen.max_in_flight.get();
    let (in_flight_tx, in_flight_rx) = mpsc::channel(in_flight);
    let exchanger = Exchanger::new(upstream_w, upstream_addr.clone(), in_flight_tx);
    let gate = Gate::new(
        &shared.quotas,
        principal,
        &exchanger,
        shared.shutdown.clone(),
        &conn.upstream_gone,
    );
    let conn_id = conn.conn_id;
    let binding = Binding::new(principal, tracing::Span::current(), move |p: &str| {
        shared.update_conn(conn_id, |v| v.principal = Some(p.to_string()))
    });
    let state = tokio::sync::Mutex::new(ConnState::default());
    let mut stack = pipeline::stack(&gate, &binding, &shared.pipeline, &state, &exchanger);
    // After what the responses to come borrow: dropped before them.
    let (slot_tx, slot_rx) = mpsc::channel(in_flight);
    let requests: BoxFuture<'_, Result<(), Error>> = Box::pin(async {
        read_requests(conn, client_r, &mut stack, &exchanger, slot_tx).await?;
        // The writer itself stays open until everything is answered.
        exchanger.finish().await
    });
    let responses = upstream::read_responses(
        upstream::Responses {
            addr: &upstream_addr,
            budget: MemoryBudget::counting_waits_in(
                shared.config.listen.max_in_flight_bytes,
                shared.metrics.responses_waiting.clone(),
            ),
            overall: &shared.in_flight,
            metrics: &shared.metrics,
            gone: &conn.upstream_gone,
        },
        upstream_r,
        in_flight_rx,
    );
    let writer: BoxFuture<'_, Result<(), Error>> =
        Box::pin(write_responses(conn, client_w, slot_rx));
    // The three loops hand every request on to each other from inside the
    // task's poll: polled again at once, not yielded to another worker.
    InlineWakes::new(async { tokio::try_join!(requests, responses, writer) }).await?;
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
}

/// Reads client frames and puts each through the stack, one at a time (a
/// request of an API no filter can read goes to `upstream` directly).
/// Returns when the client closes or the proxy shuts down.
async fn read_requests<'a, R: AsyncRead + Unpin, UW: AsyncWrite + Unpin + Send>(
    conn: &Conn<'_>,
    client_r: R,
    stack: &mut dyn Exchanges<'a>,
    upstream: &'a Exchanger<UW>,
    slots: mpsc::Sender<Slot<'a>>,
) -> Result<(), Error> {
    let Conn {
        shared,
        conn_id,
        upstream_gone,
        ..
    } = conn;
    let conn_id = *conn_id;
    let idle = shared.config.listen.idle_timeout;
    let mut frames = FrameReader::new(client_r, shared.config.listen.max_frame_bytes);
    let mut shutdown: watch::Receiver<bool> = shared.shutdown.clone();
    let mut client_id_recorded = false;
    let mut last_request = Instant::now();

    loop {
        let (frame, charge): (BytesMut, Charge) = tokio::select! {
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
        let head = Head::peek(&frame)?;
        if !client_id_recorded {
            let client_id = head.client_id_str();
            tracing::Span::current().record("client_id", client_id.as_str());
            shared.update_conn(conn_id, |v| v.client_id = Some(client_id));
            client_id_recorded = true;
        }
        // Pipelined requests already buffered go out in one write.
        let more_follow = whole_frame_buffered(frames.buffer());
        let wait = shared.config.upstream.request_timeout;
        // A place in the response order first: with `listen.max_in_flight`
        // responses unwritten, nothing more is read.
        let place = slots
            .reserve()
            .await
            .map_err(|_| Error::Internal("response writer stopped".into()))?;
        let (response, api_key) = match head {
            Head::Decodable(head) => {
                shared.metrics.request(head.api_key, frame.len() + 4);
                let span = tracing::debug_span!(
                    "req",
                    api_key = ?head.api_key,
                    api_version = head.api_version,
                    correlation_id = head.correlation_id
                );
                tracing::trace!(parent: &span, bytes = frame.len(), "request");
                let api_key = head.api_key;
                let exchange = Exchange {
                    head,
                    frame,
                    charge,
                    started,
                    more_follow,
                    identity: None,
                    wait: Some(wait),
                };
                let response = match stack.exchange(exchange).instrument(span.clone()).await? {
                    Pending::NoAnswer => continue,
                    Pending::Local(bytes) => future::ready(Ok(Some(Reply::local(bytes)))).boxed(),
                    Pending::Later(response) => response.instrument(span).boxed(),
                };
                (response, Some(api_key))
            }
            // No filter can read it, and none needs to (`codec::RAW_APIS`):
            // to this connection's broker byte for byte, and its answer back
            // the same way, in its place in the order.
            Head::Raw(raw) => {
                let span = tracing::debug_span!(
                    "req",
                    api_key = raw.api.name,
                    api_version = raw.api_version,
                    correlation_id = raw.correlation_id
                );
                tracing::trace!(parent: &span, bytes = frame.len(), "request passed raw");
                let answer = upstream
                    .send_raw(&raw, frame, charge, wait, more_follow)
                    .instrument(span.clone())
                    .await?;
                let response = async move { Ok(answer.await.ok()) }.instrument(span);
                (response.boxed(), None)
            }
        };
        place.send(Slot {
            response,
            api_key,
            started,
        });
        conn.owed.fetch_add(1, Relaxed);
    }
    Ok(())
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

/// Writes responses to the client in request order, flushing whenever the
/// next one is not ready yet.
async fn write_responses<W: AsyncWrite + Unpin>(
    conn: &Conn<'_>,
    client_w: W,
    mut slots: mpsc::Receiver<Slot<'_>>,
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
    slots: &mut mpsc::Receiver<Slot<'_>>,
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
        let reply = match (&mut response).now_or_never() {
            Some(reply) => reply,
            None => {
                out.flush().await.map_err(Error::ClientIo)?;
                response.await
            }
        };
        let Some(mut reply) = reply? else {
            // The response reader failed and reports why.
            return Ok(());
        };
        let bytes = reply.frame.bytes()?;
        write_frame(out, bytes).await.map_err(Error::ClientIo)?;
        let len = bytes.len();
        conn.answered();
        conn.owed.fetch_sub(1, Relaxed);
        if let Some(api_key) = slot.api_key {
            conn.shared
                .metrics
                .response(api_key, len + 4, slot.started.elapsed());
        }
        // In the writer's buffer or on the wire: the memory is given back.
        drop(reply);
    }
    out.flush().await.map_err(Error::ClientIo)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
