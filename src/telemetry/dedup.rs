//! The dedup filters' metrics: records per connector and topic, replays
//! absorbed, fail-opens by reason.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

/// Why a record that a rule covers was forwarded unchecked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailOpen {
    /// The batch did not decode (corrupt, unknown codec, too large).
    Undecodable,
    /// Not exactly one record batch v2 (legacy magic, several batches).
    NotOneV2Batch,
    /// The window was still loading after `dedup.load_wait`.
    Loading,
    /// Another request had the key in flight past `dedup.pending_wait`.
    PendingTimeout,
    /// The store could not record an acknowledged batch.
    StoreError,
    /// The request named a topic by id only (Produce v13).
    TopicId,
    /// The broker answered success without a base offset: keys not learned.
    NoOffset,
    /// Fetch: the topic is compacted, so a copy may be the only one left.
    Compacted,
    /// Fetch: the brokers would not describe the topic's cleanup.policy.
    TopicConfig,
    /// The topic's settings were not known within `dedup.topic_config_wait`
    /// (a broker slow to answer DescribeConfigs): on the produce path the
    /// batch went untagged (still deduplicated); on the fetch path the
    /// records went as they came.
    TopicConfigWait,
    /// An idempotent batch that may resend what an earlier process
    /// forwarded (a producer this process has no memory of): its replays
    /// stay, so the broker never takes a trimmed resend for the next batch.
    SequenceUnknown,
    /// Replays kept in an idempotent producer's batch because the shared
    /// window's topic (`[dedup.shared]`) was unreachable: a decision peers
    /// could not learn would mistranslate the producer there.
    SequenceUnshared,
    /// A committed transaction's keys this process could not place in it
    /// (transactions v1 whose partition it did not see added on the
    /// connection the EndTxn came on): not learned.
    TxnUnseen,
    /// A Produce v0-2 (below what kafka-protocol decodes); counts requests.
    OldVersion,
    /// A Produce that did not decode, or that the bounds check refused;
    /// counts requests (their records cannot be read).
    UnreadableRequest,
    /// Produce: replays that could not be given their true offsets as the
    /// partition's base_offset + i (first copies elsewhere, not in order):
    /// forwarded, since clients number every record from the base offset.
    Unnumbered,
}

impl FailOpen {
    pub(super) const ALL: [FailOpen; 16] = [
        FailOpen::Undecodable,
        FailOpen::NotOneV2Batch,
        FailOpen::Loading,
        FailOpen::PendingTimeout,
        FailOpen::StoreError,
        FailOpen::TopicId,
        FailOpen::NoOffset,
        FailOpen::Compacted,
        FailOpen::TopicConfig,
        FailOpen::TopicConfigWait,
        FailOpen::SequenceUnknown,
        FailOpen::SequenceUnshared,
        FailOpen::TxnUnseen,
        FailOpen::OldVersion,
        FailOpen::UnreadableRequest,
        FailOpen::Unnumbered,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailOpen::Undecodable => "undecodable",
            FailOpen::NotOneV2Batch => "not_one_v2_batch",
            FailOpen::Loading => "loading",
            FailOpen::PendingTimeout => "pending_timeout",
            FailOpen::StoreError => "store_error",
            FailOpen::TopicId => "topic_id",
            FailOpen::NoOffset => "no_offset",
            FailOpen::Compacted => "compacted",
            FailOpen::TopicConfig => "topic_config",
            FailOpen::TopicConfigWait => "topic_config_wait",
            FailOpen::SequenceUnknown => "sequence_unknown",
            FailOpen::SequenceUnshared => "sequence_unshared",
            FailOpen::TxnUnseen => "txn_unseen",
            FailOpen::OldVersion => "old_version",
            FailOpen::UnreadableRequest => "unreadable_request",
            FailOpen::Unnumbered => "unnumbered",
        }
    }
}

/// Per (connector, topic) counts on the produce path.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TopicCounts {
    pub records: u64,
    pub dropped: u64,
    pub observed: u64,
}

/// Replays absorbed per connector. A session is one producer connection;
/// after a restart the task's new producer opens a new one.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Replays {
    pub sessions: u64,
    /// Sessions that replayed something (a restart, a rebalance, a zombie).
    pub sessions_with_replays: u64,
    pub records_dropped: u64,
    /// The most records dropped from one session.
    pub largest_replay: u64,
}

