//! Quotas across the tier (`[quota.shared]`): a tenant's or connector's
//! quota holds for every idemgate process in front of one cluster, however
//! its connections are spread over them.
//!
//! ```text
//! every report_every:  usage since the last report, per quota subject
//!                      → one record on `topic` (key "u", value: a Report)
//! tail of `topic`:     a peer's Report → Entity::absorb_peer: its units are
//!                      charged to this process's buckets, as if used here
//! enforcement:         unchanged (quota.rs, filter/quota.rs): the buckets
//!                      now drain at the TIER's rate, so the debt, throttle
//!                      and hold each process applies is the tier's
//! ```
//!
//! Each process keeps its own token bucket per subject (tenant, connector),
//! refilled at the quota's rate, and charges it with its own usage at once
//! and with each peer's as its report arrives (at most `report_every` plus
//! the topic's lag later). Every bucket of the tier so sees the tier's whole
//! usage, and each process throttles its own clients until the tier's debt
//! is repaid: the tier's rate converges on the quota whatever the spread.
//! The units are the ones `quota.rs` charges: Produce request bytes, Fetch
//! response bytes, requests, and microseconds of proxy time.
//!
//! A report carries its origin (this process's run) and a sequence number:
//! one read twice (a reconnect) is charged once. A report older than
//! `peer_expiry` by its own timestamp is not charged (a backlog after an
//! outage, or the topic read from its start), so processes' clocks must
//! agree to well within `peer_expiry` (NTP). A peer that stops reporting
//! (killed, cut off) stops being charged at once — its usage ends with its
//! last report — and drops out of the peers counted and of the tier's rate
//! (`/metrics`) `peer_expiry` after its last report.
//!
//! Pauses (`idemgate admin pause`) are records too, keyed `pause:<connector>`
//! (a resume is a tombstone); the topic is compacted, one partition, read
//! from its start at every start: the latest pause state per connector wins
//! on every replica, and a replica started later reads it back.
//!
//! While the topic is unreachable each process enforces on its own usage
//! (the per-process behaviour: the tier may pass up to N times the quota),
//! `/readyz` says so and `idemgate_quota_shared_connected` is 0.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::{EntityKey, Quotas};
use crate::config::SharedQuota;

/// Slots of a usage report: Produce bytes, Fetch bytes, requests, and
/// microseconds of proxy time.
pub(crate) const USED: usize = 4;
/// Units per [`USED`] slot.
pub(crate) type Used = [u64; USED];
/// The slots' names, for `/metrics`.
pub(crate) const SLOTS: [&str; USED] = ["produce", "fetch", "requests", "request_time_micros"];

/// One process's usage since its previous report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The process run that sent it.
    pub origin: String,
    /// One more per report of that run: a report read twice counts once.
    pub seq: u64,
    /// When it was sent (ms since the epoch, the sender's clock).
    pub at_ms: i64,
    /// The time it covers.
    pub interval_ms: u64,
    /// Subjects that used anything in it.
    pub subjects: Vec<SubjectUse>,
}

/// A subject's usage in one report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubjectUse {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connector: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client_id: String,
    pub used: Used,
}

impl SubjectUse {
    fn key(&self) -> EntityKey {
        EntityKey {
            tenant: self.tenant.clone(),
            connector: self.connector.clone(),
            client_id: self.client_id.clone(),
        }
    }
}

/// What a peer last said.
#[derive(Debug)]
struct Peer {
    /// When its last report was read.
    seen: Instant,
    seq: u64,
    /// Units per second, per subject, over its last report.
    rates: HashMap<EntityKey, [f64; USED]>,
}

/// This process's side of the last report, and the peers'.
#[derive(Debug, Default)]
struct State {
    seq: u64,
    /// Each subject's counters at the last report.
    last: HashMap<EntityKey, Used>,
    last_at: Option<Instant>,
    /// Units per second, per subject, over the last report.
    own_rates: HashMap<EntityKey, [f64; USED]>,
    peers: HashMap<String, Peer>,
}

