//! Produce throughput and latency, direct to tansu vs through idemgate,
//! alternating in one run so every path sees the same machine.
//!
//! ```text
//! scripts/bench                        # what docs/performance.md records
//! cargo bench --bench produce -- --records 200000 --size 512 --rounds 5
//! scripts/bench --dedup --compression none,lz4,zstd   # + dedup `drop` mode
//! scripts/bench --sweep 0.1,0.25,0.5,0.75,0.9,1.0     # + latency against load
//! ```
//!
//! Two measures per path (see docs/performance.md for why both):
//! - saturation: records sent as fast as the client can, acks=all, 3
//!   partitions; records/s and MB/s from first send to last delivery;
//! - fixed load: half the direct saturation rate, paced; p50/p99 produce
//!   latency (enqueue to delivery report) and the proxy's CPU seconds per GB.
//!
//! Beside each codec's fixed-load runs, the **codec floor**: after every
//! direct run at fixed load, the batches the client sent are read back from
//! the broker's log (raw Fetch v11) and this process decompresses and
//! recompresses each of them with idemgate's own codec functions
//! (`records::decompress`, `records::compress_into`: the same crates,
//! settings and per-thread contexts a rewrite uses), on one thread, timed by
//! the thread's CPU clock. That is the least CPU a proxy that rewrites
//! compressed batches can spend; the table gives it per GB (`codec floor
//! s/GB`, the median over the rounds) and each proxy path's CPU per GB as a
//! multiple of its baseline's floor (`CPU / floor`; none for uncompressed
//! records, whose "floor" is two copies).
//!
//! With `--sweep F,F,…`, a third measure: the load paced at each fraction F
//! of direct's saturation rate, on every path without replays, recording the
//! rate achieved, p50/p99 and the proxy's CPU: where each path's latency
//! turns up as the load nears what the machine can do. Loads alternate
//! paths within a round, as the other measures do.
//!
//! `--json PATH` writes every table row (and every sweep point) to PATH as
//! JSON lines, for scripts/perf-report; what is printed stays the same.
//!
//! Paths (`--paths` picks any of them; the default is the first three,
//! `--dedup` adds the rest but `idemgate-observe`):
//! - `direct`, `idemgate` (pass-through: no dedup rule), `tansu-proxy`;
//! - `idemgate-observe`: tag-only, one rule `topics = "*"`, `mode =
//!   "observe"`: every record keyed, tagged (its batch rewritten) and learned,
//!   nothing ever dropped;
//! - `idemgate-dedup`: one rule, `topics = "*"`, `mode = "drop"`, content
//!   keys, tag header on; every record new;
//! - `direct-30`, `idemgate-dedup-30`: the same rule, and 30 % (`--replays`)
//!   of the records sent are replays: chunks of 1000 records sent again,
//!   byte for byte, later in the run. direct-30 sends the very same stream
//!   straight to the broker, so the two offer the same load; the `-30`
//!   paths are compared with direct-30, the others with direct.
//!
//! A replay re-sends a chunk sent at least `--replay-distance` records
//! earlier (default: a tenth of `--records`, at most 20,000), and only once every record of that chunk has its delivery report
//! (the client waits if it must): the proxy then knows the originals as
//! acknowledged and drops the copies, as it would a Connect task's replay
//! after a restart, instead of holding them while the originals are in
//! flight. The wait bounds the client's queue on the `-30` paths at
//! saturation; direct-30 waits the same way.
//!
//! Every record's value is a JSON-like text made from its index alone (a
//! replay is byte-identical, and the codecs get something realistic to
//! compress); keys cycle over 1024 values. A replay the proxy drops still gets
//! a successful delivery report (the proxy answers it), so every path counts
//! the same deliveries; the dedup paths also report what the proxy's
//! `/metrics` counted and how many records reached the broker's log.
//!
//! The proxy runs as its own process (the release binary), so its CPU time
//! can be read from /proc apart from the client's.
//!
//! `--base-bin PATH` measures another build of idemgate (another commit's
//! release binary; scripts/bench-compare builds it) in the same run: every
//! idemgate path picked gets a twin `NAME@base` run by that binary, measured
//! right after it in every round, on a fresh broker like every run. The table
//! shows the twins as paths of their own (vs direct, CPU s/GB), then a table
//! of new/base ratios. `--new-bin PATH` runs the other idemgate paths with
//! that binary instead of the one cargo built beside this bench: cargo
//! builds that one with the dev-dependencies' features (tokio's `test-util`,
//! whose clock takes a lock on every read), so scripts/bench-compare builds
//! both binaries alike with `cargo build --release` and passes both.

mod common;
// What the integration tests share (proto-tests/support): the proxy
// launcher, tansu, /proc readings, the seeded generator. A bench uses a part.
#[allow(dead_code, unused_imports)]
#[path = "../proto-tests/support/mod.rs"]
mod support;

use common::{binary, block_on, create_topic, median, samples, JsonOut, Records, RunFlags};
use support::proc::cpu_seconds;
use support::{free_port, free_port_range, ProxyLog, ProxyProcess, RawConn, Tansu};

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use idemgate::records::{
    self, BatchItem, Batches, RawBatch, BATCH_HEADER_LEN, DEFAULT_MAX_DECOMPRESSED,
};
use kafka_protocol::messages::{ApiKey, FetchResponse};
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{
    BaseRecord, DefaultProducerContext, DeliveryResult, Producer, ProducerContext, ThreadedProducer,
};

/// Records per chunk: the unit a replay re-sends.
const CHUNK: usize = 1000;
/// Records of the warm-up run before each measured run.
const WARM: usize = 10_000;
const PARTITIONS: i32 = 3;

