//! One file per concern. Each filter is a set of plain functions over a
//! decoded message; `pipeline.rs` decides which run, in which order.

pub mod api_versions;
pub mod broker_address;
pub mod dedup_fetch;
pub mod dedup_produce;
pub mod sasl;
