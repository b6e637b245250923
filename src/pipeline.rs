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
//! changes it, or answers it locally. Only the APIs a filter names are ever
//! decoded, and a response at most once however many filters read it: it
//! travels up as a [`ResponseFrame`](crate::message::ResponseFrame), which
//! keeps the decoded message for the next filter and encodes it again once,
//! only if one changed it (Produce v10+ is read by dedup, the broker
//! addresses and, when throttled, the quota; Fetch v16+ and Metadata by the
//! fetch dedup and the broker addresses).

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use kafka_protocol::protocol::StrBytes;
use tokio::io::AsyncWrite;
use tower::{Service, ServiceBuilder, ServiceExt};

use crate::config::Config;
use crate::error::Error;
use crate::filter::api_versions::{Advertised, ApiVersions};
use crate::filter::broker_address::{BrokerAddresses, LeakCheck};
use crate::filter::dedup_fetch::{DedupFetch, FetchDedup};
use crate::filter::dedup_produce::{DedupProduce, ProduceDedup};
use crate::filter::identity::Identify;
use crate::filter::quota::{Gate, Quota};
use crate::filter::request_waits::RequestWaits;
use crate::filter::sasl::{Binding, Sasl};
pub(crate) use crate::filter::state::ConnState;
use crate::filter::{Call, Exchange, Filter as _, Filtered, Named, Pending};
use crate::telemetry::Metrics;
use crate::topology::Topology;
use crate::upstream::Exchanger;

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

    /// What the leak check needs, if `diagnostics.leak_check` is on.
    fn leak_check(&self) -> Option<(&Topology, &Metrics)> {
        self.config
            .diagnostics
            .leak_check
            .then_some((&*self.topology, &*self.metrics))
    }

    /// The produce dedup's sequence state (`[dedup.shared]` shares it).
    pub fn sequences(&self) -> Option<Arc<crate::idempotency::sequences::Sequences>> {
        self.dedup.as_ref().map(|d| d.sequences())
    }

    /// The produce dedup's open transactions (`[dedup.shared]` shares
    /// their ends).
    pub fn transactions(&self) -> Option<Arc<crate::idempotency::transactions::Transactions>> {
        self.dedup.as_ref().map(|d| d.transactions())
    }

    /// What the api versions filter advertised last.
    pub fn advertised_versions(&self) -> &Advertised {
        &self.advertised_versions
    }
}

// === The stack ===

/// The filter stack of one connection, outermost first. Its type is what
/// [`stack`] builds, so the names it gives ([`Named`]) are the stack's.
pub(crate) type Stack<'a, W> = Filtered<
    Quota<'a>,
    Filtered<
        Sasl<'a>,
        Filtered<
            ApiVersions<'a>,
            Filtered<
                LeakCheck<'a>,
                Filtered<
                    BrokerAddresses<'a>,
                    Filtered<
                        RequestWaits,
                        Filtered<
                            Identify<'a>,
                            Filtered<DedupProduce<'a>, Filtered<DedupFetch<'a>, Upstream<'a, W>>>,
                        >,
                    >,
                >,
            >,
        >,
    >,
>;

/// Stacks one connection's filters over its upstream exchange.
pub(crate) fn stack<'a, W: AsyncWrite + Unpin + Send>(
    quota: &'a Gate<'a>,
    sasl: &'a Binding<'a>,
    filters: &'a Pipeline,
    state: &'a tokio::sync::Mutex<ConnState>,
    upstream: &'a Exchanger<W>,
) -> Stack<'a, W> {
    ServiceBuilder::new()
        .layer(Quota::new(quota).layer())
        .layer(Sasl::new(sasl).layer())
        .layer(ApiVersions::new(filters.advertised_versions(), upstream.addr()).layer())
        .layer(LeakCheck::new(filters.leak_check()).layer())
        .layer(BrokerAddresses::new(&filters.topology, &filters.advertised_host).layer())
        .layer(RequestWaits::new(filters.config.upstream.request_timeout).layer())
        .layer(Identify::new(state).layer())
        .layer(DedupProduce::new(filters.dedup.as_ref(), state, upstream).layer())
        .layer(DedupFetch::new(filters.fetch_dedup.as_ref(), &filters.topology, state).layer())
        .service(Upstream(upstream))
}

/// A connection's stack as its read loop sees it: waits until the stack is
/// ready, then calls it.
pub(crate) trait Exchanges<'a>: Send {
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
#[cfg(test)]
fn layer_names() -> Vec<&'static str> {
    let mut names = Vec::new();
    <Stack<'static, tokio::io::Sink> as Named>::names(&mut names);
    names
}

/// The last hop: the request goes to the broker under the proxy's own
/// correlation id (`upstream.rs`).
pub(crate) struct Upstream<'a, W>(&'a Exchanger<W>);

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
