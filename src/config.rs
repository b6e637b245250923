//! The configuration: TOML in, a validated [`Config`] out.
//!
//! The file is walked by hand over a [`toml::Table`] instead of through
//! `#[serde(deny_unknown_fields)]` structs, because serde stops at the first
//! problem and an operator fixing a config at 3 a.m. wants all of them at once,
//! each with its key path (`listen.broker_ports: ...`). Every default lives in
//! [`defaults`] (`config/defaults.rs`), and `config/idemgate.toml` shows each
//! of them. `config/walk.rs` walks the TOML, `config/values.rs` parses
//! durations, byte sizes, port ranges and `host:port`, `config/rules.rs`
//! finds the dedup rule for a topic and parses the quota rules.

use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use toml::Table;

pub mod defaults;
mod rules;
mod values;
mod walk;

pub use rules::{parse_quotas, ConnectorPattern, Glob};
pub use values::parse_duration;

use rules::{quota_rule, quota_settings};
use walk::Section;

/// The validated configuration. Nothing in here can be wrong any more.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: Listen,
    pub upstream: Upstream,
    pub admin: Admin,
    pub store: Store,
    pub shutdown: Shutdown,
    pub log: Log,
    pub diagnostics: Diagnostics,
    pub dedup: Dedup,
    /// `[quota]`: how quotas are enforced (reloadable).
    pub quota: QuotaSettings,
    /// `[[quotas]]`: who gets which limits (reloadable).
    pub quotas: Vec<QuotaRule>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Listen {
    /// What clients put in `bootstrap.servers`.
    pub bootstrap: SocketAddr,
    /// The host written into every rewritten broker address.
    pub advertised_host: String,
    /// One port per upstream broker, assigned by node id and kept forever.
    pub broker_ports: RangeInclusive<u16>,
    /// The largest request frame accepted from a client; larger closes the connection.
    pub max_frame_bytes: usize,
    /// Connections accepted at once over all listeners; the next one is closed.
    pub max_connections: NonZeroUsize,
    /// Requests a single connection may have in flight before we stop reading from it.
    pub max_in_flight: NonZeroUsize,
    /// Connections one client IP may hold at once; the next one is closed.
    pub max_connections_per_ip: NonZeroUsize,
    /// A connection with nothing in flight and no request for this long is
    /// closed (Kafka brokers: connections.max.idle.ms, 10 minutes).
    pub idle_timeout: Duration,
    /// Bytes of responses one connection may hold, read from its broker and
    /// not yet written to its client; past it, its broker is not read.
    pub max_in_flight_bytes: usize,
    /// Bytes all connections together may hold (requests read and not yet
    /// sent, responses not yet written); past it, no request body is read.
    pub max_in_flight_bytes_total: usize,
    /// A client that accepts no byte of its responses for this long is closed.
    pub write_timeout: Duration,
    /// `[listen.tls]`: clients connect with TLS. `None`: plaintext.
    pub tls: Option<ListenTls>,
}

/// TLS for clients, terminated by the proxy.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenTls {
    /// Where these keys sit in the config (`listen.tls`, `admin.tls`), for
    /// problems' key paths.
    pub section: &'static str,
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of the leaf certificate.
    pub key: PathBuf,
    /// PEM CA bundle: when set, clients must present a certificate it signed
    /// (mTLS), and the certificate's subject becomes the client's principal.
    pub client_ca: Option<PathBuf>,
    /// How often the files are checked for changes; changed files are loaded
    /// for new connections, open connections keep theirs.
    pub reload_interval: Duration,
    /// A client that has not finished its handshake by then is closed.
    pub handshake_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    /// Seed brokers, as `host:port` strings (resolved at connect time so DNS changes are seen).
    pub bootstrap: Vec<String>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// How often the proxy asks upstream for Metadata on its own, to learn new brokers.
    pub metadata_refresh: Duration,
    /// `[upstream.tls]`: TLS to the brokers. `None`: plaintext.
    pub tls: Option<UpstreamTls>,
}

/// TLS from the proxy to the brokers.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamTls {
    /// PEM CA bundle the brokers' certificates must chain to; `None`: the
    /// system's trust store.
    pub ca: Option<PathBuf>,
    /// The name the brokers' certificates are checked against (and sent as
    /// SNI); `None`: each broker's own host name from its address.
    pub server_name: Option<String>,
    /// A client certificate and key, for brokers that require mTLS.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Admin {
    /// `None` when `admin.listen = ""`: no admin listener at all.
    pub listen: Option<SocketAddr>,
    /// The bearer token state-changing calls must carry (`admin.token`, or
    /// the environment variable named by `admin.token_env`).
    pub token: Option<Secret>,
    /// Every route but /healthz and /readyz needs the token too.
    pub token_for_reads: bool,
    /// `[admin.tls]`: HTTPS for the admin listener.
    pub tls: Option<ListenTls>,
}

impl Admin {
    /// Bound to a loopback address only (the default).
    pub fn is_loopback(&self) -> bool {
        self.listen.is_some_and(|a| a.ip().is_loopback())
    }
}

/// A value that must never reach a log: `Debug` shows its length only.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Store {
    pub dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Shutdown {
    /// How long SIGTERM waits for in-flight requests before closing anyway.
    pub drain_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Log {
    pub format: LogFormat,
    /// A `tracing_subscriber::EnvFilter` directive; `RUST_LOG` overrides it.
    pub level: String,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Diagnostics {
    /// Scan every response that leaves the proxy for an upstream broker address
    /// and count any hit in `idemgate_address_leaks_total`. Costs a scan per
    /// response; meant for tests and for a first deployment.
    pub leak_check: bool,
}

/// `[dedup]`: the idempotency window and the rules that use it.
#[derive(Debug, Clone, PartialEq)]
pub struct Dedup {
    /// How long an acknowledged key is remembered.
    pub window: Duration,
    /// The most keys remembered; the oldest go first.
    pub max_keys: usize,
    /// The record header that carries the key.
    pub header: String,
    /// How long a request carrying a key another request has in flight waits
    /// for that request's outcome before it passes through.
    pub pending_wait: Duration,
    /// How long Produce for a dedup topic waits for the window to load after
    /// a restart before it passes through unchecked.
    pub load_wait: Duration,
    /// How long a Produce whose tags grow a batch waits for the topic's
    /// `max.message.bytes` the first time (DescribeConfigs), before the
    /// batch goes on untagged; the lookup goes on in the background, and
    /// the topic's batches until it answers do not wait again.
    pub topic_config_wait: Duration,
    /// How often the window is written to disk.
    pub flush_interval: Duration,
    /// The most memory sled's page cache may hold, bytes.
    pub store_cache: usize,
    /// Topics never touched, whatever the rules say (globs); `__*` and
    /// [`defaults::CONNECT_INTERNAL_TOPICS`] always.
    pub exclude_topics: Vec<Glob>,
    /// Topics Connect's own clients were seen writing (learned at run time,
    /// shared by every clone of this config): never touched either.
    pub connect_internal: Arc<LearnedTopics>,
    /// What `idemgate check` and the startup log say about the rules: not
    /// problems, but what each rule will do that an operator must know.
    pub notes: Vec<Problem>,
    /// Checked in order; the first rule matching a record's topic (and
    /// connector, if the rule names one) decides.
    pub rules: Vec<Rule>,
    /// From `key_secret_file`: keys every hash, so a tenant who can write a
    /// topic cannot predict (and pre-empt) another's keys. `None`: public
    /// XXH3 keys.
    pub key_secret: Option<KeySecret>,
    /// `[dedup.shared]`: the window's log in a Kafka topic, shared by every
    /// process in front of the cluster. `None`: this process's own window.
    pub shared: Option<SharedWindow>,
}

/// `[dedup.shared]`: every idemgate process in front of one cluster
/// publishes the keys the broker acknowledged through it to `topic`, and
/// learns the others' from it.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedWindow {
    /// The window's topic, created if missing (`cleanup.policy=delete`).
    pub topic: String,
    /// Partitions of a topic the proxy creates.
    pub partitions: i32,
    /// Replication factor of a topic the proxy creates; -1: the brokers'
    /// `default.replication.factor`.
    pub replication_factor: i16,
    /// The topic's `retention.ms` is `dedup.window` plus this.
    pub retention_margin: Duration,
    /// The proxy's own SASL credentials for the topic (`None`: none).
    pub sasl: Option<SharedSasl>,
    /// How long a connection's first Produce waits for this process to
    /// read the topic up to where it ends now (a replay that follows its
    /// original through another process by less than the lag).
    pub catch_up_wait: Duration,
}

/// `[dedup.shared.sasl]`.
#[derive(Clone, PartialEq)]
pub struct SharedSasl {
    /// PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.
    pub mechanism: String,
    pub username: String,
    /// Read from `password_file` (trailing whitespace trimmed).
    pub password: String,
}

impl std::fmt::Debug for SharedSasl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedSasl")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// A per-deployment secret that keys every hash (`dedup.key_secret_file`).
#[derive(Clone, PartialEq, Eq)]
pub struct KeySecret(pub(crate) [u8; 32]);

impl KeySecret {
    /// The secret made from the file's bytes (any length): BLAKE3's key
    /// derivation, so the file can hold a passphrase or random bytes alike.
    pub fn derive(material: &[u8]) -> KeySecret {
        KeySecret(blake3::derive_key("idemgate 2026 window keys", material))
    }
}

impl std::fmt::Debug for KeySecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeySecret(..)")
    }
}