/// `[quota.shared]`'s state and counters (`/metrics`, `/readyz`).
#[derive(Debug)]
pub struct Tier {
    /// `[quota.shared]` is on.
    pub enabled: bool,
    /// This process run, as its reports name it.
    pub origin: String,
    /// A peer's report older than this is not charged, and a peer silent
    /// this long is no longer counted.
    pub peer_expiry: Duration,
    /// The topic is reachable now.
    pub connected: AtomicBool,
    /// The topic was read to the end it had at the start (pauses known).
    pub caught_up: AtomicBool,
    /// Reports and pause records published.
    pub published: AtomicU64,
    /// Reports that could not be published (the topic away), and pause
    /// records that waited for it.
    pub publish_failures: AtomicU64,
    /// Peers' reports read and charged.
    pub reports_read: AtomicU64,
    /// Peers' reports read too late to be charged (older than peer_expiry).
    pub reports_stale: AtomicU64,
    state: Mutex<State>,
    /// Pause changes from this process's admin API, waiting to be published.
    pauses: Mutex<Vec<(String, bool)>>,
    pub(crate) pauses_queued: Notify,
}

impl Tier {
    pub fn new(settings: Option<&SharedQuota>) -> Tier {
        Tier {
            enabled: settings.is_some(),
            origin: origin(),
            peer_expiry: settings.map_or(Duration::from_secs(3), |s| s.peer_expiry),
            connected: AtomicBool::new(false),
            caught_up: AtomicBool::new(false),
            published: AtomicU64::new(0),
            publish_failures: AtomicU64::new(0),
            reports_read: AtomicU64::new(0),
            reports_stale: AtomicU64::new(0),
            state: Mutex::new(State::default()),
            pauses: Mutex::new(Vec::new()),
            pauses_queued: Notify::new(),
        }
    }

    /// Queues a pause or resume for the topic; false without `[quota.shared]`.
    pub(crate) fn queue_pause(&self, label: &str, paused: bool) -> bool {
        if !self.enabled {
            return false;
        }
        self.pauses
            .lock()
            .expect("pauses lock")
            .push((label.to_string(), paused));
        self.pauses_queued.notify_one();
        true
    }

    /// The pause changes to publish (put back with [`requeue`] if that fails).
    pub(crate) fn take_pauses(&self) -> Vec<(String, bool)> {
        std::mem::take(&mut *self.pauses.lock().expect("pauses lock"))
    }

    pub(crate) fn requeue(&self, mut failed: Vec<(String, bool)>) {
        let mut pauses = self.pauses.lock().expect("pauses lock");
        failed.append(&mut pauses);
        *pauses = failed;
    }

    /// Peers heard from within `peer_expiry` (the others are forgotten).
    pub fn peers(&self, now: Instant) -> usize {
        let mut state = self.state.lock().expect("tier lock");
        let expiry = self.peer_expiry;
        state
            .peers
            .retain(|_, p| now.saturating_duration_since(p.seen) <= expiry);
        state.peers.len()
    }

    /// Each subject's rate across the tier, units per second per slot: this
    /// process's over its last report plus every live peer's.
    pub fn rates(&self, now: Instant) -> Vec<(EntityKey, [f64; USED])> {
        self.peers(now);
        let state = self.state.lock().expect("tier lock");
        let mut total: HashMap<EntityKey, [f64; USED]> = state.own_rates.clone();
        for peer in state.peers.values() {
            for (key, rates) in &peer.rates {
                let sum = total.entry(key.clone()).or_default();
                for (s, r) in sum.iter_mut().zip(rates) {
                    *s += r;
                }
            }
        }
        let mut all: Vec<_> = total.into_iter().collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Why `/readyz` says degraded, if it does.
    pub fn degraded(&self) -> Option<&'static str> {
        (self.enabled && !self.connected.load(Relaxed)).then_some(
            "the quota topic is unreachable; each process enforces quotas on its own usage until it is back",
        )
    }
}

/// A number for this run of the process, in hex.
fn origin() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let bytes = [
        nanos.to_be_bytes().as_slice(),
        &std::process::id().to_be_bytes(),
        b"quota",
    ]
    .concat();
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&bytes))
}

fn per_second(used: &Used, interval: Duration) -> [f64; USED] {
    let secs = interval.as_secs_f64().max(1e-3);
    used.map(|n| n as f64 / secs)
}

// === impl Quotas ===

