//! A scripted byte-level broker, for what no real broker here will do on
//! demand: never answer acks=0 (Kafka's behaviour; tansu answers), answer
//! late, answer out of order, close an idle connection. The peer answers the
//! proxy's own ApiVersions + Metadata probe like a one-node cluster, and
//! every other request as its script says.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support;
use crate::support::fake_broker::FakeBroker;
use crate::support::frames::read_frame;
use crate::support::{request_frame, Proxy, RawConn};
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::metadata_response::MetadataResponseBroker;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, BrokerId, MetadataResponse, ProduceRequest,
};
use kafka_protocol::protocol::{Encodable, StrBytes};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

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
    /// Answer Metadata (v9+) with a frame claiming 2^32 - 2 brokers.
    HugeMetadata,
}

struct Peer {
    addr: String,
    /// What it saw, and what it holds back until the test says.
    hooks: Arc<Hooks>,
    _broker: FakeBroker,
}

/// Holds and records, for tests that look at what the proxy itself sends.
#[derive(Default)]
struct Hooks {
    /// When set, a DescribeConfigs is answered only once the test adds a
    /// permit (one per answer), as a broker that hangs on it would.
    describe_configs_gate: Option<Semaphore>,
    /// DescribeConfigs requests answered so far.
    describe_configs_answered: AtomicUsize,
    /// Every Produce request frame the proxy forwarded, as it came.
    produced: Mutex<Vec<Bytes>>,
    /// Every StreamsGroupHeartbeat request frame, as it came.
    streams_heartbeats: Mutex<Vec<Bytes>>,
}

/// StreamsGroupHeartbeat (88, KIP-1071): a key kafka-protocol 0.18 does not
/// know. The peer answers it with [`STREAMS_ANSWER`] after the correlation
/// id; the proxy must carry both ways without reading either.
const STREAMS_GROUP_HEARTBEAT: i16 = 88;
const STREAMS_ANSWER: &[u8] = b"\0 a StreamsGroupHeartbeat answer nobody decodes";

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
                ApiKey::Fetch,
                ApiKey::Metadata,
                ApiKey::ApiVersions,
                ApiKey::SaslHandshake,
                ApiKey::SaslAuthenticate,
                ApiKey::DescribeConfigs,
            ]
            .iter()
            .map(|k| {
                let r = k.valid_versions();
                ApiVersion::default()
                    .with_api_key(*k as i16)
                    .with_min_version(r.min)
                    .with_max_version(r.max)
            })
            // A StreamsGroupHeartbeat newer than the proxy has checked.
            .chain([ApiVersion::default()
                .with_api_key(STREAMS_GROUP_HEARTBEAT)
                .with_min_version(0)
                .with_max_version(3)])
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
            let mechanisms = ["PLAIN", "SCRAM-SHA-256", "OAUTHBEARER"]
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
                .with_auth_bytes(Bytes::from_static(b"server-message"))
                // KIP-368: the client must re-authenticate within this.
                .with_session_lifetime_ms(if wrong || version < 1 { 0 } else { 60_000 });
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
        ApiKey::Fetch if request.windows(4).any(|w| w == b"idem") => {
            Some(frame(corr, flexible, &idempotent_fetch(), version))
        }
        ApiKey::Fetch => Some(frame(corr, flexible, &transactional_fetch(), version)),
        ApiKey::DescribeConfigs => {
            // Every topic asked about is a plain (delete-policy) topic.
            use kafka_protocol::messages::describe_configs_response::{
                DescribeConfigsResourceResult, DescribeConfigsResult,
            };
            use kafka_protocol::protocol::Decodable;
            let at = idemgate::codec::RequestHead::peek(request)
                .ok()?
                .body_offset;
            let mut body = Bytes::copy_from_slice(&request[at..]);
            let req = kafka_protocol::messages::DescribeConfigsRequest::decode(&mut body, version)
                .ok()?;
            let results = req
                .resources
                .iter()
                .map(|r| {
                    DescribeConfigsResult::default()
                        .with_resource_type(r.resource_type)
                        .with_resource_name(r.resource_name.clone())
                        .with_configs(vec![DescribeConfigsResourceResult::default()
                            .with_name(StrBytes::from_static_str("cleanup.policy"))
                            .with_value(Some(StrBytes::from_static_str("delete")))])
                })
                .collect();
            let resp =
                kafka_protocol::messages::DescribeConfigsResponse::default().with_results(results);
            Some(frame(corr, flexible, &resp, version))
        }
        _ => None,
    }
}

/// One batch of records for partition 0 of "txn": (key, value) pairs from
/// `base`, by `producer` (-1: not idempotent), transactional or a control
/// marker (`control`: Some(commit)).
fn batch(base: i64, producer: i64, records: &[&str], control: Option<bool>) -> Bytes {
    batch_of(base, producer, records, control, producer >= 0)
}

