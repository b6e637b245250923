//! Dedup on the fetch path: sinks read each logical record once, whoever
//! wrote the copies (producers around the proxy, history from before it, a
//! mirrored cluster).
//!
//! ```text
//! response  decode FetchResponse → per partition of a topic a fetch rule covers:
//!             per v2 batch (not control, not aborted) → per record: key
//!               → window: unknown → learn (topic, partition, offset) as its first position
//!                         first position == this offset → deliver (a re-read, never hidden)
//!                         first position elsewhere, earlier → a duplicate: drop (or count)
//!             rewrite only the records bytes (Kafka's compaction recipe)
//!           decisions resting on positions not yet on disk: flush, then send
//! ```
//!
//! A record's key is its tag header, else the rule's strategy, scoped to the
//! topic: the same logical record gets the same key whether the copy went
//! through the proxy (tagged) or around it (not), and the produce path keys
//! it the same way (`idempotency::key`). So a copy written around the proxy,
//! read here, and then replayed untagged through the proxy is a replay on
//! the produce path too, and a record written and read through the proxy
//! costs one window key.
//!
//! Never a loss: a record is dropped only when its key's first position is a
//! lower offset of the same partition, still in the log (at or above the
//! partition's log start offset, on a topic that is not compacted: the
//! brokers are asked its `cleanup.policy`, `topic_config.rs`, and where it
//! compacts or they would not say, nothing is removed); the first position is always delivered,
//! however often it is read. A copy in another partition is delivered: the
//! proxy cannot see whether the first copy is still in that partition's log
//! (retention, DeleteRecords), and a sink must never lose its only copy.
//! A key's first position is never moved. Anything uncertain (window still
//! loading, an unknown topic id, an undecodable batch, a store error) is
//! delivered as it came and counted in `idemgate_dedup_fail_open_total`.
//!
//! Shape: never a partition added, removed or reordered; error codes,
//! session ids, watermarks, log start offsets and aborted-transaction lists
//! untouched; a rewritten batch keeps baseOffset, lastOffsetDelta, epochs,
//! producer fields, attributes and every kept record's offsetDelta, and a
//! batch whose every record goes becomes a control batch over the same
//! offsets with one COMMIT marker at its last offset (`records::emptied_marker`:
//! a consumer that gets nothing for those offsets would fetch them forever,
//! and kafkajs does so even for an empty batch). Control batches, legacy
//! batches and a partial trailing batch pass untouched.
//!
//! Transactions: with read_uncommitted, transactional batches pass untouched
//! and teach nothing (the proxy cannot tell whether they commit). With
//! read_committed, batches of aborted transactions (the response's aborted
//! list, as Java's consumer reads it) pass untouched for the consumer to skip
//! and teach nothing; committed ones are filtered like any other.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::fetch_response::{AbortedTransaction, FetchableTopicResponse};
use kafka_protocol::messages::{ApiKey, FetchResponse};

use super::{on_response, Call, Exchange, Filter};
use crate::config::{Config, Mode, Rule};
use crate::error::Error;
use crate::filter::state::ConnState;
use crate::idempotency::key::{Derived, Deriver, KeyBuildHasher};
use crate::idempotency::window::{SegmentPositions, Window};
use crate::idempotency::Key;
use crate::identity::Identity;
use crate::message::{self, ResponseFrame};
use crate::records::{self, Action, BatchItem, Batches, DecodedBatch, SpliceMode, Spliced};
use crate::telemetry::{FailOpen, Metrics, TopicCounts};
use crate::topology::Topology;

/// The fetch-path dedup filter, shared by every connection.
pub struct FetchDedup {
    config: Arc<Config>,
    window: Arc<Window>,
    metrics: Arc<Metrics>,
    /// Each topic's `cleanup.policy`: nothing is removed from a compacted
    /// topic, nor from one whose policy the brokers would not say.
    topic_configs: Arc<crate::topic_config::TopicConfigs>,
    /// Topic ids → names (Fetch v13+ names topics by id).
    topology: Arc<Topology>,
}

