//! Broker connections, and the proxy's own Metadata probe and topic-config
//! lookups.
//!
//! Each client connection gets its own upstream connection (so per-connection
//! ordering, SASL state and fetch sessions stay the client's own). The proxy
//! makes two kinds of request on its own: the probe learns the brokers at
//! start-up and every `upstream.metadata_refresh`, so broker listeners exist
//! before a client asks for them, and `/readyz` knows whether upstream
//! answers; [`describe_topics`] asks a covered topic's `cleanup.policy` and
//! `max.message.bytes` (`topic_config.rs`).
//!
//! The probe carries no credentials (the proxy holds none: SASL passes
//! through). A SASL-only listener answers its ApiVersions and then closes the
//! connection on the Metadata request, as Apache Kafka and tansu do before
//! authentication. That broker is up and speaks Kafka, so the probe counts it
//! reachable; its brokers are learned from the Metadata responses clients
//! fetch through the proxy once they have authenticated.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use kafka_protocol::messages::{
    describe_configs_request::DescribeConfigsResource, ApiKey, ApiVersionsRequest,
    ApiVersionsResponse, DescribeConfigsRequest, DescribeConfigsResponse, MetadataRequest,
    MetadataResponse,
};
use kafka_protocol::protocol::StrBytes;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use crate::codec::{FrameCodec, FrameReader};
use crate::config::Upstream;
use crate::error::Error;
use crate::limits::{Charge, MemoryBudget};
use crate::message::{decode_response, encode_request, ResponseFrame};
use crate::telemetry::Metrics;
use crate::tls::{UpstreamTlsConnector, UpstreamTlsStream};
use crate::topology::Topology;

/// The largest response frame accepted from a broker. Brokers are trusted,
/// but a corrupt length must not make us allocate gigabytes.
pub(crate) const MAX_RESPONSE_FRAME: usize = 1 << 30;

/// A broker connection, plaintext or TLS.
pub(crate) enum UpstreamStream {
    Plain(TcpStream),
    Tls(Box<UpstreamTlsStream>),
}

impl AsyncRead for UpstreamStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Connects to the first of `addrs` that answers, within `timeout` each
/// (TCP connect and, with `tls`, the handshake).
pub(crate) async fn connect(
    addrs: &[String],
    timeout: Duration,
    tls: Option<&UpstreamTlsConnector>,
) -> Result<(UpstreamStream, String), Error> {
    let mut last = None;
    for addr in addrs {
        let resolved = match resolve(addr) {
            Ok(r) => r,
            Err(source) => {
                last = Some(Error::UpstreamIo {
                    addr: addr.clone(),
                    source,
                });
                continue;
            }
        };
        let host = addr
            .rsplit_once(':')
            .map(|(h, _)| h.trim_matches(['[', ']']))
            .unwrap_or(addr);
        for sock in resolved {
            let attempt = async {
                let stream = TcpStream::connect(sock).await?;
                // Kafka frames are written whole; Nagle would only add latency.
                let _ = stream.set_nodelay(true);
                match tls {
                    None => Ok(UpstreamStream::Plain(stream)),
                    Some(tls) => Ok(UpstreamStream::Tls(Box::new(
                        tls.connect(host, stream).await?,
                    ))),
                }
            };
            match tokio::time::timeout(timeout, attempt).await {
                Ok(Ok(stream)) => return Ok((stream, addr.clone())),
                Ok(Err(source)) => {
                    last = Some(Error::UpstreamIo {
                        addr: addr.clone(),
                        source,
                    })
                }
                Err(_) => {
                    last = Some(Error::Upstream {
                        addr: addr.clone(),
                        message: format!("connect timed out after {timeout:?}"),
                    })
                }
            }
        }
    }
    Err(last.unwrap_or_else(|| Error::Internal("no upstream address to connect to".into())))
}

