//! Produce-path dedup end to end: a real tansu broker (or librdkafka's mock
//! cluster), the proxy in-process, real librdkafka producers playing Kafka
//! Connect source tasks that crash and replay. What lands in the log is read
//! straight from the broker, never through the proxy, and counted exactly.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::support;
use crate::support::{client_config, create_topic, http_get, Proxy, ProxyProcess, Tansu};
use idemgate::config::Config;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, FutureProducer, FutureRecord, Producer};
use rdkafka::topic_partition_list::Offset;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

const HEADER: &str = "idempotency-key";

/// One `[[dedup.rules]]` for every topic; `mode = "drop"` unless `rule`
/// names a mode (a rule without one only observes).
fn dedup_toml(rule: &str) -> String {
    let mode = if rule.contains("mode =") {
        ""
    } else {
        "mode = \"drop\"\n"
    };
    format!("[dedup]\n[[dedup.rules]]\ntopics = \"*\"\n{mode}{rule}\n")
}

/// A tansu broker and the proxy in front of it with [`dedup_toml`]`(rule)`.
async fn tansu_proxy(rule: &str) -> (Tansu, Proxy) {
    let broker = Tansu::start();
    let proxy = Proxy::start_with(&broker.addr, &dedup_toml(rule)).await;
    (broker, proxy)
}

/// librdkafka's mock cluster (one broker) holding `topic`, and the proxy in
/// front of it dropping replays by content.
async fn mock_proxy(
    topic: &str,
    partitions: i32,
) -> (MockCluster<'static, DefaultProducerContext>, Proxy) {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic(topic, partitions, 1).unwrap();
    let proxy =
        Proxy::start_with(&mock.bootstrap_servers(), &dedup_toml("key = \"content\"")).await;
    (mock, proxy)
}

// === Clients ===

/// A Connect source task's producer: acks=all, one request in flight, not
/// idempotent (Connect's defaults before exactly-once support), plus `extra`.
fn task_producer(bootstrap: &str, client_id: &str, extra: &[(&str, &str)]) -> FutureProducer {
    let mut config = client_config(bootstrap);
    config
        .set("client.id", client_id)
        .set("acks", "all")
        .set("max.in.flight.requests.per.connection", "1")
        .set("enable.idempotence", "false")
        .set("linger.ms", "5")
        .set("retry.backoff.ms", "50");
    for (k, v) in extra {
        config.set(*k, *v);
    }
    config.create().unwrap()
}

/// A logical record: its key (`None`: a null key) and value.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rec {
    key: Option<String>,
    value: String,
}

/// Record `i` of a source: key `k-0042`, value `v-0042-<tag>`.
fn rec(i: usize, tag: &str) -> Rec {
    Rec {
        key: Some(format!("k-{i:04}")),
        value: format!("v-{i:04}-{tag}"),
    }
}

fn recs(range: std::ops::Range<usize>, tag: &str) -> Vec<Rec> {
    range.map(|i| rec(i, tag)).collect()
}

/// Enqueues every record at once (`send_result`), then waits for every
/// delivery report: `Ok((partition, offset))` or the error text.
async fn send(
    producer: &FutureProducer,
    topic: &str,
    records: &[Rec],
) -> Vec<Result<(i32, i64), String>> {
    let mut pending = Vec::with_capacity(records.len());
    for r in records {
        let record = match &r.key {
            Some(k) => FutureRecord::to(topic)
                .key(k.as_str())
                .payload(r.value.as_str()),
            None => FutureRecord::<str, str>::to(topic).payload(r.value.as_str()),
        };
        let delivery = producer.send_result(record).map_err(|(e, _)| e).unwrap();
        pending.push(delivery);
    }
    let mut out = Vec::with_capacity(records.len());
    for delivery in pending {
        out.push(match delivery.await.expect("delivery future") {
            Ok(d) => Ok((d.partition, d.offset)),
            Err((e, _)) => Err(e.to_string()),
        });
    }
    producer.flush(Duration::from_secs(10)).unwrap();
    out
}

/// [`send`], asserting every delivery succeeded.
/// Every delivery report of `who` (a [`send`]) is a success.
fn assert_delivered(who: &str, reports: &[Result<(i32, i64), String>]) {
    let failed: Vec<_> = reports.iter().filter(|r| r.is_err()).collect();
    assert!(
        failed.is_empty(),
        "{who}: {} deliveries failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
}

async fn send_ok(producer: &FutureProducer, topic: &str, records: &[Rec]) -> Vec<(i32, i64)> {
    send(producer, topic, records)
        .await
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            r.unwrap_or_else(|e| panic!("record {i} ({:?}): delivery failed: {e}", records[i]))
        })
        .collect()
}

/// One record as the broker holds it.
#[derive(Debug, Clone)]
struct Consumed {
    partition: i32,
    offset: i64,
    key: Option<String>,
    value: String,
    headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Consumed {
    /// Every value of the tag header.
    fn tags(&self) -> Vec<Option<&[u8]>> {
        self.headers
            .iter()
            .filter(|(k, _)| k == HEADER)
            .map(|(_, v)| v.as_deref())
            .collect()
    }

    /// The one tag header's value, checked to be 32 lowercase hex digits.
    fn tag(&self) -> String {
        let tags = self.tags();
        assert_eq!(
            tags.len(),
            1,
            "{}@{}/{} must carry exactly one {HEADER} header: {:?}",
            self.value,
            self.partition,
            self.offset,
            self.headers
        );
        let value = tags[0].expect("tag header has a value");
        let text = std::str::from_utf8(value).expect("tag is text").to_string();
        assert!(
            text.len() == 32
                && text
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "tag {text:?} is not 32 lowercase hex digits"
        );
        text
    }
}

/// The key of the end markers [`end_markers`] writes; no test record has it.
const END: &str = "end";

/// Writes one end marker to each of `partitions` partitions of `topic`,
/// straight to `broker` (never through a proxy, so no proxy metric counts
/// it), and returns the markers' value. Every record acknowledged before is
/// at a lower offset in its partition, so a reader that reached every
/// marker has read all of them: exact, where a quiet interval is not, and
/// where tansu's high watermark is not (TESTBED.md).
async fn end_markers(broker: &str, topic: &str, partitions: i32) -> String {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let value = format!(
        "end-{}",
        NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    );
    let producer: FutureProducer = client_config(broker)
        .set("message.timeout.ms", "60000")
        .create()
        .unwrap();
    for p in 0..partitions {
        producer
            .send(
                FutureRecord::to(topic)
                    .partition(p)
                    .key(END)
                    .payload(value.as_str()),
                Duration::from_secs(60),
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("end marker for {topic}/{p}: {e}"));
    }
    value
}

/// Everything `topic` holds, read straight from `broker` from the beginning
/// of each partition, without a group (assign), up to fresh end markers.
async fn consume_all(broker: &str, topic: &str, partitions: i32) -> Vec<Consumed> {
    consume_via(broker, broker, topic, partitions).await
}

/// [`consume_all`], reading through `bootstrap` (a proxy) while the markers
/// go straight to `broker`.
async fn consume_via(bootstrap: &str, broker: &str, topic: &str, partitions: i32) -> Vec<Consumed> {
    let marker = end_markers(broker, topic, partitions).await;
    let (bootstrap, topic) = (bootstrap.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        let consumer = assign_from_start(&bootstrap, &topic, partitions);
        poll_rows(&consumer, &marker, partitions)
    })
    .await
    .unwrap()
}

/// A consumer without a group (assign) on every partition of `topic`, from
/// the beginning.
fn assign_from_start(bootstrap: &str, topic: &str, partitions: i32) -> BaseConsumer {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "unused-assign-only")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000");
    support::assign_all(&config, topic, partitions, Offset::Beginning)
}

/// How many copies of each logical record the log holds.
fn copies(rows: &[Consumed]) -> BTreeMap<(Option<String>, String), usize> {
    let mut m = BTreeMap::new();
    for r in rows {
        *m.entry((r.key.clone(), r.value.clone())).or_insert(0) += 1;
    }
    m
}

/// Every record of `expected` is in the log exactly once, and nothing else is.
fn assert_exactly_once(rows: &[Consumed], expected: &[Rec]) {
    let counts = copies(rows);
    let dups: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        dups.is_empty(),
        "{} records in the log more than once (first: {:?})",
        dups.len(),
        dups.iter().take(5).collect::<Vec<_>>()
    );
    let want: BTreeSet<(Option<String>, String)> = expected
        .iter()
        .map(|r| (r.key.clone(), r.value.clone()))
        .collect();
    let have: BTreeSet<(Option<String>, String)> = counts.keys().cloned().collect();
    let missing: Vec<_> = want.difference(&have).take(5).collect();
    let extra: Vec<_> = have.difference(&want).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, unexpected {extra:?}"
    );
    assert_eq!(rows.len(), expected.len());
}

/// Within each partition, the records appear in the order they were first
/// sent (`order` gives a record's position in the sending order).
fn assert_send_order_per_partition(rows: &[Consumed], order: impl Fn(&Consumed) -> usize) {
    let mut last: BTreeMap<i32, (i64, usize)> = BTreeMap::new();
    for r in rows {
        let pos = order(r);
        if let Some((prev_offset, prev)) = last.insert(r.partition, (r.offset, pos)) {
            assert!(
                r.offset > prev_offset,
                "partition {}: offset {} after {prev_offset}",
                r.partition,
                r.offset
            );
            assert!(
                pos > prev,
                "partition {}: {} (sent #{pos}) at offset {} after sent #{prev}",
                r.partition,
                r.value,
                r.offset
            );
        }
    }
}

/// `v-0042-…` → 42.
fn index_of(value: &str) -> usize {
    value[2..6].parse().unwrap()
}

// === The proxy's view ===

fn series(name: &str, connector: &str, topic: &str) -> String {
    format!("{name}{{connector=\"{connector}\",topic=\"{topic}\",direction=\"produce\"}}")
}

