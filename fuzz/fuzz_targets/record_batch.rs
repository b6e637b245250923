//! Arbitrary bytes as a partition's `records`: walk the batches, decode each one, splice it
//! (keep every other record, append a header) in both modes, and check that every rewrite
//! decodes back to exactly what was asked for. The checks live in
//! `idemgate::fuzz::record_batch`, which the crate's property tests also run on stable.
//!
//! Seeds: `fuzz/seeds/record_batch/`, written by
//! `cargo test --lib records::tests::write_fuzz_seeds -- --ignored`.
//! Run (nightly): `cargo fuzz run record_batch fuzz/seeds/record_batch`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    idemgate::fuzz::record_batch(data);
});