/// What a successful probe learned.
#[derive(Debug)]
pub(crate) enum Probed {
    /// Metadata answered; its brokers are taught to the topology.
    Brokers(Box<MetadataResponse>),
    /// ApiVersions answered, then the connection closed on Metadata: a
    /// listener that wants authentication first.
    NeedsAuthentication,
}

/// Asks upstream for its brokers and teaches them to the topology; with
/// `all_topics`, for every topic too (their ids, for fetch rules).
pub(crate) async fn probe(
    upstream: &Upstream,
    tls: Option<&UpstreamTlsConnector>,
    topology: &Topology,
    all_topics: bool,
) -> Result<Probed, Error> {
    let (stream, addr) = connect(&upstream.bootstrap, upstream.connect_timeout, tls).await?;
    let mut framed = Framed::new(stream, FrameCodec::new(MAX_RESPONSE_FRAME));
    let deadline = upstream.request_timeout;
    let result = tokio::time::timeout(deadline, async {
        // ApiVersions v0 is answered by every broker; it tells which Metadata
        // versions this one speaks.
        let versions: ApiVersionsResponse = round_trip(
            &mut framed,
            &addr,
            ApiKey::ApiVersions,
            0,
            1,
            &ApiVersionsRequest::default(),
        )
        .await
        .map_err(|e| e.into_error(&addr))?;
        let metadata_max = versions
            .api_keys
            .iter()
            .find(|k| k.api_key == ApiKey::Metadata as i16)
            .map(|k| k.max_version.min(ApiKey::Metadata.valid_versions().max))
            .ok_or_else(|| Error::Upstream {
                addr: addr.clone(),
                message: "broker does not list Metadata in ApiVersions".into(),
            })?;
        // An empty topic list (v1+) asks for brokers only; none, for all.
        let version = metadata_max.max(1);
        let request = MetadataRequest::default().with_topics((!all_topics).then(Vec::new));
        let metadata: MetadataResponse =
            match round_trip(&mut framed, &addr, ApiKey::Metadata, version, 2, &request).await {
                Ok(m) => m,
                Err(RoundTrip::Closed) => return Ok(Probed::NeedsAuthentication),
                Err(RoundTrip::Failed(e)) => return Err(e),
            };
        for b in &metadata.brokers {
            topology.learn(b.node_id.0, b.host.as_str(), b.port)?;
        }
        Ok::<Probed, Error>(Probed::Brokers(Box::new(metadata)))
    })
    .await;
    match result {
        Ok(r) => r,
        Err(_) => Err(Error::Upstream {
            addr,
            message: format!("metadata probe timed out after {deadline:?}"),
        }),
    }
}

/// What DescribeConfigs said of one topic (resource type 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DescribedTopic {
    /// `cleanup.policy` names `compact` (alone or with `delete`).
    pub compacted: bool,
    /// `max.message.bytes`, when the broker said it (tansu lists only
    /// settings a topic overrides; absent means the broker's default).
    pub max_message_bytes: Option<i32>,
}

