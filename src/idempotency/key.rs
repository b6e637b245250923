//! Deterministic idempotency keys.
//!
//! A key is a 128-bit XXH3 hash (xxh3-128 is specified byte for byte and
//! stable across platforms and crate versions) of the topic and of what the
//! rule names. With a per-deployment secret (`dedup.key_secret_file`) it is
//! a keyed BLAKE3 of the same input instead, cut to 128 bits: XXH3 is public,
//! so anyone able to write a topic can compute the key of a record another
//! client will write and get there first with a record carrying that key in
//! its tag header (different content, same key): the real record is then
//! dropped as its replay. Without the secret nobody can predict a key. Every field goes in length-prefixed, with a strategy tag in
//! front, so no two different inputs share an encoding. Never hashed: the
//! timestamp (a replayed Connect record gets a new one) and the partition
//! (a null-key record lands elsewhere when replayed). The topic is always in,
//! so keys are scoped per topic.
//!
//! A record that already carries the tag header with a well-formed key (it
//! went through a proxy before: a MirrorMaker copy, a retry through another
//! replica) keeps that header, so it is never written twice and the sink's
//! upsert key never changes.
//!
//! One window key per record, whichever path meets it: the tag (carried, or
//! made now) scoped to the topic the record is in ([`scoped`]). Produce and
//! Fetch both key this way, so a copy the fetch path learned (written around
//! the proxy) is a replay to the produce path, and a record written and read
//! through the proxy costs one key, not two. Changing this derivation changes
//! every persisted window key: after such an upgrade the window's old keys no
//! longer match, so replays of records acknowledged before it pass once
//! (duplicates, never a loss), and the old keys age out with `dedup.window`.

use std::hash::{BuildHasherDefault, Hasher};

use xxhash_rust::xxh3::Xxh3;

use crate::config::{Fallback, KeySecret, KeyStrategy};
use crate::records::RecordView;

/// Keys are already uniform hashes: maps and sets of keys use their bits as
/// they are, not SipHash (which cost 8 % of the fetch filter's time).
#[derive(Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = self.0.rotate_left(29) ^ n;
    }
    fn write_u128(&mut self, n: u128) {
        self.0 ^= (n as u64) ^ ((n >> 64) as u64);
    }
    fn write_usize(&mut self, _len: usize) {}
}

pub type KeyBuildHasher = BuildHasherDefault<KeyHasher>;

/// An idempotency key; written into records as 32 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(pub u128);

impl Key {
    pub fn to_hex(self) -> [u8; 32] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 32];
        for (i, byte) in self.0.to_be_bytes().iter().enumerate() {
            out[2 * i] = HEX[usize::from(byte >> 4)];
            out[2 * i + 1] = HEX[usize::from(byte & 0xf)];
        }
        out
    }

    /// Parses 32 lowercase hex digits, the one form [`Key::to_hex`] writes;
    /// anything else is `None`. Upper case is refused: sinks upsert on the
    /// header's bytes, so `…ABCDEF` and `…abcdef` are two keys to them and
    /// must be two keys here.
    pub fn parse_hex(text: &[u8]) -> Option<Key> {
        if text.len() != 32 {
            return None;
        }
        let mut n: u128 = 0;
        for &c in text {
            let digit = match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                _ => return None,
            };
            n = (n << 4) | u128::from(digit);
        }
        Some(Key(n))
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// The hash a key is made with: public XXH3, or BLAKE3 keyed by the secret.
/// XXH3's state stays on the stack (the default path makes one per record);
/// the opt-in keyed one is boxed.
#[allow(clippy::large_enum_variant)]
enum KeyHash {
    Plain(Xxh3),
    Keyed(Box<blake3::Hasher>),
}

