//! The idempotency window and the produce-path dedup, measured in process,
//! without a network or a broker.
//!
//! ```text
//! scripts/bench-window                          # what docs/performance.md records
//! cargo bench --bench window -- --keys 1000000,10000000 --records 300000 --rounds 3
//! cargo bench --bench window -- --keys 10000000 --skip-dedup
//! cargo bench --bench window -- --skip-window --prefill 10000000 --rounds 1
//! cargo bench --bench window -- --keys 1000000 --skip-dedup --store-cache 1073741824
//! ```
//!
//! Window (`src/idempotency/window.rs`), for each `--keys` count, in fresh
//! child processes of this binary so that every RSS figure starts clean:
//! - memory: RSS (`/proc/self/status` VmRSS) before and after committing the
//!   keys in segments of `--segment` keys (Claim, check, add, commit, as the
//!   filter does for one acknowledged batch), next to `Window::memory_bytes`;
//!   a second child writes the same segments straight into sled, for an idea
//!   of how much of the RSS is sled's own (it moves with sled's flusher);
//! - disk: the store directory after `flush_now`, and sled's `size_on_disk`;
//! - commit and check throughput, one thread;
//! - restart: drop, `Store::open_with`, `Window::new`, `load()`, timed in
//!   process, and once more in a fresh process (its RSS is what a restarted
//!   proxy holds); a last child only reads the segments, for sled's share of
//!   `load`.
//!
//! Every store is opened with sled's page cache capped at `--store-cache`
//! bytes (default: `[dedup] store_cache`'s).
//!
//! Dedup path (`src/filter/dedup_produce.rs`): Produce v9 frames of
//! `--partitions` partitions × one batch of `--batch` records × `--size` B,
//! through `ProduceDedup::on_request` and, with a broker answer made up
//! beforehand (error 0), `on_response`, which commits the keys. One thread
//! (a current_thread runtime). Cases per codec: no duplicate with the tag
//! header written (every batch rewritten), no duplicate with `tag = false`
//! (original bytes forwarded), and `--replays` of the records already
//! acknowledged, dropped (with and without the tag). `--prefill N` commits N
//! other keys first, so the checks meet a window as full as a busy proxy's.
//!
//! Figures are printed, never asserted; only counts are checked (every key
//! committed, every committed key seen). `--json PATH` writes every table row
//! to PATH as JSON lines, for scripts/perf-report; what is printed stays the
//! same.

mod common;
// What the integration tests share (proto-tests/support): the proxy
// launcher, tansu, /proc readings, the seeded generator. A bench uses a part.
#[allow(dead_code, unused_imports)]
#[path = "../proto-tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use idemgate::codec::RequestHead;
use idemgate::config::Config;
use idemgate::filter::dedup_produce::{Outcome, ProduceDedup, Session};
use idemgate::idempotency::window::{Check, Claim};
use idemgate::idempotency::{Key, Window};
use idemgate::identity::Identity;
use idemgate::message;
use idemgate::records::{BatchBuilder, Codec, Record};
use idemgate::store::Store;
use idemgate::telemetry::Metrics;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse, TopicName};
use kafka_protocol::protocol::StrBytes;

/// Produce v9: the first flexible version, what Java clients 3.0–3.6 send.
const VERSION: i16 = 9;
const TOPIC: &str = "bench";
const TTL: Duration = Duration::from_secs(3600);

struct Args {
    keys: Vec<usize>,
    segment: usize,
    batch: usize,
    size: usize,
    partitions: usize,
    records: usize,
    rounds: usize,
    replays: f64,
    /// Keys committed before each dedup case, so that its checks and
    /// inserts meet a full window.
    prefill: usize,
    /// sled's page cache, bytes (`[dedup] store_cache`; sled's own default
    /// is 1073741824).
    store_cache: usize,
    skip_window: bool,
    skip_dedup: bool,
    /// Internal: this process is a child measuring one thing.
    child: Option<String>,
    dir: Option<PathBuf>,
}

