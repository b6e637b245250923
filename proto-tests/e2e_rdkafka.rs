//! librdkafka (the rdkafka crate) through the proxy against a real tansu
//! broker: what a client sees through idemgate must be what it sees direct.
//! The leak check runs in every test.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::support::{assign_all, client_config, create_topic, Proxy, Tansu};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::topic_partition_list::Offset;

/// (partition, offset, key, value) of one record.
type Row = (i32, i64, Vec<u8>, Vec<u8>);

/// A tansu broker, the proxy in front of it, and `topic` with 3 partitions.
async fn proxied_topic(topic: &str) -> (Tansu, Proxy) {
    let broker = Tansu::start();
    let proxy = Proxy::start(&broker.addr).await;
    create_topic(&proxy.bootstrap, topic, 3).await;
    (broker, proxy)
}

/// Produces `n` records `key-i`/`value-i` with acks=all and waits for every
/// delivery; returns where each landed.
async fn produce(bootstrap: &str, topic: &str, n: usize, extra: &[(&str, &str)]) -> Vec<Row> {
    let mut config = client_config(bootstrap);
    config.set("acks", "all").set("linger.ms", "5");
    for (k, v) in extra {
        config.set(*k, *v);
    }
    let producer: FutureProducer = config.create().unwrap();
    let mut pending = Vec::with_capacity(n);
    for i in 0..n {
        let key = format!("key-{i}");
        let value = format!("value-{i}");
        let record = FutureRecord::to(topic).key(&key).payload(&value);
        // send_result enqueues now; awaiting the futures later waits for acks.
        let delivery = producer.send_result(record).map_err(|(e, _)| e).unwrap();
        pending.push((key, value, delivery));
    }
    let mut rows = Vec::with_capacity(n);
    for (key, value, delivery) in pending {
        let (partition, offset) = match delivery.await.unwrap() {
            Ok(d) => (d.partition, d.offset),
            Err((e, _)) => panic!("delivery failed: {e}"),
        };
        rows.push((partition, offset, key.into_bytes(), value.into_bytes()));
    }
    producer.flush(Duration::from_secs(10)).unwrap();
    rows
}

/// Consumes until `n` records arrived (or 60 s passed) in group `group`,
/// committing synchronously at the end.
async fn consume_group(bootstrap: &str, topic: &str, group: &str, n: usize) -> Vec<Row> {
    let (bootstrap, topic, group) = (bootstrap.to_string(), topic.to_string(), group.to_string());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = client_config(&bootstrap)
            .set("group.id", &group)
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("session.timeout.ms", "6000")
            .create()
            .unwrap();
        consumer.subscribe(&[&topic]).unwrap();
        let rows = poll_rows(&consumer, n);
        if !rows.is_empty() {
            consumer.commit_consumer_state(CommitMode::Sync).unwrap();
        }
        consumer.unsubscribe();
        rows
    })
    .await
    .unwrap()
}

/// Reads every partition from the beginning without a group (assign).
async fn consume_assigned(bootstrap: &str, topic: &str, partitions: i32, n: usize) -> Vec<Row> {
    let (bootstrap, topic) = (bootstrap.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        let mut config = client_config(&bootstrap);
        config
            .set("group.id", "unused-assign-only")
            .set("enable.auto.commit", "false");
        let consumer = assign_all(&config, &topic, partitions, Offset::Beginning);
        poll_rows(&consumer, n)
    })
    .await
    .unwrap()
}

fn poll_rows(consumer: &BaseConsumer, n: usize) -> Vec<Row> {
    let start = Instant::now();
    let mut rows = Vec::with_capacity(n);
    while rows.len() < n && start.elapsed() < Duration::from_secs(60) {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => rows.push((
                m.partition(),
                m.offset(),
                m.key().unwrap_or_default().to_vec(),
                m.payload().unwrap_or_default().to_vec(),
            )),
            Some(Err(e)) => panic!("consume error: {e}"),
            None => {}
        }
    }
    rows
}

fn sorted(mut rows: Vec<Row>) -> Vec<Row> {
    rows.sort();
    rows
}