/// (records, dropped, observed) for one connector and topic.
async fn dedup_counts(admin: SocketAddr, connector: &str, topic: &str) -> (f64, f64, f64) {
    let text = metrics(admin).await;
    (
        support::metric_value(&text, &series("idemgate_records_total", connector, topic)),
        support::metric_value(
            &text,
            &series("idemgate_duplicates_dropped_total", connector, topic),
        ),
        support::metric_value(
            &text,
            &series("idemgate_duplicates_observed_total", connector, topic),
        ),
    )
}

async fn metrics(admin: SocketAddr) -> String {
    let (status, body) = http_get(admin, "/metrics").await;
    assert_eq!(status, 200);
    body
}

/// `idemgate_dedup_fail_open_total` by reason.
async fn fail_open(admin: SocketAddr) -> BTreeMap<String, f64> {
    metrics(admin)
        .await
        .lines()
        .filter_map(|l| l.strip_prefix("idemgate_dedup_fail_open_total{reason=\""))
        .map(|rest| {
            let (reason, value) = rest.split_once("\"} ").unwrap();
            (reason.to_string(), value.trim().parse().unwrap())
        })
        .collect()
}

async fn fail_open_total(admin: SocketAddr) -> f64 {
    fail_open(admin).await.values().sum()
}

/// Nothing was forwarded unchecked.
async fn assert_no_fail_open(admin: SocketAddr) {
    let by_reason = fail_open(admin).await;
    assert_eq!(by_reason.values().sum::<f64>(), 0.0, "{by_reason:?}");
}

/// [`dedup_counts`] are `want`, and nothing was forwarded unchecked.
async fn assert_counts(admin: SocketAddr, connector: &str, topic: &str, want: (f64, f64, f64)) {
    assert_eq!(
        dedup_counts(admin, connector, topic).await,
        want,
        "(records, dropped, observed)"
    );
    assert_no_fail_open(admin).await;
}

async fn json(admin: SocketAddr, path: &str) -> serde_json::Value {
    let (status, body) = http_get(admin, path).await;
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

/// `/connectors`' entry for one connector.
async fn connector_json(admin: SocketAddr, connector: &str) -> serde_json::Value {
    let all = json(admin, "/connectors").await;
    all.as_array()
        .expect("an array")
        .iter()
        .find(|c| c["connector"] == connector)
        .unwrap_or_else(|| panic!("{connector} not in /connectors: {all}"))
        .clone()
}

/// Waits (up to 10 s) for a gauge to reach exactly `want`; returns its value.
async fn wait_gauge(admin: SocketAddr, name: &str, want: f64) -> f64 {
    let start = Instant::now();
    loop {
        let v = support::metric_value(&metrics(admin).await, name);
        if v == want || start.elapsed() > Duration::from_secs(10) {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A Connect source task that crashes and replays: `first` records from a
/// first producer instance, then a second instance (same client id) replays
/// the last `replayed` and continues with `new` more. Returns the records
/// sent (in order, without the replays) and the delivery reports of both
/// instances.
struct Replay {
    originals: Vec<Rec>,
    first_delivered: Vec<(i32, i64)>,
    second_sent: Vec<Rec>,
    second_delivered: Vec<(i32, i64)>,
}

/// [`Replay`] of a source task of `connector` (client id
/// `connector-producer-{connector}-0`).
async fn crash_and_replay(
    bootstrap: &str,
    topic: &str,
    connector: &str,
    (first, replayed, new): (usize, usize, usize),
    extra: &[(&str, &str)],
) -> Replay {
    let client_id = &format!("connector-producer-{connector}-0");
    let originals = recs(0..first + new, "orig");
    let producer = task_producer(bootstrap, client_id, extra);
    let first_delivered = send_ok(&producer, topic, &originals[..first]).await;
    drop(producer); // the crash: offsets of the last `replayed` were never committed
    let second_sent: Vec<Rec> = originals[first - replayed..].to_vec();
    let producer = task_producer(bootstrap, client_id, extra);
    let second_delivered = send_ok(&producer, topic, &second_sent).await;
    drop(producer);
    Replay {
        originals,
        first_delivered,
        second_sent,
        second_delivered,
    }
}

/// The log after a drop-mode crash-and-replay: every record once, tagged,
/// in order, where the delivery reports said.
fn check_replay_log(rows: &[Consumed], replay: &Replay) -> BTreeMap<usize, Consumed> {
    assert_exactly_once(rows, &replay.originals);
    assert_send_order_per_partition(rows, |r| index_of(&r.value));
    let by_index: BTreeMap<usize, Consumed> = rows
        .iter()
        .map(|r| (index_of(&r.value), r.clone()))
        .collect();
    let tags: BTreeSet<String> = rows.iter().map(Consumed::tag).collect();
    assert_eq!(tags.len(), rows.len(), "every record has its own key");
    // The first instance's reports name where each record is.
    for (i, &(p, o)) in replay.first_delivered.iter().enumerate() {
        let c = &by_index[&i];
        assert_eq!(
            (p, o),
            (c.partition, c.offset),
            "first instance's report for record {i}"
        );
    }
    // The second instance's reports name the right partition (their offsets:
    // `delivery_reports_after_a_replay_name_the_right_offsets`).
    let first = replay.originals.len() - replay.second_sent.len();
    for (j, &(p, _)) in replay.second_delivered.iter().enumerate() {
        let c = &by_index[&(first + j)];
        assert_eq!(
            p,
            c.partition,
            "second instance's partition for record {}",
            first + j
        );
    }
    by_index
}

// === Tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_after_crash_is_dropped() {
    let (broker, proxy) = tansu_proxy("key = \"content\"").await;
    let topic = "orders-replay";
    create_topic(&proxy.bootstrap, topic, 3).await;

    let replay = crash_and_replay(&proxy.bootstrap, topic, "orders", (500, 200, 100), &[]).await;
    let rows = consume_all(&broker.addr, topic, 3).await;
    let by_index = check_replay_log(&rows, &replay);
    let partitions: BTreeSet<i32> = rows.iter().map(|r| r.partition).collect();
    assert_eq!(partitions.len(), 3, "keys spread over all 3 partitions");

    assert_counts(proxy.admin, "orders", topic, (800.0, 200.0, 0.0)).await;
    assert_eq!(
        wait_gauge(proxy.admin, "idemgate_window_keys", 600.0).await,
        600.0
    );

    let c = connector_json(proxy.admin, "orders").await;
    assert_eq!(c["records_dropped"], 200, "{c}");
    assert_eq!(c["largest_replay"], 200, "{c}");
    assert_eq!(c["sessions_with_replays"], 1, "{c}");
    assert!(c["producer_sessions"].as_u64().unwrap() >= 2, "{c}");
    let t = c["topics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["topic"] == topic)
        .unwrap_or_else(|| panic!("{topic} not in {c}"));
    assert_eq!(
        (&t["records"], &t["dropped"], &t["observed"]),
        (&800.into(), &200.into(), &0.into()),
        "{t}"
    );

    // The window knows where each key landed: one never replayed, one replayed.
    for i in [42, 450] {
        let r = &by_index[&i];
        let found = json(
            proxy.admin,
            &format!("/window/lookup?topic={topic}&key={}", r.tag()),
        )
        .await;
        assert_eq!(found["seen"], true, "{found}");
        assert_eq!(
            (&found["partition"], &found["offset"]),
            (&r.partition.into(), &r.offset.into()),
            "{found}"
        );
    }
    let unknown = json(
        proxy.admin,
        &format!("/window/lookup?topic={topic}&key={}", "0".repeat(32)),
    )
    .await;
    assert_eq!(unknown["seen"], false, "{unknown}");
    let other_topic = json(
        proxy.admin,
        &format!("/window/lookup?topic=elsewhere&key={}", by_index[&42].tag()),
    )
    .await;
    assert_eq!(
        other_topic["seen"], false,
        "keys are per topic: {other_topic}"
    );
    proxy.assert_no_leaks().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_reports_after_a_replay_name_the_right_offsets() {
    let (broker, proxy) = tansu_proxy("key = \"content\"").await;
    let topic = "reports";
    create_topic(&proxy.bootstrap, topic, 3).await;
    let replay = crash_and_replay(&proxy.bootstrap, topic, "reports", (300, 100, 50), &[]).await;
    let rows = consume_all(&broker.addr, topic, 3).await;
    let by_index = check_replay_log(&rows, &replay);
    // What the restarted task's producer is told: where each record (its
    // first copy, for a replay) is, or -1 (no valid offset) -- never the
    // offset of some other record.
    let first = replay.originals.len() - replay.second_sent.len();
    let (mut exact, mut unknown, mut wrong) = (0, 0, Vec::new());
    for (j, &(p, o)) in replay.second_delivered.iter().enumerate() {
        let c = &by_index[&(first + j)];
        if o == c.offset {
            exact += 1;
        } else if o == -1 {
            unknown += 1;
        } else {
            wrong.push(format!(
                "record {} reported at {p}/{o}, is at {}/{}",
                first + j,
                c.partition,
                c.offset
            ));
        }
    }
    println!(
        "second instance's reports: {exact} exact, {unknown} -1, {} wrong",
        wrong.len()
    );
    assert!(
        wrong.is_empty(),
        "{} of {} delivery reports name another record's offset: {:?}",
        wrong.len(),
        replay.second_delivered.len(),
        &wrong[..wrong.len().min(5)]
    );
    // Keyed records replay into the partitions of their first copies, in
    // order, right after them: one base offset numbers every record of each
    // batch truly, so every report is exact, the replays' too (-1 is only
    // for a record no offset can be given to).
    assert_eq!(
        (exact, unknown),
        (replay.second_delivered.len(), 0),
        "every report exact"
    );
    proxy.assert_no_leaks().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_after_crash_is_dropped_with_every_codec() {
    let (broker, proxy) = tansu_proxy("key = \"content\"").await;
    // zstd: `replay_is_dropped_in_zstd_batches` (the vendored librdkafka
    // here is built without libzstd).
    for codec in ["gzip", "snappy", "lz4"] {
        let topic = format!("codec-{codec}");
        create_topic(&proxy.bootstrap, &topic, 3).await;
        let replay = crash_and_replay(
            &proxy.bootstrap,
            &topic,
            &format!("codec-{codec}"),
            (200, 80, 40),
            &[("compression.type", codec)],
        )
        .await;
        let rows = consume_all(&broker.addr, &topic, 3).await;
        check_replay_log(&rows, &replay);
        assert_eq!(
            dedup_counts(proxy.admin, &format!("codec-{codec}"), &topic).await,
            (320.0, 80.0, 0.0),
            "{codec}: (records, dropped, observed)"
        );
        assert_eq!(
            fail_open_total(proxy.admin).await,
            0.0,
            "{codec}: {:?}",
            fail_open(proxy.admin).await
        );
    }
    proxy.assert_no_leaks().await;
}

/// A Produce v9 request (acks=all) of one zstd batch for partition 0,
/// from a Connect task's client id.
fn zstd_produce(topic: &str, correlation_id: i32, records: &[Rec]) -> bytes::Bytes {
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{ApiKey, ProduceRequest, RequestHeader};
    use kafka_protocol::protocol::{Encodable, StrBytes};
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };
    let records: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, r)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // kafka-protocol starts a new batch where offset - sequence
            // changes; the batch's base sequence is the first record's: -1.
            sequence: i as i32 - 1,
            timestamp: 1_700_000_000_000 + correlation_id as i64,
            key: r.key.clone().map(bytes::Bytes::from),
            value: Some(bytes::Bytes::from(r.value.clone())),
            headers: Default::default(),
        })
        .collect();
    let mut batch = bytes::BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression: Compression::Zstd,
    };
    RecordBatchEncoder::encode(&mut batch, &records, &options).unwrap();
    let partition = PartitionProduceData::default()
        .with_index(0)
        .with_records(Some(batch.freeze()));
    let req = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(StrBytes::from_string(topic.to_string()).into())
            .with_partition_data(vec![partition])]);
    let header = RequestHeader::default()
        .with_request_api_key(ApiKey::Produce as i16)
        .with_request_api_version(9)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str(
            "connector-producer-codec-zstd-0",
        )));
    let mut b = bytes::BytesMut::new();
    header
        .encode(&mut b, ApiKey::Produce.request_header_version(9))
        .unwrap();
    req.encode(&mut b, 9).unwrap();
    b.freeze()
}