struct Args {
    records: usize,
    size: usize,
    rounds: usize,
    /// Share of the records sent that are replays, on the `-NN` paths.
    replays: f64,
    /// A replay re-sends a chunk at least this many records back (default:
    /// a tenth of the run, at most 20,000).
    replay_distance: usize,
    compression: Vec<String>,
    paths: Vec<PathKind>,
    /// Fractions of direct's saturation rate to pace the sweep at (none: no
    /// sweep).
    sweep: Vec<f64>,
    /// The binary of the idemgate paths (None: the one cargo built).
    new_bin: Option<PathBuf>,
    /// The binary of the `@base` paths.
    base_bin: Option<PathBuf>,
}

impl Args {
    /// The binary that runs `path`'s proxy (None: the one cargo built).
    fn binary(&self, path: &PathKind) -> Option<&Path> {
        if path.base {
            self.base_bin.as_deref()
        } else {
            self.new_bin.as_deref()
        }
    }
}

/// The command line; the top of this file says what each run measures.
#[derive(clap::Parser, Debug)]
struct Cli {
    #[command(flatten)]
    run: RunFlags,
    /// Share of the records sent that are replays, on the `-NN` paths.
    #[arg(long, default_value_t = 0.3, value_parser = replay_share)]
    replays: f64,
    /// A replay re-sends a chunk at least this many records back (default: a
    /// tenth of the run, at most 20,000).
    #[arg(long)]
    replay_distance: Option<usize>,
    /// Codecs, comma-separated.
    #[arg(long, default_value = "none", value_delimiter = ',', value_parser = ["none", "gzip", "snappy", "lz4", "zstd"])]
    compression: Vec<String>,
    /// Paths to measure, comma-separated.
    #[arg(long, value_delimiter = ',')]
    paths: Option<Vec<String>>,
    /// Fractions of direct's saturation rate to pace a sweep at, comma-separated.
    #[arg(long, value_delimiter = ',', value_parser = sweep_fraction)]
    sweep: Vec<f64>,
    /// Every path, the dedup ones too (without --paths).
    #[arg(long)]
    dedup: bool,
    /// Another idemgate build (another commit's release binary): every
    /// idemgate path gets a twin `NAME@base` run by it, in the same rounds.
    #[arg(long, value_name = "PATH", value_parser = binary)]
    base_bin: Option<PathBuf>,
    /// The idemgate paths' binary (default: the one cargo built beside this
    /// bench, with the dev-dependencies' features).
    #[arg(long, value_name = "PATH", value_parser = binary)]
    new_bin: Option<PathBuf>,
}

fn replay_share(v: &str) -> Result<f64, String> {
    v.parse()
        .ok()
        .filter(|r| (0.0..0.5).contains(r))
        .ok_or_else(|| "a share in [0, 0.5), e.g. 0.3".to_string())
}

fn sweep_fraction(v: &str) -> Result<f64, String> {
    v.parse()
        .ok()
        .filter(|f: &f64| *f > 0.0 && *f <= 2.0)
        .ok_or_else(|| format!("fractions of direct's rate in (0, 2], not {v:?}"))
}

fn args() -> Args {
    let cli = <Cli as clap::Parser>::parse();
    let mut a = Args {
        records: cli.run.records,
        size: cli.run.size,
        rounds: cli.run.rounds,
        replays: cli.replays,
        replay_distance: 0,
        compression: cli.compression,
        paths: Vec::new(),
        sweep: cli.sweep,
        new_bin: cli.new_bin,
        base_bin: cli.base_bin,
    };
    let (dedup, distance, names) = (cli.dedup, cli.replay_distance, cli.paths);
    assert!(
        a.records > 0 && a.rounds > 0,
        "--records and --rounds must be > 0"
    );
    a.replay_distance = distance.unwrap_or((a.records / 10).min(20_000));
    let pct = (a.replays * 100.0).round() as u32;
    let all = PathKind::all(pct);
    let names = names.unwrap_or_else(|| {
        let n = if dedup { all.len() } else { 3 };
        all[..n]
            .iter()
            .filter(|p| p.front != Front::IdemgateObserve)
            .map(|p| p.name())
            .collect()
    });
    let mut picked: Vec<PathKind> = Vec::new();
    for name in &names {
        let p = all.iter().find(|p| p.name() == *name).unwrap_or_else(|| {
            panic!(
                "--paths: no path {name:?}; the paths are {}",
                all.iter().map(|p| p.name()).collect::<Vec<_>>().join(", ")
            )
        });
        picked.push(*p);
    }
    // Every path is compared with the direct path of the same stream, and
    // the fixed load is half of plain direct's saturation rate.
    picked.push(all[0]);
    for p in picked.clone() {
        let base = p.baseline();
        if !picked.contains(&base) {
            picked.push(base);
        }
    }
    // In `all`'s order (--replays 0: the replay paths are the plain ones,
    // once), each idemgate path's `@base` twin right after it.
    for p in all.into_iter().filter(|p| picked.contains(p)) {
        if a.paths.contains(&p) {
            continue;
        }
        a.paths.push(p);
        if a.base_bin.is_some() && p.front.is_idemgate() {
            a.paths.push(PathKind { base: true, ..p });
        }
    }
    // A value holds its record's id in its first bytes: shorter, two records
    // could be the same bytes, and the proxy would rightly drop one.
    let dedup_paths = a.paths.iter().any(|p| p.front.rule().is_some());
    assert!(
        !dedup_paths || a.size >= 32,
        "--size must be at least 32 B with the dedup paths (records must differ)"
    );
    a
}

// === Paths ===

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Front {
    Direct,
    Idemgate,
    IdemgateObserve,
    IdemgateDedup,
    TansuProxy,
}

