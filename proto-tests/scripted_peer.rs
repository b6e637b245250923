//! A scripted byte-level broker, for what no real broker here will do on
//! demand: never answer acks=0 (Kafka's behaviour; tansu answers), answer
//! late, answer out of order, close an idle connection. The peer answers the
//! proxy's own ApiVersions + Metadata probe like a one-node cluster, and
//! every other request as its script says.

mod common;

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use common::{request_frame, Proxy, RawConn};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::metadata_response::MetadataResponseBroker;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, BrokerId, MetadataResponse, ProduceRequest,
};
use kafka_protocol::protocol::{Encodable, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the peer does with a request that is not part of the probe.
#[derive(Clone, Copy, PartialEq)]
enum Script {
    /// Answer every request at once, in order; never answer acks=0.
    Kafka,
    /// Answer ApiVersions requests only after this long.
    Slow(Duration),
    /// Answer the second of two pipelined requests first.
    Swap,
    /// Close the connection right after answering the first request.
    CloseAfterFirst,
}

struct Peer {
    addr: String,
}

async fn read_frame(s: &mut TcpStream) -> Option<Bytes> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await.ok()?;
    let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).await.ok()?;
    Some(Bytes::from(body))
}

fn frame(correlation_id: i32, flexible_header: bool, msg: &impl Encodable, version: i16) -> Bytes {
    let mut b = BytesMut::new();
    b.put_i32(0); // length, patched below
    b.put_i32(correlation_id);
    if flexible_header {
        b.put_u8(0);
    }
    msg.encode(&mut b, version).unwrap();
    let len = (b.len() - 4) as i32;
    b[..4].copy_from_slice(&len.to_be_bytes());
    b.freeze()
}

/// The answer to a request, as a one-node cluster on `port` would give it.
fn answer(request: &[u8], port: u16) -> Option<Bytes> {
    let key = ApiKey::try_from(i16::from_be_bytes([request[0], request[1]])).ok()?;
    let version = i16::from_be_bytes([request[2], request[3]]);
    let corr = i32::from_be_bytes([request[4], request[5], request[6], request[7]]);
    let flexible = key.response_header_version(version) >= 1;
    match key {
        ApiKey::ApiVersions => {
            let keys = [
                ApiKey::Produce,
                ApiKey::Metadata,
                ApiKey::ApiVersions,
                ApiKey::SaslHandshake,
                ApiKey::SaslAuthenticate,
            ]
            .iter()
            .map(|k| {
                let r = k.valid_versions();
                ApiVersion::default()
                    .with_api_key(*k as i16)
                    .with_min_version(r.min)
                    .with_max_version(r.max)
            })
            .collect();
            // Always header v0 for ApiVersions.
            Some(frame(
                corr,
                false,
                &ApiVersionsResponse::default().with_api_keys(keys),
                version,
            ))
        }
        ApiKey::Metadata => {
            let broker = MetadataResponseBroker::default()
                .with_node_id(BrokerId(0))
                .with_host(StrBytes::from_static_str("127.0.0.1"))
                .with_port(port as i32);
            Some(frame(
                corr,
                flexible,
                &MetadataResponse::default().with_brokers(vec![broker]),
                version,
            ))
        }
        ApiKey::SaslHandshake => {
            let mechanisms = ["PLAIN", "SCRAM-SHA-256"]
                .map(StrBytes::from_static_str)
                .to_vec();
            let resp = kafka_protocol::messages::SaslHandshakeResponse::default()
                .with_mechanisms(mechanisms);
            Some(frame(corr, flexible, &resp, version))
        }
        ApiKey::SaslAuthenticate => {
            // A password containing "wrong" fails, as a broker would refuse it.
            let wrong = request.windows(5).any(|w| w == b"wrong");
            let resp = kafka_protocol::messages::SaslAuthenticateResponse::default()
                .with_error_code(if wrong { 58 } else { 0 })
                .with_auth_bytes(Bytes::from_static(b"server-message"));
            Some(frame(corr, flexible, &resp, version))
        }
        ApiKey::Produce => {
            let at = idemgate::codec::RequestHead::peek(request)
                .ok()?
                .body_offset;
            let (acks, _) = idemgate::message::produce_acks_and_timeout(request, at, version)?;
            // Kafka never answers acks=0.
            (acks != 0).then(|| {
                frame(
                    corr,
                    flexible,
                    &kafka_protocol::messages::ProduceResponse::default(),
                    version,
                )
            })
        }
        _ => None,
    }
}

