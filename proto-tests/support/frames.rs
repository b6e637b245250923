//! Raw Kafka bytes: a connection that speaks frames, request frames, typed calls.

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{
    ApiKey, BrokerId, CreateTopicsRequest, CreateTopicsResponse, FetchRequest, RequestHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A raw Kafka connection for byte-level tests, over TCP or TLS.
pub struct RawConn<S = TcpStream> {
    pub stream: S,
}

impl RawConn {
    pub async fn connect(addr: &str) -> RawConn {
        RawConn {
            stream: TcpStream::connect(addr).await.expect("connect"),
        }
    }
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> RawConn<S> {
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Sends a request frame body (adds the length prefix).
    pub async fn send_frame(&mut self, body: &[u8]) {
        let mut b = BytesMut::with_capacity(4 + body.len());
        b.put_i32(body.len() as i32);
        b.extend_from_slice(body);
        self.send_raw(&b).await;
    }

    /// Reads one response frame body, or `None` if the connection closed.
    pub async fn recv_frame(&mut self) -> Option<Bytes> {
        let mut len = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(20), self.stream.read_exact(&mut len))
            .await
            .expect("response within 20 s")
            .ok()?;
        let len = i32::from_be_bytes(len) as usize;
        let mut body = vec![0u8; len];
        self.stream.read_exact(&mut body).await.ok()?;
        Some(Bytes::from(body))
    }

    /// True if the peer closed the connection (EOF or reset) within 10 s;
    /// whatever it sent before closing (a TLS alert, say) is read and dropped.
    pub async fn is_closed(&mut self) -> bool {
        let drained = async {
            let mut buf = [0u8; 512];
            loop {
                match self.stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), drained)
            .await
            .is_ok()
    }

    /// Sends a typed request and decodes its response.
    pub async fn call<Req, Resp>(
        &mut self,
        api: ApiKey,
        version: i16,
        correlation_id: i32,
        req: &Req,
    ) -> Resp
    where
        Req: Encodable + HeaderVersion,
        Resp: Decodable,
    {
        self.send_frame(&request_frame(api, version, correlation_id, req))
            .await;
        let frame = self.recv_frame().await.expect("a response");
        decode_response_frame(api, version, correlation_id, frame)
    }
}

/// An ApiVersions request (v3+ carries the client's software name).
pub fn client_software() -> kafka_protocol::messages::ApiVersionsRequest {
    kafka_protocol::messages::ApiVersionsRequest::default()
        .with_client_software_name(StrBytes::from_static_str("proto-tests"))
        .with_client_software_version(StrBytes::from_static_str("1"))
}

/// A request frame body: header + message.
pub fn request_frame<Req: Encodable + HeaderVersion>(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    req: &Req,
) -> Bytes {
    let header = RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("proto-tests")));
    let mut b = BytesMut::new();
    header.encode(&mut b, Req::header_version(version)).unwrap();
    req.encode(&mut b, version).unwrap();
    b.freeze()
}

/// Checks the correlation id and decodes the message of a response frame body.
pub fn decode_response_frame<Resp: Decodable>(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    mut frame: Bytes,
) -> Resp {
    assert_eq!(frame.get_i32(), correlation_id, "correlation id");
    if api.response_header_version(version) >= 1 {
        let tags = frame.get_u8();
        assert_eq!(tags, 0, "no response header tagged fields expected");
    }
    Resp::decode(&mut frame, version).unwrap()
}

/// Creates a one-partition topic over a raw connection.
pub async fn create_topic_raw(conn: &mut RawConn, name: &'static str, correlation_id: i32) {
    let topic = CreatableTopic::default()
        .with_name(StrBytes::from_static_str(name).into())
        .with_num_partitions(1)
        .with_replication_factor(1);
    let req = CreateTopicsRequest::default()
        .with_topics(vec![topic])
        .with_timeout_ms(5000);
    let created: CreateTopicsResponse = conn
        .call(ApiKey::CreateTopics, 4, correlation_id, &req)
        .await;
    assert_eq!(created.topics[0].error_code, 0, "create {name}");
}

/// A consumer's long poll of partition 0 from offset 0: on an empty topic the
/// broker holds it for `max_wait_ms`.
pub fn long_poll(topic: &'static str, max_wait_ms: i32) -> FetchRequest {
    fetch_from(topic, 0, 0, max_wait_ms)
}

/// A consumer's Fetch of one partition of `topic` from `offset` (1 MiB at
/// most, held up to `max_wait_ms` for a first byte), as the raw readers of
/// the tests and the benches send it.
pub fn fetch_from(topic: &str, partition: i32, offset: i64, max_wait_ms: i32) -> FetchRequest {
    let wanted = FetchPartition::default()
        .with_partition(partition)
        .with_fetch_offset(offset)
        .with_partition_max_bytes(1 << 20);
    FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_topics(vec![FetchTopic::default()
            .with_topic(StrBytes::from_string(topic.to_string()).into())
            .with_partitions(vec![wanted])])
}

/// The largest frame [`read_frame`] takes (64 MiB): a length past it, or a
/// negative one, ends the connection as a broker would.
pub const MAX_FRAME: usize = 64 << 20;

/// Reads one length-prefixed Kafka frame and returns its body, or `None`
/// at the end of the stream, on an error, or on a length past [`MAX_FRAME`].
pub async fn read_frame<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> Option<Bytes> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await.ok()?;
    let len = usize::try_from(i32::from_be_bytes(len))
        .ok()
        .filter(|&n| n <= MAX_FRAME)?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await.ok()?;
    Some(Bytes::from(body))
}

/// Writes `body` as one length-prefixed frame.
pub async fn write_frame<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    body: &[u8],
) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as i32).to_be_bytes());
    out.extend_from_slice(body);
    w.write_all(&out).await
}
