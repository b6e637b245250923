//! The ordered filter stack, applied to each request and its response.
//!
//! ```text
//! request  → quota (in connection.rs, before these: a muted connection's or
//!            paused connector's Produce/Fetch held, bytes charged, Fetch
//!            max_bytes capped; quota.rs)
//!          → api versions (answer too-new versions locally)
//!          → produce acks / request waits (how long the broker may take)
//!          → identity (connector and task from the client id)
//!          → dedup (produce): tag, drop replays, answer wholly replayed requests
//!          → upstream
//! response ← dedup (produce): commit acknowledged keys, merge answered partitions
//!          ← dedup (fetch): learn first positions, remove later copies
//!          ← quota (in connection.rs, after these: Fetch bytes charged,
//!            throttle_time_ms raised to the proxy's throttle)
//!          ← api versions (intersect ranges)
//!          ← broker addresses (Metadata, FindCoordinator, DescribeCluster, KIP-951)
//!          ← leak check (diagnostics.leak_check)
//! ```
//!
//! A filter either leaves a message alone (its bytes travel untouched), changes
//! it (decode, edit, encode), or answers it locally. Only the APIs a filter
//! names are ever decoded.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{
    AddPartitionsToTxnRequest, ApiKey, ApiVersionsRequest, ApiVersionsResponse, EndTxnRequest,
    EndTxnResponse, SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest,
};
use kafka_protocol::protocol::StrBytes;

use crate::codec::RequestHead;
use crate::config::Config;
use crate::error::Error;
use crate::filter::api_versions;
use crate::filter::broker_address::{carries_upstream_address, Rewriter};
use crate::filter::dedup_fetch::{FetchDedup, FetchPlan};
use crate::filter::dedup_produce::{self, ProduceDedup, ProducePlan};
use crate::filter::sasl::SaslState;
use crate::idempotency::window::Producer;
use crate::identity::Identity;
use crate::message::{self, Response};
use crate::quota::Entity;
use crate::telemetry::Metrics;
use crate::topology::Topology;

/// What to do with a request.
pub enum RequestAction {
    /// Send it upstream. `None`: no response will come (Produce acks=0).
    Forward(BytesMut, Option<ResponsePlan>),
    /// Answer it ourselves, in its place in the response order.
    Answer(Bytes),
}

/// What the response of a forwarded request needs.
#[derive(Debug)]
pub struct ResponsePlan {
    pub api_key: ApiKey,
    pub api_version: i16,
    /// How long the broker may legitimately take: the request's own wait
    /// (Fetch max_wait_ms, Produce timeout_ms, JoinGroup rebalance_timeout_ms)
    /// plus `upstream.request_timeout`.
    pub wait: Duration,
    /// SaslAuthenticate: the principal this connection has if the broker
    /// answers without an error.
    pub authenticates: Option<String>,
    /// Produce with keys awaiting the broker's answer, or partitions the
    /// proxy answered itself.
    pub produce: Option<Box<ProducePlan>>,
    /// EndTxn: the producer and whether it commits, for the dedup filter to
    /// learn (or forget) the transaction's keys once the coordinator agrees.
    pub end_txn: Option<EndTxn>,
    /// Fetch, when a fetch rule is on: who reads, and how.
    pub fetch: Option<FetchPlan>,
    /// Produce and Fetch of a client with quotas: whom to charge the
    /// response to (Fetch), and the throttle already owed (Produce).
    pub quota: Option<QuotaCharge>,
}

/// An EndTxn on its way to the coordinator.
#[derive(Debug, Clone, Copy)]
pub struct EndTxn {
    pub producer: Producer,
    pub committed: bool,
    /// The connection it came on (`ConnState::id`).
    pub conn: u64,
    /// v5+: transactions v2 (KIP-890).
    pub v2: bool,
}

/// What the response of a Produce or Fetch owes to its client's quota.
pub struct QuotaCharge {
    pub entity: Arc<Entity>,
    /// Throttle the request itself left (Produce bytes, request rate).
    pub throttle: Duration,
}

