//! Incremental fetch sessions (KIP-227) through the proxy with fetch dedup on.
//!
//! tansu 0.6.0 answers every Fetch with session_id 0, so a session layer
//! (support/fetch_sessions.rs) plays the broker's session cache in front of
//! it. tansu advertises the layer, so every broker connection — the proxy's
//! bootstrap probe and the node connections it opens after Metadata — goes
//! through it:
//!
//! ```text
//! kafka-python (sessions)  ─┐
//! librdkafka (sessionless) ─┴→ idemgate, fetch rule on → session layer → tansu
//! records and copies written around the proxy ────────→ session layer → tansu
//! ```
//!
//! The proxy may rewrite only the records of a Fetch response: a session id,
//! an error code, a partition left out of an incremental answer or one
//! answered with an error must reach the client as the broker sent them, or
//! the client's session breaks (a wrong id or epoch is refused, a partition
//! added to an incremental answer is "invalid").

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support;
use crate::support::fetch_sessions::{
    Counts, FetchSessions, FETCH_SESSION_ID_NOT_FOUND, INVALID_FETCH_SESSION_EPOCH,
};
use crate::support::rng::SplitMix;
use crate::support::{client_config, create_topic, Proxy, RawConn, Tansu};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic, ForgottenTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchRequest, FetchResponse, MetadataRequest, MetadataResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::RecordBatchDecoder;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

/// Only topics named `sessions-*` are filtered.
const FETCH_RULE: &str = "[dedup]\n[[dedup.rules]]\ntopics = \"sessions-*\"\n\
                          key = \"content\"\nmode = \"drop\"\ndirection = \"fetch\"\n";

/// Kafka's NOT_LEADER_OR_FOLLOWER: a partition error a consumer retries.
const NOT_LEADER_OR_FOLLOWER: i16 = 6;

/// Incremental fetches the live read must reach before the writer stops.
const INCREMENTAL_FETCHES: u64 = 2000;

/// The most the writer may take to get there: a bound against a hang, not a
/// speed the test asks for (a debug proxy on a loaded 2-core CI machine
/// takes minutes where a quiet one takes seconds).
const WRITE_LIMIT: Duration = Duration::from_secs(600);

/// The most each reader may take, from its start: the writer's limit and
/// then the read to the end of the log.
const READ_LIMIT: Duration = Duration::from_secs(720);

/// tansu behind the session layer, and the proxy in front of the layer.
async fn bench() -> (Tansu, FetchSessions, Proxy) {
    let layer_port = support::free_port();
    let broker = Tansu::start_advertising(Some(layer_port));
    let layer = FetchSessions::start(layer_port, &broker.addr).await;
    let proxy = Proxy::start_with(&layer.addr, FETCH_RULE).await;
    (broker, layer, proxy)
}

// === Writing around the proxy ===

/// A producer writing straight to the broker: acks=all, one batch at a time.
fn writer(broker: &str) -> FutureProducer {
    let mut config = client_config(broker);
    config
        .set("client.id", "around-the-proxy")
        .set("acks", "all")
        .set("enable.idempotence", "false")
        .set("linger.ms", "1");
    config.create().unwrap()
}

/// Record `seq`: key `k<seq>`, value `value-<seq, 8 digits>`, header
/// `seq=<seq>` (kafka-python's reader parses the value). Two writes of one
/// seq are byte-identical: one logical record under the rule's content key.
async fn write(
    producer: &FutureProducer,
    topic: &str,
    records: &[(i32, u32)],
) -> Vec<(i32, i64, u32)> {
    let mut pending = Vec::new();
    for &(partition, seq) in records {
        let (key, value) = (format!("k{seq}"), format!("value-{seq:08}"));
        let headers = OwnedHeaders::new().insert(Header {
            key: "seq",
            value: Some(seq.to_string().as_bytes()),
        });
        let record = FutureRecord::to(topic)
            .partition(partition)
            .key(key.as_str())
            .payload(value.as_str())
            .headers(headers);
        pending.push((
            seq,
            producer.send_result(record).map_err(|(e, _)| e).unwrap(),
        ));
    }
    let mut out = Vec::new();
    for (seq, delivery) in pending {
        let d = delivery
            .await
            .unwrap()
            .unwrap_or_else(|(e, _)| panic!("seq {seq}: {e}"));
        out.push((d.partition, d.offset, seq));
    }
    out
}