impl Front {
    /// The mode of idemgate's one dedup rule on this path, if it has one.
    fn rule(self) -> Option<&'static str> {
        match self {
            Front::IdemgateObserve => Some("observe"),
            Front::IdemgateDedup => Some("drop"),
            Front::Direct | Front::Idemgate | Front::TansuProxy => None,
        }
    }

    /// Runs idemgate (and so has an `@base` twin with `--base-bin`).
    fn is_idemgate(self) -> bool {
        matches!(
            self,
            Front::Idemgate | Front::IdemgateObserve | Front::IdemgateDedup
        )
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct PathKind {
    front: Front,
    /// Percent of the records sent that are replays (0: every record new).
    replay_pct: u32,
    /// Run by the `--base-bin` binary: the `@base` twin of an idemgate path.
    base: bool,
}

impl PathKind {
    fn all(pct: u32) -> Vec<PathKind> {
        let p = |front, replay_pct| PathKind {
            front,
            replay_pct,
            base: false,
        };
        vec![
            p(Front::Direct, 0),
            p(Front::Idemgate, 0),
            p(Front::TansuProxy, 0),
            p(Front::IdemgateObserve, 0),
            p(Front::IdemgateDedup, 0),
            p(Front::Direct, pct),
            p(Front::IdemgateDedup, pct),
        ]
    }

    fn name(&self) -> String {
        let front = match self.front {
            Front::Direct => "direct",
            Front::Idemgate => "idemgate",
            Front::IdemgateObserve => "idemgate-observe",
            Front::IdemgateDedup => "idemgate-dedup",
            Front::TansuProxy => "tansu-proxy",
        };
        let name = match self.replay_pct {
            0 => front.to_string(),
            n => format!("{front}-{n}"),
        };
        if self.base {
            format!("{name}@base")
        } else {
            name
        }
    }

    fn baseline(&self) -> PathKind {
        PathKind {
            front: Front::Direct,
            replay_pct: self.replay_pct,
            base: false,
        }
    }

    /// The path run by the other binary: `@base` for a new path, and back.
    fn twin(&self) -> PathKind {
        PathKind {
            base: !self.base,
            ..*self
        }
    }
}

// === Processes ===

/// `tansu proxy`: another Rust Kafka proxy (pass-through only), as a peer.
fn start_tansu_proxy(upstream: &str) -> Tansu {
    Tansu::spawn("proxy", &["--origin-url", &format!("tcp://{upstream}")])
}

struct Proxy {
    process: ProxyProcess,
    bootstrap: String,
    /// The admin port (runs with a rule only: it is off otherwise).
    admin: Option<u16>,
}

/// idemgate (`binary`, or the one cargo built) in front of `upstream`, its
/// store in `dir` (fresh per run). With a `rule` mode, one rule in that mode
/// covers every topic (content keys, tag header on: the defaults) and the
/// admin listener is on, for /metrics.
fn start_proxy(upstream: &str, dir: &Path, rule: Option<&str>, binary: Option<&Path>) -> Proxy {
    let port = free_port();
    let (ports, last) = free_port_range(8);
    let admin = rule.map(|_| free_port());
    let mut config = format!(
        "[listen]\nbootstrap = \"127.0.0.1:{port}\"\nbroker_ports = \"{ports}-{last}\"\n\
         [upstream]\nbootstrap = [\"{upstream}\"]\n[admin]\nlisten = \"{}\"\n\
         [store]\ndir = \"{}\"\n[log]\nlevel = \"warn\"\n",
        admin.map(|p| format!("127.0.0.1:{p}")).unwrap_or_default(),
        dir.join("store").display()
    );
    if let Some(mode) = rule {
        config.push_str(&format!(
            "[dedup]\n[[dedup.rules]]\ntopics = \"*\"\nmode = \"{mode}\"\n"
        ));
    }
    let path = dir.join("bench.toml");
    std::fs::write(&path, config).unwrap();
    // Ready: upstream seen and the (empty) window loaded (asked of the admin
    // listener where there is one).
    let options = ProxyProcess::options(&path, port, admin.unwrap_or(0)).log(ProxyLog::Inherit);
    let options = if admin.is_some() {
        options
    } else {
        options.no_admin()
    };
    let options = match binary {
        Some(binary) => options.binary(binary.to_path_buf()),
        None => options,
    };
    let process = block_on(options.start());
    // The broker listener opens after the first metadata probe.
    std::thread::sleep(Duration::from_millis(500));
    Proxy {
        process,
        bootstrap: format!("127.0.0.1:{port}"),
        admin,
    }
}

/// The whole HTTP response (head and body), or None if it failed.
/// What idemgate's /metrics counted for the measured topic.
#[derive(Default, Clone, Copy)]
struct DedupCounts {
    /// `idemgate_records_total`: records in Produce requests the rule covers.
    records: f64,
    /// `idemgate_duplicates_dropped_total`.
    dropped: f64,
    /// `idemgate_dedup_fail_open_total`, every reason (all topics).
    fail_open: f64,
    /// `idemgate_pending_waits_total` (all topics).
    pending_waits: f64,
}

fn dedup_counts(admin: u16, topic: &str) -> DedupCounts {
    let of_topic = format!("topic=\"{topic}\"");
    let mut c = DedupCounts::default();
    for (name, labels, v) in samples(admin) {
        let mine = labels.contains(&of_topic);
        match name.as_str() {
            "idemgate_records_total" if mine => c.records += v,
            "idemgate_duplicates_dropped_total" if mine => c.dropped += v,
            "idemgate_dedup_fail_open_total" => c.fail_open += v,
            "idemgate_pending_waits_total" => c.pending_waits += v,
            _ => {}
        }
    }
    c
}

/// Records in the broker's log of `topic`. tansu (0.6) answers a high
/// watermark of the last batch's base offset + 1, short of the log's end by
/// all but one of that batch's records, so one record is written straight to
/// each partition first: its batch of one ends the log, and is not counted.
fn log_records(broker: &str, topic: &str) -> Option<i64> {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .create()
        .ok()?;
    for p in 0..PARTITIONS {
        producer
            .send(BaseRecord::<(), _>::to(topic).partition(p).payload("end"))
            .ok()?;
    }
    producer.flush(Duration::from_secs(30)).ok()?;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .create()
        .ok()?;
    let mut total = 0;
    for p in 0..PARTITIONS {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .ok()?;
        total += high - low - 1;
    }
    Some(total)
}

// === The codec floor ===

/// The topic's batches as the broker holds them, every partition read from
/// offset 0 to its end over a raw connection (Fetch v11, as the dedup tests
/// read tansu; a read that brings no new batch ends a partition): the very
/// batches the client sent, for the codec floor.
fn log_batches(broker: &str, topic: &str) -> Vec<Bytes> {
    block_on(async {
        let mut conn = RawConn::connect(broker).await;
        let mut batches = Vec::new();
        let mut correlation_id = 0;
        for partition in 0..PARTITIONS {
            let mut offset = 0i64;
            loop {
                let req = support::fetch_from(topic, partition, offset, 200);
                correlation_id += 1;
                let resp: FetchResponse = conn.call(ApiKey::Fetch, 11, correlation_id, &req).await;
                let part = resp.responses.first().and_then(|t| t.partitions.first());
                assert_eq!(
                    (resp.error_code, part.map_or(0, |p| p.error_code)),
                    (0, 0),
                    "fetch {topic}/{partition} at {offset} for the codec floor"
                );
                let records = part.and_then(|p| p.records.clone()).unwrap_or_default();
                let before = batches.len();
                for item in Batches::new(records) {
                    if let Ok(BatchItem::Batch(raw)) = item {
                        offset = raw.header().last_offset() + 1;
                        batches.push(raw.into_bytes());
                    }
                }
                if batches.len() == before {
                    break;
                }
            }
        }
        batches
    })
}

/// This thread's CPU time so far, in seconds (`/proc/thread-self/schedstat`,
/// nanoseconds: finer than the clock ticks of `/proc/<pid>/stat`).
fn thread_cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |ns| ns / 1e9)
}