/// One `[[dedup.rules]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub topics: Glob,
    /// Only records from this connector (parsed from Connect's client ids).
    pub connector: Option<Glob>,
    pub key: KeyStrategy,
    /// What a record without the field `key` names gets.
    pub fallback: Fallback,
    /// The connector preset `key` and `fallback` came from, if any.
    pub preset: Option<Preset>,
    pub mode: Mode,
    /// False when the file left `mode` out (the rule observes).
    pub mode_given: bool,
    /// Write the key into the `dedup.header` header of each record.
    pub tag: bool,
    /// Which path the rule filters.
    pub direction: Direction,
}

/// A connector whose events carry their own identity: `preset = "…"` on a
/// rule stands for the key and fallback that name one of its events (README,
/// "Connector presets", gives each one's reasons).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// Debezium's Postgres connector: the row (record key), the operation
    /// and the WAL position of the change (`source.lsn`). Snapshot and
    /// incremental-snapshot reads share one position and differ by row.
    DebeziumPostgres,
    /// Debezium's MySQL connector: the row, the operation, and the binlog
    /// position (`source.file`, `source.pos`, `source.row`: the row within
    /// a multi-row binlog event).
    DebeziumMysql,
    /// Confluent's JDBC source in `incrementing`, `timestamp` or
    /// `timestamp+incrementing` mode: a row is emitted again only with a new
    /// id or a new timestamp, so the record's bytes name the event.
    Jdbc,
    /// FileStream and S3-style line sources: a record is a line and carries
    /// no position, so only its bytes can name it.
    Lines,
}

impl Preset {
    pub const ALL: [Preset; 4] = [
        Preset::DebeziumPostgres,
        Preset::DebeziumMysql,
        Preset::Jdbc,
        Preset::Lines,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Preset::DebeziumPostgres => "debezium-postgres",
            Preset::DebeziumMysql => "debezium-mysql",
            Preset::Jdbc => "jdbc",
            Preset::Lines => "lines",
        }
    }

    /// The `key` and `fallback` this preset stands for.
    pub fn expand(self) -> (KeyStrategy, Fallback) {
        let debezium = |position: &[&str]| {
            let mut pointers = vec!["/op".to_string()];
            pointers.extend(position.iter().map(|p| p.to_string()));
            KeyStrategy::All(vec![KeyStrategy::RecordKey, KeyStrategy::Json(pointers)])
        };
        match self {
            // A tombstone (null value) and a keyless table's event lack a
            // part: they pass, never keyed.
            Preset::DebeziumPostgres => (debezium(&["/source/lsn"]), Fallback::Pass),
            Preset::DebeziumMysql => (
                debezium(&["/source/file", "/source/pos", "/source/row"]),
                Fallback::Pass,
            ),
            Preset::Jdbc | Preset::Lines => (KeyStrategy::Content, Fallback::Content),
        }
    }

    /// What `idemgate check` says about a rule using it.
    fn note(self) -> &'static str {
        match self {
            Preset::DebeziumPostgres => {
                "preset debezium-postgres: key = [\"record-key\", \"json:/op,/source/lsn\"], \
                 fallback = \"pass\": an event is its row at its WAL position; snapshot reads \
                 share one position and are told apart by their row; tombstones and events of \
                 tables without a primary key pass untouched"
            }
            Preset::DebeziumMysql => {
                "preset debezium-mysql: key = [\"record-key\", \
                 \"json:/op,/source/file,/source/pos,/source/row\"], fallback = \"pass\": an \
                 event is its row at its binlog position; snapshot reads share one position and \
                 are told apart by their row; tombstones and events of tables without a primary \
                 key pass untouched"
            }
            Preset::Jdbc => {
                "preset jdbc: key = \"content\": for the JDBC source in incrementing, timestamp \
                 or timestamp+incrementing mode, where a row is emitted again only with a new id \
                 or timestamp; never with mode=bulk (every poll re-emits unchanged rows as new \
                 events)"
            }
            Preset::Lines => {
                "preset lines: key = \"content\": a line source's records carry no position, so \
                 two identical lines are one key; drop only where every line is unique (it \
                 carries a timestamp or a sequence number)"
            }
        }
    }
}

impl Rule {
    /// What an operator must know about this rule before trusting it.
    pub fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if self.mode == Mode::Off {
            return notes;
        }
        if !self.mode_given {
            notes.push(
                "no mode: the rule observes (counts replays, drops nothing); set mode = \"drop\" \
                 once the counts look right"
                    .into(),
            );
        }
        if let Some(preset) = self.preset {
            notes.push(preset.note().into());
        }
        if self.key == KeyStrategy::RecordKey {
            notes.push(
                "key = \"record-key\" is only for topics whose record key is unique per event \
                 (an event id): a record key is usually an entity's (an order id, a primary key), \
                 and then every later event of that entity inside the window is taken for a \
                 replay; combine it with what tells events apart, e.g. [\"record-key\", \
                 \"json:/source/lsn\"], or use a preset"
                    .into(),
            );
        }
        if self.key == KeyStrategy::Content && self.preset.is_none() {
            notes.push(
                "key = \"content\" takes a record whose key, value and headers repeat one in the \
                 window for a replay: on compacted, state or CDC topics a legitimate return to an \
                 earlier value (A→B→A, a second tombstone for one key) is such a repeat; use it \
                 where every event's bytes are unique"
                    .into(),
            );
        }
        notes
    }
}