/// Every record batch of partition 0, read straight from the broker with
/// Fetch v11: (codec, offset, key, value, headers) per record.
type RawRow = (
    kafka_protocol::records::Compression,
    i64,
    Option<String>,
    String,
    Vec<(String, Option<Vec<u8>>)>,
);

/// Every record of partition 0 of `topic`, fetched through `via` with raw
/// Fetch v11 requests up to a fresh end marker written to `broker`.
async fn fetch_all_raw(via: &str, broker: &str, topic: &str) -> Vec<RawRow> {
    use kafka_protocol::messages::{ApiKey, FetchResponse};
    use kafka_protocol::records::RecordBatchDecoder;
    let marker = end_markers(broker, topic, 1).await;
    let mut conn = support::RawConn::connect(via).await;
    let mut rows: Vec<RawRow> = Vec::new();
    let mut next = 0i64;
    let mut correlation_id = 1;
    let start = Instant::now();
    let mut ended = false;
    while !ended {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "end marker {marker} not read after 120 s ({} rows)",
            rows.len()
        );
        let req = support::fetch_from(topic, 0, next, 200);
        let resp: FetchResponse = conn.call(ApiKey::Fetch, 11, correlation_id, &req).await;
        correlation_id += 1;
        let p = &resp.responses[0].partitions[0];
        assert_eq!(p.error_code, 0, "fetch error");
        let mut bytes = p.records.clone().unwrap_or_default();
        while bytes.len() >= 61 {
            let Ok(set) = RecordBatchDecoder::decode(&mut bytes) else {
                break; // a partial batch at the end of the response
            };
            for r in set.records {
                if r.offset >= next && r.control {
                    // Skipped, as every consumer skips control records
                    // (a batch the proxy emptied is one COMMIT marker).
                    next = r.offset + 1;
                } else if r.offset >= next {
                    next = r.offset + 1;
                    let value = String::from_utf8(r.value.unwrap_or_default().to_vec()).unwrap();
                    let key = r.key.map(|k| String::from_utf8(k.to_vec()).unwrap());
                    if key.as_deref() == Some(END) {
                        ended |= value == marker;
                        continue;
                    }
                    let headers = r
                        .headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.as_ref().map(|v| v.to_vec())))
                        .collect();
                    rows.push((set.compression, r.offset, key, value, headers));
                }
            }
        }
    }
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_is_dropped_in_zstd_batches() {
    use kafka_protocol::messages::{ApiKey, ProduceResponse};
    let (broker, proxy) = tansu_proxy("key = \"content\"").await;
    let topic = "codec-zstd";
    create_topic(&proxy.bootstrap, topic, 1).await;
    let originals = recs(0..240, "orig");
    // The first instance writes 200 records; after its crash, the second
    // replays the last 80 and continues with 40 new, each in one zstd batch.
    for (correlation_id, records) in [(1, &originals[..200]), (2, &originals[120..])] {
        let mut conn = support::RawConn::connect(&proxy.bootstrap).await;
        conn.send_frame(&zstd_produce(topic, correlation_id, records))
            .await;
        let frame = conn.recv_frame().await.expect("a Produce response");
        let resp: ProduceResponse =
            support::decode_response_frame(ApiKey::Produce, 9, correlation_id, frame);
        let p = &resp.responses[0].partition_responses[0];
        assert_eq!(p.error_code, 0, "request {correlation_id}: {p:?}");
    }
    let rows = fetch_all_raw(&broker.addr, &broker.addr, topic).await;
    let consumed: Vec<Consumed> = rows
        .iter()
        .map(|(_, offset, key, value, headers)| Consumed {
            partition: 0,
            offset: *offset,
            key: key.clone(),
            value: value.clone(),
            headers: headers.clone(),
        })
        .collect();
    assert_exactly_once(&consumed, &originals);
    assert_send_order_per_partition(&consumed, |r| index_of(&r.value));
    let tags: BTreeSet<String> = consumed.iter().map(Consumed::tag).collect();
    assert_eq!(tags.len(), 240);
    for (codec, offset, ..) in &rows {
        assert_eq!(
            *codec,
            kafka_protocol::records::Compression::Zstd,
            "offset {offset}: the rewritten batch keeps its codec"
        );
    }
    assert_counts(proxy.admin, "codec-zstd", topic, (320.0, 80.0, 0.0)).await;
    proxy.assert_no_leaks().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_mode_forwards_everything_and_counts() {
    let (broker, proxy) = tansu_proxy("key = \"content\"\nmode = \"observe\"").await;
    let topic = "observed";
    create_topic(&proxy.bootstrap, topic, 3).await;
    let replay = crash_and_replay(&proxy.bootstrap, topic, "watch", (300, 100, 0), &[]).await;
    let rows = consume_all(&broker.addr, topic, 3).await;
    assert_eq!(rows.len(), 400, "every replay forwarded");
    let counts = copies(&rows);
    assert_eq!(counts.len(), 300);
    for (i, r) in replay.originals.iter().enumerate() {
        let n = counts[&(r.key.clone(), r.value.clone())];
        assert_eq!(n, if i >= 200 { 2 } else { 1 }, "copies of record {i}");
    }
    // Both copies carry the same key: a sink can upsert on it.
    let mut tags: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
    for r in &rows {
        tags.entry(index_of(&r.value)).or_default().insert(r.tag());
    }
    assert!(
        tags.values().all(|t| t.len() == 1),
        "one key per logical record"
    );
    let distinct: BTreeSet<&String> = tags.values().flatten().collect();
    assert_eq!(distinct.len(), 300);
    // The second instance's reports are the broker's own: offsets of the copies.
    let by_pos: BTreeSet<(i32, i64)> = rows.iter().map(|r| (r.partition, r.offset)).collect();
    for d in &replay.second_delivered {
        assert!(by_pos.contains(d), "report {d:?} names a record in the log");
    }

    assert_counts(proxy.admin, "watch", topic, (400.0, 0.0, 100.0)).await;
    proxy.assert_no_leaks().await;
}

/// Connect's exactly-once source tasks write in transactions: those records
/// pass byte for byte, and their keys count only once the transaction
/// commits. A later non-transactional replay of committed records is
/// dropped; a replay of aborted ones is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_transactions_teach_the_window_aborted_ones_do_not() {
    let (broker, proxy) = tansu_proxy("key = \"content\"").await;
    let topic = "txn-orders";
    create_topic(&proxy.bootstrap, topic, 3).await;

    let txn = task_producer(
        &proxy.bootstrap,
        "connector-producer-eos-0",
        &[
            ("enable.idempotence", "true"),
            ("max.in.flight.requests.per.connection", "5"),
            ("transactional.id", "connect-cluster-eos-0"),
        ],
    );
    let blocking = Duration::from_secs(30);
    txn.init_transactions(blocking).unwrap();
    let committed = recs(0..50, "txn");
    txn.begin_transaction().unwrap();
    send_ok(&txn, topic, &committed).await;
    txn.commit_transaction(blocking).unwrap();
    let aborted = recs(50..80, "txn");
    txn.begin_transaction().unwrap();
    send_ok(&txn, topic, &aborted).await;
    txn.abort_transaction(blocking).unwrap();
    drop(txn);

    let metrics_text = metrics(proxy.admin).await;
    let value = |series: &str| support::metric_value(&metrics_text, series);
    assert_eq!(
        value("idemgate_transactions_total{outcome=\"committed\"}"),
        1.0
    );
    assert_eq!(
        value("idemgate_transactions_total{outcome=\"aborted\"}"),
        1.0
    );
    assert_eq!(value("idemgate_transaction_keys_learned_total"), 50.0);
    assert_eq!(value("idemgate_transactional_records_total"), 80.0);

    // The task falls back to plain at-least-once and replays everything:
    // the committed records first, then the aborted ones and new ones.
    // (librdkafka numbers a batch from one base offset; a replayed prefix
    // is cut on the bet that the rest lands right after its first copies,
    // which after a transaction's markers it never does: README,
    // "unnumbered".)
    let plain = task_producer(&proxy.bootstrap, "connector-producer-eos-0", &[]);
    let mut replay = committed.clone();
    send_ok(&plain, topic, &replay).await;
    let mut rest = aborted.clone();
    rest.extend(recs(80..100, "txn"));
    send_ok(&plain, topic, &rest).await;
    replay.extend(rest);

    // tansu shows aborted records to every consumer (no aborted-transactions
    // list, ../shared/TESTBED.md): the aborted copies are in the log too.
    let rows = consume_all(&broker.addr, topic, 3).await;
    let counts = copies(&rows);
    for (i, r) in replay.iter().enumerate() {
        let want = if (50..80).contains(&i) { 2 } else { 1 };
        assert_eq!(
            counts.get(&(r.key.clone(), r.value.clone())),
            Some(&want),
            "copies of record {i}"
        );
    }
    assert_eq!(rows.len(), 130);
    // Transactional copies carry no tag (byte for byte); each plain copy
    // written carries one: none for 0..50 (dropped), one for 50..100.
    let mut tags = BTreeMap::new();
    for r in &rows {
        *tags.entry(index_of(&r.value)).or_insert(0) += r.tags().len();
    }
    for (i, n) in tags {
        assert_eq!(n, usize::from(i >= 50), "tags on the copies of record {i}");
    }
    assert_eq!(
        dedup_counts(proxy.admin, "eos", topic).await,
        (100.0, 50.0, 0.0),
        "(records, dropped, observed) of the plain replay"
    );
    assert_no_fail_open(proxy.admin).await;
    proxy.assert_no_leaks().await;
}