/// [`batch`], transactional or not as `transactional` says (an idempotent
/// producer's plain batch: a producer id, sequences, no transaction).
fn batch_of(
    base: i64,
    producer: i64,
    records: &[&str],
    control: Option<bool>,
    transactional: bool,
) -> Bytes {
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };
    let record = |i: usize, key: Bytes, value: Bytes| Record {
        transactional,
        control: control.is_some(),
        delete_horizon: false,
        partition_leader_epoch: 3,
        producer_id: producer,
        producer_epoch: 0,
        timestamp_type: TimestampType::Creation,
        offset: base + i as i64,
        // kafka-protocol starts a new batch where offset - sequence changes:
        // a plain batch's base sequence is -1, a marker's too.
        sequence: if producer >= 0 && control.is_none() {
            i as i32
        } else {
            i as i32 - 1
        },
        timestamp: 1_700_000_000_000,
        key: Some(key),
        value: Some(value),
        headers: Default::default(),
    };
    let records: Vec<Record> = match control {
        // Control record key: version 0, type 0 = ABORT, 1 = COMMIT.
        Some(commit) => vec![record(
            0,
            Bytes::from(vec![0, 0, 0, u8::from(commit)]),
            Bytes::from_static(&[0, 0, 0, 0, 0, 0]),
        )],
        None => records
            .iter()
            .enumerate()
            .map(|(i, key)| {
                record(
                    i,
                    Bytes::from(key.to_string()),
                    Bytes::from(format!("value of {key}")),
                )
            })
            .collect(),
    };
    let mut out = BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    RecordBatchEncoder::encode(&mut out, &records, &options).unwrap();
    out.freeze()
}

/// The batches of "txn" partition 0, as a read_committed Fetch gets them:
/// offsets 0-2 plain (a, b, c); 3-4 producer 7's transaction (d, e), then
/// its ABORT marker at 5; 6-7 producer 8's transaction (f, and a copy of
/// a), its COMMIT marker at 8; 9-11 plain (d, a copy of b, e).
fn txn_batches() -> Vec<Bytes> {
    vec![
        batch(0, -1, &["a", "b", "c"], None),
        batch(3, 7, &["d", "e"], None),
        batch(5, 7, &[], Some(false)),
        batch(6, 8, &["f", "a"], None),
        batch(8, 8, &[], Some(true)),
        batch(9, -1, &["d", "b", "e"], None),
    ]
}

fn transactional_fetch() -> kafka_protocol::messages::FetchResponse {
    use kafka_protocol::messages::fetch_response::{
        AbortedTransaction, FetchableTopicResponse, PartitionData,
    };
    use kafka_protocol::messages::ProducerId;
    let records: BytesMut = txn_batches().iter().fold(BytesMut::new(), |mut all, b| {
        all.extend_from_slice(b);
        all
    });
    let partition = PartitionData::default()
        .with_partition_index(0)
        .with_high_watermark(12)
        .with_last_stable_offset(12)
        .with_log_start_offset(0)
        .with_aborted_transactions(Some(vec![AbortedTransaction::default()
            .with_producer_id(ProducerId(7))
            .with_first_offset(3)]))
        .with_records(Some(records.freeze()));
    kafka_protocol::messages::FetchResponse::default()
        .with_session_id(0)
        .with_responses(vec![FetchableTopicResponse::default()
            .with_topic(StrBytes::from_static_str("txn").into())
            .with_partitions(vec![partition])])
}

/// Topic "idem", partition 0: one plain batch of idempotent producer 42
/// (epoch 0, sequence 0) holding the record "p" at offset 0.
fn idempotent_fetch() -> kafka_protocol::messages::FetchResponse {
    use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
    let partition = PartitionData::default()
        .with_partition_index(0)
        .with_high_watermark(1)
        .with_last_stable_offset(1)
        .with_log_start_offset(0)
        .with_records(Some(batch_of(0, 42, &["p"], None, false)));
    kafka_protocol::messages::FetchResponse::default()
        .with_session_id(0)
        .with_responses(vec![FetchableTopicResponse::default()
            .with_topic(StrBytes::from_static_str("idem").into())
            .with_partitions(vec![partition])])
}

/// Connections closed for an upstream's fault.
const UPSTREAM_ERRORS: &str = "idemgate_connection_errors_total{side=\"upstream\"}";

/// A peer playing `script`, and the proxy in front of it with `extra` config.
async fn behind_proxy(script: Script, extra: &str) -> (Peer, Proxy) {
    let peer = Peer::start(script).await;
    let proxy = Proxy::start_with(&peer.addr, extra).await;
    (peer, proxy)
}

/// One `[[dedup.rules]]` for every topic, dropping replays by `key`, with
/// `more` lines after it.
fn drop_rule(key: &str, more: &str) -> String {
    format!("[dedup]\n[[dedup.rules]]\ntopics = \"*\"\nkey = \"{key}\"\nmode = \"drop\"\n{more}")
}

/// The (min, max) versions of `api_key` the proxy advertises on `conn`
/// (an ApiVersions v3, correlation id 1).
async fn advertised(conn: &mut RawConn, api_key: i16) -> Option<(i16, i16)> {
    let resp: ApiVersionsResponse = conn
        .call(ApiKey::ApiVersions, 3, 1, &support::client_software())
        .await;
    resp.api_keys
        .iter()
        .find(|v| v.api_key == api_key)
        .map(|v| (v.min_version, v.max_version))
}

