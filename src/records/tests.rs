use super::compression::{compress_into, snappy_decompress, XERIAL_HEADER};
use super::varint::*;
use super::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records as kp;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

// === helpers ===

fn b(s: &[u8]) -> Bytes {
    Bytes::copy_from_slice(s)
}

fn rec(
    od: i32,
    ts: i64,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: &[(&[u8], Option<&[u8]>)],
) -> Record {
    Record {
        attributes: 0,
        timestamp_delta: ts,
        offset_delta: od,
        key: key.map(b),
        value: value.map(b),
        headers: headers.iter().map(|(k, v)| (b(k), v.map(b))).collect(),
    }
}

fn three_records() -> Vec<Record> {
    vec![
        rec(
            0,
            0,
            Some(b"k0"),
            Some(b"v0"),
            &[(b"h", Some(b"1")), (b"h", Some(b"2"))],
        ),
        rec(1, 5, None, Some(b"v1"), &[]),
        rec(2, -3, Some(b"k2"), None, &[(b"x", None)]),
    ]
}

fn uncompressed_batch() -> Bytes {
    BatchBuilder::default().build(&three_records()).unwrap()
}

/// Recomputes the CRC after a test edits bytes, so the error under test is the one hit.
pub(crate) fn fix_crc(buf: &mut [u8]) {
    let crc = crc32c::crc32c(&buf[CRC_START..]);
    buf[CRC_OFFSET..CRC_START].copy_from_slice(&crc.to_be_bytes());
}

/// Replaces the records section of an uncompressed batch, fixing batchLength and CRC.
fn with_payload(batch: &[u8], count: i32, payload: &[u8]) -> Bytes {
    let mut v = batch[..BATCH_HEADER_LEN].to_vec();
    v.extend_from_slice(payload);
    let len = (v.len() - LOG_OVERHEAD) as i32;
    v[8..12].copy_from_slice(&len.to_be_bytes());
    v[57..61].copy_from_slice(&count.to_be_bytes());
    fix_crc(&mut v);
    Bytes::from(v)
}

fn items(buf: Bytes) -> Vec<Result<BatchItem, RecordsError>> {
    Batches::new(buf).collect()
}

// === varints ===

#[test]
fn varint_round_trips_at_the_edges() {
    for v in [0, 1, -1, 63, -64, 64, i32::MAX, i32::MIN] {
        let mut out = Vec::new();
        put_varint(&mut out, v);
        assert_eq!(out.len(), varint_len(v));
        let mut c = Cursor { buf: &out, pos: 0 };
        assert_eq!(c.varint().unwrap(), v);
    }
    for v in [0, -1, 1 << 31, -(1 << 40), i64::MAX, i64::MIN] {
        let mut out = Vec::new();
        put_varlong(&mut out, v);
        assert_eq!(out.len(), uvarint_len(zigzag64(v)));
        let mut c = Cursor { buf: &out, pos: 0 };
        assert_eq!(c.varlong().unwrap(), v);
    }
}

#[test]
fn varint_overflow_is_refused() {
    // six bytes for an int32
    let mut c = Cursor {
        buf: &[0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
        pos: 0,
    };
    assert!(matches!(c.varint(), Err(Fault::Overflow)));
    // five bytes whose value is wider than 32 bits
    let mut c = Cursor {
        buf: &[0xff, 0xff, 0xff, 0xff, 0x7f],
        pos: 0,
    };
    assert!(matches!(c.varint(), Err(Fault::Overflow)));
    // a varlong whose 10th byte carries more than bit 63
    let mut c = Cursor {
        buf: &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02],
        pos: 0,
    };
    assert!(matches!(c.varlong(), Err(Fault::Overflow)));
    let mut c = Cursor {
        buf: &[0x80],
        pos: 0,
    };
    assert!(matches!(c.varint(), Err(Fault::Truncated)));
}

// === header and iterator ===

#[test]
fn header_fields_and_attribute_bits() {
    let builder = BatchBuilder {
        base_offset: 42,
        partition_leader_epoch: 7,
        codec: Codec::Lz4,
        log_append_time: true,
        transactional: true,
        control: false,
        delete_horizon: true,
        base_timestamp: 1_700_000_000_000,
        max_timestamp: Some(1_700_000_000_999),
        last_offset_delta: Some(9),
        producer_id: 1234,
        producer_epoch: 3,
        base_sequence: 77,
    };
    let bytes = builder.build(&three_records()).unwrap();
    let h = BatchHeader::parse(&bytes).unwrap();
    assert_eq!(h.base_offset, 42);
    assert_eq!(h.total_size(), bytes.len());
    assert_eq!(h.partition_leader_epoch, 7);
    assert_eq!(h.magic, 2);
    assert_eq!(h.attributes.codec(), Ok(Codec::Lz4));
    assert!(h.attributes.is_log_append_time());
    assert!(h.attributes.is_transactional());
    assert!(!h.attributes.is_control());
    assert!(h.attributes.has_delete_horizon());
    assert_eq!(h.last_offset_delta, 9);
    assert_eq!(h.last_offset(), 51);
    assert_eq!(h.base_timestamp, 1_700_000_000_000);
    assert_eq!(h.max_timestamp, 1_700_000_000_999);
    assert_eq!(
        (h.producer_id, h.producer_epoch, h.base_sequence),
        (1234, 3, 77)
    );
    assert_eq!(h.records_count, 3);
    assert_eq!(
        Attributes(5).codec(),
        Err(RecordsError::UnsupportedCodec(5))
    );
}

#[test]
fn iterator_yields_batches_then_partial_tail() {
    let one = uncompressed_batch();
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&one);
    buf.extend_from_slice(&one);
    buf.extend_from_slice(&one[..one.len() - 5]);
    let got = items(buf.freeze());
    assert_eq!(got.len(), 3);
    for item in &got[..2] {
        match item {
            Ok(BatchItem::Batch(raw)) => assert_eq!(raw.bytes(), &one),
            other => panic!("expected a batch, got {other:?}"),
        }
    }
    assert_eq!(
        got[2],
        Ok(BatchItem::PartialTail(one.slice(..one.len() - 5)))
    );
}

#[test]
fn iterator_partial_tails_of_every_length() {
    let one = uncompressed_batch();
    for cut in 1..one.len() {
        let got = items(one.slice(..cut));
        assert_eq!(
            got,
            vec![Ok(BatchItem::PartialTail(one.slice(..cut)))],
            "cut at {cut}"
        );
    }
    assert!(items(Bytes::new()).is_empty());
}

#[test]
fn iterator_refuses_bad_lengths() {
    let one = uncompressed_batch();
    for bad in [-1i32, 0, 13, i32::MIN] {
        let mut v = one.to_vec();
        v[8..12].copy_from_slice(&bad.to_be_bytes());
        assert_eq!(
            items(Bytes::from(v)),
            vec![Err(RecordsError::BadBatchLength(bad))]
        );
    }
    // 14..=48 is a legal legacy size but too small for a v2 batch
    let mut v = one.to_vec();
    v[8..12].copy_from_slice(&48i32.to_be_bytes());
    assert_eq!(
        items(Bytes::from(v)),
        vec![Err(RecordsError::BadBatchLength(48))]
    );
    // the smallest legal v2 batch: a header with no records
    let empty = BatchBuilder::default().build(&[]).unwrap();
    assert_eq!(empty.len(), 61);
    assert!(matches!(
        items(empty.clone()).as_slice(),
        [Ok(BatchItem::Batch(_))]
    ));
    // huge length: not an error, the broker may cut a batch anywhere
    let mut v = one.to_vec();
    v[8..12].copy_from_slice(&i32::MAX.to_be_bytes());
    let v = Bytes::from(v);
    assert_eq!(items(v.clone()), vec![Ok(BatchItem::PartialTail(v))]);
    // after an error the iterator stops
    let mut v = one.to_vec();
    v.extend_from_slice(&one);
    v[8..12].copy_from_slice(&(-5i32).to_be_bytes());
    assert_eq!(items(Bytes::from(v)).len(), 1);
}