/// A topic deleted and created again must not see its new records dropped
/// as replays of the old ones: `POST /window/purge?topic=T` forgets T's keys
/// (allowed without a token on the default loopback admin listener), and
/// only T's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purging_a_topic_forgets_its_keys_only() {
    let (broker, proxy) = tansu_proxy("key = \"content\"").await;
    let (purged, kept) = ("recreated", "untouched");
    for topic in [purged, kept] {
        create_topic(&proxy.bootstrap, topic, 3).await;
        let producer = task_producer(&proxy.bootstrap, "connector-producer-purge-0", &[]);
        send_ok(&producer, topic, &recs(0..40, "p")).await;
    }
    assert_eq!(
        wait_gauge(proxy.admin, "idemgate_window_keys", 80.0).await,
        80.0
    );

    let (status, body) = support::http_call(
        proxy.admin,
        "POST",
        &format!("/window/purge?topic={purged}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["keys_forgotten"], 40, "{body}");
    assert_eq!(
        wait_gauge(proxy.admin, "idemgate_window_keys", 40.0).await,
        40.0
    );
    let (status, body) = support::http_call(proxy.admin, "POST", "/window/purge", None).await;
    assert_eq!(status, 400, "{body}");

    // The same records again: written to the purged topic, dropped on the other.
    for topic in [purged, kept] {
        let producer = task_producer(&proxy.bootstrap, "connector-producer-purge-1", &[]);
        send_ok(&producer, topic, &recs(0..40, "p")).await;
    }
    assert_eq!(consume_all(&broker.addr, purged, 3).await.len(), 80);
    assert_eq!(consume_all(&broker.addr, kept, 3).await.len(), 40);
    assert_eq!(dedup_counts(proxy.admin, "purge", purged).await.1, 0.0);
    assert_eq!(dedup_counts(proxy.admin, "purge", kept).await.1, 40.0);
    proxy.assert_no_leaks().await;
}

/// The zombie (the old instance, still running) and its successor send the
/// same records, batched differently, while the zombie's first request is
/// held at the broker: the successor's copies of it meet keys in flight
/// (pending) and wait for them, never forwarded beside them. Every record
/// lands once.
///
/// One partition, so that the successor's first request necessarily carries
/// the zombie's held first batch (`k-0000`..): with three, each client's
/// first request could be for a different partition, the successor's was
/// then held at the broker beside the zombie's and no wait happened before
/// the hold ran out (seen on a loaded 2-core machine).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zombie_and_successor_lose_nothing() {
    let mock = MockCluster::new(1).unwrap();
    let topic = "zombie";
    mock.create_topic(topic, 1, 1).unwrap();
    let proxy = Proxy::start_with(
        &mock.bootstrap_servers(),
        // Untagged: a tag's growth would ask the held broker for the topic's
        // limit (src/topic_config.rs), holding the successor too.
        "[dedup]\npending_wait = \"60s\"\n[[dedup.rules]]\ntopics = \"*\"\nkey = \"content\"\nmode = \"drop\"\ntag = false\n",
    )
    .await;
    let records = recs(0..300, "z");
    // Backstops far beyond the broker's hold (HOLD): a request held there
    // must not time out in the client, which would retry it (an extra copy
    // in the drop counts) or fail its records (MessageTimedOut), as both did
    // on a loaded machine when these were 30 s and 20 s.
    let backstops = [
        ("request.timeout.ms", "180000"),
        ("socket.timeout.ms", "180000"),
        ("message.timeout.ms", "300000"),
    ];
    let zombie = task_producer(
        &proxy.bootstrap,
        "connector-producer-zomb-0",
        &[
            &[("linger.ms", "0"), ("batch.num.messages", "7")][..],
            &backstops,
        ]
        .concat(),
    );
    let successor = task_producer(
        &proxy.bootstrap,
        "connector-producer-zomb-0",
        &[
            &[("linger.ms", "2"), ("batch.num.messages", "10")][..],
            &backstops,
        ]
        .concat(),
    );
    // Both know the topic and hold their connections before the race.
    let warm = |who: &str| Rec {
        key: Some(format!("warm-{who}")),
        value: "warm".into(),
    };
    send_ok(&zombie, topic, &[warm("zombie")]).await;
    send_ok(&successor, topic, &[warm("successor")]).await;
    const PRODUCE: &str = "idemgate_requests_total{api=\"Produce\"}";
    const WAITS: &str = "idemgate_pending_waits_total";
    assert_eq!(proxy.metric(WAITS).await, 0.0);

    // The broker holds every answer while a wait is looked for, and lets
    // them go as soon as one is seen. HOLD is only a backstop: when it ran
    // out (10 s) before the successor's request reached the proxy on a
    // loaded machine, the zombie's first answer came back, the race was
    // lost and every later request was held in turn.
    const HOLD: Duration = Duration::from_secs(120);
    mock.broker_round_trip_time(1, HOLD).unwrap();
    let before = proxy.metric(PRODUCE).await;
    let zombie_sending = {
        let (producer, records) = (zombie.clone(), records.clone());
        tokio::spawn(async move { send(&producer, topic, &records).await })
    };
    assert!(
        proxy.wait_metric(PRODUCE, before + 1.0).await > before,
        "the zombie's first request reached the proxy"
    );
    let successor_sending = {
        let (producer, records) = (successor.clone(), records.clone());
        tokio::spawn(async move { send(&producer, topic, &records).await })
    };
    let waits = proxy.wait_metric(WAITS, 1.0).await;
    mock.broker_round_trip_time(1, Duration::ZERO).unwrap();
    assert!(
        waits > 0.0,
        "the successor met the zombie's keys in flight and waited"
    );
    let a = zombie_sending.await.unwrap();
    let b = successor_sending.await.unwrap();
    for (who, reports) in [("zombie", &a), ("successor", &b)] {
        assert_delivered(who, reports);
    }
    drop((zombie, successor));

    // Everything the log holds, up to end markers: each record once.
    let rows = consume_all(&mock.bootstrap_servers(), topic, 1).await;
    let mut expected = records.clone();
    expected.extend([warm("zombie"), warm("successor")]);
    assert_exactly_once(&rows, &expected);
    let (records_in, dropped, observed) = dedup_counts(proxy.admin, "zomb", topic).await;
    assert_eq!((records_in, dropped, observed), (602.0, 300.0, 0.0));
    assert_no_fail_open(proxy.admin).await;
    proxy.assert_no_leaks().await;
}

/// `acks=1` producers are checked against the window but never teach it
/// (README, docs/operations.md): a leader failover can truncate an acks=1
/// write, and a replay restoring it must not be dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_1_is_checked_but_never_teaches() {
    let (broker, proxy) = tansu_proxy("key = \"content\"").await;
    let topic = "acks-one";
    create_topic(&proxy.bootstrap, topic, 3).await;
    let records = recs(0..100, "a");
    // acks=all teaches 0..50.
    let all = task_producer(&proxy.bootstrap, "connector-producer-acks-0", &[]);
    send_ok(&all, topic, &records[..50]).await;
    drop(all);
    assert_eq!(
        wait_gauge(proxy.admin, "idemgate_window_keys", 50.0).await,
        50.0
    );
    // acks=1 replays 0..50 (checked: dropped) and writes 50..100 (not learned).
    let one = task_producer(
        &proxy.bootstrap,
        "connector-producer-acks-0",
        &[("acks", "1")],
    );
    send_ok(&one, topic, &records).await;
    drop(one);
    assert_eq!(
        dedup_counts(proxy.admin, "acks", topic).await,
        (150.0, 50.0, 0.0),
        "acks=1: its replays of acks=all records are dropped"
    );
    // An acks=all replay of 50..100 is not dropped: acks=1 taught nothing.
    let all = task_producer(&proxy.bootstrap, "connector-producer-acks-0", &[]);
    send_ok(&all, topic, &records[50..]).await;
    drop(all);
    assert_eq!(
        dedup_counts(proxy.admin, "acks", topic).await,
        (200.0, 50.0, 0.0),
        "nothing acks=1 wrote was in the window"
    );
    let rows = consume_all(&broker.addr, topic, 3).await;
    let counts = copies(&rows);
    for (i, r) in records.iter().enumerate() {
        let want = if i < 50 { 1 } else { 2 };
        assert_eq!(
            counts.get(&(r.key.clone(), r.value.clone())),
            Some(&want),
            "record {i}"
        );
    }
    assert_eq!(rows.len(), 150);
    assert_eq!(
        wait_gauge(proxy.admin, "idemgate_window_keys", 100.0).await,
        100.0,
        "the acks=all copies of 50..100 were learned"
    );
    assert_no_fail_open(proxy.admin).await;
    proxy.assert_no_leaks().await;
}

