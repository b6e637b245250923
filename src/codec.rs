//! Frames and request headers, read without decoding anything else.
//!
//! Two phases, as in mini-redis: [`FrameCodec`] only answers "is a whole,
//! acceptable frame here?" (checking the length before it allocates), then
//! [`RequestHead::peek`] reads the few header fields every request needs
//! (`api_key`, `api_version`, `correlation_id`, `client_id`) straight from the
//! bytes. The body is never touched here.

use std::future::Future;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::ApiKey;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::codec::{Decoder, Encoder};

use crate::error::FrameError;

/// Length-prefixed Kafka frames: `i32` big-endian length, then that many bytes.
#[derive(Debug, Clone)]
pub struct FrameCodec {
    /// The largest body accepted; longer frames end the connection before any
    /// byte of them is buffered.
    max_frame_bytes: usize,
}

impl FrameCodec {
    pub fn new(max_frame_bytes: usize) -> Self {
        FrameCodec { max_frame_bytes }
    }
}

impl Decoder for FrameCodec {
    type Item = BytesMut;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, CodecError> {
        let Some(head) = src.get(..4) else {
            return Ok(None);
        };
        let len = frame_len(head, self.max_frame_bytes)?;
        if src.len() < 4 + len {
            // Reserve once for the whole frame instead of growing in steps;
            // safe because len was checked against the limit above.
            src.reserve(4 + len - src.len());
            return Ok(None);
        }
        src.advance(4);
        Ok(Some(src.split_to(len)))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, CodecError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => Err(FrameError::Truncated(src.len()).into()),
        }
    }
}

impl Encoder<Bytes> for FrameCodec {
    type Error = CodecError;

    fn encode(&mut self, body: Bytes, dst: &mut BytesMut) -> Result<(), CodecError> {
        let len = i32::try_from(body.len()).map_err(|_| FrameError::TooLarge {
            len: body.len(),
            max: i32::MAX as usize,
        })?;
        dst.reserve(4 + body.len());
        dst.put_i32(len);
        dst.extend_from_slice(&body);
        Ok(())
    }
}

/// The body length a 4-byte frame prefix announces, checked against the limit
/// before anything is allocated for it.
fn frame_len(head: &[u8], max_frame_bytes: usize) -> Result<usize, FrameError> {
    let raw = i32::from_be_bytes(head[..4].try_into().expect("4 bytes"));
    let len = usize::try_from(raw).map_err(|_| FrameError::NegativeLength(raw))?;
    if len > max_frame_bytes {
        return Err(FrameError::TooLarge {
            len,
            max: max_frame_bytes,
        });
    }
    Ok(len)
}

/// Reads frames like [`FrameCodec`], with one step between learning a
/// frame's length and reading its body: `admit` is awaited there, so a
/// caller can wait for memory before the body is buffered (a broker's memory
/// pool does the same: a connection it cannot afford is simply not read).
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    max_frame_bytes: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R, max_frame_bytes: usize) -> FrameReader<R> {
        FrameReader {
            inner,
            buf: BytesMut::with_capacity(8 * 1024),
            max_frame_bytes,
        }
    }

    /// The next frame's body, with what `admit` gave for its length (frame
    /// body plus the 4-byte prefix); `None` at a clean end of stream.
    ///
    /// Cancel-safe: bytes read stay in the buffer, and whatever `admit` gave
    /// is dropped with the future (a budget charge is given back), so calling
    /// it again picks up where it was.
    pub async fn next<F, Fut, A>(&mut self, admit: F) -> Result<Option<(BytesMut, A)>, CodecError>
    where
        F: FnOnce(usize) -> Fut,
        Fut: Future<Output = A>,
    {
        let Some(len) = self.next_len().await? else {
            return Ok(None);
        };
        let admitted = admit(4 + len).await;
        Ok(Some((self.body(len).await?, admitted)))
    }

    /// The next frame's body length, once its prefix is here (checked against
    /// the limit); `None` at a clean end of stream. Cancel-safe.
    pub async fn next_len(&mut self) -> Result<Option<usize>, CodecError> {
        while self.buf.len() < 4 {
            self.buf.reserve(8 * 1024);
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                return match self.buf.len() {
                    0 => Ok(None),
                    n => Err(FrameError::Truncated(n).into()),
                };
            }
        }
        Ok(Some(frame_len(&self.buf, self.max_frame_bytes)?))
    }

    /// The body of the frame whose length [`next_len`](Self::next_len) gave.
    /// Cancel-safe.
    pub async fn body(&mut self, len: usize) -> Result<BytesMut, CodecError> {
        while self.buf.len() < 4 + len {
            // Once for the whole frame; safe since len passed the limit.
            self.buf.reserve(4 + len - self.buf.len());
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                return Err(FrameError::Truncated(self.buf.len()).into());
            }
        }
        self.buf.advance(4);
        Ok(self.buf.split_to(len))
    }

    /// Bytes read and not yet returned as a frame.
    pub fn buffer(&self) -> &BytesMut {
        &self.buf
    }

    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }
}