impl KeyHash {
    fn new(secret: Option<&KeySecret>) -> KeyHash {
        match secret {
            None => KeyHash::Plain(Xxh3::new()),
            Some(s) => KeyHash::Keyed(Box::new(blake3::Hasher::new_keyed(&s.0))),
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        match self {
            KeyHash::Plain(h) => h.update(bytes),
            KeyHash::Keyed(h) => {
                h.update(bytes);
            }
        }
    }

    fn finish(&self) -> Key {
        match self {
            KeyHash::Plain(h) => Key(h.digest128()),
            KeyHash::Keyed(h) => {
                let out = h.finalize();
                let first: [u8; 16] = out.as_bytes()[..16].try_into().expect("16 of 32 bytes");
                Key(u128::from_be_bytes(first))
            }
        }
    }
}

/// How keys are made for one rule.
#[derive(Debug, Clone, Copy)]
pub struct Deriver<'a> {
    pub strategy: &'a KeyStrategy,
    pub fallback: Fallback,
    /// The tag header's name: excluded from content hashes, and reused as the
    /// key when a record already carries it.
    pub tag_header: &'a [u8],
    /// `dedup.key_secret_file`'s secret: `None` keeps the public XXH3 keys.
    pub secret: Option<&'a KeySecret>,
}

/// Where a record's key came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Derived {
    /// Made now, by the rule's strategy or its content fallback: `tag` is
    /// what the tag header gets, `key` the window key (`tag` scoped).
    Made { tag: Key, key: Key },
    /// Read from the tag header the record already carries: the window key
    /// (the carried tag scoped).
    Carried(Key),
    /// No key: the rule's field is missing and its fallback is `pass`.
    Pass,
}

impl Derived {
    pub fn key(self) -> Option<Key> {
        match self {
            Derived::Made { key, .. } | Derived::Carried(key) => Some(key),
            Derived::Pass => None,
        }
    }
}

impl Deriver<'_> {
    pub fn derive(&self, topic: &str, record: &RecordView<'_>) -> Derived {
        let mut carried = None;
        for h in record.headers() {
            if h.key == self.tag_header {
                carried = h.value.and_then(Key::parse_hex);
                break;
            }
        }
        if let Some(key) = carried {
            return Derived::Carried(scoped(self.secret, topic, key));
        }
        let made = |tag: Key| Derived::Made {
            tag,
            key: scoped(self.secret, topic, tag),
        };
        match (self.make(self.strategy, topic, record), self.fallback) {
            (Some(k), _) => made(k),
            (None, Fallback::Content) => made(self.content(topic, record)),
            (None, Fallback::Pass) => Derived::Pass,
        }
    }

    /// The key `strategy` makes, or `None` when the record lacks its field.
    fn make(&self, strategy: &KeyStrategy, topic: &str, record: &RecordView<'_>) -> Option<Key> {
        match strategy {
            KeyStrategy::Content => Some(self.content(topic, record)),
            // An empty key or header value names nothing (a producer that
            // sets `""` for every record): it counts as missing, else every
            // such record would share one key.
            KeyStrategy::RecordKey => record
                .key_slice()
                .filter(|k| !k.is_empty())
                .map(|k| hash_parts(self.secret, b'k', topic, [k])),
            KeyStrategy::Header(name) => record
                .headers()
                .find(|h| h.key == name.as_bytes())
                .and_then(|h| h.value)
                .filter(|v| !v.is_empty())
                .map(|v| hash_parts(self.secret, b'h', topic, [name.as_bytes(), v])),
            KeyStrategy::Json(pointers) => {
                json_key(self.secret, topic, pointers, record.value_slice())
            }
            // Every part must be there; their keys, in order, hashed together.
            KeyStrategy::All(parts) => {
                let mut keys = Vec::with_capacity(parts.len());
                for part in parts {
                    keys.push(self.make(part, topic, record)?.0.to_be_bytes());
                }
                Some(hash_parts(
                    self.secret,
                    b'a',
                    topic,
                    keys.iter().map(|k| &k[..]),
                ))
            }
        }
    }

    fn content(&self, topic: &str, record: &RecordView<'_>) -> Key {
        let mut h = KeyHash::new(self.secret);
        h.update(b"c");
        put_bytes(&mut h, Some(topic.as_bytes()));
        put_bytes(&mut h, record.key_slice());
        put_bytes(&mut h, record.value_slice());
        // Every header goes in, the tag header too: this is reached only when
        // the record carries no well-formed key, so whatever the client put
        // under that name is its own data, and two different values are two
        // records.
        for header in record.headers() {
            put_bytes(&mut h, Some(header.key));
            put_bytes(&mut h, header.value);
        }
        h.finish()
    }
}

