//! Transactions on the produce path: their records pass byte for byte, and
//! their keys enter the window only when the transaction commits.
//!
//! ```text
//! Produce (transactional) → keys derived, nothing changed   → forwarded as it came
//! its response, error 0    → keys held under (producer id, epoch), with their offsets
//! EndTxn committed, error 0 → held keys become seen (a later replay outside the
//!                             transaction is dropped, as for any acknowledged copy)
//! EndTxn aborted           → held keys forgotten: an aborted record was never written
//! ```
//!
//! Transactions v1 (Produce ≤ v11, EndTxn ≤ v4) reuse one (producer id,
//! epoch) for every transaction, and in a tier of proxy processes an EndTxn
//! can go through another process than the Produce: an abort this process
//! never sees must not leave its keys to be learned at the next commit it
//! does see. So a v1 transaction's keys count only when this process saw the
//! client add their partition (AddPartitionsToTxn, which a v1 client sends
//! once per partition per transaction, before producing to it) on the very
//! connection the EndTxn comes on: an EndTxn anywhere else would have meant
//! another transaction, and a partition added again starts over. Keys it
//! can't place so are never learned (`fail_open{reason="txn_unseen"}`): a
//! duplicate later, never a loss. Transactions v2 (KIP-890: Produce v12,
//! EndTxn v5) bump the epoch at every end, so (producer id, epoch) is one
//! transaction and its keys count at its EndTxn on whatever connection.
//!
//! A transaction the coordinator aborts on its own (timeout, a fenced
//! producer) never sends an EndTxn through here; its keys are forgotten after
//! [`OPEN_FOR`], the longest a transaction may stay open by Kafka's default
//! `transaction.max.timeout.ms`. The keys held for open transactions are
//! bounded by [`MAX_OPEN_KEYS`]: a transaction that would go past it learns
//! nothing (counted), which costs dedup, never a record.
//!
//! In a tier sharing the window (`[dedup.shared]`) a v2 transaction travels
//! through the window's topic too, so it may move between processes: each
//! acknowledged part is published (its keys, where they went) and every peer
//! holds it as its own ([`Transactions::produced_elsewhere`]); the process
//! that sees the EndTxn publishes (producer id, epoch, committed), and every
//! peer that holds parts of that (producer id, epoch) learns or forgets them
//! as if it had seen the EndTxn itself ([`Transactions::ended_elsewhere`]).
//! A part a peer has not read yet when the end comes is held until
//! [`OPEN_FOR`] and never learned (a duplicate later, never a loss). v1 is
//! not shared: its parts can only be placed on the connection they came on.
//!
//! Where v1 partitions were added is kept in a moka cache: at most
//! [`MAX_OPEN_KEYS`] partitions over all producers, the least used producer
//! forgotten first when full, and a producer not added to for [`OPEN_FOR`]
//! forgotten (its last transaction is over by then). A forgotten placement
//! makes its keys `txn_unseen`: it only ever costs dedup.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::idempotency::window::{Producer, Window};
use crate::idempotency::Key;
use crate::telemetry::{FailOpen, Metrics};

/// Kafka's default `transaction.max.timeout.ms` (15 minutes): no transaction
/// stays open longer.
pub const OPEN_FOR: Duration = Duration::from_secs(15 * 60);

/// Keys held for all open transactions together (24 B each: ≤ 24 MiB).
pub const MAX_OPEN_KEYS: usize = 1 << 20;

/// One partition's records of a transactional Produce: (key, offset delta).
#[derive(Debug)]
pub struct TxnPart {
    pub topic: String,
    pub partition: i32,
    pub producer: Producer,
    pub entries: Vec<(Key, u32)>,
    /// Produce v12+: transactions v2, the broker adds the partition itself.
    pub implicit: bool,
}

/// Which transaction an acknowledged part belongs to, as far as this
/// process can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placed {
    /// Transactions v2: (producer id, epoch) is one transaction.
    Epoch,
    /// Transactions v1: its partition was added on this connection.
    AddedOn(u64),
    /// Transactions v1 whose AddPartitionsToTxn this process did not see.
    Unseen,
}

