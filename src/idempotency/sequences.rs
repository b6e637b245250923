//! Sequence translation for idempotent producers (`producer_id >= 0`).
//!
//! The broker checks that each batch of a (producer id, epoch, partition)
//! starts right after the last one. When the proxy removes replayed records
//! from an idempotent batch, the broker must still see a gap-free sequence:
//!
//! ```text
//! broker_base(s) = s − delta(s)      delta(s) = records removed from batches before s
//! ```
//!
//! Only batches that lose records change `delta`, so only they leave a
//! [`Point`]: (client base sequence, count, the indices removed, delta after).
//! A point is written to disk and flushed before its batch goes upstream, and
//! a retry of that batch (same base sequence and count) gets exactly the same
//! records removed and the same broker sequence. A new epoch or producer id
//! starts from delta 0, as the broker does.
//!
//! **No record the broker may already hold is ever counted as removed.** A
//! batch that was forwarded whole may have been appended even if its answer
//! never came back (a proxy crash, a dropped connection); if its retry were
//! trimmed, the broker would take the trimmed retry's sequences as the
//! *next* batch's and answer that one from its duplicate cache without
//! writing it. So a batch may lose records only when it is provably new to
//! the broker ([`Prior::New`]):
//!
//! * a batch this process decided before (same base and count, a stored
//!   point) gets that decision again ([`Prior::Decided`]);
//! * a batch starting below the end of what this process already forwarded
//!   for the producer-partition is a retry of a whole batch ([`Prior::Retry`]):
//!   nothing removed;
//! * a producer-partition this process has no memory of (after a restart,
//!   after the memory let it go, or a producer that reached this process
//!   mid-stream: its first batch starts above 0, or the store says batches
//!   of it went upstream before) may be resending what an earlier process
//!   forwarded. An idempotent producer has at most 5 batches in flight per
//!   partition and resends them first, in order, so its first
//!   [`GUARDED_BATCHES`] batches here lose nothing ([`Prior::Unknown`]; the
//!   replays they carry are counted as `fail_open{reason="sequence_unknown"}`).
//!   A producer-partition whose first batch starts at sequence 0 and of
//!   which the store knows nothing is new: a fresh producer, such as the
//!   one a restarted Connect task replays with.
//!
//! The store learns that a producer-partition sent batches upstream before
//! the first of them goes (one flushed write per producer-partition), and
//! decisions of one producer-partition are made one at a time
//! ([`Sequences::begin`] holds its lock until the decision is stored).
//!
//! State nobody touched for [`STATE_TTL`] is pruned: longer than Kafka keeps
//! a producer's state (`producer.id.expiration.ms`, 1 day by default; a
//! producer idle that long starts a new epoch).
//!
//! Sequences wrap at `i32::MAX` in Kafka; past the wrap, batches count as
//! retries and lose nothing (duplicates pass, nothing is lost).
//!
//! One process's memory: a producer whose batches reach several idempotent
//! processes without a shared store is protected by the guard above only
//! when it moves mid-stream (its first batch here starts above 0).
//!
//! **Across a tier (`[dedup.shared]`).** A producer that moves to another
//! process (its replica died, its connection went elsewhere) must be
//! translated there by the same delta, or the broker answers its next
//! batches `OUT_OF_ORDER_SEQUENCE_NUMBER`. So every point is published to
//! the shared window's topic after it is on disk here and before its batch
//! goes upstream ([`PointLog`], bounded by `dedup.shared.catch_up_wait`), and
//! every process folds its peers' points into its own store
//! ([`Sequences::learn`]). A connection's first Produce catches up with the
//! topic before anything is decided, so the process a producer moves to
//! knows every point published before the move. A point whose publish was
//! not confirmed in time still governs its batch (the batch goes trimmed):
//! a peer that never learns it translates by less than the truth, which the
//! broker refuses as out of order, never as a duplicate. While the topic is
//! unreachable nothing new is trimmed from idempotent batches
//! (`fail_open{reason="sequence_unshared"}`): no point is made that peers
//! could not know.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::Error;
use crate::store::Store;

