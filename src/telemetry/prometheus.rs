//! Prometheus text exposition.

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;

use crate::quota::{Counters, Entity, Quotas, KINDS};

use super::escape;

/// The quota series of `/metrics`.
pub(crate) fn quotas(q: &Quotas, out: &mut String) {
    let all = q.sorted();
    let labels = |e: &Entity| {
        format!(
            "connector=\"{}\",tenant=\"{}\"",
            escape(e.key.label()),
            escape(e.key.tenant.as_deref().unwrap_or(""))
        )
    };
    let _ = writeln!(out, "# HELP idemgate_client_bytes_total Bytes per connector and tenant: produce requests and fetch responses.\n# TYPE idemgate_client_bytes_total counter");
    for e in &all {
        let l = labels(e);
        let c = &e.counters;
        let _ = writeln!(
            out,
            "idemgate_client_bytes_total{{{l},direction=\"produce\"}} {}",
            c.produce_bytes.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "idemgate_client_bytes_total{{{l},direction=\"fetch\"}} {}",
            c.fetch_bytes.load(Relaxed)
        );
    }
    // One counter per entity: (name, help, value).
    type Counter = (&'static str, &'static str, fn(&Counters) -> f64);
    let counters: [Counter; 3] = [
        (
            "idemgate_client_requests_total",
            "Requests per connector and tenant.",
            |c| c.requests.load(Relaxed) as f64,
        ),
        (
            "idemgate_throttle_seconds_total",
            "Throttle imposed by quotas (each connection muted this long).",
            |c| c.throttle_micros.load(Relaxed) as f64 / 1e6,
        ),
        (
            "idemgate_throttled_responses_total",
            "Throttles imposed: on a response, or once more on a held request while a debt is owed.",
            |c| c.throttled.load(Relaxed) as f64,
        ),
    ];
    for (name, help, value) in counters {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for e in &all {
            let _ = writeln!(out, "{name}{{{}}} {}", labels(e), value(&e.counters));
        }
    }
    let _ = writeln!(out, "# HELP idemgate_requests_held Produce or Fetch requests held now (muted, owing or paused), per connector and tenant.\n# TYPE idemgate_requests_held gauge");
    for e in &all {
        let held = e.counters.held.load(Relaxed);
        let _ = writeln!(out, "idemgate_requests_held{{{}}} {held}", labels(e));
    }
    let _ = writeln!(out, "# HELP idemgate_quota_limit The limit in force, per second (bytes, requests, or microseconds of proxy time for request_percentage).\n# TYPE idemgate_quota_limit gauge");
    for e in &all {
        for kind in KINDS {
            if let Some(l) = e.limits()[kind as usize] {
                let _ = writeln!(
                    out,
                    "idemgate_quota_limit{{{},kind=\"{}\"}} {}",
                    labels(e),
                    if l.time_based {
                        "request_time_micros"
                    } else {
                        kind.as_str()
                    },
                    l.rate
                );
            }
        }
    }
    let _ = writeln!(out, "# HELP idemgate_connector_paused 1 while the connector is paused (admin API).\n# TYPE idemgate_connector_paused gauge");
    for e in &all {
        let _ = writeln!(
            out,
            "idemgate_connector_paused{{{}}} {}",
            labels(e),
            u8::from(e.is_paused())
        );
    }
    let _ = writeln!(
        out,
        "# HELP idemgate_quota_reloads_total Quota changes put in force (SIGHUP, admin API).\n# TYPE idemgate_quota_reloads_total counter\nidemgate_quota_reloads_total {}",
        q.reloads.load(Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP idemgate_quota_reload_failures_total Quota changes refused (the previous ones stay).\n# TYPE idemgate_quota_reload_failures_total counter\nidemgate_quota_reload_failures_total {}",
        q.reload_failures.load(Relaxed)
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn quota_series_carry_connector_and_tenant() {
        let q = crate::quota::resumed_alice();
        let mut text = String::new();
        super::quotas(&q, &mut text);
        assert!(
            text.contains("idemgate_connector_paused{connector=\"x\",tenant=\"alice\"} 0"),
            "{text}"
        );
    }
}