/// Asks a broker for `topics`' `cleanup.policy` and `max.message.bytes`, on
/// a connection of the proxy's own. A topic the broker answered with an
/// error (unknown, not authorised) is left out of the answer; a broker that
/// closes the connection (a listener that wants authentication first) is an
/// error.
pub(crate) async fn describe_topics(
    upstream: &Upstream,
    tls: Option<&UpstreamTlsConnector>,
    topics: &[&str],
) -> Result<Vec<(String, DescribedTopic)>, Error> {
    let (stream, addr) = connect(&upstream.bootstrap, upstream.connect_timeout, tls).await?;
    let mut framed = Framed::new(stream, FrameCodec::new(MAX_RESPONSE_FRAME));
    let deadline = upstream.request_timeout;
    let result = tokio::time::timeout(deadline, async {
        let version = negotiate(&mut framed, &addr, ApiKey::DescribeConfigs).await?;
        // Every setting (configuration_keys null): tansu 0.6 cannot read a
        // list of names and closes the connection.
        let request = DescribeConfigsRequest::default().with_resources(
            topics
                .iter()
                .map(|t| {
                    DescribeConfigsResource::default()
                        .with_resource_type(2)
                        .with_resource_name(StrBytes::from_string(t.to_string()))
                        .with_configuration_keys(None)
                })
                .collect(),
        );
        let response: DescribeConfigsResponse = round_trip(
            &mut framed,
            &addr,
            ApiKey::DescribeConfigs,
            version,
            2,
            &request,
        )
        .await
        .map_err(|e| e.into_error(&addr))?;
        Ok::<_, Error>(
            response
                .results
                .into_iter()
                .filter(|r| r.error_code == 0 && r.resource_type == 2)
                .map(|r| {
                    let value = |name: &str| {
                        r.configs
                            .iter()
                            .find(|c| c.name.as_str() == name)
                            .and_then(|c| c.value.as_ref())
                            .map(|v| v.as_str().to_string())
                    };
                    let described = DescribedTopic {
                        compacted: value("cleanup.policy")
                            .is_some_and(|p| p.split(',').any(|x| x.trim() == "compact")),
                        max_message_bytes: value("max.message.bytes").and_then(|v| v.parse().ok()),
                    };
                    (r.resource_name.as_str().to_string(), described)
                })
                .collect(),
        )
    })
    .await;
    match result {
        Ok(r) => r,
        Err(_) => Err(Error::Upstream {
            addr,
            message: format!("DescribeConfigs timed out after {deadline:?}"),
        }),
    }
}

/// The newest version of `api` both the broker and the proxy speak.
async fn negotiate(
    framed: &mut Framed<UpstreamStream, FrameCodec>,
    addr: &str,
    api: ApiKey,
) -> Result<i16, Error> {
    let versions: ApiVersionsResponse = round_trip(
        framed,
        addr,
        ApiKey::ApiVersions,
        0,
        1,
        &ApiVersionsRequest::default(),
    )
    .await
    .map_err(|e| e.into_error(addr))?;
    let ours = api.valid_versions();
    versions
        .api_keys
        .iter()
        .find(|k| k.api_key == api as i16)
        .map(|k| k.max_version.min(ours.max))
        .filter(|v| *v >= ours.min)
        .ok_or_else(|| Error::Upstream {
            addr: addr.to_string(),
            message: format!(
                "broker does not offer {} v{}+",
                crate::codec::api_name(api),
                ours.min
            ),
        })
}

/// Creates `topic` with `configs` unless it exists, on a connection of the
/// proxy's own (TLS as `[upstream.tls]`, no SASL: a listener that wants
/// authentication first closes it, an error). `Ok(true)`: created now.
pub(crate) async fn create_topic(
    upstream: &Upstream,
    tls: Option<&UpstreamTlsConnector>,
    topic: &str,
    partitions: i32,
    replication_factor: i16,
    configs: &[(&str, String)],
) -> Result<bool, Error> {
    use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
    use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse, TopicName};
    let (stream, addr) = connect(&upstream.bootstrap, upstream.connect_timeout, tls).await?;
    let mut framed = Framed::new(stream, FrameCodec::new(MAX_RESPONSE_FRAME));
    let deadline = upstream.request_timeout;
    let result = tokio::time::timeout(deadline, async {
        let version = negotiate(&mut framed, &addr, ApiKey::CreateTopics).await?;
        let creatable = CreatableTopic::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_num_partitions(partitions)
            .with_replication_factor(replication_factor)
            .with_configs(
                configs
                    .iter()
                    .map(|(name, value)| {
                        CreatableTopicConfig::default()
                            .with_name(StrBytes::from_string(name.to_string()))
                            .with_value(Some(StrBytes::from_string(value.clone())))
                    })
                    .collect(),
            );
        let request = CreateTopicsRequest::default()
            .with_topics(vec![creatable])
            .with_timeout_ms(i32::try_from(deadline.as_millis()).unwrap_or(i32::MAX));
        let response: CreateTopicsResponse = round_trip(
            &mut framed,
            &addr,
            ApiKey::CreateTopics,
            version,
            2,
            &request,
        )
        .await
        .map_err(|e| e.into_error(&addr))?;
        match response
            .topics
            .first()
            .map(|t| (t.error_code, t.error_message.clone()))
        {
            Some((0, _)) => Ok(true),
            // TOPIC_ALREADY_EXISTS
            Some((36, _)) => Ok(false),
            Some((code, message)) => Err(Error::Upstream {
                addr: addr.clone(),
                message: format!(
                    "CreateTopics {topic}: error {code}{}",
                    message.map(|m| format!(" ({m})")).unwrap_or_default()
                ),
            }),
            None => Err(Error::Upstream {
                addr: addr.clone(),
                message: format!("CreateTopics {topic}: no answer for the topic"),
            }),
        }
    })
    .await;
    match result {
        Ok(r) => r,
        Err(_) => Err(Error::Upstream {
            addr,
            message: format!("CreateTopics timed out after {deadline:?}"),
        }),
    }
}