/// A length-prefixed, null-aware field: `-1` for null, else the length then the bytes.
fn put_bytes(h: &mut KeyHash, bytes: Option<&[u8]>) {
    match bytes {
        None => h.update(&(-1i64).to_le_bytes()),
        Some(b) => {
            h.update(&(b.len() as i64).to_le_bytes());
            h.update(b);
        }
    }
}

/// The window key of a record that carries `key` in its tag header: scoped
/// to the topic it is written to now (a copy into another topic, by a
/// stream processor or a mirror, is a new record there, not a replay).
pub fn scoped(secret: Option<&KeySecret>, topic: &str, key: Key) -> Key {
    hash_parts(secret, b't', topic, [&key.0.to_be_bytes()[..]])
}

/// The key a `record-key` rule gives a record with this key (for lookups).
pub fn record_key(secret: Option<&KeySecret>, topic: &str, key: &[u8]) -> Key {
    hash_parts(secret, b'k', topic, [key])
}

fn hash_parts<'b>(
    secret: Option<&KeySecret>,
    tag: u8,
    topic: &str,
    parts: impl IntoIterator<Item = &'b [u8]>,
) -> Key {
    let mut h = KeyHash::new(secret);
    h.update(&[tag]);
    put_bytes(&mut h, Some(topic.as_bytes()));
    for part in parts {
        put_bytes(&mut h, Some(part));
    }
    h.finish()
}

