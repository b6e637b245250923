//! The rules: which dedup rule a topic and a connector get, the globs
//! rules match names with, the client-id patterns that name a connector,
//! and the `[quota]` and `[[quotas]]` sections (the file's, and the admin
//! API's PUT /quotas body).

use std::time::Duration;

use toml::Table;

use super::walk::Section;
use super::{
    defaults, ConfigErrors, Dedup, Mode, Problem, QuotaRule, QuotaSettings, Rule, SharedQuota,
};

/// A topic or connector name pattern: `*` any run of characters, `?` one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob(String);

impl Glob {
    pub fn new(pattern: &str) -> Glob {
        Glob(pattern.to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn matches(&self, text: &str) -> bool {
        glob_match(self.0.as_bytes(), text.as_bytes())
    }
}

/// Iterative wildcard match with one backtrack point (linear in practice).
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

impl Dedup {
    /// The rule for a topic and connector on the produce path: `None` when
    /// the topic is excluded or no produce rule matches.
    pub fn rule_for(&self, topic: &str, connector: Option<&str>) -> Option<&Rule> {
        self.rule_where(topic, connector, |r| r.direction.produce())
    }

    /// The rule for a topic read by a consumer (its connector, for sinks).
    pub fn fetch_rule_for(&self, topic: &str, connector: Option<&str>) -> Option<&Rule> {
        self.rule_where(topic, connector, |r| r.direction.fetch())
    }

    /// True for topics no rule ever touches: `__*`, Connect's internal
    /// topics (by shape, or learned from its clients), `exclude_topics`.
    pub fn is_excluded(&self, topic: &str) -> bool {
        topic.starts_with("__")
            || defaults::CONNECT_INTERNAL_TOPICS
                .iter()
                .any(|g| glob_match(g.as_bytes(), topic.as_bytes()))
            || self.exclude_topics.iter().any(|g| g.matches(topic))
            || self.connect_internal.contains(topic)
    }

    fn rule_where(
        &self,
        topic: &str,
        connector: Option<&str>,
        applies: impl Fn(&Rule) -> bool,
    ) -> Option<&Rule> {
        if self.is_excluded(topic) {
            return None;
        }
        self.rules.iter().filter(|r| applies(r)).find(|r| {
            r.topics.matches(topic)
                && r.connector
                    .as_ref()
                    .is_none_or(|c| connector.is_some_and(|name| c.matches(name)))
        })
    }

    /// True when some rule could act on records (any mode but `off`).
    pub fn enabled(&self) -> bool {
        self.rules.iter().any(|r| r.mode != Mode::Off)
    }

    /// True when some rule could act on what consumers read.
    pub fn fetch_enabled(&self) -> bool {
        self.rules
            .iter()
            .any(|r| r.mode != Mode::Off && r.direction.fetch())
    }
}

/// A client-id pattern with one `{connector}` placeholder and globs around it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectorPattern {
    pub text: String,
    before: Glob,
    after: Glob,
}

impl ConnectorPattern {
    pub fn parse(text: &str) -> Result<ConnectorPattern, String> {
        let (before, after) = text.split_once("{connector}").ok_or_else(|| {
            format!("{text:?} has no {{connector}} placeholder, e.g. \"etl-{{connector}}-*\"")
        })?;
        if after.contains("{connector}") {
            return Err(format!("{text:?} has more than one {{connector}}"));
        }
        Ok(ConnectorPattern {
            text: text.to_string(),
            before: Glob::new(before),
            after: Glob::new(after),
        })
    }

    /// The connector named in `client_id`: the longest non-empty run that
    /// the placeholder can stand for, starting as early as possible.
    pub fn connector<'c>(&self, client_id: &'c str) -> Option<&'c str> {
        let bounds: Vec<usize> = client_id
            .char_indices()
            .map(|(i, _)| i)
            .chain([client_id.len()])
            .collect();
        for (n, &start) in bounds.iter().enumerate() {
            if !self.before.matches(&client_id[..start]) {
                continue;
            }
            for &end in bounds[n + 1..].iter().rev() {
                if self.after.matches(&client_id[end..]) {
                    return Some(&client_id[start..end]);
                }
            }
        }
        None
    }
}

pub(super) fn quota_settings(s: &mut Section<'_, '_>) -> QuotaSettings {
    let burst = s.duration("burst", defaults::QUOTA_BURST);
    if burst < Duration::from_millis(10) {
        s.problem("burst", "must be at least 10ms".into());
    }
    let max_throttle = s.duration("max_throttle", defaults::QUOTA_MAX_THROTTLE);
    let max_hold = s.duration("max_hold", defaults::QUOTA_MAX_HOLD);
    for (key, d) in [("max_throttle", max_throttle), ("max_hold", max_hold)] {
        if d.is_zero() || d > Duration::from_secs(20) {
            s.problem(
                key,
                format!("{d:?}: must be above 0 and at most 20s, well under a client's request.timeout.ms (30s)"),
            );
        }
    }
    let mut connector_patterns = Vec::new();
    for (i, text) in s.strings("connector_patterns", &[]).iter().enumerate() {
        match ConnectorPattern::parse(text) {
            Ok(p) => connector_patterns.push(p),
            Err(message) => s.problem(&format!("connector_patterns[{i}]"), message),
        }
    }
    let shared = s.optional_section("shared", shared_quota);
    QuotaSettings {
        burst,
        max_throttle,
        max_hold,
        connector_patterns,
        shared,
    }
}