/// Why a probe round trip has no answer.
enum RoundTrip {
    /// The broker closed the connection instead of answering.
    Closed,
    Failed(Error),
}

impl RoundTrip {
    fn into_error(self, addr: &str) -> Error {
        match self {
            RoundTrip::Closed => Error::Upstream {
                addr: addr.to_string(),
                message: "closed the connection".into(),
            },
            RoundTrip::Failed(e) => e,
        }
    }
}

async fn round_trip<Req, Resp>(
    framed: &mut Framed<UpstreamStream, FrameCodec>,
    addr: &str,
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    request: &Req,
) -> Result<Resp, RoundTrip>
where
    Req: kafka_protocol::protocol::Encodable
        + kafka_protocol::protocol::HeaderVersion
        + kafka_protocol::protocol::Message,
    Resp: kafka_protocol::protocol::Decodable + crate::message::Bounded,
{
    let io = |e: crate::codec::CodecError| {
        RoundTrip::Failed(Error::Upstream {
            addr: addr.to_string(),
            message: e.to_string(),
        })
    };
    let request =
        encode_request(api, version, correlation_id, request).map_err(RoundTrip::Failed)?;
    framed.send(request).await.map_err(io)?;
    let frame = framed.next().await.ok_or(RoundTrip::Closed)?.map_err(io)?;
    let frame: Bytes = frame.freeze();
    decode_response(api, version, &frame).map_err(RoundTrip::Failed)
}

/// Resolves `host:port` now; used at connect time, not at load time, so that a
/// broker whose DNS name changes is followed.
pub(crate) fn resolve(host_port: &str) -> std::io::Result<Vec<std::net::SocketAddr>> {
    Ok(std::net::ToSocketAddrs::to_socket_addrs(host_port)?.collect())
}

// === The exchange with one client's broker connection ===
//
// Kafka brokers answer a connection's requests in the order sent, so the
// in-flight queue is a plain FIFO; each entry carries the correlation id the
// client used, since upstream sees the proxy's own sequence (which leaves room
// for a filter to send requests of its own). Produce with acks=0 gets no
// entry to wait on (and should a broker answer it anyway, as tansu does, that
// answer is dropped). Each request's deadline is its own wait plus
// `upstream.request_timeout`, checked at the head of the queue only.

/// A response and the memory charged for it (its connection's budget, the
/// overall one), given back once it is written to the client.
pub struct Reply {
    /// Its frame body (correlation id the client's), decoded at most once
    /// however many filters read it.
    pub frame: ResponseFrame,
    _held: (Charge, Charge),
}

impl Reply {
    /// Made by the proxy itself: small, charged nowhere.
    pub fn local(bytes: Bytes) -> Reply {
        Reply {
            frame: ResponseFrame::new(bytes),
            _held: (Charge::none(), Charge::none()),
        }
    }
}

