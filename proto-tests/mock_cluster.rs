//! librdkafka's mock cluster behind the proxy, where tansu can't help: three
//! brokers (a listener per node, leaders spread across them) and injected
//! faults (broker errors, a broker down and back).

use std::time::{Duration, Instant};

use crate::support::{assign_all, Proxy, RawConn};
use kafka_protocol::messages::{ApiKey, MetadataRequest, MetadataResponse};
use rdkafka::config::ClientConfig;
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::Offset;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

fn producer(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("message.timeout.ms", "30000")
        .set("retry.backoff.ms", "50")
        .create()
        .unwrap()
}

async fn send_all(producer: &FutureProducer, topic: &str, n: usize, tag: &str) -> Vec<(i32, i64)> {
    let mut pending = Vec::new();
    for i in 0..n {
        let key = format!("{tag}-{i}");
        pending.push(
            producer
                .send_result(FutureRecord::to(topic).key(&key).payload(&key))
                .map_err(|(e, _)| e)
                .unwrap(),
        );
    }
    let mut out = Vec::new();
    for d in pending {
        match d.await.unwrap() {
            Ok(d) => out.push((d.partition, d.offset)),
            Err((e, _)) => panic!("delivery failed: {e}"),
        }
    }
    out
}

fn count_direct(bootstrap: &str, topic: &str, partitions: i32, n: usize) -> usize {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "count");
    let consumer = assign_all(&config, topic, partitions, Offset::Beginning);
    let start = Instant::now();
    let mut seen = 0;
    while seen < n && start.elapsed() < Duration::from_secs(30) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            assert!(m.payload().is_some());
            seen += 1;
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_brokers_each_get_their_own_listener() {
    let mock = MockCluster::new(3).unwrap();
    mock.create_topic("spread", 6, 1).unwrap();
    for p in 0..6 {
        mock.partition_leader("spread", p, Some(p % 3 + 1)).unwrap();
    }
    let upstream = mock.bootstrap_servers();
    let first = upstream.split(',').next().unwrap().to_string();
    let proxy = Proxy::start(&first).await;

    let mut conn = RawConn::connect(&proxy.bootstrap).await;
    let md: MetadataResponse = conn
        .call(ApiKey::Metadata, 9, 1, &MetadataRequest::default())
        .await;
    let mut ports: Vec<i32> = md.brokers.iter().map(|b| b.port).collect();
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), 3, "one proxy port per broker: {ports:?}");
    for b in &md.brokers {
        assert!((proxy.broker_ports.0 as i32..=proxy.broker_ports.1 as i32).contains(&b.port));
    }

    let p = producer(&proxy.bootstrap);
    let delivered = send_all(&p, "spread", 600, "r").await;
    let partitions: std::collections::BTreeSet<i32> = delivered.iter().map(|d| d.0).collect();
    assert_eq!(
        partitions.len(),
        6,
        "records reached the leaders on all three brokers"
    );
    let bootstrap = upstream.clone();
    let seen = tokio::task::spawn_blocking(move || count_direct(&bootstrap, "spread", 6, 600))
        .await
        .unwrap();
    assert_eq!(seen, 600);
    proxy.assert_no_leaks().await;
    assert_eq!(proxy.metric("idemgate_broker_listeners").await, 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_errors_reach_the_client_and_its_retries_succeed() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("flaky", 1, 1).unwrap();
    let proxy = Proxy::start(&mock.bootstrap_servers()).await;
    // The next three Produce requests fail with retriable errors.
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS_AFTER_APPEND,
        ],
    );
    let p = producer(&proxy.bootstrap);
    let delivered = send_all(&p, "flaky", 50, "e").await;
    assert_eq!(delivered.len(), 50);
    let bootstrap = mock.bootstrap_servers();
    // Retries after NOT_ENOUGH_REPLICAS_AFTER_APPEND may write twice: at least all.
    let seen = tokio::task::spawn_blocking(move || count_direct(&bootstrap, "flaky", 1, 50))
        .await
        .unwrap();
    assert!(seen >= 50, "{seen}");
    assert!(
        proxy
            .metric("idemgate_requests_total{api=\"Produce\"}")
            .await
            >= 4.0,
        "errors were retried through the proxy"
    );
    proxy.assert_no_leaks().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_going_down_and_up_is_survived() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("bounce", 1, 1).unwrap();
    let proxy = Proxy::start(&mock.bootstrap_servers()).await;
    let p = producer(&proxy.bootstrap);
    assert_eq!(send_all(&p, "bounce", 20, "before").await.len(), 20);
    const UPSTREAM_ERRORS: &str = "idemgate_connection_errors_total{side=\"upstream\"}";
    const CONNECTIONS: &str = "idemgate_connections_total";
    let connections = proxy.metric(CONNECTIONS).await;
    mock.broker_down(1).unwrap();
    // The proxy saw its upstream connection break.
    let errors = proxy.wait_metric(UPSTREAM_ERRORS, 1.0).await;
    assert!(
        errors >= 1.0,
        "the broken upstream connection was seen and counted"
    );
    // Sent while the broker is down: held by the client, delivered after.
    let later = {
        let p = p.clone();
        tokio::spawn(async move { send_all(&p, "bounce", 20, "during").await })
    };
    // The client came back to the proxy while the broker was still down.
    assert!(
        proxy.wait_metric(CONNECTIONS, connections + 1.0).await > connections,
        "the client reconnected during the outage"
    );
    mock.broker_up(1).unwrap();
    assert_eq!(later.await.unwrap().len(), 20);
    proxy.assert_no_leaks().await;
}