/// What the response of a Fetch needs.
#[derive(Debug)]
pub struct FetchPlan {
    /// The sink connector, for rules that name one.
    connector: Option<String>,
    /// The metrics label.
    label: String,
    read_committed: bool,
}

/// What one response's decisions rest on, and what they counted.
#[derive(Default)]
struct Pass {
    /// Segments read back for positions, per response.
    segments: HashMap<u64, Option<SegmentPositions>>,
    /// Segments this response learned, as learned: made into positions only
    /// when a later record of the response asks (most reads never do).
    learned: HashMap<u64, Learned>,
    /// The newest segment a drop rests on: on disk before the response leaves.
    rests_on: Option<u64>,
    counts: TopicCounts,
}

impl Pass {
    fn rest_on(&mut self, segment: u64) {
        self.rests_on = Some(self.rests_on.map_or(segment, |s| s.max(segment)));
    }
}

/// A segment this response wrote: its keys and their offset deltas.
struct Learned {
    topic: String,
    partition: i32,
    base: i64,
    keys: Vec<(Key, u32)>,
}

impl Learned {
    fn into_positions(self) -> SegmentPositions {
        let base = self.base;
        SegmentPositions {
            topic: self.topic,
            partition: self.partition,
            offsets: self
                .keys
                .into_iter()
                .map(|(k, delta)| (k, base + i64::from(delta)))
                .collect(),
        }
    }
}

/// A record's place in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Place {
    partition: i32,
    offset: i64,
}

impl FetchDedup {
    pub fn new(
        config: Arc<Config>,
        window: Arc<Window>,
        metrics: Arc<Metrics>,
        topic_configs: Arc<crate::topic_config::TopicConfigs>,
        topology: Arc<Topology>,
    ) -> FetchDedup {
        FetchDedup {
            config,
            window,
            metrics,
            topic_configs,
            topology,
        }
    }

    fn rule(&self, topic: &str, plan: &FetchPlan) -> Option<&Rule> {
        self.config
            .dedup
            .fetch_rule_for(topic, plan.connector.as_deref())
            .filter(|r| r.mode != Mode::Off)
    }