/// What was written: every record's place, the first one of each seq, the
/// later copies.
#[derive(Default)]
struct Written {
    /// (partition, offset, seq), in write order.
    records: Vec<(i32, i64, u32)>,
}

impl Written {
    /// Each seq's first place: what every reader through the proxy must get.
    fn first_places(&self) -> BTreeMap<(i32, i64), u32> {
        let mut seen = BTreeSet::new();
        self.records
            .iter()
            .filter(|(_, _, seq)| seen.insert(*seq))
            .map(|&(p, o, seq)| ((p, o), seq))
            .collect()
    }

    fn copies(&self) -> usize {
        self.records.len() - self.first_places().len()
    }

    fn ends(&self) -> BTreeMap<i32, i64> {
        let mut ends = BTreeMap::new();
        for &(p, o, _) in &self.records {
            let end = ends.entry(p).or_insert(0);
            *end = (*end).max(o + 1);
        }
        ends
    }

    /// The partition of `seq`'s first write.
    fn partition_of(&self, seq: u32) -> i32 {
        self.records.iter().find(|r| r.2 == seq).unwrap().0
    }
}

// === Readers ===

/// The kafka-python process, killed if the test fails while it still runs.
struct KafkaPython(Option<Child>);

impl KafkaPython {
    fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("still running")
    }

    /// Waits for its exit: (status, stdout, stderr).
    fn finish(&mut self) -> Output {
        self.0
            .take()
            .expect("still running")
            .wait_with_output()
            .unwrap()
    }
}

