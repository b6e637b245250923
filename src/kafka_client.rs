//! The proxy's own Kafka client (rskafka), for the topics it keeps in the
//! cluster: the shared window's (`[dedup.shared]`) and the tier's quota
//! usage (`[quota.shared]`).
//!
//! rskafka is pure Rust, takes our rustls `ClientConfig` (`[upstream.tls]`)
//! and speaks SASL PLAIN and SCRAM with the topic's own credentials. It
//! cannot create a topic with settings, so `upstream::create_topic` does
//! that first, on a connection of the proxy's own.

use rskafka::client::{Client, ClientBuilder, Credentials, SaslConfig};
use rskafka::BackoffConfig;

use crate::config::{SharedSasl, Upstream};
use crate::tls::UpstreamTlsConnector;

/// A topic of the proxy's own, and how to make it.
pub(crate) struct OwnTopic<'a> {
    /// Names the client in the brokers' logs, and the feature in ours.
    pub client_id: &'static str,
    pub name: &'a str,
    pub partitions: i32,
    pub replication_factor: i16,
    /// Topic configs set when the proxy creates it.
    pub configs: &'a [(&'a str, String)],
}

/// A client on `[upstream]`, with `topic` created if missing.
pub(crate) async fn connect(
    upstream: &Upstream,
    tls: Option<&UpstreamTlsConnector>,
    sasl: Option<&SharedSasl>,
    topic: &OwnTopic<'_>,
) -> Result<Client, String> {
    let created = crate::upstream::create_topic(
        upstream,
        tls,
        topic.name,
        topic.partitions,
        topic.replication_factor,
        topic.configs,
    )
    .await;
    match created {
        Ok(true) => {
            tracing::info!(topic = %topic.name, partitions = topic.partitions, client = topic.client_id,
            "topic created")
        }
        Ok(false) => {}
        // With SASL the proxy's own connection (no SASL) is refused: the
        // topic must then exist, which the client below finds out.
        Err(e) => tracing::debug!(error = %e, client = topic.client_id, "topic not created here"),
    }
    let mut builder = ClientBuilder::new(upstream.bootstrap.clone())
        .client_id(topic.client_id)
        .backoff_config(BackoffConfig {
            deadline: Some(upstream.request_timeout),
            ..Default::default()
        });
    if let Some(tls) = tls {
        builder = builder.tls_config(tls.client_config());
    }
    if let Some(sasl) = sasl {
        let credentials = Credentials::new(sasl.username.clone(), sasl.password.clone());
        builder = builder.sasl_config(match sasl.mechanism.as_str() {
            "PLAIN" => SaslConfig::Plain(credentials),
            "SCRAM-SHA-256" => SaslConfig::ScramSha256(credentials),
            _ => SaslConfig::ScramSha512(credentials),
        });
    }
    let client = tokio::time::timeout(upstream.connect_timeout * 3, builder.build())
        .await
        .map_err(|_| "connecting timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let topics = client.list_topics().await.map_err(|e| e.to_string())?;
    if !topics.iter().any(|t| t.name == topic.name) {
        return Err(format!(
            "topic {} does not exist and could not be created",
            topic.name
        ));
    }
    Ok(client)
}
