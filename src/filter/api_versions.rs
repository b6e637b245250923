//! ApiVersions: advertise only what both the broker and the proxy can handle.
//!
//! For every API key the proxy knows, the advertised range is the broker's
//! range cut to the versions the kafka-protocol crate knows: a client must
//! never pick a version whose header the proxy cannot read, nor one a decoding
//! filter cannot decode. Keys the crate does not know are removed (a request
//! with one would be refused), but for the APIs that pass through raw
//! (`codec::RAW_APIS`: Kafka Streams' StreamsGroup APIs, KIP-1071), which
//! keep the broker's range up to the newest version whose schema was
//! checked. Produce keeps the broker's minimum (KAFKA-18659:
//! clients read Produce min 0 as "this broker still speaks v0-2"; such requests
//! pass through raw). Produce stops at v12: v13 names topics by id only
//! (KIP-516), and the dedup rules match topic names. SaslHandshake starts at
//! v1: after a v0 handshake the client sends raw SASL tokens without Kafka
//! framing, which the proxy cannot read. Features and their epoch pass
//! through unchanged.
//!
//! What is advertised is also what is accepted: a request above
//! [`max_version`] (or a SaslHandshake v0) closes its connection in the
//! codec, as Kafka 4.4 closes one whose version it does not enable
//! (`Processor.parseRequestHeader` throws, `processChannelException` closes).

use std::collections::HashMap;
use std::sync::RwLock;

use bytes::Bytes;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse};

use super::{on_response, Call, Exchange, Filter, Pending};
use crate::codec::{RequestHead, RAW_APIS};
use crate::error::Error;
use crate::message::{self, Response};

/// ApiVersions versions the proxy can answer; above this, clients get the v0
/// UNSUPPORTED_VERSION answer and retry lower (KIP-511).
pub const MAX_VERSION: i16 = 4;

/// Kafka's UNSUPPORTED_VERSION error code.
pub const UNSUPPORTED_VERSION: i16 = 35;

pub use crate::codec::{max_version, min_version, MAX_PRODUCE_VERSION};

/// Cuts a broker's ranges to what the proxy handles.
pub fn intersect(resp: &mut ApiVersionsResponse) {
    resp.api_keys.retain_mut(|v| {
        let Some((min, max)) = proxy_range(v.api_key) else {
            return false;
        };
        if v.api_key != ApiKey::Produce as i16 {
            v.min_version = v.min_version.max(min);
        }
        v.max_version = v.max_version.min(max);
        v.min_version <= v.max_version
    });
}

/// The versions of `api_key` the proxy handles; `None`: none.
fn proxy_range(api_key: i16) -> Option<(i16, i16)> {
    match ApiKey::try_from(api_key) {
        Ok(key) => Some((min_version(key), max_version(key))),
        Err(()) => RAW_APIS
            .iter()
            .find(|raw| raw.api_key == api_key)
            .map(|raw| (0, raw.max_version)),
    }
}

/// The ranges the proxy itself knows, for a local answer before any broker
/// answer is cached.
pub fn proxy_ranges() -> Vec<ApiVersion> {
    ApiKey::iter()
        .map(|key| {
            ApiVersion::default()
                .with_api_key(key as i16)
                .with_min_version(min_version(key))
                .with_max_version(max_version(key))
        })
        .collect()
}

/// The v0 answer to an ApiVersions request newer than the proxy knows, the
/// way brokers answer it (`ApiVersionsRequest.getErrorResponse`):
/// UNSUPPORTED_VERSION plus ApiVersions' own range only, so the client
/// retries with the highest version both sides speak. (With every range,
/// franz-go takes the answer as final and never sends the v3+ request that
/// names it, KIP-511.)
pub fn unsupported_version_answer(ranges: Vec<ApiVersion>) -> ApiVersionsResponse {
    ApiVersionsResponse::default()
        .with_error_code(UNSUPPORTED_VERSION)
        .with_api_keys(
            ranges
                .into_iter()
                .filter(|r| r.api_key == ApiKey::ApiVersions as i16)
                .collect(),
        )
}

// === The filter ===

/// The ranges last advertised to a client, per broker, for local
/// UNSUPPORTED_VERSION answers: during a rolling upgrade brokers advertise
/// different ranges, and a client is answered its own broker's (audit D5).
#[derive(Debug, Default)]
pub struct Advertised(RwLock<HashMap<String, Vec<ApiVersion>>>);

/// The api versions filter: answers too-new ApiVersions requests locally,
/// cuts the broker's ranges on the way back.
#[derive(Clone)]
pub struct ApiVersions<'a> {
    advertised: &'a Advertised,
    /// The connection's broker.
    broker: &'a str,
}

// === impl ApiVersions ===

impl<'a> ApiVersions<'a> {
    pub fn new(advertised: &'a Advertised, broker: &'a str) -> Self {
        ApiVersions { advertised, broker }
    }
}

impl<'a> Filter<'a> for ApiVersions<'a> {
    const NAME: &'static str = "api versions";

    fn call(&self, ex: Exchange, next: impl FnOnce(Exchange) -> Call<'a> + Send + 'a) -> Call<'a> {
        if ex.head.api_key != ApiKey::ApiVersions {
            return next(ex);
        }
        let (advertised, broker) = (self.advertised, self.broker);
        if ex.head.api_version > MAX_VERSION {
            let answer = answer_unsupported(advertised, broker, &ex.head).map(Pending::Local);
            return Box::pin(std::future::ready(answer));
        }
        let version = ex.head.api_version;
        on_response(next(ex), move |mut reply| async move {
            let cut = cut_ranges(advertised, broker, version, reply.frame.bytes()?)?;
            reply.frame.set_bytes(cut);
            Ok(reply)
        })
    }
}

