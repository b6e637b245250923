//! Golden bytes: frames captured from real clients (librdkafka 2.16 through
//! confluent-kafka, kafka-python 3.0.12) and the real broker (tansu 0.6.0),
//! listed with their source in proto-tests/golden/README.md and index.tsv.
//!
//! For every API the proxy decodes: decode → encode gives back the original
//! bytes; the in-place readers agree with a full decode; address rewriting
//! leaves nothing of the broker's address; and every record batch a client
//! sent or the broker returned goes through records.rs unchanged when
//! nothing is dropped, and validly when something is.

use std::path::PathBuf;

use bytes::Bytes;
use idemgate::codec::RequestHead;
use idemgate::filter::broker_address::{carries_upstream_address, Rewriter};
use idemgate::message::{self, Response};
use idemgate::records::{self, BatchItem, Batches, HeaderRef, SpliceMode, Spliced};
use idemgate::store::Store;
use idemgate::topology::Topology;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

struct Golden {
    file: String,
    api: ApiKey,
    version: i16,
    request: bool,
    bytes: Bytes,
}

fn goldens() -> Vec<Golden> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("proto-tests/golden");
    let index =
        std::fs::read_to_string(dir.join("index.tsv")).expect("proto-tests/golden/index.tsv");
    let mut out = Vec::new();
    for line in index.lines().skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        let bytes =
            Bytes::from(std::fs::read(dir.join(f[0])).unwrap_or_else(|e| panic!("{}: {e}", f[0])));
        assert_eq!(
            bytes.len().to_string(),
            f[8],
            "{}: length in index.tsv",
            f[0]
        );
        out.push(Golden {
            file: f[0].to_string(),
            api: ApiKey::try_from(f[1].parse::<i16>().unwrap()).unwrap(),
            version: f[2].parse().unwrap(),
            request: f[3] == "request",
            bytes,
        });
    }
    assert!(out.len() > 100, "the capture set is complete");
    out
}

/// decode → encode == original, for a request body after its header.
fn request_roundtrip<T: Decodable + Encodable>(g: &Golden, body_offset: usize) -> T {
    let mut body = g.bytes.slice(body_offset..);
    let msg = T::decode(&mut body, g.version).unwrap_or_else(|e| panic!("{}: {e}", g.file));
    assert!(body.is_empty(), "{}: bytes left after the message", g.file);
    let mut out = bytes::BytesMut::new();
    msg.encode(&mut out, g.version).unwrap();
    assert_eq!(
        &out[..],
        &g.bytes[body_offset..],
        "{}: encode(decode(bytes)) == bytes",
        g.file
    );
    msg
}

/// decode → encode == original, for a whole response frame body. `exact`:
/// byte for byte; otherwise the same message (tansu writes some tagged
/// fields at their default values, e.g. ApiVersions' finalized_features_epoch
/// = -1, which an encoder leaves out: clients read both the same).
fn response_roundtrip<T: Decodable + Encodable + message::Bounded + PartialEq + std::fmt::Debug>(
    g: &Golden,
    exact: bool,
) -> T {
    let r: Response<T> =
        Response::decode(g.api, g.version, &g.bytes).unwrap_or_else(|e| panic!("{}: {e}", g.file));
    let encoded = r.encode().unwrap();
    if exact {
        assert_eq!(
            encoded, g.bytes,
            "{}: encode(decode(bytes)) == bytes",
            g.file
        );
    } else {
        let again: T = message::decode_response(g.api, g.version, &encoded).unwrap();
        assert_eq!(
            again, r.msg,
            "{}: decode(encode(decode(bytes))) == decode(bytes)",
            g.file
        );
    }
    r.msg
}

/// The request `g` (its body at `at`) round-trips, and `peek` reads from
/// its body the value `field` reads from the decoded request.
fn peeks_as_decoded<R: Decodable + Encodable, T: PartialEq + std::fmt::Debug>(
    g: &Golden,
    at: usize,
    peek: fn(&[u8], usize, i16) -> Option<T>,
    field: impl Fn(&R) -> T,
) {
    let req: R = request_roundtrip(g, at);
    assert_eq!(
        peek(&g.bytes, at, g.version),
        Some(field(&req)),
        "{}",
        g.file
    );
}

#[test]
fn every_request_header_peeks_and_decoded_apis_round_trip() {
    let mut checked = 0;
    for g in goldens().iter().filter(|g| g.request) {
        let head = RequestHead::peek(&g.bytes).unwrap_or_else(|e| panic!("{}: {e}", g.file));
        assert_eq!(
            (head.api_key, head.api_version),
            (g.api, g.version),
            "{}",
            g.file
        );
        let at = head.body_offset;
        match g.api {
            ApiKey::Produce => peeks_as_decoded(
                g,
                at,
                message::produce_acks_and_timeout,
                |r: &ProduceRequest| (r.acks, r.timeout_ms),
            ),
            ApiKey::Fetch => {
                peeks_as_decoded(g, at, message::fetch_max_wait, |r: &FetchRequest| {
                    r.max_wait_ms
                })
            }
            ApiKey::JoinGroup => peeks_as_decoded(
                g,
                at,
                message::join_group_rebalance_timeout,
                |r: &JoinGroupRequest| r.rebalance_timeout_ms,
            ),
            // Other requests are only peeked, never decoded, so they are not
            // held to the crate's encoding (librdkafka's Metadata v12 request
            // carries bytes the v12 schema does not have).
            _ => continue,
        }
        checked += 1;
    }
    assert!(checked >= 20, "{checked}");
}

