//! idemgate: a Kafka-protocol proxy that makes Kafka Connect replays harmless
//! and backpressure deliberate.
//!
//! # How a request flows
//!
//! The one drawing of it. Each `▸` line is a layer of the filter stack
//! (`pipeline::stack`), outermost first: a request goes down through them
//! one at a time, in arrival order, and its response comes back up through
//! the same layers in reverse. A unit test checks these lines against the
//! stack, so the drawing cannot drift from the code.
//!
//! ```text
//! client socket → connection.rs (frames, memory; responses leave in request order)
//!   ▸ quota  ↓ hold a muted connection's or paused connector's Produce/Fetch;
//!            charge requests, Produce bytes, time; cap Fetch max_bytes
//!            ↑ charge Fetch bytes; raise throttle_time_ms (filter/quota.rs)
//!   ▸ sasl  ↓ learn the principal from the exchange
//!           ↑ bind it if the broker accepts (filter/sasl.rs)
//!   ▸ api versions  ↓ answer too-new versions locally (v0 UNSUPPORTED_VERSION)
//!                   ↑ intersect ranges
//!   ▸ leak check  ↑ no upstream address reaches a client (diagnostics.leak_check)
//!   ▸ broker addresses  ↑ Metadata, FindCoordinator, DescribeCluster, KIP-951
//!   ▸ request waits  ↓ how long the broker may take (Produce timeout, Fetch max_wait, JoinGroup)
//!   ▸ identity  ↓ connector and task from the client id
//!   ▸ dedup (produce)  ↓ tag, drop replays, answer wholly replayed requests
//!                      ↑ commit acknowledged keys, merge answered partitions; EndTxn
//!   ▸ dedup (fetch)  ↑ learn first positions, remove later copies
//!   ▸ upstream  the proxy's own correlation ids, the in-flight queue, deadlines (upstream.rs)
//! ```
//!
//! A local answer skips the response side of every layer. Produce with
//! acks=0 gets no response and no place in the order. A request of an API
//! the kafka-protocol crate does not know, but whose schema was checked
//! (`codec::RAW_APIS`: Kafka Streams' StreamsGroup APIs), skips the stack:
//! connection.rs hands it to upstream byte for byte, in its place in the
//! order.
//!
//! # Layout
//!
//! The tree follows the data path of one request:
//!
//! ```text
//! client socket
//!   → server.rs       listeners (bootstrap + one per broker), admission, drain
//!   → connection.rs   one client: frames in → the stack → responses out, in order
//!                     (one task; wakes.rs polls it again at once when its loops
//!                     wake each other, instead of a yield to another worker)
//!   → codec.rs        length-checked frames; api_key/version/correlation_id/client_id peeked
//!   → pipeline.rs     the filter stack, in order; filter/: one file per filter
//!                     (mod.rs the Filter trait and its one Layer/Service;
//!                     state.rs what a connection remembers between requests)
//!   → message.rs      the only place messages are decoded, and only when a filter asks;
//!                     a response at most once (ResponseFrame), encoded again only if changed;
//!                     message/bounds.rs checks every length against the frame first;
//!                     message/fields.rs reads and patches a few fields in place;
//!                     message/produce_splice.rs writes a changed Produce by splicing
//!   → upstream.rs     broker connections: the exchange (correlation ids, in-flight
//!                     queue, acks=0, deadlines), the proxy's own Metadata probe and
//!                     DescribeConfigs lookups
//! ```
//!
//! What the filters work with:
//! - `idempotency/`: `key.rs` (what a record's key is), `window.rs` (which
//!   keys the broker acknowledged, persistent), `sequences.rs` (idempotent
//!   producers' sequence translation), `transactions.rs` (keys held until
//!   their transaction commits), `connector_events.rs` (the connector
//!   presets' event shapes);
//! - `records.rs` and `records/` (the byte-level RecordBatch v2 splicer:
//!   varints, codecs, batch headers, splice, builder);
//! - `quota.rs` (quota state: entities, buckets, pause; `quota/tier.rs`
//!   and `quota/topic.rs`: `[quota.shared]`, the tier's usage and pauses
//!   through a Kafka topic), `identity.rs`
//!   (connector and task from a client id), `topology.rs` (node id ⇄ proxy
//!   port, stable across restarts; topic id ⇄ name), `topic_config.rs`
//!   (each covered topic's `cleanup.policy` and `max.message.bytes`, asked
//!   of the brokers), `limits.rs` (connection limits, memory for in-flight
//!   bytes, clients that stop reading).
//!
//! Around them: `shared.rs` (what connections and the admin API share,
//! readiness, SIGHUP reload), `upkeep.rs` (the periodic loops: window sweep,
//! store flush, quota sampling, TLS reload, Metadata probe), `store.rs`
//! (sled, the only persistent state), `tls.rs` (rustls for both sides),
//! `kafka_client.rs` (the proxy's own rskafka client, for its topics),
//! `admin.rs` (`/healthz`, `/readyz`, `/metrics`, the admin API on axum;
//! bodies in `admin/views.rs`), `admin_client.rs` (`idemgate admin …`),
//! `telemetry.rs` (logs; `telemetry/metrics.rs` the registry,
//! `telemetry/dedup.rs` the dedup counters, `telemetry/prometheus.rs` the
//! exposition through prometheus-client), `config.rs` and `config/`
//! (defaults, the TOML walk with every problem's key path, values, rules),
//! `error.rs`, and `fuzz.rs` (the fuzz targets' entry points, checked by
//! `fuzz/tests.rs`).
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

#![warn(unreachable_pub)]

// Modules are private to the crate unless `main.rs`, `benches/`,
// `proto-tests/` or `fuzz/` reach them; inside a private one, items are
// `pub(crate)` (the crate-wide `unreachable_pub` lint holds it so).
mod admin;
pub mod admin_client;
pub mod codec;
pub mod config;
mod connection;
pub mod error;
pub mod filter;
#[doc(hidden)]
pub mod fuzz;
pub mod idempotency;
pub mod identity;
mod kafka_client;
mod limits;
pub mod message;
mod pipeline;
mod quota;
pub mod records;
pub mod server;
pub mod shared;
pub mod store;
pub mod telemetry;
pub mod tls;
mod topic_config;
pub mod topology;
mod upkeep;
mod upstream;
mod wakes;