impl Quotas {
    /// This process's usage since its previous report (the subjects that
    /// used anything), stamped `at_ms`.
    pub fn report(&self, now: Instant, at_ms: i64) -> Report {
        let tier = &self.tier;
        let mut state = tier.state.lock().expect("tier lock");
        let interval = state
            .last_at
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        let mut last = HashMap::new();
        let mut own_rates = HashMap::new();
        let mut subjects = Vec::new();
        for e in self.sorted() {
            let used = e.used();
            let before = state.last.get(&e.key).copied().unwrap_or_default();
            // A counter lower than at the last report: the entity was
            // forgotten and made again, from zero.
            let delta: Used = if used.iter().zip(&before).any(|(u, b)| u < b) {
                used
            } else {
                std::array::from_fn(|i| used[i] - before[i])
            };
            last.insert(e.key.clone(), used);
            if delta.iter().all(|n| *n == 0) {
                continue;
            }
            own_rates.insert(e.key.clone(), per_second(&delta, interval));
            subjects.push(SubjectUse {
                tenant: e.key.tenant.clone(),
                connector: e.key.connector.clone(),
                client_id: e.key.client_id.clone(),
                used: delta,
            });
        }
        state.seq += 1;
        state.last = last;
        state.last_at = Some(now);
        state.own_rates = own_rates;
        Report {
            origin: tier.origin.clone(),
            seq: state.seq,
            at_ms,
            interval_ms: interval.as_millis() as u64,
            subjects,
        }
    }

    /// A peer's report read from the topic (read at `now`, `now_ms` by the
    /// clock): charged to this process's buckets unless it is this
    /// process's own, was charged already, or is older than `peer_expiry`.
    /// True if charged.
    pub fn absorb(&self, report: &Report, now: Instant, now_ms: i64) -> bool {
        let tier = &self.tier;
        if report.origin == tier.origin {
            return false;
        }
        let age = Duration::from_millis(now_ms.saturating_sub(report.at_ms).max(0) as u64);
        if age > tier.peer_expiry {
            // Not while reading what the topic held at the start: those are
            // old by design.
            if tier.caught_up.load(Relaxed) {
                tier.reports_stale.fetch_add(1, Relaxed);
            }
            return false;
        }
        {
            let mut state = tier.state.lock().expect("tier lock");
            let peer = state
                .peers
                .entry(report.origin.clone())
                .or_insert_with(|| Peer {
                    seen: now,
                    seq: 0,
                    rates: HashMap::new(),
                });
            if report.seq <= peer.seq {
                return false;
            }
            peer.seq = report.seq;
            peer.seen = now;
            let interval = Duration::from_millis(report.interval_ms);
            peer.rates = report
                .subjects
                .iter()
                .map(|s| (s.key(), per_second(&s.used, interval)))
                .collect();
        }
        for s in &report.subjects {
            self.entity_by_key(s.key()).absorb_peer(&s.used);
        }
        tier.reports_read.fetch_add(1, Relaxed);
        true
    }