/// One producer's partitions: topic → partition → the connection.
type Added = HashMap<String, HashMap<i32, u64>>;

/// Acknowledged records of one open transaction.
#[derive(Debug)]
struct Open {
    since: Instant,
    /// Past [`MAX_OPEN_KEYS`]: learns nothing when it commits.
    overflowed: bool,
    keys: usize,
    parts: Vec<Acked>,
}

/// One partition's acknowledged records of an open transaction.
#[derive(Debug)]
struct Acked {
    topic: String,
    partition: i32,
    base_offset: i64,
    entries: Vec<(Key, u32)>,
    placed: Placed,
}

/// The open transactions of every connection (EndTxn goes to the
/// coordinator, usually over another connection than the Produce).
pub struct Transactions {
    window: Arc<Window>,
    metrics: Arc<Metrics>,
    open: Mutex<HashMap<Producer, Open>>,
    /// Transactions v1: the connection each (producer, topic, partition) was
    /// last added to a transaction on, per producer, topic and partition.
    /// Bounded (weighed in partitions) and expiring [`OPEN_FOR`] after a
    /// producer's last AddPartitionsToTxn; forgetting one only fails open.
    added: moka::sync::Cache<Producer, Arc<Added>>,
    max_keys: usize,
    open_for: Duration,
    /// `[dedup.shared]`: where v2 parts and ends are published.
    share: std::sync::OnceLock<Share>,
}

/// What a transaction publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shared {
    /// One partition's acknowledged records ([`encode_part`]).
    Part,
    /// The end ([`encode_end`]).
    End,
}

/// Publishes one encoded part or end.
pub type Share = Box<dyn Fn(Shared, Vec<u8>) + Send + Sync>;

/// A v2 transaction's acknowledged part as published: producer, base
/// offset, partition, topic, then each key and its offset delta.
pub fn encode_part(part: &TxnPart, base_offset: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(30 + part.topic.len() + 20 * part.entries.len());
    out.extend_from_slice(&part.producer.0.to_be_bytes());
    out.extend_from_slice(&part.producer.1.to_be_bytes());
    out.extend_from_slice(&base_offset.to_be_bytes());
    out.extend_from_slice(&part.partition.to_be_bytes());
    out.extend_from_slice(&(part.topic.len() as u16).to_be_bytes());
    out.extend_from_slice(part.topic.as_bytes());
    out.extend_from_slice(&(part.entries.len() as u32).to_be_bytes());
    for (key, delta) in &part.entries {
        out.extend_from_slice(&key.0.to_be_bytes());
        out.extend_from_slice(&delta.to_be_bytes());
    }
    out
}

/// The inverse of [`encode_part`]: the part (transactions v2) and its base
/// offset.
pub fn decode_part(buf: &[u8]) -> Option<(TxnPart, i64)> {
    let mut at = 0;
    let mut take = |n: usize| -> Option<&[u8]> {
        let s = buf.get(at..at + n)?;
        at += n;
        Some(s)
    };
    let id = i64::from_be_bytes(take(8)?.try_into().ok()?);
    let epoch = i16::from_be_bytes(take(2)?.try_into().ok()?);
    let base_offset = i64::from_be_bytes(take(8)?.try_into().ok()?);
    let partition = i32::from_be_bytes(take(4)?.try_into().ok()?);
    let tlen = u16::from_be_bytes(take(2)?.try_into().ok()?) as usize;
    let topic = std::str::from_utf8(take(tlen)?).ok()?.to_string();
    let n = u32::from_be_bytes(take(4)?.try_into().ok()?) as usize;
    let mut entries = Vec::with_capacity(n.min(1 << 16));
    for _ in 0..n {
        let key = Key(u128::from_be_bytes(take(16)?.try_into().ok()?));
        let delta = u32::from_be_bytes(take(4)?.try_into().ok()?);
        entries.push((key, delta));
    }
    if at != buf.len() {
        return None;
    }
    let part = TxnPart {
        topic,
        partition,
        producer: (id, epoch),
        entries,
        implicit: true,
    };
    Some((part, base_offset))
}