#[test]
fn iterator_passes_legacy_entries_and_refuses_unknown_magic() {
    // a v1 message: offset, size 22+, crc, magic 1, attributes, timestamp, key -1, value -1
    let mut legacy = Vec::new();
    legacy.extend_from_slice(&5i64.to_be_bytes());
    legacy.extend_from_slice(&22i32.to_be_bytes());
    legacy.extend_from_slice(&[0, 0, 0, 0, 1, 0]);
    legacy.extend_from_slice(&0i64.to_be_bytes());
    legacy.extend_from_slice(&(-1i32).to_be_bytes());
    legacy.extend_from_slice(&(-1i32).to_be_bytes());
    let one = uncompressed_batch();
    let mut buf = legacy.clone();
    buf.extend_from_slice(&one);
    let got = items(Bytes::from(buf));
    assert_eq!(
        got[0],
        Ok(BatchItem::Legacy {
            magic: 1,
            bytes: Bytes::from(legacy)
        })
    );
    assert!(matches!(got[1], Ok(BatchItem::Batch(_))));

    let mut v = one.to_vec();
    v[MAGIC_OFFSET] = 3;
    assert_eq!(
        items(Bytes::from(v.clone())),
        vec![Err(RecordsError::BadMagic(3))]
    );
    assert_eq!(
        RawBatch::new(Bytes::from(v)),
        Err(RecordsError::BadMagic(3))
    );
    let mut v = one.to_vec();
    v[MAGIC_OFFSET] = 0xff;
    assert_eq!(items(Bytes::from(v)), vec![Err(RecordsError::BadMagic(-1))]);
}

#[test]
fn raw_batch_wants_exactly_one_batch() {
    let one = uncompressed_batch();
    assert_eq!(
        RawBatch::new(one.slice(..one.len() - 1)),
        Err(RecordsError::TruncatedBatch {
            declared: one.len(),
            available: one.len() - 1
        })
    );
    let mut two = one.to_vec();
    two.push(0);
    assert_eq!(
        RawBatch::new(Bytes::from(two)),
        Err(RecordsError::TrailingBatchBytes(1))
    );
    assert_eq!(
        RawBatch::new(one.slice(..60)),
        Err(RecordsError::ShortHeader { available: 60 })
    );
}

// === decoding, hostile input ===

#[test]
fn decode_reads_back_what_the_builder_wrote() {
    let records = three_records();
    for codec in Codec::ALL {
        let bytes = BatchBuilder::new(codec).build(&records).unwrap();
        let batch = decode_batch(bytes).unwrap();
        assert_eq!(batch.codec(), codec);
        let got: Vec<Record> = batch.records().map(|r| r.to_record()).collect();
        assert_eq!(got, records, "{codec}");
        let r0 = batch.record(0).unwrap();
        assert_eq!(r0.headers().count(), 2);
        assert!(r0.has_header(b"h"));
        assert!(!r0.has_header(b"x"));
        assert_eq!(r0.key_slice(), Some(&b"k0"[..]));
        assert_eq!(batch.record(1).unwrap().key(), None);
        assert_eq!(batch.record(2).unwrap().value_slice(), None);
        assert_eq!(batch.record(2).unwrap().timestamp(), -3);
        assert_eq!(batch.record(2).unwrap().offset(), 2);
        let raw = batch.record(1).unwrap().raw();
        assert_eq!(
            &batch.payload()[batch.record(1).unwrap().raw_range()],
            &raw[..]
        );
    }
}

#[test]
fn uncompressed_decode_is_zero_copy() {
    let bytes = uncompressed_batch();
    let batch = decode_batch(bytes.clone()).unwrap();
    let value = batch.record(0).unwrap().value().unwrap();
    let range = bytes.as_ptr_range();
    assert!(range.contains(&value.as_ptr()));
    let (hk, _) = &batch.record(0).unwrap().header_list()[0];
    assert!(range.contains(&hk.as_ptr()));
}

#[test]
fn base_sequence_is_rewritten_with_a_valid_crc() {
    let records: Vec<Record> = (0..3)
        .map(|i| Record {
            attributes: 0,
            timestamp_delta: i,
            offset_delta: i as i32,
            key: None,
            value: Some(Bytes::from(vec![i as u8; 10])),
            headers: vec![],
        })
        .collect();
    let original = BatchBuilder::new(Codec::Lz4).build(&records).unwrap();
    let moved = with_base_sequence(&original, 42).unwrap();
    let raw = RawBatch::new(moved.clone()).unwrap();
    raw.verify_crc().unwrap();
    assert_eq!(raw.header().base_sequence, 42);
    assert_eq!(moved.len(), original.len());
    assert_eq!(
        moved[..53],
        original[..53]
            .iter()
            .enumerate()
            .map(|(i, b)| if (17..21).contains(&i) { moved[i] } else { *b })
            .collect::<Vec<u8>>()[..]
    );
    assert_eq!(moved[57..], original[57..]);
    assert!(with_base_sequence(&original[..original.len() - 1], 1).is_err());
}

#[test]
fn bad_crc_is_refused() {
    let mut v = uncompressed_batch().to_vec();
    let last = v.len() - 1;
    v[last] ^= 0x55;
    let raw = RawBatch::new(Bytes::from(v)).unwrap();
    assert!(matches!(
        raw.decode(),
        Err(RecordsError::CrcMismatch { .. })
    ));
    // partitionLeaderEpoch is outside the CRC: changing it must not fail
    let mut v = uncompressed_batch().to_vec();
    v[12..16].copy_from_slice(&99i32.to_be_bytes());
    assert!(decode_batch(Bytes::from(v)).is_ok());
}

#[test]
fn impossible_record_counts_are_refused() {
    let one = uncompressed_batch();
    let payload = one.slice(BATCH_HEADER_LEN..);
    let cases = [
        (
            -1,
            RecordsError::BadRecordCount {
                count: -1,
                available: 0,
            },
        ),
        (
            i32::MAX,
            RecordsError::BadRecordCount {
                count: i32::MAX,
                available: payload.len(),
            },
        ),
        (4, RecordsError::TruncatedRecord { index: 3 }),
    ];
    for (count, want) in cases {
        let bytes = with_payload(&one, count, &payload);
        assert_eq!(decode_batch(bytes).err(), Some(want), "count {count}");
    }
    let bytes = with_payload(&one, 2, &payload);
    assert!(matches!(
        decode_batch(bytes),
        Err(RecordsError::TrailingRecordBytes(_))
    ));
    // a compressed batch claiming more records than the limit can hold is refused
    // before decompression
    let lz4 = BatchBuilder::new(Codec::Lz4)
        .build(&three_records())
        .unwrap();
    let mut v = lz4.to_vec();
    v[57..61].copy_from_slice(&1_000_000i32.to_be_bytes());
    fix_crc(&mut v);
    let raw = RawBatch::new(Bytes::from(v)).unwrap();
    assert_eq!(
        raw.decode_with_limit(70_000).err(),
        Some(RecordsError::BadRecordCount {
            count: 1_000_000,
            available: 70_000
        })
    );
}