impl std::fmt::Debug for QuotaCharge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuotaCharge")
            .field("entity", &self.entity.key)
            .field("throttle", &self.throttle)
            .finish()
    }
}

/// What a connection remembers between its requests.
#[derive(Debug, Default)]
pub struct ConnState {
    /// The last JoinGroup's rebalance timeout: a SyncGroup may be held by the
    /// coordinator that long too.
    rebalance_timeout: Option<Duration>,
    /// The SASL exchange so far, to learn the principal.
    sasl: SaslState,
    /// Who the client says it is (its first request's client id).
    identity: Option<Identity>,
    /// Produce-path dedup of this connection.
    session: dedup_produce::Session,
    /// This connection among the process's (0 until asked).
    id: u64,
}

impl ConnState {
    /// A number no other connection of this process has.
    fn id(&mut self) -> u64 {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        if self.id == 0 {
            self.id = NEXT.fetch_add(1, Relaxed);
        }
        self.id
    }

    /// Who the client is, as the quota filter named it (Connect client ids,
    /// then `quota.connector_patterns`), for the filters after it.
    pub fn set_identity(&mut self, identity: Identity) {
        self.identity = Some(identity);
    }
}

/// The filters and what they share across connections.
pub struct Pipeline {
    config: Arc<Config>,
    topology: Arc<Topology>,
    metrics: Arc<Metrics>,
    advertised_host: StrBytes,
    /// The last ranges advertised to a client, for local UNSUPPORTED_VERSION answers.
    advertised_versions: RwLock<Option<Vec<ApiVersion>>>,
    /// `None` when no dedup rule is on.
    dedup: Option<ProduceDedup>,
    /// `None` when no rule filters the fetch path.
    fetch_dedup: Option<FetchDedup>,
}

impl Pipeline {
    pub fn new(config: Arc<Config>, topology: Arc<Topology>, metrics: Arc<Metrics>) -> Self {
        let advertised_host = StrBytes::from_string(config.listen.advertised_host.clone());
        Pipeline {
            config,
            topology,
            metrics,
            advertised_host,
            advertised_versions: RwLock::new(None),
            dedup: None,
            fetch_dedup: None,
        }
    }

    /// Turns the dedup filters on, over this window, with what the brokers
    /// say of each covered topic's settings.
    pub fn with_window(
        mut self,
        window: Arc<crate::idempotency::Window>,
        topic_configs: Arc<crate::topic_config::TopicConfigs>,
    ) -> Self {
        if self.config.dedup.fetch_enabled() {
            self.fetch_dedup = Some(FetchDedup::new(
                self.config.clone(),
                window.clone(),
                self.metrics.clone(),
                topic_configs.clone(),
                self.topology.clone(),
            ));
        }
        if self.config.dedup.enabled() {
            self.dedup = Some(
                ProduceDedup::new(self.config.clone(), window, self.metrics.clone())
                    .with_topic_configs(topic_configs),
            );
        }
        self
    }

