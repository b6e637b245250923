use super::*;
use crate::codec::RequestHead;
use crate::error::Error;
use crate::message::{decode_request, encode_request, response_body_offset, Response};
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    api_versions_response, create_topics_response, describe_cluster_response,
    describe_configs_response, fetch_request, fetch_response, find_coordinator_response,
    metadata_response, produce_request, produce_response, ApiKey, BrokerId, ProducerId, TopicName,
    TransactionalId,
};
use kafka_protocol::protocol::{Decodable, Encodable, Message, StrBytes};
use proptest::prelude::*;

// === The messages under test ===

/// A message type with kafka-protocol-built samples for each version.
trait Sample: Bounded + Encodable + Decodable + Message {
    /// The default message and populated ones: several elements per
    /// array, nullable fields null and not, tagged fields set.
    fn samples(version: i16) -> Vec<Self>;
}

/// One message type, its generic parts as plain functions.
#[derive(Clone, Copy)]
struct Case {
    schema: &'static Schema,
    api: ApiKey,
    request: bool,
    versions: (i16, i16),
    encoded: fn(i16) -> Vec<Bytes>,
    /// kafka-protocol's decode: the bytes it consumed, or its error.
    decoded: fn(&[u8], i16) -> Result<usize, String>,
    /// kafka-protocol's decode, then its encode.
    reencoded: fn(&[u8], i16) -> Bytes,
}

fn encode<T: Encodable>(msg: &T, version: i16) -> Bytes {
    let mut out = BytesMut::new();
    msg.encode(&mut out, version).unwrap();
    out.freeze()
}

fn encoded<T: Sample>(version: i16) -> Vec<Bytes> {
    T::samples(version)
        .iter()
        .map(|m| encode(m, version))
        .collect()
}

fn decoded<T: Sample>(body: &[u8], version: i16) -> Result<usize, String> {
    let mut buf = Bytes::copy_from_slice(body);
    T::decode(&mut buf, version).map_err(|e| e.to_string())?;
    Ok(body.len() - buf.len())
}

fn reencoded<T: Sample>(body: &[u8], version: i16) -> Bytes {
    let mut buf = Bytes::copy_from_slice(body);
    encode(&T::decode(&mut buf, version).unwrap(), version)
}

fn case<T: Sample>(api: ApiKey, request: bool) -> Case {
    Case {
        schema: T::SCHEMA,
        api,
        request,
        versions: (T::VERSIONS.min, T::VERSIONS.max),
        encoded: encoded::<T>,
        decoded: decoded::<T>,
        reencoded: reencoded::<T>,
    }
}

/// Every type the proxy decodes off the wire.
fn cases() -> Vec<Case> {
    vec![
        case::<ProduceRequest>(ApiKey::Produce, true),
        case::<ProduceResponse>(ApiKey::Produce, false),
        case::<FetchRequest>(ApiKey::Fetch, true),
        case::<FetchResponse>(ApiKey::Fetch, false),
        case::<MetadataResponse>(ApiKey::Metadata, false),
        case::<FindCoordinatorResponse>(ApiKey::FindCoordinator, false),
        case::<SaslHandshakeRequest>(ApiKey::SaslHandshake, true),
        case::<ApiVersionsRequest>(ApiKey::ApiVersions, true),
        case::<ApiVersionsResponse>(ApiKey::ApiVersions, false),
        case::<EndTxnRequest>(ApiKey::EndTxn, true),
        case::<AddPartitionsToTxnRequest>(ApiKey::AddPartitionsToTxn, true),
        case::<EndTxnResponse>(ApiKey::EndTxn, false),
        case::<SaslAuthenticateRequest>(ApiKey::SaslAuthenticate, true),
        case::<SaslAuthenticateResponse>(ApiKey::SaslAuthenticate, false),
        case::<DescribeClusterResponse>(ApiKey::DescribeCluster, false),
        case::<DescribeConfigsResponse>(ApiKey::DescribeConfigs, false),
        case::<CreateTopicsResponse>(ApiKey::CreateTopics, false),
        case::<JoinGroupRequest>(ApiKey::JoinGroup, true),
        case::<ShareFetchResponse>(ApiKey::ShareFetch, false),
        case::<ShareAcknowledgeResponse>(ApiKey::ShareAcknowledge, false),
    ]
}

fn versions(case: &Case) -> impl Iterator<Item = i16> {
    case.versions.0..=case.versions.1
}

fn s(text: &'static str) -> StrBytes {
    StrBytes::from_static_str(text)
}

fn topic_id<T: std::str::FromStr>() -> T
where
    T::Err: std::fmt::Debug,
{
    "67e55044-10b1-426f-9247-bb680e5fe0c8".parse().unwrap()
}

fn future_tag() -> std::collections::BTreeMap<i32, Bytes> {
    [(90, Bytes::from_static(b"from a newer broker"))].into()
}

impl Sample for ProduceRequest {
    fn samples(v: i16) -> Vec<Self> {
        let topic = |name: &'static str, partitions: &[(i32, Option<&'static [u8]>)]| {
            let mut t = produce_request::TopicProduceData::default();
            if v <= 12 {
                t.name = TopicName(s(name));
            } else {
                t.topic_id = topic_id();
            }
            t.partition_data = partitions
                .iter()
                .map(|(index, records)| {
                    produce_request::PartitionProduceData::default()
                        .with_index(*index)
                        .with_records(records.map(Bytes::from_static))
                })
                .collect();
            t
        };
        let mut full = ProduceRequest::default()
            .with_transactional_id(Some(TransactionalId(s("connect-txn-1"))))
            .with_acks(-1)
            .with_timeout_ms(30_000)
            .with_topic_data(vec![
                topic(
                    "orders",
                    &[(0, Some(b"batch-bytes")), (1, None), (2, Some(b""))],
                ),
                topic("payments", &[(7, Some(b"x"))]),
                topic("empty", &[]),
            ]);
        if v >= 9 {
            full.unknown_tagged_fields = future_tag();
        }
        vec![ProduceRequest::default(), full]
    }
}

