//! The quota gate: enforcement of `quota.rs`'s buckets on one connection.
//!
//! On the way in, a muted connection's (KIP-219) or a paused connector's
//! Produce or Fetch is held, and nothing more is read from the client
//! meanwhile; every request is charged (request rate, Produce bytes, the
//! time the filters took), a Fetch's `max_bytes` is capped to what its
//! bucket allows, and what the client owes mutes the connection. On the way
//! back, a Fetch's bytes are charged, and `throttle_time_ms` is raised to the
//! throttle the proxy imposed.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kafka_protocol::messages::ApiKey;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::sasl::Principal;
use super::{Call, Exchange, Filter};
use crate::codec::RequestHead;
use crate::identity::Identity;
use crate::message;
use crate::quota::{Entity, Kind, Quotas};
use crate::upstream::Outbound;

/// One connection's quota state.
pub struct Gate<'a> {
    quotas: &'a Quotas,
    /// Who authenticated (mTLS, then SASL): part of the entity's key.
    principal: &'a Principal,
    /// A request is never held with an earlier one still in the writer.
    upstream: &'a dyn Outbound,
    /// A hold ends early when the proxy shuts down...
    shutdown: watch::Receiver<bool>,
    /// ...or the broker hangs up.
    upstream_gone: &'a CancellationToken,
    /// The next Produce or Fetch read waits until then (KIP-219's mute).
    /// Set on the way in (Produce bytes, request rate, time) and on the way
    /// back (Fetch bytes).
    muted_until: Mutex<Option<Instant>>,
    /// The entity, and the principal change it was keyed on.
    entity: Mutex<Option<(Arc<Entity>, u64)>>,
}

// === impl Gate ===

impl<'a> Gate<'a> {
    pub fn new(
        quotas: &'a Quotas,
        principal: &'a Principal,
        upstream: &'a dyn Outbound,
        shutdown: watch::Receiver<bool>,
        upstream_gone: &'a CancellationToken,
    ) -> Self {
        Gate {
            quotas,
            principal,
            upstream,
            shutdown,
            upstream_gone,
            muted_until: Mutex::new(None),
            entity: Mutex::new(None),
        }
    }

    /// Who this is (again once SASL names a principal); the identity too on
    /// the connection's first request.
    fn key(&self, head: &RequestHead) -> (Arc<Entity>, Option<Identity>) {
        let mut entity = self.entity.lock().expect("entity lock");
        let changes = self.principal.changes();
        if let Some((e, keyed_on)) = entity.as_ref() {
            if *keyed_on == changes {
                return (e.clone(), None);
            }
        }
        let identity = self.quotas.identify(&head.client_id_str());
        let e = self
            .quotas
            .entity(&identity, self.principal.name().as_deref());
        let first = entity.is_none() && changes == 0;
        *entity = Some((e.clone(), changes));
        (e, first.then_some(identity))
    }

    /// Mutes the connection for `d` from now (never shortens a mute).
    fn mute(&self, d: Duration) {
        if d.is_zero() {
            return;
        }
        let until = Instant::now() + d;
        let mut muted = self.muted_until.lock().expect("mute lock");
        if muted.is_none_or(|u| u < until) {
            *muted = Some(until);
        }
    }

    fn muted_until(&self) -> Option<Instant> {
        let muted = *self.muted_until.lock().expect("mute lock");
        muted.filter(|u| *u > Instant::now())
    }

    /// Throttle `d` (capped at `quota.max_throttle`) imposed on `entity`:
    /// counted, and the connection muted for it. Returns what was imposed.
    fn throttle(&self, entity: &Entity, d: Duration) -> Duration {
        if d.is_zero() {
            return d;
        }
        let d = d.min(self.quotas.max_throttle());
        self.mute(d);
        entity.throttled(d);
        d
    }

    /// Holds a Produce or Fetch while its connection is muted, a Produce
    /// also while its entity owes a debt (muted again, a throttle at a time:
    /// a debt larger than one throttle is carried across holds until
    /// repaid), or while its connector is paused; all of it at most
    /// `quota.max_hold`, so that no request waits anywhere near the client's
    /// request.timeout.ms. True if the pause outlasted `max_hold`.
    async fn hold(&self, entity: &Entity, kind: Kind) -> bool {
        let held_at = Instant::now();
        // Counted while held, however the wait ends (a closed connection drops it).
        struct Held<'a>(&'a std::sync::atomic::AtomicU64);
        impl Drop for Held<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Relaxed);
            }
        }
        entity.counters.held.fetch_add(1, Relaxed);
        let _held = Held(&entity.counters.held);
        self.hold_until_free(entity, kind, held_at).await
    }

    async fn hold_until_free(&self, entity: &Entity, kind: Kind, held_at: Instant) -> bool {
        let mut changes = self.quotas.subscribe();
        let mut shutdown = self.shutdown.clone();
        loop {
            let settings = self.quotas.settings();
            let max_hold = settings.max_hold;
            let paused = entity.is_paused();
            if kind == Kind::Produce && self.muted_until().is_none() {
                let now = Instant::now();
                let limits = (settings.max_throttle, max_hold);
                if let Some(piece) = entity.hold_step(kind, now - held_at, limits, now) {
                    self.throttle(entity, piece);
                }
            }
            let mut until = self.muted_until();
            if paused {
                let end = held_at + max_hold;
                until = Some(until.map_or(end, |u| u.max(end)));
            }
            let Some(until) = until.filter(|u| *u > Instant::now()) else {
                return paused;
            };
            tokio::select! {
                _ = tokio::time::sleep_until(until.into()) => {}
                // A resume, a new quota: look again.
                _ = changes.changed() => {}
                _ = shutdown.wait_for(|stop| *stop) => return false,
                _ = self.upstream_gone.cancelled() => return false,
            }
        }
    }
}

