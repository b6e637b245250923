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

use std::time::Duration;

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

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

use crate::codec::FrameCodec;
use crate::config::Upstream;
use crate::error::Error;
use crate::message::{decode_response, encode_request};
use crate::tls::{UpstreamTlsConnector, UpstreamTlsStream};
use crate::topology::Topology;

/// The largest response frame accepted from a broker. Brokers are trusted,
/// but a corrupt length must not make us allocate gigabytes.
pub const MAX_RESPONSE_FRAME: usize = 1 << 30;

/// A broker connection, plaintext or TLS.
pub enum UpstreamStream {
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
pub async fn connect(
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
pub enum Probed {
    /// Metadata answered; its brokers are taught to the topology.
    Brokers(Box<MetadataResponse>),
    /// ApiVersions answered, then the connection closed on Metadata: a
    /// listener that wants authentication first.
    NeedsAuthentication,
}

/// Asks upstream for its brokers and teaches them to the topology; with
/// `all_topics`, for every topic too (their ids, for fetch rules).
pub async fn probe(
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
pub async fn describe_topics(
    upstream: &Upstream,
    tls: Option<&UpstreamTlsConnector>,
    topics: &[&str],
) -> Result<Vec<(String, DescribedTopic)>, Error> {
    let (stream, addr) = connect(&upstream.bootstrap, upstream.connect_timeout, tls).await?;
    let mut framed = Framed::new(stream, FrameCodec::new(MAX_RESPONSE_FRAME));
    let deadline = upstream.request_timeout;
    let result = tokio::time::timeout(deadline, async {
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
        let ours = ApiKey::DescribeConfigs.valid_versions();
        let version = versions
            .api_keys
            .iter()
            .find(|k| k.api_key == ApiKey::DescribeConfigs as i16)
            .map(|k| k.max_version.min(ours.max))
            .filter(|v| *v >= ours.min)
            .ok_or_else(|| Error::Upstream {
                addr: addr.clone(),
                message: "broker does not offer DescribeConfigs v1+".into(),
            })?;
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
pub fn resolve(host_port: &str) -> std::io::Result<Vec<std::net::SocketAddr>> {
    Ok(std::net::ToSocketAddrs::to_socket_addrs(host_port)?.collect())
}
