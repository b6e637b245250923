//! The fuzz targets' entry points (`fuzz/fuzz_targets/*`) and the models
//! they check the proxy against, out of the production files: each takes the
//! raw bytes libFuzzer gives it and panics only when a check fails. The same
//! checks run on stable as property tests (`IDEMGATE_PROPTEST_CASES` runs
//! more) and over every golden frame (`proto-tests/golden.rs`).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures::FutureExt;
use kafka_protocol::messages::{
    ApiKey, DescribeClusterResponse, FetchResponse, FindCoordinatorResponse, MetadataResponse,
    ProduceResponse, ShareAcknowledgeResponse, ShareFetchResponse,
};
use kafka_protocol::protocol::{Decodable, StrBytes};
use tokio::io::{AsyncRead, ReadBuf};
use tokio_util::codec::Decoder;

use crate::codec::{advertised, CodecError, FrameCodec, FrameReader, RequestHead};
use crate::error::Error;
use crate::error::FrameError;
use crate::filter::broker_address::{PortMap, Rewriter};
use crate::filter::sasl::SaslState;
use crate::message::{
    cap_fetch_max_bytes, decode_request, fetch_isolation_level, fetch_max_wait,
    join_group_rebalance_timeout, produce_acks_and_timeout, raise_throttle_time, Bounded,
};
use crate::records::{BatchItem, Batches, HeaderRef, RawBatch, RecordsError, SpliceMode, Spliced};

// === framing and the request header peek (codec.rs) ===

/// Entry point for the `frame_codec` fuzz target (and the property test that
/// runs it on stable). `data[0]` sets the frame limit (16-byte steps, so
/// `TooLarge` is in reach), `data[1]` how many bytes each read brings; the
/// rest is a client's stream. Checks [`FrameCodec`] and [`FrameReader`]
/// against a model of the framing: the same frames, each exactly the bytes
/// its prefix announced, then the same end or the same error. The reader's
/// reads alternate with `Pending` and every `Pending` drops its future, so
/// each frame is also read across cancellations, as `select!` does.
#[doc(hidden)]
pub fn frame_codec(data: &[u8]) {
    let [limit, chunk, stream @ ..] = data else {
        return;
    };
    let max = usize::from(*limit) << 4;
    let (frames, end) = model_frames(stream, max);

    let mut codec = FrameCodec::new(max);
    let mut buf = BytesMut::from(stream);
    let mut got = Vec::new();
    let codec_end = loop {
        match codec.decode_eof(&mut buf) {
            Ok(Some(frame)) => got.push(frame),
            Ok(None) => break None,
            Err(CodecError::Frame(e)) => break Some(e),
            Err(CodecError::Io(e)) => panic!("no i/o under a buffer: {e}"),
        }
    };
    assert_eq!(got, frames, "FrameCodec frames");
    assert_eq!(codec_end, end, "FrameCodec end");

    let client = Trickle {
        data: stream,
        chunk: usize::from(*chunk).max(1),
        ready: false,
    };
    let mut reader = FrameReader::new(client, max);
    let mut got = Vec::new();
    let reader_end = loop {
        // why: `now_or_never` drops the future at its first `Pending`.
        match reader.next(|n| async move { n }).now_or_never() {
            None => continue,
            Some(Ok(Some((frame, admitted)))) => {
                assert_eq!(
                    admitted,
                    4 + frame.len(),
                    "admit is asked for the whole frame"
                );
                got.push(frame);
            }
            Some(Ok(None)) => break None,
            Some(Err(CodecError::Frame(e))) => break Some(e),
            Some(Err(CodecError::Io(e))) => panic!("the client has no i/o error: {e}"),
        }
    };
    assert_eq!(got, frames, "FrameReader frames");
    assert_eq!(reader_end, end, "FrameReader end");
}