impl Drop for KafkaPython {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// kafka-python as a Connect sink task (proto-tests/python/clients/session_consumer.py).
fn spawn_kafka_python(bootstrap: &str, topic: &str) -> KafkaPython {
    support::tansu_bin(); // installs the venv too, on a fresh machine
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    Command::new(root.join(".cache/venv/bin/python"))
        .arg(root.join("proto-tests/python/clients/session_consumer.py"))
        .args(["--bootstrap", bootstrap, "--topic", topic])
        .args([
            "--group",
            "connect-pg-sink",
            "--client-id",
            "connector-consumer-pg-sink-0",
        ])
        // Outlasts the writer's WRITE_LIMIT and the read to the end after it.
        .args(["--seconds", &READ_LIMIT.as_secs().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map(|child| KafkaPython(Some(child)))
        .expect("start kafka-python")
}

/// Each partition's end marker (its last record, a first occurrence), set
/// once the writer is done.
type Wanted = Arc<Mutex<Option<BTreeSet<(i32, i64)>>>>;

/// librdkafka as another sink's task: it has no KIP-227, so every Fetch is
/// sessionless. Reads until every end marker in `want` (set once the writer
/// is done) arrived: (partition, offset, seq).
fn librdkafka_reads(bootstrap: String, topic: String, want: Wanted) -> Vec<(i32, i64, u32)> {
    let consumer: BaseConsumer = client_config(&bootstrap)
        .set("group.id", "connect-other-sink")
        .set("client.id", "connector-consumer-other-sink-0")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let start = Instant::now();
    let mut rows = Vec::new();
    while start.elapsed() < READ_LIMIT {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let value = std::str::from_utf8(m.payload().unwrap()).unwrap();
                rows.push((m.partition(), m.offset(), value[6..].parse().unwrap()));
            }
            Some(Err(e)) => panic!("librdkafka consumer error: {e}"),
            None => {}
        }
        if Arc::strong_count(&want) == 1 {
            break; // the test is gone: it failed
        }
        let done = want.lock().unwrap().as_ref().is_some_and(|want| {
            let got: BTreeSet<_> = rows.iter().map(|&(p, o, _)| (p, o)).collect();
            want.is_subset(&got)
        });
        if done {
            break;
        }
    }
    rows
}

/// Every logical record exactly once, at its first place.
fn assert_first_places_once(who: &str, rows: &[(i32, i64, u32)], written: &Written) {
    let want = written.first_places();
    let mut got = BTreeMap::new();
    let mut twice = Vec::new();
    for &(p, o, seq) in rows {
        if got.insert((p, o), seq).is_some() {
            twice.push((p, o));
        }
    }
    let missing: Vec<_> = want
        .keys()
        .filter(|k| !got.contains_key(k))
        .take(5)
        .collect();
    let extra: Vec<_> = got
        .keys()
        .filter(|k| !want.contains_key(k))
        .take(5)
        .collect();
    assert!(
        twice.is_empty() && missing.is_empty() && extra.is_empty(),
        "{who}: {} records for {} logical ones: twice {:?}, missing {missing:?}, copies or strangers {extra:?}",
        rows.len(),
        want.len(),
        &twice[..twice.len().min(5)]
    );
    assert_eq!(
        got, want,
        "{who}: a record's seq differs from the one written there"
    );
}

/// The sum of every series of metric `name`, whatever its labels.
fn sum_of(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

fn fetch_series(name: &str, connector: &str, topic: &str) -> String {
    format!("{name}{{connector=\"{connector}\",topic=\"{topic}\",direction=\"fetch\"}}")
}

// === Tests ===

/// kafka-python reads a 3-partition topic as Connect sink task pg-sink
/// while rounds of records keep arriving around the proxy, about every
/// other round with a copy of an earlier record in its first record's
/// partition, and a last round of copies only (each partition's log ends in
/// a batch the proxy empties). Its fetches are small (5 ms wait, 4 KiB per
/// partition), so the writer runs until the layer answered thousands of
/// incremental fetches. librdkafka reads the same topic as another sink,
/// sessionless, at the same time.
///
/// Both get every logical record once, at its first place; kafka-python's
/// session was created and then continued over thousands of fetches with
/// no session error on either side; the layer's incremental answers left
/// partitions out (so the proxy saw real incremental responses); and the
/// proxy counted every record it passed to pg-sink and every copy it hid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_python_keeps_its_fetch_session_over_thousands_of_fetches() {
    let (broker, layer, proxy) = bench().await;
    let topic = "sessions-live";
    create_topic(&broker.addr, topic, 3).await;
    let mut python = spawn_kafka_python(&proxy.bootstrap, topic);
    let want = Arc::new(Mutex::new(None));
    let rdkafka = tokio::task::spawn_blocking({
        let (bootstrap, topic, want) = (proxy.bootstrap.clone(), topic.to_string(), want.clone());
        move || librdkafka_reads(bootstrap, topic, want)
    });

    let producer = writer(&broker.addr);
    let mut written = Written::default();
    let mut rng = SplitMix(0x2545_f491_4f6c_dd1d);
    let mut seq = 0u32;
    let start = Instant::now();
    while layer.counts().incremental < INCREMENTAL_FETCHES {
        if let Some(status) = python.child().try_wait().unwrap() {
            let out = python.finish();
            panic!(
                "kafka-python exited early ({status}):\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(
            start.elapsed() < WRITE_LIMIT,
            "the layer answered only {:?} in {WRITE_LIMIT:?}",
            layer.counts()
        );
        let mut round: Vec<(i32, u32)> = (0..3).map(|p| (p, seq + p as u32)).collect();
        seq += 3;
        if seq > 9 && rng.below(2) == 0 {
            let old = rng.below(u64::from(seq - 3)) as u32;
            round.push((written.partition_of(old), old));
        }
        written
            .records
            .extend(write(&producer, topic, &round).await);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Each partition then gets a batch of copies only.
    let tail: Vec<(i32, u32)> = (0..3)
        .map(|p| {
            let firsts: Vec<u32> = written
                .first_places()
                .into_iter()
                .filter(|((part, _), _)| *part == p)
                .map(|(_, seq)| seq)
                .collect();
            (p, firsts[rng.below(firsts.len() as u64) as usize])
        })
        .collect();
    written.records.extend(write(&producer, topic, &tail).await);
    // Then an end marker in each partition, a new record: a reader that got
    // it has read past the copies, and nothing can follow it.
    let markers: Vec<(i32, u32)> = (0..3).map(|p| (p, seq + p as u32)).collect();
    let markers = write(&producer, topic, &markers).await;
    written.records.extend(&markers);
    let ends = written.ends();
    *want.lock().unwrap() = Some(markers.iter().map(|&(p, o, _)| (p, o)).collect());

    let line: Vec<String> = ends.iter().map(|(p, end)| format!("{p}:{end}")).collect();
    let mut stdin = python.child().stdin.take().unwrap();
    writeln!(stdin, "{}", line.join(" ")).unwrap();
    drop(stdin);
    let out = tokio::task::spawn_blocking(move || python.finish())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("kafka-python's report ({e}):\n{stdout}\n{stderr}"));
    let counts = layer.counts();
    assert!(
        out.status.success(),
        "kafka-python never reached {ends:?} ({}); layer {counts:?}\n{stderr}",
        out.status
    );
    let rows: Vec<(i32, i64, u32)> = serde_json::from_value(report["rows"].clone()).unwrap();
    let sessions = &report["sessions"];
    println!(
        "{} records written ({} copies), ends {ends:?}; layer {counts:?}; kafka-python sessions {sessions}",
        written.records.len(),
        written.copies()
    );

    assert_first_places_once("kafka-python", &rows, &written);
    assert_eq!(
        report["bad"],
        serde_json::json!([]),
        "kafka-python complained; layer {counts:?}"
    );
    // One session for the whole read: opened once, never closed or
    // refused, continued at every fetch since (the one a close cancels
    // aside).
    let kind = |k: &str| sessions[k].as_u64().unwrap_or(0);
    assert_eq!(
        (kind("created"), kind("closed"), kind("full_no_session")),
        (1, 0, 0),
        "kafka-python's sessions {sessions}; layer {counts:?}"
    );
    assert_eq!((counts.created, counts.closed), (1, 0), "{counts:?}");
    let continued = kind("continued");
    assert!(
        continued <= counts.incremental && counts.incremental <= continued + 1,
        "kafka-python continued its session {continued} times, the layer answered {counts:?}"
    );
    assert_eq!(
        counts.session_errors(),
        0,
        "session errors at the layer: {counts:?}"
    );
    assert!(counts.incremental >= INCREMENTAL_FETCHES, "{counts:?}");
    assert!(
        counts.omitted > 0,
        "no incremental answer ever left a partition out: {counts:?}"
    );

    let rd_rows = rdkafka.await.unwrap();
    assert_first_places_once("librdkafka", &rd_rows, &written);
    let counts = layer.counts();
    assert!(
        counts.sessionless > 0,
        "librdkafka's fetches never reached the layer: {counts:?}"
    );
    assert_eq!(counts.session_errors(), 0, "{counts:?}");

    let text = proxy.metrics().await;
    let read = |name| support::metric_value(&text, &fetch_series(name, "pg-sink", topic));
    assert_eq!(
        (
            read("idemgate_records_total"),
            read("idemgate_duplicates_dropped_total")
        ),
        (written.records.len() as f64, written.copies() as f64),
        "pg-sink: records passed and copies hidden, direction=fetch"
    );
    for name in [
        "idemgate_dedup_fail_open_total",
        "idemgate_connection_errors_total",
    ] {
        assert_eq!(sum_of(&text, name), 0.0, "{name}, every label:\n{text}");
    }
    proxy.assert_no_leaks().await;
}

// === The scripted check ===

/// A Fetch in session `id` at `epoch` of `topic` (a [`FetchTopic`] naming
/// it the way the version does), of `partitions` as (index, fetch offset),
/// forgetting `forget`.
fn session_fetch(
    topic: &FetchTopic,
    id: i32,
    epoch: i32,
    partitions: &[(i32, i64)],
    forget: &[i32],
) -> FetchRequest {
    let partitions: Vec<FetchPartition> = partitions
        .iter()
        .map(|&(p, offset)| {
            FetchPartition::default()
                .with_partition(p)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(1 << 20)
        })
        .collect();
    let topics = if partitions.is_empty() {
        Vec::new()
    } else {
        vec![topic.clone().with_partitions(partitions)]
    };
    let forgotten = if forget.is_empty() {
        Vec::new()
    } else {
        vec![ForgottenTopic::default()
            .with_topic(topic.topic.clone())
            .with_topic_id(topic.topic_id)
            .with_partitions(forget.to_vec())]
    };
    FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(100)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_session_id(id)
        .with_session_epoch(epoch)
        .with_topics(topics)
        .with_forgotten_topics_data(forgotten)
}

/// Everything the proxy must never change: all but the records, and the
/// hosts and ports of KIP-951 node endpoints (rewritten to the proxy's).
fn shape(resp: &FetchResponse) -> FetchResponse {
    let mut resp = resp.clone();
    for t in &mut resp.responses {
        for p in &mut t.partitions {
            p.records = None;
        }
    }
    for node in &mut resp.node_endpoints {
        node.host = StrBytes::default();
        node.port = 0;
    }
    resp
}

/// (partition index, error code) of every partition answered, in order.
fn answered(resp: &FetchResponse) -> Vec<(i32, i16)> {
    resp.responses
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(|p| (p.partition_index, p.error_code))
        })
        .collect()
}