    pub async fn on_request(
        &self,
        conn: &mut ConnState,
        head: &RequestHead,
        mut frame: BytesMut,
    ) -> Result<RequestAction, Error> {
        let base = self.config.upstream.request_timeout;
        let wait_ms = |ms: Option<i32>| Duration::from_millis(ms.unwrap_or(0).max(0) as u64);
        if conn.identity.is_none() {
            conn.identity = Some(Identity::from_client_id(&head.client_id_str()));
        }
        let mut produce = None;
        let wait = match head.api_key {
            ApiKey::ApiVersions if head.api_version > api_versions::MAX_VERSION => {
                return self
                    .answer_unsupported_api_versions(head)
                    .map(RequestAction::Answer);
            }
            ApiKey::Produce => {
                match message::produce_acks_and_timeout(&frame, head.body_offset, head.api_version)
                {
                    Some((0, _)) => return Ok(RequestAction::Forward(frame, None)),
                    Some((acks, timeout)) => {
                        if let Some(dedup) = &self.dedup {
                            let identity = conn.identity.as_ref().expect("set above");
                            match dedup
                                .on_request(&mut conn.session, identity, head, &frame, acks)
                                .await?
                            {
                                dedup_produce::Outcome::Unchanged(plan) => {
                                    produce = plan.map(Box::new)
                                }
                                dedup_produce::Outcome::Rewritten(new, plan) => {
                                    produce = Some(Box::new(plan));
                                    frame = new;
                                }
                                dedup_produce::Outcome::Answer(bytes) => {
                                    return Ok(RequestAction::Answer(bytes))
                                }
                            }
                        }
                        wait_ms(Some(timeout))
                    }
                    None => Duration::ZERO,
                }
            }
            ApiKey::Fetch => wait_ms(message::fetch_max_wait(
                &frame,
                head.body_offset,
                head.api_version,
            )),
            ApiKey::JoinGroup => {
                let t = wait_ms(message::join_group_rebalance_timeout(
                    &frame,
                    head.body_offset,
                    head.api_version,
                ));
                conn.rebalance_timeout = Some(t);
                t
            }
            ApiKey::SyncGroup => conn.rebalance_timeout.unwrap_or_default(),
            _ => Duration::ZERO,
        };
        let mut authenticates = None;
        let mut end_txn = None;
        let mut fetch = None;
        match head.api_key {
            ApiKey::EndTxn if self.dedup.is_some() => {
                if let Some(req) = message::decode_request::<EndTxnRequest>(&frame, head) {
                    end_txn = Some(EndTxn {
                        producer: (req.producer_id.0, req.producer_epoch),
                        committed: req.committed,
                        conn: conn.id(),
                        v2: head.api_version >= 5,
                    });
                }
            }
            // v0-v3 come from clients (v4+ only from brokers).
            ApiKey::AddPartitionsToTxn if head.api_version <= 3 => {
                if let (Some(dedup), Some(req)) = (
                    &self.dedup,
                    message::decode_request::<AddPartitionsToTxnRequest>(&frame, head),
                ) {
                    let parts: Vec<(String, i32)> = req
                        .v3_and_below_topics
                        .iter()
                        .flat_map(|t| t.partitions.iter().map(|&p| (t.name.to_string(), p)))
                        .collect();
                    dedup.partitions_added(
                        (
                            req.v3_and_below_producer_id.0,
                            req.v3_and_below_producer_epoch,
                        ),
                        conn.id(),
                        &parts,
                    );
                }
            }
            ApiKey::Fetch => {
                if let Some(dedup) = &self.fetch_dedup {
                    let identity = conn.identity.as_ref().expect("set above");
                    let isolation =
                        message::fetch_isolation_level(&frame, head.body_offset, head.api_version);
                    // Connect's own config/offset/status readers: their
                    // topics are never touched, whatever they are called.
                    if !identity.is_connect_internal() {
                        fetch = dedup.plan(identity, isolation);
                    }
                }
            }
            ApiKey::ApiVersions if head.api_version >= 3 && self.dedup.is_some() => {
                if let Some(req) = message::decode_request::<ApiVersionsRequest>(&frame, head) {
                    conn.session
                        .set_client_software(req.client_software_name.as_str());
                }
            }
            ApiKey::SaslHandshake => {
                if let Some(req) = message::decode_request::<SaslHandshakeRequest>(&frame, head) {
                    conn.sasl.handshake(req.mechanism.as_str());
                }
            }
            ApiKey::SaslAuthenticate => {
                if let Some(req) = message::decode_request::<SaslAuthenticateRequest>(&frame, head)
                {
                    authenticates = conn.sasl.authenticate(&req.auth_bytes);
                }
            }
            _ => {}
        }
        let plan = ResponsePlan {
            api_key: head.api_key,
            api_version: head.api_version,
            wait: base + wait,
            authenticates,
            produce,
            end_txn,
            fetch,
            quota: None,
        };
        Ok(RequestAction::Forward(frame, Some(plan)))
    }

