//! The window: which keys the broker has acknowledged, and where.
//!
//! ```text
//! memory  key (u128) → segment id (u64)        16 shards of HashMap, ~25-50 B a key
//!         (or PENDING: in flight, in the same map)
//! sled    segment id → time, topic, partition, base offset, [(key, offset delta)]
//! ```
//!
//! A segment is one acknowledged partition batch: one sled write per Kafka
//! batch instead of one per record (sled does ~120k single inserts/s here,
//! ~500k records/s written this way). Positions are read back from the
//! segment only when someone asks (`/window/lookup`, the base offset of a
//! synthesized answer), so memory holds nothing but the key and its segment.
//! moka is not used: measured here it costs ~340 B an entry, and its TinyLFU
//! policy kept none of the newest keys under capacity pressure.
//!
//! Segment ids grow with time, so expiry and the `max_keys` bound both evict
//! the oldest segment first. A key is removed from memory only if it still
//! points at the segment being evicted.
//!
//! Life of a key: *new* → [`Window::check`] makes it *pending* (in flight,
//! never a reason to drop) → [`Claim::commit`] after the broker acknowledged
//! it makes it *seen*; a failure, a timeout or a dropped connection releases
//! it (the [`Claim`] is dropped) and a retry goes through. After a crash,
//! segments written since the last flush are gone: their replays pass (a
//! duplicate, never a loss).

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;

use super::key::KeyBuildHasher;
use super::Key;
use crate::error::Error;
use crate::store::Store;

const SHARDS: usize = 16;

/// A key as the maps hold it: two words, so that an entry with its segment
/// id is 24 bytes (a `u128` is 16-aligned: 32).
#[derive(Clone, Copy, PartialEq, Eq)]
struct MapKey([u64; 2]);

impl Hash for MapKey {
    /// The key is already a 128-bit hash: its two halves folded are the
    /// hash, one `write_u64` ([`KeyHasher`](super::key::KeyHasher) passes it
    /// through). `[u64; 2]`'s own `Hash` writes it as 16 bytes, which that
    /// hasher folds one byte at a time.
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0[0] ^ self.0[1]);
    }
}

type KeyMap<V> = HashMap<MapKey, V, KeyBuildHasher>;

fn split(key: Key) -> MapKey {
    MapKey([(key.0 >> 64) as u64, key.0 as u64])
}

/// The value of a key in flight ([`Check::Claimed`] by some request, not
/// acknowledged yet) in a shard's map: never a segment id (ids count up
/// from 0, or from `u64::MAX / 2` when the newest one was unreadable).
/// Pending and seen keys share one map, so a check is one probe, and a
/// commit turns a pending key into a seen one in place (no removal from
/// one table and insertion into another).
const PENDING: u64 = u64::MAX;

/// Below this many keys, a batch locks per key: sorting it by shard costs
/// more than the locks it saves.
const SORT_FROM: usize = 16;

fn shard_of(key: Key) -> usize {
    (key.0 as usize) % SHARDS
}

/// Keys [`Window::load`] read for one shard, with their segments, in order.
type Bucket = Vec<(MapKey, u64)>;

/// Keys [`Window::load`] reads before handing them to its inserters
/// (~480 KiB of buckets).
const LOAD_BATCH: usize = 16 * 1024;

/// At most this many threads insert while loading, each owning its shards.
const LOAD_THREADS: usize = 4;

fn empty_buckets() -> Vec<Bucket> {
    // Room for an uneven share without growing.
    let each = LOAD_BATCH / SHARDS + LOAD_BATCH / 64;
    (0..SHARDS).map(|_| Vec::with_capacity(each)).collect()
}

#[derive(Default)]
struct Shard {
    /// Seen keys with their segment, and pending ones ([`PENDING`]).
    keys: KeyMap<u64>,
}

impl Shard {
    /// Marks `k` seen in `segment` unless it is seen already (in an older
    /// one, which it keeps); a pending mark gives way. True if it was not
    /// seen before.
    fn insert_seen(&mut self, k: MapKey, segment: u64) -> bool {
        match self.keys.entry(k) {
            Entry::Occupied(mut o) if *o.get() == PENDING => {
                o.insert(segment);
                true
            }
            Entry::Occupied(_) => false,
            Entry::Vacant(v) => {
                v.insert(segment);
                true
            }
        }
    }
}

/// What the window knows of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Acknowledged before, in this segment.
    Seen(u64),
    /// In flight in another request.
    Pending,
    /// Unknown: now pending, and the caller's to commit or release.
    Claimed,
}

/// Where a key was first acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// When the broker acknowledged it (ms since the Unix epoch).
    pub acked_ms: u64,
}

/// Where a segment this process learned goes (`[dedup.shared]`).
pub type Publish = Box<dyn Fn(Vec<u8>) + Send + Sync>;

/// Resolves once the window holds every segment its peers had published
/// when it was called (`true`), or `false` if that cannot be known now.
pub type CatchUp = Box<dyn Fn() -> futures::future::BoxFuture<'static, bool> + Send + Sync>;