/// The framing as Kafka defines it: the frames of `stream`, then `None` at a
/// clean end or the error the first unacceptable prefix calls for.
fn model_frames(stream: &[u8], max: usize) -> (Vec<&[u8]>, Option<FrameError>) {
    let mut frames = Vec::new();
    let mut rest = stream;
    loop {
        let Some((prefix, body)) = rest.split_first_chunk::<4>() else {
            let end = (!rest.is_empty()).then_some(FrameError::Truncated(rest.len()));
            return (frames, end);
        };
        let len = i32::from_be_bytes(*prefix);
        let Ok(len) = usize::try_from(len) else {
            return (frames, Some(FrameError::NegativeLength(len)));
        };
        if len > max {
            return (frames, Some(FrameError::TooLarge { len, max }));
        }
        let Some((frame, next)) = body.split_at_checked(len) else {
            return (frames, Some(FrameError::Truncated(rest.len())));
        };
        frames.push(frame);
        rest = next;
    }
}

/// A client that sends its stream `chunk` bytes at a time, with a `Pending`
/// before every read.
struct Trickle<'a> {
    data: &'a [u8],
    chunk: usize,
    ready: bool,
}

impl AsyncRead for Trickle<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.ready = !self.ready;
        if !self.ready {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let n = self.chunk.min(self.data.len()).min(buf.remaining());
        let (now, rest) = self.data.split_at(n);
        buf.put_slice(now);
        self.data = rest;
        Poll::Ready(Ok(()))
    }
}

/// Whether a varint at `offset` runs past five bytes: Kafka refuses it,
/// [`read_uvarint`] too, and kafka_protocol reads its first five bytes as
/// the number. The fuzz checks that compare with kafka_protocol skip it.
pub(crate) fn overlong_varint_at(buf: &[u8], offset: usize) -> bool {
    buf.get(offset..offset + 5)
        .is_some_and(|run| run.iter().all(|b| b & 0x80 != 0))
}

/// Entry point for the `request_head` fuzz target: `frame` is a request
/// frame body. Checks that the peek agrees with kafka_protocol's own header
/// decoder (api_key, api_version, correlation_id, client_id, where the body
/// starts) whenever that one decodes a header of an API and version the
/// proxy reads, refuses what the proxy cannot read, and never points past
/// the frame. Returns the peeked head for the readers that trust it.
#[doc(hidden)]
pub fn request_head(frame: &[u8]) -> Option<RequestHead> {
    use kafka_protocol::messages::RequestHeader;
    use kafka_protocol::protocol::Decodable;

    let peeked = RequestHead::peek(frame);
    if let Ok(head) = &peeked {
        assert!(head.body_offset <= frame.len(), "{head:?}");
    }
    let Some(&[k0, k1, v0, v1]) = frame.first_chunk::<4>() else {
        assert!(peeked.is_err());
        return None;
    };
    let (raw_key, version) = (i16::from_be_bytes([k0, k1]), i16::from_be_bytes([v0, v1]));
    let Ok(api_key) = ApiKey::try_from(raw_key) else {
        assert!(peeked.is_err(), "unknown api_key {raw_key} peeked");
        return None;
    };
    let readable = version >= 0
        && (version <= api_key.valid_versions().max || api_key == ApiKey::ApiVersions)
        && advertised(api_key, version);
    let mut rest = frame;
    if let Ok(header) = RequestHeader::decode(&mut rest, api_key.request_header_version(version)) {
        if !readable {
            assert!(peeked.is_err(), "{api_key:?} v{version} peeked");
            return None;
        }
        let head = match &peeked {
            Ok(head) => head,
            // Kafka (ByteUtils.readUnsignedVarint) refuses a varint whose
            // fifth byte still has its continuation bit; kafka_protocol
            // stops there and reads on. The peek sides with Kafka.
            Err(FrameError::BadHeader("header tagged fields run past the frame"))
                if (0..frame.len() - rest.len()).any(|at| overlong_varint_at(frame, at)) =>
            {
                return None
            }
            Err(e) => panic!("kafka_protocol reads this header, the peek refused it: {e}"),
        };
        assert_eq!(
            (head.api_key as i16, head.api_version, head.correlation_id),
            (
                header.request_api_key,
                header.request_api_version,
                header.correlation_id
            )
        );
        assert_eq!(
            head.client_id.as_deref(),
            header.client_id.as_deref().map(str::as_bytes)
        );
        assert_eq!(head.body_offset, frame.len() - rest.len(), "body offset");
    }
    peeked.ok()
}

