//! Consumer throughput, direct to tansu vs through idemgate with and without
//! fetch-path dedup, alternating in one run so every path sees the same
//! machine.
//!
//! ```text
//! scripts/bench-fetch                  # what docs/performance.md records
//! cargo bench --bench fetch -- --records 200000 --size 512 --rounds 5
//! scripts/bench-fetch --cases none,none-30 --rounds 3
//! ```
//!
//! One broker, filled once, straight (never through the proxy): one topic
//! per case, `--partitions` partitions, `--records` records of `--size` B in
//! each log. A case is a codec (`compression.type` of the producer that
//! filled it) and a share of duplicates: `none-30` is uncompressed, and 30 %
//! of its log's records are copies of earlier ones, chunks of 1000 records
//! written again byte for byte at least `--distance` records later (as a
//! Connect source task's replay written around the proxy would be). Keys
//! cycle over 1024 values, so a copy lands in its original's partition, at a
//! higher offset. After the records, one marker record per partition (its
//! own batch) ends each log: the consumer stops when it has read every
//! marker, and tansu's high watermark (the last batch's base offset + 1) is
//! the log's end.
//!
//! Every read is a librdkafka `BaseConsumer` (client.id
//! `connector-consumer-bench-sink-0`, as a sink task's, librdkafka's default
//! fetch settings), every partition assigned from offset 0, reading until
//! the markers. The rate runs from the first record to the last marker (the
//! streaming rate); the time to the first record (consumer start, connections,
//! metadata, first fetch) and the rate over the whole read are reported
//! beside it. Paths, in this order in every round and case:
//! - `direct`: straight to tansu;
//! - `idemgate`: a fresh idemgate with no dedup rule (pass-through);
//! - `idemgate-fetch`: a fresh idemgate (fresh store, empty window) with one
//!   rule `topics = "*"`, `key = "content"`, `mode = "drop"`, `direction = "fetch"`: this read
//!   learns every key's first position (a window write per batch) while it
//!   drops the copies;
//! - `idemgate-fetch-reread`: a second consumer through that same proxy right
//!   after: the window knows every key, so this is the re-read cost (each
//!   copy's first position looked up in the store, nothing learned).
//!
//! Rates are over the log (records and payload MB in the log per second,
//! copies included, whoever gets them), so every path of a case is timed over
//! the same work; "vs direct" is the ratio to direct in the same round, and
//! the table shows medians over the rounds. One unmeasured direct read after
//! each fill warms the broker and checks the log. The dedup paths must deliver
//! every logical record exactly once (each id once, no copy): the bench fails
//! if they do not, or if the proxy counted a fail-open or covered fewer
//! records than the log holds, so it cannot measure a rule that did nothing.
//!
//! The proxy runs as its own process (the release binary), so its CPU time is
//! read from /proc apart from the client's and the broker's.
//!
//! `--base-bin PATH` runs the three idemgate paths a second time in every
//! round and case with another build of idemgate (another commit's release
//! binary), as `idemgate@base`, `idemgate-fetch@base` and
//! `idemgate-fetch-reread@base`, right after the first three, so a change is
//! measured against its base on the same machine at the same time; the
//! table then ends with the new/base ratios. `--new-bin PATH` runs the other
//! idemgate paths with that binary instead of the one cargo built.
//!
//! `--json PATH` writes every row of the table to PATH as JSON lines, for
//! scripts/perf-report; what is printed stays the same.

mod common;
// What the integration tests share (proto-tests/support): the proxy
// launcher, tansu, /proc readings, the seeded generator. A bench uses a part.
#[allow(dead_code, unused_imports)]
#[path = "../proto-tests/support/mod.rs"]
mod support;

use common::{binary, block_on, create_topic, median, samples, JsonOut, Records, RunFlags};
use support::proc::cpu_seconds;
use support::{free_port, free_port_range, ProxyLog, ProxyProcess, Tansu};

use std::path::PathBuf;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::Offset;

/// Records per chunk: the unit a copy re-writes.
const CHUNK: usize = 1000;
/// The key of the marker record that ends each partition.
const END: &str = "end";
const CLIENT_ID: &str = "connector-consumer-bench-sink-0";
/// The connector name idemgate parses from CLIENT_ID (its metrics label).
const CONNECTOR: &str = "bench-sink";