/// Offsets of the records of partition `index` in `resp`.
fn offsets(resp: &FetchResponse, index: i32) -> Vec<i64> {
    let p = resp
        .responses
        .iter()
        .flat_map(|t| &t.partitions)
        .find(|p| p.partition_index == index)
        .unwrap();
    let mut bytes = p.records.clone().unwrap_or_default();
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let set = RecordBatchDecoder::decode(&mut bytes).unwrap();
        out.extend(set.records.iter().map(|r| r.offset));
    }
    out
}

/// A raw client of the proxy, next to the layer that answers it.
struct Scripted<'a> {
    conn: RawConn,
    layer: &'a FetchSessions,
    version: i16,
    correlation_id: i32,
}

impl Scripted<'_> {
    /// Sends `req` through the proxy: (what the layer sent, what the client got).
    async fn fetch(&mut self, req: FetchRequest) -> (FetchResponse, FetchResponse) {
        self.correlation_id += 1;
        let got: FetchResponse = self
            .conn
            .call(ApiKey::Fetch, self.version, self.correlation_id, &req)
            .await;
        let sent = self.layer.answers().pop().expect("the layer answered").1;
        (sent, got)
    }

    /// `name` as Fetch at this version names it: by name up to v12, by the
    /// topic id (from a Metadata v12 answer, which also tells the proxy the
    /// id's name) from v13.
    async fn topic(&mut self, name: &str) -> FetchTopic {
        let name: TopicName = StrBytes::from_string(name.to_string()).into();
        if self.version < 13 {
            return FetchTopic::default().with_topic(name);
        }
        self.correlation_id += 1;
        let req = MetadataRequest::default().with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(name)),
        ]));
        let resp: MetadataResponse = self
            .conn
            .call(ApiKey::Metadata, 12, self.correlation_id, &req)
            .await;
        FetchTopic::default().with_topic_id(resp.topics[0].topic_id)
    }
}