/// The CPU seconds one thread takes to decompress and recompress `batches`
/// with idemgate's own codec functions (`records::decompress` and
/// `records::compress_into`: the crates, settings and per-thread contexts a
/// rewrite uses), nothing else: no CRC, no record walk, no hashing. The floor
/// a proxy that rewrites compressed batches can approach; the median of three
/// passes.
fn codec_floor(batches: &[Bytes]) -> f64 {
    let pass = || {
        let mut out = Vec::new();
        let start = thread_cpu_seconds();
        for bytes in batches {
            let raw = RawBatch::new(bytes.clone()).expect("a whole batch from the log");
            let codec = raw
                .header()
                .attributes
                .codec()
                .expect("a codec Kafka defines");
            let plain =
                records::decompress(codec, &bytes[BATCH_HEADER_LEN..], DEFAULT_MAX_DECOMPRESSED)
                    .expect("the client's batch decompresses");
            out.clear();
            records::compress_into(codec, &plain, &mut out).expect("it compresses again");
            std::hint::black_box(&out);
        }
        thread_cpu_seconds() - start
    };
    median((0..3).map(|_| pass()).collect())
}

// === The records ===

/// What a run sends, in order: record ids, in chunks; a replayed chunk
/// re-sends an earlier chunk's ids once that chunk is delivered.
struct Schedule {
    ids: Vec<u32>,
    chunks: Vec<Chunk>,
    /// Records sent as replays.
    replayed: usize,
    /// Distinct records (the highest id + 1).
    distinct: usize,
}

struct Chunk {
    start: usize,
    len: usize,
    /// A replay: the chunk whose records it re-sends, which must all be
    /// delivered before this one is sent.
    replay_of: Option<usize>,
}

impl Schedule {
    /// `records` records, a `share` of them replays of chunks sent at least
    /// `distance` records before. Replays are placed as soon as the share so
    /// far allows and a chunk far enough back is left to replay (oldest
    /// first, each chunk at most once), so the share is met over the run
    /// unless the run is too short for the distance.
    fn new(records: usize, share: f64, distance: usize) -> Schedule {
        let mut s = Schedule {
            ids: Vec::with_capacity(records),
            chunks: Vec::new(),
            replayed: 0,
            distinct: 0,
        };
        let mut originals: Vec<usize> = Vec::new(); // new chunks, in send order
        let mut next_original = 0;
        while s.ids.len() < records {
            let start = s.ids.len();
            let len = CHUNK.min(records - start);
            let due = (s.replayed + len) as f64 <= share * (start + len) as f64;
            let source = originals
                .get(next_original)
                .copied()
                .filter(|&c| s.chunks[c].start + distance <= start && s.chunks[c].len >= len);
            match source {
                Some(c) if due => {
                    let from = s.chunks[c].start;
                    s.ids.extend_from_within(from..from + len);
                    s.replayed += len;
                    next_original += 1;
                    s.chunks.push(Chunk {
                        start,
                        len,
                        replay_of: Some(c),
                    });
                }
                _ => {
                    s.ids
                        .extend((s.distinct..s.distinct + len).map(|id| id as u32));
                    s.distinct += len;
                    originals.push(s.chunks.len());
                    s.chunks.push(Chunk {
                        start,
                        len,
                        replay_of: None,
                    });
                }
            }
        }
        s
    }
}

// === The load ===

struct Sent {
    at: Instant,
    chunk: u32,
}

struct Latencies {
    micros: Mutex<Vec<u32>>,
    errors: AtomicU64,
    last: Mutex<Option<Instant>>,
    /// Delivery reports (success or not) per chunk of the schedule.
    delivered: Vec<AtomicU32>,
}

impl ClientContext for Latencies {}

