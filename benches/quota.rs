//! Quotas: how close a throttled producer comes to its quota, and what quota
//! accounting costs a producer it never throttles, against direct to the
//! broker in the same run.
//!
//!   scripts/bench-quota                 # defaults below
//!   scripts/bench-quota -- --rounds 5 --records 60000
//!
//! 1. Accuracy: librdkafka pushes 6 s' worth of its quota plus the 1 s burst
//!    as fast as it can, 8 KiB records in 64 KiB batches, through idemgate
//!    with produce_bytes_per_sec = 1, 10 and 50 MiB/s; achieved/target is
//!    the value rate from the ack that passed the burst to the last ack, and
//!    (bytes − burst) / (first send to last ack) over the whole run. The
//!    first overstates when the broker is slow to absorb the burst (its
//!    acks, and so the start of the measured span, come late).
//! 2. Pass-through: `--records` 1 KiB records, acks=all, direct to tansu, through
//!    idemgate for a client with no rule (counted only), and for a client
//!    whose rule never binds (100 GiB/s: every request charged to a bucket),
//!    interleaved, `--rounds` times; medians.
//!
//! 3. Large requests (`--large-only` runs just this): 8 KiB records in 1 MB
//!    batches (librdkafka's default batch.size) against 200 KiB/s, so each
//!    request owes ~5 s, more than one throttle (`quota.max_throttle`, 2 s);
//!    (bytes − burst) / (first send to last ack).
//!
//! Figures are measurements, never assertions; docs/performance.md records them.
//! `--json PATH` writes every table row to PATH as JSON lines, for
//! scripts/perf-report; what is printed stays the same.

mod common;
// What the integration tests share (proto-tests/support): the proxy
// launcher, tansu, /proc readings, the seeded generator. A bench uses a part.
#[allow(dead_code, unused_imports)]
#[path = "../proto-tests/support/mod.rs"]
mod support;

use common::{block_on, create_topic, median, JsonOut};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{free_port, free_port_range, ProxyLog, ProxyProcess, Tansu};

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};

const MIB: usize = 1 << 20;

fn start_proxy(upstream: &str, dir: &std::path::Path) -> (ProxyProcess, String) {
    let port = free_port();
    let (ports, last) = free_port_range(8);
    let config = format!(
        "[listen]\nbootstrap = \"127.0.0.1:{port}\"\nbroker_ports = \"{ports}-{last}\"\n\
         [upstream]\nbootstrap = [\"{upstream}\"]\n[admin]\nlisten = \"\"\n\
         [store]\ndir = \"{}\"\n[log]\nlevel = \"warn\"\n\
         [[quotas]]\nconnector = \"q1\"\nproduce_bytes_per_sec = \"1MiB\"\n\
         [[quotas]]\nconnector = \"q10\"\nproduce_bytes_per_sec = \"10MiB\"\n\
         [[quotas]]\nconnector = \"q50\"\nproduce_bytes_per_sec = \"50MiB\"\n\
         [[quotas]]\nconnector = \"unbound\"\nproduce_bytes_per_sec = \"100GiB\"\n\
         [[quotas]]\nconnector = \"big\"\nproduce_bytes_per_sec = \"200KiB\"\n",
        dir.join("store").display()
    );
    let path = dir.join("bench.toml");
    std::fs::write(&path, config).unwrap();
    let process = block_on(
        ProxyProcess::options(&path, port, 0)
            .no_admin()
            .log(ProxyLog::Inherit)
            .start(),
    );
    std::thread::sleep(Duration::from_millis(500));
    (process, format!("127.0.0.1:{port}"))
}

/// (when, value bytes) per acknowledged record.
type Acked = Vec<(Instant, usize)>;

/// What was acknowledged, and how many deliveries failed.
#[derive(Default, Clone)]
struct Acks(Arc<Mutex<(Acked, usize)>>);

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        let mut g = self.0.lock().unwrap();
        match r {
            Ok(m) => g.0.push((Instant::now(), m.payload_len())),
            Err(_) => g.1 += 1,
        }
    }
}

/// Pushes `count` records of `size` bytes; returns (acks, errors, seconds).
fn push(
    bootstrap: &str,
    client_id: &str,
    topic: &str,
    count: usize,
    size: usize,
    batch: &str,
) -> (Vec<(Instant, usize)>, usize, f64) {
    let acks = Acks::default();
    let producer: ThreadedProducer<Acks> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("client.id", client_id)
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("batch.size", batch)
        .set("message.timeout.ms", "300000")
        .create_with_context(acks.clone())
        .unwrap();
    let value = vec![b'b'; size];
    let start = Instant::now();
    for i in 0..count {
        let key = i.to_string();
        let record = BaseRecord::to(topic).key(&key).payload(&value);
        support::send_queued(&producer, record, Duration::from_millis(1), "send");
    }
    producer.flush(Duration::from_secs(300)).unwrap();
    let took = start.elapsed().as_secs_f64();
    let g = acks.0.lock().unwrap();
    (g.0.clone(), g.1, took)
}