    /// Filters a Fetch response; `None` when nothing changed (forward it as
    /// it came).
    pub async fn on_response(
        &self,
        plan: &FetchPlan,
        version: i16,
        frame: &mut ResponseFrame,
    ) -> Result<(), Error> {
        let mut resp = match frame.take_response::<FetchResponse>(ApiKey::Fetch, version) {
            Ok(resp) => resp,
            Err(e) => {
                tracing::debug!(error = %e, "Fetch response did not decode: forwarded as it came");
                return Ok(());
            }
        };
        if resp.msg.error_code != 0 {
            frame.put_response(resp, false);
            return Ok(());
        }
        let mut pass = Pass::default();
        let mut changed = false;
        for topic in &mut resp.msg.responses {
            let name = if version >= 13 {
                match self.topology.name_of(topic.topic_id.as_bytes()) {
                    Some(name) => name,
                    None => {
                        let records = topic_records(topic);
                        if records > 0 {
                            tracing::debug!(topic_id = %topic.topic_id, "Fetch for a topic id no Metadata response named: forwarded as it came");
                            self.metrics.dedup.fail_open(FailOpen::TopicId, records);
                        }
                        continue;
                    }
                }
            } else {
                topic.topic.0.clone()
            };
            let Some(rule) = self.rule(&name, plan) else {
                continue;
            };
            if !self.window.is_loaded() {
                self.metrics
                    .dedup
                    .fail_open(FailOpen::Loading, topic_records(topic));
                continue;
            }
            // Compaction removes records from the middle of a log without
            // moving its start: a copy there may be the only one left. Not
            // known within `dedup.topic_config_wait` (a broker that hangs on
            // DescribeConfigs): the records go as they came.
            let wait = self.config.dedup.topic_config_wait;
            match self.topic_configs.get_within(&name, wait).await {
                Ok(Some(c)) if !c.compacted => {}
                known => {
                    let reason = match known {
                        Ok(Some(_)) => FailOpen::Compacted,
                        Ok(None) => FailOpen::TopicConfig,
                        Err(_late) => FailOpen::TopicConfigWait,
                    };
                    self.metrics.dedup.fail_open(reason, topic_records(topic));
                    continue;
                }
            }
            pass.counts = TopicCounts::default();
            for part in &mut topic.partitions {
                if part.error_code != 0 {
                    continue;
                }
                let Some(records) = part.records.clone().filter(|r| !r.is_empty()) else {
                    continue;
                };
                let aborted = part.aborted_transactions.as_deref().unwrap_or_default();
                let filtered = self.filter_partition(
                    rule,
                    &name,
                    (part.partition_index, part.log_start_offset),
                    records,
                    plan.read_committed,
                    aborted,
                    &mut pass,
                );
                if let Some(new) = filtered {
                    part.records = Some(new);
                    changed = true;
                }
            }
            self.metrics
                .dedup
                .add_fetch(&plan.label, &name, pass.counts);
        }
        if !changed {
            frame.put_response(resp, false);
            return Ok(());
        }
        // A drop rests on a first position: it must outlive a crash.
        if let Some(segment) = pass.rests_on {
            if let Err(e) = self.window.flush_through(segment).await {
                tracing::warn!(error = %e, "store flush failed: Fetch response forwarded with its duplicates");
                self.metrics
                    .dedup
                    .fail_open(FailOpen::StoreError, pass.counts.dropped);
                // The frame keeps the bytes it came with.
                return Ok(());
            }
        }
        frame.put_response(resp, true);
        Ok(())
    }

    /// What a Fetch's response needs; `None` when no fetch rule could apply
    /// to this client (its responses are then never decoded).
    pub fn plan(&self, identity: &Identity, isolation_level: Option<i8>) -> Option<FetchPlan> {
        let connector = identity.connector.as_deref();
        let covered = self.config.dedup.rules.iter().any(|r| {
            r.mode != Mode::Off
                && r.direction.fetch()
                && r.connector
                    .as_ref()
                    .is_none_or(|c| connector.is_some_and(|name| c.matches(name)))
        });
        covered.then(|| FetchPlan {
            connector: identity.connector.clone(),
            label: identity.label().to_string(),
            read_committed: isolation_level == Some(1),
        })
    }

