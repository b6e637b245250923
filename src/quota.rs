//! Quotas: per-connector and per-tenant rates, enforced the way brokers do.
//!
//! Who: an [`EntityKey`] is (tenant, connector) — the tenant is the principal
//! the broker accepted (SASL) or the TLS client certificate's subject; the
//! connector comes from Connect's client ids or `quota.connector_patterns`.
//! A client with neither is known by its client id. Every connection of one
//! entity shares its buckets, as a broker's (user, client-id) quota is shared
//! by all of that entity's connections to it.
//!
//! Which limits: each kind (produce bytes, fetch bytes, requests) is resolved
//! on its own, from the most specific `[[quotas]]` rule that matches and sets
//! it — KIP-55's order, with the tenant standing for the user and the
//! connector (or client id) for the client id:
//!
//! ```text
//! tenant exact  + connector exact     most specific
//! tenant exact  + connector glob
//! tenant exact
//! tenant glob   + connector exact
//! tenant glob   + connector glob
//! tenant glob
//!                 connector exact
//!                 connector glob
//! (no matcher: everyone)               least specific
//! ```
//!
//! (a glob is any pattern with `*` or `?`; ties go to the rule written first.)
//!
//! How: a token bucket per kind, holding `burst` seconds of its rate, that
//! may go into debt. A request is always forwarded; the debt it leaves is the
//! throttle: the response carries `throttle_time_ms = max(broker's, ours)`
//! (KIP-219) and the connection is muted for it, at most `quota.max_throttle`
//! at a time. Muting holds back the next Produce or Fetch (and so everything
//! behind it); a Produce is held until the debt is repaid — muted again, a
//! throttle at a time, for a debt larger than one throttle — but at most
//! `quota.max_hold`, after which it goes and the debt carries over (a Fetch's
//! size is capped to what the bucket holds instead). Requests that are neither —
//! heartbeats, joins, commits, metadata — are read and forwarded while muted,
//! so a group member whose coordinator shares the connection stays in its
//! group.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::config::{Glob, QuotaRule, QuotaSettings};
use crate::identity::Identity;

pub(crate) mod tier;
pub(crate) mod topic;

/// What a bucket counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Produce request bytes, as the client sent them.
    Produce = 0,
    /// Fetch response bytes, as the broker sent them.
    Fetch = 1,
    /// Requests (`requests_per_sec`), or microseconds of proxy time spent on
    /// them (`request_percentage`).
    Requests = 2,
}

pub(crate) const KINDS: [Kind; 3] = [Kind::Produce, Kind::Fetch, Kind::Requests];

impl Kind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Produce => "produce",
            Kind::Fetch => "fetch",
            Kind::Requests => "requests",
        }
    }
}

/// One resolved limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    /// Units per second.
    pub rate: f64,
    pub burst: Duration,
    /// Requests only: the rate is microseconds of proxy time (a percentage).
    pub time_based: bool,
    /// Which `[[quotas]]` entry set it.
    pub rule: usize,
}

/// A limit per [`Kind`]; `None`: unlimited.
pub(crate) type Limits = [Option<Limit>; 3];

/// Who a quota applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntityKey {
    /// The authenticated principal, if any.
    pub tenant: Option<String>,
    /// The connector, if the client is one's.
    pub connector: Option<String>,
    /// The client id, for a client with no connector ("" otherwise: a
    /// connector's clients share one entity whatever their ids).
    pub client_id: String,
}

impl EntityKey {
    pub fn new(identity: &Identity, principal: Option<&str>) -> EntityKey {
        EntityKey {
            tenant: principal.map(str::to_string),
            connector: identity.connector.clone(),
            client_id: if identity.connector.is_some() {
                String::new()
            } else {
                identity.client_id.clone()
            },
        }
    }

    /// The `connector` label: the connector, or the client id.
    pub fn label(&self) -> &str {
        self.connector.as_deref().unwrap_or(&self.client_id)
    }
}

/// A token bucket that may go into debt.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(limit: &Limit, now: Instant) -> Bucket {
        let capacity = limit.rate * limit.burst.as_secs_f64();
        Bucket {
            rate: limit.rate,
            capacity,
            tokens: capacity,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.capacity);
        self.last = now;
    }

    /// Takes `n`; the time until the bucket is out of debt again.
    fn charge(&mut self, n: f64, now: Instant) -> Duration {
        self.refill(now);
        self.tokens -= n;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }

    /// The time until the bucket is out of debt, with nothing more taken.
    fn owed(&mut self, now: Instant) -> Duration {
        self.refill(now);
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }

    /// A new limit keeps what was owed or saved, within the new capacity.
    fn retune(&mut self, limit: &Limit, now: Instant) {
        self.refill(now);
        self.rate = limit.rate;
        self.capacity = limit.rate * limit.burst.as_secs_f64();
        self.tokens = self.tokens.min(self.capacity);
    }
}