impl Peer {
    async fn start(script: Script) -> Peer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (s, _) = listener.accept().await.unwrap();
                tokio::spawn(serve(s, port, script));
            }
        });
        Peer {
            addr: format!("127.0.0.1:{port}"),
        }
    }
}

/// Serves one connection: the proxy's own probe (client id "idemgate") is
/// answered plainly, everything else as the script says.
async fn serve(mut s: TcpStream, port: u16, script: Script) {
    let mut held: Option<Bytes> = None;
    while let Some(request) = read_frame(&mut s).await {
        let client_id_len = i16::from_be_bytes([request[8], request[9]]).max(0) as usize;
        let from_proxy_probe = &request[10..10 + client_id_len] == b"idemgate";
        let Some(response) = answer(&request, port) else {
            continue;
        };
        if from_proxy_probe {
            s.write_all(&response).await.unwrap();
            continue;
        }
        match script {
            Script::Kafka => s.write_all(&response).await.unwrap(),
            Script::Slow(d) => {
                tokio::time::sleep(d).await;
                s.write_all(&response).await.unwrap();
            }
            Script::Swap => match held.take() {
                None => held = Some(response),
                Some(first) => {
                    s.write_all(&response).await.unwrap();
                    s.write_all(&first).await.unwrap();
                }
            },
            Script::CloseAfterFirst => {
                s.write_all(&response).await.unwrap();
                return;
            }
        }
    }
}