impl Sample for ProduceResponse {
    fn samples(v: i16) -> Vec<Self> {
        let partition = |index: i32, message: Option<&'static str>| {
            let mut p = produce_response::PartitionProduceResponse::default()
                .with_index(index)
                .with_error_code(if message.is_some() { 6 } else { 0 })
                .with_base_offset(1_000 + i64::from(index))
                .with_log_append_time_ms(1_700_000_000_000);
            if v >= 5 {
                p.log_start_offset = 17;
            }
            if v >= 8 {
                p.record_errors = vec![
                    produce_response::BatchIndexAndErrorMessage::default()
                        .with_batch_index(3)
                        .with_batch_index_error_message(Some(s("bad record"))),
                    produce_response::BatchIndexAndErrorMessage::default().with_batch_index(4),
                ];
                p.error_message = message.map(s);
            }
            if v >= 10 && message.is_some() {
                p.current_leader = produce_response::LeaderIdAndEpoch::default()
                    .with_leader_id(BrokerId(2))
                    .with_leader_epoch(9);
            }
            p
        };
        let topic = |name: &'static str, parts| {
            let mut t =
                produce_response::TopicProduceResponse::default().with_partition_responses(parts);
            if v <= 12 {
                t.name = TopicName(s(name));
            } else {
                t.topic_id = topic_id();
            }
            t
        };
        let mut full = ProduceResponse::default()
            .with_responses(vec![
                topic(
                    "orders",
                    vec![partition(0, None), partition(1, Some("not leader"))],
                ),
                topic("payments", vec![partition(5, None)]),
            ])
            .with_throttle_time_ms(250);
        if v >= 9 {
            full.unknown_tagged_fields = future_tag();
        }
        if v >= 10 {
            full.node_endpoints = vec![
                produce_response::NodeEndpoint::default()
                    .with_node_id(BrokerId(2))
                    .with_host(s("broker-2.internal"))
                    .with_port(9092)
                    .with_rack(Some(s("rack-b"))),
                produce_response::NodeEndpoint::default()
                    .with_node_id(BrokerId(3))
                    .with_host(s("broker-3.internal"))
                    .with_port(9093),
            ];
        }
        vec![ProduceResponse::default(), full]
    }
}

impl Sample for FetchRequest {
    fn samples(v: i16) -> Vec<Self> {
        let partition = |p: i32| {
            let mut fp = fetch_request::FetchPartition::default()
                .with_partition(p)
                .with_fetch_offset(400)
                .with_partition_max_bytes(1 << 20);
            if v >= 9 {
                fp.current_leader_epoch = 4;
            }
            if v >= 12 {
                fp.last_fetched_epoch = 3;
            }
            if v >= 5 {
                fp.log_start_offset = 10;
            }
            if v >= 17 {
                fp.replica_directory_id = topic_id();
            }
            if v >= 18 {
                fp.high_watermark = 380;
            }
            fp
        };
        let topic = |name: &'static str, parts: &[i32]| {
            let mut t = fetch_request::FetchTopic::default()
                .with_partitions(parts.iter().map(|p| partition(*p)).collect());
            if v <= 12 {
                t.topic = TopicName(s(name));
            } else {
                t.topic_id = topic_id();
            }
            t
        };
        let mut full = FetchRequest::default()
            .with_max_wait_ms(500)
            .with_min_bytes(1)
            .with_max_bytes(52_428_800)
            .with_isolation_level(1)
            .with_topics(vec![topic("orders", &[0, 1, 2]), topic("payments", &[])]);
        if v <= 14 {
            full.replica_id = BrokerId(-1);
        } else {
            full.replica_state = fetch_request::ReplicaState::default()
                .with_replica_id(BrokerId(3))
                .with_replica_epoch(12);
        }
        if v >= 7 {
            full.session_id = 77;
            full.session_epoch = 2;
            let mut forgotten =
                fetch_request::ForgottenTopic::default().with_partitions(vec![4, 5, 6]);
            if v <= 12 {
                forgotten.topic = TopicName(s("old-topic"));
            } else {
                forgotten.topic_id = topic_id();
            }
            full.forgotten_topics_data = vec![forgotten, Default::default()];
        }
        if v >= 11 {
            full.rack_id = s("rack-a");
        }
        if v >= 12 {
            full.cluster_id = Some(s("tansu_cluster"));
            full.unknown_tagged_fields = future_tag();
        }
        vec![FetchRequest::default(), full]
    }
}