/// Sends `(key, value)` records in order (`None` value: a tombstone), one
/// request each, then an end marker; reads the one partition back up to the
/// marker. Returns what the log holds before the marker.
async fn round_trip(
    bootstrap: &str,
    read_from: &str,
    topic: &str,
    client_id: &str,
    records: &[(&str, Option<String>)],
) -> Vec<(String, Option<String>)> {
    let producer = task_producer(bootstrap, client_id, &[]);
    for (key, value) in records {
        let mut record = FutureRecord::<str, str>::to(topic).key(*key);
        if let Some(v) = value {
            record = record.payload(v.as_str());
        }
        producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    let marker = format!("end-{}", records.len());
    let end = FutureRecord::to(topic).key("end").payload(marker.as_str());
    producer
        .send(end, Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    let (read_from, topic) = (read_from.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        let consumer = assign_from_start(&read_from, &topic, 1);
        let start = Instant::now();
        let mut out = Vec::new();
        while start.elapsed() < Duration::from_secs(60) {
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    let key = String::from_utf8(m.key().unwrap_or_default().to_vec()).unwrap();
                    let value = m.payload().map(|v| String::from_utf8(v.to_vec()).unwrap());
                    if key == "end" && value.as_deref() == Some(marker.as_str()) {
                        return out;
                    }
                    out.push((key, value));
                }
                Some(Err(e)) => panic!("consume error: {e}"),
                None => {}
            }
        }
        panic!("no end marker within 60 s; read {out:?}")
    })
    .await
    .unwrap()
}

/// A Debezium Postgres change event as the JSON converter writes it
/// (schemas off); `lsn` is `source.lsn`, shared by a whole snapshot.
fn debezium_event(id: u32, op: &str, lsn: u64, qty: u32) -> (String, Option<String>) {
    (
        format!(r#"{{"id":{id}}}"#),
        Some(format!(
            r#"{{"before":null,"after":{{"id":{id},"qty":{qty}}},"source":{{"connector":"postgresql","snapshot":"{}","txId":771,"lsn":{lsn}}},"op":"{op}","ts_ms":1}}"#,
            if op == "r" { "true" } else { "false" }
        )),
    )
}

/// Audit A2: with a record key that names an entity (an order, a row), the
/// strategies the docs recommend keep every event: the Debezium preset keeps
/// three snapshot reads sharing one position and two updates of one row; a
/// composite key (the record key and the event's own id) keeps `k=v1` then
/// `k=v2`. A replay of them all is dropped, so the rules are at work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entity_keys_keep_every_event_under_the_safe_strategies() {
    let broker = Tansu::start();
    let proxy = Proxy::start_with(
        &broker.addr,
        "[dedup]\n\
         [[dedup.rules]]\ntopics = \"pg.*\"\npreset = \"debezium-postgres\"\nmode = \"drop\"\n\
         [[dedup.rules]]\ntopics = \"orders\"\nkey = [\"record-key\", \"json:/event_id\"]\nmode = \"drop\"\n",
    )
    .await;
    let owned = |events: Vec<(String, Option<String>)>| events;
    for (topic, events) in [
        (
            "pg.public.items",
            owned(vec![
                debezium_event(1, "r", 500, 10),
                debezium_event(2, "r", 500, 20),
                debezium_event(3, "r", 500, 30),
                debezium_event(1, "u", 600, 11),
                debezium_event(1, "u", 700, 12),
            ]),
        ),
        (
            "orders",
            owned(vec![
                (
                    "order-1".into(),
                    Some(r#"{"event_id":"e1","status":"PLACED"}"#.into()),
                ),
                (
                    "order-1".into(),
                    Some(r#"{"event_id":"e2","status":"PAID"}"#.into()),
                ),
            ]),
        ),
    ] {
        create_topic(&proxy.bootstrap, topic, 1).await;
        let sent: Vec<(&str, Option<String>)> = events
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        // Sent, then replayed whole by the task's next instance.
        let mut twice = sent.clone();
        twice.extend(sent.iter().cloned());
        let log = round_trip(
            &proxy.bootstrap,
            &broker.addr,
            topic,
            "connector-producer-src-0",
            &twice,
        )
        .await;
        let want: Vec<(String, Option<String>)> = events.clone();
        assert_eq!(log, want, "{topic}: every event once, in order");
    }
    assert_no_fail_open(proxy.admin).await;
}

/// Audit A5: a state topic whose value goes A → B → A, and a row deleted,
/// re-created and deleted again (two identical tombstones): under a
/// `content` rule without a mode (it observes) every record lands and the
/// last value per key is right. With `mode = "drop"` the repeats would be
/// taken for replays: `idemgate check` says so for every content rule, and
/// the proxy warns once per compacted topic such a rule covers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_changes_back_to_an_earlier_value_survive_the_default_mode() {
    let broker = Tansu::start();
    let proxy = Proxy::start_with(
        &broker.addr,
        "[dedup]\n[[dedup.rules]]\ntopics = \"*\"\nkey = \"content\"\n",
    )
    .await;
    let topic = "connector-state";
    create_topic(&proxy.bootstrap, topic, 1).await;
    let v = |s: &str| Some(s.to_string());
    let sent = [
        ("job", v("RUNNING")),
        ("job", v("FAILED")),
        ("job", v("RUNNING")),
        ("row-7", v("qty=1")),
        ("row-7", None),
        ("row-7", v("qty=1")),
        ("row-7", None),
    ];
    let log = round_trip(
        &proxy.bootstrap,
        &broker.addr,
        topic,
        "connector-producer-state-0",
        &sent,
    )
    .await;
    let want: Vec<(String, Option<String>)> = sent
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    assert_eq!(log, want, "every state change, tombstones too");
    let last: BTreeMap<&str, &Option<String>> = log.iter().map(|(k, v)| (k.as_str(), v)).collect();
    assert_eq!(last["job"], &v("RUNNING"));
    assert_eq!(last["row-7"], &None, "the row stays deleted");
    // The rule saw the repeats: counted, not dropped.
    let (records, dropped, observed) = dedup_counts(proxy.admin, "state", topic).await;
    assert_eq!((dropped, observed), (0.0, 3.0), "records {records}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_key_rule_and_fallback_pass() {
    let (broker, proxy) = tansu_proxy("key = \"record-key\"\nfallback = \"pass\"").await;
    let topic = "keyed";
    create_topic(&proxy.bootstrap, topic, 3).await;
    let null = Rec {
        key: None,
        value: "no key".into(),
    };

    let first = task_producer(&proxy.bootstrap, "connector-producer-keyed-0", &[]);
    let keyed = recs(0..100, "first");
    send_ok(&first, topic, &keyed).await;
    send_ok(&first, topic, std::slice::from_ref(&null)).await;
    send_ok(&first, topic, std::slice::from_ref(&null)).await;
    drop(first);
    // Here the record key is an event id (unique per event: the one case
    // `record-key` is for), and the replay repeats those events. A record
    // key that names an entity would take its later events for replays:
    // `entity_keys_keep_every_event_under_the_safe_strategies` shows the
    // keys to use then.
    let second = task_producer(&proxy.bootstrap, "connector-producer-keyed-0", &[]);
    send_ok(&second, topic, &keyed).await;
    send_ok(&second, topic, std::slice::from_ref(&null)).await;
    drop(second);

    let rows = consume_all(&broker.addr, topic, 3).await;
    let mut expected = keyed.clone();
    expected.push(null.clone());
    let counts = copies(&rows);
    assert_eq!(
        counts.get(&(None, "no key".into())),
        Some(&3),
        "null-key records are never dropped"
    );
    let mut once: Vec<Consumed> = rows.iter().filter(|r| r.key.is_some()).cloned().collect();
    once.sort_by_key(|r| index_of(&r.value));
    assert_exactly_once(&once, &keyed);
    assert_eq!(rows.len(), 103);
    for r in &rows {
        match &r.key {
            None => assert!(
                r.tags().is_empty(),
                "a passed record is not tagged: {:?}",
                r.headers
            ),
            Some(k) => assert_eq!(
                r.tag(),
                idemgate::idempotency::key::record_key(None, topic, k.as_bytes()).to_string(),
                "the tag is the record key's hash"
            ),
        }
    }

    assert_counts(proxy.admin, "keyed", topic, (203.0, 100.0, 0.0)).await;
    let k5 = rows
        .iter()
        .find(|r| r.key.as_deref() == Some("k-0005"))
        .unwrap();
    let found = json(
        proxy.admin,
        &format!("/window/lookup?topic={topic}&record_key=k-0005"),
    )
    .await;
    assert_eq!(found["seen"], true, "{found}");
    assert_eq!(
        (&found["partition"], &found["offset"]),
        (&k5.partition.into(), &k5.offset.into()),
        "{found}"
    );
    proxy.assert_no_leaks().await;
}

/// An idempotent source task crashes after 300 acknowledged records and its
/// successor (a new producer id) replays the last 100 and goes on with 50:
/// every replay is dropped, the successor's sequences are shifted past the
/// drops and the broker takes them, and the log holds each record once.
async fn idempotent_replay(broker: &str, proxy: &Proxy, topic: &str) {
    let idempotent = [
        ("enable.idempotence", "true"),
        ("max.in.flight.requests.per.connection", "5"),
    ];
    let originals = recs(0..350, "i");
    let first = task_producer(&proxy.bootstrap, "connector-producer-idem-0", &idempotent);
    let first_reports = send(&first, topic, &originals[..300]).await;
    drop(first);
    let second = task_producer(&proxy.bootstrap, "connector-producer-idem-0", &idempotent);
    let second_reports = send(&second, topic, &originals[200..]).await;
    drop(second);
    for (who, reports) in [("first", &first_reports), ("second", &second_reports)] {
        assert_delivered(who, reports);
    }

    // Every record of the first instance was acknowledged before the second
    // started, so each of its 100 replays (200..300) is in the window: all
    // 100 are dropped, and the broker accepted the second instance's shifted
    // sequences (a refused one would have failed a delivery above).
    let (records_in, dropped, observed) = dedup_counts(proxy.admin, "idem", topic).await;
    assert_eq!(
        (records_in, dropped, observed),
        (450.0, 100.0, 0.0),
        "(records, dropped, observed)"
    );
    let rows = consume_all(broker, topic, 3).await;
    assert_exactly_once(&rows, &originals);
    assert_send_order_per_partition(&rows, |r| index_of(&r.value));
    for r in &rows {
        r.tag();
    }
    assert_no_fail_open(proxy.admin).await;
    proxy.assert_no_leaks().await;
}

/// [`idempotent_replay`] on tansu, and on librdkafka's mock cluster, which
/// checks every producer's sequences the way Kafka does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_producer_is_not_broken() {
    let (broker, proxy) = tansu_proxy("key = \"content\"").await;
    create_topic(&proxy.bootstrap, "idem", 3).await;
    idempotent_replay(&broker.addr, &proxy, "idem").await;

    let (mock, proxy) = mock_proxy("idem", 3).await;
    idempotent_replay(&mock.bootstrap_servers(), &proxy, "idem").await;
}

/// A proxy restart case: a source task of `connector` sends `records` to
/// `topic` (3 partitions, on `broker`) through a first proxy, then all of
/// them again through the restarted one.
struct Restart<'a> {
    broker: &'a str,
    topic: &'a str,
    connector: &'a str,
    records: &'a [Rec],
}