#[test]
fn malformed_records_are_refused() {
    let one = uncompressed_batch();
    let cases: Vec<(Vec<u8>, RecordsError)> = vec![
        // negative record length
        (
            vec![0x01, 0, 0, 0, 1, 1, 0],
            RecordsError::BadRecordField {
                index: 0,
                field: "length",
                value: -1,
            },
        ),
        // length varint overflow
        (
            vec![0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0],
            RecordsError::VarintOverflow { index: 0 },
        ),
        // record longer than the payload
        (
            vec![0x40, 0, 0, 0, 1, 1, 0],
            RecordsError::TruncatedRecord { index: 0 },
        ),
        // key length -2
        (
            vec![12, 0, 0, 0, 3, 1, 0],
            RecordsError::BadRecordField {
                index: 0,
                field: "key length",
                value: -2,
            },
        ),
        // key longer than the record
        (
            vec![12, 0, 0, 0, 20, 1, 0],
            RecordsError::TruncatedRecord { index: 0 },
        ),
        // null header key
        (
            vec![16, 0, 0, 0, 1, 1, 2, 1, 1],
            RecordsError::BadRecordField {
                index: 0,
                field: "header key length",
                value: -1,
            },
        ),
        // header count larger than the bytes left
        (
            vec![12, 0, 0, 0, 1, 1, 20],
            RecordsError::TruncatedRecord { index: 0 },
        ),
        // fields shorter than the declared length
        (
            vec![14, 0, 0, 0, 1, 1, 0, 0],
            RecordsError::RecordLengthMismatch {
                index: 0,
                declared: 7,
                actual: 6,
            },
        ),
        // timestampDelta varlong overflow
        (
            vec![
                26, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0, 1, 1, 0,
            ],
            RecordsError::VarintOverflow { index: 0 },
        ),
    ];
    for (payload, want) in cases {
        let bytes = with_payload(&one, 1, &payload);
        assert_eq!(decode_batch(bytes).err(), Some(want), "payload {payload:?}");
    }
}

#[test]
fn unsupported_codec_is_refused() {
    let mut v = uncompressed_batch().to_vec();
    v[22] |= 0x06; // codec 6
    fix_crc(&mut v);
    assert_eq!(
        decode_batch(Bytes::from(v)).err(),
        Some(RecordsError::UnsupportedCodec(6))
    );
}

#[test]
fn decompression_bombs_are_refused() {
    // 4 MiB of one record's worth of zeros compresses to a few KiB in every codec
    let big = rec(0, 0, None, Some(&vec![0u8; 4 << 20]), &[]);
    for codec in [Codec::Gzip, Codec::Snappy, Codec::Lz4, Codec::Zstd] {
        let bytes = BatchBuilder::new(codec)
            .build(std::slice::from_ref(&big))
            .unwrap();
        assert!(
            bytes.len() < 1 << 20,
            "{codec} compressed to {}",
            bytes.len()
        );
        let raw = RawBatch::new(bytes).unwrap();
        assert_eq!(
            raw.decode_with_limit(1 << 20).err(),
            Some(RecordsError::TooLarge { limit: 1 << 20 }),
            "{codec}"
        );
        assert_eq!(raw.decode_with_limit(5 << 20).unwrap().len(), 1, "{codec}");
    }
}

#[test]
fn corrupt_compressed_payloads_are_errors() {
    let one = uncompressed_batch();
    for codec in [Codec::Gzip, Codec::Snappy, Codec::Lz4, Codec::Zstd] {
        // the first half of a valid stream (batchLength and CRC fixed up)
        let good = BatchBuilder::new(codec).build(&three_records()).unwrap();
        let mid = BATCH_HEADER_LEN + (good.len() - BATCH_HEADER_LEN) / 2;
        let half = with_payload(&good, 3, &good[BATCH_HEADER_LEN..mid]);
        assert!(decode_batch(half).is_err(), "{codec}");
        // garbage that is not the codec's format at all
        let mut v = with_payload(&one, 3, b"definitely not compressed").to_vec();
        v[21..23].copy_from_slice(&i16::from(codec.id()).to_be_bytes());
        fix_crc(&mut v);
        assert!(decode_batch(Bytes::from(v)).is_err(), "{codec}");
    }
}

/// Codec contexts and buffers are kept per thread: batches of very different sizes, one after
/// another on one thread, each come back whole, and a corrupt batch in between leaves nothing
/// behind that spoils the next one.
#[test]
fn a_thread_reuses_its_codecs_across_batches_and_errors() {
    let small = three_records();
    let big: Vec<Record> = (0..2000i32)
        .map(|i| {
            let value = format!(
                "{{\"id\":{i},\"note\":\"{}\"}}",
                "abc ".repeat(i as usize % 97)
            );
            rec(i, i64::from(i), Some(b"k"), Some(value.as_bytes()), &[])
        })
        .collect();
    for codec in Codec::ALL {
        for records in [&small, &big, &small, &big] {
            let bytes = BatchBuilder::new(codec).build(records).unwrap();
            let batch = decode_batch(bytes.clone()).unwrap();
            assert_eq!(batch.len(), records.len(), "{codec}");
            let again = decode_batch(batch.reencode().unwrap()).unwrap();
            let got: Vec<Record> = again.records().map(|r| r.to_record()).collect();
            assert_eq!(&got, records, "{codec}");
            if codec == Codec::None {
                continue;
            }
            // a batch cut short in the middle of its payload fails, and the next is fine
            let mid = BATCH_HEADER_LEN + (bytes.len() - BATCH_HEADER_LEN) / 2;
            let count = records.len() as i32;
            assert!(
                decode_batch(with_payload(&bytes, count, &bytes[BATCH_HEADER_LEN..mid])).is_err()
            );
        }
    }
}

/// zstd as Java's producer writes it (a stream: no content size in the frame header) and
/// two frames back to back both decompress; a frame cut short does not.
#[test]
fn zstd_reads_streamed_and_concatenated_frames() {
    use std::io::Write;
    let one = uncompressed_batch();
    let records = &one[BATCH_HEADER_LEN..];
    let mut streamed = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    streamed.write_all(records).unwrap();
    let streamed = streamed.finish().unwrap();
    assert_eq!(
        zstd::zstd_safe::get_frame_content_size(&streamed).ok(),
        Some(None),
        "a streamed frame says no size"
    );
    let mut v = with_payload(&one, 3, &streamed).to_vec();
    v[21..23].copy_from_slice(&i16::from(Codec::Zstd.id()).to_be_bytes());
    fix_crc(&mut v);
    assert_eq!(decode_batch(Bytes::from(v)).unwrap().payload(), records);
    let mut two = Vec::new();
    compress_into(Codec::Zstd, &records[..20], &mut two).unwrap();
    compress_into(Codec::Zstd, &records[20..], &mut two).unwrap();
    assert_eq!(
        decompress(Codec::Zstd, &two, 1 << 20).unwrap(),
        records,
        "concatenated frames"
    );
    assert!(decompress(Codec::Zstd, &streamed[..streamed.len() - 3], 1 << 20).is_err());
    assert!(decompress(Codec::Zstd, &two[..two.len() - 1], 1 << 20).is_err());
}

#[test]
fn snappy_reads_raw_and_concatenated_xerial() {
    let one = uncompressed_batch();
    let records = &one[BATCH_HEADER_LEN..];
    let raw = snap::raw::Encoder::new().compress_vec(records).unwrap();
    assert_eq!(snappy_decompress(&raw, 1 << 20).unwrap(), records);
    let mut xerial = Vec::new();
    compress_into(Codec::Snappy, &records[..10], &mut xerial).unwrap();
    compress_into(Codec::Snappy, &records[10..], &mut xerial).unwrap();
    assert!(xerial.starts_with(XERIAL_HEADER));
    assert_eq!(snappy_decompress(&xerial, 1 << 20).unwrap(), records);
    // the bytes kafka-protocol's tests call "upstream kafka snappy-compressed"
    let upstream = b"\x82\x53\x4e\x41\x50\x50\x59\x00\x00\x00\x00\x01\x00\x00\x00\x01\x00\x00\x00\x0f\x0d\x30\x18\x00\x00\x00\x01\x0csdfdsf\x00";
    let mut ours = Vec::new();
    let plain = snappy_decompress(upstream, 1 << 20).unwrap();
    compress_into(Codec::Snappy, &plain, &mut ours).unwrap();
    assert_eq!(&ours[..], &upstream[..]);
}