/// `[quota.shared]`.
fn shared_quota(s: &mut Section<'_, '_>) -> SharedQuota {
    let topic = super::topic_name(s, defaults::QUOTA_SHARED_TOPIC);
    let replication_factor = super::replication_factor(s);
    let report_every = s.duration("report_every", defaults::QUOTA_REPORT_EVERY);
    if report_every < Duration::from_millis(100) || report_every > Duration::from_secs(10) {
        s.problem(
            "report_every",
            format!("{report_every:?}: must be 100ms to 10s (the tier's view is this late)"),
        );
    }
    let peer_expiry = s.duration("peer_expiry", defaults::QUOTA_PEER_EXPIRY);
    if peer_expiry < report_every * 2 {
        s.problem(
            "peer_expiry",
            format!(
                "{peer_expiry:?}: must be at least twice report_every ({report_every:?}), or a live peer drops out between two of its reports"
            ),
        );
    }
    let sasl = s.optional_section("sasl", super::shared_sasl);
    SharedQuota {
        topic,
        replication_factor,
        report_every,
        peer_expiry,
        sasl,
    }
}

pub(super) fn quota_rule(s: &mut Section<'_, '_>) -> QuotaRule {
    let glob = |s: &mut Section<'_, '_>, key: &'static str| {
        let v = s.string(key, "");
        (!v.is_empty()).then(|| Glob::new(&v))
    };
    let connector = glob(s, "connector");
    let tenant = glob(s, "tenant");
    let client_id = glob(s, "client_id");
    if connector.is_some() && client_id.is_some() {
        s.problem(
            "client_id",
            "a rule matches a connector or a client id, not both (client_id is for clients with no connector)".into(),
        );
    }
    let rate = |s: &mut Section<'_, '_>, key: &'static str| {
        let present = s.table.is_some_and(|t| t.contains_key(key));
        let v = s.byte_size(key, 0);
        if present && v == 0 {
            s.problem(key, "must be above 0 (leave it out for no limit)".into());
        }
        present.then_some(v as u64)
    };
    let produce_bytes_per_sec = rate(s, "produce_bytes_per_sec");
    let fetch_bytes_per_sec = rate(s, "fetch_bytes_per_sec");
    let requests_per_sec = rate(s, "requests_per_sec");
    let request_percentage = rate(s, "request_percentage");
    if requests_per_sec.is_some() && request_percentage.is_some() {
        s.problem(
            "request_percentage",
            "set request_percentage or requests_per_sec, not both".into(),
        );
    }
    if produce_bytes_per_sec.is_none()
        && fetch_bytes_per_sec.is_none()
        && requests_per_sec.is_none()
        && request_percentage.is_none()
    {
        s.problem(
            "",
            "sets no limit (produce_bytes_per_sec, fetch_bytes_per_sec, requests_per_sec or request_percentage)".into(),
        );
    }
    let has_burst = s.table.is_some_and(|t| t.contains_key("burst"));
    let burst = s.duration("burst", defaults::QUOTA_BURST);
    let burst = has_burst.then_some(burst);
    if burst.is_some_and(|b| b < Duration::from_millis(10)) {
        s.problem("burst", "must be at least 10ms".into());
    }
    QuotaRule {
        connector,
        tenant,
        client_id,
        produce_bytes_per_sec,
        fetch_bytes_per_sec,
        requests_per_sec,
        request_percentage,
        burst,
    }
}

/// Reads `[quota]` and `[[quotas]]` alone from a TOML text (the admin API's
/// PUT /quotas body), with the same checks and key paths as the file.
pub fn parse_quotas(text: &str) -> Result<(Option<QuotaSettings>, Vec<QuotaRule>), ConfigErrors> {
    let table: Table = text.parse().map_err(|e: toml::de::Error| {
        ConfigErrors(vec![Problem {
            path: String::new(),
            message: format!("not valid TOML: {}", e.message()),
        }])
    })?;
    let mut problems = Vec::new();
    let present = table.contains_key("quota");
    let (settings, rules) = {
        let mut root = Section::root(&table, &mut problems);
        let settings = root.section("quota", quota_settings);
        let rules = root.tables("quotas", quota_rule);
        root.finish();
        (present.then_some(settings), rules)
    };
    if problems.is_empty() {
        Ok((settings, rules))
    } else {
        Err(ConfigErrors(problems))
    }
}
