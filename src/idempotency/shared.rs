//! The shared window (`[dedup.shared]`): every idemgate process in front of
//! one Kafka cluster publishes the keys the broker acknowledged through it
//! to one topic, and learns the others' from it, so a replay that arrives
//! through another sidecar or replica is known there too.
//!
//! ```text
//! ack → Window::write_segment → publish (the segment's bytes, as sled keeps them)
//!       → one record on `topic`, partition by the data partition, header origin=<this run>
//! tail: every partition of `topic`, from (now - dedup.window) → Window::learn_encoded
//!       (stored as a local segment, keys seen; records of this run skipped)
//!
//! sequence point (an idempotent batch lost replays) → on disk → publish, header
//!       kind=seq, partition by producer-partition, acknowledged before the batch goes
//!       → peers: Sequences::learn (see `idempotency::sequences`)
//! EndTxn v5+ answered → publish, header kind=txn (producer id, epoch, committed)
//!       → peers: Transactions::ended_elsewhere (see `idempotency::transactions`)
//! ```
//!
//! The local store stays the window's memory; the topic is how processes
//! share it, and how a process that starts with an empty disk rebuilds it:
//! at every start each partition is read from the first record younger
//! than `dedup.window` (ListOffsets by time). `/readyz` waits for that
//! first catch-up, bounded by `dedup.load_wait`; after that, or while the
//! topic is unreachable, the proxy serves with what it knows: a replay a
//! peer's key would have caught passes (a duplicate, counted), never a loss.
//!
//! Nothing is ever dropped on the topic's word alone: a key is published
//! only after the broker acknowledged its record through a peer, exactly
//! what a local commit needs. A publish that fails is sent again once the
//! topic is back; segments that find the queue full are counted
//! (`idemgate_shared_window_publish_failures_total`) and stay known to this
//! process only.
//!
//! The client is rskafka (pure Rust, our rustls `ClientConfig`, SASL PLAIN
//! and SCRAM). Producing and tailing use separate partition clients, so a
//! publish never waits behind a long-polling fetch. rskafka cannot create a
//! topic with settings, so `upstream::create_topic` does that on a
//! connection of the proxy's own.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use rskafka::client::partition::{Compression, OffsetAt, PartitionClient, UnknownTopicHandling};
use rskafka::client::Client;
use rskafka::record::Record;
use tokio::sync::{mpsc, oneshot, watch, Notify};

use super::sequences::{decode_shared, PointLog, Sequences};
use super::transactions::{decode_end, decode_part, Shared, Transactions};
use super::window::Window;
use crate::config::{SharedWindow, Upstream};
use crate::telemetry::{Metrics, SharedWindowStats};
use crate::tls::UpstreamTlsConnector;

/// Segments waiting to be published; past this, new ones are counted as
/// publish failures (the process is far behind the topic).
const QUEUE: usize = 65_536;
/// The most segments one produce request carries.
const BATCH: usize = 500;
/// The record header naming the process run that published a segment.
const ORIGIN: &str = "idemgate-origin";
/// The record header saying what a record is (segments have none).
const KIND: &str = "idemgate-kind";

/// What a record of the topic carries.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A segment: one acknowledged batch's keys.
    Segment,
    /// A sequence point (`idempotency::sequences`).
    Point,
    /// A transactions-v2 end (`idempotency::transactions`).
    TxnEnd,
    /// A transactions-v2 part: keys held until the end.
    TxnPart,
}

impl Kind {
    fn header(self) -> Option<&'static [u8]> {
        match self {
            Kind::Segment => None,
            Kind::Point => Some(b"seq"),
            Kind::TxnEnd => Some(b"txn"),
            Kind::TxnPart => Some(b"txnpart"),
        }
    }

    fn of(header: Option<&[u8]>) -> Option<Kind> {
        match header {
            None => Some(Kind::Segment),
            Some(b"seq") => Some(Kind::Point),
            Some(b"txn") => Some(Kind::TxnEnd),
            Some(b"txnpart") => Some(Kind::TxnPart),
            // A kind of a later version: not this one's to read.
            Some(_) => None,
        }
    }
}

/// One record to publish.
struct Outgoing {
    bytes: Vec<u8>,
    kind: Kind,
}