impl Sample for FetchResponse {
    fn samples(v: i16) -> Vec<Self> {
        let partition = |index: i32, records: Option<&'static [u8]>, aborted: bool| {
            let mut p = fetch_response::PartitionData::default()
                .with_partition_index(index)
                .with_high_watermark(900)
                .with_last_stable_offset(880)
                .with_records(records.map(Bytes::from_static));
            if v >= 5 {
                p.log_start_offset = 3;
            }
            if aborted {
                p.aborted_transactions = Some(vec![
                    fetch_response::AbortedTransaction::default()
                        .with_producer_id(ProducerId(7))
                        .with_first_offset(100),
                    fetch_response::AbortedTransaction::default()
                        .with_producer_id(ProducerId(8))
                        .with_first_offset(200),
                ]);
            }
            if v >= 11 {
                p.preferred_read_replica = BrokerId(2);
            }
            if v >= 12 && aborted {
                p.diverging_epoch = fetch_response::EpochEndOffset::default()
                    .with_epoch(5)
                    .with_end_offset(870);
                p.current_leader = fetch_response::LeaderIdAndEpoch::default()
                    .with_leader_id(BrokerId(1))
                    .with_leader_epoch(6);
                p.snapshot_id = fetch_response::SnapshotId::default()
                    .with_end_offset(800)
                    .with_epoch(4);
                p.unknown_tagged_fields = future_tag();
            }
            p
        };
        let topic = |name: &'static str, parts| {
            let mut t = fetch_response::FetchableTopicResponse::default().with_partitions(parts);
            if v <= 12 {
                t.topic = TopicName(s(name));
            } else {
                t.topic_id = topic_id();
            }
            t
        };
        let mut full = FetchResponse::default()
            .with_throttle_time_ms(10)
            .with_responses(vec![
                topic(
                    "orders",
                    vec![
                        partition(0, Some(b"record-batch-bytes"), true),
                        partition(1, None, false),
                        partition(2, Some(b""), false),
                    ],
                ),
                topic("payments", vec![]),
            ]);
        if v >= 7 {
            full.error_code = 0;
            full.session_id = 99;
        }
        if v >= 12 {
            full.unknown_tagged_fields = future_tag();
        }
        if v >= 16 {
            full.node_endpoints = vec![
                fetch_response::NodeEndpoint::default()
                    .with_node_id(BrokerId(1))
                    .with_host(s("broker-1.internal"))
                    .with_port(9092)
                    .with_rack(Some(s("rack-a"))),
                fetch_response::NodeEndpoint::default()
                    .with_node_id(BrokerId(2))
                    .with_host(s("broker-2.internal"))
                    .with_port(9092),
            ];
        }
        vec![FetchResponse::default(), full]
    }
}

fn share_endpoints<E: Default>(make: fn(E, i32, StrBytes, i32, Option<StrBytes>) -> E) -> Vec<E> {
    vec![
        make(
            E::default(),
            1,
            s("broker-1.internal"),
            9092,
            Some(s("rack-a")),
        ),
        make(E::default(), 2, s("broker-2.internal"), 9092, None),
    ]
}

impl Sample for ShareFetchResponse {
    fn samples(_v: i16) -> Vec<Self> {
        use kafka_protocol::messages::share_fetch_response as sf;
        let partition = |index: i32, records: Option<&'static [u8]>| {
            sf::PartitionData::default()
                .with_partition_index(index)
                .with_error_code(if records.is_none() { 6 } else { 0 })
                .with_error_message(records.is_none().then(|| s("not the leader")))
                .with_current_leader(
                    sf::LeaderIdAndEpoch::default()
                        .with_leader_id(2)
                        .with_leader_epoch(4),
                )
                .with_records(records.map(Bytes::from_static))
                .with_acquired_records(vec![
                    sf::AcquiredRecords::default()
                        .with_first_offset(10)
                        .with_last_offset(19)
                        .with_delivery_count(1),
                    Default::default(),
                ])
                .with_unknown_tagged_fields(future_tag())
        };
        let full = ShareFetchResponse::default()
            .with_throttle_time_ms(10)
            .with_error_message(Some(s("fine")))
            .with_acquisition_lock_timeout_ms(30_000)
            .with_responses(vec![
                sf::ShareFetchableTopicResponse::default()
                    .with_topic_id(topic_id())
                    .with_partitions(vec![
                        partition(0, Some(b"record-batch-bytes")),
                        partition(1, None),
                    ]),
                Default::default(),
            ])
            .with_node_endpoints(share_endpoints(|e: sf::NodeEndpoint, id, h, p, r| {
                e.with_node_id(BrokerId(id))
                    .with_host(h)
                    .with_port(p)
                    .with_rack(r)
            }))
            .with_unknown_tagged_fields(future_tag());
        vec![ShareFetchResponse::default(), full]
    }
}

impl Sample for ShareAcknowledgeResponse {
    fn samples(_v: i16) -> Vec<Self> {
        use kafka_protocol::messages::share_acknowledge_response as sa;
        let full = ShareAcknowledgeResponse::default()
            .with_throttle_time_ms(10)
            .with_error_message(Some(s("fine")))
            .with_responses(vec![sa::ShareAcknowledgeTopicResponse::default()
                .with_topic_id(topic_id())
                .with_partitions(vec![
                    sa::PartitionData::default()
                        .with_partition_index(0)
                        .with_error_code(6)
                        .with_error_message(Some(s("not the leader")))
                        .with_current_leader(
                            sa::LeaderIdAndEpoch::default()
                                .with_leader_id(2)
                                .with_leader_epoch(4),
                        ),
                    Default::default(),
                ])])
            .with_node_endpoints(share_endpoints(|e: sa::NodeEndpoint, id, h, p, r| {
                e.with_node_id(BrokerId(id))
                    .with_host(h)
                    .with_port(p)
                    .with_rack(r)
            }))
            .with_unknown_tagged_fields(future_tag());
        vec![ShareAcknowledgeResponse::default(), full]
    }
}

