//! The tests that run the fuzz entry points on stable (property tests;
//! `IDEMGATE_PROPTEST_CASES` runs more) and the regression cases the fuzz
//! targets found, one module per file whose code they check. They live here
//! and not in those files' tests because `fuzz` imports those files: a test
//! there that called back into `fuzz` would close an import cycle.

mod codec {
    use bytes::BufMut;

    use crate::codec::tests::header;
    use crate::codec::RequestHead;
    use crate::error::FrameError;

    #[test]
    fn peek_refuses_a_varint_longer_than_five_bytes() {
        // From the request_head fuzz target: kafka_protocol reads this
        // header (its varint reader stops after five bytes whatever the
        // fifth says); Kafka's ByteUtils.readUnsignedVarint refuses it, and
        // so does the peek.
        let mut b = header(11, 7, 3, Some("go"));
        b.extend_from_slice(&[1, 0x80, 0x80, 0x80, 0x80, 0x80, 0]); // one tag: tag 0, overlong
        assert_eq!(
            RequestHead::peek(&b),
            Err(FrameError::BadHeader(
                "header tagged fields run past the frame"
            ))
        );
        assert!(crate::fuzz::request_head(&b).is_none());
        // Five bytes, the last one ending the number, is the longest legal form.
        let mut b = header(11, 7, 3, Some("go"));
        b.extend_from_slice(&[1, 0x80, 0x80, 0x80, 0x80, 0x00, 0]);
        assert_eq!(RequestHead::peek(&b).unwrap().body_offset, b.len());
    }

    #[test]
    fn fuzz_frames_survives_garbage() {
        crate::fuzz::frame_codec(&[1, 3, 0, 0, 0, 3, 1, 2, 3, 0xff, 0xff, 0xff, 0xff]);
        crate::fuzz::frame_codec(&[255, 1, 0x7f, 0xff, 0xff, 0xff]);
        crate::fuzz::frame_codec(&[0, 0, 0, 0, 0, 0, 0, 0, 0]);
        crate::fuzz::frame_codec(&[]);
    }

    proptest::proptest! {
        // why: the fuzz targets' checks, on stable; IDEMGATE_PROPTEST_CASES runs more.
        #![proptest_config(proptest::test_runner::Config::with_cases(
            std::env::var("IDEMGATE_PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256)
        ))]

        #[test]
        fn fuzz_frames_on_garbage(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            crate::fuzz::frame_codec(&data);
        }

        #[test]
        fn fuzz_frames_on_small_frames(
            limit in 0u8..4,
            chunk in proptest::prelude::any::<u8>(),
            bodies in proptest::collection::vec(proptest::collection::vec(0u8..4, 0..70), 0..5),
            cut in 0usize..400,
        ) {
            let mut data = vec![limit, chunk];
            for body in bodies {
                data.extend_from_slice(&(body.len() as i32).to_be_bytes());
                data.extend_from_slice(&body);
            }
            data.truncate(2 + cut);
            crate::fuzz::frame_codec(&data);
        }

        #[test]
        fn fuzz_request_head_on_headers(
            key in -1i16..100,
            version in -1i16..20,
            correlation_id in proptest::prelude::any::<i32>(),
            id_len in -2i16..8,
            rest in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..16),
        ) {
            let mut b = Vec::new();
            b.put_i16(key);
            b.put_i16(version);
            b.put_i32(correlation_id);
            b.put_i16(id_len);
            b.extend_from_slice(&rest);
            crate::fuzz::request_head(&b);
        }
    }
}

mod message {
    use kafka_protocol::messages::{ApiKey, FetchRequest, JoinGroupRequest, ProduceRequest};
    use kafka_protocol::protocol::{Decodable, StrBytes};

    use crate::message::{
        decode_request, encode_local_response, encode_request, produce_acks_and_timeout,
    };