/// A new connection's ApiVersions is answered.
async fn assert_still_serves(proxy: &Proxy) {
    let mut next = RawConn::connect(&proxy.bootstrap).await;
    let resp: ApiVersionsResponse = next
        .call(ApiKey::ApiVersions, 3, 1, &support::client_software())
        .await;
    assert_eq!(resp.error_code, 0, "the proxy still serves");
}

impl Peer {
    async fn start(script: Script) -> Peer {
        Peer::start_hooked(script, Hooks::default()).await
    }

    async fn start_hooked(script: Script, hooks: Hooks) -> Peer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hooks = Arc::new(hooks);
        let serving = hooks.clone();
        let broker = FakeBroker::serve(listener, move |s| serve(s, port, script, serving.clone()));
        Peer {
            addr: broker.addr.clone(),
            hooks,
            _broker: broker,
        }
    }
}

/// Serves one connection: the proxy's own probe (client id "idemgate") is
/// answered plainly, everything else as the script says; `hooks` hold back
/// DescribeConfigs and record Produce requests, whoever sent them.
async fn serve(mut s: TcpStream, port: u16, script: Script, hooks: Arc<Hooks>) {
    let mut held: Option<Bytes> = None;
    while let Some(request) = read_frame(&mut s).await {
        let client_id_len = i16::from_be_bytes([request[8], request[9]]).max(0) as usize;
        let from_proxy_probe = &request[10..10 + client_id_len] == b"idemgate";
        if request[..2] == STREAMS_GROUP_HEARTBEAT.to_be_bytes() {
            hooks
                .streams_heartbeats
                .lock()
                .unwrap()
                .push(request.clone());
            let mut answer = BytesMut::new();
            answer.put_i32((4 + STREAMS_ANSWER.len()) as i32);
            answer.put_slice(&request[4..8]); // correlation_id
            answer.put_slice(STREAMS_ANSWER);
            s.write_all(&answer).await.unwrap();
            continue;
        }
        let Some(response) = answer(&request, port) else {
            continue;
        };
        match ApiKey::try_from(i16::from_be_bytes([request[0], request[1]])) {
            Ok(ApiKey::DescribeConfigs) => {
                if let Some(gate) = &hooks.describe_configs_gate {
                    gate.acquire().await.unwrap().forget();
                }
                hooks.describe_configs_answered.fetch_add(1, SeqCst);
            }
            Ok(ApiKey::Produce) => hooks.produced.lock().unwrap().push(request.clone()),
            _ => {}
        }
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
            Script::HugeMetadata if request[..2] == (ApiKey::Metadata as i16).to_be_bytes() => {
                let mut evil = BytesMut::new();
                evil.put_i32(14);
                evil.put_slice(&request[4..8]); // correlation_id
                evil.put_u8(0); // header tagged fields
                evil.put_i32(0); // throttle_time_ms
                evil.put_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]); // brokers: 2^32 - 2
                s.write_all(&evil).await.unwrap();
            }
            Script::HugeMetadata => s.write_all(&response).await.unwrap(),
        }
    }
}

