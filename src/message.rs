//! The one home of the kafka-protocol crate's message types.
//!
//! A frame stays raw `Bytes` unless a filter asked for it; these helpers decode
//! a body when one did, and encode it again only when it was changed. Every
//! crate error is wrapped once here, with the API name and version.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Message};

use crate::codec::{api_name, skip_tagged_fields};
use crate::error::{Error, Side};

mod bounds;
mod fields;

pub use bounds::Bounded;
pub use fields::{
    cap_fetch_max_bytes, fetch_isolation_level, fetch_max_wait, join_group_rebalance_timeout,
    produce_acks_and_timeout, raise_throttle_time,
};

/// Where the message starts in a response frame body: after `correlation_id`
/// and, for flexible versions (response header v1), the header's tagged fields.
pub fn response_body_offset(api: ApiKey, version: i16, frame: &[u8]) -> Option<usize> {
    if frame.len() < 4 {
        return None;
    }
    if api.response_header_version(version) >= 1 {
        skip_tagged_fields(frame, 4)
    } else {
        Some(4)
    }
}

/// A decoded response, with the bytes around its message kept so that it
/// encodes back to the same frame but for what a filter changed.
pub struct Response<T> {
    pub msg: T,
    api: ApiKey,
    version: i16,
    /// correlation_id and, for flexible versions, the header's tagged fields.
    header: Bytes,
    /// Bytes after the message. Kafka writes none; librdkafka's mock cluster
    /// adds a stray tagged-field byte to Metadata v12. Kept, not judged:
    /// whoever reads the response decides.
    trailing: Bytes,
}

impl<T: Decodable + Bounded> Response<T> {
    /// Decodes a response frame body once the bounds check
    /// (`message/bounds.rs`) has passed it; a message it refuses fails like
    /// one that does not decode.
    pub fn decode(api: ApiKey, version: i16, frame: &Bytes) -> Result<Self, Error> {
        let offset = response_body_offset(api, version, frame)
            .ok_or_else(|| codec_error(api, version, "short response header"))?;
        let mut body = frame.slice(offset..);
        bounds::check(T::SCHEMA, version, &body).map_err(|refused| Error::Codec {
            api: api_name(api),
            version,
            side: Side::Upstream,
            source: refused.into(),
        })?;
        let msg = T::decode(&mut body, version).map_err(|source| Error::Codec {
            api: api_name(api),
            version,
            side: Side::Upstream,
            source,
        })?;
        Ok(Response {
            msg,
            api,
            version,
            header: frame.slice(..offset),
            trailing: body,
        })
    }
}

impl<T: Encodable> Response<T> {
    /// The frame body again, with the message as it is now.
    pub fn encode(&self) -> Result<Bytes, Error> {
        let wrap = |source| Error::Codec {
            api: api_name(self.api),
            version: self.version,
            side: Side::Internal,
            source,
        };
        let size = self.msg.compute_size(self.version).map_err(wrap)?;
        let mut out = BytesMut::with_capacity(self.header.len() + size + self.trailing.len());
        out.extend_from_slice(&self.header);
        self.msg.encode(&mut out, self.version).map_err(wrap)?;
        out.extend_from_slice(&self.trailing);
        Ok(out.freeze())
    }
}

/// Decodes the message of a response frame body (anything after it ignored).
pub fn decode_response<T: Decodable + Bounded>(
    api: ApiKey,
    version: i16,
    frame: &Bytes,
) -> Result<T, Error> {
    Response::decode(api, version, frame).map(|r| r.msg)
}

/// Decodes a request's message when a filter needs it; `None` if it does not
/// decode or the bounds check refuses it (the request is forwarded as it
/// came either way, for the broker to judge).
pub fn decode_request<T: Decodable + Bounded>(
    frame: &[u8],
    head: &crate::codec::RequestHead,
) -> Option<T> {
    let mut body = frame.get(head.body_offset..)?;
    if let Err(refused) = bounds::check(T::SCHEMA, head.api_version, body) {
        tracing::debug!(
            api_key = ?head.api_key,
            version = head.api_version,
            %refused,
            "request not decoded"
        );
        return None;
    }
    T::decode(&mut body, head.api_version).ok()
}