/// A v2 transaction's end as published: producer id, epoch, committed.
pub fn encode_end(producer: Producer, committed: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(11);
    out.extend_from_slice(&producer.0.to_be_bytes());
    out.extend_from_slice(&producer.1.to_be_bytes());
    out.push(u8::from(committed));
    out
}

/// The inverse of [`encode_end`].
pub fn decode_end(buf: &[u8]) -> Option<(Producer, bool)> {
    if buf.len() != 11 {
        return None;
    }
    let id = i64::from_be_bytes(buf[0..8].try_into().ok()?);
    let epoch = i16::from_be_bytes(buf[8..10].try_into().ok()?);
    Some(((id, epoch), buf[10] != 0))
}

impl Transactions {
    pub fn new(window: Arc<Window>, metrics: Arc<Metrics>) -> Self {
        Self::with_limits(window, metrics, MAX_OPEN_KEYS, OPEN_FOR)
    }

    pub fn with_limits(
        window: Arc<Window>,
        metrics: Arc<Metrics>,
        max_keys: usize,
        open_for: Duration,
    ) -> Self {
        Transactions {
            window,
            metrics,
            open: Mutex::new(HashMap::new()),
            added: moka::sync::Cache::builder()
                .max_capacity(max_keys as u64)
                .weigher(|_, parts: &Arc<Added>| {
                    let n: usize = parts.values().map(HashMap::len).sum();
                    u32::try_from(n.max(1)).unwrap_or(u32::MAX)
                })
                .time_to_live(open_for)
                .build(),
            max_keys,
            open_for,
            share: std::sync::OnceLock::new(),
        }
    }

    /// `[dedup.shared]`: publish every v2 part and end seen here (set once).
    pub fn share_with(&self, share: Share) {
        if self.share.set(share).is_err() {
            tracing::warn!("transactions: a second publisher was refused");
        }
    }

    /// A peer saw a v2 transaction of `producer` end: what this process
    /// holds of it is learned (committed) or forgotten (aborted).
    pub fn ended_elsewhere(&self, producer: Producer, committed: bool) -> usize {
        self.end(producer, committed, 0, true)
    }

    /// A peer's v2 part, held here as if it had been acknowledged here.
    pub fn produced_elsewhere(&self, part: &TxnPart, base_offset: i64) {
        if part.implicit {
            self.hold(part, base_offset);
        }
    }

    /// A transactions-v1 client adds partitions to its transaction on
    /// connection `conn`: what this producer holds for them belongs to an
    /// earlier transaction (a partition is added once per transaction), and
    /// what it produces to them next belongs to the one ending on `conn`.
    pub fn partitions_added(&self, producer: Producer, conn: u64, parts: &[(String, i32)]) {
        self.added.entry(producer).and_upsert_with(|held| {
            let mut mine = held.map_or_else(Added::new, |e| Added::clone(&e.into_value()));
            for (topic, partition) in parts {
                mine.entry(topic.clone())
                    .or_default()
                    .insert(*partition, conn);
            }
            Arc::new(mine)
        });
        let mut open = self.open.lock().expect("transactions lock");
        if let Some(txn) = open.get_mut(&producer) {
            let before = txn.parts.len();
            txn.parts.retain(|a| {
                !parts
                    .iter()
                    .any(|(t, p)| *t == a.topic && *p == a.partition)
            });
            if txn.parts.len() < before {
                txn.keys = txn.parts.iter().map(|a| a.entries.len()).sum();
                tracing::debug!(
                    producer_id = producer.0,
                    "partitions added again: keys of an earlier transaction forgotten"
                );
            }
        }
    }

    /// The broker acknowledged `part` at `base_offset` inside its producer's
    /// open transaction.
    pub fn produced(&self, part: &TxnPart, base_offset: i64) {
        if self.hold(part, base_offset) && part.implicit {
            if let Some(share) = self.share.get() {
                share(Shared::Part, encode_part(part, base_offset));
            }
        }
    }

