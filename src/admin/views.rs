//! The admin API's JSON bodies, through serde.
//!
//! Field order is the order of the struct fields (serde keeps it), and the
//! arrays of `/connections` and `/connectors` put one element per line, as
//! before: operators and tests pick a connection's row out by its line.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;

use serde::Serialize;

use crate::config::QuotaRule;
use crate::idempotency::window::Position;
use crate::idempotency::Key;
use crate::quota::{Kind, Quotas};
use crate::shared::Shared;
use crate::telemetry::{DedupMetrics, TopicCounts};

/// A body of one JSON value, newline-terminated.
fn body(value: &impl Serialize) -> String {
    let mut out = serde_json::to_string(value).expect("plain data serializes");
    out.push('\n');
    out
}

/// A JSON array of one element per line.
fn rows<T: Serialize>(rows: impl IntoIterator<Item = T>) -> String {
    let rows: Vec<String> = rows
        .into_iter()
        .map(|r| serde_json::to_string(&r).expect("plain data serializes"))
        .collect();
    let mut out = String::from("[");
    out.push_str(&rows.join(",\n"));
    out.push_str("]\n");
    out
}

/// A number as Rust prints it: whole values without a `.0` (a limit of
/// 262144 bytes/s reads `262144`, which clients may read as an integer).
#[derive(Debug, Clone, Copy)]
struct Num(f64);

impl Serialize for Num {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let v = self.0;
        if v.fract() == 0.0 && v.abs() < 9.0e15 {
            s.serialize_i64(v as i64)
        } else {
            s.serialize_f64(v)
        }
    }
}

// === /connections ===

#[derive(Serialize)]
struct Connection<'a> {
    conn_id: u64,
    client_addr: String,
    node_id: i32,
    client_id: Option<&'a str>,
    principal: Option<&'a str>,
    since_unix: u64,
}

/// Open client connections as a JSON array, oldest first.
pub(crate) fn connections(shared: &Shared) -> String {
    let registry = shared.registry.lock().expect("registry lock");
    rows(registry.iter().map(|(id, v)| {
        Connection {
            conn_id: *id,
            client_addr: v.client_addr.to_string(),
            node_id: v.node_id,
            client_id: v.client_id.as_deref(),
            principal: v.principal.as_deref(),
            since_unix: v
                .since
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        }
    }))
}

// === /connectors ===

#[derive(Serialize)]
struct Connector<'a> {
    connector: &'a str,
    producer_sessions: u64,
    sessions_with_replays: u64,
    records_dropped: u64,
    largest_replay: u64,
    topics: Vec<TopicRow<'a>>,
    fetch_topics: Vec<TopicRow<'a>>,
}

#[derive(Serialize)]
struct TopicRow<'a> {
    topic: &'a str,
    records: u64,
    dropped: u64,
    observed: u64,
}

/// A connector's rows of `map`, per topic.
fn per_topic<'a>(
    map: &'a BTreeMap<(String, String), TopicCounts>,
    name: &str,
) -> Vec<TopicRow<'a>> {
    map.iter()
        .filter(|((c, _), _)| c == name)
        .map(|((_, t), c)| TopicRow {
            topic: t,
            records: c.records,
            dropped: c.dropped,
            observed: c.observed,
        })
        .collect()
}

/// Per connector: the replays it absorbed, and its records per topic.
pub(crate) fn connectors(dedup: &DedupMetrics) -> String {
    let replays = dedup.replays();
    let topics = dedup.topics();
    let fetch_topics = dedup.fetch_topics();
    let mut names: Vec<&String> = replays.keys().collect();
    names.extend(topics.keys().map(|(c, _)| c));
    names.extend(fetch_topics.keys().map(|(c, _)| c));
    names.sort();
    names.dedup();
    let all: Vec<Connector> = names
        .into_iter()
        .map(|name| {
            let r = replays.get(name).copied().unwrap_or_default();
            Connector {
                connector: name,
                producer_sessions: r.sessions,
                sessions_with_replays: r.sessions_with_replays,
                records_dropped: r.records_dropped,
                largest_replay: r.largest_replay,
                topics: per_topic(&topics, name),
                fetch_topics: per_topic(&fetch_topics, name),
            }
        })
        .collect();
    rows(all)
}

// === /quotas ===

#[derive(Serialize)]
struct QuotaView<'a> {
    settings: Settings,
    rules: Vec<Rule<'a>>,
    paused: Vec<String>,
    entities: Vec<EntityView>,
}

#[derive(Serialize)]
struct Settings {
    burst_ms: u128,
    max_throttle_ms: u128,
    max_hold_ms: u128,
}

#[derive(Serialize)]
struct Rule<'a> {
    connector: Option<&'a str>,
    tenant: Option<&'a str>,
    client_id: Option<&'a str>,
    produce_bytes_per_sec: Option<u64>,
    fetch_bytes_per_sec: Option<u64>,
    requests_per_sec: Option<u64>,
    request_percentage: Option<u64>,
    burst_ms: Option<u128>,
}