/// A frame error or the i/o error under it.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The fields of a request header, peeked from the frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub api_key: ApiKey,
    pub api_version: i16,
    pub correlation_id: i32,
    /// Kept as bytes; turned into a string only for logs and identity.
    pub client_id: Option<Bytes>,
    /// Where the request body starts (after the header's tagged fields, if any).
    pub body_offset: usize,
}

/// Offset of `correlation_id` in a request frame body (after api_key, api_version).
pub const REQUEST_CORRELATION_OFFSET: usize = 4;

impl RequestHead {
    /// Reads the header of a request frame body. Checks that the API key is
    /// known and that the version is one that exists for it.
    pub fn peek(frame: &[u8]) -> Result<RequestHead, FrameError> {
        if frame.len() < 10 {
            return Err(FrameError::TooShort(frame.len()));
        }
        let raw_key = i16::from_be_bytes([frame[0], frame[1]]);
        let api_version = i16::from_be_bytes([frame[2], frame[3]]);
        let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
        let api_key = ApiKey::try_from(raw_key).map_err(|_| FrameError::UnknownApiKey(raw_key))?;
        // Versions below the crate's minimum are old versions the broker may
        // still accept (Produce v0-2 per KAFKA-18659): they pass through raw.
        // Negative, the proxy cannot read the header. Above what the proxy
        // advertises (Produce v13: topic ids), or SaslHandshake v0 (raw SASL
        // tokens follow it), the connection closes the way Kafka closes it
        // for a version it does not enable; no filter ever sees the request.
        // ApiVersions is the exception: a newer one gets a v0
        // UNSUPPORTED_VERSION answer so the client can retry lower (KIP-511).
        if api_version < 0
            || api_version > api_key.valid_versions().max && api_key != ApiKey::ApiVersions
        {
            return Err(FrameError::ImpossibleVersion {
                api_key: raw_key,
                name: api_name(api_key),
                version: api_version,
            });
        }
        if !advertised(api_key, api_version) {
            return Err(FrameError::UnadvertisedVersion {
                api_key: raw_key,
                name: api_name(api_key),
                version: api_version,
                min: min_version(api_key),
                max: max_version(api_key),
            });
        }
        let (client_id, mut offset) = client_id(frame)?;
        if api_key.request_header_version(api_version) >= 2 {
            offset = skip_tagged_fields(frame, offset).ok_or(FrameError::BadHeader(
                "header tagged fields run past the frame",
            ))?;
        }
        Ok(RequestHead {
            api_key,
            api_version,
            correlation_id,
            client_id,
            body_offset: offset,
        })
    }

    /// The client id for logs; lossy on invalid UTF-8.
    pub fn client_id_str(&self) -> String {
        lossy(&self.client_id)
    }
}

/// The header's client_id and where it ends. client_id is a classic
/// nullable string in every header version >= 1, even the flexible v2 one
/// (KIP-482 kept it non-compact).
fn client_id(frame: &[u8]) -> Result<(Option<Bytes>, usize), FrameError> {
    let id_len = i16::from_be_bytes([frame[8], frame[9]]);
    let offset = 10;
    if id_len < 0 {
        if id_len != -1 {
            return Err(FrameError::BadHeader("client_id length below -1"));
        }
        return Ok((None, offset));
    }
    let end = offset + id_len as usize;
    if end > frame.len() {
        return Err(FrameError::BadHeader("client_id runs past the frame"));
    }
    Ok((Some(Bytes::copy_from_slice(&frame[offset..end])), end))
}