/// The dedup filter's metrics.
pub struct DedupMetrics {
    topics: Mutex<BTreeMap<(String, String), TopicCounts>>,
    /// The fetch path's, per (connector or client id, topic).
    fetch_topics: Mutex<BTreeMap<(String, String), TopicCounts>>,
    replays: Mutex<BTreeMap<String, Replays>>,
    pub(super) fail_open: [AtomicU64; FailOpen::ALL.len()],
    /// Records in transactional batches passed through untouched.
    pub transactional_records: AtomicU64,
    /// Transactions that committed / aborted through the proxy.
    pub txn_committed: AtomicU64,
    pub txn_aborted: AtomicU64,
    /// Open transactions forgotten after the longest transaction timeout.
    pub txn_expired: AtomicU64,
    /// Committed transactions whose keys were not learned (held-keys bound).
    pub txn_unlearned: AtomicU64,
    /// Keys learned from committed transactions.
    pub txn_keys_learned: AtomicU64,
    /// Batches sent without their tags: tagged, they would have passed the
    /// broker's default max.message.bytes.
    pub untagged_too_large: AtomicU64,
    /// Records that waited for another request's pending key.
    pub pending_waits: AtomicU64,
    /// Requests answered by the proxy because every partition was a replay.
    pub answered_locally: AtomicU64,
    /// Batches whose replayed prefix was cut on the bet that the broker
    /// writes the rest right after the first copies, and the broker did not,
    /// by the answer given: `retried` (a retriable error; the retry goes
    /// whole) or `minus_one` (an idempotent client that numbers from the
    /// base, answered -1).
    pub prefix_bets_lost_retried: AtomicU64,
    pub prefix_bets_lost_minus_one: AtomicU64,
    pub window_keys: AtomicI64,
    pub window_bytes: AtomicI64,
    pub store_bytes: AtomicI64,
    /// 1 once the window is loaded after a start.
    pub window_loaded: AtomicI64,
    /// Periodic store flushes completed.
    pub store_flushes: AtomicU64,
    pub shared: SharedWindowStats,
}

/// What the shared window (`[dedup.shared]`) reports (`/metrics`, `/readyz`).
#[derive(Default)]
pub struct SharedWindowStats {
    /// `[dedup.shared]` is on.
    pub enabled: AtomicBool,
    /// Segments (one acknowledged batch's keys) published.
    pub published: AtomicU64,
    /// Segments that found the publish queue full (the topic away too
    /// long): their keys stay known here only.
    pub publish_failures: AtomicU64,
    /// Keys learned from other processes.
    pub keys_learned: AtomicU64,
    /// Segments read from the topic (every origin but this run).
    pub segments_read: AtomicU64,
    /// Milliseconds from a peer's broker acknowledgement to this process
    /// knowing its keys, for the last segment learned.
    pub lag_ms: AtomicI64,
    /// The first catch-up (every partition read to the end it had at the
    /// start) is done.
    pub caught_up: AtomicBool,
    /// The topic is reachable now (client built, topic there).
    pub connected: AtomicBool,
    /// Connections whose first Produce waited for the topic to be read to
    /// its end, and did.
    pub catch_ups: AtomicU64,
    /// The same, not done within `catch_up_wait` (or the topic away).
    pub catch_up_timeouts: AtomicU64,
    /// Sequence points (an idempotent batch that lost records) published.
    pub points_published: AtomicU64,
    /// Points whose publish was not confirmed within `catch_up_wait`: their
    /// batch went on; a producer moving to a peer before it learns the
    /// point gets OUT_OF_ORDER_SEQUENCE there (never a loss).
    pub points_unconfirmed: AtomicU64,
    /// Peers' points folded into this process's sequence state.
    pub points_learned: AtomicU64,
}