/// Where a rule acts: on what producers write, on what consumers read, or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Produce,
    Fetch,
    Both,
}

impl Direction {
    pub fn produce(self) -> bool {
        matches!(self, Direction::Produce | Direction::Both)
    }

    pub fn fetch(self) -> bool {
        matches!(self, Direction::Fetch | Direction::Both)
    }
}

/// How a record's idempotency key is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyStrategy {
    /// Topic, record key, value and headers (not the tag header), hashed.
    Content,
    /// The record key.
    RecordKey,
    /// The value of this header.
    Header(String),
    /// These JSON pointers into the value (RFC 6901), together.
    Json(Vec<String>),
    /// Several of the above (never nested), each made its own way, hashed
    /// together: `key = ["record-key", "json:/source/lsn"]`. A record lacking
    /// any part falls back as a whole.
    All(Vec<KeyStrategy>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// Use the content hash instead.
    Content,
    /// Leave the record alone: no key, no tag, never dropped.
    Pass,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Remove replays.
    Drop,
    /// Count replays, forward everything: how a rollout starts.
    Observe,
    /// Leave the topic alone.
    Off,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Drop => "drop",
            Mode::Observe => "observe",
            Mode::Off => "off",
        }
    }
}

/// Topic names learned at run time: Connect's internal topics, whatever
/// they are called, seen written by Connect's own clients
/// (`Identity::is_connect_internal`).
#[derive(Debug, Default)]
pub struct LearnedTopics(
    std::sync::RwLock<std::collections::HashSet<String>>,
    /// Topics whose records were looked at once for Connect's offset keys
    /// (`Identity::is_connect_offset_key`), internal or not.
    std::sync::Mutex<std::collections::HashSet<String>>,
);

/// Learned at run time, not read from a file: never makes two configs differ.
impl PartialEq for LearnedTopics {
    fn eq(&self, _: &LearnedTopics) -> bool {
        true
    }
}

impl LearnedTopics {
    /// True the first time `topic` is asked about: its first batch is then
    /// looked at for Connect's offset keys, once.
    pub fn first_look(&self, topic: &str) -> bool {
        let mut seen = self.1.lock().unwrap_or_else(|e| e.into_inner());
        !seen.contains(topic) && seen.insert(topic.to_string())
    }

    pub fn contains(&self, topic: &str) -> bool {
        let set = self.0.read().unwrap_or_else(|e| e.into_inner());
        !set.is_empty() && set.contains(topic)
    }

    /// Remembers `topic`; true the first time (for a log line).
    pub fn learn(&self, topic: &str) -> bool {
        if self.contains(topic) {
            return false;
        }
        let mut set = self.0.write().unwrap_or_else(|e| e.into_inner());
        set.insert(topic.to_string())
    }
}

/// `[quota]`: how quotas are enforced, whoever they limit.
#[derive(Debug, Clone, PartialEq)]
pub struct QuotaSettings {
    /// Seconds of its rate a bucket holds when full (a rule may override).
    pub burst: Duration,
    /// The longest a single throttle mutes a connection.
    pub max_throttle: Duration,
    /// The longest a Produce or Fetch is held: a Produce while its entity
    /// owes a debt, either while its connector is paused.
    pub max_hold: Duration,
    /// Client-id patterns naming the connector of clients that are not Kafka
    /// Connect's (`"etl-{connector}-*"`): first match wins.
    pub connector_patterns: Vec<ConnectorPattern>,
    /// `[quota.shared]`: quotas hold for every idemgate process in front of
    /// the cluster (usage and pauses through a Kafka topic). `None`: each
    /// process enforces its own. Read at the start only: a reload keeps it.
    pub shared: Option<SharedQuota>,
}

/// `[quota.shared]`: every process publishes its usage per quota subject to
/// `topic` and enforces against the tier's total (see `quota/tier.rs`).
#[derive(Debug, Clone, PartialEq)]
pub struct SharedQuota {
    /// The usage and pause topic, created if missing (one partition,
    /// `cleanup.policy=compact`).
    pub topic: String,
    /// Replication factor of a topic the proxy creates; -1: the brokers'
    /// `default.replication.factor`.
    pub replication_factor: i16,
    /// How often this process publishes its usage.
    pub report_every: Duration,
    /// A peer whose last report is older than this no longer counts (a
    /// dead or cut-off process stops counting after it).
    pub peer_expiry: Duration,
    /// The proxy's own SASL credentials for the topic (`None`: none).
    pub sasl: Option<SharedSasl>,
}

/// One `[[quotas]]` entry: whom it matches, and the limits it sets.
#[derive(Debug, Clone, PartialEq)]
pub struct QuotaRule {
    /// Glob over the connector (Connect client ids, or `connector_patterns`).
    pub connector: Option<Glob>,
    /// Glob over the authenticated principal (SASL, mTLS subject).
    pub tenant: Option<Glob>,
    /// Glob over the client id, for clients with no connector.
    pub client_id: Option<Glob>,
    pub produce_bytes_per_sec: Option<u64>,
    pub fetch_bytes_per_sec: Option<u64>,
    pub requests_per_sec: Option<u64>,
    /// Percent of one proxy thread's time spent on this client's requests
    /// (KIP-124's request_percentage, measured in the proxy).
    pub request_percentage: Option<u64>,
    /// Overrides `quota.burst` for this rule's limits.
    pub burst: Option<Duration>,
}

// === impl Config ===

impl Config {
    /// Reads and validates a file. The error lists every problem found.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![Problem {
                path: String::new(),
                message: format!("cannot read {}: {e}", path.display()),
            }])
        })?;
        Self::parse(&text)
    }

    /// Parses and validates TOML text. The error lists every problem found.
    pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
        let table: Table = text.parse().map_err(|e: toml::de::Error| {
            let mut message = e.message().to_string();
            if let Some(span) = e.span() {
                let line = text[..span.start].lines().count().max(1);
                message = format!("line {line}: {message}");
            }
            ConfigErrors(vec![Problem {
                path: String::new(),
                message: format!("not valid TOML: {message}"),
            }])
        })?;
        let mut problems = Vec::new();
        let config = {
            let mut root = Section::root(&table, &mut problems);
            let listen = root.section("listen", listen);
            let upstream = root.section("upstream", upstream);
            let admin = root.section("admin", admin);
            let store = root.section("store", store);
            let shutdown = root.section("shutdown", shutdown);
            let log = root.section("log", log);
            let diagnostics = root.section("diagnostics", diagnostics);
            let dedup = root.section("dedup", dedup);
            let quota = root.section("quota", quota_settings);
            let quotas = root.tables("quotas", quota_rule);
            root.finish();
            Config {
                listen,
                upstream,
                admin,
                store,
                shutdown,
                log,
                diagnostics,
                dedup,
                quota,
                quotas,
            }
        };
        let ports = &config.listen.broker_ports;
        let bootstrap_port = config.listen.bootstrap.port();
        if ports.contains(&bootstrap_port) {
            problems.push(Problem {
                path: "listen.broker_ports".into(),
                message: format!(
                    "{}-{} includes the bootstrap port {bootstrap_port}",
                    ports.start(),
                    ports.end()
                ),
            });
        }
        let server_name = config
            .upstream
            .tls
            .as_ref()
            .and_then(|t| t.server_name.as_ref());
        // The proxy's own Kafka client (kafka_client.rs) verifies each
        // broker's own host name.
        let own_clients = [
            (
                "dedup.shared",
                "the shared window's",
                config.dedup.shared.is_some(),
            ),
            (
                "quota.shared",
                "the quota topic's",
                config.quota.shared.is_some(),
            ),
        ];
        for (section, client, on) in own_clients {
            if let (Some(name), true) = (server_name, on) {
                problems.push(Problem {
                    path: section.into(),
                    message: format!(
                        "upstream.tls.server_name ({name:?}) cannot apply to {client} \
                         client, which verifies each broker's own host name: leave server_name \
                         out (the brokers' certificates name their advertised hosts) or run \
                         without [{section}]"
                    ),
                });
            }
        }
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(problems))
        }
    }
}