// === APIs the kafka-protocol crate does not know: passed through raw ===

/// An API newer than the kafka-protocol crate (0.18, the newest on
/// crates.io, stops at the share-group keys), that the proxy forwards byte
/// for byte: no filter reads it, so none needs to decode it. An API goes
/// here only once its schema shows nothing the proxy must change: no broker
/// address (those must be rewritten, invariant 7), no records.
#[derive(Debug, PartialEq, Eq)]
pub struct RawApi {
    pub api_key: i16,
    /// Kafka's name for it, for logs and errors.
    pub name: &'static str,
    /// The newest version whose schema was checked: the broker's range is
    /// advertised up to it, and a request above it closes like any other
    /// unadvertised version.
    pub max_version: i16,
}

/// Kafka Streams' rebalance protocol (KIP-1071), in Kafka 4.2+. Checked
/// against the schemas Kafka 4.4's kafka-clients carries
/// (`common/message/StreamsGroup*.json`, the same files as
/// apache/kafka `clients/src/main/resources/common/message/`):
///
/// - StreamsGroupHeartbeat (88) v0-1: the response's only addresses are
///   `PartitionsByUserEndpoint[].UserEndpoint` (`Host`, `Port`), the
///   Streams instances' own `application.server` endpoints for Interactive
///   Queries, which clients dial among themselves: not brokers, nothing to
///   rewrite.
/// - StreamsGroupDescribe (89) v0-1: `Members[].UserEndpoint` (the same
///   application endpoints) and `ClientHost` (the member's own address, as
///   in DescribeGroups): no broker.
/// - StreamsGroupTopologyDescriptionUpdate (93) v0 (KIP-1331): throttle,
///   error code and message only.
pub const RAW_APIS: [RawApi; 3] = [
    RawApi {
        api_key: 88,
        name: "StreamsGroupHeartbeat",
        max_version: 1,
    },
    RawApi {
        api_key: 89,
        name: "StreamsGroupDescribe",
        max_version: 1,
    },
    RawApi {
        api_key: 93,
        name: "StreamsGroupTopologyDescriptionUpdate",
        max_version: 0,
    },
];

/// The header of a request for a [`RawApi`]: what forwarding it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawHead {
    pub api: &'static RawApi,
    pub api_version: i16,
    pub correlation_id: i32,
    pub client_id: Option<Bytes>,
}

impl RawHead {
    /// `None` if the frame's api key is not a [`RawApi`]'s (read it with
    /// [`RequestHead::peek`]); else its header, or why it cannot pass: a
    /// version above the one checked closes the connection, as for a
    /// decodable API.
    pub fn peek(frame: &[u8]) -> Option<Result<RawHead, FrameError>> {
        if frame.len() < 10 {
            return None;
        }
        let raw_key = i16::from_be_bytes([frame[0], frame[1]]);
        let api = RAW_APIS.iter().find(|a| a.api_key == raw_key)?;
        let api_version = i16::from_be_bytes([frame[2], frame[3]]);
        if !(0..=api.max_version).contains(&api_version) {
            return Some(Err(FrameError::UnadvertisedVersion {
                api_key: raw_key,
                name: api.name,
                version: api_version,
                min: 0,
                max: api.max_version,
            }));
        }
        let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
        Some(client_id(frame).map(|(client_id, _)| RawHead {
            api,
            api_version,
            correlation_id,
            client_id,
        }))
    }
}

/// A request header as the connection reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Head {
    /// An API the crate knows: through the filter stack.
    Decodable(RequestHead),
    /// A [`RawApi`]: straight to the broker.
    Raw(RawHead),
}

impl Head {
    /// Reads either kind of header (see [`RequestHead::peek`],
    /// [`RawHead::peek`]).
    pub fn peek(frame: &[u8]) -> Result<Head, FrameError> {
        match RawHead::peek(frame) {
            Some(raw) => raw.map(Head::Raw),
            None => RequestHead::peek(frame).map(Head::Decodable),
        }
    }

    /// The client id for logs; lossy on invalid UTF-8.
    pub fn client_id_str(&self) -> String {
        lossy(match self {
            Head::Decodable(h) => &h.client_id,
            Head::Raw(h) => &h.client_id,
        })
    }
}