struct Args {
    records: usize,
    size: usize,
    partitions: i32,
    rounds: usize,
    /// A copy re-writes a chunk at least this many records back.
    distance: usize,
    cases: Vec<Case>,
    /// The idemgate the paths run (`None`: the one cargo built).
    new_bin: Option<PathBuf>,
    /// Another build of idemgate for the `@base` twins.
    base_bin: Option<PathBuf>,
}

impl Args {
    /// The binary `path` runs.
    fn binary(&self, path: Path) -> Option<&std::path::Path> {
        if path.base {
            self.base_bin.as_deref()
        } else {
            self.new_bin.as_deref()
        }
    }

    /// Every path of a round, in order: the `@base` twins after the others.
    fn paths(&self) -> Vec<Path> {
        let new = KINDS.iter().map(|&kind| Path { kind, base: false });
        let base = KINDS
            .iter()
            .filter(|k| **k != Kind::Direct && self.base_bin.is_some())
            .map(|&kind| Path { kind, base: true });
        new.chain(base).collect()
    }
}

#[derive(Clone, PartialEq, Eq, Debug)]
struct Case {
    codec: String,
    /// Percent of the log's records that are copies of earlier ones.
    dup_pct: u32,
}

impl Case {
    fn name(&self) -> String {
        match self.dup_pct {
            0 => self.codec.clone(),
            n => format!("{}-{n}", self.codec),
        }
    }

    fn topic(&self) -> String {
        format!("bench-{}", self.name())
    }
}

/// The command line; the top of this file says what each run measures.
#[derive(clap::Parser, Debug)]
struct Cli {
    #[command(flatten)]
    run: RunFlags,
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// A copy re-writes a chunk at least this many records back (default: a
    /// tenth of the run, at most 20,000).
    #[arg(long)]
    distance: Option<usize>,
    /// codec or codec-NN (NN % of the log copies), comma-separated.
    #[arg(long, default_value = "none,none-30,lz4,lz4-30")]
    cases: String,
    /// Another build of idemgate (its release binary): each idemgate path
    /// again with it, as its `@base` twin.
    #[arg(long, value_name = "PATH", value_parser = binary)]
    base_bin: Option<PathBuf>,
    /// The idemgate the other paths run (default: the one cargo built).
    #[arg(long, value_name = "PATH", value_parser = binary)]
    new_bin: Option<PathBuf>,
}

fn args() -> Args {
    let cli = <Cli as clap::Parser>::parse();
    let mut a = Args {
        records: cli.run.records,
        size: cli.run.size,
        partitions: cli.partitions,
        rounds: cli.run.rounds,
        distance: 0,
        cases: Vec::new(),
        new_bin: cli.new_bin,
        base_bin: cli.base_bin,
    };
    let (distance, cases) = (cli.distance, cli.cases);
    assert!(
        a.records > 0 && a.rounds > 0 && a.partitions > 0,
        "--records, --rounds and --partitions must be > 0"
    );
    // A value holds its record's id in its first bytes: shorter, two records
    // could be the same bytes, and the proxy would rightly drop one.
    assert!(a.size >= 32, "--size must be at least 32 B");
    a.distance = distance.unwrap_or((a.records / 10).min(20_000));
    for name in cases.split(',') {
        let (codec, pct) = match name.rsplit_once('-') {
            Some((codec, pct)) => (
                codec,
                pct.parse::<u32>()
                    .ok()
                    .filter(|p| *p < 50)
                    .unwrap_or_else(|| panic!("--cases: {name:?}: codec-NN, NN < 50")),
            ),
            None => (name, 0),
        };
        assert!(
            ["none", "gzip", "snappy", "lz4", "zstd"].contains(&codec),
            "--cases: none, gzip, snappy, lz4 or zstd, with -NN for NN % duplicates, not {name:?}"
        );
        a.cases.push(Case {
            codec: codec.to_string(),
            dup_pct: pct,
        });
    }
    a
}

// === Paths ===

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Direct,
    Idemgate,
    IdemgateFetch,
    IdemgateFetchReread,
}

const KINDS: [Kind; 4] = [
    Kind::Direct,
    Kind::Idemgate,
    Kind::IdemgateFetch,
    Kind::IdemgateFetchReread,
];

