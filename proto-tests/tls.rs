//! TLS from clients to the proxy (`[listen.tls]`): a CA, server and client
//! certificates made in the test with rcgen; raw Kafka over rustls, and the
//! real clients (librdkafka through confluent-kafka, kafka-python) with SSL;
//! mTLS and the principal; reload without dropping connections; the
//! handshake timeout; and `idemgate check` on broken TLS files.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support;
use crate::support::{http_get, request_frame, Proxy, RawConn, Tansu};
use bytes::{BufMut, BytesMut};
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse, MetadataRequest, MetadataResponse};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// A CA and what it signed, written as PEM files in a temp dir.
struct Pki {
    dir: tempfile::TempDir,
    ca_params: CertificateParams,
    ca_key: KeyPair,
}

impl Pki {
    fn new() -> Pki {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "idemgate test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        Pki {
            dir,
            ca_params,
            ca_key,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Signs a leaf for `names` with subject `cn` (+ O=Acme), writes
    /// `<stem>.pem` and `<stem>.key`.
    fn leaf(&self, stem: &str, cn: &str, names: &[&str]) {
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Acme");
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().unwrap();
        let issuer = Issuer::from_params(&self.ca_params, &self.ca_key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        std::fs::write(self.path(&format!("{stem}.pem")), cert.pem()).unwrap();
        std::fs::write(self.path(&format!("{stem}.key")), key.serialize_pem()).unwrap();
    }

    fn ca_der(&self) -> CertificateDer<'static> {
        use rustls::pki_types::pem::PemObject;
        CertificateDer::from_pem_file(self.path("ca.pem")).unwrap()
    }

    /// A rustls client trusting the CA, with a client certificate if given.
    fn connector(&self, client: Option<&str>) -> TlsConnector {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let config = match client {
            None => builder.with_no_client_auth(),
            Some(stem) => {
                let certs = CertificateDer::pem_file_iter(self.path(&format!("{stem}.pem")))
                    .unwrap()
                    .map(|c| c.unwrap())
                    .collect();
                let key = rustls::pki_types::PrivateKeyDer::from_pem_file(
                    self.path(&format!("{stem}.key")),
                )
                .unwrap();
                builder.with_client_auth_cert(certs, key).unwrap()
            }
        };
        TlsConnector::from(Arc::new(config))
    }

    fn listen_tls(&self, client_ca: bool) -> String {
        let mut t = format!(
            "[listen.tls]\ncert = \"{}\"\nkey = \"{}\"\nreload_interval = \"100ms\"\nhandshake_timeout = \"10s\"\n",
            self.path("server.pem").display(),
            self.path("server.key").display()
        );
        if client_ca {
            t.push_str(&format!(
                "client_ca = \"{}\"\n",
                self.path("ca.pem").display()
            ));
        }
        t
    }
}

type TlsConn = RawConn<tokio_rustls::client::TlsStream<TcpStream>>;

async fn tls_connect(addr: &str, connector: &TlsConnector) -> std::io::Result<TlsConn> {
    let tcp = TcpStream::connect(addr).await?;
    let stream = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await?;
    Ok(RawConn { stream })
}

/// Starts a proxy with `[listen.tls]` (start_full writes it right after the
/// `[listen]` keys).
async fn tls_proxy(upstream: &str, pki: &Pki, client_ca: bool) -> Proxy {
    Proxy::start_full(upstream, &pki.listen_tls(client_ca), "", "").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_kafka_over_tls_on_bootstrap_and_broker_listeners() {
    let broker = Tansu::start();
    let pki = Pki::new();
    pki.leaf("server", "localhost", &["localhost", "127.0.0.1"]);
    let proxy = tls_proxy(&broker.addr, &pki, false).await;
    let connector = pki.connector(None);
    let mut conn = tls_connect(&proxy.bootstrap, &connector).await.unwrap();
    let av: ApiVersionsResponse = conn
        .call(ApiKey::ApiVersions, 3, 1, &support::client_software())
        .await;
    assert_eq!(av.error_code, 0);
    let md: MetadataResponse = conn
        .call(ApiKey::Metadata, 9, 2, &MetadataRequest::default())
        .await;
    let port = md.brokers[0].port;
    // The per-broker listener speaks TLS too.
    let mut node = tls_connect(&format!("127.0.0.1:{port}"), &connector)
        .await
        .unwrap();
    let _: ApiVersionsResponse = node
        .call(ApiKey::ApiVersions, 3, 3, &support::client_software())
        .await;
    // Plaintext on a TLS listener: the handshake fails, that connection only.
    let mut plain = RawConn::connect(&proxy.bootstrap).await;
    plain
        .send_frame(&request_frame(
            ApiKey::ApiVersions,
            3,
            1,
            &support::client_software(),
        ))
        .await;
    assert!(plain.is_closed().await);
    let _: ApiVersionsResponse = conn
        .call(ApiKey::ApiVersions, 3, 4, &support::client_software())
        .await;
    assert_eq!(
        proxy
            .wait_metric("idemgate_tls_handshake_failures_total", 1.0)
            .await,
        1.0
    );
    proxy.assert_no_leaks().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_closed_at_the_handshake_timeout() {
    let broker = Tansu::start();
    let pki = Pki::new();
    pki.leaf("server", "localhost", &["localhost"]);
    // Every other test gives a busy machine's handshakes 10 s; this one
    // waits for the timeout, so it is short.
    let listen = pki
        .listen_tls(false)
        .replace("handshake_timeout = \"10s\"", "handshake_timeout = \"2s\"");
    let proxy = Proxy::start_full(&broker.addr, &listen, "", "").await;
    let mut silent = RawConn::connect(&proxy.bootstrap).await;
    assert!(
        silent.is_closed().await,
        "closed after handshake_timeout (2s)"
    );
    assert_eq!(
        proxy
            .wait_metric("idemgate_tls_handshake_failures_total", 1.0)
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_requires_a_client_certificate_and_names_the_principal() {
    let broker = Tansu::start();
    let pki = Pki::new();
    pki.leaf("server", "localhost", &["localhost"]);
    pki.leaf("client", "orders-source", &["orders-source"]);
    let proxy = tls_proxy(&broker.addr, &pki, true).await;

    // Without a certificate: refused (the failure may surface at the first
    // read, TLS 1.3 finishes the client's side of the handshake early).
    let anonymous = tls_connect(&proxy.bootstrap, &pki.connector(None)).await;
    if let Ok(mut c) = anonymous {
        c.send_frame(&request_frame(
            ApiKey::ApiVersions,
            3,
            1,
            &support::client_software(),
        ))
        .await;
        assert!(
            c.recv_frame().await.is_none(),
            "no answer without a client certificate"
        );
    }

    let mut conn = tls_connect(&proxy.bootstrap, &pki.connector(Some("client")))
        .await
        .unwrap();
    let _: ApiVersionsResponse = conn
        .call(ApiKey::ApiVersions, 3, 1, &support::client_software())
        .await;
    let (status, body) = http_get(proxy.admin, "/connections").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("\"principal\":\"CN=orders-source,O=Acme\""),
        "{body}"
    );
    assert!(body.contains("\"client_id\":\"proto-tests\""), "{body}");
}

/// The mTLS subject is the tenant quotas key on: a request quota on one
/// subject throttles its connections, and not those of another certificate
/// with the same client id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mtls_subject_is_the_tenant_its_quota_keys_on() {
    let broker = Tansu::start();
    let pki = Pki::new();
    pki.leaf("server", "localhost", &["localhost"]);
    pki.leaf("source", "orders-source", &["orders-source"]);
    pki.leaf("sink", "pg-sink", &["pg-sink"]);
    let proxy = Proxy::start_full(
        &broker.addr,
        &pki.listen_tls(true),
        "",
        "[[quotas]]\ntenant = \"CN=orders-source,O=Acme\"\nrequests_per_sec = 2\n",
    )
    .await;
    for (cert, corr) in [("source", 100), ("sink", 200)] {
        let mut conn = tls_connect(&proxy.bootstrap, &pki.connector(Some(cert)))
            .await
            .unwrap();
        // Ten requests against 2 a second (a 1 s burst): ~4 s of debt for
        // the source; ApiVersions is never held, only counted. They go in
        // one write, so a slow machine cannot spread them past the debt.
        let mut wire = BytesMut::new();
        for i in 0..10 {
            let frame = request_frame(
                ApiKey::ApiVersions,
                3,
                corr + i,
                &support::client_software(),
            );
            wire.put_i32(frame.len() as i32);
            wire.extend_from_slice(&frame);
        }
        conn.send_raw(&wire).await;
        for i in 0..10 {
            let frame = conn.recv_frame().await.expect("an answer");
            let av: ApiVersionsResponse =
                support::decode_response_frame(ApiKey::ApiVersions, 3, corr + i, frame);
            assert_eq!(av.error_code, 0);
        }
    }
    let throttled = |tenant: &str| {
        format!("idemgate_throttle_seconds_total{{connector=\"proto-tests\",tenant=\"{tenant}\"}}")
    };
    let metrics = proxy.metrics().await;
    assert!(
        support::metric_value(&metrics, &throttled("CN=orders-source,O=Acme")) > 0.0,
        "{metrics}"
    );
    assert_eq!(
        support::metric_value(&metrics, &throttled("CN=pg-sink,O=Acme")),
        0.0,
        "{metrics}"
    );
    let (status, quotas) = http_get(proxy.admin, "/quotas").await;
    assert_eq!(status, 200);
    assert!(
        quotas.contains("\"tenant\":\"CN=orders-source,O=Acme\""),
        "{quotas}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_reload_without_dropping_connections() {
    let broker = Tansu::start();
    let pki = Pki::new();
    pki.leaf("server", "first.localhost", &["localhost"]);
    let proxy = tls_proxy(&broker.addr, &pki, false).await;
    let connector = pki.connector(None);
    let mut old = tls_connect(&proxy.bootstrap, &connector).await.unwrap();
    assert_eq!(server_cn(&old), "CN=first.localhost,O=Acme");

    // Rotate: a new certificate and key at the same paths.
    pki.leaf("server", "second.localhost", &["localhost"]);
    let start = Instant::now();
    loop {
        let new = tls_connect(&proxy.bootstrap, &connector).await.unwrap();
        if server_cn(&new) == "CN=second.localhost,O=Acme" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "new certificate never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The connection made before the rotation still works.
    let _: ApiVersionsResponse = old
        .call(ApiKey::ApiVersions, 3, 9, &support::client_software())
        .await;
    assert_eq!(proxy.metric("idemgate_tls_reloads_total").await, 1.0);

    // A broken file is refused and the working certificate stays.
    std::fs::write(pki.path("server.key"), "not a key").unwrap();
    let start = Instant::now();
    while proxy.metric("idemgate_tls_reload_failures_total").await < 1.0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "broken key never noticed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut after = tls_connect(&proxy.bootstrap, &connector).await.unwrap();
    assert_eq!(server_cn(&after), "CN=second.localhost,O=Acme");
    let _: ApiVersionsResponse = after
        .call(ApiKey::ApiVersions, 3, 1, &support::client_software())
        .await;
}

fn server_cn(conn: &TlsConn) -> String {
    let (_, session) = conn.stream.get_ref();
    let leaf = &session.peer_certificates().unwrap()[0];
    idemgate::tls::der::subject(leaf).unwrap()
}

/// The real clients through the TLS listener: confluent-kafka (librdkafka)
/// and kafka-python, with and without a client certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_clients_produce_and_consume_over_tls() {
    let broker = Tansu::start();
    let pki = Pki::new();
    pki.leaf("server", "localhost", &["localhost", "127.0.0.1"]);
    pki.leaf("client", "pg-sink", &["pg-sink"]);
    let proxy = tls_proxy(&broker.addr, &pki, true).await;
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cache/venv/bin/python");
    support::tansu_bin(); // installs the venv too, on a fresh machine
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("proto-tests/python/clients/tls_roundtrip.py");
    let (bootstrap, dir) = (proxy.bootstrap.clone(), pki.dir.path().to_path_buf());
    let out = tokio::task::spawn_blocking(move || run_script(&python, &script, &bootstrap, &dir))
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("confluent-kafka: produced 200, consumed 200"),
        "{text}"
    );
    assert!(
        text.contains("kafka-python: produced 200, consumed 200"),
        "{text}"
    );
    proxy.assert_no_leaks().await;
}

fn run_script(python: &Path, script: &Path, bootstrap: &str, dir: &Path) -> std::process::Output {
    Command::new(python)
        .arg(script)
        .args(["--bootstrap", bootstrap])
        .arg("--ca")
        .arg(dir.join("ca.pem"))
        .arg("--cert")
        .arg(dir.join("client.pem"))
        .arg("--key")
        .arg(dir.join("client.key"))
        .output()
        .unwrap()
}

#[test]
fn check_names_each_broken_tls_file() {
    let pki = Pki::new();
    pki.leaf("server", "localhost", &["localhost"]);
    pki.leaf("other", "other", &["other"]);
    let bin = env!("CARGO_BIN_EXE_idemgate");
    let check = |tls: &str| {
        let path = pki.path("idemgate.toml");
        std::fs::write(&path, format!("[listen.tls]\n{tls}")).unwrap();
        let out = Command::new(bin)
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let cert = pki.path("server.pem").display().to_string();
    let key = pki.path("server.key").display().to_string();

    let (code, _) = check(&format!("cert = \"{cert}\"\nkey = \"{key}\"\n"));
    assert_eq!(code, Some(0));

    let (code, err) = check(&format!(
        "cert = \"/nonexistent/cert.pem\"\nkey = \"{key}\"\n"
    ));
    assert_eq!(code, Some(2));
    assert!(
        err.contains("listen.tls.cert: /nonexistent/cert.pem"),
        "{err}"
    );

    let other_key = pki.path("other.key").display().to_string();
    let (code, err) = check(&format!("cert = \"{cert}\"\nkey = \"{other_key}\"\n"));
    assert_eq!(code, Some(2));
    assert!(
        err.contains("listen.tls.key:") && err.contains("does not match the certificate"),
        "{err}"
    );

    // An expired certificate.
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2001, 1, 1);
    params.not_after = rcgen::date_time_ymd(2002, 1, 1);
    let k = KeyPair::generate().unwrap();
    let expired = params.self_signed(&k).unwrap();
    std::fs::write(pki.path("expired.pem"), expired.pem()).unwrap();
    std::fs::write(pki.path("expired.key"), k.serialize_pem()).unwrap();
    let (code, err) = check(&format!(
        "cert = \"{}\"\nkey = \"{}\"\n",
        pki.path("expired.pem").display(),
        pki.path("expired.key").display()
    ));
    assert_eq!(code, Some(2));
    assert!(
        err.contains("listen.tls.cert: the certificate expired on 2002-01-01"),
        "{err}"
    );

    let (code, err) = check(&format!(
        "cert = \"{cert}\"\nkey = \"{key}\"\nclient_ca = \"{key}\"\n"
    ));
    assert_eq!(code, Some(2));
    assert!(err.contains("listen.tls.client_ca:"), "{err}");
}

// === TLS to the brokers ===

/// A TLS terminator in front of a tansu broker that advertises the relay
/// (tansu 0.6.0's own TLS listener does not complete handshakes here). The
/// broker behind it is the real one; the relay only unwraps TLS.
struct TlsRelay {
    broker: Tansu,
    addr: String,
    handshakes: Arc<std::sync::atomic::AtomicUsize>,
}

async fn tls_relay(pki: &Pki, client_ca: bool) -> TlsRelay {
    use rustls::pki_types::pem::PemObject;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let broker = Tansu::start_advertising(Some(port));
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(pki.path("broker.pem"))
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(pki.path("broker.key")).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = if client_ca {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki.ca_der()).unwrap();
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let acceptor =
        tokio_rustls::TlsAcceptor::from(Arc::new(builder.with_single_cert(certs, key).unwrap()));
    let handshakes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (counter, target) = (handshakes.clone(), broker.addr.clone());
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (acceptor, counter, target) = (acceptor.clone(), counter.clone(), target.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let Ok(mut plain) = TcpStream::connect(&target).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    TlsRelay {
        broker,
        addr: format!("127.0.0.1:{port}"),
        handshakes,
    }
}

fn upstream_tls(pki: &Pki, ca: &str, client_cert: bool) -> String {
    let mut t = format!("[upstream.tls]\nca = \"{}\"\n", pki.path(ca).display());
    if client_cert {
        t.push_str(&format!(
            "cert = \"{}\"\nkey = \"{}\"\n",
            pki.path("proxy-client.pem").display(),
            pki.path("proxy-client.key").display()
        ));
    }
    t
}

/// `extra` goes after the generated config: an `[upstream.tls]` table there
/// is still a sub-table of `[upstream]`.
async fn proxy_to_tls_broker(
    relay: &TlsRelay,
    pki: &Pki,
    ca: &str,
    client_cert: bool,
    wait: bool,
) -> Proxy {
    let extra = upstream_tls(pki, ca, client_cert);
    if wait {
        Proxy::start_full(&relay.addr, "", "", &extra).await
    } else {
        Proxy::launch(&relay.addr, "", "", &extra).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_speaks_tls_to_the_broker() {
    let pki = Pki::new();
    pki.leaf("broker", "broker", &["localhost", "127.0.0.1"]);
    let relay = tls_relay(&pki, false).await;
    let proxy = proxy_to_tls_broker(&relay, &pki, "ca.pem", false, true).await;
    // A plaintext client, a TLS broker: Metadata, then a broker listener.
    let mut conn = RawConn::connect(&proxy.bootstrap).await;
    let md: MetadataResponse = conn
        .call(ApiKey::Metadata, 9, 1, &MetadataRequest::default())
        .await;
    let port = md.brokers[0].port;
    assert!((proxy.broker_ports.0 as i32..=proxy.broker_ports.1 as i32).contains(&port));
    let mut node = RawConn::connect(&format!("127.0.0.1:{port}")).await;
    support::create_topic_raw(&mut node, "over-tls", 2).await;
    let _: ApiVersionsResponse = node
        .call(ApiKey::ApiVersions, 3, 3, &support::client_software())
        .await;
    assert!(
        relay.handshakes.load(std::sync::atomic::Ordering::SeqCst) >= 2,
        "through the TLS relay"
    );
    proxy.assert_no_leaks().await;
    drop(relay.broker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_certificate_from_another_ca_is_refused() {
    let pki = Pki::new();
    pki.leaf("broker", "broker", &["localhost", "127.0.0.1"]);
    let relay = tls_relay(&pki, false).await;
    // Another CA entirely.
    let other = Pki::new();
    std::fs::copy(other.path("ca.pem"), pki.path("other-ca.pem")).unwrap();
    let proxy = proxy_to_tls_broker(&relay, &pki, "other-ca.pem", false, false).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (status, body) = http_get(proxy.admin, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("upstream not reachable"), "{body}");
    let mut conn = RawConn::connect(&proxy.bootstrap).await;
    conn.send_frame(&request_frame(
        ApiKey::ApiVersions,
        3,
        1,
        &support::client_software(),
    ))
    .await;
    assert!(
        conn.recv_frame().await.is_none(),
        "no answer without a trusted broker"
    );
    assert!(
        proxy
            .wait_metric("idemgate_connection_errors_total{side=\"upstream\"}", 1.0)
            .await
            >= 1.0
    );
    drop(relay.broker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_for_brokers_that_require_mtls() {
    let pki = Pki::new();
    pki.leaf("broker", "broker", &["localhost", "127.0.0.1"]);
    pki.leaf("proxy-client", "idemgate", &["idemgate"]);
    let relay = tls_relay(&pki, true).await;
    // Without the client certificate: never ready.
    let refused = proxy_to_tls_broker(&relay, &pki, "ca.pem", false, false).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(http_get(refused.admin, "/readyz").await.0, 503);
    // With it: ready, and requests go through.
    let proxy = proxy_to_tls_broker(&relay, &pki, "ca.pem", true, true).await;
    let mut conn = RawConn::connect(&proxy.bootstrap).await;
    let av: ApiVersionsResponse = conn
        .call(ApiKey::ApiVersions, 3, 1, &support::client_software())
        .await;
    assert_eq!(av.error_code, 0);
    drop(relay.broker);
}

/// `[admin.tls]` serves the admin API over HTTPS only; with a token and
/// `token_for_reads`, every route but the probes needs it, and a change
/// (a window purge) needs it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_over_tls_with_a_bearer_token() {
    let broker = Tansu::start();
    let pki = Pki::new();
    pki.leaf("admin", "localhost", &["localhost"]);
    let token = "test-admin-token-0123456789";
    let admin_tls = format!(
        "[admin.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        pki.path("admin.pem").display(),
        pki.path("admin.key").display()
    );
    let proxy = Proxy::launch_admin(
        &broker.addr,
        "",
        "",
        &format!("token = \"{token}\"\ntoken_for_reads = true"),
        &admin_tls,
    )
    .await;
    let connector = pki.connector(None);
    let https = |method: &'static str, path: &'static str, token: Option<&'static str>| {
        let connector = connector.clone();
        let addr = proxy.admin;
        async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let tls = connector
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await
                .expect("admin TLS handshake");
            support::http_over(tls, method, path, token).await
        }
    };
    let start = Instant::now();
    while https("GET", "/readyz", None).await.0 != 200 {
        assert!(start.elapsed() < Duration::from_secs(20), "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(https("GET", "/healthz", None).await.0, 200);
    assert_eq!(https("GET", "/metrics", None).await.0, 401);
    assert_eq!(
        https("GET", "/metrics", Some("wrong-token-0123456789"))
            .await
            .0,
        401
    );
    let (status, body) = https("GET", "/metrics", Some(token)).await;
    assert_eq!(status, 200);
    // OpenMetrics: the counter family is declared without `_total`.
    assert!(body.contains("# TYPE idemgate_requests counter"), "{body}");
    assert_eq!(https("POST", "/window/purge?topic=t", None).await.0, 401);
    let (status, body) = https("POST", "/window/purge?topic=t", Some(token)).await;
    assert_eq!(
        (status, body.trim()),
        (
            200,
            r#"{"topic":"t","keys_forgotten":0,"segments_removed":0}"#
        )
    );
    // Plain HTTP gets no answer from an HTTPS listener.
    assert_eq!(http_get(proxy.admin, "/healthz").await.0, 0);
}
