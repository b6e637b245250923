//! What a connection remembers between its requests, for the filters that
//! read it across requests (the dedup filters, identity).

use std::sync::atomic::Ordering::Relaxed;

use crate::identity::Identity;

/// What a connection remembers between its requests.
#[derive(Debug, Default)]
pub struct ConnState {
    /// Who the client says it is (its first request's client id).
    pub(crate) identity: Option<Identity>,
    /// Produce-path dedup of this connection.
    pub(crate) session: Session,
    /// This connection among the process's (0 until asked).
    pub(crate) id: u64,
}

impl ConnState {
    /// A number no other connection of this process has.
    pub(crate) fn id(&mut self) -> u64 {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        if self.id == 0 {
            self.id = NEXT.fetch_add(1, Relaxed);
        }
        self.id
    }

    /// Who the client is, once its first request has come.
    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_ref()
    }

    /// Who the client is, as the quota filter named it (Connect client ids,
    /// then `quota.connector_patterns`), for the filters after it.
    pub fn set_identity(&mut self, identity: Identity) {
        self.identity = Some(identity);
    }
}

/// What the produce dedup filter remembers of one connection.
#[derive(Debug, Default)]
pub struct Session {
    pub(crate) started: bool,
    /// Replays dropped on this connection so far.
    pub(crate) dropped: u64,
    /// The client reports every record of a partition answered with
    /// base_offset -1 as -1 ("no offset"), rather than numbering -1, 0, 1.
    pub(crate) reports_no_offset: bool,
}

impl Session {
    /// The client's name from its ApiVersions request (KIP-511). Clients whose
    /// delivery reports give -1 for every record of a partition answered with
    /// base_offset -1: the Java client (`RecordMetadata`: "baseOffset == -1 ?
    /// -1 : baseOffset + batchIndex"), franz-go and kafka-python. librdkafka
    /// and aiokafka number -1, 0, 1, ...; kafkajs, aiokafka and older clients
    /// send no name: all of them are treated as numbering from any base.
    pub fn set_client_software(&mut self, name: &str) {
        self.reports_no_offset = matches!(name, "apache-kafka-java" | "kgo" | "kafka-python");
    }
}