fn topology() -> (tempfile::TempDir, Topology) {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(Store::open(dir.path()).unwrap());
    (dir, Topology::load(29093..=29199, store).unwrap())
}

#[test]
fn every_decoded_response_round_trips_and_rewrites_without_leaks() {
    let (_dir, topology) = topology();
    let host = StrBytes::from_static_str("proxy.example");
    let rewriter = Rewriter {
        topology: &topology,
        advertised_host: &host,
    };
    let mut rewritten = 0;
    for g in goldens().iter().filter(|g| !g.request) {
        match g.api {
            // Re-encoded by the proxy every time: must round-trip exactly.
            ApiKey::ApiVersions => drop(response_roundtrip::<ApiVersionsResponse>(g, false)),
            ApiKey::Metadata => drop(response_roundtrip::<MetadataResponse>(g, true)),
            ApiKey::FindCoordinator => drop(response_roundtrip::<FindCoordinatorResponse>(g, true)),
            ApiKey::DescribeCluster => drop(response_roundtrip::<DescribeClusterResponse>(g, true)),
            // Decoded, but re-encoded only when KIP-951 endpoints are present.
            // tansu writes an empty node_endpoints tag the crate would not
            // write back, which is exactly why the original bytes are forwarded.
            ApiKey::Produce | ApiKey::Fetch if Rewriter::applies(g.api, g.version) => {
                let out = rewriter
                    .rewrite(g.api, g.version, &g.bytes)
                    .unwrap_or_else(|e| panic!("{}: {e}", g.file));
                assert!(
                    out.is_none(),
                    "{}: no endpoints, so the original bytes go",
                    g.file
                );
                rewritten += 1;
                continue;
            }
            _ => continue,
        }
        if Rewriter::applies(g.api, g.version) {
            let out = rewriter
                .rewrite(g.api, g.version, &g.bytes)
                .unwrap_or_else(|e| panic!("{}: {e}", g.file));
            let out = out.unwrap_or_else(|| g.bytes.clone());
            assert!(
                !carries_upstream_address(&out, &topology.upstream_addresses()),
                "{}: leak",
                g.file
            );
            assert_eq!(&out[..4], &g.bytes[..4], "{}: correlation id kept", g.file);
            rewritten += 1;
        }
    }
    assert!(rewritten >= 15, "{rewritten}");
    assert!(
        !topology.nodes().is_empty(),
        "tansu's node was learned from its answers"
    );
}

/// Every partition's records in a Produce request or Fetch response.
fn record_sets(g: &Golden) -> Vec<Bytes> {
    match (g.api, g.request) {
        (ApiKey::Produce, true) if g.version >= 3 => {
            let head = RequestHead::peek(&g.bytes).unwrap();
            let req: ProduceRequest = request_roundtrip(g, head.body_offset);
            req.topic_data
                .into_iter()
                .flat_map(|t| t.partition_data.into_iter().filter_map(|p| p.records))
                .collect()
        }
        (ApiKey::Fetch, false) => {
            let resp: FetchResponse = message::decode_response(g.api, g.version, &g.bytes).unwrap();
            resp.responses
                .into_iter()
                .flat_map(|t| t.partitions.into_iter().filter_map(|p| p.records))
                .filter(|r| !r.is_empty())
                .collect()
        }
        _ => Vec::new(),
    }
}