fn api_versions(corr: i32) -> Bytes {
    request_frame(ApiKey::ApiVersions, 3, corr, &support::client_software())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_0_that_kafka_never_answers_leaves_the_order_intact() {
    let (_peer, proxy) = behind_proxy(Script::Kafka, "").await;
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
    assert_eq!(proxy.metric(UPSTREAM_ERRORS).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_slower_than_the_deadline_closes_the_connection() {
    let peer = Peer::start(Script::Slow(Duration::from_secs(3))).await;
    let proxy = Proxy::start_full(&peer.addr, "", "request_timeout = \"500ms\"", "").await;
    let mut conn = RawConn::connect(&proxy.bootstrap).await;
    conn.send_frame(&api_versions(1)).await;
    assert!(conn.recv_frame().await.is_none(), "closed, not answered");
    assert_eq!(proxy.wait_metric(UPSTREAM_ERRORS, 1.0).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_answering_out_of_order_is_refused() {
    let (_peer, proxy) = behind_proxy(Script::Swap, "").await;
    let mut conn = RawConn::connect(&proxy.bootstrap).await;
    let mut wire = BytesMut::new();
    for f in [api_versions(1), api_versions(2)] {
        wire.put_i32(f.len() as i32);
        wire.extend_from_slice(&f);
    }
    conn.send_raw(&wire).await;
    // Never a swapped answer: the connection closes instead.
    assert!(conn.recv_frame().await.is_none());
    assert_eq!(proxy.wait_metric(UPSTREAM_ERRORS, 1.0).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_closing_an_idle_connection_closes_the_clients() {
    let (_peer, proxy) = behind_proxy(Script::CloseAfterFirst, "").await;
    let mut conn = RawConn::connect(&proxy.bootstrap).await;
    conn.send_frame(&api_versions(1)).await;
    assert!(conn.recv_frame().await.is_some());
    // Nothing in flight; the broker hangs up; so does the proxy, promptly.
    assert!(conn.is_closed().await);
}

/// The principal `/connections` shows for this client connection.
async fn principal_of(proxy: &Proxy, conn: &RawConn) -> Option<String> {
    let me = conn.stream.local_addr().unwrap().to_string();
    let (_, body) = support::http_get(proxy.admin, "/connections").await;
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
    let (_peer, proxy) = behind_proxy(Script::Kafka, "").await;

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

/// A Produce whose topic array claims 2^32 - 2 entries in a 30-byte frame,
/// sent to a proxy with a dedup rule: kafka-protocol sized its Vec from that
/// count before reading, and the failed allocation aborted the process (this
/// test's, with the proxy in it). Now the request goes on as it came, and
/// the proxy serves the next connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_produce_claiming_billions_of_topics_does_not_take_the_proxy_down() {
    let (_peer, proxy) = behind_proxy(Script::Kafka, &drop_rule("content", "")).await;
    let mut evil = RawConn::connect(&proxy.bootstrap).await;
    let mut body = support::request_frame(
        ApiKey::Produce,
        9,
        1,
        &ProduceRequest::default().with_acks(1),
    )
    .to_vec();
    // Cut after timeout_ms; then a compact array count of 2^32 - 2.
    let head = idemgate::codec::RequestHead::peek(&body).unwrap();
    body.truncate(head.body_offset + 1 + 2 + 4);
    body.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
    evil.send_frame(&body).await;
    let _ = evil.recv_frame().await;

    assert_still_serves(&proxy).await;
}

/// A broker (or whatever answers in its place) sending a 14-byte Metadata
/// response that claims 2^32 - 2 brokers: decoding it for the address
/// rewrite aborted the process. The bounds check refuses it before the
/// decode: that connection ends as for any response that does not decode,
/// and the proxy serves the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metadata_response_claiming_billions_of_brokers_does_not_take_the_proxy_down() {
    let (_peer, proxy) = behind_proxy(Script::HugeMetadata, "").await;
    let mut evil = RawConn::connect(&proxy.bootstrap).await;
    let request = kafka_protocol::messages::MetadataRequest::default();
    evil.send_frame(&request_frame(ApiKey::Metadata, 12, 1, &request))
        .await;
    assert!(evil.recv_frame().await.is_none(), "closed, not answered");

    assert_still_serves(&proxy).await;
}

/// OAUTHBEARER client-first messages (RFC 7628) with unsigned JWTs whose
/// `sub` is svc-a, svc-b and svc-c (the broker checks tokens; the proxy only
/// reads the subject of one the broker accepted). The last carries a
/// `wrong` extension, which the peer refuses.
const OAUTH_SVC_A: &[u8] = b"n,,\x01auth=Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJzdmMtYSJ9.\x01\x01";
const OAUTH_SVC_B: &[u8] = b"n,,\x01auth=Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJzdmMtYiJ9.\x01\x01";
const OAUTH_SVC_C_REFUSED: &[u8] =
    b"n,,\x01auth=Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJzdmMtYyJ9.\x01x=wrong\x01\x01";

/// OAUTHBEARER binds the JWT's subject once the broker accepts it; a KIP-368
/// re-authentication on the same connection (a new SaslHandshake, then
/// SaslAuthenticate) binds the new subject; a refused one binds nothing (the
/// broker closes such a connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauthbearer_and_reauthentication_rebind_the_principal() {
    let (_peer, proxy) = behind_proxy(Script::Kafka, "").await;
    let mut conn = RawConn::connect(&proxy.bootstrap).await;
    sasl_handshake(&mut conn, "OAUTHBEARER").await;
    assert_eq!(sasl_round(&mut conn, 2, OAUTH_SVC_A).await, 0);
    assert_eq!(principal_of(&proxy, &conn).await.as_deref(), Some("svc-a"));

    // Re-authentication before the session lifetime ends.
    sasl_handshake(&mut conn, "OAUTHBEARER").await;
    assert_eq!(sasl_round(&mut conn, 4, OAUTH_SVC_B).await, 0);
    assert_eq!(principal_of(&proxy, &conn).await.as_deref(), Some("svc-b"));

    // Refused: the new subject is not bound.
    sasl_handshake(&mut conn, "OAUTHBEARER").await;
    assert_eq!(sasl_round(&mut conn, 6, OAUTH_SVC_C_REFUSED).await, 58);
    assert_eq!(principal_of(&proxy, &conn).await.as_deref(), Some("svc-b"));
}

/// read_committed over a topic with an aborted transaction (neither tansu nor
/// the mock cluster returns an aborted-transactions list): the aborted
/// transaction's records pass untouched and teach nothing, so their replayed
/// copies are first occurrences; a committed transaction's copy of an earlier
/// record goes; markers, the aborted list and the watermarks are untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_committed_passes_aborted_records_untouched_and_learns_nothing_from_them() {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::{FetchRequest, FetchResponse};
    use kafka_protocol::records::RecordBatchDecoder;
    let (_peer, proxy) = behind_proxy(
        Script::Kafka,
        &drop_rule("record-key", "direction = \"fetch\"\n"),
    )
    .await;
    let mut conn = RawConn::connect(&proxy.bootstrap).await;
    let fetch = |isolation: i8| {
        FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(100)
            .with_min_bytes(1)
            .with_max_bytes(1 << 20)
            .with_isolation_level(isolation)
            .with_topics(vec![FetchTopic::default()
                .with_topic(StrBytes::from_static_str("txn").into())
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(0)
                    .with_fetch_offset(0)
                    .with_partition_max_bytes(1 << 20)])])
    };
    // (offset, key, transactional, control) of every record, per batch.
    let read = |resp: &FetchResponse| {
        let p = &resp.responses[0].partitions[0];
        assert_eq!(
            (p.high_watermark, p.last_stable_offset, p.log_start_offset),
            (12, 12, 0)
        );
        assert_eq!(p.aborted_transactions.as_ref().map(Vec::len), Some(1));
        let mut bytes = p.records.clone().unwrap();
        let mut batches = Vec::new();
        while !bytes.is_empty() {
            let set = RecordBatchDecoder::decode(&mut bytes).unwrap();
            batches.push(
                set.records
                    .iter()
                    .map(|r| {
                        let key = String::from_utf8_lossy(r.key.as_deref().unwrap_or_default());
                        (r.offset, key.into_owned(), r.transactional, r.control)
                    })
                    .collect::<Vec<_>>(),
            );
        }
        (p.records.clone().unwrap(), batches)
    };
    let original = txn_batches();
    for attempt in 0..2 {
        let resp: FetchResponse = conn.call(ApiKey::Fetch, 11, 10 + attempt, &fetch(1)).await;
        let (bytes, batches) = read(&resp);
        let keys: Vec<Vec<(i64, &str)>> = batches
            .iter()
            .map(|b| {
                b.iter()
                    .filter(|r| !r.3)
                    .map(|r| (r.0, r.1.as_str()))
                    .collect()
            })
            .collect();
        assert_eq!(
            keys,
            vec![
                vec![(0, "a"), (1, "b"), (2, "c")],
                vec![(3, "d"), (4, "e")],
                vec![],
                vec![(6, "f")],
                vec![],
                vec![(9, "d"), (11, "e")],
            ],
            "read {attempt}: the committed copy of a and the copy of b go, the aborted d and e teach nothing"
        );
        // The aborted transaction and both markers are the broker's bytes.
        let mut at = original[0].len();
        for b in &original[1..3] {
            assert_eq!(
                &bytes[at..at + b.len()],
                &b[..],
                "read {attempt}: untouched"
            );
            at += b.len();
        }
        // The committed transaction keeps its producer and flag.
        assert!(batches[3].iter().all(|r| r.2), "still transactional");
    }
    // read_uncommitted: transactional batches pass whole (nobody knows yet
    // whether they commit); plain copies still go.
    let resp: FetchResponse = conn.call(ApiKey::Fetch, 11, 20, &fetch(0)).await;
    let (_, batches) = read(&resp);
    let plain: Vec<(i64, String)> = batches[5].iter().map(|r| (r.0, r.1.clone())).collect();
    assert_eq!(plain, vec![(9, "d".to_string()), (11, "e".to_string())]);
    let txn: Vec<(i64, String)> = batches[3].iter().map(|r| (r.0, r.1.clone())).collect();
    assert_eq!(txn, vec![(6, "f".to_string()), (7, "a".to_string())]);
}

/// Fetch dedup must know a topic is not compacted before it removes a
/// copy; a broker that hangs on DescribeConfigs holds a Fetch only
/// `dedup.topic_config_wait`, after which the records go as they came
/// (counted). Before, the Fetch waited for the whole lookup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_hanging_on_describe_configs_holds_a_fetch_only_topic_config_wait() {
    use kafka_protocol::messages::FetchResponse;
    let (peer, proxy) = hanging_on_describe_configs(
        &drop_rule("record-key", "direction = \"fetch\"\n").replacen(
            "[dedup]\n",
            "[dedup]\ntopic_config_wait = \"2s\"\n",
            1,
        ),
    )
    .await;
    let mut conn = RawConn::connect(&proxy.bootstrap).await;
    let fetch = support::frames::fetch_from("txn", 0, 0, 100).with_isolation_level(1);
    let direct = transactional_fetch().responses[0].partitions[0]
        .records
        .clone();
    let resp: FetchResponse = conn.call(ApiKey::Fetch, 11, 10, &fetch).await;
    assert_eq!(
        peer.hooks.describe_configs_answered.load(SeqCst),
        0,
        "answered while DescribeConfigs still hangs"
    );
    assert_eq!(
        resp.responses[0].partitions[0].records, direct,
        "the broker's records, as they came"
    );
    assert!(proxy.metric(WAITED_OUT).await > 0.0);
}

/// The fail-open a topic whose settings came too late counts under.
const WAITED_OUT: &str = "idemgate_dedup_fail_open_total{reason=\"topic_config_wait\"}";

/// A scripted Kafka whose DescribeConfigs answers wait for a permit (none
/// yet), behind a proxy with `dedup` (TOML) and a 60 s lookup timeout.
async fn hanging_on_describe_configs(dedup: &str) -> (Peer, Proxy) {
    let hooks = Hooks {
        describe_configs_gate: Some(Semaphore::new(0)),
        ..Hooks::default()
    };
    let peer = Peer::start_hooked(Script::Kafka, hooks).await;
    let proxy = Proxy::start_full(&peer.addr, "", "request_timeout = \"60s\"", dedup).await;
    (peer, proxy)
}

/// A Produce of `records` to partition 0 of "t", acks=all.
fn produce_to_t(records: Bytes) -> ProduceRequest {
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(1000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(StrBytes::from_static_str("t").into())
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(records))])])
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
    let (_peer, proxy) = behind_proxy(
        Script::Kafka,
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

    let (_, quotas) = support::http_get(proxy.admin, "/quotas").await;
    assert!(
        quotas.contains("\"connector\":\"proto-tests\",\"tenant\":\"alice\""),
        "{quotas}"
    );
    assert!(quotas.contains("\"tenant\":\"bob\""), "{quotas}");
    let metrics = proxy.metrics().await;
    let alice_throttle = support::metric_value(
        &metrics,
        "idemgate_throttle_seconds_total{connector=\"proto-tests\",tenant=\"alice\"}",
    );
    assert!(alice_throttle >= 4.0, "{metrics}");
    assert_eq!(
        support::metric_value(
            &metrics,
            "idemgate_throttle_seconds_total{connector=\"proto-tests\",tenant=\"bob\"}"
        ),
        0.0
    );
}