fn args() -> Args {
    let mut a = Args {
        keys: vec![1_000_000, 10_000_000],
        segment: 500,
        batch: 500,
        size: 200,
        partitions: 3,
        records: 300_000,
        rounds: 3,
        replays: 0.3,
        prefill: 0,
        store_cache: idemgate::config::defaults::DEDUP_STORE_CACHE,
        skip_window: false,
        skip_dedup: false,
        child: None,
        dir: None,
    };
    let argv: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < argv.len() {
        let value = || argv.get(i + 1).cloned().expect("a value after the flag");
        let number = || value().parse::<usize>().expect("a number after the flag");
        match argv[i].as_str() {
            "--keys" => {
                a.keys = value()
                    .split(',')
                    .map(|n| n.trim().parse().expect("--keys: numbers, comma-separated"))
                    .collect();
                i += 1;
            }
            "--segment" => (a.segment, i) = (number(), i + 1),
            "--batch" => (a.batch, i) = (number(), i + 1),
            "--size" => (a.size, i) = (number(), i + 1),
            "--partitions" => (a.partitions, i) = (number(), i + 1),
            "--records" => (a.records, i) = (number(), i + 1),
            "--rounds" => (a.rounds, i) = (number(), i + 1),
            "--prefill" => (a.prefill, i) = (number(), i + 1),
            "--store-cache" => (a.store_cache, i) = (number(), i + 1),
            "--replays" => {
                a.replays = value().parse().expect("--replays: a fraction such as 0.3");
                i += 1;
            }
            "--skip-window" => a.skip_window = true,
            "--skip-dedup" => a.skip_dedup = true,
            "--child" => (a.child, i) = (Some(value()), i + 1),
            "--dir" => (a.dir, i) = (Some(PathBuf::from(value())), i + 1),
            "--json" => i += 1, // JsonOut reads it
            _ => {}             // cargo bench passes --bench
        }
        i += 1;
    }
    assert!(a.segment > 0 && a.batch > 0 && a.partitions > 0 && a.rounds > 0);
    a
}

// === The machine and the process ===

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let mem_kb = support::proc::kb_field(
        &std::fs::read_to_string("/proc/meminfo").unwrap_or_default(),
        "MemTotal",
    )
    .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{} cores (nproc), {model}, {:.0} GiB, Linux {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        mem_kb as f64 / (1024.0 * 1024.0),
        kernel.trim()
    )
}

/// Resident set size of this process, bytes.
fn rss() -> u64 {
    support::proc::status_bytes("self", "VmRSS")
}

/// Peak resident set size of this process, bytes.
fn rss_peak() -> u64 {
    support::proc::status_bytes("self", "VmHWM")
}

/// CPU seconds of this thread and of the whole process (sled's flusher included).
#[derive(Clone, Copy)]
struct Cpu {
    thread: f64,
    process: f64,
}

fn cpu() -> Cpu {
    Cpu {
        thread: support::proc::cpu_seconds("thread-self"),
        process: support::proc::cpu_seconds("self"),
    }
}

/// Apparent and allocated bytes of every file under `dir`.
fn dir_size(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut total = (0, 0);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return total;
    };
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            let (a, b) = dir_size(&entry.path());
            total = (total.0 + a, total.1 + b);
        } else {
            total = (total.0 + meta.len(), total.1 + meta.blocks() * 512);
        }
    }
    total
}