// === in-place fields and throttle_time_ms (message.rs) ===

/// Entry point for the `request_head` fuzz target, after the peek: every
/// field read in place agrees with a full decode of the request whenever
/// kafka_protocol decodes it, and capping Fetch `max_bytes` changes that
/// field and nothing else. On requests that do not decode, the readers only
/// must not panic.
#[doc(hidden)]
pub fn request_fields(frame: &[u8], head: &crate::codec::RequestHead) {
    use kafka_protocol::messages::{FetchRequest, JoinGroupRequest, ProduceRequest};

    let (at, version) = (head.body_offset, head.api_version);
    // The nullable string that comes first in these bodies: with a length
    // Kafka refuses, the readers refuse the request too (it is forwarded as
    // it came, for the broker to refuse), while kafka_protocol reads on.
    let compact_first = matches!(
        (head.api_key, version),
        (ApiKey::Produce, 9..) | (ApiKey::JoinGroup, 6..)
    );
    if compact_first && overlong_varint_at(frame, at) {
        let read = match head.api_key {
            ApiKey::Produce => produce_acks_and_timeout(frame, at, version).map(drop),
            _ => join_group_rebalance_timeout(frame, at, version).map(drop),
        };
        assert_eq!(read, None, "a length Kafka refuses, read");
        return;
    }
    match head.api_key {
        ApiKey::Produce => {
            let read = produce_acks_and_timeout(frame, at, version);
            if let Some(req) = decode_request::<ProduceRequest>(frame, head) {
                assert_eq!(read, Some((req.acks, req.timeout_ms)));
            }
        }
        ApiKey::Fetch => {
            // why: the fuzzer picks the cap through a field it already controls.
            let cap = head.correlation_id.max(0);
            let (wait, isolation) = (
                fetch_max_wait(frame, at, version),
                fetch_isolation_level(frame, at, version),
            );
            let mut capped = frame.to_vec();
            let asked = cap_fetch_max_bytes(&mut capped, at, version, cap);
            let Some(req) = decode_request::<FetchRequest>(frame, head) else {
                return;
            };
            assert_eq!(wait, Some(req.max_wait_ms));
            assert_eq!(isolation, Some(req.isolation_level));
            assert_eq!(asked, (req.max_bytes > cap).then_some(req.max_bytes));
            let back =
                decode_request::<FetchRequest>(&capped, head).expect("a capped Fetch decodes");
            let want = req.clone().with_max_bytes(req.max_bytes.min(cap));
            assert_eq!(back, want, "only max_bytes changed");
        }
        ApiKey::JoinGroup => {
            let read = join_group_rebalance_timeout(frame, at, version);
            if let Some(req) = decode_request::<JoinGroupRequest>(frame, head) {
                // v0 has no rebalance timeout: the session timeout serves for both.
                let want = if version >= 1 {
                    req.rebalance_timeout_ms
                } else {
                    req.session_timeout_ms
                };
                assert_eq!(read, Some(want));
            }
        }
        _ => {}
    }
}

/// The input of the response fuzz targets: api_key and api_version (int16
/// each, the version of the request answered), then a response frame body,
/// as the golden response files are.
#[doc(hidden)]
pub fn response_input(data: &[u8]) -> Option<(ApiKey, i16, Bytes)> {
    let (head, frame) = data.split_first_chunk::<4>()?;
    let api = ApiKey::try_from(i16::from_be_bytes([head[0], head[1]])).ok()?;
    let version = i16::from_be_bytes([head[2], head[3]]);
    Some((api, version, Bytes::copy_from_slice(frame)))
}