pub struct Window {
    shards: Vec<Mutex<Shard>>,
    store: Arc<Store>,
    ttl: Duration,
    max_keys: usize,
    next_segment: AtomicU64,
    keys: AtomicUsize,
    loaded: AtomicBool,
    /// Woken whenever a pending key is resolved, and when loading ends.
    changed: Notify,
    /// Segment writes that failed (the keys stayed unseen).
    pub store_errors: AtomicU64,
    /// Segments below this id are known to be on disk ([`flush_through`](Self::flush_through)).
    durable_below: AtomicU64,
    /// Segment ids taken whose write has not landed yet: a flush that starts
    /// now does not carry them, so none of them counts as durable after it.
    /// Ids are taken under this lock.
    writing: Mutex<BTreeSet<u64>>,
    /// Segments below this id were evicted in order (expiry, capacity):
    /// [`sweep`](Self::sweep) starts here, so one the store failed to remove
    /// (disk full) is not met again every second, and later ones still expire.
    evicted_below: AtomicU64,
    /// `[dedup.shared]`: given every segment this process learns from its
    /// own broker acknowledgements, once it is in the store.
    publish: std::sync::OnceLock<Publish>,
    /// `[dedup.shared]`: how to catch up with the peers' segments.
    catch_up: std::sync::OnceLock<CatchUp>,
    /// The last offset of each partition (topic → partition → offset) a
    /// segment learned since the start says the broker acknowledged: this
    /// process's own, its peers', and those read back at load.
    written: Mutex<HashMap<String, HashMap<i32, i64>>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Window {
    /// An empty window over `store`; call [`load`](Self::load) to read back
    /// what it remembers. New segments are numbered after the newest one on
    /// disk from the start, so a key learned before the load ends can never
    /// overwrite a persisted segment.
    pub fn new(store: Arc<Store>, ttl: Duration, max_keys: usize) -> Window {
        let next = match store.last_segment_id() {
            Ok(last) => last.map_or(0, |l| l + 1),
            Err(e) => {
                // load() reads the same tree and reports the error; until
                // then, numbering past anything u64 ids can reach is safe.
                tracing::warn!(error = %e, "window: newest segment id unreadable");
                u64::MAX / 2
            }
        };
        Window {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            store,
            ttl,
            max_keys,
            next_segment: AtomicU64::new(next),
            keys: AtomicUsize::new(0),
            loaded: AtomicBool::new(false),
            changed: Notify::new(),
            store_errors: AtomicU64::new(0),
            durable_below: AtomicU64::new(0),
            writing: Mutex::new(BTreeSet::new()),
            evicted_below: AtomicU64::new(0),
            publish: std::sync::OnceLock::new(),
            catch_up: std::sync::OnceLock::new(),
            written: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a segment this window learned says the broker acknowledged
    /// a record of this partition after `offset`.
    pub fn written_after(&self, topic: &str, partition: i32, offset: i64) -> bool {
        let written = self.written.lock().expect("written offsets lock");
        written
            .get(topic)
            .and_then(|p| p.get(&partition))
            .is_some_and(|&last| last > offset)
    }

    /// Notes a segment's last acknowledged offset (see `written`).
    fn note_written(&self, seg: &Segment<'_>) {
        if let Some(last) = seg.entries().map(|(_, delta)| delta).max() {
            self.note_written_at(seg.topic, seg.partition, seg.base_offset + i64::from(last));
        }
    }

    /// Notes that the broker wrote something at `offset` in this partition
    /// (a committed transaction's marker follows its records).
    pub fn note_written_at(&self, topic: &str, partition: i32, offset: i64) {
        let mut written = self.written.lock().expect("written offsets lock");
        let at = match written.get_mut(topic) {
            Some(p) => p.entry(partition).or_insert(offset),
            None => written
                .entry(topic.to_string())
                .or_default()
                .entry(partition)
                .or_insert(offset),
        };
        *at = (*at).max(offset);
    }

    /// How [`catch_up`](Self::catch_up) reaches the peers' log.
    pub fn catch_up_with(&self, catch_up: CatchUp) {
        if self.catch_up.set(catch_up).is_err() {
            tracing::warn!("window: a second catch-up was refused");
        }
    }

    /// Waits, up to `limit`, until the window holds every segment its
    /// peers had published when asked. `None`: the window is not shared;
    /// `Some(false)`: not caught up within `limit` (or the log is away).
    pub async fn catch_up(&self, limit: Duration) -> Option<bool> {
        let catch_up = self.catch_up.get()?;
        Some(
            tokio::time::timeout(limit, catch_up())
                .await
                .unwrap_or(false),
        )
    }

    /// Hands every segment learned from now on from this process's own
    /// acknowledgements to `publish` (the shared window's log); segments
    /// learned from peers ([`learn_encoded`](Self::learn_encoded)) are not.
    pub fn publish_to(&self, publish: Publish) {
        if self.publish.set(publish).is_err() {
            tracing::warn!("window: a second publisher was refused");
        }
    }

    /// Learns a segment another process published (its bytes as
    /// [`publish_to`](Self::publish_to) gave them): stored, and its keys
    /// seen, unless it has expired or brings no key this window lacks.
    /// Returns the keys it added and the segment's acknowledgement time.
    pub fn learn_encoded(&self, value: &[u8]) -> Result<Option<(usize, u64)>, Error> {
        let Some(seg) = Segment::parse(value) else {
            return Err(Error::Internal(
                "a shared window record is not a segment".into(),
            ));
        };
        let oldest_alive = now_ms().saturating_sub(self.ttl.as_millis() as u64);
        if seg.acked_ms < oldest_alive {
            return Ok(None);
        }
        self.note_written(&seg);
        let new = seg
            .entries()
            .filter(|(k, _)| self.peek(*k).is_none())
            .count();
        if new == 0 {
            return Ok(Some((0, seg.acked_ms)));
        }
        let id = self.reserve_segment();
        self.put_reserved(id, value)?;
        let added = self.insert_seen(seg.len(), |i| seg.key(i), id);
        self.changed.notify_waiters();
        Ok(Some((added, seg.acked_ms)))
    }

    fn shard(&self, key: Key) -> std::sync::MutexGuard<'_, Shard> {
        self.shards[shard_of(key)]
            .lock()
            .expect("window shard lock")
    }

    /// Reads every live segment back into memory (blocking; run it off the
    /// async threads). Expired segments are deleted on the way.
    pub fn load(&self) -> Result<LoadReport, Error> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        self.load_with(threads.clamp(1, LOAD_THREADS))
    }

    /// [`load`](Self::load) with `threads` inserting.
    ///
    /// A first pass over the segments drops the dead ones and counts each
    /// shard's keys, so that every map is allocated once at its final size
    /// (growing it rehashes every key it holds, and leaves the smaller
    /// tables behind as heap the process keeps). The second pass sorts the
    /// keys by shard; every [`LOAD_BATCH`] keys, each inserter gets its
    /// shards' keys (inserter `i` owns the shards `s` with
    /// `s % threads == i`; with one thread this one inserts) and locks each
    /// of those shards once for the batch, where [`commit`](Self::commit)
    /// locks once a key. A shard gets its keys in segment order, so a key
    /// found in two segments keeps the older one, as when it was committed.
    /// sled keeps the pages the first pass read (it evicts them only as
    /// later writes come in), so the second reads memory.
    fn load_with(&self, threads: usize) -> Result<LoadReport, Error> {
        let started = Instant::now();
        let oldest_alive = now_ms().saturating_sub(self.ttl.as_millis() as u64);
        let mut report = LoadReport::default();
        let mut last = None;
        let mut per_shard = [0usize; SHARDS];
        for item in self.store.segments_from(0) {
            let (id, value) = item?;
            last = Some(id);
            if let Some(seg) = self.live_segment(id, &value, oldest_alive, &mut report)? {
                for (key, _) in seg.entries() {
                    per_shard[shard_of(key)] += 1;
                }
            }
        }
        for (shard, count) in self.shards.iter().zip(per_shard) {
            shard.lock().expect("window shard lock").keys.reserve(count);
        }
        let keys = std::thread::scope(|scope| -> Result<usize, Error> {
            let mut senders = Vec::new();
            let mut inserters = Vec::new();
            // One thread: this one inserts.
            let wanted = if threads > 1 { threads.min(SHARDS) } else { 0 };
            for _ in 0..wanted {
                // One batch queued per inserter bounds the memory in flight.
                let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<(usize, Bucket)>>(1);
                let spawned = std::thread::Builder::new()
                    .name("window-load".into())
                    .spawn_scoped(scope, move || {
                        rx.iter()
                            .flatten()
                            .map(|(shard, bucket)| self.insert_loaded(shard, bucket))
                            .sum::<usize>()
                    });
                match spawned {
                    Ok(inserter) => {
                        senders.push(tx);
                        inserters.push(inserter);
                    }
                    Err(e) => {
                        // Fewer inserters work too (none: this thread inserts).
                        tracing::warn!(error = %e, "window load: no thread for another inserter");
                        break;
                    }
                }
            }
            let mut inserted_here = 0;
            let mut dispatch = |buckets: &mut Vec<Bucket>| {
                let full = std::mem::replace(buckets, empty_buckets());
                if senders.is_empty() {
                    for (shard, bucket) in full.into_iter().enumerate() {
                        inserted_here += self.insert_loaded(shard, bucket);
                    }
                    return;
                }
                let mut parts: Vec<Vec<(usize, Bucket)>> =
                    senders.iter().map(|_| Vec::new()).collect();
                for (shard, bucket) in full.into_iter().enumerate() {
                    parts[shard % senders.len()].push((shard, bucket));
                }
                for (tx, part) in senders.iter().zip(parts) {
                    // Fails only if that inserter panicked; joining it says so.
                    let _ = tx.send(part);
                }
            };
            let mut buckets = empty_buckets();
            let mut batched = 0;
            let read = (|| -> Result<(), Error> {
                for item in self.store.segments_from(0) {
                    let (id, value) = item?;
                    last = last.max(Some(id));
                    // Dropped by the first pass unless written since.
                    let Some(seg) = self.live_segment(id, &value, oldest_alive, &mut report)?
                    else {
                        continue;
                    };
                    report.segments += 1;
                    self.note_written(&seg);
                    for (key, _) in seg.entries() {
                        buckets[shard_of(key)].push((split(key), id));
                    }
                    batched += seg.entries.len() / ENTRY;
                    if batched >= LOAD_BATCH {
                        dispatch(&mut buckets);
                        batched = 0;
                    }
                }
                Ok(())
            })();
            // Keys read before an error go in all the same, as they did when
            // each went in as soon as it was read.
            dispatch(&mut buckets);
            drop(senders);
            let mut keys = inserted_here;
            for inserter in inserters {
                keys += inserter.join().expect("window load inserter panicked");
            }
            read.map(|()| keys)
        })?;
        report.keys = keys;
        self.next_segment
            .fetch_max(last.map_or(0, |l| l + 1), Relaxed);
        self.durable_below.store(last.map_or(0, |l| l + 1), Relaxed);
        self.evict_over_capacity()?;
        self.loaded.store(true, Relaxed);
        self.changed.notify_waiters();
        report.took = started.elapsed();
        Ok(report)
    }

    /// A segment [`load`](Self::load) keeps; an unreadable or expired one
    /// is deleted from the store instead.
    fn live_segment<'a>(
        &self,
        id: u64,
        value: &'a [u8],
        oldest_alive: u64,
        report: &mut LoadReport,
    ) -> Result<Option<Segment<'a>>, Error> {
        let Some(seg) = Segment::parse(value) else {
            tracing::warn!(segment = id, "unreadable window segment dropped");
            self.remove_or_count(id);
            return Ok(None);
        };
        if seg.acked_ms < oldest_alive {
            self.remove_or_count(id);
            report.expired += 1;
            return Ok(None);
        }
        Ok(Some(seg))
    }

    /// One shard's keys of a load batch, in order, under one lock: what
    /// [`insert_seen`](Self::insert_seen) does for each. Returns how many
    /// were new.
    fn insert_loaded(&self, shard: usize, bucket: Bucket) -> usize {
        if bucket.is_empty() {
            return 0;
        }
        let mut guard = self.shards[shard].lock().expect("window shard lock");
        let shard = &mut *guard;
        let mut added = 0;
        for (k, segment) in bucket {
            added += usize::from(shard.insert_seen(k, segment));
        }
        drop(guard);
        self.keys.fetch_add(added, Relaxed);
        added
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Relaxed)
    }

    /// Waits until loaded, up to `limit`; true if it is.
    pub async fn wait_loaded(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_loaded() {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.is_loaded();
            }
        }
    }

    pub fn len(&self) -> usize {
        self.keys.load(Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Seen, pending, or (now) claimed by the caller.
    pub fn check(&self, key: Key) -> Check {
        match self.shard(key).keys.entry(split(key)) {
            Entry::Occupied(o) if *o.get() == PENDING => Check::Pending,
            Entry::Occupied(o) => Check::Seen(*o.get()),
            Entry::Vacant(v) => {
                v.insert(PENDING);
                Check::Claimed
            }
        }
    }

    /// Seen or not, without claiming.
    pub fn peek(&self, key: Key) -> Option<u64> {
        let segment = self.shard(key).keys.get(&split(key)).copied();
        segment.filter(|&s| s != PENDING)
    }

    /// Runs `f` on each of `n` keys (`key_at(i)` is the `i`-th) under its
    /// shard's lock, locking each shard once for the lot rather than once
    /// a key (a counting sort by shard; a shard's keys keep their order).
    fn by_shard(
        &self,
        n: usize,
        key_at: impl Fn(usize) -> Key,
        mut f: impl FnMut(&mut Shard, MapKey, usize),
    ) {
        if n < SORT_FROM {
            for i in 0..n {
                let key = key_at(i);
                f(&mut self.shard(key), split(key), i);
            }
            return;
        }
        let mut starts = [0usize; SHARDS + 1];
        for i in 0..n {
            starts[shard_of(key_at(i)) + 1] += 1;
        }
        for s in 0..SHARDS {
            starts[s + 1] += starts[s];
        }
        let mut next = starts;
        let mut order = vec![0u32; n];
        for i in 0..n {
            let s = shard_of(key_at(i));
            order[next[s]] = i as u32;
            next[s] += 1;
        }
        for (s, shard) in self.shards.iter().enumerate() {
            let mine = &order[starts[s]..starts[s + 1]];
            if mine.is_empty() {
                continue;
            }
            let mut guard = shard.lock().expect("window shard lock");
            for &i in mine {
                let i = i as usize;
                f(&mut guard, split(key_at(i)), i);
            }
        }
    }

    /// [`check`](Self::check), waiting up to `limit` while another request
    /// has the key in flight. `Pending` after the wait: nobody knows.
    pub async fn check_waiting(&self, key: Key, limit: Duration) -> Check {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.check(key) {
                Check::Pending => {}
                decided => return decided,
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.check(key);
            }
        }
    }

    /// Drops the pending mark of keys whose request failed (a seen key is
    /// left as it is).
    fn release(&self, keys: &[Key]) {
        if keys.is_empty() {
            return;
        }
        self.by_shard(
            keys.len(),
            |i| keys[i],
            |shard, k, _| {
                if let Entry::Occupied(o) = shard.keys.entry(k) {
                    if *o.get() == PENDING {
                        o.remove();
                    }
                }
            },
        );
        self.changed.notify_waiters();
    }

    /// Marks `keys` seen in `segment` ([`Shard::insert_seen`]); returns how
    /// many were not seen before.
    fn insert_seen(&self, n: usize, key_at: impl Fn(usize) -> Key, segment: u64) -> usize {
        debug_assert_ne!(segment, PENDING);
        let mut added = 0;
        self.by_shard(n, key_at, |shard, k, _| {
            added += usize::from(shard.insert_seen(k, segment));
        });
        self.keys.fetch_add(added, Relaxed);
        added
    }

    /// Records acknowledged keys: `entries` are (key, offset delta from
    /// `base_offset`), written by `producer` ([`NO_PRODUCER`] unless
    /// idempotent). Written to sled first; if that fails the keys are
    /// released, not seen (a replay then passes: never a loss).
    pub fn commit(
        &self,
        topic: &str,
        partition: i32,
        base_offset: i64,
        producer: Producer,
        entries: &[(Key, u32)],
    ) -> Result<(), Error> {
        let result = self.learn(topic, partition, base_offset, producer, entries);
        if result.is_err() {
            let keys: Vec<Key> = entries.iter().map(|(k, _)| *k).collect();
            self.release(&keys);
        }
        result
    }

    /// Records keys the caller never claimed (a committed transaction's):
    /// as [`commit`](Self::commit), but a store error leaves every pending
    /// mark alone (they belong to other requests).
    pub fn learn(
        &self,
        topic: &str,
        partition: i32,
        base_offset: i64,
        producer: Producer,
        entries: &[(Key, u32)],
    ) -> Result<(), Error> {
        self.learn_segment(topic, partition, base_offset, producer, entries)
            .map(|_| ())
    }

    /// [`learn`](Self::learn), returning the segment written (`None`: nothing to learn).
    pub fn learn_segment(
        &self,
        topic: &str,
        partition: i32,
        base_offset: i64,
        producer: Producer,
        entries: &[(Key, u32)],
    ) -> Result<Option<u64>, Error> {
        if entries.is_empty() {
            return Ok(None);
        }
        let id = self.reserve_segment();
        self.write_segment(id, topic, partition, base_offset, producer, entries)
            .map(Some)
    }

    /// A new segment's id, not yet written: [`write_segment`](Self::write_segment) must follow.
    fn reserve_segment(&self) -> u64 {
        let mut writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let id = self.next_segment.fetch_add(1, Relaxed);
        writing.insert(id);
        id
    }

    /// Every segment below this id was written (or failed to be).
    fn written_below(&self) -> u64 {
        let writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        writing
            .first()
            .copied()
            .unwrap_or_else(|| self.next_segment.load(Relaxed))
    }

    /// Stores the segment `id` ([`reserve_segment`](Self::reserve_segment)):
    /// landed or failed, it is no longer being written.
    fn put_reserved(&self, id: u64, value: &[u8]) -> Result<(), Error> {
        let put = self.store.put_segment(id, value);
        self.writing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        if put.is_err() {
            self.store_errors.fetch_add(1, Relaxed);
        }
        put
    }

    /// Writes the segment `id` ([`reserve_segment`](Self::reserve_segment))
    /// and marks its keys seen.
    fn write_segment(
        &self,
        id: u64,
        topic: &str,
        partition: i32,
        base_offset: i64,
        producer: Producer,
        entries: &[(Key, u32)],
    ) -> Result<u64, Error> {
        let value = Segment::encode(now_ms(), topic, partition, base_offset, producer, entries);
        // Acknowledged whether or not the store takes it.
        if let Some(last) = entries.iter().map(|&(_, delta)| delta).max() {
            self.note_written_at(topic, partition, base_offset + i64::from(last));
        }
        self.put_reserved(id, &value)?;
        self.insert_seen(entries.len(), |i| entries[i].0, id);
        self.changed.notify_waiters();
        if let Some(publish) = self.publish.get() {
            publish(value);
        }
        Ok(id)
    }

    /// The idempotent producer whose batch put a segment's keys in the
    /// window: a batch of that same producer and epoch carrying them again
    /// is a retry, not a replay.
    /// `None` when the segment can't be read (evicted meanwhile, store
    /// error); [`NO_PRODUCER`] for a non-idempotent writer.
    pub fn producer_of(&self, segment: u64) -> Option<Producer> {
        let value = self.store.segment(segment).ok()??;
        Segment::parse(&value).map(|s| s.producer)
    }

    /// Where a seen key was first acknowledged.
    pub fn position(&self, key: Key) -> Result<Option<Position>, Error> {
        let Some(segment) = self.peek(key) else {
            return Ok(None);
        };
        self.position_in(key, segment)
    }

    /// The key's position in a given segment.
    pub fn position_in(&self, key: Key, segment: u64) -> Result<Option<Position>, Error> {
        let Some(value) = self.store.segment(segment)? else {
            return Ok(None);
        };
        let Some(seg) = Segment::parse(&value) else {
            return Ok(None);
        };
        let found = seg.entries().find(|(k, _)| *k == key);
        Ok(found.map(|(_, delta)| Position {
            topic: seg.topic.to_string(),
            partition: seg.partition,
            offset: seg.base_offset + i64::from(delta),
            acked_ms: seg.acked_ms,
        }))
    }

    /// Where a segment's keys sit, for the fetch path (`None`: gone, evicted
    /// meanwhile or unreadable).
    pub fn segment_positions(&self, segment: u64) -> Result<Option<SegmentPositions>, Error> {
        let Some(value) = self.store.segment(segment)? else {
            return Ok(None);
        };
        Ok(Segment::parse(&value).map(|seg| SegmentPositions {
            topic: seg.topic.to_string(),
            partition: seg.partition,
            offsets: seg
                .entries()
                .map(|(key, delta)| (key, seg.base_offset + i64::from(delta)))
                .collect(),
        }))
    }

    /// Makes sure `segment` is on disk: a decision that rests on it (a fetch
    /// response leaving out a later copy) must survive a crash. Flushes the
    /// store only when that segment was written since the last flush.
    pub async fn flush_through(&self, segment: u64) -> Result<(), Error> {
        if segment < self.durable_below.load(Relaxed) {
            return Ok(());
        }
        self.flush().await
    }

    /// Flushes the store: every segment written before the call is on disk
    /// when it returns (the periodic flush, `dedup.flush_interval`).
    pub async fn flush(&self) -> Result<(), Error> {
        // Read before the flush: only writes that landed before it started
        // are surely carried by it.
        let written = self.written_below();
        self.store.flush().await?;
        self.durable_below.fetch_max(written, Relaxed);
        Ok(())
    }

    /// Evicts expired segments and, past `max_keys`, the oldest ones. Cheap
    /// when there is nothing to do; the server calls it every second. Keys
    /// leave memory even when the store can no longer remove their segment
    /// (a full disk): they must not outlive the window.
    pub fn sweep(&self) -> Result<usize, Error> {
        let oldest_alive = now_ms().saturating_sub(self.ttl.as_millis() as u64);
        let mut evicted = 0;
        for item in self.store.segments_from(self.evicted_below.load(Relaxed)) {
            let (id, value) = item?;
            let expired = Segment::parse(&value).is_none_or(|s| s.acked_ms < oldest_alive);
            if !expired && self.len() <= self.max_keys {
                break;
            }
            evicted += self.evict_in_order(id, &value);
        }
        Ok(evicted)
    }

    /// Forgets every key of `topic` (blocking): for a topic deleted and
    /// created again, whose new records must not pass for replays of the
    /// old ones. Refused while the window is loading.
    pub fn purge_topic(&self, topic: &str) -> Result<Purged, Error> {
        if !self.is_loaded() {
            return Err(Error::store(
                "the window is still loading; purge once /readyz says ready",
            ));
        }
        let mut purged = Purged::default();
        for item in self.store.segments_from(0) {
            let (id, value) = item?;
            if Segment::parse(&value).is_some_and(|s| s.topic == topic) {
                purged.keys += self.forget(id, &value);
                self.store.remove_segment(id)?;
                purged.segments += 1;
            }
        }
        // Answered only once on disk: a crash must not bring the keys back
        // and have the recreated topic's records dropped as replays.
        self.store.flush_now()?;
        Ok(purged)
    }

    fn evict_over_capacity(&self) -> Result<(), Error> {
        if self.len() <= self.max_keys {
            return Ok(());
        }
        for item in self.store.segments_from(self.evicted_below.load(Relaxed)) {
            let (id, value) = item?;
            self.evict_in_order(id, &value);
            if self.len() <= self.max_keys {
                break;
            }
        }
        Ok(())
    }

    /// Evicts the oldest segment left: its keys leave memory, and its record
    /// the store (counted, not fatal, if the store refuses).
    fn evict_in_order(&self, id: u64, value: &[u8]) -> usize {
        let removed = self.forget(id, value);
        self.remove_or_count(id);
        self.evicted_below.fetch_max(id + 1, Relaxed);
        removed
    }

    /// Removes a segment from the store; a refusal is counted and logged by
    /// the store (it is the first of many once the disk is full).
    fn remove_or_count(&self, id: u64) {
        if let Err(e) = self.store.remove_segment(id) {
            self.store_errors.fetch_add(1, Relaxed);
            tracing::debug!(segment = id, error = %e, "window segment not removed from the store");
        }
    }

    /// Takes the segment's keys out of memory (those it still holds: a key
    /// seen again later lives in its newer segment); returns how many.
    fn forget(&self, id: u64, value: &[u8]) -> usize {
        let Some(seg) = Segment::parse(value) else {
            return 0;
        };
        let mut removed = 0;
        self.by_shard(
            seg.len(),
            |i| seg.key(i),
            |shard, k, _| {
                if let Entry::Occupied(o) = shard.keys.entry(k) {
                    if *o.get() == id {
                        o.remove();
                        removed += 1;
                    }
                }
            },
        );
        self.keys.fetch_sub(removed, Relaxed);
        removed
    }

    /// Approximate memory held by the key maps.
    pub fn memory_bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let s = s.lock().expect("window shard lock");
                // hashbrown: one control byte per bucket, buckets ≥ capacity × 8/7.
                let buckets = (s.keys.capacity() * 8 / 7).next_power_of_two();
                buckets * (24 + 1)
            })
            .sum()
    }
}