/// Encodes a response of our own making (answered locally, never sent upstream).
pub fn encode_local_response<T: Encodable>(
    api: ApiKey,
    version: i16,
    header_version: i16,
    correlation_id: i32,
    msg: &T,
) -> Result<Bytes, Error> {
    let mut out = BytesMut::new();
    out.put_i32(correlation_id);
    if header_version >= 1 {
        out.put_u8(0); // no header tagged fields
    }
    msg.encode(&mut out, version)
        .map_err(|source| Error::Codec {
            api: api_name(api),
            version,
            side: Side::Internal,
            source,
        })?;
    Ok(out.freeze())
}

/// Encodes a request of our own (the proxy's metadata probe) as a frame body.
pub fn encode_request<T: Encodable + HeaderVersion + Message>(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    msg: &T,
) -> Result<Bytes, Error> {
    let header = RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(kafka_protocol::protocol::StrBytes::from_static_str(
            "idemgate",
        )));
    let mut out = BytesMut::new();
    let wrap = |source| Error::Codec {
        api: api_name(api),
        version,
        side: Side::Internal,
        source,
    };
    header
        .encode(&mut out, T::header_version(version))
        .map_err(wrap)?;
    msg.encode(&mut out, version).map_err(wrap)?;
    Ok(out.freeze())
}

fn codec_error(api: ApiKey, version: i16, what: &'static str) -> Error {
    Error::Codec {
        api: api_name(api),
        version,
        side: Side::Upstream,
        source: anyhow::anyhow!(what),
    }
}