/// A request sent upstream, in send order.
pub(crate) struct InFlight {
    upstream_correlation_id: i32,
    /// `None` for Produce with acks=0: Kafka never answers it (tansu does
    /// anyway, and that answer is dropped here, never shown to the client).
    awaited: Option<Awaited>,
}

/// What is needed to hand a response back to its client.
struct Awaited {
    asked: Asked,
    /// The request's own wait plus `upstream.request_timeout`.
    wait: Duration,
    sent_at: Instant,
    reply: oneshot::Sender<Reply>,
}

/// The request a response answers, as its client asked it.
struct Asked {
    client_correlation_id: i32,
    /// `None` for an API the crate does not know (`codec::RawApi`).
    api_key: Option<ApiKey>,
    /// Its name, for errors.
    api_name: &'static str,
    api_version: i16,
}

/// Ids of acks=0 requests a broker might still answer, kept until a later
/// response proves it will not (answers come in order). Bounded, for brokers
/// that never answer and clients that only ever send acks=0.
const MAX_UNANSWERED: usize = 4096;

/// After this long without a frame, a connection's read buffer gives back
/// what its largest frame made it grow to.
pub(crate) const QUIET: Duration = Duration::from_secs(1);

/// The sending half of one client's broker connection: the innermost
/// service of the filter stack (`pipeline.rs`).
pub(crate) struct Exchanger<W> {
    writer: tokio::sync::Mutex<Sending<W>>,
    /// The broker this connection talks to, for errors.
    addr: String,
    /// See [`Outbound::last_send`].
    last_send: std::sync::Mutex<Option<Instant>>,
}

struct Sending<W> {
    out: BufWriter<W>,
    /// The proxy's own correlation id for the next request.
    next_correlation_id: i32,
    /// To the response reader; dropped once the client sends no more, so
    /// that the reader ends when everything is answered.
    in_flight: Option<mpsc::Sender<InFlight>>,
}

// === impl Exchanger ===

impl<W: AsyncWrite + Unpin + Send> Exchanger<W> {
    /// The broker this connection talks to.
    pub(crate) fn addr(&self) -> &str {
        &self.addr
    }

    /// Sends over `upstream_w`; the entries go to [`read_responses`].
    pub(crate) fn new(upstream_w: W, addr: String, in_flight: mpsc::Sender<InFlight>) -> Self {
        Exchanger {
            writer: tokio::sync::Mutex::new(Sending {
                out: BufWriter::with_capacity(64 * 1024, upstream_w),
                next_correlation_id: 0,
                in_flight: Some(in_flight),
            }),
            addr,
            last_send: std::sync::Mutex::new(None),
        }
    }

    /// Sends whatever waits in the writer: before a request is held (quota)
    /// or waits on keys an earlier request of this connection has in flight
    /// (dedup), that request must have left, not sit behind the wait.
    pub(crate) async fn flush(&self) -> Result<(), Error> {
        let mut w = self.writer.lock().await;
        if w.out.buffer().is_empty() {
            return Ok(());
        }
        w.out.flush().await.map_err(|e| upstream_io(&self.addr, e))
    }

    /// The client sends no more: sends everything written so far, and lets
    /// the response reader end once every answer has come (the writer
    /// itself stays open until then).
    pub(crate) async fn finish(&self) -> Result<(), Error> {
        let mut w = self.writer.lock().await;
        w.in_flight = None;
        w.out.flush().await.map_err(|e| upstream_io(&self.addr, e))
    }