fn main() {
    let mut rounds = 3;
    let mut records = 60_000;
    let mut large_only = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--large-only" => large_only = true,
            "--rounds" => rounds = args.next().unwrap().parse().unwrap(),
            "--records" => records = args.next().unwrap().parse().unwrap(),
            "--json" => {
                args.next(); // JsonOut reads it
            }
            _ => {}
        }
    }
    let mut json = JsonOut::from_args("quota");
    let dir = tempfile::tempdir().unwrap();
    let broker = Tansu::start();
    let direct = broker.addr.clone();
    let (_proxy, proxied) = start_proxy(&direct, dir.path());

    println!(
        "== large requests (8 KiB records, 1 MB batches, 200 KiB/s, burst 1 s, max_throttle 2 s)"
    );
    println!("| quota | pushed | whole run (total-burst)/time | /target | delivery errors |");
    println!("|---|---|---|---|---|");
    {
        let quota = 200 * 1024;
        let topic = "acc-big";
        create_topic(&proxied, topic, 1);
        let bytes = 6 * MIB;
        let (acks, errors, took) = push(
            &proxied,
            "connector-producer-big-0",
            topic,
            bytes / 8192,
            8192,
            "1000000",
        );
        let total: usize = acks.iter().map(|a| a.1).sum();
        let whole = (total - quota) as f64 / took;
        println!(
            "| 200 KiB/s | {} MiB | {:.1} KiB/s | {:.3} | {errors} |",
            bytes / MIB,
            whole / 1024.0,
            whole / quota as f64
        );
        json.write(serde_json::json!({
            "kind": "quota_large_requests",
            "quota_kib_per_sec": 200,
            "pushed_mib": bytes / MIB,
            "whole_run_kib_per_sec": whole / 1024.0,
            "whole_run_vs_target": whole / quota as f64,
            "delivery_errors": errors,
        }));
    }
    if large_only {
        return;
    }

    println!("\n== throttle accuracy (8 KiB records, 64 KiB batches, burst 1 s)");
    println!("| quota | pushed | after burst (acks) | /target | whole run (total-burst)/time | /target | delivery errors |");
    println!("|---|---|---|---|---|---|---|");
    for mib in [1usize, 10, 50] {
        let topic = format!("acc-{mib}");
        create_topic(&proxied, &topic, 1);
        let bytes = 7 * mib * MIB;
        let (acks, errors, took) = push(
            &proxied,
            &format!("connector-producer-q{mib}-0"),
            &topic,
            bytes / 8192,
            8192,
            "65536",
        );
        let rate = support::rate_after_burst(&acks, mib * MIB);
        // A bucket that starts full lets `burst` through, then the rate:
        // total = burst + rate x time, whatever the broker's own pace.
        let total: usize = acks.iter().map(|a| a.1).sum();
        let whole = (total - mib * MIB) as f64 / took;
        let target = (mib * MIB) as f64;
        println!(
            "| {mib} MiB/s | {} MiB | {:.3} MiB/s | {:.3} | {:.3} MiB/s | {:.3} | {errors} |",
            bytes / MIB,
            rate / MIB as f64,
            rate / target,
            whole / MIB as f64,
            whole / target
        );
        json.write(serde_json::json!({
            "kind": "quota_accuracy",
            "quota_mib_per_sec": mib,
            "pushed_mib": bytes / MIB,
            "after_burst_mib_per_sec": rate / MIB as f64,
            "after_burst_vs_target": rate / target,
            "whole_run_mib_per_sec": whole / MIB as f64,
            "whole_run_vs_target": whole / target,
            "delivery_errors": errors,
        }));
    }

    println!("\n== pass-through: {records} x 1 KiB, acks=all, {rounds} rounds (medians)");
    let paths = [
        ("direct", direct.as_str(), "bench-direct"),
        (
            "idemgate, no rule (counted)",
            proxied.as_str(),
            "bench-plain",
        ),
        (
            "idemgate, rule never hit (charged)",
            proxied.as_str(),
            "connector-producer-unbound-0",
        ),
    ];
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
    for round in 0..rounds {
        for (i, (name, bootstrap, client)) in paths.iter().enumerate() {
            let topic = format!("pt-{i}-{round}");
            create_topic(bootstrap, &topic, 1);
            let (acks, errors, took) = push(bootstrap, client, &topic, records, 1024, "1000000");
            assert_eq!(errors, 0);
            let mbs = (acks.len() * 1024) as f64 / took / MIB as f64;
            eprintln!("round {round} {name}: {mbs:.1} MiB/s");
            results[i].push(mbs);
        }
    }
    let direct_median = median(results[0].clone());
    println!("| path | MiB/s (median) | vs direct |");
    println!("|---|---|---|");
    for (i, (name, _, client)) in paths.iter().enumerate() {
        let m = median(results[i].clone());
        println!("| {name} | {m:.1} | {:.2} |", m / direct_median);
        json.write(serde_json::json!({
            "kind": "quota_pass_through",
            "path": name,
            "client_id": client,
            "baseline": paths[0].0,
            "records": records,
            "size": 1024,
            "rounds": rounds,
            "mib_per_sec": m,
            "vs_baseline": m / direct_median,
            "mib_per_sec_rounds": results[i],
        }));
    }
}