impl Sample for MetadataResponse {
    fn samples(v: i16) -> Vec<Self> {
        let broker = |id: i32, rack: Option<&'static str>| {
            let mut b = metadata_response::MetadataResponseBroker::default()
                .with_node_id(BrokerId(id))
                .with_host(s("broker.internal"))
                .with_port(9090 + id);
            if v >= 1 {
                b.rack = rack.map(s);
            }
            b
        };
        let partition = |index: i32| {
            let mut p = metadata_response::MetadataResponsePartition::default()
                .with_partition_index(index)
                .with_leader_id(BrokerId(1))
                .with_replica_nodes(vec![BrokerId(1), BrokerId(2), BrokerId(3)])
                .with_isr_nodes(vec![BrokerId(1), BrokerId(2)]);
            if v >= 7 {
                p.leader_epoch = 12;
            }
            if v >= 5 {
                p.offline_replicas = vec![BrokerId(3)];
            }
            p
        };
        let topic = |name: Option<&'static str>, parts: Vec<_>| {
            let mut t = metadata_response::MetadataResponseTopic::default()
                .with_name(name.map(|n| TopicName(s(n))))
                .with_partitions(parts);
            if v >= 10 {
                t.topic_id = topic_id();
            }
            if v >= 1 {
                t.is_internal = name == Some("__consumer_offsets");
            }
            if v >= 8 {
                t.topic_authorized_operations = 0x0ff8;
            }
            t
        };
        let mut topics = vec![
            topic(
                Some("orders"),
                vec![partition(0), partition(1), partition(2)],
            ),
            topic(Some("__consumer_offsets"), vec![partition(0)]),
            topic(Some("empty"), vec![]),
        ];
        if v >= 12 {
            // Nullable from v12 (a topic asked for by id).
            topics.push(topic(None, vec![partition(0)]));
        }
        let mut full = MetadataResponse::default()
            .with_brokers(vec![
                broker(1, Some("rack-a")),
                broker(2, None),
                broker(3, Some("")),
            ])
            .with_topics(topics);
        if v >= 1 {
            full.controller_id = BrokerId(2);
        }
        if v >= 2 {
            full.cluster_id = Some(s("tansu_cluster"));
        }
        if v >= 3 {
            full.throttle_time_ms = 5;
        }
        if (8..=10).contains(&v) {
            full.cluster_authorized_operations = 0x0ff8;
        }
        if v >= 9 {
            full.unknown_tagged_fields = future_tag();
        }
        if v >= 13 {
            full.error_code = 0;
        }
        vec![MetadataResponse::default(), full]
    }
}

impl Sample for FindCoordinatorResponse {
    fn samples(v: i16) -> Vec<Self> {
        let mut full = FindCoordinatorResponse::default();
        if v >= 1 {
            full.throttle_time_ms = 20;
        }
        if v <= 3 {
            full.node_id = BrokerId(1);
            full.host = s("broker-1.internal");
            full.port = 9092;
            if v >= 1 {
                full.error_message = Some(s("none"));
            }
        } else {
            full.coordinators = vec![
                find_coordinator_response::Coordinator::default()
                    .with_key(s("connect-cluster"))
                    .with_node_id(BrokerId(1))
                    .with_host(s("broker-1.internal"))
                    .with_port(9092)
                    .with_error_message(None),
                find_coordinator_response::Coordinator::default()
                    .with_key(s("txn-1"))
                    .with_node_id(BrokerId(-1))
                    .with_error_code(15)
                    .with_error_message(Some(s("not available"))),
            ];
        }
        let mut nulls = FindCoordinatorResponse::default();
        if (1..=3).contains(&v) {
            nulls.error_message = None;
        }
        if v >= 3 {
            full.unknown_tagged_fields = future_tag();
        }
        vec![FindCoordinatorResponse::default(), nulls, full]
    }
}

impl Sample for SaslHandshakeRequest {
    fn samples(_: i16) -> Vec<Self> {
        vec![
            SaslHandshakeRequest::default(),
            SaslHandshakeRequest::default().with_mechanism(s("SCRAM-SHA-512")),
        ]
    }
}

impl Sample for ApiVersionsRequest {
    fn samples(_: i16) -> Vec<Self> {
        vec![
            ApiVersionsRequest::default(),
            ApiVersionsRequest::default()
                .with_client_software_name(s("apache-kafka-java"))
                .with_client_software_version(s("4.4.0")),
        ]
    }
}

impl Sample for ApiVersionsResponse {
    fn samples(v: i16) -> Vec<Self> {
        let key = |k: i16, max: i16| {
            api_versions_response::ApiVersion::default()
                .with_api_key(k)
                .with_min_version(0)
                .with_max_version(max)
        };
        let mut full = ApiVersionsResponse::default().with_api_keys(vec![
            key(0, 12),
            key(1, 17),
            key(3, 12),
            key(18, 4),
        ]);
        if v >= 1 {
            full.throttle_time_ms = 1;
        }
        if v >= 3 {
            full.supported_features = vec![
                api_versions_response::SupportedFeatureKey::default()
                    .with_name(s("metadata.version"))
                    .with_min_version(1)
                    .with_max_version(25),
                api_versions_response::SupportedFeatureKey::default()
                    .with_name(s("kraft.version"))
                    .with_max_version(1),
            ];
            full.finalized_features_epoch = 42;
            full.finalized_features = vec![api_versions_response::FinalizedFeatureKey::default()
                .with_name(s("metadata.version"))
                .with_max_version_level(25)
                .with_min_version_level(25)];
            full.zk_migration_ready = true;
            full.unknown_tagged_fields = future_tag();
        }
        vec![ApiVersionsResponse::default(), full]
    }
}

impl Sample for JoinGroupRequest {
    fn samples(v: i16) -> Vec<Self> {
        use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
        let protocol = |name: &'static str, metadata: &'static [u8]| {
            JoinGroupRequestProtocol::default()
                .with_name(s(name))
                .with_metadata(Bytes::from_static(metadata))
        };
        let mut full = JoinGroupRequest::default()
            .with_group_id(kafka_protocol::messages::GroupId(s("connect-pg-sink")))
            .with_session_timeout_ms(45_000)
            .with_member_id(s("connector-consumer-pg-sink-0-5b3c"))
            .with_protocol_type(s("consumer"))
            .with_protocols(vec![
                protocol("range", b"\0\x01"),
                protocol("cooperative-sticky", b""),
            ]);
        if v >= 1 {
            full.rebalance_timeout_ms = 300_000;
        }
        if v >= 5 {
            full.group_instance_id = Some(s("worker-1"));
        }
        if v >= 8 {
            full.reason = Some(s("rebalance"));
        }
        if v >= 6 {
            full.unknown_tagged_fields = future_tag();
            full.protocols[0].unknown_tagged_fields = future_tag();
        }
        vec![JoinGroupRequest::default(), full]
    }
}

