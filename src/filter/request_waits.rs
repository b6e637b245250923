//! Request waits: how long the broker may legitimately take to answer a
//! request, for the upstream deadline ([`Exchange::wait`]): the request's
//! own wait (Produce `timeout_ms`, Fetch `max_wait_ms`, JoinGroup
//! `rebalance_timeout_ms`, and a SyncGroup after it the same) plus
//! `upstream.request_timeout`. A Produce with acks=0 gets no answer
//! (`None`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kafka_protocol::messages::ApiKey;

use super::{Call, Exchange, Filter};
use crate::message;

/// The request waits filter of one connection.
#[derive(Clone)]
pub struct RequestWaits {
    /// `upstream.request_timeout`.
    base: Duration,
    /// The last JoinGroup's rebalance timeout: a SyncGroup may be held by
    /// the coordinator that long too.
    rebalance_timeout: Arc<Mutex<Option<Duration>>>,
}

impl RequestWaits {
    pub fn new(base: Duration) -> Self {
        RequestWaits {
            base,
            rebalance_timeout: Arc::default(),
        }
    }

    /// The request's own wait; `None`: no answer comes (acks=0).
    fn own_wait(&self, ex: &Exchange) -> Option<Duration> {
        let wait_ms = |ms: Option<i32>| Duration::from_millis(ms.unwrap_or(0).max(0) as u64);
        let (frame, head) = (&ex.frame, &ex.head);
        Some(match head.api_key {
            ApiKey::Produce => {
                match message::produce_acks_and_timeout(frame, head.body_offset, head.api_version) {
                    Some((0, _)) => return None,
                    Some((_, timeout)) => wait_ms(Some(timeout)),
                    None => Duration::ZERO,
                }
            }
            ApiKey::Fetch => wait_ms(message::fetch_max_wait(
                frame,
                head.body_offset,
                head.api_version,
            )),
            ApiKey::JoinGroup => {
                let t = wait_ms(message::join_group_rebalance_timeout(
                    frame,
                    head.body_offset,
                    head.api_version,
                ));
                *self.rebalance_timeout.lock().expect("rebalance lock") = Some(t);
                t
            }
            ApiKey::SyncGroup => self
                .rebalance_timeout
                .lock()
                .expect("rebalance lock")
                .unwrap_or_default(),
            _ => Duration::ZERO,
        })
    }
}

impl<'a> Filter<'a> for RequestWaits {
    const NAME: &'static str = "request waits";

    fn call(
        &self,
        mut ex: Exchange,
        next: impl FnOnce(Exchange) -> Call<'a> + Send + 'a,
    ) -> Call<'a> {
        ex.wait = self.own_wait(&ex).map(|w| self.base + w);
        next(ex)
    }
}