fn mib(bytes: f64) -> f64 {
    bytes / (1024.0 * 1024.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

// === Window: children ===

/// Keys as the filter makes them: uniform 128-bit hashes.
fn key(i: u64) -> Key {
    Key(xxhash_rust::xxh3::xxh3_128(&i.to_le_bytes()))
}

/// Keys above this are never committed ("new" keys for the check-miss figure).
const FRESH: u64 = 1 << 40;
/// Where `--prefill` keys are taken from.
const PREFILL: u64 = 1 << 41;

/// What a child reports: `@name=value` lines on stdout.
fn report(name: &str, value: f64) {
    println!("@{name}={value}");
}

fn open_store(a: &Args, dir: &Path) -> Store {
    let flush = idemgate::config::defaults::DEDUP_FLUSH_INTERVAL;
    Store::open_with(dir, flush, a.store_cache).expect("open the store")
}

fn open(a: &Args, dir: &Path, max_keys: usize) -> (Arc<Store>, Arc<Window>) {
    let store = Arc::new(open_store(a, dir));
    let window = Arc::new(Window::new(store.clone(), TTL, max_keys));
    (store, window)
}

/// Commits the keys `ids` names as the filter does for acknowledged batches:
/// per segment a claim, a check and an add per key, one commit.
fn commit_keys(window: &Arc<Window>, ids: std::ops::Range<u64>, segment: usize) {
    let mut entries = Vec::with_capacity(segment);
    let mut next = ids.start;
    let mut id = 0i64;
    while next < ids.end {
        let mut claim = Claim::new(window.clone());
        entries.clear();
        let count = (segment as u64).min(ids.end - next);
        for delta in 0..count {
            let k = key(next);
            next += 1;
            assert_eq!(window.check(k), Check::Claimed, "keys are distinct");
            claim.add(k);
            entries.push((k, delta as u32));
        }
        claim
            .commit(TOPIC, (id % 3) as i32, id * 1000, &entries)
            .expect("commit");
        id += 1;
    }
}

/// Commits `n` keys in segments, measures, flushes, restarts in process.
fn child_window(a: &Args, n: usize) {
    let dir = a.dir.clone().expect("--dir");
    let max_keys = n.max(1) * 2;
    let rss_start = rss();
    let (store, window) = open(a, &dir, max_keys);
    window.load().expect("load the empty window");
    let rss_before = rss();
    report("rss_open", (rss_before - rss_start) as f64);

    let started = Instant::now();
    commit_keys(&window, 0..n as u64, a.segment);
    let commit_s = started.elapsed().as_secs_f64();
    let rss_after = rss();
    report("commit_s", commit_s);
    report("rss_before", rss_before as f64);
    report("rss_after", rss_after as f64);
    report("rss_peak", rss_peak() as f64);
    report("memory_bytes", window.memory_bytes() as f64);
    report("len", window.len() as f64);

    // Checks of known keys (Seen), and of new keys (Claimed, then released
    // by the dropped claim, as a failed request does). Keys generated first.
    let sample = n.min(1_000_000);
    let seen: Vec<Key> = (0..sample as u64)
        .map(|i| key(i * (n as u64 / sample as u64)))
        .collect();
    let started = Instant::now();
    let mut hits = 0usize;
    for &k in &seen {
        hits += usize::from(matches!(window.check(k), Check::Seen(_)));
    }
    report(
        "check_seen_s",
        started.elapsed().as_secs_f64() / sample as f64,
    );
    assert_eq!(hits, sample, "every committed key is seen");
    let fresh: Vec<Key> = (0..sample as u64).map(|i| key(FRESH + i)).collect();
    let started = Instant::now();
    for chunk in fresh.chunks(a.segment) {
        let mut claim = Claim::new(window.clone());
        for &k in chunk {
            if window.check(k) == Check::Claimed {
                claim.add(k);
            }
        }
    }
    report(
        "check_new_s",
        started.elapsed().as_secs_f64() / sample as f64,
    );
    drop((seen, fresh));

    let started = Instant::now();
    store.flush_now().expect("flush");
    report("flush_s", started.elapsed().as_secs_f64());
    report("size_on_disk", store.size_on_disk() as f64);
    let (apparent, allocated) = dir_size(&dir);
    report("dir_apparent", apparent as f64);
    report("dir_allocated", allocated as f64);

    // Restart in process: everything dropped, then opened and loaded again.
    drop(window);
    let started = Instant::now();
    drop(store);
    report("close_s", started.elapsed().as_secs_f64());
    let started = Instant::now();
    let (store, window) = open(a, &dir, max_keys);
    report("reopen_s", started.elapsed().as_secs_f64());
    let started = Instant::now();
    let loaded = window.load().expect("load");
    report("reload_s", started.elapsed().as_secs_f64());
    report("reload_keys", loaded.keys as f64);
    drop((window, store));
}

/// What `load` spends reading sled: every segment read, nothing inserted.
fn child_scan(a: &Args) {
    let dir = a.dir.clone().expect("--dir");
    let store = open_store(a, &dir);
    let started = Instant::now();
    let (mut segments, mut bytes) = (0usize, 0usize);
    for item in store.segments_from(0) {
        let (_, value) = item.expect("a segment");
        segments += 1;
        bytes += value.len();
    }
    report("scan_s", started.elapsed().as_secs_f64());
    report("scan_segments", segments as f64);
    report("scan_bytes", bytes as f64);
}

/// A restarted proxy: a fresh process opens the store and loads the window.
fn child_load(a: &Args, n: usize) {
    let dir = a.dir.clone().expect("--dir");
    let rss_start = rss();
    let started = Instant::now();
    let (_store, window) = open(a, &dir, n.max(1) * 2);
    report("open_s", started.elapsed().as_secs_f64());
    let rss_open = rss();
    let started = Instant::now();
    let loaded = window.load().expect("load");
    report("load_s", started.elapsed().as_secs_f64());
    report("load_keys", loaded.keys as f64);
    report("load_segments", loaded.segments as f64);
    report("rss_start", rss_start as f64);
    report("rss_open", rss_open as f64);
    report("rss_loaded", rss() as f64);
    report("rss_peak", rss_peak() as f64);
    report("memory_bytes", window.memory_bytes() as f64);
}

/// The fixed part of a segment's encoding (window.rs, "Segment encoding").
const SEGMENT_HEAD: usize = 36;

/// The same segment writes as `child_window`, straight into sled: how much
/// of the RSS is sled's (its page cache holds what was written).
fn child_sled(a: &Args, n: usize) {
    let dir = a.dir.clone().expect("--dir");
    let store = open_store(a, &dir);
    let before = rss();
    // A segment: 36 B + topic + 20 B a key (window.rs, "Segment encoding").
    let mut value = vec![0u8; SEGMENT_HEAD + TOPIC.len() + 20 * a.segment];
    let (mut written, mut id, mut fill) = (0usize, 0u64, 0u64);
    while written < n {
        let count = a.segment.min(n - written);
        let len = SEGMENT_HEAD + TOPIC.len() + 20 * count;
        for chunk in value[..len].chunks_mut(16) {
            let k = key(fill).0.to_le_bytes();
            chunk.copy_from_slice(&k[..chunk.len()]);
            fill += 1;
        }
        store.put_segment(id, &value[..len]).expect("put");
        written += count;
        id += 1;
    }
    report("sled_rss", (rss() - before) as f64);
}

fn run_child(a: &Args, what: &str, n: usize, dir: &Path) -> HashMap<String, f64> {
    let out = Command::new(std::env::current_exe().expect("this binary"))
        .args(["--child", what, "--keys", &n.to_string()])
        .args(["--segment", &a.segment.to_string()])
        .args(["--store-cache", &a.store_cache.to_string()])
        .arg("--dir")
        .arg(dir)
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("run a child");
    assert!(out.status.success(), "child {what} {n} failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix('@'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.parse().unwrap_or(f64::NAN)))
        .collect()
}

struct WindowRow {
    keys: usize,
    w: HashMap<String, f64>,
    l: HashMap<String, f64>,
    sled_rss: f64,
}

fn measure_window(a: &Args, n: usize) -> WindowRow {
    let tmp = tempfile::tempdir().expect("a temp dir");
    let dir = tmp.path().join("store");
    let w = run_child(a, "window", n, &dir);
    let mut l = run_child(a, "load", n, &dir);
    l.extend(run_child(a, "scan", n, &dir));
    let sled_dir = tmp.path().join("sled-only");
    let s = run_child(a, "sled", n, &sled_dir);
    let row = WindowRow {
        keys: n,
        w,
        l,
        sled_rss: s["sled_rss"],
    };
    let per_m = n as f64 / 1e6;
    let g = |m: &HashMap<String, f64>, k: &str| m.get(k).copied().unwrap_or(f64::NAN);
    let rss_delta = g(&row.w, "rss_after") - g(&row.w, "rss_before");
    let maps = g(&row.w, "memory_bytes");
    println!(
        "window {n} keys: commit {:.2} s ({:.0} keys/s); RSS {:.1} -> {:.1} MiB (+{:.1} MiB, {:.1} B/key; peak {:.1} MiB); \
         sled-only writes +{:.1} MiB; memory_bytes {:.1} MiB ({:.1} B/key)",
        g(&row.w, "commit_s"),
        n as f64 / g(&row.w, "commit_s"),
        mib(g(&row.w, "rss_before")),
        mib(g(&row.w, "rss_after")),
        mib(rss_delta),
        rss_delta / n as f64,
        mib(g(&row.w, "rss_peak")),
        mib(row.sled_rss),
        mib(maps),
        maps / n as f64,
    );
    println!(
        "window {n} keys: check seen {:.0} ns, check new + release {:.0} ns; flush {:.3} s; \
         disk {:.1} MiB apparent / {:.1} MiB allocated ({:.1} B/key), sled size_on_disk {:.1} MiB",
        g(&row.w, "check_seen_s") * 1e9,
        g(&row.w, "check_new_s") * 1e9,
        g(&row.w, "flush_s"),
        mib(g(&row.w, "dir_apparent")),
        mib(g(&row.w, "dir_allocated")),
        g(&row.w, "dir_apparent") / n as f64,
        mib(g(&row.w, "size_on_disk")),
    );
    let target = 0.5 + 0.15 * per_m;
    println!(
        "window {n} keys: restart in process: close {:.3} s, open {:.3} s, load {:.3} s ({:.0} keys); \
         fresh process: open {:.3} s, load {:.3} s ({:.0} keys, {:.0} segments; reading them alone \
         {:.3} s), RSS {:.1} MiB loaded (+{:.1} MiB over the open store); target <= {:.2} s",
        g(&row.w, "close_s"),
        g(&row.w, "reopen_s"),
        g(&row.w, "reload_s"),
        g(&row.w, "reload_keys"),
        g(&row.l, "open_s"),
        g(&row.l, "load_s"),
        g(&row.l, "load_keys"),
        g(&row.l, "load_segments"),
        g(&row.l, "scan_s"),
        mib(g(&row.l, "rss_loaded")),
        mib(g(&row.l, "rss_loaded") - g(&row.l, "rss_open")),
        target,
    );
    row
}

// === Dedup path ===

/// Record `g`: a 12-byte key and a JSON-ish value of exactly `size` bytes,
/// the same bytes every time it is made (a replay is the same record).
fn record(g: u64, size: usize, index: usize) -> Record {
    let value = common::json_value(g, size);
    Record {
        attributes: 0,
        timestamp_delta: index as i64,
        offset_delta: index as i32,
        key: Some(Bytes::from(format!("k-{:010}", g % 10_000_000_000))),
        value: Some(Bytes::from(value)),
        headers: Vec::new(),
    }
}

/// One Produce request and the broker's answer to it.
struct Exchange {
    frame: BytesMut,
    response: Bytes,
    bytes: usize,
}

/// Requests carrying the records `ids` yields, `batch` per partition,
/// `partitions` partitions per request.
fn exchanges(a: &Args, codec: Codec, ids: &[u64]) -> Vec<Exchange> {
    let per_request = a.batch * a.partitions;
    let mut out = Vec::new();
    let mut base_offset = 0i64;
    for (n, chunk) in ids.chunks(per_request).enumerate() {
        let mut partitions = Vec::new();
        let mut answers = Vec::new();
        for (p, batch_ids) in chunk.chunks(a.batch).enumerate() {
            let records: Vec<Record> = batch_ids
                .iter()
                .enumerate()
                .map(|(i, &g)| record(g, a.size, i))
                .collect();
            let builder = BatchBuilder {
                base_timestamp: 1_760_000_000_000,
                ..BatchBuilder::new(codec)
            };
            let bytes = builder.build(&records).expect("build a batch");
            partitions.push(
                PartitionProduceData::default()
                    .with_index(p as i32)
                    .with_records(Some(bytes)),
            );
            answers.push(
                PartitionProduceResponse::default()
                    .with_index(p as i32)
                    .with_error_code(0)
                    .with_base_offset(base_offset)
                    .with_log_append_time_ms(-1)
                    .with_log_start_offset(0),
            );
            base_offset += batch_ids.len() as i64;
        }
        let name = TopicName(StrBytes::from_static_str(TOPIC));
        let req = ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(30_000)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(name.clone())
                .with_partition_data(partitions)]);
        let frame = message::encode_request(ApiKey::Produce, VERSION, n as i32, &req)
            .expect("encode a request");
        let resp = ProduceResponse::default().with_responses(vec![TopicProduceResponse::default()
            .with_name(name)
            .with_partition_responses(answers)]);
        let response = message::encode_local_response(
            ApiKey::Produce,
            VERSION,
            ApiKey::Produce.response_header_version(VERSION),
            n as i32,
            &resp,
        )
        .expect("encode a response");
        out.push(Exchange {
            bytes: frame.len(),
            frame: BytesMut::from(&frame[..]),
            response,
        });
    }
    out
}

/// The exchanges of one codec: unique records, records acknowledged before
/// (to prime the window), and a mix of new records and those replays.
struct Load {
    codec: Codec,
    unique: Vec<Exchange>,
    prime: Vec<Exchange>,
    mixed: Vec<Exchange>,
    replayed: usize,
}

fn load(a: &Args, codec: Codec) -> Load {
    let n = a.records as u64;
    let unique: Vec<u64> = (0..n).collect();
    let mut rng = support::rng::SplitMix(7);
    let mut mixed = Vec::with_capacity(a.records);
    let mut replayed = 0u64;
    for i in 0..n {
        if (rng.next() % 1_000_000) as f64 / 1e6 < a.replays {
            mixed.push(1_000_000_000 + replayed);
            replayed += 1;
        } else {
            mixed.push(2_000_000_000 + i);
        }
    }
    let prime: Vec<u64> = (0..replayed).map(|r| 1_000_000_000 + r).collect();
    Load {
        codec,
        unique: exchanges(a, codec, &unique),
        prime: exchanges(a, codec, &prime),
        mixed: exchanges(a, codec, &mixed),
        replayed: replayed as usize,
    }
}

#[derive(Clone, Copy)]
enum Case {
    /// No duplicate, tag header written: every batch rewritten.
    NewTagged,
    /// No duplicate, tag = false: the original bytes go on.
    NewUntagged,
    /// Replays dropped, the rest tagged.
    ReplaysTagged,
    /// Replays dropped, no tag.
    ReplaysUntagged,
}

impl Case {
    const ALL: [Case; 4] = [
        Case::NewTagged,
        Case::NewUntagged,
        Case::ReplaysTagged,
        Case::ReplaysUntagged,
    ];

    fn name(self) -> &'static str {
        match self {
            Case::NewTagged => "new, tag=true",
            Case::NewUntagged => "new, tag=false",
            Case::ReplaysTagged => "replays, tag=true",
            Case::ReplaysUntagged => "replays, tag=false",
        }
    }

    fn tag(self) -> bool {
        matches!(self, Case::NewTagged | Case::ReplaysTagged)
    }

    fn replays(self) -> bool {
        matches!(self, Case::ReplaysTagged | Case::ReplaysUntagged)
    }
}