impl ProducerContext for Latencies {
    type DeliveryOpaque = Box<Sent>;

    fn delivery(&self, result: &DeliveryResult<'_>, sent: Box<Sent>) {
        let now = Instant::now();
        match result {
            Ok(_) => self
                .micros
                .lock()
                .unwrap()
                .push(now.duration_since(sent.at).as_micros() as u32),
            Err(_) => {
                self.errors.fetch_add(1, Relaxed);
            }
        }
        self.delivered[sent.chunk as usize].fetch_add(1, Relaxed);
        *self.last.lock().unwrap() = Some(now);
    }
}

struct RunResult {
    records_per_sec: f64,
    mb_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
    /// Time the client spent waiting for originals' delivery before a replay.
    replay_wait: Duration,
}

/// Sends the schedule's records; `rate` = None for as fast as possible.
fn run(
    bootstrap: &str,
    topic: &str,
    schedule: &Schedule,
    records: &Records,
    compression: &str,
    rate: Option<f64>,
) -> RunResult {
    let total = schedule.ids.len();
    let ctx = Latencies {
        micros: Mutex::new(Vec::with_capacity(total)),
        errors: AtomicU64::new(0),
        last: Mutex::new(None),
        delivered: schedule.chunks.iter().map(|_| AtomicU32::new(0)).collect(),
    };
    let producer: ThreadedProducer<Latencies> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("batch.size", "1000000")
        .set("compression.type", compression)
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .create_with_context(ctx)
        .unwrap_or_else(|e| {
            panic!(
                "producer with compression.type={compression}: {e} \
                 (zstd needs `--features rdkafka/zstd`, which scripts/bench passes)"
            )
        });
    let mut replay_wait = Duration::ZERO;
    let start = Instant::now();
    for (c, chunk) in schedule.chunks.iter().enumerate() {
        if let Some(original) = chunk.replay_of {
            let want = schedule.chunks[original].len as u32;
            let delivered = &producer.context().delivered[original];
            if delivered.load(Relaxed) < want {
                let waited = Instant::now();
                while delivered.load(Relaxed) < want {
                    assert!(
                        waited.elapsed() < Duration::from_secs(120),
                        "chunk {original} never delivered"
                    );
                    std::thread::sleep(Duration::from_micros(100));
                }
                replay_wait += waited.elapsed();
            }
        }
        for i in chunk.start..chunk.start + chunk.len {
            if let Some(rate) = rate {
                let due = start + Duration::from_secs_f64(i as f64 / rate);
                let now = Instant::now();
                if due > now + Duration::from_micros(200) {
                    std::thread::sleep(due - now);
                }
            }
            let id = schedule.ids[i];
            let sent = Box::new(Sent {
                at: Instant::now(),
                chunk: c as u32,
            });
            let record = BaseRecord::with_opaque_to(topic, sent)
                .key(records.key(id))
                .payload(records.value(id));
            support::send_queued(&producer, record, Duration::from_millis(1), "send");
        }
    }
    producer.flush(Duration::from_secs(120)).unwrap();
    let ctx = producer.context();
    let end = ctx.last.lock().unwrap().unwrap_or_else(Instant::now);
    let secs = end.duration_since(start).as_secs_f64();
    let mut lat = ctx.micros.lock().unwrap().clone();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    RunResult {
        records_per_sec: total as f64 / secs,
        mb_per_sec: (total * records.size) as f64 / secs / 1e6,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        errors: ctx.errors.load(Relaxed),
        replay_wait,
    }
}

/// What one measured run gives besides the load's own figures.
struct Extra {
    /// The proxy's CPU seconds during the measured run.
    cpu: f64,
    /// What idemgate counted (paths with a rule).
    counts: Option<DedupCounts>,
    /// Records in the broker's log of the measured topic.
    logged: Option<i64>,
    /// A direct run at fixed load: the codec floor of the batches the client
    /// sent (CPU seconds, [`codec_floor`]) and how many batches.
    floor: Option<(f64, usize)>,
}

/// One measured run on a fresh broker (and a fresh proxy with a fresh store
/// in front of it for a proxy path): tansu's memory only grows and its later
/// runs slow down, so no run inherits another's log or window. `binary` runs
/// an idemgate path's proxy (None: the one cargo built).
fn measure(
    path: PathKind,
    schedule: &Schedule,
    records: &Records,
    compression: &str,
    rate: Option<f64>,
    binary: Option<&Path>,
) -> (RunResult, Extra) {
    let dir = tempfile::tempdir().unwrap();
    let tansu = Tansu::start();
    let direct = tansu.addr.clone();
    let (proxy, tansu_proxy) = match path.front {
        Front::Direct => (None, None),
        Front::Idemgate | Front::IdemgateObserve | Front::IdemgateDedup => (
            Some(start_proxy(&direct, dir.path(), path.front.rule(), binary)),
            None,
        ),
        Front::TansuProxy => (None, Some(start_tansu_proxy(&direct))),
    };
    let (pid, addr) = match (&proxy, &tansu_proxy) {
        (Some(p), _) => (Some(p.process.pid()), p.bootstrap.clone()),
        (_, Some(tansu)) => (Some(tansu.pid()), tansu.addr.clone()),
        _ => (None, direct.clone()),
    };
    let warm = Schedule::new(WARM, 0.0, 0);
    create_topic(&direct, "warm", PARTITIONS);
    run(&addr, "warm", &warm, records, compression, None);
    create_topic(&direct, "bench", PARTITIONS);
    let before = pid.map(cpu_seconds).unwrap_or(0.0);
    let r = run(&addr, "bench", schedule, records, compression, rate);
    let cpu = pid.map(cpu_seconds).unwrap_or(0.0) - before;
    assert_eq!(r.errors, 0, "{}: delivery errors", path.name());
    let counts = proxy
        .as_ref()
        .and_then(|p| p.admin)
        .map(|port| dedup_counts(port, "bench"));
    let logged = (path.replay_pct > 0 || path.front.rule().is_some())
        .then(|| log_records(&direct, "bench"))
        .flatten();
    let floor = (path.front == Front::Direct && rate.is_some()).then(|| {
        let batches = log_batches(&direct, "bench");
        (codec_floor(&batches), batches.len())
    });
    (
        r,
        Extra {
            cpu,
            counts,
            logged,
            floor,
        },
    )
}