/// Raw Fetch requests through the proxy, in one session with the layer, at
/// v12 (kafka-python's newest: topics by name) and at v16 (topic ids and
/// node endpoints, as Java consumers send them): each answer the client
/// gets is compared with the one the layer sent. Partition 2 fails
/// (NOT_LEADER_OR_FOLLOWER, injected by the layer: tansu has no partition
/// errors on demand) until late in the session. The full answer names a
/// session; an incremental one whose partition 0 holds copies (rewritten by
/// the proxy) leaves partition 1 out and carries partition 2's error; a
/// quiet one carries only partition 2; a wrong epoch and an unknown id are
/// refused, and the session goes on; once the error is gone partition 2 is
/// answered again; forgetting every partition closes the session. Session
/// id, error codes, the partitions answered, watermarks and every other
/// field arrive as the layer sent them; only partition 0's records differ,
/// by the copies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_answers_pass_the_proxy_with_session_fields_untouched() {
    let (broker, layer, proxy) = bench().await;
    layer.record_answers();
    let producer = writer(&broker.addr);
    for version in [12, 16] {
        let name = format!("sessions-scripted-v{version}");
        create_topic(&broker.addr, &name, 3).await;
        let originals: Vec<(i32, u32)> = (0..10).map(|seq| (0, seq)).collect();
        write(&producer, &name, &originals).await;
        let mut client = Scripted {
            conn: RawConn::connect(&proxy.bootstrap).await,
            layer: &layer,
            version,
            correlation_id: 0,
        };
        let topic = client.topic(&name).await;
        layer.fail(&topic, 2, NOT_LEADER_OR_FOLLOWER);
        let before = layer.counts();

        let all = [(0, 0), (1, 0), (2, 0)];
        let (sent, full) = client.fetch(session_fetch(&topic, 0, 0, &all, &[])).await;
        assert_eq!(shape(&full), shape(&sent), "v{version}: full answer");
        let id = full.session_id;
        assert_ne!(id, 0, "v{version}: the layer opened a session");
        assert_eq!(
            answered(&full),
            [(0, 0), (1, 0), (2, NOT_LEADER_OR_FOLLOWER)],
            "v{version}: a full answer holds every partition"
        );
        assert_eq!(offsets(&full, 0), (0..10).collect::<Vec<_>>());

        // Offsets 10..15: copies of 0..5; 15..17: new records.
        let more: Vec<(i32, u32)> = (0..5).chain(10..12).map(|seq| (0, seq)).collect();
        write(&producer, &name, &more).await;
        let (sent, inc) = client
            .fetch(session_fetch(&topic, id, 1, &[(0, 10)], &[]))
            .await;
        assert_eq!(
            shape(&inc),
            shape(&sent),
            "v{version}: incremental answer with records"
        );
        assert_eq!(inc.session_id, id);
        assert_eq!(
            answered(&inc),
            [(0, 0), (2, NOT_LEADER_OR_FOLLOWER)],
            "v{version}: partition 1 left out, partition 2's error kept"
        );
        assert_eq!(
            offsets(&sent, 0),
            (10..17).collect::<Vec<_>>(),
            "v{version}: the layer sent the copies"
        );
        assert_eq!(
            offsets(&inc, 0),
            [15, 16],
            "v{version}: the proxy hid the copies, and only them"
        );

        let (sent, quiet) = client
            .fetch(session_fetch(&topic, id, 2, &[(0, 17)], &[]))
            .await;
        assert_eq!(shape(&quiet), shape(&sent), "v{version}: quiet answer");
        assert_eq!(quiet.session_id, id);
        assert_eq!(
            answered(&quiet),
            [(2, NOT_LEADER_OR_FOLLOWER)],
            "v{version}: only the partition in error"
        );

        let (sent, wrong_epoch) = client.fetch(session_fetch(&topic, id, 9, &[], &[])).await;
        assert_eq!(wrong_epoch, sent);
        assert_eq!(
            (
                wrong_epoch.error_code,
                wrong_epoch.session_id,
                wrong_epoch.responses.len()
            ),
            (INVALID_FETCH_SESSION_EPOCH, 0, 0)
        );
        let (sent, unknown) = client
            .fetch(session_fetch(&topic, id.wrapping_add(1), 1, &[], &[]))
            .await;
        assert_eq!(unknown, sent);
        assert_eq!(
            (unknown.error_code, unknown.session_id),
            (FETCH_SESSION_ID_NOT_FOUND, 0)
        );

        // A refused request leaves the session as it was; the partition
        // whose error is gone is answered again (its cached watermark was -1).
        layer.fail(&topic, 2, 0);
        let (sent, again) = client.fetch(session_fetch(&topic, id, 3, &[], &[])).await;
        assert_eq!(shape(&again), shape(&sent), "v{version}: the error gone");
        assert_eq!((again.error_code, again.session_id), (0, id));
        assert_eq!(answered(&again), [(2, 0)]);

        let (sent, closed) = client
            .fetch(session_fetch(&topic, id, 4, &[], &[0, 1, 2]))
            .await;
        assert_eq!(shape(&closed), shape(&sent));
        assert_eq!(
            (closed.error_code, closed.session_id),
            (0, 0),
            "v{version}: the emptied session is closed"
        );

        let counts = layer.counts();
        let new = Counts {
            created: counts.created - before.created,
            incremental: counts.incremental - before.incremental,
            omitted: counts.omitted - before.omitted,
            partition_errors: counts.partition_errors - before.partition_errors,
            closed: counts.closed - before.closed,
            id_not_found: counts.id_not_found - before.id_not_found,
            invalid_epoch: counts.invalid_epoch - before.invalid_epoch,
            ..Counts::default()
        };
        let want = Counts {
            created: 1,
            incremental: 3,
            omitted: 1 + 2 + 2,
            partition_errors: 2,
            closed: 1,
            id_not_found: 1,
            invalid_epoch: 1,
            ..Counts::default()
        };
        assert_eq!(new, want, "v{version}: what the layer did");
        let text = proxy.metrics().await;
        let series = fetch_series("idemgate_duplicates_dropped_total", "proto-tests", &name);
        assert_eq!(support::metric_value(&text, &series), 5.0, "{text}");
    }
    proxy.assert_no_leaks().await;
}

