//! The filter stack, in order: the one place a request's way is decided.
//! The drawing of it is in `lib.rs` (a test checks it against [`stack`]).
//!
//! Requests go through one at a time, in arrival order: a call completes
//! once its request has been sent upstream (or answered), and resolves to
//! the response to come ([`Pending`]), which the connection puts in its
//! place in the response order. Responses may complete concurrently but
//! leave in request order.
//!
//! A filter either leaves a message alone (its bytes travel untouched),
//! changes it (decode, edit, encode), or answers it locally. Only the APIs
//! a filter names are ever decoded.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use kafka_protocol::messages::{
    AddPartitionsToTxnRequest, ApiKey, ApiVersionsRequest, EndTxnRequest, EndTxnResponse,
};
use kafka_protocol::protocol::StrBytes;
use tokio::io::AsyncWrite;
use tower::{layer::layer_fn, Layer, Service, ServiceBuilder, ServiceExt};

use crate::codec::RequestHead;
use crate::config::Config;
use crate::error::Error;
use crate::filter::api_versions::{Advertised, ApiVersions};
use crate::filter::broker_address::{BrokerAddresses, LeakCheck};
use crate::filter::dedup_fetch::{DedupFetch, FetchDedup};
use crate::filter::dedup_produce::{self, ProduceDedup, ProducePlan};
use crate::filter::quota::{Gate, Quota};
use crate::filter::request_waits::RequestWaits;
use crate::filter::sasl::{Binding, Sasl};
pub use crate::filter::state::ConnState;
use crate::filter::{Call, Exchange, Filter as _, Filtered, Named, Pending};
use crate::idempotency::window::Producer;
use crate::identity::Identity;
use crate::message;
use crate::telemetry::Metrics;
use crate::topology::Topology;
use crate::upstream::{Exchanger, Outbound};

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
    /// Produce with keys awaiting the broker's answer, or partitions the
    /// proxy answered itself.
    pub produce: Option<Box<ProducePlan>>,
    /// EndTxn: the producer and whether it commits, for the dedup filter to
    /// learn (or forget) the transaction's keys once the coordinator agrees.
    pub end_txn: Option<EndTxn>,
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

/// The filters and what they share across connections.
pub struct Pipeline {
    config: Arc<Config>,
    topology: Arc<Topology>,
    metrics: Arc<Metrics>,
    advertised_host: StrBytes,
    /// The last ranges advertised to a client, for local UNSUPPORTED_VERSION answers.
    advertised_versions: Advertised,
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
            advertised_versions: Advertised::default(),
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
        if conn.identity.is_none() {
            conn.identity = Some(Identity::from_client_id(&head.client_id_str()));
        }
        let mut produce = None;
        if head.api_key == ApiKey::Produce {
            match message::produce_acks_and_timeout(&frame, head.body_offset, head.api_version) {
                Some((0, _)) => return Ok(RequestAction::Forward(frame, None)),
                Some((acks, _)) => {
                    if let Some(dedup) = &self.dedup {
                        let identity = conn.identity.as_ref().expect("set above");
                        match dedup
                            .on_request(&mut conn.session, identity, head, &frame, acks)
                            .await?
                        {
                            dedup_produce::Outcome::Unchanged(plan) => produce = plan.map(Box::new),
                            dedup_produce::Outcome::Rewritten(new, plan) => {
                                produce = Some(Box::new(plan));
                                frame = new;
                            }
                            dedup_produce::Outcome::Answer(bytes) => {
                                return Ok(RequestAction::Answer(bytes))
                            }
                        }
                    }
                }
                None => {}
            }
        }
        let mut end_txn = None;
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
            ApiKey::ApiVersions if head.api_version >= 3 && self.dedup.is_some() => {
                if let Some(req) = message::decode_request::<ApiVersionsRequest>(&frame, head) {
                    conn.session
                        .set_client_software(req.client_software_name.as_str());
                }
            }
            _ => {}
        }
        let plan = ResponsePlan {
            api_key: head.api_key,
            api_version: head.api_version,
            produce,
            end_txn,
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
        Ok(out)
    }

    /// What the leak check needs, if `diagnostics.leak_check` is on.
    fn leak_check(&self) -> Option<(&Topology, &Metrics)> {
        self.config
            .diagnostics
            .leak_check
            .then_some((&*self.topology, &*self.metrics))
    }

    /// What the api versions filter advertised last.
    pub fn advertised_versions(&self) -> &Advertised {
        &self.advertised_versions
    }
}

// === The stack ===

/// The filter stack of one connection, outermost first. Its type is what
/// [`stack`] builds, so the names it gives ([`Named`]) are the stack's.
pub type Stack<'a, W> = Filtered<
    Quota<'a>,
    Filtered<
        Sasl<'a>,
        Filtered<
            ApiVersions<'a>,
            Filtered<
                LeakCheck<'a>,
                Filtered<
                    BrokerAddresses<'a>,
                    Filtered<RequestWaits, Filters<'a, Filtered<DedupFetch<'a>, Upstream<'a, W>>>>,
                >,
            >,
        >,
    >,
>;

/// Stacks one connection's filters over its upstream exchange.
pub fn stack<'a, W: AsyncWrite + Unpin + Send>(
    quota: &'a Gate<'a>,
    sasl: &'a Binding<'a>,
    filters: &'a Pipeline,
    state: &'a tokio::sync::Mutex<ConnState>,
    upstream: &'a Exchanger<W>,
) -> Stack<'a, W> {
    ServiceBuilder::new()
        .layer(Quota::new(quota).layer())
        .layer(Sasl::new(sasl).layer())
        .layer(ApiVersions::new(filters.advertised_versions()).layer())
        .layer(LeakCheck::new(filters.leak_check()).layer())
        .layer(BrokerAddresses::new(&filters.topology, &filters.advertised_host).layer())
        .layer(RequestWaits::new(filters.config.upstream.request_timeout).layer())
        .layer(Filters::layer(filters, state, upstream))
        .layer(DedupFetch::new(filters.fetch_dedup.as_ref(), &filters.topology, state).layer())
        .service(Upstream(upstream))
}