#[test]
fn captured_batches_pass_through_the_splicer() {
    let key = b"idempotency-key";
    let mut batches = 0;
    let mut codecs = std::collections::BTreeSet::new();
    for g in goldens() {
        for set in record_sets(&g) {
            for item in Batches::new(set) {
                let batch = match item.unwrap_or_else(|e| panic!("{}: {e}", g.file)) {
                    BatchItem::Batch(b) => b,
                    BatchItem::Legacy { .. } => continue,
                    BatchItem::PartialTail(_) => continue,
                };
                let original = batch.bytes().clone();
                let decoded = batch.decode().unwrap_or_else(|e| panic!("{}: {e}", g.file));
                codecs.insert(decoded.codec().to_string());
                let reencoded = decoded.reencode().unwrap();
                if decoded.codec() == records::Codec::None {
                    assert_eq!(reencoded, original, "{}: reencode == bytes", g.file);
                } else {
                    // Another compressor's output differs byte for byte; the
                    // records must not.
                    let again = records::decode_batch(reencoded).unwrap();
                    let a: Vec<_> = decoded.records().map(|r| r.to_record()).collect();
                    let b: Vec<_> = again.records().map(|r| r.to_record()).collect();
                    assert_eq!(a, b, "{}: same records after recompression", g.file);
                }
                let n = decoded.len();
                let keep_all = vec![true; n];
                for mode in [SpliceMode::Renumber, SpliceMode::KeepOffsets] {
                    assert!(matches!(
                        decoded.splice(&keep_all, None, mode).unwrap(),
                        Spliced::Unchanged
                    ));
                }
                // Tag every record: the produce path's common case.
                let tag = HeaderRef {
                    key,
                    value: Some(b"0123456789abcdef"),
                };
                let Spliced::Rewritten(tagged) = decoded
                    .splice(&keep_all, Some(tag), SpliceMode::Renumber)
                    .unwrap()
                else {
                    panic!("{}: tagging changes the batch", g.file)
                };
                let again = records::decode_batch(tagged.clone()).unwrap();
                assert_eq!(again.len(), n);
                assert!(again.records().all(|r| r.has_header(key)));
                let mut buf = tagged;
                let set = kafka_protocol::records::RecordBatchDecoder::decode(&mut buf).unwrap();
                assert_eq!(
                    set.records.len(),
                    n,
                    "{}: kafka-protocol reads the tagged batch",
                    g.file
                );
                // Drop every other record (fetch path shape kept).
                if n > 1 {
                    let keep: Vec<bool> = (0..n).map(|i| i % 2 == 0).collect();
                    let Spliced::Rewritten(out) = decoded
                        .splice(&keep, None, SpliceMode::KeepOffsets)
                        .unwrap()
                    else {
                        panic!("{}", g.file)
                    };
                    let out = records::decode_batch(out).unwrap();
                    assert_eq!(
                        out.header().last_offset_delta,
                        decoded.header().last_offset_delta
                    );
                    assert_eq!(out.len(), n.div_ceil(2));
                }
                batches += 1;
            }
        }
    }
    assert!(batches >= 20, "{batches}");
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        assert!(
            codecs.iter().any(|c| c.eq_ignore_ascii_case(codec)),
            "no captured {codec} batch: {codecs:?}"
        );
    }
}

// === Fuzz seeds ===
//
// scripts/fuzz seeds each fuzz target from these files. What is a golden file
// plus a prefix it makes itself at run time (the same shapes as below); the
// record sets, which take a parser to cut out, are committed in
// fuzz/seeds/record_batch/ by `write_fuzz_seeds`.

/// A response as the response fuzz targets take it: api_key, api_version, frame body.
fn response_input(g: &Golden) -> Vec<u8> {
    let mut input = Vec::with_capacity(4 + g.bytes.len());
    input.extend_from_slice(&(g.api as i16).to_be_bytes());
    input.extend_from_slice(&g.version.to_be_bytes());
    input.extend_from_slice(&g.bytes);
    input
}

#[test]
fn every_golden_frame_passes_the_fuzz_checks() {
    let goldens = goldens();
    let mut streams: std::collections::BTreeMap<&str, Vec<u8>> = Default::default();
    for g in &goldens {
        if g.request {
            let head = idemgate::fuzz::request_head(&g.bytes)
                .unwrap_or_else(|| panic!("{}: peeks", g.file));
            idemgate::fuzz::request_fields(&g.bytes, &head);
            // One client's requests, as frame_codec takes them: the largest
            // limit, 7-byte reads, then the length-prefixed frames.
            let client = g
                .file
                .split_once("_request_v")
                .and_then(|(_, rest)| rest.split_once('_'));
            let stream = streams
                .entry(client.map_or("", |(_, client)| client))
                .or_insert_with(|| vec![255, 7]);
            stream.extend_from_slice(&(g.bytes.len() as i32).to_be_bytes());
            stream.extend_from_slice(&g.bytes);
        } else {
            idemgate::fuzz::broker_address(&response_input(g));
            idemgate::fuzz::throttle_time(&response_input(g));
        }
        for set in record_sets(g) {
            idemgate::fuzz::record_batch(&set);
        }
    }
    for stream in streams.values() {
        idemgate::fuzz::frame_codec(stream);
    }
    let seeds = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/sasl");
    for entry in std::fs::read_dir(&seeds).expect("fuzz/seeds/sasl") {
        idemgate::fuzz::sasl(&std::fs::read(entry.unwrap().path()).unwrap());
    }
}

/// Writes the record sets of every golden Produce request and Fetch response
/// to fuzz/seeds/record_batch/:
/// `cargo test --test proto golden::write_fuzz_seeds -- --ignored`.
#[test]
#[ignore]
fn write_fuzz_seeds() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/record_batch");
    std::fs::create_dir_all(&dir).unwrap();
    for g in goldens() {
        for (i, set) in record_sets(&g).iter().enumerate() {
            let stem = g.file.trim_end_matches(".bin");
            std::fs::write(dir.join(format!("golden_{stem}_{i}.bin")), set).unwrap();
        }
    }
}
