//! librdkafka clients set up for tests.

use std::time::Duration;

/// A librdkafka client config that fails fast in a test.
pub fn client_config(bootstrap: &str) -> rdkafka::config::ClientConfig {
    let mut c = rdkafka::config::ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        // Fail fast in a test instead of retrying for minutes.
        .set("message.timeout.ms", "30000")
        .set("socket.timeout.ms", "20000");
    c
}

/// Creates a topic through `bootstrap` (the proxy or the broker) with librdkafka's admin client.
pub async fn create_topic(bootstrap: &str, name: &str, partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        client_config(bootstrap).create().unwrap();
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let results = admin
        .create_topics(
            &[topic],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .unwrap();
    for r in results {
        r.unwrap();
    }
}

/// A consumer built from `config` (its `group.id` included: librdkafka wants
/// one, though an assigned consumer never joins the group) that reads every
/// partition of `topic` from `from`, without group membership (assign), as
/// a sink task or a check of what the log holds does.
pub fn assign_all(
    config: &rdkafka::config::ClientConfig,
    topic: &str,
    partitions: i32,
    from: rdkafka::Offset,
) -> rdkafka::consumer::BaseConsumer {
    use rdkafka::consumer::Consumer;
    let consumer: rdkafka::consumer::BaseConsumer = config.create().unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, from).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    consumer
}

/// Queues `record`, waiting `wait` and trying again while librdkafka's queue
/// is full (its own backpressure); any other error fails, naming `what`.
pub fn send_queued<'a, C, K, P>(
    producer: &rdkafka::producer::ThreadedProducer<C>,
    mut record: rdkafka::producer::BaseRecord<'a, K, P, C::DeliveryOpaque>,
    wait: Duration,
    what: impl std::fmt::Display,
) where
    C: rdkafka::producer::ProducerContext + 'static,
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
{
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                std::thread::sleep(wait);
            }
            Err((e, _)) => panic!("{what}: {e}"),
        }
    }
}

/// Bytes per second after the first `burst` bytes of `events` (when, bytes):
/// from the moment the cumulative count passed the burst to the last event.
/// What a quota lets through once its burst is spent, as the quota suite
/// checks it and the quota bench measures it.
pub fn rate_after_burst(events: &[(std::time::Instant, usize)], burst: usize) -> f64 {
    let mut events = events.to_vec();
    events.sort_by_key(|(t, _)| *t);
    let mut total = 0;
    let mut from = None;
    for (t, n) in &events {
        total += n;
        if from.is_none() && total >= burst {
            from = Some((*t, total));
        }
    }
    let (t0, at) = from.expect("more than the burst");
    let (t1, _) = *events.last().unwrap();
    (total - at) as f64 / (t1 - t0).as_secs_f64()
}
