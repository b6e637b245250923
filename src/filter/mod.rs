//! One file per filter. Each filter is a tower `Layer` + `Service`
//! (`Quota<S>` / `Quota::layer(..)`) over one [`Exchange`]: it does its
//! request work before calling the service under it, and maps the
//! [`Pending`] response that service returns to do its response work, so
//! its per-request state lives in that closure. `pipeline.rs` stacks them,
//! in order, in one place.
//!
//! A filter's outcome: pass the request on (unchanged or changed), answer
//! it locally ([`Pending::Local`], which no response filter sees), or
//! close the connection (`Err`).

use std::future::Future;

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::FutureExt;

use crate::codec::RequestHead;
use crate::error::Error;
use crate::identity::Identity;
use crate::limits::Charge;
use crate::upstream::Reply;

pub mod api_versions;
pub mod broker_address;
pub mod dedup_fetch;
pub mod dedup_produce;
pub mod quota;
pub mod sasl;

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