    /// Sends one request under the proxy's own correlation id; resolves to
    /// its answer's receiver (`None` for acks=0). `more_follow`: another
    /// whole request is already buffered, so this one may wait in the writer
    /// (pipelined requests go out in one write).
    pub(crate) async fn send(
        &self,
        head: &crate::codec::RequestHead,
        frame: bytes::BytesMut,
        charge: Charge,
        wait: Option<Duration>,
        more_follow: bool,
    ) -> Result<Option<oneshot::Receiver<Reply>>, Error> {
        let asked = Asked {
            client_correlation_id: head.correlation_id,
            api_key: Some(head.api_key),
            api_name: crate::codec::api_name(head.api_key),
            api_version: head.api_version,
        };
        self.send_as(asked, frame, charge, wait, more_follow).await
    }

    /// [`send`](Self::send) for a request of an API the crate does not know
    /// (`codec::RawApi`), which no filter sees: always answered.
    pub(crate) async fn send_raw(
        &self,
        head: &crate::codec::RawHead,
        frame: bytes::BytesMut,
        charge: Charge,
        wait: Duration,
        more_follow: bool,
    ) -> Result<oneshot::Receiver<Reply>, Error> {
        let asked = Asked {
            client_correlation_id: head.correlation_id,
            api_key: None,
            api_name: head.api.name,
            api_version: head.api_version,
        };
        let answer = self.send_as(asked, frame, charge, Some(wait), more_follow);
        Ok(answer.await?.expect("a request with a wait is answered"))
    }

    async fn send_as(
        &self,
        asked: Asked,
        mut frame: bytes::BytesMut,
        charge: Charge,
        wait: Option<Duration>,
        more_follow: bool,
    ) -> Result<Option<oneshot::Receiver<Reply>>, Error> {
        use crate::codec::REQUEST_CORRELATION_OFFSET;
        *self.last_send.lock().expect("last send lock") = Some(Instant::now());
        let mut w = self.writer.lock().await;
        let upstream_id = w.next_correlation_id;
        w.next_correlation_id = upstream_id.wrapping_add(1);
        frame[REQUEST_CORRELATION_OFFSET..REQUEST_CORRELATION_OFFSET + 4]
            .copy_from_slice(&upstream_id.to_be_bytes());
        let (awaited, rx) = match wait {
            Some(wait) => {
                let (tx, rx) = oneshot::channel();
                let awaited = Awaited {
                    asked,
                    wait,
                    sent_at: Instant::now(),
                    reply: tx,
                };
                (Some(awaited), Some(rx))
            }
            None => (None, None),
        };
        let entry = InFlight {
            upstream_correlation_id: upstream_id,
            awaited,
        };
        // No sender: `finish` came first, and nothing is sent after it.
        let sent = match &w.in_flight {
            Some(in_flight) => in_flight.send(entry).await.is_ok(),
            None => false,
        };
        if !sent {
            // The response reader is gone: the broker closed.
            return Err(Error::UpstreamClosed {
                addr: self.addr.clone(),
            });
        }
        write_frame(&mut w.out, &frame)
            .await
            .map_err(|e| upstream_io(&self.addr, e))?;
        // Sent, or in the 64 KiB the upstream writer keeps.
        drop((frame, charge));
        if !more_follow {
            w.out
                .flush()
                .await
                .map_err(|e| upstream_io(&self.addr, e))?;
        }
        Ok(rx)
    }
}

/// A connection's upstream writer as the filters see it, whatever its type.
pub trait Outbound: Sync {
    /// See [`Exchanger::flush`].
    fn flush(&self) -> futures::future::BoxFuture<'_, Result<(), Error>>;
    /// When the last request began to be sent: the end of the filters' work
    /// on it (quota's `request_percentage` charges that time, not the
    /// socket's).
    fn last_send(&self) -> Option<Instant>;
}

impl<W: AsyncWrite + Unpin + Send> Outbound for Exchanger<W> {
    fn flush(&self) -> futures::future::BoxFuture<'_, Result<(), Error>> {
        Box::pin(Exchanger::flush(self))
    }

    fn last_send(&self) -> Option<Instant> {
        *self.last_send.lock().expect("last send lock")
    }
}