    proptest::proptest! {
        // why: the fuzz targets' checks, on stable; IDEMGATE_PROPTEST_CASES runs more.
        #![proptest_config(proptest::test_runner::Config::with_cases(
            std::env::var("IDEMGATE_PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256)
        ))]

        #[test]
        fn fuzz_request_fields_on_requests(
            version in 0i16..20,
            correlation_id in proptest::prelude::any::<i32>(),
            (acks, timeout) in (proptest::prelude::any::<i16>(), proptest::prelude::any::<i32>()),
            (max_bytes, level) in (proptest::prelude::any::<i32>(), 0i8..2),
            txn in proptest::option::of("[a-z]{0,8}"),
        ) {
            let mut produce = ProduceRequest::default().with_acks(acks).with_timeout_ms(timeout);
            produce.transactional_id = txn.map(|t| StrBytes::from_string(t).into());
            let fetch = FetchRequest::default()
                .with_max_wait_ms(timeout)
                .with_max_bytes(max_bytes)
                .with_isolation_level(level);
            let join = JoinGroupRequest::default()
                .with_session_timeout_ms(timeout)
                .with_rebalance_timeout_ms(if version % 10 >= 1 { timeout / 2 } else { -1 });
            let frames = [
                // v3-12: the codec closes on v13 (not advertised).
                encode_request(ApiKey::Produce, 3 + version % 10, correlation_id, &produce),
                encode_request(ApiKey::Fetch, 4 + version % 15, correlation_id, &fetch),
                encode_request(ApiKey::JoinGroup, version % 10, correlation_id, &join),
            ];
            for frame in frames.into_iter().flatten() {
                let head = crate::fuzz::request_head(&frame).expect("our own request peeks");
                crate::fuzz::request_fields(&frame, &head);
            }
        }

        #[test]
        fn fuzz_throttle_on_responses(
            version in 0i16..20,
            throttle in proptest::prelude::any::<i32>(),
            trailing in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..3),
        ) {
            use kafka_protocol::messages::{FetchResponse, ProduceResponse};
            let produce = ProduceResponse::default().with_throttle_time_ms(throttle);
            let fetch = FetchResponse::default().with_throttle_time_ms(throttle);
            let frames = [
                (ApiKey::Produce, 3 + version % 11, encode_local_response(ApiKey::Produce, 3 + version % 11, ApiKey::Produce.response_header_version(3 + version % 11), 1, &produce)),
                (ApiKey::Fetch, 4 + version % 15, encode_local_response(ApiKey::Fetch, 4 + version % 15, ApiKey::Fetch.response_header_version(4 + version % 15), 1, &fetch)),
            ];
            for (api, version, frame) in frames {
                let mut input = (api as i16).to_be_bytes().to_vec();
                input.extend_from_slice(&version.to_be_bytes());
                input.extend_from_slice(&frame.unwrap());
                input.extend_from_slice(&trailing);
                crate::fuzz::throttle_time(&input);
            }
        }
    }

    #[test]
    fn in_place_readers_refuse_an_overlong_varint_as_kafka_does() {
        // From the request_head fuzz target: kafka_protocol alone decodes
        // this Produce (acks -32768) by reading the first five bytes of a
        // six-byte varint as transactional_id's length; Kafka refuses the
        // request. The bounds check in front of the decode and the in-place
        // reader both give up, so the proxy forwards it as it came for the
        // broker to refuse.
        let frame: &[u8] = &[
            0, 0, 0, 9, 0, 0, 0, 1, 0xff, 0xff, 0, // header v2: Produce v9
            0x80, 0x80, 0x80, 0x80, 0x80, // transactional_id length, still going on...
            0x80, 0, // ...where kafka_protocol reads acks
            0x80, 0x80, 0x80, 0x80, // timeout_ms
            1, 0, // no topics, no tagged fields
        ];
        let head = crate::codec::RequestHead::peek(frame).unwrap();
        let mut body = &frame[head.body_offset..];
        let read = ProduceRequest::decode(&mut body, 9).unwrap();
        assert_eq!((read.transactional_id, read.acks), (None, -32768));
        assert_eq!(decode_request::<ProduceRequest>(frame, &head), None);
        assert_eq!(produce_acks_and_timeout(frame, head.body_offset, 9), None);
        crate::fuzz::request_fields(frame, &head);
    }
}

