//! Clients only ever see the proxy: every broker address a response carries is
//! replaced by the proxy's address for that node.
//!
//! Address-bearing responses (apache/kafka, as Kroxylicious' BrokerAddressFilter
//! lists them): Metadata `brokers`, FindCoordinator (the v0-3 single node and the
//! v4+ `coordinators` list), DescribeCluster `brokers`, and the KIP-951
//! `node_endpoints` of Produce v10+ and Fetch v16+, and the same field of the
//! KIP-932 ShareFetch and ShareAcknowledge. Node ids and racks stay.

use bytes::Bytes;
use kafka_protocol::messages::{
    ApiKey, DescribeClusterResponse, FetchResponse, FindCoordinatorResponse, MetadataResponse,
    ProduceResponse, ShareAcknowledgeResponse, ShareFetchResponse,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use std::sync::atomic::Ordering::Relaxed;

use super::{on_response, Call, Exchange, Filter};
use crate::error::Error;
use crate::message::{Bounded, ResponseFrame};
use crate::telemetry::Metrics;
use crate::topology::Topology;

/// Where a node's proxy port comes from: the [`Topology`] in the proxy; a
/// fixed map in the fuzz target, which would otherwise fsync a store for
/// every node id it makes up.
pub trait PortMap {
    /// The proxy port for an upstream broker, learnt if new.
    fn learn(&self, node_id: i32, host: &str, port: i32) -> Result<u16, Error>;
}

impl PortMap for Topology {
    fn learn(&self, node_id: i32, host: &str, port: i32) -> Result<u16, Error> {
        Topology::learn(self, node_id, host, port)
    }
}

/// What a rewrite needs: where brokers are really, and what clients must see.
pub struct Rewriter<'a> {
    pub topology: &'a dyn PortMap,
    pub advertised_host: &'a StrBytes,
}

impl Rewriter<'_> {
    /// The proxy's (host, port) for an upstream broker; learns it if new.
    fn map(&self, node_id: i32, host: &mut StrBytes, port: &mut i32) -> Result<(), Error> {
        let proxy_port = self.topology.learn(node_id, host.as_str(), *port)?;
        *host = self.advertised_host.clone();
        *port = i32::from(proxy_port);
        Ok(())
    }

    /// Whether this response type can carry a broker address.
    pub fn applies(api: ApiKey, version: i16) -> bool {
        match api {
            ApiKey::Metadata | ApiKey::FindCoordinator | ApiKey::DescribeCluster => true,
            ApiKey::ShareFetch | ApiKey::ShareAcknowledge => true,
            ApiKey::Produce => version >= 10,
            ApiKey::Fetch => version >= 16,
            _ => false,
        }
    }

    /// Rewrites a response frame body. `None`: nothing to change, forward
    /// the original bytes.
    pub fn rewrite(
        &self,
        api: ApiKey,
        version: i16,
        frame: &Bytes,
    ) -> Result<Option<Bytes>, Error> {
        let mut frame = ResponseFrame::new(frame.clone());
        self.rewrite_in(api, version, &mut frame)?;
        frame.into_changed()
    }

    /// Rewrites the addresses of a response on its way up the stack; its
    /// message is decoded (once, shared with the other filters) only for
    /// the APIs that carry addresses.
    pub fn rewrite_in(
        &self,
        api: ApiKey,
        version: i16,
        frame: &mut ResponseFrame,
    ) -> Result<(), Error> {
        // Each of these names its leader endpoints the same way.
        macro_rules! endpoints {
            ($message:ty) => {
                self.endpoints::<$message, _>(
                    frame,
                    api,
                    version,
                    |m| &mut m.node_endpoints,
                    |e| (e.node_id.0, &mut e.host, &mut e.port),
                )?
            };
        }
        match api {
            ApiKey::Metadata => {
                let resp = frame.message_mut::<MetadataResponse>(api, version)?;
                for b in &mut resp.brokers {
                    self.map(b.node_id.0, &mut b.host, &mut b.port)?;
                }
            }
            ApiKey::FindCoordinator => {
                let resp = frame.message::<FindCoordinatorResponse>(api, version)?;
                // v0-3: one coordinator; on error node_id is -1 and host empty.
                let one = version < 4 && resp.node_id.0 >= 0;
                if !one && resp.coordinators.iter().all(|c| c.node_id.0 < 0) {
                    return Ok(());
                }
                let resp = frame.message_mut::<FindCoordinatorResponse>(api, version)?;
                if one {
                    self.map(resp.node_id.0, &mut resp.host, &mut resp.port)?;
                }
                for c in &mut resp.coordinators {
                    if c.node_id.0 >= 0 {
                        self.map(c.node_id.0, &mut c.host, &mut c.port)?;
                    }
                }
            }
            ApiKey::DescribeCluster => {
                let resp = frame.message_mut::<DescribeClusterResponse>(api, version)?;
                for b in &mut resp.brokers {
                    self.map(b.broker_id.0, &mut b.host, &mut b.port)?;
                }
            }
            // KIP-951: endpoints only come with NOT_LEADER_OR_FOLLOWER and
            // friends, so most Produce/Fetch responses decode, find none, and
            // leave as the bytes they came in.
            ApiKey::Produce if version >= 10 => endpoints!(ProduceResponse),
            ApiKey::Fetch if version >= 16 => endpoints!(FetchResponse),
            // KIP-932: share consumers follow these like KIP-951 endpoints.
            ApiKey::ShareFetch => endpoints!(ShareFetchResponse),
            ApiKey::ShareAcknowledge => endpoints!(ShareAcknowledgeResponse),
            _ => {}
        }
        Ok(())
    }
}