/// How many points one producer-partition keeps: retries only go back as
/// far as the in-flight requests (at most 5 for idempotent producers).
const POINTS_KEPT: usize = 16;
/// Producer-partitions kept in memory (the rest are read back from the
/// store when needed).
const CACHED: u64 = 100_000;
/// Batches of a producer-partition this process has no memory of that lose
/// nothing: an idempotent producer keeps at most 5 in flight per partition
/// (Java and librdkafka refuse more), and resends those first.
pub const GUARDED_BATCHES: u8 = 5;
/// Untouched state older than this is pruned.
pub const STATE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// How often the store is scanned for state past [`STATE_TTL`].
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// `[dedup.shared]`: how decisions reach the tier's other processes.
pub struct PointLog {
    /// The log is reachable now: only then may a batch lose records.
    pub reachable: Box<dyn Fn() -> bool + Send + Sync>,
    /// Publishes one encoded point ([`encode_shared`]); `true` once the log
    /// acknowledged it, `false` if that was not confirmed in time.
    pub publish: Box<dyn Fn(Vec<u8>) -> futures::future::BoxFuture<'static, bool> + Send + Sync>,
}

/// One point as published to the shared window's topic: the producer-
/// partition (length-prefixed) and the point.
pub fn encode_shared(key: &SeqKey, point: &Point) -> Vec<u8> {
    let k = key.bytes();
    let mut out = Vec::with_capacity(2 + k.len() + 16 + 4 * point.dropped.len());
    out.extend_from_slice(&(k.len() as u16).to_be_bytes());
    out.extend_from_slice(&k);
    for v in [point.base, point.count, point.delta_after] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out.extend_from_slice(&(point.dropped.len() as u32).to_be_bytes());
    for i in &point.dropped {
        out.extend_from_slice(&i.to_be_bytes());
    }
    out
}

/// The inverse of [`encode_shared`]; `None` for anything malformed.
pub fn decode_shared(buf: &[u8]) -> Option<(SeqKey, Point)> {
    let klen = u16::from_be_bytes(buf.get(0..2)?.try_into().ok()?) as usize;
    let key = SeqKey::from_bytes(buf.get(2..2 + klen)?)?;
    let rest = buf.get(2 + klen..)?;
    let word = |i: usize| -> Option<u32> {
        Some(u32::from_be_bytes(
            rest.get(4 * i..4 * i + 4)?.try_into().ok()?,
        ))
    };
    let n = word(3)? as usize;
    if rest.len() != 16 + 4 * n {
        return None;
    }
    let dropped = (0..n).map(|i| word(4 + i)).collect::<Option<Vec<u32>>>()?;
    Some((
        key,
        Point {
            base: word(0)? as i32,
            count: word(1)? as i32,
            delta_after: word(2)? as i32,
            dropped,
        },
    ))
}

/// Identifies one producer's sequence on one partition.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SeqKey {
    pub producer_id: i64,
    pub epoch: i16,
    pub topic: String,
    pub partition: i32,
}

impl SeqKey {
    fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(14 + self.topic.len() + 4);
        out.extend_from_slice(&self.producer_id.to_be_bytes());
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.extend_from_slice(&(self.topic.len() as u16).to_be_bytes());
        out.extend_from_slice(self.topic.as_bytes());
        out.extend_from_slice(&self.partition.to_be_bytes());
        out
    }
}

/// One batch that lost records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Point {
    pub base: i32,
    pub count: i32,
    /// Indices of the records removed, ascending.
    pub dropped: Vec<u32>,
    /// delta for every sequence after this batch.
    pub delta_after: i32,
}

/// What the store keeps of one producer-partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeqState {
    points: Vec<Point>,
    /// Batches of it went upstream (through a process on this store).
    forwarded: bool,
    /// When it was last written (ms since the epoch; 0: written by a version
    /// that did not say).
    touched_ms: u64,
}

/// The first byte of the current encoding (the first one began with a
/// big-endian point count of at most 16, so with 0).
const FORMAT: u8 = 1;

impl SeqState {
    /// Records removed before client sequence `seq`.
    pub fn delta_before(&self, seq: i32) -> i32 {
        self.points
            .iter()
            .rev()
            .find(|p| p.base.wrapping_add(p.count) <= seq)
            .map_or(0, |p| p.delta_after)
    }