/// A path: what reads, and with which idemgate.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Path {
    kind: Kind,
    /// Run by the `--base-bin` binary: the `@base` twin.
    base: bool,
}

impl Path {
    const DIRECT: Path = Path {
        kind: Kind::Direct,
        base: false,
    };

    fn name(self) -> String {
        let kind = match self.kind {
            Kind::Direct => "direct",
            Kind::Idemgate => "idemgate",
            Kind::IdemgateFetch => "idemgate-fetch",
            Kind::IdemgateFetchReread => "idemgate-fetch-reread",
        };
        if self.base {
            format!("{kind}@base")
        } else {
            kind.to_string()
        }
    }

    fn dedup(self) -> bool {
        matches!(self.kind, Kind::IdemgateFetch | Kind::IdemgateFetchReread)
    }
}

// === Processes ===

struct Proxy {
    process: ProxyProcess,
    bootstrap: String,
    admin: u16,
    /// The store's directory, removed with the proxy.
    _dir: tempfile::TempDir,
}

/// A fresh idemgate (fresh store, so an empty window) in front of
/// `upstream`. With `dedup`, one fetch rule covers every topic: content keys,
/// `mode = "drop"`.
fn start_proxy(upstream: &str, dedup: bool, binary: Option<&std::path::Path>) -> Proxy {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (ports, last) = free_port_range(8);
    let admin = free_port();
    let mut config = format!(
        "[listen]\nbootstrap = \"127.0.0.1:{port}\"\nbroker_ports = \"{ports}-{last}\"\n\
         [upstream]\nbootstrap = [\"{upstream}\"]\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\
         [store]\ndir = \"{}\"\n[log]\nlevel = \"warn\"\n",
        dir.path().join("store").display()
    );
    if dedup {
        config.push_str(
            "[dedup]\n[[dedup.rules]]\ntopics = \"*\"\nkey = \"content\"\nmode = \"drop\"\ndirection = \"fetch\"\n",
        );
    }
    let path = dir.path().join("bench.toml");
    std::fs::write(&path, config).unwrap();
    // Ready: upstream seen and the (empty) window loaded.
    let mut options = ProxyProcess::options(&path, port, admin).log(ProxyLog::Inherit);
    if let Some(binary) = binary {
        options = options.binary(binary.to_path_buf());
    }
    let process = block_on(options.start());
    // The broker listener opens after the first metadata probe.
    std::thread::sleep(Duration::from_millis(500));
    Proxy {
        process,
        bootstrap: format!("127.0.0.1:{port}"),
        admin,
        _dir: dir,
    }
}

/// The whole HTTP response (head and body), or None if it failed.
/// What idemgate's /metrics counted so far on the fetch path of `topic`.
#[derive(Default, Clone, Copy, Debug)]
struct FetchCounts {
    /// `idemgate_records_total{direction="fetch"}`: records in Fetch
    /// responses the rule covered (a record fetched twice counts twice).
    records: f64,
    /// `idemgate_duplicates_dropped_total{direction="fetch"}`.
    dropped: f64,
    /// `idemgate_dedup_fail_open_total`, every reason (all topics).
    fail_open: f64,
}

impl std::ops::Sub for FetchCounts {
    type Output = FetchCounts;
    fn sub(self, o: FetchCounts) -> FetchCounts {
        FetchCounts {
            records: self.records - o.records,
            dropped: self.dropped - o.dropped,
            fail_open: self.fail_open - o.fail_open,
        }
    }
}

fn fetch_counts(admin: u16, topic: &str) -> FetchCounts {
    let labels = format!("{{connector=\"{CONNECTOR}\",topic=\"{topic}\",direction=\"fetch\"}}");
    let mut c = FetchCounts::default();
    for (name, rest, v) in samples(admin) {
        match name.as_str() {
            "idemgate_records_total" if rest == labels => c.records += v,
            "idemgate_duplicates_dropped_total" if rest == labels => c.dropped += v,
            "idemgate_dedup_fail_open_total" => c.fail_open += v,
            _ => {}
        }
    }
    c
}

// === The logs ===

/// The record ids a log holds, in the order written: new chunks, and a
/// `share` of the records copies of chunks written at least `distance`
/// records before (oldest first, each chunk copied at most once).
struct Log {
    ids: Vec<u32>,
    /// Distinct records (the highest id + 1): what a sink should get.
    distinct: usize,
}