/// Counters of one entity, for `/metrics` and `/quotas`.
#[derive(Debug, Default)]
pub struct Counters {
    pub produce_bytes: AtomicU64,
    pub fetch_bytes: AtomicU64,
    pub requests: AtomicU64,
    /// Total throttle imposed, microseconds.
    pub throttle_micros: AtomicU64,
    pub throttled: AtomicU64,
    /// Produce or Fetch requests held right now (muted, in debt or paused).
    pub held: AtomicU64,
    /// Microseconds of proxy time spent on this entity's requests (what a
    /// `request_percentage` bucket is charged).
    pub request_micros: AtomicU64,
    /// Units other processes of the tier reported for this entity
    /// (`[quota.shared]`), per [`tier::Used`] slot: charged to the buckets
    /// here as if used here.
    pub peer: [AtomicU64; tier::USED],
}

/// One entity's quota state, shared by its connections.
#[derive(Debug)]
pub struct Entity {
    pub key: EntityKey,
    limits: Mutex<(Limits, [Option<Bucket>; 3])>,
    /// Bit per [`Kind`] with a limit: unlimited traffic never takes the lock.
    limited: AtomicU8,
    paused: AtomicBool,
    pub counters: Counters,
    /// The last few (when, produce bytes, fetch bytes) samples, for rates.
    samples: Mutex<VecDeque<(Instant, u64, u64)>>,
}

impl Entity {
    fn new(key: EntityKey, limits: Limits, paused: bool) -> Entity {
        let e = Entity {
            key,
            limits: Mutex::new((limits, [None, None, None])),
            limited: AtomicU8::new(0),
            paused: AtomicBool::new(paused),
            counters: Counters::default(),
            samples: Mutex::new(VecDeque::new()),
        };
        e.set_limits(limits);
        e
    }

    fn set_limits(&self, limits: Limits) {
        let now = Instant::now();
        let mut guard = self.limits.lock().expect("quota lock");
        let (current, buckets) = &mut *guard;
        let mut mask = 0u8;
        for kind in KINDS {
            let i = kind as usize;
            match (&limits[i], &mut buckets[i]) {
                (None, b) => *b = None,
                (Some(l), Some(b)) if current[i].is_some_and(|c| c.time_based == l.time_based) => {
                    b.retune(l, now);
                    mask |= 1 << i;
                }
                (Some(l), b) => {
                    *b = Some(Bucket::new(l, now));
                    mask |= 1 << i;
                }
            }
        }
        *current = limits;
        self.limited.store(mask, Relaxed);
    }

    pub fn limits(&self) -> Limits {
        self.limits.lock().expect("quota lock").0
    }

    pub fn is_limited(&self, kind: Kind) -> bool {
        self.limited.load(Relaxed) & (1 << kind as usize) != 0
    }

    pub fn is_paused(&self) -> bool {
        self.paused.load(Relaxed)
    }

    /// Counts `n` units of `kind` and charges them to its bucket, if any:
    /// the throttle they leave (zero when within the quota).
    pub fn charge(&self, kind: Kind, n: u64) -> Duration {
        self.charge_at(kind, n, Instant::now())
    }

    fn charge_at(&self, kind: Kind, n: u64, now: Instant) -> Duration {
        let counter = match kind {
            Kind::Produce => &self.counters.produce_bytes,
            Kind::Fetch => &self.counters.fetch_bytes,
            Kind::Requests => &self.counters.requests,
        };
        counter.fetch_add(n, Relaxed);
        if !self.is_limited(kind) {
            return Duration::ZERO;
        }
        let mut guard = self.limits.lock().expect("quota lock");
        match &mut guard.1[kind as usize] {
            Some(b) => b.charge(n as f64, now),
            None => Duration::ZERO,
        }
    }

