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
mod produce_splice;

pub use bounds::Bounded;
pub use fields::{
    cap_fetch_max_bytes, fetch_isolation_level, fetch_max_wait, join_group_rebalance_timeout,
    produce_acks_and_timeout, raise_throttle_time,
};
pub use produce_splice::{splice_produce, PartitionEdit};

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

#[cfg(test)]
thread_local! {
    /// Responses decoded on this thread (each test runs on its own).
    static DECODES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Responses decoded so far on this thread.
#[cfg(test)]
pub(crate) fn decodes() -> usize {
    DECODES.with(|n| n.get())
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
        #[cfg(test)]
        DECODES.with(|n| n.set(n.get() + 1));
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

/// A response frame body on its way up the stack: the bytes as they came,
/// and its message, decoded once for every filter that reads it (each
/// asks with [`message`](Self::message) or [`message_mut`](Self::message_mut))
/// and encoded again once, only if one changed it. A filter that works on
/// bytes ([`bytes`](Self::bytes), [`set_bytes`](Self::set_bytes)) gets them
/// as they are now.
pub struct ResponseFrame {
    /// `None` while the decoded message has changes not yet encoded.
    bytes: Option<Bytes>,
    decoded: Option<Box<dyn Held>>,
    changed: bool,
}

/// A decoded [`Response`] of any message type.
trait Held: Send {
    fn encode(&self) -> Result<Bytes, Error>;
    fn as_any(&self) -> &dyn std::any::Any;
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any;
    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any>;
}

impl<T: Encodable + Send + 'static> Held for Response<T> {
    fn encode(&self) -> Result<Bytes, Error> {
        Response::encode(self)
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }

    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any> {
        self
    }
}

impl ResponseFrame {
    pub fn new(bytes: Bytes) -> Self {
        ResponseFrame {
            bytes: Some(bytes),
            decoded: None,
            changed: false,
        }
    }

    /// The frame body as it is now (encoded again if its message changed).
    pub fn bytes(&mut self) -> Result<&Bytes, Error> {
        if self.bytes.is_none() {
            let held = self
                .decoded
                .as_ref()
                .expect("a frame holds bytes or a message");
            self.bytes = Some(held.encode()?);
        }
        Ok(self.bytes.as_ref().expect("just set"))
    }

    /// New bytes for the whole frame body (the decoded message goes).
    pub fn set_bytes(&mut self, bytes: Bytes) {
        self.bytes = Some(bytes);
        self.decoded = None;
        self.changed = true;
    }

    /// The message, decoded on the first ask.
    pub fn message<T>(&mut self, api: ApiKey, version: i16) -> Result<&T, Error>
    where
        T: Decodable + Encodable + Bounded + Send + 'static,
    {
        Ok(&self.decoded_as::<T>(api, version)?.msg)
    }

    /// The message to change, decoded on the first ask; encoded again when
    /// the bytes are next asked for.
    pub fn message_mut<T>(&mut self, api: ApiKey, version: i16) -> Result<&mut T, Error>
    where
        T: Decodable + Encodable + Bounded + Send + 'static,
    {
        self.decoded_as::<T>(api, version)?;
        self.bytes = None;
        self.changed = true;
        let held = self.decoded.as_mut().expect("decoded above");
        Ok(&mut held
            .as_any_mut()
            .downcast_mut::<Response<T>>()
            .expect("decoded as T above")
            .msg)
    }

    fn decoded_as<T>(&mut self, api: ApiKey, version: i16) -> Result<&mut Response<T>, Error>
    where
        T: Decodable + Encodable + Bounded + Send + 'static,
    {
        let held = self
            .decoded
            .as_ref()
            .map(|h| h.as_any().is::<Response<T>>());
        if held != Some(true) {
            // Not decoded yet (or as another type): from the bytes as they are.
            let resp = Response::<T>::decode(api, version, self.bytes()?)?;
            self.decoded = Some(Box::new(resp));
        }
        let held = self.decoded.as_mut().expect("decoded above");
        Ok(held
            .as_any_mut()
            .downcast_mut::<Response<T>>()
            .expect("checked above"))
    }

    /// The decoded message taken out, for work across awaits; the frame
    /// keeps its bytes as they are. Give it back with
    /// [`put_response`](Self::put_response), or drop it to leave the frame
    /// as it was.
    pub fn take_response<T>(&mut self, api: ApiKey, version: i16) -> Result<Response<T>, Error>
    where
        T: Decodable + Encodable + Bounded + Send + 'static,
    {
        self.decoded_as::<T>(api, version)?;
        self.bytes()?;
        let held = self.decoded.take().expect("decoded above");
        let any: Box<dyn std::any::Any> = held.into_any();
        Ok(*any.downcast::<Response<T>>().expect("decoded as T above"))
    }

    /// Gives back a message [`take_response`](Self::take_response) took;
    /// `changed`: it is encoded again when the bytes are next asked for.
    pub fn put_response<T: Encodable + Send + 'static>(
        &mut self,
        resp: Response<T>,
        changed: bool,
    ) {
        self.decoded = Some(Box::new(resp));
        if changed {
            self.bytes = None;
            self.changed = true;
        }
    }

    /// Whether a filter changed it.
    pub fn changed(&self) -> bool {
        self.changed
    }

    /// The frame body to send.
    pub fn into_bytes(mut self) -> Result<Bytes, Error> {
        self.bytes()?;
        Ok(self.bytes.expect("set by bytes()"))
    }

    /// The new frame body if a filter changed it, `None` if not.
    pub fn into_changed(self) -> Result<Option<Bytes>, Error> {
        match self.changed {
            true => self.into_bytes().map(Some),
            false => Ok(None),
        }
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
    if !bounded::<T>(body, head) {
        return None;
    }
    T::decode(&mut body, head.api_version).ok()
}

/// Whether the bounds check lets a request body be decoded.
fn bounded<T: Bounded>(body: &[u8], head: &crate::codec::RequestHead) -> bool {
    match bounds::check(T::SCHEMA, head.api_version, body) {
        Ok(_) => true,
        Err(refused) => {
            tracing::debug!(
                api_key = ?head.api_key,
                version = head.api_version,
                %refused,
                "request not decoded"
            );
            false
        }
    }
}

/// [`decode_request`] from shared bytes: its `Bytes` fields (a Produce's
/// records) are slices of `frame`, not copies.
pub fn decode_request_shared<T: Decodable + Bounded>(
    frame: &Bytes,
    head: &crate::codec::RequestHead,
) -> Option<T> {
    if !bounded::<T>(frame.get(head.body_offset..)?, head) {
        return None;
    }
    T::decode(&mut frame.slice(head.body_offset..), head.api_version).ok()
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
    use kafka_protocol::messages::{
        FetchRequest, JoinGroupRequest, ProduceRequest, ProduceResponse,
    };
    use kafka_protocol::protocol::StrBytes;

    fn produce_response_frame(version: i16, throttle: i32) -> Bytes {
        let resp = ProduceResponse::default().with_throttle_time_ms(throttle);
        encode_local_response(ApiKey::Produce, version, 1, 7, &resp).unwrap()
    }

    #[test]
    fn a_response_is_decoded_once_however_many_read_it() {
        let bytes = produce_response_frame(11, 10);
        let mut frame = ResponseFrame::new(bytes.clone());
        let before = decodes();
        for _ in 0..3 {
            let m = frame
                .message::<ProduceResponse>(ApiKey::Produce, 11)
                .unwrap();
            assert_eq!(m.throttle_time_ms, 10);
        }
        assert_eq!(decodes() - before, 1);
        // Read only: the bytes are the very ones that came.
        assert_eq!(frame.bytes().unwrap().as_ptr(), bytes.as_ptr());
        assert!(!frame.changed());
        // Changed: the next reader sees the change without decoding again,
        // and the bytes are encoded once, with it.
        frame
            .message_mut::<ProduceResponse>(ApiKey::Produce, 11)
            .unwrap()
            .throttle_time_ms = 900;
        let m = frame
            .message::<ProduceResponse>(ApiKey::Produce, 11)
            .unwrap();
        assert_eq!(m.throttle_time_ms, 900);
        assert_eq!(decodes() - before, 1);
        let out = frame.into_changed().unwrap().expect("changed");
        let back: ProduceResponse = decode_response(ApiKey::Produce, 11, &out).unwrap();
        assert_eq!(back.throttle_time_ms, 900);
    }

    #[test]
    fn a_taken_message_not_given_back_leaves_the_frame_as_it_came() {
        let bytes = produce_response_frame(11, 10);
        let mut frame = ResponseFrame::new(bytes.clone());
        let mut taken = frame
            .take_response::<ProduceResponse>(ApiKey::Produce, 11)
            .unwrap();
        taken.msg.throttle_time_ms = 5; // then dropped, as after a failed step
        drop(taken);
        let m = frame
            .message::<ProduceResponse>(ApiKey::Produce, 11)
            .unwrap();
        assert_eq!(m.throttle_time_ms, 10);
        assert_eq!(frame.into_changed().unwrap(), None);

        let mut frame = ResponseFrame::new(bytes);
        let mut taken = frame
            .take_response::<ProduceResponse>(ApiKey::Produce, 11)
            .unwrap();
        taken.msg.throttle_time_ms = 5;
        frame.put_response(taken, true);
        let out = frame.into_changed().unwrap().expect("changed");
        let back: ProduceResponse = decode_response(ApiKey::Produce, 11, &out).unwrap();
        assert_eq!(back.throttle_time_ms, 5);
    }

    #[test]
    fn bytes_set_by_a_filter_are_what_the_next_one_decodes() {
        let mut frame = ResponseFrame::new(produce_response_frame(11, 10));
        frame
            .message::<ProduceResponse>(ApiKey::Produce, 11)
            .unwrap();
        frame.set_bytes(produce_response_frame(11, 77));
        let m = frame
            .message::<ProduceResponse>(ApiKey::Produce, 11)
            .unwrap();
        assert_eq!(m.throttle_time_ms, 77);
    }

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

    /// The frame `raise_throttle_time` leaves, if it changed it.
    fn raised(api: ApiKey, version: i16, f: &Bytes, ms: i32) -> Result<Option<Bytes>, Error> {
        let mut frame = ResponseFrame::new(f.clone());
        raise_throttle_time(api, version, &mut frame, ms)?;
        frame.into_changed()
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
            let out = raised(ApiKey::Produce, version, &f, 900).unwrap().unwrap();
            let back: ProduceResponse = decode_response(ApiKey::Produce, version, &out).unwrap();
            assert_eq!(back.throttle_time_ms, 900, "v{version}");
            if version < 13 {
                // v13 names topics by id: the name is not on the wire.
                assert_eq!(back.responses, resp.responses, "v{version}");
            }
            assert!(raised(ApiKey::Produce, version, &f, 5).unwrap().is_none());
        }
        for version in 4..=17 {
            let resp = FetchResponse::default()
                .with_throttle_time_ms(10)
                .with_session_id(if version >= 7 { 3 } else { 0 });
            let f = frame(ApiKey::Fetch, version, &resp);
            let out = raised(ApiKey::Fetch, version, &f, 900).unwrap().unwrap();
            let back: FetchResponse = decode_response(ApiKey::Fetch, version, &out).unwrap();
            assert_eq!(
                (back.throttle_time_ms, back.session_id),
                (900, if version >= 7 { 3 } else { 0 }),
                "v{version}"
            );
            assert!(raised(ApiKey::Fetch, version, &f, 5).unwrap().is_none());
        }
    }

    #[test]
    fn truncated_requests_give_none() {
        assert_eq!(produce_acks_and_timeout(&[0, 5], 0, 3), None);
        assert_eq!(fetch_max_wait(&[0, 0, 0], 0, 15), None);
    }
}