#[test]
fn lz4_frames_use_independent_64k_blocks() {
    let mut out = Vec::new();
    compress_into(Codec::Lz4, &[7u8; 200_000], &mut out).unwrap();
    assert_eq!(&out[..4], &[0x04, 0x22, 0x4d, 0x18]);
    let flg = out[4];
    assert_eq!(flg >> 6, 1, "version");
    assert_ne!(flg & 0x20, 0, "block independence");
    assert_eq!(flg & 0x03, 0, "reserved bits");
    assert_eq!((out[5] >> 4) & 0x07, 4, "64 KiB blocks");
}

/// Text like the benches' records (JSON with repeated words), so blocks compress.
fn lz4_text(len: usize) -> Vec<u8> {
    let words = [
        "order", "shipped", "customer", "invoice", "amount", "note", "pending",
    ];
    let mut v = Vec::with_capacity(len + 16);
    let mut i = 0u64;
    while v.len() < len {
        i = i
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        v.extend_from_slice(
            format!(
                "{{\"id\":{},\"w\":\"{}\"}} ",
                i >> 40,
                words[(i >> 60) as usize % words.len()]
            )
            .as_bytes(),
        );
    }
    v.truncate(len);
    v
}

/// Bytes that do not compress (a block of them is stored as it is).
fn lz4_noise(len: usize) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn lz4_inputs() -> Vec<Vec<u8>> {
    let mut mixed = lz4_text(100_000);
    mixed.extend(lz4_noise(70_000));
    mixed.extend(lz4_text(40_000));
    vec![
        Vec::new(),
        vec![7],
        lz4_text(65_536),
        lz4_text(65_537),
        lz4_text(300_000),
        lz4_noise(200_000),
        mixed,
    ]
}

/// Every frame written is read back by both other LZ4 readers there are here: lz4_flex's and
/// liblz4's own frame decoder (LZ4F, which librdkafka uses), and by ours.
#[test]
fn lz4_frames_written_are_read_by_lz4_flex_and_liblz4() {
    use std::io::Read;
    for input in lz4_inputs() {
        let mut frame = Vec::new();
        compress_into(Codec::Lz4, &input, &mut frame).unwrap();
        let mut flex = Vec::new();
        lz4_flex::frame::FrameDecoder::new(&frame[..])
            .read_to_end(&mut flex)
            .unwrap();
        assert_eq!(flex, input, "lz4_flex, {} bytes", input.len());
        let mut c = Vec::new();
        lz4::Decoder::new(&frame[..])
            .unwrap()
            .read_to_end(&mut c)
            .unwrap();
        assert_eq!(c, input, "liblz4, {} bytes", input.len());
        assert_eq!(decompress(Codec::Lz4, &frame, 1 << 20).unwrap(), input);
    }
    // appended after what is already in the buffer (the batch header), not over it
    let mut out = b"header".to_vec();
    compress_into(Codec::Lz4, b"records", &mut out).unwrap();
    assert_eq!(&out[..6], b"header");
    assert_eq!(
        decompress(Codec::Lz4, &out[6..], 1 << 20).unwrap(),
        b"records"
    );
}

/// `input` in one frame of liblz4's own frame encoder (LZ4F), with these settings.
fn liblz4_frame(
    input: &[u8],
    size: lz4::BlockSize,
    mode: lz4::BlockMode,
    checksum: lz4::ContentChecksum,
    block_checksum: lz4::liblz4::BlockChecksum,
    content_size: u64,
) -> Vec<u8> {
    use std::io::Write;
    let mut enc = lz4::EncoderBuilder::new()
        .block_size(size)
        .block_mode(mode)
        .checksum(checksum)
        .block_checksum(block_checksum)
        .content_size(content_size)
        .build(Vec::new())
        .unwrap();
    enc.write_all(input).unwrap();
    let (frame, r) = enc.finish();
    r.unwrap();
    frame
}

/// Frames of every setting liblz4's frame encoder has (block sizes, linked blocks, block and
/// content checksums, content size) are read, whether by the fast path or lz4_flex's.
#[test]
fn lz4_frames_of_every_liblz4_setting_are_read() {
    let input = lz4_text(600_000);
    let mut seen = 0;
    for size in [
        lz4::BlockSize::Max64KB,
        lz4::BlockSize::Max256KB,
        lz4::BlockSize::Max1MB,
        lz4::BlockSize::Max4MB,
    ] {
        for mode in [lz4::BlockMode::Independent, lz4::BlockMode::Linked] {
            for checksum in [
                lz4::ContentChecksum::NoChecksum,
                lz4::ContentChecksum::ChecksumEnabled,
            ] {
                for block_checksum in [
                    lz4::liblz4::BlockChecksum::NoBlockChecksum,
                    lz4::liblz4::BlockChecksum::BlockChecksumEnabled,
                ] {
                    for content_size in [0, input.len() as u64] {
                        let frame = liblz4_frame(
                            &input,
                            size.clone(),
                            mode.clone(),
                            checksum.clone(),
                            block_checksum.clone(),
                            content_size,
                        );
                        assert_eq!(
                            decompress(Codec::Lz4, &frame, 1 << 20).unwrap(),
                            input,
                            "{size:?} {mode:?} {checksum:?} {block_checksum:?} {content_size}"
                        );
                        seen += 1;
                    }
                }
            }
        }
    }
    assert_eq!(seen, 64);
}

/// Checksums and sizes the frame carries are checked; what they cover is never returned
/// when they disagree.
#[test]
fn lz4_checksums_and_content_sizes_are_checked() {
    let input = lz4_text(150_000);
    use lz4::liblz4::BlockChecksum::{BlockChecksumEnabled, NoBlockChecksum};
    use lz4::ContentChecksum::{ChecksumEnabled, NoChecksum};
    let frame = |checksum, block_checksum, content_size| {
        liblz4_frame(
            &input,
            lz4::BlockSize::Max64KB,
            lz4::BlockMode::Independent,
            checksum,
            block_checksum,
            content_size,
        )
    };
    // content checksum: the last 4 bytes
    let mut v = frame(ChecksumEnabled, NoBlockChecksum, 0);
    let n = v.len();
    v[n - 1] ^= 1;
    assert!(decompress(Codec::Lz4, &v, 1 << 20).is_err());
    // a block checksum: the 4 bytes after the first block
    let mut v = frame(NoChecksum, BlockChecksumEnabled, 0);
    let first = u32::from_le_bytes(v[7..11].try_into().unwrap()) & 0x7fff_ffff;
    v[11 + first as usize] ^= 1;
    assert!(decompress(Codec::Lz4, &v, 1 << 20).is_err());
    // a content size one short of what the blocks hold, with the header checksum fixed up
    let mut v = frame(NoChecksum, NoBlockChecksum, input.len() as u64);
    v[6..14].copy_from_slice(&(input.len() as u64 - 1).to_le_bytes());
    v[14] = (xxhash_rust::xxh32::xxh32(&v[4..14], 0) >> 8) as u8;
    assert!(decompress(Codec::Lz4, &v, 1 << 20).is_err());
    // a wrong header checksum (KIP-57: v2 batches always carry the right one)
    let mut v = Vec::new();
    compress_into(Codec::Lz4, &input, &mut v).unwrap();
    v[6] ^= 1;
    assert!(decompress(Codec::Lz4, &v, 1 << 20).is_err());
    // a block past the frame's block size
    let mut v = Vec::new();
    compress_into(Codec::Lz4, &input, &mut v).unwrap();
    v[7..11].copy_from_slice(&(65_537u32 | 0x8000_0000).to_le_bytes());
    assert!(decompress(Codec::Lz4, &v, 1 << 20).is_err());
}