fn lossy(client_id: &Option<Bytes>) -> String {
    client_id
        .as_deref()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default()
}

/// Whether the proxy accepts `api_version` of `api_key`: at most what it
/// advertises, and no SaslHandshake v0. Below the advertised minimum
/// otherwise passes (the broker answers old versions).
pub(crate) fn advertised(api_key: ApiKey, api_version: i16) -> bool {
    match api_key {
        ApiKey::ApiVersions => true,
        ApiKey::SaslHandshake => api_version >= min_version(api_key),
        _ => api_version <= max_version(api_key),
    }
}

/// Above every API key Kafka has assigned so far (92 in Kafka 4.1).
const MAX_API_KEY: i16 = 127;

/// The name Kafka uses for an API (`Produce`, `Metadata`...), for logs and metrics.
pub fn api_name(key: ApiKey) -> &'static str {
    // ApiKey's Debug is the variant name, which is Kafka's name; cache it as
    // &'static str so metrics labels never allocate.
    static NAMES: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    let names = NAMES.get_or_init(|| {
        (0..=MAX_API_KEY)
            .map(|k| match ApiKey::try_from(k) {
                Ok(key) => &*Box::leak(format!("{key:?}").into_boxed_str()),
                Err(()) => "Unknown",
            })
            .collect()
    });
    names.get(key as usize).copied().unwrap_or("Unknown")
}

/// Reads an unsigned varint (protobuf style, as Kafka's compact types use).
pub fn read_uvarint(buf: &[u8], offset: usize) -> Option<(u32, usize)> {
    let mut value: u32 = 0;
    for i in 0..5 {
        let byte = *buf.get(offset + i)?;
        value |= u32::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, offset + i + 1));
        }
    }
    None
}

/// Skips a tagged-field section (count, then tag/size/bytes each).
pub fn skip_tagged_fields(buf: &[u8], offset: usize) -> Option<usize> {
    let (count, mut offset) = read_uvarint(buf, offset)?;
    for _ in 0..count {
        let (_tag, next) = read_uvarint(buf, offset)?;
        let (size, next) = read_uvarint(buf, next)?;
        offset = next.checked_add(size as usize)?;
        if offset > buf.len() {
            return None;
        }
    }
    Some(offset)
}

// === The versions the proxy advertises, and so accepts ===
//
// filter/api_versions.rs cuts the broker's ranges to these; the codec
// closes a connection whose request is outside them.

/// The newest Produce the proxy advertises (v13 carries topic ids, not names).
pub const MAX_PRODUCE_VERSION: i16 = 12;

/// The newest version of `key` the proxy advertises, and so accepts.
pub fn max_version(key: ApiKey) -> i16 {
    let max = key.valid_versions().max;
    if key == ApiKey::Produce {
        max.min(MAX_PRODUCE_VERSION)
    } else {
        max
    }
}