impl Restart<'_> {
    /// Creates the topic and sends every record through the proxy at
    /// `bootstrap`, each acknowledged.
    async fn send_first(&self, bootstrap: &str) {
        create_topic(bootstrap, self.topic, 3).await;
        self.send(bootstrap).await;
    }

    /// [`send_first`](Self::send_first), and the proxy (`admin`) counts every
    /// record and drops none.
    async fn send_first_counted(&self, admin: SocketAddr, bootstrap: &str) {
        self.send_first(bootstrap).await;
        let n = self.records.len() as f64;
        assert_eq!(
            dedup_counts(admin, self.connector, self.topic).await,
            (n, 0.0, 0.0)
        );
    }

    async fn send(&self, bootstrap: &str) {
        let client_id = format!("connector-producer-{}-0", self.connector);
        let producer = task_producer(bootstrap, &client_id, &[]);
        send_ok(&producer, self.topic, self.records).await;
    }

    /// After a restart on the same store: the window holds the records the
    /// first proxy saw acknowledged, and replaying them all through the new
    /// proxy (`admin`, `bootstrap`) drops every one; the topic keeps one copy
    /// each.
    async fn replay_dropped(&self, admin: SocketAddr, bootstrap: &str) {
        let (topic, connector, records) = (self.topic, self.connector, self.records);
        let n = records.len() as f64;
        assert_eq!(
            wait_gauge(admin, "idemgate_window_keys", n).await,
            n,
            "every acknowledged key read back"
        );
        self.send(bootstrap).await;
        let rows = consume_all(self.broker, topic, 3).await;
        assert_exactly_once(&rows, records);
        assert_eq!(
            dedup_counts(admin, connector, topic).await,
            (n, n, 0.0),
            "every replay through the restarted proxy dropped"
        );
        assert_eq!(
            fail_open_total(admin).await,
            0.0,
            "{:?}",
            fail_open(admin).await
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_restart_keeps_the_window() {
    let broker = Tansu::start();
    let store = tempfile::tempdir().unwrap();
    let (text, _, admin_port) = Proxy::config_text(
        &broker.addr,
        store.path(),
        "",
        "",
        &dedup_toml("key = \"content\""),
    );
    let records = recs(0..200, "r");
    let case = Restart {
        broker: &broker.addr,
        topic: "restart",
        connector: "restart",
        records: &records,
    };

    let a = Proxy::start_config(&text).await;
    case.send_first_counted(a.admin, &a.bootstrap).await;
    a.stop().await; // drains and flushes the store

    // The same config, on the same store, on a fresh admin port.
    let new_admin = support::free_port();
    let text_b = text.replace(
        &format!("listen = \"127.0.0.1:{admin_port}\""),
        &format!("listen = \"127.0.0.1:{new_admin}\""),
    );
    assert_ne!(text, text_b);
    let b = Proxy::start_config(&text_b).await;
    case.replay_dropped(b.admin, &b.bootstrap).await;
    b.stop().await;
}

const FLUSHES: &str = "idemgate_store_flushes_total";

/// Waits (up to 30 s) for a counter to reach `at_least`; returns its value.
async fn wait_counter(admin: SocketAddr, name: &str, at_least: f64) -> f64 {
    let start = Instant::now();
    loop {
        let v = support::metric_value(&metrics(admin).await, name);
        if v >= at_least || start.elapsed() > Duration::from_secs(30) {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A content drop rule for every topic, the store flushed every `interval`:
/// the config file written into `dir` (the store in `dir/store`), its
/// bootstrap and admin ports.
fn flushing_every(
    dir: &std::path::Path,
    broker: &str,
    interval: &str,
) -> (std::path::PathBuf, u16, u16) {
    let rule = format!(
        "flush_interval = \"{interval}\"\n{}",
        dedup_toml("key = \"content\"").trim_start_matches("[dedup]\n")
    );
    let (text, bootstrap, admin) = Proxy::config_text(
        broker,
        &dir.join("store"),
        "",
        "",
        &format!("[dedup]\n{rule}"),
    );
    let config = dir.join("idemgate.toml");
    std::fs::write(&config, text).unwrap();
    (config, bootstrap, admin)
}

/// SIGKILL after a store flush that started after every ack: every
/// acknowledged key is on disk (the documented policy: at most
/// `dedup.flush_interval` of keys can be forgotten), so a full replay
/// through the restarted proxy is dropped whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_keeps_what_the_flush_policy_promises() {
    let broker = Tansu::start();
    let dir = tempfile::tempdir().unwrap();
    let (config, bootstrap, admin) = flushing_every(dir.path(), &broker.addr, "200ms");
    let records = recs(0..300, "k");
    let case = Restart {
        broker: &broker.addr,
        topic: "killed",
        connector: "killed",
        records: &records,
    };

    let a = ProxyProcess::start(&config, bootstrap, admin).await;
    case.send_first(&a.bootstrap).await;
    // A flush that started after every ack (the second one counted from
    // now: the first may have been under way already), then no goodbye.
    let flushes = support::metric_value(&metrics(a.admin).await, FLUSHES);
    assert!(
        wait_counter(a.admin, FLUSHES, flushes + 2.0).await >= flushes + 2.0,
        "no store flush within 30 s"
    );
    a.kill9();

    let b = ProxyProcess::start(&config, bootstrap, admin).await;
    case.replay_dropped(b.admin, &b.bootstrap).await;
    b.stop().await;
}

/// The other half of the flush policy: SIGKILL within the flush interval
/// (1 h here, so no flush comes between the acks and the kill) may forget
/// keys, never records. Each replay the restarted proxy does not recognise
/// passes once; every record is in the log, none more than twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_within_the_flush_interval_loses_nothing() {
    let broker = Tansu::start();
    let dir = tempfile::tempdir().unwrap();
    let (config, bootstrap, admin) = flushing_every(dir.path(), &broker.addr, "1h");
    let topic = "killed-early";
    let records = recs(0..300, "e");
    let case = Restart {
        broker: &broker.addr,
        topic,
        connector: "early",
        records: &records,
    };

    let a = ProxyProcess::start(&config, bootstrap, admin).await;
    case.send_first_counted(a.admin, &a.bootstrap).await;
    a.kill9();

    let b = ProxyProcess::start(&config, bootstrap, admin).await;
    case.send(&b.bootstrap).await;
    let (_, dropped, _) = dedup_counts(b.admin, "early", topic).await;
    let rows = consume_all(&broker.addr, topic, 3).await;
    let counts = copies(&rows);
    for r in &records {
        let n = counts.get(&(r.key.clone(), r.value.clone())).copied();
        assert!(
            matches!(n, Some(1 | 2)),
            "{r:?}: {n:?} copies after a SIGKILL"
        );
    }
    assert_eq!(counts.len(), 300, "nothing else in the log");
    assert_eq!(
        rows.len() as f64,
        600.0 - dropped,
        "every replay either dropped or written once"
    );
    println!("killed within the flush interval: {dropped} of 300 replays recognised");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_process_restart_keeps_the_window() {
    let broker = Tansu::start();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let (text, bootstrap, admin) = Proxy::config_text(
        &broker.addr,
        &store,
        "",
        "",
        &dedup_toml("key = \"content\""),
    );
    let config = dir.path().join("idemgate.toml");
    std::fs::write(&config, text).unwrap();
    let records = recs(0..200, "r");
    let case = Restart {
        broker: &broker.addr,
        topic: "restart-process",
        connector: "restart",
        records: &records,
    };

    let a = ProxyProcess::start(&config, bootstrap, admin).await;
    case.send_first_counted(a.admin, &a.bootstrap).await;
    a.stop().await;

    let b = ProxyProcess::start(&config, bootstrap, admin).await;
    case.replay_dropped(b.admin, &b.bootstrap).await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_retry_is_not_a_replay() {
    let topic = "retried";
    let (mock, proxy) = mock_proxy(topic, 3).await;
    let records = recs(0..150, "t");
    let producer = task_producer(&proxy.bootstrap, "connector-producer-retry-0", &[]);
    // Warm up (metadata, connections) so the faults hit the records' batches.
    let warm = Rec {
        key: Some("warm".into()),
        value: "warm".into(),
    };
    send_ok(&producer, topic, std::slice::from_ref(&warm)).await;
    let produce_requests = || proxy.metric("idemgate_requests_total{api=\"Produce\"}");

    // The next Produce requests fail with retriable errors: the broker wrote
    // nothing, and librdkafka sends the same batches again.
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS_AFTER_APPEND,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
        ],
    );
    let before = produce_requests().await;
    send_ok(&producer, topic, &records[..100]).await;
    let sent = produce_requests().await - before;
    assert!(sent >= 5.0, "the failed requests were retried ({sent})");

    // The broker drops the connection on the next Produce, before writing
    // it: librdkafka reconnects (through the proxy) and sends it again.
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR__TRANSPORT],
    );
    let before = produce_requests().await;
    send_ok(&producer, topic, &records[100..]).await;
    let sent = produce_requests().await - before;
    assert!(sent >= 2.0, "the dropped request was retried ({sent})");
    drop(producer);

    let mut expected = records.clone();
    expected.push(warm.clone());
    let rows = consume_all(&mock.bootstrap_servers(), topic, 3).await;
    assert_exactly_once(&rows, &expected);
    for r in &rows {
        r.tag();
    }
    let (records_in, dropped, observed) = dedup_counts(proxy.admin, "retry", topic).await;
    assert_eq!((dropped, observed), (0.0, 0.0), "a retry is not a replay");
    assert!(
        records_in > 151.0,
        "retries went through the filter ({records_in})"
    );
    assert_no_fail_open(proxy.admin).await;
    assert_eq!(
        wait_gauge(proxy.admin, "idemgate_window_keys", 151.0).await,
        151.0
    );

    // And each retried record was learned once: a real replay of them all is dropped.
    let replayer = task_producer(&proxy.bootstrap, "connector-producer-retry-0", &[]);
    send_ok(&replayer, topic, &records).await;
    drop(replayer);
    let rows = consume_all(&mock.bootstrap_servers(), topic, 3).await;
    assert_exactly_once(&rows, &expected);
    let (_, dropped, _) = dedup_counts(proxy.admin, "retry", topic).await;
    assert_eq!(dropped, 150.0);
    proxy.assert_no_leaks().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_ack_retry_is_dropped_not_written_twice() {
    let topic = "lost-ack";
    let (mock, proxy) = mock_proxy(topic, 1).await;
    let records = recs(0..20, "l");
    // A request unanswered for 3 s times out, and the connection is dropped.
    let producer = task_producer(
        &proxy.bootstrap,
        "connector-producer-lost-0",
        &[("socket.timeout.ms", "3000")],
    );
    let warm = Rec {
        key: Some("warm".into()),
        value: "warm".into(),
    };
    send_ok(&producer, topic, std::slice::from_ref(&warm)).await;
    const PRODUCE: &str = "idemgate_requests_total{api=\"Produce\"}";
    const CONNECTIONS: &str = "idemgate_connections_total";
    let produce_before = proxy.metric(PRODUCE).await;
    let connections_before = proxy.metric(CONNECTIONS).await;

    // The broker writes the batch but its answer takes 10 s: the client
    // gives up, reconnects and sends the batch again.
    mock.broker_round_trip_time(1, Duration::from_millis(10_000))
        .unwrap();
    let sending = {
        let (producer, records) = (producer.clone(), records.clone());
        tokio::spawn(async move { send(&producer, topic, &records).await })
    };
    assert!(proxy.wait_metric(PRODUCE, produce_before + 1.0).await > produce_before);
    let reconnected = proxy
        .wait_metric(CONNECTIONS, connections_before + 1.0)
        .await;
    assert!(
        reconnected > connections_before,
        "the client timed out and reconnected"
    );
    mock.broker_round_trip_time(1, Duration::ZERO).unwrap();
    let reports = sending.await.unwrap();
    drop(producer);

    let mut expected = records.clone();
    expected.push(warm.clone());
    let rows = consume_all(&mock.bootstrap_servers(), topic, 1).await;
    assert_exactly_once(&rows, &expected);
    let sent = proxy.metric(PRODUCE).await - produce_before;
    assert!(sent >= 2.0, "the batch was sent again ({sent})");
    // The retry was answered with where the first copy is.
    let at: BTreeMap<String, i64> = rows.iter().map(|r| (r.value.clone(), r.offset)).collect();
    for (r, report) in records.iter().zip(&reports) {
        assert_eq!(report, &Ok((0, at[&r.value])), "{}", r.value);
    }
    // Every copy past the first was dropped. A busy machine may time out a
    // retry too (it can be sent before the delay is lifted), so the number
    // of copies is not fixed: 20 records, the warm-up, and at least one
    // retry of the 20.
    let (records_in, dropped, observed) = dedup_counts(proxy.admin, "lost", topic).await;
    assert!(records_in >= 41.0, "the batch was seen again: {records_in}");
    assert_eq!(records_in - dropped, 21.0, "written once each");
    assert_eq!(observed, 0.0);
    assert_no_fail_open(proxy.admin).await;
    proxy.assert_no_leaks().await;
}

// === Fetch-path dedup ===

/// Writes records straight to the broker (around the proxy): `codec` "zstd"
/// goes as raw Produce requests (the vendored librdkafka has no zstd).
async fn write_around(broker: &str, topic: &str, codec: &str, records: &[Rec]) {
    if codec == "zstd" {
        use kafka_protocol::messages::{ApiKey, ProduceResponse};
        let mut conn = support::RawConn::connect(broker).await;
        let id = 7;
        conn.send_frame(&zstd_produce(topic, id, records)).await;
        let frame = conn.recv_frame().await.expect("a Produce response");
        let resp: ProduceResponse = support::decode_response_frame(ApiKey::Produce, 9, id, frame);
        assert_eq!(resp.responses[0].partition_responses[0].error_code, 0);
        return;
    }
    let producer = task_producer(broker, "around-the-proxy", &[("compression.type", codec)]);
    send_ok(&producer, topic, records).await;
}

/// A Connect sink task's consumer in group `group`; offsets are never committed.
fn sink_consumer(bootstrap: &str, group: &str, client_id: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("client.id", client_id)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .create()
        .unwrap()
}

/// Polls until the end marker `marker` came from each of `partitions`
/// partitions; every record but the markers (this one or older ones) is
/// returned, copies included. Fails after 120 s.
fn poll_rows(consumer: &BaseConsumer, marker: &str, partitions: i32) -> Vec<Consumed> {
    let start = Instant::now();
    let mut ended = vec![false; partitions as usize];
    let mut rows = Vec::new();
    while ended.contains(&false) {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "end markers {marker} not all read after 120 s ({} rows, ended {ended:?})",
            rows.len()
        );
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let key = m.key().map(|k| String::from_utf8(k.to_vec()).unwrap());
                let value = String::from_utf8(m.payload().unwrap_or_default().to_vec()).unwrap();
                if key.as_deref() == Some(END) {
                    if value == marker {
                        ended[m.partition() as usize] = true;
                    }
                    continue;
                }
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                            .collect()
                    })
                    .unwrap_or_default();
                rows.push(Consumed {
                    partition: m.partition(),
                    offset: m.offset(),
                    key,
                    value,
                    headers,
                });
            }
            Some(Err(e)) => panic!("consume error: {e}"),
            None => {}
        }
    }
    rows
}