/// Concatenated frames are read one after another (as lz4_flex did), and a frame of many
/// tiny blocks that each claim a 4 MiB block size comes back whole.
#[test]
fn lz4_concatenated_frames_and_tiny_blocks() {
    let mut two = Vec::new();
    compress_into(Codec::Lz4, b"first ", &mut two).unwrap();
    compress_into(Codec::Lz4, b"second", &mut two).unwrap();
    assert_eq!(
        decompress(Codec::Lz4, &two, 1 << 20).unwrap(),
        b"first second"
    );
    // 4 MiB blocks (BD 7), 20,000 stored blocks of 3 bytes
    let descriptor = [0x60u8, 0x70];
    let mut v = vec![0x04, 0x22, 0x4d, 0x18, descriptor[0], descriptor[1]];
    v.push((xxhash_rust::xxh32::xxh32(&descriptor, 0) >> 8) as u8);
    for _ in 0..20_000 {
        v.extend_from_slice(&(3u32 | 0x8000_0000).to_le_bytes());
        v.extend_from_slice(b"abc");
    }
    v.extend_from_slice(&[0; 4]);
    assert_eq!(
        decompress(Codec::Lz4, &v, 1 << 20).unwrap(),
        b"abc".repeat(20_000)
    );
}

// === splice ===

fn keep_all_but(n: usize, drop: &[usize]) -> Vec<bool> {
    (0..n).map(|i| !drop.contains(&i)).collect()
}

#[test]
fn splice_noop_is_unchanged() {
    let batch = decode_batch(uncompressed_batch()).unwrap();
    let keep = vec![true; 3];
    for mode in [SpliceMode::Renumber, SpliceMode::KeepOffsets] {
        assert_eq!(batch.splice(&keep, None, mode), Ok(Spliced::Unchanged));
        // every record already carries "h" or ... not all: record 1 has no headers
        let h = HeaderRef {
            key: b"h",
            value: Some(b"new"),
        };
        assert!(batch.would_change(&keep, Some(h)));
        assert!(matches!(
            batch.splice(&keep, Some(h), mode),
            Ok(Spliced::Rewritten(_))
        ));
    }
    assert!(!batch.would_change(&keep, None));
    assert_eq!(
        batch.splice(&[true], None, SpliceMode::Renumber),
        Err(RecordsError::PlanMismatch {
            actions: 1,
            records: 3
        })
    );
}

#[test]
fn appending_twice_is_idempotent() {
    let batch = decode_batch(uncompressed_batch()).unwrap();
    let h = HeaderRef {
        key: b"idem",
        value: Some(b"abc"),
    };
    let keep = vec![true; 3];
    let Spliced::Rewritten(once) = batch.splice(&keep, Some(h), SpliceMode::Renumber).unwrap()
    else {
        panic!("expected a rewrite")
    };
    let again = decode_batch(once.clone()).unwrap();
    assert!(!again.would_change(&keep, Some(h)));
    assert_eq!(
        again.splice(&keep, Some(h), SpliceMode::Renumber),
        Ok(Spliced::Unchanged)
    );
    for r in again.records() {
        assert_eq!(r.headers().filter(|x| x.key == b"idem").count(), 1);
        assert_eq!(r.headers().last(), Some(h));
    }
    // dropping one record of the twice-marked batch still appends nothing
    let Spliced::Rewritten(dropped) = again
        .splice(&keep_all_but(3, &[1]), Some(h), SpliceMode::Renumber)
        .unwrap()
    else {
        panic!("expected a rewrite")
    };
    let dropped = decode_batch(dropped).unwrap();
    assert_eq!(dropped.record(1).unwrap().header_count(), 2);
}

#[test]
fn renumber_with_nothing_kept_asks_to_remove_the_partition() {
    let batch = decode_batch(uncompressed_batch()).unwrap();
    assert_eq!(
        batch.splice(&[false; 3], None, SpliceMode::Renumber),
        Ok(Spliced::NoneKept)
    );
}

#[test]
fn keep_offsets_with_nothing_kept_writes_an_empty_header() {
    let builder = BatchBuilder {
        log_append_time: true,
        transactional: true,
        delete_horizon: true,
        ..producer_batch_at_1000(Codec::Zstd)
    };
    let batch = decode_batch(builder.build(&three_records()).unwrap()).unwrap();
    let Spliced::Rewritten(out) = batch
        .splice(&[false; 3], None, SpliceMode::KeepOffsets)
        .unwrap()
    else {
        panic!("expected an empty batch")
    };
    assert_eq!(out.len(), BATCH_HEADER_LEN);
    let raw = RawBatch::new(out.clone()).unwrap();
    raw.verify_crc().unwrap();
    let h = raw.header();
    assert_eq!(h.base_offset, 1000);
    assert_eq!(h.last_offset_delta, 9);
    assert_eq!(h.last_offset(), 1009);
    assert_eq!(h.records_count, 0);
    assert_eq!(h.partition_leader_epoch, 4);
    assert_eq!(
        (h.producer_id, h.producer_epoch, h.base_sequence),
        (3, 2, 30)
    );
    // writeEmptyHeader: codec none, no delete-horizon bit, NO_TIMESTAMP base, max kept
    assert_eq!(
        h.attributes,
        Attributes(Attributes::TIMESTAMP_TYPE | Attributes::TRANSACTIONAL)
    );
    assert_eq!(h.base_timestamp, -1);
    assert_eq!(h.max_timestamp, 777);
    assert!(raw.decode().unwrap().is_empty());
    let mut buf = out;
    assert!(kp::RecordBatchDecoder::decode(&mut buf)
        .unwrap()
        .records
        .is_empty());
}

/// A fetched batch at offset 1000 whose header fields all differ from
/// their defaults (offsets 1000..=1009, an idempotent producer's).
fn producer_batch_at_1000(codec: Codec) -> BatchBuilder {
    BatchBuilder {
        base_offset: 1000,
        partition_leader_epoch: 4,
        codec,
        base_timestamp: 50,
        max_timestamp: Some(777),
        last_offset_delta: Some(9),
        producer_id: 3,
        producer_epoch: 2,
        base_sequence: 30,
        ..BatchBuilder::default()
    }
}

#[test]
fn an_emptied_batch_becomes_one_commit_marker_at_its_last_offset() {
    let builder = producer_batch_at_1000(Codec::Lz4);
    let batch = decode_batch(builder.build(&three_records()).unwrap()).unwrap();
    let out = emptied_marker(batch.header()).unwrap();
    let raw = RawBatch::new(out.clone()).unwrap();
    raw.verify_crc().unwrap();
    let h = raw.header();
    assert_eq!(
        (h.base_offset, h.last_offset(), h.records_count),
        (1000, 1009, 1)
    );
    assert_eq!(h.partition_leader_epoch, 4);
    assert_eq!((h.producer_id, h.producer_epoch), (3, 2));
    assert_eq!(h.attributes, Attributes(Attributes::CONTROL));
    assert_eq!(h.max_timestamp, 777);
    // Another decoder reads one control record, the COMMIT marker, at 1009.
    let mut buf = out;
    let decoded = kp::RecordBatchDecoder::decode(&mut buf).unwrap();
    assert_eq!(decoded.records.len(), 1);
    let r = &decoded.records[0];
    assert!(r.control);
    assert_eq!(r.offset, 1009);
    assert_eq!(r.key.as_deref(), Some(&[0u8, 0, 0, 1][..]));
}

#[test]
fn keep_offsets_keeps_gaps_and_header_fields() {
    let mut records = three_records();
    records[1].offset_delta = 4;
    records[2].offset_delta = 9;
    let builder = BatchBuilder {
        base_offset: 500,
        last_offset_delta: Some(11),
        max_timestamp: Some(123_456),
        base_timestamp: 100,
        codec: Codec::Gzip,
        ..BatchBuilder::default()
    };
    let batch = decode_batch(builder.build(&records).unwrap()).unwrap();
    let Spliced::Rewritten(out) = batch
        .splice(&keep_all_but(3, &[0]), None, SpliceMode::KeepOffsets)
        .unwrap()
    else {
        panic!("expected a rewrite")
    };
    let out = decode_batch(out).unwrap();
    let h = out.header();
    assert_eq!(
        (h.base_offset, h.last_offset_delta, h.records_count),
        (500, 11, 2)
    );
    assert_eq!((h.base_timestamp, h.max_timestamp), (100, 123_456));
    let ods: Vec<i32> = out.records().map(|r| r.offset_delta()).collect();
    assert_eq!(ods, vec![4, 9]);
    assert_eq!(out.codec(), Codec::Gzip);
}

