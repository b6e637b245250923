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