/// "dropped 14985 (30.0 %), log 35015" and the like, for a dedup or replay run.
fn describe(extra: &Extra, sent: usize) -> String {
    let mut s = String::new();
    if let Some(c) = extra.counts {
        s.push_str(&format!(
            "  dropped {:>7.0} ({:>4.1} %)",
            c.dropped,
            c.dropped / sent as f64 * 100.0
        ));
        if c.records != sent as f64 {
            s.push_str(&format!(", counted {:.0} records", c.records));
        }
        if c.fail_open > 0.0 || c.pending_waits > 0.0 {
            s.push_str(&format!(
                ", FAIL-OPEN {:.0}, pending waits {:.0}",
                c.fail_open, c.pending_waits
            ));
        }
    }
    if let Some(n) = extra.logged {
        s.push_str(&format!("  log {n}"));
    }
    s
}

/// One codec: saturation rounds, then fixed-load rounds, then the table;
/// then the sweep, if asked for.
fn bench_codec(
    a: &Args,
    compression: &str,
    schedules: &[(u32, Schedule)],
    records: &Records,
    json: &mut JsonOut,
) {
    let schedule = |p: &PathKind| &schedules.iter().find(|s| s.0 == p.replay_pct).unwrap().1;
    let gb = (a.records * a.size) as f64 / 1e9;
    let w = a.paths.iter().map(|p| p.name().len()).max().unwrap_or(0);
    println!();
    println!("## compression.type = {compression}");

    let n = a.paths.len();
    let mut sat: Vec<Vec<RunResult>> = (0..n).map(|_| Vec::new()).collect();
    let mut dropped: Vec<Vec<f64>> = (0..n).map(|_| Vec::new()).collect();
    for round in 0..a.rounds {
        for (i, path) in a.paths.iter().enumerate() {
            let s = schedule(path);
            let (r, extra) = measure(*path, s, records, compression, None, a.binary(path));
            let waited = if s.replayed > 0 {
                format!(
                    "  replay wait {:>5.0} ms",
                    r.replay_wait.as_secs_f64() * 1e3
                )
            } else {
                String::new()
            };
            println!(
                "saturation {:w$} round {round}: {:>9.0} rec/s {:>7.1} MB/s{waited}{}",
                path.name(),
                r.records_per_sec,
                r.mb_per_sec,
                describe(&extra, a.records),
            );
            if let Some(c) = extra.counts {
                dropped[i].push(c.dropped);
            }
            sat[i].push(r);
        }
    }
    let med = |v: &[RunResult], f: fn(&RunResult) -> f64| median(v.iter().map(f).collect());
    let index = |p: PathKind| a.paths.iter().position(|q| *q == p).unwrap();
    let direct_rate = med(&sat[index(PathKind::all(0)[0])], |r| r.records_per_sec);

    // Half of direct saturation: below every path's limit, so latency and
    // CPU compare like for like.
    let offered = direct_rate / 2.0;
    let mut fixed: Vec<Vec<RunResult>> = (0..n).map(|_| Vec::new()).collect();
    let mut cpu: Vec<Vec<f64>> = (0..n).map(|_| Vec::new()).collect();
    let mut floor: Vec<Vec<f64>> = (0..n).map(|_| Vec::new()).collect();
    for round in 0..a.rounds {
        for (i, path) in a.paths.iter().enumerate() {
            let (r, extra) = measure(
                *path,
                schedule(path),
                records,
                compression,
                Some(offered),
                a.binary(path),
            );
            // Below saturation the originals are delivered long before their
            // replays are due; a wait here means the path fell behind.
            let waited = if r.replay_wait > Duration::ZERO {
                format!("  replay wait {:.0} ms", r.replay_wait.as_secs_f64() * 1e3)
            } else {
                String::new()
            };
            println!(
                "fixed {offered:.0} rec/s {:w$} round {round}: p50 {:>7.2} ms  p99 {:>7.2} ms  proxy CPU {:.2} s{waited}{}",
                path.name(),
                r.p50_ms,
                r.p99_ms,
                extra.cpu,
                describe(&extra, a.records),
            );
            if let Some(c) = extra.counts {
                dropped[i].push(c.dropped);
            }
            if let Some((secs, batches)) = extra.floor {
                println!(
                    "codec floor {:w$} round {round}: {secs:.3} CPU s for its {batches} batches ({:.2} s/GB)",
                    path.name(),
                    secs / gb
                );
                floor[i].push(secs / gb);
            }
            cpu[i].push(extra.cpu / gb);
            fixed[i].push(r);
        }
    }
    println!();
    println!(
        "| path | saturation rec/s | MB/s | vs direct | p50 at {offered:.0} rec/s | p99 | proxy CPU s/GB | codec floor s/GB | CPU / floor | replays dropped |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (i, path) in a.paths.iter().enumerate() {
        let b = index(path.baseline());
        let base_rate = med(&sat[b], |r| r.records_per_sec);
        let (d50, d99) = (med(&fixed[b], |r| r.p50_ms), med(&fixed[b], |r| r.p99_ms));
        let rate = med(&sat[i], |r| r.records_per_sec);
        let (p50, p99) = (med(&fixed[i], |r| r.p50_ms), med(&fixed[i], |r| r.p99_ms));
        let (dp50, dp99, cpu_text) = if path.front == Front::Direct {
            (String::new(), String::new(), "-".to_string())
        } else {
            (
                format!(" ({:+.2})", p50 - d50),
                format!(" ({:+.2})", p99 - d99),
                format!("{:.2}", median(cpu[i].clone())),
            )
        };
        // The floor of this path's batches: its direct baseline's, measured
        // in the same rounds. With no codec it is two copies, no floor.
        let floor_per_gb = (!floor[b].is_empty())
            .then(|| median(floor[b].clone()))
            .filter(|f| *f > 0.0);
        let floor_text = floor_per_gb.map_or("-".to_string(), |f| format!("{f:.2}"));
        let over_floor = floor_per_gb
            .filter(|_| path.front != Front::Direct && compression != "none")
            .map(|f| median(cpu[i].clone()) / f);
        let over_text = over_floor.map_or("-".to_string(), |m| format!("{m:.2} x"));
        let drops = if dropped[i].is_empty() {
            "-".to_string()
        } else {
            let d = median(dropped[i].clone());
            format!("{d:.0} ({:.1} %)", d / a.records as f64 * 100.0)
        };
        println!(
            "| {} | {rate:.0} | {:.1} | {:.3} x | {p50:.2} ms{dp50} | {p99:.2} ms{dp99} | {cpu_text} | {floor_text} | {over_text} | {drops} |",
            path.name(),
            med(&sat[i], |r| r.mb_per_sec),
            rate / base_rate
        );
        let proxied = path.front != Front::Direct;
        let cpu_per_gb = median(cpu[i].clone());
        json.write(serde_json::json!({
            "kind": "produce",
            "codec": compression,
            "path": path.name(),
            "baseline": path.baseline().name(),
            "records": a.records,
            "size": a.size,
            "partitions": PARTITIONS,
            "rounds": a.rounds,
            "replay_pct": path.replay_pct,
            "saturation_records_per_sec": rate,
            "saturation_mb_per_sec": med(&sat[i], |r| r.mb_per_sec),
            "saturation_vs_baseline": rate / base_rate,
            "saturation_rounds": sat[i].iter().map(|r| r.records_per_sec).collect::<Vec<_>>(),
            "half_load_records_per_sec": offered,
            "p50_ms": p50,
            "p99_ms": p99,
            "p50_vs_baseline_ms": p50 - d50,
            "p99_vs_baseline_ms": p99 - d99,
            "p99_rounds": fixed[i].iter().map(|r| r.p99_ms).collect::<Vec<_>>(),
            // The proxy's CPU at half load: seconds per GB of records offered
            // (= ms per MB), and records per CPU-second (per core).
            "proxy_cpu_s_per_gb": proxied.then_some(cpu_per_gb),
            "proxy_records_per_cpu_s": proxied.then(|| a.records as f64 / (cpu_per_gb * gb)),
            // Decompressing and recompressing the baseline's batches, alone
            // (CPU s/GB), and this path's proxy CPU as a multiple of it.
            "codec_floor_s_per_gb": floor_per_gb,
            "proxy_cpu_over_codec_floor": over_floor,
            "dropped": (!dropped[i].is_empty()).then(|| median(dropped[i].clone())),
        }));
    }
    if a.paths.iter().any(|p| p.replay_pct > 0) {
        println!(
            "\n`-{0}` paths are compared with direct-{0} (the same records, replays included); \
             the others with direct.",
            a.paths.iter().map(|p| p.replay_pct).max().unwrap_or(0)
        );
    }
    if a.base_bin.is_some() {
        versus_base(a, compression, &sat, &cpu, json);
    }
    if !a.sweep.is_empty() {
        sweep(
            a,
            compression,
            schedule(&PathKind::all(0)[0]),
            records,
            direct_rate,
            json,
        );
    }
}