impl Sample for EndTxnRequest {
    fn samples(_: i16) -> Vec<Self> {
        vec![
            EndTxnRequest::default(),
            EndTxnRequest::default()
                .with_transactional_id(TransactionalId(s("connect-txn-1")))
                .with_producer_id(ProducerId(4000))
                .with_producer_epoch(3)
                .with_committed(true),
        ]
    }
}

impl Sample for AddPartitionsToTxnRequest {
    fn samples(v: i16) -> Vec<Self> {
        use kafka_protocol::messages::add_partitions_to_txn_request::{
            AddPartitionsToTxnTopic, AddPartitionsToTxnTransaction,
        };
        let topics = vec![AddPartitionsToTxnTopic::default()
            .with_name(TopicName(s("orders")))
            .with_partitions(vec![0, 2])];
        let full = if v >= 4 {
            AddPartitionsToTxnRequest::default().with_transactions(vec![
                AddPartitionsToTxnTransaction::default()
                    .with_transactional_id(TransactionalId(s("connect-txn-1")))
                    .with_producer_id(ProducerId(4000))
                    .with_producer_epoch(3)
                    .with_verify_only(true)
                    .with_topics(topics),
            ])
        } else {
            AddPartitionsToTxnRequest::default()
                .with_v3_and_below_transactional_id(TransactionalId(s("connect-txn-1")))
                .with_v3_and_below_producer_id(ProducerId(4000))
                .with_v3_and_below_producer_epoch(3)
                .with_v3_and_below_topics(topics)
        };
        vec![AddPartitionsToTxnRequest::default(), full]
    }
}

impl Sample for DescribeConfigsResponse {
    fn samples(v: i16) -> Vec<Self> {
        let mut config = describe_configs_response::DescribeConfigsResourceResult::default()
            .with_name(s("cleanup.policy"))
            .with_value(Some(s("compact")))
            .with_config_source(1)
            .with_synonyms(vec![
                describe_configs_response::DescribeConfigsSynonym::default()
                    .with_name(s("log.cleanup.policy"))
                    .with_value(Some(s("delete")))
                    .with_source(5),
            ]);
        if v >= 3 {
            config.config_type = 2;
            config.documentation = Some(s("what cleanup does"));
        }
        let full = DescribeConfigsResponse::default()
            .with_throttle_time_ms(1)
            .with_results(vec![
                describe_configs_response::DescribeConfigsResult::default()
                    .with_resource_type(2)
                    .with_resource_name(s("orders"))
                    .with_configs(vec![
                        config,
                        describe_configs_response::DescribeConfigsResourceResult::default()
                            .with_name(s("max.message.bytes"))
                            .with_value(None),
                    ]),
                describe_configs_response::DescribeConfigsResult::default()
                    .with_error_code(3)
                    .with_error_message(Some(s("unknown topic")))
                    .with_resource_type(2)
                    .with_resource_name(s("gone")),
            ]);
        vec![DescribeConfigsResponse::default(), full]
    }
}

impl Sample for CreateTopicsResponse {
    fn samples(v: i16) -> Vec<Self> {
        let mut created = create_topics_response::CreatableTopicResult::default()
            .with_name(TopicName(s("_idemgate-window")))
            .with_error_message(Some(s("")));
        if v >= 5 {
            created = created
                .with_num_partitions(6)
                .with_replication_factor(3)
                .with_topic_config_error_code(7)
                .with_configs(Some(vec![
                    create_topics_response::CreatableTopicConfigs::default()
                        .with_name(s("retention.ms"))
                        .with_value(Some(s("7200000")))
                        .with_config_source(1),
                ]));
        }
        if v >= 7 {
            created.topic_id = topic_id();
        }
        let full = CreateTopicsResponse::default()
            .with_throttle_time_ms(1)
            .with_topics(vec![
                created,
                create_topics_response::CreatableTopicResult::default()
                    .with_name(TopicName(s("taken")))
                    .with_error_code(36)
                    .with_error_message(None),
            ]);
        vec![CreateTopicsResponse::default(), full]
    }
}

impl Sample for EndTxnResponse {
    fn samples(v: i16) -> Vec<Self> {
        let mut full = EndTxnResponse::default()
            .with_throttle_time_ms(3)
            .with_error_code(48);
        if v >= 5 {
            full.producer_id = ProducerId(4000);
            full.producer_epoch = 4;
        }
        vec![EndTxnResponse::default(), full]
    }
}

impl Sample for SaslAuthenticateRequest {
    fn samples(_: i16) -> Vec<Self> {
        vec![
            SaslAuthenticateRequest::default(),
            SaslAuthenticateRequest::default()
                .with_auth_bytes(Bytes::from_static(b"\0alice\0alice-secret")),
        ]
    }
}

impl Sample for SaslAuthenticateResponse {
    fn samples(v: i16) -> Vec<Self> {
        let mut full = SaslAuthenticateResponse::default()
            .with_error_code(58)
            .with_error_message(Some(s("Authentication failed")))
            .with_auth_bytes(Bytes::from_static(b"e=invalid-proof"));
        if v >= 1 {
            full.session_lifetime_ms = 3_600_000;
        }
        vec![SaslAuthenticateResponse::default(), full]
    }
}