    /// Holds a part's keys until its transaction ends; `false`: not held
    /// (nothing to hold, or past the bound).
    fn hold(&self, part: &TxnPart, base_offset: i64) -> bool {
        if part.entries.is_empty() {
            return false;
        }
        let placed = if part.implicit {
            Placed::Epoch
        } else {
            self.added
                .get(&part.producer)
                .and_then(|topics| {
                    topics
                        .get(part.topic.as_str())?
                        .get(&part.partition)
                        .copied()
                })
                .map_or(Placed::Unseen, Placed::AddedOn)
        };
        let mut open = self.open.lock().expect("transactions lock");
        let now = Instant::now();
        let before = open.len();
        let mut expired_keys = 0;
        open.retain(|_, o| {
            let alive = now.duration_since(o.since) < self.open_for;
            if !alive {
                expired_keys += o.keys;
            }
            alive
        });
        if open.len() < before {
            self.metrics
                .dedup
                .txn_expired
                .fetch_add((before - open.len()) as u64, Relaxed);
            tracing::debug!(
                transactions = before - open.len(),
                keys = expired_keys,
                "open transactions past the longest transaction timeout forgotten"
            );
        }
        let held: usize = open.values().map(|o| o.keys).sum();
        let txn = open.entry(part.producer).or_insert_with(|| Open {
            since: now,
            overflowed: false,
            keys: 0,
            parts: Vec::new(),
        });
        if txn.overflowed {
            return false;
        }
        if held + part.entries.len() > self.max_keys {
            tracing::warn!(
                producer_id = part.producer.0,
                held,
                "keys held for open transactions at their bound: this transaction's keys will not be learned"
            );
            txn.overflowed = true;
            txn.keys = 0;
            txn.parts = Vec::new();
            return false;
        }
        txn.keys += part.entries.len();
        txn.parts.push(Acked {
            topic: part.topic.clone(),
            partition: part.partition,
            base_offset,
            entries: part.entries.clone(),
            placed,
        });
        true
    }

    /// The coordinator ended `producer`'s transaction without an error, on
    /// connection `conn`, with EndTxn v5+ (`v2`) or an earlier version.
    /// Returns how many keys became seen.
    pub fn ended(&self, producer: Producer, committed: bool, conn: u64, v2: bool) -> usize {
        if let (true, Some(share)) = (v2, self.share.get()) {
            share(Shared::End, encode_end(producer, committed));
        }
        self.end(producer, committed, conn, v2)
    }

    fn end(&self, producer: Producer, committed: bool, conn: u64, v2: bool) -> usize {
        self.added.invalidate(&producer);
        let Some(txn) = self
            .open
            .lock()
            .expect("transactions lock")
            .remove(&producer)
        else {
            return 0;
        };
        let dedup = &self.metrics.dedup;
        if txn.since.elapsed() >= self.open_for {
            // The coordinator has aborted it by now, whatever the answer said.
            dedup.txn_expired.fetch_add(1, Relaxed);
            return 0;
        }
        if !committed {
            dedup.txn_aborted.fetch_add(1, Relaxed);
            return 0;
        }
        dedup.txn_committed.fetch_add(1, Relaxed);
        if txn.overflowed {
            dedup.txn_unlearned.fetch_add(1, Relaxed);
            return 0;
        }
        let mut learned = 0;
        for a in &txn.parts {
            let ours = match a.placed {
                Placed::Epoch => v2,
                Placed::AddedOn(c) => !v2 && c == conn,
                Placed::Unseen => false,
            };
            if !ours {
                dedup.fail_open(FailOpen::TxnUnseen, a.entries.len() as u64);
                continue;
            }
            match self
                .window
                .learn(&a.topic, a.partition, a.base_offset, producer, &a.entries)
            {
                Ok(()) => {
                    learned += a.entries.len();
                    // The commit marker follows the part's records: a plain
                    // replay of them never lands right after them.
                    if let Some(last) = a.entries.iter().map(|&(_, delta)| delta).max() {
                        let marker_at_least = a.base_offset + i64::from(last) + 1;
                        self.window
                            .note_written_at(&a.topic, a.partition, marker_at_least);
                    }
                }
                Err(e) => {
                    dedup.fail_open(FailOpen::StoreError, a.entries.len() as u64);
                    tracing::warn!(error = %e, topic = %a.topic, "could not record a committed transaction's keys; their replays will pass");
                }
            }
        }
        dedup.txn_keys_learned.fetch_add(learned as u64, Relaxed);
        learned
    }