/// Each idemgate path against its `@base` twin, from the medians of the
/// rounds both ran in: saturation (each vs its direct baseline, and new/base)
/// and the proxy's CPU per GB at half load (and new/base). Below 1 x in the
/// saturation column, or above it in the CPU column, the new build is slower.
fn versus_base(
    a: &Args,
    compression: &str,
    sat: &[Vec<RunResult>],
    cpu: &[Vec<f64>],
    json: &mut JsonOut,
) {
    let index = |p: PathKind| a.paths.iter().position(|q| *q == p).unwrap();
    let rate = |i: usize| median(sat[i].iter().map(|r| r.records_per_sec).collect());
    println!();
    println!(
        "| path | new vs direct | base vs direct | saturation new/base | proxy CPU s/GB new | base | CPU new/base |"
    );
    println!("|---|---|---|---|---|---|---|");
    for path in a.paths.iter().filter(|p| p.base) {
        let (new, base) = (index(path.twin()), index(*path));
        let direct = rate(index(path.baseline()));
        let (new_cpu, base_cpu) = (median(cpu[new].clone()), median(cpu[base].clone()));
        println!(
            "| {} | {:.3} x | {:.3} x | {:.3} x | {new_cpu:.2} | {base_cpu:.2} | {:.3} x |",
            path.twin().name(),
            rate(new) / direct,
            rate(base) / direct,
            rate(new) / rate(base),
            new_cpu / base_cpu,
        );
        json.write(serde_json::json!({
            "kind": "produce-vs-base",
            "codec": compression,
            "path": path.twin().name(),
            "base_path": path.name(),
            "new_bin": binary_name(a.new_bin.as_deref()),
            "base_bin": binary_name(a.base_bin.as_deref()),
            "records": a.records,
            "size": a.size,
            "rounds": a.rounds,
            "saturation_records_per_sec": rate(new),
            "base_saturation_records_per_sec": rate(base),
            "saturation_vs_baseline": rate(new) / direct,
            "base_saturation_vs_baseline": rate(base) / direct,
            "saturation_new_over_base": rate(new) / rate(base),
            "proxy_cpu_s_per_gb": new_cpu,
            "base_proxy_cpu_s_per_gb": base_cpu,
            "proxy_cpu_new_over_base": new_cpu / base_cpu,
        }));
    }
}

