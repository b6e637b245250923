//! idemgate: a Kafka-protocol proxy that makes Kafka Connect replays harmless
//! and backpressure deliberate.
//!
//! # Layout
//!
//! The tree follows the data path of one request:
//!
//! ```text
//! client socket
//!   → server.rs       listeners (bootstrap + one per broker), admission, drain
//!   → connection.rs   one client: frames in → pipeline → upstream → responses out, in order;
//!                     quotas: holds Produce/Fetch while muted or paused (quota.rs)
//!   → codec.rs        length-checked frames; api_key/version/correlation_id/client_id peeked
//!   → pipeline.rs     the ordered filters (filter/): api versions, broker addresses
//!   → message.rs      the only place messages are decoded, and only when a filter asks;
//!                     message/bounds.rs checks every length against the frame first;
//!                     message/fields.rs reads and patches a few fields in place
//!   → upstream.rs     broker connections, the proxy's own Metadata probe and
//!                     DescribeConfigs lookups
//! ```
//!
//! Beside the path: `shared.rs` (what connections and the admin API share,
//! readiness, SIGHUP reload), `upkeep.rs` (the periodic loops: window sweep,
//! store flush, quota sampling, TLS reload, Metadata probe), `limits.rs`
//! (connection limits, memory for in-flight bytes, clients that stop
//! reading), `topology.rs` (node id ⇄ proxy port, stable across
//! restarts), `topic_config.rs` (each covered topic's `cleanup.policy` and
//! `max.message.bytes`, asked of the brokers), `store.rs` (sled, the only persistent state), `records.rs` (the
//! byte-level RecordBatch v2 splicer the dedup filters use), `admin.rs`
//! (`/healthz`, `/readyz`, `/metrics`), `telemetry.rs` (logs and metric
//! names), `config.rs` (every default, every problem with its key path).
//!
//! # Facts about Kafka this code relies on
//!
//! - A broker answers the requests of one connection in the order they were
//!   sent; Produce with acks=0 gets no answer at all.
//! - Every request header starts with api_key, api_version, correlation_id
//!   and a classic nullable client_id string, in every header version; a
//!   response header starts with the correlation_id.
//! - Broker addresses reach clients through Metadata, FindCoordinator (a
//!   single node up to v3, a list from v4), DescribeCluster, and the KIP-951
//!   node_endpoints of Produce v10+ and Fetch v16+ responses.
//! - ApiVersions responses always use response header v0, and a broker
//!   answers an ApiVersions version it does not know with a v0
//!   UNSUPPORTED_VERSION response listing its ranges (KIP-511).

pub mod admin;
pub mod admin_client;
pub mod codec;
pub mod config;
pub mod connection;
pub mod error;
pub mod filter;
#[doc(hidden)]
pub mod fuzz;
pub mod idempotency;
pub mod identity;
pub mod limits;
pub mod message;
pub mod pipeline;
pub mod quota;
pub mod records;
pub mod server;
pub mod shared;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod topic_config;
pub mod topology;
mod upkeep;
pub mod upstream;