/// A connection's stack as its read loop sees it: waits until the stack is
/// ready, then calls it.
pub trait Exchanges<'a>: Send {
    fn exchange(&mut self, ex: Exchange) -> BoxFuture<'_, Result<Pending<'a>, Error>>;
}

impl<'a, S> Exchanges<'a> for S
where
    S: Service<Exchange, Response = Pending<'a>, Error = Error> + Send,
    S::Future: Send,
{
    fn exchange(&mut self, ex: Exchange) -> BoxFuture<'_, Result<Pending<'a>, Error>> {
        Box::pin(async move { self.ready().await?.call(ex).await })
    }
}

/// The layers in order, as [`stack`] builds them.
pub fn layer_names() -> Vec<&'static str> {
    let mut names = Vec::new();
    <Stack<'static, tokio::io::Sink> as Named>::names(&mut names);
    names
}

/// The filters still switched by [`Pipeline`] (identity, produce dedup, transactions), as one layer until each
/// is a layer of its own.
pub struct Filters<'a, S> {
    pipeline: &'a Pipeline,
    state: &'a tokio::sync::Mutex<ConnState>,
    upstream: &'a dyn Outbound,
    inner: S,
}

impl<S: Clone> Clone for Filters<'_, S> {
    fn clone(&self) -> Self {
        Filters {
            pipeline: self.pipeline,
            state: self.state,
            upstream: self.upstream,
            inner: self.inner.clone(),
        }
    }
}

// === impl Filters ===

impl<'a, S> Filters<'a, S> {
    pub fn layer(
        pipeline: &'a Pipeline,
        state: &'a tokio::sync::Mutex<ConnState>,
        upstream: &'a dyn Outbound,
    ) -> impl Layer<S, Service = Filters<'a, S>> {
        layer_fn(move |inner| Filters {
            pipeline,
            state,
            upstream,
            inner,
        })
    }
}

impl<S: Named> Named for Filters<'_, S> {
    fn names(out: &mut Vec<&'static str>) {
        out.extend(["identity", "dedup (produce)"]);
        S::names(out);
    }
}

impl<'a, S> Service<Exchange> for Filters<'a, S>
where
    S: Service<Exchange, Response = Pending<'a>, Error = Error, Future = Call<'a>>
        + Clone
        + Send
        + 'a,
{
    type Response = Pending<'a>;
    type Error = Error;
    type Future = Call<'a>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut ex: Exchange) -> Call<'a> {
        let (pipeline, state, upstream) = (self.pipeline, self.state, self.upstream);
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let mut state = state.lock().await;
            if let Some(identity) = ex.identity.take() {
                state.set_identity(identity);
            }
            // The dedup filter may wait on keys an earlier request of this
            // very connection has in flight: that request must have left,
            // not sit in the writer behind the wait.
            if ex.head.api_key == ApiKey::Produce {
                upstream.flush().await?;
            }
            let frame = std::mem::take(&mut ex.frame);
            let action = pipeline.on_request(&mut state, &ex.head, frame).await?;
            drop(state);
            match action {
                RequestAction::Answer(bytes) => Ok(Pending::Local(bytes)),
                RequestAction::Forward(frame, None) => {
                    ex.frame = frame;
                    inner.call(ex).await
                }
                RequestAction::Forward(frame, Some(mut plan)) => {
                    ex.frame = frame;
                    Ok(inner.call(ex).await?.then(move |mut reply| async move {
                        reply.bytes = pipeline.on_response(&mut plan, reply.bytes).await?;
                        Ok(reply)
                    }))
                }
            }
        })
    }
}

/// The last hop: the request goes to the broker under the proxy's own
/// correlation id (`upstream.rs`).
pub struct Upstream<'a, W>(&'a Exchanger<W>);

impl<W> Clone for Upstream<'_, W> {
    fn clone(&self) -> Self {
        Upstream(self.0)
    }
}

impl<W> Named for Upstream<'_, W> {
    fn names(out: &mut Vec<&'static str>) {
        out.push("upstream");
    }
}

impl<'a, W: AsyncWrite + Unpin + Send> Service<Exchange> for Upstream<'a, W> {
    type Response = Pending<'a>;
    type Error = Error;
    type Future = Call<'a>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, ex: Exchange) -> Call<'a> {
        let exchanger = self.0;
        Box::pin(async move {
            let answer = exchanger
                .send(&ex.head, ex.frame, ex.charge, ex.wait, ex.more_follow)
                .await?;
            Ok(match answer {
                None => Pending::NoAnswer,
                // A sender dropped: the response reader failed, and says why.
                Some(rx) => Pending::Later(Box::pin(async move { Ok(rx.await.ok()) })),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    /// The drawing of the flow in `lib.rs` names the stack's layers, in the
    /// order `stack` builds them.
    #[test]
    fn the_drawing_in_lib_rs_is_the_stack() {
        let lib = include_str!("lib.rs");
        let drawn: Vec<&str> = lib
            .lines()
            .filter_map(|l| l.strip_prefix("//!   ▸ "))
            .map(|l| l.split("  ").next().unwrap_or(l).trim())
            .collect();
        assert_eq!(
            drawn,
            super::layer_names(),
            "src/lib.rs drawing vs pipeline::stack"
        );
    }
}