/// A response frame body as (message, header bytes, trailing bytes), for the
/// fuzz checks; `None` when it does not decode.
pub(crate) fn decode_parts<T: Decodable + Bounded>(
    api: ApiKey,
    version: i16,
    frame: &Bytes,
) -> Option<(T, Bytes, Bytes)> {
    let r = Response::<T>::decode(api, version, frame).ok()?;
    Some((r.msg, r.header, r.trailing))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{FetchRequest, JoinGroupRequest, ProduceRequest};
    use kafka_protocol::protocol::StrBytes;

    fn request_bytes<T: Encodable + HeaderVersion + Message>(
        api: ApiKey,
        version: i16,
        msg: &T,
    ) -> (Bytes, usize) {
        let frame = encode_request(api, version, 1, msg).unwrap();
        let head = crate::codec::RequestHead::peek(&frame).unwrap();
        (frame, head.body_offset)
    }

    #[test]
    fn produce_acks_every_version() {
        // Every version the codec lets through (v13 closes the connection).
        for version in 3..=crate::codec::MAX_PRODUCE_VERSION {
            let mut req = ProduceRequest::default()
                .with_acks(-1)
                .with_timeout_ms(1234);
            req.transactional_id = Some(StrBytes::from_static_str("txn-1").into());
            let (frame, at) = request_bytes(ApiKey::Produce, version, &req);
            assert_eq!(
                produce_acks_and_timeout(&frame, at, version),
                Some((-1, 1234)),
                "v{version}"
            );
            let req = ProduceRequest::default().with_acks(0).with_timeout_ms(5);
            let (frame, at) = request_bytes(ApiKey::Produce, version, &req);
            assert_eq!(
                produce_acks_and_timeout(&frame, at, version),
                Some((0, 5)),
                "v{version}"
            );
        }
    }

    #[test]
    fn fetch_isolation_level_every_version() {
        for version in 4..=18 {
            for level in [0i8, 1] {
                let req = FetchRequest::default()
                    .with_max_wait_ms(500)
                    .with_min_bytes(1)
                    .with_max_bytes(7)
                    .with_isolation_level(level);
                let (frame, at) = request_bytes(ApiKey::Fetch, version, &req);
                assert_eq!(
                    fetch_isolation_level(&frame, at, version),
                    Some(level),
                    "v{version}"
                );
            }
        }
    }

    #[test]
    fn fetch_max_wait_every_version() {
        for version in 4..=18 {
            let req = FetchRequest::default().with_max_wait_ms(500);
            let (frame, at) = request_bytes(ApiKey::Fetch, version, &req);
            assert_eq!(fetch_max_wait(&frame, at, version), Some(500), "v{version}");
        }
    }

    #[test]
    fn join_group_rebalance_timeout_every_version() {
        for version in 0..=9 {
            let req = JoinGroupRequest::default()
                .with_group_id(StrBytes::from_static_str("connect-pg-sink").into())
                .with_session_timeout_ms(6000)
                .with_rebalance_timeout_ms(if version >= 1 { 60000 } else { -1 });
            let (frame, at) = request_bytes(ApiKey::JoinGroup, version, &req);
            let want = if version >= 1 { 60000 } else { 6000 };
            assert_eq!(
                join_group_rebalance_timeout(&frame, at, version),
                Some(want),
                "v{version}"
            );
        }
    }

    #[test]
    fn fetch_max_bytes_is_capped_in_place_every_version() {
        for version in 4..=17 {
            let req = FetchRequest::default()
                .with_max_wait_ms(500)
                .with_min_bytes(1)
                .with_max_bytes(52_428_800);
            let (frame, at) = request_bytes(ApiKey::Fetch, version, &req);
            let mut frame = BytesMut::from(&frame[..]);
            assert_eq!(
                cap_fetch_max_bytes(&mut frame, at, version, 1000),
                Some(52_428_800)
            );
            let head = crate::codec::RequestHead::peek(&frame).unwrap();
            let back: FetchRequest = decode_request(&frame, &head).unwrap();
            assert_eq!(
                (back.max_bytes, back.max_wait_ms, back.min_bytes),
                (1000, 500, 1),
                "v{version}"
            );
            assert_eq!(
                cap_fetch_max_bytes(&mut frame, at, version, 5000),
                None,
                "never raised"
            );
        }
    }

    #[test]
    fn throttle_time_is_raised_never_lowered_every_version() {
        use kafka_protocol::messages::produce_response::{
            PartitionProduceResponse, TopicProduceResponse,
        };
        use kafka_protocol::messages::{FetchResponse, ProduceResponse};
        fn frame<T: Encodable>(api: ApiKey, version: i16, msg: &T) -> Bytes {
            let mut out = BytesMut::new();
            out.put_i32(7);
            if api.response_header_version(version) >= 1 {
                out.put_u8(0);
            }
            msg.encode(&mut out, version).unwrap();
            out.freeze()
        }
        for version in 3..=13 {
            let mut topic = TopicProduceResponse::default();
            if version < 13 {
                topic.name = StrBytes::from_static_str("t").into();
            }
            let topic = topic.with_partition_responses(vec![
                PartitionProduceResponse::default().with_base_offset(42)
            ]);
            let resp = ProduceResponse::default()
                .with_responses(vec![topic])
                .with_throttle_time_ms(10);
            let f = frame(ApiKey::Produce, version, &resp);
            let out = raise_throttle_time(ApiKey::Produce, version, &f, 900)
                .unwrap()
                .unwrap();
            let back: ProduceResponse = decode_response(ApiKey::Produce, version, &out).unwrap();
            assert_eq!(back.throttle_time_ms, 900, "v{version}");
            if version < 13 {
                // v13 names topics by id: the name is not on the wire.
                assert_eq!(back.responses, resp.responses, "v{version}");
            }
            assert!(raise_throttle_time(ApiKey::Produce, version, &f, 5)
                .unwrap()
                .is_none());
        }
        for version in 4..=17 {
            let resp = FetchResponse::default()
                .with_throttle_time_ms(10)
                .with_session_id(if version >= 7 { 3 } else { 0 });
            let f = frame(ApiKey::Fetch, version, &resp);
            let out = raise_throttle_time(ApiKey::Fetch, version, &f, 900)
                .unwrap()
                .unwrap();
            let back: FetchResponse = decode_response(ApiKey::Fetch, version, &out).unwrap();
            assert_eq!(
                (back.throttle_time_ms, back.session_id),
                (900, if version >= 7 { 3 } else { 0 }),
                "v{version}"
            );
            assert!(raise_throttle_time(ApiKey::Fetch, version, &f, 5)
                .unwrap()
                .is_none());
        }
    }

    #[test]
    fn truncated_requests_give_none() {
        assert_eq!(produce_acks_and_timeout(&[0, 5], 0, 3), None);
        assert_eq!(fetch_max_wait(&[0, 0, 0], 0, 15), None);
    }
}
