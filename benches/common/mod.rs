//! Test data both benchmarks make the same way.

/// Deterministic, cheap, good enough for test data.
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

const WORDS: [&str; 16] = [
    "order",
    "created",
    "shipped",
    "pending",
    "customer",
    "invoice",
    "amount",
    "status",
    "warehouse",
    "priority",
    "express",
    "standard",
    "returned",
    "paid",
    "refund",
    "note",
];

/// Record `id`'s JSON-ish value, exactly `size` bytes (at least 2), the same
/// bytes every time it is made: a replay is the same record.
pub fn json_value(id: u64, size: usize) -> Vec<u8> {
    let mut rng = SplitMix(id);
    let mut value = format!(
        "{{\"id\":{id},\"customer\":\"c-{:05}\",\"amount\":{}.{:02},\"note\":\"",
        rng.next() % 100_000,
        rng.next() % 10_000,
        rng.next() % 100
    )
    .into_bytes();
    while value.len() + 2 < size {
        let w = WORDS[(rng.next() % WORDS.len() as u64) as usize];
        value.extend_from_slice(w.as_bytes());
        value.push(b' ');
    }
    value.truncate(size.saturating_sub(2));
    value.extend_from_slice(b"\"}");
    value
}