/// A Produce v13 request body (header v2), encoded by hand from the schema
/// (ProduceRequest.json, Kafka 4.4): acks=-1, one partition (0) per topic
/// id, each with `records`.
fn produce_v13(correlation_id: i32, topics: &[(u128, Bytes)]) -> Vec<u8> {
    fn uvarint(b: &mut Vec<u8>, mut v: u32) {
        while v >= 0x80 {
            b.push((v as u8) | 0x80);
            v >>= 7;
        }
        b.push(v as u8);
    }
    let mut b = Vec::new();
    b.put_i16(ApiKey::Produce as i16);
    b.put_i16(13);
    b.put_i32(correlation_id);
    b.put_i16(-1); // client_id: null
    b.put_u8(0); // header tagged fields
    b.put_u8(0); // transactional_id: null (compact)
    b.put_i16(-1); // acks
    b.put_i32(1000); // timeout_ms
    uvarint(&mut b, topics.len() as u32 + 1);
    for (id, records) in topics {
        b.put_u128(*id); // topic_id
        uvarint(&mut b, 2); // one partition
        b.put_i32(0); // index
        uvarint(&mut b, records.len() as u32 + 1);
        b.extend_from_slice(records);
        b.put_u8(0); // partition tagged fields
        b.put_u8(0); // topic tagged fields
    }
    b.put_u8(0); // request tagged fields
    b
}