/// Every pointer must resolve to a value that is neither null nor `""`;
/// their canonical JSON (serde_json sorts object keys) is hashed together.
/// A value in Connect's JsonConverter envelope (`schemas.enable=true`:
/// `{"schema": …, "payload": …}`) is read inside `payload` when the pointer
/// does not resolve as written, so one rule serves both converter settings.
fn json_key(
    secret: Option<&KeySecret>,
    topic: &str,
    pointers: &[String],
    value: Option<&[u8]>,
) -> Option<Key> {
    let doc: serde_json::Value = serde_json::from_slice(value?).ok()?;
    let payload = match &doc {
        serde_json::Value::Object(o) if o.len() == 2 && o.contains_key("schema") => {
            o.get("payload")
        }
        _ => None,
    };
    let mut parts = Vec::with_capacity(pointers.len());
    for p in pointers {
        let found = doc
            .pointer(p)
            .or_else(|| payload.and_then(|inner| inner.pointer(p)));
        match found {
            None | Some(serde_json::Value::Null) => return None,
            Some(serde_json::Value::String(s)) if s.is_empty() => return None,
            Some(v) => parts.push(serde_json::to_vec(v).ok()?),
        }
    }
    Some(hash_parts(
        secret,
        b'j',
        topic,
        parts.iter().map(Vec::as_slice),
    ))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::records::{decode_batch, BatchBuilder, Codec, Record};
    use bytes::Bytes;
    use proptest::prelude::*;

    const TAG: &[u8] = b"idempotency-key";

    pub(crate) fn record(
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&[u8], &[u8])],
    ) -> Record {
        Record {
            attributes: 0,
            timestamp_delta: 0,
            offset_delta: 0,
            key: key.map(Bytes::copy_from_slice),
            value: value.map(Bytes::copy_from_slice),
            headers: headers
                .iter()
                .map(|(k, v)| (Bytes::copy_from_slice(k), Some(Bytes::copy_from_slice(v))))
                .collect(),
        }
    }

    pub(crate) fn derive_all(
        strategy: &KeyStrategy,
        fallback: Fallback,
        topic: &str,
        records: &[Record],
    ) -> Vec<Derived> {
        derive_with(None, strategy, fallback, topic, records)
    }

    fn derive_with(
        secret: Option<&KeySecret>,
        strategy: &KeyStrategy,
        fallback: Fallback,
        topic: &str,
        records: &[Record],
    ) -> Vec<Derived> {
        let mut records = records.to_vec();
        for (i, r) in records.iter_mut().enumerate() {
            r.offset_delta = i as i32;
            r.timestamp_delta = i as i64 * 1000;
        }
        let bytes = BatchBuilder::new(Codec::None).build(&records).unwrap();
        let batch = decode_batch(bytes).unwrap();
        let d = Deriver {
            strategy,
            fallback,
            tag_header: TAG,
            secret,
        };
        batch.records().map(|r| d.derive(topic, &r)).collect()
    }

    pub(crate) fn one(strategy: &KeyStrategy, topic: &str, r: Record) -> Derived {
        derive_all(strategy, Fallback::Content, topic, &[r])[0]
    }

    #[test]
    fn known_answer_is_stable_across_versions() {
        // Pinned: if this changes, every deployed window forgets its keys. The
        // value was computed independently with Python's xxhash 3.x:
        //   L = lambda b: struct.pack('<q', len(b)) + b
        //   xxh3_128_hexdigest(b'c' + L(b'orders') + L(b'k1') + L(b'v1') + L(b'h') + L(b'x'))
        let k = one(
            &KeyStrategy::Content,
            "orders",
            record(Some(b"k1"), Some(b"v1"), &[(b"h", b"x")]),
        );
        let Derived::Made { tag, key } = k else {
            panic!("made")
        };
        assert_eq!(
            tag.to_string(),
            "42f681f4a1586f991751f60479a7aced",
            "content key (the tag sinks upsert on) for a fixed record changed"
        );
        // The window key: that tag scoped to the topic. Pinned from this
        // code (b't' + L(b'orders') + L(tag, big-endian)), to catch a change.
        assert_eq!(key, scoped(None, "orders", tag));
        assert_eq!(key.to_string(), "9c4d38bbf2673ceebed8b00204dec42f");
    }

    #[test]
    fn content_ignores_timestamp_and_the_tag_header_but_not_topic() {
        let a = record(Some(b"k"), Some(b"v"), &[(b"h", b"1")]);
        let keys = derive_all(
            &KeyStrategy::Content,
            Fallback::Content,
            "t",
            &[a.clone(), a.clone()],
        );
        assert_eq!(keys[0], keys[1], "timestamps differ, keys must not");
        let other_topic = one(&KeyStrategy::Content, "u", a.clone());
        assert_ne!(keys[0], other_topic);
        // A tag header that holds no key is the client's own data: hashed,
        // so two different values are two records.
        let with_tag = |value: &'static [u8]| {
            let mut r = a.clone();
            r.headers
                .push((Bytes::from_static(TAG), Some(Bytes::from_static(value))));
            one(&KeyStrategy::Content, "t", r)
        };
        assert_ne!(with_tag(b"nope"), keys[0]);
        assert_ne!(with_tag(b"nope"), with_tag(b"nope2"));
        assert_eq!(with_tag(b"nope"), with_tag(b"nope"));
    }

    #[test]
    fn a_client_key_differing_only_in_case_is_another_key() {
        let lower = b"0123456789abcdef0123456789abcdef";
        let upper = b"0123456789ABCDEF0123456789ABCDEF";
        let derive = |tag: &'static [u8]| {
            one(
                &KeyStrategy::Content,
                "t",
                record(Some(b"k"), Some(b"v"), &[(TAG, tag)]),
            )
        };
        assert!(matches!(derive(lower), Derived::Carried(_)));
        assert!(matches!(derive(upper), Derived::Made { .. }));
        assert_ne!(derive(lower), derive(upper));
        assert_ne!(derive(upper), derive(b"0123456789ABCDEF0123456789ABCDEE"));
        assert_eq!(Key::parse_hex(upper), None);
        assert_eq!(Key::parse_hex(lower).map(Key::to_hex).as_ref(), Some(lower));
    }

    /// Two deployments with different secrets key the same record
    /// differently (neither can predict the other's keys, nor can anyone
    /// without one); the same secret keys it the same; no secret keeps the
    /// public XXH3 keys. Every strategy goes through the secret.
    #[test]
    fn a_key_secret_keys_every_hash() {
        let a = KeySecret::derive(b"deployment a");
        let b = KeySecret::derive(b"deployment b");
        let a_again = KeySecret::derive(b"deployment a");
        let r = record(Some(b"k"), Some(br#"{"id":7}"#), &[(b"h", b"x")]);
        let strategies = [
            KeyStrategy::Content,
            KeyStrategy::RecordKey,
            KeyStrategy::Header("h".into()),
            KeyStrategy::Json(vec!["/id".into()]),
        ];
        for strategy in &strategies {
            let with = |secret: Option<&KeySecret>| {
                derive_with(
                    secret,
                    strategy,
                    Fallback::Pass,
                    "t",
                    std::slice::from_ref(&r),
                )[0]
            };
            let (plain, ka, kb, ka2) = (
                with(None),
                with(Some(&a)),
                with(Some(&b)),
                with(Some(&a_again)),
            );
            assert_eq!(
                plain,
                one(strategy, "t", r.clone()),
                "{strategy:?}: no secret, today's keys"
            );
            assert_ne!(ka, plain, "{strategy:?}");
            assert_ne!(ka, kb, "{strategy:?}");
            assert_eq!(ka, ka2, "{strategy:?}");
            // Made and carried still meet on one window key under a secret.
            let Derived::Made { tag, key } = ka else {
                panic!("{strategy:?}: made")
            };
            assert_eq!(key, scoped(Some(&a), "t", tag));
            let mut tagged = r.clone();
            tagged.headers.push((
                Bytes::from_static(TAG),
                Some(Bytes::copy_from_slice(&tag.to_hex())),
            ));
            let carried = derive_with(Some(&a), strategy, Fallback::Pass, "t", &[tagged])[0];
            assert_eq!(carried, Derived::Carried(key), "{strategy:?}");
        }
        assert_eq!(format!("{a:?}"), "KeySecret(..)", "never logged");
    }

    /// The window key of a record is the same whether its tag is made now
    /// (untagged, a produce or a copy written around the proxy) or carried
    /// (it went through a proxy before).
    #[test]
    fn made_and_carried_tags_share_one_window_key() {
        let plain = record(Some(b"k"), Some(b"v"), &[]);
        let Derived::Made { tag, key } = one(&KeyStrategy::Content, "t", plain) else {
            panic!("an untagged record gets a made key");
        };
        assert_eq!(key, scoped(None, "t", tag));
        let tagged = record(Some(b"k"), Some(b"v"), &[(TAG, &tag.to_hex())]);
        assert_eq!(
            one(&KeyStrategy::Content, "t", tagged),
            Derived::Carried(key)
        );
    }

    #[test]
    fn a_carried_key_is_reused() {
        let key = Key(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
        let hex = key.to_hex();
        let r = record(Some(b"k"), Some(b"v"), &[(TAG, &hex)]);
        assert_eq!(
            one(&KeyStrategy::Content, "t", r.clone()),
            Derived::Carried(scoped(None, "t", key))
        );
        // The same carried key in another topic is another record there.
        assert_ne!(
            one(&KeyStrategy::Content, "u", r),
            one(
                &KeyStrategy::Content,
                "t",
                record(Some(b"k"), Some(b"v"), &[(TAG, &hex)])
            )
        );
        assert_eq!(Key::parse_hex(&hex), Some(key));
        assert_eq!(Key::parse_hex(b"0123"), None);
    }

    #[test]
    fn strategies_and_fallbacks() {
        let rk = KeyStrategy::RecordKey;
        let a = one(&rk, "t", record(Some(b"id-1"), Some(b"x"), &[]));
        let b = one(&rk, "t", record(Some(b"id-1"), Some(b"y"), &[]));
        assert_eq!(a, b, "record-key ignores the value");
        // Null key: falls back to content, or passes.
        let null_key = record(None, Some(b"x"), &[]);
        assert_eq!(
            one(&rk, "t", null_key.clone()),
            one(&KeyStrategy::Content, "t", null_key.clone())
        );
        assert_eq!(
            derive_all(&rk, Fallback::Pass, "t", &[null_key])[0],
            Derived::Pass
        );

        let hdr = KeyStrategy::Header("event-id".into());
        let a = one(&hdr, "t", record(None, Some(b"x"), &[(b"event-id", b"e1")]));
        let b = one(
            &hdr,
            "t",
            record(None, Some(b"y"), &[(b"other", b"z"), (b"event-id", b"e1")]),
        );
        assert_eq!(a, b);

        let json = KeyStrategy::Json(vec!["/source/lsn".into(), "/id".into()]);
        let a = one(
            &json,
            "t",
            record(None, Some(br#"{"id":7,"source":{"lsn":42},"ts":1}"#), &[]),
        );
        let b = one(
            &json,
            "t",
            record(None, Some(br#"{"ts":2,"source":{"lsn":42},"id":7}"#), &[]),
        );
        let c = one(
            &json,
            "t",
            record(None, Some(br#"{"id":8,"source":{"lsn":42}}"#), &[]),
        );
        assert_eq!(a, b);
        assert_ne!(a, c);
        let missing = record(None, Some(br#"{"id":7}"#), &[]);
        assert_eq!(
            derive_all(&json, Fallback::Pass, "t", std::slice::from_ref(&missing))[0],
            Derived::Pass
        );
        let not_json = record(None, Some(b"\x00\x01binary"), &[]);
        assert_eq!(
            derive_all(&json, Fallback::Pass, "t", &[not_json])[0],
            Derived::Pass
        );
    }

    #[test]
    fn empty_keys_and_header_values_name_nothing() {
        // A producer that sets "" on every record: each record is its own
        // event, so the rule's field counts as missing.
        let rk = KeyStrategy::RecordKey;
        let a = record(Some(b""), Some(b"first"), &[]);
        let b = record(Some(b""), Some(b"second"), &[]);
        let keys = derive_all(&rk, Fallback::Content, "t", &[a.clone(), b.clone()]);
        assert_ne!(keys[0], keys[1], "two empty-key records are two events");
        assert_eq!(
            derive_all(&rk, Fallback::Pass, "t", &[a, b]),
            [Derived::Pass, Derived::Pass]
        );
        let hdr = KeyStrategy::Header("event-id".into());
        let a = record(None, Some(b"first"), &[(b"event-id", b"")]);
        let b = record(None, Some(b"second"), &[(b"event-id", b"")]);
        assert_eq!(
            derive_all(&hdr, Fallback::Pass, "t", &[a, b]),
            [Derived::Pass, Derived::Pass]
        );
        let json = KeyStrategy::Json(vec!["/event_id".into()]);
        let a = record(None, Some(br#"{"event_id":"","n":1}"#), &[]);
        let b = record(None, Some(br#"{"event_id":"","n":2}"#), &[]);
        assert_eq!(
            derive_all(&json, Fallback::Pass, "t", &[a, b]),
            [Derived::Pass, Derived::Pass]
        );
    }

    /// A Debezium change event as the JSON converter writes it (schemas off).
    fn debezium(id: u32, op: &str, lsn: u64, qty: u32, ts: u64) -> Record {
        let key = format!(r#"{{"id":{id}}}"#);
        let value = format!(
            r#"{{"before":null,"after":{{"id":{id},"qty":{qty}}},"source":{{"lsn":{lsn},"txId":726}},"op":"{op}","ts_ms":{ts}}}"#
        );
        record(Some(key.as_bytes()), Some(value.as_bytes()), &[])
    }

    #[test]
    fn a_list_of_parts_keeps_each_row_of_a_snapshot() {
        let both = KeyStrategy::All(vec![
            KeyStrategy::RecordKey,
            KeyStrategy::Json(vec!["/source/lsn".into()]),
        ]);
        let lsn_only = KeyStrategy::Json(vec!["/source/lsn".into(), "/source/txId".into()]);
        // A snapshot: every row read at the snapshot's one position.
        let snapshot: Vec<Record> = (1..=3).map(|id| debezium(id, "r", 100, 0, 5)).collect();
        let keys = derive_all(&both, Fallback::Pass, "pg.t", &snapshot);
        assert!(keys[0] != keys[1] && keys[1] != keys[2] && keys[0] != keys[2]);
        // What the position alone did: one key for the whole snapshot.
        let collapsed = derive_all(&lsn_only, Fallback::Pass, "pg.t", &snapshot);
        assert!(collapsed[0] == collapsed[1] && collapsed[1] == collapsed[2]);
        // A replay (processed anew: another ts_ms) is the same event; the same
        // row at a later position is not.
        let first = one(&both, "pg.t", debezium(1, "u", 200, 1, 7));
        assert_eq!(first, one(&both, "pg.t", debezium(1, "u", 200, 1, 9)));
        assert_ne!(first, one(&both, "pg.t", debezium(1, "u", 300, 1, 7)));
        // Not any part alone, nor those parts in another order.
        let reversed = KeyStrategy::All(vec![
            KeyStrategy::Json(vec!["/source/lsn".into()]),
            KeyStrategy::RecordKey,
        ]);
        let r = debezium(1, "u", 200, 1, 7);
        assert_ne!(first, one(&KeyStrategy::RecordKey, "pg.t", r.clone()));
        assert_ne!(first, one(&reversed, "pg.t", r.clone()));
        assert_ne!(first, one(&both, "pg.u", r));
        // A tombstone lacks the position: the whole list falls back.
        let tombstone = record(Some(br#"{"id":1}"#), None, &[]);
        assert_eq!(
            derive_all(
                &both,
                Fallback::Pass,
                "pg.t",
                std::slice::from_ref(&tombstone)
            )[0],
            Derived::Pass
        );
        assert_eq!(
            one(&both, "pg.t", tombstone.clone()),
            one(&KeyStrategy::Content, "pg.t", tombstone)
        );
    }

    proptest! {
        #[test]
        fn any_byte_change_changes_the_content_key(
            key in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..16)),
            value in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
            hk in proptest::collection::vec(any::<u8>(), 1..8),
            hv in proptest::collection::vec(any::<u8>(), 0..8),
            which in 0usize..3,
            flip in any::<u8>(),
        ) {
            let base = record(key.as_deref(), value.as_deref(), &[(&hk, &hv)]);
            let k1 = one(&KeyStrategy::Content, "t", base.clone());
            prop_assert_eq!(k1, one(&KeyStrategy::Content, "t", base.clone()));
            let mut changed = base.clone();
            let field = match which {
                0 => changed.key.get_or_insert_with(Bytes::new),
                1 => changed.value.get_or_insert_with(Bytes::new),
                _ => changed.headers[0].1.get_or_insert_with(Bytes::new),
            };
            let mut bytes = field.to_vec();
            match bytes.first_mut() {
                Some(b) => *b ^= flip.max(1),
                None => bytes.push(flip),
            }
            *field = Bytes::from(bytes);
            prop_assume!(changed.key != base.key || changed.value != base.value || changed.headers != base.headers);
            prop_assert_ne!(k1, one(&KeyStrategy::Content, "t", changed));
        }
    }
}
