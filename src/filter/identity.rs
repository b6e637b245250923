//! Who a client is: the connector and task behind Kafka Connect's client ids.
//!
//! Connect names its clients `connector-producer-<connector>-<task>`,
//! `connector-consumer-<connector>-<task>`, `connector-dlq-producer-…`,
//! `connector-adminclient-…` (apache/kafka `Worker.java`); the connector-level
//! offset-store clients drop the task. Connector names may contain '-', so the
//! task is the trailing integer. Other clients are known by their client id.
//! A client id is the client's own claim: good for attribution, not for trust.

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
}