fn listen(s: &mut Section<'_, '_>) -> Listen {
    let bootstrap = s.socket_addr("bootstrap", defaults::BOOTSTRAP);
    let advertised_host = s.string("advertised_host", defaults::ADVERTISED_HOST);
    if advertised_host.is_empty() {
        s.problem("advertised_host", "must not be empty".into());
    }
    let broker_ports = s.port_range("broker_ports", defaults::BROKER_PORTS);
    let max_frame_bytes = s.byte_size("max_frame_bytes", defaults::MAX_FRAME_BYTES);
    if max_frame_bytes < 1024 {
        s.problem(
            "max_frame_bytes",
            format!("{max_frame_bytes} is below the 1 KiB a Kafka client needs"),
        );
    }
    let max_connections = s.non_zero("max_connections", defaults::MAX_CONNECTIONS);
    let max_in_flight = s.non_zero("max_in_flight", defaults::MAX_IN_FLIGHT);
    let max_connections_per_ip =
        s.non_zero("max_connections_per_ip", defaults::MAX_CONNECTIONS_PER_IP);
    let idle_timeout = s.duration("idle_timeout", defaults::IDLE_TIMEOUT);
    let max_in_flight_bytes = s.byte_size("max_in_flight_bytes", defaults::MAX_IN_FLIGHT_BYTES);
    let max_in_flight_bytes_total = s.byte_size(
        "max_in_flight_bytes_total",
        defaults::MAX_IN_FLIGHT_BYTES_TOTAL,
    );
    if max_in_flight_bytes == 0 {
        s.problem("max_in_flight_bytes", "must be above 0".into());
    }
    if max_in_flight_bytes_total < max_frame_bytes {
        s.problem(
            "max_in_flight_bytes_total",
            format!(
                "{max_in_flight_bytes_total} is below max_frame_bytes ({max_frame_bytes}): \
                 a request that large would wait until no other connection holds anything"
            ),
        );
    }
    let write_timeout = s.duration("write_timeout", defaults::WRITE_TIMEOUT);
    if write_timeout.is_zero() {
        s.problem("write_timeout", "must be above 0".into());
    }
    let tls = s.optional_section("tls", listen_tls);
    Listen {
        bootstrap,
        advertised_host,
        broker_ports,
        max_frame_bytes,
        max_connections,
        max_in_flight,
        max_connections_per_ip,
        idle_timeout,
        max_in_flight_bytes,
        max_in_flight_bytes_total,
        write_timeout,
        tls,
    }
}

fn listen_tls(s: &mut Section<'_, '_>) -> ListenTls {
    tls_section(s, "listen.tls")
}

fn tls_section(s: &mut Section<'_, '_>, section: &'static str) -> ListenTls {
    let cert = s.required_path("cert");
    let key = s.required_path("key");
    let client_ca = s.string("client_ca", "");
    ListenTls {
        section,
        cert,
        key,
        client_ca: (!client_ca.is_empty()).then(|| client_ca.into()),
        reload_interval: s.duration("reload_interval", defaults::TLS_RELOAD_INTERVAL),
        handshake_timeout: s.duration("handshake_timeout", defaults::TLS_HANDSHAKE_TIMEOUT),
    }
}

fn upstream(s: &mut Section<'_, '_>) -> Upstream {
    let bootstrap = s.host_ports("bootstrap", &[defaults::UPSTREAM_BOOTSTRAP]);
    Upstream {
        bootstrap,
        connect_timeout: s.duration("connect_timeout", defaults::CONNECT_TIMEOUT),
        request_timeout: s.duration("request_timeout", defaults::REQUEST_TIMEOUT),
        metadata_refresh: s.duration("metadata_refresh", defaults::METADATA_REFRESH),
        tls: s.optional_section("tls", upstream_tls),
    }
}

fn upstream_tls(s: &mut Section<'_, '_>) -> UpstreamTls {
    let optional = |s: &mut Section<'_, '_>, key: &'static str| {
        let v = s.string(key, "");
        (!v.is_empty()).then_some(v)
    };
    let ca = optional(s, "ca").map(PathBuf::from);
    let server_name = optional(s, "server_name");
    let cert = optional(s, "cert").map(PathBuf::from);
    let key = optional(s, "key").map(PathBuf::from);
    if cert.is_some() != key.is_some() {
        let missing = if cert.is_none() { "cert" } else { "key" };
        s.problem(
            missing,
            "cert and key go together: set both for a client certificate, or neither".into(),
        );
    }
    UpstreamTls {
        ca,
        server_name,
        cert,
        key,
    }
}

fn admin(s: &mut Section<'_, '_>) -> Admin {
    let text = s.string("listen", defaults::ADMIN_LISTEN);
    let listen = if text.is_empty() {
        None
    } else {
        match text.parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                s.problem(
                    "listen",
                    format!("{text:?} is not an ip:port address (or \"\" for none)"),
                );
                None
            }
        }
    };
    let literal = s.string("token", "");
    let env = s.string("token_env", defaults::ADMIN_TOKEN_ENV);
    let from_env = if env.is_empty() {
        None
    } else {
        std::env::var(&env).ok().filter(|v| !v.is_empty())
    };
    if !literal.is_empty() && from_env.is_some() {
        s.problem(
            "token",
            format!("set both here and in ${env}: keep one (the environment is the safer place)"),
        );
    }
    let token = from_env.or((!literal.is_empty()).then_some(literal));
    if let Some(t) = &token {
        if t.len() < 16 {
            s.problem(
                "token",
                format!(
                    "{} characters: use at least 16 (e.g. `openssl rand -hex 32`)",
                    t.len()
                ),
            );
        }
    }
    let token_for_reads = s.bool("token_for_reads", false);
    if token_for_reads && token.is_none() {
        s.problem(
            "token_for_reads",
            format!("true, but no token is set (admin.token or ${env})"),
        );
    }
    Admin {
        listen,
        token: token.map(Secret),
        token_for_reads,
        tls: s.optional_section("tls", |s| tls_section(s, "admin.tls")),
    }
}

fn store(s: &mut Section<'_, '_>) -> Store {
    let dir = s.string("dir", defaults::STORE_DIR);
    if dir.is_empty() {
        s.problem("dir", "must not be empty".into());
    }
    Store { dir: dir.into() }
}