/// The keys of one segment and the offsets they sit at.
#[derive(Debug, Clone)]
pub struct SegmentPositions {
    pub topic: String,
    pub partition: i32,
    pub offsets: HashMap<Key, i64, KeyBuildHasher>,
}

/// What [`Window::load`] found.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    pub segments: usize,
    pub keys: usize,
    pub expired: usize,
    pub took: Duration,
}

/// What [`Window::purge_topic`] forgot.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Purged {
    pub keys: usize,
    pub segments: usize,
}

// === Claims ===

/// Keys one request made pending: committed per partition when the broker
/// acknowledges, released for everything else when dropped.
pub struct Claim {
    window: Arc<Window>,
    keys: Vec<Key>,
}

impl Claim {
    pub fn new(window: Arc<Window>) -> Claim {
        Claim {
            window,
            keys: Vec::new(),
        }
    }

    pub fn add(&mut self, key: Key) {
        self.keys.push(key);
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Commits `entries` (all claimed by this request) and stops owning them.
    pub fn commit(
        &mut self,
        topic: &str,
        partition: i32,
        base_offset: i64,
        entries: &[(Key, u32)],
    ) -> Result<(), Error> {
        self.commit_as(topic, partition, base_offset, NO_PRODUCER, entries)
    }

    /// [`commit`](Self::commit) for an idempotent producer's batch.
    pub fn commit_as(
        &mut self,
        topic: &str,
        partition: i32,
        base_offset: i64,
        producer: Producer,
        entries: &[(Key, u32)],
    ) -> Result<(), Error> {
        let result = self
            .window
            .commit(topic, partition, base_offset, producer, entries);
        // Committed or released by commit itself on error: not ours any more.
        if entries.len() == self.keys.len()
            && entries.iter().zip(&self.keys).all(|(e, k)| e.0 == *k)
        {
            // The whole claim, in order (one partition a request).
            self.keys.clear();
        } else {
            let mut done: HashSet<Key, KeyBuildHasher> =
                HashSet::with_capacity_and_hasher(entries.len(), KeyBuildHasher::default());
            done.extend(entries.iter().map(|(k, _)| *k));
            self.keys.retain(|k| !done.contains(k));
        }
        result
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.window.release(&self.keys);
    }
}

impl std::fmt::Debug for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Claim({} keys)", self.keys.len())
    }
}

