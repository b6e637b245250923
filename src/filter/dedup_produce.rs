//! Dedup on the produce path: tag each record with its idempotency key, drop
//! the replays the broker already acknowledged, learn keys from the broker's
//! acknowledgements.
//!
//! ```text
//! request   decode ProduceRequest → per partition: one v2 batch → per record:
//!             key (rule) → window: seen → replay | pending → wait (bounded) | new → claim
//!           splice (drop replays, append the tag header) → forward what is left;
//!           a partition with nothing left is answered by the proxy
//! response  per forwarded partition: error 0 and acks=all → commit its claimed keys
//!           (positions = base offset + index); answered partitions merged back in
//!           request order; base_offset -1 where records were removed
//! ```
//!
//! Never a loss: a key counts only once the broker acknowledged it; anything
//! the filter can't be sure of (an undecodable batch, a store error, a key in
//! flight past `dedup.pending_wait`) is forwarded as it came and counted in
//! `idemgate_dedup_fail_open_total`.
//!
//! Idempotent producers (`producer_id >= 0`): replays are removed too, and the
//! batch's base sequence is translated so the broker sees no gap (see
//! `idempotency::sequences`); the decision is flushed to disk before the batch
//! goes upstream, and a retry of the same batch gets the same decision. A key
//! first acknowledged from the same producer id and epoch is that producer's
//! own retry, never a replay. A batch the broker may already hold (a retry of
//! a whole batch, a resend after a restart) loses nothing; decisions of one
//! producer-partition are made one at a time.
//! Transactional batches, control batches, Produce with acks=0 and topics no
//! rule covers pass byte for byte. Keys of transactional records are learned
//! when their transaction commits (`idempotency::transactions`).
//!
//! acks=1 requests are tagged and checked against the window, but their keys
//! are never learned: a leader failover can truncate an acks=1 write, and a
//! key learned from it would make the replay that restores it a "duplicate".

use std::collections::HashSet;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    AddPartitionsToTxnRequest, ApiKey, ApiVersionsRequest, EndTxnRequest, EndTxnResponse,
    ProduceRequest, ProduceResponse,
};
use kafka_protocol::protocol::{Encodable, StrBytes};

use crate::codec::{api_name, RequestHead};
use crate::config::{Config, KeyStrategy, Mode, Rule};
use crate::error::{Error, Side};
use crate::filter::state::ConnState;
pub use crate::filter::state::Session;
use crate::filter::{Call, Exchange, Filter, Pending};
use crate::idempotency::key::{Derived, Deriver, KeyBuildHasher};
use crate::idempotency::sequences::{Point, Prior, SeqKey, Sequences, Turn};
use crate::idempotency::transactions::{Transactions, TxnPart};
use crate::idempotency::window::{Check, Claim, Producer, Window, NO_PRODUCER};
use crate::idempotency::Key;
use crate::identity::Identity;
use crate::message::{self, PartitionEdit, ResponseFrame};
use crate::records::{
    self, Action, BatchItem, Batches, DecodedBatch, HeaderRef, RawBatch, RecordsError, SpliceMode,
    Spliced,
};
use crate::telemetry::{FailOpen, Metrics, TopicCounts};
use crate::upstream::Outbound;

/// Kafka's default `max.message.bytes` (1 MiB + the 12-byte log overhead):
/// a batch under it must not grow past it by its tags.
pub const BROKER_MAX_BATCH_BYTES: usize = 1_048_588;

/// The produce-path dedup filter, shared by every connection.
pub struct ProduceDedup {
    config: Arc<Config>,
    window: Arc<Window>,
    sequences: Arc<Sequences>,
    transactions: Arc<Transactions>,
    metrics: Arc<Metrics>,
    /// Each topic's `max.message.bytes`; without it (benches), the broker's
    /// default.
    topic_configs: Option<Arc<crate::topic_config::TopicConfigs>>,
    /// Batches whose replayed-prefix bet was lost (see [`merge`]), by
    /// [`bet_fingerprint`]: their retry goes whole, once. A false match only
    /// sends a batch whole (duplicates, never a loss).
    lost_bets: moka::sync::Cache<u64, ()>,
}

/// What to do with a Produce request.
pub enum Outcome {
    /// Forward the frame as it came (with a plan when keys await the answer).
    Unchanged(Option<ProducePlan>),
    /// Forward this body (header kept) instead.
    Rewritten(BytesMut, ProducePlan),
    /// Every partition was a replay: the proxy's answer.
    Answer(Bytes),
}

/// What the response of a filtered Produce needs.
#[derive(Debug)]
pub struct ProducePlan {
    claim: Claim,
    acks: i16,
    topics: Vec<TopicPlan>,
    /// Transactional records: held until their transaction commits.
    transactional: Vec<TxnPart>,
}

#[derive(Debug)]
struct TopicPlan {
    name: StrBytes,
    partitions: Vec<PartitionPlan>,
}

#[derive(Debug)]
struct PartitionPlan {
    index: i32,
    kind: PartitionKind,
}

#[derive(Debug)]
enum PartitionKind {
    /// Sent to the broker; on success, these claimed keys at these offset
    /// deltas become seen. `trimmed`: records were removed, so the broker's
    /// base_offset would mislead the client about the others' offsets.
    Upstream {
        commits: Vec<(Key, u32)>,
        trimmed: bool,
        producer: Producer,
        /// Records were removed only from the front, and their first copies
        /// sit at `first..first + count` of this partition: if the broker
        /// writes the rest at `first + count`, answering `first` gives every
        /// record its true offset (clients number records base + index).
        replayed_prefix: Option<(i64, u32)>,
        /// How a lost bet on `replayed_prefix` is answered.
        on_lost: LostBet,
    },
    /// Every record was a replay: answered by the proxy.
    Answered { base_offset: i64 },
    /// Not forwarded: answered with this retriable error, so the client
    /// sends it again (nothing is written, nothing is lost).
    Refused { error_code: i16 },
}

impl PartitionKind {
    /// Forwarded as it came: nothing to commit, nothing removed.
    fn untouched() -> Self {
        Self::sent(Vec::new(), NO_PRODUCER)
    }

    /// Forwarded with no record removed; on success these claimed keys at
    /// these offset deltas become seen.
    fn sent(commits: Vec<(Key, u32)>, producer: Producer) -> Self {
        PartitionKind::Upstream {
            commits,
            trimmed: false,
            producer,
            replayed_prefix: None,
            on_lost: LostBet::NoOffset,
        }
    }
}

/// How a lost replayed-prefix bet is answered (see [`merge`]): the broker
/// wrote the rest apart from the first copies, so no base offset numbers
/// the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LostBet {
    /// -1, which the client reports as "no offset" for every record.
    NoOffset,
    /// A retriable error; the retry of this batch ([`bet_fingerprint`])
    /// goes whole.
    Retry(u64),
    /// -1, which this idempotent client numbers its records from: its retry
    /// would get the same cut (its sequence point) and the broker's
    /// duplicate answer. Made only when the window knows of no record
    /// written after the first copies (`numbered`); counted.
    Misnumbered,
}

/// Kafka's NOT_ENOUGH_REPLICAS_AFTER_APPEND: written, not acknowledged;
/// retriable for every client (librdkafka: "possibly persisted").
const NOT_ENOUGH_REPLICAS_AFTER_APPEND: i16 = 20;

/// How long a lost bet is remembered for its retry: longer than any
/// client's delivery timeout by default (librdkafka's `message.timeout.ms`
/// is 300 s, Java's `delivery.timeout.ms` 120 s).
const LOST_BET_MEMORY: std::time::Duration = std::time::Duration::from_secs(600);

/// One batch, as its retry will look: its partition, its first record's key
/// (a replay in every attempt) and its length.
fn bet_fingerprint((topic, partition): (&str, i32), first: Key, len: usize) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(topic.as_bytes());
    h.update(&partition.to_le_bytes());
    h.update(&first.0.to_le_bytes());
    h.update(&(len as u64).to_le_bytes());
    h.digest()
}

/// Kafka's KAFKA_STORAGE_ERROR: retriable for every client (Java's
/// KafkaStorageException is an InvalidMetadataException).
const KAFKA_STORAGE_ERROR: i16 = 56;

impl ProducePlan {
    fn needs_response_rewrite(&self) -> bool {
        self.topics.iter().flat_map(|t| &t.partitions).any(|p| {
            matches!(
                p.kind,
                PartitionKind::Answered { .. }
                    | PartitionKind::Refused { .. }
                    | PartitionKind::Upstream { trimmed: true, .. }
            )
        })
    }

    fn has_commits(&self) -> bool {
        self.topics.iter().flat_map(|t| &t.partitions).any(
            |p| matches!(&p.kind, PartitionKind::Upstream { commits, .. } if !commits.is_empty()),
        )
    }
}

/// What was decided for one record.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Decision {
    Keep,
    /// Keep and append the tag header with this key.
    Tag(Key),
    /// A replay of `key`, seen in this window segment (`None`: earlier in
    /// this same batch, or decided by an earlier attempt of it).
    Drop {
        key: Key,
        seen: Option<u64>,
    },
}

/// The request's claim on the keys it sends, the keys claimed so far, and
/// how long a record may wait for a key in flight elsewhere.
type Claiming<'a> = (
    &'a mut Claim,
    &'a mut HashSet<Key, KeyBuildHasher>,
    tokio::time::Instant,
);

/// What deciding one partition's batch needs besides its records.
#[derive(Clone, Copy)]
struct Attempt<'a> {
    rule: &'a Rule,
    place: (&'a str, i32),
    /// The client reports -1 per record: any record may be removed.
    reports_no_offset: bool,
    producer: Producer,
    idempotent: bool,
    /// What an earlier attempt of this batch removed (nothing for a retry
    /// of a whole batch): the same again. `None`: decided afresh.
    decided: Option<&'a [u32]>,
    /// Its replays stay, counted under this reason: maybe a resend of what
    /// an earlier process forwarded (`SequenceUnknown`), or a decision the
    /// tier's other processes could not learn now (`SequenceUnshared`).
    guarded: Option<FailOpen>,
}

/// The batch with its base sequence moved back by `delta`, the records this
/// proxy removed from the producer's earlier batches.
fn translate(bytes: &Bytes, base_seq: i32, delta: i32) -> Result<Bytes, RecordsError> {
    if delta == 0 {
        Ok(bytes.clone())
    } else {
        records::with_base_sequence(bytes, base_seq.wrapping_sub(delta))
    }
}

/// A splice with the base sequence translated: an unchanged batch is
/// rewritten when its sequence must move.
fn translate_sequence(
    batch: &DecodedBatch,
    spliced: Result<Spliced, RecordsError>,
    base_seq: i32,
    delta: i32,
) -> Result<Spliced, RecordsError> {
    spliced.and_then(|s| match s {
        Spliced::Unchanged if delta != 0 => {
            translate(batch.original(), base_seq, delta).map(Spliced::Rewritten)
        }
        Spliced::Rewritten(b) => translate(&b, base_seq, delta).map(Spliced::Rewritten),
        other => Ok(other),
    })
}

impl ProduceDedup {
    pub fn new(config: Arc<Config>, window: Arc<Window>, metrics: Arc<Metrics>) -> Self {
        ProduceDedup {
            config,
            sequences: Arc::new(Sequences::new(window.store().clone())),
            transactions: Arc::new(Transactions::new(window.clone(), metrics.clone())),
            window,
            metrics,
            topic_configs: None,
            lost_bets: moka::sync::Cache::builder()
                .max_capacity(65_536)
                .time_to_live(LOST_BET_MEMORY)
                .build(),
        }
    }

    pub fn sequences(&self) -> Arc<Sequences> {
        self.sequences.clone()
    }

    pub fn transactions(&self) -> Arc<Transactions> {
        self.transactions.clone()
    }

    /// Tags respect each topic's own `max.message.bytes`, as `configs` learns it.
    pub fn with_topic_configs(mut self, configs: Arc<crate::topic_config::TopicConfigs>) -> Self {
        self.topic_configs = Some(configs);
        self
    }

    fn rule(&self, topic: &str, identity: &Identity) -> Option<&Rule> {
        let dedup = &self.config.dedup;
        // What Connect's own clients write is its config, offset or status
        // topic, whatever its name: never keyed, and remembered so that no
        // client's records there are keyed either.
        if identity.is_connect_internal() {
            if dedup.connect_internal.learn(topic) {
                tracing::info!(
                    topic,
                    client_id = %identity.client_id,
                    "a Kafka Connect internal topic: never touched by dedup rules"
                );
            }
            return None;
        }
        let rule = dedup
            .rule_for(topic, identity.connector.as_deref())
            .filter(|r| r.mode != Mode::Off)?;
        if rule.mode == Mode::Drop && rule.key == KeyStrategy::Content {
            if let Some(configs) = &self.topic_configs {
                configs.warn_if_compacted(topic);
            }
        }
        Some(rule)
    }