    /// The decision an earlier attempt of this very batch got.
    pub fn decided(&self, base: i32, count: i32) -> Option<&Point> {
        self.points
            .iter()
            .find(|p| p.base == base && p.count == count)
    }

    fn push(&mut self, point: Point) {
        self.points.retain(|p| p.base != point.base);
        self.points.push(point);
        self.points.sort_by_key(|p| p.base);
        if self.points.len() > POINTS_KEPT {
            let extra = self.points.len() - POINTS_KEPT;
            self.points.drain(..extra);
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = vec![FORMAT, u8::from(self.forwarded)];
        out.extend_from_slice(&self.touched_ms.to_be_bytes());
        out.extend_from_slice(&(self.points.len() as u32).to_be_bytes());
        for p in &self.points {
            out.extend_from_slice(&p.base.to_be_bytes());
            out.extend_from_slice(&p.count.to_be_bytes());
            out.extend_from_slice(&p.delta_after.to_be_bytes());
            out.extend_from_slice(&(p.dropped.len() as u32).to_be_bytes());
            for i in &p.dropped {
                out.extend_from_slice(&i.to_be_bytes());
            }
        }
        out
    }

    fn decode(buf: &[u8]) -> Option<SeqState> {
        let mut at = 0;
        let mut next = |n: usize| -> Option<&[u8]> {
            let s = buf.get(at..at + n)?;
            at += n;
            Some(s)
        };
        let u32_at = |b: &[u8]| u32::from_be_bytes(b.try_into().expect("4 bytes"));
        // The first encoding had neither flag nor time: a producer-partition
        // with points sent batches upstream.
        let (forwarded, touched_ms) = if buf.first() == Some(&FORMAT) {
            let head = next(2)?;
            let touched = u64::from_be_bytes(next(8)?.try_into().expect("8 bytes"));
            (head[1] != 0, touched)
        } else {
            (true, 0)
        };
        let count = u32_at(next(4)?) as usize;
        let mut points = Vec::with_capacity(count.min(POINTS_KEPT));
        for _ in 0..count {
            let base = u32_at(next(4)?) as i32;
            let n = u32_at(next(4)?) as i32;
            let delta_after = u32_at(next(4)?) as i32;
            let k = u32_at(next(4)?) as usize;
            let mut dropped = Vec::with_capacity(k.min(1 << 16));
            for _ in 0..k {
                dropped.push(u32_at(next(4)?));
            }
            points.push(Point {
                base,
                count: n,
                dropped,
                delta_after,
            });
        }
        Some(SeqState {
            points,
            forwarded,
            touched_ms,
        })
    }
}

/// What this process knows of a batch before deciding it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prior {
    /// An earlier attempt of this batch removed these records: the same again.
    Decided(Vec<u32>),
    /// A retry of a batch forwarded whole: nothing removed.
    Retry,
    /// Maybe a resend of a batch an earlier process forwarded: nothing removed.
    Unknown,
    /// New to the broker: replays may go.
    New,
}

/// What this process decided for one producer-partition (memory only).
#[derive(Debug, Clone, Copy)]
struct Memory {
    /// The client sequence after the last batch decided.
    sent_end: i64,
    /// Batches still guarded ([`Prior::Unknown`]).
    guarded: u8,
}

/// One batch's decision in progress: the producer-partition stays locked
/// until [`Turn::finish`] (or until the turn is dropped).
pub struct Turn<'a> {
    sequences: &'a Sequences,
    key: SeqKey,
    state: SeqState,
    prior: Prior,
    memory: Option<Memory>,
    base: i32,
    count: i32,
    _lock: tokio::sync::OwnedMutexGuard<()>,
}

