//! The admin API's JSON bodies.

use std::sync::atomic::Ordering::Relaxed;

use crate::config::{Glob, QuotaRule};
use crate::quota::{Kind, Quotas};
use crate::shared::Shared;

/// Open client connections as a JSON array, oldest first.
pub(crate) fn connections_json(shared: &Shared) -> String {
    let registry = shared.registry.lock().expect("registry lock");
    let rows: Vec<String> = registry
        .iter()
        .map(|(id, v)| {
            let since = v.since.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
            format!(
                "{{\"conn_id\":{id},\"client_addr\":{},\"node_id\":{},\"client_id\":{},\"principal\":{},\"since_unix\":{since}}}",
                json_string(Some(&v.client_addr.to_string())),
                v.node_id,
                json_string(v.client_id.as_deref()),
                json_string(v.principal.as_deref()),
            )
        })
        .collect();
    format!("[{}]\n", rows.join(",\n"))
}

/// Per connector: the replays it absorbed, and its records per topic.
pub(crate) fn connectors_json(shared: &Shared) -> String {
    let dedup = &shared.metrics.dedup;
    let replays = dedup.replays();
    let topics = dedup.topics();
    let fetch_topics = dedup.fetch_topics();
    let mut names: Vec<&String> = replays.keys().collect();
    names.extend(topics.keys().map(|(c, _)| c));
    names.extend(fetch_topics.keys().map(|(c, _)| c));
    names.sort();
    names.dedup();
    let per_topic = |map: &std::collections::BTreeMap<(String, String), _>, name: &String| {
        let rows: Vec<String> = map
            .iter()
            .filter(|((c, _), _): &(&(String, String), &crate::telemetry::TopicCounts)| c == name)
            .map(|((_, t), c)| {
                format!(
                    "{{\"topic\":{},\"records\":{},\"dropped\":{},\"observed\":{}}}",
                    json_string(Some(t)),
                    c.records,
                    c.dropped,
                    c.observed
                )
            })
            .collect();
        rows.join(",")
    };
    let rows: Vec<String> = names
        .into_iter()
        .map(|name| {
            let r = replays.get(name).copied().unwrap_or_default();
            format!(
                "{{\"connector\":{},\"producer_sessions\":{},\"sessions_with_replays\":{},\"records_dropped\":{},\"largest_replay\":{},\"topics\":[{}],\"fetch_topics\":[{}]}}",
                json_string(Some(name)),
                r.sessions,
                r.sessions_with_replays,
                r.records_dropped,
                r.largest_replay,
                per_topic(&topics, name),
                per_topic(&fetch_topics, name)
            )
        })
        .collect();
    format!("[{}]\n", rows.join(",\n"))
}

/// `GET /quotas`: the rules, the pauses, and every entity's rate, limit
/// and throttle.
pub(crate) fn quotas(q: &Quotas) -> String {
    let rules: Vec<String> = q.rules().iter().map(rule_json).collect();
    let paused: Vec<String> = q.paused().iter().map(|p| json_str(p)).collect();
    let entities: Vec<String> = q
        .sorted()
        .iter()
        .map(|e| {
            let (produce, fetch) = e.rates();
            let limits = e.limits();
            let limit = |k: Kind| match limits[k as usize] {
                Some(l) => format!("{{\"per_sec\":{},\"rule\":{}}}", l.rate, l.rule),
                None => "null".into(),
            };
            let c = &e.counters;
            format!(
                "{{\"connector\":{},\"tenant\":{},\"paused\":{},\"produce_bytes_per_sec\":{:.0},\"fetch_bytes_per_sec\":{:.0},\"produce_bytes_total\":{},\"fetch_bytes_total\":{},\"requests_total\":{},\"throttle_seconds_total\":{},\"throttled_responses_total\":{},\"limits\":{{\"produce_bytes_per_sec\":{},\"fetch_bytes_per_sec\":{},\"requests\":{}}}}}",
                json_str(e.key.label()),
                e.key.tenant.as_deref().map(json_str).unwrap_or("null".into()),
                e.is_paused(),
                produce,
                fetch,
                c.produce_bytes.load(Relaxed),
                c.fetch_bytes.load(Relaxed),
                c.requests.load(Relaxed),
                c.throttle_micros.load(Relaxed) as f64 / 1e6,
                c.throttled.load(Relaxed),
                limit(Kind::Produce),
                limit(Kind::Fetch),
                limit(Kind::Requests),
            )
        })
        .collect();
    let s = &q.settings();
    format!(
        "{{\"settings\":{{\"burst_ms\":{},\"max_throttle_ms\":{},\"max_hold_ms\":{}}},\"rules\":[{}],\"paused\":[{}],\"entities\":[{}]}}\n",
        s.burst.as_millis(),
        s.max_throttle.as_millis(),
        s.max_hold.as_millis(),
        rules.join(","),
        paused.join(","),
        entities.join(",\n")
    )
}

fn rule_json(r: &QuotaRule) -> String {
    let g = |g: &Option<Glob>| {
        g.as_ref()
            .map(|g| json_str(g.as_str()))
            .unwrap_or("null".into())
    };
    let n = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or("null".into());
    format!(
        "{{\"connector\":{},\"tenant\":{},\"client_id\":{},\"produce_bytes_per_sec\":{},\"fetch_bytes_per_sec\":{},\"requests_per_sec\":{},\"request_percentage\":{},\"burst_ms\":{}}}",
        g(&r.connector),
        g(&r.tenant),
        g(&r.client_id),
        n(r.produce_bytes_per_sec),
        n(r.fetch_bytes_per_sec),
        n(r.requests_per_sec),
        n(r.request_percentage),
        r.burst.map(|b| b.as_millis().to_string()).unwrap_or("null".into())
    )
}

/// A JSON string literal (or null).
pub(crate) fn json_string(s: Option<&str>) -> String {
    s.map_or_else(|| "null".into(), json_str)
}

/// A JSON string literal.
pub(crate) fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn quotas_name_each_connector() {
        let q = crate::quota::resumed_alice();
        assert!(super::quotas(&q).contains("\"connector\":\"x\""));
    }
}
