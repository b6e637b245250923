//! Who a client is: the connector and task behind Kafka Connect's client ids.
//!
//! Connect names its clients `connector-producer-<connector>-<task>`,
//! `connector-consumer-<connector>-<task>`, `connector-dlq-producer-…`,
//! `connector-adminclient-…` (apache/kafka `Worker.java`); the connector-level
//! offset-store clients drop the task. Connector names may contain '-', so the
//! task is the trailing integer. Other clients are known by their client id.
//! A client id is the client's own claim: good for attribution, not for trust.
//!
//! Some of these clients write Connect's own bookkeeping, never a connector's
//! data ([`Identity::is_connect_internal`]): a worker's config, offset and
//! status backing stores name their clients `<group.id>[-<client.id>]-configs`
//! (`…-configs-leader` for the config topic's leader), `-offsets`,
//! `-statuses` and `-shared-admin` (apache/kafka `ConnectUtils.clientIdBase`,
//! `KafkaConfigBackingStore`, `KafkaOffsetBackingStore`,
//! `KafkaStatusBackingStore`); a connector's own offsets-topic clients
//! (KIP-618) are `connector-producer-<connector>` and
//! `connector-consumer-<connector>` with no task, and the REST offset
//! alteration producer (KIP-875) is `connector-offset-producer-<connector>`
//! (`Worker.java`).

/// What kind of Connect client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Producer,
    Consumer,
    DlqProducer,
    Admin,
    OffsetProducer,
}

/// A client as metrics and logs name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The connector, for Connect clients.
    pub connector: Option<String>,
    pub task: Option<u32>,
    pub role: Option<Role>,
    pub client_id: String,
}

impl Identity {
    pub fn from_client_id(client_id: &str) -> Identity {
        const PREFIXES: [(&str, Role); 5] = [
            ("connector-dlq-producer-", Role::DlqProducer),
            ("connector-offset-producer-", Role::OffsetProducer),
            ("connector-producer-", Role::Producer),
            ("connector-consumer-", Role::Consumer),
            ("connector-adminclient-", Role::Admin),
        ];
        for (prefix, role) in PREFIXES {
            let Some(rest) = client_id.strip_prefix(prefix) else {
                continue;
            };
            if rest.is_empty() {
                break;
            }
            let (connector, task) = match rest.rsplit_once('-') {
                Some((name, task)) if !name.is_empty() && role != Role::OffsetProducer => {
                    match task.parse::<u32>() {
                        Ok(t) => (name, Some(t)),
                        Err(_) => (rest, None),
                    }
                }
                _ => (rest, None),
            };
            return Identity {
                connector: Some(connector.to_string()),
                task,
                role: Some(role),
                client_id: client_id.to_string(),
            };
        }
        Identity {
            connector: None,
            task: None,
            role: None,
            client_id: client_id.to_string(),
        }
    }

    /// A client of Connect's own config, offset or status topics: whatever
    /// topics it writes or reads are Connect's internal topics, never keyed.
    /// A client that merely looks like one is left alone too: that costs at
    /// most a duplicate, never a loss.
    pub fn is_connect_internal(&self) -> bool {
        const WORKER_SUFFIXES: [&str; 5] = [
            "-configs",
            "-configs-leader",
            "-offsets",
            "-statuses",
            "-shared-admin",
        ];
        match self.role {
            Some(Role::OffsetProducer) => true,
            Some(Role::Producer | Role::Consumer) => self.task.is_none(),
            Some(_) => false,
            None => WORKER_SUFFIXES.iter().any(|s| self.client_id.ends_with(s)),
        }
    }