mod sasl {
    /// One handshake's mechanism (an index into `FUZZ_MECHANISMS`) and its tokens.
    type Exchange = (u8, Vec<Vec<u8>>);

    /// A `crate::fuzz::sasl` input.
    fn fuzz_input(exchanges: &[Exchange]) -> Vec<u8> {
        let mut out = Vec::new();
        for (mechanism, tokens) in exchanges {
            out.extend_from_slice(&[0xff, *mechanism]);
            for token in tokens {
                let len = u8::try_from(token.len()).unwrap().min(0xfe);
                out.push(len);
                out.extend_from_slice(&token[..usize::from(len)]);
            }
        }
        out
    }

    fn seed_exchanges() -> Vec<(&'static str, Vec<Exchange>)> {
        let jwt = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJzdmMtY29ubmVjdCIsInNjb3BlIjoia2Fma2EifQ.c2ln";
        let plain = (0, vec![b"\0alice\0secret".to_vec()]);
        let scram = (
            2,
            vec![
                b"n,,n=al=2Cice=3D,r=fyko+d2lbbFgONRv9qkxdawL".to_vec(),
                b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts="
                    .to_vec(),
            ],
        );
        let oauth = (
            3,
            vec![format!("n,a=svc,\x01auth=Bearer {jwt}\x01\x01").into_bytes()],
        );
        vec![
            ("plain.bin", vec![plain.clone()]),
            ("scram.bin", vec![scram.clone()]),
            ("oauthbearer.bin", vec![oauth.clone()]),
            ("reauthentication.bin", vec![plain, scram, oauth]),
        ]
    }

    #[test]
    fn fuzz_entry_on_real_exchanges() {
        for (_, exchanges) in seed_exchanges() {
            crate::fuzz::sasl(&fuzz_input(&exchanges));
        }
        assert_eq!(
            crate::fuzz::jwt_with_signature(b"\x01auth=Bearer h.p.sig\x01\x01", b"X"),
            b"\x01auth=Bearer h.p.X\x01\x01"
        );
        assert_eq!(
            crate::fuzz::plain_with_password(b"a\0b\0c\0d", b"X"),
            b"a\0b\0X"
        );
        // From the sasl fuzz target: the fuzzer wrote the marker into a PLAIN
        // user name itself; binding that name is no leak.
        let mut authcid = b"\0sric=".to_vec();
        authcid.extend_from_slice(crate::fuzz::FUZZ_SECRET);
        authcid.extend_from_slice(b"\0KaEifQ.c2ln");
        crate::fuzz::sasl(&fuzz_input(&[(0, vec![authcid])]));
    }

    /// Writes the `sasl` fuzz seeds: `cargo test --lib fuzz::tests::sasl::write_fuzz_seeds -- --ignored`.
    #[test]
    #[ignore]
    fn write_fuzz_seeds() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/sasl");
        std::fs::create_dir_all(&dir).unwrap();
        for (name, exchanges) in seed_exchanges() {
            std::fs::write(dir.join(name), fuzz_input(&exchanges)).unwrap();
        }
    }

    proptest::proptest! {
        // why: the fuzz target's checks, on stable; IDEMGATE_PROPTEST_CASES runs more.
        #![proptest_config(proptest::test_runner::Config::with_cases(
            std::env::var("IDEMGATE_PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256)
        ))]

        #[test]
        fn fuzz_entry_on_garbage(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            crate::fuzz::sasl(&data);
        }

        #[test]
        fn fuzz_entry_on_token_shapes(
            exchanges in proptest::collection::vec(
                (0u8..6, proptest::collection::vec("[\\x00-\\x02a-c=,.nru ]{0,40}(auth=Bearer [a-zA-Z0-9_.-]{0,60})?", 0..4)),
                0..4,
            ),
        ) {
            let exchanges: Vec<Exchange> = exchanges
                .into_iter()
                .map(|(m, tokens)| (m, tokens.into_iter().map(String::into_bytes).collect()))
                .collect();
            crate::fuzz::sasl(&fuzz_input(&exchanges));
        }
    }
}