/// Every partition's offsets strictly increase in the order consumed.
fn assert_ordered_per_partition(rows: &[Row]) {
    let mut last: BTreeMap<i32, i64> = BTreeMap::new();
    for (p, o, _, _) in rows {
        if let Some(prev) = last.insert(*p, *o) {
            assert!(*o > prev, "partition {p}: offset {o} after {prev}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_and_consume_10k_records_across_3_partitions_same_as_direct() {
    let topic = "orders-10k";
    let (broker, proxy) = proxied_topic(topic).await;

    let produced = produce(&proxy.bootstrap, topic, 10_000, &[]).await;
    let partitions: std::collections::BTreeSet<i32> = produced.iter().map(|r| r.0).collect();
    assert_eq!(partitions.len(), 3, "keys spread over all 3 partitions");

    let through = consume_group(&proxy.bootstrap, topic, "connect-pg-sink", 10_000).await;
    assert_eq!(through.len(), 10_000);
    assert_ordered_per_partition(&through);
    let direct = consume_assigned(&broker.addr, topic, 3, 10_000).await;
    assert_eq!(
        sorted(through),
        sorted(direct.clone()),
        "through the proxy == direct"
    );
    assert_eq!(
        sorted(produced),
        sorted(direct),
        "delivery reports match the log"
    );
    proxy.assert_no_leaks().await;
    assert!(
        proxy
            .metric("idemgate_requests_total{api=\"Produce\"}")
            .await
            > 0.0
    );
    assert!(proxy.metric("idemgate_requests_total{api=\"Fetch\"}").await > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_group_commits_and_a_rejoin_resumes() {
    let topic = "rejoin";
    let (_broker, proxy) = proxied_topic(topic).await;
    produce(&proxy.bootstrap, topic, 600, &[]).await;

    // First member reads a part, commits what it read, leaves.
    let first = consume_group(&proxy.bootstrap, topic, "connect-rejoin", 200).await;
    assert!(first.len() >= 200);
    // A new member of the same group resumes at the committed offsets.
    let rest = consume_group(&proxy.bootstrap, topic, "connect-rejoin", 600 - first.len()).await;
    let mut all: Vec<Row> = first.iter().chain(rest.iter()).cloned().collect();
    all.sort();
    all.dedup();
    assert_eq!(
        first.len() + rest.len(),
        600,
        "nothing read twice after a commit"
    );
    assert_eq!(all.len(), 600, "nothing missed");
    proxy.assert_no_leaks().await;
    assert!(
        proxy
            .metric("idemgate_requests_total{api=\"JoinGroup\"}")
            .await
            >= 2.0
    );
    assert!(
        proxy
            .metric("idemgate_requests_total{api=\"OffsetCommit\"}")
            .await
            >= 2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_producer_through_the_proxy() {
    let topic = "idempotent";
    let (broker, proxy) = proxied_topic(topic).await;
    let produced = produce(
        &proxy.bootstrap,
        topic,
        3_000,
        &[
            ("enable.idempotence", "true"),
            ("max.in.flight.requests.per.connection", "5"),
        ],
    )
    .await;
    let direct = consume_assigned(&broker.addr, topic, 3, 3_000).await;
    assert_eq!(sorted(produced), sorted(direct));
    assert!(
        proxy
            .metric("idemgate_requests_total{api=\"InitProducerId\"}")
            .await
            >= 1.0
    );
    proxy.assert_no_leaks().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_shows_only_the_proxy_and_list_offsets_match_direct() {
    let topic = "offsets";
    let (broker, proxy) = proxied_topic(topic).await;
    produce(&proxy.bootstrap, topic, 900, &[]).await;

    let (bootstrap, direct_addr, t) = (
        proxy.bootstrap.clone(),
        broker.addr.clone(),
        topic.to_string(),
    );
    let (lo, hi) = proxy.broker_ports;
    tokio::task::spawn_blocking(move || {
        let through: BaseConsumer = client_config(&bootstrap).create().unwrap();
        let direct: BaseConsumer = client_config(&direct_addr).create().unwrap();
        let md = through
            .fetch_metadata(Some(&t), Duration::from_secs(10))
            .unwrap();
        for b in md.brokers() {
            assert_eq!(b.host(), "127.0.0.1");
            assert!(
                (lo as i32..=hi as i32).contains(&b.port()),
                "broker {} at port {} is not a proxy port",
                b.id(),
                b.port()
            );
        }
        assert_eq!(md.topics()[0].partitions().len(), 3);
        for p in 0..3 {
            let w_through = through
                .fetch_watermarks(&t, p, Duration::from_secs(10))
                .unwrap();
            let w_direct = direct
                .fetch_watermarks(&t, p, Duration::from_secs(10))
                .unwrap();
            assert_eq!(
                w_through, w_direct,
                "partition {p}: ListOffsets through == direct"
            );
            assert_eq!(w_through.0, 0);
            // tansu's high watermark is wrong after several batches
            // (TESTBED.md), so equality with direct is the check, not a count.
        }
    })
    .await
    .unwrap();
    proxy.assert_no_leaks().await;
    assert!(
        proxy
            .metric("idemgate_requests_total{api=\"ListOffsets\"}")
            .await
            >= 3.0
    );
}
