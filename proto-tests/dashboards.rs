//! The shipped Grafana dashboard (`deploy/grafana/idemgate.json`) and
//! Prometheus alert rules (`deploy/prometheus/idemgate-alerts.yml`) watch
//! only metrics the proxy exports: every `idemgate_*` name their queries use
//! is a family on a running proxy's `/metrics` (with a dedup rule, a fetch
//! rule and a quota, so every family is on). A rename that would leave a
//! panel or an alert silently watching nothing fails here.

use std::collections::BTreeSet;
use std::path::Path;

use crate::support::Proxy;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Every `idemgate_*` metric name in a query, histogram suffixes taken off.
fn metric_names(query: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = query;
    while let Some(at) = rest.find("idemgate_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let family = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        out.insert(family.to_string());
        rest = &tail[end..];
    }
    out
}

fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(Path::new(ROOT).join("deploy/grafana/idemgate.json"))
        .expect("the dashboard");
    let dash: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let top = dash["panels"].as_array().expect("panels");
    assert!(!top.is_empty());
    // A row only groups panels: those after it, or (collapsed) its own.
    let mut panels = Vec::new();
    for p in top {
        if p["type"] == "row" {
            panels.extend(p["panels"].as_array().into_iter().flatten());
        } else {
            panels.push(p);
        }
    }
    let mut out = Vec::new();
    for p in panels {
        let title = p["title"].as_str().expect("a panel title").to_string();
        let targets = p["targets"].as_array().expect("panel targets");
        assert!(!targets.is_empty(), "panel {title} has no query");
        for t in targets {
            out.push((title.clone(), t["expr"].as_str().expect("expr").to_string()));
        }
    }
    out
}

fn alert_queries() -> Vec<(String, String)> {
    let text =
        std::fs::read_to_string(Path::new(ROOT).join("deploy/prometheus/idemgate-alerts.yml"))
            .expect("the alert rules");
    let mut out = Vec::new();
    let mut alert = None;
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("- alert:") {
            alert = Some(name.trim().to_string());
        } else if let Some(expr) = line.strip_prefix("expr:") {
            let name = alert.take().expect("an expr belongs to an alert");
            let expr = expr.trim();
            assert!(
                !expr.is_empty() && !expr.starts_with('|') && !expr.starts_with('>'),
                "alert {name}: keep its expr on one line"
            );
            out.push((name, expr.to_string()));
        }
    }
    assert!(alert.is_none(), "an alert without an expr");
    out
}

#[tokio::test]
async fn every_metric_a_dashboard_panel_or_alert_names_is_exported() {
    let proxy = Proxy::launch(
        "127.0.0.1:1",
        "",
        "",
        "[dedup]\n[[dedup.rules]]\ntopics = \"orders\"\nmode = \"drop\"\n\
         [[dedup.rules]]\ntopics = \"sink-*\"\ndirection = \"fetch\"\nmode = \"drop\"\n\
         [[quotas]]\nconnector = \"orders-source\"\nproduce_bytes_per_sec = \"1MiB\"\n",
    )
    .await;
    let exposition = proxy.metrics().await;
    // OpenMetrics: a counter family `x` has its samples named `x_total`.
    let families: BTreeSet<String> = exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
            [name, "counter"] => Some(format!("{name}_total")),
            [name, _] => Some(name.to_string()),
            _ => None,
        })
        .collect();
    let queries: Vec<_> = dashboard_queries()
        .into_iter()
        .chain(alert_queries())
        .collect();
    assert!(
        queries.len() >= 20,
        "the dashboard and the alerts have their queries"
    );
    let mut missing = Vec::new();
    for (what, expr) in &queries {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{what}: no idemgate metric in {expr}");
        for name in names {
            if !families.contains(&name) {
                missing.push(format!("{what}: {name}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "metrics named but not exported:\n{}",
        missing.join("\n")
    );
    proxy.stop().await;
}

#[test]
fn names_come_out_of_queries_whole() {
    assert_eq!(
        metric_names("rate(idemgate_a_total[5m]) / idemgate_b_bucket{le=\"1\"}"),
        ["idemgate_a_total", "idemgate_b"]
            .into_iter()
            .map(String::from)
            .collect()
    );
}