#[derive(Default, Clone, Copy)]
struct Tally {
    unchanged: usize,
    rewritten: usize,
    answered: usize,
    forwarded_bytes: usize,
}

/// Every exchange through the filter, as the pipeline drives it.
async fn drive(dedup: &ProduceDedup, exchanges: &[Exchange], timers: &mut [Duration; 2]) -> Tally {
    let identity = Identity::from_client_id("connector-producer-bench-0");
    let mut session = Session::default();
    let mut tally = Tally::default();
    for x in exchanges {
        // The filter takes the frame as the pipeline owns it (outside the
        // timing: the pipeline has it without a copy).
        let mut frame = x.frame.clone();
        let t0 = Instant::now();
        let head = RequestHead::peek(&frame).expect("a request head");
        let (acks, _) =
            message::produce_acks_and_timeout(&frame, head.body_offset, head.api_version)
                .expect("acks");
        let outcome = dedup
            .on_request(&mut session, &identity, &head, &mut frame, acks)
            .await
            .expect("on_request");
        let t1 = Instant::now();
        timers[0] += t1 - t0;
        let plan = match outcome {
            Outcome::Unchanged(plan) => {
                tally.unchanged += 1;
                tally.forwarded_bytes += frame.len();
                plan
            }
            Outcome::Rewritten(frame, plan) => {
                tally.rewritten += 1;
                tally.forwarded_bytes += frame.len();
                Some(plan)
            }
            Outcome::Answer(_) => {
                tally.answered += 1;
                None
            }
        };
        if let Some(mut plan) = plan {
            let t2 = Instant::now();
            let mut reply = idemgate::message::ResponseFrame::new(x.response.clone());
            dedup
                .on_response(&mut plan, VERSION, &mut reply)
                .expect("on_response");
            reply.into_bytes().expect("encode");
            drop(plan);
            timers[1] += t2.elapsed();
        }
    }
    tally
}