/// A consumer that knows a topic's id from before (its Metadata went
/// elsewhere, or to the proxy before a restart) and fetches by id (v13+)
/// from a fresh proxy, without a Metadata request through it: the proxy's
/// own probe has learned the id, so the copies are removed rather than
/// delivered unfiltered (`fail_open{reason="topic_id"}`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_by_topic_id_is_filtered_before_any_metadata_through_the_proxy() {
    let broker = Tansu::start();
    let name = "sessions-by-id";
    create_topic(&broker.addr, name, 1).await;
    let producer = writer(&broker.addr);
    // Offsets 0..10, then 10..15: copies of 0..5.
    let seqs: Vec<(i32, u32)> = (0..10).chain(0..5).map(|seq| (0, seq)).collect();
    write(&producer, name, &seqs).await;
    // The id, as the consumer learned it: straight from the broker.
    let mut direct = RawConn::connect(&broker.addr).await;
    let req =
        MetadataRequest::default()
            .with_topics(Some(vec![MetadataRequestTopic::default()
                .with_name(Some(StrBytes::from_static_str(name).into()))]));
    let md: MetadataResponse = direct.call(ApiKey::Metadata, 12, 1, &req).await;
    let topic = FetchTopic::default().with_topic_id(md.topics[0].topic_id);

    // Started after the topic exists: its first probe names it.
    let proxy = Proxy::start_with(&broker.addr, FETCH_RULE).await;
    let mut conn = RawConn::connect(&proxy.bootstrap).await;
    let sessionless = session_fetch(&topic, 0, -1, &[(0, 0)], &[]);
    let resp: FetchResponse = conn.call(ApiKey::Fetch, 16, 1, &sessionless).await;
    assert_eq!(resp.responses[0].partitions[0].error_code, 0);
    assert_eq!(
        offsets(&resp, 0),
        (0..10).collect::<Vec<_>>(),
        "the copies at 10..15 are removed"
    );
    let text = proxy.metrics().await;
    assert_eq!(
        support::metric_value(&text, "idemgate_dedup_fail_open_total{reason=\"topic_id\"}"),
        0.0,
        "{text}"
    );
}
