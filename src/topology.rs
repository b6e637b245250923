//! node_id ⇄ proxy port, stable across restarts and metadata changes; and
//! topic id ⇄ name, for Fetch v13+ (which names topics by id only).
//!
//! Clients cache broker addresses, so the port we hand out for a node must
//! mean that node forever: the first time a node id is seen it gets port
//! `start + node_id` of `listen.broker_ports` if that fits (the same answer on
//! every replica of a central tier), else the lowest free port; the pair is
//! written to the store before any client sees it, and it is never
//! reassigned. Its upstream address may change (a broker moved); the port stays.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kafka_protocol::messages::{ApiKey, MetadataResponse};
use kafka_protocol::protocol::StrBytes;
use tokio::sync::watch;

use crate::error::Error;
use crate::message::ResponseFrame;
use crate::store::{NodeRecord, Store};

/// Topic ids remembered at most (a cluster with more topics than this has
/// some of their Fetches pass unfiltered, counted).
pub const TOPIC_NAMES: u64 = 100_000;

/// How long a topic id is remembered after it was last learned: well above
/// any `upstream.metadata_refresh`, which learns every live topic again.
pub const TOPIC_NAME_TTL: Duration = Duration::from_secs(24 * 3600);

pub struct Topology {
    ports: RangeInclusive<u16>,
    store: Arc<Store>,
    nodes: Mutex<BTreeMap<i32, NodeRecord>>,
    /// Bumped whenever a node is added, so the server opens its listener.
    changed: watch::Sender<u64>,
    /// Topic ids (Fetch v13+ names topics by id) → names, from the Metadata
    /// responses clients fetch through the proxy and the proxy's own probe.
    /// Bounded: [`TOPIC_NAMES`] ids, each forgotten [`TOPIC_NAME_TTL`] after
    /// it was last learned. A topic that exists is learned again by every
    /// probe (`upstream.metadata_refresh`), so only deleted topics' ids age
    /// out; an id not (or no longer) known passes its Fetch unfiltered,
    /// counted as a fail-open (`topic_id`).
    names: moka::sync::Cache<[u8; 16], StrBytes>,
}

impl Topology {
    /// Loads what the store remembers.
    pub fn load(ports: RangeInclusive<u16>, store: Arc<Store>) -> Result<Topology, Error> {
        let nodes = store.nodes()?.into_iter().map(|n| (n.node_id, n)).collect();
        let (changed, _) = watch::channel(0);
        Ok(Topology {
            ports,
            store,
            nodes: Mutex::new(nodes),
            changed,
            names: moka::sync::Cache::builder()
                .max_capacity(TOPIC_NAMES)
                .time_to_live(TOPIC_NAME_TTL)
                .build(),
        })
    }

    /// Notified when a node gets a port.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Every node with its port, for the listeners.
    pub fn nodes(&self) -> Vec<NodeRecord> {
        self.nodes
            .lock()
            .expect("topology lock")
            .values()
            .cloned()
            .collect()
    }

    /// The upstream `host:port` of a node, if known.
    pub fn upstream_of(&self, node_id: i32) -> Option<String> {
        self.nodes
            .lock()
            .expect("topology lock")
            .get(&node_id)
            .map(|n| n.upstream.clone())
    }

    /// Learns (or confirms) a broker from upstream Metadata and returns the
    /// proxy port clients must use for it. Persists before returning.
    pub fn learn(&self, node_id: i32, host: &str, port: i32) -> Result<u16, Error> {
        let upstream = format!("{host}:{port}");
        let mut nodes = self.nodes.lock().expect("topology lock");
        if let Some(n) = nodes.get(&node_id) {
            if n.upstream == upstream {
                return Ok(n.port);
            }
        }
        let (port, added) = match nodes.get(&node_id) {
            Some(n) => (n.port, false),
            None => {
                let used: Vec<u16> = nodes.values().map(|n| n.port).collect();
                // start + node_id when it fits, so that every replica of a
                // central tier hands out the same port for the same broker;
                // else the lowest free port.
                let preferred = u16::try_from(node_id)
                    .ok()
                    .and_then(|id| self.ports.start().checked_add(id))
                    .filter(|p| self.ports.contains(p) && !used.contains(p));
                let port = preferred.or_else(|| self.ports.clone().find(|p| !used.contains(p))).ok_or_else(|| {
                    Error::Internal(format!(
                        "listen.broker_ports {}-{} has no free port left for node {node_id}; widen the range",
                        self.ports.start(),
                        self.ports.end()
                    ))
                })?;
                if preferred.is_none() {
                    // Info, not a warning: harmless for one proxy (a sidecar),
                    // worth knowing for a central tier.
                    tracing::info!(
                        node_id,
                        port,
                        "node id does not fit listen.broker_ports as start + node_id: it got the lowest free port, \
                         which replicas of a central tier may not agree on; widen the range to cover every node id"
                    );
                }
                (port, true)
            }
        };
        let record = NodeRecord {
            node_id,
            port,
            upstream,
        };
        // Sled's flush is a short fsync on a path taken once per new or moved
        // broker; keeping the lock makes two racing learners agree on the port.
        self.store.save_node(&record)?;
        if added {
            tracing::info!(node_id, port, upstream = %record.upstream, "new broker");
        } else {
            tracing::info!(node_id, port, upstream = %record.upstream, "broker moved");
        }
        nodes.insert(node_id, record);
        drop(nodes);
        self.changed.send_modify(|g| *g += 1);
        Ok(port)
    }