    /// Filters a response frame body (correlation id already the client's).
    pub async fn on_response(&self, plan: &mut ResponsePlan, frame: Bytes) -> Result<Bytes, Error> {
        let (api, version) = (plan.api_key, plan.api_version);
        let mut out = frame;
        if let (Some(dedup), Some(produce)) = (&self.dedup, plan.produce.as_mut()) {
            if let Some(changed) = dedup.on_response(produce, version, &out)? {
                out = changed;
            }
        }
        if let (Some(dedup), Some(end)) = (&self.dedup, plan.end_txn) {
            match message::decode_response::<EndTxnResponse>(api, version, &out) {
                Ok(r) if r.error_code == 0 => {
                    dedup.transaction_ended(end.producer, end.committed, end.conn, end.v2)
                }
                Ok(r) => tracing::debug!(
                    producer_id = end.producer.0,
                    error_code = r.error_code,
                    "EndTxn failed: the transaction's keys stay held until it ends"
                ),
                Err(_) => {}
            }
        }
        if let (Some(dedup), Some(fetch)) = (&self.fetch_dedup, plan.fetch.as_ref()) {
            if let Some(changed) = dedup.on_response(fetch, version, &out).await? {
                out = changed;
            }
        }
        if let (Some(_), ApiKey::Metadata) = (&self.fetch_dedup, api) {
            self.topology.learn_names(version, &out);
        }
        if api == ApiKey::ApiVersions {
            if let Some(changed) = self.filter_api_versions(version, &out)? {
                out = changed;
            }
        } else if Rewriter::applies(api, version) {
            let rewriter = Rewriter {
                topology: &*self.topology,
                advertised_host: &self.advertised_host,
            };
            if let Some(changed) = rewriter.rewrite(api, version, &out)? {
                out = changed;
            }
        }
        if self.config.diagnostics.leak_check
            && carries_upstream_address(&out, &self.topology.upstream_addresses())
        {
            self.metrics.address_leaks.fetch_add(1, Relaxed);
            tracing::error!(api = ?api, version, "response carries an upstream broker address");
        }
        Ok(out)
    }

    /// For a SaslAuthenticate response: did the broker accept?
    pub fn authenticated(&self, plan: &ResponsePlan, frame: &Bytes) -> bool {
        message::decode_response::<SaslAuthenticateResponse>(plan.api_key, plan.api_version, frame)
            // SCRAM: a server-final message "e=..." is a refusal (RFC 5802), and
            // tansu sends it with error code 0.
            .is_ok_and(|r| r.error_code == 0 && !r.auth_bytes.starts_with(b"e="))
    }

    fn filter_api_versions(&self, version: i16, frame: &Bytes) -> Result<Option<Bytes>, Error> {
        let api = ApiKey::ApiVersions;
        let mut resp: Response<ApiVersionsResponse> = match Response::decode(api, version, frame) {
            Ok(r) => r,
            // A broker that does not speak this version answers in v0 with an
            // error (KIP-511); cut its ranges all the same.
            Err(_) if version > 0 => {
                let mut r: Response<ApiVersionsResponse> = Response::decode(api, 0, frame)?;
                api_versions::intersect(&mut r.msg);
                return r.encode().map(Some);
            }
            Err(e) => return Err(e),
        };
        api_versions::intersect(&mut resp.msg);
        if resp.msg.error_code == 0 {
            *self.advertised_versions.write().expect("versions lock") =
                Some(resp.msg.api_keys.clone());
        }
        resp.encode().map(Some)
    }

    fn answer_unsupported_api_versions(&self, head: &RequestHead) -> Result<Bytes, Error> {
        let ranges = self
            .advertised_versions
            .read()
            .expect("versions lock")
            .clone()
            .unwrap_or_else(api_versions::proxy_ranges);
        let resp = api_versions::unsupported_version_answer(ranges);
        tracing::debug!(
            version = head.api_version,
            "ApiVersions newer than the proxy knows: answered v0 UNSUPPORTED_VERSION"
        );
        // The v0 answer always uses response header v0.
        message::encode_local_response(ApiKey::ApiVersions, 0, 0, head.correlation_id, &resp)
    }
}