    /// A source task without exactly-once support writes its connector's
    /// own offsets topic with its data producer: the first batch of each
    /// topic a task writes is looked at once, and a topic whose first record
    /// is keyed like one of the task's source offsets is learned as internal.
    fn learn_connector_offsets_topics(&self, identity: &Identity, req: &ProduceRequest) {
        if identity.task.is_none() {
            return;
        }
        let learned = &self.config.dedup.connect_internal;
        for topic in &req.topic_data {
            let name = topic.name.as_str();
            if self
                .config
                .dedup
                .rule_for(name, identity.connector.as_deref())
                .is_none()
                || !learned.first_look(name)
            {
                continue;
            }
            let first_key_is_offset = topic
                .partition_data
                .iter()
                .find_map(|p| p.records.clone())
                .and_then(|records| match Batches::new(records).next() {
                    Some(Ok(BatchItem::Batch(raw))) => raw
                        .decode_with_limit(self.config.listen.max_frame_bytes)
                        .ok(),
                    _ => None,
                })
                .is_some_and(|batch| {
                    batch
                        .records()
                        .next()
                        .and_then(|r| r.key_slice().map(|k| identity.is_connect_offset_key(k)))
                        .unwrap_or(false)
                });
            if first_key_is_offset && learned.learn(name) {
                tracing::info!(
                    topic = name,
                    client_id = %identity.client_id,
                    "a Kafka Connect internal topic (a connector's own offsets): never touched by dedup rules"
                );
            }
        }
    }

    /// Filters one Produce request with acks 1 or all. `frame` is left as
    /// it came (the same buffer, not a copy), for [`Outcome::Unchanged`].
    pub async fn on_request(
        &self,
        session: &mut Session,
        identity: &Identity,
        head: &RequestHead,
        frame: &mut BytesMut,
        acks: i16,
    ) -> Result<Outcome, Error> {
        // Decoded from shared bytes, the request's records are slices of the
        // frame, not copies of it; once the decoded request is dropped the
        // frame is this buffer alone again and goes back as it was. (Copied
        // only should something still hold a slice of it.)
        let shared = std::mem::take(frame).freeze();
        let outcome = self
            .filter_request(session, identity, head, &shared, acks)
            .await;
        *frame = shared
            .try_into_mut()
            .unwrap_or_else(|shared| BytesMut::from(&shared[..]));
        outcome
    }

    async fn filter_request(
        &self,
        session: &mut Session,
        identity: &Identity,
        head: &RequestHead,
        frame: &Bytes,
        acks: i16,
    ) -> Result<Outcome, Error> {
        // A request that does not decode, or that the bounds check refuses
        // (a length the frame cannot hold), goes on as it came, for the
        // broker to judge.
        let Some(req) = message::decode_request_shared::<ProduceRequest>(frame, head) else {
            let reason = if head.api_version < ApiKey::Produce.valid_versions().min {
                FailOpen::OldVersion
            } else {
                FailOpen::UnreadableRequest
            };
            self.metrics.dedup.fail_open(reason, 1);
            tracing::debug!(
                version = head.api_version,
                reason = reason.as_str(),
                "Produce not decodable: forwarded as it came"
            );
            return Ok(Outcome::Unchanged(None));
        };
        // v13 names topics by id only (KIP-516): no name to match a rule,
        // key or exclude by, nor to match the answer to. Not advertised
        // (api_versions::MAX_PRODUCE_VERSION), and the codec closes a
        // connection that sends it: this guard only holds should that change.
        if head.api_version >= 13 {
            let n = request_records(&req);
            self.metrics.dedup.fail_open(FailOpen::TopicId, n);
            return Ok(Outcome::Unchanged(None));
        }
        if req.transactional_id.is_some() {
            // Transactions are Connect's own exactly-once: byte for byte.
            let records: u64 = request_records(&req);
            self.metrics
                .dedup
                .transactional_records
                .fetch_add(records, std::sync::atomic::Ordering::Relaxed);
            let parts = self.transactional_keys(identity, &req, head.api_version >= 12);
            let plan = (!parts.is_empty()).then(|| ProducePlan {
                claim: Claim::new(self.window.clone()),
                acks,
                topics: Vec::new(),
                transactional: parts,
            });
            return Ok(Outcome::Unchanged(plan));
        }
        self.learn_connector_offsets_topics(identity, &req);
        let covered = req
            .topic_data
            .iter()
            .any(|t| self.rule(t.name.as_str(), identity).is_some());
        if !covered {
            return Ok(Outcome::Unchanged(None));
        }
        if !self.window.is_loaded() && !self.window.wait_loaded(self.config.dedup.load_wait).await {
            let n = request_records(&req);
            self.metrics.dedup.fail_open(FailOpen::Loading, n);
            return Ok(Outcome::Unchanged(None));
        }
        if self.sequences.prune_due() {
            let sequences = self.sequences.clone();
            tokio::spawn(async move {
                match sequences.prune().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(
                        producer_partitions = n,
                        "idempotent producers' sequence state past its time pruned"
                    ),
                    Err(e) => tracing::warn!(error = %e, "sequence state pruning failed"),
                }
            });
        }
        let label = identity.label().to_string();
        if !session.started {
            session.started = true;
            self.metrics.dedup.session_started(&label);
            self.catch_up_with_peers().await;
        }

        let mut plan = ProducePlan {
            claim: Claim::new(self.window.clone()),
            acks,
            topics: Vec::with_capacity(req.topic_data.len()),
            transactional: Vec::new(),
        };
        let mut changed = false;
        let mut dropped_total = 0;
        // One bound on waiting for keys in flight elsewhere, for the whole
        // request: k pending keys must not cost k times the wait (the
        // client's request.timeout.ms would turn it into a retry).
        let wait_until = tokio::time::Instant::now() + self.config.dedup.pending_wait;
        // Keys this request claimed: in another of its partitions, a key of
        // its own is in flight with it, not elsewhere (no wait, both go).
        let mut mine: HashSet<Key, KeyBuildHasher> = HashSet::default();
        // What becomes of each partition in the frame sent on.
        let mut edits: Vec<Vec<PartitionEdit>> = Vec::with_capacity(req.topic_data.len());
        for topic in &req.topic_data {
            let name = &topic.name.0;
            let mut topic_plan = TopicPlan {
                // Its own copy: a slice would hold the whole frame until the
                // answer comes, past the memory budget's release.
                name: StrBytes::from_string(name.to_string()),
                partitions: Vec::with_capacity(topic.partition_data.len()),
            };
            let mut topic_edits = Vec::with_capacity(topic.partition_data.len());
            let rule = self.rule(name.as_str(), identity);
            let mut counts = TopicCounts::default();
            for partition in &topic.partition_data {
                let mut edit = PartitionEdit::Keep;
                let kind = match (rule, &partition.records) {
                    (Some(rule), Some(records)) => {
                        let (kind, new_records) = self
                            .filter_partition(
                                rule,
                                (name.as_str(), partition.index),
                                session.reports_no_offset,
                                records,
                                (&mut plan.claim, &mut mine, wait_until),
                                &mut counts,
                            )
                            .await;
                        if let Some(bytes) = new_records {
                            edit = PartitionEdit::Replace(bytes);
                            changed = true;
                        }
                        kind
                    }
                    _ => PartitionKind::untouched(),
                };
                // Answered here: it leaves the request.
                if let PartitionKind::Refused { .. } = kind {
                    edit = PartitionEdit::Remove;
                    changed = true;
                }
                if let PartitionKind::Answered { base_offset } = kind {
                    edit = PartitionEdit::Remove;
                    changed = true;
                    tracing::debug!(
                        topic = %name,
                        partition = partition.index,
                        base_offset,
                        "every record a replay: answered by the proxy"
                    );
                }
                topic_plan.partitions.push(PartitionPlan {
                    index: partition.index,
                    kind,
                });
                topic_edits.push(edit);
            }
            edits.push(topic_edits);
            if rule.is_some() {
                dropped_total += counts.dropped;
                self.metrics.dedup.add(&label, name.as_str(), counts);
            }
            plan.topics.push(topic_plan);
        }
        if dropped_total > 0 {
            self.metrics
                .dedup
                .replayed(&label, session.dropped, dropped_total);
            session.dropped += dropped_total;
            tracing::debug!(dropped = dropped_total, "replayed records dropped");
        }
        if !changed {
            return Ok(Outcome::Unchanged(plan.has_commits().then_some(plan)));
        }