impl Sample for DescribeClusterResponse {
    fn samples(v: i16) -> Vec<Self> {
        let broker = |id: i32, rack: Option<&'static str>| {
            let mut b = describe_cluster_response::DescribeClusterBroker::default()
                .with_broker_id(BrokerId(id))
                .with_host(s("broker.internal"))
                .with_port(9090 + id)
                .with_rack(rack.map(s));
            if v >= 2 {
                b.is_fenced = id == 3;
            }
            b
        };
        let mut full = DescribeClusterResponse::default()
            .with_throttle_time_ms(1)
            .with_error_message(Some(s("fine")))
            .with_cluster_id(s("tansu_cluster"))
            .with_controller_id(BrokerId(1))
            .with_brokers(vec![
                broker(1, Some("rack-a")),
                broker(2, None),
                broker(3, None),
            ])
            .with_cluster_authorized_operations(0x0ff8);
        if v >= 1 {
            full.endpoint_type = 2;
        }
        full.unknown_tagged_fields = future_tag();
        vec![DescribeClusterResponse::default(), full]
    }
}

// === Schemas ===

#[test]
fn schemas_have_the_versions_kafka_protocol_decodes() {
    for case in cases() {
        assert_eq!(case.schema.versions, case.versions, "{}", case.schema.name);
    }
}

/// An element of no bytes would let a count pass unchecked: none exist.
#[test]
fn array_elements_take_at_least_a_byte_in_every_version() {
    fn arrays(walk: &Walk, fields: &'static [Field], path: &str) {
        for f in fields.iter().filter(|f| f.in_version(walk.version)) {
            let mut ty = &f.ty;
            if let Ty::Array(element) = ty {
                assert!(
                    walk.min_size(element) >= 1,
                    "{path}.{} v{}",
                    f.name,
                    walk.version
                );
                ty = element;
            }
            if let Ty::Struct(inner) = ty {
                arrays(walk, inner, &format!("{path}.{}", f.name));
            }
        }
    }
    for case in cases() {
        for version in versions(&case) {
            let walk = Walk {
                body: &[],
                at: 0,
                end: 0,
                version,
                flexible: version >= case.schema.flexible,
                trace: None,
            };
            arrays(&walk, case.schema.fields, case.schema.name);
        }
    }
}

// === Messages kafka-protocol builds ===

/// Every built message: a name to report it by, its type, its version.
fn built() -> Vec<(String, Case, i16, Bytes)> {
    let mut out = Vec::new();
    for case in cases() {
        for version in versions(&case) {
            for (i, bytes) in (case.encoded)(version).into_iter().enumerate() {
                let name = format!("{} v{version} sample {i}", case.schema.name);
                out.push((name, case, version, bytes));
            }
        }
    }
    out
}

#[test]
fn every_message_kafka_protocol_encodes_passes_whole() {
    let built = built();
    for (name, case, version, bytes) in &built {
        assert_eq!(
            check(case.schema, *version, bytes),
            Ok(bytes.len()),
            "{name}"
        );
        assert_eq!((case.decoded)(bytes, *version), Ok(bytes.len()), "{name}");
    }
    assert!(built.len() > 100, "{}", built.len());
}

#[test]
fn every_message_cut_short_anywhere_is_refused() {
    for (name, case, version, bytes) in built() {
        for cut in 0..bytes.len() {
            assert!(
                check(case.schema, version, &bytes[..cut]).is_err(),
                "{name} cut at {cut} of {}",
                bytes.len()
            );
        }
    }
}

fn uvarint(mut n: u32) -> Vec<u8> {
    let mut out = Vec::new();
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
    out
}

/// Every length prefix of `bytes`, patched to claim far more than the
/// frame holds: 0x7fff_ffff (classic), 2^32 - 2 and 2^31 - 1 (compact).
fn patched(bytes: &[u8], prefix: Prefix) -> Vec<Vec<u8>> {
    let splice = |with: &[u8]| {
        let mut out = bytes[..prefix.at].to_vec();
        out.extend_from_slice(with);
        out.extend_from_slice(&bytes[prefix.at + prefix.width..]);
        out
    };
    match (prefix.compact, prefix.width) {
        (true, _) => vec![splice(&uvarint(u32::MAX)), splice(&uvarint(1 << 31))],
        (false, 2) => vec![splice(&i16::MAX.to_be_bytes())],
        (false, _) => vec![splice(&i32::MAX.to_be_bytes())],
    }
}

#[test]
fn every_length_claiming_billions_is_refused_where_it_stands() {
    let mut seen = [0usize; 2];
    for (name, case, version, bytes) in built() {
        let schema = case.schema;
        let mut prefixes = Vec::new();
        walk(schema, version, &bytes, Some(&mut prefixes)).unwrap();
        for prefix in prefixes {
            seen[usize::from(prefix.array)] += 1;
            for evil in patched(&bytes, prefix) {
                let refused = check(schema, version, &evil)
                    .expect_err(&format!("{name}: {prefix:?} patched"));
                assert_eq!(refused.at, prefix.at, "{name}: {refused}");
                let why = refused.why;
                // A compact prefix made wider may no longer fit in the
                // tagged field around it.
                let grew = prefix.compact && why == Why::PastTheEnd;
                if prefix.array {
                    assert!(
                        matches!(why, Why::Count { .. }) || grew,
                        "{name}: {refused}"
                    );
                } else {
                    assert!(
                        matches!(why, Why::Length { .. }) || grew,
                        "{name}: {refused}"
                    );
                }
            }
        }
    }
    let [lengths, arrays] = seen;
    assert!(
        arrays > 500 && lengths > 500,
        "{arrays} arrays, {lengths} lengths"
    );
}

// === Messages the schemas generate, checked against kafka-protocol ===