fn shutdown(s: &mut Section<'_, '_>) -> Shutdown {
    Shutdown {
        drain_timeout: s.duration("drain_timeout", defaults::DRAIN_TIMEOUT),
    }
}

fn log(s: &mut Section<'_, '_>) -> Log {
    let format = match s.string("format", defaults::LOG_FORMAT).as_str() {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        other => {
            s.problem(
                "format",
                format!("{other:?} is not one of \"text\", \"json\""),
            );
            LogFormat::Text
        }
    };
    let level = s.string("level", defaults::LOG_LEVEL);
    if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
        s.problem(
            "level",
            format!("{level:?} is not a log filter such as \"info\" or \"idemgate=debug\""),
        );
    }
    Log { format, level }
}

fn diagnostics(s: &mut Section<'_, '_>) -> Diagnostics {
    Diagnostics {
        leak_check: s.bool("leak_check", false),
    }
}

fn dedup(s: &mut Section<'_, '_>) -> Dedup {
    let window = s.duration("window", defaults::DEDUP_WINDOW);
    if window.is_zero() {
        s.problem("window", "must be longer than 0s".into());
    }
    let max_keys = s.non_zero("max_keys", defaults::DEDUP_MAX_KEYS).get();
    let header = s.string("header", defaults::DEDUP_HEADER);
    if header.is_empty() {
        s.problem("header", "must not be empty".into());
    }
    let pending_wait = s.duration("pending_wait", defaults::DEDUP_PENDING_WAIT);
    let load_wait = s.duration("load_wait", defaults::DEDUP_LOAD_WAIT);
    let topic_config_wait = s.duration("topic_config_wait", defaults::DEDUP_TOPIC_CONFIG_WAIT);
    let flush_interval = s.duration("flush_interval", defaults::DEDUP_FLUSH_INTERVAL);
    if flush_interval.is_zero() {
        s.problem("flush_interval", "must be longer than 0s".into());
    }
    let store_cache = s.byte_size("store_cache", defaults::DEDUP_STORE_CACHE);
    if store_cache < crate::store::MIN_CACHE {
        s.problem(
            "store_cache",
            format!("{store_cache} is below the 1 MiB sled needs to work with"),
        );
    }
    let exclude_topics = s
        .strings("exclude_topics", defaults::DEDUP_EXCLUDE_TOPICS)
        .iter()
        .map(|g| Glob::new(g))
        .collect();
    let rules = s.tables("rules", rule);
    let key_secret = match s.string("key_secret_file", "") {
        path if path.is_empty() => None,
        path => {
            match std::fs::read(&path) {
                Ok(bytes) if bytes.trim_ascii().len() >= 16 => {
                    Some(KeySecret::derive(bytes.trim_ascii()))
                }
                Ok(_) => {
                    s.problem(
                    "key_secret_file",
                    format!("{path}: holds fewer than 16 bytes (leading and trailing whitespace aside)"),
                );
                    None
                }
                Err(e) => {
                    s.problem("key_secret_file", format!("{path}: cannot read it: {e}"));
                    None
                }
            }
        }
    };
    let shared = s.optional_section("shared", shared_window);
    let notes = rules
        .iter()
        .enumerate()
        .flat_map(|(i, r)| {
            r.notes().into_iter().map(move |message| Problem {
                path: format!("dedup.rules[{i}]"),
                message,
            })
        })
        .collect();
    Dedup {
        window,
        max_keys,
        header,
        pending_wait,
        load_wait,
        topic_config_wait,
        flush_interval,
        store_cache,
        exclude_topics,
        connect_internal: Arc::default(),
        notes,
        rules,
        key_secret,
        shared,
    }
}

fn shared_window(s: &mut Section<'_, '_>) -> SharedWindow {
    let topic = topic_name(s, defaults::SHARED_TOPIC);
    let partitions = s.typed(
        "partitions",
        defaults::SHARED_PARTITIONS,
        "an integer",
        |v| v.as_integer().map(Ok),
    );
    if !(1..=10_000).contains(&partitions) {
        s.problem("partitions", format!("{partitions} must be 1 to 10000"));
    }
    let replication_factor = replication_factor(s);
    let retention_margin = s.duration("retention_margin", defaults::SHARED_RETENTION_MARGIN);
    let catch_up_wait = s.duration("catch_up_wait", defaults::SHARED_CATCH_UP_WAIT);
    let sasl = s.optional_section("sasl", shared_sasl);
    SharedWindow {
        topic,
        partitions: partitions.clamp(1, 10_000) as i32,
        replication_factor,
        retention_margin,
        sasl,
        catch_up_wait,
    }
}

/// `topic` of a section naming a topic of the proxy's own.
pub(super) fn topic_name(s: &mut Section<'_, '_>, default: &str) -> String {
    let topic = s.string("topic", default);
    if topic.is_empty()
        || topic.len() > 249
        || !topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        s.problem(
            "topic",
            format!("{topic:?} is not a Kafka topic name (1-249 of a-z, A-Z, 0-9, '.', '_', '-')"),
        );
    }
    topic
}

/// `replication_factor` of a section naming a topic of the proxy's own.
pub(super) fn replication_factor(s: &mut Section<'_, '_>) -> i16 {
    let replication_factor = s.typed("replication_factor", -1, "an integer", |v| {
        v.as_integer().map(Ok)
    });
    if replication_factor != -1 && !(1..=32).contains(&replication_factor) {
        s.problem(
            "replication_factor",
            format!("{replication_factor} must be 1 to 32, or -1 for the brokers' default"),
        );
    }
    replication_factor.clamp(-1, 32) as i16
}

/// `[dedup.shared.sasl]`, `[quota.shared.sasl]`: the proxy's own
/// credentials for its topic.
pub(super) fn shared_sasl(s: &mut Section<'_, '_>) -> SharedSasl {
    let mechanism = s.string("mechanism", "SCRAM-SHA-512");
    if !["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"].contains(&mechanism.as_str()) {
        s.problem(
            "mechanism",
            format!("{mechanism:?} is not PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"),
        );
    }
    let username = s.string("username", "");
    if s.table.is_some() && username.is_empty() {
        s.problem("username", "is required".into());
    }
    let path = s.required_path("password_file");
    let password = match std::fs::read_to_string(&path) {
        Ok(p) => p.trim_end().to_string(),
        Err(e) if !path.as_os_str().is_empty() => {
            s.problem(
                "password_file",
                format!("{}: cannot read it: {e}", path.display()),
            );
            String::new()
        }
        Err(_) => String::new(),
    };
    SharedSasl {
        mechanism,
        username,
        password,
    }
}