    /// The time until this entity may send `kind` (Produce or Fetch) again:
    /// until the debt of that kind's bucket, and of the request bucket, is
    /// repaid.
    pub fn owed(&self, kind: Kind, now: Instant) -> Duration {
        let mask = (1 << kind as usize) | (1 << Kind::Requests as usize);
        if self.limited.load(Relaxed) & mask == 0 {
            return Duration::ZERO;
        }
        let mut guard = self.limits.lock().expect("quota lock");
        let buckets = &mut guard.1;
        let mut owed = Duration::ZERO;
        for i in [kind as usize, Kind::Requests as usize] {
            if let Some(b) = buckets[i].as_mut() {
                owed = owed.max(b.owed(now));
            }
        }
        owed
    }

    /// A Produce of this entity waiting to be read, `held` so far:
    /// the next piece of its hold, or `None` when it may go. While a debt is
    /// owed the request is held again and again, each piece at most
    /// `max_throttle` (so each `throttle_time_ms` stays short) and all of them
    /// together at most `max_hold` (so no request nears the client's
    /// request.timeout.ms). So a quota holds for requests larger than
    /// `quota × max_throttle` (up to `quota × max_hold`), where one hold per
    /// request would let one request through per `max_throttle`, whatever
    /// its size.
    pub fn hold_step(
        &self,
        kind: Kind,
        held: Duration,
        (max_throttle, max_hold): (Duration, Duration),
        now: Instant,
    ) -> Option<Duration> {
        let owed = self.owed(kind, now);
        let left = max_hold.saturating_sub(held);
        (!owed.is_zero() && !left.is_zero()).then(|| owed.min(max_throttle).min(left))
    }

    /// Charges proxy time to a `request_percentage` bucket (a
    /// `requests_per_sec` one counts requests instead, in [`charge`]).
    pub fn charge_time(&self, spent: Duration) -> Duration {
        let micros = spent.as_micros() as u64;
        self.counters.request_micros.fetch_add(micros, Relaxed);
        self.charge_requests(true, micros as f64)
    }

    /// What this entity used here, per [`tier::Used`] slot.
    pub(crate) fn used(&self) -> tier::Used {
        let c = &self.counters;
        [
            c.produce_bytes.load(Relaxed),
            c.fetch_bytes.load(Relaxed),
            c.requests.load(Relaxed),
            c.request_micros.load(Relaxed),
        ]
    }

    /// Usage a peer reported for this entity: counted apart, and charged to
    /// the buckets as if it were this process's own, so the debt (and the
    /// throttle and hold) here is the tier's.
    pub(crate) fn absorb_peer(&self, used: &tier::Used) {
        for (slot, n) in used.iter().enumerate() {
            self.counters.peer[slot].fetch_add(*n, Relaxed);
        }
        if self.limited.load(Relaxed) == 0 {
            return;
        }
        let now = Instant::now();
        let mut guard = self.limits.lock().expect("quota lock");
        let (limits, buckets) = &mut *guard;
        for kind in KINDS {
            let i = kind as usize;
            let n = match (kind, limits[i]) {
                (_, None) => continue,
                (Kind::Produce, _) => used[0],
                (Kind::Fetch, _) => used[1],
                (Kind::Requests, Some(l)) if l.time_based => used[3],
                (Kind::Requests, Some(_)) => used[2],
            };
            if let Some(b) = buckets[i].as_mut() {
                b.charge(n as f64, now);
            }
        }
    }

    /// One request: counted, and charged to a `requests_per_sec` bucket.
    pub fn charge_request(&self) -> Duration {
        self.counters.requests.fetch_add(1, Relaxed);
        self.charge_requests(false, 1.0)
    }

    /// Charges the requests bucket if it counts `time_based` (microseconds
    /// of proxy time) or not (requests).
    fn charge_requests(&self, time_based: bool, amount: f64) -> Duration {
        if !self.is_limited(Kind::Requests) {
            return Duration::ZERO;
        }
        let mut guard = self.limits.lock().expect("quota lock");
        let (limits, buckets) = &mut *guard;
        match (
            &limits[Kind::Requests as usize],
            &mut buckets[Kind::Requests as usize],
        ) {
            (Some(l), Some(b)) if l.time_based == time_based => b.charge(amount, Instant::now()),
            _ => Duration::ZERO,
        }
    }

    /// Fetch bytes the bucket holds now (at least 1): what a Fetch's
    /// `max_bytes` is capped to. `None` without a fetch limit.
    pub fn fetch_allowance(&self) -> Option<i32> {
        if !self.is_limited(Kind::Fetch) {
            return None;
        }
        let mut guard = self.limits.lock().expect("quota lock");
        let b = guard.1[Kind::Fetch as usize].as_mut()?;
        b.refill(Instant::now());
        Some(b.tokens.clamp(1.0, i32::MAX as f64) as i32)
    }