#[test]
fn renumber_recomputes_deltas_and_max_timestamp() {
    let records = vec![
        rec(0, 10, Some(b"a"), Some(b"1"), &[]),
        rec(1, 500, Some(b"b"), Some(b"2"), &[]),
        rec(2, -20, Some(b"c"), Some(b"3"), &[]),
        rec(3, 30, Some(b"d"), Some(b"4"), &[]),
    ];
    let builder = BatchBuilder {
        base_timestamp: 1_000,
        producer_id: 9,
        producer_epoch: 0,
        base_sequence: 100,
        ..BatchBuilder::new(Codec::Snappy)
    };
    let batch = decode_batch(builder.build(&records).unwrap()).unwrap();
    assert_eq!(batch.header().max_timestamp, 1_500);
    let Spliced::Rewritten(out) = batch
        .splice(&keep_all_but(4, &[1]), None, SpliceMode::Renumber)
        .unwrap()
    else {
        panic!("expected a rewrite")
    };
    let out = decode_batch(out).unwrap();
    let h = out.header();
    assert_eq!((h.last_offset_delta, h.records_count), (2, 3));
    assert_eq!((h.base_timestamp, h.max_timestamp), (1_000, 1_030));
    assert_eq!((h.producer_id, h.base_sequence), (9, 100));
    let got: Vec<(i32, i64)> = out
        .records()
        .map(|r| (r.offset_delta(), r.timestamp_delta()))
        .collect();
    assert_eq!(got, vec![(0, 10), (1, -20), (2, 30)]);
}

#[test]
fn rewrite_appends_per_record_values() {
    let batch = decode_batch(uncompressed_batch()).unwrap();
    let actions = [
        Action::KeepAppend(HeaderRef {
            key: b"id",
            value: Some(b"one"),
        }),
        Action::Drop,
        Action::KeepAppend(HeaderRef {
            key: b"id",
            value: None,
        }),
    ];
    let Spliced::Rewritten(out) = batch.rewrite(&actions, SpliceMode::Renumber).unwrap() else {
        panic!("expected a rewrite")
    };
    let out = decode_batch(out).unwrap();
    assert_eq!(out.len(), 2);
    let h0 = out.record(0).unwrap().header_list();
    assert_eq!(h0.len(), 3);
    assert_eq!(h0[2], (b(b"id"), Some(b(b"one"))));
    assert_eq!(out.record(1).unwrap().header_list()[1], (b(b"id"), None));
    assert_eq!(
        batch.rewrite(&[Action::Keep; 3], SpliceMode::Renumber),
        Ok(Spliced::Unchanged)
    );
}

#[test]
fn width_changes_of_varints_are_handled() {
    // 63 headers -> 64 moves headerCount from 1 to 2 bytes; record 64 renumbered to 63
    // shrinks offsetDelta from 2 to 1 byte; the record length crosses 127 too.
    let headers: Vec<(Vec<u8>, Option<&[u8]>)> = (0..63)
        .map(|i| (format!("k{i}").into_bytes(), None))
        .collect();
    let header_refs: Vec<(&[u8], Option<&[u8]>)> =
        headers.iter().map(|(k, v)| (k.as_slice(), *v)).collect();
    let mut records: Vec<Record> = (0..70).map(|i| rec(i, 0, None, Some(b"v"), &[])).collect();
    records[65] = rec(65, 0, None, Some(b"v"), &header_refs);
    let batch = decode_batch(BatchBuilder::default().build(&records).unwrap()).unwrap();
    let h = HeaderRef {
        key: b"idem",
        value: Some(&[b'x'; 120]),
    };
    let Spliced::Rewritten(out) = batch
        .splice(&keep_all_but(70, &[0, 1, 2]), Some(h), SpliceMode::Renumber)
        .unwrap()
    else {
        panic!("expected a rewrite")
    };
    let out = decode_batch(out).unwrap();
    assert_eq!(out.len(), 67);
    let r = out.record(62).unwrap();
    assert_eq!(r.offset_delta(), 62);
    assert_eq!(r.header_count(), 64);
    assert_eq!(r.headers().last(), Some(h));
}

#[test]
fn non_minimal_varints_survive_reencode() {
    // record length 6 written as two bytes (0x8c 0x00); headerCount 0 as 0x80 0x00 and
    // length 7 to match
    let payload = [
        0x8c, 0x00, 0, 0, 0, 1, 1, 0, 0x8e, 0x00, 0, 0, 2, 1, 1, 0x80, 0x00,
    ];
    let bytes = with_payload(&uncompressed_batch(), 2, &payload);
    let batch = decode_batch(bytes.clone()).unwrap();
    assert_eq!(batch.len(), 2);
    assert_eq!(batch.reencode().unwrap(), bytes);
    let h = HeaderRef {
        key: b"k",
        value: None,
    };
    let Spliced::Rewritten(out) = batch
        .splice(&[false, true], Some(h), SpliceMode::Renumber)
        .unwrap()
    else {
        panic!("expected a rewrite")
    };
    let out = decode_batch(out).unwrap();
    let r = out.record(0).unwrap();
    assert_eq!((r.offset_delta(), r.header_count()), (0, 1));
    assert_eq!(r.headers().next(), Some(h));
}

// === golden ===

fn kp_record(
    offset: i64,
    ts: i64,
    key: &str,
    value: &str,
    headers: &[(&'static str, &str)],
) -> kp::Record {
    kp::Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: 5,
        producer_id: 7,
        producer_epoch: 1,
        timestamp_type: kp::TimestampType::Creation,
        offset,
        sequence: 10 + offset as i32,
        timestamp: ts,
        key: Some(Bytes::copy_from_slice(key.as_bytes())),
        value: Some(Bytes::copy_from_slice(value.as_bytes())),
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    StrBytes::from_static_str(k),
                    Some(Bytes::copy_from_slice(v.as_bytes())),
                )
            })
            .collect(),
    }
}

fn kp_encode(records: &[kp::Record]) -> Bytes {
    let mut buf = BytesMut::new();
    let options = kp::RecordEncodeOptions {
        version: 2,
        compression: kp::Compression::None,
    };
    kp::RecordBatchEncoder::encode(&mut buf, records, &options).unwrap();
    buf.freeze()
}