impl Log {
    fn new(records: usize, share: f64, distance: usize) -> Log {
        let mut ids: Vec<u32> = Vec::with_capacity(records);
        let mut copied = 0;
        let mut distinct = 0;
        let mut originals: Vec<(usize, usize)> = Vec::new(); // (start, len) of new chunks
        let mut next_original = 0;
        while ids.len() < records {
            let start = ids.len();
            let len = CHUNK.min(records - start);
            let due = (copied + len) as f64 <= share * (start + len) as f64;
            let source = originals
                .get(next_original)
                .copied()
                .filter(|&(from, n)| from + distance <= start && n >= len);
            match source {
                Some((from, _)) if due => {
                    ids.extend_from_within(from..from + len);
                    copied += len;
                    next_original += 1;
                }
                _ => {
                    ids.extend((distinct..distinct + len).map(|id| id as u32));
                    distinct += len;
                    originals.push((start, len));
                }
            }
        }
        Log { ids, distinct }
    }
}

/// Writes `log` to `topic` straight to the broker, then one marker per
/// partition in a batch of its own; checks the broker holds every record.
fn fill(broker: &str, topic: &str, a: &Args, log: &Log, records: &Records, codec: &str) {
    create_topic(broker, topic, a.partitions);
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("batch.size", "1000000")
        .set("compression.type", codec)
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .create()
        .unwrap_or_else(|e| {
            panic!(
                "producer with compression.type={codec}: {e} \
                 (zstd needs `--features rdkafka/zstd`, which scripts/bench-fetch passes)"
            )
        });
    let send = |record: BaseRecord<'_, str, [u8]>| {
        support::send_queued(&producer, record, Duration::from_millis(1), "send")
    };
    for &id in &log.ids {
        send(
            BaseRecord::to(topic)
                .key(records.key(id))
                .payload(records.value(id)),
        );
    }
    producer.flush(Duration::from_secs(120)).unwrap();
    // Markers differ per partition, or the rule would rightly drop copies.
    let markers: Vec<String> = (0..a.partitions).map(|p| format!("end of {p}")).collect();
    for (p, marker) in markers.iter().enumerate() {
        send(
            BaseRecord::to(topic)
                .partition(p as i32)
                .key(END)
                .payload(marker.as_bytes()),
        );
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .create()
        .unwrap();
    let mut total = 0;
    for p in 0..a.partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .unwrap();
        // The consumer reads from offset 0, not `Offset::Beginning`: that
        // costs librdkafka a ListOffsets round and a ~500 ms wait on every
        // path here, more than the read itself.
        assert_eq!(low, 0, "{topic}: partition {p} starts at {low}");
        total += high - low;
    }
    assert_eq!(
        total,
        (log.ids.len() + a.partitions as usize) as i64,
        "{topic}: the broker's log holds {total} records, not the records and a marker per partition"
    );
}

// === The reads ===

struct ReadResult {
    /// From creating the consumer to the last marker.
    secs: f64,
    /// From the first record to the last marker.
    streaming: f64,
    /// From creating the consumer to the first record.
    startup: f64,
    /// Records delivered to the consumer (markers not counted).
    delivered: usize,
    /// Distinct record ids among them.
    distinct: usize,
}

/// The id a value starts with (`{"id":123,...`).
fn id_of(value: &[u8]) -> usize {
    let digits = value.get(6..).unwrap_or_default();
    let mut id = 0usize;
    for &b in digits.iter().take_while(|b| b.is_ascii_digit()) {
        id = id * 10 + (b - b'0') as usize;
    }
    id
}