/// xorshift64*: reproducible randomness without a dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// A random message as the schema describes it, never null; tagged
/// fields present or not, and an unknown one sometimes.
fn generate(schema: &Schema, version: i16, seed: u64) -> Vec<u8> {
    struct Gen<'r> {
        rng: &'r mut Rng,
        version: i16,
        flexible: bool,
    }
    impl Gen<'_> {
        fn length(&mut self, out: &mut Vec<u8>, n: usize, width: usize) {
            if self.flexible {
                out.extend_from_slice(&uvarint(n as u32 + 1));
            } else if width == 2 {
                out.put_i16(n as i16);
            } else {
                out.put_i32(n as i32);
            }
        }
        fn value(&mut self, out: &mut Vec<u8>, ty: &'static Ty) {
            match ty {
                Ty::Fixed(n) => (0..*n).for_each(|_| out.push(self.rng.below(256) as u8)),
                Ty::String => {
                    let n = self.rng.below(6) as usize;
                    self.length(out, n, 2);
                    (0..n).for_each(|_| out.push(b'a' + self.rng.below(26) as u8));
                }
                Ty::Bytes => {
                    let n = self.rng.below(9) as usize;
                    self.length(out, n, 4);
                    (0..n).for_each(|_| out.push(self.rng.below(256) as u8));
                }
                Ty::Array(element) => {
                    let n = self.rng.below(4) as usize;
                    self.length(out, n, 4);
                    (0..n).for_each(|_| self.value(out, element));
                }
                Ty::Struct(fields) => self.fields(out, fields),
            }
        }
        fn fields(&mut self, out: &mut Vec<u8>, fields: &'static [Field]) {
            let version = self.version;
            let present = |f: &&Field| f.in_version(version);
            for f in fields.iter().filter(present).filter(|f| f.tag.is_none()) {
                self.value(out, &f.ty);
            }
            if !self.flexible {
                return;
            }
            let mut tagged: Vec<&Field> = fields
                .iter()
                .filter(present)
                .filter(|f| f.tag.is_some())
                .collect();
            tagged.retain(|_| self.rng.below(3) != 0);
            tagged.sort_by_key(|f| f.tag);
            let unknown = self.rng.below(3) == 0;
            out.extend_from_slice(&uvarint(tagged.len() as u32 + u32::from(unknown)));
            for f in tagged {
                let mut value = Vec::new();
                self.value(&mut value, &f.ty);
                out.extend_from_slice(&uvarint(f.tag.unwrap()));
                out.extend_from_slice(&uvarint(value.len() as u32));
                out.extend_from_slice(&value);
            }
            if unknown {
                let n = self.rng.below(5) as usize;
                out.extend_from_slice(&uvarint(60 + self.rng.below(200) as u32));
                out.extend_from_slice(&uvarint(n as u32));
                (0..n).for_each(|_| out.push(self.rng.below(256) as u8));
            }
        }
    }
    let mut rng = Rng(seed | 1);
    let mut gen = Gen {
        rng: &mut rng,
        version,
        flexible: version >= schema.flexible,
    };
    let mut out = Vec::new();
    gen.fields(&mut out, schema.fields);
    out
}

/// The schemas read the way kafka-protocol decodes: what they describe,
/// the crate decodes to the last byte, and what the crate encodes from
/// it passes whole.
#[test]
fn generated_messages_decode_to_the_last_byte_and_encode_back_whole() {
    for case in cases() {
        for version in versions(&case) {
            for seed in 0..150u64 {
                let name = format!("{} v{version} seed {seed}", case.schema.name);
                let bytes = generate(
                    case.schema,
                    version,
                    seed.wrapping_mul(0x9e37_79b9_7f4a_7c15),
                );
                assert_eq!(
                    check(case.schema, version, &bytes),
                    Ok(bytes.len()),
                    "{name}"
                );
                assert_eq!((case.decoded)(&bytes, version), Ok(bytes.len()), "{name}");
                let again = (case.reencoded)(&bytes, version);
                assert_eq!(
                    check(case.schema, version, &again),
                    Ok(again.len()),
                    "{name}"
                );
            }
        }
    }
}

