//! Produce throughput and latency, direct to tansu vs through idemgate,
//! alternating in one run so both see the same machine.
//!
//! ```text
//! scripts/bench                        # what docs/performance.md records
//! cargo bench --bench produce -- --records 200000 --size 512 --rounds 5
//! ```
//!
//! Two measures per path (see docs/performance.md for why both):
//! - saturation: records sent as fast as the client can, acks=all, 3
//!   partitions; records/s and MB/s from first send to last delivery;
//! - fixed load: half the direct saturation rate, paced; p50/p99 produce
//!   latency (enqueue to delivery report) and the proxy's CPU seconds per GB.
//!
//! The proxy runs as its own process (the release binary), so its CPU time
//! can be read from /proc apart from the client's.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};

struct Args {
    records: usize,
    size: usize,
    rounds: usize,
}

fn args() -> Args {
    let mut a = Args {
        records: 200_000,
        size: 512,
        rounds: 5,
    };
    let argv: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < argv.len() {
        let next = || {
            argv.get(i + 1)
                .and_then(|v| v.parse().ok())
                .expect("a number after the flag")
        };
        match argv[i].as_str() {
            "--records" => a.records = next(),
            "--size" => a.size = next(),
            "--rounds" => a.rounds = next(),
            _ => {} // cargo bench passes --bench
        }
        i += 1;
    }
    a
}

// === Processes ===

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_port(port: u16) {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "port {port} never opened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tansu_bin() -> PathBuf {
    let bin = std::env::var("TANSU_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cache/bin/tansu"));
    assert!(
        bin.exists(),
        "no tansu at {}: run scripts/setup",
        bin.display()
    );
    bin
}