mod broker_address {
    use bytes::Bytes;
    use kafka_protocol::messages::find_coordinator_response::Coordinator;
    use kafka_protocol::messages::metadata_response::MetadataResponseBroker;
    use kafka_protocol::messages::{
        ApiKey, BrokerId, DescribeClusterResponse, FetchResponse, FindCoordinatorResponse,
        MetadataResponse,
    };
    use kafka_protocol::protocol::StrBytes;

    use crate::filter::broker_address::tests::{topology, upstream};
    use crate::filter::broker_address::{carries_upstream_address, Rewriter};
    use crate::message::encode_local_response;

    fn fuzz_input(api: ApiKey, version: i16, frame: &[u8]) -> Vec<u8> {
        let mut input = (api as i16).to_be_bytes().to_vec();
        input.extend_from_slice(&version.to_be_bytes());
        input.extend_from_slice(frame);
        input
    }

    proptest::proptest! {
        // why: the fuzz target's checks, on stable; IDEMGATE_PROPTEST_CASES runs more.
        #![proptest_config(proptest::test_runner::Config::with_cases(
            std::env::var("IDEMGATE_PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256)
        ))]

        #[test]
        fn fuzz_entry_on_address_shapes(
            nodes in proptest::collection::vec((-2i32..20_000, "[a-z0-9.-]{0,12}", proptest::prelude::any::<i32>()), 0..4),
            version in 0i16..20,
            correlation_id in proptest::prelude::any::<i32>(),
        ) {
            use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
            use kafka_protocol::messages::fetch_response::NodeEndpoint;
            let host = |h: &String| StrBytes::from_string(h.clone());
            let metadata = MetadataResponse::default().with_brokers(
                nodes.iter().map(|(id, h, port)| MetadataResponseBroker::default()
                    .with_node_id(BrokerId(*id)).with_host(host(h)).with_port(*port)).collect());
            let coordinators = FindCoordinatorResponse::default()
                .with_node_id(BrokerId(nodes.first().map_or(-1, |n| n.0)))
                .with_host(nodes.first().map_or_else(StrBytes::default, |n| host(&n.1)))
                .with_coordinators(nodes.iter().map(|(id, h, port)| Coordinator::default()
                    .with_node_id(BrokerId(*id)).with_host(host(h)).with_port(*port)).collect());
            let cluster = DescribeClusterResponse::default().with_brokers(
                nodes.iter().map(|(id, h, port)| DescribeClusterBroker::default()
                    .with_broker_id(BrokerId(*id)).with_host(host(h)).with_port(*port)).collect());
            let fetch = FetchResponse::default().with_node_endpoints(
                nodes.iter().map(|(id, h, port)| NodeEndpoint::default()
                    .with_node_id(BrokerId(*id)).with_host(host(h)).with_port(*port)).collect());
            let frames = [
                (ApiKey::Metadata, version % 14, encode(ApiKey::Metadata, version % 14, correlation_id, &metadata)),
                (ApiKey::FindCoordinator, version % 7, encode(ApiKey::FindCoordinator, version % 7, correlation_id, &coordinators)),
                (ApiKey::DescribeCluster, version % 3, encode(ApiKey::DescribeCluster, version % 3, correlation_id, &cluster)),
                (ApiKey::Fetch, 16 + version % 3, encode(ApiKey::Fetch, 16 + version % 3, correlation_id, &fetch)),
            ];
            for (api, version, frame) in frames {
                // A field this version cannot carry does not encode: nothing to rewrite.
                if let Some(frame) = frame {
                    crate::fuzz::broker_address(&fuzz_input(api, version, &frame));
                }
            }
        }
    }

    fn encode<T: kafka_protocol::protocol::Encodable>(
        api: ApiKey,
        version: i16,
        correlation_id: i32,
        msg: &T,
    ) -> Option<Bytes> {
        let hv = api.response_header_version(version);
        encode_local_response(api, version, hv, correlation_id, msg).ok()
    }

    /// KIP-932: a share consumer told NOT_LEADER_OR_FOLLOWER by ShareFetch or
    /// ShareAcknowledge follows the response's `node_endpoints`, like a
    /// KIP-951 Fetch; an upstream address there takes it around the proxy.
    #[test]
    fn share_fetch_and_acknowledge_endpoints() {
        use kafka_protocol::messages::{share_acknowledge_response, share_fetch_response};
        use kafka_protocol::messages::{ShareAcknowledgeResponse, ShareFetchResponse};
        let (_d, t) = topology();
        let host = StrBytes::from_static_str("127.0.0.1");
        let r = Rewriter {
            topology: &t,
            advertised_host: &host,
        };
        let fetch = ShareFetchResponse::default().with_node_endpoints(vec![
            share_fetch_response::NodeEndpoint::default()
                .with_node_id(BrokerId(2))
                .with_host(StrBytes::from_static_str("10.1.2.3"))
                .with_port(9092),
        ]);
        let ack = ShareAcknowledgeResponse::default().with_node_endpoints(vec![
            share_acknowledge_response::NodeEndpoint::default()
                .with_node_id(BrokerId(2))
                .with_host(StrBytes::from_static_str("10.1.2.3"))
                .with_port(9092),
        ]);
        let frames = [
            (ApiKey::ShareFetch, encode(ApiKey::ShareFetch, 1, 7, &fetch)),
            (
                ApiKey::ShareAcknowledge,
                encode(ApiKey::ShareAcknowledge, 1, 7, &ack),
            ),
        ];
        for (api, frame) in frames {
            let frame = frame.unwrap();
            assert!(carries_upstream_address(&frame, &upstream()));
            assert!(Rewriter::applies(api, 1), "{api:?}");
            let out = r.rewrite(api, 1, &frame).unwrap().expect("rewritten");
            assert!(!carries_upstream_address(&out, &upstream()), "{api:?}");
            crate::fuzz::broker_address(&fuzz_input(api, 1, &frame));
        }
        let empty = encode(ApiKey::ShareFetch, 1, 7, &ShareFetchResponse::default()).unwrap();
        assert!(r.rewrite(ApiKey::ShareFetch, 1, &empty).unwrap().is_none());
    }
}