impl Outgoing {
    /// Any partition would do for a segment (every process reads all), so
    /// it is spread by its own bytes (topic and partition lead them). A
    /// producer-partition's points stay in one partition, in order, and so
    /// do a producer's transaction ends.
    fn spread(&self) -> u64 {
        let b = &self.bytes;
        let part = match self.kind {
            Kind::Point => {
                let klen = b
                    .get(0..2)
                    .map_or(0, |l| u16::from_be_bytes([l[0], l[1]]) as usize);
                &b[2.min(b.len())..(2 + klen).min(b.len())]
            }
            Kind::TxnEnd | Kind::TxnPart => &b[..b.len().min(8)],
            Kind::Segment => &b[8.min(b.len())..b.len().min(40)],
        };
        xxhash_rust::xxh3::xxh3_64(part)
    }
}

/// What the shared window works with.
pub struct Setup {
    pub settings: SharedWindow,
    /// `dedup.window`.
    pub window_len: Duration,
    pub upstream: Upstream,
    pub tls: Option<UpstreamTlsConnector>,
    pub window: Arc<Window>,
    /// The produce dedup's sequence state (`None`: produce dedup is off).
    pub sequences: Option<Arc<Sequences>>,
    /// The produce dedup's open transactions (`None`: produce dedup is off).
    pub transactions: Option<Arc<Transactions>>,
    pub metrics: Arc<Metrics>,
}

/// Hands the window's new segments to the log at once, and returns the
/// task that publishes them and tails the topic. When `shutdown` turns
/// true it publishes what is still queued (if the topic is reachable) and
/// ends.
pub fn start(
    setup: Setup,
    shutdown: watch::Receiver<bool>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let metrics = setup.metrics.clone();
    metrics.dedup.shared.enabled.store(true, Relaxed);
    let (tx, rx) = mpsc::channel::<Outgoing>(QUEUE);
    let queue = move |kind: Kind| {
        let (tx, metrics) = (tx.clone(), metrics.clone());
        move |bytes: Vec<u8>| {
            if tx.try_send(Outgoing { bytes, kind }).is_err() {
                metrics.dedup.shared.publish_failures.fetch_add(1, Relaxed);
            }
        }
    };
    setup.window.publish_to(Box::new(queue(Kind::Segment)));
    if let Some(transactions) = &setup.transactions {
        let (part, end) = (queue(Kind::TxnPart), queue(Kind::TxnEnd));
        transactions.share_with(Box::new(move |kind, bytes| match kind {
            Shared::Part => part(bytes),
            Shared::End => end(bytes),
        }));
    }
    let (catch_up_tx, catch_up_rx) = mpsc::channel::<oneshot::Sender<bool>>(1024);
    setup.window.catch_up_with(Box::new(move || {
        let asked = catch_up_tx.clone();
        Box::pin(async move {
            let (reply, answer) = oneshot::channel();
            // Full: too many waiting already; the caller goes on.
            asked.try_send(reply).is_ok() && answer.await.unwrap_or(false)
        })
    }));
    let (points_tx, points_rx) = mpsc::channel::<(Vec<u8>, oneshot::Sender<()>)>(1024);
    if let Some(sequences) = &setup.sequences {
        let (reach, stats) = (setup.metrics.clone(), setup.metrics.clone());
        let wait = setup.settings.catch_up_wait;
        sequences.share_with(PointLog {
            reachable: Box::new(move || reach.dedup.shared.connected.load(Relaxed)),
            publish: Box::new(move |point| {
                let (points, stats) = (points_tx.clone(), stats.clone());
                Box::pin(async move {
                    let (done, published) = oneshot::channel();
                    let confirmed = points.try_send((point, done)).is_ok()
                        && matches!(tokio::time::timeout(wait, published).await, Ok(Ok(())));
                    if !confirmed {
                        stats.dedup.shared.points_unconfirmed.fetch_add(1, Relaxed);
                    }
                    confirmed
                })
            }),
        });
    }
    let log = Log {
        setup,
        origin: rand_origin(),
        positions: Default::default(),
        advanced: Notify::new(),
    };
    log.run(
        Queues {
            segments: rx,
            points: points_rx,
            catch_ups: catch_up_rx,
        },
        shutdown,
    )
}

/// What the log task receives.
struct Queues {
    /// Segments and transaction ends.
    segments: mpsc::Receiver<Outgoing>,
    /// Sequence points, each with who waits for its acknowledgement.
    points: mpsc::Receiver<(Vec<u8>, oneshot::Sender<()>)>,
    catch_ups: mpsc::Receiver<oneshot::Sender<bool>>,
}