fn rule(s: &mut Section<'_, '_>) -> Rule {
    if s.table.is_some_and(|t| !t.contains_key("topics")) {
        s.problem(
            "topics",
            "is required (a glob such as \"orders.*\" or \"*\")".into(),
        );
    }
    let topics = Glob::new(&s.string("topics", "*"));
    let connector = s.string("connector", "");
    let has = |s: &Section<'_, '_>, key: &str| s.table.is_some_and(|t| t.contains_key(key));
    let composite = s
        .table
        .and_then(|t| t.get("key"))
        .is_some_and(|v| v.is_array());
    let parsed = if composite {
        parse_key_parts(&s.strings("key", &[]))
    } else {
        parse_key_strategy(&s.string("key", "content"))
    };
    let mut key = match parsed {
        Ok(k) => k,
        Err(message) => {
            s.problem("key", message);
            KeyStrategy::Content
        }
    };
    let mut fallback = match s.string("fallback", "content").as_str() {
        "content" => Fallback::Content,
        "pass" => Fallback::Pass,
        other => {
            s.problem(
                "fallback",
                format!("{other:?} is not one of \"content\", \"pass\""),
            );
            Fallback::Content
        }
    };
    let preset = if has(s, "preset") {
        let name = s.string("preset", "");
        match Preset::ALL.iter().find(|p| p.name() == name) {
            Some(&p) => {
                for given in ["key", "fallback"] {
                    if has(s, given) {
                        s.problem(
                            given,
                            format!("preset {name:?} sets key and fallback: leave {given} out"),
                        );
                    }
                }
                (key, fallback) = p.expand();
                Some(p)
            }
            None => {
                let names: Vec<&str> = Preset::ALL.iter().map(|p| p.name()).collect();
                s.problem(
                    "preset",
                    format!("{name:?} is not one of {}", names.join(", ")),
                );
                None
            }
        }
    } else {
        None
    };
    let mode_given = has(s, "mode");
    let mode = match s.string("mode", defaults::DEDUP_MODE).as_str() {
        "drop" => Mode::Drop,
        "observe" => Mode::Observe,
        "off" => Mode::Off,
        other => {
            s.problem(
                "mode",
                format!("{other:?} is not one of \"drop\", \"observe\", \"off\""),
            );
            Mode::Observe
        }
    };
    let direction = match s.string("direction", "produce").as_str() {
        "produce" => Direction::Produce,
        "fetch" => Direction::Fetch,
        "both" => Direction::Both,
        other => {
            s.problem(
                "direction",
                format!("{other:?} is not one of \"produce\", \"fetch\", \"both\""),
            );
            Direction::Produce
        }
    };
    Rule {
        topics,
        connector: (!connector.is_empty()).then(|| Glob::new(&connector)),
        key,
        fallback,
        preset,
        mode,
        mode_given,
        tag: s.bool("tag", true),
        direction,
    }
}

/// A list of two or more strategies, none repeated, made into one key.
pub fn parse_key_parts(parts: &[String]) -> Result<KeyStrategy, String> {
    if parts.len() < 2 {
        return Err(
            "a list of keys needs at least two parts, e.g. [\"record-key\", \"json:/source/lsn\"]"
                .into(),
        );
    }
    let mut out = Vec::with_capacity(parts.len());
    for part in parts {
        let strategy = parse_key_strategy(part)?;
        if out.contains(&strategy) {
            return Err(format!("{part:?} is listed twice"));
        }
        out.push(strategy);
    }
    Ok(KeyStrategy::All(out))
}

/// `content`, `record-key`, `header:NAME` or `json:/a/b[,/c]`.
pub fn parse_key_strategy(text: &str) -> Result<KeyStrategy, String> {
    match text {
        "content" => return Ok(KeyStrategy::Content),
        "record-key" => return Ok(KeyStrategy::RecordKey),
        _ => {}
    }
    if let Some(name) = text.strip_prefix("header:") {
        if name.is_empty() {
            return Err("header: needs a header name, e.g. \"header:event-id\"".into());
        }
        return Ok(KeyStrategy::Header(name.to_string()));
    }
    if let Some(list) = text.strip_prefix("json:") {
        let pointers: Vec<String> = list.split(',').map(|p| p.trim().to_string()).collect();
        if let Some(bad) = pointers.iter().find(|p| !p.starts_with('/')) {
            return Err(format!(
                "json pointer {bad:?} must start with '/', e.g. \"json:/source/lsn\""
            ));
        }
        return Ok(KeyStrategy::Json(pointers));
    }
    Err(format!(
        "{text:?} is not one of \"content\", \"record-key\", \"header:NAME\", \"json:/pointer[,/pointer]\""
    ))
}

// === Problems ===

/// One thing wrong with the config, at a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