    /// One partition's records bytes; `None` when nothing changed.
    #[allow(clippy::too_many_arguments)]
    fn filter_partition(
        &self,
        rule: &Rule,
        topic: &str,
        (partition, log_start): (i32, i64),
        records: Bytes,
        read_committed: bool,
        aborted: &[AbortedTransaction],
        pass: &mut Pass,
    ) -> Option<Bytes> {
        // Java's consumer: an aborted transaction's producer is "aborted" from
        // its first offset until its ABORT marker.
        let mut pending_aborts: Vec<(i64, i64)> = aborted
            .iter()
            .map(|a| (a.first_offset, a.producer_id.0))
            .collect();
        pending_aborts.sort_unstable();
        let mut next_abort = 0;
        let mut aborted_producers: HashSet<i64> = HashSet::new();

        // why: most reads change nothing; the bytes are copied into `out` only from the
        // first batch that changes (everything before it in one copy), not on every read.
        let mut out = Rewritten::new(&records);
        let mut batches = Batches::new(records.clone());
        loop {
            let start = batches.position();
            let raw = match batches.next() {
                None => break,
                Some(Ok(BatchItem::Batch(raw))) => raw,
                Some(Ok(BatchItem::Legacy { .. } | BatchItem::PartialTail(_))) => continue,
                Some(Err(e)) => {
                    // The rest as it came: the consumer judges it.
                    tracing::debug!(topic, partition, error = %e, "Fetch records did not parse: the rest forwarded as it came");
                    self.metrics.dedup.fail_open(FailOpen::Undecodable, 0);
                    break;
                }
            };
            let h = *raw.header();
            if read_committed {
                while let Some(&(first, pid)) = pending_aborts.get(next_abort) {
                    if first > h.last_offset() {
                        break;
                    }
                    aborted_producers.insert(pid);
                    next_abort += 1;
                }
            }
            if h.attributes.is_control() {
                // The marker ends that producer's transaction.
                aborted_producers.remove(&h.producer_id);
                continue;
            }
            if h.attributes.is_transactional()
                && (!read_committed || aborted_producers.contains(&h.producer_id))
            {
                continue;
            }
            let batch = match raw.decode_with_limit(self.config.listen.max_frame_bytes) {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::debug!(topic, partition, error = %e, "fetched batch did not decode: forwarded as it came");
                    self.metrics
                        .dedup
                        .fail_open(FailOpen::Undecodable, h.records_count.max(0) as u64);
                    continue;
                }
            };
            if let Some(new) = self.filter_batch(rule, topic, (partition, log_start), &batch, pass)
            {
                out.replace(start..batches.position(), &new);
            }
        }
        out.finish()
    }

    /// One decoded batch; `None` when it goes as it came.
    fn filter_batch(
        &self,
        rule: &Rule,
        topic: &str,
        (partition, log_start): (i32, i64),
        batch: &DecodedBatch,
        pass: &mut Pass,
    ) -> Option<Bytes> {
        let deriver = Deriver {
            strategy: &rule.key,
            fallback: rule.fallback,
            tag_header: self.config.dedup.header.as_bytes(),
            secret: self.config.dedup.key_secret.as_ref(),
        };
        let drop = rule.mode == Mode::Drop;
        // why: made at the first drop; most batches keep every record.
        let mut actions: Vec<Action> = Vec::new();
        // why: sized at the first key learned (a re-read learns none), so they
        // do not grow and rehash record by record.
        let mut learn: Vec<(Key, u32)> = Vec::new();
        let mut learning: HashSet<Key, KeyBuildHasher> = HashSet::default();
        let mut rests_on_learning = false;
        for record in batch.records() {
            let key = match deriver.derive(topic, &record) {
                Derived::Carried(key) | Derived::Made { key, .. } => key,
                Derived::Pass => continue,
            };
            pass.counts.records += 1;
            let here = Place {
                partition,
                offset: record.offset(),
            };
            let duplicate_of = if learning.contains(&key) {
                // An earlier copy in this very batch is its first position.
                Some(None)
            } else {
                match self.window.peek(key) {
                    None => {
                        if learning.is_empty() {
                            // Sized for the batch at the first key learned
                            // (a first read learns them all; a re-read none):
                            // grown from empty, the set rehashed eight
                            // times a 500-record batch.
                            learning.reserve(batch.len());
                            learn.reserve(batch.len());
                        }
                        learning.insert(key);
                        learn.push((key, record.offset_delta() as u32));
                        None
                    }
                    Some(segment) => match self.first_place(pass, segment, topic, key) {
                        Some(first) if is_later_copy(first, here, log_start) => Some(Some(segment)),
                        // The first position itself, a copy the window
                        // placed later in this partition, or unknown.
                        _ => None,
                    },
                }
            };
            match duplicate_of {
                None => {}
                Some(rests_on) if drop => {
                    if actions.is_empty() {
                        actions = vec![Action::Keep; batch.len()];
                    }
                    actions[record.index()] = Action::Drop;
                    pass.counts.dropped += 1;
                    match rests_on {
                        Some(segment) => pass.rest_on(segment),
                        None => rests_on_learning = true,
                    }
                }
                Some(_) => pass.counts.observed += 1,
            }
        }
        let base = batch.header().base_offset;
        // The writer, as the produce path records it: an idempotent
        // producer's retry of a batch a sink already read is its own (the
        // broker deduplicates it), not a replay to drop (audit A1).
        let writer = (batch.header().producer_id, batch.header().producer_epoch);
        match self
            .window
            .learn_segment(topic, partition, base, writer, &learn)
        {
            Ok(Some(segment)) => {
                pass.learned.insert(
                    segment,
                    Learned {
                        topic: topic.to_string(),
                        partition,
                        base,
                        keys: learn,
                    },
                );
                if rests_on_learning {
                    pass.rest_on(segment);
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(topic, partition, error = %e, "window write failed: first positions not learned, batch forwarded as it came");
                self.metrics
                    .dedup
                    .fail_open(FailOpen::StoreError, learn.len() as u64);
                if rests_on_learning {
                    // Drops resting on what was not learned are taken back.
                    return None;
                }
            }
        }
        if actions.is_empty() {
            return None;
        }
        // A batch emptied whole goes as a marker consumers move past (kafkajs
        // never moves past an empty batch: it would fetch it again and again).
        if actions.iter().all(|a| *a == Action::Drop) {
            match records::emptied_marker(batch.header()) {
                Ok(marker) => return Some(marker),
                Err(e) => {
                    tracing::warn!(topic, partition, error = %e, "emptied batch marker failed: an empty batch sent")
                }
            }
        }
        match batch.rewrite(&actions, SpliceMode::KeepOffsets) {
            Ok(Spliced::Rewritten(bytes)) => Some(bytes),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(topic, partition, error = %e, "fetched batch rewrite failed: forwarded with its duplicates");
                self.metrics
                    .dedup
                    .fail_open(FailOpen::Undecodable, batch.len() as u64);
                None
            }
        }
    }

    /// Where the window says `key` first sat, from `segment` (read once per
    /// response, or learned by it).
    fn first_place(&self, pass: &mut Pass, segment: u64, topic: &str, key: Key) -> Option<Place> {
        let positions = pass.segments.entry(segment).or_insert_with(|| {
            if let Some(learned) = pass.learned.remove(&segment) {
                return Some(learned.into_positions());
            }
            self.window
                .segment_positions(segment)
                .unwrap_or_else(|e| {
                    tracing::warn!(segment, error = %e, "window segment unreadable: its keys' copies are delivered");
                    None
                })
        });
        let positions = positions.as_ref()?;
        // Keys are scoped by topic: another topic here is a hash collision.
        if positions.topic != topic {
            return None;
        }
        positions.offsets.get(&key).map(|&offset| Place {
            partition: positions.partition,
            offset,
        })
    }
}