struct Run {
    wall: f64,
    thread_cpu: f64,
    process_cpu: f64,
    request_s: f64,
    response_s: f64,
    tally: Tally,
    keys: usize,
}

fn run_case(a: &Args, load: &Load, case: Case) -> Run {
    let tmp = tempfile::tempdir().expect("a temp dir");
    let text = format!(
        "[store]\ndir = {:?}\n[dedup]\nmax_keys = {}\nstore_cache = {}\n\
         [[dedup.rules]]\ntopics = \"*\"\nkey = \"content\"\nmode = \"drop\"\ntag = {}\n",
        tmp.path().join("store").display().to_string(),
        a.records * 4 + a.prefill,
        a.store_cache,
        case.tag()
    );
    let config = Arc::new(Config::parse(&text).expect("a valid config"));
    let store = Arc::new(
        Store::open_with(
            &config.store.dir,
            config.dedup.flush_interval,
            config.dedup.store_cache,
        )
        .expect("open the store"),
    );
    let window = Arc::new(Window::new(
        store.clone(),
        config.dedup.window,
        config.dedup.max_keys,
    ));
    window.load().expect("load");
    // Keys nobody sends again: a window as full as a busy proxy's.
    commit_keys(&window, PREFILL..PREFILL + a.prefill as u64, a.segment);
    let dedup = ProduceDedup::new(config, window.clone(), Arc::new(Metrics::new()));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    let measured = if case.replays() {
        let mut t = [Duration::ZERO; 2];
        rt.block_on(drive(&dedup, &load.prime, &mut t));
        assert_eq!(window.len(), a.prefill + load.replayed, "primed");
        &load.mixed
    } else {
        &load.unique
    };
    let mut timers = [Duration::ZERO; 2];
    let before = cpu();
    let started = Instant::now();
    let tally = rt.block_on(drive(&dedup, measured, &mut timers));
    let wall = started.elapsed().as_secs_f64();
    let after = cpu();
    let keys = window.len();
    drop(dedup);
    drop(window);
    drop(store);
    Run {
        wall,
        thread_cpu: after.thread - before.thread,
        process_cpu: after.process - before.process,
        request_s: timers[0].as_secs_f64(),
        response_s: timers[1].as_secs_f64(),
        tally,
        keys,
    }
}