/// Entry point for the `throttle_time` fuzz target (input: see
/// [`response_input`]). For each of a few throttles: a response that
/// decodes is raised to exactly that throttle when the broker's is lower,
/// left alone otherwise, and nothing else in it changes (header and trailing
/// bytes included); one that does not decode gets an error or its own bytes
/// back, never a panic. Produce v1-8 keeps throttle_time_ms as its last
/// field, so that check holds for frames that end with their message, as a
/// broker writes them.
#[doc(hidden)]
pub fn throttle_time(data: &[u8]) {
    use kafka_protocol::messages::{FetchResponse, ProduceResponse};

    let Some((api, version, frame)) = response_input(data) else {
        return;
    };
    for ms in [0, 1, 30_000, i32::MAX] {
        let mut raised = crate::message::ResponseFrame::new(frame.clone());
        let out =
            raise_throttle_time(api, version, &mut raised, ms).and_then(|()| raised.into_changed());
        match api {
            ApiKey::Produce => {
                check_throttle::<ProduceResponse>(api, version, &frame, ms, out, |m| {
                    &mut m.throttle_time_ms
                })
            }
            ApiKey::Fetch => check_throttle::<FetchResponse>(api, version, &frame, ms, out, |m| {
                &mut m.throttle_time_ms
            }),
            _ => assert!(matches!(out, Ok(None)), "{api:?} has no throttle to raise"),
        }
    }
}

fn check_throttle<T: Decodable + Bounded + PartialEq + std::fmt::Debug>(
    api: ApiKey,
    version: i16,
    frame: &Bytes,
    ms: i32,
    out: Result<Option<Bytes>, Error>,
    throttle: fn(&mut T) -> &mut i32,
) {
    let Some((mut before, header, trailing)) =
        crate::message::decode_parts::<T>(api, version, frame)
    else {
        return;
    };
    if api == ApiKey::Produce && version <= 8 && !trailing.is_empty() {
        return;
    }
    let out = out.unwrap_or_else(|e| panic!("a response that decodes is raised: {e}"));
    let old = *throttle(&mut before);
    let Some(out) = out else {
        assert!(old >= ms, "throttle {old} left below {ms}");
        return;
    };
    assert!(old < ms, "throttle {old} changed for {ms}");
    let (mut after, out_header, out_trailing) =
        crate::message::decode_parts::<T>(api, version, &out).expect("a raised response decodes");
    assert_eq!((out_header, out_trailing), (header, trailing));
    assert_eq!(*throttle(&mut after), ms);
    *throttle(&mut after) = old;
    assert_eq!(after, before, "only throttle_time_ms changed");
}

// === RecordBatch v2 splicing (records.rs) ===

/// Entry point for the `record_batch` fuzz target (and the property test that runs it on
/// stable): walk `data` as a partition's `records`, decode each batch, splice it (keep every
/// other record, append a header) in both modes, and panic if a rewrite does not decode back
/// to exactly what was asked for. Never panics on its own for any other input.
#[doc(hidden)]
pub fn record_batch(data: &[u8]) {
    // why: small, so the fuzzer spends its time on framing rather than inflating zeros.
    const LIMIT: usize = 1 << 20;
    const KEY: &[u8] = b"idemgate.fuzz";
    for item in Batches::new(Bytes::copy_from_slice(data)) {
        let Ok(BatchItem::Batch(raw)) = item else {
            continue;
        };
        let Ok(batch) = raw.decode_with_limit(LIMIT) else {
            continue;
        };
        let keep: Vec<bool> = (0..batch.len()).map(|i| i % 2 == 0).collect();
        let kept: Vec<usize> = (0..batch.len()).step_by(2).collect();
        let header = HeaderRef {
            key: KEY,
            value: Some(b"v"),
        };
        for mode in [SpliceMode::Renumber, SpliceMode::KeepOffsets] {
            let out = match batch.splice(&keep, Some(header), mode) {
                Ok(Spliced::Rewritten(out)) => out,
                Ok(Spliced::Unchanged) => {
                    assert!(!batch.would_change(&keep, Some(header)));
                    continue;
                }
                Ok(Spliced::NoneKept) => {
                    assert!(mode == SpliceMode::Renumber && kept.is_empty());
                    continue;
                }
                // why: only a rewrite whose lengths outgrow an int32 may fail.
                Err(e) => {
                    assert!(matches!(e, RecordsError::Overflow { .. }), "{e}");
                    continue;
                }
            };
            let again = RawBatch::new(out)
                .and_then(|r| r.decode_with_limit(usize::MAX))
                .unwrap_or_else(|e| panic!("a {mode:?} rewrite must decode: {e}"));
            let (h, oh) = (again.header(), batch.header());
            assert_eq!(again.len(), kept.len());
            assert_eq!(h.base_offset, oh.base_offset);
            assert_eq!(
                (h.producer_id, h.producer_epoch, h.base_sequence),
                (oh.producer_id, oh.producer_epoch, oh.base_sequence)
            );
            match mode {
                SpliceMode::Renumber => assert_eq!(h.last_offset_delta as usize, kept.len() - 1),
                SpliceMode::KeepOffsets => assert_eq!(h.last_offset_delta, oh.last_offset_delta),
            }
            for (new, &old) in again.records().zip(&kept) {
                let old = batch.record(old).expect("a kept index");
                assert_eq!(new.key(), old.key());
                assert_eq!(new.value(), old.value());
                assert_eq!(new.timestamp_delta(), old.timestamp_delta());
                assert_eq!(new.attributes(), old.attributes());
                let (old_h, new_h) = (old.header_list(), new.header_list());
                assert!(new_h.starts_with(&old_h), "existing headers kept in order");
                assert_eq!(new_h.len() - old_h.len(), usize::from(!old.has_header(KEY)));
                assert!(new.has_header(KEY));
                match mode {
                    SpliceMode::Renumber => assert_eq!(new.offset_delta() as usize, new.index()),
                    SpliceMode::KeepOffsets => assert_eq!(new.offset_delta(), old.offset_delta()),
                }
            }
        }
    }
}