/// Reads `topic` as sink `group` through the proxy at `bootstrap` (subscribe,
/// from the start), in a blocking thread, up to end markers written to `broker`.
async fn sink_reads(
    (bootstrap, broker): (&str, &str),
    topic: &str,
    partitions: i32,
    group: &str,
) -> Vec<Consumed> {
    let marker = end_markers(broker, topic, partitions).await;
    let (bootstrap, topic, group) = (bootstrap.to_string(), topic.to_string(), group.to_string());
    tokio::task::spawn_blocking(move || {
        let sink = group.strip_prefix("connect-").unwrap_or(&group).to_string();
        let consumer = sink_consumer(&bootstrap, &group, &format!("connector-consumer-{sink}-0"));
        consumer.subscribe(&[&topic]).unwrap();
        poll_rows(&consumer, &marker, partitions)
    })
    .await
    .unwrap()
}

fn places(rows: &[Consumed]) -> BTreeSet<(i32, i64)> {
    rows.iter().map(|r| (r.partition, r.offset)).collect()
}

fn fetch_series(name: &str, connector: &str, topic: &str) -> String {
    format!("{name}{{connector=\"{connector}\",topic=\"{topic}\",direction=\"fetch\"}}")
}

/// The produce and fetch paths key a record alike (its tag, scoped to the
/// topic): a copy written around the proxy and read through a fetch rule is
/// known to the produce path, so replaying it untagged through the proxy is
/// a replay; and with `direction = "both"` a record costs one window key,
/// however it is written and read. Both failed before: produce keyed the
/// content key K, fetch the scoped one, so the replay was written again and
/// each record read back cost a second key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_and_fetch_share_one_key_per_record() {
    let (broker, proxy) =
        tansu_proxy("key = \"content\"\nmode = \"drop\"\ndirection = \"both\"").await;
    let topic = "one-key";
    create_topic(&broker.addr, topic, 1).await;
    let around = recs(0..10, "around");
    write_around(&broker.addr, topic, "none", &around).await;
    // Read through the proxy: the fetch rule learns each first position.
    let read = fetch_all_raw(&proxy.bootstrap, &broker.addr, topic).await;
    assert_eq!(read.len(), 10);
    // Ten records and the end marker the read stopped at: a key each.
    assert_eq!(
        wait_gauge(proxy.admin, "idemgate_window_keys", 11.0).await,
        11.0
    );

    // The same records replayed untagged through the proxy: all replays.
    let producer = task_producer(&proxy.bootstrap, "connector-producer-src-0", &[]);
    send_ok(&producer, topic, &around).await;
    // New records through the proxy, then read back through it: one key each.
    let through = recs(10..15, "through");
    send_ok(&producer, topic, &through).await;
    assert_eq!(
        fetch_all_raw(&proxy.bootstrap, &broker.addr, topic)
            .await
            .len(),
        15
    );
    // 15 records and the two end markers read through the proxy.
    let keys = wait_gauge(proxy.admin, "idemgate_window_keys", 17.0).await;

    // Straight from the broker, up to an end marker written after it all.
    write_around(&broker.addr, topic, "none", &recs(99..100, "end")).await;
    let log = fetch_all_raw(&broker.addr, &broker.addr, topic).await;
    assert_eq!(log.last().map(|r| r.3.as_str()), Some("v-0099-end"));
    let values: Vec<&str> = log.iter().map(|r| r.3.as_str()).collect();
    let want: Vec<String> = around
        .iter()
        .chain(&through)
        .map(|r| r.value.clone())
        .chain(["v-0099-end".to_string()])
        .collect();
    assert_eq!(values, want, "the replays were not written again");
    assert_eq!(keys, 17.0, "one window key per record");
    let (_, dropped, _) = dedup_counts(proxy.admin, "src", topic).await;
    assert_eq!(dropped, 10.0);
}