/// Every problem found in a config, in file order.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<Problem>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            if p.path.is_empty() {
                write!(f, "{}", p.message)?;
            } else {
                write!(f, "{}: {}", p.path, p.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl ConfigErrors {
    /// The problems as one error line, `; ` between them (for a proxy that
    /// is starting, where `idemgate check` would have listed them).
    pub fn into_error(self) -> crate::error::Error {
        crate::error::Error::Internal(self.to_string().replace('\n', "; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_all_defaults() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.listen.bootstrap, defaults::BOOTSTRAP.parse().unwrap());
        assert_eq!(c.listen.broker_ports, 19093..=19199);
        assert_eq!(c.listen.max_frame_bytes, defaults::MAX_FRAME_BYTES);
        assert_eq!(
            c.upstream.bootstrap,
            vec![defaults::UPSTREAM_BOOTSTRAP.to_string()]
        );
        assert_eq!(c.upstream.request_timeout, defaults::REQUEST_TIMEOUT);
        assert_eq!(
            c.admin.listen,
            Some(defaults::ADMIN_LISTEN.parse().unwrap())
        );
        assert!(!c.diagnostics.leak_check);
    }

    /// SIGHUP compares sections by value: topics learned at run time are
    /// not a change, secrets are (their Debug shows no content).
    #[test]
    fn sections_compare_by_value_not_by_what_they_print() {
        let text = "[dedup]\n[[dedup.rules]]\ntopics = \"orders\"\nkey = \"record-key\"\n";
        let old = Config::parse(&format!("[admin]\ntoken = \"aaaaaaaaaaaaaaaa\"\n{text}")).unwrap();
        let new = Config::parse(&format!("[admin]\ntoken = \"bbbbbbbbbbbbbbbb\"\n{text}")).unwrap();
        old.dedup.connect_internal.learn("connect-offsets");
        assert_eq!(old.dedup, new.dedup);
        assert_eq!(old.listen, new.listen);
        assert_ne!(old.admin, new.admin);
    }

    #[test]
    fn every_problem_is_listed_with_its_key_path() {
        let text = r#"
            colour = "blue"
            [listen]
            bootstrap = "nowhere"
            broker_ports = "200-100"
            max_connections = 0
            bogus = 1
            [upstream]
            bootstrap = ["ok:9092", "no-port", 7]
            request_timeout = "30 parsecs"
            [log]
            format = "xml"
        "#;
        let err = Config::parse(text).unwrap_err();
        let paths: Vec<&str> = err.0.iter().map(|p| p.path.as_str()).collect();
        for want in [
            "colour",
            "listen.bootstrap",
            "listen.broker_ports",
            "listen.max_connections",
            "listen.bogus",
            "upstream.bootstrap[1]",
            "upstream.bootstrap[2]",
            "upstream.request_timeout",
            "log.format",
        ] {
            assert!(paths.contains(&want), "missing {want} in {err}");
        }
        assert_eq!(err.0.len(), 9, "{err}");
    }

    #[test]
    fn dedup_rules_are_checked_with_their_index() {
        let text = r#"
            [dedup]
            window = "0s"
            [[dedup.rules]]
            topics = "orders.*"
            key = "json:/source/lsn,/id"
            mode = "observe"
            [[dedup.rules]]
            key = "hash"
            mode = "sometimes"
            fallback = "maybe"
            colour = 1
        "#;
        let err = Config::parse(text).unwrap_err();
        let paths: Vec<&str> = err.0.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "dedup.window",
                "dedup.rules[1].topics",
                "dedup.rules[1].key",
                "dedup.rules[1].fallback",
                "dedup.rules[1].mode",
                "dedup.rules[1].colour",
            ],
            "{err}"
        );
    }

    #[test]
    fn dedup_rule_matching() {
        let text = r#"
            [[dedup.rules]]
            topics = "orders.*"
            connector = "pg-*"
            key = "header:event-id"
            fallback = "pass"
            [[dedup.rules]]
            topics = "*"
            mode = "observe"
            tag = false
        "#;
        let c = Config::parse(text).unwrap();
        let d = &c.dedup;
        let r = d.rule_for("orders.eu", Some("pg-source")).unwrap();
        assert_eq!(r.key, KeyStrategy::Header("event-id".into()));
        assert_eq!(r.fallback, Fallback::Pass);
        // No mode: the rule observes.
        assert_eq!(r.mode, Mode::Observe);
        assert!(!r.mode_given);
        // No connector: the second rule.
        assert_eq!(d.rule_for("orders.eu", None).unwrap().mode, Mode::Observe);
        assert!(!d.rule_for("orders.eu", None).unwrap().tag);
        // Internal topics: never.
        assert!(d.rule_for("__consumer_offsets", None).is_none());
        assert!(d.rule_for("connect-offsets", None).is_none());
        assert!(d.enabled());
        assert!(!Config::parse("").unwrap().dedup.enabled());
    }

    #[test]
    fn connect_internal_topics_whatever_their_names() {
        // exclude_topics set to something else entirely: the shapes, `__*`
        // and the learned names still hold.
        let c = Config::parse(
            "[dedup]\nexclude_topics = [\"audit\"]\n[[dedup.rules]]\ntopics = \"*\"\nmode = \"drop\"\n",
        )
        .unwrap();
        let d = &c.dedup;
        for internal in [
            "connect-configs",
            "connect-offsets",
            "connect-status",
            "etl-cluster-configs",
            "etl-cluster-offsets",
            "etl-cluster-statuses",
            "orders-source-offsets", // a KIP-618 connector's own offsets topic
            "mm2-configs.eu.internal",
            "__consumer_offsets",
            "audit",
        ] {
            assert!(d.rule_for(internal, None).is_none(), "{internal}");
            assert!(d.fetch_rule_for(internal, None).is_none(), "{internal}");
        }
        // A name no shape knows, learned from a worker writing it.
        assert!(d.rule_for("cfg.etl", None).is_some());
        assert!(d.connect_internal.learn("cfg.etl"));
        assert!(!d.connect_internal.learn("cfg.etl"), "learned once");
        let clone = c.clone();
        assert!(clone.dedup.rule_for("cfg.etl", None).is_none());
        assert!(clone.dedup.fetch_rule_for("cfg.etl", None).is_none());
        assert!(d.rule_for("orders", None).is_some());
    }

    #[test]
    fn check_notes_say_what_each_rule_does() {
        let c = Config::parse(
            r#"
            [[dedup.rules]]
            topics = "a"
            [[dedup.rules]]
            topics = "b"
            key = "record-key"
            mode = "drop"
            [[dedup.rules]]
            topics = "c"
            key = ["record-key", "json:/source/lsn"]
            mode = "drop"
            [[dedup.rules]]
            topics = "d"
            mode = "off"
        "#,
        )
        .unwrap();
        let notes = |i: usize| -> Vec<String> {
            c.dedup
                .notes
                .iter()
                .filter(|p| p.path == format!("dedup.rules[{i}]"))
                .map(|p| p.message.clone())
                .collect()
        };
        let a = notes(0).join("\n");
        assert!(a.contains("no mode: the rule observes"), "{a}");
        assert!(a.contains("A→B→A") && a.contains("compacted"), "{a}");
        let b = notes(1).join("\n");
        assert!(
            b.contains("only for topics whose record key is unique per event"),
            "{b}"
        );
        assert!(!b.contains("no mode"), "{b}");
        assert!(notes(2).is_empty(), "{:?}", notes(2));
        assert!(notes(3).is_empty(), "{:?}", notes(3));
    }

    #[test]
    fn presets_stand_for_a_key_and_a_fallback() {
        let c = Config::parse(
            "[[dedup.rules]]\ntopics = \"pg.*\"\npreset = \"debezium-postgres\"\nmode = \"drop\"\n",
        )
        .unwrap();
        let r = c.dedup.rule_for("pg.public.t", None).unwrap();
        assert_eq!(
            (r.key.clone(), r.fallback),
            Preset::DebeziumPostgres.expand()
        );
        assert_eq!(r.preset, Some(Preset::DebeziumPostgres));
        assert!(c.dedup.notes[0]
            .message
            .contains("preset debezium-postgres"));
        for (extra, path) in [
            ("preset = \"oracle\"", "dedup.rules[0].preset"),
            (
                "preset = \"jdbc\"\nkey = \"record-key\"",
                "dedup.rules[0].key",
            ),
            (
                "preset = \"lines\"\nfallback = \"pass\"",
                "dedup.rules[0].fallback",
            ),
        ] {
            let err =
                Config::parse(&format!("[[dedup.rules]]\ntopics = \"*\"\n{extra}\n")).unwrap_err();
            let paths: Vec<&str> = err.0.iter().map(|p| p.path.as_str()).collect();
            assert_eq!(paths, [path], "{err}");
        }
    }

    #[test]
    fn a_key_may_be_a_list_of_strategies() {
        let c = Config::parse(
            r#"
            [[dedup.rules]]
            topics = "pg.*"
            key = ["record-key", "json:/source/lsn"]
            fallback = "pass"
        "#,
        )
        .unwrap();
        assert_eq!(
            c.dedup.rule_for("pg.public.t", None).unwrap().key,
            KeyStrategy::All(vec![
                KeyStrategy::RecordKey,
                KeyStrategy::Json(vec!["/source/lsn".into()])
            ])
        );
        for (bad, says) in [
            (r#"["record-key"]"#, "at least two"),
            (r#"["record-key", "record-key"]"#, "twice"),
            (r#"["record-key", "lsn"]"#, "is not one of"),
            (r#"["record-key", 3]"#, "expected a string"),
        ] {
            let text = format!("[[dedup.rules]]\ntopics = \"*\"\nkey = {bad}\n");
            let err = Config::parse(&text).unwrap_err().to_string();
            assert!(
                err.contains("dedup.rules[0].key") && err.contains(says),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn quota_shared_has_defaults_and_every_problem_with_its_path() {
        assert_eq!(Config::parse("").unwrap().quota.shared, None);
        let shared = Config::parse("[quota.shared]\n")
            .unwrap()
            .quota
            .shared
            .unwrap();
        assert_eq!(shared.topic, "_idemgate-quota");
        assert_eq!(shared.replication_factor, -1);
        assert_eq!(shared.report_every, Duration::from_secs(1));
        assert_eq!(shared.peer_expiry, Duration::from_secs(3));
        assert!(shared.sasl.is_none());
        let err = Config::parse(
            "[upstream.tls]\nserver_name = \"k\"\n[quota.shared]\ntopic = \"a b\"\nreplication_factor = 0\n\
             report_every = \"10ms\"\npeer_expiry = \"15ms\"\ncolour = 1\n[quota.shared.sasl]\nmechanism = \"GSSAPI\"\n",
        )
        .unwrap_err();
        let paths: Vec<&str> = err.0.iter().map(|p| p.path.as_str()).collect();
        for path in [
            "quota.shared.topic",
            "quota.shared.replication_factor",
            "quota.shared.report_every",
            "quota.shared.peer_expiry",
            "quota.shared.colour",
            "quota.shared.sasl.mechanism",
            "quota.shared.sasl.username",
            "quota.shared.sasl.password_file",
            "quota.shared",
        ] {
            assert!(paths.contains(&path), "{path} missing from {paths:?}");
        }
    }

    #[test]
    fn dedup_shared_has_defaults_and_every_problem_with_its_path() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.dedup.shared, None);
        let c = Config::parse("[dedup.shared]\n").unwrap();
        let shared = c.dedup.shared.unwrap();
        assert_eq!(shared.topic, "_idemgate-window");
        assert_eq!((shared.partitions, shared.replication_factor), (6, -1));
        assert_eq!(shared.retention_margin, Duration::from_secs(3600));
        assert!(shared.sasl.is_none());

        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("pw");
        std::fs::write(&secret, "s3cret\n").unwrap();
        let text = format!(
            "[dedup.shared]\ntopic = \"w\"\n[dedup.shared.sasl]\nmechanism = \"PLAIN\"\n\
             username = \"idemgate\"\npassword_file = \"{}\"\n",
            secret.display()
        );
        let sasl = Config::parse(&text)
            .unwrap()
            .dedup
            .shared
            .unwrap()
            .sasl
            .unwrap();
        assert_eq!(
            (sasl.mechanism.as_str(), sasl.password.as_str()),
            ("PLAIN", "s3cret")
        );
        assert!(
            !format!("{sasl:?}").contains("s3cret"),
            "the password stays out of Debug"
        );

        let err = Config::parse(
            "[dedup.shared]\ntopic = \"no spaces\"\npartitions = 0\nreplication_factor = 0\n\
             retention_margin = \"soon\"\n[dedup.shared.sasl]\nmechanism = \"GSSAPI\"\n",
        )
        .unwrap_err();
        let paths: Vec<&str> = err.0.iter().map(|p| p.path.as_str()).collect();
        let tls = "[upstream.tls]\nserver_name = \"kafka.internal\"\n[dedup.shared]\n";
        let refused = Config::parse(tls).unwrap_err();
        assert!(
            refused
                .0
                .iter()
                .any(|p| p.path == "dedup.shared" && p.message.contains("server_name")),
            "{refused}"
        );
        assert_eq!(
            paths,
            [
                "dedup.shared.topic",
                "dedup.shared.partitions",
                "dedup.shared.replication_factor",
                "dedup.shared.retention_margin",
                "dedup.shared.sasl.mechanism",
                "dedup.shared.sasl.username",
                "dedup.shared.sasl.password_file",
            ],
            "{err}"
        );
    }

    #[test]
    fn dedup_store_cache_is_a_byte_size() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.dedup.store_cache, defaults::DEDUP_STORE_CACHE);
        let c = Config::parse("[dedup]\nstore_cache = \"64MiB\"\n").unwrap();
        assert_eq!(c.dedup.store_cache, 64 << 20);
        let c = Config::parse("[dedup]\nstore_cache = 8388608\n").unwrap();
        assert_eq!(c.dedup.store_cache, 8 << 20);
        for bad in ["\"512KiB\"", "\"1QB\"", "-1", "true"] {
            let err = Config::parse(&format!("[dedup]\nstore_cache = {bad}\n")).unwrap_err();
            let paths: Vec<&str> = err.0.iter().map(|p| p.path.as_str()).collect();
            assert_eq!(paths, ["dedup.store_cache"], "{bad}: {err}");
        }
    }

    #[test]
    fn globs() {
        let g = |p: &str, t: &str| Glob::new(p).matches(t);
        assert!(g("*", ""));
        assert!(g("orders.*", "orders.eu"));
        assert!(!g("orders.*", "orders"));
        assert!(g("a*b*c", "axxbyyc"));
        assert!(!g("a*b*c", "axxbyy"));
        assert!(g("t?p", "top"));
        assert!(g("**x", "yx"));
        assert!(!g("x", "xx"));
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let err = Config::parse("[listen]\nbootstrap = \n").unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
    }

    #[test]
    fn bootstrap_port_inside_broker_ports_is_refused() {
        let err = Config::parse("[listen]\nbootstrap = \"127.0.0.1:19100\"\n").unwrap_err();
        assert_eq!(err.0[0].path, "listen.broker_ports");
    }

    #[test]
    fn in_flight_memory_limits() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.listen.max_in_flight_bytes, 64 << 20);
        assert_eq!(c.listen.max_in_flight_bytes_total, 512 << 20);
        assert_eq!(c.listen.write_timeout, Duration::from_secs(60));
        let err = Config::parse(
            "[listen]\nmax_in_flight_bytes = 0\nmax_in_flight_bytes_total = \"50MiB\"\nwrite_timeout = \"0s\"\n",
        )
        .unwrap_err();
        let paths: Vec<&str> = err.0.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "listen.max_in_flight_bytes",
                "listen.max_in_flight_bytes_total",
                "listen.write_timeout"
            ],
            "{err}"
        );
        assert!(err.to_string().contains("below max_frame_bytes"), "{err}");
        let c = Config::parse(
            "[listen]\nmax_frame_bytes = \"1MiB\"\nmax_in_flight_bytes_total = \"1MiB\"\n",
        )
        .unwrap();
        assert_eq!(c.listen.max_in_flight_bytes_total, 1 << 20);
    }

    #[test]
    fn tls_is_optional_and_its_paths_required() {
        assert!(Config::parse("").unwrap().listen.tls.is_none());
        let c = Config::parse("[listen.tls]\ncert = \"a.pem\"\nkey = \"a.key\"\n").unwrap();
        let tls = c.listen.tls.unwrap();
        assert_eq!(tls.cert, PathBuf::from("a.pem"));
        assert!(tls.client_ca.is_none());
        assert_eq!(tls.handshake_timeout, defaults::TLS_HANDSHAKE_TIMEOUT);
        let err = Config::parse("[listen.tls]\nkey = \"\"\nclient_ca = 3\n").unwrap_err();
        let paths: Vec<&str> = err.0.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            ["listen.tls.cert", "listen.tls.key", "listen.tls.client_ca"],
            "{err}"
        );
    }

    #[test]
    fn upstream_tls_cert_and_key_go_together() {
        let c = Config::parse("[upstream.tls]\n").unwrap();
        let tls = c.upstream.tls.unwrap();
        assert!(tls.ca.is_none() && tls.cert.is_none());
        let err = Config::parse("[upstream.tls]\ncert = \"c.pem\"\n").unwrap_err();
        assert_eq!(err.0[0].path, "upstream.tls.key", "{err}");
    }

    #[test]
    fn admin_can_be_disabled() {
        let c = Config::parse("[admin]\nlisten = \"\"\n").unwrap();
        assert!(c.admin.listen.is_none());
    }
}