// === broker address rewrite (filter/broker_address.rs) ===

/// The fuzz target's ports: a fixed function of the node id, so every input
/// gets the same answer and nothing is written anywhere.
struct FuzzPorts;

impl FuzzPorts {
    fn port(node_id: i32) -> u16 {
        20_000 + node_id.rem_euclid(10_000) as u16
    }
}

impl PortMap for FuzzPorts {
    fn learn(&self, node_id: i32, _host: &str, _port: i32) -> Result<u16, Error> {
        Ok(FuzzPorts::port(node_id))
    }
}

/// The host every rewritten address must carry in the fuzz target.
const FUZZ_HOST: &str = "proxy.fuzz";

/// Entry point for the `broker_address` fuzz target (input: see
/// [`response_input`]).
/// A response that decodes is rewritten without error; afterwards it
/// decodes again, every address a client could use (every broker, every
/// coordinator with a node id, every KIP-951 endpoint) is the proxy's for
/// that node id, and with the old addresses put back it is the message that
/// came in, header and trailing bytes included. `None` (forward as it came)
/// only when there was no address to rewrite. A response that does not
/// decode gets an error, never a panic.
#[doc(hidden)]
pub fn broker_address(data: &[u8]) {
    let Some((api, version, frame)) = response_input(data) else {
        return;
    };
    let host = StrBytes::from_static_str(FUZZ_HOST);
    let rewriter = Rewriter {
        topology: &FuzzPorts,
        advertised_host: &host,
    };
    let out = rewriter.rewrite(api, version, &frame);
    match api {
        ApiKey::Metadata => check_rewrite::<MetadataResponse>(api, version, &frame, out, |m, _| {
            m.brokers
                .iter_mut()
                .map(|b| (b.node_id.0, &mut b.host, &mut b.port))
                .collect()
        }),
        ApiKey::FindCoordinator => {
            check_rewrite::<FindCoordinatorResponse>(api, version, &frame, out, |m, version| {
                // v0-3 answer with one node, v4+ with a list; an error answer
                // (node id -1) has no address to hide.
                let single = (version < 4 && m.node_id.0 >= 0).then_some((
                    m.node_id.0,
                    &mut m.host,
                    &mut m.port,
                ));
                let list = m
                    .coordinators
                    .iter_mut()
                    .filter(|c| c.node_id.0 >= 0)
                    .map(|c| (c.node_id.0, &mut c.host, &mut c.port));
                single.into_iter().chain(list).collect()
            })
        }
        ApiKey::DescribeCluster => {
            check_rewrite::<DescribeClusterResponse>(api, version, &frame, out, |m, _| {
                m.brokers
                    .iter_mut()
                    .map(|b| (b.broker_id.0, &mut b.host, &mut b.port))
                    .collect()
            })
        }
        ApiKey::Produce if version >= 10 => {
            check_rewrite::<ProduceResponse>(api, version, &frame, out, |m, _| {
                m.node_endpoints
                    .iter_mut()
                    .map(|e| (e.node_id.0, &mut e.host, &mut e.port))
                    .collect()
            })
        }
        ApiKey::Fetch if version >= 16 => {
            check_rewrite::<FetchResponse>(api, version, &frame, out, |m, _| {
                m.node_endpoints
                    .iter_mut()
                    .map(|e| (e.node_id.0, &mut e.host, &mut e.port))
                    .collect()
            })
        }
        ApiKey::ShareFetch => {
            check_rewrite::<ShareFetchResponse>(api, version, &frame, out, |m, _| {
                m.node_endpoints
                    .iter_mut()
                    .map(|e| (e.node_id.0, &mut e.host, &mut e.port))
                    .collect()
            })
        }
        ApiKey::ShareAcknowledge => {
            check_rewrite::<ShareAcknowledgeResponse>(api, version, &frame, out, |m, _| {
                m.node_endpoints
                    .iter_mut()
                    .map(|e| (e.node_id.0, &mut e.host, &mut e.port))
                    .collect()
            })
        }
        _ => assert!(
            matches!(out, Ok(None)),
            "{api:?} v{version} carries no address"
        ),
    }
}

