//! The spliced frame is byte for byte what kafka-protocol encodes for the
//! same changed request, in every version, flexible or not.

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ProduceRequest, TopicName};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use proptest::prelude::*;

use super::{splice_produce, PartitionEdit};

/// Stands for the request header: the splice copies it as it is.
const HEADER: &[u8] = b"\x00\x00\x00\x09\x00\x00\x00\x07\x00\x03abc";

fn tags(on: bool, seed: u8) -> BTreeMap<i32, Bytes> {
    let mut t = BTreeMap::new();
    if on {
        t.insert(
            i32::from(seed % 3),
            Bytes::from(vec![seed; usize::from(seed % 4)]),
        );
        t.insert(7 + i32::from(seed % 2), Bytes::from_static(b"tag"));
    }
    t
}

fn records(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

/// `shape[t]`: topic `t`'s partitions' records lengths (`None`: null).
fn request(version: i16, shape: &[Vec<Option<usize>>], tagged: bool) -> ProduceRequest {
    let flexible = version >= 9;
    let topics = shape
        .iter()
        .enumerate()
        .map(|(t, parts)| {
            let mut topic = TopicProduceData::default()
                .with_partition_data(
                    parts
                        .iter()
                        .enumerate()
                        .map(|(p, len)| {
                            PartitionProduceData::default()
                                .with_index(p as i32 * 3 + t as i32)
                                .with_records(len.map(|n| records(n, (t * 7 + p) as u8)))
                                .with_unknown_tagged_fields(tags(
                                    flexible && tagged && p % 2 == 0,
                                    p as u8,
                                ))
                        })
                        .collect(),
                )
                .with_unknown_tagged_fields(tags(flexible && tagged, t as u8));
            // v13 names a topic by its id (left nil here: 16 bytes all the same).
            if version < 13 {
                topic.name = TopicName(StrBytes::from_string(format!("topic-{t}")));
            }
            topic
        })
        .collect();
    ProduceRequest::default()
        .with_acks(-1)
        // Its last byte has the varint continuation bit: a walker that
        // looked back for where the topics' count starts would misread it.
        .with_timeout_ms(0x7580)
        .with_topic_data(topics)
        .with_unknown_tagged_fields(tags(flexible && tagged, 9))
}

fn frame_of(req: &ProduceRequest, version: i16) -> BytesMut {
    let mut out = BytesMut::new();
    out.put_slice(HEADER);
    req.encode(&mut out, version).unwrap();
    out
}

/// What the filter did before: the decoded request changed, then encoded.
fn encoded_after(req: &ProduceRequest, version: i16, edits: &[Vec<PartitionEdit>]) -> BytesMut {
    let mut req = req.clone();
    for (topic, edits) in req.topic_data.iter_mut().zip(edits) {
        let mut e = edits.iter();
        topic
            .partition_data
            .retain_mut(|p| match e.next().unwrap() {
                PartitionEdit::Keep => true,
                PartitionEdit::Replace(new) => {
                    p.records = Some(new.clone());
                    true
                }
                PartitionEdit::Remove => false,
            });
    }
    req.topic_data.retain(|t| !t.partition_data.is_empty());
    frame_of(&req, version)
}

fn check(version: i16, shape: &[Vec<Option<usize>>], tagged: bool, edits: &[Vec<PartitionEdit>]) {
    let req = request(version, shape, tagged);
    let frame = frame_of(&req, version);
    // The frame the filter gets is one the crate decodes as this request.
    let back = ProduceRequest::decode(&mut &frame[HEADER.len()..], version).unwrap();
    assert_eq!(back, req);
    let spliced = splice_produce(&frame, HEADER.len(), version, edits).expect("spliced");
    let encoded = encoded_after(&req, version, edits);
    assert_eq!(
        spliced, encoded,
        "v{version} {shape:?} tagged {tagged} {edits:?}"
    );
}

fn edit(kind: u8, len: usize) -> PartitionEdit {
    match kind % 3 {
        0 => PartitionEdit::Keep,
        1 => PartitionEdit::Replace(records(len, 0xa5)),
        _ => PartitionEdit::Remove,
    }
}

#[test]
fn every_version_spliced_as_encoded_some_changed_some_removed() {
    // Three topics: one partly changed, one wholly removed, one untouched
    // with a null records field.
    let shape = vec![
        vec![Some(100), Some(0), Some(300)],
        vec![Some(50), Some(60)],
        vec![None, Some(10)],
    ];
    let edits = vec![
        vec![
            PartitionEdit::Replace(records(400, 1)),
            PartitionEdit::Keep,
            PartitionEdit::Remove,
        ],
        vec![PartitionEdit::Remove, PartitionEdit::Remove],
        vec![PartitionEdit::Keep, PartitionEdit::Keep],
    ];
    for version in 3..=13 {
        for tagged in [false, true] {
            check(version, &shape, tagged, &edits);
        }
    }
}

#[test]
fn lengths_and_counts_across_a_varints_width() {
    // Compact lengths are n + 1: 126 and 127 bytes take one byte, 128 two;
    // a 130-partition topic's count shrinks to one byte when 3 leave.
    for version in [8, 9, 12] {
        for (old, new) in [
            (126, 127),
            (127, 126),
            (127, 128),
            (128, 127),
            (16_382, 16_383),
        ] {
            let edits = vec![vec![PartitionEdit::Replace(records(new, 3))]];
            check(version, &[vec![Some(old)]], false, &edits);
        }
        let shape = vec![vec![Some(1); 130]];
        for removed in [2, 3, 4] {
            let mut edits = vec![vec![PartitionEdit::Keep; 130]];
            for e in edits[0].iter_mut().take(removed) {
                *e = PartitionEdit::Remove;
            }
            check(version, &shape, false, &edits);
        }
    }
}

#[test]
fn a_frame_that_does_not_match_is_not_spliced() {
    let req = request(9, &[vec![Some(10), Some(20)]], false);
    let frame = frame_of(&req, 9);
    let keep = |n| vec![vec![PartitionEdit::Keep; n]];
    assert!(splice_produce(&frame, HEADER.len(), 9, &keep(2)).is_some());
    // Edits for another shape.
    assert!(splice_produce(&frame, HEADER.len(), 9, &keep(3)).is_none());
    assert!(splice_produce(&frame, HEADER.len(), 9, &[]).is_none());
    // Cut short anywhere.
    for end in HEADER.len()..frame.len() {
        assert!(splice_produce(&frame[..end], HEADER.len(), 9, &keep(2)).is_none());
    }
    // Versions it does not know.
    assert!(splice_produce(&frame, HEADER.len(), 2, &keep(2)).is_none());
    assert!(splice_produce(&frame, HEADER.len(), 14, &keep(2)).is_none());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn any_request_and_edits_spliced_as_encoded(
        version in 3i16..=13,
        tagged in any::<bool>(),
        topics in prop::collection::vec(
            prop::collection::vec(
                (prop::option::weighted(0.9, 0usize..300), any::<u8>(), 0usize..300),
                0..5,
            ),
            1..4,
        ),
    ) {
        let shape: Vec<Vec<Option<usize>>> =
            topics.iter().map(|t| t.iter().map(|p| p.0).collect()).collect();
        let edits: Vec<Vec<PartitionEdit>> = topics
            .iter()
            .map(|t| t.iter().map(|&(_, kind, len)| edit(kind, len)).collect())
            .collect();
        check(version, &shape, tagged, &edits);
    }
}