impl DedupMetrics {
    pub(super) const fn new() -> Self {
        DedupMetrics {
            topics: Mutex::new(BTreeMap::new()),
            fetch_topics: Mutex::new(BTreeMap::new()),
            replays: Mutex::new(BTreeMap::new()),
            fail_open: [const { AtomicU64::new(0) }; FailOpen::ALL.len()],
            transactional_records: AtomicU64::new(0),
            txn_committed: AtomicU64::new(0),
            txn_aborted: AtomicU64::new(0),
            txn_expired: AtomicU64::new(0),
            txn_unlearned: AtomicU64::new(0),
            txn_keys_learned: AtomicU64::new(0),
            untagged_too_large: AtomicU64::new(0),
            pending_waits: AtomicU64::new(0),
            answered_locally: AtomicU64::new(0),
            prefix_bets_lost_retried: AtomicU64::new(0),
            prefix_bets_lost_minus_one: AtomicU64::new(0),
            window_keys: AtomicI64::new(0),
            window_bytes: AtomicI64::new(0),
            store_bytes: AtomicI64::new(0),
            window_loaded: AtomicI64::new(0),
            store_flushes: AtomicU64::new(0),
            shared: SharedWindowStats {
                enabled: AtomicBool::new(false),
                published: AtomicU64::new(0),
                publish_failures: AtomicU64::new(0),
                keys_learned: AtomicU64::new(0),
                segments_read: AtomicU64::new(0),
                lag_ms: AtomicI64::new(0),
                caught_up: AtomicBool::new(false),
                connected: AtomicBool::new(false),
                catch_ups: AtomicU64::new(0),
                catch_up_timeouts: AtomicU64::new(0),
                points_published: AtomicU64::new(0),
                points_unconfirmed: AtomicU64::new(0),
                points_learned: AtomicU64::new(0),
            },
        }
    }

    pub fn add(&self, connector: &str, topic: &str, counts: TopicCounts) {
        let mut map = self.topics.lock().expect("dedup metrics lock");
        let key = (connector.to_string(), topic.to_string());
        let entry = map.entry(key).or_default();
        entry.records += counts.records;
        entry.dropped += counts.dropped;
        entry.observed += counts.observed;
    }

    /// Records a fetch rule covered in one response, per consumer and topic.
    pub fn add_fetch(&self, consumer: &str, topic: &str, counts: TopicCounts) {
        if counts == TopicCounts::default() {
            return;
        }
        let mut map = self.fetch_topics.lock().expect("dedup metrics lock");
        let entry = map
            .entry((consumer.to_string(), topic.to_string()))
            .or_default();
        entry.records += counts.records;
        entry.dropped += counts.dropped;
        entry.observed += counts.observed;
    }

    pub fn fetch_topics(&self) -> BTreeMap<(String, String), TopicCounts> {
        self.fetch_topics
            .lock()
            .expect("dedup metrics lock")
            .clone()
    }

    pub fn fail_open(&self, reason: FailOpen, records: u64) {
        let i = FailOpen::ALL
            .iter()
            .position(|r| *r == reason)
            .expect("listed");
        self.fail_open[i].fetch_add(records, Relaxed);
    }

    /// Records forwarded unchecked for `reason` so far.
    pub fn fail_open_count(&self, reason: FailOpen) -> u64 {
        FailOpen::ALL
            .iter()
            .position(|r| *r == reason)
            .map_or(0, |i| self.fail_open[i].load(Relaxed))
    }

    /// A connection of `connector` produced for the first time.
    pub fn session_started(&self, connector: &str) {
        let mut map = self.replays.lock().expect("dedup metrics lock");
        map.entry(connector.to_string()).or_default().sessions += 1;
    }

    /// `dropped` more replays in a session that had dropped `before`.
    pub fn replayed(&self, connector: &str, before: u64, dropped: u64) {
        let mut map = self.replays.lock().expect("dedup metrics lock");
        let r = map.entry(connector.to_string()).or_default();
        if before == 0 {
            r.sessions_with_replays += 1;
        }
        r.records_dropped += dropped;
        r.largest_replay = r.largest_replay.max(before + dropped);
    }

    pub fn topics(&self) -> BTreeMap<(String, String), TopicCounts> {
        self.topics.lock().expect("dedup metrics lock").clone()
    }

    pub fn replays(&self) -> BTreeMap<String, Replays> {
        self.replays.lock().expect("dedup metrics lock").clone()
    }
}
