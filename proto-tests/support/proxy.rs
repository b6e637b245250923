//! The proxy under test: in-process ([`Proxy`]) or as the binary ([`ProxyProcess`]).

use std::net::{SocketAddr, TcpStream as StdStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use idemgate::config::Config;
use idemgate::server::{self, Running};

use super::{free_port, free_port_range, http_get, metric_value};

/// The proxy, in-process, in front of `upstream`, with the leak check on.
pub struct Proxy {
    running: Option<Running>,
    pub bootstrap: String,
    pub admin: SocketAddr,
    pub broker_ports: (u16, u16),
    _store: Option<tempfile::TempDir>,
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
        Self::launch_config(&text, Some(store)).await
    }

    /// Starts from a whole config of the caller's, its store where it says,
    /// and waits for `/readyz`.
    pub async fn start_config(text: &str) -> Proxy {
        let proxy = Self::launch_config(text, None).await;
        proxy.wait_ready().await;
        proxy
    }

    async fn launch_config(text: &str, store: Option<tempfile::TempDir>) -> Proxy {
        let config = Config::parse(text).unwrap_or_else(|e| panic!("test config: {e}"));
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

/// The `idemgate` binary, as an operator runs it. By default its log
/// (stderr) is appended to `<config>.log`, through a pipe, so that a store
/// made unwritable under it cannot silence its log, and a failing test can
/// show it. [`ProxyProcess::options`] starts it otherwise: another binary,
/// a wrapper command, more environment, its log inherited, no admin
/// listener.
pub struct ProxyProcess {
    child: Child,
    pub bootstrap: String,
    /// Port 0 when it runs without an admin listener.
    pub admin: SocketAddr,
    pub log: PathBuf,
}

/// Where the binary's log (stderr) goes.
pub enum ProxyLog {
    /// Appended to `<config>.log` through a pipe (the default).
    File,
    /// The caller's own stderr (the benches': a test's would interleave).
    #[allow(dead_code)] // used by benches/ only
    Inherit,
}

/// How [`ProxyProcess`] starts the binary: `idemgate run --config CONFIG`.
pub struct ProxyOptions {
    config: PathBuf,
    bootstrap: u16,
    admin: Option<u16>,
    binary: PathBuf,
    command: Option<Command>,
    env: Vec<(String, String)>,
    log: ProxyLog,
    ready_within: Duration,
}

/// `IDEMGATE_BIN` if set (a release build, say), else the binary cargo built
/// beside this test.
pub fn idemgate_bin() -> PathBuf {
    std::env::var_os("IDEMGATE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_idemgate")))
}

impl ProxyOptions {
    /// Runs this binary instead of the one cargo built.
    pub fn binary(mut self, binary: PathBuf) -> Self {
        self.binary = binary;
        self
    }

    /// Runs the caller's command (a wrapper that changes the process's
    /// limits or signals, then execs idemgate) instead of the binary.
    pub fn command(mut self, command: Command) -> Self {
        self.command = Some(command);
        self
    }

    /// One more environment variable for the process.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Where its log goes ([`ProxyLog::File`] unless said).
    #[allow(dead_code)] // used by benches/ only
    pub fn log(mut self, log: ProxyLog) -> Self {
        self.log = log;
        self
    }

    /// The config has no admin listener: ready once the bootstrap port
    /// accepts connections (`/readyz` cannot be asked).
    #[allow(dead_code)] // used by benches/ only
    pub fn no_admin(mut self) -> Self {
        self.admin = None;
        self
    }

    /// Starts it and waits until `/readyz` says ready (the window loaded)
    /// and the bootstrap port accepts connections.
    pub async fn start(self) -> ProxyProcess {
        let log = self.config.with_extension("log");
        let mut command = self.command.unwrap_or_else(|| {
            let mut command = Command::new(&self.binary);
            command.args(["run", "--config"]).arg(&self.config);
            command
        });
        command.envs(self.env).stdout(Stdio::null());
        command.stderr(match self.log {
            ProxyLog::File => Stdio::piped(),
            ProxyLog::Inherit => Stdio::inherit(),
        });
        let mut child = command.spawn().expect("start idemgate");
        if let Some(mut stderr) = child.stderr.take() {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .expect("proxy log file");
            std::thread::spawn(move || std::io::copy(&mut stderr, &mut file));
        }
        let admin = self.admin;
        let mut proxy = ProxyProcess {
            child,
            bootstrap: format!("127.0.0.1:{}", self.bootstrap),
            admin: format!("127.0.0.1:{}", admin.unwrap_or(0)).parse().unwrap(),
            log,
        };
        let limit = self.ready_within;
        let start = Instant::now();
        while (admin.is_some() && http_get(proxy.admin, "/readyz").await.0 != 200)
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
}

impl ProxyProcess {
    /// Starts `idemgate run --config CONFIG` and waits until `/readyz` says
    /// ready (the window loaded); `bootstrap` and `admin` are the ports in CONFIG.
    pub async fn start(config: &Path, bootstrap: u16, admin: u16) -> ProxyProcess {
        Self::options(config, bootstrap, admin).start().await
    }

    /// [`start`](Self::start), set up further before it starts.
    pub fn options(config: &Path, bootstrap: u16, admin: u16) -> ProxyOptions {
        ProxyOptions {
            config: config.to_path_buf(),
            bootstrap,
            admin: Some(admin),
            binary: PathBuf::from(env!("CARGO_BIN_EXE_idemgate")),
            command: None,
            env: Vec::new(),
            log: ProxyLog::File,
            // Generous: the machine may be busy with other builds and tests.
            ready_within: Duration::from_secs(60),
        }
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
