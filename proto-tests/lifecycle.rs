//! The `idemgate` binary as an operator runs it: `check` lists every problem
//! with its key path (exit 2), every file in config/ is valid, and `run`
//! drains in-flight requests on SIGTERM and exits 0.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support;
use crate::support::{request_frame, RawConn, Tansu};
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, FetchResponse};

const BIN: &str = env!("CARGO_BIN_EXE_idemgate");

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn every_example_config_passes_check() {
    let mut seen = 0;
    for entry in std::fs::read_dir(repo().join("config")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        // An example naming TLS files: the same config over real files, made
        // here (check loads every certificate and key it names).
        let tls_dir = tempfile::tempdir().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let path = if text.contains(TLS_DIR) {
            write_tls_files(tls_dir.path());
            let with_files = tls_dir.path().join("config.toml");
            let dir = format!("{}/", tls_dir.path().display());
            std::fs::write(&with_files, text.replace(TLS_DIR, &dir)).unwrap();
            with_files
        } else {
            path
        };
        // Through the library (the exact parse) and through the binary.
        idemgate::config::Config::load(&path)
            .unwrap_or_else(|e| panic!("{}:\n{e}", path.display()));
        let out = Command::new(BIN)
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        seen += 1;
    }
    assert!(
        seen >= 4,
        "config/ holds the annotated default, a sidecar, a central and a SASL_SSL example"
    );
}

/// Where the example configs keep their certificates.
const TLS_DIR: &str = "/etc/idemgate/tls/";

/// A self-signed certificate and its key under every name the examples use.
fn write_tls_files(dir: &std::path::Path) {
    let cert = rcgen::generate_simple_self_signed(vec!["idemgate.kafka.svc".to_string()]).unwrap();
    for stem in ["proxy", "admin", "idemgate", "clients-ca", "brokers-ca"] {
        std::fs::write(dir.join(format!("{stem}.pem")), cert.cert.pem()).unwrap();
        std::fs::write(
            dir.join(format!("{stem}.key")),
            cert.signing_key.serialize_pem(),
        )
        .unwrap();
    }
}

#[test]
fn the_annotated_config_shows_every_default() {
    // The annotated file sets every key to its default: loading it must give
    // exactly what an empty file gives.
    let annotated = idemgate::config::Config::load(&repo().join("config/idemgate.toml")).unwrap();
    let empty = idemgate::config::Config::parse("").unwrap();
    assert_eq!(format!("{annotated:?}"), format!("{empty:?}"));
}

/// `check` says plainly what each rule does that an operator may not
/// expect: no mode observes, `record-key` is for per-event keys only,
/// `content` takes a legitimate repeat for a replay, and what a preset is.
#[test]
fn check_explains_modes_keys_and_presets() {
    let out = check_text(
        "[[dedup.rules]]\ntopics = \"pg.*\"\npreset = \"debezium-mysql\"\nmode = \"drop\"\n\
         [[dedup.rules]]\ntopics = \"orders\"\nkey = \"record-key\"\nmode = \"drop\"\n\
         [[dedup.rules]]\ntopics = \"*\"\n",
    );
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    for (rule, says) in [
        ("dedup.rules[0]", "preset debezium-mysql"),
        (
            "dedup.rules[1]",
            "only for topics whose record key is unique per event",
        ),
        ("dedup.rules[2]", "no mode: the rule observes"),
        ("dedup.rules[2]", "A→B→A"),
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.contains(&format!("{rule}: note:")) && l.contains(says)),
            "{rule} should say {says:?}:\n{stdout}"
        );
    }
}

/// `idemgate check` on a file holding `text`.
fn check_text(text: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("idemgate.toml");
    std::fs::write(&path, text).unwrap();
    Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap()
}

#[test]
fn check_lists_every_problem_with_its_key_path_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[listen]\nbootstrap = \"nowhere\"\nmax_frame_bytes = -1\ntypo = true\n[upstream]\nbootstrap = []\n[admin]\nlisten = 5\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for key in [
        "listen.bootstrap",
        "listen.max_frame_bytes",
        "listen.typo",
        "upstream.bootstrap",
        "admin.listen",
    ] {
        assert!(stderr.contains(key), "{key} missing from:\n{stderr}");
    }
    assert!(stderr.contains("5 problem(s)"), "{stderr}");
    // run refuses the same file the same way.
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_and_exits_0() {
    let broker = Tansu::start();
    let dir = tempfile::tempdir().unwrap();
    let (text, bootstrap, admin) =
        support::Proxy::config_text(&broker.addr, dir.path(), "", "", "");
    let path = dir.path().join("idemgate.toml");
    std::fs::write(&path, text).unwrap();
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&path)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let bootstrap = format!("127.0.0.1:{bootstrap}");
    support::wait_for_port(&bootstrap, Duration::from_secs(20));
    let admin: std::net::SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    let start = Instant::now();
    while support::http_get(admin, "/readyz").await.0 != 200 {
        assert!(start.elapsed() < Duration::from_secs(20), "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut conn = RawConn::connect(&bootstrap).await;
    support::create_topic_raw(&mut conn, "drain", 1).await;
    // A long poll the drain must wait for: long enough to see /readyz say
    // so on a busy machine, well inside recv_frame's 20 s.
    let fetch = support::long_poll("drain", 12_000);
    conn.send_frame(&request_frame(ApiKey::Fetch, 11, 2, &fetch))
        .await;
    // SIGTERM only once the proxy has read the Fetch: a request still in the
    // socket when the drain begins is not read, by design.
    let start = Instant::now();
    loop {
        let metrics = support::http_get(admin, "/metrics").await.1;
        if support::metric_value(&metrics, "idemgate_requests_total{api=\"Fetch\"}") >= 1.0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the proxy never read the Fetch"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());

    // While it drains, the admin listener still answers: not ready.
    let start = Instant::now();
    loop {
        let (status, body) = support::http_get(admin, "/readyz").await;
        if status == 503 {
            assert!(body.contains("shutting down"), "{body}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "/readyz never said shutting down"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The in-flight Fetch is still answered...
    let frame = conn
        .recv_frame()
        .await
        .expect("the in-flight fetch is answered during the drain");
    let resp: FetchResponse = support::decode_response_frame(ApiKey::Fetch, 11, 2, frame);
    assert_eq!(resp.error_code, 0);
    // ...and then the connection closes: no new requests are read.
    conn.send_frame(&request_frame(
        ApiKey::ApiVersions,
        0,
        3,
        &ApiVersionsRequest::default(),
    ))
    .await;
    assert!(
        conn.recv_frame().await.is_none(),
        "no request read after SIGTERM"
    );

    let status = tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let mut stderr = String::new();
                std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
                return (status, stderr);
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .unwrap();
    assert!(
        status.0.success(),
        "exit status {:?}\n{}",
        status.0,
        status.1
    );
    assert!(status.1.contains("store flushed"), "{}", status.1);
    assert!(
        std::net::TcpStream::connect(&bootstrap).is_err(),
        "no longer accepting"
    );
}