        // Every partition answered here: nothing goes upstream.
        let forwarded = edits
            .iter()
            .flatten()
            .any(|e| !matches!(e, PartitionEdit::Remove));
        if !forwarded {
            self.metrics
                .dedup
                .answered_locally
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let resp = merge(&plan, ProduceResponse::default(), &mut Vec::new());
            return message::encode_local_response(
                ApiKey::Produce,
                head.api_version,
                ApiKey::Produce.response_header_version(head.api_version),
                head.correlation_id,
                &resp,
            )
            .map(Outcome::Answer);
        }
        // The frame with only what changed written anew (partitions answered
        // here out, topics left empty too), as the crate would encode it.
        if let Some(out) =
            message::splice_produce(frame, head.body_offset, head.api_version, &edits)
        {
            return Ok(Outcome::Rewritten(out, plan));
        }
        // Not expected (the frame decoded as this request): encoded whole.
        tracing::warn!(
            version = head.api_version,
            "a Produce request that decoded did not splice: encoded again"
        );
        let out = encode_edited(req, frame, head, edits)?;
        Ok(Outcome::Rewritten(out, plan))
    }

    /// The keys of a transactional request's records, for the rules that
    /// cover them: nothing is changed, nothing is checked (the transaction
    /// may still abort). Only once the window is loaded: a segment written
    /// before would clash with the ones being read back.
    fn transactional_keys(
        &self,
        identity: &Identity,
        req: &ProduceRequest,
        implicit: bool,
    ) -> Vec<TxnPart> {
        let mut parts = Vec::new();
        if !self.window.is_loaded() {
            return parts;
        }
        for topic in &req.topic_data {
            let Some(rule) = self.rule(topic.name.as_str(), identity) else {
                continue;
            };
            let deriver = Deriver {
                strategy: &rule.key,
                fallback: rule.fallback,
                tag_header: self.config.dedup.header.as_bytes(),
                secret: self.config.dedup.key_secret.as_ref(),
            };
            for partition in &topic.partition_data {
                let Some(records) = &partition.records else {
                    continue;
                };
                let mut items = Batches::new(records.clone());
                let (Some(Ok(BatchItem::Batch(raw))), None) = (items.next(), items.next()) else {
                    continue;
                };
                let h = raw.header();
                if !h.attributes.is_transactional() || h.attributes.is_control() {
                    continue;
                }
                let producer = (h.producer_id, h.producer_epoch);
                let Ok(batch) = raw.decode_with_limit(self.config.listen.max_frame_bytes) else {
                    continue;
                };
                let entries: Vec<(Key, u32)> = batch
                    .records()
                    .filter_map(|r| {
                        let key = deriver.derive(topic.name.as_str(), &r).key()?;
                        Some((key, r.index() as u32))
                    })
                    .collect();
                if !entries.is_empty() {
                    parts.push(TxnPart {
                        topic: topic.name.to_string(),
                        partition: partition.index,
                        producer,
                        entries,
                        implicit,
                    });
                }
            }
        }
        parts
    }

    /// `[dedup.shared]`: a connection's first Produce waits, bounded by
    /// `catch_up_wait`, until this process has read the window's topic to
    /// where it ends now: a task that moved here replays right after its
    /// original was acknowledged through another process, and that
    /// process's keys may still be on their way. Not caught up in time:
    /// the replays it would have caught pass (duplicates, counted).
    async fn catch_up_with_peers(&self) {
        let Some(shared) = &self.config.dedup.shared else {
            return;
        };
        let stats = &self.metrics.dedup.shared;
        match self.window.catch_up(shared.catch_up_wait).await {
            Some(true) => {
                stats
                    .catch_ups
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Some(false) => {
                stats
                    .catch_up_timeouts
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            None => {}
        }
    }

    /// A transactions-v1 client adds partitions to its transaction on
    /// connection `conn` (AddPartitionsToTxn v0-v3).
    pub fn partitions_added(&self, producer: Producer, conn: u64, parts: &[(String, i32)]) {
        self.transactions.partitions_added(producer, conn, parts);
    }

    /// The coordinator answered an EndTxn (v5+: `v2`) on connection `conn`
    /// without an error.
    pub fn transaction_ended(&self, producer: Producer, committed: bool, conn: u64, v2: bool) {
        let learned = self.transactions.ended(producer, committed, conn, v2);
        if learned > 0 {
            tracing::debug!(
                producer_id = producer.0,
                keys = learned,
                "committed transaction's keys learned"
            );
        }
    }

    /// One partition's records: what happens to it, and its new records if
    /// they changed. Anything doubtful leaves the records as they are.
    ///
    /// The steps: [`shape_check`](Self::shape_check) → decode (or
    /// [`undecodable`](Self::undecodable)) → [`decide`](Self::decide) each
    /// record → [`splice`](Self::splice) (with the untagged fallback) →
    /// [`translate_sequence`] → [`persist`](Self::persist) the decision →
    /// the partition's outcome.
    async fn filter_partition(
        &self,
        rule: &Rule,
        (topic, partition): (&str, i32),
        reports_no_offset: bool,
        records: &Bytes,
        (claim, mine, wait_until): Claiming<'_>,
        counts: &mut TopicCounts,
    ) -> (PartitionKind, Option<Bytes>) {
        let Some(raw) = self.shape_check(records, counts) else {
            return (PartitionKind::untouched(), None);
        };
        let batch = match raw.decode_with_limit(self.config.listen.max_frame_bytes) {
            Ok(b) => b,
            Err(e) => return self.undecodable((topic, partition), &raw, &e, counts).await,
        };
        counts.records += batch.len() as u64;
        let h = batch.header();
        let producer: Producer = (h.producer_id, h.producer_epoch);
        let idempotent = h.producer_id >= 0;
        let (base_seq, count) = (h.base_sequence, batch.len() as i32);
        // An idempotent producer-partition is decided one batch at a time
        // (the turn holds it until its decision is stored), and a batch the
        // broker may already hold loses nothing (`idempotency::sequences`).
        let turn = if idempotent {
            let seq_key = SeqKey {
                producer_id: producer.0,
                epoch: producer.1,
                topic: topic.to_string(),
                partition,
            };
            match self.sequences.begin(&seq_key, base_seq, count).await {
                Ok(turn) => Some(turn),
                Err(e) => {
                    tracing::warn!(topic, error = %e, "sequence state unreadable: batch forwarded as it came");
                    self.metrics
                        .dedup
                        .fail_open(FailOpen::StoreError, batch.len() as u64);
                    return (PartitionKind::untouched(), None);
                }
            }
        } else {
            None
        };
        let delta = turn.as_ref().map_or(0, |t| t.delta());
        // `decided`: what an earlier attempt of this batch lost (nothing for
        // a retry of a whole batch). `guarded`: maybe a resend of what an
        // earlier process forwarded, or a decision the tier's other processes
        // could not learn now; its replays stay.
        let (decided, guarded) = match turn.as_ref().map(|t| t.prior()) {
            Some(Prior::Decided(dropped)) => (Some(dropped.clone()), None),
            Some(Prior::Retry) => (Some(Vec::new()), None),
            Some(Prior::Unknown) => (None, Some(FailOpen::SequenceUnknown)),
            Some(Prior::New) if turn.as_ref().is_some_and(|t| t.unshared()) => {
                (None, Some(FailOpen::SequenceUnshared))
            }
            Some(Prior::New) | None => (None, None),
        };
        let attempt = Attempt {
            rule,
            place: (topic, partition),
            reports_no_offset,
            producer,
            idempotent,
            decided: decided.as_deref(),
            guarded,
        };

        // 1. Decide each record.
        let (decisions, claimed) = self
            .decide(&attempt, &batch, (claim, mine, wait_until), counts)
            .await;
        let dropped_idx: Vec<u32> = decisions
            .iter()
            .enumerate()
            .filter(|(_, d)| matches!(d, Decision::Drop { .. }))
            .map(|(i, _)| i as u32)
            .collect();
        let producer = if idempotent { producer } else { NO_PRODUCER };

        // 2. Offsets of the claimed keys among the records that stay.
        let mut kept_index = Vec::with_capacity(decisions.len());
        let mut next = 0u32;
        for d in &decisions {
            kept_index.push(next);
            if !matches!(d, Decision::Drop { .. }) {
                next += 1;
            }
        }
        let commits: Vec<(Key, u32)> = claimed
            .iter()
            .map(|&(i, key)| (key, kept_index[i]))
            .collect();
        let any_dropped = decisions.iter().any(|d| matches!(d, Decision::Drop { .. }));

        // 3. Splice, then move the base sequence by what went before.
        let spliced = self.splice(topic, &batch, &decisions).await;
        let spliced = translate_sequence(&batch, spliced, base_seq, delta);

        // 4. An idempotent batch's decision goes to disk before the batch
        // goes anywhere. If it can't, the batch goes with its replays
        // (translated by what went before).
        let point =
            (spliced.is_ok() && decided.is_none() && !dropped_idx.is_empty()).then(|| Point {
                base: base_seq,
                count,
                delta_after: delta + dropped_idx.len() as i32,
                dropped: dropped_idx.clone(),
            });
        if !self.persist(topic, turn, point, &batch, &dropped_idx).await {
            counts.dropped -= dropped_idx.len() as u64;
            let commits = claimed.iter().map(|&(i, key)| (key, i as u32)).collect();
            let kind = PartitionKind::sent(commits, producer);
            return match translate(batch.original(), base_seq, delta) {
                Ok(b) if delta != 0 => (kind, Some(b)),
                _ => (kind, None),
            };
        }

        // 5. What the partition becomes.
        match spliced {
            Ok(Spliced::Unchanged) => (PartitionKind::sent(commits, producer), None),
            Ok(Spliced::Rewritten(bytes)) => {
                let k = dropped_idx.len();
                let prefix = dropped_idx
                    .iter()
                    .enumerate()
                    .all(|(i, &d)| d as usize == i);
                let replayed_prefix = (k > 0 && prefix)
                    .then(|| self.original_base_offset((topic, partition), &decisions[..k]))
                    .filter(|first| *first >= 0)
                    .map(|first| (first, k as u32));
                let on_lost = match decisions.first() {
                    _ if reports_no_offset => LostBet::NoOffset,
                    _ if idempotent => LostBet::Misnumbered,
                    Some(Decision::Drop { key, .. }) => {
                        LostBet::Retry(bet_fingerprint((topic, partition), *key, decisions.len()))
                    }
                    _ => LostBet::NoOffset,
                };
                (
                    PartitionKind::Upstream {
                        commits,
                        trimmed: any_dropped,
                        producer,
                        replayed_prefix,
                        on_lost,
                    },
                    Some(bytes),
                )
            }
            Ok(Spliced::NoneKept) => {
                let base_offset = self.original_base_offset((topic, partition), &decisions);
                (PartitionKind::Answered { base_offset }, None)
            }
            Err(e) => {
                // Forward the original: every record, at its original index.
                // (An idempotent batch whose decision was already stored can't
                // get here: its rewrite succeeded when it was decided.)
                tracing::warn!(topic, error = %e, "rewrite failed: batch forwarded as it came");
                self.metrics
                    .dedup
                    .fail_open(FailOpen::Undecodable, batch.len() as u64);
                counts.dropped = counts.dropped.saturating_sub(dropped_idx.len() as u64);
                let commits = claimed.iter().map(|&(i, key)| (key, i as u32)).collect();
                (PartitionKind::sent(commits, producer), None)
            }
        }
    }

    /// Only one v2 batch that is neither transactional nor a control batch
    /// is decided; anything else goes as it came (counted).
    fn shape_check(&self, records: &Bytes, counts: &mut TopicCounts) -> Option<RawBatch> {
        let mut items = Batches::new(records.clone());
        let raw = match (items.next(), items.next()) {
            (Some(Ok(BatchItem::Batch(raw))), None) => raw,
            _ => {
                let n = record_count(Some(records));
                counts.records += n;
                self.metrics.dedup.fail_open(FailOpen::NotOneV2Batch, n);
                return None;
            }
        };
        let attributes = raw.header().attributes;
        if attributes.is_transactional() || attributes.is_control() {
            self.metrics.dedup.transactional_records.fetch_add(
                raw.header().records_count.max(0) as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
            return None;
        }
        Some(raw)
    }

    /// A batch that does not decode goes as it came (counted); an idempotent
    /// producer's still has its base sequence translated, so the broker sees
    /// no gap after records this proxy removed earlier.
    async fn undecodable(
        &self,
        (topic, partition): (&str, i32),
        raw: &RawBatch,
        e: &RecordsError,
        counts: &mut TopicCounts,
    ) -> (PartitionKind, Option<Bytes>) {
        let n = raw.header().records_count.max(0) as u64;
        counts.records += n;
        self.metrics.dedup.fail_open(FailOpen::Undecodable, n);
        tracing::debug!(topic, error = %e, "batch not decodable: forwarded as it came");
        // An idempotent producer that lost records before: the
        // broker must still see its sequence without a gap.
        let h = raw.header();
        if h.producer_id >= 0 {
            let key = SeqKey {
                producer_id: h.producer_id,
                epoch: h.producer_epoch,
                topic: topic.to_string(),
                partition,
            };
            let turn = match self
                .sequences
                .begin(&key, h.base_sequence, h.records_count.max(0))
                .await
            {
                Ok(turn) => turn,
                Err(e) => {
                    // State unreadable: the shift is unknown, and
                    // untranslated after earlier drops the batch
                    // would be refused as out of sequence. The
                    // client retries this answer instead.
                    self.metrics.dedup.fail_open(FailOpen::StoreError, n);
                    tracing::warn!(topic, error = %e, "sequence state unreadable: undecodable idempotent batch answered KAFKA_STORAGE_ERROR");
                    let error_code = KAFKA_STORAGE_ERROR;
                    return (PartitionKind::Refused { error_code }, None);
                }
            };
            let delta = turn.delta();
            if let Err(e) = turn.finish(None).await {
                tracing::warn!(topic, error = %e, "sequence state not stored");
                self.metrics.dedup.fail_open(FailOpen::StoreError, n);
            }
            if delta != 0 {
                if let Ok(b) =
                    records::with_base_sequence(raw.bytes(), h.base_sequence.wrapping_sub(delta))
                {
                    return (PartitionKind::untouched(), Some(b));
                }
            }
        }
        (PartitionKind::untouched(), None)
    }

    /// Decides each record: keep, tag, or drop as a replay. A key twice in
    /// this batch: the second copy goes (a batch is written or fails as a
    /// whole). Across partitions both stay: one partition can fail while the
    /// other succeeds. Returns the decisions and the keys this request
    /// claimed, with their record indexes.
    async fn decide(
        &self,
        attempt: &Attempt<'_>,
        batch: &DecodedBatch,
        (claim, mine, wait_until): Claiming<'_>,
        counts: &mut TopicCounts,
    ) -> (Vec<Decision>, Vec<(usize, Key)>) {
        let Attempt {
            rule,
            place: (topic, partition),
            reports_no_offset,
            producer,
            idempotent,
            decided,
            guarded,
        } = *attempt;
        let may_drop = rule.mode == Mode::Drop;
        let deriver = Deriver {
            strategy: &rule.key,
            fallback: rule.fallback,
            tag_header: self.config.dedup.header.as_bytes(),
            secret: self.config.dedup.key_secret.as_ref(),
        };
        // Sized for the batch: started empty, these sets grew (and
        // rehashed) eight times a 500-record batch (issue 18's profile).
        let mut in_request: HashSet<Key, KeyBuildHasher> =
            HashSet::with_capacity_and_hasher(batch.len(), KeyBuildHasher::default());
        mine.reserve(batch.len());
        let mut decisions = Vec::with_capacity(batch.len());
        // What each record dropped below would be if it had to go after all.
        let mut undrop = Vec::new();
        let mut claimed = Vec::with_capacity(batch.len());
        for record in batch.records() {
            let derived = deriver.derive(topic, &record);
            let Some(key) = derived.key() else {
                decisions.push(Decision::Keep);
                continue;
            };
            let keep = match derived {
                Derived::Made { tag, .. } if rule.tag => Decision::Tag(tag),
                _ => Decision::Keep,
            };
            if let Some(dropped) = decided {
                // A retry: exactly what the first attempt got.
                in_request.insert(key);
                if dropped.binary_search(&(record.index() as u32)).is_ok() {
                    counts.dropped += 1;
                    decisions.push(Decision::Drop { key, seen: None });
                } else {
                    if self.window.check(key) == Check::Claimed {
                        claim.add(key);
                        mine.insert(key);
                        claimed.push((record.index(), key));
                    }
                    decisions.push(keep);
                }
                continue;
            }
            let replay_of = if !in_request.insert(key) {
                Some(None)
            } else {
                let mut check = self.window.check(key);
                if check == Check::Pending && may_drop && !mine.contains(&key) {
                    self.metrics
                        .dedup
                        .pending_waits
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    check = self
                        .window
                        .check_waiting(
                            key,
                            wait_until.saturating_duration_since(tokio::time::Instant::now()),
                        )
                        .await;
                    if check == Check::Pending {
                        self.metrics.dedup.fail_open(FailOpen::PendingTimeout, 1);
                    }
                }
                match check {
                    // The same idempotent producer sending its own records
                    // again is a retry: the broker deduplicates those.
                    Check::Seen(segment)
                        if idempotent
                            && self
                                .window
                                .producer_of(segment)
                                .is_none_or(|p| p == producer) =>
                    {
                        None
                    }
                    Check::Seen(segment) => Some(Some(segment)),
                    Check::Claimed => {
                        claim.add(key);
                        mine.insert(key);
                        claimed.push((record.index(), key));
                        None
                    }
                    Check::Pending => None,
                }
            };
            match replay_of {
                None => decisions.push(keep),
                Some(_) if may_drop && guarded.is_some() => {
                    if let Some(reason) = guarded {
                        self.metrics.dedup.fail_open(reason, 1);
                    }
                    decisions.push(keep);
                }
                Some(seen) if may_drop => {
                    counts.dropped += 1;
                    undrop.push((decisions.len(), keep));
                    decisions.push(Decision::Drop { key, seen });
                }
                Some(_) => {
                    counts.observed += 1;
                    decisions.push(keep);
                }
            }
        }

        // Clients number a partition's records base_offset + i, librdkafka
        // and aiokafka even from -1 ("no offset"). Unless the client is known
        // to report -1 per record, records are removed only when one base
        // offset is true for all of them; otherwise they all go (a duplicate,
        // never a wrong offset). The retry of a batch whose bet was lost
        // goes whole: its first attempt wrote every record but the replays,
        // so all of them are copies now, counted so.
        if !undrop.is_empty() && !reports_no_offset {
            let lost_before = !idempotent
                && match decisions.first() {
                    Some(Decision::Drop { key, .. }) => {
                        let fp = bet_fingerprint((topic, partition), *key, decisions.len());
                        self.lost_bets.remove(&fp).is_some()
                    }
                    _ => false,
                };
            if lost_before || !self.numbered((topic, partition), &decisions) {
                let copies = if lost_before {
                    decisions.len()
                } else {
                    undrop.len()
                };
                self.metrics
                    .dedup
                    .fail_open(FailOpen::Unnumbered, copies as u64);
                counts.dropped -= undrop.len() as u64;
                for (i, keep) in undrop {
                    decisions[i] = keep;
                }
            }
        }
        (decisions, claimed)
    }

    /// The batch as decided: replays removed, kept records tagged. The tag
    /// must not push a batch the broker would take over the topic's
    /// max.message.bytes: such a batch goes untagged (still deduplicated)
    /// rather than being refused as too large, and so does one whose limit
    /// is not known within `dedup.topic_config_wait`.
    async fn splice(
        &self,
        topic: &str,
        batch: &DecodedBatch,
        decisions: &[Decision],
    ) -> Result<Spliced, RecordsError> {
        let hexes: Vec<[u8; 32]> = decisions
            .iter()
            .map(|d| match d {
                Decision::Tag(k) => k.to_hex(),
                _ => [0; 32],
            })
            .collect();
        let header = self.config.dedup.header.as_bytes();
        let actions: Vec<Action<'_>> = decisions
            .iter()
            .zip(&hexes)
            .map(|(d, hex)| match d {
                Decision::Keep => Action::Keep,
                Decision::Drop { .. } => Action::Drop,
                Decision::Tag(_) => Action::KeepAppend(HeaderRef {
                    key: header,
                    value: Some(hex),
                }),
            })
            .collect();
        let mut spliced = batch.rewrite(&actions, SpliceMode::Renumber);
        let tagged = match &spliced {
            Ok(Spliced::Rewritten(b)) => b.len(),
            _ => 0,
        };
        let original = batch.original().len();
        let over = |limit: usize| {
            let over = tagged > limit && original <= limit;
            if over {
                self.metrics
                    .dedup
                    .untagged_too_large
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::debug!(
                    topic,
                    original,
                    tagged,
                    limit,
                    "tagged batch over the topic's max.message.bytes: sent untagged"
                );
            }
            over
        };
        let wait = self.config.dedup.topic_config_wait;
        let untag = match (&self.topic_configs, tagged > original) {
            (Some(configs), true) => match configs.get_within(topic, wait).await {
                Ok(described) => over(
                    described
                        .and_then(|c| c.max_message_bytes)
                        .and_then(|m| usize::try_from(m).ok())
                        .unwrap_or(BROKER_MAX_BATCH_BYTES),
                ),
                // Untagged: never over a limit it cannot see yet.
                Err(crate::topic_config::Late) => {
                    let tags = decisions
                        .iter()
                        .filter(|d| matches!(d, Decision::Tag(_)))
                        .count();
                    self.metrics
                        .dedup
                        .fail_open(FailOpen::TopicConfigWait, tags as u64);
                    tracing::debug!(
                        topic,
                        ?wait,
                        "the topic's max.message.bytes not known in time: sent untagged"
                    );
                    true
                }
            },
            _ => over(BROKER_MAX_BATCH_BYTES),
        };
        if untag {
            let untagged: Vec<Action<'_>> = actions
                .iter()
                .map(|a| match a {
                    Action::KeepAppend(_) => Action::Keep,
                    other => *other,
                })
                .collect();
            spliced = batch.rewrite(&untagged, SpliceMode::Renumber);
        }
        spliced
    }

    /// An idempotent batch's decision goes to disk before the batch goes
    /// anywhere. False when a decision that removes records could not be
    /// stored: the batch must then go with its replays.
    async fn persist(
        &self,
        topic: &str,
        turn: Option<Turn<'_>>,
        point: Option<Point>,
        batch: &DecodedBatch,
        dropped_idx: &[u32],
    ) -> bool {
        let trims = point.is_some();
        let stored = match turn {
            Some(turn) => turn.finish(point).await,
            None => Ok(()),
        };
        let Err(e) = stored else {
            return true;
        };
        if !trims {
            // Forwarded as decided; only a restart could not tell it went.
            tracing::warn!(topic, error = %e, "sequence state not stored");
            self.metrics
                .dedup
                .fail_open(FailOpen::StoreError, batch.len() as u64);
            return true;
        }
        tracing::warn!(topic, error = %e, "sequence decision not stored: batch forwarded with its replays");
        self.metrics
            .dedup
            .fail_open(FailOpen::StoreError, dropped_idx.len() as u64);
        false
    }

    /// Whether one base offset numbers every record of the batch truly once
    /// the `Drop`s are removed: all of them dropped, with first copies
    /// consecutive in this partition (answered with the first one), or a
    /// single record (answered -1: "no offset", per record too); or a dropped
    /// prefix whose first copies are consecutive here (answered with the
    /// first one when the broker appends the rest right after them).
    ///
    /// A prefix is a bet that nobody writes the partition between the first
    /// copies and the rest (it wins when the replays are the partition's
    /// latest records, as after a crash). It is not made when the window
    /// learned of a record written after the first copies (acknowledged to
    /// this process, to a peer, or read back at load). A lost bet is answered
    /// with a retriable error whose retry goes whole, or, to an idempotent
    /// producer, -1 (see [`LostBet`]).
    fn numbered(&self, place: (&str, i32), decisions: &[Decision]) -> bool {
        let is_drop = |d: &Decision| matches!(d, Decision::Drop { .. });
        let k = decisions.iter().filter(|d| is_drop(d)).count();
        if k == 0 || (k == 1 && decisions.len() == 1) {
            return true;
        }
        if !decisions[..k].iter().all(is_drop) {
            return false;
        }
        let first = self.original_base_offset(place, &decisions[..k]);
        first >= 0
            && (k == decisions.len()
                || !self
                    .window
                    .written_after(place.0, place.1, first + k as i64 - 1))
    }

    /// The offset the first copy of these dropped records got, when that is
    /// provable: each was acknowledged before in this same partition, at
    /// consecutive offsets, in this order. Else -1 ("no valid offset", as a
    /// broker answers a duplicate sequence).
    fn original_base_offset(&self, (topic, partition): (&str, i32), dropped: &[Decision]) -> i64 {
        let mut first = -1;
        let mut next = None;
        for d in dropped {
            let Decision::Drop {
                key,
                seen: Some(segment),
            } = *d
            else {
                return -1;
            };
            let Ok(Some(pos)) = self.window.position_in(key, segment) else {
                return -1;
            };
            if pos.topic != topic || pos.partition != partition || pos.offset < 0 {
                return -1;
            }
            match next {
                None => first = pos.offset,
                Some(offset) if offset == pos.offset => {}
                Some(_) => return -1,
            }
            next = Some(pos.offset + 1);
        }
        first
    }

    /// Commits what the broker acknowledged and puts the answered partitions
    /// back. `None`: forward the response as it came.
    pub fn on_response(
        &self,
        plan: &mut ProducePlan,
        version: i16,
        frame: &mut ResponseFrame,
    ) -> Result<(), Error> {
        let resp = match frame.message::<ProduceResponse>(ApiKey::Produce, version) {
            Ok(r) => r,
            // Keys are released when the plan goes; a response we can't
            // read while owing answered partitions can't be completed.
            Err(e) if plan.needs_response_rewrite() => return Err(e),
            Err(_) => return Ok(()),
        };
        if plan.acks == -1 {
            for part in &plan.transactional {
                let acked = resp
                    .responses
                    .iter()
                    .filter(|t| t.name.0.as_str() == part.topic)
                    .flat_map(|t| &t.partition_responses)
                    .find(|r| r.index == part.partition);
                if let Some(r) = acked.filter(|r| r.error_code == 0 && r.base_offset >= 0) {
                    self.transactions.produced(part, r.base_offset);
                }
            }
            for topic in &plan.topics {
                let Some(t) = resp.responses.iter().find(|t| t.name.0 == topic.name) else {
                    continue;
                };
                for p in &topic.partitions {
                    let PartitionKind::Upstream {
                        commits, producer, ..
                    } = &p.kind
                    else {
                        continue;
                    };
                    if commits.is_empty() {
                        continue;
                    }
                    let Some(r) = t.partition_responses.iter().find(|r| r.index == p.index) else {
                        continue;
                    };
                    if r.error_code != 0 {
                        continue;
                    }
                    if r.base_offset < 0 {
                        // Success without a position: nothing to say where
                        // the first copy is, so nothing is learned (the
                        // keys are released with the plan; replays pass).
                        self.metrics
                            .dedup
                            .fail_open(FailOpen::NoOffset, commits.len() as u64);
                        continue;
                    }
                    if let Err(e) = plan.claim.commit_as(
                        topic.name.as_str(),
                        p.index,
                        r.base_offset,
                        *producer,
                        commits,
                    ) {
                        self.metrics
                            .dedup
                            .fail_open(FailOpen::StoreError, commits.len() as u64);
                        tracing::warn!(error = %e, "could not record acknowledged keys; their replays will pass");
                    }
                }
            }
        }
        if plan.needs_response_rewrite() {
            let msg = frame.message_mut::<ProduceResponse>(ApiKey::Produce, version)?;
            let mut lost = Vec::new();
            *msg = merge(plan, std::mem::take(msg), &mut lost);
            let dedup = &self.metrics.dedup;
            for bet in lost {
                match bet {
                    LostBet::Retry(fp) => {
                        self.lost_bets.insert(fp, ());
                        dedup
                            .prefix_bets_lost_retried
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    LostBet::Misnumbered => {
                        dedup
                            .prefix_bets_lost_minus_one
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::warn!(
                            "an idempotent producer's replayed prefix was cut and the broker wrote the rest apart from the first copies: answered -1, which it numbers its records from"
                        );
                    }
                    LostBet::NoOffset => {}
                }
            }
        }
        Ok(())
    }
}

/// The client's view: its topics and partitions in request order, answered
/// partitions filled in, base_offset -1 where records were removed. A lost
/// replayed-prefix bet is answered as its [`LostBet`] says, and pushed on
/// `lost`.
fn merge(
    plan: &ProducePlan,
    mut from_broker: ProduceResponse,
    lost: &mut Vec<LostBet>,
) -> ProduceResponse {
    let mut topics = Vec::with_capacity(plan.topics.len());
    for topic in &plan.topics {
        let mut broker_partitions = match from_broker
            .responses
            .iter()
            .position(|t| t.name.0 == topic.name)
        {
            Some(i) => from_broker.responses.remove(i).partition_responses,
            None => Vec::new(),
        };
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for p in &topic.partitions {
            match p.kind {
                PartitionKind::Answered { base_offset } => partitions.push(
                    PartitionProduceResponse::default()
                        .with_index(p.index)
                        .with_error_code(0)
                        .with_base_offset(base_offset)
                        .with_log_append_time_ms(-1)
                        .with_log_start_offset(-1),
                ),
                PartitionKind::Refused { error_code } => partitions.push(
                    PartitionProduceResponse::default()
                        .with_index(p.index)
                        .with_error_code(error_code)
                        .with_base_offset(-1)
                        .with_log_append_time_ms(-1)
                        .with_log_start_offset(-1),
                ),
                PartitionKind::Upstream {
                    trimmed,
                    replayed_prefix,
                    on_lost,
                    ..
                } => {
                    if let Some(i) = broker_partitions.iter().position(|r| r.index == p.index) {
                        let mut r = broker_partitions.remove(i);
                        if trimmed {
                            r.base_offset = match replayed_prefix {
                                Some((first, k))
                                    if r.error_code == 0
                                        && r.base_offset == first + i64::from(k) =>
                                {
                                    first
                                }
                                // Written apart from the replays' first
                                // copies (another writer came between, or
                                // they were older records): no base offset
                                // numbers the batch truly. A client that
                                // numbers from it is told the records went
                                // in unacknowledged (retriable, "possibly
                                // written"), and its retry goes whole, at
                                // true offsets (copies, counted unnumbered).
                                Some(_) if r.error_code == 0 => {
                                    if let LostBet::Retry(_) = on_lost {
                                        r.error_code = NOT_ENOUGH_REPLICAS_AFTER_APPEND;
                                    }
                                    lost.push(on_lost);
                                    -1
                                }
                                _ => -1,
                            };
                        }
                        partitions.push(r);
                    }
                }
            }
        }
        partitions.append(&mut broker_partitions);
        topics.push(
            TopicProduceResponse::default()
                .with_name(topic.name.clone().into())
                .with_partition_responses(partitions),
        );
    }
    topics.append(&mut from_broker.responses);
    from_broker.responses = topics;
    from_broker
}

/// Records in a whole request, from batch headers.
/// The request with `edits` applied, encoded whole behind the frame's
/// header: what [`message::splice_produce`] writes, the slow way.
fn encode_edited(
    mut req: ProduceRequest,
    frame: &[u8],
    head: &RequestHead,
    edits: Vec<Vec<PartitionEdit>>,
) -> Result<BytesMut, Error> {
    for (topic, edits) in req.topic_data.iter_mut().zip(edits) {
        let mut edits = edits.into_iter();
        topic.partition_data.retain_mut(|p| match edits.next() {
            Some(PartitionEdit::Replace(new)) => {
                p.records = Some(new);
                true
            }
            Some(PartitionEdit::Remove) => false,
            Some(PartitionEdit::Keep) | None => true,
        });
    }
    req.topic_data.retain(|t| !t.partition_data.is_empty());
    let mut out = BytesMut::with_capacity(frame.len() + 1024);
    out.extend_from_slice(&frame[..head.body_offset]);
    req.encode(&mut out, head.api_version)
        .map_err(|source| Error::Codec {
            api: api_name(ApiKey::Produce),
            version: head.api_version,
            side: Side::Internal,
            source,
        })?;
    Ok(out)
}

fn request_records(req: &ProduceRequest) -> u64 {
    req.topic_data
        .iter()
        .flat_map(|t| &t.partition_data)
        .map(|p| record_count(p.records.as_ref()))
        .sum()
}

/// Records in a partition's `records`, from batch headers (no decoding).
fn record_count(records: Option<&Bytes>) -> u64 {
    let Some(records) = records else { return 0 };
    Batches::new(records.clone())
        .filter_map(|item| match item {
            Ok(BatchItem::Batch(raw)) => Some(raw.header().records_count.max(0) as u64),
            _ => None,
        })
        .sum()
}

// === The filter ===

/// An EndTxn on its way to the coordinator.
#[derive(Debug, Clone, Copy)]
struct EndTxn {
    producer: Producer,
    committed: bool,
    /// The connection it came on (`ConnState::id`).
    conn: u64,
    /// v5+: transactions v2 (KIP-890).
    v2: bool,
}

/// The produce-path dedup filter of one connection: Produce (tag, drop
/// replays, answer wholly replayed requests; commit acknowledged keys),
/// and what it learns of transactions (AddPartitionsToTxn, EndTxn) and of
/// the client (ApiVersions v3+).
#[derive(Clone)]
pub struct DedupProduce<'a> {
    /// `None`: no dedup rule is on.
    dedup: Option<&'a ProduceDedup>,
    state: &'a tokio::sync::Mutex<ConnState>,
    upstream: &'a dyn Outbound,
}

impl<'a> DedupProduce<'a> {
    pub fn new(
        dedup: Option<&'a ProduceDedup>,
        state: &'a tokio::sync::Mutex<ConnState>,
        upstream: &'a dyn Outbound,
    ) -> Self {
        DedupProduce {
            dedup,
            state,
            upstream,
        }
    }
}

impl<'a> Filter<'a> for DedupProduce<'a> {
    const NAME: &'static str = "dedup (produce)";

    fn call(
        &self,
        mut ex: Exchange,
        next: impl FnOnce(Exchange) -> Call<'a> + Send + 'a,
    ) -> Call<'a> {
        let Some(dedup) = self.dedup else {
            return next(ex);
        };
        let (state, upstream) = (self.state, self.upstream);
        let head = &ex.head;
        match head.api_key {
            ApiKey::Produce => Box::pin(async move {
                let head = &ex.head;
                // acks=0: nothing could ever be learned from it; it passes.
                let acks = match message::produce_acks_and_timeout(
                    &ex.frame,
                    head.body_offset,
                    head.api_version,
                ) {
                    Some((0, _)) | None => return next(ex).await,
                    Some((acks, _)) => acks,
                };
                // The filter may wait on keys an earlier request of this very
                // connection has in flight: that request must have left, not
                // sit in the writer behind the wait.
                upstream.flush().await?;
                let plan = {
                    let mut state = state.lock().await;
                    let state = &mut *state;
                    let identity = state.identity.as_ref().expect("set by the identity filter");
                    match dedup
                        .on_request(&mut state.session, identity, head, &mut ex.frame, acks)
                        .await?
                    {
                        Outcome::Unchanged(None) => return next(ex).await,
                        Outcome::Unchanged(Some(plan)) => plan,
                        Outcome::Rewritten(new, plan) => {
                            ex.frame = new;
                            plan
                        }
                        Outcome::Answer(bytes) => return Ok(Pending::Local(bytes)),
                    }
                };
                let version = ex.head.api_version;
                let mut plan = Box::new(plan);
                Ok(next(ex).await?.then(move |mut reply| async move {
                    dedup.on_response(&mut plan, version, &mut reply.frame)?;
                    Ok(reply)
                }))
            }),
            ApiKey::EndTxn => {
                let Some(req) = message::decode_request::<EndTxnRequest>(&ex.frame, head) else {
                    return next(ex);
                };
                let version = head.api_version;
                Box::pin(async move {
                    let end = EndTxn {
                        producer: (req.producer_id.0, req.producer_epoch),
                        committed: req.committed,
                        conn: state.lock().await.id(),
                        v2: version >= 5,
                    };
                    Ok(next(ex).await?.then(move |mut reply| async move {
                        let answer = reply
                            .frame
                            .message::<EndTxnResponse>(ApiKey::EndTxn, version);
                        match answer {
                            Ok(r) if r.error_code == 0 => dedup.transaction_ended(
                                end.producer,
                                end.committed,
                                end.conn,
                                end.v2,
                            ),
                            Ok(r) => tracing::debug!(
                                producer_id = end.producer.0,
                                error_code = r.error_code,
                                "EndTxn failed: the transaction's keys stay held until it ends"
                            ),
                            Err(_) => {}
                        }
                        Ok(reply)
                    }))
                })
            }
            // v0-v3 come from clients (v4+ only from brokers).
            ApiKey::AddPartitionsToTxn if head.api_version <= 3 => {
                let Some(req) =
                    message::decode_request::<AddPartitionsToTxnRequest>(&ex.frame, head)
                else {
                    return next(ex);
                };
                Box::pin(async move {
                    let parts: Vec<(String, i32)> = req
                        .v3_and_below_topics
                        .iter()
                        .flat_map(|t| t.partitions.iter().map(|&p| (t.name.to_string(), p)))
                        .collect();
                    let producer = (
                        req.v3_and_below_producer_id.0,
                        req.v3_and_below_producer_epoch,
                    );
                    dedup.partitions_added(producer, state.lock().await.id(), &parts);
                    next(ex).await
                })
            }
            ApiKey::ApiVersions if head.api_version >= 3 => {
                let Some(req) = message::decode_request::<ApiVersionsRequest>(&ex.frame, head)
                else {
                    return next(ex);
                };
                Box::pin(async move {
                    state
                        .lock()
                        .await
                        .session
                        .set_client_software(req.client_software_name.as_str());
                    next(ex).await
                })
            }
            _ => next(ex),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idempotency::sequences::{decode_shared, PointLog};
    use crate::records::{decode_batch, BatchBuilder, Codec, Record};
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::produce_response::PartitionProduceResponse;
    use kafka_protocol::protocol::StrBytes;
    use std::collections::HashMap;
    use std::sync::atomic::Ordering::Relaxed;

    const VERSION: i16 = 9;

    thread_local! {
        /// The base offset the client got for the last trimmed partition.
        static LAST_BASE: std::cell::Cell<i64> = const { std::cell::Cell::new(0) };
        /// The error code the client got for the last trimmed partition.
        static LAST_ERROR: std::cell::Cell<i16> = const { std::cell::Cell::new(0) };
        /// The acks of the requests [`frame`] builds.
        static ACKS: std::cell::Cell<i16> = const { std::cell::Cell::new(-1) };
    }

    struct Bench {
        dedup: ProduceDedup,
        _dir: tempfile::TempDir,
    }

    fn bench(mode: &str) -> Bench {
        bench_with(mode, "")
    }

    /// [`bench`] with more TOML after the rule.
    fn bench_with(mode: &str, extra: &str) -> Bench {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[store]\ndir = \"{}\"\n[[dedup.rules]]\ntopics = \"*\"\nmode = \"{mode}\"\n{extra}",
            dir.path().display()
        );
        let config = Arc::new(Config::parse(&text).unwrap());
        let store = Arc::new(crate::store::Store::open(dir.path()).unwrap());
        let window = Arc::new(Window::new(store, config.dedup.window, 1000));
        window.load().unwrap();
        Bench {
            dedup: ProduceDedup::new(config, window, Arc::new(Metrics::new())),
            _dir: dir,
        }
    }

    fn batch(values: &[&str], producer: (i64, i16), base_sequence: i32) -> Bytes {
        let records: Vec<Record> = values
            .iter()
            .enumerate()
            .map(|(i, v)| Record {
                attributes: 0,
                timestamp_delta: i as i64,
                offset_delta: i as i32,
                key: None,
                value: Some(Bytes::copy_from_slice(v.as_bytes())),
                headers: vec![],
            })
            .collect();
        let mut b = BatchBuilder::new(Codec::None);
        b.producer_id = producer.0;
        b.producer_epoch = producer.1;
        b.base_sequence = base_sequence;
        b.build(&records).unwrap()
    }

    fn frame(records: Bytes) -> (RequestHead, BytesMut) {
        let req = ProduceRequest::default()
            .with_acks(ACKS.with(|a| a.get()))
            .with_timeout_ms(1000)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(StrBytes::from_static_str("orders").into())
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(records))])]);
        let bytes = message::encode_request(ApiKey::Produce, VERSION, 7, &req).unwrap();
        let head = RequestHead::peek(&bytes).unwrap();
        (head, BytesMut::from(&bytes[..]))
    }

    fn ack(base_offset: i64) -> Bytes {
        answer(base_offset, 0)
    }

    /// (values forwarded, base sequence) of a forwarded request.
    fn forwarded(head: &RequestHead, frame: &[u8]) -> (Vec<String>, i32) {
        let req: ProduceRequest = message::decode_request(frame, head).unwrap();
        let records = req.topic_data[0].partition_data[0].records.clone().unwrap();
        let b = decode_batch(records).unwrap();
        let values = b
            .records()
            .map(|r| String::from_utf8(r.value().unwrap().to_vec()).unwrap())
            .collect();
        (values, b.header().base_sequence)
    }

    /// The frame a request goes on as, when it must be rewritten (`why`
    /// says why, if it is not).
    async fn rewritten(
        b: &Bench,
        s: &mut Session,
        head: &RequestHead,
        f: &mut BytesMut,
        why: impl std::fmt::Display,
    ) -> BytesMut {
        match filtered(b, s, head, f).await {
            Outcome::Rewritten(new, _plan) => new,
            _ => panic!("not rewritten: {why}"),
        }
    }

    /// What the filter makes of a request of the connector's task.
    async fn filtered(b: &Bench, s: &mut Session, head: &RequestHead, f: &mut BytesMut) -> Outcome {
        let identity = Identity::from_client_id("connector-producer-orders-0");
        b.dedup.on_request(s, &identity, head, f, -1).await.unwrap()
    }

    /// Sends one batch through and acknowledges it at `offset`; returns what
    /// went upstream (`None`: answered by the proxy).
    async fn send(
        b: &Bench,
        session: &mut Session,
        records: Bytes,
        offset: i64,
    ) -> Option<(Vec<String>, i32)> {
        let identity = Identity::from_client_id("connector-producer-orders-0");
        let sent = decode_batch(records.clone()).unwrap().len();
        let (head, mut f) = frame(records);
        match b
            .dedup
            .on_request(session, &identity, &head, &mut f, ACKS.with(|a| a.get()))
            .await
            .unwrap()
        {
            Outcome::Unchanged(plan) => {
                let out = forwarded(&head, &f);
                if let Some(mut plan) = plan {
                    let mut reply = ResponseFrame::new(ack(offset));
                    b.dedup.on_response(&mut plan, VERSION, &mut reply).unwrap();
                }
                Some(out)
            }
            Outcome::Rewritten(new, mut plan) => {
                let head = RequestHead::peek(&new).unwrap();
                let out = forwarded(&head, &new);
                let mut reply = ResponseFrame::new(ack(offset));
                b.dedup.on_response(&mut plan, VERSION, &mut reply).unwrap();
                let resp: ProduceResponse = message::decode_response(
                    ApiKey::Produce,
                    VERSION,
                    &reply.into_bytes().unwrap(),
                )
                .unwrap();
                let base = resp.responses[0].partition_responses[0].base_offset;
                LAST_ERROR.with(|e| e.set(resp.responses[0].partition_responses[0].error_code));
                if out.0.len() < sent {
                    // Removed from the front, first copies right before: the
                    // first copy's offset; otherwise no base offset to trust.
                    let rebased = offset - (sent - out.0.len()) as i64;
                    assert!(base == -1 || base == rebased, "base {base}");
                    LAST_BASE.with(|b| b.set(base));
                } else {
                    assert_eq!(base, offset);
                }
                Some(out)
            }
            Outcome::Answer(bytes) => {
                let resp: ProduceResponse =
                    message::decode_response(ApiKey::Produce, VERSION, &bytes).unwrap();
                assert_eq!(resp.responses[0].partition_responses[0].error_code, 0);
                LAST_BASE.with(|b| b.set(resp.responses[0].partition_responses[0].base_offset));
                None
            }
        }
    }

    /// Produce for a covered topic waits up to `dedup.load_wait` for the
    /// window to be read back after a start (README, operations.md § 3):
    /// decided against it when the load ends within the wait; past the
    /// wait, forwarded unchecked and counted (`fail_open{reason="loading"}`).
    #[tokio::test]
    async fn produce_waits_load_wait_for_the_window_then_passes_counted() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[store]\ndir = \"{}\"\n[dedup]\nload_wait = \"2s\"\n\
             [[dedup.rules]]\ntopics = \"*\"\nmode = \"drop\"\n",
            dir.path().display()
        );
        let config = Arc::new(Config::parse(&text).unwrap());
        let store = Arc::new(crate::store::Store::open(dir.path()).unwrap());
        let proxy = |window: &Arc<Window>, dir| Bench {
            dedup: ProduceDedup::new(config.clone(), window.clone(), Arc::new(Metrics::new())),
            _dir: dir,
        };
        // Before the restart: "a" acknowledged.
        let first = Arc::new(Window::new(store.clone(), config.dedup.window, 1000));
        first.load().unwrap();
        let before = proxy(&first, tempfile::tempdir().unwrap());
        let mut s = Session::default();
        assert!(send(&before, &mut s, batch(&["a"], NO_PRODUCER, -1), 0)
            .await
            .is_some());

        // After it, the window not yet loaded: past the wait, "a" goes out
        // unchecked, counted.
        let window = Arc::new(Window::new(store.clone(), config.dedup.window, 1000));
        let after = proxy(&window, dir);
        let mut s = Session::default();
        let passed = send(&after, &mut s, batch(&["a"], NO_PRODUCER, -1), 1).await;
        assert_eq!(passed.map(|(v, _)| v), Some(vec!["a".to_string()]));
        let loading = || after.dedup.metrics.dedup.fail_open_count(FailOpen::Loading);
        assert_eq!(loading(), 1);

        // The load ends within the wait: the replay is decided, and dropped.
        let loader = {
            let window = window.clone();
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                window.load().unwrap();
            })
        };
        let replay = send(&after, &mut s, batch(&["a"], NO_PRODUCER, -1), 2).await;
        loader.await.unwrap();
        assert_eq!(replay, None, "answered by the proxy: a replay");
        assert_eq!(loading(), 1, "nothing more passed unchecked");
    }

    /// Two processes sharing the window: the second's first Produce on a
    /// connection waits until it has learned what the first published, so
    /// a replay right behind its original is dropped; a process that does
    /// not catch up passes it.
    #[tokio::test]
    async fn a_connections_first_produce_catches_up_with_the_peers_first() {
        let process =
            |shared: bool| bench_with("drop", if shared { "[dedup.shared]\n" } else { "" });
        let a = process(true);
        let published = Arc::new(std::sync::Mutex::new(Vec::<Vec<u8>>::new()));
        let sink = published.clone();
        a.dedup
            .window
            .publish_to(Box::new(move |seg: Vec<u8>| sink.lock().unwrap().push(seg)));
        let mut s = Session::default();
        assert!(send(&a, &mut s, batch(&["a", "b"], NO_PRODUCER, -1), 0)
            .await
            .is_some());

        // B's log still has A's segment on its way: catching up learns it.
        let b = process(true);
        let window = b.dedup.window.clone();
        let on_the_way = published.clone();
        b.dedup.window.catch_up_with(Box::new(move || {
            let (window, segments) = (window.clone(), on_the_way.lock().unwrap().clone());
            Box::pin(async move {
                for seg in segments {
                    window.learn_encoded(&seg).unwrap();
                }
                true
            })
        }));
        let mut s = Session::default();
        let replay = send(&b, &mut s, batch(&["a", "b"], NO_PRODUCER, -1), 5).await;
        assert_eq!(replay, None, "answered by B: both records were replays");
        let stats = &b.dedup.metrics.dedup.shared;
        assert_eq!(
            stats.catch_ups.load(std::sync::atomic::Ordering::Relaxed),
            1
        );

        // C does not catch up: the same replay passes.
        let c = process(false);
        let mut s = Session::default();
        let passed = send(&c, &mut s, batch(&["a", "b"], NO_PRODUCER, -1), 5).await;
        assert_eq!(passed.map(|(v, _)| v.len()), Some(2));
    }

    #[tokio::test]
    async fn a_success_without_a_base_offset_teaches_nothing() {
        let b = bench("drop");
        let mut s = Session::default();
        assert!(send(&b, &mut s, batch(&["a", "b"], (-1, -1), -1), -1)
            .await
            .is_some());
        assert_eq!(b.dedup.metrics.dedup.fail_open_count(FailOpen::NoOffset), 2);
        // Not learned: the same records are written again, not answered here.
        let again = send(&b, &mut s, batch(&["a", "b"], (-1, -1), -1), 10).await;
        assert_eq!(again.map(|(v, _)| v.len()), Some(2));
    }

    #[tokio::test]
    async fn replays_are_removed_and_tagged_once() {
        let b = bench("drop");
        let mut s = Session::default();
        let first = send(&b, &mut s, batch(&["a", "b", "c"], NO_PRODUCER, -1), 0).await;
        assert_eq!(first.unwrap().0, ["a", "b", "c"]);
        // The successor replays b, c and goes on with d.
        let mut s2 = Session::default();
        let replay = send(&b, &mut s2, batch(&["b", "c", "d"], NO_PRODUCER, -1), 3).await;
        assert_eq!(replay.unwrap().0, ["d"]);
        // b and c were at 1 and 2, d landed at 3: the client is told 1, so
        // base + index is every record's true offset.
        assert_eq!(LAST_BASE.with(|b| b.get()), 1);
        // A whole replay whose first copies are consecutive is answered by
        // the proxy, with the first one's offset.
        assert_eq!(
            send(&b, &mut s2, batch(&["a", "b"], NO_PRODUCER, -1), 4).await,
            None
        );
        assert_eq!(LAST_BASE.with(|b| b.get()), 0);
        let topics = b.dedup.metrics.dedup.topics();
        let c = topics[&("orders".to_string(), "orders".to_string())];
        assert_eq!((c.records, c.dropped), (8, 4));
    }

    /// Issue 15 item 7's last shape: a replayed prefix is cut on the bet
    /// that the broker writes the rest right after the first copies. Here
    /// another writer put a record between (at 2), so the rest lands at 3
    /// and no base offset numbers the batch: the client is answered a
    /// retriable "written, not acknowledged" (never a base it would number
    /// wrong), and its retry goes whole. Where the rest lands right after
    /// the first copies, the first copy's offset numbers every record.
    #[tokio::test]
    async fn a_prefix_written_apart_from_its_first_copies_is_retried_whole() {
        let b = bench("drop");
        let mut s = Session::default();
        send(&b, &mut s, batch(&["a", "b"], NO_PRODUCER, -1), 0).await;
        let cut = send(&b, &mut s, batch(&["a", "b", "c"], NO_PRODUCER, -1), 3).await;
        assert_eq!(cut.unwrap().0, ["c"]);
        assert_eq!(
            (LAST_ERROR.with(|e| e.get()), LAST_BASE.with(|b| b.get())),
            (NOT_ENOUGH_REPLICAS_AFTER_APPEND, -1)
        );
        // The retry: a at 0, b at 1, c at 3; it goes whole and the broker
        // numbers it. All three are copies now, counted.
        let retry = send(&b, &mut s, batch(&["a", "b", "c"], NO_PRODUCER, -1), 4).await;
        assert_eq!(retry.unwrap().0, ["a", "b", "c"]);
        assert_eq!(LAST_ERROR.with(|e| e.get()), 0);
        assert_eq!(
            b.dedup.metrics.dedup.fail_open_count(FailOpen::Unnumbered),
            3
        );
        // Where the rest lands right after the first copies, the prefix goes.
        send(&b, &mut s, batch(&["x", "y"], NO_PRODUCER, -1), 7).await;
        let cut = send(&b, &mut s, batch(&["x", "y", "z"], NO_PRODUCER, -1), 9).await;
        assert_eq!(cut.unwrap().0, ["z"]);
        assert_eq!(
            (LAST_ERROR.with(|e| e.get()), LAST_BASE.with(|b| b.get())),
            (0, 7)
        );
    }

    /// The retry of a lost bet goes whole even when nothing was learned from
    /// the first attempt (an unwritable store; acks=1, where no key is
    /// learned and no offset noted): it does not lose the bet again and
    /// again, writing the new records each time.
    #[tokio::test]
    async fn a_lost_bet_retried_without_learning_the_first_attempt_goes_whole_once() {
        for refuse_writes in [true, false] {
            let b = bench("drop");
            let mut s = Session::default();
            send(&b, &mut s, batch(&["a", "b"], NO_PRODUCER, -1), 0).await;
            if refuse_writes {
                b.dedup.window.store().refuse_writes();
            } else {
                ACKS.with(|a| a.set(1));
            }
            let cut = send(&b, &mut s, batch(&["a", "b", "c"], NO_PRODUCER, -1), 3).await;
            let lost = LAST_ERROR.with(|e| e.get());
            let retry = send(&b, &mut s, batch(&["a", "b", "c"], NO_PRODUCER, -1), 4).await;
            let error = LAST_ERROR.with(|e| e.get());
            ACKS.with(|a| a.set(-1));
            assert_eq!(cut.unwrap().0, ["c"]);
            assert_eq!(lost, NOT_ENOUGH_REPLICAS_AFTER_APPEND);
            assert_eq!(
                retry.unwrap().0,
                ["a", "b", "c"],
                "refuse_writes {refuse_writes}"
            );
            assert_eq!(error, 0);
            let dedup = &b.dedup.metrics.dedup;
            assert_eq!(dedup.fail_open_count(FailOpen::Unnumbered), 3);
            let retried = dedup
                .prefix_bets_lost_retried
                .load(std::sync::atomic::Ordering::Relaxed);
            assert_eq!(retried, 1);
        }
    }

    /// No bet is made where this process saw a record written after the
    /// first copies: the prefix goes with the rest (counted), for any client
    /// that numbers from the base. An idempotent one, whose retry would get
    /// the same cut, bets only where nothing says it loses; a lost bet is
    /// answered -1 and counted.
    #[tokio::test]
    async fn no_bet_is_made_where_a_record_was_seen_written_after_the_first_copies() {
        let b = bench("drop");
        let mut s = Session::default();
        send(&b, &mut s, batch(&["x", "y"], NO_PRODUCER, -1), 7).await;
        send(&b, &mut s, batch(&["q"], NO_PRODUCER, -1), 9).await;
        for (producer, base_seq, new) in [(NO_PRODUCER, -1, "w"), ((3, 0), 0, "v")] {
            let sent = send(&b, &mut s, batch(&["x", "y", new], producer, base_seq), 10).await;
            assert_eq!(sent.unwrap().0, ["x", "y", new], "{producer:?}");
        }
        assert_eq!(
            b.dedup.metrics.dedup.fail_open_count(FailOpen::Unnumbered),
            4
        );
        // Nothing seen after a and b: an idempotent producer's prefix is cut
        // on the bet, and a lost one (another writer at 22) answered -1.
        send(&b, &mut s, batch(&["a", "b"], NO_PRODUCER, -1), 20).await;
        let cut = send(&b, &mut s, batch(&["a", "b", "c"], (4, 0), 0), 23).await;
        assert_eq!(cut.unwrap().0, ["c"]);
        assert_eq!(
            (LAST_ERROR.with(|e| e.get()), LAST_BASE.with(|b| b.get())),
            (0, -1)
        );
        let lost = &b.dedup.metrics.dedup.prefix_bets_lost_minus_one;
        assert_eq!(lost.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn replays_no_base_offset_can_number_are_forwarded() {
        let b = bench("drop");
        let mut s = Session::default();
        let first = send(&b, &mut s, batch(&["a", "b", "c", "d"], NO_PRODUCER, -1), 0).await;
        assert_eq!(first.unwrap().0, ["a", "b", "c", "d"]);
        // Clients number records base_offset + i, librdkafka and aiokafka
        // even from -1: a replay between new records has no base offset that
        // is true for every record, so the batch goes whole, at its own offsets.
        let mixed = send(&b, &mut s, batch(&["x", "a", "y"], NO_PRODUCER, -1), 4).await;
        assert_eq!(mixed.unwrap().0, ["x", "a", "y"]);
        // A whole replay whose first copies are not consecutive: the same.
        let whole = send(&b, &mut s, batch(&["a", "c"], NO_PRODUCER, -1), 7).await;
        assert_eq!(whole.unwrap().0, ["a", "c"]);
        // A replayed prefix whose first copies are not consecutive: the same.
        let prefix = send(&b, &mut s, batch(&["b", "d", "z"], NO_PRODUCER, -1), 9).await;
        assert_eq!(prefix.unwrap().0, ["b", "d", "z"]);
        let dedup = &b.dedup.metrics.dedup;
        assert_eq!(dedup.fail_open_count(FailOpen::Unnumbered), 5);
        // A single record's replay is always answered: at its first copy's
        // offset here (-1, "no offset" for every client, if that were elsewhere).
        assert_eq!(
            send(&b, &mut s, batch(&["c"], NO_PRODUCER, -1), 12).await,
            None
        );
        assert_eq!(LAST_BASE.with(|b| b.get()), 2);
        // The Java client (KIP-511 name) reports -1 for every record of a
        // partition answered -1: its replays are removed and it is told -1.
        let mut java = Session::default();
        java.set_client_software("apache-kafka-java");
        let mixed = send(&b, &mut java, batch(&["q", "a", "r"], NO_PRODUCER, -1), 13).await;
        assert_eq!(mixed.unwrap().0, ["q", "r"]);
        assert_eq!(LAST_BASE.with(|b| b.get()), -1);
        assert_eq!(dedup.fail_open_count(FailOpen::Unnumbered), 5);
        let topics = dedup.topics();
        let c = topics[&("orders".to_string(), "orders".to_string())];
        assert_eq!((c.records, c.dropped), (16, 2));
    }

    /// Records of one forwarded batch: how many carry the tag header.
    fn tagged_records(head: &RequestHead, frame: &[u8]) -> (usize, usize) {
        let req: ProduceRequest = message::decode_request(frame, head).unwrap();
        let records = req.topic_data[0].partition_data[0].records.clone().unwrap();
        let b = decode_batch(records).unwrap();
        let tagged = b
            .records()
            .filter(|r| r.headers().any(|h| h.key == b"idempotency-key"))
            .count();
        (b.len(), tagged)
    }

    #[tokio::test]
    async fn tags_never_push_a_batch_past_the_brokers_default_limit() {
        let b = bench("drop");
        let identity = Identity::from_client_id("connector-producer-orders-0");
        let filler = "x".repeat(1034);
        let big: Vec<String> = (0..990).map(|i| format!("{i:05}-{filler}")).collect();
        let big: Vec<&str> = big.iter().map(String::as_str).collect();
        let records = batch(&big, NO_PRODUCER, -1);
        assert!(records.len() <= BROKER_MAX_BATCH_BYTES);
        let (head, mut f) = frame(records);
        let mut s = Session::default();
        let out = b
            .dedup
            .on_request(&mut s, &identity, &head, &mut f, -1)
            .await
            .unwrap();
        let Outcome::Unchanged(Some(_plan)) = out else {
            panic!("nothing to drop, no tag: the original bytes go");
        };
        assert_eq!(tagged_records(&head, &f), (990, 0));
        assert_eq!(b.dedup.metrics.dedup.untagged_too_large.load(Relaxed), 1);

        // A small batch is tagged as always.
        let (head, mut f) = frame(batch(&["small"], NO_PRODUCER, -1));
        let new = rewritten(&b, &mut s, &head, &mut f, "tagged").await;
        let head = RequestHead::peek(&new).unwrap();
        assert_eq!(tagged_records(&head, &new), (1, 1));
        assert_eq!(b.dedup.metrics.dedup.untagged_too_large.load(Relaxed), 1);
    }

    #[tokio::test]
    async fn one_key_in_two_partitions_of_a_request_never_waits_on_itself() {
        let b = bench("drop");
        let partition = |index: i32| {
            PartitionProduceData::default()
                .with_index(index)
                .with_records(Some(batch(&["same"], NO_PRODUCER, -1)))
        };
        let req = ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(1000)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(StrBytes::from_static_str("orders").into())
                .with_partition_data(vec![partition(0), partition(1)])]);
        let bytes = message::encode_request(ApiKey::Produce, VERSION, 7, &req).unwrap();
        let head = RequestHead::peek(&bytes).unwrap();
        let mut f = BytesMut::from(&bytes[..]);
        let mut s = Session::default();
        let new = rewritten(
            &b,
            &mut s,
            &head,
            &mut f,
            "both copies tagged and forwarded",
        )
        .await;
        let head = RequestHead::peek(&new).unwrap();
        let sent: ProduceRequest = message::decode_request(&new, &head).unwrap();
        assert_eq!(
            sent.topic_data[0].partition_data.len(),
            2,
            "both partitions go"
        );
        let dedup = &b.dedup.metrics.dedup;
        assert_eq!(
            dedup.pending_waits.load(Relaxed),
            0,
            "no wait on its own key"
        );
        assert_eq!(dedup.fail_open_count(FailOpen::PendingTimeout), 0);
    }

    /// A changed request is written by splicing the frame (only what
    /// changed written anew), and the bytes are the ones kafka-protocol
    /// encodes for what they say, in every version the filter changes,
    /// classic and flexible: a partition answered here taken out, changed
    /// ones replaced, a null one and the rest as they came.
    #[tokio::test]
    async fn a_rewritten_request_is_the_crates_encoding_of_what_it_says() {
        for version in 3..=12 {
            let b = bench("drop");
            let mut s = Session::default();
            // Acknowledged once: a replay from now on.
            send(&b, &mut s, batch(&["r1", "r2"], NO_PRODUCER, -1), 0).await;
            let part = |index: i32, records: Option<Bytes>| {
                PartitionProduceData::default()
                    .with_index(index)
                    .with_records(records)
            };
            let topic = |name: &'static str, parts| {
                TopicProduceData::default()
                    .with_name(StrBytes::from_static_str(name).into())
                    .with_partition_data(parts)
            };
            let req = ProduceRequest::default()
                .with_acks(-1)
                .with_timeout_ms(30_000)
                .with_topic_data(vec![
                    topic(
                        "orders",
                        vec![
                            part(0, Some(batch(&["r1", "r2"], NO_PRODUCER, -1))),
                            part(1, Some(batch(&["n1"], NO_PRODUCER, -1))),
                            part(2, None),
                        ],
                    ),
                    topic(
                        "audit",
                        vec![part(0, Some(batch(&["a"; 130], NO_PRODUCER, -1)))],
                    ),
                ]);
            let bytes = message::encode_request(ApiKey::Produce, version, 7, &req).unwrap();
            let head = RequestHead::peek(&bytes).unwrap();
            let mut f = BytesMut::from(&bytes[..]);
            let new = rewritten(
                &b,
                &mut s,
                &head,
                &mut f,
                format!("v{version}: a replay answered, the rest tagged"),
            )
            .await;
            assert_eq!(
                f, bytes,
                "v{version}: the client's frame is left as it came"
            );
            let sent: ProduceRequest = message::decode_request(&new, &head).unwrap();
            // Per topic: its partitions' indexes and record counts.
            type Shape<'a> = Vec<(&'a str, Vec<(i32, Option<usize>)>)>;
            let shape: Shape = sent
                .topic_data
                .iter()
                .map(|t| {
                    let parts = t.partition_data.iter();
                    let parts = parts.map(|p| {
                        (
                            p.index,
                            p.records
                                .as_ref()
                                .map(|r| decode_batch(r.clone()).unwrap().len()),
                        )
                    });
                    (t.name.as_str(), parts.collect())
                })
                .collect();
            assert_eq!(
                shape,
                [
                    ("orders", vec![(1, Some(1)), (2, None)]),
                    ("audit", vec![(0, Some(130))])
                ],
                "v{version}"
            );
            let mut encoded = BytesMut::from(&new[..head.body_offset]);
            sent.encode(&mut encoded, version).unwrap();
            assert_eq!(new, encoded, "v{version}: as the crate encodes it");
        }
    }

    /// A request passed as it came is the very buffer the client's frame
    /// was read into: decoding it copied nothing.
    #[tokio::test]
    async fn an_unchanged_request_keeps_its_buffer() {
        let b = bench_with("drop", "tag = false");
        let (head, mut f) = frame(batch(&["a", "b"], NO_PRODUCER, -1));
        let at = f.as_ptr();
        let out = filtered(&b, &mut Session::default(), &head, &mut f).await;
        assert!(matches!(out, Outcome::Unchanged(_)));
        assert_eq!(f.as_ptr(), at);
    }

    /// Produce v13 names topics by id only (KIP-516); the proxy does not
    /// advertise it, but a client that sends it anyway must get its request
    /// through untouched: no key under the empty name "" that a "*" rule
    /// matches, where the same content in two topics would collide.
    #[tokio::test]
    async fn produce_v13_with_topic_ids_passes_through() {
        let b = bench("drop");
        let identity = Identity::from_client_id("connector-producer-orders-0");
        let topic = |id: u128| {
            TopicProduceData::default()
                .with_topic_id(format!("00000000-0000-0000-0000-{id:012}").parse().unwrap())
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(batch(&["same"], NO_PRODUCER, -1)))])
        };
        let req = ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(1000)
            .with_topic_data(vec![topic(1), topic(2)]);
        let bytes = message::encode_request(ApiKey::Produce, 13, 7, &req).unwrap();
        // The codec refuses v13 now; the guard is checked past it (v12 has
        // the same header).
        let mut v12 = bytes.to_vec();
        v12[2..4].copy_from_slice(&12i16.to_be_bytes());
        let head = RequestHead {
            api_version: 13,
            ..RequestHead::peek(&v12).unwrap()
        };
        let mut f = BytesMut::from(&bytes[..]);
        let mut s = Session::default();
        let out = b
            .dedup
            .on_request(&mut s, &identity, &head, &mut f, -1)
            .await
            .unwrap();
        assert!(
            matches!(out, Outcome::Unchanged(None)),
            "a v13 request goes as it came"
        );
        assert_eq!(b.dedup.metrics.dedup.fail_open_count(FailOpen::TopicId), 2);
    }

    #[tokio::test]
    async fn observe_forwards_everything() {
        let b = bench("observe");
        let mut s = Session::default();
        send(&b, &mut s, batch(&["a", "b"], NO_PRODUCER, -1), 0).await;
        let again = send(&b, &mut s, batch(&["a", "b"], NO_PRODUCER, -1), 2).await;
        assert_eq!(again.unwrap().0, ["a", "b"]);
        let c = b.dedup.metrics.dedup.topics()[&("orders".to_string(), "orders".to_string())];
        assert_eq!((c.dropped, c.observed), (0, 2));
    }

    /// A partition leader as Apache Kafka checks idempotent producers
    /// (`ProducerStateManager`, ref §2.1): per (producer id, epoch) the
    /// first batch starts at sequence 0 and each next one right after the
    /// last; a batch whose (first, last) sequence matches one of the last 5
    /// is a duplicate, answered with that batch's offset and not written;
    /// anything else is OUT_OF_ORDER_SEQUENCE_NUMBER (45).
    #[derive(Default)]
    struct Leader {
        log: Vec<String>,
        /// Per producer: the last sequence, and the last batches' (first,
        /// last, offset).
        producers: HashMap<(i64, i16), (i32, Vec<Appended>)>,
    }

    type Appended = (i32, i32, i64);

    impl Leader {
        fn append(&mut self, records: Bytes) -> Result<i64, i16> {
            let b = decode_batch(records).unwrap();
            let h = b.header();
            let values: Vec<String> = b
                .records()
                .map(|r| String::from_utf8(r.value().unwrap().to_vec()).unwrap())
                .collect();
            let (first, last) = (h.base_sequence, h.base_sequence + values.len() as i32 - 1);
            let offset = self.log.len() as i64;
            if h.producer_id >= 0 {
                match self.producers.get_mut(&(h.producer_id, h.producer_epoch)) {
                    None if first != 0 => return Err(45),
                    None => {
                        self.producers.insert(
                            (h.producer_id, h.producer_epoch),
                            (last, vec![(first, last, offset)]),
                        );
                    }
                    Some((_, cached)) if cached.iter().any(|c| (c.0, c.1) == (first, last)) => {
                        let c = cached.iter().find(|c| (c.0, c.1) == (first, last));
                        return Ok(c.unwrap().2);
                    }
                    Some((end, _)) if first != *end + 1 => return Err(45),
                    Some((end, cached)) => {
                        *end = last;
                        cached.push((first, last, offset));
                        if cached.len() > 5 {
                            cached.remove(0);
                        }
                    }
                }
            }
            self.log.extend(values);
            Ok(offset)
        }
    }

    fn answer(base_offset: i64, error_code: i16) -> Bytes {
        let resp = ProduceResponse::default().with_responses(vec![TopicProduceResponse::default()
            .with_name(StrBytes::from_static_str("orders").into())
            .with_partition_responses(vec![PartitionProduceResponse::default()
                .with_index(0)
                .with_error_code(error_code)
                .with_base_offset(base_offset)])]);
        message::encode_local_response(
            ApiKey::Produce,
            VERSION,
            ApiKey::Produce.response_header_version(VERSION),
            7,
            &resp,
        )
        .unwrap()
    }

    /// A session of the Java client (the idempotent producer these tests
    /// model): it reports -1 per record of a partition answered -1, so any
    /// replay may be removed. (librdkafka's idempotent producer numbers
    /// from the base: only whole replayed batches are removed for it.)
    fn java_session() -> Session {
        let mut s = Session::default();
        s.set_client_software("apache-kafka-java");
        s
    }

    /// One attempt of a batch through the proxy to `leader`. `Ok`: the
    /// client was told its records are written; `Err`: the broker's error.
    /// With `answered = false` the proxy never sees the broker's answer (it
    /// crashed), and the client hears nothing.
    async fn attempt(
        dedup: &ProduceDedup,
        leader: &mut Leader,
        records: Bytes,
        answered: bool,
    ) -> Option<Result<(), i16>> {
        let identity = Identity::from_client_id("connector-producer-orders-0");
        let (head, mut f) = frame(records);
        let mut session = java_session();
        let outcome = dedup
            .on_request(&mut session, &identity, &head, &mut f, -1)
            .await
            .unwrap();
        let (upstream, plan) = match outcome {
            Outcome::Answer(_) => return Some(Ok(())),
            Outcome::Unchanged(plan) => (f, plan),
            Outcome::Rewritten(new, plan) => (new, Some(plan)),
        };
        let head = RequestHead::peek(&upstream).unwrap();
        let req: ProduceRequest = message::decode_request(&upstream, &head).unwrap();
        let records = req.topic_data[0].partition_data[0].records.clone().unwrap();
        let result = leader.append(records);
        if !answered {
            return None;
        }
        let reply = match result {
            Ok(offset) => answer(offset, 0),
            Err(code) => answer(-1, code),
        };
        if let Some(mut plan) = plan {
            let mut reply = ResponseFrame::new(reply);
            dedup.on_response(&mut plan, VERSION, &mut reply).unwrap();
        }
        Some(result.map(drop))
    }

    fn dedup_on(dir: &std::path::Path) -> ProduceDedup {
        let text = format!(
            "[store]\ndir = \"{}\"\n[[dedup.rules]]\ntopics = \"*\"\nmode = \"drop\"\n",
            dir.display()
        );
        let config = Arc::new(Config::parse(&text).unwrap());
        let store = Arc::new(crate::store::Store::open(dir).unwrap());
        let window = Arc::new(Window::new(store, config.dedup.window, 1000));
        window.load().unwrap();
        ProduceDedup::new(config, window, Arc::new(Metrics::new()))
    }

    /// Audit A1: a batch forwarded whole whose answer was lost, then
    /// acknowledged from another producer, must not be trimmed when its own
    /// producer resends it: the broker would take the trimmed resend's
    /// sequences as the next batch's and swallow that one as a duplicate.
    #[tokio::test]
    async fn a_resend_of_a_batch_the_broker_holds_is_never_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let mut leader = Leader::default();
        let p = (5, 0);
        let mut told = Vec::new();
        {
            let dedup = dedup_on(dir.path());
            // P's batch is written, and the proxy dies before the answer.
            assert_eq!(
                attempt(&dedup, &mut leader, batch(&["a", "b", "c"], p, 0), false).await,
                None
            );
        }
        let dedup = dedup_on(dir.path());
        // Q writes the same content through the restarted proxy.
        let q = attempt(
            &dedup,
            &mut leader,
            batch(&["a", "b", "c"], (7, 0), 0),
            true,
        )
        .await;
        assert_eq!(q, Some(Ok(())));
        told.extend(["a", "b", "c"]);
        // P resends its batch, then goes on.
        let resent = attempt(&dedup, &mut leader, batch(&["a", "b", "c"], p, 0), true).await;
        assert_eq!(resent, Some(Ok(())));
        let next = attempt(&dedup, &mut leader, batch(&["d", "e", "f"], p, 3), true).await;
        assert_eq!(next, Some(Ok(())));
        told.extend(["d", "e", "f"]);
        for value in told {
            assert!(
                leader.log.iter().any(|v| v == value),
                "{value} was acknowledged to the client but is not in the log {:?}",
                leader.log
            );
        }
        assert!(
            dedup
                .metrics
                .dedup
                .fail_open_count(FailOpen::SequenceUnknown)
                >= 3,
            "the resend's replays were kept and counted"
        );
    }

    /// The other half of A1: two attempts of one batch at once (a client
    /// that timed out and resent on a new connection) get one decision.
    #[tokio::test]
    async fn attempts_of_one_batch_at_once_get_one_decision() {
        let b = bench("drop");
        let mut s = Session::default();
        // a, b acknowledged from producer 1; producer 2 replays them with c.
        send(&b, &mut s, batch(&["a", "b"], (1, 0), 0), 0)
            .await
            .unwrap();
        let dedup = Arc::new(b.dedup);
        let attempt = |dedup: Arc<ProduceDedup>| async move {
            let identity = Identity::from_client_id("connector-producer-orders-0");
            let (head, mut f) = frame(batch(&["a", "b", "c"], (2, 0), 0));
            let mut session = java_session();
            match dedup
                .on_request(&mut session, &identity, &head, &mut f, -1)
                .await
                .unwrap()
            {
                Outcome::Rewritten(new, _plan) => {
                    let head = RequestHead::peek(&new).unwrap();
                    forwarded(&head, &new)
                }
                Outcome::Unchanged(_) => forwarded(&head, &f),
                Outcome::Answer(_) => panic!("c is new"),
            }
        };
        let (one, two) = tokio::join!(attempt(dedup.clone()), attempt(dedup.clone()));
        assert_eq!(one, two, "one decision for both attempts");
        assert_eq!(one, (vec!["c".to_string()], 0));
    }

    #[tokio::test]
    async fn idempotent_replays_keep_the_sequence_gap_free() {
        // Checked against a leader that validates sequences as Kafka does,
        // not against the proxy's own arithmetic (audit B3).
        let dir = tempfile::tempdir().unwrap();
        let dedup = dedup_on(dir.path());
        let mut leader = Leader::default();
        macro_rules! go {
            ($values:expr, $producer:expr, $seq:expr) => {
                attempt(&dedup, &mut leader, batch(&$values, $producer, $seq), true)
                    .await
                    .unwrap()
            };
        }
        // Producer 5 (epoch 0) wrote a, b, c before it crashed; its own
        // retry of that batch is not a replay (the broker's duplicate).
        assert_eq!(go!(["a", "b", "c"], (5, 0), 0), Ok(()));
        assert_eq!(go!(["a", "b", "c"], (5, 0), 0), Ok(()));
        // Producer 6 replays b, c and goes on: the broker sees 6's sequence
        // from 0 without a gap.
        assert_eq!(go!(["b", "c", "d"], (6, 0), 0), Ok(()));
        assert_eq!(go!(["e", "f"], (6, 0), 3), Ok(()));
        // A retry of the trimmed batch gets the same decision: the broker
        // takes it for the duplicate it is.
        assert_eq!(go!(["b", "c", "d"], (6, 0), 0), Ok(()));
        // A wholly replayed batch is answered; the next one follows on.
        assert_eq!(go!(["a", "b"], (6, 0), 5), Ok(()));
        assert_eq!(go!(["g"], (6, 0), 7), Ok(()));
        // A new epoch starts over.
        assert_eq!(go!(["h"], (6, 1), 0), Ok(()));
        assert_eq!(leader.log, ["a", "b", "c", "d", "e", "f", "g", "h"]);
    }

    /// Two processes sharing the window: an idempotent producer whose
    /// batches lost replays at A moves to B (A died). B learned A's sequence
    /// points through the log and translates the producer's next batches by
    /// the same delta; the leader sees one gap-free sequence. Without the
    /// points B sends the client's own sequence, which the leader refuses as
    /// out of order.
    #[tokio::test]
    async fn a_producer_moving_to_another_process_keeps_its_translated_sequence() {
        for share_points in [true, false] {
            let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            let (a, b) = (dedup_on(dir_a.path()), dedup_on(dir_b.path()));
            let peer = b.window.clone();
            a.window.publish_to(Box::new(move |segment: Vec<u8>| {
                peer.learn_encoded(&segment).unwrap();
            }));
            if share_points {
                let peer = b.sequences();
                a.sequences().share_with(PointLog {
                    reachable: Box::new(|| true),
                    publish: Box::new(move |point| {
                        let peer = peer.clone();
                        Box::pin(async move {
                            let (key, point) = decode_shared(&point).unwrap();
                            peer.learn(&key, point).await.unwrap()
                        })
                    }),
                });
            }
            let mut leader = Leader::default();
            macro_rules! go {
                ($via:expr, $values:expr, $producer:expr, $seq:expr) => {
                    attempt(&$via, &mut leader, batch(&$values, $producer, $seq), true)
                        .await
                        .unwrap()
                };
            }
            assert_eq!(go!(a, ["a", "b", "c"], (5, 0), 0), Ok(()));
            // Producer 6 replays b, c through A, which removes them.
            assert_eq!(go!(a, ["b", "c", "d"], (6, 0), 0), Ok(()));
            assert_eq!(go!(a, ["e"], (6, 0), 3), Ok(()));
            // A dies; producer 6 goes on through B.
            let through_b = go!(b, ["f"], (6, 0), 4);
            if !share_points {
                assert_eq!(through_b, Err(45), "B sent the client's own sequence");
                continue;
            }
            assert_eq!(through_b, Ok(()));
            for (i, v) in ["g", "h", "i", "j"].iter().enumerate() {
                assert_eq!(go!(b, [*v], (6, 0), 5 + i as i32), Ok(()));
            }
            // Past B's guard, B removes a replay itself, on top of A's delta.
            assert_eq!(go!(b, ["a", "k"], (6, 0), 9), Ok(()));
            assert_eq!(go!(b, ["l"], (6, 0), 11), Ok(()));
            assert_eq!(
                leader.log,
                ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l"]
            );
        }
    }

    /// While the shared window's topic is unreachable, nothing new is
    /// removed from an idempotent batch: peers could not learn the point.
    #[tokio::test]
    async fn an_unreachable_log_keeps_idempotent_replays() {
        let dir = tempfile::tempdir().unwrap();
        let a = dedup_on(dir.path());
        a.sequences().share_with(PointLog {
            reachable: Box::new(|| false),
            publish: Box::new(|_| Box::pin(async { panic!("nothing to publish") })),
        });
        let mut leader = Leader::default();
        for (values, producer) in [(vec!["a", "b"], (5, 0)), (vec!["b", "c"], (6, 0))] {
            let sent = attempt(&a, &mut leader, batch(&values, producer, 0), true).await;
            assert_eq!(sent, Some(Ok(())));
        }
        assert_eq!(leader.log, ["a", "b", "b", "c"]);
        assert_eq!(
            a.metrics.dedup.fail_open_count(FailOpen::SequenceUnshared),
            1
        );
    }

    /// A Produce the filter cannot read goes on as it came, and is counted:
    /// v0-2 (below what kafka-protocol decodes) as `old_version`, anything
    /// else that does not decode (here: cut short) as `unreadable_request`.
    #[tokio::test]
    async fn a_produce_that_does_not_decode_is_forwarded_and_counted() {
        let b = bench("drop");
        let identity = Identity::from_client_id("connector-producer-orders-0");
        let mut s = Session::default();
        let mut v2 = Vec::new();
        v2.extend_from_slice(&0i16.to_be_bytes());
        v2.extend_from_slice(&2i16.to_be_bytes());
        v2.extend_from_slice(&7i32.to_be_bytes());
        v2.extend_from_slice(&(-1i16).to_be_bytes());
        v2.extend_from_slice(&[0xff, 0xff, 0, 1, 0, 0, 3, 0xe8, 0, 0, 0, 0]); // acks -1, timeout, no topics
        let (head, whole) = frame(batch(&["a"], NO_PRODUCER, -1));
        let cut = BytesMut::from(&whole[..whole.len() - 10]);
        for (mut bytes, reason) in [
            (BytesMut::from(&v2[..]), FailOpen::OldVersion),
            (cut, FailOpen::UnreadableRequest),
        ] {
            let head = RequestHead::peek(&bytes).unwrap_or(head.clone());
            let out = b
                .dedup
                .on_request(&mut s, &identity, &head, &mut bytes, -1)
                .await
                .unwrap();
            assert!(matches!(out, Outcome::Unchanged(None)));
            assert_eq!(
                b.dedup.metrics.dedup.fail_open_count(reason),
                1,
                "{}",
                reason.as_str()
            );
        }
    }

    /// An idempotent batch that does not decode, from a producer whose
    /// sequence state cannot be read: the proxy cannot know by how much to
    /// shift its sequence, and forwarded untranslated after earlier drops it
    /// would get OUT_OF_ORDER_SEQUENCE (fatal to librdkafka; a failed send
    /// Connect may skip). So it is not forwarded: the partition is answered
    /// with KAFKA_STORAGE_ERROR, which every client retries.
    #[tokio::test]
    async fn an_undecodable_idempotent_batch_with_unreadable_sequences_is_refused_retriably() {
        let b = bench("drop");
        let identity = Identity::from_client_id("connector-producer-orders-0");
        // SeqKey (5, 0, "orders", 0) as the store spells it, holding garbage.
        let mut key = Vec::new();
        key.extend_from_slice(&5i64.to_be_bytes());
        key.extend_from_slice(&0i16.to_be_bytes());
        key.extend_from_slice(&6u16.to_be_bytes());
        key.extend_from_slice(b"orders");
        key.extend_from_slice(&0i32.to_be_bytes());
        b.dedup
            .window
            .store()
            .put_sequence_state_durably(&key, b"not a sequence state")
            .await
            .unwrap();
        // Marked gzip, holding plain records: its header reads, it does not.
        let mut bad = batch(&["x"], (5, 0), 10).to_vec();
        bad[22] |= 1;
        let (head, mut f) = frame(Bytes::from(bad));
        let mut s = Session::default();
        let out = b
            .dedup
            .on_request(&mut s, &identity, &head, &mut f, -1)
            .await
            .unwrap();
        let Outcome::Answer(answer) = out else {
            panic!("forwarded although its sequence shift is unknown");
        };
        let resp: ProduceResponse =
            message::decode_response(ApiKey::Produce, VERSION, &answer).unwrap();
        let p = &resp.responses[0].partition_responses[0];
        assert_eq!((p.error_code, p.base_offset), (56, -1));
        assert_eq!(
            b.dedup.metrics.dedup.fail_open_count(FailOpen::StoreError),
            1
        );
    }
}