/// Reads every partition of `topic` from offset 0 (the log's start) until
/// each marker came, like a sink task (assign, no group membership).
fn read(bootstrap: &str, topic: &str, partitions: i32, ids: usize) -> ReadResult {
    let start = Instant::now();
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "connect-bench-sink")
        .set("client.id", CLIENT_ID)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false");
    let consumer = support::assign_all(&config, topic, partitions, Offset::Offset(0));
    let mut seen = vec![false; ids];
    let mut ended = vec![false; partitions as usize];
    let (mut delivered, mut distinct, mut ends) = (0, 0, 0);
    let mut last = Instant::now();
    let mut first = None;
    while ends < partitions {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                last = Instant::now();
                first.get_or_insert(last);
                if m.key() == Some(END.as_bytes()) {
                    let p = m.partition() as usize;
                    assert!(!ended[p], "{topic}: partition {p}'s marker came twice");
                    ended[p] = true;
                    ends += 1;
                    continue;
                }
                delivered += 1;
                let id = id_of(m.payload().unwrap_or_default());
                if !std::mem::replace(&mut seen[id], true) {
                    distinct += 1;
                }
            }
            Some(Err(e)) => panic!("{topic}: consume error: {e}"),
            None => assert!(
                last.elapsed() < Duration::from_secs(60),
                "{topic}: nothing for 60 s after {delivered} records and {ends} markers"
            ),
        }
    }
    let end = Instant::now();
    let first = first.unwrap_or(end);
    ReadResult {
        secs: end.duration_since(start).as_secs_f64(),
        streaming: end.duration_since(first).as_secs_f64(),
        startup: first.duration_since(start).as_secs_f64(),
        delivered,
        distinct,
    }
}

struct Run {
    /// Log records per second from the first record to the last marker
    /// (copies included, whoever got them): the streaming rate.
    rate: f64,
    /// The same in payload MB.
    mb: f64,
    /// Log records per second over the whole read, consumer start included.
    whole: f64,
    /// Seconds from creating the consumer to the first record.
    startup: f64,
    delivered: usize,
    /// Proxy CPU seconds during the read.
    cpu: f64,
    /// What the rule counted during the read (dedup paths).
    counts: Option<FetchCounts>,
}

/// One read through `path` (for a dedup path, `proxy` is the rule's proxy;
/// it is started by the caller so the re-read can share it).
fn measure(
    path: Path,
    broker: &str,
    proxy: Option<&Proxy>,
    a: &Args,
    case: &Case,
    log: &Log,
) -> Run {
    let topic = case.topic();
    let pass_through =
        (path.kind == Kind::Idemgate).then(|| start_proxy(broker, false, a.binary(path)));
    let proxy = proxy.or(pass_through.as_ref());
    let addr = proxy.map_or(broker, |p| p.bootstrap.as_str());
    let pid = proxy.map(|p| p.process.pid());
    let counts_before = proxy
        .filter(|_| path.dedup())
        .map(|p| fetch_counts(p.admin, &topic));
    let cpu_before = pid.map(cpu_seconds).unwrap_or(0.0);
    let r = read(addr, &topic, a.partitions, log.distinct);
    let cpu = pid.map(cpu_seconds).unwrap_or(0.0) - cpu_before;
    let counts = counts_before.map(|before| fetch_counts(proxy.unwrap().admin, &topic) - before);

    // Every path reads every logical record; only the dedup paths read each
    // exactly once. Anything else is a broken bench, not a figure.
    let name = format!("{} {}", case.name(), path.name());
    assert_eq!(r.distinct, log.distinct, "{name}: logical records read");
    if path.dedup() {
        assert_eq!(
            r.delivered, log.distinct,
            "{name}: records delivered with the fetch rule"
        );
        let c = counts.unwrap();
        assert_eq!(c.fail_open, 0.0, "{name}: the proxy failed open");
        assert!(
            c.records >= log.ids.len() as f64,
            "{name}: the rule covered {} records of {}",
            c.records,
            log.ids.len()
        );
    } else {
        assert_eq!(r.delivered, log.ids.len(), "{name}: records delivered");
    }
    let n = log.ids.len();
    Run {
        rate: n as f64 / r.streaming,
        mb: (n * a.size) as f64 / r.streaming / 1e6,
        whole: n as f64 / r.secs,
        startup: r.startup,
        delivered: r.delivered,
        cpu,
        counts,
    }
}