impl Rewriter<'_> {
    /// A response's KIP-951 / KIP-932 leader endpoints: the message changes
    /// only when it carries some.
    fn endpoints<T, E>(
        &self,
        frame: &mut ResponseFrame,
        api: ApiKey,
        version: i16,
        list: fn(&mut T) -> &mut Vec<E>,
        address: fn(&mut E) -> (i32, &mut StrBytes, &mut i32),
    ) -> Result<(), Error>
    where
        T: Decodable + Encodable + Bounded + Send + 'static,
    {
        let mut resp = frame.take_response::<T>(api, version)?;
        let endpoints = list(&mut resp.msg);
        let changed = !endpoints.is_empty();
        for e in endpoints {
            let (node_id, host, port) = address(e);
            self.map(node_id, host, port)?;
        }
        frame.put_response(resp, changed);
        Ok(())
    }
}

/// The leak check: does this response still carry an upstream address? Looks
/// for the broker's host bytes followed by its port as a big-endian int32,
/// which is how every address-bearing response encodes a (host, port) pair,
/// classic or compact. A byte scan, so it catches APIs nobody thought of.
pub fn carries_upstream_address(frame: &[u8], upstream: &[(String, i32)]) -> bool {
    upstream.iter().any(|(host, port)| {
        let mut needle = Vec::with_capacity(host.len() + 4);
        needle.extend_from_slice(host.as_bytes());
        needle.extend_from_slice(&port.to_be_bytes());
        frame.windows(needle.len()).any(|w| w == needle.as_slice())
    })
}

// === The filters ===

/// Rewrites every broker address a response carries to the proxy's.
#[derive(Clone)]
pub struct BrokerAddresses<'a> {
    topology: &'a Topology,
    advertised_host: &'a StrBytes,
}

impl<'a> BrokerAddresses<'a> {
    pub fn new(topology: &'a Topology, advertised_host: &'a StrBytes) -> Self {
        BrokerAddresses {
            topology,
            advertised_host,
        }
    }
}