/// `dedup.key_secret_file`: two proxies with different secrets tag the same
/// record differently, a proxy with the same secret as another tags it the
/// same, and one without a secret keeps the public keys. A secret file that
/// is missing or too short is a config error naming the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_secret_keys_per_deployment() {
    let broker = Tansu::start();
    let dir = tempfile::tempdir().unwrap();
    let secret = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let (a, b, a_again) = (
        secret("a", "first deployment's secret\n"),
        secret("b", "second deployment's secret\n"),
        secret("a2", "  first deployment's secret  \n"),
    );
    let rule = |path: Option<&str>| {
        let line = path.map_or(String::new(), |p| format!("key_secret_file = \"{p}\"\n"));
        format!(
            "[dedup]\n{line}[[dedup.rules]]\ntopics = \"*\"\nkey = \"content\"\nmode = \"drop\"\n"
        )
    };
    // Each proxy in turn writes the same record to one topic.
    let shared = "secret-shared";
    create_topic(&broker.addr, shared, 1).await;
    let mut shared_tags = Vec::new();
    for path in [
        Some(a.as_str()),
        Some(b.as_str()),
        Some(a_again.as_str()),
        None,
    ] {
        let proxy = Proxy::start_with(&broker.addr, &rule(path)).await;
        let producer = task_producer(&proxy.bootstrap, "connector-producer-src-0", &[]);
        send_ok(&producer, shared, &recs(0..1, "shared")).await;
    }
    write_around(&broker.addr, shared, "none", &recs(99..100, "end")).await;
    let log = fetch_all_raw(&broker.addr, &broker.addr, shared).await;
    assert_eq!(log.last().map(|r| r.3.as_str()), Some("v-0099-end"));
    for row in &log[..4] {
        let tag = row.4.iter().find(|(k, _)| k == HEADER).unwrap().1.clone();
        shared_tags.push(tag.unwrap());
    }
    assert_ne!(
        shared_tags[0], shared_tags[1],
        "different secrets, different keys"
    );
    assert_eq!(
        shared_tags[0], shared_tags[2],
        "the same secret, the same key"
    );
    assert_ne!(
        shared_tags[0], shared_tags[3],
        "a secret changes the public key"
    );
    assert_ne!(shared_tags[1], shared_tags[3]);

    for (text, why) in [("short", "fewer than 16 bytes"), ("", "cannot read")] {
        let path = if text.is_empty() {
            dir.path().join("missing").display().to_string()
        } else {
            secret("short", text)
        };
        let config = format!(
            "[upstream]\nbootstrap = [\"{}\"]\n{}",
            broker.addr,
            rule(Some(&path))
        );
        let err = Config::parse(&config).unwrap_err().to_string();
        assert!(
            err.contains("dedup.key_secret_file") && err.contains(why),
            "{err}"
        );
    }
}

/// Duplicates written around the proxy, with each codec: a sink group reads
/// every logical record exactly once; a second group gets exactly the same
/// records at the same offsets; a consumer that seeks back to the start gets
/// the first occurrences again; a last batch of nothing but duplicates does
/// not stop the consumer (a record written after it still arrives).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sinks_read_each_record_once_whoever_wrote_the_copies() {
    let (broker, proxy) = tansu_proxy("key = \"content\"\ndirection = \"fetch\"").await;
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        let topic = format!("sink-{codec}");
        create_topic(&broker.addr, &topic, 1).await;
        let originals = recs(0..70, codec);
        // 0..50, then 30..70 (30..50 again), then 10..30 again: the log's
        // last batch is duplicates only.
        write_around(&broker.addr, &topic, codec, &originals[..50]).await;
        write_around(&broker.addr, &topic, codec, &originals[30..70]).await;
        write_around(&broker.addr, &topic, codec, &originals[10..30]).await;

        // Every record is its first occurrence: offsets 0..50, then 70..90.
        let want: BTreeSet<(i32, i64)> = (0..50).chain(70..90).map(|o| (0, o)).collect();
        if codec == "zstd" {
            // librdkafka here cannot read zstd: a raw Fetch v11 reader, twice.
            for _ in 0..2 {
                let rows: Vec<Consumed> = fetch_all_raw(&proxy.bootstrap, &broker.addr, &topic)
                    .await
                    .into_iter()
                    .map(|(_, offset, key, value, headers)| Consumed {
                        partition: 0,
                        offset,
                        key,
                        value,
                        headers,
                    })
                    .collect();
                assert_exactly_once(&rows, &originals);
                assert_eq!(places(&rows), want, "zstd: first occurrences");
            }
            continue;
        }
        let first = sink_reads(
            (&proxy.bootstrap, &broker.addr),
            &topic,
            1,
            "connect-pg-sink",
        )
        .await;
        assert_exactly_once(&first, &originals);
        assert_eq!(places(&first), want, "{codec}: first occurrences");
        let second = sink_reads(
            (&proxy.bootstrap, &broker.addr),
            &topic,
            1,
            "connect-other-sink",
        )
        .await;
        assert_eq!(
            places(&second),
            want,
            "{codec}: a second group reads the same"
        );
        // Seeking back (no group offsets: from the beginning) gives the same.
        let again = consume_via(&proxy.bootstrap, &broker.addr, &topic, 1).await;
        assert_eq!(places(&again), want, "{codec}: a seek back reads the same");

        let text = metrics(proxy.admin).await;
        let read = |name| support::metric_value(&text, &fetch_series(name, "pg-sink", &topic));
        // 110 records and the end markers pg-sink's fetches carried (the
        // proxy counts a record each time a response carries it).
        let passed = read("idemgate_records_total");
        assert!((111.0..=113.0).contains(&passed), "{codec}: {passed}");
        assert_eq!(read("idemgate_duplicates_dropped_total"), 40.0, "{codec}");
        // The per-connector admin view shows the same.
        let view = connector_json(proxy.admin, "pg-sink").await;
        let row = view["fetch_topics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["topic"] == topic.as_str())
            .unwrap_or_else(|| panic!("{topic} not in {view}"))
            .clone();
        assert_eq!(
            (row["records"].as_u64(), row["dropped"].as_u64()),
            (Some(passed as u64), Some(40))
        );
    }

    // Past an all-duplicate batch: the end marker behind it and a record
    // written after it still arrive.
    let topic = "sink-tail";
    create_topic(&broker.addr, topic, 1).await;
    let originals = recs(0..21, "tail");
    write_around(&broker.addr, topic, "none", &originals[..20]).await;
    write_around(&broker.addr, topic, "none", &originals[5..20]).await;
    let marker = end_markers(&broker.addr, topic, 1).await;
    let (bootstrap, t) = (proxy.bootstrap.clone(), topic.to_string());
    let (consumer, rows) = tokio::task::spawn_blocking(move || {
        let consumer = sink_consumer(
            &bootstrap,
            "connect-tail-sink",
            "connector-consumer-tail-sink-0",
        );
        consumer.subscribe(&[&t]).unwrap();
        let rows = poll_rows(&consumer, &marker, 1);
        (consumer, rows)
    })
    .await
    .unwrap();
    assert_exactly_once(&rows, &originals[..20]);
    // Offsets 0..35 are the 35 records, 35 the marker.
    write_around(&broker.addr, topic, "none", &originals[20..]).await;
    let marker = end_markers(&broker.addr, topic, 1).await;
    let rows = tokio::task::spawn_blocking(move || poll_rows(&consumer, &marker, 1))
        .await
        .unwrap();
    assert_eq!(
        places(&rows),
        BTreeSet::from([(0, 36)]),
        "the consumer moved past the duplicates"
    );
    assert_no_fail_open(proxy.admin).await;
    proxy.assert_no_leaks().await;
}

/// Fetch dedup on a topic of three partitions: a copy in the same partition
/// is a replay and goes; a copy in another partition is delivered (its
/// first position is in another log, which this read may not cover).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_in_another_partition_is_delivered() {
    let (broker, proxy) = tansu_proxy("key = \"content\"\ndirection = \"fetch\"").await;
    let topic = "sink-spread";
    create_topic(&broker.addr, topic, 3).await;
    let around = task_producer(&broker.addr, "around-the-proxy", &[]);
    let originals = recs(0..30, "s");
    // (partition, record): 0..10 to each partition in turn; then copies of
    // 0..10 in their own partitions, and of 10..20 in the next partition.
    let mut writes: Vec<(i32, &Rec)> = (0..20).map(|i| ((i % 3) as i32, &originals[i])).collect();
    writes.extend((0..10).map(|i| ((i % 3) as i32, &originals[i])));
    writes.extend((10..20).map(|i| (((i + 1) % 3) as i32, &originals[i])));
    let mut placed: Vec<(i32, i64, usize)> = Vec::new();
    for (p, r) in &writes {
        let d = around
            .send(
                FutureRecord::to(topic)
                    .partition(*p)
                    .key(r.key.as_deref().unwrap())
                    .payload(r.value.as_str()),
                Duration::from_secs(30),
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("{r:?}: {e}"));
        placed.push((d.partition, d.offset, index_of(&r.value)));
    }
    drop(around);
    // The first copy of each record in each partition is what a sink gets.
    let mut want: BTreeMap<(i32, usize), i64> = BTreeMap::new();
    for &(p, o, i) in &placed {
        want.entry((p, i)).or_insert(o);
    }
    let rows = sink_reads(
        (&proxy.bootstrap, &broker.addr),
        topic,
        3,
        "connect-spread-sink",
    )
    .await;
    let got: BTreeMap<(i32, usize), i64> = rows
        .iter()
        .map(|r| ((r.partition, index_of(&r.value)), r.offset))
        .collect();
    assert_eq!(rows.len(), got.len(), "a record twice in one partition");
    assert_eq!(
        got, want,
        "each record once per partition it was written to, at its first place there"
    );
    assert_eq!(
        rows.len(),
        30,
        "20 records, and 10 copies in other partitions"
    );
    let text = metrics(proxy.admin).await;
    assert_eq!(
        support::metric_value(
            &text,
            &fetch_series("idemgate_duplicates_dropped_total", "spread-sink", topic)
        ),
        10.0,
        "the copies in their own partitions"
    );
    assert_no_fail_open(proxy.admin).await;
    proxy.assert_no_leaks().await;
}