/// Starts `tansu <args…>` listening and advertising on a fresh loopback port.
fn spawn_tansu(subcommand: &str, extra: &[String]) -> (Killed, String) {
    let port = free_port();
    let url = format!("tcp://127.0.0.1:{port}");
    let child = Command::new(tansu_bin())
        .args([
            subcommand,
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_port(port);
    (Killed(child), format!("127.0.0.1:{port}"))
}

/// `tansu proxy`: another Rust Kafka proxy (pass-through only), as a peer.
fn start_tansu_proxy(upstream: &str) -> (Killed, String) {
    spawn_tansu(
        "proxy",
        &["--origin-url".into(), format!("tcp://{upstream}")],
    )
}

fn start_tansu() -> (Killed, String) {
    spawn_tansu(
        "broker",
        &["--storage-engine".into(), "memory://tansu/".into()],
    )
}

fn start_proxy(upstream: &str, dir: &std::path::Path) -> (Killed, String) {
    let port = free_port();
    let ports = loop {
        let p = free_port();
        if p < 65000 && (1..8).all(|i| std::net::TcpListener::bind(("127.0.0.1", p + i)).is_ok()) {
            break p;
        }
    };
    let config = format!(
        "[listen]\nbootstrap = \"127.0.0.1:{port}\"\nbroker_ports = \"{ports}-{}\"\n\
         [upstream]\nbootstrap = [\"{upstream}\"]\n[admin]\nlisten = \"\"\n\
         [store]\ndir = \"{}\"\n[log]\nlevel = \"warn\"\n",
        ports + 7,
        dir.join("store").display()
    );
    let path = dir.join("bench.toml");
    std::fs::write(&path, config).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_idemgate"))
        .args(["run", "--config"])
        .arg(&path)
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    wait_port(port);
    // The broker listener opens after the first metadata probe.
    std::thread::sleep(Duration::from_millis(500));
    (Killed(child), format!("127.0.0.1:{port}"))
}

/// user + system CPU seconds of a process so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the ")" that closes the command name: utime is 14th, stime 15th overall.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    let hz = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0);
    ticks / hz
}

// === The load ===

struct Latencies {
    micros: Mutex<Vec<u32>>,
    errors: AtomicU64,
    last: Mutex<Option<Instant>>,
}

impl ClientContext for Latencies {}

impl ProducerContext for Latencies {
    type DeliveryOpaque = Box<Instant>;

    fn delivery(&self, result: &DeliveryResult<'_>, sent: Box<Instant>) {
        let now = Instant::now();
        match result {
            Ok(_) => self
                .micros
                .lock()
                .unwrap()
                .push(now.duration_since(*sent).as_micros() as u32),
            Err(_) => {
                self.errors.fetch_add(1, Relaxed);
            }
        }
        *self.last.lock().unwrap() = Some(now);
    }
}

struct RunResult {
    records_per_sec: f64,
    mb_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

fn create_topic(bootstrap: &str, name: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let topic = NewTopic::new(name, 3, TopicReplication::Fixed(1));
    let res =
        futures::executor::block_on(admin.create_topics(&[topic], &AdminOptions::new())).unwrap();
    for r in res {
        r.unwrap();
    }
}

/// Sends `records` records; `rate` = None for as fast as possible.
fn run(bootstrap: &str, topic: &str, records: usize, size: usize, rate: Option<f64>) -> RunResult {
    let ctx = Latencies {
        micros: Mutex::new(Vec::with_capacity(records)),
        errors: AtomicU64::new(0),
        last: Mutex::new(None),
    };
    let producer: ThreadedProducer<Latencies> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .create_with_context(ctx)
        .unwrap();
    let payload = vec![b'x'; size];
    let keys: Vec<String> = (0..1024).map(|i| format!("key-{i}")).collect();
    let start = Instant::now();
    for i in 0..records {
        if let Some(rate) = rate {
            let due = start + Duration::from_secs_f64(i as f64 / rate);
            let now = Instant::now();
            if due > now + Duration::from_micros(200) {
                std::thread::sleep(due - now);
            }
        }
        let mut record = BaseRecord::with_opaque_to(topic, Box::new(Instant::now()))
            .key(&keys[i % keys.len()])
            .payload(&payload);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => panic!("send: {e}"),
            }
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
        records_per_sec: records as f64 / secs,
        mb_per_sec: (records * size) as f64 / secs / 1e6,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        errors: ctx.errors.load(Relaxed),
    }
}

/// The paths measured, in the order each round runs them.
const PATHS: [&str; 3] = ["direct", "idemgate", "tansu-proxy"];

/// One measured run on a fresh broker (and a fresh proxy in front of it for
/// a proxy path): tansu's memory only grows and its later runs slow down,
/// so no run inherits another's log. Returns the result and the proxy's CPU
/// seconds for the run.
fn measure(path: &str, a: &Args, rate: Option<f64>) -> (RunResult, f64) {
    let dir = tempfile::tempdir().unwrap();
    let (_tansu, direct) = start_tansu();
    let proxy = match path {
        "idemgate" => Some(start_proxy(&direct, dir.path())),
        "tansu-proxy" => Some(start_tansu_proxy(&direct)),
        _ => None,
    };
    let addr = proxy
        .as_ref()
        .map(|p| p.1.clone())
        .unwrap_or_else(|| direct.clone());
    create_topic(&direct, "warm");
    run(&addr, "warm", 10_000, a.size, None);
    create_topic(&direct, "bench");
    let pid = proxy.as_ref().map(|p| p.0 .0.id());
    let before = pid.map(cpu_seconds).unwrap_or(0.0);
    let r = run(&addr, "bench", a.records, a.size, rate);
    let cpu = pid.map(cpu_seconds).unwrap_or(0.0) - before;
    assert_eq!(r.errors, 0, "{path}: delivery errors");
    (r, cpu)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let a = args();
    println!(
        "# produce: {} records x {} B, acks=all, 3 partitions, {} round(s), medians",
        a.records, a.size, a.rounds
    );
    println!(
        "# machine: {} cores; client, broker and proxy share them",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    let gb = (a.records * a.size) as f64 / 1e9;

    let mut sat: Vec<Vec<RunResult>> = PATHS.iter().map(|_| Vec::new()).collect();
    for round in 0..a.rounds {
        for (i, path) in PATHS.into_iter().enumerate() {
            let (r, _) = measure(path, &a, None);
            println!(
                "saturation {path:11} round {round}: {:>9.0} rec/s {:>7.1} MB/s",
                r.records_per_sec, r.mb_per_sec
            );
            sat[i].push(r);
        }
    }
    let med = |v: &[RunResult], f: fn(&RunResult) -> f64| median(v.iter().map(f).collect());
    let direct_rate = med(&sat[0], |r| r.records_per_sec);

    // Half of direct saturation: below every path's limit, so latency and
    // CPU compare like for like.
    let offered = direct_rate / 2.0;
    let mut fixed: Vec<Vec<RunResult>> = PATHS.iter().map(|_| Vec::new()).collect();
    let mut cpu: Vec<Vec<f64>> = PATHS.iter().map(|_| Vec::new()).collect();
    for round in 0..a.rounds {
        for (i, path) in PATHS.into_iter().enumerate() {
            let (r, c) = measure(path, &a, Some(offered));
            println!(
                "fixed {offered:.0} rec/s {path:11} round {round}: p50 {:>7.2} ms  p99 {:>7.2} ms  proxy CPU {c:.2} s",
                r.p50_ms, r.p99_ms
            );
            cpu[i].push(c / gb);
            fixed[i].push(r);
        }
    }
    let (d50, d99) = (med(&fixed[0], |r| r.p50_ms), med(&fixed[0], |r| r.p99_ms));
    println!();
    println!("| path | saturation rec/s | MB/s | vs direct | p50 at {offered:.0} rec/s | p99 | proxy CPU s/GB |");
    println!("|---|---|---|---|---|---|---|");
    for (i, path) in PATHS.into_iter().enumerate() {
        let rate = med(&sat[i], |r| r.records_per_sec);
        let (p50, p99) = (med(&fixed[i], |r| r.p50_ms), med(&fixed[i], |r| r.p99_ms));
        let (dp50, dp99, cpu) = if i == 0 {
            (String::new(), String::new(), "-".to_string())
        } else {
            (
                format!(" ({:+.2})", p50 - d50),
                format!(" ({:+.2})", p99 - d99),
                format!("{:.2}", median(cpu[i].clone())),
            )
        };
        println!(
            "| {path} | {rate:.0} | {:.1} | {:.3} x | {p50:.2} ms{dp50} | {p99:.2} ms{dp99} | {cpu} |",
            med(&sat[i], |r| r.mb_per_sec),
            rate / direct_rate
        );
    }
}