    /// Remembers the topic ids a Metadata response names (v10+).
    pub fn learn_names(&self, version: i16, frame: &mut ResponseFrame) {
        if version < 10 {
            return;
        }
        if let Ok(resp) = frame.message::<MetadataResponse>(ApiKey::Metadata, version) {
            self.learn_names_from(resp);
        }
    }

    /// Remembers the topic ids of a decoded Metadata response.
    pub fn learn_names_from(&self, metadata: &MetadataResponse) {
        for topic in &metadata.topics {
            if let Some(name) = &topic.name {
                if !topic.topic_id.is_nil() {
                    self.names
                        .insert(*topic.topic_id.as_bytes(), name.0.clone());
                }
            }
        }
    }

    /// The name of a topic id learned from Metadata, if still remembered.
    pub fn name_of(&self, id: &[u8; 16]) -> Option<StrBytes> {
        self.names.get(id)
    }

    /// Every upstream address as (host bytes, port) pairs, for the leak check.
    pub fn upstream_addresses(&self) -> Vec<(String, i32)> {
        self.nodes
            .lock()
            .expect("topology lock")
            .values()
            .filter_map(|n| {
                let (h, p) = n.upstream.rsplit_once(':')?;
                Some((h.to_string(), p.parse().ok()?))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_stable_across_restarts_and_moves() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let t = Topology::load(19093..=19096, store.clone()).unwrap();
        // Node ids that fit take start + id; others the lowest free port.
        assert_eq!(t.learn(2, "broker-c", 9092).unwrap(), 19095);
        assert_eq!(t.learn(111, "broker-a", 9092).unwrap(), 19093);
        assert_eq!(
            t.learn(0, "broker-b", 9092).unwrap(),
            19094,
            "19093 was taken: lowest free"
        );
        assert_eq!(t.learn(111, "broker-a", 9092).unwrap(), 19093);
        // A broker that moves keeps its port.
        assert_eq!(t.learn(0, "broker-b2", 9093).unwrap(), 19094);
        drop(t);
        let t = Topology::load(19093..=19096, store).unwrap();
        assert_eq!(t.upstream_of(0).as_deref(), Some("broker-b2:9093"));
        assert_eq!(t.learn(111, "broker-a", 9092).unwrap(), 19093);
        assert_eq!(t.learn(5, "broker-d", 9092).unwrap(), 19096);
        let err = t.learn(6, "broker-e", 9092).unwrap_err();
        assert!(err.to_string().contains("no free port"), "{err}");
    }

    #[test]
    fn topic_names_are_learned_by_id_and_a_nil_id_is_not() {
        use kafka_protocol::messages::metadata_response::MetadataResponseTopic;
        use kafka_protocol::messages::TopicName;
        use kafka_protocol::protocol::StrBytes;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let t = Topology::load(19093..=19096, store).unwrap();
        let topic = |name: &'static str, id: u128| {
            MetadataResponseTopic::default()
                .with_name(Some(TopicName(StrBytes::from_static_str(name))))
                .with_topic_id(
                    format!("00000000-0000-0000-0000-{id:012x}")
                        .parse()
                        .unwrap(),
                )
        };
        let metadata =
            MetadataResponse::default().with_topics(vec![topic("orders", 7), topic("nil", 0)]);
        t.learn_names_from(&metadata);
        assert_eq!(t.name_of(&7u128.to_be_bytes()).as_deref(), Some("orders"));
        assert_eq!(t.name_of(&8u128.to_be_bytes()), None);
        assert_eq!(t.name_of(&0u128.to_be_bytes()), None);
    }
}
