//! One file per filter. A filter is a [`Filter`]: its name in the drawing
//! and its `call` over one [`Exchange`]: it does its request work before
//! calling `next` (the rest of the stack), and maps the [`Pending`]
//! response `next` returns to do its response work ([`on_response`]), so
//! its per-request state lives in that closure. ONE generic tower
//! `Layer` + `Service` ([`FilterLayer`] / [`Filtered`]) puts any filter in
//! the stack; `pipeline.rs` stacks them, in order, in one place.
//!
//! Why a trait and not a macro: the trait costs nothing the hand-written
//! layers did not. `next` is a generic closure over the service under the
//! filter (no `dyn`, no box), and each call already returned one boxed
//! future ([`Call`]); it still does, one per layer, as before.
//!
//! A filter's outcome: pass the request on (unchanged or changed), answer
//! it locally ([`Pending::Local`], which no response filter sees), or
//! close the connection (`Err`).

use std::future::Future;

use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::FutureExt;
use tower::{Layer, Service};

use crate::codec::RequestHead;
use crate::error::Error;
use crate::identity::Identity;
use crate::limits::Charge;
use crate::upstream::Reply;

pub mod api_versions;
pub mod broker_address;
pub mod dedup_fetch;
pub mod dedup_produce;
pub mod identity;
pub mod quota;
pub mod request_waits;
pub mod sasl;
pub mod state;

/// One request on its way through the stack.
pub struct Exchange {
    pub head: RequestHead,
    pub frame: BytesMut,
    /// The overall memory charged for the request body, given back once it
    /// is sent upstream (or answered locally).
    pub charge: Charge,
    /// When the proxy had the whole request.
    pub started: std::time::Instant,
    /// Another whole request is already buffered behind this one: its
    /// upstream write may wait to go out with it.
    pub more_follow: bool,
    /// Who the client is, as the quota filter named it (set on the
    /// connection's first request), for the filters after it.
    pub identity: Option<Identity>,
    /// How long the broker may take to answer (the request's own wait plus
    /// `upstream.request_timeout`); `None`: no answer comes (acks=0).
    pub wait: Option<std::time::Duration>,
}

/// What a request's call resolves to once it has been sent upstream (or
/// answered): its response to come.
pub enum Pending<'a> {
    /// Produce with acks=0: no response, and no place in the order.
    NoAnswer,
    /// Answered by the proxy itself.
    Local(Bytes),
    /// The broker's answer, through every response filter of the stack.
    /// `None`: the upstream reader is gone, and reports why itself.
    Later(BoxFuture<'a, Result<Option<Reply>, Error>>),
}

/// What each service of the stack returns for a call.
pub type Call<'a> = BoxFuture<'a, Result<Pending<'a>, Error>>;

impl<'a> Pending<'a> {
    /// Runs `f` over the broker's answer, once it comes (never over a local
    /// answer: those see no response filter).
    pub fn then<F, Fut>(self, f: F) -> Pending<'a>
    where
        F: FnOnce(Reply) -> Fut + Send + 'a,
        Fut: Future<Output = Result<Reply, Error>> + Send + 'a,
    {
        match self {
            Pending::Later(fut) => Pending::Later(
                async move {
                    match fut.await? {
                        Some(reply) => f(reply).await.map(Some),
                        None => Ok(None),
                    }
                }
                .boxed(),
            ),
            other => other,
        }
    }
}

/// Runs `f` over the broker's answer to `call`, once it comes: a filter's
/// response work.
pub fn on_response<'a, F, Fut>(call: Call<'a>, f: F) -> Call<'a>
where
    F: FnOnce(Reply) -> Fut + Send + 'a,
    Fut: Future<Output = Result<Reply, Error>> + Send + 'a,
{
    Box::pin(async move { Ok(call.await?.then(f)) })
}

/// A layer's name in the drawing of the flow (`lib.rs`): each service of
/// the stack names itself, then what is under it.
pub trait Named {
    fn names(out: &mut Vec<&'static str>);
}

/// One filter of the stack: what it does to an exchange.
pub trait Filter<'a>: Clone {
    /// Its name in the drawing of the flow (`lib.rs`).
    const NAME: &'static str;

    /// Its request work, then `next(ex)` (the rest of the stack), with its
    /// response work mapped over what that returns; or a local answer
    /// without calling `next`.
    fn call(&self, ex: Exchange, next: impl FnOnce(Exchange) -> Call<'a> + Send + 'a) -> Call<'a>;

    /// The tower layer that puts this filter over a service.
    fn layer(self) -> FilterLayer<Self> {
        FilterLayer(self)
    }
}

/// The tower `Layer` of any [`Filter`].
#[derive(Clone)]
pub struct FilterLayer<F>(F);

impl<F: Clone, S> Layer<S> for FilterLayer<F> {
    type Service = Filtered<F, S>;

    fn layer(&self, inner: S) -> Filtered<F, S> {
        Filtered {
            filter: self.0.clone(),
            inner,
        }
    }
}

/// The tower `Service` of any [`Filter`] over the service under it.
#[derive(Clone)]
pub struct Filtered<F, S> {
    filter: F,
    inner: S,
}

impl<'a, F: Filter<'a>, S: Named> Named for Filtered<F, S> {
    fn names(out: &mut Vec<&'static str>) {
        out.push(F::NAME);
        S::names(out);
    }
}

impl<'a, F, S> Service<Exchange> for Filtered<F, S>
where
    F: Filter<'a>,
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

    fn call(&mut self, ex: Exchange) -> Call<'a> {
        // The service that was polled ready takes the call (it may call it
        // after an await); a clone stays for the next one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        self.filter.call(ex, move |ex| inner.call(ex))
    }
}