impl Turn<'_> {
    pub fn prior(&self) -> &Prior {
        &self.prior
    }

    /// Records removed before this batch.
    pub fn delta(&self) -> i32 {
        self.state.delta_before(self.base)
    }

    /// `[dedup.shared]` with its log unreachable now: peers could not learn
    /// a decision made now, so nothing may be removed.
    pub fn unshared(&self) -> bool {
        self.sequences
            .log
            .get()
            .is_some_and(|log| !(log.reachable)())
    }

    /// The batch goes upstream with `point` (`None`: it loses nothing).
    /// Durable before it returns; on an error the caller forwards the batch
    /// whole, and this process keeps translating as if no point was made.
    pub async fn finish(self, point: Option<Point>) -> Result<(), Error> {
        let seqs = self.sequences;
        let end = i64::from(self.base) + i64::from(self.count);
        let memory = match self.memory {
            Some(m) => Memory {
                sent_end: m.sent_end.max(end),
                guarded: m
                    .guarded
                    .saturating_sub(u8::from(self.prior == Prior::Unknown)),
            },
            None => Memory {
                sent_end: end,
                guarded: if self.prior == Prior::Unknown {
                    GUARDED_BATCHES - 1
                } else {
                    0
                },
            },
        };
        seqs.memory.insert(self.key.clone(), memory);
        let now = now_ms();
        let stale = now.saturating_sub(self.state.touched_ms) > STATE_TTL.as_millis() as u64 / 4;
        if point.is_none() && self.state.forwarded && !stale {
            return Ok(());
        }
        let mut state = self.state.clone();
        let encoded = point.as_ref().map(|p| encode_shared(&self.key, p));
        if let Some(p) = point {
            state.push(p);
        }
        state.forwarded = true;
        state.touched_ms = now;
        match seqs
            .store
            .put_sequence_state_durably(&self.key.bytes(), &state.encode())
            .await
        {
            Ok(()) => {
                // Shared before the batch goes: the process this producer
                // moves to translates by the same delta.
                let shared = match (encoded, seqs.log.get()) {
                    (Some(bytes), Some(log)) => Some((log.publish)(bytes)),
                    _ => None,
                };
                seqs.cache.insert(self.key, state);
                if let Some(published) = shared {
                    published.await;
                }
                Ok(())
            }
            Err(e) => {
                // What the broker sees is the state without this point,
                // whatever sled kept: translate by that from now on.
                seqs.pinned
                    .lock()
                    .expect("sequences lock")
                    .insert(self.key, self.state);
                Err(e)
            }
        }
    }
}

/// Every producer's translation state: a memory cache over the store.
pub struct Sequences {
    store: Arc<Store>,
    cache: moka::sync::Cache<SeqKey, SeqState>,
    memory: moka::sync::Cache<SeqKey, Memory>,
    /// States whose last write failed: what the broker saw, kept for the
    /// life of the process whatever the store holds.
    pinned: Mutex<HashMap<SeqKey, SeqState>>,
    locks: Mutex<HashMap<SeqKey, Arc<tokio::sync::Mutex<()>>>>,
    pruned_at: Mutex<Option<std::time::Instant>>,
    /// `[dedup.shared]`: where points are published.
    log: OnceLock<PointLog>,
}

impl Sequences {
    pub fn new(store: Arc<Store>) -> Sequences {
        Sequences {
            store,
            cache: moka::sync::Cache::new(CACHED),
            memory: moka::sync::Cache::new(CACHED),
            pinned: Mutex::new(HashMap::new()),
            locks: Mutex::new(HashMap::new()),
            // The first scan a while after start: not in a restart's rush.
            pruned_at: Mutex::new(Some(std::time::Instant::now())),
            log: OnceLock::new(),
        }
    }

    /// `[dedup.shared]`: publish every point to `log` (set once).
    pub fn share_with(&self, log: PointLog) {
        if self.log.set(log).is_err() {
            tracing::warn!("sequences: a second point log was refused");
        }
    }

    /// Folds a point a peer published into this process's state, so a
    /// producer that moves here is translated as it was there. `false`: it
    /// was known already.
    pub async fn learn(&self, key: &SeqKey, point: Point) -> Result<bool, Error> {
        let _guard = self.lock_for(key).lock_owned().await;
        let mut state = self.state(key)?;
        if state.decided(point.base, point.count) == Some(&point) {
            return Ok(false);
        }
        state.push(point);
        state.forwarded = true;
        state.touched_ms = now_ms();
        self.store
            .put_sequence_state_durably(&key.bytes(), &state.encode())
            .await?;
        self.pinned.lock().expect("sequences lock").remove(key);
        self.cache.insert(key.clone(), state);
        Ok(true)
    }

