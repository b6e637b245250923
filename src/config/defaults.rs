//! Every default, in one place.

use std::time::Duration;

pub const BOOTSTRAP: &str = "127.0.0.1:19092";
pub const ADVERTISED_HOST: &str = "127.0.0.1";
pub const BROKER_PORTS: &str = "19093-19199";
/// Kafka's own `socket.request.max.bytes` default (100 MiB).
pub const MAX_FRAME_BYTES: usize = 104_857_600;
pub const MAX_CONNECTIONS: usize = 10_000;
/// Kafka clients keep at most 5 requests in flight; 64 leaves room for
/// pipelining admin clients without letting one connection hoard memory.
pub const MAX_IN_FLIGHT: usize = 64;
/// One Connect worker opens tens of connections; a thousand from one IP
/// is a leak or an attack.
pub const MAX_CONNECTIONS_PER_IP: usize = 1_000;
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// A consumer's Fetch response is up to 50 MiB (fetch.max.bytes); a
/// connection may have one and a bit more waiting for its client.
pub const MAX_IN_FLIGHT_BYTES: usize = 64 << 20;
/// Five largest requests at once.
pub const MAX_IN_FLIGHT_BYTES_TOTAL: usize = 512 << 20;
/// Twice a client's default request.timeout.ms: a client that has read
/// nothing for this long has given up on what it asked for.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
pub const UPSTREAM_BOOTSTRAP: &str = "127.0.0.1:9092";
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Added to the wait a request asks for itself (Fetch max_wait_ms,
/// Produce timeout_ms, JoinGroup rebalance_timeout_ms).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
pub const METADATA_REFRESH: Duration = Duration::from_secs(30);
pub const ADMIN_LISTEN: &str = "127.0.0.1:9644";
pub const ADMIN_TOKEN_ENV: &str = "IDEMGATE_ADMIN_TOKEN";
pub const STORE_DIR: &str = "./data";
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
pub const LOG_FORMAT: &str = "text";
pub const LOG_LEVEL: &str = "info";
pub const TLS_RELOAD_INTERVAL: Duration = Duration::from_secs(30);
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longer than a Connect replay: offset.flush.interval.ms is 60 s, a
/// rebalance can add minutes.
pub const DEDUP_WINDOW: Duration = Duration::from_secs(3600);
pub const DEDUP_MAX_KEYS: usize = 10_000_000;
pub const DEDUP_HEADER: &str = "idempotency-key";
/// Well under a client's request.timeout.ms (30 s): a request held longer
/// would time out and come back as a retry.
pub const DEDUP_PENDING_WAIT: Duration = Duration::from_secs(5);
pub const DEDUP_LOAD_WAIT: Duration = Duration::from_secs(10);
/// `dedup.topic_config_wait`: a healthy broker answers DescribeConfigs in
/// milliseconds; the first batches of a topic met while one hangs go
/// untagged rather than waiting out `upstream.request_timeout`.
pub const DEDUP_TOPIC_CONFIG_WAIT: Duration = Duration::from_millis(500);
/// `dedup.flush_interval`: the store's own default.
pub const DEDUP_FLUSH_INTERVAL: Duration = crate::store::DEFAULT_FLUSH_INTERVAL;
/// `dedup.store_cache`: the store's own default.
pub const DEDUP_STORE_CACHE: usize = crate::store::DEFAULT_CACHE;
/// Topics excluded on top of the ones the proxy always leaves alone
/// ([`CONNECT_INTERNAL_TOPICS`], `__*`, and those learned from Connect's
/// internal clients): none.
pub const DEDUP_EXCLUDE_TOPICS: &[&str] = &[];
/// `[dedup.shared]`: the window's topic.
pub const SHARED_TOPIC: &str = "_idemgate-window";
/// Partitions of the window's topic, when the proxy creates it: each
/// process tails every one, so a few are enough.
pub const SHARED_PARTITIONS: i64 = 6;
/// The window's topic keeps its records `dedup.window` plus this.
pub const SHARED_RETENTION_MARGIN: Duration = Duration::from_secs(3600);
/// A connection's first Produce waits at most this for the shared window to
/// read its topic to the end (measured lag: ~15 ms quiet, ~100 ms busy).
pub const SHARED_CATCH_UP_WAIT: Duration = Duration::from_millis(500);
/// `[quota.shared]`: the tier's usage and pause topic.
pub const QUOTA_SHARED_TOPIC: &str = "_idemgate-quota";
/// How often each process publishes its usage per quota subject.
pub const QUOTA_REPORT_EVERY: Duration = Duration::from_secs(1);
/// A peer not heard from for this long stops counting (three reports).
pub const QUOTA_PEER_EXPIRY: Duration = Duration::from_secs(3);
/// The shapes of Kafka Connect's internal topics, always left alone:
/// `config.storage.topic`, `offset.storage.topic` (and a KIP-618
/// connector's own `offsets.storage.topic`) and `status.storage.topic`
/// are named `<something>-configs`, `-offsets`, `-status` or `-statuses`
/// in Connect's docs and examples (`connect-configs`,
/// `connect-offsets`, `connect-status`), and MirrorMaker 2's are
/// `mm2-configs.<alias>.internal` and the like. A user topic of that
/// shape gets no dedup: a duplicate, never a loss.
pub const CONNECT_INTERNAL_TOPICS: &[&str] = &[
    "*-configs",
    "*-offsets",
    "*-status",
    "*-statuses",
    "*.internal",
];
/// A rule without a `mode` counts replays and drops nothing: dropping is
/// a decision an operator makes once the counts look right.
pub const DEDUP_MODE: &str = "observe";
/// A quota's bucket holds this many seconds of its rate: a connector idle
/// for a while may send one second's worth at once (Kafka measures over
/// 1 s windows too).
pub const QUOTA_BURST: Duration = Duration::from_secs(1);
/// The longest one throttle mutes a connection. Kafka bounds a throttle
/// to its quota window; a few seconds keeps every wait far below a
/// client's request.timeout.ms (30 s) while a 1 MB produce batch at
/// 1 MiB/s (≈1 s of debt) is still shaped exactly.
pub const QUOTA_MAX_THROTTLE: Duration = Duration::from_secs(2);
/// The longest a paused connector's Produce or Fetch is held before it is
/// let through (then the next one is held): a third of request.timeout.ms.
pub const QUOTA_MAX_HOLD: Duration = Duration::from_secs(10);