    /// A pause record read from the topic (`None`: a resume).
    pub fn absorb_pause(&self, label: &str, paused: bool) {
        let now = self.paused.lock().expect("paused lock").contains(label);
        if now != paused {
            tracing::warn!(connector = %label, "connector {} (tier)", if paused { "paused" } else { "resumed" });
            self.set_paused(label, paused);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::identity::Identity;
    use crate::quota::Kind;

    /// A replica with `[quota.shared]` and a 1000 B/s produce quota on
    /// connector `c`.
    fn replica() -> Quotas {
        let c = Config::parse(
            "[quota]\nburst = \"1s\"\n[quota.shared]\n[[quotas]]\nconnector = \"c\"\nproduce_bytes_per_sec = 1000\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        Quotas::new(c.quota, c.quotas)
    }

    fn producer(q: &Quotas, task: u32) -> std::sync::Arc<crate::quota::Entity> {
        q.entity(
            &Identity::from_client_id(&format!("connector-producer-c-{task}")),
            None,
        )
    }

    #[test]
    fn a_peer_s_usage_is_charged_here_and_the_tier_total_throttles() {
        let (a, b) = (replica(), replica());
        let t0 = Instant::now();
        let (ea, eb) = (producer(&a, 0), producer(&b, 1));
        a.report(t0, 0);
        b.report(t0, 0);
        // Each replica alone is within its quota (700 of a 1000 B burst)...
        assert_eq!(ea.charge(Kind::Produce, 700), Duration::ZERO);
        assert_eq!(eb.charge(Kind::Produce, 700), Duration::ZERO);
        // ...together they are 400 B over it: each report, once read by
        // the other, leaves the tier's debt on both.
        let ra = a.report(t0 + Duration::from_secs(1), 1000);
        let rb = b.report(t0 + Duration::from_secs(1), 1000);
        assert_eq!(rb.subjects.len(), 1);
        assert_eq!(rb.subjects[0].used[0], 700);
        assert_eq!(rb.subjects[0].connector.as_deref(), Some("c"));
        assert!(a.absorb(&rb, t0, 1000));
        assert!(b.absorb(&ra, t0, 1000));
        for (q, e) in [(&a, &ea), (&b, &eb)] {
            assert_eq!(e.counters.peer[0].load(Relaxed), 700, "the peer's bytes");
            assert_eq!(
                e.counters.produce_bytes.load(Relaxed),
                700,
                "own bytes apart"
            );
            let owed = e.owed(Kind::Produce, t0);
            assert!(
                owed >= Duration::from_millis(399),
                "the tier's 400 B debt at 1000 B/s: {owed:?}"
            );
            let rates = q.tier.rates(t0);
            assert_eq!(rates.len(), 1);
            assert_eq!(rates[0].1[0], 1400.0, "own 700/s + the peer's 700/s");
            assert_eq!(q.tier.peers(t0), 1);
        }
    }

    #[test]
    fn a_report_is_charged_once_never_its_own_and_not_when_stale() {
        let (a, b) = (replica(), replica());
        let t0 = Instant::now();
        let eb = producer(&b, 0);
        eb.charge(Kind::Produce, 100);
        let r = b.report(t0, 10_000);
        assert!(!b.absorb(&r, t0, 10_000), "its own report");
        assert!(a.absorb(&r, t0, 10_000));
        assert!(!a.absorb(&r, t0, 10_000), "read twice (a reconnect)");
        let ea = producer(&a, 0);
        assert_eq!(ea.counters.peer[0].load(Relaxed), 100);
        eb.charge(Kind::Produce, 100);
        let late = b.report(t0, 10_000);
        assert!(
            !a.absorb(&late, t0, 10_000 + 3_001),
            "older than peer_expiry"
        );
        assert_eq!(a.tier.reports_stale.load(Relaxed), 0, "reading the start");
        a.tier.caught_up.store(true, Relaxed);
        assert!(!a.absorb(&late, t0, 10_000 + 3_001));
        assert_eq!(a.tier.reports_stale.load(Relaxed), 1, "counted once live");
        assert_eq!(ea.counters.peer[0].load(Relaxed), 100);
    }

    #[test]
    fn a_silent_peer_drops_out_after_peer_expiry() {
        let (a, b) = (replica(), replica());
        let t0 = Instant::now();
        b.report(t0, 0);
        producer(&b, 0).charge(Kind::Produce, 500);
        let r = b.report(t0 + Duration::from_secs(1), 1000);
        assert!(a.absorb(&r, t0, 1000));
        assert_eq!(a.tier.peers(t0 + Duration::from_secs(3)), 1);
        assert_eq!(a.tier.rates(t0 + Duration::from_secs(3))[0].1[0], 500.0);
        let later = t0 + Duration::from_millis(3001);
        assert_eq!(a.tier.peers(later), 0, "not heard from for peer_expiry");
        assert!(a.tier.rates(later).is_empty(), "its usage no longer counts");
    }

    #[test]
    fn a_report_holds_only_what_changed_since_the_last() {
        let a = replica();
        let t0 = Instant::now();
        let e = producer(&a, 0);
        e.charge(Kind::Produce, 10);
        e.charge_request();
        e.charge_time(Duration::from_micros(250));
        let r = a.report(t0, 0);
        assert_eq!(r.subjects[0].used, [10, 0, 1, 250]);
        assert_eq!(r.seq, 1);
        let r = a.report(t0 + Duration::from_secs(1), 1000);
        assert!(r.subjects.is_empty(), "nothing new: {r:?}");
        assert_eq!((r.seq, r.interval_ms), (2, 1000));
        let text = serde_json::to_string(&r).expect("json");
        assert_eq!(serde_json::from_str::<Report>(&text).expect("json"), r);
    }

    #[test]
    fn a_reload_keeps_the_tier_in_force() {
        let a = replica();
        let plain = Config::parse("[quota]\nburst = \"2s\"\n").expect("a config");
        a.apply(Some(plain.quota), vec![]);
        assert_eq!(a.settings().burst, Duration::from_secs(2));
        assert!(
            a.settings().shared.is_some(),
            "[quota.shared] read at the start only"
        );
    }

    #[test]
    fn pauses_from_the_tier_apply_and_queue_only_when_shared() {
        let a = replica();
        let e = producer(&a, 0);
        a.absorb_pause("c", true);
        assert!(e.is_paused());
        a.absorb_pause("c", false);
        assert!(!e.is_paused());
        assert_eq!(a.pause("c", true), (1, true));
        assert_eq!(a.tier.take_pauses(), vec![("c".to_string(), true)]);
        let c = Config::parse("").expect("empty config");
        let lone = Quotas::new(c.quota, c.quotas);
        assert_eq!(lone.pause("c", true), (0, false), "no [quota.shared]");
    }
}