    pub fn throttled(&self, d: Duration) {
        if !d.is_zero() {
            self.counters
                .throttle_micros
                .fetch_add(d.as_micros() as u64, Relaxed);
            self.counters.throttled.fetch_add(1, Relaxed);
        }
    }

    /// Bytes per second over the last few seconds: (produce, fetch).
    pub fn rates(&self) -> (f64, f64) {
        let samples = self.samples.lock().expect("samples lock");
        match (samples.front(), samples.back()) {
            (Some(a), Some(b)) if b.0 > a.0 => {
                let dt = (b.0 - a.0).as_secs_f64();
                ((b.1 - a.1) as f64 / dt, (b.2 - a.2) as f64 / dt)
            }
            _ => (0.0, 0.0),
        }
    }

    fn sample(&self, now: Instant) {
        let mut samples = self.samples.lock().expect("samples lock");
        samples.push_back((
            now,
            self.counters.produce_bytes.load(Relaxed),
            self.counters.fetch_bytes.load(Relaxed),
        ));
        while samples.len() > 6 {
            samples.pop_front();
        }
    }
}

/// Rules and settings in force (replaced whole by a reload).
#[derive(Debug, Clone)]
struct Live {
    settings: QuotaSettings,
    rules: Vec<QuotaRule>,
}

/// Entities kept after their last connection closes, up to this many; past
/// it, entities no connection uses are forgotten (with their counters).
const MAX_ENTITIES: usize = 10_000;

/// Every entity's quota state, and the rules and pauses that apply.
#[derive(Debug)]
pub struct Quotas {
    live: RwLock<Live>,
    entities: Mutex<HashMap<EntityKey, Arc<Entity>>>,
    /// Paused connector labels (a connector name, or a client id).
    paused: Mutex<BTreeSet<String>>,
    /// Bumped on every change (reload, pause, resume): held requests look again.
    changed: watch::Sender<u64>,
    pub reloads: AtomicU64,
    pub reload_failures: AtomicU64,
    /// `[quota.shared]`: the tier's reports and this process's own.
    pub tier: tier::Tier,
}

impl Quotas {
    pub fn new(settings: QuotaSettings, rules: Vec<QuotaRule>) -> Quotas {
        Quotas {
            tier: tier::Tier::new(settings.shared.as_ref()),
            live: RwLock::new(Live { settings, rules }),
            entities: Mutex::new(HashMap::new()),
            paused: Mutex::new(BTreeSet::new()),
            changed: watch::channel(0).0,
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
        }
    }

    pub fn settings(&self) -> QuotaSettings {
        self.live.read().expect("quota lock").settings.clone()
    }

    pub fn rules(&self) -> Vec<QuotaRule> {
        self.live.read().expect("quota lock").rules.clone()
    }