/// Produce v13 names topics by id only (KIP-516), and the proxy advertises
/// Produce up to v12: a client that sends v13 anyway gets what Kafka 4.4
/// gives a version it does not enable (`Processor.parseRequestHeader` throws,
/// the socket closes), and the dedup filter never sees it. It used to key
/// both topics below as topic "" under the `"*"` drop rule, so the second
/// topic's identical record was dropped as a replay of the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_above_the_advertised_version_closes_like_kafka_and_is_never_filtered() {
    let (_peer, proxy) = behind_proxy(Script::Kafka, &drop_rule("content", "")).await;
    let mut conn = RawConn::connect(&proxy.bootstrap).await;
    let produce = advertised(&mut conn, ApiKey::Produce as i16).await.unwrap();
    assert_eq!(produce.1, 12, "the peer has v13, the proxy stops at v12");

    let frame = produce_v13(
        2,
        &[
            (1, batch(0, -1, &["same"], None)),
            (2, batch(0, -1, &["same"], None)),
        ],
    );
    assert_eq!(&frame[2..4], &13i16.to_be_bytes());
    conn.send_frame(&frame).await;
    assert_eq!(
        conn.recv_frame().await,
        None,
        "no answer: the connection closes"
    );

    let metrics = proxy.metrics().await;
    assert!(
        !metrics.contains("idemgate_records_total{"),
        "the dedup filter saw the v13 request: {metrics}"
    );
    assert!(
        support::metric_value(
            &metrics,
            "idemgate_connection_errors_total{side=\"client\"}"
        ) >= 1.0,
        "{metrics}"
    );
    // v12, by name, still goes through.
    let mut next = RawConn::connect(&proxy.bootstrap).await;
    let v12 = produce_to_t(batch(0, -1, &["same"], None));
    let _: kafka_protocol::messages::ProduceResponse =
        next.call(ApiKey::Produce, 12, 3, &v12).await;
}

