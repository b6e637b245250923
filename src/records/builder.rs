//! Batches from owned records, for tests, tools, golden files and the fetch path's emptied
//! marker.

use bytes::Bytes;

use super::compression::compress_into;
use super::varint::{
    nullable_len, put_nullable, put_varint, put_varlong, uvarint_len, varint_len, zigzag64,
};
use super::{
    finish_batch, Attributes, BatchHeader, Codec, RecordsError, BATCH_HEADER_LEN, MAGIC_V2,
};

/// An owned record: what [`BatchBuilder`] writes and [`RecordView::to_record`] returns.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    /// Unused by Kafka so far; carried so a round trip is exact.
    pub attributes: i8,
    /// From the batch baseTimestamp; may be negative or beyond ±2^31.
    pub timestamp_delta: i64,
    /// From the batch baseOffset; gaps are legal in compacted batches.
    pub offset_delta: i32,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    /// In order; duplicate keys allowed (KIP-82).
    pub headers: Vec<(Bytes, Option<Bytes>)>,
}

fn encode_record(out: &mut Vec<u8>, r: &Record) -> Result<(), RecordsError> {
    let mut body = 1
        + uvarint_len(zigzag64(r.timestamp_delta))
        + varint_len(r.offset_delta)
        + nullable_len(r.key.as_deref(), "key length")?
        + nullable_len(r.value.as_deref(), "value length")?;
    let hc = i32::try_from(r.headers.len()).map_err(|_| RecordsError::Overflow {
        what: "headerCount",
    })?;
    body += varint_len(hc);
    for (k, v) in &r.headers {
        body += nullable_len(Some(k), "header key length")?
            + nullable_len(v.as_deref(), "header value length")?;
    }
    let len = i32::try_from(body).map_err(|_| RecordsError::Overflow {
        what: "record length",
    })?;
    out.reserve(body + 5);
    put_varint(out, len);
    out.push(r.attributes as u8);
    put_varlong(out, r.timestamp_delta);
    put_varint(out, r.offset_delta);
    put_nullable(out, r.key.as_deref());
    put_nullable(out, r.value.as_deref());
    put_varint(out, hc);
    for (k, v) in &r.headers {
        put_nullable(out, Some(k));
        put_nullable(out, v.as_deref());
    }
    Ok(())
}

/// Builds a batch from owned records, for tests, tools and golden files. Records are written
/// with the offsetDelta and timestampDelta they carry. With no records the codec bits are
/// cleared, as in Java's `writeEmptyHeader`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchBuilder {
    pub base_offset: i64,
    pub partition_leader_epoch: i32,
    /// Records are compressed with it; attribute bits 0-2.
    pub codec: Codec,
    /// Attribute bits 3-6.
    pub log_append_time: bool,
    pub transactional: bool,
    pub control: bool,
    pub delete_horizon: bool,
    pub base_timestamp: i64,
    /// Default: baseTimestamp + the largest timestampDelta (-1 with no records).
    pub max_timestamp: Option<i64>,
    /// Default: the largest offsetDelta (-1 with no records).
    pub last_offset_delta: Option<i32>,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
}

impl Default for BatchBuilder {
    fn default() -> Self {
        BatchBuilder {
            base_offset: 0,
            partition_leader_epoch: -1,
            codec: Codec::None,
            log_append_time: false,
            transactional: false,
            control: false,
            delete_horizon: false,
            base_timestamp: 0,
            max_timestamp: None,
            last_offset_delta: None,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
        }
    }
}

impl BatchBuilder {
    pub fn new(codec: Codec) -> Self {
        BatchBuilder {
            codec,
            ..BatchBuilder::default()
        }
    }

    pub fn attributes(&self) -> Attributes {
        let mut a = i16::from(self.codec.id());
        for (on, bit) in [
            (self.log_append_time, Attributes::TIMESTAMP_TYPE),
            (self.transactional, Attributes::TRANSACTIONAL),
            (self.control, Attributes::CONTROL),
            (self.delete_horizon, Attributes::DELETE_HORIZON),
        ] {
            if on {
                a |= bit;
            }
        }
        Attributes(a)
    }

    pub fn build(&self, records: &[Record]) -> Result<Bytes, RecordsError> {
        let count = i32::try_from(records.len()).map_err(|_| RecordsError::Overflow {
            what: "recordsCount",
        })?;
        let mut recs = Vec::new();
        for r in records {
            encode_record(&mut recs, r)?;
        }
        let mut out = Vec::with_capacity(BATCH_HEADER_LEN + recs.len());
        out.extend_from_slice(&[0u8; BATCH_HEADER_LEN]);
        if !records.is_empty() {
            compress_into(self.codec, &recs, &mut out)?;
        }
        let max_delta = records.iter().map(|r| r.timestamp_delta).max();
        let header = BatchHeader {
            base_offset: self.base_offset,
            batch_length: 0,
            partition_leader_epoch: self.partition_leader_epoch,
            magic: MAGIC_V2,
            crc: 0,
            // why: with no records there is no payload to compress; Java's only empty batch
            // (writeEmptyHeader) says codec none, and decoders try to decompress otherwise.
            attributes: if records.is_empty() {
                Attributes(self.attributes().0 & !Attributes::CODEC_MASK)
            } else {
                self.attributes()
            },
            last_offset_delta: self
                .last_offset_delta
                .unwrap_or_else(|| records.iter().map(|r| r.offset_delta).max().unwrap_or(-1)),
            base_timestamp: self.base_timestamp,
            max_timestamp: self
                .max_timestamp
                .unwrap_or_else(|| max_delta.map_or(-1, |d| self.base_timestamp.wrapping_add(d))),
            producer_id: self.producer_id,
            producer_epoch: self.producer_epoch,
            base_sequence: self.base_sequence,
            records_count: count,
        };
        finish_batch(out, header)
    }
}
