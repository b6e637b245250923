//! The integration tests, one binary (`cargo test --test proto`): each
//! module is one suite, named as its file, so `cargo test --test proto
//! dedup::` runs one suite and `cargo test --test proto dedup::name` one
//! test. `support` holds what the suites share: the tansu broker, the proxy
//! in-process or as the binary, raw Kafka frames, scripted peers.

mod support;

mod admin_cli;
mod dashboards;
mod dedup;
mod e2e_rdkafka;
mod faults;
mod fetch_sessions;
mod golden;
mod idle_connections;
mod lifecycle;
mod mock_cluster;
mod quotas;
mod sasl;
mod scripted_peer;
mod soak;
mod tls;
mod wire;