    /// The lock that makes one producer-partition's decisions one at a time.
    fn lock_for(&self, key: &SeqKey) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().expect("sequences lock");
        // Locks nobody holds or waits for go (a lock alive elsewhere has
        // more than the map's reference).
        if locks.len() > 1024 {
            locks.retain(|_, l| Arc::strong_count(l) > 1);
        }
        locks.entry(key.clone()).or_default().clone()
    }

    /// Starts deciding a batch of `key` at client sequence `base`: waits for
    /// any other decision of the same producer-partition, then says what is
    /// known of this batch.
    pub async fn begin(&self, key: &SeqKey, base: i32, count: i32) -> Result<Turn<'_>, Error> {
        let guard = self.lock_for(key).lock_owned().await;
        let state = self.state(key)?;
        let memory = self.memory.get(key);
        let prior = if let Some(p) = state.decided(base, count) {
            Prior::Decided(p.dropped.clone())
        } else {
            match memory {
                Some(m) if i64::from(base) < m.sent_end => Prior::Retry,
                Some(m) if m.guarded > 0 => Prior::Unknown,
                Some(_) => Prior::New,
                None if state.forwarded || base > 0 => Prior::Unknown,
                None => Prior::New,
            }
        };
        Ok(Turn {
            sequences: self,
            key: key.clone(),
            state,
            prior,
            memory,
            base,
            count,
            _lock: guard,
        })
    }

    /// The state of one producer-partition (empty when it never sent here).
    pub fn state(&self, key: &SeqKey) -> Result<SeqState, Error> {
        if let Some(s) = self.pinned.lock().expect("sequences lock").get(key) {
            return Ok(s.clone());
        }
        if let Some(s) = self.cache.get(key) {
            return Ok(s);
        }
        let state = match self.store.sequence_state(&key.bytes())? {
            Some(v) => {
                SeqState::decode(&v).ok_or_else(|| Error::store("unreadable sequence state"))?
            }
            None => SeqState::default(),
        };
        self.cache.insert(key.clone(), state.clone());
        Ok(state)
    }

    /// True at most every [`PRUNE_EVERY`]: time to call [`Sequences::prune`].
    pub fn prune_due(&self) -> bool {
        let mut at = self.pruned_at.lock().expect("sequences lock");
        if at.is_some_and(|t| t.elapsed() < PRUNE_EVERY) {
            return false;
        }
        *at = Some(std::time::Instant::now());
        true
    }

    /// Removes state untouched for [`STATE_TTL`]; returns how many
    /// producer-partitions went.
    pub async fn prune(&self) -> Result<usize, Error> {
        self.prune_at(now_ms()).await
    }

    async fn prune_at(&self, now: u64) -> Result<usize, Error> {
        let store = self.store.clone();
        let pruned = tokio::task::spawn_blocking(move || prune(&store, now))
            .await
            .map_err(|e| Error::store_caused(format!("sequence pruning panicked: {e}"), e))??;
        for key in &pruned {
            if let Some(key) = SeqKey::from_bytes(key) {
                self.cache.invalidate(&key);
                self.memory.invalidate(&key);
            }
        }
        Ok(pruned.len())
    }
}

impl SeqKey {
    fn from_bytes(b: &[u8]) -> Option<SeqKey> {
        let producer_id = i64::from_be_bytes(b.get(0..8)?.try_into().ok()?);
        let epoch = i16::from_be_bytes(b.get(8..10)?.try_into().ok()?);
        let len = u16::from_be_bytes(b.get(10..12)?.try_into().ok()?) as usize;
        let topic = std::str::from_utf8(b.get(12..12 + len)?).ok()?.to_string();
        let partition = i32::from_be_bytes(b.get(12 + len..16 + len)?.try_into().ok()?);
        Some(SeqKey {
            producer_id,
            epoch,
            topic,
            partition,
        })
    }
}