mod records {
    use proptest::prelude::*;

    use crate::records::tests::{arb_record, fix_crc};
    use crate::records::{BatchBuilder, Codec, Record};

    proptest! {
        // why: IDEMGATE_PROPTEST_CASES=100000 turns this into a soak run on stable, where
        // cargo-fuzz (nightly) is not available.
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("IDEMGATE_PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(192)
        ))]

        #[test]
        fn fuzz_entry_on_garbage(data in prop::collection::vec(any::<u8>(), 0..300)) {
            crate::fuzz::record_batch(&data);
        }

        #[test]
        fn fuzz_entry_on_mutated_batches(
            codec in prop::sample::select(Codec::ALL.to_vec()),
            records in prop::collection::vec(arb_record(), 0..6),
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
            fix in any::<bool>(),
            cut in any::<prop::sample::Index>(),
        ) {
            let records: Vec<Record> = records
                .into_iter()
                .enumerate()
                .map(|(i, r)| Record { offset_delta: i as i32, ..r })
                .collect();
            let good = BatchBuilder::new(codec).build(&records).unwrap();
            let mut v = good.to_vec();
            v.extend_from_slice(&good);
            for (at, byte) in flips {
                // after baseOffset: every other byte can change how the batch frames
                let i = 8 + at.index(v.len() - 8);
                v[i] = byte;
            }
            if fix {
                fix_crc(&mut v[..good.len()]);
            }
            v.truncate(good.len() + cut.index(good.len() + 1));
            crate::fuzz::record_batch(&v);
        }
    }
}