struct DedupRow {
    codec: Codec,
    case: Case,
    wall_rate: f64,
    cpu_rate: f64,
    request_share: f64,
    mb_in: f64,
    mb_out: f64,
}

fn measure_dedup(a: &Args, load: &Load) -> Vec<DedupRow> {
    let records = a.records as f64;
    let in_bytes: usize = load.unique.iter().map(|x| x.bytes).sum();
    println!(
        "dedup {}: {} requests of {} partitions x {} records x {} B, {:.1} MB of frames ({:.0} B a record on the wire), {} replays primed",
        load.codec,
        load.unique.len(),
        a.partitions,
        a.batch,
        a.size,
        in_bytes as f64 / 1e6,
        in_bytes as f64 / records,
        load.replayed
    );
    // Warm-up, not counted: the first run in a process pays for page faults
    // and the allocator's growth.
    run_case(a, load, Case::NewTagged);
    let mut rows = Vec::new();
    for case in Case::ALL {
        let mut wall = Vec::new();
        let mut per_cpu = Vec::new();
        let mut share = Vec::new();
        let mut last = None;
        for round in 0..a.rounds {
            let r = run_case(a, load, case);
            println!(
                "dedup {:5} {:19} round {round}: {:>9.0} rec/s wall, {:>9.0} rec per thread-CPU-s \
                 (process CPU {:.2} s for {:.2} s wall); on_request {:.3} s, on_response {:.3} s; \
                 {} unchanged / {} rewritten / {} answered; {} keys in the window",
                load.codec.to_string(),
                case.name(),
                records / r.wall,
                records / r.thread_cpu.max(0.01),
                r.process_cpu,
                r.wall,
                r.request_s,
                r.response_s,
                r.tally.unchanged,
                r.tally.rewritten,
                r.tally.answered,
                r.keys,
            );
            // New records and primed replays: every distinct record, once.
            assert_eq!(
                r.keys,
                a.prefill + a.records,
                "every distinct record's key committed"
            );
            wall.push(records / r.wall);
            per_cpu.push(records / r.thread_cpu.max(0.01));
            share.push(r.request_s / (r.request_s + r.response_s));
            last = Some(r);
        }
        let last = last.expect("one round at least");
        let (measured_in, out) = {
            let xs = if case.replays() {
                &load.mixed
            } else {
                &load.unique
            };
            (
                xs.iter().map(|x| x.bytes).sum::<usize>(),
                last.tally.forwarded_bytes,
            )
        };
        rows.push(DedupRow {
            codec: load.codec,
            case,
            wall_rate: median(wall),
            cpu_rate: median(per_cpu),
            request_share: median(share),
            mb_in: measured_in as f64 / 1e6,
            mb_out: out as f64 / 1e6,
        });
    }
    rows
}