/// The (node id, host, port) of every address a client could connect to,
/// in a message of the given version.
type Addresses<T> = for<'m> fn(&'m mut T, i16) -> Vec<(i32, &'m mut StrBytes, &'m mut i32)>;

fn check_rewrite<T>(
    api: ApiKey,
    version: i16,
    frame: &Bytes,
    out: Result<Option<Bytes>, Error>,
    addresses: Addresses<T>,
) where
    T: kafka_protocol::protocol::Decodable + crate::message::Bounded + PartialEq + std::fmt::Debug,
{
    let Some((mut before, header, trailing)) =
        crate::message::decode_parts::<T>(api, version, frame)
    else {
        assert!(
            out.is_err(),
            "{api:?} v{version}: an undecodable response rewritten"
        );
        return;
    };
    let out = out.unwrap_or_else(|e| panic!("a response that decodes is rewritten: {e}"));
    let old: Vec<(i32, StrBytes, i32)> = addresses(&mut before, version)
        .into_iter()
        .map(|(id, host, port)| (id, host.clone(), *port))
        .collect();
    let Some(out) = out else {
        assert!(
            old.is_empty()
                && matches!(
                    api,
                    ApiKey::FindCoordinator
                        | ApiKey::Produce
                        | ApiKey::Fetch
                        | ApiKey::ShareFetch
                        | ApiKey::ShareAcknowledge
                ),
            "{api:?} v{version}: forwarded as it came with addresses {old:?}"
        );
        return;
    };
    let (mut after, out_header, out_trailing) =
        crate::message::decode_parts::<T>(api, version, &out)
            .expect("a rewritten response decodes");
    assert_eq!((out_header, out_trailing), (header, trailing));
    let new = addresses(&mut after, version);
    assert_eq!(new.len(), old.len(), "the same addresses");
    for ((id, host, port), (old_id, old_host, old_port)) in new.into_iter().zip(old) {
        assert_eq!(id, old_id, "node ids kept");
        assert_eq!(host.as_str(), FUZZ_HOST, "node {id}: upstream host left");
        assert_eq!(
            *port,
            i32::from(FuzzPorts::port(id)),
            "node {id}: upstream port left"
        );
        (*host, *port) = (old_host, old_port);
    }
    assert_eq!(after, before, "only addresses changed");
}

// === SASL principal sniffing (filter/sasl.rs) ===

/// What the fuzz target's handshakes name: each mechanism the sniffer reads,
/// one spelled as a client might, and one it does not read.
const FUZZ_MECHANISMS: [&str; 6] = [
    "PLAIN",
    "SCRAM-SHA-256",
    "SCRAM-SHA-512",
    "OAUTHBEARER",
    "plain",
    "GSSAPI",
];

/// A secret no principal may ever contain.
pub(crate) const FUZZ_SECRET: &[u8] = b"\x7fidemgate-fuzz-secret\x7f";