/// Removes every state untouched since `now - STATE_TTL` (unless rewritten
/// meanwhile); a state written by a version that kept no time gets one now.
fn prune(store: &Store, now: u64) -> Result<Vec<Vec<u8>>, Error> {
    let ttl = STATE_TTL.as_millis() as u64;
    let mut pruned = Vec::new();
    for item in store.sequence_states() {
        let (key, value) = item?;
        let Some(mut state) = SeqState::decode(&value) else {
            continue;
        };
        if state.touched_ms == 0 {
            state.touched_ms = now;
            store.replace_sequence_state(&key, &value, Some(&state.encode()))?;
        } else if now.saturating_sub(state.touched_ms) > ttl
            && store.replace_sequence_state(&key, &value, None)?
        {
            pruned.push(key.to_vec());
        }
    }
    Ok(pruned)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SeqKey {
        SeqKey {
            producer_id: 7,
            epoch: 0,
            topic: "orders".into(),
            partition: 2,
        }
    }

    /// Decides one batch (`point`: what it lost) and says what was known of it.
    async fn decide(seqs: &Sequences, base: i32, count: i32, point: Option<Point>) -> Prior {
        let turn = seqs.begin(&key(), base, count).await.unwrap();
        let prior = turn.prior().clone();
        turn.finish(point).await.unwrap();
        prior
    }

    fn open(dir: &std::path::Path) -> Sequences {
        Sequences::new(Arc::new(Store::open(dir).unwrap()))
    }

    #[tokio::test]
    async fn deltas_follow_the_points_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        // Batch 10..20 lost 3 records, batch 30..35 lost all 5.
        let p1 = Point {
            base: 10,
            count: 10,
            dropped: vec![0, 1, 2],
            delta_after: 3,
        };
        {
            let seqs = open(dir.path());
            assert_eq!(seqs.state(&key()).unwrap().delta_before(100), 0);
            decide(&seqs, 10, 10, Some(p1.clone())).await;
            let p2 = Point {
                base: 30,
                count: 5,
                dropped: vec![0, 1, 2, 3, 4],
                delta_after: 8,
            };
            decide(&seqs, 30, 5, Some(p2)).await;
            let s = seqs.state(&key()).unwrap();
            assert_eq!(s.delta_before(10), 0, "a retry of the first batch");
            assert_eq!(s.delta_before(20), 3);
            assert_eq!(s.delta_before(30), 3);
            assert_eq!(s.delta_before(35), 8);
            assert_eq!(s.decided(10, 10), Some(&p1));
            assert_eq!(s.decided(10, 9), None);
        }
        let seqs = open(dir.path());
        let s = seqs.state(&key()).unwrap();
        assert_eq!(s.delta_before(40), 8);
        assert_eq!(s.decided(30, 5).unwrap().dropped.len(), 5);
        assert_eq!(
            decide(&seqs, 10, 10, None).await,
            Prior::Decided(vec![0, 1, 2]),
            "a retry after the restart gets the first attempt's decision"
        );
        let other_epoch = SeqKey { epoch: 1, ..key() };
        assert_eq!(seqs.state(&other_epoch).unwrap().delta_before(40), 0);
    }

    #[tokio::test]
    async fn what_the_broker_may_hold_is_never_new() {
        let dir = tempfile::tempdir().unwrap();
        {
            let seqs = open(dir.path());
            assert_eq!(
                decide(&seqs, 0, 10, None).await,
                Prior::New,
                "a fresh producer"
            );
            assert_eq!(decide(&seqs, 0, 10, None).await, Prior::Retry);
            assert_eq!(decide(&seqs, 10, 10, None).await, Prior::New);
            assert_eq!(decide(&seqs, 5, 5, None).await, Prior::Retry);
        }
        // After a restart the store says batches went upstream: the first
        // five may be resends, whatever their sequence.
        let seqs = open(dir.path());
        for base in [10, 20, 30, 40, 50] {
            assert_eq!(
                decide(&seqs, base, 10, None).await,
                Prior::Unknown,
                "{base}"
            );
        }
        assert_eq!(decide(&seqs, 60, 10, None).await, Prior::New);
        assert_eq!(decide(&seqs, 20, 10, None).await, Prior::Retry);
    }

    #[tokio::test]
    async fn a_producer_met_mid_stream_is_guarded() {
        let dir = tempfile::tempdir().unwrap();
        let seqs = open(dir.path());
        for base in [50, 60, 70, 80, 90] {
            assert_eq!(decide(&seqs, base, 10, None).await, Prior::Unknown);
        }
        assert_eq!(decide(&seqs, 100, 10, None).await, Prior::New);
    }

    #[tokio::test]
    async fn decisions_of_one_producer_partition_wait_for_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let seqs = Arc::new(open(dir.path()));
        let first = seqs.begin(&key(), 0, 3).await.unwrap();
        let other = seqs.clone();
        let second = tokio::spawn(async move {
            let turn = other.begin(&key(), 0, 3).await.unwrap();
            turn.prior().clone()
        });
        tokio::task::yield_now().await;
        assert!(
            !second.is_finished(),
            "the second attempt waits for the first"
        );
        let point = Point {
            base: 0,
            count: 3,
            dropped: vec![0],
            delta_after: 1,
        };
        first.finish(Some(point)).await.unwrap();
        assert_eq!(second.await.unwrap(), Prior::Decided(vec![0]));
    }

    #[tokio::test]
    async fn state_nobody_touched_for_its_time_is_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let seqs = open(dir.path());
        decide(&seqs, 0, 10, None).await;
        let recent = SeqKey {
            partition: 3,
            ..key()
        };
        let turn = seqs.begin(&recent, 0, 1).await.unwrap();
        turn.finish(None).await.unwrap();
        // Now: nothing is old enough.
        assert_eq!(seqs.prune().await.unwrap(), 0);
        // The first key's time moves back past the TTL.
        let mut old = seqs.state(&key()).unwrap();
        old.touched_ms = now_ms() - STATE_TTL.as_millis() as u64 - 1000;
        seqs.store
            .put_sequence_state_durably(&key().bytes(), &old.encode())
            .await
            .unwrap();
        assert_eq!(seqs.prune().await.unwrap(), 1);
        assert!(
            !seqs.state(&key()).unwrap().forwarded,
            "gone from the store"
        );
        assert!(seqs.state(&recent).unwrap().forwarded, "kept");
    }

    /// A peer's point, learned: a retry of its batch gets its decision, later
    /// sequences its delta, and the producer-partition counts as forwarded
    /// (its first batches here are guarded). Learned twice, stored once.
    #[tokio::test]
    async fn a_peers_point_governs_here_as_it_did_there() {
        let dir = tempfile::tempdir().unwrap();
        let seqs = open(dir.path());
        let point = Point {
            base: 10,
            count: 4,
            dropped: vec![1, 3],
            delta_after: 2,
        };
        let wire = encode_shared(&key(), &point);
        assert_eq!(decode_shared(&wire), Some((key(), point.clone())));
        assert_eq!(decode_shared(&wire[..wire.len() - 1]), None);
        let (k, p) = decode_shared(&wire).unwrap();
        assert!(seqs.learn(&k, p.clone()).await.unwrap());
        assert!(!seqs.learn(&k, p).await.unwrap(), "known already");
        assert_eq!(decide(&seqs, 10, 4, None).await, Prior::Decided(vec![1, 3]));
        let s = seqs.state(&key()).unwrap();
        assert_eq!(s.delta_before(14), 2);
        let other_dir = tempfile::tempdir().unwrap();
        let fresh = open(other_dir.path());
        fresh.learn(&key(), point).await.unwrap();
        assert_eq!(decide(&fresh, 0, 1, None).await, Prior::Unknown);
    }

    #[test]
    fn the_first_encoding_reads_as_forwarded_and_gets_a_time() {
        // count 1, point (base 4, count 2, delta 1, dropped [1]).
        let mut old = Vec::new();
        for v in [1u32, 4, 2, 1, 1, 1] {
            old.extend_from_slice(&v.to_be_bytes());
        }
        let s = SeqState::decode(&old).unwrap();
        assert!(s.forwarded);
        assert_eq!(s.touched_ms, 0);
        assert_eq!(s.delta_before(6), 1);
        assert_eq!(SeqState::decode(&s.encode()), Some(s));
    }
}