    pub fn max_throttle(&self) -> Duration {
        self.live.read().expect("quota lock").settings.max_throttle
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Connect's client ids first, then `quota.connector_patterns`.
    pub fn identify(&self, client_id: &str) -> Identity {
        let mut identity = Identity::from_client_id(client_id);
        if identity.connector.is_none() {
            let live = self.live.read().expect("quota lock");
            identity.connector = live
                .settings
                .connector_patterns
                .iter()
                .find_map(|p| p.connector(client_id))
                .map(str::to_string);
        }
        identity
    }

    /// The entity of a client, made on first sight.
    pub fn entity(&self, identity: &Identity, principal: Option<&str>) -> Arc<Entity> {
        self.entity_by_key(EntityKey::new(identity, principal))
    }

    /// The entity of `key`, made on first sight (a client here, or a peer's
    /// report).
    pub(crate) fn entity_by_key(&self, key: EntityKey) -> Arc<Entity> {
        let mut entities = self.entities.lock().expect("entities lock");
        if let Some(e) = entities.get(&key) {
            return e.clone();
        }
        if entities.len() >= MAX_ENTITIES {
            entities.retain(|_, e| Arc::strong_count(e) > 1);
        }
        let limits = {
            let live = self.live.read().expect("quota lock");
            resolve(&live.rules, &live.settings, &key)
        };
        let paused = self
            .paused
            .lock()
            .expect("paused lock")
            .contains(key.label());
        let e = Arc::new(Entity::new(key.clone(), limits, paused));
        entities.insert(key, e.clone());
        e
    }

    /// Puts new rules (and settings, if given) in force for every entity,
    /// open connections included. Returns one line per entity whose limits
    /// changed, for the log.
    pub fn apply(&self, settings: Option<QuotaSettings>, rules: Vec<QuotaRule>) -> Vec<String> {
        let live = {
            let mut live = self.live.write().expect("quota lock");
            if let Some(mut s) = settings {
                if s.shared != live.settings.shared {
                    tracing::warn!(
                        "[quota.shared] differs from the one in force: kept as it is until the next restart"
                    );
                }
                s.shared = live.settings.shared.clone();
                live.settings = s;
            }
            live.rules = rules;
            live.clone()
        };
        let mut changes = Vec::new();
        for e in self.entities.lock().expect("entities lock").values() {
            let new = resolve(&live.rules, &live.settings, &e.key);
            let old = e.limits();
            if old != new {
                changes.push(format!(
                    "{}: {} -> {}",
                    describe_key(&e.key),
                    describe_limits(&old),
                    describe_limits(&new)
                ));
                e.set_limits(new);
            }
        }
        self.changed.send_modify(|v| *v += 1);
        changes
    }

    /// Pauses (or resumes) every entity of a connector label, now and for
    /// connections still to come. Returns how many entities exist for it.
    pub fn set_paused(&self, label: &str, paused: bool) -> usize {
        {
            let mut set = self.paused.lock().expect("paused lock");
            if paused {
                set.insert(label.to_string());
            } else {
                set.remove(label);
            }
        }
        let mut n = 0;
        for e in self.entities.lock().expect("entities lock").values() {
            if e.key.label() == label {
                e.paused.store(paused, Relaxed);
                n += 1;
            }
        }
        self.changed.send_modify(|v| *v += 1);
        n
    }

    /// A pause or resume from the admin API: in force here now, and
    /// published to the tier with `[quota.shared]` (every replica, and any
    /// that starts later, applies it). Returns how many entities exist for
    /// it here, and whether it goes to the tier.
    pub fn pause(&self, label: &str, paused: bool) -> (usize, bool) {
        let n = self.set_paused(label, paused);
        (n, self.tier.queue_pause(label, paused))
    }

    pub fn paused(&self) -> Vec<String> {
        self.paused
            .lock()
            .expect("paused lock")
            .iter()
            .cloned()
            .collect()
    }

    pub(crate) fn sorted(&self) -> Vec<Arc<Entity>> {
        let mut all: Vec<Arc<Entity>> = self
            .entities
            .lock()
            .expect("entities lock")
            .values()
            .cloned()
            .collect();
        all.sort_by(|a, b| a.key.cmp(&b.key));
        all
    }

    /// Takes a rate sample of every entity (once a second).
    pub fn sample(&self) {
        let now = Instant::now();
        for e in self.sorted() {
            e.sample(now);
        }
    }
}

/// How specific a matcher is: 2 exact, 1 glob, 0 absent.
fn level(g: &Option<Glob>) -> u8 {
    match g {
        None => 0,
        Some(g) if g.as_str().contains(['*', '?']) => 1,
        Some(_) => 2,
    }
}

fn matches(rule: &QuotaRule, key: &EntityKey) -> bool {
    let tenant = match &rule.tenant {
        None => true,
        Some(g) => key.tenant.as_deref().is_some_and(|t| g.matches(t)),
    };
    let connector = match &rule.connector {
        None => true,
        Some(g) => key.connector.as_deref().is_some_and(|c| g.matches(c)),
    };
    let client_id = match &rule.client_id {
        None => true,
        Some(g) => key.connector.is_none() && g.matches(&key.client_id),
    };
    tenant && connector && client_id
}

/// Each kind from the most specific matching rule that sets it.
pub(crate) fn resolve(rules: &[QuotaRule], settings: &QuotaSettings, key: &EntityKey) -> Limits {
    let mut best: [Option<((u8, u8), usize)>; 3] = [None; 3];
    for (i, rule) in rules.iter().enumerate() {
        if !matches(rule, key) {
            continue;
        }
        let rank = (
            level(&rule.tenant),
            level(&rule.connector).max(level(&rule.client_id)),
        );
        let sets = [
            rule.produce_bytes_per_sec.is_some(),
            rule.fetch_bytes_per_sec.is_some(),
            rule.requests_per_sec.is_some() || rule.request_percentage.is_some(),
        ];
        for k in 0..3 {
            // Strictly more specific only: ties go to the earlier rule.
            if sets[k] && best[k].is_none_or(|(r, _)| rank > r) {
                best[k] = Some((rank, i));
            }
        }
    }
    let mut limits: Limits = [None; 3];
    for k in 0..3 {
        if let Some((_, i)) = best[k] {
            let r = &rules[i];
            let burst = r.burst.unwrap_or(settings.burst);
            let (rate, time_based) = match k {
                0 => (r.produce_bytes_per_sec.unwrap_or(0) as f64, false),
                1 => (r.fetch_bytes_per_sec.unwrap_or(0) as f64, false),
                _ => match (r.requests_per_sec, r.request_percentage) {
                    (Some(n), _) => (n as f64, false),
                    // 100% = one thread's whole second, in microseconds.
                    (None, Some(pct)) => (pct as f64 * 10_000.0, true),
                    (None, None) => (0.0, false),
                },
            };
            limits[k] = Some(Limit {
                rate,
                burst,
                time_based,
                rule: i,
            });
        }
    }
    limits
}

fn describe_key(key: &EntityKey) -> String {
    match &key.tenant {
        Some(t) => format!("{}@{t}", key.label()),
        None => key.label().to_string(),
    }
}

fn describe_limits(limits: &Limits) -> String {
    let parts: Vec<String> = KINDS
        .iter()
        .filter_map(|k| {
            limits[*k as usize].map(|l| {
                if l.time_based {
                    format!("request_percentage={}", l.rate / 10_000.0)
                } else {
                    format!("{}={}", k.as_str(), l.rate)
                }
            })
        })
        .collect();
    if parts.is_empty() {
        "unlimited".into()
    } else {
        parts.join(",")
    }
}

/// A connector `x` of tenant `alice`, paused and resumed (for the
/// renderers' tests).
#[cfg(test)]
pub(crate) fn resumed_alice() -> Quotas {
    let c =
        crate::config::Config::parse("[[quotas]]\nconnector = \"x\"\nfetch_bytes_per_sec = 100\n")
            .expect("a quota rule");
    let q = Quotas::new(c.quota, c.quotas);
    q.entity(
        &Identity::from_client_id("connector-consumer-x-1"),
        Some("alice"),
    );
    q.set_paused("x", true);
    q.set_paused("x", false);
    q
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn quotas(toml: &str) -> (QuotaSettings, Vec<QuotaRule>) {
        let c = Config::parse(toml).unwrap_or_else(|e| panic!("{e}"));
        (c.quota, c.quotas)
    }

    fn key(tenant: Option<&str>, client_id: &str) -> EntityKey {
        EntityKey::new(&Identity::from_client_id(client_id), tenant)
    }

    fn produce(rules: &[QuotaRule], s: &QuotaSettings, k: &EntityKey) -> Option<f64> {
        resolve(rules, s, k)[0].map(|l| l.rate)
    }

    #[test]
    fn most_specific_wins_as_kip_55_orders_it() {
        let (s, rules) = quotas(
            r#"
            [[quotas]]
            produce_bytes_per_sec = 1
            [[quotas]]
            connector = "orders-*"
            produce_bytes_per_sec = 2
            [[quotas]]
            connector = "orders-source"
            produce_bytes_per_sec = 3
            [[quotas]]
            tenant = "*"
            produce_bytes_per_sec = 4
            [[quotas]]
            tenant = "alice"
            produce_bytes_per_sec = 5
            [[quotas]]
            tenant = "alice"
            connector = "orders-source"
            produce_bytes_per_sec = 6
            fetch_bytes_per_sec = 60
            [[quotas]]
            client_id = "etl-*"
            produce_bytes_per_sec = 7
            "#,
        );
        let p = |t, c| produce(&rules, &s, &key(t, c));
        assert_eq!(p(None, "rdkafka"), Some(1.0), "the default");
        assert_eq!(p(None, "connector-producer-orders-sink-0"), Some(2.0));
        assert_eq!(p(None, "connector-producer-orders-source-3"), Some(3.0));
        assert_eq!(
            p(Some("bob"), "connector-producer-orders-source-3"),
            Some(4.0),
            "any tenant beats no tenant"
        );
        assert_eq!(
            p(Some("alice"), "connector-producer-orders-sink-0"),
            Some(5.0)
        );
        assert_eq!(
            p(Some("alice"), "connector-producer-orders-source-0"),
            Some(6.0)
        );
        assert_eq!(p(None, "etl-nightly"), Some(7.0));
        // client_id rules are for clients with no connector.
        assert_eq!(p(None, "connector-producer-etl-x-0"), Some(1.0));
        // Each kind is resolved on its own: alice's orders-source fetch limit
        // comes from its own rule; bob's from none.
        let k = key(Some("alice"), "connector-consumer-orders-source-0");
        assert_eq!(resolve(&rules, &s, &k)[1].map(|l| l.rate), Some(60.0));
        let k = key(Some("bob"), "connector-consumer-orders-source-0");
        assert_eq!(resolve(&rules, &s, &k)[1], None);
    }

    #[test]
    fn ties_go_to_the_first_rule() {
        let (s, rules) = quotas(
            "[[quotas]]\nconnector = \"a*\"\nproduce_bytes_per_sec = 1\n[[quotas]]\nconnector = \"ab*\"\nproduce_bytes_per_sec = 2\n",
        );
        assert_eq!(
            produce(&rules, &s, &key(None, "connector-producer-abc-0")),
            Some(1.0)
        );
    }

    #[test]
    fn a_bucket_lets_the_burst_through_then_throttles_to_the_rate() {
        let limit = Limit {
            rate: 1000.0,
            burst: Duration::from_secs(1),
            time_based: false,
            rule: 0,
        };
        let t0 = Instant::now();
        let mut b = Bucket::new(&limit, t0);
        assert_eq!(b.charge(1000.0, t0), Duration::ZERO, "the burst");
        assert_eq!(b.charge(500.0, t0), Duration::from_millis(500));
        // Half a second later the debt is repaid; one more second of rate fits.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(b.charge(0.0, t1), Duration::ZERO);
        let t2 = t1 + Duration::from_secs(10);
        b.refill(t2);
        assert_eq!(b.tokens, 1000.0, "never more than the burst");
        // A lower limit keeps the debt.
        b.charge(3000.0, t2);
        b.retune(
            &Limit {
                rate: 500.0,
                ..limit
            },
            t2,
        );
        assert_eq!(b.charge(0.0, t2), Duration::from_secs(4));
    }

    /// A client whose every request is 1 MB against a 200 KiB/s produce
    /// quota (librdkafka's default batch.size), on a simulated clock: it sends
    /// its next request the moment the proxy reads it.
    fn large_requests(max_throttle: Duration, max_hold: Duration) -> (f64, u64, u64) {
        let (s, rules) =
            quotas("[[quotas]]\nconnector = \"big\"\nproduce_bytes_per_sec = 204800\n");
        let q = Quotas::new(s, rules);
        let e = q.entity(&Identity::from_client_id("connector-producer-big-0"), None);
        const REQUEST: u64 = 1_000_000;
        let start = Instant::now();
        let mut now = start;
        let (mut pieces, mut sent) = (0, 0);
        for _ in 0..40 {
            let held_at = now;
            while let Some(piece) =
                e.hold_step(Kind::Produce, now - held_at, (max_throttle, max_hold), now)
            {
                assert!(
                    piece <= max_throttle,
                    "one throttle is at most max_throttle"
                );
                now += piece;
                pieces += 1;
            }
            assert!(
                now - held_at <= max_hold,
                "no request is held past max_hold"
            );
            e.charge_at(Kind::Produce, REQUEST, now);
            sent += REQUEST;
        }
        // Usage counted over the run, after the 1 s burst and the last
        // request (charged the moment it was read, repaid after the run).
        let rate = (sent - 204_800 - REQUEST) as f64 / (now - start).as_secs_f64();
        (
            rate / 204_800.0,
            pieces,
            e.counters.produce_bytes.load(Relaxed),
        )
    }

    #[test]
    fn a_debt_larger_than_max_throttle_is_carried_across_holds_until_repaid() {
        // 1 MB at 200 KiB/s is ~4.9 s of debt: each request is held in
        // pieces of at most 2 s until it is repaid, so the bucket's rate
        // holds (before: one 2 s hold per request, 2.4x the quota).
        let (ratio, pieces, counted) =
            large_requests(Duration::from_secs(2), Duration::from_secs(10));
        assert_eq!(counted, 40 * 1_000_000, "every byte counted");
        assert!(ratio <= 1.0 + 1e-9, "the quota holds: {ratio:.3}x");
        // Each request waited for its whole debt, longer than one throttle:
        // at least two pieces each.
        assert!(pieces >= 2 * 39, "{pieces} pieces");
        // The debt repaid between requests is one request's: the client is
        // never held longer than its own request costs.
        assert!(ratio > 0.95, "not starved: {ratio:.3}x");
    }

    #[test]
    fn a_hold_stops_at_max_hold_and_the_debt_carries_over() {
        // A quota of 200 KiB/s with max_hold 2 s: a 1 MB request's 4.9 s of
        // debt is more than one request may wait; it goes after 2 s and the
        // debt stays, so the next request waits its full 2 s at once.
        let (ratio, pieces, _) = large_requests(Duration::from_secs(2), Duration::from_secs(2));
        assert_eq!(pieces, 39, "one 2 s piece per request after the burst");
        assert!(
            ratio > 2.0,
            "{ratio:.3}x: bounded by one request per max_hold"
        );
    }

    #[test]
    fn unlimited_entities_only_count() {
        let q = Quotas::new(quotas("").0, vec![]);
        let e = q.entity(&Identity::from_client_id("connector-producer-x-0"), None);
        assert_eq!(e.charge(Kind::Produce, 10 << 20), Duration::ZERO);
        assert_eq!(e.counters.produce_bytes.load(Relaxed), 10 << 20);
        assert_eq!(e.fetch_allowance(), None);
    }

    #[test]
    fn apply_and_pause_reach_existing_entities() {
        let (s, rules) = quotas("[[quotas]]\nconnector = \"x\"\nfetch_bytes_per_sec = 100\n");
        let q = Quotas::new(s, rules);
        let id = Identity::from_client_id("connector-consumer-x-1");
        let e = q.entity(&id, Some("alice"));
        assert_eq!(e.fetch_allowance(), Some(100));
        assert!(Arc::ptr_eq(&e, &q.entity(&id, Some("alice"))), "shared");
        assert!(!Arc::ptr_eq(&e, &q.entity(&id, Some("bob"))), "per tenant");
        let (_, rules) = quotas("[[quotas]]\nconnector = \"x\"\nfetch_bytes_per_sec = 50\n");
        let changes = q.apply(None, rules);
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert_eq!(e.fetch_allowance(), Some(50));
        q.apply(None, vec![]);
        assert_eq!(e.fetch_allowance(), None);
        assert_eq!(q.set_paused("x", true), 2);
        assert!(e.is_paused());
        let later = q.entity(&Identity::from_client_id("connector-producer-x-0"), None);
        assert!(
            later.is_paused(),
            "a paused connector's new connections are paused"
        );
        q.set_paused("x", false);
        assert!(!e.is_paused() && !later.is_paused());
    }

    #[test]
    fn connector_patterns_name_other_clients() {
        let (s, _) = quotas("[quota]\nconnector_patterns = [\"etl-{connector}-worker-*\", \"{connector}.loader\"]\n");
        let q = Quotas::new(s, vec![]);
        assert_eq!(
            q.identify("etl-nightly-orders-worker-3")
                .connector
                .as_deref(),
            Some("nightly-orders")
        );
        assert_eq!(
            q.identify("billing.loader").connector.as_deref(),
            Some("billing")
        );
        assert_eq!(q.identify("rdkafka").connector, None);
        assert_eq!(
            q.identify("connector-producer-pg-0").connector.as_deref(),
            Some("pg")
        );
    }

    #[test]
    fn bad_quota_rules_are_listed_with_their_index() {
        let err = Config::parse(
            "[[quotas]]\nconnector = \"a\"\n[[quotas]]\nconnector = \"b\"\nclient_id = \"c\"\nproduce_bytes_per_sec = 0\nrequests_per_sec = 5\nrequest_percentage = 50\ncolour = 1\n[quota]\nmax_throttle = \"60s\"\nconnector_patterns = [\"nope\"]\n",
        )
        .unwrap_err()
        .to_string();
        for key in [
            "quotas[0]: sets no limit",
            "quotas[1].client_id",
            "quotas[1].produce_bytes_per_sec",
            "quotas[1].request_percentage",
            "quotas[1].colour",
            "quota.max_throttle",
            "quota.connector_patterns[0]",
        ] {
            assert!(err.contains(key), "{key} missing from:\n{err}");
        }
        let (_, rules) = quotas(
            "[[quotas]]\ntenant = \"t\"\nproduce_bytes_per_sec = \"1MiB\"\nburst = \"250ms\"\n",
        );
        assert_eq!(rules[0].produce_bytes_per_sec, Some(1 << 20));
        assert_eq!(rules[0].burst, Some(Duration::from_millis(250)));
    }
}
