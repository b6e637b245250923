//! Each covered topic's own settings that dedup must respect, asked of the
//! brokers (DescribeConfigs on a connection of the proxy's own) the first
//! time a rule meets the topic, and again once the answer is
//! `upstream.metadata_refresh` old:
//!
//! - `cleanup.policy`: fetch dedup removes a later copy only while the first
//!   copy is provably still in the log, and compaction removes records from
//!   the middle of a log without moving its start offset. A copy on a
//!   compacted topic may be the only one left, so on such a topic fetch dedup
//!   removes nothing (`fail_open{reason="compacted"}`); nor where the brokers
//!   would not say (`reason="topic_config"`: an authenticating listener, an
//!   ACL).
//! - `max.message.bytes`: tags never push a batch past the topic's own
//!   limit (else the broker's default).
//!
//! One lookup per topic is in flight at a time (moka's single-flight
//! `get_with`); the others wait for it. A topic the brokers would not
//! describe is asked again after [`RETRY_UNKNOWN`]. A Produce never waits
//! out a lookup: [`TopicConfigs::get_within`] bounds its wait
//! (`dedup.topic_config_wait`) and leaves the lookup running in a task of
//! its own, since a broker that hangs on DescribeConfigs (librdkafka's mock
//! cluster) would otherwise hold every such Produce for
//! `upstream.request_timeout`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, FutureExt, Shared};
use moka::future::Cache;
use moka::Expiry;

use crate::config::Upstream;
use crate::tls::UpstreamTlsConnector;
use crate::upstream::{describe_topics, DescribedTopic};

/// How soon a topic the brokers would not describe is asked again.
pub(crate) const RETRY_UNKNOWN: Duration = Duration::from_secs(10);
/// Topics remembered at once (least recently used go first).
const CAPACITY: u64 = 100_000;

pub struct TopicConfigs {
    upstream: Upstream,
    tls: Option<UpstreamTlsConnector>,
    /// `None`: the brokers would not say.
    cache: Cache<String, Option<DescribedTopic>>,
    /// The first failed lookup is logged at WARN, later ones at DEBUG.
    warned: AtomicBool,
    /// Topics a `content` drop rule covers whose `cleanup.policy` was asked
    /// (once each: a compacted one is logged once).
    content_drop_checked: Mutex<std::collections::HashSet<String>>,
    /// Lookups running in a task of their own for [`Self::get_within`],
    /// until their answer is in `cache`.
    background: Mutex<HashMap<String, Background>>,
}

/// A lookup that goes on whether or not anyone still waits for it.
type Lookup = Shared<BoxFuture<'static, Option<DescribedTopic>>>;

#[derive(Clone)]
struct Background {
    lookup: Lookup,
    /// A wait for it ran out: nobody waits again while it runs, so a
    /// request's other partitions of the topic, and the requests after it,
    /// go on at once (with N partitions, N waits would add up).
    overdue: Arc<AtomicBool>,
}

/// A topic's settings were not known within the wait; the lookup goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Late;

/// Answers live for `upstream.metadata_refresh`; "would not say", for
/// [`RETRY_UNKNOWN`].
struct Freshness {
    known: Duration,
}

impl Expiry<String, Option<DescribedTopic>> for Freshness {
    fn expire_after_create(
        &self,
        _topic: &String,
        value: &Option<DescribedTopic>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(if value.is_some() {
            self.known
        } else {
            RETRY_UNKNOWN.min(self.known)
        })
    }
}

// === impl TopicConfigs ===

impl TopicConfigs {
    pub fn new(upstream: Upstream, tls: Option<UpstreamTlsConnector>) -> TopicConfigs {
        let known = upstream.metadata_refresh;
        TopicConfigs {
            upstream,
            tls,
            cache: Cache::builder()
                .max_capacity(CAPACITY)
                .expire_after(Freshness { known })
                .build(),
            warned: AtomicBool::new(false),
            content_drop_checked: Default::default(),
            background: Default::default(),
        }
    }

