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
//! records removed and the same broker sequence. A batch that loses nothing
//! leaves no point: its retry is decided again, and its own records count as
//! that producer's (not replays, see `Window::producer_of`). A new epoch or
//! producer id starts from delta 0, as the broker does.
//!
//! Sequences wrap at `i32::MAX` in Kafka; a producer that writes 2^31 records
//! to one partition in one epoch is not translated correctly here (it is
//! beyond any Connect task's lifetime per epoch).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::Error;
use crate::store::Store;

/// How many points one producer-partition keeps: retries only go back as
/// far as the in-flight requests (at most 5 for idempotent producers).
const POINTS_KEPT: usize = 16;
/// Producer-partitions kept in memory before the cache starts over (they
/// are read back from the store when needed).
const CACHED: usize = 100_000;

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

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeqState {
    points: Vec<Point>,
}

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
        let mut out = Vec::new();
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
        Some(SeqState { points })
    }
}

/// Every producer's translation state: a memory cache over the store.
pub struct Sequences {
    store: Arc<Store>,
    cache: Mutex<HashMap<SeqKey, SeqState>>,
    /// Per producer-partition: the client sequence after the last batch
    /// decided (memory only: after a restart, retries are decided again).
    sent: Mutex<HashMap<SeqKey, i32>>,
}

impl Sequences {
    pub fn new(store: Arc<Store>) -> Sequences {
        Sequences {
            store,
            cache: Mutex::new(HashMap::new()),
            sent: Mutex::new(HashMap::new()),
        }
    }

    /// True when a batch starting at `base` was decided before (a retry).
    pub fn already_sent(&self, key: &SeqKey, base: i32) -> bool {
        self.sent
            .lock()
            .expect("sequences lock")
            .get(key)
            .is_some_and(|&end| base < end)
    }

    /// Remembers that the batches up to `end` (exclusive) were decided.
    pub fn mark_sent(&self, key: &SeqKey, end: i32) {
        let mut sent = self.sent.lock().expect("sequences lock");
        if sent.len() >= CACHED && !sent.contains_key(key) {
            sent.clear();
        }
        let e = sent.entry(key.clone()).or_insert(end);
        *e = (*e).max(end);
    }

    /// The state of one producer-partition (empty when it never lost a record).
    pub fn state(&self, key: &SeqKey) -> Result<SeqState, Error> {
        if let Some(s) = self.cache.lock().expect("sequences lock").get(key) {
            return Ok(s.clone());
        }
        let state = match self.store.sequence_state(&key.bytes())? {
            Some(v) => SeqState::decode(&v)
                .ok_or_else(|| Error::Store("unreadable sequence state".into()))?,
            None => SeqState::default(),
        };
        let mut cache = self.cache.lock().expect("sequences lock");
        if cache.len() >= CACHED {
            cache.clear();
        }
        cache.insert(key.clone(), state.clone());
        Ok(state)
    }

    /// Records a batch's decision, durably, before the batch goes upstream.
    pub async fn record(&self, key: &SeqKey, point: Point) -> Result<(), Error> {
        let mut state = self.state(key)?;
        state.push(point);
        self.store
            .put_sequence_state_durably(&key.bytes(), &state.encode())
            .await?;
        self.cache
            .lock()
            .expect("sequences lock")
            .insert(key.clone(), state);
        Ok(())
    }
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

    #[tokio::test]
    async fn deltas_follow_the_points_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let seqs = Sequences::new(Arc::new(Store::open(dir.path()).unwrap()));
            assert_eq!(seqs.state(&key()).unwrap().delta_before(100), 0);
            // Batch 10..20 lost 3 records, batch 30..35 lost all 5.
            let p1 = Point {
                base: 10,
                count: 10,
                dropped: vec![0, 1, 2],
                delta_after: 3,
            };
            seqs.record(&key(), p1.clone()).await.unwrap();
            let p2 = Point {
                base: 30,
                count: 5,
                dropped: vec![0, 1, 2, 3, 4],
                delta_after: 8,
            };
            seqs.record(&key(), p2).await.unwrap();
            let s = seqs.state(&key()).unwrap();
            assert_eq!(s.delta_before(10), 0, "a retry of the first batch");
            assert_eq!(s.delta_before(20), 3);
            assert_eq!(s.delta_before(30), 3);
            assert_eq!(s.delta_before(35), 8);
            assert_eq!(s.decided(10, 10), Some(&p1));
            assert_eq!(s.decided(10, 9), None);
        }
        let seqs = Sequences::new(Arc::new(Store::open(dir.path()).unwrap()));
        let s = seqs.state(&key()).unwrap();
        assert_eq!(s.delta_before(40), 8);
        assert_eq!(s.decided(30, 5).unwrap().dropped.len(), 5);
        let other_epoch = SeqKey { epoch: 1, ..key() };
        assert_eq!(seqs.state(&other_epoch).unwrap().delta_before(40), 0);
    }
}