/// Golden bytes from the kafka-protocol crate's encoder (uncompressed, unique header keys).
/// Its choices agree with ours here: baseTimestamp = min timestamp (the third record) and
/// maxTimestamp = max, baseOffset = 0, lastOffsetDelta = count - 1, minimal varints.
#[test]
fn record_batch_v2_kafka_protocol_encoder_round_trip() {
    let records = vec![
        kp_record(0, 1_000, "a", "alpha", &[("src", "s1"), ("n", "1")]),
        kp_record(1, 1_500, "b", "bravo", &[("src", "s2")]),
        kp_record(2, 900, "c", "charlie", &[]),
    ];
    let bytes = kp_encode(&records);
    let batch = decode_batch(bytes.clone()).unwrap();
    let h = batch.header();
    assert_eq!(
        (
            h.base_offset,
            h.partition_leader_epoch,
            h.last_offset_delta,
            h.records_count
        ),
        (0, 5, 2, 3)
    );
    assert_eq!((h.base_timestamp, h.max_timestamp), (900, 1_500));
    assert_eq!(
        (h.producer_id, h.producer_epoch, h.base_sequence),
        (7, 1, 10)
    );
    let r0 = batch.record(0).unwrap();
    assert_eq!(r0.timestamp(), 1_000);
    assert_eq!(
        r0.header_list(),
        vec![(b(b"src"), Some(b(b"s1"))), (b(b"n"), Some(b(b"1")))]
    );
    assert_eq!(batch.reencode().unwrap(), bytes);
    let forced = batch
        .rewrite_inner(SpliceMode::Renumber, true, |_| Action::Keep)
        .unwrap();
    assert_eq!(forced, Spliced::Rewritten(bytes));

    // drop the record holding maxTimestamp and append an id header: the crate's encoding
    // of the expected records is byte-identical (same baseTimestamp, max = 1000)
    let actions = [
        Action::KeepAppend(HeaderRef {
            key: b"idem",
            value: Some(b"k-0"),
        }),
        Action::Drop,
        Action::KeepAppend(HeaderRef {
            key: b"idem",
            value: Some(b"k-2"),
        }),
    ];
    let Spliced::Rewritten(ours) = batch.rewrite(&actions, SpliceMode::Renumber).unwrap() else {
        panic!("expected a rewrite")
    };
    let expected = kp_encode(&[
        kp_record(
            0,
            1_000,
            "a",
            "alpha",
            &[("src", "s1"), ("n", "1"), ("idem", "k-0")],
        ),
        kp_record(1, 900, "c", "charlie", &[("idem", "k-2")]),
    ]);
    assert_eq!(ours, expected);
}

// Batches captured from real clients here (librdkafka, kafka-python, every codec)
// are checked in proto-tests/golden.rs.

// === property tests ===

fn arb_field(max: usize) -> impl Strategy<Value = Option<Bytes>> {
    prop::option::weighted(0.85, prop::collection::vec(any::<u8>(), 0..max))
        .prop_map(|o| o.map(Bytes::from))
}

/// A tiny alphabet so duplicate header keys (and an appended key that is already
/// present) happen often.
fn arb_header_key() -> impl Strategy<Value = String> {
    prop_oneof![3 => "[abc]{0,2}", 1 => "[a-z0-9.-]{1,12}"]
}

fn arb_ts_delta() -> impl Strategy<Value = i64> {
    // beyond ±2^31 ms: kafka-protocol <= 0.17 misread those (section 8.4)
    prop_oneof![-5_000i64..5_000, -(1i64 << 41)..(1i64 << 41)]
}

pub(crate) fn arb_record() -> impl Strategy<Value = Record> {
    (
        arb_ts_delta(),
        arb_field(24),
        arb_field(80),
        prop::collection::vec((arb_header_key(), arb_field(16)), 0..4),
    )
        .prop_map(|(timestamp_delta, key, value, headers)| Record {
            attributes: 0,
            timestamp_delta,
            offset_delta: 0,
            key,
            value,
            headers: headers
                .into_iter()
                .map(|(k, v)| (Bytes::from(k), v))
                .collect(),
        })
}

#[derive(Debug, Clone)]
struct Case {
    builder: BatchBuilder,
    records: Vec<Record>,
    keep: Vec<bool>,
    append: Option<(String, Option<Vec<u8>>)>,
}

fn arb_case() -> impl Strategy<Value = Case> {
    let producer = prop_oneof![
        Just((-1i64, -1i16, -1i32)),
        (0i64..1_000_000, 0i16..10, 0i32..i32::MAX),
    ];
    let append = prop::option::weighted(
        0.7,
        (
            arb_header_key(),
            prop::option::weighted(0.9, prop::collection::vec(any::<u8>(), 0..40)),
        ),
    );
    (
        prop::sample::select(Codec::ALL.to_vec()),
        producer,
        any::<bool>(),
        0i64..(1 << 41),
        0i64..(1 << 40),
        prop::collection::vec((arb_record(), 1i32..4), 0..14),
        append,
    )
        .prop_flat_map(
            |(codec, (pid, epoch, seq), log_append_time, base_ts, base_offset, recs, append)| {
                let n = recs.len();
                let mut od = -1;
                let records: Vec<Record> = recs
                    .into_iter()
                    .map(|(mut r, gap)| {
                        od += gap;
                        r.offset_delta = od;
                        r
                    })
                    .collect();
                let builder = BatchBuilder {
                    base_offset,
                    partition_leader_epoch: 3,
                    codec,
                    log_append_time,
                    base_timestamp: base_ts,
                    producer_id: pid,
                    producer_epoch: epoch,
                    base_sequence: seq,
                    ..BatchBuilder::default()
                };
                (
                    Just(builder),
                    Just(records),
                    prop::collection::vec(any::<bool>(), n),
                    Just(append),
                )
            },
        )
        .prop_map(|(builder, records, keep, append)| Case {
            builder,
            records,
            keep,
            append,
        })
}

fn unique_keys(r: &Record) -> bool {
    let mut keys: Vec<&Bytes> = r.headers.iter().map(|(k, _)| k).collect();
    keys.sort();
    keys.windows(2).all(|w| w[0] != w[1])
}

/// The independent decoder agrees on keys, values, offsets, timestamps (and headers when
/// their keys are unique; the crate's IndexMap collapses duplicates).
fn check_with_kafka_protocol(
    bytes: &Bytes,
    header: &BatchHeader,
    expected: &[Record],
) -> Result<(), TestCaseError> {
    let mut buf = bytes.clone();
    let set = kp::RecordBatchDecoder::decode(&mut buf)
        .map_err(|e| TestCaseError::fail(format!("kafka-protocol: {e:#}")))?;
    prop_assert_eq!(set.records.len(), expected.len());
    for (got, want) in set.records.iter().zip(expected) {
        prop_assert_eq!(&got.key, &want.key);
        prop_assert_eq!(&got.value, &want.value);
        prop_assert_eq!(
            got.offset,
            header.base_offset + i64::from(want.offset_delta)
        );
        prop_assert_eq!(got.timestamp, header.base_timestamp + want.timestamp_delta);
        if unique_keys(want) {
            let headers: Vec<(Bytes, Option<Bytes>)> = got
                .headers
                .iter()
                .map(|(k, v)| (Bytes::copy_from_slice(k.as_bytes()), v.clone()))
                .collect();
            prop_assert_eq!(&headers, &want.headers);
        }
    }
    Ok(())
}