impl<'a> Filter<'a> for BrokerAddresses<'a> {
    const NAME: &'static str = "broker addresses";

    fn call(&self, ex: Exchange, next: impl FnOnce(Exchange) -> Call<'a> + Send + 'a) -> Call<'a> {
        let (api, version) = (ex.head.api_key, ex.head.api_version);
        let call = next(ex);
        if !Rewriter::applies(api, version) {
            return call;
        }
        let (topology, advertised_host) = (self.topology, self.advertised_host);
        on_response(call, move |mut reply| async move {
            let rewriter = Rewriter {
                topology,
                advertised_host,
            };
            rewriter.rewrite_in(api, version, &mut reply.frame)?;
            Ok(reply)
        })
    }
}

/// `diagnostics.leak_check`: counts and logs a response that still carries
/// an upstream broker's address.
#[derive(Clone)]
pub struct LeakCheck<'a> {
    /// `None`: the check is off.
    on: Option<(&'a Topology, &'a Metrics)>,
}

impl<'a> LeakCheck<'a> {
    pub fn new(on: Option<(&'a Topology, &'a Metrics)>) -> Self {
        LeakCheck { on }
    }
}

impl<'a> Filter<'a> for LeakCheck<'a> {
    const NAME: &'static str = "leak check";

    fn call(&self, ex: Exchange, next: impl FnOnce(Exchange) -> Call<'a> + Send + 'a) -> Call<'a> {
        let (api, version) = (ex.head.api_key, ex.head.api_version);
        let call = next(ex);
        let Some((topology, metrics)) = self.on else {
            return call;
        };
        on_response(call, move |mut reply| async move {
            if carries_upstream_address(reply.frame.bytes()?, &topology.upstream_addresses()) {
                metrics.address_leaks.fetch_add(1, Relaxed);
                tracing::error!(api_key = ?api, api_version = version, "response carries an upstream broker address");
            }
            Ok(reply)
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::message::{decode_response, encode_local_response};
    use crate::store::Store;
    use kafka_protocol::messages::find_coordinator_response::Coordinator;
    use kafka_protocol::messages::metadata_response::MetadataResponseBroker;
    use kafka_protocol::messages::BrokerId;
    use std::sync::Arc;

    pub(crate) fn topology() -> (tempfile::TempDir, Topology) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        (dir, Topology::load(19093..=19199, store).unwrap())
    }

    pub(crate) fn upstream() -> Vec<(String, i32)> {
        vec![("10.1.2.3".to_string(), 9092)]
    }

    #[test]
    fn metadata_every_version() {
        let (_d, t) = topology();
        let host = StrBytes::from_static_str("proxy.local");
        let r = Rewriter {
            topology: &t,
            advertised_host: &host,
        };
        for version in 0..=13 {
            let resp =
                MetadataResponse::default().with_brokers(vec![MetadataResponseBroker::default()
                    .with_node_id(BrokerId(111))
                    .with_host(StrBytes::from_static_str("10.1.2.3"))
                    .with_port(9092)]);
            let hv = ApiKey::Metadata.response_header_version(version);
            let frame = encode_local_response(ApiKey::Metadata, version, hv, 9, &resp).unwrap();
            assert!(carries_upstream_address(&frame, &upstream()));
            let out = r
                .rewrite(ApiKey::Metadata, version, &frame)
                .unwrap()
                .unwrap();
            assert!(!carries_upstream_address(&out, &upstream()), "v{version}");
            assert_eq!(&out[..4], &9i32.to_be_bytes(), "correlation id kept");
            let back: MetadataResponse = decode_response(ApiKey::Metadata, version, &out).unwrap();
            assert_eq!(back.brokers[0].host.as_str(), "proxy.local");
            assert_eq!(back.brokers[0].port, 19093);
            assert_eq!(back.brokers[0].node_id.0, 111);
        }
    }

    #[test]
    fn find_coordinator_both_shapes_and_errors() {
        let (_d, t) = topology();
        let host = StrBytes::from_static_str("127.0.0.1");
        let r = Rewriter {
            topology: &t,
            advertised_host: &host,
        };
        for version in 0..=6 {
            let resp = if version < 4 {
                FindCoordinatorResponse::default()
                    .with_node_id(BrokerId(5))
                    .with_host(StrBytes::from_static_str("10.1.2.3"))
                    .with_port(9092)
            } else {
                FindCoordinatorResponse::default().with_coordinators(vec![
                    Coordinator::default()
                        .with_key(StrBytes::from_static_str("connect-pg-sink"))
                        .with_node_id(BrokerId(5))
                        .with_host(StrBytes::from_static_str("10.1.2.3"))
                        .with_port(9092),
                    Coordinator::default()
                        .with_key(StrBytes::from_static_str("missing"))
                        .with_node_id(BrokerId(-1))
                        .with_error_code(15),
                ])
            };
            let hv = ApiKey::FindCoordinator.response_header_version(version);
            let frame =
                encode_local_response(ApiKey::FindCoordinator, version, hv, 1, &resp).unwrap();
            let out = r
                .rewrite(ApiKey::FindCoordinator, version, &frame)
                .unwrap()
                .unwrap();
            assert!(!carries_upstream_address(&out, &upstream()), "v{version}");
            let back: FindCoordinatorResponse =
                decode_response(ApiKey::FindCoordinator, version, &out).unwrap();
            // Node 5 takes start + 5.
            if version < 4 {
                assert_eq!(back.port, 19098);
            } else {
                assert_eq!(back.coordinators[0].port, 19098);
                assert_eq!(
                    back.coordinators[1].node_id.0, -1,
                    "error entries untouched"
                );
                assert_eq!(back.coordinators[1].port, 0);
            }
        }
        // A v0-3 error answer has nothing to rewrite: the original bytes go.
        let resp = FindCoordinatorResponse::default()
            .with_error_code(15)
            .with_node_id(BrokerId(-1));
        let frame = encode_local_response(ApiKey::FindCoordinator, 3, 1, 1, &resp).unwrap();
        assert!(r
            .rewrite(ApiKey::FindCoordinator, 3, &frame)
            .unwrap()
            .is_none());
    }

    #[test]
    fn produce_and_fetch_endpoints_only_when_present() {
        use kafka_protocol::messages::produce_response::NodeEndpoint;
        let (_d, t) = topology();
        let host = StrBytes::from_static_str("127.0.0.1");
        let r = Rewriter {
            topology: &t,
            advertised_host: &host,
        };
        let empty = ProduceResponse::default();
        let frame = encode_local_response(ApiKey::Produce, 10, 1, 1, &empty).unwrap();
        assert!(r.rewrite(ApiKey::Produce, 10, &frame).unwrap().is_none());
        let with = ProduceResponse::default().with_node_endpoints(vec![NodeEndpoint::default()
            .with_node_id(BrokerId(2))
            .with_host(StrBytes::from_static_str("10.1.2.3"))
            .with_port(9092)]);
        let frame = encode_local_response(ApiKey::Produce, 11, 1, 1, &with).unwrap();
        let out = r.rewrite(ApiKey::Produce, 11, &frame).unwrap().unwrap();
        assert!(!carries_upstream_address(&out, &upstream()));
        assert!(!Rewriter::applies(ApiKey::Produce, 9));
        assert!(Rewriter::applies(ApiKey::Fetch, 16));

        // Under the dedup filter, which read the same response first: one
        // decode for both, one encode.
        let mut shared = ResponseFrame::new(frame);
        let before = crate::message::decodes();
        shared
            .message::<ProduceResponse>(ApiKey::Produce, 11)
            .unwrap();
        r.rewrite_in(ApiKey::Produce, 11, &mut shared).unwrap();
        let m = shared
            .message::<ProduceResponse>(ApiKey::Produce, 11)
            .unwrap();
        assert_eq!(m.node_endpoints[0].host, host);
        assert_eq!(crate::message::decodes() - before, 1);
        assert_eq!(shared.into_bytes().unwrap(), out);
    }
}
