//! The soak: mixed traffic through the `idemgate` binary for minutes, with
//! its resident memory, open file descriptors and store size sampled all
//! along. Once the window is full they must stay flat; at the end every
//! record a source task sent is in the log exactly once.
//!
//! ```text
//! cargo test --test proto soak::          # scripts/test: 5 minutes
//! scripts/soak --minutes 30                # on demand
//! ```
//!
//! The traffic, against a real tansu:
//! - three source tasks (`connector-producer-orders-<n>`) stream records at a
//!   paced rate; every 20 s one of them "crashes": its producer goes (its
//!   connections with it), a new one replays the last 2,000 records it sent
//!   and goes on, as Connect replays what a task wrote since its last offset
//!   commit. The proxy drops the replays (`mode = "drop"`).
//! - a backfill connector (`connector-producer-backfill-0`) pushes as fast as
//!   it can against a 256 KiB/s produce quota;
//! - a sink (`connector-consumer-pg-sink-0`, group `connect-pg-sink`) reads
//!   the orders topic through a fetch rule, and is recreated every 45 s.
//!
//! `dedup.max_keys` is small, so the window fills in the first seconds and
//! keeps evicting from then on: the steady state is reached early.
//!
//! What "flat" means, over the samples after the warm-up (the window full,
//! and at least a fifth of the run gone): resident memory at most 32 MiB or
//! 25 % above its level at the end of the warm-up, whichever is more (the
//! allocator keeps freed pages; a leak of a few hundred bytes a record
//! would pass it within the first minutes); open descriptors at most 32
//! above (connections come and go with the crashes and the sink); the
//! store directory no higher in the second half of those samples than in
//! the first, but for a quarter of it or 1 MiB, whichever is more (sled
//! appends and reclaims in segments: measured here, it swings between 3.6
//! and 6 MiB at 20,000 keys): a store that keeps growing fails it. Every
//! sample is printed, so a creeping figure can be read even when it stays
//! inside the bound.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support;
use crate::support::{client_config, create_topic, http_get, metric_value, ProxyProcess, Tansu};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset};

const ORDERS: &str = "soak-orders";
const BACKFILL: &str = "soak-backfill";
const TASKS: usize = 3;
/// One partition per task (see [`send`]).
const PARTITIONS: i32 = TASKS as i32;
/// Records a second, all source tasks together.
const RATE: u64 = 1500;
/// Records a crashed task sends again.
const REPLAY: usize = 2000;
const MAX_KEYS: u64 = 20_000;

/// `SOAK_MINUTES`, else 5.
fn minutes() -> f64 {
    std::env::var("SOAK_MINUTES")
        .ok()
        .map(|m| m.parse().expect("SOAK_MINUTES: a number of minutes"))
        .unwrap_or(5.0)
}

fn config(upstream: &str, store: &Path) -> (String, u16, u16) {
    let rules = format!(
        "[dedup]\nmax_keys = {MAX_KEYS}\n\
         [[dedup.rules]]\ntopics = \"{ORDERS}\"\nkey = \"content\"\nmode = \"drop\"\ndirection = \"both\"\n\
         [[quotas]]\nconnector = \"backfill\"\nproduce_bytes_per_sec = \"256KiB\"\n"
    );
    support::Proxy::config_text(upstream, store, "", "", &rules)
}

/// One look at the proxy process.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Duration,
    rss: u64,
    fds: u64,
    store: u64,
    window_keys: f64,
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() {
            dir_bytes(&entry.path())
        } else {
            meta.len()
        };
    }
    total
}

/// Delivery reports of one task's producers: the ids acknowledged, and the
/// ids whose delivery failed (in flight when their producer went).
#[derive(Clone, Default)]
struct Acks {
    acked: Arc<Mutex<HashSet<u64>>>,
    failed: Arc<Mutex<Vec<u64>>>,
}

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = Box<u64>;
    fn delivery(&self, r: &DeliveryResult<'_>, id: Box<u64>) {
        match r {
            Ok(_) => {
                self.acked.lock().unwrap().insert(*id);
            }
            Err(_) => self.failed.lock().unwrap().push(*id),
        }
    }
}