impl<'a> Rule<'a> {
    fn new(r: &'a QuotaRule) -> Rule<'a> {
        Rule {
            connector: r.connector.as_ref().map(|g| g.as_str()),
            tenant: r.tenant.as_ref().map(|g| g.as_str()),
            client_id: r.client_id.as_ref().map(|g| g.as_str()),
            produce_bytes_per_sec: r.produce_bytes_per_sec,
            fetch_bytes_per_sec: r.fetch_bytes_per_sec,
            requests_per_sec: r.requests_per_sec,
            request_percentage: r.request_percentage,
            burst_ms: r.burst.map(|b| b.as_millis()),
        }
    }
}

#[derive(Serialize)]
struct EntityView {
    connector: String,
    tenant: Option<String>,
    paused: bool,
    produce_bytes_per_sec: Num,
    fetch_bytes_per_sec: Num,
    produce_bytes_total: u64,
    fetch_bytes_total: u64,
    requests_total: u64,
    throttle_seconds_total: Num,
    throttled_responses_total: u64,
    limits: LimitsView,
}

#[derive(Serialize)]
struct LimitsView {
    produce_bytes_per_sec: Option<LimitView>,
    fetch_bytes_per_sec: Option<LimitView>,
    requests: Option<LimitView>,
}

#[derive(Serialize)]
struct LimitView {
    per_sec: Num,
    rule: usize,
}

/// `GET /quotas`: the rules, the pauses, and every entity's rate, limit
/// and throttle.
pub(crate) fn quotas(q: &Quotas) -> String {
    let (settings, rules) = (q.settings(), q.rules());
    let entities = q
        .sorted()
        .iter()
        .map(|e| {
            let (produce, fetch) = e.rates();
            let limits = e.limits();
            let limit = |k: Kind| {
                limits[k as usize].map(|l| LimitView {
                    per_sec: Num(l.rate),
                    rule: l.rule,
                })
            };
            let c = &e.counters;
            EntityView {
                connector: e.key.label().to_string(),
                tenant: e.key.tenant.clone(),
                paused: e.is_paused(),
                produce_bytes_per_sec: Num(produce.round()),
                fetch_bytes_per_sec: Num(fetch.round()),
                produce_bytes_total: c.produce_bytes.load(Relaxed),
                fetch_bytes_total: c.fetch_bytes.load(Relaxed),
                requests_total: c.requests.load(Relaxed),
                throttle_seconds_total: Num(c.throttle_micros.load(Relaxed) as f64 / 1e6),
                throttled_responses_total: c.throttled.load(Relaxed),
                limits: LimitsView {
                    produce_bytes_per_sec: limit(Kind::Produce),
                    fetch_bytes_per_sec: limit(Kind::Fetch),
                    requests: limit(Kind::Requests),
                },
            }
        })
        .collect();
    body(&QuotaView {
        settings: Settings {
            burst_ms: settings.burst.as_millis(),
            max_throttle_ms: settings.max_throttle.as_millis(),
            max_hold_ms: settings.max_hold.as_millis(),
        },
        rules: rules.iter().map(Rule::new).collect(),
        paused: q.paused(),
        entities,
    })
}

/// `PUT /quotas`: how many rules are in force, and what changed.
pub(crate) fn quotas_set(rules: usize, changed: &[String]) -> String {
    #[derive(Serialize)]
    struct Set<'a> {
        rules: usize,
        changed: &'a [String],
    }
    body(&Set { rules, changed })
}

/// `POST /connectors/{name}/pause` (or `resume`): `tier` says it goes to
/// every replica (`[quota.shared]`), not this process alone.
pub(crate) fn paused(connector: &str, paused: bool, entities: usize, tier: bool) -> String {
    #[derive(Serialize)]
    struct Paused<'a> {
        connector: &'a str,
        paused: bool,
        entities: usize,
        tier: bool,
    }
    body(&Paused {
        connector,
        paused,
        entities,
        tier,
    })
}

// === /window ===

/// `POST /window/purge`.
pub(crate) fn purged(topic: &str, keys: usize, segments: usize) -> String {
    #[derive(Serialize)]
    struct Purged<'a> {
        topic: &'a str,
        keys_forgotten: usize,
        segments_removed: usize,
    }
    body(&Purged {
        topic,
        keys_forgotten: keys,
        segments_removed: segments,
    })
}

/// `GET /window/lookup`: where the key was acknowledged, or that it was
/// not seen (and whether the window had finished loading).
pub(crate) fn lookup(topic: &str, key: Key, at: Option<&Position>, loaded: bool) -> String {
    #[derive(Serialize)]
    struct Seen<'a> {
        topic: &'a str,
        key: String,
        seen: bool,
        partition: i32,
        /// `null` when the broker gave no offset.
        offset: Option<i64>,
        acked_at_ms: u64,
    }
    #[derive(Serialize)]
    struct Unseen<'a> {
        topic: &'a str,
        key: String,
        seen: bool,
        window_loaded: bool,
    }
    let key = key.to_string();
    match at {
        Some(p) => body(&Seen {
            topic,
            key,
            seen: true,
            partition: p.partition,
            offset: (p.offset >= 0).then_some(p.offset),
            acked_at_ms: p.acked_ms,
        }),
        None => body(&Unseen {
            topic,
            key,
            seen: false,
            window_loaded: loaded,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped_and_whole_numbers_stay_whole() {
        let text = paused("CN=a\\,O=\"x\"\n", true, 2, false);
        assert_eq!(
            text,
            "{\"connector\":\"CN=a\\\\,O=\\\"x\\\"\\n\",\"paused\":true,\"entities\":2,\"tier\":false}\n"
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["connector"], "CN=a\\,O=\"x\"\n");
        assert_eq!(serde_json::to_string(&Num(262144.0)).unwrap(), "262144");
        assert_eq!(serde_json::to_string(&Num(1.5)).unwrap(), "1.5");
        assert_eq!(rows([1, 2]), "[1,\n2]\n");
    }

    #[test]
    fn quotas_name_each_connector() {
        let q = crate::quota::resumed_alice();
        assert!(quotas(&q).contains("\"connector\":\"x\""));
    }
}