/// A copy at `here` is a duplicate of `first` only when `first` is a lower
/// offset of the same partition that is still in the log (`log_start`: the
/// partition's log start offset, -1 when the broker does not say). The first
/// position itself, re-read after a restart, a rebalance or a seek, is always
/// delivered; so is a copy below it (the window never moves a first
/// position), a copy whose first position retention already deleted, and a
/// copy in another partition (whose log the proxy cannot see).
fn is_later_copy(first: Place, here: Place, log_start: i64) -> bool {
    first.partition == here.partition && first.offset < here.offset && first.offset >= log_start
}

/// Records in a topic's partitions, from the batch headers (for counting
/// what went unchecked).
fn topic_records(topic: &FetchableTopicResponse) -> u64 {
    topic
        .partitions
        .iter()
        .filter_map(|p| p.records.clone())
        .flat_map(Batches::new)
        .filter_map(Result::ok)
        .map(|item| match item {
            BatchItem::Batch(raw) => raw.header().records_count.max(0) as u64,
            _ => 0,
        })
        .sum()
}

// === The filter ===

/// The fetch dedup filter: plans a Fetch by who reads it and how, and
/// removes the later copies from its answer; learns topic names from every
/// Metadata answer (Fetch v13+ names topics by id only).
#[derive(Clone)]
pub struct DedupFetch<'a> {
    /// `None` when no rule filters the fetch path: the filter does nothing.
    dedup: Option<&'a FetchDedup>,
    topology: &'a Topology,
    /// Who the client is (set by the identity filter above).
    state: &'a tokio::sync::Mutex<ConnState>,
}