/// The quota filter.
#[derive(Clone)]
pub struct Quota<'a> {
    gate: &'a Gate<'a>,
}

// === impl Quota ===

impl<'a> Quota<'a> {
    pub fn new(gate: &'a Gate<'a>) -> Self {
        Quota { gate }
    }
}

impl<'a> Filter<'a> for Quota<'a> {
    const NAME: &'static str = "quota";

    fn call(
        &self,
        mut ex: Exchange,
        next: impl FnOnce(Exchange) -> Call<'a> + Send + 'a,
    ) -> Call<'a> {
        let gate = self.gate;
        Box::pin(async move {
            let (entity, identity) = gate.key(&ex.head);
            if identity.is_some() {
                ex.identity = identity;
            }
            // A muted connection, or a paused connector, holds its next
            // Produce or Fetch, and reads nothing more meanwhile; other
            // requests (heartbeats, commits, metadata) are never held.
            let kind = match ex.head.api_key {
                ApiKey::Produce => Some(Kind::Produce),
                ApiKey::Fetch => Some(Kind::Fetch),
                _ => None,
            };
            let mut still_paused = false;
            if let Some(kind) = kind {
                // A Produce also waits out a debt larger than one throttle.
                // A Fetch does not: its size is capped to what the bucket
                // holds, and a long hold would hold a kafka-python
                // consumer's heartbeats, which share its fetch connection.
                if entity.is_paused()
                    || gate.muted_until().is_some()
                    || (kind == Kind::Produce && !entity.owed(kind, Instant::now()).is_zero())
                {
                    gate.upstream.flush().await?;
                    still_paused = gate.hold(&entity, kind).await;
                }
            }
            let mut owed = entity.charge_request();
            let head = &ex.head;
            match head.api_key {
                ApiKey::Produce => {
                    owed = owed.max(entity.charge(Kind::Produce, (ex.frame.len() + 4) as u64));
                }
                ApiKey::Fetch => {
                    // What the budget allows now; a paused connector held
                    // past quota.max_hold gets the least (one batch, KIP-74).
                    let cap = if still_paused {
                        Some(1)
                    } else {
                        entity.fetch_allowance()
                    };
                    if let Some(cap) = cap {
                        message::cap_fetch_max_bytes(
                            &mut ex.frame,
                            head.body_offset,
                            head.api_version,
                            cap,
                        );
                    }
                }
                _ => {}
            }
            let throttle = gate.throttle(&entity, owed);
            let (api, version, started) = (head.api_key, head.api_version, ex.started);
            let pending = next(ex).await?;
            // The filters' time: until the request began to leave, or was
            // answered.
            let spent = match gate.upstream.last_send() {
                Some(sent) if sent >= started => sent - started,
                _ => started.elapsed(),
            };
            let spent = entity.charge_time(spent);
            let throttle = throttle.max(gate.throttle(&entity, spent));
            // Fetch bytes are counted (and charged) as they come back.
            if api != ApiKey::Fetch && (kind.is_none() || throttle.is_zero()) {
                return Ok(pending);
            }
            Ok(pending.then(move |mut reply| async move {
                let mut throttle = throttle;
                if api == ApiKey::Fetch {
                    let owed = entity.charge(Kind::Fetch, (reply.frame.bytes()?.len() + 4) as u64);
                    throttle = throttle.max(gate.throttle(&entity, owed));
                }
                if !throttle.is_zero() {
                    let ms = i32::try_from(throttle.as_millis()).unwrap_or(i32::MAX);
                    if let Err(e) = message::raise_throttle_time(api, version, &mut reply.frame, ms)
                    {
                        // The client is muted all the same; only the hint is lost.
                        tracing::debug!(error = %e, "throttle_time_ms not rewritten");
                    }
                }
                Ok(reply)
            }))
        })
    }
}