    /// Logs once at WARN if `topic`, covered by a `content` drop rule, is
    /// compacted: there the same bytes recur legitimately (a value set back
    /// to an earlier one, a second tombstone for a key), and such a record
    /// is dropped as a replay. Asked in the background; never waits.
    pub fn warn_if_compacted(self: &Arc<Self>, topic: &str) {
        {
            let mut checked = self
                .content_drop_checked
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if checked.contains(topic) || !checked.insert(topic.to_string()) {
                return;
            }
        }
        let configs = self.clone();
        let topic = topic.to_string();
        tokio::spawn(async move {
            if configs.get(&topic).await.is_some_and(|c| c.compacted) {
                tracing::warn!(
                    topic,
                    "a key = \"content\" drop rule covers a compacted topic: a record whose key, \
                     value and headers repeat one in the window (A→B→A, a second tombstone) is \
                     dropped as a replay, and the topic's last value per key can be wrong; use a key \
                     that names the event, or mode = \"observe\""
                );
            }
        });
    }

    /// `topic`'s settings; `None` when the brokers would not say.
    pub async fn get(&self, topic: &str) -> Option<DescribedTopic> {
        self.cache
            .get_with_by_ref(topic, self.describe(topic))
            .await
    }

    /// `topic`'s settings if they are known within `wait` (`Ok(None)`: the
    /// brokers would not say), else [`Late`]. The lookup runs in a task of
    /// its own and goes on after `wait`, so a later request finds its
    /// answer in the cache; once one wait for it ran out, the others do not
    /// wait (one wait per topic and lookup, not per partition).
    pub async fn get_within(
        self: &Arc<Self>,
        topic: &str,
        wait: Duration,
    ) -> Result<Option<DescribedTopic>, Late> {
        if let Some(known) = self.cache.get(topic).await {
            return Ok(known);
        }
        let Background { lookup, overdue } = self.in_background(topic);
        if overdue.load(Relaxed) {
            return lookup.now_or_never().ok_or(Late);
        }
        match tokio::time::timeout(wait, lookup).await {
            Ok(found) => Ok(found),
            Err(_) => {
                overdue.store(true, Relaxed);
                Err(Late)
            }
        }
    }

    /// The lookup of `topic` running in its own task, started if none is.
    fn in_background(self: &Arc<Self>, topic: &str) -> Background {
        // Held while the task is spawned and listed: the task unlists itself
        // under this lock, so it can never do so before it is listed.
        let mut running = self.background.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(background) = running.get(topic) {
            return background.clone();
        }
        let configs = self.clone();
        let name = topic.to_string();
        let task = tokio::spawn(async move {
            let found = configs.get(&name).await;
            configs
                .background
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&name);
            found
        });
        // A lookup that panicked knows nothing.
        let background = Background {
            lookup: task.map(|joined| joined.ok().flatten()).boxed().shared(),
            overdue: Arc::default(),
        };
        running.insert(topic.to_string(), background.clone());
        background
    }

    async fn describe(&self, topic: &str) -> Option<DescribedTopic> {
        match describe_topics(&self.upstream, self.tls.as_ref(), &[topic]).await {
            Ok(found) => {
                let described = found.into_iter().find(|(t, _)| t == topic).map(|(_, d)| d);
                if described.is_none() {
                    self.failed(topic, "the broker answered with an error for it");
                }
                described
            }
            Err(e) => {
                self.failed(topic, &e.to_string());
                None
            }
        }
    }

    fn failed(&self, topic: &str, why: &str) {
        if !self.warned.swap(true, Relaxed) {
            tracing::warn!(
                topic,
                error = why,
                "cannot learn a covered topic's cleanup.policy and max.message.bytes: fetch rules \
                 remove nothing from it (fail_open reason topic_config) and tags assume the broker \
                 default 1 MiB limit until it can; asked again every 10 s"
            );
        } else {
            tracing::debug!(topic, error = why, "topic config lookup failed");
        }
    }
}