fn check_case(case: &Case, mode: SpliceMode) -> Result<(), TestCaseError> {
    let original = case.builder.build(&case.records).unwrap();
    let batch = decode_batch(original.clone()).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let decoded: Vec<Record> = batch.records().map(|r| r.to_record()).collect();
    prop_assert_eq!(&decoded, &case.records);
    let oh = *batch.header();
    if !oh.attributes.is_log_append_time() {
        check_with_kafka_protocol(&original, &oh, &case.records)?;
    }
    if batch.codec() == Codec::None {
        prop_assert_eq!(batch.reencode().unwrap(), original.clone());
    }

    let append = case.append.as_ref().map(|(k, v)| HeaderRef {
        key: k.as_bytes(),
        value: v.as_deref(),
    });
    let mut appended_any = false;
    let expected: Vec<Record> = case
        .records
        .iter()
        .zip(&case.keep)
        .filter(|(_, k)| **k)
        .map(|(r, _)| {
            let mut r = r.clone();
            if let Some(h) = append {
                if !r.headers.iter().any(|(k, _)| k == h.key) {
                    r.headers.push((b(h.key), h.value.map(b)));
                    appended_any = true;
                }
            }
            r
        })
        .collect();
    let dropped_any = case.keep.iter().any(|k| !k);
    prop_assert_eq!(
        batch.would_change(&case.keep, append),
        dropped_any || appended_any
    );

    let out = match batch
        .splice(&case.keep, append, mode)
        .map_err(|e| TestCaseError::fail(e.to_string()))?
    {
        Spliced::Unchanged => {
            prop_assert!(!dropped_any && !appended_any);
            return Ok(());
        }
        Spliced::NoneKept => {
            prop_assert_eq!(mode, SpliceMode::Renumber);
            prop_assert!(expected.is_empty());
            return Ok(());
        }
        Spliced::Rewritten(out) => out,
    };
    prop_assert!(dropped_any || appended_any);
    let raw = RawBatch::new(out.clone()).map_err(|e| TestCaseError::fail(e.to_string()))?;
    raw.verify_crc()
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let h = *raw.header();
    prop_assert_eq!(h.base_offset, oh.base_offset);
    prop_assert_eq!(h.partition_leader_epoch, oh.partition_leader_epoch);
    prop_assert_eq!(
        (h.producer_id, h.producer_epoch, h.base_sequence),
        (oh.producer_id, oh.producer_epoch, oh.base_sequence)
    );
    prop_assert_eq!(h.records_count as usize, expected.len());
    if expected.is_empty() {
        prop_assert_eq!(mode, SpliceMode::KeepOffsets);
        prop_assert_eq!(out.len(), BATCH_HEADER_LEN);
        prop_assert_eq!(
            h.attributes.0,
            oh.attributes.0
                & (Attributes::TIMESTAMP_TYPE | Attributes::TRANSACTIONAL | Attributes::CONTROL)
        );
        prop_assert_eq!(h.base_timestamp, -1);
        prop_assert_eq!(h.max_timestamp, oh.max_timestamp);
        prop_assert_eq!(h.last_offset_delta, oh.last_offset_delta);
        return check_with_kafka_protocol(&out, &h, &[]);
    }
    prop_assert_eq!(h.attributes, oh.attributes);
    prop_assert_eq!(h.base_timestamp, oh.base_timestamp);
    let spliced = raw
        .decode_with_limit(usize::MAX)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let got: Vec<Record> = spliced.records().map(|r| r.to_record()).collect();
    prop_assert_eq!(got.len(), expected.len());
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        prop_assert_eq!(&g.key, &e.key);
        prop_assert_eq!(&g.value, &e.value);
        prop_assert_eq!(&g.headers, &e.headers);
        prop_assert_eq!(g.timestamp_delta, e.timestamp_delta);
        prop_assert_eq!(g.attributes, e.attributes);
        match mode {
            SpliceMode::Renumber => prop_assert_eq!(g.offset_delta as usize, i),
            SpliceMode::KeepOffsets => prop_assert_eq!(g.offset_delta, e.offset_delta),
        }
    }
    match mode {
        SpliceMode::Renumber => {
            prop_assert_eq!(h.last_offset_delta as usize, expected.len() - 1);
            let want_max = if oh.attributes.is_log_append_time() {
                oh.max_timestamp
            } else {
                oh.base_timestamp + expected.iter().map(|r| r.timestamp_delta).max().unwrap()
            };
            prop_assert_eq!(h.max_timestamp, want_max);
        }
        SpliceMode::KeepOffsets => {
            prop_assert_eq!(h.last_offset_delta, oh.last_offset_delta);
            prop_assert_eq!(h.max_timestamp, oh.max_timestamp);
        }
    }
    if !oh.attributes.is_log_append_time() {
        check_with_kafka_protocol(&out, &h, &got)?;
    }
    // a rewritten batch re-encodes to itself
    prop_assert_eq!(
        spliced
            .reencode()
            .map_err(|e| TestCaseError::fail(e.to_string()))?,
        out
    );
    Ok(())
}

proptest! {
    // why: IDEMGATE_PROPTEST_CASES=100000 turns this into a soak run on stable, where
    // cargo-fuzz (nightly) is not available.
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("IDEMGATE_PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(192)
    ))]

    #[test]
    fn splice_renumber_props(case in arb_case()) {
        check_case(&case, SpliceMode::Renumber)?;
    }

    #[test]
    fn splice_keep_offsets_props(case in arb_case()) {
        check_case(&case, SpliceMode::KeepOffsets)?;
    }
}

// === tools ===

/// Writes the fuzz seed corpus: `cargo test --lib records::tests::write_fuzz_seeds -- --ignored`.
#[test]
#[ignore]
fn write_fuzz_seeds() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/record_batch");
    std::fs::create_dir_all(&dir).unwrap();
    let one = uncompressed_batch();
    let mut multi = one.to_vec();
    multi.extend_from_slice(
        &BatchBuilder::new(Codec::Lz4)
            .build(&three_records())
            .unwrap(),
    );
    multi.extend_from_slice(&one[..40]);
    let seeds: [(&str, Bytes); 4] = [
        ("uncompressed_dup_headers.bin", one),
        ("lz4_then_partial_tail.bin", Bytes::from(multi)),
        ("gzip_idempotent.bin", {
            let builder = BatchBuilder {
                producer_id: 5,
                producer_epoch: 0,
                base_sequence: 0,
                ..BatchBuilder::new(Codec::Gzip)
            };
            builder.build(&three_records()).unwrap()
        }),
        (
            "empty_batch.bin",
            BatchBuilder {
                last_offset_delta: Some(4),
                ..BatchBuilder::default()
            }
            .build(&[])
            .unwrap(),
        ),
    ];
    for (name, bytes) in seeds {
        std::fs::write(dir.join(name), &bytes).unwrap();
    }
}

/// `cargo test --release --lib records::tests::bench_splice -- --ignored --nocapture`
#[test]
#[ignore]
fn bench_splice() {
    let records: Vec<Record> = (0..1000)
        .map(|i| {
            let key = format!("key-{i:012}");
            // why: not one repeated byte, so the codecs do real work
            let value: Vec<u8> = (0..100u32)
                .map(|j| {
                    ((i as u32)
                        .wrapping_mul(2_654_435_761)
                        .wrapping_add(j.wrapping_mul(40_503))
                        >> 13) as u8
                })
                .collect();
            rec(
                i,
                i64::from(i),
                Some(key.as_bytes()),
                Some(&value),
                &[(b"source", Some(b"conn-1/0"))],
            )
        })
        .collect();
    let keep: Vec<bool> = (0..1000).map(|i| i % 10 >= 3).collect();
    let h = HeaderRef {
        key: b"idemgate.key",
        value: Some(b"0123456789abcdef0123456789abcdef"),
    };
    for codec in Codec::ALL {
        let bytes = BatchBuilder::new(codec).build(&records).unwrap();
        let start = std::time::Instant::now();
        let mut rounds = 0u64;
        while start.elapsed() < std::time::Duration::from_secs(1) {
            let batch = decode_batch(bytes.clone()).unwrap();
            let out = batch.splice(&keep, Some(h), SpliceMode::Renumber).unwrap();
            assert!(matches!(out, Spliced::Rewritten(_)));
            rounds += 1;
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{codec:>6}: {:>10.0} records/s ({} B batch, {rounds} rounds)",
            (rounds * 1000) as f64 / secs,
            bytes.len()
        );
    }
}

proptest! {
    /// A frame read here is read the same by lz4_flex, whatever byte of it is changed: the
    /// fast path never returns records lz4_flex would not (it may refuse a block lz4_flex takes
    /// but liblz4 and Java's lz4-java do not).
    #[test]
    fn lz4_damaged_frames_never_read_differently(at in 0usize..4000, bit in 0u8..8, len in 1usize..200_000) {
        use std::io::Read;
        let mut frame = Vec::new();
        compress_into(Codec::Lz4, &lz4_text(len), &mut frame).unwrap();
        let at = at % frame.len();
        frame[at] ^= 1 << bit;
        if let Ok(ours) = decompress(Codec::Lz4, &frame, 1 << 20) {
            let mut flex = Vec::new();
            let theirs = lz4_flex::frame::FrameDecoder::new(&frame[..]).read_to_end(&mut flex);
            prop_assert!(theirs.is_ok(), "byte {at}: ours read it, lz4_flex did not");
            prop_assert_eq!(ours, flex);
        }
    }
}