    /// True when `key` is how Connect keys one of this connector's source
    /// offsets: `[<connector>, <source partition>]`, written by the worker's
    /// internal JsonConverter without schemas (apache/kafka
    /// `OffsetStorageWriter`, `OffsetUtils`). A source task without
    /// exactly-once support writes its connector's own offsets topic with
    /// its data producer (`Worker.offsetStoreForRegularSourceTask`), so
    /// such a key is the only mark of that topic.
    pub fn is_connect_offset_key(&self, key: &[u8]) -> bool {
        let Some(connector) = &self.connector else {
            return false;
        };
        if !key.starts_with(b"[") {
            return false;
        }
        match serde_json::from_slice::<serde_json::Value>(key) {
            Ok(serde_json::Value::Array(parts)) => {
                parts.len() == 2
                    && parts[0].as_str() == Some(connector.as_str())
                    && (parts[1].is_object() || parts[1].is_null())
            }
            _ => false,
        }
    }

    /// The `connector` label: the connector, or the client id for other clients.
    pub fn label(&self) -> &str {
        self.connector.as_deref().unwrap_or(&self.client_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_client_ids() {
        let i = Identity::from_client_id("connector-producer-pg-orders-source-3");
        assert_eq!(i.connector.as_deref(), Some("pg-orders-source"));
        assert_eq!(i.task, Some(3));
        assert_eq!(i.role, Some(Role::Producer));
        let i = Identity::from_client_id("connector-consumer-s3-sink-0");
        assert_eq!(
            (i.connector.as_deref(), i.role),
            (Some("s3-sink"), Some(Role::Consumer))
        );
        let i = Identity::from_client_id("connector-dlq-producer-s3-sink-12");
        assert_eq!(
            (i.connector.as_deref(), i.task),
            (Some("s3-sink"), Some(12))
        );
        // Connector-level clients have no task.
        let i = Identity::from_client_id("connector-producer-orders");
        assert_eq!((i.connector.as_deref(), i.task), (Some("orders"), None));
        let i = Identity::from_client_id("connector-offset-producer-my-conn-2");
        assert_eq!(i.connector.as_deref(), Some("my-conn-2"));
        // Not Connect: the client id is the label.
        let i = Identity::from_client_id("rdkafka");
        assert_eq!((i.connector.as_deref(), i.label()), (None, "rdkafka"));
        assert_eq!(
            Identity::from_client_id("connector-producer-").connector,
            None
        );
    }

    #[test]
    fn connect_offset_keys_name_their_own_connector() {
        let task = Identity::from_client_id("connector-producer-files-src-0");
        assert!(task.is_connect_offset_key(br#"["files-src",{"filename":"/tmp/a.txt"}]"#));
        assert!(task.is_connect_offset_key(br#"["files-src",null]"#));
        for not in [
            &br#"["other-src",{"filename":"/tmp/a.txt"}]"#[..],
            br#"["files-src"]"#,
            br#"{"id":1}"#,
            b"order-1",
            b"",
        ] {
            assert!(!task.is_connect_offset_key(not), "{not:?}");
        }
        assert!(!Identity::from_client_id("rdkafka").is_connect_offset_key(br#"["x",{}]"#));
    }

    #[test]
    fn connect_internal_clients_whatever_the_group_id() {
        // A worker in group "etl-cluster" with client.id "w1" (ConnectUtils
        // .clientIdBase: "<group.id>-<client.id>-"), and one without client.id.
        for id in [
            "etl-cluster-w1-configs",
            "etl-cluster-w1-configs-leader",
            "etl-cluster-offsets",
            "etl-cluster-statuses",
            "etl-cluster-shared-admin",
            "connect-offsets", // standalone: clientIdBase "connect-"
            "connector-producer-orders",
            "connector-consumer-orders",
            "connector-offset-producer-orders",
        ] {
            assert!(Identity::from_client_id(id).is_connect_internal(), "{id}");
        }
        for id in [
            "connector-producer-orders-0",
            "connector-consumer-s3-sink-3",
            "connector-dlq-producer-s3-sink-3",
            "rdkafka",
            "etl-configs-reader",
        ] {
            assert!(!Identity::from_client_id(id).is_connect_internal(), "{id}");
        }
    }
}