/// The oldest version of `key` the proxy advertises (Produce keeps the
/// broker's instead, see `filter/api_versions.rs`).
pub fn min_version(key: ApiKey) -> i16 {
    let min = key.valid_versions().min;
    if key == ApiKey::SaslHandshake {
        min.max(1)
    } else {
        min
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn frame(len: i32, body: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_i32(len);
        b.extend_from_slice(body);
        b
    }

    #[tokio::test]
    async fn the_reader_asks_before_it_buffers_a_body() {
        use tokio::io::AsyncWriteExt;
        let (mut w, r) = tokio::io::duplex(64);
        let mut reader = FrameReader::new(r, 1 << 20);
        let mut wire = frame(3, b"abc");
        wire.extend_from_slice(&frame(100_000, b""));
        w.write_all(&wire).await.unwrap();
        let (body, asked) = reader.next(|n| async move { n }).await.unwrap().unwrap();
        assert_eq!((&body[..], asked), (&b"abc"[..], 7));
        // The next frame's body is not buffered while admission waits.
        let waiting = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            reader.next(|_| std::future::pending::<()>()),
        )
        .await;
        assert!(waiting.is_err());
        assert!(
            reader.buffer().capacity() < 100_000,
            "{}",
            reader.buffer().capacity()
        );
        // Cancelled, it picks up where it was.
        let body = vec![9u8; 100_000];
        let writer = tokio::spawn(async move {
            w.write_all(&body).await.unwrap();
            w
        });
        let (body, asked) = reader.next(|n| async move { n }).await.unwrap().unwrap();
        assert_eq!((body.len(), asked), (100_000, 100_004));
        assert!(body.iter().all(|b| *b == 9));
        // A clean end, then a truncated one, then limits.
        drop(writer.await.unwrap());
        assert!(reader.next(|n| async move { n }).await.unwrap().is_none());
        let (mut w, r) = tokio::io::duplex(64);
        w.write_all(&frame(10, b"abc")).await.unwrap();
        drop(w);
        let mut reader = FrameReader::new(r, 1 << 20);
        let err = reader.next(|n| async move { n }).await.unwrap_err();
        assert!(
            matches!(err, CodecError::Frame(FrameError::Truncated(7))),
            "{err:?}"
        );
        let (mut w, r) = tokio::io::duplex(64);
        w.write_all(&frame(17, b"")).await.unwrap();
        let mut reader = FrameReader::new(r, 16);
        let err = reader.next(|n| async move { n }).await.unwrap_err();
        assert!(matches!(
            err,
            CodecError::Frame(FrameError::TooLarge { len: 17, max: 16 })
        ));
    }

    #[test]
    fn length_guard_at_the_edges() {
        let mut codec = FrameCodec::new(16);
        // -1: refused before anything is buffered.
        let err = codec.decode(&mut frame(-1, b"")).unwrap_err();
        assert!(matches!(
            err,
            CodecError::Frame(FrameError::NegativeLength(-1))
        ));
        // 0: an empty frame is a frame (its header peek will refuse it).
        assert_eq!(codec.decode(&mut frame(0, b"")).unwrap().unwrap().len(), 0);
        // max: accepted.
        assert_eq!(
            codec
                .decode(&mut frame(16, &[7; 16]))
                .unwrap()
                .unwrap()
                .len(),
            16
        );
        // max + 1: refused from the length alone.
        let err = codec.decode(&mut frame(17, b"")).unwrap_err();
        assert!(matches!(
            err,
            CodecError::Frame(FrameError::TooLarge { len: 17, max: 16 })
        ));
    }

    #[test]
    fn partial_frames_wait_and_truncation_at_eof_is_an_error() {
        let mut codec = FrameCodec::new(1024);
        let mut buf = frame(10, b"abc");
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert!(buf.capacity() >= 14, "reserved the whole frame");
        let err = codec.decode_eof(&mut buf).unwrap_err();
        assert!(matches!(err, CodecError::Frame(FrameError::Truncated(7))));
    }

    #[test]
    fn two_frames_in_one_read() {
        let mut codec = FrameCodec::new(1024);
        let mut buf = frame(2, b"ab");
        buf.extend_from_slice(&frame(1, b"c"));
        assert_eq!(&codec.decode(&mut buf).unwrap().unwrap()[..], b"ab");
        assert_eq!(&codec.decode(&mut buf).unwrap().unwrap()[..], b"c");
        assert!(codec.decode(&mut buf).unwrap().is_none());
    }

    pub(crate) fn header(key: i16, version: i16, corr: i32, client_id: Option<&str>) -> Vec<u8> {
        let mut b = Vec::new();
        b.put_i16(key);
        b.put_i16(version);
        b.put_i32(corr);
        match client_id {
            Some(id) => {
                b.put_i16(id.len() as i16);
                b.extend_from_slice(id.as_bytes());
            }
            None => b.put_i16(-1),
        }
        b
    }

    #[test]
    fn peek_classic_header() {
        let mut b = header(3, 1, 42, Some("connector-producer-orders-0"));
        b.extend_from_slice(b"body");
        let head = RequestHead::peek(&b).unwrap();
        assert_eq!(head.api_key, ApiKey::Metadata);
        assert_eq!(head.api_version, 1);
        assert_eq!(head.correlation_id, 42);
        assert_eq!(head.client_id_str(), "connector-producer-orders-0");
        assert_eq!(&b[head.body_offset..], b"body");
    }

    #[test]
    fn peek_flexible_header_skips_tagged_fields() {
        // Metadata v12 uses header v2: tagged fields after client_id.
        let mut b = header(3, 12, 7, None);
        b.extend_from_slice(&[1, 5, 2, 0xaa, 0xbb]); // one tag (5) of 2 bytes
        b.extend_from_slice(b"body");
        let head = RequestHead::peek(&b).unwrap();
        assert_eq!(head.client_id, None);
        assert_eq!(&b[head.body_offset..], b"body");
    }

    /// Kafka Streams' StreamsGroup APIs are read as raw heads, up to the
    /// version whose schema was checked. Once kafka-protocol learns a key,
    /// this fails: decide then whether it still passes raw.
    #[test]
    fn streams_group_apis_are_raw_heads_the_crate_cannot_read() {
        for raw in &RAW_APIS {
            assert!(ApiKey::try_from(raw.api_key).is_err(), "{raw:?}");
            assert_eq!(
                RequestHead::peek(&header(raw.api_key, 0, 1, None)),
                Err(FrameError::UnknownApiKey(raw.api_key))
            );
        }
        let head = Head::peek(&header(88, 1, 7, Some("streams-app-1"))).unwrap();
        let Head::Raw(raw) = &head else {
            panic!("{head:?}")
        };
        assert_eq!(
            (raw.api.name, raw.api_version, raw.correlation_id),
            ("StreamsGroupHeartbeat", 1, 7)
        );
        assert_eq!(head.client_id_str(), "streams-app-1");
        assert!(matches!(
            Head::peek(&header(89, 2, 1, None)),
            Err(FrameError::UnadvertisedVersion {
                version: 2,
                max: 1,
                ..
            })
        ));
        assert!(matches!(
            Head::peek(&header(3, 8, 1, None)),
            Ok(Head::Decodable(RequestHead {
                api_key: ApiKey::Metadata,
                ..
            }))
        ));
    }

    #[test]
    fn peek_refuses_unknown_keys_impossible_versions_and_bad_lengths() {
        assert_eq!(
            RequestHead::peek(&header(999, 0, 1, None)),
            Err(FrameError::UnknownApiKey(999))
        );
        assert!(matches!(
            RequestHead::peek(&header(3, 99, 1, None)),
            Err(FrameError::ImpossibleVersion { version: 99, .. })
        ));
        assert!(matches!(
            RequestHead::peek(&header(3, -1, 1, None)),
            Err(FrameError::ImpossibleVersion { version: -1, .. })
        ));
        let mut b = header(3, 1, 1, None);
        b[8..10].copy_from_slice(&100i16.to_be_bytes());
        assert!(matches!(
            RequestHead::peek(&b),
            Err(FrameError::BadHeader(_))
        ));
        let mut b = header(3, 12, 1, None);
        b.extend_from_slice(&[1, 5, 9]); // tag claims 9 bytes, none follow
        assert!(matches!(
            RequestHead::peek(&b),
            Err(FrameError::BadHeader(_))
        ));
        assert_eq!(RequestHead::peek(b"short"), Err(FrameError::TooShort(5)));
    }

    #[test]
    fn peek_refuses_what_the_proxy_does_not_advertise() {
        // Produce v13 (topic ids) and SaslHandshake v0 (raw tokens follow).
        for (key, version) in [(0, 13), (17, 0)] {
            let mut b = header(key, version, 1, None);
            b.push(0);
            assert!(
                matches!(
                    RequestHead::peek(&b),
                    Err(FrameError::UnadvertisedVersion { .. })
                ),
                "{key} v{version}"
            );
        }
        let mut b = header(0, 12, 1, None);
        b.push(0);
        assert!(RequestHead::peek(&b).is_ok());
        assert!(RequestHead::peek(&header(17, 1, 1, None)).is_ok());
    }

    #[test]
    fn newer_api_versions_passes_the_peek() {
        let mut b = header(18, 9, 1, None);
        b.push(0); // header v2: no tagged fields
        assert!(RequestHead::peek(&b).is_ok_and(|h| h.api_version == 9));
    }

    #[test]
    fn produce_v0_passes_the_peek() {
        // Produce below the crate's decode range is still a real version.
        assert!(RequestHead::peek(&header(0, 2, 1, None)).is_ok());
    }

    #[test]
    fn api_names_are_kafkas() {
        assert_eq!(api_name(ApiKey::Produce), "Produce");
        assert_eq!(api_name(ApiKey::FindCoordinator), "FindCoordinator");
    }
}