/// Entry point for the `sasl` fuzz target. Input: a series of steps, each
/// `0xff` then a byte choosing a mechanism (a SaslHandshake), or a length
/// byte then that many bytes (a SaslAuthenticate token). Checks, on every
/// step: a principal is never empty; PLAIN's is the authcid (the field
/// between the two NULs, never the password after them); SCRAM's comes
/// once, from the second round, and is what the first round named; and a
/// twin exchange whose secrets (PLAIN's password, SCRAM's client-final
/// message with its proof, the JWT's signature) are replaced by a marker
/// binds the same principal, which never contains the marker.
#[doc(hidden)]
pub fn sasl(mut data: &[u8]) {
    let (mut state, mut twin) = (SaslState::default(), SaslState::default());
    let mut mechanism: Option<&str> = None;
    let mut round = 0u32;
    // The fuzzer learns the marker from the comparison below and may write it
    // into a user name itself; only a marker it did not send is a leak.
    let mut sent_marker = false;
    while let Some((&op, rest)) = data.split_first() {
        if op == 0xff {
            let Some((&pick, rest)) = rest.split_first() else {
                return;
            };
            let name = FUZZ_MECHANISMS[usize::from(pick) % FUZZ_MECHANISMS.len()];
            state.handshake(name);
            twin.handshake(name);
            mechanism = Some(name);
            round = 0;
            data = rest;
            continue;
        }
        let (token, rest) = rest.split_at(usize::from(op).min(rest.len()));
        data = rest;
        round += 1;
        sent_marker |= contains(token, FUZZ_SECRET);
        let upper = mechanism.map(str::to_ascii_uppercase);
        let swapped = match upper.as_deref() {
            Some("PLAIN") => plain_with_password(token, FUZZ_SECRET),
            Some("SCRAM-SHA-256" | "SCRAM-SHA-512") if round >= 2 => FUZZ_SECRET.to_vec(),
            Some("OAUTHBEARER") => jwt_with_signature(token, FUZZ_SECRET),
            _ => token.to_vec(),
        };
        let principal = state.authenticate(&Bytes::copy_from_slice(token));
        let twin_principal = twin.authenticate(&Bytes::from(swapped));
        assert_eq!(
            principal, twin_principal,
            "the principal depends on a secret"
        );
        let Some(principal) = principal else {
            continue;
        };
        assert!(!principal.is_empty());
        assert!(
            sent_marker || !contains(principal.as_bytes(), FUZZ_SECRET),
            "a secret became the principal"
        );
        match upper.as_deref() {
            Some("PLAIN") => {
                assert_eq!(token.split(|b| *b == 0).nth(1), Some(principal.as_bytes()));
            }
            Some("SCRAM-SHA-256" | "SCRAM-SHA-512") => {
                assert_eq!(round, 2, "SCRAM binds once, after the client-final message")
            }
            Some("OAUTHBEARER") => {}
            other => panic!("{other:?} bound {principal:?}"),
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A PLAIN token with everything after its second NUL (the password) replaced.
pub(crate) fn plain_with_password(token: &[u8], password: &[u8]) -> Vec<u8> {
    let mut parts = token.splitn(3, |b| *b == 0);
    match (parts.next(), parts.next(), parts.next()) {
        (Some(authzid), Some(authcid), Some(_)) => {
            [authzid, b"\0", authcid, b"\0", password].concat()
        }
        _ => token.to_vec(),
    }
}

/// An OAUTHBEARER token with its JWT's signature (after the second `.` of
/// the `auth=` value, up to the next `\x01`) replaced; as it came when it
/// has none.
pub(crate) fn jwt_with_signature(token: &[u8], signature: &[u8]) -> Vec<u8> {
    let Ok(text) = std::str::from_utf8(token) else {
        return token.to_vec();
    };
    let mut at = 0;
    for kv in text.split('\x01') {
        if kv.starts_with("auth=") {
            let Some((cut, _)) = kv.match_indices('.').nth(1) else {
                break;
            };
            let start = at + cut + 1;
            let end = at + kv.len();
            return [&token[..start], signature, &token[end..]].concat();
        }
        at += kv.len() + 1;
    }
    token.to_vec()
}

#[cfg(test)]
mod tests;