fn api_versions(corr: i32) -> Bytes {
    request_frame(ApiKey::ApiVersions, 3, corr, &common::client_software())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_0_that_kafka_never_answers_leaves_the_order_intact() {
    let peer = Peer::start(Script::Kafka).await;
    let proxy = Proxy::start(&peer.addr).await;
    let mut conn = RawConn::connect(&proxy.bootstrap).await;
    let acks0 = ProduceRequest::default().with_acks(0).with_timeout_ms(1000);
    let acks1 = ProduceRequest::default().with_acks(1).with_timeout_ms(1000);
    // acks=0, acks=0, acks=1, ApiVersions: two answers, in order.
    let mut wire = BytesMut::new();
    for f in [
        request_frame(ApiKey::Produce, 9, 1, &acks0),
        request_frame(ApiKey::Produce, 9, 2, &acks0),
        request_frame(ApiKey::Produce, 9, 3, &acks1),
        api_versions(4),
    ] {
        wire.put_i32(f.len() as i32);
        wire.extend_from_slice(&f);
    }
    conn.send_raw(&wire).await;
    let first = conn.recv_frame().await.unwrap();
    assert_eq!(
        &first[..4],
        &3i32.to_be_bytes(),
        "the acks=1 produce answers first"
    );
    let second = conn.recv_frame().await.unwrap();
    assert_eq!(&second[..4], &4i32.to_be_bytes());
    assert_eq!(
        proxy
            .metric("idemgate_connection_errors_total{side=\"upstream\"}")
            .await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_slower_than_the_deadline_closes_the_connection() {
    let peer = Peer::start(Script::Slow(Duration::from_secs(3))).await;
    let proxy = Proxy::start_full(&peer.addr, "", "request_timeout = \"500ms\"", "").await;
    let mut conn = RawConn::connect(&proxy.bootstrap).await;
    conn.send_frame(&api_versions(1)).await;
    assert!(conn.recv_frame().await.is_none(), "closed, not answered");
    assert_eq!(
        proxy
            .wait_metric("idemgate_connection_errors_total{side=\"upstream\"}", 1.0)
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_answering_out_of_order_is_refused() {
    let peer = Peer::start(Script::Swap).await;
    let proxy = Proxy::start(&peer.addr).await;
    let mut conn = RawConn::connect(&proxy.bootstrap).await;
    let mut wire = BytesMut::new();
    for f in [api_versions(1), api_versions(2)] {
        wire.put_i32(f.len() as i32);
        wire.extend_from_slice(&f);
    }
    conn.send_raw(&wire).await;
    // Never a swapped answer: the connection closes instead.
    assert!(conn.recv_frame().await.is_none());
    assert_eq!(
        proxy
            .wait_metric("idemgate_connection_errors_total{side=\"upstream\"}", 1.0)
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_closing_an_idle_connection_closes_the_clients() {
    let peer = Peer::start(Script::CloseAfterFirst).await;
    let proxy = Proxy::start(&peer.addr).await;
    let mut conn = RawConn::connect(&proxy.bootstrap).await;
    conn.send_frame(&api_versions(1)).await;
    assert!(conn.recv_frame().await.is_some());
    // Nothing in flight; the broker hangs up; so does the proxy, promptly.
    assert!(conn.is_closed().await);
}

/// The principal `/connections` shows for this client connection.
async fn principal_of(proxy: &Proxy, conn: &RawConn) -> Option<String> {
    let me = conn.stream.local_addr().unwrap().to_string();
    let (_, body) = common::http_get(proxy.admin, "/connections").await;
    let row = body
        .lines()
        .find(|l| l.contains(&format!("\"client_addr\":\"{me}\"")))?;
    let at = row.find("\"principal\":")? + "\"principal\":".len();
    let rest = &row[at..];
    rest.strip_prefix('"')
        .map(|r| r[..r.find('"').unwrap()].to_string())
}

async fn sasl_round(conn: &mut RawConn, corr: i32, token: &'static [u8]) -> i16 {
    let req = kafka_protocol::messages::SaslAuthenticateRequest::default()
        .with_auth_bytes(Bytes::from_static(token));
    let resp: kafka_protocol::messages::SaslAuthenticateResponse =
        conn.call(ApiKey::SaslAuthenticate, 2, corr, &req).await;
    resp.error_code
}

async fn sasl_handshake(conn: &mut RawConn, mechanism: &'static str) {
    let req = kafka_protocol::messages::SaslHandshakeRequest::default()
        .with_mechanism(StrBytes::from_static_str(mechanism));
    let resp: kafka_protocol::messages::SaslHandshakeResponse =
        conn.call(ApiKey::SaslHandshake, 1, 1, &req).await;
    assert_eq!(resp.error_code, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_passes_through_and_the_principal_is_bound_only_on_success() {
    let peer = Peer::start(Script::Kafka).await;
    let proxy = Proxy::start(&peer.addr).await;

    // PLAIN, refused: the client sees the broker's error; no principal.
    let mut conn = RawConn::connect(&proxy.bootstrap).await;
    sasl_handshake(&mut conn, "PLAIN").await;
    assert_eq!(
        sasl_round(&mut conn, 2, b"\0alice\0wrong-password").await,
        58
    );
    assert_eq!(principal_of(&proxy, &conn).await, None);

    // PLAIN, accepted.
    let mut conn = RawConn::connect(&proxy.bootstrap).await;
    sasl_handshake(&mut conn, "PLAIN").await;
    assert_eq!(sasl_round(&mut conn, 2, b"\0alice\0secret").await, 0);
    assert_eq!(principal_of(&proxy, &conn).await.as_deref(), Some("alice"));

    // SCRAM: bound after the second round only.
    let mut conn = RawConn::connect(&proxy.bootstrap).await;
    sasl_handshake(&mut conn, "SCRAM-SHA-256").await;
    assert_eq!(sasl_round(&mut conn, 2, b"n,,n=bob,r=abc").await, 0);
    assert_eq!(
        principal_of(&proxy, &conn).await,
        None,
        "not after the first round"
    );
    assert_eq!(
        sasl_round(&mut conn, 3, b"c=biws,r=abcdef,p=cHJvb2Y=").await,
        0
    );
    assert_eq!(principal_of(&proxy, &conn).await.as_deref(), Some("bob"));
}

/// A Produce carrying `bytes` of (opaque) records, acks=1.
fn big_produce(bytes: usize) -> ProduceRequest {
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    let partition = PartitionProduceData::default()
        .with_index(0)
        .with_records(Some(Bytes::from(vec![0u8; bytes])));
    ProduceRequest::default()
        .with_acks(1)
        .with_timeout_ms(1000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(StrBytes::from_static_str("t").into())
            .with_partition_data(vec![partition])])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_quota_keys_on_the_principal_the_broker_accepted() {
    // The mock cluster and tansu's PLAIN are unavailable (tansu --authentication
    // has SCRAM only): this peer accepts PLAIN and SCRAM like a broker would.
    let peer = Peer::start(Script::Kafka).await;
    let proxy = Proxy::start_with(
        &peer.addr,
        "[[quotas]]\ntenant = \"alice\"\nproduce_bytes_per_sec = 10000\n",
    )
    .await;
    let throttle_of = |resp: kafka_protocol::messages::ProduceResponse| resp.throttle_time_ms;

    // alice (PLAIN, accepted): 50 kB against 10 kB/s with a 1 s burst leaves
    // 4 s of debt; one throttle is cut at quota.max_throttle (2 s).
    let mut alice = RawConn::connect(&proxy.bootstrap).await;
    sasl_handshake(&mut alice, "PLAIN").await;
    assert_eq!(sasl_round(&mut alice, 2, b"\0alice\0secret").await, 0);
    for (corr, version) in [(3, 7), (4, 9)] {
        // v7: throttle_time_ms is the last field; v9 (flexible): decoded.
        let resp = alice
            .call(ApiKey::Produce, version, corr, &big_produce(50_000))
            .await;
        assert_eq!(throttle_of(resp), 2000, "v{version}");
    }
    // A refused login binds nothing: the same bytes are not alice's.
    let mut mallory = RawConn::connect(&proxy.bootstrap).await;
    sasl_handshake(&mut mallory, "PLAIN").await;
    assert_eq!(sasl_round(&mut mallory, 2, b"\0alice\0wrong").await, 58);
    let resp = mallory
        .call(ApiKey::Produce, 7, 3, &big_produce(50_000))
        .await;
    assert_eq!(throttle_of(resp), 0, "not alice: no quota");
    // SCRAM: the user from client-first, once the exchange succeeds.
    let mut bob = RawConn::connect(&proxy.bootstrap).await;
    sasl_handshake(&mut bob, "SCRAM-SHA-256").await;
    assert_eq!(sasl_round(&mut bob, 2, b"n,,n=bob,r=abc").await, 0);
    assert_eq!(
        sasl_round(&mut bob, 3, b"c=biws,r=abcdef,p=cHJvb2Y=").await,
        0
    );
    let resp = bob.call(ApiKey::Produce, 7, 4, &big_produce(50_000)).await;
    assert_eq!(throttle_of(resp), 0, "bob has no quota");

    let (_, quotas) = common::http_get(proxy.admin, "/quotas").await;
    assert!(
        quotas.contains("\"connector\":\"proto-tests\",\"tenant\":\"alice\""),
        "{quotas}"
    );
    assert!(quotas.contains("\"tenant\":\"bob\""), "{quotas}");
    let metrics = proxy.metrics().await;
    let alice_throttle = common::metric_value(
        &metrics,
        "idemgate_throttle_seconds_total{connector=\"proto-tests\",tenant=\"alice\"}",
    );
    assert!(alice_throttle >= 4.0, "{metrics}");
    assert_eq!(
        common::metric_value(
            &metrics,
            "idemgate_throttle_seconds_total{connector=\"proto-tests\",tenant=\"bob\"}"
        ),
        0.0
    );
}
