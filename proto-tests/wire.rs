//! The wire contract, byte by byte, through the proxy to a real tansu:
//! ordering, acks=0, ApiVersions, request-derived deadlines, and hostile
//! input that must close only its own connection.

use std::time::Duration;

use crate::support;
use crate::support::{request_frame, Proxy, RawConn, Tansu};
use bytes::{BufMut, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, DescribeClusterRequest, DescribeClusterResponse, FetchResponse,
    MetadataRequest, MetadataResponse, ProduceRequest,
};

/// A working connection: ApiVersions v3 answers with our correlation id.
async fn assert_alive(conn: &mut RawConn, correlation_id: i32) {
    let resp: ApiVersionsResponse = conn
        .call(
            ApiKey::ApiVersions,
            3,
            correlation_id,
            &support::client_software(),
        )
        .await;
    assert_eq!(resp.error_code, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_versions_advertises_the_intersection() {
    let broker = Tansu::start();
    let proxy = Proxy::start(&broker.addr).await;
    let mut through = RawConn::connect(&proxy.bootstrap).await;
    let mut direct = RawConn::connect(&broker.addr).await;
    let ours: ApiVersionsResponse = through
        .call(ApiKey::ApiVersions, 3, 1, &support::client_software())
        .await;
    let theirs: ApiVersionsResponse = direct
        .call(ApiKey::ApiVersions, 3, 1, &support::client_software())
        .await;
    assert_eq!(ours.error_code, 0);
    for v in &ours.api_keys {
        let key = ApiKey::try_from(v.api_key).expect("only keys the proxy knows");
        let broker = theirs
            .api_keys
            .iter()
            .find(|b| b.api_key == v.api_key)
            .expect("only keys the broker has");
        let (min, max) = (
            idemgate::filter::api_versions::min_version(key),
            idemgate::filter::api_versions::max_version(key),
        );
        assert!(
            v.max_version <= max && v.max_version <= broker.max_version,
            "{key:?}"
        );
        if key == ApiKey::Produce {
            assert_eq!(
                v.min_version, broker.min_version,
                "Produce keeps the broker's min (KAFKA-18659)"
            );
        } else {
            assert_eq!(v.min_version, broker.min_version.max(min), "{key:?}");
        }
    }
    let produce = ours.api_keys.iter().find(|v| v.api_key == 0).unwrap();
    assert!(produce.max_version >= 9, "Produce still advertised");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_versions_newer_than_known_gets_the_v0_unsupported_answer() {
    let broker = Tansu::start();
    let proxy = Proxy::start(&broker.addr).await;
    let mut conn = RawConn::connect(&proxy.bootstrap).await;
    // A v9 ApiVersions request: header v2, then whatever v9 would carry.
    let mut frame = BytesMut::new();
    frame.put_i16(18);
    frame.put_i16(9);
    frame.put_i32(77);
    frame.put_i16(-1);
    frame.put_u8(0);
    frame.extend_from_slice(b"future fields");
    conn.send_frame(&frame).await;
    let resp = conn.recv_frame().await.unwrap();
    // Always response header v0 and message v0 (KIP-511).
    let resp: ApiVersionsResponse =
        support::decode_response_frame(ApiKey::ApiVersions, 0, 77, resp);
    assert_eq!(resp.error_code, 35, "UNSUPPORTED_VERSION");
    // ApiVersions' own range only, as Kafka answers (franz-go retries only then).
    assert_eq!(resp.api_keys.len(), 1, "{:?}", resp.api_keys);
    assert!(resp
        .api_keys
        .iter()
        .any(|v| v.api_key == 18 && v.max_version == 4));
    // The client can retry lower on the same connection.
    assert_alive(&mut conn, 78).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_answer_in_order_and_acks_0_gets_nothing() {
    let broker = Tansu::start();
    let proxy = Proxy::start(&broker.addr).await;
    let mut conn = RawConn::connect(&proxy.bootstrap).await;
    let metadata = MetadataRequest::default().with_topics(Some(vec![]));
    let produce0 = ProduceRequest::default().with_acks(0).with_timeout_ms(1000);
    // Three requests in one write: Metadata, Produce acks=0, ApiVersions.
    let frames = [
        request_frame(ApiKey::Metadata, 9, 10, &metadata),
        request_frame(ApiKey::Produce, 9, 11, &produce0),
        request_frame(ApiKey::ApiVersions, 3, 12, &support::client_software()),
    ];
    let mut wire = BytesMut::new();
    for f in &frames {
        wire.put_i32(f.len() as i32);
        wire.extend_from_slice(f);
    }
    conn.send_raw(&wire).await;
    let first = conn.recv_frame().await.unwrap();
    let md: MetadataResponse = support::decode_response_frame(ApiKey::Metadata, 9, 10, first);
    assert!(!md.brokers.is_empty());
    let second = conn.recv_frame().await.unwrap();
    let _: ApiVersionsResponse = support::decode_response_frame(ApiKey::ApiVersions, 3, 12, second);
    proxy.assert_no_leaks().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_cluster_and_metadata_carry_only_proxy_addresses() {
    let broker = Tansu::start();
    let proxy = Proxy::start(&broker.addr).await;
    let (lo, hi) = proxy.broker_ports;
    let mut conn = RawConn::connect(&proxy.bootstrap).await;
    let dc: DescribeClusterResponse = conn
        .call(
            ApiKey::DescribeCluster,
            0,
            1,
            &DescribeClusterRequest::default(),
        )
        .await;
    assert_eq!(dc.error_code, 0);
    assert!(!dc.brokers.is_empty());
    for b in &dc.brokers {
        assert_eq!(b.host.as_str(), "127.0.0.1");
        assert!((lo as i32..=hi as i32).contains(&b.port), "port {}", b.port);
    }
    for version in [1, 4, 9, 12] {
        let md: MetadataResponse = conn
            .call(ApiKey::Metadata, version, 2, &MetadataRequest::default())
            .await;
        for b in &md.brokers {
            assert_ne!(
                b.port, broker.port as i32,
                "v{version}: upstream port leaked"
            );
            assert!((lo as i32..=hi as i32).contains(&b.port));
        }
    }
    // The broker listener the proxy advertised works and reaches the same broker.
    let node_port = dc.brokers[0].port;
    let mut node = RawConn::connect(&format!("127.0.0.1:{node_port}")).await;
    assert_alive(&mut node, 3).await;
    proxy.assert_no_leaks().await;
    assert_eq!(
        proxy
            .metric("idemgate_requests_total{api=\"DescribeCluster\"}")
            .await,
        1.0
    );
}

/// Polls `/readyz` until `done` holds for its (status, body), for up to 20 s.
async fn readyz_until(
    admin: std::net::SocketAddr,
    what: &str,
    done: impl Fn(u16, &str) -> bool,
) -> String {
    let done = &done;
    support::poll_until(Duration::from_secs(20), move || async move {
        let (status, body) = support::http_get(admin, "/readyz").await;
        if done(status, &body) {
            Ok(body)
        } else {
            Err(format!(
                "{what} within 20 s; /readyz said {status} {body:?}"
            ))
        }
    })
    .await
}

/// A broker port another process holds: the proxy reports it (not ready,
/// a gauge, an error log) instead of handing out an address that refuses
/// connections, and opens the listener once the port is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_broker_port_is_not_ready_until_it_frees() {
    let broker = Tansu::start();
    let store = tempfile::tempdir().unwrap();
    let (text, _, admin) = Proxy::config_text(&broker.addr, store.path(), "", "", "");
    let (port, _) = support::free_port_range(1);
    let squatter = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let at = text.find("broker_ports = ").unwrap();
    let end = at + text[at..].find('\n').unwrap();
    let text = format!(
        "{}broker_ports = \"{port}-{port}\"{}",
        &text[..at],
        &text[end..]
    );
    let config = idemgate::config::Config::parse(&text).unwrap();
    let running = idemgate::server::start(config).await.expect("proxy starts");
    let admin: std::net::SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();

    let body = readyz_until(admin, "not ready for the taken port", |status, body| {
        status == 503 && body.contains("port is taken")
    })
    .await;
    assert!(!body.contains("upstream"), "only the port is wrong: {body}");
    let (_, metrics) = support::http_get(admin, "/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l == "idemgate_broker_listeners_missing 1"),
        "{metrics}"
    );

    drop(squatter);
    readyz_until(admin, "ready once the port is free", |status, _| {
        status == 200
    })
    .await;
    let (_, metrics) = support::http_get(admin, "/metrics").await;
    assert!(metrics
        .lines()
        .any(|l| l == "idemgate_broker_listeners_missing 0"));
    let mut node = RawConn::connect(&format!("127.0.0.1:{port}")).await;
    assert_alive(&mut node, 1).await;
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_fetch_wait_is_not_cut_by_the_base_timeout() {
    let broker = Tansu::start();
    // A 3 s base timeout: a blanket timeout would kill a 10 s long poll.
    // (The topic is made straight on the broker: CreateTopics through the
    // proxy would have only the base timeout, which a busy machine can pass.)
    support::create_topic(&broker.addr, "quiet", 1).await;
    let proxy = Proxy::start_full(&broker.addr, "", "request_timeout = \"3s\"", "").await;
    let mut conn = RawConn::connect(&proxy.bootstrap).await;
    let fetch = support::long_poll("quiet", 10_000);
    let resp: FetchResponse = conn.call(ApiKey::Fetch, 11, 2, &fetch).await;
    assert_eq!(resp.error_code, 0);
    // tansu holds an empty fetch for max_wait_ms (10 s), past the 3 s base:
    // the connection survives because the deadline came from the request.
    assert_eq!(
        proxy
            .metric("idemgate_connection_errors_total{side=\"upstream\"}")
            .await,
        0.0
    );
    assert_alive(&mut conn, 3).await;
}

/// Each of these frames must close its own connection and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_frames_close_only_their_own_connection() {
    let broker = Tansu::start();
    let proxy = Proxy::start_full(&broker.addr, "max_frame_bytes = 65536", "", "").await;
    let mut bystander = RawConn::connect(&proxy.bootstrap).await;
    assert_alive(&mut bystander, 1).await;

    let header = |key: i16, version: i16| {
        let mut b = BytesMut::new();
        b.put_i16(key);
        b.put_i16(version);
        b.put_i32(5);
        b.put_i16(-1);
        b
    };
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("negative length", (-5i32).to_be_bytes().to_vec()),
        ("oversized length", 65_537i32.to_be_bytes().to_vec()),
        ("huge length", i32::MAX.to_be_bytes().to_vec()),
        ("too short for a header", [0, 0, 0, 3, 1, 2, 3].to_vec()),
    ];
    for (name, body) in [
        ("unknown api key", header(999, 0)),
        ("impossible version", header(3, 200)),
        ("negative version", header(3, -2)),
        ("client_id past the end", {
            let mut b = header(3, 1);
            b.truncate(8);
            b.put_i16(500);
            b
        }),
    ] {
        let mut framed = (body.len() as i32).to_be_bytes().to_vec();
        framed.extend_from_slice(&body);
        cases.push((name, framed));
    }
    for (i, (name, bytes)) in cases.iter().enumerate() {
        let mut conn = RawConn::connect(&proxy.bootstrap).await;
        conn.send_raw(bytes).await;
        assert!(conn.is_closed().await, "{name}: connection must close");
        assert_alive(&mut bystander, 100 + i as i32).await;
    }
    // Truncated: half a frame, then the client hangs up.
    {
        let mut conn = RawConn::connect(&proxy.bootstrap).await;
        conn.send_raw(&[0, 0, 0, 100, 0, 3]).await;
        tokio::io::AsyncWriteExt::shutdown(&mut conn.stream)
            .await
            .unwrap();
        assert!(conn.is_closed().await);
    }
    assert_alive(&mut bystander, 200).await;
    let refused = proxy
        .wait_metric(
            "idemgate_connection_errors_total{side=\"client\"}",
            cases.len() as f64,
        )
        .await;
    assert!(
        refused >= cases.len() as f64,
        "each refusal counted: {refused}"
    );
}

/// With a limit of 2 (`listen_extra`), the third connection is closed and
/// counted under `limit`; the first two keep working; a place frees up when
/// a client leaves.
async fn only_the_third_connection_is_refused(listen_extra: &str, limit: &str) {
    let broker = Tansu::start();
    let proxy = Proxy::start_full(&broker.addr, listen_extra, "", "").await;
    let mut a = RawConn::connect(&proxy.bootstrap).await;
    let mut b = RawConn::connect(&proxy.bootstrap).await;
    assert_alive(&mut a, 1).await;
    assert_alive(&mut b, 1).await;
    let mut c = RawConn::connect(&proxy.bootstrap).await;
    assert!(c.is_closed().await, "third connection refused ({limit})");
    assert_alive(&mut a, 2).await;
    assert_alive(&mut b, 2).await;
    let series = format!("idemgate_connections_rejected_total{{limit=\"{limit}\"}}");
    assert_eq!(proxy.wait_metric(&series, 1.0).await, 1.0);
    drop(a);
    let bootstrap = &proxy.bootstrap;
    support::poll_until(Duration::from_secs(10), move || async move {
        let mut d = RawConn::connect(bootstrap).await;
        d.send_frame(&request_frame(
            ApiKey::ApiVersions,
            3,
            9,
            &support::client_software(),
        ))
        .await;
        match d.recv_frame().await {
            Some(_) => Ok(()),
            None => Err(format!("place never freed ({limit})")),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_limit_refuses_only_the_extra_connection() {
    only_the_third_connection_is_refused("max_connections = 2", "total").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_ip_limit_refuses_the_extra_connection_from_that_ip() {
    only_the_third_connection_is_refused("max_connections_per_ip = 2", "per_ip").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_close_but_a_long_poll_is_not_idle() {
    let broker = Tansu::start();
    let proxy = Proxy::start_full(&broker.addr, "idle_timeout = \"4s\"", "", "").await;
    let mut conn = RawConn::connect(&proxy.bootstrap).await;
    support::create_topic_raw(&mut conn, "idle", 1).await;
    // An 8 s long poll: longer than idle_timeout, but something is owed.
    let resp: FetchResponse = conn
        .call(ApiKey::Fetch, 11, 2, &support::long_poll("idle", 8000))
        .await;
    assert_eq!(resp.error_code, 0);
    assert_alive(&mut conn, 3).await;
    // Then nothing: closed after idle_timeout.
    assert!(conn.is_closed().await, "idle connection closed");
}

/// Writes `n` records of `size` bytes straight to the broker.
async fn fill(broker: &str, topic: &str, n: usize, size: usize) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    support::create_topic(broker, topic, 1).await;
    let producer: FutureProducer = support::client_config(broker)
        .set("message.max.bytes", "10000000")
        .create()
        .unwrap();
    let value = vec![7u8; size];
    for i in 0..n {
        let key = i.to_string();
        let record = FutureRecord::to(topic).key(&key).payload(&value);
        producer
            .send(record, Duration::from_secs(20))
            .await
            .expect("written");
    }
}

/// A Fetch of partition 0 from offset 0 returning up to 1 MiB (tansu
/// answers a max_wait_ms of 0 with no data at all).
fn fetch_from_start(topic: &'static str) -> bytes::Bytes {
    request_frame(ApiKey::Fetch, 11, 0, &support::long_poll(topic, 500))
}

/// Sends `n` pipelined Fetches on a connection whose socket buffers are
/// small, and never reads their answers.
async fn stop_reading_after(proxy: &Proxy, topic: &'static str, n: usize) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket
        .connect(proxy.bootstrap.parse().unwrap())
        .await
        .unwrap();
    let frame = fetch_from_start(topic);
    let mut wire = BytesMut::new();
    for _ in 0..n {
        wire.put_i32(frame.len() as i32);
        wire.extend_from_slice(&frame);
    }
    tokio::io::AsyncWriteExt::write_all(&mut stream, &wire)
        .await
        .unwrap();
    stream
}

/// A client that sent 24 Fetches of `big` ([`stop_reading_after`]), once the
/// proxy's reader of their responses waits for memory (`what` if it never does).
async fn stalled_client(proxy: &Proxy, what: &str) -> tokio::net::TcpStream {
    let stalled = stop_reading_after(proxy, "big", 24).await;
    assert_eq!(
        proxy
            .wait_metric("idemgate_reads_waiting_for_memory{side=\"upstream\"}", 1.0)
            .await,
        1.0,
        "{what}:\n{}",
        proxy.metrics().await
    );
    stalled
}

/// Waits until a metric stops rising for half a second, then returns it.
async fn settled(proxy: &Proxy, series: &str) -> f64 {
    let mut last = proxy.metric(series).await;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = proxy.metric(series).await;
        if now == last {
            return now;
        }
        last = now;
    }
}

/// Waits (up to 30 s) until a metric falls to 0, then returns it: memory
/// given back by a closing connection is counted just after the close.
async fn drained(proxy: &Proxy, series: &str) -> f64 {
    let start = std::time::Instant::now();
    loop {
        let v = proxy.metric(series).await;
        if v == 0.0 || start.elapsed() > Duration::from_secs(30) {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A client that pipelines Fetches and stops reading: the proxy holds at most
/// its connection's budget of their responses (the rest waits in the broker
/// socket), other clients are served meanwhile, and after write_timeout the
/// stalled client is closed and every byte it held is given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_holds_only_its_budget_and_is_closed() {
    let broker = Tansu::start();
    fill(&broker.addr, "big", 12, 100_000).await;
    let proxy = Proxy::start_full(
        &broker.addr,
        "max_in_flight_bytes = \"2MiB\"\nwrite_timeout = \"20s\"",
        "",
        "",
    )
    .await;
    // 24 responses of ~1.2 MB each: far more than kernel buffers and the
    // budget hold together.
    // The next response waits for the client (the gauge, not the counter of
    // waits, which moves only when a wait ends).
    let stalled = stalled_client(&proxy, "the responses' reader waits for the client").await;
    let held = settled(&proxy, "idemgate_in_flight_bytes").await;
    // The budget, plus the one response that may go over it.
    let one_response = 1.3e6;
    assert!(
        held > 0.0 && held <= 2.0 * 1048576.0 + one_response,
        "held {held}"
    );

    // Another client on the same proxy is served meanwhile.
    let mut other = RawConn::connect(&proxy.bootstrap).await;
    let resp: FetchResponse = other
        .call(ApiKey::Fetch, 11, 1, &support::long_poll("big", 500))
        .await;
    assert_eq!(resp.responses[0].partitions[0].error_code, 0);
    assert!(
        resp.responses[0].partitions[0]
            .records
            .as_ref()
            .unwrap()
            .len()
            > 1_000_000
    );

    // The stalled client is closed after write_timeout, and its bytes come back.
    assert_eq!(
        proxy
            .wait_metric("idemgate_write_timeouts_total", 1.0)
            .await,
        1.0
    );
    assert_eq!(drained(&proxy, "idemgate_in_flight_bytes").await, 0.0);
    drop(stalled);
    assert_alive(&mut other, 2).await;
}

/// With the overall budget spent (a stalled client's responses), a new
/// request's body is not read until memory comes back; then it goes through.
/// Nothing is refused or lost on the way.
///
/// Memory comes back when the stalled client hangs up, which the test does
/// itself: waiting for `write_timeout` instead raced a slow machine, where
/// the timeout fired before the held bytes were read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_wait_for_the_overall_budget_and_then_go_through() {
    let broker = Tansu::start();
    fill(&broker.addr, "big", 12, 100_000).await;
    let proxy = Proxy::start_full(
        &broker.addr,
        "max_frame_bytes = \"2MiB\"\nmax_in_flight_bytes = \"3MiB\"\n\
         max_in_flight_bytes_total = \"2MiB\"\nwrite_timeout = \"10m\"",
        "",
        "",
    )
    .await;
    let mut producer = RawConn::connect(&proxy.bootstrap).await;
    support::create_topic_raw(&mut producer, "small", 1).await;
    // Its responses fill its connection's budget: the next one waits. (The
    // counter of waits moves only when one ends, which here may be never:
    // how much a stalled socket takes depends on the kernel's buffers.)
    let stalled = stalled_client(
        &proxy,
        "the stalled client's responses filled its connection's budget",
    )
    .await;
    // Two ~1.1 MB responses fit the connection's 3 MiB: more than the 2 MiB
    // overall budget, which only gates reading new requests.
    let held = proxy
        .wait_metric("idemgate_in_flight_bytes", 2.0 * 1048576.0)
        .await;
    assert!(
        held >= 2.0 * 1048576.0,
        "the overall budget is spent: {held}"
    );

    // A Metadata request now waits for the stalled client's bytes.
    let metadata = MetadataRequest::default().with_topics(Some(vec![]));
    producer
        .send_frame(&support::request_frame(ApiKey::Metadata, 9, 7, &metadata))
        .await;
    assert_eq!(
        proxy
            .wait_metric("idemgate_reads_waiting_for_memory{side=\"client\"}", 1.0)
            .await,
        1.0,
        "the Metadata request waits for memory"
    );
    // The stalled client hangs up; its bytes come back and the request goes
    // through, answered in full.
    drop(stalled);
    let frame = producer.recv_frame().await.expect("the Metadata response");
    let answered: MetadataResponse = support::decode_response_frame(ApiKey::Metadata, 9, 7, frame);
    assert!(!answered.brokers.is_empty());
    assert_eq!(
        proxy
            .metric("idemgate_memory_waits_total{side=\"client\"}")
            .await,
        1.0
    );
    assert_eq!(
        proxy
            .metric("idemgate_reads_waiting_for_memory{side=\"client\"}")
            .await,
        0.0
    );
    assert_eq!(proxy.metric("idemgate_write_timeouts_total").await, 0.0);
    assert_eq!(drained(&proxy, "idemgate_in_flight_bytes").await, 0.0);
    proxy.assert_no_leaks().await;
}
