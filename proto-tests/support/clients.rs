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