fn upstream_io(addr: &str, source: std::io::Error) -> Error {
    Error::UpstreamIo {
        addr: addr.to_string(),
        source,
    }
}

/// Writes one length-prefixed frame.
pub(crate) async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    body: &[u8],
) -> std::io::Result<()> {
    let len = i32::try_from(body.len()).map_err(|_| std::io::Error::other("frame over 2 GiB"))?;
    w.write_all(&len.to_be_bytes()).await?;
    w.write_all(body).await
}

/// What the response reader of one connection needs beside its socket.
pub(crate) struct Responses<'a> {
    /// The broker, for errors.
    pub addr: &'a str,
    /// This connection's budget for responses not yet written.
    pub budget: Arc<MemoryBudget>,
    /// The overall budget (`listen.max_in_flight_bytes_total`).
    pub overall: &'a Arc<MemoryBudget>,
    pub metrics: &'a Metrics,
    /// Cancelled when the broker hangs up with nothing in flight: the
    /// request reader stops, the writer sends what it has.
    pub gone: &'a CancellationToken,
}

/// Reads upstream responses in order, checks each against the request it
/// answers, gives it back the client's correlation id and hands it to its
/// request's receiver.
pub(crate) async fn read_responses<UR: AsyncRead + Unpin>(
    ctx: Responses<'_>,
    upstream_r: UR,
    mut in_flight: mpsc::Receiver<InFlight>,
) -> Result<(), Error> {
    let Responses {
        addr,
        budget,
        overall,
        metrics,
        gone,
    } = ctx;
    let mut frames = FrameReader::new(upstream_r, MAX_RESPONSE_FRAME);
    let fail = |message: String| Error::Upstream {
        addr: addr.to_string(),
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
                    gone.cancel();
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
        let Some(awaited) = entry.awaited else {
            if unanswered.len() == MAX_UNANSWERED {
                unanswered.pop_front();
            }
            unanswered.push_back(entry.upstream_correlation_id);
            continue;
        };
        let mut deadline = tokio::time::Instant::from_std(awaited.sent_at + awaited.wait);
        let too_late = || {
            fail(format!(
                "no response to {} v{} within {:?}",
                awaited.asked.api_name, awaited.asked.api_version, awaited.wait
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
                metrics.memory_wait(true);
                deadline += asked.elapsed();
            }
            let held = (mine, overall.force(len + 4));
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
        frame[..4].copy_from_slice(&awaited.asked.client_correlation_id.to_be_bytes());
        if let Some(api) = awaited.asked.api_key {
            metrics.upstream_latency(api, awaited.sent_at.elapsed());
        }
        // The client may be gone; nothing more to do then.
        let _ = awaited.reply.send(Reply {
            frame: ResponseFrame::new(frame.freeze()),
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

/// What a quiet connection's read buffer may keep (its frames' allocation
/// stays with the buffer after they are consumed: one 50 MiB Fetch would
/// otherwise stay resident for as long as the connection lives).
const READ_BUFFER_KEPT: usize = 64 * 1024;

/// Its capacity does not show the allocation it holds (a consumed frame's
/// memory comes back to it on the next reserve), so a quiet buffer always
/// moves to a fresh small one: at most once a second, at most 64 KiB copied.
pub(crate) fn shrink_read_buffer(buf: &mut bytes::BytesMut) {
    if buf.len() <= READ_BUFFER_KEPT {
        let mut small = bytes::BytesMut::with_capacity(8 * 1024);
        small.extend_from_slice(buf);
        *buf = small;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quiet_read_buffer_gives_back_its_largest_frame() {
        let mut buf = bytes::BytesMut::with_capacity(4 << 20);
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
        let mut arriving = bytes::BytesMut::with_capacity(4 << 20);
        arriving.extend_from_slice(&[1; 1 << 20]);
        shrink_read_buffer(&mut arriving);
        assert_eq!(arriving.len(), 1 << 20);
    }
}
