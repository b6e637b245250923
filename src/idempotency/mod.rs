//! Idempotency: what a record's key is ([`key`]) and which keys the broker
//! has already acknowledged ([`window`]).

#[cfg(test)]
mod connector_events;
pub mod key;
pub mod sequences;
pub mod shared;
pub mod transactions;
pub mod window;

pub use key::Key;
pub use window::Window;