// === Segment encoding ===

/// `acked_ms u64 | topic_len u16 | topic | partition i32 | base_offset i64 |
/// producer_id i64 | producer_epoch i16 | count u32 | count × (key u128 | delta u32)`,
/// big-endian.
struct Segment<'a> {
    acked_ms: u64,
    topic: &'a str,
    partition: i32,
    base_offset: i64,
    producer: Producer,
    entries: &'a [u8],
}

/// The producer id and epoch of an idempotent producer; (-1, -1) for others.
pub type Producer = (i64, i16);

/// What non-idempotent batches carry.
pub const NO_PRODUCER: Producer = (-1, -1);

const ENTRY: usize = 20;

impl<'a> Segment<'a> {
    fn encode(
        acked_ms: u64,
        topic: &str,
        partition: i32,
        base_offset: i64,
        producer: Producer,
        entries: &[(Key, u32)],
    ) -> Vec<u8> {
        let topic = &topic.as_bytes()[..topic.len().min(u16::MAX as usize)];
        let mut out = Vec::with_capacity(36 + topic.len() + entries.len() * ENTRY);
        out.extend_from_slice(&acked_ms.to_be_bytes());
        out.extend_from_slice(&(topic.len() as u16).to_be_bytes());
        out.extend_from_slice(topic);
        out.extend_from_slice(&partition.to_be_bytes());
        out.extend_from_slice(&base_offset.to_be_bytes());
        out.extend_from_slice(&producer.0.to_be_bytes());
        out.extend_from_slice(&producer.1.to_be_bytes());
        out.extend_from_slice(&(entries.len() as u32).to_be_bytes());
        for (key, delta) in entries {
            out.extend_from_slice(&key.0.to_be_bytes());
            out.extend_from_slice(&delta.to_be_bytes());
        }
        out
    }