impl<'a> DedupFetch<'a> {
    pub fn new(
        dedup: Option<&'a FetchDedup>,
        topology: &'a Topology,
        state: &'a tokio::sync::Mutex<ConnState>,
    ) -> Self {
        DedupFetch {
            dedup,
            topology,
            state,
        }
    }
}

impl<'a> Filter<'a> for DedupFetch<'a> {
    const NAME: &'static str = "dedup (fetch)";

    fn call(&self, ex: Exchange, next: impl FnOnce(Exchange) -> Call<'a> + Send + 'a) -> Call<'a> {
        let Some(dedup) = self.dedup else {
            return next(ex);
        };
        let version = ex.head.api_version;
        match ex.head.api_key {
            ApiKey::Metadata => {
                let topology = self.topology;
                on_response(next(ex), move |mut reply| async move {
                    topology.learn_names(version, &mut reply.frame);
                    Ok(reply)
                })
            }
            ApiKey::Fetch => {
                let state = self.state;
                Box::pin(async move {
                    let plan = {
                        let state = state.lock().await;
                        let identity = state.identity().expect("set by the identity filter");
                        let isolation =
                            message::fetch_isolation_level(&ex.frame, ex.head.body_offset, version);
                        // Connect's own config/offset/status readers: their
                        // topics are never touched, whatever they are called.
                        if identity.is_connect_internal() {
                            None
                        } else {
                            dedup.plan(identity, isolation)
                        }
                    };
                    let pending = next(ex).await?;
                    let Some(plan) = plan else {
                        return Ok(pending);
                    };
                    Ok(pending.then(move |mut reply| async move {
                        dedup.on_response(&plan, version, &mut reply.frame).await?;
                        Ok(reply)
                    }))
                })
            }
            _ => next(ex),
        }
    }
}

// === impl Rewritten ===

/// A partition's records with some batches replaced, built only once the
/// first one is: the unchanged bytes between two replaced batches (and
/// before the first, and after the last) are copied in one piece each.
struct Rewritten<'a> {
    records: &'a Bytes,
    /// The new records so far; `None` while nothing was replaced.
    out: Option<BytesMut>,
    /// Where the bytes not yet copied into `out` begin.
    copied: usize,
}

impl<'a> Rewritten<'a> {
    fn new(records: &'a Bytes) -> Self {
        Rewritten {
            records,
            out: None,
            copied: 0,
        }
    }

    /// The item at `range` goes as `new`.
    fn replace(&mut self, range: std::ops::Range<usize>, new: &[u8]) {
        let out = self
            .out
            .get_or_insert_with(|| BytesMut::with_capacity(self.records.len()));
        out.extend_from_slice(&self.records[self.copied..range.start]);
        out.extend_from_slice(new);
        self.copied = range.end;
    }

    /// The new records, or `None` when nothing was replaced.
    fn finish(self) -> Option<Bytes> {
        let mut out = self.out?;
        out.extend_from_slice(&self.records[self.copied..]);
        Some(out.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_later_copy_of_a_first_position_still_in_the_log_goes() {
        let at = |partition, offset| Place { partition, offset };
        assert!(!is_later_copy(at(0, 5), at(0, 5), 0), "a re-read");
        assert!(is_later_copy(at(0, 5), at(0, 9), 0), "a later copy");
        assert!(is_later_copy(at(0, 5), at(0, 9), -1), "no log start given");
        assert!(
            !is_later_copy(at(0, 9), at(0, 5), 0),
            "below the first: never hidden"
        );
        assert!(
            !is_later_copy(at(0, 5), at(0, 9), 6),
            "the first copy is gone"
        );
        assert!(!is_later_copy(at(1, 5), at(0, 9), 0), "another partition");
    }
}