fn main() {
    let a = args();
    if let Some(child) = a.child.clone() {
        let n = a.keys[0];
        match child.as_str() {
            "window" => child_window(&a, n),
            "load" => child_load(&a, n),
            "sled" => child_sled(&a, n),
            "scan" => child_scan(&a),
            other => panic!("unknown child {other}"),
        }
        return;
    }
    let mut json = common::JsonOut::from_args("window");
    let command: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    println!("# window + dedup path, in process (benches/window.rs)");
    println!(
        "# command: cargo bench --bench window -- {}",
        command.join(" ")
    );
    println!(
        "# machine: {}; shared with other work (load average {} at the start)",
        machine(),
        support::proc::loadavg()
    );
    println!(
        "# window: keys {:?} in segments of {}, sled cache {:.0} MiB; dedup: {} records a case, {} partitions x {} records x {} B a request, {:.0}% replays, window prefilled with {} keys, {} round(s), medians",
        a.keys,
        a.segment,
        mib(a.store_cache as f64),
        a.records,
        a.partitions,
        a.batch,
        a.size,
        a.replays * 100.0,
        a.prefill,
        a.rounds
    );

    let mut window_rows = Vec::new();
    if !a.skip_window {
        for &n in &a.keys {
            window_rows.push(measure_window(&a, n));
        }
    }
    let mut dedup_rows = Vec::new();
    if !a.skip_dedup {
        for codec in [Codec::None, Codec::Lz4, Codec::Zstd] {
            let load = load(&a, codec);
            dedup_rows.extend(measure_dedup(&a, &load));
        }
    }

    if !window_rows.is_empty() {
        let g = |m: &HashMap<String, f64>, k: &str| m.get(k).copied().unwrap_or(f64::NAN);
        println!();
        println!(
            "| keys | RSS added by commits | sled-only writes, RSS | memory_bytes (maps) | \
             RSS of a restarted process | disk (store dir) | sled size_on_disk |"
        );
        println!("|---|---|---|---|---|---|---|");
        for r in &window_rows {
            let n = r.keys as f64;
            let added = g(&r.w, "rss_after") - g(&r.w, "rss_before");
            let loaded = g(&r.l, "rss_loaded") - g(&r.l, "rss_start");
            let maps = g(&r.w, "memory_bytes");
            let disk = g(&r.w, "dir_apparent");
            println!(
                "| {} | {:.1} MiB ({:.0} B/key) | {:.1} MiB | {:.1} MiB ({:.0} B/key) | \
                 {:.1} MiB ({:.0} B/key) | {:.1} MiB ({:.1} B/key) | {:.1} MiB |",
                r.keys,
                mib(added),
                added / n,
                mib(r.sled_rss),
                mib(maps),
                maps / n,
                mib(loaded),
                loaded / n,
                mib(disk),
                disk / n,
                mib(g(&r.w, "size_on_disk")),
            );
            json.write(serde_json::json!({
                "kind": "window",
                "keys": r.keys,
                "segment": a.segment,
                "store_cache": a.store_cache,
                "rss_added_bytes": added,
                "memory_bytes": maps,
                "sled_only_rss_bytes": r.sled_rss,
                "rss_restarted_bytes": loaded,
                "disk_bytes": disk,
                "size_on_disk_bytes": g(&r.w, "size_on_disk"),
                "commit_keys_per_sec": n / g(&r.w, "commit_s"),
                "check_seen_ns": g(&r.w, "check_seen_s") * 1e9,
                "check_new_ns": g(&r.w, "check_new_s") * 1e9,
                // A fresh process: what a restarted proxy waits for.
                "restart_open_s": g(&r.l, "open_s"),
                "restart_load_s": g(&r.l, "load_s"),
                "restart_scan_s": g(&r.l, "scan_s"),
                "in_process_open_s": g(&r.w, "reopen_s"),
                "in_process_load_s": g(&r.w, "reload_s"),
            }));
        }
        println!();
        println!(
            "| keys | commit keys/s | check, seen key | check, new key + release | \
             restart: open + load (reading sled alone) | in process: open + load | target |"
        );
        println!("|---|---|---|---|---|---|---|");
        for r in &window_rows {
            let n = r.keys as f64;
            println!(
                "| {} | {:.0} | {:.0} ns | {:.0} ns | {:.3} + {:.3} s ({:.3} s) | {:.3} + {:.3} s | {:.2} s |",
                r.keys,
                n / g(&r.w, "commit_s"),
                g(&r.w, "check_seen_s") * 1e9,
                g(&r.w, "check_new_s") * 1e9,
                g(&r.l, "open_s"),
                g(&r.l, "load_s"),
                g(&r.l, "scan_s"),
                g(&r.w, "reopen_s"),
                g(&r.w, "reload_s"),
                0.5 + 0.15 * n / 1e6,
            );
        }
    }
    if !dedup_rows.is_empty() {
        println!();
        println!("| codec | case | rec/s (wall, 1 thread) | rec per thread-CPU-s | on_request share | MB in → forwarded |");
        println!("|---|---|---|---|---|---|");
        for r in &dedup_rows {
            println!(
                "| {} | {} | {:.0} | {:.0} | {:.0} % | {:.1} → {:.1} |",
                r.codec,
                r.case.name(),
                r.wall_rate,
                r.cpu_rate,
                r.request_share * 100.0,
                r.mb_in,
                r.mb_out,
            );
            json.write(serde_json::json!({
                "kind": "dedup_path",
                "codec": r.codec.to_string(),
                "case": r.case.name(),
                "tag": r.case.tag(),
                "replays": r.case.replays().then_some(a.replays),
                "records": a.records,
                "size": a.size,
                "batch": a.batch,
                "partitions": a.partitions,
                "prefill": a.prefill,
                "rounds": a.rounds,
                "records_per_sec": r.wall_rate,
                "records_per_thread_cpu_s": r.cpu_rate,
                "on_request_share": r.request_share,
                "mb_in": r.mb_in,
                "mb_forwarded": r.mb_out,
            }));
        }
    }
    println!();
    println!("# load average at the end: {}", support::proc::loadavg());
}