/// SaslHandshake v0 is followed by raw SASL tokens without Kafka framing:
/// the proxy cannot read them as requests, so it advertises SaslHandshake
/// from v1 (every client since Kafka 1.0 takes v1), and a v0 handshake
/// closes the connection before it reaches the broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_handshake_v0_is_not_advertised_and_closes() {
    let (_peer, proxy) = behind_proxy(Script::Kafka, "").await;
    let mut conn = RawConn::connect(&proxy.bootstrap).await;
    let handshake = advertised(&mut conn, ApiKey::SaslHandshake as i16).await;
    assert_eq!(handshake, Some((1, 1)));

    let req = kafka_protocol::messages::SaslHandshakeRequest::default()
        .with_mechanism(StrBytes::from_static_str("PLAIN"));
    conn.send_frame(&request_frame(ApiKey::SaslHandshake, 0, 2, &req))
        .await;
    assert_eq!(conn.recv_frame().await, None, "closed, not answered");
    // v1 still works.
    let mut next = RawConn::connect(&proxy.bootstrap).await;
    sasl_handshake(&mut next, "PLAIN").await;
}

/// An idempotent producer's batch the broker wrote (its answer lost), read
/// by a sink through a fetch rule, then retried by that producer: the
/// window learned the keys from the batch, so they are the same producer's
/// own records and the retry goes to the broker, which knows the sequence
/// and deduplicates it. Judged a replay instead (the fetch path used to
/// learn every key as no producer's), the retry was answered by the proxy
/// and the producer's sequence shifted: its next batch would then land on
/// the broker's duplicate cache and be lost (audit A1's mechanism).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_retrying_its_own_batch_a_sink_already_read_goes_to_the_broker() {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{FetchRequest, FetchResponse, ProduceResponse};
    let (_peer, proxy) = behind_proxy(
        Script::Kafka,
        &drop_rule("content", "direction = \"both\"\n"),
    )
    .await;
    let mut sink = RawConn::connect(&proxy.bootstrap).await;
    let fetch = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(100)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_topics(vec![FetchTopic::default()
            .with_topic(StrBytes::from_static_str("idem").into())
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_partition_max_bytes(1 << 20)])]);
    let read: FetchResponse = sink.call(ApiKey::Fetch, 11, 1, &fetch).await;
    assert!(read.responses[0].partitions[0].records.is_some());

    let mut producer = RawConn::connect(&proxy.bootstrap).await;
    let retry = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(1000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(StrBytes::from_static_str("idem").into())
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(batch_of(0, 42, &["p"], None, false)))])]);
    let resp: ProduceResponse = producer.call(ApiKey::Produce, 9, 2, &retry).await;
    // The peer answers every Produce with no topics; the proxy, answering
    // a replay itself, would name the partition.
    assert!(
        resp.responses.is_empty(),
        "answered by the proxy, not the broker: {resp:?}"
    );
}

/// The record batch of the first partition of a Produce request frame.
fn produced_batch(frame: &[u8]) -> Bytes {
    use kafka_protocol::protocol::Decodable;
    let head = idemgate::codec::RequestHead::peek(frame).unwrap();
    let mut body = Bytes::copy_from_slice(&frame[head.body_offset..]);
    let req = ProduceRequest::decode(&mut body, head.api_version).unwrap();
    req.topic_data[0].partition_data[0].records.clone().unwrap()
}