fn main() {
    let a = args();
    let mut json = JsonOut::from_args("fetch");
    println!(
        "# fetch: {} records x {} B per log, {} partitions, {} round(s), medians; cases: {}",
        a.records,
        a.size,
        a.partitions,
        a.rounds,
        a.cases
            .iter()
            .map(Case::name)
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "# machine: {} cores; client, broker and proxy share them; load average at start: {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        support::proc::loadavg()
    );
    let paths = a.paths();
    println!(
        "# paths: {}",
        paths
            .iter()
            .map(|p| p.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let shown = |b: Option<&std::path::Path>| {
        b.map_or("the binary cargo built".to_string(), |b| {
            b.display().to_string()
        })
    };
    if a.new_bin.is_some() || a.base_bin.is_some() {
        println!("# idemgate: {}", shown(a.new_bin.as_deref()));
    }
    if let Some(base) = &a.base_bin {
        println!("# idemgate@base: {}", base.display());
    }
    let logs: Vec<Log> = a
        .cases
        .iter()
        .map(|c| Log::new(a.records, c.dup_pct as f64 / 100.0, a.distance))
        .collect();
    let records = Records::new(logs.iter().map(|l| l.distinct).max().unwrap_or(0), a.size);
    let tansu = Tansu::start();
    let broker = tansu.addr.clone();
    for (case, log) in a.cases.iter().zip(&logs) {
        let filled = Instant::now();
        fill(&broker, &case.topic(), &a, log, &records, &case.codec);
        println!(
            "# {}: {} records in the log, {} logical ({} copies, {:.1} %, each >= {} records after its original), filled in {:.1} s",
            case.topic(),
            log.ids.len(),
            log.distinct,
            log.ids.len() - log.distinct,
            (log.ids.len() - log.distinct) as f64 / log.ids.len() as f64 * 100.0,
            a.distance,
            filled.elapsed().as_secs_f64()
        );
        // Warm-up, unmeasured: the broker's and the client's first read.
        measure(Path::DIRECT, &broker, None, &a, case, log);
    }

    let w = paths.iter().map(|p| p.name().len()).max().unwrap_or(0);
    let cw = a.cases.iter().map(|c| c.name().len()).max().unwrap_or(0);
    // runs[case][path][round]
    let mut runs: Vec<Vec<Vec<Run>>> = a
        .cases
        .iter()
        .map(|_| paths.iter().map(|_| Vec::new()).collect())
        .collect();
    for round in 0..a.rounds {
        println!("# round {round}: load average {}", support::proc::loadavg());
        for (c, (case, log)) in a.cases.iter().zip(&logs).enumerate() {
            let mut dedup_proxy = None;
            for (p, &path) in paths.iter().enumerate() {
                if path.kind == Kind::IdemgateFetch {
                    dedup_proxy = Some(start_proxy(&broker, true, a.binary(path)));
                }
                let proxy = if path.dedup() {
                    dedup_proxy.as_ref()
                } else {
                    None
                };
                let r = measure(path, &broker, proxy, &a, case, log);
                let direct = runs[c][0].get(round).map_or(r.rate, |d: &Run| d.rate);
                let dropped = r
                    .counts
                    .map(|k| format!("  dropped {:>7.0}  covered {:>7.0}", k.dropped, k.records))
                    .unwrap_or_default();
                println!(
                    "read {:cw$} {:w$} round {round}: {:>9.0} rec/s {:>7.1} MB/s  {:.3} x  \
                     first record {:>5.1} ms  whole read {:>9.0} rec/s  delivered {:>7}  proxy CPU {:>5.2} s{dropped}",
                    case.name(),
                    path.name(),
                    r.rate,
                    r.mb,
                    r.rate / direct,
                    r.startup * 1e3,
                    r.whole,
                    r.delivered,
                    r.cpu,
                );
                runs[c][p].push(r);
            }
        }
    }
    println!("# load average at the end: {}", support::proc::loadavg());

    let gb = (a.records * a.size) as f64 / 1e9;
    println!();
    println!(
        "| case | path | rec/s | MB/s | vs direct | first record | whole read rec/s | vs direct | delivered | proxy CPU s | CPU s/GB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (c, case) in a.cases.iter().enumerate() {
        let direct = &runs[c][0];
        for (p, &path) in paths.iter().enumerate() {
            let rs = &runs[c][p];
            let med = |f: &dyn Fn(&Run) -> f64| median(rs.iter().map(f).collect());
            // Ratios to direct in the same round, then their median.
            let ratio = |f: &dyn Fn(&Run) -> f64| {
                median(rs.iter().zip(direct).map(|(r, d)| f(r) / f(d)).collect())
            };
            let cpu = med(&|r| r.cpu);
            let (cpu, per_gb) = if path == Path::DIRECT {
                ("-".to_string(), "-".to_string())
            } else {
                (format!("{cpu:.2}"), format!("{:.2}", cpu / gb))
            };
            println!(
                "| {} | {} | {:.0} | {:.1} | {:.3} x | {:.1} ms | {:.0} | {:.3} x | {} | {cpu} | {per_gb} |",
                case.name(),
                path.name(),
                med(&|r| r.rate),
                med(&|r| r.mb),
                ratio(&|r| r.rate),
                med(&|r| r.startup) * 1e3,
                med(&|r| r.whole),
                ratio(&|r| r.whole),
                rs[0].delivered,
            );
            let proxied = path != Path::DIRECT;
            json.write(serde_json::json!({
                "kind": "fetch",
                "case": case.name(),
                "codec": case.codec,
                "dup_pct": case.dup_pct,
                "path": path.name(),
                "baseline": Path::DIRECT.name(),
                "records": a.records,
                "size": a.size,
                "partitions": a.partitions,
                "rounds": a.rounds,
                "records_per_sec": med(&|r| r.rate),
                "mb_per_sec": med(&|r| r.mb),
                "vs_baseline": ratio(&|r| r.rate),
                "vs_baseline_rounds": rs.iter().zip(direct).map(|(r, d)| r.rate / d.rate).collect::<Vec<_>>(),
                "first_record_ms": med(&|r| r.startup) * 1e3,
                "whole_read_records_per_sec": med(&|r| r.whole),
                "whole_read_vs_baseline": ratio(&|r| r.whole),
                "delivered": rs[0].delivered,
                "proxy_cpu_s": proxied.then(|| med(&|r| r.cpu)),
                "proxy_cpu_s_per_gb": proxied.then(|| med(&|r| r.cpu) / gb),
            }));
        }
    }
    if a.base_bin.is_some() {
        versus_base(&a, &paths, &runs, gb, &mut json);
    }
    println!(
        "\nrec/s, MB/s: the log's records (copies included) and payload, from the first record to the \
         last marker; first record: from creating the consumer; whole read: both; vs direct: the \
         median of each round's ratio to direct; delivered: what the consumer got (with the fetch \
         rule each logical record once); proxy CPU: user + system, per GB of the log's payload."
    );
}

/// With `--base-bin`: each idemgate path against its `@base` twin, round by
/// round (both read the same log in the same round), then the median.
fn versus_base(a: &Args, paths: &[Path], runs: &[Vec<Vec<Run>>], gb: f64, json: &mut JsonOut) {
    println!();
    println!("| case | path | rec/s new/base | whole read new/base | proxy CPU s/GB, new / base | CPU new/base |");
    println!("|---|---|---|---|---|---|");
    for (c, case) in a.cases.iter().enumerate() {
        for (p, &path) in paths.iter().enumerate() {
            if path.base || path.kind == Kind::Direct {
                continue;
            }
            let Some(b) = paths.iter().position(|q| q.base && q.kind == path.kind) else {
                continue;
            };
            let (new, base) = (&runs[c][p], &runs[c][b]);
            let ratio = |f: &dyn Fn(&Run) -> f64| {
                median(new.iter().zip(base).map(|(n, b)| f(n) / f(b)).collect())
            };
            let cpu = |rs: &[Run]| median(rs.iter().map(|r| r.cpu).collect()) / gb;
            println!(
                "| {} | {} | {:.3} x | {:.3} x | {:.2} / {:.2} | {:.2} x |",
                case.name(),
                path.name(),
                ratio(&|r| r.rate),
                ratio(&|r| r.whole),
                cpu(new),
                cpu(base),
                ratio(&|r| r.cpu),
            );
            json.write(serde_json::json!({
                "kind": "fetch-versus-base",
                "case": case.name(),
                "path": path.name(),
                "rate_new_over_base": ratio(&|r| r.rate),
                "whole_read_new_over_base": ratio(&|r| r.whole),
                "proxy_cpu_s_per_gb": cpu(new),
                "proxy_cpu_s_per_gb_base": cpu(base),
                "cpu_new_over_base": ratio(&|r| r.cpu),
            }));
        }
    }
}