    fn parse(buf: &'a [u8]) -> Option<Segment<'a>> {
        let acked_ms = u64::from_be_bytes(buf.get(0..8)?.try_into().ok()?);
        let topic_len = usize::from(u16::from_be_bytes(buf.get(8..10)?.try_into().ok()?));
        let topic = std::str::from_utf8(buf.get(10..10 + topic_len)?).ok()?;
        let at = 10 + topic_len;
        let partition = i32::from_be_bytes(buf.get(at..at + 4)?.try_into().ok()?);
        let base_offset = i64::from_be_bytes(buf.get(at + 4..at + 12)?.try_into().ok()?);
        let producer_id = i64::from_be_bytes(buf.get(at + 12..at + 20)?.try_into().ok()?);
        let epoch = i16::from_be_bytes(buf.get(at + 20..at + 22)?.try_into().ok()?);
        let count = u32::from_be_bytes(buf.get(at + 22..at + 26)?.try_into().ok()?) as usize;
        let entries = buf.get(at + 26..at + 26 + count.checked_mul(ENTRY)?)?;
        Some(Segment {
            acked_ms,
            topic,
            partition,
            base_offset,
            producer: (producer_id, epoch),
            entries,
        })
    }

    /// How many keys it holds.
    fn len(&self) -> usize {
        self.entries.len() / ENTRY
    }

    /// Its `i`-th key.
    fn key(&self, i: usize) -> Key {
        let at = i * ENTRY;
        Key(u128::from_be_bytes(
            self.entries[at..at + 16].try_into().expect("16 bytes"),
        ))
    }

    fn entries(&self) -> impl Iterator<Item = (Key, u32)> + 'a {
        self.entries.chunks_exact(ENTRY).map(|c| {
            let key = u128::from_be_bytes(c[..16].try_into().expect("16 bytes"));
            let delta = u32::from_be_bytes(c[16..].try_into().expect("4 bytes"));
            (Key(key), delta)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Opens the store in `dir`, which the previous test step's store may
    /// still lock for a moment: sled's flusher thread lets go of the file
    /// lock when it next wakes, after the last handle is dropped (seen on a
    /// loaded 2-core machine).
    fn reopen(dir: &std::path::Path) -> Store {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match Store::open(dir) {
                Ok(store) => return store,
                Err(e)
                    if e.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    fn window(dir: &std::path::Path, ttl: Duration, max_keys: usize) -> Arc<Window> {
        let store = Arc::new(reopen(dir));
        let w = Arc::new(Window::new(store, ttl, max_keys));
        w.load().unwrap();
        w
    }

    #[test]
    fn what_this_process_learns_is_published_and_what_peers_publish_is_learned() {
        let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = window(a_dir.path(), Duration::from_secs(3600), 1000);
        let b = window(b_dir.path(), Duration::from_secs(3600), 1000);
        let published = Arc::new(Mutex::new(Vec::new()));
        let sink = published.clone();
        a.publish_to(Box::new(move |seg: Vec<u8>| sink.lock().unwrap().push(seg)));
        commit(&a, &[1, 2, 3], 100);
        let segments = published.lock().unwrap().clone();
        assert_eq!(segments.len(), 1, "one segment per acknowledged batch");

        // B learns them: seen, stored, at the same positions.
        let (added, acked_ms) = b.learn_encoded(&segments[0]).unwrap().unwrap();
        assert_eq!(added, 3);
        assert!(acked_ms > 0);
        for k in [1, 2, 3] {
            assert!(matches!(b.check(Key(k)), Check::Seen(_)));
        }
        let pos = b.position(Key(2)).unwrap().unwrap();
        assert_eq!((pos.partition, pos.offset), (3, 101));
        // What A's broker wrote is known to B too (a replayed prefix's bet).
        assert!(b.written_after("orders", 3, 101));
        assert!(!b.written_after("orders", 3, 102));
        // Learned again: nothing new, nothing stored twice.
        assert_eq!(b.learn_encoded(&segments[0]).unwrap(), Some((0, acked_ms)));
        // A peer's segments are not published again.
        let republished = Arc::new(Mutex::new(0usize));
        let count = republished.clone();
        b.publish_to(Box::new(move |_| *count.lock().unwrap() += 1));
        let peer = Segment::encode(now_ms(), "orders", 1, 7, NO_PRODUCER, &[(Key(4), 0)]);
        assert_eq!(b.learn_encoded(&peer).unwrap().map(|(n, _)| n), Some(1));
        assert_eq!(*republished.lock().unwrap(), 0);
        let mut short = segments[0].clone();
        short.truncate(short.len() - ENTRY);
        assert!(
            b.learn_encoded(&short).is_err(),
            "a cut segment is not read"
        );

        // Kept across a restart of B, from its own store.
        drop(b);
        let b = window(b_dir.path(), Duration::from_secs(3600), 1000);
        assert!(matches!(b.check(Key(3)), Check::Seen(_)));
    }

    #[test]
    fn a_peer_segment_older_than_the_window_or_unreadable_is_not_learned() {
        let dir = tempfile::tempdir().unwrap();
        let w = window(dir.path(), Duration::from_secs(60), 1000);
        let old = Segment::encode(1, "orders", 0, 0, NO_PRODUCER, &[(Key(9), 0)]);
        assert_eq!(w.learn_encoded(&old).unwrap(), None);
        assert!(w.learn_encoded(b"junk").is_err());
        assert!(matches!(w.check(Key(9)), Check::Claimed));
    }

    fn commit(w: &Arc<Window>, keys: &[u128], base: i64) {
        let mut claim = Claim::new(w.clone());
        let mut entries = Vec::new();
        for (i, &k) in keys.iter().enumerate() {
            assert_eq!(w.check(Key(k)), Check::Claimed);
            claim.add(Key(k));
            entries.push((Key(k), i as u32));
        }
        claim.commit("orders", 3, base, &entries).unwrap();
    }

    /// A segment whose id was taken but whose write has not landed when a
    /// flush starts is not on disk after that flush: it must not count as
    /// durable, or a fetch drop resting on it answers before it is flushed.
    #[tokio::test]
    async fn flush_through_never_counts_a_segment_being_written_as_durable() {
        let dir = tempfile::tempdir().unwrap();
        let w = window(dir.path(), Duration::from_secs(3600), 100);
        let a = w.reserve_segment();
        let b = w
            .learn_segment("orders", 0, 10, NO_PRODUCER, &[(Key(2), 0)])
            .unwrap()
            .unwrap();
        w.flush_through(b).await.unwrap();
        w.write_segment(a, "orders", 0, 0, NO_PRODUCER, &[(Key(1), 0)])
            .unwrap();
        assert!(
            w.durable_below.load(Relaxed) <= a,
            "segment {a} counted durable by a flush that ran before it was written"
        );
        w.flush_through(a).await.unwrap();
        assert!(w.durable_below.load(Relaxed) > a);
    }

    #[test]
    fn pending_then_seen_with_its_position() {
        let dir = tempfile::tempdir().unwrap();
        let w = window(dir.path(), Duration::from_secs(3600), 100);
        let mut claim = Claim::new(w.clone());
        assert_eq!(w.check(Key(1)), Check::Claimed);
        claim.add(Key(1));
        assert_eq!(w.check(Key(1)), Check::Pending, "in flight elsewhere");
        claim.commit("orders", 3, 40, &[(Key(1), 2)]).unwrap();
        let Check::Seen(seg) = w.check(Key(1)) else {
            panic!("not seen")
        };
        let pos = w.position_in(Key(1), seg).unwrap().unwrap();
        assert_eq!(
            (pos.topic.as_str(), pos.partition, pos.offset),
            ("orders", 3, 42)
        );
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn a_dropped_claim_releases_its_keys() {
        let dir = tempfile::tempdir().unwrap();
        let w = window(dir.path(), Duration::from_secs(3600), 100);
        {
            let mut claim = Claim::new(w.clone());
            assert_eq!(w.check(Key(7)), Check::Claimed);
            claim.add(Key(7));
        }
        assert_eq!(w.check(Key(7)), Check::Claimed, "the retry goes through");
        assert!(w.is_empty());
    }

    /// Many keys at once (a batch is sorted by shard and each shard locked
    /// once): a commit of part of a claim makes those seen, a released claim
    /// drops only pending marks, never a key seen meanwhile, and counts and
    /// eviction see every key once.
    #[test]
    fn a_large_claim_commits_part_and_releases_only_what_is_pending() {
        let dir = tempfile::tempdir().unwrap();
        let w = window(dir.path(), Duration::from_secs(3600), 1000);
        let keys: Vec<Key> = (0..64u128)
            .map(|i| Key(i * 0x9e37_79b9_7f4a_7c15))
            .collect();
        {
            let mut claim = Claim::new(w.clone());
            for &k in &keys {
                assert_eq!(w.check(k), Check::Claimed);
                claim.add(k);
            }
            // Half committed by this claim, a quarter learned elsewhere (a
            // committed transaction), the rest left pending.
            let mine: Vec<(Key, u32)> = keys[..32].iter().map(|&k| (k, 0)).collect();
            claim.commit("t", 0, 0, &mine).unwrap();
            let theirs: Vec<(Key, u32)> = keys[32..48].iter().map(|&k| (k, 0)).collect();
            w.learn("t", 1, 0, NO_PRODUCER, &theirs).unwrap();
            assert_eq!(w.len(), 48);
            for &k in &keys[48..] {
                assert_eq!(w.check(k), Check::Pending);
                assert_eq!(w.peek(k), None, "pending is not seen");
            }
        }
        for &k in &keys[..48] {
            assert!(matches!(w.check(k), Check::Seen(_)), "seen stays seen");
        }
        for &k in &keys[48..] {
            assert_eq!(w.check(k), Check::Claimed, "released");
        }
        assert_eq!(w.len(), 48);
        // Committed again in a newer segment: each key keeps its first one.
        let first = w.peek(keys[0]).unwrap();
        let all: Vec<(Key, u32)> = keys.iter().map(|&k| (k, 1)).collect();
        w.learn("t", 2, 0, NO_PRODUCER, &all).unwrap();
        assert_eq!(w.peek(keys[0]), Some(first));
        assert_eq!(w.len(), 64);
        assert!(w.memory_bytes() > 0);
    }

    #[tokio::test]
    async fn a_waiter_learns_the_first_outcome() {
        let dir = tempfile::tempdir().unwrap();
        let w = window(dir.path(), Duration::from_secs(3600), 100);
        let mut claim = Claim::new(w.clone());
        assert_eq!(w.check(Key(9)), Check::Claimed);
        claim.add(Key(9));
        let waiter = {
            let w = w.clone();
            tokio::spawn(async move { w.check_waiting(Key(9), Duration::from_secs(10)).await })
        };
        tokio::task::yield_now().await;
        claim.commit("orders", 0, 5, &[(Key(9), 0)]).unwrap();
        assert!(matches!(waiter.await.unwrap(), Check::Seen(_)));
        // Nobody resolves key 10: the wait ends undecided.
        let mut other = Claim::new(w.clone());
        assert_eq!(w.check(Key(10)), Check::Claimed);
        other.add(Key(10));
        assert_eq!(
            w.check_waiting(Key(10), Duration::from_millis(50)).await,
            Check::Pending
        );
    }

    #[test]
    fn keys_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let w = window(dir.path(), Duration::from_secs(3600), 100);
            commit(&w, &[1, 2, 3], 0);
            commit(&w, &[4], 3);
            w.store.flush_now().unwrap();
        }
        let w = window(dir.path(), Duration::from_secs(3600), 100);
        assert_eq!(w.len(), 4);
        assert_eq!(w.position(Key(4)).unwrap().unwrap().offset, 3);
        // New segments continue after the old ones.
        commit(&w, &[5], 4);
        assert_eq!(w.position(Key(5)).unwrap().unwrap().offset, 4);
        assert_eq!(w.position(Key(1)).unwrap().unwrap().offset, 0);
    }

    /// What the broker acknowledged after an offset is known from this
    /// process's own segments and, after a restart, from those read back.
    #[test]
    fn what_was_written_after_an_offset_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let w = window(dir.path(), Duration::from_secs(3600), 100);
            commit(&w, &[1, 2, 3], 0);
            assert!(w.written_after("orders", 3, 1));
            assert!(!w.written_after("orders", 3, 2));
            w.store.flush_now().unwrap();
        }
        let w = window(dir.path(), Duration::from_secs(3600), 100);
        assert!(w.written_after("orders", 3, 1));
        assert!(!w.written_after("orders", 3, 2));
        assert!(!w.written_after("orders", 0, -1));
    }

    #[test]
    fn a_load_keeps_each_key_in_its_oldest_segment_whoever_inserts() {
        let dir = tempfile::tempdir().unwrap();
        let ttl = Duration::from_secs(3600);
        // Enough keys for several load batches, in segments of 500.
        let n = LOAD_BATCH as u128 * 2 + 123;
        let first_of_7 = {
            let w = window(dir.path(), ttl, 1_000_000);
            for (i, chunk) in (0..n).collect::<Vec<_>>().chunks(500).enumerate() {
                commit(&w, chunk, i as i64 * 500);
            }
            let first = w.peek(Key(7)).unwrap();
            // Key 7 again, in a newer segment: committed, still the first one.
            w.commit("orders", 3, 90_000, NO_PRODUCER, &[(Key(7), 0)])
                .unwrap();
            assert_eq!(w.peek(Key(7)), Some(first));
            w.store.flush_now().unwrap();
            first
        };
        for threads in [1, 2, 3, 4] {
            // Before each load: an unreadable segment and an expired one.
            let store = Arc::new(reopen(dir.path()));
            let junk = store.last_segment_id().unwrap().unwrap() + 1;
            store.put_segment(junk, b"junk").unwrap();
            let old = Segment::encode(1, "orders", 0, 0, NO_PRODUCER, &[(Key(n + 1), 0)]);
            store.put_segment(junk + 1, &old).unwrap();
            let w = Window::new(store.clone(), ttl, 1_000_000);
            let report = w.load_with(threads).unwrap();
            assert!(w.is_loaded());
            assert_eq!(
                (report.keys, w.len()),
                (n as usize, n as usize),
                "{threads}"
            );
            assert_eq!(report.expired, 1);
            assert!(
                store.segment(junk).unwrap().is_none(),
                "unreadable: dropped"
            );
            assert!(
                store.segment(junk + 1).unwrap().is_none(),
                "expired: dropped"
            );
            assert_eq!(w.peek(Key(n + 1)), None);
            assert_eq!(w.peek(Key(7)), Some(first_of_7), "{threads} threads");
            assert_eq!(w.position(Key(7)).unwrap().unwrap().offset, 7);
            assert!((0..n).all(|k| w.peek(Key(k)).is_some()));
            // New segments go after every one read, dropped ones included.
            assert_eq!(w.next_segment.load(Relaxed), junk + 2);
        }
    }

    #[test]
    fn capacity_evicts_the_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let w = window(dir.path(), Duration::from_secs(3600), 4);
        commit(&w, &[1, 2], 0);
        commit(&w, &[3, 4], 2);
        commit(&w, &[5, 6], 4);
        w.sweep().unwrap();
        assert_eq!(w.len(), 4);
        assert_eq!(w.peek(Key(1)), None);
        assert_eq!(w.peek(Key(2)), None);
        assert!(w.peek(Key(3)).is_some() && w.peek(Key(6)).is_some());
    }

    #[test]
    fn keys_expire_after_the_window() {
        let dir = tempfile::tempdir().unwrap();
        // Key 3 would have to wait a whole second to expire too, which a
        // loaded CI machine does not make it do.
        let w = window(dir.path(), Duration::from_secs(1), 100);
        commit(&w, &[1, 2], 0);
        std::thread::sleep(Duration::from_millis(1200));
        commit(&w, &[3], 2);
        w.sweep().unwrap();
        assert_eq!(w.peek(Key(1)), None);
        assert!(w.peek(Key(3)).is_some());
        // Expired segments are gone from disk too: a reload does not bring them back.
        drop(w);
        let w = window(dir.path(), Duration::from_secs(3600), 100);
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn keys_still_expire_after_the_store_refused_a_write() {
        let dir = tempfile::tempdir().unwrap();
        let w = window(dir.path(), Duration::from_secs(3600), 2);
        commit(&w, &[1, 2], 0);
        commit(&w, &[3], 2);
        w.store().refuse_writes();
        w.sweep().unwrap(); // segment 0 leaves memory, not the disk
        assert_eq!((w.peek(Key(1)), w.peek(Key(2))), (None, None));
        assert!(w.store_errors.load(Relaxed) >= 1);
        // The next segment over capacity goes too: the failed one does not
        // stop the sweep at the oldest segment for good.
        // Two keys learned in memory only (the store refuses their segment).
        w.insert_seen(1, |_| Key(4), 98);
        w.insert_seen(1, |_| Key(5), 99);
        w.sweep().unwrap();
        assert_eq!(
            w.peek(Key(3)),
            None,
            "segment 1 was evicted past the failed one"
        );
    }

    #[test]
    fn a_key_learned_before_the_load_never_overwrites_a_persisted_segment() {
        let dir = tempfile::tempdir().unwrap();
        {
            let w = window(dir.path(), Duration::from_secs(3600), 100);
            commit(&w, &[1, 2], 0);
            w.store().flush_now().unwrap();
        }
        let store = Arc::new(reopen(dir.path()));
        let w = Arc::new(Window::new(store, Duration::from_secs(3600), 100));
        // Learned before load(): must land after segment 0.
        w.learn("orders", 3, 10, NO_PRODUCER, &[(Key(9), 0)])
            .unwrap();
        w.load().unwrap();
        assert_eq!(w.position(Key(1)).unwrap().unwrap().offset, 0);
        assert_eq!(w.position(Key(9)).unwrap().unwrap().offset, 10);
    }

    #[test]
    fn a_purge_the_store_refuses_is_an_error_not_an_answer() {
        let dir = tempfile::tempdir().unwrap();
        let w = window(dir.path(), Duration::from_secs(3600), 100);
        commit(&w, &[1, 2], 0);
        w.store().flush_now().unwrap();
        let purged = w.purge_topic("orders").unwrap();
        assert_eq!(purged.keys, 2);
        // A refusing store makes the purge fail instead of answering as if durable.
        commit(&w, &[5], 3);
        w.store().refuse_writes();
        assert!(w.purge_topic("orders").is_err());
    }

    #[test]
    fn an_evicted_key_seen_again_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let w = window(dir.path(), Duration::from_secs(3600), 2);
        commit(&w, &[1, 2], 0);
        commit(&w, &[3], 2);
        w.sweep().unwrap(); // segment 0 goes: keys 1 and 2
        commit(&w, &[1], 3);
        w.sweep().unwrap();
        assert_eq!(w.position(Key(1)).unwrap().unwrap().offset, 3);
    }
}