/// A tag grows a batch, so a Produce asks the topic's `max.message.bytes`
/// (DescribeConfigs on the proxy's own connection) the first time. A broker
/// that hangs on DescribeConfigs (librdkafka's mock cluster does) used to
/// hold that Produce for the whole lookup (`upstream.request_timeout`, here
/// 60 s). Now it waits at most `dedup.topic_config_wait`, then goes on
/// untagged (still deduplicated), counted as a fail-open of its own; the
/// lookup goes on, and once the broker answers, batches are tagged again.
/// The wait is once per topic, not per partition: the first request's
/// three partitions would wait 3 x 8 s, past the 20 s the test waits for
/// an answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_hanging_on_describe_configs_holds_a_produce_only_topic_config_wait() {
    use kafka_protocol::messages::ProduceResponse;
    use kafka_protocol::records::RecordBatchDecoder;
    let (peer, proxy) = hanging_on_describe_configs(
        "[dedup]\ntopic_config_wait = \"8s\"\n\
         [[dedup.rules]]\ntopics = \"*\"\nkey = \"content\"\nmode = \"drop\"\n",
    )
    .await;
    let tagged = |batch: Bytes| {
        let mut batch = batch;
        let set = RecordBatchDecoder::decode(&mut batch).unwrap();
        set.records
            .iter()
            .all(|r| r.headers.keys().any(|k| k.as_str() == "idempotency-key"))
    };

    let mut conn = RawConn::connect(&proxy.bootstrap).await;
    let first = batch(0, -1, &["first"], None);
    let mut three = produce_to_t(first.clone());
    for (index, value) in [(1, "first-1"), (2, "first-2")] {
        let mut partition = three.topic_data[0].partition_data[0].clone();
        partition.index = index;
        partition.records = Some(batch(0, -1, &[value], None));
        three.topic_data[0].partition_data.push(partition);
    }
    let _: ProduceResponse = conn.call(ApiKey::Produce, 9, 1, &three).await;
    assert_eq!(
        peer.hooks.describe_configs_answered.load(SeqCst),
        0,
        "answered while DescribeConfigs still hangs"
    );
    let forwarded = peer.hooks.produced.lock().unwrap()[0].clone();
    assert_eq!(produced_batch(&forwarded), first, "the client's own bytes");
    assert_eq!(
        proxy.metric(WAITED_OUT).await,
        3.0,
        "a record per partition"
    );

    // The broker answers the lookup still in flight. Batches sent before
    // the proxy has read that answer still go untagged, without waiting
    // (the topic's wait ran out once); then they are tagged, and nothing
    // is asked again.
    peer.hooks
        .describe_configs_gate
        .as_ref()
        .unwrap()
        .add_permits(1);
    let mut untagged = 0.0;
    for i in 0.. {
        assert!(i < 100, "never tagged after the broker answered");
        let value = format!("after-{i}");
        let _: ProduceResponse = conn
            .call(
                ApiKey::Produce,
                9,
                2 + i,
                &produce_to_t(batch(0, -1, &[&value], None)),
            )
            .await;
        let forwarded = peer.hooks.produced.lock().unwrap()[1 + i as usize].clone();
        if tagged(produced_batch(&forwarded)) {
            break;
        }
        untagged += 1.0;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(proxy.metric(WAITED_OUT).await, 3.0 + untagged);
    assert_eq!(peer.hooks.describe_configs_answered.load(SeqCst), 1);
}

/// A StreamsGroupHeartbeat v1 request (header v2), its body opaque to the
/// proxy: whatever the client wrote must reach the broker as written.
fn streams_group_heartbeat(correlation_id: i32) -> Bytes {
    let mut b = BytesMut::new();
    b.put_i16(STREAMS_GROUP_HEARTBEAT);
    b.put_i16(1);
    b.put_i32(correlation_id);
    b.put_i16(11);
    b.put_slice(b"streams-app");
    b.put_u8(0); // header tagged fields
    b.put_slice(b"\x06group\x00\x00\x00\x00\xff\xfe not decoded by the proxy\x00");
    b.freeze()
}

/// StreamsGroupHeartbeat (KIP-1071, Kafka 4.2+) is an API key kafka-protocol
/// 0.18 does not know. The proxy used to leave it out of ApiVersions and
/// close the connection that sent it, so a Kafka Streams application with
/// `group.protocol=streams` could not run through it. Now it is advertised
/// up to the version whose schema was checked (v1, though the broker offers
/// v3), forwarded byte for byte but for the correlation id (the proxy's own
/// upstream), answered byte for byte in its place among pipelined requests;
/// a version above the checked one still closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_key_the_crate_does_not_know_passes_byte_for_byte() {
    let peer = Peer::start(Script::Kafka).await;
    let proxy = Proxy::start_with(&peer.addr, "").await;
    let mut conn = RawConn::connect(&proxy.bootstrap).await;
    let heartbeat = advertised(&mut conn, STREAMS_GROUP_HEARTBEAT).await;
    assert_eq!(heartbeat, Some((0, 1)), "advertised, cut to v1");

    // Pipelined: ApiVersions, StreamsGroupHeartbeat, ApiVersions.
    let request = streams_group_heartbeat(3);
    let mut wire = BytesMut::new();
    for f in [api_versions(2), request.clone(), api_versions(4)] {
        wire.put_i32(f.len() as i32);
        wire.extend_from_slice(&f);
    }
    conn.send_raw(&wire).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(conn.recv_frame().await.expect("an answer"));
    }
    let ids: Vec<i32> = got
        .iter()
        .map(|f| i32::from_be_bytes(f[..4].try_into().unwrap()))
        .collect();
    assert_eq!(ids, [2, 3, 4], "in order");
    assert_eq!(
        &got[1][4..],
        STREAMS_ANSWER,
        "the broker's answer, byte for byte"
    );
    let seen = peer.hooks.streams_heartbeats.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        (&seen[0][..4], &seen[0][8..]),
        (&request[..4], &request[8..]),
        "the client's request, byte for byte but for the correlation id"
    );

    // v2: not checked, not advertised; it closes like any unadvertised
    // version, and never reaches the broker.
    let mut v2 = BytesMut::from(&streams_group_heartbeat(5)[..]);
    v2[2..4].copy_from_slice(&2i16.to_be_bytes());
    conn.send_frame(&v2).await;
    assert_eq!(conn.recv_frame().await, None, "closed");
    assert_eq!(peer.hooks.streams_heartbeats.lock().unwrap().len(), 1);
    assert_still_serves(&proxy).await;
}