/// A binary's path, or what cargo built.
fn binary_name(binary: Option<&Path>) -> String {
    binary.map_or_else(
        || {
            format!(
                "{} (cargo's, beside this bench)",
                env!("CARGO_BIN_EXE_idemgate")
            )
        },
        |b| b.display().to_string(),
    )
}

/// The load paced at each `--sweep` fraction of `direct_rate`, every path
/// without replays, `--rounds` times; the medians in a table.
fn sweep(
    a: &Args,
    compression: &str,
    schedule: &Schedule,
    records: &Records,
    direct_rate: f64,
    json: &mut JsonOut,
) {
    let paths: Vec<PathKind> = a
        .paths
        .iter()
        .copied()
        .filter(|p| p.replay_pct == 0)
        .collect();
    let w = paths.iter().map(|p| p.name().len()).max().unwrap_or(0);
    let gb = (a.records * a.size) as f64 / 1e9;
    println!();
    println!(
        "## load sweep, compression.type = {compression}: paced at fractions of direct's {direct_rate:.0} rec/s"
    );
    // runs[fraction][path][round]: (result, proxy CPU seconds)
    let mut runs: Vec<Vec<Vec<(RunResult, f64)>>> = a
        .sweep
        .iter()
        .map(|_| paths.iter().map(|_| Vec::new()).collect())
        .collect();
    for round in 0..a.rounds {
        for (f, &fraction) in a.sweep.iter().enumerate() {
            let offered = direct_rate * fraction;
            for (p, path) in paths.iter().enumerate() {
                let (r, extra) = measure(
                    *path,
                    schedule,
                    records,
                    compression,
                    Some(offered),
                    a.binary(path),
                );
                println!(
                    "sweep {fraction:.2} x {offered:>7.0} rec/s {:w$} round {round}: {:>9.0} rec/s  \
                     p50 {:>7.2} ms  p99 {:>7.2} ms  proxy CPU {:.2} s",
                    path.name(),
                    r.records_per_sec,
                    r.p50_ms,
                    r.p99_ms,
                    extra.cpu,
                );
                runs[f][p].push((r, extra.cpu));
            }
        }
    }
    println!();
    println!(
        "| load | offered rec/s | path | achieved rec/s | /offered | p50 | p99 | proxy CPU s/GB |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (f, &fraction) in a.sweep.iter().enumerate() {
        let offered = direct_rate * fraction;
        for (p, path) in paths.iter().enumerate() {
            let rs = &runs[f][p];
            let med = |g: &dyn Fn(&(RunResult, f64)) -> f64| median(rs.iter().map(g).collect());
            let rate = med(&|r| r.0.records_per_sec);
            let (p50, p99) = (med(&|r| r.0.p50_ms), med(&|r| r.0.p99_ms));
            let proxied = path.front != Front::Direct;
            let cpu = med(&|r| r.1) / gb;
            println!(
                "| {fraction:.2} x | {offered:.0} | {} | {rate:.0} | {:.3} | {p50:.2} ms | {p99:.2} ms | {} |",
                path.name(),
                rate / offered,
                if proxied { format!("{cpu:.2}") } else { "-".into() },
            );
            json.write(serde_json::json!({
                "kind": "sweep",
                "codec": compression,
                "path": path.name(),
                "records": a.records,
                "size": a.size,
                "rounds": a.rounds,
                "fraction": fraction,
                "direct_saturation_records_per_sec": direct_rate,
                "offered_records_per_sec": offered,
                "records_per_sec": rate,
                "mb_per_sec": med(&|r| r.0.mb_per_sec),
                "p50_ms": p50,
                "p99_ms": p99,
                "proxy_cpu_s_per_gb": proxied.then_some(cpu),
            }));
        }
    }
}

fn main() {
    let a = args();
    let mut json = JsonOut::from_args("produce");
    println!(
        "# produce: {} records x {} B, acks=all, {PARTITIONS} partitions, {} round(s), medians; compression: {}",
        a.records,
        a.size,
        a.rounds,
        a.compression.join(", ")
    );
    println!(
        "# machine: {} cores; client, broker and proxy share them",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!(
        "# paths: {}",
        a.paths
            .iter()
            .map(|p| p.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    if a.new_bin.is_some() || a.base_bin.is_some() {
        println!("# idemgate: {}", binary_name(a.new_bin.as_deref()));
    }
    if let Some(base) = &a.base_bin {
        println!("# idemgate@base: {}", base.display());
    }
    let mut pcts: Vec<u32> = a.paths.iter().map(|p| p.replay_pct).collect();
    pcts.sort_unstable();
    pcts.dedup();
    let schedules: Vec<(u32, Schedule)> = pcts
        .iter()
        .map(|&pct| {
            let s = Schedule::new(a.records, pct as f64 / 100.0, a.replay_distance);
            if pct > 0 {
                println!(
                    "# replays ({pct} % paths): {} of {} records sent ({:.1} %) re-send chunks of {CHUNK} \
                     sent >= {} records earlier, once delivered; {} distinct records",
                    s.replayed,
                    a.records,
                    s.replayed as f64 / a.records as f64 * 100.0,
                    a.replay_distance,
                    s.distinct
                );
            }
            (pct, s)
        })
        .collect();
    let distinct = schedules
        .iter()
        .map(|(_, s)| s.distinct)
        .max()
        .unwrap_or(0)
        .max(WARM);
    let records = Records::new(distinct, a.size);
    for compression in &a.compression {
        bench_codec(&a, compression, &schedules, &records, &mut json);
    }
}
