//! What a connection remembers between its requests, for the filters that
//! read it across requests (the dedup filters, identity).

use std::sync::atomic::Ordering::Relaxed;

use crate::filter::dedup_produce;
use crate::identity::Identity;

/// What a connection remembers between its requests.
#[derive(Debug, Default)]
pub struct ConnState {
    /// Who the client says it is (its first request's client id).
    pub(crate) identity: Option<Identity>,
    /// Produce-path dedup of this connection.
    pub(crate) session: dedup_produce::Session,
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