/// The broker's ApiVersions answer, cut to what the proxy handles.
fn cut_ranges(
    advertised: &Advertised,
    broker: &str,
    version: i16,
    frame: &Bytes,
) -> Result<Bytes, Error> {
    let api = ApiKey::ApiVersions;
    let mut resp: Response<ApiVersionsResponse> = match Response::decode(api, version, frame) {
        Ok(r) => r,
        // A broker that does not speak this version answers in v0 with an
        // error (KIP-511); cut its ranges all the same.
        Err(_) if version > 0 => {
            let mut r: Response<ApiVersionsResponse> = Response::decode(api, 0, frame)?;
            intersect(&mut r.msg);
            return r.encode();
        }
        Err(e) => return Err(e),
    };
    intersect(&mut resp.msg);
    if resp.msg.error_code == 0 {
        advertised
            .0
            .write()
            .expect("versions lock")
            .insert(broker.to_string(), resp.msg.api_keys.clone());
    }
    resp.encode()
}

fn answer_unsupported(
    advertised: &Advertised,
    broker: &str,
    head: &RequestHead,
) -> Result<Bytes, Error> {
    let ranges = advertised
        .0
        .read()
        .expect("versions lock")
        .get(broker)
        .cloned()
        .unwrap_or_else(proxy_ranges);
    let resp = unsupported_version_answer(ranges);
    tracing::debug!(
        api_version = head.api_version,
        "ApiVersions newer than the proxy knows: answered v0 UNSUPPORTED_VERSION"
    );
    // The v0 answer always uses response header v0.
    message::encode_local_response(ApiKey::ApiVersions, 0, 0, head.correlation_id, &resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(key: i16, min: i16, max: i16) -> ApiVersion {
        ApiVersion::default()
            .with_api_key(key)
            .with_min_version(min)
            .with_max_version(max)
    }

    #[test]
    fn intersects_with_the_crate_ranges() {
        let mut resp = ApiVersionsResponse::default().with_api_keys(vec![
            v(0, 0, 99),   // Produce: broker min kept, max cut to v12 (no topic ids)
            v(1, 0, 17),   // Fetch: min raised to what the crate decodes
            v(3, 0, 12),   // Metadata: broker's max is lower: kept
            v(18, 0, 4),   // ApiVersions
            v(17, 0, 1),   // SaslHandshake: v0 (raw tokens follow) not offered
            v(1000, 0, 1), // unknown key: removed
            v(2, 20, 30),  // ListOffsets: no overlap with 1-10: removed
            v(88, 0, 1),   // StreamsGroupHeartbeat: unknown to the crate, passed raw
            v(89, 0, 3),   // StreamsGroupDescribe: cut to the schema checked (v1)
            v(94, 0, 0),   // unknown to the crate and not passed raw: removed
        ]);
        intersect(&mut resp);
        let got: Vec<(i16, i16, i16)> = resp
            .api_keys
            .iter()
            .map(|a| (a.api_key, a.min_version, a.max_version))
            .collect();
        assert_eq!(
            got,
            vec![
                (0, 0, 12),
                (1, 4, 17),
                (3, 0, 12),
                (18, 0, 4),
                (17, 1, 1),
                (88, 0, 1),
                (89, 0, 1)
            ]
        );
    }

    /// Audit D5: during a rolling upgrade the brokers advertise different
    /// ranges; a too-new ApiVersions is answered with its own broker's.
    #[test]
    fn a_local_answer_carries_its_own_brokers_ranges() {
        let advertised = Advertised::default();
        let answer_of = |max: i16| {
            let resp =
                ApiVersionsResponse::default().with_api_keys(vec![v(0, 3, 12), v(18, 0, max)]);
            message::encode_local_response(ApiKey::ApiVersions, 3, 0, 1, &resp).unwrap()
        };
        cut_ranges(&advertised, "old:9092", 3, &answer_of(3)).unwrap();
        cut_ranges(&advertised, "new:9092", 3, &answer_of(4)).unwrap();
        let head = RequestHead {
            api_key: ApiKey::ApiVersions,
            api_version: MAX_VERSION + 1,
            correlation_id: 7,
            client_id: None,
            body_offset: 0,
        };
        let max_of = |broker: &str| {
            let bytes = answer_unsupported(&advertised, broker, &head).unwrap();
            let resp: Response<ApiVersionsResponse> =
                Response::decode(ApiKey::ApiVersions, 0, &bytes).unwrap();
            resp.msg
                .api_keys
                .iter()
                .find(|a| a.api_key == 18)
                .map(|a| a.max_version)
        };
        assert_eq!(max_of("old:9092"), Some(3));
        assert_eq!(max_of("new:9092"), Some(4));
        assert_eq!(max_of("unseen:9092"), Some(MAX_VERSION));
    }

    #[test]
    fn proxy_ranges_cover_every_key() {
        let ranges = proxy_ranges();
        assert!(ranges
            .iter()
            .any(|a| a.api_key == 18 && a.max_version == MAX_VERSION));
        assert_eq!(ranges.len(), ApiKey::iter().count());
    }
}