fn producer(
    bootstrap: &str,
    client_id: &str,
    settings: &[(&str, &str)],
    acks: &Acks,
) -> ThreadedProducer<Acks> {
    let mut c = client_config(bootstrap);
    c.set("client.id", client_id)
        .set("acks", "all")
        .set("linger.ms", "5");
    for (k, v) in settings {
        c.set(*k, *v);
    }
    c.create_with_context(acks.clone()).unwrap()
}

/// Record `id`'s value: its id and some text (a replay is byte-identical).
fn value(id: u64) -> String {
    format!("{{\"order\":{id},\"note\":\"soak record {id:012} of the orders stream\"}}")
}

/// Task `task` writes partition `task`, as a source task whose records are
/// keyed by its own source partition: a replay's first copies then sit in
/// order in one partition, so the proxy can answer the replays with their
/// true offsets (librdkafka numbers a batch's records from one base offset;
/// replays scattered between other writers' records would be forwarded,
/// `fail_open{reason="unnumbered"}`).
fn send(p: &ThreadedProducer<Acks>, task: usize, id: u64) {
    let v = value(id);
    let key = format!("k{}", id % 1024);
    let mut record = BaseRecord::with_opaque_to(ORDERS, Box::new(id))
        .partition(task as i32)
        .key(&key)
        .payload(&v);
    loop {
        match p.send(record) {
            Ok(()) => return,
            Err((_, r)) => {
                record = r;
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// A source task: ids `task, task + TASKS, …` at its share of the rate;
/// every `crash_every` it drops its producer and, with a new one, sends again
/// everything since its last offset commit: from the first id not
/// acknowledged (a task commits only what was acknowledged), and at least
/// the last [`REPLAY`] ids. Returns every id it sent, and how many it sent
/// again.
fn source_task(
    bootstrap: String,
    task: usize,
    crash_every: Duration,
    stop: Arc<AtomicBool>,
    acks: Acks,
) -> (Vec<u64>, usize) {
    let client_id = format!("connector-producer-orders-{task}");
    let mut p = producer(
        &bootstrap,
        &client_id,
        &[("compression.type", "lz4")],
        &acks,
    );
    let per_sec = RATE / TASKS as u64;
    let started = Instant::now();
    // Crashes are staggered between tasks.
    let mut next_crash = started + crash_every + crash_every * task as u32 / TASKS as u32;
    let mut sent: Vec<u64> = Vec::new();
    // Every id before `committed` in `sent` is acknowledged.
    let mut committed = 0;
    let mut n: u64 = 0;
    let mut replayed = 0;
    while !stop.load(Relaxed) {
        let due = started + Duration::from_secs_f64(n as f64 / per_sec as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let id = n * TASKS as u64 + task as u64;
        send(&p, task, id);
        sent.push(id);
        n += 1;
        if Instant::now() >= next_crash {
            // The crash: whatever was in flight is lost with the producer,
            // as a killed worker's would be; the replay covers it.
            drop(p);
            {
                let acked = acks.acked.lock().unwrap();
                while committed < sent.len() && acked.contains(&sent[committed]) {
                    committed += 1;
                }
            }
            p = producer(
                &bootstrap,
                &client_id,
                &[("compression.type", "lz4")],
                &acks,
            );
            for &id in &sent[committed.min(sent.len().saturating_sub(REPLAY))..] {
                send(&p, task, id);
                replayed += 1;
            }
            next_crash += crash_every;
        }
    }
    p.flush(Duration::from_secs(30)).unwrap();
    (sent, replayed)
}

/// The backfill: 4 KiB records as fast as the quota lets them through.
/// Returns (records acknowledged, seconds).
fn backfill(bootstrap: String, stop: Arc<AtomicBool>) -> (u64, f64) {
    let acks = Acks::default();
    // Uncompressed (the quota counts request bytes), in 64 KiB batches: a
    // quota holds one request per quota.max_throttle at the least
    // (docs/operations.md), so batches must stay under 256 KiB/s × 2 s.
    // A queue of 1 MiB: a full one would take minutes to drain at the
    // quota, and a flush at the end need not wait for it.
    let settings = [
        ("compression.type", "none"),
        ("batch.size", "65536"),
        ("queue.buffering.max.kbytes", "1024"),
    ];
    let p = producer(
        &bootstrap,
        "connector-producer-backfill-0",
        &settings,
        &acks,
    );
    let started = Instant::now();
    let payload = vec![b'b'; 4096];
    let mut id = 0u64;
    while !stop.load(Relaxed) {
        let record =
            BaseRecord::<(), _, _>::with_opaque_to(BACKFILL, Box::new(id)).payload(&payload);
        if p.send(record).is_err() {
            // The queue is full: the quota is holding the producer back.
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        id += 1;
    }
    // What is still queued goes with the producer: only acknowledged
    // records are counted.
    let _ = p.flush(Duration::from_secs(5));
    drop(p);
    let n = acks.acked.lock().unwrap().len() as u64;
    (n, started.elapsed().as_secs_f64())
}

/// The sink: reads the orders topic in group connect-pg-sink, recreated
/// every `restart_every`. Returns the records it read.
fn sink(bootstrap: String, restart_every: Duration, stop: Arc<AtomicBool>) -> u64 {
    let mut read = 0u64;
    while !stop.load(Relaxed) {
        let consumer: BaseConsumer = client_config(&bootstrap)
            .set("client.id", "connector-consumer-pg-sink-0")
            .set("group.id", "connect-pg-sink")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "6000")
            .create()
            .unwrap();
        consumer.subscribe(&[ORDERS]).unwrap();
        let until = Instant::now() + restart_every;
        while Instant::now() < until && !stop.load(Relaxed) {
            if let Some(Ok(_)) = consumer.poll(Duration::from_millis(200)) {
                read += 1;
            }
        }
    }
    read
}

/// Every id in the orders topic, read straight from the broker: id → copies.
/// Once every client is done, an end marker goes to each partition, and each
/// is read up to it: a copy arriving late is counted, where a quiet
/// interval would have ended the read before it.
fn log_ids(broker: &str) -> HashMap<u64, usize> {
    let marker: rdkafka::producer::BaseProducer = client_config(broker).create().unwrap();
    for p in 0..PARTITIONS {
        marker
            .send(
                BaseRecord::<str, str>::to(ORDERS)
                    .partition(p)
                    .key("end")
                    .payload("end"),
            )
            .unwrap_or_else(|(e, _)| panic!("end marker for partition {p}: {e}"));
    }
    assert_eq!(
        marker
            .flush(Duration::from_secs(60))
            .map_err(|e| e.to_string()),
        Ok(()),
        "end markers written"
    );
    drop(marker);
    let mut config = client_config(broker);
    config
        .set("group.id", "soak-check")
        .set("enable.auto.commit", "false");
    let consumer = support::assign_all(&config, ORDERS, PARTITIONS, Offset::Beginning);
    let mut ids: HashMap<u64, usize> = HashMap::new();
    let mut ended = HashSet::new();
    let start = Instant::now();
    while ended.len() < PARTITIONS as usize {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "end markers of {ended:?} only, after 300 s"
        );
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                if m.key() == Some(b"end".as_slice()) {
                    ended.insert(m.partition());
                    continue;
                }
                let v = std::str::from_utf8(m.payload().unwrap()).unwrap();
                let id: u64 = v["{\"order\":".len()..v.find(',').unwrap()]
                    .parse()
                    .unwrap();
                *ids.entry(id).or_default() += 1;
            }
            Some(Err(e)) => panic!("reading the log: {e}"),
            None => {}
        }
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_descriptors_and_store_stay_flat_under_mixed_traffic() {
    let run = Duration::from_secs_f64(minutes() * 60.0);
    let broker = Tansu::start();
    create_topic(&broker.addr, ORDERS, PARTITIONS).await;
    create_topic(&broker.addr, BACKFILL, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let (text, bootstrap, admin) = config(&broker.addr, &store);
    let path = dir.path().join("idemgate.toml");
    std::fs::write(&path, text).unwrap();
    let proxy = ProxyProcess::start(&path, bootstrap, admin).await;
    let pid = proxy.pid();

    let stop = Arc::new(AtomicBool::new(false));
    let task_acks: Vec<Acks> = (0..TASKS).map(|_| Acks::default()).collect();
    let tasks: Vec<_> = task_acks
        .iter()
        .enumerate()
        .map(|(task, acks)| {
            let (b, s, a) = (proxy.bootstrap.clone(), stop.clone(), acks.clone());
            std::thread::spawn(move || source_task(b, task, Duration::from_secs(20), s, a))
        })
        .collect();
    let backfilled = {
        let (b, s) = (proxy.bootstrap.clone(), stop.clone());
        std::thread::spawn(move || backfill(b, s))
    };
    let sunk = {
        let (b, s) = (proxy.bootstrap.clone(), stop.clone());
        std::thread::spawn(move || sink(b, Duration::from_secs(45), s))
    };

    let started = Instant::now();
    let mut samples: Vec<Sample> = Vec::new();
    while started.elapsed() < run {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (status, metrics) = http_get(proxy.admin, "/metrics").await;
        assert_eq!(status, 200);
        let s = Sample {
            at: started.elapsed(),
            rss: support::proc::status_bytes(pid, "VmRSS"),
            fds: support::proc::open_fds(pid),
            store: dir_bytes(&store),
            window_keys: metric_value(&metrics, "idemgate_window_keys"),
        };
        eprintln!(
            "soak {:>6.1} s  rss {:>7.1} MiB  fds {:>4}  store {:>7.1} MiB  window keys {:>7}",
            s.at.as_secs_f64(),
            s.rss as f64 / 1048576.0,
            s.fds,
            s.store as f64 / 1048576.0,
            s.window_keys
        );
        samples.push(s);
    }
    stop.store(true, Relaxed);
    let (sent, replayed): (Vec<Vec<u64>>, Vec<usize>) =
        tasks.into_iter().map(|t| t.join().unwrap()).unzip();
    let (backfilled, backfill_secs) = backfilled.join().unwrap();
    let sunk = sunk.join().unwrap();
    let (_, metrics) = http_get(proxy.admin, "/metrics").await;

    // Flat once the window is full and a fifth of the run is gone.
    let warm = samples
        .iter()
        .position(|s| s.window_keys >= MAX_KEYS as f64 * 0.9 && s.at >= run / 5)
        .expect("the window filled");
    let base = samples[warm];
    let after = &samples[warm..];
    assert!(
        after.len() >= 10,
        "too few samples after the warm-up ({}): run longer",
        after.len()
    );
    let rss_bound = base.rss + (base.rss / 4).max(32 << 20);
    let peak = after.iter().map(|s| s.rss).max().unwrap();
    assert!(
        peak <= rss_bound,
        "resident memory grew from {} to {} MiB after the window filled",
        base.rss >> 20,
        peak >> 20
    );
    let fds = after.iter().map(|s| s.fds).max().unwrap();
    assert!(
        fds <= base.fds + 32,
        "open descriptors grew from {} to {fds}",
        base.fds
    );
    // The store: sled appends and reclaims in segments, so its size steps;
    // a store that keeps growing (keys or sequence state never removed)
    // rises from the first half of the flat part to the second, where a
    // bounded one only steps around one level.
    let (first, second) = after.split_at(after.len() / 2);
    let first_peak = first.iter().map(|s| s.store).max().unwrap();
    let second_peak = second.iter().map(|s| s.store).max().unwrap();
    let step = (first_peak / 4).max(1 << 20);
    assert!(
        second_peak <= first_peak + step,
        "the store kept growing: {} bytes at the end of the warm-up, peak {first_peak} in the \
         first half after it, {second_peak} in the second",
        base.store
    );
    // Eviction runs within a second of going past max_keys: a second's
    // traffic (and a replay) over it at most.
    let keys = after.iter().map(|s| s.window_keys).fold(0.0, f64::max);
    assert!(
        keys <= (MAX_KEYS + RATE + REPLAY as u64) as f64,
        "the window held {keys} keys, over dedup.max_keys ({MAX_KEYS}) and a second of traffic"
    );

    // Nothing lost, nothing written twice: each id a task sent is in the log
    // once, though the crashes sent thousands again.
    let distinct: HashSet<u64> = sent.iter().flatten().copied().collect();
    // A record in flight when its producer went may have reached the log
    // with its acknowledgement lost; its replay is then a second copy (the
    // proxy never drops against a key whose outcome it does not know).
    let in_flight: HashSet<u64> = task_acks
        .iter()
        .flat_map(|a| a.failed.lock().unwrap().clone())
        .collect();
    let acked: HashSet<u64> = task_acks
        .iter()
        .flat_map(|a| a.acked.lock().unwrap().clone())
        .collect();
    let failed = in_flight.len();
    let unacked = distinct.iter().filter(|id| !acked.contains(id)).count();
    assert_eq!(unacked, 0, "ids never acknowledged, replays included");
    let log = log_ids(&broker.addr);
    let missing: Vec<u64> = distinct
        .iter()
        .filter(|id| !log.contains_key(id))
        .copied()
        .take(10)
        .collect();
    assert!(
        missing.is_empty(),
        "ids sent and not in the log (first 10): {missing:?}; {failed} delivery failures"
    );
    let unexplained: Vec<(u64, usize)> = log
        .iter()
        .filter(|(id, &n)| n > 1 && !in_flight.contains(id))
        .map(|(&id, &n)| (id, n))
        .take(10)
        .collect();
    assert!(
        unexplained.is_empty(),
        "written twice though never in flight at a crash (first 10): {unexplained:?}"
    );
    let doubled = log.values().filter(|&&n| n > 1).count();

    let dropped = metric_value(
        &metrics,
        &format!(
            "idemgate_duplicates_dropped_total{{connector=\"orders\",topic=\"{ORDERS}\",direction=\"produce\"}}"
        ),
    );
    eprintln!(
        "soak: {} ids sent, {} sent again after crashes, {dropped} replays dropped, \
         {failed} in flight at a crash, {doubled} of them in the log twice, \
         {backfilled} backfill records, {sunk} records read by the sink",
        distinct.len(),
        replayed.iter().sum::<usize>()
    );
    assert!(
        dropped > 0.0,
        "the crashes' replays were dropped: {metrics}"
    );
    // The quota's mechanism worked on the backfill: the proxy answered it
    // with throttles and muted it. Its rate is for the bench
    // (scripts/bench-quota, docs/performance.md): a test asserts no speed.
    let backfill_series = |name: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains("connector=\"backfill\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let (throttled, held) = (
        backfill_series("idemgate_throttled_responses_total"),
        backfill_series("idemgate_throttle_seconds_total"),
    );
    eprintln!(
        "soak: backfill {:.0} KiB/s against a 256 KiB/s quota; {throttled} throttled responses, muted {held:.1} s",
        (backfilled * 4096) as f64 / backfill_secs / 1024.0
    );
    assert!(
        throttled > 0.0 && held > 0.0,
        "the backfill was never throttled ({throttled} responses, {held} s): {metrics}"
    );
    assert!(backfilled > 0 && sunk > 0);
}