/// A number for this run of the process: its own records are skipped when
/// tailing (their keys are already here).
fn rand_origin() -> [u8; 8] {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mixed = xxhash_rust::xxh3::xxh3_64(
        &[
            nanos.to_be_bytes().as_slice(),
            &std::process::id().to_be_bytes(),
        ]
        .concat(),
    );
    mixed.to_be_bytes()
}

struct Log {
    setup: Setup,
    origin: [u8; 8],
    /// The next offset to read, per partition, once one was read this run.
    positions: std::sync::Mutex<HashMap<i32, i64>>,
    /// Woken whenever a tail moves on.
    advanced: Notify,
}

impl Log {
    fn stats(&self) -> &SharedWindowStats {
        &self.setup.metrics.dedup.shared
    }
}

impl Log {
    async fn run(self, mut queues: Queues, mut shutdown: watch::Receiver<bool>) {
        let this = Arc::new(self);
        let mut backoff = Duration::from_millis(200);
        // Segments whose publish failed: sent first once the topic is back.
        let mut carry = Vec::new();
        loop {
            let attempt = async {
                let client = this.connect().await?;
                this.stats().connected.store(true, Relaxed);
                backoff = Duration::from_millis(200);
                this.serve(&client, &mut queues, &mut carry, shutdown.clone())
                    .await
            };
            // Not raced against `shutdown`: serving ends by itself then,
            // after publishing the queue (the server bounds the wait).
            let outcome = attempt.await;
            this.stats().connected.store(false, Relaxed);
            if *shutdown.borrow() {
                return;
            }
            if let Err(e) = outcome {
                tracing::warn!(topic = %this.setup.settings.topic, error = %e, retry_in = ?backoff,
                    "shared window: topic unreachable; replays through other processes pass until it is back");
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }

    /// The client, with the topic created if missing.
    async fn connect(&self) -> Result<Client, String> {
        let settings = &self.setup.settings;
        let retention = (self.setup.window_len + settings.retention_margin).as_millis();
        let configs = [
            ("cleanup.policy", "delete".to_string()),
            ("retention.ms", retention.to_string()),
            // Kafka deletes whole closed segments only: without a roll time
            // a quiet partition would keep a week of keys (the brokers'
            // 7-day default), not the window.
            (
                "segment.ms",
                settings
                    .retention_margin
                    .as_millis()
                    .max(60_000)
                    .to_string(),
            ),
        ];
        let topic = crate::kafka_client::OwnTopic {
            client_id: "idemgate-shared-window",
            name: &settings.topic,
            partitions: settings.partitions,
            replication_factor: settings.replication_factor,
            configs: &configs,
        };
        crate::kafka_client::connect(
            &self.setup.upstream,
            self.setup.tls.as_ref(),
            settings.sasl.as_ref(),
            &topic,
        )
        .await
    }

    /// Publishes and tails until an error; a batch whose publish failed is
    /// left in `carry`, for the next connection.
    async fn serve(
        self: &Arc<Self>,
        client: &Client,
        queues: &mut Queues,
        carry: &mut Vec<Outgoing>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), String> {
        let topics = client.list_topics().await.map_err(|e| e.to_string())?;
        let partitions: Vec<i32> = topics
            .iter()
            .find(|t| t.name == self.setup.settings.topic)
            .map(|t| t.partitions.iter().copied().collect())
            .unwrap_or_default();
        if partitions.is_empty() {
            return Err(format!(
                "topic {} has no partitions",
                self.setup.settings.topic
            ));
        }
        let mut producers = HashMap::new();
        let mut tails = tokio::task::JoinSet::new();
        let caught_up = Arc::new(AtomicU64::new(0));
        for &p in &partitions {
            let client_for = |p| {
                client.partition_client(
                    self.setup.settings.topic.clone(),
                    p,
                    UnknownTopicHandling::Retry,
                )
            };
            producers.insert(p, Arc::new(client_for(p).await.map_err(|e| e.to_string())?));
            let tail = client_for(p).await.map_err(|e| e.to_string())?;
            let this = self.clone();
            let (caught_up, total) = (caught_up.clone(), partitions.len() as u64);
            tails.spawn(async move { this.tail(tail, caught_up, total).await });
        }
        let mut sorted: Vec<i32> = partitions.clone();
        sorted.sort_unstable();
        if !carry.is_empty() {
            self.publish(&producers, &sorted, carry).await?;
            carry.clear();
        }
        loop {
            tokio::select! {
                _ = async { shutdown.wait_for(|stop| *stop).await.map(drop) } => {
                    // What the drain acknowledged last, still queued.
                    while let Ok(s) = queues.segments.try_recv() {
                        carry.push(s);
                    }
                    let n = carry.len();
                    for chunk in carry.chunks(BATCH) {
                        self.publish(&producers, &sorted, chunk).await?;
                    }
                    carry.clear();
                    tracing::info!(segments = n, "shared window: queue published on shutdown");
                    return Ok(());
                }
                Some(reply) = queues.catch_ups.recv() => {
                    let this = self.clone();
                    let producers = producers.clone();
                    tokio::spawn(async move {
                        let _ = reply.send(this.catch_up(&producers).await);
                    });
                }
                Some(done) = tails.join_next() => {
                    return Err(match done {
                        Ok(Err(e)) => e,
                        Ok(Ok(())) => "a tail ended".into(),
                        Err(e) => format!("a tail panicked: {e}"),
                    });
                }
                // Before the segments: a produce waits for it.
                Some((point, done)) = queues.points.recv() => {
                    carry.push(Outgoing { bytes: point, kind: Kind::Point });
                    self.publish(&producers, &sorted, carry).await?;
                    carry.clear();
                    self.stats().points_published.fetch_add(1, Relaxed);
                    let _ = done.send(());
                }
                first = queues.segments.recv() => {
                    let Some(first) = first else { return Ok(()) };
                    carry.push(first);
                    while carry.len() < BATCH {
                        match queues.segments.try_recv() {
                            Ok(item) => carry.push(item),
                            Err(_) => break,
                        }
                    }
                    self.publish(&producers, &sorted, carry).await?;
                    carry.clear();
                }
            }
        }
    }

    /// One produce request per window partition. A failure ends this
    /// connection; the caller keeps the batch and sends it again on the next
    /// (a segment published twice is learned once).
    async fn publish(
        &self,
        producers: &HashMap<i32, Arc<PartitionClient>>,
        partitions: &[i32],
        batch: &[Outgoing],
    ) -> Result<(), String> {
        let mut by_partition: HashMap<i32, Vec<Record>> = HashMap::new();
        for item in batch {
            let p = partitions[(item.spread() % partitions.len() as u64) as usize];
            let mut headers = std::collections::BTreeMap::new();
            headers.insert(ORIGIN.to_string(), self.origin.to_vec());
            if let Some(kind) = item.kind.header() {
                headers.insert(KIND.to_string(), kind.to_vec());
            }
            by_partition.entry(p).or_default().push(Record {
                key: None,
                value: Some(item.bytes.clone()),
                headers,
                timestamp: chrono::Utc::now(),
            });
        }
        for (p, records) in by_partition {
            let n = records.len() as u64;
            let produce = producers[&p].produce(records, Compression::NoCompression);
            match tokio::time::timeout(self.setup.upstream.request_timeout, produce).await {
                Ok(Ok(_)) => {
                    self.stats().published.fetch_add(n, Relaxed);
                }
                failed => {
                    return Err(match failed {
                        Ok(Err(e)) => format!("publish: {e}"),
                        _ => "publish timed out".into(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Asks where every partition ends now, then waits until the tails
    /// have read that far. `false`: an end could not be asked.
    async fn catch_up(&self, producers: &HashMap<i32, Arc<PartitionClient>>) -> bool {
        let mut ends = Vec::with_capacity(producers.len());
        for (&p, client) in producers {
            match client.get_offset(OffsetAt::Latest).await {
                Ok(end) => ends.push((p, end)),
                Err(_) => return false,
            }
        }
        loop {
            let advanced = self.advanced.notified();
            tokio::pin!(advanced);
            advanced.as_mut().enable();
            let behind = {
                let positions = self.positions.lock().expect("positions lock");
                ends.iter()
                    .any(|(p, end)| positions.get(p).is_none_or(|at| at < end))
            };
            if !behind {
                return true;
            }
            advanced.await;
        }
    }

    /// Reads one partition from the first record younger than the window,
    /// for ever.
    async fn tail(
        &self,
        client: PartitionClient,
        caught_up: Arc<AtomicU64>,
        total: u64,
    ) -> Result<(), String> {
        let since = chrono::Utc::now()
            - chrono::Duration::from_std(self.setup.window_len)
                .unwrap_or(chrono::Duration::days(1));
        let end = client
            .get_offset(OffsetAt::Latest)
            .await
            .map_err(|e| e.to_string())?;
        let partition = client.partition();
        let resume = self
            .positions
            .lock()
            .expect("positions lock")
            .get(&partition)
            .copied();
        let mut offset = match resume {
            // Read before this start: on from there (not the whole window
            // again after every reconnect).
            Some(at) => at,
            None => match client.get_offset(OffsetAt::Timestamp(since)).await {
                Ok(at) if at >= 0 => at,
                // -1: no record that young, so nothing to read before the end.
                Ok(_) => end,
                Err(e) => return Err(e.to_string()),
            },
        };
        self.positions
            .lock()
            .expect("positions lock")
            .insert(partition, offset);
        self.advanced.notify_waiters();
        let mut counted = false;
        let mut count_once = |at: i64| {
            if !counted && at >= end {
                counted = true;
                if caught_up.fetch_add(1, Relaxed) + 1 >= total {
                    self.stats().caught_up.store(true, Relaxed);
                    tracing::info!(topic = %self.setup.settings.topic, keys = self.setup.window.len(),
                        "shared window: caught up with the topic");
                }
            }
        };
        count_once(offset);
        loop {
            let (records, _high) = match client.fetch_records(offset, 1..4 * 1024 * 1024, 500).await
            {
                Ok(read) => read,
                Err(e) => {
                    if matches!(
                        e,
                        rskafka::client::error::Error::ServerError {
                            protocol_error: rskafka::client::error::ProtocolError::OffsetOutOfRange,
                            ..
                        }
                    ) {
                        // Deleted by retention meanwhile: from the window's
                        // start again next time.
                        self.positions
                            .lock()
                            .expect("positions lock")
                            .remove(&partition);
                    }
                    return Err(e.to_string());
                }
            };
            let read = records.last().map(|r| r.offset + 1);
            for r in records {
                if r.record
                    .headers
                    .get(ORIGIN)
                    .is_some_and(|o| o.as_slice() == self.origin)
                {
                    continue;
                }
                let Some(value) = r.record.value else {
                    continue;
                };
                match Kind::of(r.record.headers.get(KIND).map(Vec::as_slice)) {
                    Some(Kind::Segment) => {}
                    Some(Kind::Point) => {
                        self.learn_point(&value).await;
                        continue;
                    }
                    Some(Kind::TxnEnd) => {
                        self.learn_txn_end(&value);
                        continue;
                    }
                    Some(Kind::TxnPart) => {
                        if let (Some(txns), Some((part, base))) =
                            (&self.setup.transactions, decode_part(&value))
                        {
                            txns.produced_elsewhere(&part, base);
                        }
                        continue;
                    }
                    None => continue,
                }
                self.stats().segments_read.fetch_add(1, Relaxed);
                match self.setup.window.learn_encoded(&value) {
                    Ok(Some((added, acked_ms))) => {
                        self.stats().keys_learned.fetch_add(added as u64, Relaxed);
                        let now = chrono::Utc::now().timestamp_millis();
                        self.stats().lag_ms.store(now - acked_ms as i64, Relaxed);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "shared window: a segment was not learned")
                    }
                }
            }
            if let Some(next) = read {
                offset = next;
                self.positions
                    .lock()
                    .expect("positions lock")
                    .insert(partition, offset);
                self.advanced.notify_waiters();
            }
            count_once(offset);
        }
    }

    /// A peer saw a v2 transaction end: what this process holds of it is
    /// learned or forgotten.
    fn learn_txn_end(&self, value: &[u8]) {
        let (Some(transactions), Some((producer, committed))) =
            (&self.setup.transactions, decode_end(value))
        else {
            return;
        };
        let learned = transactions.ended_elsewhere(producer, committed);
        // Keys learned from a peer, as its segments' would have been.
        self.stats().keys_learned.fetch_add(learned as u64, Relaxed);
        if learned > 0 {
            tracing::debug!(
                producer_id = producer.0,
                keys = learned,
                "shared window: a transaction that ended through a peer taught its keys"
            );
        }
    }

    /// Folds a peer's sequence point into this process's state.
    async fn learn_point(&self, value: &[u8]) {
        let Some(sequences) = &self.setup.sequences else {
            return;
        };
        let Some((key, point)) = decode_shared(value) else {
            tracing::warn!("shared window: an unreadable sequence point was skipped");
            return;
        };
        match sequences.learn(&key, point).await {
            Ok(true) => {
                self.stats().points_learned.fetch_add(1, Relaxed);
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, producer_id = key.producer_id, topic = %key.topic,
                partition = key.partition, "shared window: a sequence point was not stored"),
        }
    }
}