    /// Keys held for open transactions now.
    pub fn held(&self) -> usize {
        let open = self.open.lock().expect("transactions lock");
        open.values().map(|o| o.keys).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idempotency::window::Check;

    fn setup(
        max_keys: usize,
        open_for: Duration,
    ) -> (Transactions, Arc<Window>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(crate::store::Store::open(dir.path()).unwrap());
        let window = Arc::new(Window::new(store, Duration::from_secs(3600), 1000));
        window.load().unwrap();
        let txns =
            Transactions::with_limits(window.clone(), Arc::new(Metrics::new()), max_keys, open_for);
        (txns, window, dir)
    }

    fn part(producer: Producer, keys: &[u128]) -> TxnPart {
        TxnPart {
            topic: "orders".into(),
            partition: 0,
            producer,
            entries: keys
                .iter()
                .enumerate()
                .map(|(i, k)| (Key(*k), i as u32))
                .collect(),
            implicit: true,
        }
    }

    /// A transactions-v1 part (its partition added by AddPartitionsToTxn).
    fn v1(producer: Producer, keys: &[u128]) -> TxnPart {
        TxnPart {
            implicit: false,
            ..part(producer, keys)
        }
    }

    fn orders0() -> Vec<(String, i32)> {
        vec![("orders".to_string(), 0)]
    }

    #[test]
    fn committed_keys_become_seen_at_their_offsets() {
        let (txns, window, _dir) = setup(100, OPEN_FOR);
        txns.produced(&part((7, 0), &[1, 2]), 40);
        txns.produced(&part((7, 0), &[3]), 42);
        assert_eq!(window.peek(Key(1)), None, "nothing seen before the commit");
        assert_eq!(txns.ended((7, 0), true, 1, true), 3);
        assert!(matches!(window.check(Key(2)), Check::Seen(_)));
        let pos = window.position(Key(3)).unwrap().unwrap();
        assert_eq!((pos.partition, pos.offset), (0, 42));
        assert_eq!(txns.held(), 0);
        // The commit marker follows the last record: a replayed prefix of
        // these records is never bet to be followed by the rest.
        assert!(window.written_after("orders", 0, 42));
    }

    #[test]
    fn aborted_keys_are_never_seen() {
        let (txns, window, _dir) = setup(100, OPEN_FOR);
        txns.produced(&part((7, 0), &[1, 2]), 40);
        assert_eq!(txns.ended((7, 0), false, 1, true), 0);
        assert_eq!(window.peek(Key(1)), None);
        // A later commit of the same producer and epoch learns only its own.
        txns.produced(&part((7, 0), &[3]), 50);
        assert_eq!(txns.ended((7, 0), true, 1, true), 1);
        assert_eq!(window.peek(Key(1)), None);
        assert!(window.peek(Key(3)).is_some());
    }

    #[test]
    fn producers_and_epochs_are_apart() {
        let (txns, window, _dir) = setup(100, OPEN_FOR);
        txns.produced(&part((7, 0), &[1]), 0);
        txns.produced(&part((7, 1), &[2]), 1);
        txns.produced(&part((8, 0), &[3]), 2);
        assert_eq!(txns.ended((7, 1), true, 1, true), 1);
        assert!(window.peek(Key(2)).is_some());
        assert_eq!(window.peek(Key(1)), None);
        assert_eq!(window.peek(Key(3)), None);
        assert_eq!(
            txns.ended((9, 0), true, 1, true),
            0,
            "an unknown transaction learns nothing"
        );
    }

    #[test]
    fn over_the_bound_a_transaction_learns_nothing() {
        let (txns, window, _dir) = setup(3, OPEN_FOR);
        txns.produced(&part((7, 0), &[1, 2]), 0);
        txns.produced(&part((8, 0), &[3, 4]), 0);
        txns.produced(&part((8, 0), &[5]), 2);
        assert_eq!(txns.held(), 2);
        assert_eq!(txns.ended((8, 0), true, 1, true), 0);
        assert_eq!(window.peek(Key(3)), None);
        assert_eq!(txns.ended((7, 0), true, 1, true), 2);
    }

    #[test]
    fn transactions_open_too_long_are_forgotten() {
        // Margins a loaded CI machine keeps: the second transaction would
        // have to wait half a second to expire too.
        let (txns, window, _dir) = setup(100, Duration::from_millis(500));
        txns.produced(&part((7, 0), &[1]), 0);
        std::thread::sleep(Duration::from_millis(600));
        txns.produced(&part((8, 0), &[2]), 0);
        assert_eq!(txns.held(), 1);
        assert_eq!(txns.ended((7, 0), true, 1, true), 0);
        assert_eq!(window.peek(Key(1)), None);
    }

    #[test]
    fn a_learned_key_does_not_clear_another_requests_claim() {
        let (txns, window, _dir) = setup(100, OPEN_FOR);
        assert_eq!(window.check(Key(9)), Check::Claimed);
        txns.produced(&part((7, 0), &[9]), 0);
        txns.ended((7, 0), true, 1, true);
        // Seen now; the claimant's commit or release changes nothing.
        assert!(matches!(window.check(Key(9)), Check::Seen(_)));
    }

    #[test]
    fn v1_keys_count_when_their_partition_was_added_on_the_ending_connection() {
        let (txns, window, _dir) = setup(100, OPEN_FOR);
        txns.partitions_added((7, 0), 1, &orders0());
        txns.produced(&v1((7, 0), &[1, 2]), 40);
        assert_eq!(txns.ended((7, 0), true, 1, false), 2);
        assert!(window.peek(Key(1)).is_some());
    }

    #[test]
    fn v1_an_abort_through_another_process_never_teaches_its_keys() {
        // Audit A9: T1 adds orders-0 and produces here; its EndTxn (abort)
        // goes through another process. T2 then commits here.
        let (txns, window, _dir) = setup(100, OPEN_FOR);
        txns.partitions_added((7, 0), 1, &orders0());
        txns.produced(&v1((7, 0), &[1]), 40);
        // T2 adds the partition again here: T1's keys are an earlier
        // transaction's.
        txns.partitions_added((7, 0), 1, &orders0());
        txns.produced(&v1((7, 0), &[2]), 42);
        assert_eq!(txns.ended((7, 0), true, 1, false), 1);
        assert_eq!(
            window.peek(Key(1)),
            None,
            "the aborted record was never written"
        );
        assert!(window.peek(Key(2)).is_some());

        // T3 adds orders-0 on connection 1 and produces; T3 aborts and T4
        // adds its partition through another process; T4 produces here and
        // commits here on a new connection: nothing can be placed.
        txns.partitions_added((7, 0), 1, &orders0());
        txns.produced(&v1((7, 0), &[3]), 50);
        txns.produced(&v1((7, 0), &[4]), 51);
        assert_eq!(txns.ended((7, 0), true, 3, false), 0);
        assert_eq!(window.peek(Key(3)), None);
        assert_eq!(window.peek(Key(4)), None, "a duplicate later, never a loss");
        assert_eq!(txns.metrics.dedup.fail_open_count(FailOpen::TxnUnseen), 2);
    }

    #[test]
    fn v1_a_full_placement_map_forgets_at_most_one_producer() {
        // Three producers' placements fill the bound; a fourth producer adds
        // a partition before the three produce. Forgetting a placement only
        // fails open (its keys are not learned), but forgetting every live
        // producer's placements at once loses the dedup of all their
        // transactions, as the wipe at the threshold did.
        let (txns, window, _dir) = setup(3, OPEN_FOR);
        for pid in 1..=3 {
            txns.partitions_added((pid, 0), 1, &orders0());
        }
        txns.partitions_added((4, 0), 1, &orders0());
        // why: moka evicts in its housekeeping; run it before the lookups.
        txns.added.run_pending_tasks();
        assert!(txns.added.weighted_size() <= 3, "bounded");
        for pid in 1..=3 {
            txns.produced(&v1((pid, 0), &[pid as u128]), 40);
        }
        let learned: usize = (1..=3)
            .map(|pid| txns.ended((pid, 0), true, 1, false))
            .sum();
        assert!(
            learned >= 2,
            "one producer past the bound forgot {} of 3 live producers' placements",
            3 - learned
        );
        let seen = (1..=3).filter(|k| window.peek(Key(*k)).is_some()).count();
        assert_eq!(seen, learned);
    }

    #[test]
    fn v1_keys_of_a_partition_added_elsewhere_are_not_learned() {
        let (txns, window, _dir) = setup(100, OPEN_FOR);
        txns.produced(&v1((7, 0), &[1]), 40);
        assert_eq!(txns.ended((7, 0), true, 1, false), 0);
        assert_eq!(window.peek(Key(1)), None);
    }

    #[test]
    fn a_v2_transaction_moves_between_processes_through_what_they_publish() {
        let (a, window_a, _dir_a) = setup(100, OPEN_FOR);
        let (b, window_b, _dir_b) = setup(100, OPEN_FOR);
        let published = Arc::new(Mutex::new(Vec::new()));
        let sink = published.clone();
        a.share_with(Box::new(move |kind, bytes| {
            sink.lock().unwrap().push((kind, bytes))
        }));
        let deliver = || {
            for (kind, bytes) in published.lock().unwrap().drain(..) {
                match kind {
                    Shared::Part => {
                        let (part, base) = decode_part(&bytes).unwrap();
                        b.produced_elsewhere(&part, base);
                    }
                    Shared::End => {
                        let (producer, committed) = decode_end(&bytes).unwrap();
                        b.ended_elsewhere(producer, committed);
                    }
                }
            }
        };
        // (7, 3) produced through A and committed there; (8, 0) produced
        // through A, aborted there; (9, 0) v1 through A: never published.
        a.produced(&part((7, 3), &[1]), 40);
        a.produced(&part((8, 0), &[2]), 41);
        a.partitions_added((9, 0), 5, &orders0());
        a.produced(&v1((9, 0), &[3]), 42);
        deliver();
        assert_eq!(b.held(), 2, "B holds A's v2 parts");
        assert_eq!(a.ended((7, 3), true, 9, true), 1);
        assert_eq!(a.ended((8, 0), false, 9, true), 0);
        a.ended((9, 0), true, 5, false);
        deliver();
        assert!(window_a.peek(Key(1)).is_some() && window_b.peek(Key(1)).is_some());
        assert!(window_b.peek(Key(2)).is_none(), "aborted: forgotten");
        assert!(
            window_b.peek(Key(3)).is_none(),
            "v1 stays where it was placed"
        );
        assert_eq!(b.held(), 0);
        // A part that moved: held by B, committed through B.
        a.produced(&part((7, 4), &[4]), 43);
        deliver();
        assert_eq!(b.ended((7, 4), true, 1, true), 1);
        assert!(window_b.peek(Key(4)).is_some());
        let end = encode_end((7, 4), true);
        assert_eq!(decode_end(&end[..10]), None);
        let bytes = encode_part(&part((7, 4), &[4]), 43);
        assert!(decode_part(&bytes[..bytes.len() - 1]).is_none());
    }

    #[test]
    fn v2_keys_count_at_their_epochs_end_wherever_it_goes() {
        let (txns, window, _dir) = setup(100, OPEN_FOR);
        txns.produced(&part((7, 3), &[1]), 40);
        assert_eq!(txns.ended((7, 3), true, 9, true), 1);
        assert!(window.peek(Key(1)).is_some());
        // A v1 EndTxn can't end a v2 transaction's keys.
        txns.produced(&part((7, 4), &[2]), 41);
        assert_eq!(txns.ended((7, 4), true, 9, false), 0);
    }
}