/// What the check accepts, kafka-protocol decodes to the same end, or
/// fails on: the two never read a message differently. A count that
/// slipped through would abort this test's process.
fn agree(case: &Case, version: i16, bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(end) = check(case.schema, version, bytes) {
        if let Ok(consumed) = (case.decoded)(bytes, version) {
            prop_assert_eq!(consumed, end, "{} v{}", case.schema.name, version);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("IDEMGATE_PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(2000)
    ))]

    #[test]
    fn mutated_messages_are_refused_or_read_alike(
        which in any::<prop::sample::Index>(),
        version in any::<prop::sample::Index>(),
        seed in any::<u64>(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<Option<prop::sample::Index>>(),
    ) {
        let cases = cases();
        let case = which.get(&cases);
        let all: Vec<i16> = versions(case).collect();
        let version = *version.get(&all);
        let mut bytes = generate(case.schema, version, seed);
        if !bytes.is_empty() {
            for (at, byte) in flips {
                *at.get_mut(&mut bytes) = byte;
            }
        }
        if let Some(cut) = cut {
            bytes.truncate(cut.index(bytes.len() + 1));
        }
        agree(case, version, &bytes)?;
    }

    #[test]
    fn garbage_is_refused_or_read_alike(
        which in any::<prop::sample::Index>(),
        version in any::<prop::sample::Index>(),
        bytes in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let cases = cases();
        let case = which.get(&cases);
        let all: Vec<i16> = versions(case).collect();
        agree(case, *version.get(&all), &bytes)?;
    }
}

// === Regressions ===

/// A Metadata response of 14 bytes claiming 2^32 - 2 brokers (v12) or
/// 2^31 - 1 topics (v1): decoding it aborted the process. The check
/// refuses it, so the decode never runs.
#[test]
fn a_metadata_response_claiming_billions_of_brokers_or_topics_is_refused() {
    let mut v12 = vec![0, 0, 0, 7, 0]; // correlation_id, header tagged fields
    v12.extend_from_slice(&0i32.to_be_bytes()); // throttle_time_ms
    v12.extend_from_slice(&uvarint(u32::MAX)); // brokers: 2^32 - 2
    let mut v1 = vec![0, 0, 0, 7];
    v1.extend_from_slice(&0i32.to_be_bytes()); // brokers: none
    v1.extend_from_slice(&2i32.to_be_bytes()); // controller_id
    v1.extend_from_slice(&i32::MAX.to_be_bytes()); // topics: 2^31 - 1
    for (version, frame, field, count) in [
        (12, v12, "brokers", u64::from(u32::MAX - 1)),
        (1, v1, "topics", i32::MAX as u64),
    ] {
        let frame = Bytes::from(frame);
        let at = response_body_offset(ApiKey::Metadata, version, &frame).unwrap();
        let refused = check(&METADATA_RESPONSE, version, &frame[at..]).unwrap_err();
        assert_eq!(refused.field, field);
        assert!(
            matches!(refused.why, Why::Count { count: c, .. } if c == count),
            "{refused}"
        );
        match Response::<MetadataResponse>::decode(ApiKey::Metadata, version, &frame) {
            Err(e @ Error::Codec { .. }) => {
                assert!(e.to_string().contains("refused before decoding"), "{e}")
            }
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("v{version} decoded"),
        }
    }
}

#[test]
fn a_tag_of_2_31_or_above_is_refused() {
    // Found by the broker_address and throttle_time fuzz targets:
    // kafka-protocol 0.18 keeps such a tag as a negative i32, counts it
    // on encode but never writes it, so a re-encoded response announced
    // a tagged field it did not carry.
    let produce_v10 = |tag: u32| {
        let mut frame = vec![0, 0, 0, 1, 0]; // correlation id, no header tags
        frame.push(1); // responses: none
        frame.extend_from_slice(&0i32.to_be_bytes()); // throttle_time_ms
        frame.push(1); // one tagged field
        frame.extend_from_slice(&uvarint(tag));
        frame.extend_from_slice(&[1, 7]); // one byte
        Bytes::from(frame)
    };
    for tag in [1u32 << 31, u32::MAX] {
        let frame = produce_v10(tag);
        let refused = check(&PRODUCE_RESPONSE, 10, &frame[5..]).unwrap_err();
        assert!(
            matches!(refused.why, Why::TagTooHigh(t) if t == tag),
            "{refused}"
        );
        assert!(Response::<ProduceResponse>::decode(ApiKey::Produce, 10, &frame).is_err());
    }
    // The highest tag kafka-protocol keeps as it came still passes.
    let frame = produce_v10(i32::MAX as u32);
    assert_eq!(
        check(&PRODUCE_RESPONSE, 10, &frame[5..]).unwrap(),
        frame.len() - 5
    );
}

/// A Produce request whose topic array claims `count` entries and holds
/// none: what made the decoder allocate hundreds of GB.
fn produce_claiming(version: i16, count: u32) -> Vec<u8> {
    let frame = encode_request(ApiKey::Produce, version, 1, &ProduceRequest::default()).unwrap();
    let at = RequestHead::peek(&frame).unwrap().body_offset;
    let mut out = frame[..at].to_vec();
    let flexible = version >= 9;
    if flexible {
        out.push(0); // transactional_id: null
    } else {
        out.extend_from_slice(&(-1i16).to_be_bytes());
    }
    out.extend_from_slice(&1i16.to_be_bytes());
    out.extend_from_slice(&1000i32.to_be_bytes());
    if flexible {
        out.extend_from_slice(&uvarint(count.wrapping_add(1)));
    } else {
        out.extend_from_slice(&count.to_be_bytes());
    }
    out
}

#[test]
fn produce_requests_claiming_more_topics_than_bytes_are_not_decoded() {
    // Every version the codec lets through (v13 closes the connection).
    for version in 3..=crate::codec::MAX_PRODUCE_VERSION {
        for count in [u32::MAX - 1, i32::MAX as u32, 1 << 20, 1] {
            let frame = produce_claiming(version, count);
            let head = RequestHead::peek(&frame).unwrap();
            let refused = check(&PRODUCE_REQUEST, version, &frame[head.body_offset..]).unwrap_err();
            assert_eq!(refused.field, "topic_data", "v{version} {count}: {refused}");
            assert!(decode_request::<ProduceRequest>(&frame, &head).is_none());
        }
        let mut whole = produce_claiming(version, 0);
        if version >= 9 {
            whole.push(0); // request tagged fields
        }
        let head = RequestHead::peek(&whole).unwrap();
        let req: ProduceRequest = decode_request(&whole, &head).unwrap();
        assert_eq!((req.acks, req.timeout_ms), (1, 1000), "v{version}");
    }
}

/// Real frames (proto-tests/golden, tansu and two clients) pass whole,
/// and no prefix of one passes.
#[test]
fn captured_frames_pass_whole_and_their_cuts_do_not() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("proto-tests/golden");
    let index = std::fs::read_to_string(dir.join("index.tsv")).unwrap();
    let cases = cases();
    let mut seen = 0;
    for row in index.lines().skip(1) {
        let cols: Vec<&str> = row.split('\t').collect();
        let (file, api, version) = (cols[0], cols[1].parse::<i16>(), cols[2].parse::<i16>());
        let (api, version) = (api.unwrap(), version.unwrap());
        let request = cols[3] == "request";
        let api = ApiKey::try_from(api).unwrap();
        let Some(case) = cases.iter().find(|c| c.api == api && c.request == request) else {
            continue;
        };
        let frame = Bytes::from(std::fs::read(dir.join(file)).unwrap());
        let at = if request {
            RequestHead::peek(&frame).unwrap().body_offset
        } else {
            response_body_offset(api, version, &frame).unwrap()
        };
        let body = &frame[at..];
        assert_eq!(check(case.schema, version, body), Ok(body.len()), "{file}");
        for cut in 0..body.len() {
            assert!(
                check(case.schema, version, &body[..cut]).is_err(),
                "{file} cut at {cut}"
            );
        }
        seen += 1;
    }
    assert!(seen >= 40, "captured frames checked: {seen}");
}
