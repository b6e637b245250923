//! SASL/SCRAM through the proxy against a real broker: Apache Kafka 4.4
//! with a SASL_PLAINTEXT listener (`scripts/kafka start --sasl-scram`), real
//! clients (librdkafka through confluent-kafka, kafka-python) and raw Kafka
//! bytes.
//!
//! - Each client authenticates with SCRAM-SHA-256 and SCRAM-SHA-512, creates
//!   a topic, produces and consumes through the proxy; while its connections
//!   are open, `/connections` shows the SCRAM user as their principal, and
//!   the Produce bytes are charged to that user's tenant quota.
//! - A wrong password gets the broker's own answer to the client (Kafka's
//!   SASL_AUTHENTICATION_FAILED "... invalid credentials ...", not a hang,
//!   not a proxy error), no principal is bound, and neither password, nor the
//!   SCRAM client-final message, nor its proof reaches the proxy's log (the
//!   binary runs with `idemgate=trace`).
//!
//! The broker: one KRaft node started by `scripts/kafka` (jars from
//! `scripts/setup`), its users created at format time (`kafka-storage
//! format --add-scram`, both mechanisms). The proxy's upstream is only the
//! SASL listener, whose Metadata names only SASL listeners: from the proxy's
//! side the broker is SASL-only (its PLAINTEXT listener is the inter-broker
//! one and the script's readiness probe). A SASL listener answers
//! ApiVersions and SaslHandshake before authentication and closes the
//! connection on anything else.
//!
//! The rdkafka crate's vendored librdkafka is built without OpenSSL here, so
//! it has no SCRAM (`builtin.features` lacks `sasl_scram`): librdkafka is
//! exercised through confluent-kafka's wheel (librdkafka 2.16.0, with SCRAM).

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::support;
use crate::support::{http_get, metric_value, ProxyProcess, RawConn};
use bytes::Bytes;
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

/// A one-node Apache Kafka cluster (`scripts/kafka start --sasl-scram`) with
/// SCRAM-SHA-256 and -512 credentials for `users`; `addr` is its SASL
/// listener. Stopped on drop.
struct ScramKafka {
    addr: String,
    dir: PathBuf,
}

impl ScramKafka {
    fn start(users: &[(&str, &str)]) -> ScramKafka {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        support::tansu_bin(); // runs scripts/setup on a fresh machine: the venv
        assert!(
            root.join(".cache/kafka/libs/kafka_2.13-4.4.0.jar").exists(),
            "no Apache Kafka 4.4.0 jars in .cache/kafka/libs: run scripts/setup"
        );
        let mut cmd = Command::new(root.join("scripts/kafka"));
        cmd.args(["start", "--heap", "384m"]);
        for (user, password) in users {
            cmd.args(["--sasl-scram", &format!("{user}:{password}")]);
        }
        let out = cmd.output().expect("run scripts/kafka");
        assert!(
            out.status.success(),
            "scripts/kafka start --sasl-scram failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let value = |key: &str| {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .unwrap_or_else(|| panic!("scripts/kafka printed no {key}: {stdout}"))
                .to_string()
        };
        ScramKafka {
            addr: value("sasl_bootstrap"),
            dir: PathBuf::from(value("dir")),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("broker-1.log")).unwrap_or_default()
    }
}

impl Drop for ScramKafka {
    fn drop(&mut self) {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let _ = Command::new(root.join("scripts/kafka"))
            .arg("stop")
            .arg(&self.dir)
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `idemgate` binary (its log is what the test reads).
struct SaslProxy {
    process: ProxyProcess,
    bootstrap: String,
    admin: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl SaslProxy {
    /// `extra`: config sections after the generated ones.
    async fn start(upstream: &str, extra: &str) -> SaslProxy {
        let dir = tempfile::tempdir().unwrap();
        let (text, bootstrap, admin) =
            support::Proxy::config_text(upstream, &dir.path().join("store"), "", "", extra);
        let config = dir.path().join("idemgate.toml");
        std::fs::write(&config, text).unwrap();
        // Ready although the proxy's own probe carries no credentials: the
        // broker answers its ApiVersions and closes on its Metadata, which
        // is what a SASL listener does (a SASL-only broker must count as
        // reachable). Broker listeners then open from the Metadata clients
        // receive once authenticated.
        let process = ProxyProcess::options(&config, bootstrap, admin)
            .binary(support::idemgate_bin())
            // Everything the proxy would ever say about a connection.
            .env("RUST_LOG", "info,idemgate=trace")
            .start()
            .await;
        let proxy = SaslProxy {
            bootstrap: process.bootstrap.clone(),
            admin: process.admin,
            process,
            _dir: dir,
        };
        assert_eq!(
            proxy.metric("idemgate_upstream_up").await,
            1.0,
            "the probe counts the SASL listener as up"
        );
        proxy
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.process.log).unwrap_or_default()
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
        support::tansu_bin(); // installs the venv too, on a fresh machine
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
    let broker = ScramKafka::start(&[ALICE, MALLORY]);
    let proxy = SaslProxy::start(&broker.addr, ALICE_QUOTA).await;
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
            "{client} {mechanism}: {text}\n--- broker log\n{}\n--- idemgate log\n{}",
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

/// A wrong password: the real clients get the broker's answer within
/// seconds; a raw exchange with a wrong proof gets Kafka's
/// SASL_AUTHENTICATION_FAILED and message through the proxy; nobody is bound
/// as a principal; nothing secret is logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_gets_the_brokers_error_and_binds_no_principal() {
    let broker = ScramKafka::start(&[ALICE, MALLORY]);
    let proxy = SaslProxy::start(&broker.addr, "").await;

    // Kafka answers a wrong proof with SASL_AUTHENTICATION_FAILED and a
    // message, then closes the connection: librdkafka reports that message
    // as an authentication error. kafka-python 3.0.12 drops bytes that
    // arrive with the end of the stream, so it never reads that answer (the
    // same straight to the broker): it shows the exchange reached the proof
    // (the broker's server-first came back) and the broker hung up, and it
    // retries until its bootstrap timeout (5 s).
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
        // The broker's words reached the client, not a transport error
        // (kafka-python: the broker's server-first, then its hang-up).
        let brokers_answer = if client == "confluent" {
            "invalid credentials with SASL mechanism SCRAM-SHA-512"
        } else {
            "broker hung up after the proof"
        };
        assert!(
            out.contains(brokers_answer) && !out.contains("received 0 times"),
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
    // Passed through as the broker wrote it: SASL_AUTHENTICATION_FAILED (58)
    // and Kafka's message.
    assert_eq!(
        last.error_code, 58,
        "Kafka's answer to a wrong proof: {last:?}"
    );
    let message = last.error_message.as_deref().map(|m| m.to_string());
    assert!(
        message.as_deref().is_some_and(|m| m.contains(
            "Authentication failed during authentication due to invalid credentials \
             with SASL mechanism SCRAM-SHA-256"
        )),
        "Kafka's message for a wrong proof: {last:?}"
    );
    // A principal is bound only when the broker accepts the last round.
    let rows = proxy.connections().await;
    for row in &rows {
        assert!(
            row["principal"].is_null(),
            "the proxy bound a principal after the broker refused the proof: {row}"
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
