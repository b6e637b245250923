//! What the benchmarks share: test data made the same way, the plumbing
//! around the processes they measure (ports, tansu, /metrics, CPU time), and
//! the `--json` output scripts/perf-report reads. Each benchmark uses a part
//! of it.
#![allow(dead_code)]

use std::io::Write;

use crate::support::rng::SplitMix;

const WORDS: [&str; 16] = [
    "order",
    "created",
    "shipped",
    "pending",
    "customer",
    "invoice",
    "amount",
    "status",
    "warehouse",
    "priority",
    "express",
    "standard",
    "returned",
    "paid",
    "refund",
    "note",
];

/// Record `id`'s JSON-ish value, exactly `size` bytes (at least 2), the same
/// bytes every time it is made: a replay is the same record.
pub fn json_value(id: u64, size: usize) -> Vec<u8> {
    let mut rng = SplitMix(id);
    let mut value = format!(
        "{{\"id\":{id},\"customer\":\"c-{:05}\",\"amount\":{}.{:02},\"note\":\"",
        rng.next() % 100_000,
        rng.next() % 10_000,
        rng.next() % 100
    )
    .into_bytes();
    while value.len() + 2 < size {
        let w = WORDS[(rng.next() % WORDS.len() as u64) as usize];
        value.extend_from_slice(w.as_bytes());
        value.push(b' ');
    }
    value.truncate(size.saturating_sub(2));
    value.extend_from_slice(b"\"}");
    value
}

// === Processes ===

/// Runs a future of the shared test support (proto-tests/support) to its end
/// on a runtime of its own: the benches are plain threads.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(f)
}

/// idemgate's `/metrics` text, from its admin port.
pub fn metrics(admin: u16) -> String {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], admin));
    let (status, body) = block_on(crate::support::http_get(addr, "/metrics"));
    assert_eq!(status, 200, "idemgate /metrics");
    body
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// idemgate's `/metrics` samples from its admin port: (name, labels in
/// their braces or "", value), comments left out.
pub fn samples(admin: u16) -> Vec<(String, String, f64)> {
    metrics(admin)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let v = value.parse::<f64>().ok()?;
            let (name, labels) = series.split_at(series.find('{').unwrap_or(series.len()));
            Some((name.to_string(), labels.to_string(), v))
        })
        .collect()
}

/// Creates `name` with `partitions` partitions, replication 1.
pub fn create_topic(bootstrap: &str, name: &str, partitions: i32) {
    block_on(crate::support::create_topic(bootstrap, name, partitions));
}

// === Command line ===

/// The flags the data-path benches (fetch, produce) share, parsed by clap
/// with each bench's own.
#[derive(clap::Args, Debug)]
pub struct RunFlags {
    /// Records a round.
    #[arg(long, default_value_t = 200_000)]
    pub records: usize,
    /// Bytes a value.
    #[arg(long, default_value_t = 512)]
    pub size: usize,
    /// Rounds.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Every table row also to PATH as JSON lines, for scripts/perf-report.
    #[arg(long, value_name = "PATH")]
    pub json: Option<String>,
    /// What `cargo bench` passes.
    #[arg(long, hide = true)]
    pub bench: bool,
}

/// `--base-bin` / `--new-bin`: another build of idemgate, an existing file.
pub fn binary(v: &str) -> Result<std::path::PathBuf, String> {
    let path = std::fs::canonicalize(v).map_err(|e| format!("{v}: {e}"))?;
    path.is_file()
        .then_some(path)
        .ok_or_else(|| format!("{v}: not a file"))
}

// === Machine-readable output ===

/// `--json PATH`: every figure a bench prints in its tables, also written to
/// PATH as JSON lines, one object per measured path or case, so that
/// scripts/perf-report can build its report without parsing the text (which
/// stays as it was). Each object carries `bench` and the `command` that
/// measured it; without `--json` nothing is written.
pub struct JsonOut {
    file: Option<std::fs::File>,
    bench: &'static str,
    command: String,
}

impl JsonOut {
    /// Reads `--json PATH` from this process's arguments and truncates PATH.
    /// The command is the wrapper script's name (`IDEMGATE_BENCH_SCRIPT`,
    /// which scripts/bench and the others set) or `cargo bench --bench
    /// <bench> --`, then the arguments as given, less `--json PATH` (where
    /// the figures went changes none of them) and the `--bench` cargo adds.
    pub fn from_args(bench: &'static str) -> JsonOut {
        let argv: Vec<String> = std::env::args().skip(1).collect();
        let mut path = None;
        let mut kept = Vec::new();
        let mut i = 0;
        while i < argv.len() {
            match argv[i].as_str() {
                "--json" => {
                    path = Some(argv.get(i + 1).expect("--json needs a path").clone());
                    i += 1;
                }
                "--bench" => {}
                arg => kept.push(arg.to_string()),
            }
            i += 1;
        }
        let script = std::env::var("IDEMGATE_BENCH_SCRIPT")
            .unwrap_or_else(|_| format!("cargo bench --bench {bench} --"));
        let command = std::iter::once(script)
            .chain(kept)
            .collect::<Vec<_>>()
            .join(" ");
        let file =
            path.map(|p| std::fs::File::create(&p).unwrap_or_else(|e| panic!("--json {p}: {e}")));
        JsonOut {
            file,
            bench,
            command,
        }
    }

    /// Writes `record` (an object) as one line, with `bench` and `command`.
    pub fn write(&mut self, mut record: serde_json::Value) {
        let Some(file) = self.file.as_mut() else {
            return;
        };
        let object = record.as_object_mut().expect("a JSON object");
        object.insert("bench".into(), self.bench.into());
        object.insert("command".into(), self.command.clone().into());
        writeln!(file, "{record}").expect("write the --json file");
    }
}

// === Records ===

/// Every record's key and value, made from its id alone: record `id` is the
/// same bytes however often it is sent or written.
pub struct Records {
    /// Bytes a value.
    pub size: usize,
    values: Vec<u8>,
    keys: Vec<String>,
}

impl Records {
    pub fn new(count: usize, size: usize) -> Records {
        let mut values = Vec::with_capacity(count * size);
        for id in 0..count {
            let mut v = json_value(id as u64, size);
            v.resize(size, b' ');
            values.extend_from_slice(&v[..size]);
        }
        Records {
            size,
            values,
            keys: (0..1024).map(|i| format!("key-{i}")).collect(),
        }
    }

    pub fn value(&self, id: u32) -> &[u8] {
        let at = id as usize * self.size;
        &self.values[at..at + self.size]
    }

    pub fn key(&self, id: u32) -> &str {
        &self.keys[id as usize % self.keys.len()]
    }
}
